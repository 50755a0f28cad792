/*  la_login: `latchkey login <user>` — temporary MQTT credentials for a user's locks, asked
    of the lock-arbiter over the bus (LoginRequest on arbiter_endpoint, the same operation
    an app back end uses) — and `latchkey history <lock>`, the lock's events from
    PostgreSQL as JSON (the rows the MQTT history query returns).

    login prints "username <u>", "password <p>", "expires_at_ms <ms>" and "locks <l>..."
    lines. */
#include "la_cli.h"
#include "lk_bus.h"
#include "lk_common.h"
#include "lk_loop.h"
#include "lk_pg.h"
#include "lk_replicas.h"
#include <getopt.h>
#include <stdio.h>
#include <unistd.h>

#define S_LOGIN_WAIT_MS 5000
#define S_RESEND_MS 1000

typedef struct {
    lk_loop_t *loop;
    lk_bus_t *bus;
    lk_replicas_t *arbiters; /* logins are stateless: any live replica */
    bool sent;
    Lk__LoginRequest req;
    Lk__LoginReply *reply; /* copy of the answer */
} s_login_t;

static void s_send(s_login_t *st)
{
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_LOGIN_REQUEST;
    env.login_request = &st->req;
    lk_bus_send(st->bus, lk_replicas_pick(st->arbiters), &env, false);
    st->sent = true;
}

static void s_up(lk_bus_t *bus, lk_peer_t *peer, bool restarted, void *arg)
{
    s_login_t *st = arg;
    if (lk_replicas_has(st->arbiters, peer) && !st->sent)
        s_send(st);
}

static void s_on_message(lk_bus_t *bus, lk_peer_t *peer, Lk__Envelope *env, void *arg)
{
    s_login_t *st = arg;
    if (env->body_case != LK__ENVELOPE__BODY_LOGIN_REPLY || env->login_reply->req != st->req.req)
        return;
    size_t n = lk__login_reply__get_packed_size(env->login_reply);
    uint8_t *buf = lk_malloc(n ? n : 1);
    lk__login_reply__pack(env->login_reply, buf);
    st->reply = lk__login_reply__unpack(NULL, n, buf);
    free(buf);
    lk_loop_stop(st->loop);
}

static void s_resend(lk_loop_t *loop, void *arg)
{
    s_login_t *st = arg;
    /* the request (unreliable) may have been lost with a restarting arbiter */
    if (lk_replicas_alive(st->arbiters))
        s_send(st);
}

static void s_timeout(lk_loop_t *loop, void *arg)
{
    lk_loop_stop(loop);
}

/* ---- login list / refresh / end ---- */

static int s_login_list(la_ctx_t *ctx, const char *user)
{
    const char *zr[] = {"ZRANGE", "lk:arb:logins", "0", "-1", "WITHSCORES"};
    lk_redis_reply_t *r = la_redis_cmd(ctx, 5, zr);
    if (!r)
        return LA_EXIT_FAIL;
    int64_t now = lk_wall_ms();
    for (size_t i = 0; i + 1 < r->count; i += 2) {
        char key[300];
        snprintf(key, sizeof(key), "lk:{arb}:login:%s", r->items[i].str);
        const char *g[] = {"GET", key};
        lk_redis_reply_t *u = la_redis_cmd(ctx, 2, g);
        if (u && u->type == LK_REDIS_STR && (!user || strcmp(user, u->str) == 0)) {
            int64_t exp = strtoll(r->items[i + 1].str, NULL, 10);
            printf("%s\t%s\texpires_at_ms=%" PRId64 "\tleft_s=%" PRId64 "\n", r->items[i].str,
                   u->str, exp, exp > now ? (exp - now) / 1000 : 0);
        }
        lk_redis_reply_free(&u);
    }
    lk_redis_reply_free(&r);
    return LA_EXIT_OK;
}

static int s_login_refresh(la_ctx_t *ctx, const char *name, long ttl)
{
    if (ttl <= 0)
        ttl = (long)lk_config_get_int(ctx->config, "login_ttl", 86400);
    char kl[300], ttl_s[24], exp_s[24];
    snprintf(kl, sizeof(kl), "lk:{arb}:login:%s", name);
    snprintf(ttl_s, sizeof(ttl_s), "%ld", ttl);
    int64_t exp = lk_wall_ms() + (int64_t)ttl * 1000;
    snprintf(exp_s, sizeof(exp_s), "%" PRId64, exp);
    char *uk = la_user_key(ctx, name), *ak = la_acl_key(ctx, name);
    /* only a login still alive is extended (XX: the sorted set entry must exist) */
    const char *e[] = {"EXPIRE", kl, ttl_s};
    lk_redis_reply_t *r = la_redis_cmd(ctx, 3, e);
    int rc = LA_EXIT_FAIL;
    if (r && r->integer == 1) {
        const char *a[] = {"EXPIRE", uk, ttl_s};
        const char *b[] = {"EXPIRE", ak, ttl_s};
        const char *z[] = {"ZADD", "lk:arb:logins", "XX", exp_s, name};
        lk_redis_reply_t *x = la_redis_cmd(ctx, 3, a), *y = la_redis_cmd(ctx, 3, b),
                         *w = la_redis_cmd(ctx, 5, z);
        if (x && y && w) {
            printf("%s\texpires_at_ms=%" PRId64 "\n", name, exp);
            rc = LA_EXIT_OK;
        }
        lk_redis_reply_free(&x);
        lk_redis_reply_free(&y);
        lk_redis_reply_free(&w);
    } else if (r)
        fprintf(stderr, "latchkey: no active temporary login '%s'\n", name);
    lk_redis_reply_free(&r);
    free(uk);
    free(ak);
    return rc;
}

static int s_login_end(la_ctx_t *ctx, int n, char **names)
{
    for (int i = 0; i < n; i++) {
        char kl[300];
        snprintf(kl, sizeof(kl), "lk:{arb}:login:%s", names[i]);
        const char *g[] = {"EXISTS", kl};
        lk_redis_reply_t *r = la_redis_cmd(ctx, 2, g);
        bool temporary = r && r->integer == 1;
        lk_redis_reply_free(&r);
        if (!temporary) {
            /* never a permanent account by this door */
            fprintf(stderr, "latchkey: '%s' is no active temporary login\n", names[i]);
            return LA_EXIT_FAIL;
        }
    }
    return la_logins_end(ctx, names, n, false) == 0 ? LA_EXIT_OK : LA_EXIT_FAIL;
}

int la_cmd_login(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "list") == 0) {
        if (argc > 3)
            return la_usage(argv[0]);
        return s_login_list(ctx, argc == 3 ? argv[2] : NULL);
    }
    if (argc >= 2 && strcmp(argv[1], "end") == 0) {
        if (argc < 3)
            return la_usage(argv[0]);
        return s_login_end(ctx, argc - 2, argv + 2);
    }
    if (argc >= 2 && strcmp(argv[1], "refresh") == 0) {
        long ttl = 0;
        int i = 2;
        if (argc == 5 && strcmp(argv[2], "--ttl") == 0) {
            ttl = strtol(argv[3], NULL, 10);
            i = 4;
            if (ttl < 1)
                return la_usage(argv[0]);
        }
        if (i != argc - 1)
            return la_usage(argv[0]);
        return s_login_refresh(ctx, argv[i], ttl);
    }

    static const struct option opts[] = {{"ttl", required_argument, NULL, 't'}, {NULL, 0, NULL, 0}};
    long ttl = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "t:", opts, NULL)) != -1) {
        if (c != 't')
            return la_usage(argv[0]);
        ttl = strtol(optarg, NULL, 10);
        if (ttl < 1) {
            fprintf(stderr, "latchkey: --ttl wants seconds (>= 1)\n");
            return LA_EXIT_USAGE;
        }
    }
    if (optind != argc - 1)
        return la_usage(argv[0]);
    const char *endpoint = lk_config_get(ctx->config, "arbiter_endpoint", NULL);
    if (!endpoint || !*endpoint) {
        fprintf(stderr, "latchkey: arbiter_endpoint is not configured\n");
        return LA_EXIT_FAIL;
    }
    s_login_t st = {0};
    lk__login_request__init(&st.req);
    st.req.req = (uint64_t)getpid() << 20 | (uint64_t)(lk_mono_ms() & 0xFFFFF);
    st.req.user = argv[optind];
    st.req.ttl = (uint32_t)ttl;
    char node[32];
    snprintf(node, sizeof(node), "cli-%d", (int)getpid());
    st.loop = lk_loop_new();
    lk_bus_handlers_t h = {s_on_message, s_up, NULL};
    st.bus = lk_bus_new(st.loop, node, "latchkey", &h, &st);
    lk_bus_configure(st.bus, ctx->config);
    st.arbiters = lk_replicas_connect(st.bus, ctx->config, "arbiter", "lock-arbiter");
    if (!st.arbiters) {
        lk_bus_destroy(&st.bus);
        lk_loop_destroy(&st.loop);
        return LA_EXIT_FAIL;
    }
    int t1 = lk_loop_timer(st.loop, S_RESEND_MS, true, s_resend, &st);
    int t2 = lk_loop_timer(st.loop, S_LOGIN_WAIT_MS, false, s_timeout, &st);
    lk_loop_run(st.loop);
    lk_loop_timer_cancel(st.loop, t1);
    lk_loop_timer_cancel(st.loop, t2);
    lk_bus_destroy(&st.bus);
    lk_loop_destroy(&st.loop);
    lk_replicas_destroy(&st.arbiters);
    int rc = LA_EXIT_FAIL;
    if (!st.reply)
        fprintf(stderr, "latchkey: the lock-arbiter (%s) did not answer within %d ms\n", endpoint,
                S_LOGIN_WAIT_MS);
    else if (!st.reply->ok)
        fprintf(stderr, "latchkey: login of %s refused: %s\n", argv[optind],
                st.reply->reason ? st.reply->reason : "?");
    else {
        printf("username %s\npassword %s\nexpires_at_ms %" PRIu64 "\nlocks", st.reply->username,
               st.reply->password, st.reply->expires_at_ms);
        for (size_t i = 0; i < st.reply->n_locks; i++)
            printf(" %s", st.reply->locks[i]);
        printf("\n");
        rc = LA_EXIT_OK;
    }
    if (st.reply)
        lk__login_reply__free_unpacked(st.reply, NULL);
    return rc;
}

/* ---- history ---- */

int la_cmd_history(la_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {{"from", required_argument, NULL, 'f'},
                                         {"to", required_argument, NULL, 't'},
                                         {"limit", required_argument, NULL, 'l'},
                                         {NULL, 0, NULL, 0}};
    int64_t now = lk_wall_ms();
    long long from = -1, to = now, limit = 100;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "f:t:l:", opts, NULL)) != -1) {
        if (c == 'f')
            from = strtoll(optarg, NULL, 10);
        else if (c == 't')
            to = strtoll(optarg, NULL, 10);
        else if (c == 'l')
            limit = strtoll(optarg, NULL, 10);
        else
            return la_usage(argv[0]);
    }
    if (optind != argc - 1 || limit < 1)
        return la_usage(argv[0]);
    if (from < 0)
        from = to - 86400000LL;
    char f[24], t[24], l[24];
    snprintf(f, sizeof(f), "%lld", from);
    snprintf(t, sizeof(t), "%lld", to);
    snprintf(l, sizeof(l), "%lld", limit);
    const char *params[] = {argv[optind], f, t, l};
    lk_pg_t *pg = lk_pg_new(lk_config_get(ctx->config, "pg_conninfo", ""), "latchkey");
    /* the same rows as the MQTT history query (services/lock-arbiter/ar_query.c) */
    lk_pg_result_t *r = lk_pg_exec(
        pg,
        "SELECT coalesce(json_agg(json_build_object('id', id, 'kind', kind, 'lock', lockno, "
        "'actor', actor, 'time', (extract(epoch FROM time) * 1000)::bigint, 'details', "
        "details) ORDER BY time, seq), '[]'::json)::text FROM (SELECT * FROM events WHERE "
        "lockno = $1 AND time >= to_timestamp($2::double precision / 1000) AND time <= "
        "to_timestamp($3::double precision / 1000) ORDER BY time DESC, seq DESC LIMIT $4) e",
        4, params);
    int rc = LA_EXIT_FAIL;
    if (r->status != LK_PG_OK)
        fprintf(stderr, "latchkey: PostgreSQL: %s\n",
                r->message && *r->message ? r->message : "unavailable");
    else {
        printf("%s\n", lk_pg_value(r, 0, 0) ? lk_pg_value(r, 0, 0) : "[]");
        rc = LA_EXIT_OK;
    }
    lk_pg_result_free(&r);
    lk_pg_destroy(&pg);
    return rc;
}
