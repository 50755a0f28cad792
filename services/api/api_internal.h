/*  api: the operators' HTTP surface — EMQX 5 REST under /api/v5, Prometheus, the
    dashboard and app login (issue 15). No state of its own: every answer comes from the
    services over the bus (lk.AdminRequest / AdminReply), gathered across every node.

    Layers: api_server.c (the actor: bus links, frontend discovery, gathering replies,
    HTTP dispatch and API-key checks) → api_rest.c (the /api/v5 handlers, JSON) and
    api_prom.c (/metrics, /stats, /metrics, /nodes), api_login.c (POST /login). */
#ifndef API_INTERNAL_H_INCLUDED
#define API_INTERNAL_H_INCLUDED

#include "latchkey.pb-c.h"
#include "lk_bus.h"
#include "lk_replicas.h"
#include "lk_common.h"
#include "lk_config.h"
#include "lk_http.h"
#include "lk_iclient.h"
#include "lk_loop.h"
#include <cjson/cJSON.h>
#include <czmq.h>

typedef struct _api_server_t api_server_t;
typedef api_server_t self_t;
typedef struct api_call api_call_t;
typedef void(api_call_fn)(self_t *self, api_call_t *call);

/* one answer of a gathered call: reply NULL when the node did not answer in time */
typedef struct {
    char *node;
    char *kind;
    Lk__AdminReply *reply;
} api_answer_t;

/* A request fanned out to nodes; `done` runs once every node answered or the timeout
   passed, then the call is freed (with http answered by done, or 503 when it did not). */
struct api_call {
    self_t *self;
    uint64_t id;
    lk_http_req_t *http;
    api_call_fn *done;
    api_answer_t *answers;
    size_t n, cap, waiting;
    int timer;
    /* the handler's context */
    cJSON *body;
    char *arg, *arg2;
    int64_t page, limit;
    int step;
    struct api_call *next;
};

struct _api_server_t {
    lk_loop_t *loop;
    lk_config_t *config;
    char *node;
    int ready_fd;
    lk_iclient_t *ic;
    lk_bus_t *bus;
    lk_http_t *http;
    lk_http_t *https; /* api_https_port, or NULL */
    lk_replicas_t *stores; /* session-store replicas (the iclient's links, by name) */
    lk_replicas_t *arbiters; /* NULL without arbiter_endpoint; logins go to any live one */
    /* the routers (router_replicas; the iclient's links, by name): each holds every
       subscription and retained message, so one live router answers for all (api_router) */
    lk_replicas_t *routers;
    lk_replicas_t *auths, *histories; /* NULL when their endpoint is unset */
    zhashx_t *frontends; /* node -> its peer (not owned), or S_UNREACHABLE (api_server.c) */
    api_call_t *calls;
    uint64_t next_call;
    int discover_timer;
    /* warming up: requests wait (early) until the first discovery found the frontends and
       their links are up, at most S_WARM_MS; a replica just (re)started behind a shared
       port would otherwise answer 503 or an empty list */
    bool warm;
    bool discovered;
    int warm_timer;
    zlistx_t *early;
    int timeout_ms;
    zhashx_t *keys; /* "key\nsecret-digest" -> expiry (mono ms), verified API keys */
    bool metrics_auth;
    int64_t key_cache_ms; /* a verified key is trusted this long without asking auth */
    char *dashboard_dir;
    int64_t started_ms;
    uint64_t published;
    /* app login (api_login.c) */
    struct api_login *login;
};

/* api_server.c */
api_server_t *api_server_new(lk_loop_t *loop, lk_config_t *config, const char *node, int ready_fd);
void api_server_destroy(api_server_t **self_p);
api_call_t *api_call_new(self_t *self, lk_http_req_t *http, api_call_fn *done);
/* sends q (its req is set here) to peer; a dead peer is skipped */
void api_call_send(api_call_t *call, lk_peer_t *peer, Lk__AdminRequest *q);
/* to every live frontend */
void api_call_frontends(api_call_t *call, Lk__AdminRequest *q);
/* the first live router (the first one when none is) */
lk_peer_t *api_router(api_server_t *self);
/* to every live node (router, session store, auth, arbiter, history writer, frontends) */
void api_call_all(api_call_t *call, Lk__AdminRequest *q);
/* starts waiting (done at once when nothing was sent) */
void api_call_start(api_call_t *call);

/* EMQX's error shape {"code": ..., "message": ...} */
void api_error(lk_http_req_t *req, int status, const char *code, const char *message);
/* answers json (and frees it) */
void api_json(lk_http_req_t *req, int status, cJSON *json);
/* the HTTP status an AdminReply error code means */
int api_status_of(const char *code);

/* api_rest.c: /api/v5/... (path after the prefix); false when no route matched */
bool api_rest(self_t *self, lk_http_req_t *req, const char *method, const char *path);
/* api_prom.c */
void api_prom_metrics(self_t *self, lk_http_req_t *req);
void api_prom_stats(self_t *self, lk_http_req_t *req);
void api_prom_emqx_metrics(self_t *self, lk_http_req_t *req);
void api_prom_nodes(self_t *self, lk_http_req_t *req);
/* RFC 3339 UTC text of wall ms into buf */
const char *api_time(uint64_t ms, char *buf, size_t cap);

/* api_login.c */
int api_login_init(self_t *self);
void api_login_destroy(self_t *self);
void api_login(self_t *self, lk_http_req_t *req);
void api_login_reply(self_t *self, lk_peer_t *peer, const Lk__LoginReply *r);

#endif
