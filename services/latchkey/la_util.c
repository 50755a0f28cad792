/*  la_util: helpers the latchkey subcommands share — the Redis connection, password input
    and the Revoke round trip to the auth service over the bus. See la_cli.h. */
#include "la_cli.h"
#include "lk_replicas.h"
#include "lk_bus.h"
#include "lk_common.h"
#include "lk_loop.h"
#include <ctype.h>
#include <stdio.h>
#include <termios.h>
#include <unistd.h>

lk_redis_t *la_redis(la_ctx_t *ctx)
{
    if (!ctx->redis) {
        const char *host = lk_config_get(ctx->config, "redis_host", "127.0.0.1");
        int64_t port = lk_config_get_int(ctx->config, "redis_port", 6379);
        if (port < 0 || port > 65535) {
            fprintf(stderr, "latchkey: redis_port %" PRId64 " is out of range\n", port);
            return NULL;
        }
        ctx->redis = lk_redis_new(host, (int)port);
        if (lk_redis_configure(ctx->redis, ctx->config) != 0) {
            lk_redis_destroy(&ctx->redis);
            return NULL;
        }
    }
    if (lk_redis_connect(ctx->redis) != 0) {
        if (lk_redis_is_cluster(ctx->redis))
            fprintf(stderr, "latchkey: cannot reach the Redis Cluster at %s\n",
                    lk_config_get(ctx->config, "redis_cluster", ""));
        else
            fprintf(stderr, "latchkey: cannot reach Redis at %s:%s\n",
                    lk_config_get(ctx->config, "redis_host", "127.0.0.1"),
                    lk_config_get(ctx->config, "redis_port", "6379"));
        return NULL;
    }
    return ctx->redis;
}

lk_redis_reply_t *la_redis_cmd(la_ctx_t *ctx, int argc, const char **argv)
{
    lk_redis_t *rd = la_redis(ctx);
    if (!rd)
        return NULL;
    size_t lens[16];
    if (argc > (int)LK_ARRAY_LEN(lens))
        return NULL;
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    lk_redis_reply_t *r = lk_redis_cmdv(rd, argc, argv, lens);
    if (lk_redis_reply_failed(r)) {
        fprintf(stderr, "latchkey: redis %s: %s\n", argv[0], r ? r->str : "connection lost");
        lk_redis_reply_free(&r);
    }
    return r;
}

int la_redis_run(la_ctx_t *ctx, int argc, const char **argv)
{
    lk_redis_reply_t *r = la_redis_cmd(ctx, argc, argv);
    if (!r)
        return -1;
    lk_redis_reply_free(&r);
    return 0;
}

void la_tx_add(la_tx_t *tx, int argc, const char **argv)
{
    if (tx->n == tx->cap) {
        tx->cap = tx->cap ? tx->cap * 2 : 16;
        tx->argc = lk_realloc(tx->argc, (size_t)tx->cap * sizeof(int));
        tx->argv = lk_realloc(tx->argv, (size_t)tx->cap * sizeof(char **));
    }
    char **a = lk_calloc((size_t)argc, sizeof(char *));
    for (int i = 0; i < argc; i++)
        a[i] = lk_strdup(argv[i] ? argv[i] : "");
    tx->argc[tx->n] = argc;
    tx->argv[tx->n++] = a;
}

void la_tx_free(la_tx_t *tx)
{
    for (int i = 0; i < tx->n; i++) {
        for (int k = 0; k < tx->argc[i]; k++)
            free(tx->argv[i][k]);
        free(tx->argv[i]);
    }
    free(tx->argc);
    free(tx->argv);
    memset(tx, 0, sizeof(*tx));
}

int la_tx_run(la_ctx_t *ctx, la_tx_t *tx)
{
    lk_redis_t *redis = la_redis(ctx);
    if (!redis) {
        la_tx_free(tx);
        return -1;
    }
    int queued = 0;
    const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
    size_t ml[] = {5}, el[] = {4};
    if (lk_redis_appendv(redis, 1, multi, ml) == 0)
        queued++;
    for (int i = 0; i < tx->n; i++) {
        size_t lens[16];
        int argc = tx->argc[i] < 16 ? tx->argc[i] : 16;
        for (int k = 0; k < argc; k++)
            lens[k] = strlen(tx->argv[i][k]);
        if (lk_redis_appendv(redis, argc, (const char **)tx->argv[i], lens) == 0)
            queued++;
    }
    if (lk_redis_appendv(redis, 1, exec, el) == 0)
        queued++;
    bool ok = queued == tx->n + 2;
    for (int i = 0; i < queued; i++) {
        lk_redis_reply_t *x = lk_redis_get_reply(redis);
        if (!x) {
            ok = false;
            break;
        }
        if (x->type == LK_REDIS_ERR || (i == queued - 1 && x->type != LK_REDIS_ARRAY))
            ok = false;
        lk_redis_reply_free(&x);
    }
    if (!ok)
        fprintf(stderr, "latchkey: the Redis transaction failed: nothing was changed\n");
    la_tx_free(tx);
    return ok ? 0 : -1;
}

bool la_username_ok(const char *user, bool for_file)
{
    size_t n = strlen(user);
    if (n == 0 || n > 1024) {
        fprintf(stderr, "latchkey: a username has 1 to 1024 characters\n");
        return false;
    }
    for (size_t i = 0; i < n; i++)
        if (iscntrl((unsigned char)user[i])) {
            fprintf(stderr, "latchkey: control character in username\n");
            return false;
        }
    if (for_file && strchr(user, ':')) {
        fprintf(stderr, "latchkey: a username in a password file cannot contain ':'\n");
        return false;
    }
    if (strpbrk(user, "+#/"))
        fprintf(stderr,
                "latchkey: warning: '%s' contains + # or /: ACL patterns with %%u "
                "will not apply to it\n",
                user);
    return true;
}

/* one line from f without its line end; NULL at end of input */
static char *s_getline(FILE *f)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, f);
    if (n < 0) {
        free(line);
        return NULL;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = 0;
    return line;
}

static void s_wipe_free(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* prompts on stderr and reads a line from the terminal on stdin with echo off */
static char *s_prompt(const char *prompt)
{
    struct termios old, quiet;
    fputs(prompt, stderr);
    fflush(stderr);
    bool restore = tcgetattr(STDIN_FILENO, &old) == 0;
    if (restore) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        quiet.c_lflag |= ECHONL;
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    }
    char *line = s_getline(stdin);
    if (restore)
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
    return line;
}

char *la_read_password(void)
{
    char *pw;
    if (isatty(STDIN_FILENO)) {
        pw = s_prompt("Password: ");
        char *again = pw ? s_prompt("Reenter password: ") : NULL;
        if (!pw || !again || strcmp(pw, again) != 0) {
            fprintf(stderr, "latchkey: %s\n",
                    pw && again ? "passwords do not match" : "no password given");
            s_wipe_free(pw);
            s_wipe_free(again);
            return NULL;
        }
        s_wipe_free(again);
    } else
        pw = s_getline(stdin);
    if (!pw || !*pw) {
        fprintf(stderr, "latchkey: empty password refused\n");
        s_wipe_free(pw);
        return NULL;
    }
    return pw;
}

/* ---- Revoke over the bus ---- */

typedef struct {
    lk_loop_t *loop;
    lk_replicas_t *auths;
    lk_peer_t *to; /* the replica the Revoke went to */
    Lk__Envelope *env;
    bool sent;
    bool acked;
} s_revoke_t;

static void s_rv_up(lk_bus_t *bus, lk_peer_t *peer, bool restarted, void *arg)
{
    s_revoke_t *rv = arg;
    /* send once a replica of auth has answered our Hello: it then knows we are an
       operator */
    if (lk_replicas_has(rv->auths, peer) && !rv->sent) {
        rv->sent = lk_bus_send(bus, peer, rv->env, true) > 0;
        rv->to = peer;
        if (!rv->sent)
            lk_loop_stop(rv->loop);
    }
}

static void s_rv_down(lk_bus_t *bus, lk_peer_t *peer, void *arg)
{
    s_revoke_t *rv = arg;
    /* the replica died before it confirmed: another one forwards it */
    lk_peer_t *other = lk_replicas_other(rv->auths, peer);
    if (peer == rv->to && !rv->acked && other) {
        rv->to = other;
        if (lk_bus_move_unacked(bus, peer, other, NULL, NULL) == 0)
            lk_loop_stop(rv->loop);
    }
}

static void s_rv_acked(lk_bus_t *bus, lk_peer_t *peer, uint64_t seq, void *arg)
{
    s_revoke_t *rv = arg;
    rv->acked = true;
    lk_loop_stop(rv->loop);
}

static void s_rv_timeout(lk_loop_t *loop, void *arg)
{
    lk_loop_stop(loop);
}

static int s_revoke(la_ctx_t *ctx, char **users, int n, bool acl_changed, int timeout_ms)
{
    const char *endpoint = lk_config_get(ctx->config, "auth_endpoint", NULL);
    if (!endpoint || !*endpoint) {
        fprintf(stderr, "latchkey: auth_endpoint is not configured: cannot revoke sessions\n");
        return -1;
    }
    Lk__Revoke revoke = LK__REVOKE__INIT;
    revoke.n_usernames = (size_t)n;
    revoke.usernames = users;
    revoke.acl_changed = acl_changed;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_REVOKE;
    env.revoke = &revoke;

    char node[32];
    snprintf(node, sizeof(node), "cli-%d", (int)getpid());
    s_revoke_t rv = {.env = &env};
    rv.loop = lk_loop_new();
    lk_bus_handlers_t h = {NULL, s_rv_up, s_rv_down};
    lk_bus_t *bus = lk_bus_new(rv.loop, node, "latchkey", &h, &rv);
    lk_bus_on_acked(bus, s_rv_acked);
    if (lk_bus_configure(bus, ctx->config) != 0)
        fprintf(stderr, "latchkey: bus keys unusable: a tcp:// auth_endpoint will be refused\n");
    rv.auths = lk_replicas_connect(bus, ctx->config, "auth", "auth");
    if (!rv.auths) {
        lk_bus_destroy(&bus);
        lk_loop_destroy(&rv.loop);
        return -1;
    }
    int timer = lk_loop_timer(rv.loop, timeout_ms, false, s_rv_timeout, &rv);
    lk_loop_run(rv.loop);
    lk_loop_timer_cancel(rv.loop, timer);
    lk_replicas_destroy(&rv.auths);
    lk_bus_destroy(&bus);
    lk_loop_destroy(&rv.loop);
    if (!rv.acked) {
        fprintf(stderr,
                "latchkey: the auth service (%s) %s within %d ms: connected clients "
                "were not %s\n",
                endpoint, rv.sent ? "did not confirm" : "is not running", timeout_ms,
                acl_changed ? "told of the change" : "disconnected");
        return -1;
    }
    return 0;
}

int la_revoke(la_ctx_t *ctx, char **users, int n, int timeout_ms)
{
    return s_revoke(ctx, users, n, false, timeout_ms);
}

int la_acl_changed(la_ctx_t *ctx, char **users, int n, int timeout_ms)
{
    return s_revoke(ctx, users, n, true, timeout_ms);
}

/* ---- Redis layouts ---- */

bool la_emqx_layout(la_ctx_t *ctx)
{
    const char *spec = lk_config_get(ctx->config, "auth_backends", "");
    const char *r = strstr(spec, "redis"), *e = strstr(spec, "emqx");
    return e && (!r || e < r);
}

char *la_user_key(la_ctx_t *ctx, const char *user)
{
    return la_emqx_layout(ctx)
               ? lk_str_subst_user(lk_config_get(ctx->config, "emqx_user_key", "mqtt:%u"), user)
               : lk_str_subst_user(lk_config_get(ctx->config, "redis_user_key", "mqtt_user:%u"),
                                   user);
}

char *la_acl_key(la_ctx_t *ctx, const char *user)
{
    return lk_str_subst_user(lk_config_get(ctx->config,
                                           la_emqx_layout(ctx) ? "emqx_acl_key" : "redis_acl_key",
                                           "mqtt_acl:%u"),
                             user);
}

static char *s_sql_dir(la_ctx_t *ctx)
{
    const char *v = lk_config_get(ctx->config, "sql_dir", NULL);
    if (v && *v)
        return lk_strdup(v);
    const char *root = getenv("LATCHKEY_ROOT");
    if (!root || !*root)
        return NULL;
    size_t n = strlen(root) + 5;
    char *p = lk_malloc(n);
    snprintf(p, n, "%s/sql", root);
    return p;
}

/* the connection of pg_conninfo with the schema applied; NULL after printing why */
lk_pg_t *la_pg(la_ctx_t *ctx)
{
    lk_pg_t *pg = lk_pg_new(lk_config_get(ctx->config, "pg_conninfo", ""), "latchkey");
    if (lk_pg_connect(pg) != 0) {
        fprintf(stderr, "latchkey: cannot reach PostgreSQL (pg_conninfo)\n");
        lk_pg_destroy(&pg);
        return NULL;
    }
    char *dir = s_sql_dir(ctx);
    if (dir) {
        int version = 0;
        int rc = lk_pg_migrate(pg, dir, &version);
        if (rc != 0)
            fprintf(stderr, "latchkey: the schema in %s could not be applied\n", dir);
        free(dir);
        if (rc != 0) {
            lk_pg_destroy(&pg);
            return NULL;
        }
    }
    return pg;
}

/* runs sql; prints the server's message and returns NULL on failure (caller frees) */
lk_pg_result_t *la_pg_exec(lk_pg_t *pg, const char *sql, int n, const char *const *params)
{
    lk_pg_result_t *r = lk_pg_exec(pg, sql, n, params);
    if (r->status != LK_PG_OK) {
        fprintf(stderr, "latchkey: PostgreSQL: %s\n",
                r->message && *r->message ? r->message : "unavailable");
        lk_pg_result_free(&r);
    }
    return r;
}
