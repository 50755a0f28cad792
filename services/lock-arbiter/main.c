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
    lk_config_t *config =
        lk_config_daemon_start(argc, argv, "lock-arbiter", "lock-arbiter", false, &args);
    if (!config)
        return LK_EXIT_CONFIG;
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
