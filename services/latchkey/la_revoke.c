/*  la_revoke: `latchkey revoke <user>...` — asks the auth service to have every frontend
    disconnect the clients logged in as these users (their credentials stay; see
    `latchkey passwd -d` to remove them). */
#include "la_cli.h"
#include <stdio.h>

#define S_REVOKE_WAIT_MS 2000

int la_cmd_revoke(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc < 2 || argv[1][0] == '-')
        return la_usage(argv[0]);
    if (la_revoke(ctx, argv + 1, argc - 1, S_REVOKE_WAIT_MS) != 0)
        return LA_EXIT_FAIL;
    printf("auth confirmed: clients of %d user(s) are being disconnected\n", argc - 1);
    return LA_EXIT_OK;
}
