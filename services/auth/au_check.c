/*  au_check: authentication and ACL decision for one AuthRequest; see au_check.h.

    Redis is asked synchronously (lk_redis): one HMGET for the credentials and, once they
    are good, one HGETALL for the ACL. The password work is done on every path a named
    login can take — unknown user, unknown hash format, missing password — so the time of
    a refusal says nothing about which it was. */
#include "au_check.h"
#include "au_pwfile.h"
#include "lk_acl.h"
#include "lk_common.h"
#include "lk_crypto.h"
#include "lk_redis.h"
#include <ctype.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

typedef enum { S_BACKEND_FILE, S_BACKEND_REDIS } s_backend_t;

struct _au_check_t {
    lk_config_t *config; /* not owned */
    lk_redis_t *redis;
    bool allow_anonymous;
    bool nomatch_allow;
    s_backend_t backends[2];
    int n_backends;
    const char *password_path; /* NULL when unset; lives with config */
    const char *acl_path;
    au_pwfile_t *pwfile;
    lk_acl_file_t *aclfile;
};

/* the outcome of checking credentials */
typedef enum { S_AUTH_BAD = 0, S_AUTH_OK = 1, S_AUTH_UNAVAILABLE = -1 } s_auth_t;

static int s_parse_backends(au_check_t *self, const char *spec)
{
    char *copy = lk_strdup(spec), *save = NULL;
    int rc = 0;
    for (char *w = strtok_r(copy, " \t,", &save); w; w = strtok_r(NULL, " \t,", &save)) {
        s_backend_t b;
        if (strcmp(w, "file") == 0)
            b = S_BACKEND_FILE;
        else if (strcmp(w, "redis") == 0)
            b = S_BACKEND_REDIS;
        else {
            lk_error("auth_backends: unknown backend '%s' (want file and/or redis)", w);
            rc = -1;
            break;
        }
        bool dup = false;
        for (int i = 0; i < self->n_backends; i++)
            dup |= self->backends[i] == b;
        if (!dup)
            self->backends[self->n_backends++] = b;
    }
    free(copy);
    return rc;
}

static bool s_has_backend(au_check_t *self, s_backend_t b)
{
    for (int i = 0; i < self->n_backends; i++)
        if (self->backends[i] == b)
            return true;
    return false;
}

au_check_t *au_check_new(lk_config_t *config)
{
    au_check_t *self = lk_calloc(1, sizeof(*self));
    self->config = config;
    self->allow_anonymous = lk_config_get_bool(config, "allow_anonymous", false);
    const char *v = lk_config_get(config, "password_file", NULL);
    self->password_path = v && *v ? v : NULL;
    v = lk_config_get(config, "acl_file", NULL);
    self->acl_path = v && *v ? v : NULL;
    const char *nomatch = lk_config_get(config, "acl_nomatch", "deny");
    int rc = 0;
    if (strcmp(nomatch, "allow") == 0)
        self->nomatch_allow = true;
    else if (strcmp(nomatch, "deny") != 0) {
        lk_error("acl_nomatch: '%s' is neither allow nor deny", nomatch);
        rc = -1;
    }
    const char *spec = lk_config_get(config, "auth_backends", NULL);
    if (!spec || !*spec)
        spec = self->password_path ? "file redis" : "redis";
    if (rc == 0)
        rc = s_parse_backends(self, spec);
    if (rc == 0 && s_has_backend(self, S_BACKEND_FILE) && !self->password_path) {
        lk_error("auth_backends names 'file' but password_file is not set");
        rc = -1;
    }
    if (rc == 0 && self->password_path && !s_has_backend(self, S_BACKEND_FILE))
        lk_warn("password_file is set but auth_backends does not name 'file': not used");
    if (rc == 0 && self->password_path && !(self->pwfile = au_pwfile_load(self->password_path)))
        rc = -1;
    if (rc == 0 && self->acl_path && !(self->aclfile = lk_acl_file_load(self->acl_path)))
        rc = -1;
    int64_t port = lk_config_get_int(config, "redis_port", 6379);
    if (rc == 0 && (port < 0 || port > 65535)) {
        lk_error("redis_port: %" PRId64 " is out of range", port);
        rc = -1;
    }
    if (rc != 0) {
        au_check_destroy(&self);
        return NULL;
    }
    self->redis = lk_redis_new(lk_config_get(config, "redis_host", "127.0.0.1"), (int)port);
    return self;
}

void au_check_destroy(au_check_t **self_p)
{
    au_check_t *self = *self_p;
    if (!self)
        return;
    lk_redis_destroy(&self->redis);
    au_pwfile_destroy(&self->pwfile);
    lk_acl_file_destroy(&self->aclfile);
    free(self);
    *self_p = NULL;
}

int au_check_reload(au_check_t *self)
{
    int rc = 0;
    if (self->password_path) {
        au_pwfile_t *pf = au_pwfile_load(self->password_path);
        if (pf) {
            au_pwfile_destroy(&self->pwfile);
            self->pwfile = pf;
            lk_notice("password file %s: %zu users", self->password_path, au_pwfile_size(pf));
        } else {
            lk_error("password file %s not reloaded: keeping the previous one",
                     self->password_path);
            rc = -1;
        }
    }
    if (self->acl_path) {
        lk_acl_file_t *af = lk_acl_file_load(self->acl_path);
        if (af) {
            lk_acl_file_destroy(&self->aclfile);
            self->aclfile = af;
            lk_notice("ACL file %s reloaded", self->acl_path);
        } else {
            lk_error("ACL file %s not reloaded: keeping the previous one", self->acl_path);
            rc = -1;
        }
    }
    return rc;
}

bool au_check_uses_redis(au_check_t *self)
{
    return s_has_backend(self, S_BACKEND_REDIS);
}

int au_check_ping(au_check_t *self)
{
    lk_redis_reply_t *r = lk_redis_cmd(self->redis, "PING");
    int rc = lk_redis_reply_failed(r) ? -1 : 0;
    lk_redis_reply_free(&r);
    return rc;
}

/* copies s for a log line: printable ASCII only, at most 64 characters */
static void s_printable(char *dst, size_t cap, const char *s)
{
    size_t n = 0;
    for (; s && *s && n + 4 < cap && n < 64; s++)
        dst[n++] = isprint((unsigned char)*s) ? *s : '?';
    if (s && *s)
        dst[n++] = '~';
    dst[n] = 0;
}

static bool s_truthy(const lk_redis_reply_t *r)
{
    return r->type == LK_REDIS_STR && (strcmp(r->str, "1") == 0 || strcmp(r->str, "true") == 0);
}

/* checks the password against one stored hash; the work is done in every case */
static s_auth_t s_verify(const char *user, const char *stored, const char *salt,
                         const Lk__AuthRequest *req)
{
    int rc = lk_crypto_pw_verify(stored, salt, req->password.data, req->password.len);
    if (rc < 0) {
        char u[80];
        s_printable(u, sizeof(u), user);
        lk_warn("user '%s': stored password hash has an unknown format", u);
        lk_crypto_pw_dummy(req->password.data, req->password.len);
        return S_AUTH_BAD;
    }
    /* a username without a password never matches, even a hash of "" */
    bool has_password = req->has_password || req->password.len > 0;
    return rc == 1 && has_password ? S_AUTH_OK : S_AUTH_BAD;
}

static s_auth_t s_authenticate(au_check_t *self, const char *user, const Lk__AuthRequest *req,
                               bool *superuser, bool *via_redis)
{
    for (int i = 0; i < self->n_backends; i++) {
        if (self->backends[i] == S_BACKEND_FILE) {
            const char *stored = self->pwfile ? au_pwfile_lookup(self->pwfile, user) : NULL;
            if (stored)
                return s_verify(user, stored, NULL, req);
            continue;
        }
        lk_redis_reply_t *r = lk_redis_cmd(
            self->redis, "HMGET mqtt_user:%b password salt is_superuser", user, strlen(user));
        if (lk_redis_reply_failed(r) || r->type != LK_REDIS_ARRAY || r->count != 3) {
            lk_redis_reply_free(&r);
            return S_AUTH_UNAVAILABLE;
        }
        if (r->items[0].type != LK_REDIS_STR) {
            lk_redis_reply_free(&r);
            continue; /* not a Redis user */
        }
        const char *salt = r->items[1].type == LK_REDIS_STR ? r->items[1].str : NULL;
        s_auth_t rc = s_verify(user, r->items[0].str, salt, req);
        *superuser = rc == S_AUTH_OK && s_truthy(&r->items[2]);
        *via_redis = true;
        lk_redis_reply_free(&r);
        return rc;
    }
    /* nobody knows the user: spend the time a known user's check takes */
    lk_crypto_pw_dummy(req->password.data, req->password.len);
    return S_AUTH_BAD;
}

/* appends the rules of mqtt_acl:<user>; -1 when Redis fails */
static int s_redis_acl(au_check_t *self, const char *user, const char *client, lk_acl_list_t *acl)
{
    lk_redis_reply_t *r = lk_redis_cmd(self->redis, "HGETALL mqtt_acl:%b", user, strlen(user));
    if (lk_redis_reply_failed(r) || r->type != LK_REDIS_ARRAY) {
        lk_redis_reply_free(&r);
        return -1;
    }
    for (size_t i = 0; i + 1 < r->count; i += 2) {
        const lk_redis_reply_t *f = &r->items[i], *v = &r->items[i + 1];
        if (f->type != LK_REDIS_STR || v->type != LK_REDIS_STR)
            continue;
        uint32_t access = strcmp(v->str, "1") == 0   ? LK_ACL_SUB
                          : strcmp(v->str, "2") == 0 ? LK_ACL_PUB
                          : strcmp(v->str, "3") == 0 ? LK_ACL_BOTH
                                                     : 0;
        char *pattern = access ? lk_acl_subst(f->str, user, client) : NULL;
        if (!pattern) {
            /* a bad entry, or %u/%c that this client's names cannot fill safely */
            char u[80], p[80];
            s_printable(u, sizeof(u), user);
            s_printable(p, sizeof(p), f->str);
            lk_info("mqtt_acl:%s: entry '%s' skipped for this client", u, p);
            continue;
        }
        lk_acl_list_add(acl, pattern, access);
        free(pattern);
    }
    lk_redis_reply_free(&r);
    return 0;
}

static Lk__AuthReply *s_reply(uint64_t req, bool ok, bool superuser, lk_acl_list_t *acl,
                              const char *reason)
{
    Lk__AuthReply *r = lk_malloc(sizeof(*r));
    lk__auth_reply__init(r);
    r->req = req;
    r->ok = ok;
    r->superuser = ok && superuser;
    r->reason = lk_strdup(reason ? reason : "");
    if (ok && acl->count) {
        r->n_acl = acl->count;
        r->acl = lk_calloc(acl->count, sizeof(Lk__AclRule *));
        for (size_t i = 0; i < acl->count; i++) {
            Lk__AclRule *a = lk_malloc(sizeof(*a));
            lk__acl_rule__init(a);
            a->pattern = acl->rules[i].pattern; /* the reply takes the string */
            acl->rules[i].pattern = NULL;
            a->access = acl->rules[i].access;
            r->acl[i] = a;
        }
    }
    lk_acl_list_clear(acl);
    return r;
}

void au_reply_destroy(Lk__AuthReply **reply_p)
{
    Lk__AuthReply *r = *reply_p;
    if (!r)
        return;
    for (size_t i = 0; i < r->n_acl; i++) {
        free(r->acl[i]->pattern);
        free(r->acl[i]);
    }
    free(r->acl);
    free(r->reason);
    free(r);
    *reply_p = NULL;
}

/* everything a client may do: '#' does not reach '$' topics [MQTT-4.7.2-1], so the
   broker's statistics are granted by name, for reading only */
static void s_full_access(lk_acl_list_t *acl)
{
    lk_acl_list_add(acl, "#", LK_ACL_BOTH);
    lk_acl_list_add(acl, "$SYS/#", LK_ACL_SUB);
}

Lk__AuthReply *au_check_request(au_check_t *self, const Lk__AuthRequest *req)
{
    lk_acl_list_t acl = {0};
    bool ok = false, superuser = false, via_redis = false;
    const char *reason = NULL;
    const char *client = req->client ? req->client : "";
    const char *user = req->username ? req->username : "";
    /* an empty username still names someone (who does not exist), as in Mosquitto */
    bool named = req->has_username || *user;

    if (!named) {
        ok = self->allow_anonymous;
        if (!ok)
            reason = AU_REASON_NOT_AUTHORIZED;
        else if (self->aclfile)
            lk_acl_file_rules(self->aclfile, NULL, client, &acl);
        else
            s_full_access(&acl);
    } else {
        s_auth_t rc = s_authenticate(self, user, req, &superuser, &via_redis);
        if (rc == S_AUTH_UNAVAILABLE)
            reason = AU_REASON_UNAVAILABLE;
        else if (rc == S_AUTH_BAD)
            reason = AU_REASON_BAD_CREDENTIALS;
        else if (superuser) {
            ok = true;
            s_full_access(&acl);
        } else if (via_redis && s_redis_acl(self, user, client, &acl) != 0)
            reason = AU_REASON_UNAVAILABLE;
        else {
            ok = true;
            if (self->aclfile)
                lk_acl_file_rules(self->aclfile, user, client, &acl);
            if (acl.count == 0 && self->nomatch_allow)
                s_full_access(&acl);
        }
    }

    if (!ok) {
        char c[80], u[80], p[80];
        s_printable(c, sizeof(c), client);
        s_printable(u, sizeof(u), named ? user : "");
        s_printable(p, sizeof(p), req->peer ? req->peer : "");
        lk_notice("refused client '%s' username '%s'%s from %s: %s", c, u,
                  named ? "" : " (anonymous)", *p ? p : "?", reason);
    } else if (lk_log_enabled(LK_LOG_DEBUG)) {
        char c[80], u[80];
        s_printable(c, sizeof(c), client);
        s_printable(u, sizeof(u), named ? user : "(anonymous)");
        lk_debug("accepted client '%s' as %s, %zu rules", c, u, acl.count);
    }
    return s_reply(req->req, ok, superuser, &acl, reason);
}

/* ---- selftest ------------------------------------------------------------------------ */

static Lk__AuthReply *s_ask(au_check_t *c, const char *user, const char *password,
                            const char *client)
{
    Lk__AuthRequest req = LK__AUTH_REQUEST__INIT;
    req.req = 42;
    req.client = (char *)(client ? client : "c1");
    req.peer = "127.0.0.1:5555";
    if (user) {
        req.username = (char *)user;
        req.has_username = true;
    }
    if (password) {
        req.password.data = (uint8_t *)password;
        req.password.len = strlen(password);
        req.has_password = true;
    }
    return au_check_request(c, &req);
}

/* ok/refused with the reason, and the rule count when ok */
static bool s_is(Lk__AuthReply *r, bool ok, const char *reason, int rules)
{
    bool good = r && r->req == 42 && r->ok == ok && strcmp(r->reason, ok ? "" : reason) == 0 &&
                (rules < 0 || r->n_acl == (size_t)rules) && (ok || r->n_acl == 0);
    return good;
}

static bool s_has_rule(Lk__AuthReply *r, const char *pattern, uint32_t access)
{
    for (size_t i = 0; r && i < r->n_acl; i++)
        if (strcmp(r->acl[i]->pattern, pattern) == 0 && r->acl[i]->access == access)
            return true;
    return false;
}

static void s_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* median time of n asks, in microseconds */
static int64_t s_time(au_check_t *c, const char *user, const char *pw, int n)
{
    int64_t t[32];
    for (int i = 0; i < n && i < 32; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        Lk__AuthReply *r = s_ask(c, user, pw, NULL);
        clock_gettime(CLOCK_MONOTONIC, &b);
        au_reply_destroy(&r);
        t[i] = (b.tv_sec - a.tv_sec) * 1000000 + (b.tv_nsec - a.tv_nsec) / 1000;
    }
    for (int i = 1; i < n; i++) /* insertion sort: n is tiny */
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            int64_t x = t[j];
            t[j] = t[j - 1];
            t[j - 1] = x;
        }
    return t[n / 2];
}

#define S_ASK(name, user, pw, client, cond)                                                        \
    do {                                                                                           \
        Lk__AuthReply *r = s_ask(c, user, pw, client);                                             \
        AU_CHECK(t, name, cond);                                                                   \
        au_reply_destroy(&r);                                                                      \
    } while (0)

int au_check_test(au_tally_t *t, int redis_port)
{
    int failed = t->failed;
    char text[2048];
    lk_redis_t *rd = lk_redis_new("127.0.0.1", redis_port);
    char *h7 = lk_crypto_pw_hash("secret", 6, 0);
    const char *h6 = "$6$MDEyMzQ1Njc4OWFi$qEXipeLbgxRlwd06QHfY5WITkUZg0jLg9SZbXzq3ifXjfj+v3GbJ"
                     "GrSfC5PAg3UNCS+UFfbhUIZX4bmIAs330w==";
    const char *cmds[][4] = {
        {"FLUSHALL", NULL},
        {"HSET", "mqtt_user:ann", "password", h7},
        {"HSET", "mqtt_user:old", "password", h6},
        {"HSET", "mqtt_user:sha", "password",
         "37ed63206cdbaf3f6675549dadf40ba61f411d59ec57ec7c12e439a317d5d39b"},
        {"HSET", "mqtt_user:sha", "salt", "pepper"},
        {"HSET", "mqtt_user:nosalt", "password",
         "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"},
        {"HSET", "mqtt_user:root", "password", h7},
        {"HSET", "mqtt_user:root", "is_superuser", "1"},
        {"HSET", "mqtt_user:weird", "password", "secret"},
        {"HSET", "mqtt_acl:ann", "lock/%u/#", "1"},
        {"HSET", "mqtt_acl:ann", "lock/%u/m", "2"},
        {"HSET", "mqtt_acl:ann", "both/x", "3"},
        {"HSET", "mqtt_acl:ann", "dev/%c", "1"},
        {"HSET", "mqtt_acl:ann", "bad/#/x", "3"},
        {"HSET", "mqtt_acl:ann", "junk", "9"},
    };
    bool seeded = true;
    for (size_t i = 0; i < LK_ARRAY_LEN(cmds); i++) {
        int argc = 0;
        size_t lens[4];
        while (argc < 4 && cmds[i][argc]) {
            lens[argc] = strlen(cmds[i][argc]);
            argc++;
        }
        lk_redis_reply_t *r = lk_redis_cmdv(rd, argc, cmds[i], lens);
        seeded &= !lk_redis_reply_failed(r);
        lk_redis_reply_free(&r);
    }
    AU_CHECK(t, "check: redis seeded", seeded);

    /* Redis only, defaults */
    snprintf(text, sizeof(text), "redis_port %d\n", redis_port);
    lk_config_t *cfg = lk_config_parse(text, "test");
    au_check_t *c = au_check_new(cfg);
    AU_CHECK(t, "check: new (redis only)", c && au_check_uses_redis(c) && au_check_ping(c) == 0);
    if (c) {
        S_ASK("check: $7$ good password", "ann", "secret", "c1",
              s_is(r, true, NULL, 4) && !r->superuser && s_has_rule(r, "lock/ann/#", 1) &&
                  s_has_rule(r, "lock/ann/m", 2) && s_has_rule(r, "both/x", 3) &&
                  s_has_rule(r, "dev/c1", 1));
        S_ASK("check: %c refused for a client id with '/'", "ann", "secret", "a/b",
              s_is(r, true, NULL, 3) && !s_has_rule(r, "dev/a/b", 1));
        S_ASK("check: $7$ bad password", "ann", "Secret", NULL,
              s_is(r, false, AU_REASON_BAD_CREDENTIALS, 0));
        S_ASK("check: username without password", "ann", NULL, NULL,
              s_is(r, false, AU_REASON_BAD_CREDENTIALS, 0));
        S_ASK("check: $6$ good password", "old", "secret", NULL, s_is(r, true, NULL, 0));
        S_ASK("check: $6$ bad password", "old", "secreT", NULL,
              s_is(r, false, AU_REASON_BAD_CREDENTIALS, 0));
        S_ASK("check: sha256 with salt good", "sha", "secret", NULL, s_is(r, true, NULL, 0));
        S_ASK("check: sha256 with salt bad", "sha", "secretpepper", NULL,
              s_is(r, false, AU_REASON_BAD_CREDENTIALS, 0));
        S_ASK("check: sha256 no salt good", "nosalt", "secret", NULL, s_is(r, true, NULL, 0));
        S_ASK("check: unknown user", "nobody", "secret", NULL,
              s_is(r, false, AU_REASON_BAD_CREDENTIALS, 0));
        S_ASK("check: empty username", "", "secret", NULL,
              s_is(r, false, AU_REASON_BAD_CREDENTIALS, 0));
        S_ASK("check: unknown hash format refused", "weird", "secret", NULL,
              s_is(r, false, AU_REASON_BAD_CREDENTIALS, 0));
        S_ASK("check: superuser", "root", "secret", NULL,
              s_is(r, true, NULL, 2) && r->superuser && s_has_rule(r, "#", 3) &&
                  s_has_rule(r, "$SYS/#", 1));
        S_ASK("check: superuser bad password", "root", "x", NULL,
              s_is(r, false, AU_REASON_BAD_CREDENTIALS, 0) && !r->superuser);
        S_ASK("check: anonymous refused by default", NULL, NULL, NULL,
              s_is(r, false, AU_REASON_NOT_AUTHORIZED, 0));
        /* unknown users cost what a known user with a wrong password costs */
        int64_t known = s_time(c, "ann", "wrong", 15), unknown = s_time(c, "nobody", "wrong", 15);
        if (t->verbose)
            printf("  wrong password %" PRId64 " us, unknown user %" PRId64 " us\n", known,
                   unknown);
        AU_CHECK(t, "check: unknown user takes the time of a known one",
                 unknown * 3 >= known && known * 3 >= unknown);
        au_check_destroy(&c);
    }
    lk_config_destroy(&cfg);

    /* anonymous allowed, no acl_file: full access; acl_nomatch allow */
    snprintf(text, sizeof(text), "redis_port %d\nallow_anonymous true\nacl_nomatch allow\n",
             redis_port);
    cfg = lk_config_parse(text, "test");
    c = au_check_new(cfg);
    AU_CHECK(t, "check: new (anonymous)", c != NULL);
    if (c) {
        S_ASK("check: anonymous allowed", NULL, NULL, NULL,
              s_is(r, true, NULL, 2) && s_has_rule(r, "#", 3) && !r->superuser &&
                  s_has_rule(r, "$SYS/#", 1));
        S_ASK("check: acl_nomatch allow", "old", "secret", NULL,
              s_is(r, true, NULL, 2) && s_has_rule(r, "#", 3));
        S_ASK("check: acl_nomatch allow leaves real rules", "ann", "secret", NULL,
              s_is(r, true, NULL, 4));
        au_check_destroy(&c);
    }
    lk_config_destroy(&cfg);

    /* password_file + acl_file, file first */
    char dir[] = "/tmp/au-check-XXXXXX";
    if (!mkdtemp(dir)) {
        AU_CHECK(t, "check: temp dir", false);
        free(h7);
        lk_redis_destroy(&rd);
        return -1;
    }
    char pwpath[128], aclpath[128];
    snprintf(pwpath, sizeof(pwpath), "%s/pw", dir);
    snprintf(aclpath, sizeof(aclpath), "%s/acl", dir);
    char *hf = lk_crypto_pw_hash("fredpw", 6, 0), *ha = lk_crypto_pw_hash("filepw", 6, 0);
    snprintf(text, sizeof(text), "fred:%s\nann:%s\n", hf, ha);
    s_write(pwpath, text);
    s_write(aclpath, "topic read pub/#\n"
                     "user fred\n"
                     "topic write fred/#\n"
                     "topic deny fred/secret\n"
                     "pattern read in/%u\n");
    snprintf(text, sizeof(text),
             "redis_port %d\nallow_anonymous true\npassword_file %s\nacl_file %s\n", redis_port,
             pwpath, aclpath);
    cfg = lk_config_parse(text, "test");
    c = au_check_new(cfg);
    AU_CHECK(t, "check: new (files)", c != NULL);
    if (c) {
        S_ASK("check: file user good", "fred", "fredpw", NULL,
              s_is(r, true, NULL, 3) && s_has_rule(r, "fred/#", LK_ACL_PUB) &&
                  s_has_rule(r, "fred/secret", LK_ACL_DENY | LK_ACL_BOTH) &&
                  s_has_rule(r, "in/fred", LK_ACL_SUB));
        S_ASK("check: file user bad", "fred", "secret", NULL,
              s_is(r, false, AU_REASON_BAD_CREDENTIALS, 0));
        S_ASK("check: file decides before redis", "ann", "filepw", NULL,
              s_is(r, true, NULL, 1) && s_has_rule(r, "in/ann", LK_ACL_SUB));
        S_ASK("check: redis password not used for a file user", "ann", "secret", NULL,
              s_is(r, false, AU_REASON_BAD_CREDENTIALS, 0));
        S_ASK("check: redis user after file, acl_file pattern added", "old", "secret", NULL,
              s_is(r, true, NULL, 1) && s_has_rule(r, "in/old", LK_ACL_SUB));
        S_ASK("check: redis superuser with files", "root", "secret", NULL,
              s_is(r, true, NULL, 2) && r->superuser);
        S_ASK("check: anonymous gets the acl_file's anonymous rules", NULL, NULL, NULL,
              s_is(r, true, NULL, 1) && s_has_rule(r, "pub/#", LK_ACL_SUB));
        /* SIGHUP reload: a new password works; a broken file keeps the last good one */
        char *hn = lk_crypto_pw_hash("newpw", 5, 0);
        snprintf(text, sizeof(text), "fred:%s\n", hn);
        s_write(pwpath, text);
        free(hn);
        AU_CHECK(t, "check: reload", au_check_reload(c) == 0);
        S_ASK("check: reloaded password", "fred", "newpw", NULL, s_is(r, true, NULL, 3));
        S_ASK("check: reloaded file dropped a user", "ann", "filepw", NULL,
              s_is(r, false, AU_REASON_BAD_CREDENTIALS, 0));
        s_write(pwpath, "broken line\n");
        AU_CHECK(t, "check: reload of a broken file fails", au_check_reload(c) == -1);
        S_ASK("check: broken reload keeps the old file", "fred", "newpw", NULL,
              s_is(r, true, NULL, 3));
        au_check_destroy(&c);
    }
    lk_config_destroy(&cfg);

    /* Redis down: file users still work, others are told "unavailable" */
    snprintf(text, sizeof(text), "fred:%s\n", hf);
    s_write(pwpath, text);
    snprintf(text, sizeof(text), "redis_port 1\npassword_file %s\n", pwpath);
    cfg = lk_config_parse(text, "test");
    c = au_check_new(cfg);
    AU_CHECK(t, "check: new (redis down)", c != NULL && au_check_ping(c) == -1);
    if (c) {
        S_ASK("check: redis down, file user", "fred", "fredpw", NULL, s_is(r, true, NULL, 0));
        S_ASK("check: redis down, other user unavailable", "ann", "secret", NULL,
              s_is(r, false, AU_REASON_UNAVAILABLE, 0));
        au_check_destroy(&c);
    }
    lk_config_destroy(&cfg);

    /* configuration errors */
    const char *bad[] = {
        "auth_backends bogus\n",       "auth_backends file\n", "password_file /nonexistent/pw\n",
        "acl_file /nonexistent/acl\n", "acl_nomatch maybe\n",  "redis_port 70000\n"};
    for (size_t i = 0; i < LK_ARRAY_LEN(bad); i++) {
        cfg = lk_config_parse(bad[i], "test");
        c = au_check_new(cfg);
        snprintf(text, sizeof(text), "check: bad config refused: %.*s", (int)strlen(bad[i]) - 1,
                 bad[i]);
        AU_CHECK(t, text, c == NULL);
        au_check_destroy(&c);
        lk_config_destroy(&cfg);
    }
    snprintf(text, sizeof(text), "auth_backends file\npassword_file %s\n", pwpath);
    cfg = lk_config_parse(text, "test");
    c = au_check_new(cfg);
    AU_CHECK(t, "check: file-only backend needs no redis", c && !au_check_uses_redis(c));
    au_check_destroy(&c);
    lk_config_destroy(&cfg);

    unlink(pwpath);
    unlink(aclpath);
    rmdir(dir);
    free(hf);
    free(ha);
    free(h7);
    lk_redis_destroy(&rd);
    return t->failed == failed ? 0 : -1;
}
