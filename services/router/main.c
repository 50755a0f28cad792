/*  router: the subscription and retained-message index of Latchkey, and its fan-out. */
#include "lk_common.h"
#include "lk_config.h"
#include "lk_loop.h"
#include "rt_server.h"
#include <stdio.h>

int main(int argc, char **argv)
{
    lk_args_t args;
    if (lk_args_parse(argc, argv, "router", "router", &args) != 0)
        return LK_EXIT_CONFIG;
    lk_log_init("router", args.node);
    lk_config_t *config = lk_config_load(args.config_path);
    if (!config)
        return LK_EXIT_CONFIG;
    if (lk_log_set_level_name(lk_config_get(config, "log_level", "notice")) != 0)
        lk_warn("unknown log_level '%s'", lk_config_get(config, "log_level", ""));
    lk_sched_slice(lk_config_get_int(config, "sched_slice_us", 100));
    lk_loop_t *loop = lk_loop_new();
    rt_server_t *server = rt_server_new(config, loop, args.node);
    if (!server) {
        lk_loop_destroy(&loop);
        lk_config_destroy(&config);
        return LK_EXIT_CONFIG;
    }
    lk_ready_notify(args.ready_fd);
    lk_notice("started");
    lk_loop_run(loop);
    rt_server_destroy(&server);
    lk_loop_destroy(&loop);
    lk_config_destroy(&config);
    return 0;
}
