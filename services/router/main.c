/*  router: the subscription and retained-message index of Latchkey, and its fan-out. */
#include "lk_common.h"
#include "lk_config.h"
#include "lk_loop.h"
#include "rt_server.h"
#include <stdio.h>

int main(int argc, char **argv)
{
    lk_args_t args;
    lk_config_t *config = lk_config_daemon_start(argc, argv, "router", "router", false, &args);
    if (!config)
        return LK_EXIT_CONFIG;
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
