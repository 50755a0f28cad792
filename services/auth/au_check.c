/*  au_check: authentication and ACL decision for one AuthRequest; see au_check.h.

    Redis is asked synchronously (lk_redis): one HMGET for the credentials and, once they
    are good, one HGETALL for the ACL. The password work is done on every path a named
    login can take — unknown user, unknown hash format, missing password — so the time of
    a refusal says nothing about which it was. */
#include "au_check.h"
#include "au_lock.h"
#include "au_pwfile.h"
#include "lk_acl.h"
#include "lk_common.h"
#include "lk_crypto.h"
#include "lk_ratelog.h"
#include "lk_redis.h"
#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

typedef enum { S_BACKEND_FILE, S_BACKEND_REDIS, S_BACKEND_EMQX } s_backend_t;

struct _au_check_t {
    lk_config_t *config; /* not owned */
    lk_redis_t *redis;
    bool allow_anonymous;
    bool nomatch_allow;
    s_backend_t backends[3];
    int n_backends;
    /* Redis key templates (%u = username): the seed layout's and EMQX 5's */
    const char *user_key, *acl_key, *emqx_user_key, *emqx_acl_key;
    lk_crypto_emqx_t emqx_alg;
    const char *password_path; /* NULL when unset; lives with config */
    const char *acl_path;
    au_pwfile_t *pwfile;
    lk_acl_file_t *aclfile;
    lk_ratelog_t refusals;
    au_lock_t *locks; /* the smart lock's guard (au_lock.h) */
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
        else if (strcmp(w, "emqx") == 0)
            b = S_BACKEND_EMQX;
        else {
            lk_error("auth_backends: unknown backend '%s' (want file, redis, emqx)", w);
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
    self->refusals = (lk_ratelog_t)LK_RATELOG_INIT(10, 1);
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
    self->user_key = lk_config_get(config, "redis_user_key", "mqtt_user:%u");
    self->acl_key = lk_config_get(config, "redis_acl_key", "mqtt_acl:%u");
    self->emqx_user_key = lk_config_get(config, "emqx_user_key", "mqtt:%u");
    self->emqx_acl_key = lk_config_get(config, "emqx_acl_key", "mqtt_acl:%u");
    if (rc == 0 && s_has_backend(self, S_BACKEND_EMQX))
        rc = lk_crypto_emqx_parse(&self->emqx_alg,
                                  lk_config_get(config, "emqx_password_hash", "sha256"),
                                  lk_config_get(config, "emqx_salt_position", "prefix"));
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
    if (rc != 0 || !(self->redis = lk_redis_new_config(config))) {
        au_check_destroy(&self);
        return NULL;
    }
    self->locks = au_lock_new(config);
    return self;
}

void au_check_destroy(au_check_t **self_p)
{
    au_check_t *self = *self_p;
    if (!self)
        return;
    lk_redis_destroy(&self->redis);
    au_lock_destroy(&self->locks);
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

struct _lk_redis_t *au_check_redis(au_check_t *self)
{
    return self->redis;
}

bool au_check_uses_redis(au_check_t *self)
{
    return s_has_backend(self, S_BACKEND_REDIS) || s_has_backend(self, S_BACKEND_EMQX);
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

/* checks the password against one stored hash (emqx: the EMQX algorithm, else the
   Mosquitto formats); the work is done in every case */
static s_auth_t s_verify(au_check_t *self, const char *user, const char *stored, const char *salt,
                         const Lk__AuthRequest *req, bool emqx)
{
    int rc = emqx ? lk_crypto_emqx_verify(&self->emqx_alg, stored, salt, req->password.data,
                                          req->password.len)
                  : lk_crypto_pw_verify(stored, salt, req->password.data, req->password.len);
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

/* HMGET of the user's hash in a Redis layout: [password, salt, is_superuser], password
   NIL when the layout does not know the user. EMQX 5 names the field password_hash and
   still reads `password` (4.x) when that is missing. NULL when Redis fails. */
static lk_redis_reply_t *s_redis_user(au_check_t *self, s_backend_t b, const char *user)
{
    char *key = lk_str_subst_user(b == S_BACKEND_EMQX ? self->emqx_user_key : self->user_key, user);
    /* mountpoint: the user's topic mount (fe_mount.c); token_auth "1": the username is an
       access token and the whole credential (ThingsBoard devices send no password) */
    const char *argv[8] = {"HMGET",      key,          "password",  "salt", "is_superuser",
                           "mountpoint", "token_auth", "password_hash"};
    size_t lens[8];
    for (int i = 0; i < 8; i++)
        lens[i] = strlen(argv[i]);
    lk_redis_reply_t *r = lk_redis_cmdv(self->redis, b == S_BACKEND_EMQX ? 8 : 7, argv, lens);
    free(key);
    if (lk_redis_reply_failed(r) || r->type != LK_REDIS_ARRAY || r->count < 5) {
        lk_redis_reply_free(&r);
        return NULL;
    }
    if (b == S_BACKEND_EMQX && r->count == 6 && r->items[5].type == LK_REDIS_STR) {
        lk_redis_reply_t tmp = r->items[0];
        r->items[0] = r->items[5];
        r->items[5] = tmp;
    }
    return r;
}

/* Finds the first backend that knows user and, unless acl_only, checks the password there.
   acl_only (a connected client's ACL is re-read after a change): the user only has to
   exist still. *via tells which backend decided. */
static s_auth_t s_authenticate(au_check_t *self, const char *user, const Lk__AuthRequest *req,
                               bool acl_only, bool *superuser, s_backend_t *via, char **mount,
                               bool *device)
{
    for (int i = 0; i < self->n_backends; i++) {
        s_backend_t b = self->backends[i];
        if (b == S_BACKEND_FILE) {
            const char *stored = self->pwfile ? au_pwfile_lookup(self->pwfile, user) : NULL;
            if (!stored)
                continue;
            *via = b;
            return acl_only ? S_AUTH_OK : s_verify(self, user, stored, NULL, req, false);
        }
        lk_redis_reply_t *r = s_redis_user(self, b, user);
        if (!r)
            return S_AUTH_UNAVAILABLE;
        bool token = s_truthy(&r->items[4]);
        if (r->items[0].type != LK_REDIS_STR && !token) {
            lk_redis_reply_free(&r);
            continue; /* not a user of this layout */
        }
        const char *salt = r->items[1].type == LK_REDIS_STR ? r->items[1].str : NULL;
        s_auth_t rc = acl_only || token
                          ? S_AUTH_OK
                          : s_verify(self, user, r->items[0].str, salt, req, b == S_BACKEND_EMQX);
        if (r->items[3].type == LK_REDIS_STR && *r->items[3].str)
            *mount = lk_strdup(r->items[3].str);
        *superuser = rc == S_AUTH_OK && s_truthy(&r->items[2]);
        *device = rc == S_AUTH_OK && token;
        *via = b;
        lk_redis_reply_free(&r);
        return rc;
    }
    /* nobody knows the user: spend the time a known user's check takes */
    if (!acl_only)
        lk_crypto_pw_dummy(req->password.data, req->password.len);
    return S_AUTH_BAD;
}

/* The access bits of an ACL hash value: the seed's "1" subscribe / "2" publish / "3"
   both, EMQX 5's "subscribe" / "publish" / "all", or EMQX's JSON form
   {"action": ..., "qos": [...], "retain": bool}. A JSON rule restricted by qos or retain
   cannot be expressed in our rules and grants nothing (deny by default). 0 = unusable. */
static uint32_t s_acl_access(const char *v)
{
    if (strcmp(v, "1") == 0 || strcmp(v, "subscribe") == 0)
        return LK_ACL_SUB;
    if (strcmp(v, "2") == 0 || strcmp(v, "publish") == 0)
        return LK_ACL_PUB;
    if (strcmp(v, "3") == 0 || strcmp(v, "all") == 0)
        return LK_ACL_BOTH;
    if (*v != '{')
        return 0;
    cJSON *j = cJSON_Parse(v);
    uint32_t access = 0;
    const cJSON *action = cJSON_GetObjectItemCaseSensitive(j, "action");
    const cJSON *perm = cJSON_GetObjectItemCaseSensitive(j, "permission");
    bool restricted = cJSON_GetObjectItemCaseSensitive(j, "qos") ||
                      cJSON_GetObjectItemCaseSensitive(j, "retain") ||
                      (cJSON_IsString(perm) && strcmp(perm->valuestring, "allow") != 0);
    if (cJSON_IsString(action) && !restricted)
        access = s_acl_access(action->valuestring);
    cJSON_Delete(j);
    return access == LK_ACL_SUB || access == LK_ACL_PUB || access == LK_ACL_BOTH ? access : 0;
}

/* EMQX's topic placeholders ${username} / ${clientid} in our %u / %c; a copy */
static char *s_emqx_placeholders(const char *f)
{
    char *out = lk_malloc(strlen(f) + 1), *w = out;
    while (*f) {
        if (strncmp(f, "${username}", 11) == 0) {
            memcpy(w, "%u", 2);
            w += 2;
            f += 11;
        } else if (strncmp(f, "${clientid}", 11) == 0) {
            memcpy(w, "%c", 2);
            w += 2;
            f += 11;
        } else
            *w++ = *f++;
    }
    *w = 0;
    return out;
}

/* appends the rules of the user's ACL hash in the layout of backend b; -1 when Redis
   fails */
static int s_redis_acl(au_check_t *self, s_backend_t b, const char *user, const char *client,
                       lk_acl_list_t *acl)
{
    char *key = lk_str_subst_user(b == S_BACKEND_EMQX ? self->emqx_acl_key : self->acl_key, user);
    const char *argv[2] = {"HGETALL", key};
    size_t lens[2] = {7, strlen(key)};
    lk_redis_reply_t *r = lk_redis_cmdv(self->redis, 2, argv, lens);
    if (lk_redis_reply_failed(r) || r->type != LK_REDIS_ARRAY) {
        lk_redis_reply_free(&r);
        free(key);
        return -1;
    }
    for (size_t i = 0; i + 1 < r->count; i += 2) {
        const lk_redis_reply_t *f = &r->items[i], *v = &r->items[i + 1];
        if (f->type != LK_REDIS_STR || v->type != LK_REDIS_STR)
            continue;
        uint32_t access = s_acl_access(v->str);
        char *filter = s_emqx_placeholders(f->str);
        char *pattern = access ? lk_acl_subst(filter, user, client) : NULL;
        free(filter);
        if (!pattern) {
            /* a bad entry, or %u/%c that this client's names cannot fill safely */
            char k[80], p[80];
            s_printable(k, sizeof(k), key);
            s_printable(p, sizeof(p), f->str);
            lk_info("%s: entry '%s' skipped for this client", k, p);
            continue;
        }
        lk_acl_list_add(acl, pattern, access);
        free(pattern);
    }
    lk_redis_reply_free(&r);
    free(key);
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
    if (r->mountpoint != protobuf_c_empty_string)
        free(r->mountpoint);
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
    bool ok = false, superuser = false, device = false;
    s_backend_t via = S_BACKEND_FILE;
    char *mount = NULL;
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
        /* use_identity_as_username: the frontend verified the client's certificate on a
           listener that requires one and named the user by its CN. The certificate is the
           credential (no password); superuser and ACLs are that user's. */
        bool by_cert = req->cert_cn && *req->cert_cn && strcmp(req->cert_cn, user) == 0 &&
                       !req->has_password && req->password.len == 0;
        s_auth_t rc = s_authenticate(self, user, req, req->acl_only || by_cert, &superuser, &via,
                                     &mount, &device);
        if (by_cert && rc == S_AUTH_BAD) {
            /* known to no backend: its ACL from the first Redis layout configured, if any */
            rc = S_AUTH_OK;
            for (int i = self->n_backends - 1; i >= 0; i--)
                if (self->backends[i] != S_BACKEND_FILE)
                    via = self->backends[i];
        }
        if (rc == S_AUTH_UNAVAILABLE)
            reason = AU_REASON_UNAVAILABLE;
        else if (rc == S_AUTH_BAD)
            reason = AU_REASON_BAD_CREDENTIALS;
        else if (superuser) {
            ok = true;
            s_full_access(&acl);
        } else if (via != S_BACKEND_FILE && s_redis_acl(self, via, user, client, &acl) != 0)
            reason = AU_REASON_UNAVAILABLE;
        else {
            ok = true;
            if (self->aclfile)
                lk_acl_file_rules(self->aclfile, user, client, &acl);
            if (acl.count == 0 && self->nomatch_allow)
                s_full_access(&acl);
        }
    }

    /* the lock topics, whatever was granted above (superusers excepted; fails closed) */
    if (ok && !superuser && au_lock_rules(self->locks, self->redis, named ? user : NULL, &acl) != 0) {
        ok = false;
        reason = AU_REASON_UNAVAILABLE;
    }
    /* the OTA topics belong to the devices ota-distributor knows (token credentials, each
       limited to its own topics): nobody else may fake a device's report or read its
       chunks, whatever allow_anonymous or a wide ACL grants */
    if (ok && !superuser && !device) {
        lk_acl_list_add(&acl, "lk/ota/#", LK_ACL_BOTH | LK_ACL_DENY);
        lk_acl_list_add(&acl, "tb/#", LK_ACL_BOTH | LK_ACL_DENY);
    }
    uint64_t skipped = 0;
    if (!ok && lk_ratelog_take(&self->refusals, lk_mono_ms(), &skipped)) {
        /* a flood of bad logins leaves 10 lines, then one a second, and a count */
        char c[80], u[80], p[80];
        s_printable(c, sizeof(c), client);
        s_printable(u, sizeof(u), named ? user : "");
        s_printable(p, sizeof(p), req->peer ? req->peer : "");
        if (skipped)
            lk_notice("%" PRIu64 " more refusal line(s) not logged", skipped);
        lk_notice("refused client '%s' username '%s'%s from %s: %s%s", c, u,
                  named ? "" : " (anonymous)", *p ? p : "?", reason,
                  named && self->allow_anonymous && strcmp(reason, AU_REASON_BAD_CREDENTIALS) == 0
                      ? " (allow_anonymous admits clients without a username only)"
                      : "");
    } else if (lk_log_enabled(LK_LOG_DEBUG)) {
        char c[80], u[80];
        s_printable(c, sizeof(c), client);
        s_printable(u, sizeof(u), named ? user : "(anonymous)");
        lk_debug("accepted client '%s' as %s, %zu rules", c, u, acl.count);
    }
    Lk__AuthReply *reply = s_reply(req->req, ok, superuser, &acl, reason);
    reply->acl_only = req->acl_only;
    if (ok && mount)
        reply->mountpoint = mount;
    else
        free(mount);
    return reply;
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
/* the OTA guard's two deny rules, which every non-device reply ends with */
static size_t s_guard_rules(Lk__AuthReply *r)
{
    size_t n = 0;
    for (size_t i = 0; r && i < r->n_acl; i++)
        if ((strcmp(r->acl[i]->pattern, "lk/ota/#") == 0 ||
             strcmp(r->acl[i]->pattern, "tb/#") == 0) &&
            r->acl[i]->access == (LK_ACL_BOTH | LK_ACL_DENY))
            n++;
    return n;
}

/* rules: the user's own, the OTA guard not counted */
static bool s_is(Lk__AuthReply *r, bool ok, const char *reason, int rules)
{
    bool good = r && r->req == 42 && r->ok == ok && strcmp(r->reason, ok ? "" : reason) == 0 &&
                (rules < 0 || r->n_acl - s_guard_rules(r) == (size_t)rules) &&
                (ok || r->n_acl == 0);
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
        {"HSET", "mqtt_user:tok123", "token_auth", "1"},
        {"HSET", "mqtt_acl:tok123", "lk/ota/d1/#", "3"},
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
                  s_has_rule(r, "$SYS/#", 1) && s_guard_rules(r) == 2);
        S_ASK("check: an OTA device token has its own topics, no guard", "tok123", NULL, NULL,
              s_is(r, true, NULL, 1) && s_has_rule(r, "lk/ota/d1/#", 3) && s_guard_rules(r) == 0);
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
        /* a malformed line is skipped (as Mosquitto does), the rest loads */
        char *hb = lk_crypto_pw_hash("newpw", 5, 0);
        snprintf(text, sizeof(text), "broken line\nfred:%s\n", hb);
        free(hb);
        s_write(pwpath, text);
        AU_CHECK(t, "check: reload skips a malformed line", au_check_reload(c) == 0);
        S_ASK("check: the good lines of that file load", "fred", "newpw", NULL,
              s_is(r, true, NULL, 3));
        unlink(pwpath);
        AU_CHECK(t, "check: reload of a missing file fails", au_check_reload(c) == -1);
        S_ASK("check: failed reload keeps the old file", "fred", "newpw", NULL,
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
        /* connected, with every lock-shaped topic denied (the lock set is unknown) */
        S_ASK("check: redis down, file user", "fred", "fredpw", NULL,
              s_is(r, true, NULL, 4) && s_has_rule(r, "/+/call", LK_ACL_DENY | LK_ACL_BOTH));
        S_ASK("check: redis down, other user unavailable", "ann", "secret", NULL,
              s_is(r, false, AU_REASON_UNAVAILABLE, 0));
        au_check_destroy(&c);
    }
    lk_config_destroy(&cfg);

    /* EMQX 5 layout chained after the seed's: mqtt:<name> with password_hash / salt /
       is_superuser, ACL values publish / subscribe / all / JSON */
    {
        const char *emqx[][6] = {
            /* sha256("salt" + "secret"): salt prefixed, EMQX's default */
            {"HSET", "mqtt:eve", "password_hash",
             "bede90386d450cea8b77b822f8887065e4e5abf132c2f9dccfcc7fbd4cba5e35", "salt", "salt"},
            {"HSET", "mqtt:boss", "password_hash",
             "bede90386d450cea8b77b822f8887065e4e5abf132c2f9dccfcc7fbd4cba5e35", "salt", "salt"},
            {"HSET", "mqtt:boss", "is_superuser", "true", NULL, NULL},
            {"HSET", "mqtt_acl:eve", "t/${username}/#", "subscribe", NULL, NULL},
            {"HSET", "mqtt_acl:eve", "p/1", "publish", NULL, NULL},
            {"HSET", "mqtt_acl:eve", "a/#", "all", NULL, NULL},
            {"HSET", "mqtt_acl:eve", "j/1", "{\"action\": \"publish\"}", NULL, NULL},
            {"HSET", "mqtt_acl:eve", "j/2", "{\"action\": \"publish\", \"qos\": [1]}", NULL, NULL},
            {"HSET", "mqtt_acl:eve", "j/3", "nonsense", NULL, NULL},
        };
        bool ok = true;
        for (size_t i = 0; i < LK_ARRAY_LEN(emqx); i++) {
            int argc = 0;
            size_t lens[6];
            while (argc < 6 && emqx[i][argc]) {
                lens[argc] = strlen(emqx[i][argc]);
                argc++;
            }
            lk_redis_reply_t *r = lk_redis_cmdv(rd, argc, emqx[i], lens);
            ok &= !lk_redis_reply_failed(r);
            lk_redis_reply_free(&r);
        }
        AU_CHECK(t, "check: emqx users seeded", ok);
        snprintf(text, sizeof(text), "redis_port %d\nauth_backends redis emqx\n", redis_port);
        cfg = lk_config_parse(text, "test");
        c = au_check_new(cfg);
        AU_CHECK(t, "check: new (redis + emqx)", c && au_check_uses_redis(c));
        if (c) {
            S_ASK("check: emqx sha256 salt prefix good", "eve", "secret", "c9",
                  s_is(r, true, NULL, 4) && !r->superuser && s_has_rule(r, "t/eve/#", 1) &&
                      s_has_rule(r, "p/1", 2) && s_has_rule(r, "a/#", 3) &&
                      s_has_rule(r, "j/1", 2));
            S_ASK("check: emqx bad password", "eve", "secrets", NULL,
                  s_is(r, false, AU_REASON_BAD_CREDENTIALS, 0));
            S_ASK("check: emqx superuser", "boss", "secret", NULL,
                  s_is(r, true, NULL, 2) && r->superuser);
            S_ASK("check: seed user still first", "ann", "secret", "c1", s_is(r, true, NULL, 4));
            /* acl_only: no password, the user must exist */
            Lk__AuthRequest q = LK__AUTH_REQUEST__INIT;
            q.req = 42;
            q.client = "c9";
            q.username = "eve";
            q.has_username = true;
            q.acl_only = true;
            Lk__AuthReply *r = au_check_request(c, &q);
            AU_CHECK(t, "check: acl_only without password", s_is(r, true, NULL, 4) && r->acl_only);
            au_reply_destroy(&r);
            q.username = "nobody";
            r = au_check_request(c, &q);
            AU_CHECK(t, "check: acl_only for a deleted user refused",
                     s_is(r, false, AU_REASON_BAD_CREDENTIALS, 0) && r->acl_only);
            au_reply_destroy(&r);
            au_check_destroy(&c);
        }
        lk_config_destroy(&cfg);
        /* suffix and a key template of our own */
        lk_redis_reply_t *r =
            lk_redis_cmd(rd, "HSET dev/fred password_hash %s salt pepper",
                         "37ed63206cdbaf3f6675549dadf40ba61f411d59ec57ec7c12e439a317d5d39b");
        lk_redis_reply_free(&r);
        snprintf(text, sizeof(text),
                 "redis_port %d\nauth_backends emqx\nemqx_user_key dev/%%u\n"
                 "emqx_salt_position suffix\n",
                 redis_port);
        cfg = lk_config_parse(text, "test");
        c = au_check_new(cfg);
        AU_CHECK(t, "check: new (emqx, suffix, own key)", c != NULL);
        if (c) {
            S_ASK("check: emqx suffix with key template", "fred", "secret", NULL,
                  s_is(r, true, NULL, 0));
            S_ASK("check: emqx layout does not read the seed's", "ann", "secret", NULL,
                  s_is(r, false, AU_REASON_BAD_CREDENTIALS, 0));
            au_check_destroy(&c);
        }
        lk_config_destroy(&cfg);
    }

    /* configuration errors */
    const char *bad[] = {"auth_backends bogus\n",
                         "auth_backends file\n",
                         "password_file /nonexistent/pw\n",
                         "acl_file /nonexistent/acl\n",
                         "acl_nomatch maybe\n",
                         "redis_port 70000\n",
                         "auth_backends emqx\nemqx_password_hash sha3\n"};
    for (size_t i = 0; i < LK_ARRAY_LEN(bad); i++) {
        cfg = lk_config_parse(bad[i], "test");
        c = au_check_new(cfg);
        snprintf(text, sizeof(text), "check: bad config refused: %.*s", (int)strlen(bad[i]) - 1,
                 bad[i]);
        for (char *nl = strchr(text, '\n'); nl; nl = strchr(nl, '\n'))
            *nl = ' ';
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
