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
    if (lk_args_parse(argc, argv, "session-store", "session-store", &args) != 0)
        return LK_EXIT_CONFIG;
    lk_log_init("session-store", args.node);
    lk_config_t *config = lk_config_load(args.config_path);
    if (!config)
        return LK_EXIT_CONFIG;
    const char *level = lk_config_get(config, "log_level", "notice");
    if (lk_log_set_level_name(level) != 0) {
        lk_error("configuration: unknown log_level '%s'", level);
        lk_config_destroy(&config);
        return LK_EXIT_CONFIG;
    }
    lk_sched_slice(lk_config_get_int(config, "sched_slice_us", 100));
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
