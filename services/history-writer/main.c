/*  history-writer: writes history events (lock states, unlock decisions, connects, OTA
    progress) from the bus into PostgreSQL, exactly once, through outages of PostgreSQL
    and restarts of its own (see hw_server.h and docs/architecture.md).

    main only parses the command line and configuration, builds the actor (hw_server),
    runs the loop and tears down in reverse. Exit 100 (s6 gives up) for a bad configuration
    or a schema migration that cannot apply; 111 for what a restart may cure. */
#include "hw_server.h"
#include "lk_common.h"
#include "lk_config.h"
#include "lk_loop.h"

int main(int argc, char **argv)
{
    lk_args_t args;
    lk_config_t *config =
        lk_config_daemon_start(argc, argv, "history-writer", "history-writer", true, &args);
    if (!config)
        return LK_EXIT_CONFIG;
    lk_loop_t *loop = lk_loop_new();
    hw_server_t *server = hw_server_new(loop, config, args.node, args.ready_fd);
    if (!server) {
        lk_loop_destroy(&loop);
        lk_config_destroy(&config);
        return LK_EXIT_CONFIG;
    }
    int rc = hw_server_start(server);
    if (rc == 0)
        lk_loop_run(loop);
    hw_server_destroy(&server);
    lk_loop_destroy(&loop);
    lk_config_destroy(&config);
    return rc == 0 ? 0 : rc == -2 ? LK_EXIT_CONFIG : LK_EXIT_TEMPORARY;
}
