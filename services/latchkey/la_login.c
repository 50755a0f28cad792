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
#include <getopt.h>
#include <stdio.h>
#include <unistd.h>

#define S_LOGIN_WAIT_MS 5000
#define S_RESEND_MS 1000

typedef struct {
    lk_loop_t *loop;
    lk_bus_t *bus;
    lk_peer_t *arbiter;
    Lk__LoginRequest req;
    Lk__LoginReply *reply; /* copy of the answer */
} s_login_t;

static void s_send(s_login_t *st)
{
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_LOGIN_REQUEST;
    env.login_request = &st->req;
    lk_bus_send(st->bus, st->arbiter, &env, false);
}

static void s_up(lk_bus_t *bus, lk_peer_t *peer, bool restarted, void *arg)
{
    s_login_t *st = arg;
    if (peer == st->arbiter)
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
    if (lk_peer_alive(st->arbiter))
        s_send(st);
}

static void s_timeout(lk_loop_t *loop, void *arg)
{
    lk_loop_stop(loop);
}

int la_cmd_login(la_ctx_t *ctx, int argc, char **argv)
{
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
    st.arbiter = lk_bus_connect(st.bus, "lock-arbiter", endpoint);
    int t1 = lk_loop_timer(st.loop, S_RESEND_MS, true, s_resend, &st);
    int t2 = lk_loop_timer(st.loop, S_LOGIN_WAIT_MS, false, s_timeout, &st);
    lk_loop_run(st.loop);
    lk_loop_timer_cancel(st.loop, t1);
    lk_loop_timer_cancel(st.loop, t2);
    lk_bus_destroy(&st.bus);
    lk_loop_destroy(&st.loop);
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
