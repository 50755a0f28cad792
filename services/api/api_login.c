/*  api_login: POST /login over HTTPS — seed 004's app login, with the proof of identity
    made pluggable (the seed had WeChat's code2Session only):
      {"id_token": "<JWT>"}  an OpenID Connect ID token, RS256 or ES256, checked against the
                             issuer's JSON Web Keys (login_oidc_jwks_file, or fetched over
                             HTTPS from login_oidc_jwks_url, or from the issuer's discovery
                             document), its iss, aud, exp, nbf and iat; the user is the
                             login_oidc_user_claim claim (sub)
      {"code": "<code>"}     exchanged with a GET of login_code_url (%c = the code,
                             URL-encoded) over HTTPS; the user is the answer's
                             login_code_user_field (openid, as code2Session answers)
    The user then gets temporary MQTT credentials from the lock-arbiter (LoginRequest, as
    `latchkey login` does), answered as the seed did: exists, lock, role, date, username,
    password, expiry. A wrong, expired or replayed proof is 401 (a token or code is
    accepted once); more than login_rate attempts a minute from one address is 429.

    A code is exchanged from a worker thread (at most 16 at once, each step bounded by
    login_timeout_ms, 3000), so the api keeps serving meanwhile. The key set is fetched
    synchronously: at start, and again at most once a minute when a token names an
    unknown key (the provider rotated its keys). */
#include "api_internal.h"
#include "lk_crypto.h"
#include "lk_jwt.h"
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>
#include <stdio.h>
#include <time.h>

#define S_REPLY_TIMEOUT_MS 3000
#define S_JWKS_REFRESH_MS 60000
#define S_CODE_KEEP_MS (10 * 60 * 1000)
#define S_JOBS_MAX 16

typedef struct s_pending {
    uint64_t req;
    lk_http_req_t *http;
    char *user;
    int64_t deadline;
    struct s_pending *next;
} s_pending_t;

typedef struct {
    double tokens;
    int64_t at;
} s_bucket_t;

/* a code being exchanged on a worker thread */
typedef struct s_job {
    lk_http_req_t *http;
    char *url;
    const char *cafile;
    int timeout_ms;
    int pipe_w;
    uint32_t ttl;
    char id[80];
    pthread_t thread;
    /* the thread's result */
    int rc, status;
    char *body;
    struct s_job *next;
} s_job_t;

struct api_login {
    bool enabled;
    const char *issuer, *audience, *jwks_file, *jwks_url, *user_claim, *cafile;
    const char *code_url, *code_field;
    int timeout_ms;
    int leeway_s;
    double rate; /* attempts a minute per address */
    cJSON *jwks;
    int64_t jwks_at;
    zhashx_t *used;    /* sha256 of a proof -> expiry (wall ms) */
    zhashx_t *buckets; /* address -> s_bucket_t */
    s_pending_t *pending;
    s_job_t *jobs;
    int n_jobs;
    int pipe[2];
    uint64_t next_req;
    int timer;
    uint64_t ok, refused, limited;
};

static void s_free(void **item)
{
    free(*item);
    *item = NULL;
}

/* --- the identity provider's keys -------------------------------------------------------- */

static cJSON *s_fetch_json(struct api_login *l, const char *url)
{
    int status = 0;
    char *body = NULL;
    if (lk_http_get(url, l->cafile, l->timeout_ms, 1 << 20, &status, &body, NULL) != 0)
        return NULL;
    cJSON *j = status == 200 ? cJSON_Parse(body) : NULL;
    if (!j)
        lk_warn("login: %s answered %d, not JSON", url, status);
    free(body);
    return j;
}

static int s_load_jwks(struct api_login *l)
{
    cJSON *j = NULL;
    if (l->jwks_file) {
        char *text = lk_file_read_text(l->jwks_file, "JWKS file", NULL);
        j = text ? cJSON_Parse(text) : NULL;
        free(text);
    } else if (l->jwks_url) {
        j = s_fetch_json(l, l->jwks_url);
    } else if (l->issuer) {
        char url[1024];
        snprintf(url, sizeof(url), "%s/.well-known/openid-configuration", l->issuer);
        cJSON *d = s_fetch_json(l, url);
        cJSON *u = d ? cJSON_GetObjectItem(d, "jwks_uri") : NULL;
        if (cJSON_IsString(u))
            j = s_fetch_json(l, u->valuestring);
        cJSON_Delete(d);
    }
    l->jwks_at = lk_mono_ms();
    if (!j || !cJSON_IsArray(cJSON_GetObjectItem(j, "keys"))) {
        lk_warn("login: no JSON Web Key Set from %s", l->jwks_file  ? l->jwks_file
                                                      : l->jwks_url ? l->jwks_url
                                                                    : "the issuer");
        cJSON_Delete(j);
        return -1;
    }
    cJSON_Delete(l->jwks);
    l->jwks = j;
    lk_info("login: %d key(s) of %s", cJSON_GetArraySize(cJSON_GetObjectItem(j, "keys")),
            l->issuer ? l->issuer : "the issuer");
    return 0;
}

static const char *s_jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* the user an ID token names, or NULL with *why; *exp_ms: when it expires */
static char *s_id_token(struct api_login *l, const char *tok, const char **why, int64_t *exp_ms)
{
    for (int round = 0; round < 2; round++) {
        lk_jwt_check_t c = {l->jwks,       l->issuer,           l->audience,
                            l->user_claim, lk_wall_ms() / 1000, l->leeway_s};
        bool unknown = false;
        int64_t exp_s = 0;
        char *user = lk_jwt_verify(&c, tok, &exp_s, why, &unknown);
        if (user) {
            *exp_ms = exp_s * 1000;
            return user;
        }
        /* an unknown kid: the provider may have rotated its keys (at most once a minute) */
        if (!unknown || round > 0 || lk_mono_ms() - l->jwks_at < S_JWKS_REFRESH_MS ||
            s_load_jwks(l) != 0)
            return NULL;
    }
    return NULL;
}

/* --- rate limit and replay ------------------------------------------------------------- */

static bool s_rate_ok(struct api_login *l, const char *addr)
{
    if (l->rate <= 0)
        return true;
    int64_t now = lk_mono_ms();
    s_bucket_t *b = zhashx_lookup(l->buckets, addr);
    if (!b) {
        if (zhashx_size(l->buckets) > 10000)
            zhashx_purge(l->buckets);
        b = lk_calloc(1, sizeof(*b));
        b->tokens = l->rate;
        b->at = now;
        zhashx_insert(l->buckets, addr, b);
    }
    b->tokens += (double)(now - b->at) * l->rate / 60000.0;
    if (b->tokens > l->rate)
        b->tokens = l->rate;
    b->at = now;
    if (b->tokens < 1)
        return false;
    b->tokens -= 1;
    return true;
}

static void s_proof_id(const char *kind, const char *proof, char *out, size_t cap)
{
    uint8_t d[32];
    char *s = lk_malloc(strlen(kind) + strlen(proof) + 2);
    sprintf(s, "%s:%s", kind, proof);
    lk_crypto_sha256(s, strlen(s), d);
    free(s);
    for (int i = 0; i < 32 && (size_t)(2 * i + 2) < cap; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* true the first time a proof is seen (until it expires) */
static bool s_first_use(struct api_login *l, const char *id, int64_t until_ms)
{
    int64_t now = lk_wall_ms();
    int64_t *t = zhashx_lookup(l->used, id);
    if (t && *t > now)
        return false;
    if (zhashx_size(l->used) > 100000) { /* drop the expired ones */
        zlistx_t *keys = zhashx_keys(l->used);
        for (const char *k = zlistx_first(keys); k; k = zlistx_next(keys)) {
            int64_t *x = zhashx_lookup(l->used, k);
            if (x && *x <= now)
                zhashx_delete(l->used, k);
        }
        zlistx_destroy(&keys);
    }
    int64_t *x = lk_malloc(sizeof(*x));
    *x = until_ms;
    zhashx_update(l->used, id, x);
    return true;
}

/* --- the request and the lock-arbiter's answer ------------------------------------------ */

static void s_expire(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    struct api_login *l = self->login;
    int64_t now = lk_mono_ms();
    for (s_pending_t **pp = &l->pending; *pp;) {
        s_pending_t *p = *pp;
        if (p->deadline <= now) {
            *pp = p->next;
            api_error(p->http, 503, "SERVICE_UNAVAILABLE", "lock-arbiter did not answer");
            free(p->user);
            free(p);
        } else
            pp = &p->next;
    }
}

/* a proof was checked: user (taken) or NULL with why; the rest of the login */
static void s_proven(self_t *self, lk_http_req_t *req, char *user, const char *why, const char *id,
                     int64_t until, uint32_t ttl)
{
    struct api_login *l = self->login;
    if (user && !s_first_use(l, id, until)) {
        why = "proof already used";
        free(user);
        user = NULL;
    }
    if (!user) {
        l->refused++;
        lk_notice("login from %s refused: %s", lk_http_peer(req), why);
        api_error(req, 401, "BAD_PROOF", why);
        return;
    }
    /* logins are stateless at the arbiter: any live replica */
    lk_peer_t *arbiter = self->arbiters ? lk_replicas_pick(self->arbiters) : NULL;
    if (!arbiter || !lk_peer_alive(arbiter)) {
        free(user);
        api_error(req, 503, "SERVICE_UNAVAILABLE", "lock-arbiter is not reachable");
        return;
    }
    s_pending_t *p = lk_calloc(1, sizeof(*p));
    p->req = ++l->next_req;
    p->http = req;
    p->user = user;
    p->deadline = lk_mono_ms() + S_REPLY_TIMEOUT_MS;
    p->next = l->pending;
    l->pending = p;
    Lk__LoginRequest lr = LK__LOGIN_REQUEST__INIT;
    lr.req = p->req;
    lr.user = user;
    lr.ttl = ttl;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_LOGIN_REQUEST;
    env.login_request = &lr;
    lk_bus_send(self->bus, arbiter, &env, false);
}

/* --- code exchanges on worker threads ------------------------------------------------------
   One thread a code (at most S_JOBS_MAX at once): it only does the HTTPS round trip
   (lk_http_get, which touches nothing of ours) and hands the job back through a
   pipe the loop watches; everything else happens on the loop's thread. */

static void *s_job_run(void *arg)
{
    s_job_t *job = arg;
    job->rc = lk_http_get(job->url, job->cafile, job->timeout_ms, 1 << 16, &job->status,
                          &job->body, NULL);
    ssize_t w;
    do
        w = write(job->pipe_w, &job, sizeof(job));
    while (w < 0 && errno == EINTR);
    return NULL;
}

static void s_job_free(s_job_t *job)
{
    free(job->url);
    free(job->body);
    free(job);
}

static void s_job_done(self_t *self, s_job_t *job)
{
    struct api_login *l = self->login;
    for (s_job_t **pp = &l->jobs; *pp; pp = &(*pp)->next)
        if (*pp == job) {
            *pp = job->next;
            break;
        }
    l->n_jobs--;
    pthread_join(job->thread, NULL);
    const char *why = "identity provider unreachable";
    char *user = NULL;
    if (job->rc == 0) {
        cJSON *j = job->status == 200 ? cJSON_Parse(job->body) : NULL;
        const char *u = j ? s_jstr(j, l->code_field) : NULL;
        if (u && *u)
            user = lk_strdup(u);
        else
            why = "code refused by the identity provider";
        cJSON_Delete(j);
    }
    s_proven(self, job->http, user, why, job->id, lk_wall_ms() + S_CODE_KEEP_MS, job->ttl);
    s_job_free(job);
}

static void s_jobs_readable(lk_loop_t *loop, int fd, uint32_t events, void *arg)
{
    self_t *self = arg;
    s_job_t *job;
    while (read(fd, &job, sizeof(job)) == (ssize_t)sizeof(job))
        s_job_done(self, job);
}

static void s_code_start(self_t *self, lk_http_req_t *req, const char *code, const char *id,
                         uint32_t ttl)
{
    struct api_login *l = self->login;
    if (!l->code_url) {
        s_proven(self, req, NULL, "code login is not configured", id, 0, ttl);
        return;
    }
    if (l->n_jobs >= S_JOBS_MAX) {
        api_error(req, 503, "SERVICE_UNAVAILABLE", "too many logins in progress");
        return;
    }
    char enc[768];
    size_t n = 0;
    for (const char *p = code; *p && n + 4 < sizeof(enc); p++) {
        unsigned char c = (unsigned char)*p;
        if (isalnum(c) || strchr("-_.~", c))
            enc[n++] = (char)c;
        else
            n += (size_t)snprintf(enc + n, sizeof(enc) - n, "%%%02X", c);
    }
    enc[n] = 0;
    s_job_t *job = lk_calloc(1, sizeof(*job));
    job->http = req;
    job->url = lk_str_subst(l->code_url, 'c', enc);
    job->cafile = l->cafile;
    job->timeout_ms = l->timeout_ms;
    job->pipe_w = l->pipe[1];
    job->ttl = ttl;
    snprintf(job->id, sizeof(job->id), "%s", id);
    if (pthread_create(&job->thread, NULL, s_job_run, job) != 0) {
        s_job_free(job);
        api_error(req, 503, "SERVICE_UNAVAILABLE", "cannot start the exchange");
        return;
    }
    job->next = l->jobs;
    l->jobs = job;
    l->n_jobs++;
}

void api_login(self_t *self, lk_http_req_t *req)
{
    struct api_login *l = self->login;
    if (strcmp(lk_http_method(req), "POST") != 0) {
        api_error(req, 405, "METHOD_NOT_ALLOWED", "POST only");
        return;
    }
    if (!l->enabled) {
        api_error(req, 404, "NOT_FOUND", "app login is not configured");
        return;
    }
    if (!lk_http_is_tls(req)) {
        api_error(req, 403, "HTTPS_REQUIRED", "log in over HTTPS");
        return;
    }
    if (!s_rate_ok(l, lk_http_peer(req))) {
        l->limited++;
        lk_http_add_header(req, "Retry-After", "60");
        api_error(req, 429, "TOO_MANY_REQUESTS", "too many login attempts from this address");
        return;
    }
    size_t len = 0;
    const char *b = lk_http_body(req, &len);
    cJSON *j = len ? cJSON_ParseWithLength(b, len) : NULL;
    const char *tok = j ? s_jstr(j, "id_token") : NULL;
    const char *code = j ? s_jstr(j, "code") : NULL;
    if (!j || (!tok && !code)) {
        cJSON_Delete(j);
        api_error(req, 400, "BAD_REQUEST", "a JSON body with id_token or code");
        return;
    }
    uint32_t ttl = (uint32_t)(cJSON_IsNumber(cJSON_GetObjectItem(j, "ttl"))
                                  ? cJSON_GetObjectItem(j, "ttl")->valuedouble
                                  : 0);
    char id[80];
    if (code) {
        /* the provider is asked from a worker thread: the loop keeps serving */
        s_proof_id("code", code, id, sizeof(id));
        s_code_start(self, req, code, id, ttl);
        cJSON_Delete(j);
        return;
    }
    const char *why = "refused";
    int64_t until = 0;
    char *user = s_id_token(l, tok, &why, &until);
    s_proof_id("token", tok, id, sizeof(id));
    cJSON_Delete(j);
    s_proven(self, req, user, why, id, until, ttl);
}

void api_login_reply(self_t *self, lk_peer_t *peer, const Lk__LoginReply *r)
{
    struct api_login *l = self->login;
    s_pending_t *p = NULL;
    for (s_pending_t **pp = &l->pending; *pp; pp = &(*pp)->next)
        if ((*pp)->req == r->req) {
            p = *pp;
            *pp = p->next;
            break;
        }
    if (!p)
        return;
    char t[48];
    cJSON *j = cJSON_CreateObject();
    if (!r->ok && r->reason &&
        (strcmp(r->reason, "unknown user") == 0 || strstr(r->reason, "no lock") == r->reason ||
         strcmp(r->reason, "no usable lock bound") == 0)) {
        /* as the seed: a user without a lock is not an error, just nobody we know */
        cJSON_AddBoolToObject(j, "exists", false);
        cJSON_AddStringToObject(j, "date", api_time((uint64_t)lk_wall_ms(), t, sizeof(t)));
        api_json(p->http, 200, j);
    } else if (!r->ok) {
        cJSON_Delete(j);
        api_error(p->http, 503, "SERVICE_UNAVAILABLE", r->reason ? r->reason : "login failed");
    } else {
        l->ok++;
        cJSON_AddBoolToObject(j, "exists", true);
        cJSON_AddStringToObject(j, "user", p->user);
        cJSON_AddStringToObject(j, "lock", r->n_locks ? r->locks[0] : "");
        cJSON_AddStringToObject(j, "role", r->n_roles ? r->roles[0] : "");
        cJSON_AddStringToObject(j, "date", api_time((uint64_t)lk_wall_ms(), t, sizeof(t)));
        cJSON_AddStringToObject(j, "username", r->username);
        cJSON_AddStringToObject(j, "password", r->password);
        cJSON_AddNumberToObject(j, "expires_at", (double)r->expires_at_ms);
        cJSON_AddStringToObject(j, "expiry", api_time(r->expires_at_ms, t, sizeof(t)));
        cJSON *locks = cJSON_AddArrayToObject(j, "locks");
        for (size_t i = 0; i < r->n_locks; i++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "lock", r->locks[i]);
            cJSON_AddStringToObject(o, "role", i < r->n_roles ? r->roles[i] : "");
            cJSON_AddItemToArray(locks, o);
        }
        lk_notice("login of %s from %s: %s", p->user, lk_http_peer(p->http), r->username);
        lk_http_add_header(p->http, "Cache-Control", "no-store");
        api_json(p->http, 200, j);
    }
    free(p->user);
    free(p);
}

/* --- construction ------------------------------------------------------------------------ */

static const char *s_cfg(lk_config_t *c, const char *key)
{
    const char *v = lk_config_get(c, key, NULL);
    return v && *v ? v : NULL;
}

int api_login_init(self_t *self)
{
    struct api_login *l = lk_calloc(1, sizeof(*l));
    l->pipe[0] = l->pipe[1] = -1;
    self->login = l;
    lk_config_t *c = self->config;
    l->issuer = s_cfg(c, "login_oidc_issuer");
    l->audience = s_cfg(c, "login_oidc_audience");
    l->jwks_file = s_cfg(c, "login_oidc_jwks_file");
    l->jwks_url = s_cfg(c, "login_oidc_jwks_url");
    l->user_claim = lk_config_get(c, "login_oidc_user_claim", "sub");
    l->cafile = s_cfg(c, "login_cafile");
    l->code_url = s_cfg(c, "login_code_url");
    l->code_field = lk_config_get(c, "login_code_user_field", "openid");
    l->timeout_ms = (int)lk_config_get_int(c, "login_timeout_ms", 3000);
    l->leeway_s = (int)lk_config_get_int(c, "login_leeway", 30);
    l->rate = (double)lk_config_get_int(c, "login_rate", 10);
    l->used = zhashx_new();
    zhashx_set_destructor(l->used, s_free);
    l->buckets = zhashx_new();
    zhashx_set_destructor(l->buckets, s_free);
    bool oidc = l->issuer || l->jwks_file || l->jwks_url;
    l->enabled = oidc || l->code_url;
    if (oidc && !l->issuer) {
        lk_error("login: login_oidc_issuer must be set with the issuer's keys");
        return -1;
    }
    if (oidc && !l->audience) {
        lk_error("login: login_oidc_audience must be set (the app's client id)");
        return -1;
    }
    if (l->code_url && strncmp(l->code_url, "https://", 8) != 0) {
        lk_error("login: login_code_url must be https://");
        return -1;
    }
    /* keys now; a provider that is down is asked again at the first token */
    if (oidc && s_load_jwks(l) != 0 && l->jwks_file)
        return -1;
    if (l->code_url) {
        if (pipe2(l->pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
            lk_error("login: pipe: %s", strerror(errno));
            return -1;
        }
        /* the workers' end blocks: a finished exchange is never lost */
        fcntl(l->pipe[1], F_SETFL, 0);
        lk_loop_add_fd(self->loop, l->pipe[0], EPOLLIN, s_jobs_readable, self);
    }
    l->timer = lk_loop_timer(self->loop, 500, true, s_expire, self);
    if (l->enabled)
        lk_notice("app login: %s%s%s", oidc ? "OpenID Connect ID tokens of " : "",
                  oidc ? l->issuer : "", l->code_url ? (oidc ? ", codes" : "codes") : "");
    return 0;
}

void api_login_destroy(self_t *self)
{
    struct api_login *l = self->login;
    if (!l)
        return;
    while (l->pending) {
        s_pending_t *p = l->pending;
        l->pending = p->next;
        api_error(p->http, 503, "SERVICE_UNAVAILABLE", "shutting down");
        free(p->user);
        free(p);
    }
    /* exchanges in flight end within login_timeout_ms (each step) */
    while (l->jobs) {
        s_job_t *job = l->jobs;
        pthread_join(job->thread, NULL);
        s_job_t *back;
        while (read(l->pipe[0], &back, sizeof(back)) == (ssize_t)sizeof(back))
            ;
        l->jobs = job->next;
        api_error(job->http, 503, "SERVICE_UNAVAILABLE", "shutting down");
        s_job_free(job);
    }
    if (l->pipe[0] >= 0) {
        lk_loop_del_fd(self->loop, l->pipe[0]);
        close(l->pipe[0]);
        close(l->pipe[1]);
    }
    if (l->timer)
        lk_loop_timer_cancel(self->loop, l->timer);
    cJSON_Delete(l->jwks);
    zhashx_destroy(&l->used);
    zhashx_destroy(&l->buckets);
    free(l);
    self->login = NULL;
}
