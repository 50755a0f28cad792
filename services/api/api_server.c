/*  api_server: the api actor — bus links (as an internal client, for publishing), finding
    the frontends, gathering AdminReplies, and HTTP dispatch with API-key checks.

    Finding the frontends: every frontend connects to the router, and advertises in its
    Hello the ROUTER endpoint where other frontends hand it QoS 0 messages
    (frontend_endpoint). Every second the api asks the router for its node info, whose peer
    list carries each peer's kind and endpoint, and connects a DEALER to every frontend's
    endpoint it does not know yet. A frontend without frontend_endpoint cannot be reached
    (logged once). */
#include "api_internal.h"
#include "lk_admin.h"
#include "lk_crypto.h"
#include <limits.h>
#include <unistd.h>

#define S_DISCOVER_MS 1000
#define S_WARM_MS 2000

/* the frontends table's value for a frontend without frontend_endpoint (no peer) */
static char s_unreachable;
#define S_UNREACHABLE ((void *)&s_unreachable)

/* --- calls: one request fanned out, the replies gathered ------------------------------ */

static void s_call_free(api_call_t *call)
{
    for (size_t i = 0; i < call->n; i++) {
        free(call->answers[i].node);
        free(call->answers[i].kind);
        if (call->answers[i].reply)
            lk__admin_reply__free_unpacked(call->answers[i].reply, NULL);
    }
    free(call->answers);
    cJSON_Delete(call->body);
    free(call->arg);
    free(call->arg2);
    free(call);
}

static void s_call_finish(api_call_t *call)
{
    self_t *self = call->self;
    for (api_call_t **pp = &self->calls; *pp; pp = &(*pp)->next)
        if (*pp == call) {
            *pp = call->next;
            break;
        }
    if (call->timer)
        lk_loop_timer_cancel(self->loop, call->timer);
    call->timer = 0;
    call->done(self, call);
    s_call_free(call);
}

static void s_call_timeout(lk_loop_t *loop, void *arg)
{
    api_call_t *call = arg;
    call->timer = 0;
    s_call_finish(call);
}

api_call_t *api_call_new(self_t *self, lk_http_req_t *http, api_call_fn *done)
{
    api_call_t *call = lk_calloc(1, sizeof(*call));
    call->self = self;
    call->id = ++self->next_call;
    call->http = http;
    call->done = done;
    call->next = self->calls;
    self->calls = call;
    return call;
}

void api_call_send(api_call_t *call, lk_peer_t *peer, Lk__AdminRequest *q)
{
    if (!peer || !lk_peer_alive(peer) || call->n >= 0xFFFF)
        return; /* the answer's index travels in the low 16 bits of req */
    if (call->n == call->cap) {
        call->cap = call->cap ? call->cap * 2 : 8;
        call->answers = lk_realloc(call->answers, call->cap * sizeof(api_answer_t));
    }
    api_answer_t *a = &call->answers[call->n];
    a->node = lk_strdup(lk_peer_name(peer));
    a->kind = lk_strdup(lk_peer_kind(peer));
    a->reply = NULL;
    q->req = (call->id << 16) | call->n;
    call->n++;
    call->waiting++;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_ADMIN_REQUEST;
    env.admin_request = q;
    lk_bus_send(call->self->bus, peer, &env, false);
}

typedef struct {
    api_call_t *call;
    Lk__AdminRequest *q;
    bool frontends_only;
} s_each_t;

static void s_send_each(lk_peer_t *peer, void *arg)
{
    s_each_t *e = arg;
    const char *kind = lk_peer_kind(peer);
    if (!lk_peer_alive(peer) || !kind || !*kind)
        return;
    if (e->frontends_only && strcmp(kind, "mqtt-frontend") != 0)
        return;
    api_call_send(e->call, peer, e->q);
}

void api_call_frontends(api_call_t *call, Lk__AdminRequest *q)
{
    s_each_t e = {call, q, true};
    lk_bus_each_peer(call->self->bus, s_send_each, &e);
}

void api_call_all(api_call_t *call, Lk__AdminRequest *q)
{
    s_each_t e = {call, q, false};
    lk_bus_each_peer(call->self->bus, s_send_each, &e);
}

void api_call_start(api_call_t *call)
{
    /* done from a timer, also when nothing was sent: the handler may still be on the stack */
    call->timer = lk_loop_timer(call->self->loop, call->waiting ? call->self->timeout_ms : 0, false,
                                s_call_timeout, call);
}

static void s_admin_reply(self_t *self, lk_peer_t *peer, const Lk__AdminReply *r)
{
    uint64_t id = r->req >> 16;
    size_t idx = (size_t)(r->req & 0xFFFF);
    api_call_t *call = self->calls;
    while (call && call->id != id)
        call = call->next;
    if (!call || idx >= call->n || call->answers[idx].reply)
        return; /* late or repeated */
    /* the envelope's memory is the bus's arena: keep a copy of our own */
    size_t len = lk__admin_reply__get_packed_size(r);
    uint8_t *buf = lk_malloc(len ? len : 1);
    lk__admin_reply__pack(r, buf);
    call->answers[idx].reply = lk__admin_reply__unpack(NULL, len, buf);
    free(buf);
    if (call->answers[idx].reply && call->waiting)
        call->waiting--;
    if (call->waiting == 0) {
        lk_loop_timer_cancel(self->loop, call->timer);
        call->timer = lk_loop_timer(self->loop, 0, false, s_call_timeout, call);
    }
}

/* --- frontend discovery ------------------------------------------------------------- */

static void s_discovered(self_t *self, api_call_t *call)
{
    if (call->n && call->answers[0].reply)
        self->discovered = true;
    for (size_t i = 0; i < call->n; i++) {
        Lk__AdminReply *r = call->answers[i].reply;
        if (!r || !r->node)
            continue;
        for (size_t k = 0; k < r->node->n_peers; k++) {
            Lk__AdminPeer *p = r->node->peers[k];
            if (!p->kind || strcmp(p->kind, "mqtt-frontend") != 0 || !p->node)
                continue;
            if (zhashx_lookup(self->frontends, p->node))
                continue;
            if (!p->endpoint || !*p->endpoint) {
                lk_warn("frontend %s serves no frontend_endpoint: the api cannot reach it",
                        p->node);
                zhashx_insert(self->frontends, p->node, S_UNREACHABLE);
                continue;
            }
            lk_notice("frontend %s found at %s", p->node, p->endpoint);
            /* over tcp:// the frontends may share one certificate (containers) */
            lk_peer_t *fe = lk_bus_connect_as(
                self->bus, p->node, lk_config_get(self->config, "frontend_curve_server_key", NULL),
                p->endpoint);
            zhashx_insert(self->frontends, p->node, fe);
        }
    }
}

lk_peer_t *api_router(api_server_t *self)
{
    /* the first live router, else the first (asks wait for it) */
    lk_peer_t *p = lk_replicas_other(self->routers, NULL);
    return p ? p : lk_replicas_nth(self->routers, 0);
}

static void s_discover(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    api_call_t *call = api_call_new(self, NULL, s_discovered);
    Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
    q.op = "node";
    api_call_send(call, api_router(self), &q);
    api_call_start(call);
}

/* --- bus handlers ------------------------------------------------------------------- */

static void s_on_envelope(lk_iclient_t *ic, lk_peer_t *peer, Lk__Envelope *env, void *arg)
{
    self_t *self = arg;
    switch (env->body_case) {
    case LK__ENVELOPE__BODY_ADMIN_REPLY:
        s_admin_reply(self, peer, env->admin_reply);
        break;
    case LK__ENVELOPE__BODY_LOGIN_REPLY:
        api_login_reply(self, peer, env->login_reply);
        break;
    default:
        break;
    }
    if (env->seq)
        lk_bus_ack(self->bus, peer, env->seq);
}

static void s_on_msg(lk_iclient_t *ic, const Lk__Msg *msg, uint64_t store_id, void *arg)
{
    (void)ic; /* no subscriptions */
}

static void s_on_ready(lk_iclient_t *ic, void *arg) {}

/* --- HTTP ----------------------------------------------------------------------------- */

void api_json(lk_http_req_t *req, int status, cJSON *json)
{
    char *text = cJSON_PrintUnformatted(json);
    lk_http_respond_json(req, status, text);
    free(text);
    cJSON_Delete(json);
}

void api_error(lk_http_req_t *req, int status, const char *code, const char *message)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "code", code);
    cJSON_AddStringToObject(j, "message", message);
    api_json(req, status, j);
}

int api_status_of(const char *code)
{
    if (!code)
        return 500;
    if (strcmp(code, "NOT_FOUND") == 0 || strcmp(code, "CLIENTID_NOT_FOUND") == 0)
        return 404;
    if (strcmp(code, "BAD_REQUEST") == 0 || strcmp(code, "INVALID_PARAMETER") == 0 ||
        strcmp(code, "ALREADY_EXISTS") == 0)
        return 400;
    if (strcmp(code, "BAD_API_KEY_OR_SECRET") == 0)
        return 401;
    if (strcmp(code, "FORBIDDEN") == 0)
        return 403;
    if (strcmp(code, "SERVICE_UNAVAILABLE") == 0)
        return 503;
    return 500;
}

/* the cache key of a verified key:secret pair: key and the SHA-256 of the secret */
static void s_key_id(const char *key, const char *secret, char *out, size_t cap)
{
    uint8_t d[32];
    lk_crypto_sha256(secret, strlen(secret), d);
    int n = snprintf(out, cap, "%.200s\n", key);
    for (int i = 0; i < 32 && (size_t)n + 3 < cap; i++)
        n += snprintf(out + n, cap - (size_t)n, "%02x", d[i]);
}

static void s_dispatch(self_t *self, lk_http_req_t *req);

static void s_key_checked(self_t *self, api_call_t *call)
{
    Lk__AdminReply *r = call->n ? call->answers[0].reply : NULL;
    if (!r) {
        api_error(call->http, 503, "SERVICE_UNAVAILABLE", "auth did not answer");
        return;
    }
    if (!r->ok) {
        api_error(call->http, 401, "BAD_API_KEY_OR_SECRET", "Check api_key/api_secret");
        return;
    }
    int64_t *until = lk_malloc(sizeof(int64_t));
    *until = lk_mono_ms() + self->key_cache_ms;
    zhashx_update(self->keys, call->arg, until);
    s_dispatch(self, call->http);
}

/* true when the request may go on now; otherwise it is answered (401) or waits for auth */
static bool s_authorised(self_t *self, lk_http_req_t *req)
{
    const char *user = NULL, *pw = NULL;
    if (lk_http_basic_auth(req, &user, &pw) != 0 || !*user) {
        lk_http_add_header(req, "WWW-Authenticate", "Basic realm=\"latchkey\"");
        api_error(req, 401, "BAD_API_KEY_OR_SECRET", "Check api_key/api_secret");
        return false;
    }
    char id[512];
    s_key_id(user, pw, id, sizeof(id));
    int64_t *until = zhashx_lookup(self->keys, id);
    if (until && *until > lk_mono_ms())
        return true;
    api_call_t *call = api_call_new(self, req, s_key_checked);
    call->arg = lk_strdup(id);
    Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
    q.op = "apikey_check";
    q.username = (char *)user;
    q.password.data = (uint8_t *)pw;
    q.password.len = strlen(pw);
    api_call_send(call, lk_replicas_pick(self->auths), &q);
    api_call_start(call);
    return false;
}

static const char *s_ctype(const char *path)
{
    const char *dot = strrchr(path, '.');
    if (!dot)
        return "application/octet-stream";
    if (strcmp(dot, ".html") == 0)
        return "text/html; charset=utf-8";
    if (strcmp(dot, ".js") == 0)
        return "text/javascript; charset=utf-8";
    if (strcmp(dot, ".css") == 0)
        return "text/css; charset=utf-8";
    if (strcmp(dot, ".svg") == 0)
        return "image/svg+xml";
    if (strcmp(dot, ".png") == 0)
        return "image/png";
    if (strcmp(dot, ".json") == 0)
        return "application/json";
    return "application/octet-stream";
}

/* the dashboard's static files: no "..", no hidden files */
static void s_static(self_t *self, lk_http_req_t *req, const char *path)
{
    if (!self->dashboard_dir) {
        api_error(req, 404, "NOT_FOUND", "no dashboard installed");
        return;
    }
    if (strcmp(path, "/") == 0)
        path = "/index.html";
    if (strstr(path, "/.") || strstr(path, "..") || strlen(path) > 200) {
        api_error(req, 404, "NOT_FOUND", "Not found");
        return;
    }
    char file[PATH_MAX];
    snprintf(file, sizeof(file), "%s%s", self->dashboard_dir, path);
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        api_error(req, 404, "NOT_FOUND", "Not found");
        return;
    }
    char etag[64];
    snprintf(etag, sizeof(etag), "%lx-%lx", (unsigned long)st.st_size,
             (unsigned long)st.st_mtime);
    lk_http_respond_file(req, fd, (uint64_t)st.st_size, s_ctype(path), etag);
}

static void s_serve(self_t *self, lk_http_req_t *req);

static void s_warm_check(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    /* ready: a router answered a discovery, and every frontend it named that we can reach
       is up */
    bool ready = self->discovered && lk_peer_alive(api_router(self));
    for (void *fe = zhashx_first(self->frontends); ready && fe; fe = zhashx_next(self->frontends))
        ready = fe == S_UNREACHABLE || lk_peer_alive(fe);
    if (!ready && lk_mono_ms() - self->started_ms < S_WARM_MS)
        return;
    lk_loop_timer_cancel(loop, self->warm_timer);
    self->warm_timer = 0;
    self->warm = true;
    if (zlistx_size(self->early))
        lk_info("warmed up: %zu early request(s) answered now", zlistx_size(self->early));
    for (lk_http_req_t *req = zlistx_first(self->early); req; req = zlistx_next(self->early))
        s_serve(self, req);
    zlistx_purge(self->early);
}

static void s_on_http(lk_http_req_t *req, void *arg)
{
    self_t *self = arg;
    if (!self->warm) {
        zlistx_add_end(self->early, req);
        return;
    }
    s_serve(self, req);
}

static void s_dispatch(self_t *self, lk_http_req_t *req)
{
    const char *method = lk_http_method(req);
    const char *path = lk_http_path(req);
    if (strncmp(path, "/api/v5/", 8) == 0) {
        if (strcmp(path, "/api/v5/prometheus/stats") == 0 && strcmp(method, "GET") == 0) {
            api_prom_metrics(self, req);
            return;
        }
        if (!api_rest(self, req, method, path + 7))
            api_error(req, 404, "NOT_FOUND", "Request path not found");
        return;
    }
    api_error(req, 404, "NOT_FOUND", "Request path not found");
}

static void s_serve(self_t *self, lk_http_req_t *req)
{
    const char *method = lk_http_method(req);
    const char *path = lk_http_path(req);
    if (strcmp(path, "/login") == 0) {
        api_login(self, req);
        return;
    }
    if (strcmp(path, "/metrics") == 0 ||
        (strcmp(path, "/api/v5/prometheus/stats") == 0 && !self->metrics_auth)) {
        if (strcmp(method, "GET") != 0) {
            api_error(req, 405, "METHOD_NOT_ALLOWED", "GET only");
            return;
        }
        if (self->metrics_auth && !s_authorised(self, req))
            return;
        api_prom_metrics(self, req);
        return;
    }
    if (strncmp(path, "/api/", 5) != 0) {
        if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
            api_error(req, 405, "METHOD_NOT_ALLOWED", "GET only");
            return;
        }
        s_static(self, req, path);
        return;
    }
    if (!s_authorised(self, req))
        return;
    s_dispatch(self, req);
}

/* --- construction --------------------------------------------------------------------- */

static char *s_dashboard_dir(lk_config_t *config)
{
    const char *d = lk_config_get(config, "api_dashboard_dir", NULL);
    if (d && *d)
        return lk_strdup(d);
    /* next to the binaries: $(BUILD)/bin/api -> $(BUILD)/dashboard */
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return NULL;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash)
        return NULL;
    *slash = 0;
    char dir[PATH_MAX + 16];
    snprintf(dir, sizeof(dir), "%s/../dashboard", exe);
    char *real = realpath(dir, NULL);
    return real;
}

static void s_free_ms(void **item)
{
    free(*item);
    *item = NULL;
}

api_server_t *api_server_new(lk_loop_t *loop, lk_config_t *config, const char *node, int ready_fd)
{
    self_t *self = lk_calloc(1, sizeof(*self));
    self->loop = loop;
    self->config = config;
    self->node = lk_strdup(node);
    self->ready_fd = ready_fd;
    self->started_ms = lk_mono_ms();
    self->timeout_ms = (int)lk_config_get_int(config, "api_timeout_ms", 2000);
    self->metrics_auth = lk_config_get_bool(config, "api_metrics_auth", false);
    self->key_cache_ms = lk_config_get_int(config, "api_key_cache_ms", 5000);
    self->frontends = zhashx_new(); /* the peers are the bus's */
    self->early = zlistx_new();
    self->keys = zhashx_new();
    zhashx_set_destructor(self->keys, s_free_ms);
    self->dashboard_dir = s_dashboard_dir(config);
    char cid[128];
    snprintf(cid, sizeof(cid), "$lk-%s", node);
    lk_iclient_handlers_t h = {s_on_msg, s_on_ready, NULL, s_on_envelope, NULL, NULL};
    self->ic = lk_iclient_new(loop, config, node, "api", cid, &h, self);
    if (!self->ic)
        goto fail;
    self->bus = lk_iclient_bus(self->ic);
    if (lk_bus_enable_msglog(self->bus, lk_config_get(config, "msglog_dir", "")) != 0)
        goto fail;
    /* the iclient connected to every router and store (and checked their counts) */
    self->routers = lk_replicas_served(self->bus, config, "router", "router");
    self->stores = lk_replicas_served(self->bus, config, "session", "session-store");
    self->auths = lk_replicas_connect(self->bus, config, "auth", "auth");
    if (!self->auths) {
        lk_error("auth_endpoint must be configured (API keys and bans live there)");
        goto fail;
    }
    self->arbiters = lk_replicas_connect(self->bus, config, "arbiter", "lock-arbiter");
    self->histories = lk_replicas_connect(self->bus, config, "history", "history-writer");
    if (api_login_init(self) != 0)
        goto fail;
    lk_http_opts_t o = {0};
    o.address = lk_config_get(config, "api_address", "127.0.0.1");
    o.port = (int)lk_config_get_int(config, "api_port", 18083);
    /* api_replicas: every replica listens on the same ports */
    o.reuse_port = lk_config_get_int(config, "api_replicas", 1) > 1;
    o.tls_cert_file = lk_config_get(config, "api_certfile", NULL);
    o.tls_key_file = lk_config_get(config, "api_keyfile", NULL);
    if (o.tls_cert_file && !*o.tls_cert_file)
        o.tls_cert_file = o.tls_key_file = NULL;
    self->http = lk_http_new(loop, &o, s_on_http, self);
    if (!self->http)
        goto fail;
    /* an extra HTTPS listener (app login needs HTTPS; the REST API is there too) */
    int64_t hp = lk_config_get_int(config, "api_https_port", 0);
    if (hp > 0) {
        lk_http_opts_t t = o;
        t.port = (int)hp;
        t.tls_cert_file = lk_config_get(config, "api_https_certfile", NULL);
        t.tls_key_file = lk_config_get(config, "api_https_keyfile", NULL);
        if (!t.tls_cert_file || !*t.tls_cert_file || !t.tls_key_file || !*t.tls_key_file) {
            lk_error("api_https_port needs api_https_certfile and api_https_keyfile");
            goto fail;
        }
        self->https = lk_http_new(loop, &t, s_on_http, self);
        if (!self->https)
            goto fail;
        lk_notice("serving HTTPS on %s:%d", t.address, lk_http_port(self->https));
    }
    self->discover_timer = lk_loop_timer(loop, S_DISCOVER_MS, true, s_discover, self);
    self->warm_timer = lk_loop_timer(loop, 50, true, s_warm_check, self);
    s_discover(loop, self);
    lk_notice("serving HTTP%s on %s:%d (dashboard %s)", o.tls_cert_file ? "S" : "", o.address,
              lk_http_port(self->http),
              self->dashboard_dir ? self->dashboard_dir : "not installed");
    lk_ready_notify(self->ready_fd);
    self->ready_fd = -1;
    return self;
fail:
    api_server_destroy(&self);
    return NULL;
}

void api_server_destroy(api_server_t **self_p)
{
    self_t *self = *self_p;
    if (!self)
        return;
    while (self->calls) {
        api_call_t *c = self->calls;
        self->calls = c->next;
        if (c->timer)
            lk_loop_timer_cancel(self->loop, c->timer);
        if (c->http)
            api_error(c->http, 503, "SERVICE_UNAVAILABLE", "shutting down");
        s_call_free(c);
    }
    if (self->discover_timer)
        lk_loop_timer_cancel(self->loop, self->discover_timer);
    if (self->warm_timer)
        lk_loop_timer_cancel(self->loop, self->warm_timer);
    for (lk_http_req_t *req = self->early ? zlistx_first(self->early) : NULL; req;
         req = zlistx_next(self->early))
        api_error(req, 503, "SERVICE_UNAVAILABLE", "shutting down");
    zlistx_destroy(&self->early);
    lk_http_destroy(&self->http);
    lk_http_destroy(&self->https);
    api_login_destroy(self);
    if (self->ic) {
        lk_iclient_close(self->ic, 300);
        lk_iclient_destroy(&self->ic);
    }
    lk_replicas_destroy(&self->auths);
    lk_replicas_destroy(&self->routers);
    lk_replicas_destroy(&self->stores);
    lk_replicas_destroy(&self->histories);
    lk_replicas_destroy(&self->arbiters);
    zhashx_destroy(&self->frontends);
    zhashx_destroy(&self->keys);
    free(self->dashboard_dir);
    free(self->node);
    free(self);
    *self_p = NULL;
}
