/*  auth: authentication and ACLs for the Latchkey MQTT frontends. Reads the configuration,
    waits (bounded) for Redis, binds auth_endpoint, reports readiness, and serves until
    SIGTERM; SIGHUP reloads the password and ACL files. */
#include "au_server.h"
#include "lk_common.h"
#include "lk_config.h"
#include "lk_loop.h"

/* how long to wait for Redis before giving up with a temporary failure (s6 restarts us) */
#define S_REDIS_WAIT_MS 10000

int main(int argc, char **argv)
{
    lk_args_t args;
    lk_config_t *config = lk_config_daemon_start(argc, argv, "auth", "auth", false, &args);
    if (!config)
        return LK_EXIT_CONFIG;
    lk_loop_t *loop = lk_loop_new();
    au_server_t *server = au_server_new(loop, config, args.node);
    int rc = 0;
    if (!server)
        rc = LK_EXIT_CONFIG;
    else if (au_server_wait_redis(server, S_REDIS_WAIT_MS) != 0)
        rc = LK_EXIT_TEMPORARY;
    else if (au_server_bind(server, NULL) != 0)
        rc = LK_EXIT_TEMPORARY;
    if (rc == 0) {
        lk_ready_notify(args.ready_fd);
        lk_notice("started");
        lk_loop_run(loop);
    }
    au_server_destroy(&server);
    lk_loop_destroy(&loop);
    lk_config_destroy(&config);
    return rc;
}
