/*  lock-arbiter: the smart lock's two-party unlock, lock state history, temporary logins
    and the MQTT history query (see ar_server.h). Reads the configuration, waits (bounded)
    for Redis, joins the bus, reports readiness once its subscriptions are in place, and
    serves until SIGTERM. */
#include "ar_server.h"
#include "lk_common.h"
#include "lk_config.h"
#include "lk_loop.h"

int main(int argc, char **argv)
{
    lk_args_t args;
    if (lk_args_parse(argc, argv, "lock-arbiter", "lock-arbiter", &args) != 0)
        return LK_EXIT_CONFIG;
    lk_log_init("lock-arbiter", args.node);
    lk_config_t *config = lk_config_load(args.config_path);
    if (!config)
        return LK_EXIT_CONFIG;
    if (lk_log_set_level_name(lk_config_get(config, "log_level", "notice")) != 0)
        lk_warn("unknown log_level '%s'", lk_config_get(config, "log_level", ""));
    lk_sched_slice(lk_config_get_int(config, "sched_slice_us", 100));
    lk_loop_t *loop = lk_loop_new();
    int rc = 0;
    ar_server_t *server = ar_server_new(loop, config, args.node, args.ready_fd, &rc);
    if (server) {
        lk_notice("started");
        lk_loop_run(loop);
        rc = ar_server_exit_code(server);
    }
    ar_server_destroy(&server);
    lk_loop_destroy(&loop);
    lk_config_destroy(&config);
    return rc;
}
