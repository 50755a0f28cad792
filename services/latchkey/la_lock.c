/*  la_lock: the smart-lock registry — `latchkey user add|del|list`, `latchkey lock
    add|del|list|sync`, `latchkey bind` and `latchkey unbind`.

    PostgreSQL (users, locks, bindings; schema in sql/) is the record. The lock-arbiter
    does not read it: it decides from a Redis mirror that these commands keep in step —
    lk:users (set of user names), lk:bind:<lock> (user → space-separated roles),
    lk:ubind:<user> (lock → roles), lk:lockcfg:<lock> (window_ms, quorum overrides). So an
    unlock decision is one Redis script and does not stall when PostgreSQL does.
    `latchkey lock sync` rebuilds the mirror from PostgreSQL (after editing the tables by
    hand, or restoring a backup). PostgreSQL is written first: a failure there leaves the
    mirror untouched. */
#include "la_cli.h"
#include "lk_common.h"
#include "lk_pg.h"
#include <getopt.h>
#include <stdio.h>

/* ---- PostgreSQL ---- */

/* sql_dir, else $LATCHKEY_ROOT/sql; NULL when neither (no migration then) */
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
static lk_pg_t *s_pg(la_ctx_t *ctx)
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
static lk_pg_result_t *s_exec(lk_pg_t *pg, const char *sql, int n, const char *const *params)
{
    lk_pg_result_t *r = lk_pg_exec(pg, sql, n, params);
    if (r->status != LK_PG_OK) {
        fprintf(stderr, "latchkey: PostgreSQL: %s\n",
                r->message && *r->message ? r->message : "unavailable");
        lk_pg_result_free(&r);
    }
    return r;
}

static bool s_name_ok(const char *what, const char *s)
{
    if (!s || !*s || strlen(s) > 200 || strpbrk(s, "/+#\t\n\r ")) {
        fprintf(stderr,
                "latchkey: '%s' cannot be a %s (empty, too long, or with / + # or "
                "white space)\n",
                s ? s : "", what);
        return false;
    }
    return true;
}

/* one Redis command of strings; 0 or -1 (printed) */
static int s_redis(la_ctx_t *ctx, int argc, const char **argv)
{
    lk_redis_reply_t *r = la_redis_cmd(ctx, argc, argv);
    if (!r)
        return -1;
    lk_redis_reply_free(&r);
    return 0;
}

/* the mirror of one (user, lock) pair from PostgreSQL's bindings */
static int s_mirror_pair(la_ctx_t *ctx, lk_pg_t *pg, const char *user, const char *lock)
{
    const char *p[] = {user, lock};
    lk_pg_result_t *r = s_exec(pg,
                               "SELECT string_agg(role, ' ' ORDER BY role) FROM bindings "
                               "WHERE user_name = $1 AND lockno = $2",
                               2, p);
    if (!r)
        return -1;
    const char *roles = lk_pg_value(r, 0, 0);
    char kb[300], ku[300];
    snprintf(kb, sizeof(kb), "lk:bind:%s", lock);
    snprintf(ku, sizeof(ku), "lk:ubind:%s", user);
    int rc = 0;
    if (roles && *roles) {
        const char *a[] = {"HSET", kb, user, roles};
        const char *b[] = {"HSET", ku, lock, roles};
        rc = s_redis(ctx, 4, a) | s_redis(ctx, 4, b);
    } else {
        const char *a[] = {"HDEL", kb, user};
        const char *b[] = {"HDEL", ku, lock};
        rc = s_redis(ctx, 3, a) | s_redis(ctx, 3, b);
    }
    lk_pg_result_free(&r);
    return rc;
}

/* ---- user ---- */

static int s_user_add(la_ctx_t *ctx, lk_pg_t *pg, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (!s_name_ok("user name", argv[i]))
            return LA_EXIT_USAGE;
        const char *p[] = {argv[i]};
        lk_pg_result_t *r =
            s_exec(pg, "INSERT INTO users (name) VALUES ($1) ON CONFLICT DO NOTHING", 1, p);
        if (!r)
            return LA_EXIT_FAIL;
        lk_pg_result_free(&r);
        const char *a[] = {"SADD", "lk:users", argv[i]};
        if (s_redis(ctx, 3, a) != 0)
            return LA_EXIT_FAIL;
        printf("user %s added\n", argv[i]);
    }
    return LA_EXIT_OK;
}

static int s_user_del(la_ctx_t *ctx, lk_pg_t *pg, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *p[] = {argv[i]};
        lk_pg_result_t *r = s_exec(pg, "DELETE FROM users WHERE name = $1", 1, p);
        if (!r)
            return LA_EXIT_FAIL;
        int64_t n = r->affected;
        lk_pg_result_free(&r);
        char ku[300];
        snprintf(ku, sizeof(ku), "lk:ubind:%s", argv[i]);
        const char *hk[] = {"HKEYS", ku};
        lk_redis_reply_t *locks = la_redis_cmd(ctx, 2, hk);
        if (!locks)
            return LA_EXIT_FAIL;
        for (size_t k = 0; k < locks->count; k++) {
            char kb[300];
            snprintf(kb, sizeof(kb), "lk:bind:%s", locks->items[k].str);
            const char *a[] = {"HDEL", kb, argv[i]};
            s_redis(ctx, 3, a);
        }
        lk_redis_reply_free(&locks);
        const char *a[] = {"DEL", ku};
        const char *b[] = {"SREM", "lk:users", argv[i]};
        if (s_redis(ctx, 2, a) != 0 || s_redis(ctx, 3, b) != 0)
            return LA_EXIT_FAIL;
        printf("user %s %s\n", argv[i], n ? "deleted with its bindings" : "did not exist");
    }
    return LA_EXIT_OK;
}

static int s_user_list(lk_pg_t *pg)
{
    lk_pg_result_t *r = s_exec(pg,
                               "SELECT u.name, coalesce(string_agg(b.lockno || ':' || b.role, "
                               "' ' ORDER BY b.lockno, b.role), '') FROM users u LEFT JOIN "
                               "bindings b ON b.user_name = u.name GROUP BY u.name ORDER BY 1",
                               0, NULL);
    if (!r)
        return LA_EXIT_FAIL;
    for (size_t i = 0; i < r->nrows; i++)
        printf("%s\t%s\n", lk_pg_value(r, i, 0), lk_pg_value(r, i, 1));
    lk_pg_result_free(&r);
    return LA_EXIT_OK;
}

int la_cmd_users(la_ctx_t *ctx, int argc, char **argv)
{
    bool add = argc >= 3 && strcmp(argv[1], "add") == 0;
    bool del = argc >= 3 && strcmp(argv[1], "del") == 0;
    bool list = argc == 2 && strcmp(argv[1], "list") == 0;
    if (!add && !del && !list)
        return la_cmd_user(ctx, argc, argv); /* superuser / show: la_acl.c */
    lk_pg_t *pg = s_pg(ctx);
    if (!pg)
        return LA_EXIT_FAIL;
    int rc = add   ? s_user_add(ctx, pg, argc - 2, argv + 2)
             : del ? s_user_del(ctx, pg, argc - 2, argv + 2)
                   : s_user_list(pg);
    lk_pg_destroy(&pg);
    return rc;
}

/* ---- lock ---- */

static int s_lock_add(la_ctx_t *ctx, lk_pg_t *pg, int argc, char **argv)
{
    const char *window = NULL, *quorum = NULL, *model = NULL;
    static const struct option opts[] = {{"window", required_argument, NULL, 'w'},
                                         {"quorum", required_argument, NULL, 'q'},
                                         {"model", required_argument, NULL, 'm'},
                                         {NULL, 0, NULL, 0}};
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "w:q:m:", opts, NULL)) != -1) {
        if (c == 'w')
            window = optarg;
        else if (c == 'q')
            quorum = optarg;
        else if (c == 'm')
            model = optarg;
        else
            return la_usage("lock");
    }
    if (optind != argc - 1)
        return la_usage("lock");
    const char *lock = argv[optind];
    if (!s_name_ok("lock id", lock))
        return LA_EXIT_USAGE;
    char window_ms[32] = "";
    if (window) {
        char *end = NULL;
        double w = strtod(window, &end);
        if (!end || *end || w <= 0 || w > 86400) {
            fprintf(stderr, "latchkey: --window wants seconds (0 < s <= 86400)\n");
            return LA_EXIT_USAGE;
        }
        snprintf(window_ms, sizeof(window_ms), "%lld", (long long)(w * 1000));
    }
    if (quorum && (atoi(quorum) < 1 || atoi(quorum) > 8)) {
        fprintf(stderr, "latchkey: --quorum wants 1 to 8\n");
        return LA_EXIT_USAGE;
    }
    const char *p[] = {lock, model};
    lk_pg_result_t *r = s_exec(pg,
                               "INSERT INTO locks (lockno, model) VALUES ($1, $2) ON CONFLICT "
                               "(lockno) DO UPDATE SET model = coalesce($2, locks.model)",
                               2, p);
    if (!r)
        return LA_EXIT_FAIL;
    lk_pg_result_free(&r);
    char kc[300];
    snprintf(kc, sizeof(kc), "lk:lockcfg:%s", lock);
    if (window) {
        const char *a[] = {"HSET", kc, "window_ms", window_ms};
        if (s_redis(ctx, 4, a) != 0)
            return LA_EXIT_FAIL;
    }
    if (quorum) {
        const char *a[] = {"HSET", kc, "quorum", quorum};
        if (s_redis(ctx, 4, a) != 0)
            return LA_EXIT_FAIL;
    }
    printf("lock %s added\n", lock);
    return LA_EXIT_OK;
}

static int s_lock_del(la_ctx_t *ctx, lk_pg_t *pg, const char *lock)
{
    const char *p[] = {lock};
    lk_pg_result_t *r = s_exec(pg, "DELETE FROM locks WHERE lockno = $1", 1, p);
    if (!r)
        return LA_EXIT_FAIL;
    int64_t n = r->affected;
    lk_pg_result_free(&r);
    char kb[300], kc[300], kr[300];
    snprintf(kb, sizeof(kb), "lk:bind:%s", lock);
    snprintf(kc, sizeof(kc), "lk:lockcfg:%s", lock);
    snprintf(kr, sizeof(kr), "lk:round:%s", lock);
    const char *hk[] = {"HKEYS", kb};
    lk_redis_reply_t *users = la_redis_cmd(ctx, 2, hk);
    if (!users)
        return LA_EXIT_FAIL;
    for (size_t k = 0; k < users->count; k++) {
        char ku[300];
        snprintf(ku, sizeof(ku), "lk:ubind:%s", users->items[k].str);
        const char *a[] = {"HDEL", ku, lock};
        s_redis(ctx, 3, a);
    }
    lk_redis_reply_free(&users);
    const char *a[] = {"DEL", kb, kc, kr};
    const char *z[] = {"ZREM", "lk:rounds", lock};
    if (s_redis(ctx, 4, a) != 0 || s_redis(ctx, 3, z) != 0)
        return LA_EXIT_FAIL;
    printf("lock %s %s\n", lock, n ? "deleted with its bindings" : "did not exist");
    return LA_EXIT_OK;
}

static int s_lock_list(la_ctx_t *ctx, lk_pg_t *pg)
{
    lk_pg_result_t *r = s_exec(pg,
                               "SELECT l.lockno, coalesce(l.model, ''), coalesce(string_agg("
                               "b.user_name || ':' || b.role, ' ' ORDER BY b.user_name, b.role),"
                               " '') FROM locks l LEFT JOIN bindings b ON b.lockno = l.lockno "
                               "GROUP BY l.lockno, l.model ORDER BY 1",
                               0, NULL);
    if (!r)
        return LA_EXIT_FAIL;
    for (size_t i = 0; i < r->nrows; i++) {
        const char *lock = lk_pg_value(r, i, 0);
        char kc[300];
        snprintf(kc, sizeof(kc), "lk:lockcfg:%s", lock);
        const char *hg[] = {"HMGET", kc, "window_ms", "quorum"};
        lk_redis_reply_t *cfg = la_redis_cmd(ctx, 4, hg);
        const char *w = cfg && cfg->count == 2 && cfg->items[0].str ? cfg->items[0].str : "-";
        const char *q = cfg && cfg->count == 2 && cfg->items[1].str ? cfg->items[1].str : "-";
        printf("%s\tmodel=%s\twindow_ms=%s\tquorum=%s\t%s\n", lock, lk_pg_value(r, i, 1), w, q,
               lk_pg_value(r, i, 2));
        lk_redis_reply_free(&cfg);
    }
    lk_pg_result_free(&r);
    return LA_EXIT_OK;
}

/* deletes every key matching pattern (SCAN); 0 or -1 */
static int s_del_matching(la_ctx_t *ctx, const char *pattern)
{
    char cursor[32] = "0";
    do {
        const char *sc[] = {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"};
        lk_redis_reply_t *r = la_redis_cmd(ctx, 6, sc);
        if (!r || r->type != LK_REDIS_ARRAY || r->count != 2) {
            lk_redis_reply_free(&r);
            return -1;
        }
        snprintf(cursor, sizeof(cursor), "%s", r->items[0].str ? r->items[0].str : "0");
        for (size_t i = 0; i < r->items[1].count; i++) {
            const char *d[] = {"DEL", r->items[1].items[i].str};
            s_redis(ctx, 2, d);
        }
        lk_redis_reply_free(&r);
    } while (strcmp(cursor, "0") != 0);
    return 0;
}

static int s_lock_sync(la_ctx_t *ctx, lk_pg_t *pg)
{
    lk_pg_result_t *users = s_exec(pg, "SELECT name FROM users", 0, NULL);
    lk_pg_result_t *binds = users ? s_exec(pg,
                                           "SELECT user_name, lockno, string_agg(role, ' ' "
                                           "ORDER BY role) FROM bindings GROUP BY 1, 2",
                                           0, NULL)
                                  : NULL;
    int rc = LA_EXIT_FAIL;
    const char *du[] = {"DEL", "lk:users"};
    if (binds && s_del_matching(ctx, "lk:bind:*") == 0 && s_del_matching(ctx, "lk:ubind:*") == 0 &&
        s_redis(ctx, 2, du) == 0) {
        rc = LA_EXIT_OK;
        for (size_t i = 0; i < users->nrows && rc == LA_EXIT_OK; i++) {
            const char *a[] = {"SADD", "lk:users", lk_pg_value(users, i, 0)};
            if (s_redis(ctx, 3, a) != 0)
                rc = LA_EXIT_FAIL;
        }
        for (size_t i = 0; i < binds->nrows && rc == LA_EXIT_OK; i++) {
            const char *u = lk_pg_value(binds, i, 0), *l = lk_pg_value(binds, i, 1),
                       *roles = lk_pg_value(binds, i, 2);
            char kb[300], ku[300];
            snprintf(kb, sizeof(kb), "lk:bind:%s", l);
            snprintf(ku, sizeof(ku), "lk:ubind:%s", u);
            const char *a[] = {"HSET", kb, u, roles};
            const char *b[] = {"HSET", ku, l, roles};
            if (s_redis(ctx, 4, a) != 0 || s_redis(ctx, 4, b) != 0)
                rc = LA_EXIT_FAIL;
        }
        if (rc == LA_EXIT_OK)
            printf("mirror rebuilt: %zu user(s), %zu binding(s)\n", users->nrows, binds->nrows);
    }
    lk_pg_result_free(&users);
    lk_pg_result_free(&binds);
    return rc;
}

int la_cmd_lock(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc < 2)
        return la_usage(argv[0]);
    const char *sub = argv[1];
    bool ok = (strcmp(sub, "add") == 0 && argc >= 3) || (strcmp(sub, "del") == 0 && argc == 3) ||
              ((strcmp(sub, "list") == 0 || strcmp(sub, "sync") == 0) && argc == 2);
    if (!ok)
        return la_usage(argv[0]);
    lk_pg_t *pg = s_pg(ctx);
    if (!pg)
        return LA_EXIT_FAIL;
    int rc = strcmp(sub, "add") == 0    ? s_lock_add(ctx, pg, argc - 1, argv + 1)
             : strcmp(sub, "del") == 0  ? s_lock_del(ctx, pg, argv[2])
             : strcmp(sub, "list") == 0 ? s_lock_list(ctx, pg)
                                        : s_lock_sync(ctx, pg);
    lk_pg_destroy(&pg);
    return rc;
}

/* ---- bind / unbind ---- */

int la_cmd_bind(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc != 4)
        return la_usage(argv[0]);
    const char *user = argv[1], *lock = argv[2], *role = argv[3];
    if (!s_name_ok("user name", user) || !s_name_ok("lock id", lock) || !s_name_ok("role", role))
        return LA_EXIT_USAGE;
    if (strcmp(role, "statu") == 0 || strcmp(role, "call") == 0 || role[0] == '$') {
        fprintf(stderr, "latchkey: '%s' cannot be a role (its topic has another use)\n", role);
        return LA_EXIT_USAGE;
    }
    lk_pg_t *pg = s_pg(ctx);
    if (!pg)
        return LA_EXIT_FAIL;
    int rc = LA_EXIT_FAIL;
    const char *p[] = {user, lock, role};
    lk_pg_result_t *r = lk_pg_exec(pg,
                                   "INSERT INTO bindings (user_name, lockno, role) VALUES "
                                   "($1, $2, $3) ON CONFLICT DO NOTHING",
                                   3, p);
    if (r->status == LK_PG_ERROR && strcmp(r->sqlstate, "23503") == 0)
        fprintf(stderr,
                "latchkey: no user '%s' or no lock '%s' (latchkey user add / lock "
                "add first)\n",
                user, lock);
    else if (r->status != LK_PG_OK)
        fprintf(stderr, "latchkey: PostgreSQL: %s\n",
                r->message && *r->message ? r->message : "unavailable");
    else if (s_mirror_pair(ctx, pg, user, lock) == 0) {
        printf("%s bound to %s as %s\n", user, lock, role);
        rc = LA_EXIT_OK;
    }
    lk_pg_result_free(&r);
    lk_pg_destroy(&pg);
    return rc;
}

int la_cmd_unbind(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc != 3 && argc != 4)
        return la_usage(argv[0]);
    const char *user = argv[1], *lock = argv[2], *role = argc == 4 ? argv[3] : NULL;
    lk_pg_t *pg = s_pg(ctx);
    if (!pg)
        return LA_EXIT_FAIL;
    int rc = LA_EXIT_FAIL;
    const char *p[] = {user, lock, role};
    lk_pg_result_t *r = s_exec(pg,
                               "DELETE FROM bindings WHERE user_name = $1 AND lockno = $2 AND "
                               "($3::text IS NULL OR role = $3)",
                               3, p);
    if (r && s_mirror_pair(ctx, pg, user, lock) == 0) {
        printf("%" PRId64 " binding(s) of %s to %s removed\n", r->affected, user, lock);
        rc = LA_EXIT_OK;
    }
    lk_pg_result_free(&r);
    lk_pg_destroy(&pg);
    return rc;
}
