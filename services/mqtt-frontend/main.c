/*  mqtt-frontend: holds MQTT client connections and speaks the bus for them. */
#include "fe_server.h"
#include "lk_common.h"
#include "lk_config.h"
#include "lk_loop.h"

int main(int argc, char **argv)
{
    lk_args_t args;
    lk_config_t *config = lk_config_daemon_start(argc, argv, "mqtt-frontend", "fe-1", false, &args);
    if (!config)
        return LK_EXIT_CONFIG;
    lk_loop_t *loop = lk_loop_new();
    fe_server_t *server = fe_server_new(config, loop, args.node);
    if (!server) {
        lk_loop_destroy(&loop);
        lk_config_destroy(&config);
        return LK_EXIT_CONFIG;
    }
    lk_ready_notify(args.ready_fd);
    lk_notice("started");
    lk_loop_run(loop);
    fe_server_destroy(&server);
    lk_loop_destroy(&loop);
    lk_config_destroy(&config);
    return 0;
}
