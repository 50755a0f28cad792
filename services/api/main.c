/*  api: the operators' HTTP surface (see api_internal.h). Reads the configuration, joins
    the bus, serves HTTP until SIGTERM. */
#include "api_internal.h"

int main(int argc, char **argv)
{
    lk_args_t args;
    lk_config_t *config = lk_config_daemon_start(argc, argv, "api", "api", false, &args);
    if (!config)
        return LK_EXIT_CONFIG;
    lk_loop_t *loop = lk_loop_new();
    api_server_t *server = api_server_new(loop, config, args.node, args.ready_fd);
    int rc = server ? 0 : LK_EXIT_TEMPORARY;
    if (server) {
        lk_loop_run(loop);
        api_server_destroy(&server);
    }
    lk_loop_destroy(&loop);
    lk_config_destroy(&config);
    return rc;
}
