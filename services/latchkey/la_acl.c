/*  la_acl: `latchkey acl set|show` (the user's Redis ACL hash: topic filter -> "1"
    subscribe, "2" publish, "3" both in the seed layout, "subscribe" / "publish" / "all" in
    EMQX 5's; see la_emqx_layout) and `latchkey user superuser|show` (the `is_superuser`
    field of the user's hash). After `acl set`, auth tells the frontends, which re-read
    the ACL of the user's connected clients at once (Revoke{acl_changed}); turning
    superuser off revokes the user's sessions. */
#include "la_cli.h"
#include "lk_acl.h"
#include "lk_common.h"
#include <stdio.h>

#define S_REVOKE_WAIT_MS 2000

static const char *s_access_name(const char *v)
{
    return strcmp(v, "1") == 0 || strcmp(v, "subscribe") == 0 ? "sub"
           : strcmp(v, "2") == 0 || strcmp(v, "publish") == 0 ? "pub"
           : strcmp(v, "3") == 0 || strcmp(v, "all") == 0     ? "both"
           : *v == '{'                                        ? v
                                                              : "?";
}

static int s_cmp_str(const void *a, const void *b)
{
    const lk_redis_reply_t *x = a, *y = b;
    return strcmp(x->str ? x->str : "", y->str ? y->str : "");
}

/* 1 when mqtt_user:<user> exists, 0 when not, -1 on failure */
static int s_user_exists(la_ctx_t *ctx, const char *user)
{
    char *key = la_user_key(ctx, user);
    const char *cmd[] = {"EXISTS", key};
    lk_redis_reply_t *r = la_redis_cmd(ctx, 2, cmd);
    free(key);
    if (!r)
        return -1;
    int rc = r->type == LK_REDIS_INT && r->integer > 0;
    lk_redis_reply_free(&r);
    return rc;
}

static int s_acl_set(la_ctx_t *ctx, const char *user, const char *filter, const char *right)
{
    bool emqx = la_emqx_layout(ctx);
    const char *value = strcmp(right, "sub") == 0    ? (emqx ? "subscribe" : "1")
                        : strcmp(right, "pub") == 0  ? (emqx ? "publish" : "2")
                        : strcmp(right, "both") == 0 ? (emqx ? "all" : "3")
                        : strcmp(right, "none") == 0 ? ""
                                                     : NULL;
    if (!value)
        return la_usage("acl");
    if (!lk_acl_filter_valid(filter) || strncmp(filter, "$share/", 7) == 0) {
        fprintf(stderr, "latchkey: '%s' is not a valid topic filter\n", filter);
        return LA_EXIT_USAGE;
    }
    char *key = la_acl_key(ctx, user);
    const char *set[] = {"HSET", key, filter, value};
    const char *del[] = {"HDEL", key, filter};
    lk_redis_reply_t *r = *value ? la_redis_cmd(ctx, 4, set) : la_redis_cmd(ctx, 3, del);
    free(key);
    if (!r)
        return LA_EXIT_FAIL;
    lk_redis_reply_free(&r);
    printf("%s: %s %s\n", user, filter, *value ? right : "removed");
    if (s_user_exists(ctx, user) == 0) {
        char *uk = la_user_key(ctx, user);
        fprintf(stderr, "latchkey: note: there is no %s (yet)\n", uk);
        free(uk);
    }
    /* connected clients of the user get the new rules now */
    char *users[] = {(char *)user};
    if (la_acl_changed(ctx, users, 1, S_REVOKE_WAIT_MS) == 0)
        printf("auth confirmed: connected clients of '%s' re-read their ACL\n", user);
    return LA_EXIT_OK;
}

static int s_acl_show(la_ctx_t *ctx, const char *user)
{
    char *key = la_acl_key(ctx, user);
    const char *cmd[] = {"HGETALL", key};
    lk_redis_reply_t *r = la_redis_cmd(ctx, 2, cmd);
    free(key);
    if (!r)
        return LA_EXIT_FAIL;
    size_t pairs = r->type == LK_REDIS_ARRAY ? r->count / 2 : 0;
    /* sort the field/value pairs by filter: items are laid out field, value, ... */
    lk_redis_reply_t *sorted = lk_calloc(pairs ? pairs : 1, 2 * sizeof(lk_redis_reply_t));
    memcpy(sorted, r->items, pairs * 2 * sizeof(lk_redis_reply_t));
    qsort(sorted, pairs, 2 * sizeof(lk_redis_reply_t), s_cmp_str);
    for (size_t i = 0; i < pairs; i++) {
        const lk_redis_reply_t *f = &sorted[2 * i], *v = &sorted[2 * i + 1];
        printf("%-6s %s\n", v->str ? s_access_name(v->str) : "?", f->str ? f->str : "");
    }
    if (!pairs)
        fprintf(stderr, "latchkey: no ACL entries for '%s'\n", user);
    free(sorted); /* the strings still belong to r */
    lk_redis_reply_free(&r);
    return LA_EXIT_OK;
}

int la_cmd_acl(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "set") == 0)
        return la_username_ok(argv[2], false) ? s_acl_set(ctx, argv[2], argv[3], argv[4])
                                              : LA_EXIT_USAGE;
    if (argc == 3 && strcmp(argv[1], "show") == 0)
        return s_acl_show(ctx, argv[2]);
    return la_usage(argv[0]);
}

static int s_superuser(la_ctx_t *ctx, const char *user, const char *onoff)
{
    bool on = strcmp(onoff, "on") == 0;
    if (!on && strcmp(onoff, "off") != 0)
        return la_usage("user");
    int exists = s_user_exists(ctx, user);
    if (exists < 0)
        return LA_EXIT_FAIL;
    if (!exists) {
        fprintf(stderr, "latchkey: no user '%s' in Redis (set a password first)\n", user);
        return LA_EXIT_FAIL;
    }
    char *key = la_user_key(ctx, user);
    const char *set[] = {"HSET", key, "is_superuser", "1"};
    const char *del[] = {"HDEL", key, "is_superuser"};
    lk_redis_reply_t *r = on ? la_redis_cmd(ctx, 4, set) : la_redis_cmd(ctx, 3, del);
    free(key);
    if (!r)
        return LA_EXIT_FAIL;
    lk_redis_reply_free(&r);
    printf("user '%s': superuser %s\n", user, on ? "on" : "off");
    if (!on) {
        /* rights taken away: sessions that hold `#` must end now */
        char *users[] = {(char *)user};
        if (la_revoke(ctx, users, 1, S_REVOKE_WAIT_MS) == 0)
            printf("auth confirmed: clients of '%s' are being disconnected\n", user);
    }
    return LA_EXIT_OK;
}

static int s_show(la_ctx_t *ctx, const char *user)
{
    char *key = la_user_key(ctx, user);
    bool emqx = la_emqx_layout(ctx);
    const char *cmd[] = {"HMGET", key, emqx ? "password_hash" : "password", "is_superuser"};
    lk_redis_reply_t *r = la_redis_cmd(ctx, 4, cmd);
    free(key);
    if (!r)
        return LA_EXIT_FAIL;
    int rc = LA_EXIT_OK;
    if (r->type != LK_REDIS_ARRAY || r->count != 2 || r->items[0].type != LK_REDIS_STR) {
        fprintf(stderr, "latchkey: no user '%s' in Redis\n", user);
        rc = LA_EXIT_FAIL;
    } else {
        const char *pw = r->items[0].str;
        const char *fmt = emqx ? lk_config_get(ctx->config, "emqx_password_hash", "sha256")
                          : strncmp(pw, "$7$", 3) == 0 ? "$7$ (PBKDF2-SHA512)"
                          : strncmp(pw, "$6$", 3) == 0 ? "$6$ (SHA512)"
                          : strlen(pw) == 64           ? "sha256"
                                                       : "unknown (login impossible)";
        const char *su = r->items[1].type == LK_REDIS_STR ? r->items[1].str : "";
        bool super = strcmp(su, "1") == 0 || strcmp(su, "true") == 0;
        printf("user:      %s\npassword:  %s\nsuperuser: %s\n", user, fmt, super ? "yes" : "no");
    }
    lk_redis_reply_free(&r);
    return rc;
}

int la_cmd_user(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "superuser") == 0)
        return la_username_ok(argv[2], false) ? s_superuser(ctx, argv[2], argv[3]) : LA_EXIT_USAGE;
    if (argc == 3 && strcmp(argv[1], "show") == 0)
        return s_show(ctx, argv[2]);
    return la_usage(argv[0]);
}
