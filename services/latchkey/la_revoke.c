/*  la_revoke: `latchkey revoke <user>...` — access that ends at once: every temporary
    login of these users (lk:arb:logins → lk:{arb}:login:<temp> = user) is deleted, the users'
    own passwords are invalidated (the password field removed from the Redis user hash:
    the account, its ACL and superuser flag stay, `latchkey passwd` sets a new password),
    and the auth service has every frontend disconnect the clients logged in as any of
    them. A password in a Mosquitto password file is not touched (see `passwd -d -f`). */
#include "la_cli.h"
#include "lk_common.h"
#include <stdio.h>

#define S_REVOKE_WAIT_MS 2000

int la_cmd_revoke(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc < 2 || argv[1][0] == '-')
        return la_usage(argv[0]);
    int rc = LA_EXIT_OK;
    if (la_end_logins(ctx, argv + 1, argc - 1, false) != 0)
        rc = LA_EXIT_FAIL;
    for (int i = 1; i < argc; i++) {
        char *key = la_user_key(ctx, argv[i]);
        const char *a[] = {"HDEL", key, "password", "password_hash"};
        lk_redis_reply_t *r = la_redis_cmd(ctx, 4, a);
        if (!r)
            rc = LA_EXIT_FAIL;
        else if (r->integer > 0)
            printf("password of '%s' invalidated\n", argv[i]);
        lk_redis_reply_free(&r);
        free(key);
    }
    if (la_revoke(ctx, argv + 1, argc - 1, S_REVOKE_WAIT_MS) != 0)
        return LA_EXIT_FAIL;
    printf("auth confirmed: clients of %d user(s) are being disconnected\n", argc - 1);
    return rc;
}
