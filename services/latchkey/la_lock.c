/*  la_lock: the smart-lock registry — `latchkey user add|del|list`, `latchkey lock
    add|del|list|sync`, `latchkey bind` and `latchkey unbind`.

    PostgreSQL (users, locks, bindings; schema in sql/) is the record. The lock-arbiter
    does not read it: it decides from a Redis mirror that these commands keep in step —
    lk:users (set of user names), lk:{arb}:bind:<lock> (user → space-separated roles),
    lk:ubind:<user> (lock → roles), lk:{arb}:lockcfg:<lock> (window_ms, quorum overrides). So an
    unlock decision is one Redis script and does not stall when PostgreSQL does.
    `latchkey lock sync` rebuilds the mirror from PostgreSQL (after editing the tables by
    hand, or restoring a backup). PostgreSQL is written first: a failure there leaves the
    mirror untouched.

    Issue 13 additions: lk:locks (the registered lock ids) and lk:locks:ver (bumped at every
    change) let the auth service guard every lock's topics (services/auth/au_lock.h);
    lk:lockdev:<lock> / lk:devlock:<username> name the lock's device credential. Settings
    (window_ms, quorum) and the device live in PostgreSQL's locks row (sql/013); the mirror
    of a lock is rewritten in one MULTI/EXEC, and `lock sync` rebuilds all of it in one.
    Changes that take access away end the temporary logins concerned (la_end_logins) and
    have every connection re-read its ACL. */
#include "la_cli.h"
#include "lk_common.h"
#include "lk_crypto.h"
#include "lk_pg.h"
#include <getopt.h>
#include <stdio.h>

/* ---- PostgreSQL ---- */

/* sql_dir, else $LATCHKEY_ROOT/sql; NULL when neither (no migration then) */

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

/* ---- temporary logins ---- */

/* the temporary logins of these users (NULL users: those whose mapping is gone), from
   lk:arb:logins; *n set; caller frees the array and its strings */
static char **s_logins_of(la_ctx_t *ctx, char **users, int n_users, int *n_out)
{
    *n_out = 0;
    const char *zr[] = {"ZRANGE", "lk:arb:logins", "0", "-1"};
    lk_redis_reply_t *names = la_redis_cmd(ctx, 4, zr);
    if (!names)
        return NULL;
    char **out = lk_calloc(names->count + 1, sizeof(char *));
    int n = 0;
    for (size_t i = 0; i < names->count; i++) {
        char key[300];
        snprintf(key, sizeof(key), "lk:{arb}:login:%s", names->items[i].str);
        const char *g[] = {"GET", key};
        lk_redis_reply_t *u = la_redis_cmd(ctx, 2, g);
        bool match = false;
        for (int k = 0; u && u->type == LK_REDIS_STR && k < n_users; k++)
            match |= strcmp(u->str, users[k]) == 0;
        /* a name whose mapping is gone has ended already: tidy the index */
        if (match || (u && u->type != LK_REDIS_STR))
            out[n++] = lk_strdup(names->items[i].str);
        lk_redis_reply_free(&u);
    }
    lk_redis_reply_free(&names);
    *n_out = n;
    return out;
}

static void s_names_free(char **names, int n)
{
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

int la_logins_end(la_ctx_t *ctx, char **names, int n, bool quiet)
{
    if (n == 0)
        return 0;
    la_tx_t tx = {0};
    for (int i = 0; i < n; i++) {
        char *uk = la_user_key(ctx, names[i]), *ak = la_acl_key(ctx, names[i]);
        char lk_[300];
        snprintf(lk_, sizeof(lk_), "lk:{arb}:login:%s", names[i]);
        const char *d[] = {"DEL", uk, ak, lk_};
        la_tx_add(&tx, 4, d);
        const char *z[] = {"ZREM", "lk:arb:logins", names[i]};
        la_tx_add(&tx, 3, z);
        free(uk);
        free(ak);
    }
    int rc = la_tx_run(ctx, &tx);
    if (rc == 0 && la_revoke(ctx, names, n, 2000) != 0)
        rc = -1;
    if (rc == 0 && !quiet)
        printf("%d temporary login(s) ended\n", n);
    return rc;
}

int la_end_logins(la_ctx_t *ctx, char **users, int n_users, bool quiet)
{
    int n = 0;
    char **ended = s_logins_of(ctx, users, n_users, &n);
    if (!ended)
        return -1;
    int rc = la_logins_end(ctx, ended, n, quiet);
    s_names_free(ended, n);
    return rc;
}

/* every connection re-reads its ACL (the lock set or a binding changed); a stack without
   auth is told nothing, with a warning */
static void s_acl_reread(la_ctx_t *ctx, char **users, int n)
{
    if (la_acl_changed(ctx, users, n, 2000) != 0)
        fprintf(stderr, "latchkey: connected clients keep their old lock rules until they "
                        "reconnect\n");
}

/* the mirror of one (user, lock) pair from PostgreSQL's bindings */
static int s_mirror_pair(la_ctx_t *ctx, lk_pg_t *pg, const char *user, const char *lock)
{
    const char *p[] = {user, lock};
    lk_pg_result_t *r = la_pg_exec(pg,
                                   "SELECT string_agg(role, ' ' ORDER BY role) FROM bindings "
                                   "WHERE user_name = $1 AND lockno = $2",
                                   2, p);
    if (!r)
        return -1;
    const char *roles = lk_pg_value(r, 0, 0);
    char kb[300], ku[300];
    snprintf(kb, sizeof(kb), "lk:{arb}:bind:%s", lock);
    snprintf(ku, sizeof(ku), "lk:ubind:%s", user);
    int rc = 0;
    if (roles && *roles) {
        const char *a[] = {"HSET", kb, user, roles};
        const char *b[] = {"HSET", ku, lock, roles};
        rc = la_redis_run(ctx, 4, a) | la_redis_run(ctx, 4, b);
    } else {
        const char *a[] = {"HDEL", kb, user};
        const char *b[] = {"HDEL", ku, lock};
        rc = la_redis_run(ctx, 3, a) | la_redis_run(ctx, 3, b);
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
            la_pg_exec(pg, "INSERT INTO users (name) VALUES ($1) ON CONFLICT DO NOTHING", 1, p);
        if (!r)
            return LA_EXIT_FAIL;
        lk_pg_result_free(&r);
        const char *a[] = {"SADD", "lk:users", argv[i]};
        if (la_redis_run(ctx, 3, a) != 0)
            return LA_EXIT_FAIL;
        printf("user %s added\n", argv[i]);
    }
    return LA_EXIT_OK;
}

static int s_user_del(la_ctx_t *ctx, lk_pg_t *pg, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *p[] = {argv[i]};
        lk_pg_result_t *r = la_pg_exec(pg, "DELETE FROM users WHERE name = $1", 1, p);
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
            snprintf(kb, sizeof(kb), "lk:{arb}:bind:%s", locks->items[k].str);
            const char *a[] = {"HDEL", kb, argv[i]};
            la_redis_run(ctx, 3, a);
        }
        lk_redis_reply_free(&locks);
        const char *a[] = {"DEL", ku};
        const char *b[] = {"SREM", "lk:users", argv[i]};
        if (la_redis_run(ctx, 2, a) != 0 || la_redis_run(ctx, 3, b) != 0)
            return LA_EXIT_FAIL;
        printf("user %s %s\n", argv[i], n ? "deleted with its bindings" : "did not exist");
        /* access that ends: its temporary logins at once, its own account's lock rules */
        if (la_end_logins(ctx, argv + i, 1, false) != 0)
            return LA_EXIT_FAIL;
        s_acl_reread(ctx, argv + i, 1);
    }
    return LA_EXIT_OK;
}

static int s_user_list(lk_pg_t *pg)
{
    lk_pg_result_t *r = la_pg_exec(pg,
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
    lk_pg_t *pg = la_pg(ctx);
    if (!pg)
        return LA_EXIT_FAIL;
    int rc = add   ? s_user_add(ctx, pg, argc - 2, argv + 2)
             : del ? s_user_del(ctx, pg, argc - 2, argv + 2)
                   : s_user_list(pg);
    lk_pg_destroy(&pg);
    return rc;
}

/* ---- lock ---- */

/* the Redis mirror of one lock from its PostgreSQL row (gone: every trace removed), in
   one transaction; lk:locks:ver moves so that auth re-reads the lock set */
static int s_mirror_lock(la_ctx_t *ctx, lk_pg_t *pg, const char *lock)
{
    const char *p[] = {lock};
    lk_pg_result_t *r = la_pg_exec(pg,
                                   "SELECT window_ms::text, quorum::text, device FROM locks WHERE "
                                   "lockno = $1",
                                   1, p);
    if (!r)
        return -1;
    char kc[300], kd[300];
    snprintf(kc, sizeof(kc), "lk:{arb}:lockcfg:%s", lock);
    snprintf(kd, sizeof(kd), "lk:lockdev:%s", lock);
    const char *g[] = {"GET", kd};
    lk_redis_reply_t *old = la_redis_cmd(ctx, 2, g);
    if (!old) {
        lk_pg_result_free(&r);
        return -1;
    }
    la_tx_t tx = {0};
    if (old->type == LK_REDIS_STR) {
        char k[300];
        snprintf(k, sizeof(k), "lk:devlock:%s", old->str);
        const char *d[] = {"DEL", k};
        la_tx_add(&tx, 2, d);
    }
    const char *d[] = {"DEL", kc, kd};
    la_tx_add(&tx, 3, d);
    if (r->nrows == 1) {
        const char *w = lk_pg_value(r, 0, 0), *q = lk_pg_value(r, 0, 1),
                   *dev = lk_pg_value(r, 0, 2);
        if (w) {
            const char *a[] = {"HSET", kc, "window_ms", w};
            la_tx_add(&tx, 4, a);
        }
        if (q) {
            const char *a[] = {"HSET", kc, "quorum", q};
            la_tx_add(&tx, 4, a);
        }
        if (dev) {
            char k[300];
            snprintf(k, sizeof(k), "lk:devlock:%s", dev);
            const char *a[] = {"SET", kd, dev};
            const char *b[] = {"SET", k, lock};
            la_tx_add(&tx, 3, a);
            la_tx_add(&tx, 3, b);
        }
        const char *a[] = {"SADD", "lk:locks", lock};
        la_tx_add(&tx, 3, a);
    } else {
        const char *a[] = {"SREM", "lk:locks", lock};
        la_tx_add(&tx, 3, a);
    }
    const char *v[] = {"INCR", "lk:locks:ver"};
    la_tx_add(&tx, 2, v);
    lk_redis_reply_free(&old);
    lk_pg_result_free(&r);
    return la_tx_run(ctx, &tx);
}

/* the device credential of a lock: a random password (printed once) in the Redis layout
   auth reads, or none for a client certificate (its CN is the username); its ACL is
   exactly publish /<lock>/statu and subscribe /<lock>/call */
static int s_device_credential(la_ctx_t *ctx, const char *lock, const char *dev, bool cert)
{
    char *ak = la_acl_key(ctx, dev);
    bool emqx = la_emqx_layout(ctx);
    char statu[300], call[300];
    snprintf(statu, sizeof(statu), "/%s/statu", lock);
    snprintf(call, sizeof(call), "/%s/call", lock);
    const char *a[] = {"DEL", ak};
    const char *b[] = {"HSET", ak, statu, emqx ? "publish" : "2", call, emqx ? "subscribe" : "1"};
    int rc = la_redis_run(ctx, 2, a) | la_redis_run(ctx, 6, b);
    free(ak);
    if (rc != 0)
        return -1;
    printf("device username %s\n", dev);
    if (cert) {
        printf("device credential: a client certificate with CN=%s on a listener with "
               "require_certificate and use_identity_as_username\n",
               dev);
    } else {
        char *pw = lk_crypto_token(18);
        if (!pw)
            return -1;
        char *args[] = {"passwd", (char *)dev, pw};
        /* passwd prints its own line */
        rc = la_cmd_passwd(ctx, 3, args) == LA_EXIT_OK ? 0 : -1;
        if (rc == 0)
            printf("device password %s\n", pw);
        memset(pw, 0, strlen(pw));
        free(pw);
    }
    printf("device topics: publish %s (0 unlocked, 1 locked; Last Will -2, QoS 1), subscribe "
           "%s (QoS 1: \"unlock\", MQTT 5 user property decision-id)\n",
           statu, call);
    return rc;
}

static int s_lock_add(la_ctx_t *ctx, lk_pg_t *pg, int argc, char **argv)
{
    const char *window = NULL, *quorum = NULL, *model = NULL, *device = NULL;
    bool cert = false, new_credential = false;
    static const struct option opts[] = {{"window", required_argument, NULL, 'w'},
                                         {"quorum", required_argument, NULL, 'q'},
                                         {"model", required_argument, NULL, 'm'},
                                         {"device", required_argument, NULL, 'd'},
                                         {"cert", no_argument, NULL, 'C'},
                                         {"new-credential", no_argument, NULL, 'N'},
                                         {NULL, 0, NULL, 0}};
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "w:q:m:d:CN", opts, NULL)) != -1) {
        if (c == 'w')
            window = optarg;
        else if (c == 'q')
            quorum = optarg;
        else if (c == 'm')
            model = optarg;
        else if (c == 'd')
            device = optarg;
        else if (c == 'C')
            cert = true;
        else if (c == 'N')
            new_credential = true;
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
    char dev_default[300];
    snprintf(dev_default, sizeof(dev_default), "lock-%s", lock);
    if (device && !la_username_ok(device, false))
        return LA_EXIT_USAGE;
    /* the device keeps its credential when the lock is added again, unless asked */
    const char *p0[] = {lock};
    lk_pg_result_t *r = la_pg_exec(pg, "SELECT device FROM locks WHERE lockno = $1", 1, p0);
    if (!r)
        return LA_EXIT_FAIL;
    const char *had = r->nrows ? lk_pg_value(r, 0, 0) : NULL;
    bool make = !had || new_credential || (device && strcmp(device, had) != 0);
    char *dev = lk_strdup(device ? device : had ? had : dev_default);
    lk_pg_result_free(&r);
    const char *p[] = {lock, model, window ? window_ms : NULL, quorum, dev};
    r = la_pg_exec(pg,
                   "INSERT INTO locks (lockno, model, window_ms, quorum, device) VALUES ($1, $2, "
                   "$3::bigint, $4::int, $5) ON CONFLICT (lockno) DO UPDATE SET model = "
                   "coalesce($2, locks.model), window_ms = coalesce($3::bigint, locks.window_ms), "
                   "quorum = coalesce($4::int, locks.quorum), device = $5",
                   5, p);
    if (!r) {
        free(dev);
        return LA_EXIT_FAIL;
    }
    lk_pg_result_free(&r);
    int rc = LA_EXIT_OK;
    if (make && s_device_credential(ctx, lock, dev, cert) != 0)
        rc = LA_EXIT_FAIL;
    if (rc == LA_EXIT_OK && s_mirror_lock(ctx, pg, lock) != 0)
        rc = LA_EXIT_FAIL;
    if (rc == LA_EXIT_OK) {
        printf("lock %s added (device %s)\n", lock, dev);
        s_acl_reread(ctx, NULL, 0);
    }
    free(dev);
    return rc;
}

static int s_lock_del(la_ctx_t *ctx, lk_pg_t *pg, const char *lock)
{
    const char *p[] = {lock};
    lk_pg_result_t *r =
        la_pg_exec(pg, "DELETE FROM locks WHERE lockno = $1 RETURNING device", 1, p);
    if (!r)
        return LA_EXIT_FAIL;
    int64_t n = r->nrows;
    char *dev = n && lk_pg_value(r, 0, 0) ? lk_strdup(lk_pg_value(r, 0, 0)) : NULL;
    lk_pg_result_free(&r);
    char kb[300], kc[300], kr[300];
    snprintf(kb, sizeof(kb), "lk:{arb}:bind:%s", lock);
    snprintf(kc, sizeof(kc), "lk:{arb}:lockcfg:%s", lock);
    snprintf(kr, sizeof(kr), "lk:{arb}:round:%s", lock);
    const char *hk[] = {"HKEYS", kb};
    lk_redis_reply_t *users = la_redis_cmd(ctx, 2, hk);
    if (!users) {
        free(dev);
        return LA_EXIT_FAIL;
    }
    la_tx_t tx = {0};
    char **names = lk_calloc(users->count + 1, sizeof(char *));
    for (size_t k = 0; k < users->count; k++) {
        char ku[300];
        snprintf(ku, sizeof(ku), "lk:ubind:%s", users->items[k].str);
        const char *a[] = {"HDEL", ku, lock};
        la_tx_add(&tx, 3, a);
        names[k] = users->items[k].str;
    }
    const char *a[] = {"DEL", kb, kc, kr};
    const char *z[] = {"ZREM", "lk:{arb}:rounds", lock};
    la_tx_add(&tx, 4, a);
    la_tx_add(&tx, 3, z);
    int rc =
        la_tx_run(ctx, &tx) == 0 && s_mirror_lock(ctx, pg, lock) == 0 ? LA_EXIT_OK : LA_EXIT_FAIL;
    if (rc == LA_EXIT_OK && dev) {
        /* the device's credential goes with the lock */
        char *uk = la_user_key(ctx, dev), *ak = la_acl_key(ctx, dev);
        const char *d[] = {"DEL", uk, ak};
        la_redis_run(ctx, 3, d);
        free(uk);
        free(ak);
        char *rv[] = {dev};
        la_revoke(ctx, rv, 1, 2000);
    }
    if (rc == LA_EXIT_OK) {
        printf("lock %s %s\n", lock, n ? "deleted with its bindings" : "did not exist");
        if (users->count && la_end_logins(ctx, names, (int)users->count, false) != 0)
            rc = LA_EXIT_FAIL;
        s_acl_reread(ctx, NULL, 0);
    }
    free(names);
    lk_redis_reply_free(&users);
    free(dev);
    return rc;
}

static int s_lock_list(la_ctx_t *ctx, lk_pg_t *pg)
{
    lk_pg_result_t *r = la_pg_exec(pg,
                                   "SELECT l.lockno, coalesce(l.model, ''), coalesce(l.window_ms::"
                                   "text, '-'), coalesce(l.quorum::text, '-'), coalesce(l.device, "
                                   "'-'), coalesce(string_agg(b.user_name || ':' || b.role, ' ' "
                                   "ORDER BY b.user_name, b.role), '') FROM locks l LEFT JOIN "
                                   "bindings b ON b.lockno = l.lockno GROUP BY l.lockno ORDER BY 1",
                                   0, NULL);
    if (!r)
        return LA_EXIT_FAIL;
    for (size_t i = 0; i < r->nrows; i++)
        printf("%s\tmodel=%s\twindow_ms=%s\tquorum=%s\tdevice=%s\t%s\n", lk_pg_value(r, i, 0),
               lk_pg_value(r, i, 1), lk_pg_value(r, i, 2), lk_pg_value(r, i, 3),
               lk_pg_value(r, i, 4), lk_pg_value(r, i, 5));
    lk_pg_result_free(&r);
    return LA_EXIT_OK;
}

/* every key matching pattern (SCAN of every master) appended to tx as a DEL; 0 or -1 */
static int s_del_matching(la_ctx_t *ctx, const char *pattern, la_tx_t *tx)
{
    lk_redis_t *redis = la_redis(ctx);
    int masters = redis ? lk_redis_masters(redis) : 0;
    if (masters < 1)
        return -1;
    for (int m = 0; m < masters; m++) {
        char cursor[32] = "0";
        do {
            const char *sc[] = {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"};
            lk_redis_reply_t *r = lk_redis_cmdv_at(redis, m, 6, sc, NULL);
            if (!r || r->type != LK_REDIS_ARRAY || r->count != 2) {
                lk_redis_reply_free(&r);
                return -1;
            }
            snprintf(cursor, sizeof(cursor), "%s", r->items[0].str ? r->items[0].str : "0");
            for (size_t i = 0; i < r->items[1].count; i++) {
                const char *d[] = {"DEL", r->items[1].items[i].str};
                la_tx_add(tx, 2, d);
            }
            lk_redis_reply_free(&r);
        } while (strcmp(cursor, "0") != 0);
    }
    return 0;
}

/* rebuilds the whole mirror from PostgreSQL in one MULTI/EXEC: the arbiter and auth see
   the old mirror or the new one, never a half */
static int s_lock_sync(la_ctx_t *ctx, lk_pg_t *pg)
{
    lk_pg_result_t *users = la_pg_exec(pg, "SELECT name FROM users", 0, NULL);
    lk_pg_result_t *binds = users ? la_pg_exec(pg,
                                               "SELECT user_name, lockno, string_agg(role, ' ' "
                                               "ORDER BY role) FROM bindings GROUP BY 1, 2",
                                               0, NULL)
                                  : NULL;
    lk_pg_result_t *locks = binds ? la_pg_exec(pg,
                                               "SELECT lockno, window_ms::text, quorum::text, "
                                               "device FROM locks",
                                               0, NULL)
                                  : NULL;
    int rc = LA_EXIT_FAIL;
    la_tx_t tx = {0};
    if (locks && s_del_matching(ctx, "lk:{arb}:bind:*", &tx) == 0 &&
        s_del_matching(ctx, "lk:ubind:*", &tx) == 0 &&
        s_del_matching(ctx, "lk:{arb}:lockcfg:*", &tx) == 0 &&
        s_del_matching(ctx, "lk:lockdev:*", &tx) == 0 &&
        s_del_matching(ctx, "lk:devlock:*", &tx) == 0) {
        const char *du[] = {"DEL", "lk:users", "lk:locks"};
        la_tx_add(&tx, 3, du);
        for (size_t i = 0; i < users->nrows; i++) {
            const char *a[] = {"SADD", "lk:users", lk_pg_value(users, i, 0)};
            la_tx_add(&tx, 3, a);
        }
        for (size_t i = 0; i < binds->nrows; i++) {
            const char *u = lk_pg_value(binds, i, 0), *l = lk_pg_value(binds, i, 1),
                       *roles = lk_pg_value(binds, i, 2);
            char kb[300], ku[300];
            snprintf(kb, sizeof(kb), "lk:{arb}:bind:%s", l);
            snprintf(ku, sizeof(ku), "lk:ubind:%s", u);
            const char *a[] = {"HSET", kb, u, roles};
            const char *b[] = {"HSET", ku, l, roles};
            la_tx_add(&tx, 4, a);
            la_tx_add(&tx, 4, b);
        }
        for (size_t i = 0; i < locks->nrows; i++) {
            const char *l = lk_pg_value(locks, i, 0), *w = lk_pg_value(locks, i, 1),
                       *q = lk_pg_value(locks, i, 2), *dev = lk_pg_value(locks, i, 3);
            char kc[300], kd[300], kl[300];
            snprintf(kc, sizeof(kc), "lk:{arb}:lockcfg:%s", l);
            snprintf(kd, sizeof(kd), "lk:lockdev:%s", l);
            const char *a[] = {"SADD", "lk:locks", l};
            la_tx_add(&tx, 3, a);
            if (w) {
                const char *b[] = {"HSET", kc, "window_ms", w};
                la_tx_add(&tx, 4, b);
            }
            if (q) {
                const char *b[] = {"HSET", kc, "quorum", q};
                la_tx_add(&tx, 4, b);
            }
            if (dev) {
                snprintf(kl, sizeof(kl), "lk:devlock:%s", dev);
                const char *b[] = {"SET", kd, dev};
                const char *e[] = {"SET", kl, l};
                la_tx_add(&tx, 3, b);
                la_tx_add(&tx, 3, e);
            }
        }
        const char *v[] = {"INCR", "lk:locks:ver"};
        la_tx_add(&tx, 2, v);
        if (la_tx_run(ctx, &tx) == 0) {
            rc = LA_EXIT_OK;
            printf("mirror rebuilt: %zu user(s), %zu binding(s), %zu lock(s)\n", users->nrows,
                   binds->nrows, locks->nrows);
            s_acl_reread(ctx, NULL, 0);
        }
    }
    la_tx_free(&tx);
    lk_pg_result_free(&users);
    lk_pg_result_free(&binds);
    lk_pg_result_free(&locks);
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
    lk_pg_t *pg = la_pg(ctx);
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
    /* the arbiter only hears the roles of lock_roles: another name would bind nothing */
    const char *roles = lk_config_get(ctx->config, "lock_roles", "m f");
    char *copy = lk_strdup(roles), *save = NULL;
    bool known = false;
    for (char *w = strtok_r(copy, " \t,", &save); w; w = strtok_r(NULL, " \t,", &save))
        known |= strcmp(w, role) == 0;
    free(copy);
    if (!known) {
        fprintf(stderr, "latchkey: '%s' is not a role of lock_roles (%s)\n", role, roles);
        return LA_EXIT_USAGE;
    }
    lk_pg_t *pg = la_pg(ctx);
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
        /* the user's connections (its account and temporary logins) get the lock's rules */
        int n = 0;
        char **names = s_logins_of(ctx, (char **)&user, 1, &n);
        if (names) {
            names = lk_realloc(names, (size_t)(n + 1) * sizeof(char *));
            names[n++] = lk_strdup(user);
            s_acl_reread(ctx, names, n);
            s_names_free(names, n);
        }
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
    lk_pg_t *pg = la_pg(ctx);
    if (!pg)
        return LA_EXIT_FAIL;
    int rc = LA_EXIT_FAIL;
    const char *p[] = {user, lock, role};
    lk_pg_result_t *r = la_pg_exec(pg,
                                   "DELETE FROM bindings WHERE user_name = $1 AND lockno = $2 AND "
                                   "($3::text IS NULL OR role = $3)",
                                   3, p);
    if (r && s_mirror_pair(ctx, pg, user, lock) == 0) {
        printf("%" PRId64 " binding(s) of %s to %s removed\n", r->affected, user, lock);
        rc = LA_EXIT_OK;
        /* access that ends: every temporary login of the user now (an app logs in again
           for the locks left), and the account's own connections lose the lock's rules */
        char *u[] = {(char *)user};
        if (la_end_logins(ctx, u, 1, false) != 0)
            rc = LA_EXIT_FAIL;
        s_acl_reread(ctx, u, 1);
    }
    lk_pg_result_free(&r);
    lk_pg_destroy(&pg);
    return rc;
}
