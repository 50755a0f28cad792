/*  session-store: keeps MQTT sessions, their queued messages and the retained messages in
    Redis, for the router and the frontends (see docs/architecture.md).

    main only parses the command line and configuration, builds the actor (ss_server),
    runs the loop and tears down in reverse. Readiness (-r fd) is announced by the actor
    once its endpoints are up and Redis is loaded, which may take a while when Redis is
    not reachable yet. */
#include "lk_common.h"
#include "lk_config.h"
#include "lk_loop.h"
#include "ss_server.h"

int main(int argc, char **argv)
{
    lk_args_t args;
    lk_config_t *config =
        lk_config_daemon_start(argc, argv, "session-store", "session-store", true, &args);
    if (!config)
        return LK_EXIT_CONFIG;
    lk_loop_t *loop = lk_loop_new();
    ss_server_t *server = ss_server_new(loop, config, args.node, args.ready_fd);
    if (!server) {
        lk_loop_destroy(&loop);
        lk_config_destroy(&config);
        return LK_EXIT_CONFIG;
    }
    int rc = 0;
    if (ss_server_start(server) != 0)
        rc = LK_EXIT_TEMPORARY; /* endpoint busy, folder missing: may pass on a restart */
    else
        lk_loop_run(loop);
    ss_server_destroy(&server);
    lk_loop_destroy(&loop);
    lk_config_destroy(&config);
    return rc;
}
