/*  la_apikey: `latchkey apikey add|list|rm` — the api process's API keys (HTTP Basic
    key:secret), kept in Redis as auth reads them (services/auth/au_admin.h): the secret
    only as a $7$ PBKDF2 hash; it is printed once, at creation. */
#include "la_cli.h"
#include "lk_crypto.h"
#include <stdio.h>

static int s_add(la_ctx_t *ctx, const char *name)
{
    char *key = lk_crypto_token(12);
    char *secret = lk_crypto_token(24);
    char *hash = lk_crypto_pw_hash(secret, strlen(secret), 0);
    char created[32];
    snprintf(created, sizeof(created), "%" PRId64, lk_wall_ms());
    char hkey[128];
    snprintf(hkey, sizeof(hkey), "lk:apikey:%s", key);
    const char *set[] = {"HSET", hkey, "secret", hash, "name", name, "created", created};
    lk_redis_reply_t *r = la_redis_cmd(ctx, 8, set);
    int rc = r ? 0 : 1;
    lk_redis_reply_free(&r);
    if (rc == 0) {
        const char *add[] = {"SADD", "lk:apikeys", key};
        r = la_redis_cmd(ctx, 3, add);
        rc = r ? 0 : 1;
        lk_redis_reply_free(&r);
    }
    if (rc == 0)
        printf("key %s\nsecret %s\n", key, secret);
    free(key);
    free(secret);
    free(hash);
    return rc;
}

static int s_list(la_ctx_t *ctx)
{
    const char *members[] = {"SMEMBERS", "lk:apikeys"};
    lk_redis_reply_t *r = la_redis_cmd(ctx, 2, members);
    if (!r)
        return 1;
    for (size_t i = 0; r->type == LK_REDIS_ARRAY && i < r->count; i++) {
        char hkey[128];
        snprintf(hkey, sizeof(hkey), "lk:apikey:%.100s", r->items[i].str);
        const char *get[] = {"HMGET", hkey, "name", "created"};
        lk_redis_reply_t *h = la_redis_cmd(ctx, 4, get);
        if (h && h->type == LK_REDIS_ARRAY && h->count == 2)
            printf("%s %s %s\n", r->items[i].str, h->items[0].str ? h->items[0].str : "-",
                   h->items[1].str ? h->items[1].str : "-");
        lk_redis_reply_free(&h);
    }
    lk_redis_reply_free(&r);
    return 0;
}

static int s_rm(la_ctx_t *ctx, const char *key)
{
    char hkey[128];
    snprintf(hkey, sizeof(hkey), "lk:apikey:%.100s", key);
    const char *del[] = {"DEL", hkey};
    lk_redis_reply_t *r = la_redis_cmd(ctx, 2, del);
    if (!r)
        return 1;
    bool had = r->type == LK_REDIS_INT && r->integer > 0;
    lk_redis_reply_free(&r);
    const char *srem[] = {"SREM", "lk:apikeys", key};
    r = la_redis_cmd(ctx, 3, srem);
    lk_redis_reply_free(&r);
    if (!had) {
        fprintf(stderr, "latchkey: no API key %s\n", key);
        return 1;
    }
    /* the api trusts a verified key for api_key_cache_ms (5 s) more */
    return 0;
}

int la_cmd_apikey(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "add") == 0)
        return s_add(ctx, argv[2]);
    if (argc == 2 && strcmp(argv[1], "add") == 0)
        return s_add(ctx, "");
    if (argc == 2 && strcmp(argv[1], "list") == 0)
        return s_list(ctx);
    if (argc == 3 && strcmp(argv[1], "rm") == 0)
        return s_rm(ctx, argv[2]);
    return la_usage("apikey");
}
