/*  ota-distributor: firmware over the air — signed images to devices over MQTT chunks
    (ThingsBoard's protocol and Latchkey's) and HTTP ranges, in staged rollouts that stop
    themselves (docs/ota.md). Reads the configuration, applies the schema, joins the bus,
    reports readiness once its subscriptions are in place, and serves until SIGTERM. */
#include "lk_common.h"
#include "lk_config.h"
#include "lk_loop.h"
#include "od_internal.h"

od_t *od_server_new(lk_loop_t *loop, lk_config_t *config, const char *node, int ready_fd,
                    int *exit_code);
int od_server_exit_code(od_t *self);
void od_server_destroy(od_t **self_p);

int main(int argc, char **argv)
{
    lk_args_t args;
    lk_config_t *config =
        lk_config_daemon_start(argc, argv, "ota-distributor", "ota-distributor", false, &args);
    if (!config)
        return LK_EXIT_CONFIG;
    lk_loop_t *loop = lk_loop_new();
    int rc = 0;
    od_t *server = od_server_new(loop, config, args.node, args.ready_fd, &rc);
    if (server) {
        lk_notice("started");
        lk_loop_run(loop);
        rc = od_server_exit_code(server);
    }
    od_server_destroy(&server);
    lk_loop_destroy(&loop);
    lk_config_destroy(&config);
    return rc;
}
