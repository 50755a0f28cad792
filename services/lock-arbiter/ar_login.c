/*  ar_login: temporary MQTT credentials (the seed's WX login) and their revocation.

    LoginRequest{user} → a random username ("tmp-" + 16 random bytes, URL-safe base64) and
    password (18 random bytes), written in the auth service's Redis layout: mqtt_user:<name>
    {password = $7$ PBKDF2 hash} and mqtt_acl:<name> {/<lock>/# → 1 (subscribe),
    /<lock>/<role> → 2 (publish) for each binding, /unauth → 2, $lk/history/req → 2,
    $lk/reply/<name>/# → 1}, plus lk:{arb}:login:<name> → user (who the temporary name stands
    for) and lk:arb:logins (name scored by expiry). Every key gets the TTL.

    Revocation — the app's Last Will on /unauth carrying its temporary username, or the TTL
    running out — deletes the keys and sends Revoke{name} to auth, which has every frontend
    disconnect the clients using it. /unauth is honoured only from the temporary user
    itself (the Will's publisher) and only for temporary names, so nobody can revoke
    another's login or a permanent account that way. */
#include "ar_internal.h"
#include "lk_crypto.h"
#include <ctype.h>

#define S_USER_MAX 128
#define S_EXPIRE_BATCH 100

static void s_reply(self_t *self, lk_peer_t *peer, Lk__LoginReply *rep)
{
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_LOGIN_REPLY;
    env.login_reply = rep;
    /* unreliable: the asker asks again when a reply is lost */
    lk_bus_send(self->bus, peer, &env, false);
}

static bool s_user_ok(const char *u)
{
    size_t n = u ? strlen(u) : 0;
    if (n == 0 || n > S_USER_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (iscntrl((unsigned char)u[i]))
            return false;
    return true;
}

/* a lock id usable in topics and ACL rules: one non-empty level without wildcards */
static bool s_lock_ok(const char *l)
{
    return l && *l && !strpbrk(l, "/+#") && strlen(l) < 200;
}

static void s_refuse(self_t *self, lk_peer_t *peer, uint64_t req, const char *user,
                     const char *reason)
{
    lk_info("login of '%s' refused: %s", user ? user : "", reason);
    Lk__LoginReply rep = LK__LOGIN_REPLY__INIT;
    rep.req = req;
    rep.ok = false;
    rep.reason = (char *)reason;
    s_reply(self, peer, &rep);
}

/* appends one command (strings) to the pipeline */
static void s_append(self_t *self, int *queued, int argc, const char **argv)
{
    size_t lens[16];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    if (lk_redis_appendv(self->redis, argc, argv, lens) == 0)
        (*queued)++;
}

void ar_login_request(self_t *self, lk_peer_t *peer, const Lk__LoginRequest *req)
{
    const char *user = req->user;
    if (!s_user_ok(user)) {
        s_refuse(self, peer, req->req, user, "bad user name");
        return;
    }
    lk_redis_reply_t *r = lk_redis_cmd(self->redis, "SISMEMBER lk:users %s", user);
    if (!r || r->type != LK_REDIS_INT) {
        lk_redis_reply_free(&r);
        s_refuse(self, peer, req->req, user, "unavailable");
        return;
    }
    bool known = r->integer == 1;
    lk_redis_reply_free(&r);
    if (!known) {
        s_refuse(self, peer, req->req, user, "unknown user");
        return;
    }
    lk_redis_reply_t *binds = lk_redis_cmd(self->redis, "HGETALL lk:ubind:%s", user);
    if (!binds || binds->type != LK_REDIS_ARRAY) {
        lk_redis_reply_free(&binds);
        s_refuse(self, peer, req->req, user, "unavailable");
        return;
    }
    if (binds->count == 0) {
        lk_redis_reply_free(&binds);
        s_refuse(self, peer, req->req, user, "no lock bound to this user");
        return;
    }
    int64_t ttl = req->ttl ? (int64_t)req->ttl : self->login_ttl_s;
    if (ttl > self->login_ttl_s)
        ttl = self->login_ttl_s;
    char *token = lk_crypto_token(16);
    char *password = lk_crypto_token(18);
    char *hash = lk_crypto_pw_hash(password, strlen(password), 0);
    char name[64], k_user[96], k_acl[96], k_login[96], reply_f[128], ttl_s[24], exp_s[24];
    snprintf(name, sizeof(name), "tmp-%s", token);
    snprintf(k_user, sizeof(k_user), "mqtt_user:%s", name);
    snprintf(k_acl, sizeof(k_acl), "mqtt_acl:%s", name);
    snprintf(k_login, sizeof(k_login), "lk:{arb}:login:%s", name);
    snprintf(reply_f, sizeof(reply_f), AR_REPLY_PREFIX "%s/#", name);
    snprintf(ttl_s, sizeof(ttl_s), "%" PRId64, ttl);
    uint64_t expires = (uint64_t)lk_wall_ms() + (uint64_t)ttl * 1000;
    snprintf(exp_s, sizeof(exp_s), "%" PRIu64, expires);

    size_t n_locks = binds->count / 2;
    char **locks = lk_calloc(n_locks ? n_locks : 1, sizeof(char *));
    char **lroles = lk_calloc(n_locks ? n_locks : 1, sizeof(char *));
    size_t nl = 0;
    int queued = 0;
    if (hash) {
        const char *multi[] = {"MULTI"};
        s_append(self, &queued, 1, multi);
        const char *a1[] = {"DEL", k_user, k_acl};
        s_append(self, &queued, 3, a1);
        const char *a2[] = {"HSET", k_user, "password", hash};
        s_append(self, &queued, 4, a2);
        const char *a3[] = {"HSET", k_acl, "/unauth", "2", AR_HISTORY_TOPIC, "2", reply_f, "1"};
        s_append(self, &queued, 8, a3);
        for (size_t i = 0; i + 1 < binds->count; i += 2) {
            const char *lock = binds->items[i].str;
            if (!s_lock_ok(lock))
                continue;
            lroles[nl] = binds->items[i + 1].str;
            locks[nl++] = (char *)lock;
            char all[256];
            snprintf(all, sizeof(all), "/%s/#", lock);
            const char *a4[] = {"HSET", k_acl, all, "1"};
            s_append(self, &queued, 4, a4);
            /* roles: space-separated */
            char *roles = lk_strdup(binds->items[i + 1].str), *save = NULL;
            for (char *w = strtok_r(roles, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
                char pub[256];
                snprintf(pub, sizeof(pub), "/%s/%s", lock, w);
                const char *a5[] = {"HSET", k_acl, pub, "2"};
                s_append(self, &queued, 4, a5);
            }
            free(roles);
        }
        const char *a6[] = {"SET", k_login, user, "EX", ttl_s};
        s_append(self, &queued, 5, a6);
        const char *a7[] = {"EXPIRE", k_user, ttl_s};
        s_append(self, &queued, 3, a7);
        const char *a8[] = {"EXPIRE", k_acl, ttl_s};
        s_append(self, &queued, 3, a8);
        const char *a9[] = {"ZADD", "lk:arb:logins", exp_s, name};
        s_append(self, &queued, 4, a9);
        const char *exec[] = {"EXEC"};
        s_append(self, &queued, 1, exec);
    }
    bool ok = hash != NULL && queued > 0;
    for (int i = 0; i < queued; i++) {
        lk_redis_reply_t *x = lk_redis_get_reply(self->redis);
        if (!x) {
            ok = false; /* the link is gone: the other replies will not come */
            break;
        }
        /* EXEC answers an array when the transaction ran */
        if (x->type == LK_REDIS_ERR || (i == queued - 1 && x->type != LK_REDIS_ARRAY))
            ok = false;
        lk_redis_reply_free(&x);
    }
    if (!ok || nl == 0) {
        s_refuse(self, peer, req->req, user, ok ? "no usable lock bound" : "unavailable");
    } else {
        self->logins++;
        Lk__LoginReply rep = LK__LOGIN_REPLY__INIT;
        rep.req = req->req;
        rep.ok = true;
        rep.username = name;
        rep.password = password;
        rep.expires_at_ms = expires;
        rep.n_locks = nl;
        rep.locks = locks;
        rep.n_roles = nl;
        rep.roles = lroles;
        s_reply(self, peer, &rep);
        lk_notice("login of %s: temporary user %s for %zu lock(s), %" PRId64 " s", user, name, nl,
                  ttl);
    }
    free(locks);
    free(lroles);
    lk_redis_reply_free(&binds);
    free(token);
    if (password) {
        memset(password, 0, strlen(password));
        free(password);
    }
    free(hash);
}

/* deletes the credentials of these temporary users and has auth disconnect them */
static void s_revoke(self_t *self, char **names, size_t n, const char *why)
{
    for (size_t i = 0; i < n; i++) {
        lk_redis_reply_t *r =
            lk_redis_cmd(self->redis, "DEL mqtt_user:%s mqtt_acl:%s lk:{arb}:login:%s", names[i],
                         names[i], names[i]);
        lk_redis_reply_free(&r);
        r = lk_redis_cmd(self->redis, "ZREM lk:arb:logins %s", names[i]);
        lk_redis_reply_free(&r);
        lk_notice("temporary user %s revoked (%s)", names[i], why);
    }
    self->revoked += n;
    if (!self->auth) {
        lk_warn("no auth_endpoint: clients of revoked users stay connected");
        return;
    }
    Lk__Revoke rv = LK__REVOKE__INIT;
    rv.n_usernames = n;
    rv.usernames = names;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_REVOKE;
    env.revoke = &rv;
    lk_bus_send(self->bus, lk_replicas_pick(self->auth), &env, true);
}

void ar_login_unauth(self_t *self, const Lk__Msg *msg)
{
    char name[128];
    size_t n = msg->payload.len;
    if (n == 0 || n >= sizeof(name))
        return;
    memcpy(name, msg->payload.data, n);
    name[n] = 0;
    const char *from = msg->origin_user ? msg->origin_user : "";
    if (strcmp(from, name) != 0) {
        lk_notice("/unauth for '%s' from user '%s' (client %s) ignored: only a temporary user "
                  "revokes itself",
                  name, from, msg->origin_client ? msg->origin_client : "?");
        return;
    }
    lk_redis_reply_t *r = lk_redis_cmd(self->redis, "EXISTS lk:{arb}:login:%s", name);
    if (!r || r->type != LK_REDIS_INT) {
        lk_redis_reply_free(&r);
        ar_server_fail(self, "cannot check the login to revoke");
        return;
    }
    bool temporary = r->integer == 1;
    lk_redis_reply_free(&r);
    if (!temporary) {
        lk_info("/unauth for '%s': not a (current) temporary login, ignored", name);
        return;
    }
    char *names[1] = {name};
    s_revoke(self, names, 1, "its /unauth will");
}

void ar_login_expire(self_t *self)
{
    lk_redis_reply_t *r =
        lk_redis_cmd(self->redis, "ZRANGEBYSCORE lk:arb:logins -inf %" PRId64 " LIMIT 0 %d",
                     lk_wall_ms(), S_EXPIRE_BATCH);
    if (r && r->type == LK_REDIS_ARRAY && r->count) {
        char *names[S_EXPIRE_BATCH];
        size_t n = 0;
        for (size_t i = 0; i < r->count && n < S_EXPIRE_BATCH; i++)
            names[n++] = r->items[i].str;
        s_revoke(self, names, n, "expired");
    }
    lk_redis_reply_free(&r);
}
