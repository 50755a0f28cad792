/*  api_rest: the EMQX 5 management API under /api/v5 (paths, parameters and JSON shapes as
    EMQX 5 has them: lists as {"data": [...], "meta": {page, limit, count, hasnext}},
    errors as {"code", "message"}). Each handler fans an AdminRequest out (api_server.c)
    and answers in its `done` step from the gathered replies. */
#include "api_internal.h"
#include "lk_crypto.h"
#include "lk_mqtt.h"
#include <stdio.h>
#include <time.h>

#define S_LIMIT_MAX 10000
#define S_BULK_MAX 1000

const char *api_time(uint64_t ms, char *buf, size_t cap)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char t[32];
    strftime(t, sizeof(t), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, cap, "%s.%03u+00:00", t, (unsigned)(ms % 1000));
    return buf;
}

/* RFC 3339 ("2024-01-02T03:04:05[.mmm](Z|+hh:mm)") or a number of seconds: wall ms, or -1 */
static int64_t s_parse_time(const cJSON *v)
{
    if (cJSON_IsNumber(v))
        return v->valuedouble < 0 ? -1 : (int64_t)(v->valuedouble * 1000);
    if (!cJSON_IsString(v))
        return -1;
    struct tm tm = {0};
    const char *p = strptime(v->valuestring, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!p)
        return -1;
    int64_t ms = 0;
    if (*p == '.') {
        p++;
        int digits = 0;
        while (*p >= '0' && *p <= '9') {
            if (digits < 3)
                ms = ms * 10 + (*p - '0');
            digits++;
            p++;
        }
        while (digits++ < 3)
            ms *= 10;
    }
    int64_t off = 0;
    if (*p == '+' || *p == '-') {
        int h = 0, m = 0;
        if (sscanf(p + 1, "%2d:%2d", &h, &m) != 2)
            return -1;
        off = (h * 3600 + m * 60) * (*p == '-' ? -1 : 1);
    } else if (*p != 'Z' && *p != 'z')
        return -1;
    int64_t s = (int64_t)timegm(&tm) - off;
    return s * 1000 + ms;
}

/* --- small helpers ------------------------------------------------------------------ */

/* page and limit (EMQX: page >= 1, limit 1..10000, default 1 and 100); false: answered */
static bool s_paging(lk_http_req_t *req, int64_t *page, int64_t *limit)
{
    const char *p = lk_http_query(req, "page");
    const char *l = lk_http_query(req, "limit");
    char *end;
    *page = 1;
    *limit = 100;
    if (p) {
        *page = strtoll(p, &end, 10);
        if (!*p || *end || *page < 1) {
            api_error(req, 400, "BAD_REQUEST", "page must be an integer >= 1");
            return false;
        }
    }
    if (l) {
        *limit = strtoll(l, &end, 10);
        if (!*l || *end || *limit < 1 || *limit > S_LIMIT_MAX) {
            api_error(req, 400, "BAD_REQUEST", "limit must be an integer in 1..10000");
            return false;
        }
    }
    return true;
}

/* answers {"data": data (taken; already the page), "meta": {...}} for count items */
static void s_page_of(lk_http_req_t *req, cJSON *data, int64_t page, int64_t limit, int64_t count)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddItemToObject(j, "data", data);
    cJSON *meta = cJSON_AddObjectToObject(j, "meta");
    cJSON_AddNumberToObject(meta, "page", (double)page);
    cJSON_AddNumberToObject(meta, "limit", (double)limit);
    cJSON_AddNumberToObject(meta, "count", (double)count);
    cJSON_AddBoolToObject(meta, "hasnext", (page - 1) * limit + limit < count);
    api_json(req, 200, j);
}

/* answers {"data": items[page], "meta": {...}} from a full array (taken) */
static void s_page(lk_http_req_t *req, cJSON *all, int64_t page, int64_t limit)
{
    int64_t count = cJSON_GetArraySize(all);
    cJSON *data = cJSON_CreateArray();
    int64_t first = (page - 1) * limit;
    for (int64_t i = first; i < count && i < first + limit; i++)
        cJSON_AddItemToArray(data, cJSON_DetachItemFromArray(all, (int)first));
    cJSON_Delete(all);
    s_page_of(req, data, page, limit, count);
}

/* path segment i (0-based, after the prefix) decoded into a new string, or NULL */
static char *s_seg(const char *path, int i)
{
    const char *p = path;
    for (;;) {
        if (*p == '/')
            p++;
        const char *e = strchr(p, '/');
        if (i == 0) {
            size_t n = e ? (size_t)(e - p) : strlen(p);
            char *s = lk_strndup(p, n);
            if (lk_http_unescape(s, false) != 0) {
                free(s);
                return NULL;
            }
            return s;
        }
        if (!e)
            return NULL;
        p = e;
        i--;
    }
}

/* segments after the first ("/clients/x/subscriptions": 2) */
static int s_nsegs(const char *path)
{
    int n = 0;
    for (const char *p = path; *p; p++)
        if (*p == '/' && p[1])
            n++;
    return n - 1;
}

/* the request body as JSON, or NULL after a 400 */
static cJSON *s_body(lk_http_req_t *req)
{
    size_t len = 0;
    const char *b = lk_http_body(req, &len);
    cJSON *j = len ? cJSON_ParseWithLength(b, len) : NULL;
    if (!j)
        api_error(req, 400, "BAD_REQUEST", "the body must be JSON");
    return j;
}

static const char *s_str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int64_t s_int(const cJSON *o, const char *key, int64_t def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

static bool s_answered(api_call_t *call)
{
    for (size_t i = 0; i < call->n; i++)
        if (call->answers[i].reply)
            return true;
    return false;
}

/* q to one service; done answers from its reply. The call's context may be set after
   this returns: done runs from the loop, never from here. */
static api_call_t *s_ask(self_t *self, lk_http_req_t *req, api_call_fn *done, lk_peer_t *peer,
                         Lk__AdminRequest *q)
{
    api_call_t *call = api_call_new(self, req, done);
    api_call_send(call, peer, q);
    api_call_start(call);
    return call;
}

/* the reply of a call to one service, or NULL once answered: 503 with silent (the service
   did not answer), or the reply's own error */
static Lk__AdminReply *s_one_reply(api_call_t *call, const char *silent)
{
    Lk__AdminReply *r = call->n ? call->answers[0].reply : NULL;
    if (!r)
        api_error(call->http, 503, "SERVICE_UNAVAILABLE", silent);
    else if (!r->ok)
        api_error(call->http, api_status_of(r->error), r->error, r->message);
    return r && r->ok ? r : NULL;
}

/* a ban names a client id, a username or an address */
static bool s_ban_as_ok(const char *as)
{
    return as && (strcmp(as, "clientid") == 0 || strcmp(as, "username") == 0 ||
                  strcmp(as, "peerhost") == 0);
}

/* --- clients ------------------------------------------------------------------------ */

static cJSON *s_client_json(const Lk__AdminClient *c)
{
    char t[48];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "clientid", c->client);
    if (c->username && *c->username)
        cJSON_AddStringToObject(j, "username", c->username);
    else
        cJSON_AddNullToObject(j, "username");
    cJSON_AddStringToObject(j, "node", c->node ? c->node : "");
    char host[64] = "";
    int port = 0;
    if (c->peer && *c->peer) {
        const char *colon = strrchr(c->peer, ':');
        size_t n = colon ? (size_t)(colon - c->peer) : strlen(c->peer);
        if (c->peer[0] == '[' && n > 2) {
            snprintf(host, sizeof(host), "%.*s", (int)(n - 2), c->peer + 1);
        } else
            snprintf(host, sizeof(host), "%.*s", (int)n, c->peer);
        port = colon ? atoi(colon + 1) : 0;
    }
    if (*host) {
        cJSON_AddStringToObject(j, "ip_address", host);
        cJSON_AddNumberToObject(j, "port", port);
    }
    cJSON_AddBoolToObject(j, "connected", c->connected);
    if (c->connected) {
        cJSON_AddStringToObject(j, "connected_at", api_time(c->connected_at_ms, t, sizeof(t)));
        cJSON_AddStringToObject(j, "created_at", t);
    } else if (c->disconnected_at_ms)
        cJSON_AddStringToObject(j, "disconnected_at",
                                api_time(c->disconnected_at_ms, t, sizeof(t)));
    cJSON_AddStringToObject(j, "proto_name", "MQTT");
    if (c->proto_ver)
        cJSON_AddNumberToObject(j, "proto_ver", c->proto_ver);
    cJSON_AddNumberToObject(j, "keepalive", c->keepalive);
    cJSON_AddBoolToObject(j, "clean_start", c->clean_start);
    cJSON_AddNumberToObject(j, "expiry_interval",
                            c->expiry == 0xFFFFFFFFu ? -1.0 : (double)c->expiry);
    cJSON_AddNumberToObject(j, "subscriptions_cnt", c->subscriptions);
    cJSON_AddNumberToObject(j, "inflight_cnt", c->inflight);
    cJSON_AddNumberToObject(j, "inflight_max", c->inflight_max);
    cJSON_AddNumberToObject(j, "mqueue_len", c->mqueue_len);
    cJSON_AddNumberToObject(j, "recv_msg", (double)c->recv_msg);
    cJSON_AddNumberToObject(j, "send_msg", (double)c->sent_msg);
    cJSON_AddNumberToObject(j, "recv_oct", (double)c->recv_oct);
    cJSON_AddNumberToObject(j, "send_oct", (double)c->sent_oct);
    cJSON_AddBoolToObject(j, "is_bridge", false);
    cJSON_AddBoolToObject(j, "is_superuser", c->superuser);
    return j;
}

static int s_cmp_client(const void *a, const void *b)
{
    const Lk__AdminClient *x = *(Lk__AdminClient *const *)a, *y = *(Lk__AdminClient *const *)b;
    return strcmp(x->client, y->client);
}

/* every client in the answers, one per client id (a connected one wins over its stored
   session), sorted by client id; *count set. The caller frees the array (not the items). */
static const Lk__AdminClient **s_clients_sorted(api_call_t *call, size_t *count)
{
    size_t n = 0;
    for (size_t i = 0; i < call->n; i++)
        if (call->answers[i].reply)
            n += call->answers[i].reply->n_clients;
    Lk__AdminClient **v = lk_calloc(n ? n : 1, sizeof(*v));
    size_t k = 0;
    for (size_t i = 0; i < call->n; i++) {
        Lk__AdminReply *r = call->answers[i].reply;
        for (size_t c = 0; r && c < r->n_clients; c++)
            v[k++] = r->clients[c];
    }
    qsort(v, k, sizeof(*v), s_cmp_client);
    const Lk__AdminClient **out = (const Lk__AdminClient **)v;
    size_t m = 0;
    for (size_t i = 0; i < k; i++) {
        if (i > 0 && strcmp(v[i]->client, v[i - 1]->client) == 0)
            continue;
        const Lk__AdminClient *best = v[i];
        for (size_t j = i + 1; j < k && strcmp(v[j]->client, v[i]->client) == 0; j++)
            if (v[j]->connected)
                best = v[j];
        out[m++] = best;
    }
    *count = m;
    return out;
}

/* only the page's rows become JSON: a page of 100 out of 100 000 clients stays cheap */
static void s_clients_done(self_t *self, api_call_t *call)
{
    size_t count;
    const Lk__AdminClient **v = s_clients_sorted(call, &count);
    cJSON *all = cJSON_CreateArray();
    int64_t first = (call->page - 1) * call->limit;
    for (int64_t i = first; i < (int64_t)count && i < first + call->limit; i++)
        cJSON_AddItemToArray(all, s_client_json(v[i]));
    free(v);
    s_page_of(call->http, all, call->page, call->limit, (int64_t)count);
}

static void s_clients(self_t *self, lk_http_req_t *req)
{
    int64_t page, limit;
    if (!s_paging(req, &page, &limit))
        return;
    const char *state = lk_http_query(req, "conn_state");
    const char *pv = lk_http_query(req, "proto_ver");
    if (state && strcmp(state, "connected") != 0 && strcmp(state, "disconnected") != 0 &&
        strcmp(state, "idle") != 0) {
        api_error(req, 400, "BAD_REQUEST", "conn_state: connected, idle or disconnected");
        return;
    }
    Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
    q.op = "clients";
    q.client = (char *)lk_http_query(req, "clientid");
    q.like = (char *)lk_http_query(req, "like_clientid");
    q.username = (char *)lk_http_query(req, "username");
    q.peerhost = (char *)lk_http_query(req, "ip_address");
    if (pv) {
        char *end;
        long v = strtol(pv, &end, 10);
        if (!*pv || *end || v < 3 || v > 5) {
            api_error(req, 400, "BAD_REQUEST", "proto_ver: 3, 4 or 5");
            return;
        }
        q.proto_ver = (uint32_t)v;
    }
    api_call_t *call = api_call_new(self, req, s_clients_done);
    call->page = page;
    call->limit = limit;
    if (!state || strcmp(state, "connected") == 0)
        api_call_frontends(call, &q);
    /* stored sessions of disconnected clients: no username, address or version is kept */
    if ((!state || strcmp(state, "disconnected") == 0) && !q.username && !q.peerhost &&
        !q.proto_ver) {
        q.op = "sessions";
        /* each session-store replica lists the sessions it owns */
        for (int i = 0; i < lk_replicas_count(self->stores); i++)
            api_call_send(call, lk_replicas_nth(self->stores, i), &q);
    }
    api_call_start(call);
}

static void s_client_done(self_t *self, api_call_t *call)
{
    size_t count;
    const Lk__AdminClient **v = s_clients_sorted(call, &count);
    cJSON *one = count ? s_client_json(v[0]) : NULL;
    free(v);
    if (!one) {
        api_error(call->http, 404, "CLIENTID_NOT_FOUND", "Client ID not found");
        return;
    }
    api_json(call->http, 200, one);
}

static void s_client(self_t *self, lk_http_req_t *req, const char *id)
{
    Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
    q.op = "clients";
    q.client = (char *)id;
    api_call_t *call = api_call_new(self, req, s_client_done);
    api_call_frontends(call, &q);
    q.op = "sessions";
    api_call_send(call, lk_replicas_owner(self->stores, id, strlen(id)), &q);
    api_call_start(call);
}

static uint32_t s_count(api_call_t *call)
{
    uint32_t n = 0;
    for (size_t i = 0; i < call->n; i++)
        if (call->answers[i].reply && call->answers[i].reply->ok)
            n += call->answers[i].reply->count;
    return n;
}

/* DELETE /clients/{id}: kick it; when no frontend holds it, clear its stored session */
static void s_kick_done(self_t *self, api_call_t *call)
{
    if (call->step == 0) {
        if (s_count(call) > 0) {
            lk_http_respond(call->http, 204, NULL, NULL, 0);
            return;
        }
        Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
        q.op = "session_clear";
        q.client = call->arg;
        s_ask(self, call->http, s_kick_done,
              lk_replicas_owner(self->stores, call->arg, strlen(call->arg)), &q)
            ->step = 1;
        return;
    }
    if (s_count(call) > 0)
        lk_http_respond(call->http, 204, NULL, NULL, 0);
    else if (!s_answered(call))
        api_error(call->http, 503, "SERVICE_UNAVAILABLE", "session store did not answer");
    else
        api_error(call->http, 404, "CLIENTID_NOT_FOUND", "Client ID not found");
}

static void s_kick(self_t *self, lk_http_req_t *req, const char *id)
{
    Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
    q.op = "kick";
    q.client = (char *)id;
    api_call_t *call = api_call_new(self, req, s_kick_done);
    call->arg = lk_strdup(id);
    api_call_frontends(call, &q);
    api_call_start(call);
}

static void s_no_content_done(self_t *self, api_call_t *call)
{
    lk_http_respond(call->http, 204, NULL, NULL, 0);
}

static void s_kick_bulk(self_t *self, lk_http_req_t *req)
{
    cJSON *b = s_body(req);
    if (!b)
        return;
    int n = cJSON_GetArraySize(b);
    if (!cJSON_IsArray(b) || n == 0 || n > S_BULK_MAX) {
        cJSON_Delete(b);
        api_error(req, 400, "BAD_REQUEST", "the body must be an array of 1..1000 client ids");
        return;
    }
    api_call_t *call = api_call_new(self, req, s_no_content_done);
    cJSON *it;
    cJSON_ArrayForEach(it, b)
    {
        if (!cJSON_IsString(it))
            continue;
        Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
        q.op = "kick";
        q.client = it->valuestring;
        api_call_frontends(call, &q);
    }
    cJSON_Delete(b);
    api_call_start(call);
}

/* --- subscriptions ------------------------------------------------------------------ */

static cJSON *s_sub_json(const Lk__AdminSub *s)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "node", s->node ? s->node : "");
    cJSON_AddStringToObject(j, "clientid", s->client ? s->client : "");
    cJSON_AddStringToObject(j, "topic", s->sub ? s->sub->filter : "");
    cJSON_AddNumberToObject(j, "qos", s->sub ? s->sub->qos : 0);
    cJSON_AddNumberToObject(j, "nl", s->sub && s->sub->no_local);
    cJSON_AddNumberToObject(j, "rap", s->sub && s->sub->retain_as_published);
    cJSON_AddNumberToObject(j, "rh", s->sub ? s->sub->retain_handling : 0);
    return j;
}

static int s_cmp_sub(const void *a, const void *b)
{
    const Lk__AdminSub *x = *(Lk__AdminSub *const *)a, *y = *(Lk__AdminSub *const *)b;
    int c = strcmp(x->client ? x->client : "", y->client ? y->client : "");
    if (c)
        return c;
    return strcmp(x->sub ? x->sub->filter : "", y->sub ? y->sub->filter : "");
}

/* the subscriptions in the answers, filtered by the call's query, sorted */
static cJSON *s_subs_all(api_call_t *call, bool topics)
{
    lk_http_req_t *req = call->http;
    const char *topic = lk_http_query(req, "topic");
    const char *qos = topics ? NULL : lk_http_query(req, "qos");
    const char *group = topics ? NULL : lk_http_query(req, "share_group");
    const char *match = topics ? NULL : lk_http_query(req, "match_topic");
    size_t n = 0;
    for (size_t i = 0; i < call->n; i++)
        if (call->answers[i].reply)
            n += call->answers[i].reply->n_subs;
    Lk__AdminSub **v = lk_calloc(n ? n : 1, sizeof(*v));
    size_t k = 0;
    for (size_t i = 0; i < call->n; i++) {
        Lk__AdminReply *r = call->answers[i].reply;
        for (size_t s = 0; r && s < r->n_subs; s++) {
            Lk__AdminSub *x = r->subs[s];
            const char *f = x->sub && x->sub->filter ? x->sub->filter : "";
            if (topic && strcmp(f, topic) != 0)
                continue;
            if (qos && x->sub && (uint32_t)atoi(qos) != x->sub->qos)
                continue;
            if (group) {
                char pre[256];
                snprintf(pre, sizeof(pre), "$share/%s/", group);
                if (strncmp(f, pre, strlen(pre)) != 0)
                    continue;
            }
            if (match) {
                const char *plain = f;
                if (strncmp(f, "$share/", 7) == 0 && (plain = strchr(f + 7, '/')))
                    plain++;
                if (!plain || !lk_mqtt_topic_matches(plain, strlen(plain), match, strlen(match)))
                    continue;
            }
            v[k++] = x;
        }
    }
    qsort(v, k, sizeof(*v), s_cmp_sub);
    cJSON *all = cJSON_CreateArray();
    for (size_t i = 0; i < k; i++) {
        if (topics) {
            cJSON *j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "topic", v[i]->sub ? v[i]->sub->filter : "");
            cJSON_AddStringToObject(j, "node", v[i]->node ? v[i]->node : "");
            cJSON_AddItemToArray(all, j);
        } else
            cJSON_AddItemToArray(all, s_sub_json(v[i]));
    }
    free(v);
    return all;
}

static void s_subs_done(self_t *self, api_call_t *call)
{
    if (!s_answered(call)) {
        api_error(call->http, 503, "SERVICE_UNAVAILABLE", "router did not answer");
        return;
    }
    s_page(call->http, s_subs_all(call, call->step == 1), call->page, call->limit);
}

static void s_subscriptions(self_t *self, lk_http_req_t *req, bool topics)
{
    int64_t page, limit;
    if (!s_paging(req, &page, &limit))
        return;
    const char *qos = lk_http_query(req, "qos");
    if (!topics && qos && (strlen(qos) != 1 || qos[0] < '0' || qos[0] > '2')) {
        api_error(req, 400, "BAD_REQUEST", "qos: 0, 1 or 2");
        return;
    }
    const char *match = lk_http_query(req, "match_topic");
    if (!topics && match && !lk_mqtt_topic_valid(match, strlen(match))) {
        api_error(req, 400, "BAD_REQUEST", "match_topic: not a valid topic name");
        return;
    }
    Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
    q.op = topics ? "topics" : "subscriptions";
    q.client = topics ? NULL : (char *)lk_http_query(req, "clientid");
    api_call_t *call = s_ask(self, req, s_subs_done, api_router(self), &q);
    call->page = page;
    call->limit = limit;
    call->step = topics;
}

static void s_client_subs_done(self_t *self, api_call_t *call)
{
    Lk__AdminReply *ok = NULL;
    for (size_t i = 0; i < call->n; i++)
        if (call->answers[i].reply && call->answers[i].reply->ok)
            ok = call->answers[i].reply;
    if (!ok) {
        api_error(call->http, 404, "CLIENTID_NOT_FOUND", "Client ID not found");
        return;
    }
    cJSON *arr = cJSON_CreateArray();
    for (size_t s = 0; s < ok->n_subs; s++)
        cJSON_AddItemToArray(arr, s_sub_json(ok->subs[s]));
    api_json(call->http, 200, arr);
}

static void s_client_subs(self_t *self, lk_http_req_t *req, const char *id)
{
    Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
    q.op = "client_subs";
    q.client = (char *)id;
    api_call_t *call = api_call_new(self, req, s_client_subs_done);
    api_call_frontends(call, &q);
    api_call_start(call);
}

static void s_subscribe_done(self_t *self, api_call_t *call)
{
    bool ok = false;
    const char *node = "";
    Lk__AdminReply *bad = NULL;
    for (size_t i = 0; i < call->n; i++) {
        Lk__AdminReply *r = call->answers[i].reply;
        if (r && r->ok) {
            ok = true;
            node = call->answers[i].node;
        } else if (r && r->error && strcmp(r->error, "CLIENTID_NOT_FOUND") != 0)
            bad = r;
    }
    if (!ok) {
        if (bad)
            api_error(call->http, api_status_of(bad->error), bad->error, bad->message);
        else
            api_error(call->http, 404, "CLIENTID_NOT_FOUND", "Client ID not found");
        return;
    }
    if (call->step == 1) {
        lk_http_respond(call->http, 204, NULL, NULL, 0);
        return;
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "clientid", call->arg);
    cJSON_AddStringToObject(j, "topic", call->arg2);
    cJSON_AddNumberToObject(j, "qos", (double)call->limit);
    cJSON_AddStringToObject(j, "node", node);
    api_json(call->http, 200, j);
}

static void s_subscribe(self_t *self, lk_http_req_t *req, const char *id, bool unsub)
{
    cJSON *b = s_body(req);
    if (!b)
        return;
    const char *topic = s_str(b, "topic");
    int64_t qos = s_int(b, "qos", 0);
    if (!topic || !lk_mqtt_filter_valid(topic, strlen(topic), true) || qos < 0 || qos > 2) {
        cJSON_Delete(b);
        api_error(req, 400, "INVALID_PARAMETER", "topic must be a valid topic filter, qos 0..2");
        return;
    }
    Lk__Subscription s = LK__SUBSCRIPTION__INIT;
    s.filter = (char *)topic;
    s.qos = (uint32_t)qos;
    s.no_local = s_int(b, "nl", 0) != 0;
    s.retain_as_published = s_int(b, "rap", 0) != 0;
    s.retain_handling = (uint32_t)s_int(b, "rh", 0);
    Lk__Subscription *subs[1] = {&s};
    char *filters[1] = {(char *)topic};
    Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
    q.op = unsub ? "unsubscribe" : "subscribe";
    q.client = (char *)id;
    if (unsub) {
        q.n_filters = 1;
        q.filters = filters;
    } else {
        q.n_subs = 1;
        q.subs = subs;
    }
    api_call_t *call = api_call_new(self, req, s_subscribe_done);
    call->arg = lk_strdup(id);
    call->arg2 = lk_strdup(topic);
    call->limit = qos;
    call->step = unsub;
    api_call_frontends(call, &q);
    api_call_start(call);
    cJSON_Delete(b);
}

/* --- retained ----------------------------------------------------------------------- */

static cJSON *s_retained_json(const Lk__Msg *m, uint64_t at, bool payload)
{
    char t[48];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "topic", m->topic);
    /* no message id travels with a retained message: a stable digest of topic+payload */
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = m->topic; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ULL;
    for (size_t i = 0; i < m->payload.len; i++)
        h = (h ^ m->payload.data[i]) * 1099511628211ULL;
    char id[24];
    snprintf(id, sizeof(id), "%016" PRIX64, h);
    cJSON_AddStringToObject(j, "msgid", id);
    cJSON_AddNumberToObject(j, "qos", m->qos);
    if (at)
        cJSON_AddStringToObject(j, "publish_at", api_time(at, t, sizeof(t)));
    else
        cJSON_AddNullToObject(j, "publish_at");
    cJSON_AddStringToObject(j, "from_clientid", m->origin_client ? m->origin_client : "");
    cJSON_AddStringToObject(j, "from_username", m->origin_user ? m->origin_user : "");
    if (payload) {
        char *b64 = lk_crypto_b64_encode(m->payload.data, m->payload.len);
        cJSON_AddStringToObject(j, "payload", b64);
        free(b64);
    }
    return j;
}

static int s_cmp_msg(const void *a, const void *b)
{
    return strcmp((*(Lk__Msg *const *)a)->topic, (*(Lk__Msg *const *)b)->topic);
}

/* a delete asked of every router: done when one of them had it; else the first reply that
   came tells (NOT_FOUND: nobody had it) */
static void s_retained_deleted(self_t *self, api_call_t *call)
{
    Lk__AdminReply *r = NULL;
    for (size_t i = 0; i < call->n && !(r && r->ok); i++)
        if (call->answers[i].reply && (!r || call->answers[i].reply->ok))
            r = call->answers[i].reply;
    if (r && r->ok)
        lk_http_respond(call->http, 204, NULL, NULL, 0);
    else if (r && strcmp(r->error, "NOT_FOUND") == 0)
        api_error(call->http, 404, "NOT_FOUND", "Viewed message doesn't exist");
    else
        s_one_reply(call, "router did not answer");
}

/* one message (step 1) or a page of them, from one router */
static void s_retained_done(self_t *self, api_call_t *call)
{
    Lk__AdminReply *r = call->n ? call->answers[0].reply : NULL;
    if (r && !r->ok && strcmp(r->error, "NOT_FOUND") == 0) {
        api_error(call->http, 404, "NOT_FOUND", "Viewed message doesn't exist");
        return;
    }
    if (!(r = s_one_reply(call, "router did not answer")))
        return;
    if (call->step == 1) { /* one */
        if (!r->n_retained) {
            api_error(call->http, 404, "NOT_FOUND", "Viewed message doesn't exist");
            return;
        }
        api_json(
            call->http, 200,
            s_retained_json(r->retained[0], r->n_retained_at_ms ? r->retained_at_ms[0] : 0, true));
        return;
    }
    /* sorted by topic (one message a topic), for stable pages; a copy of the array keeps
       retained_at_ms lined up with retained */
    Lk__Msg **v = lk_calloc(r->n_retained ? r->n_retained : 1, sizeof(*v));
    memcpy(v, r->retained, r->n_retained * sizeof(*v));
    qsort(v, r->n_retained, sizeof(*v), s_cmp_msg);
    cJSON *all = cJSON_CreateArray();
    for (size_t i = 0; i < r->n_retained; i++)
        cJSON_AddItemToArray(all, s_retained_json(v[i], 0, false));
    free(v);
    s_page(call->http, all, call->page, call->limit);
}

static void s_retained(self_t *self, lk_http_req_t *req, const char *topic, bool del)
{
    Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
    if (!topic) {
        int64_t page, limit;
        if (!s_paging(req, &page, &limit))
            return;
        const char *f = lk_http_query(req, "topic");
        if (f && !lk_mqtt_filter_valid(f, strlen(f), false)) {
            api_error(req, 400, "BAD_REQUEST", "topic: not a valid topic filter");
            return;
        }
        q.op = "retained";
        q.like = (char *)f;
        api_call_t *call = s_ask(self, req, s_retained_done, api_router(self), &q);
        call->page = page;
        call->limit = limit;
    } else {
        q.op = del ? "retained_delete" : "retained";
        q.topic = (char *)topic;
        if (!del) {
            s_ask(self, req, s_retained_done, api_router(self), &q)->step = 1;
            return;
        }
        /* every router keeps the message: each forgets it */
        api_call_t *call = api_call_new(self, req, s_retained_deleted);
        for (int i = 0; i < lk_replicas_count(self->routers); i++)
            api_call_send(call, lk_replicas_nth(self->routers, i), &q);
        api_call_start(call);
    }
}

/* --- bans ----------------------------------------------------------------------------- */

static cJSON *s_ban_json(const Lk__AdminBan *b)
{
    char t[48];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "as", b->as);
    cJSON_AddStringToObject(j, "who", b->who);
    cJSON_AddStringToObject(j, "by", b->by ? b->by : "");
    cJSON_AddStringToObject(j, "reason", b->reason ? b->reason : "");
    cJSON_AddStringToObject(j, "at", api_time(b->at_ms, t, sizeof(t)));
    if (b->until_ms)
        cJSON_AddStringToObject(j, "until", api_time(b->until_ms, t, sizeof(t)));
    else
        cJSON_AddStringToObject(j, "until", "infinity");
    return j;
}

static void s_bans_done(self_t *self, api_call_t *call)
{
    Lk__AdminReply *r = s_one_reply(call, "auth did not answer");
    if (!r)
        return;
    cJSON *all = cJSON_CreateArray();
    for (size_t i = 0; i < r->n_bans; i++)
        cJSON_AddItemToArray(all, s_ban_json(r->bans[i]));
    s_page(call->http, all, call->page, call->limit);
}

static void s_nothing(self_t *self, api_call_t *call) {}

static void s_ban_added(self_t *self, api_call_t *call)
{
    if (!s_one_reply(call, "auth did not answer"))
        return;
    /* whoever the ban names and is connected now leaves (a separate fan-out: the
       answer does not wait for it) */
    const cJSON *b = call->body;
    const char *as = s_str(b, "as"), *who = s_str(b, "who");
    Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
    q.op = "kick";
    q.topic = "banned";
    if (strcmp(as, "clientid") == 0)
        q.client = (char *)who;
    else if (strcmp(as, "username") == 0)
        q.username = (char *)who;
    else
        q.peerhost = (char *)who;
    api_call_t *kick = api_call_new(self, NULL, s_nothing);
    api_call_frontends(kick, &q);
    api_call_start(kick);
    Lk__AdminBan ban = LK__ADMIN_BAN__INIT;
    ban.as = (char *)as;
    ban.who = (char *)who;
    ban.by = (char *)(s_str(b, "by") ? s_str(b, "by") : "");
    ban.reason = (char *)(s_str(b, "reason") ? s_str(b, "reason") : "");
    ban.at_ms = (uint64_t)call->page;
    ban.until_ms = (uint64_t)call->limit;
    api_json(call->http, 200, s_ban_json(&ban));
}

static void s_ban_add(self_t *self, lk_http_req_t *req)
{
    cJSON *b = s_body(req);
    if (!b)
        return;
    const char *as = s_str(b, "as"), *who = s_str(b, "who");
    if (!s_ban_as_ok(as) || !who || !*who) {
        cJSON_Delete(b);
        api_error(req, 400, "BAD_REQUEST", "as: clientid, username or peerhost; who: not empty");
        return;
    }
    int64_t at = lk_wall_ms(), until = 0;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(b, "at");
    if (v && (at = s_parse_time(v)) < 0) {
        cJSON_Delete(b);
        api_error(req, 400, "BAD_REQUEST", "at: an RFC 3339 time");
        return;
    }
    v = cJSON_GetObjectItemCaseSensitive(b, "until");
    if (v && !(cJSON_IsString(v) && strcmp(v->valuestring, "infinity") == 0)) {
        until = s_parse_time(v);
        if (until < 0 || until <= lk_wall_ms()) {
            cJSON_Delete(b);
            api_error(req, 400, "BAD_REQUEST", "until: an RFC 3339 time in the future");
            return;
        }
    }
    Lk__AdminBan ban = LK__ADMIN_BAN__INIT;
    ban.as = (char *)as;
    ban.who = (char *)who;
    ban.by = (char *)(s_str(b, "by") ? s_str(b, "by") : "api");
    ban.reason = (char *)(s_str(b, "reason") ? s_str(b, "reason") : "");
    ban.at_ms = (uint64_t)at;
    ban.until_ms = (uint64_t)until;
    Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
    q.op = "ban_add";
    q.ban = &ban;
    api_call_t *call = s_ask(self, req, s_ban_added, lk_replicas_pick(self->auths), &q);
    call->body = b;
    call->page = at;
    call->limit = until;
}

static void s_ban_deleted(self_t *self, api_call_t *call)
{
    if (s_one_reply(call, "auth did not answer"))
        lk_http_respond(call->http, 204, NULL, NULL, 0);
}

static void s_ban_del(self_t *self, lk_http_req_t *req, const char *as, const char *who)
{
    if (!s_ban_as_ok(as)) {
        api_error(req, 400, "BAD_REQUEST", "as: clientid, username or peerhost");
        return;
    }
    Lk__AdminBan ban = LK__ADMIN_BAN__INIT;
    ban.as = (char *)as;
    ban.who = (char *)who;
    Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
    q.op = "ban_del";
    q.ban = &ban;
    s_ask(self, req, s_ban_deleted, lk_replicas_pick(self->auths), &q);
}

static void s_bans(self_t *self, lk_http_req_t *req)
{
    int64_t page, limit;
    if (!s_paging(req, &page, &limit))
        return;
    Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
    q.op = "bans";
    api_call_t *call = s_ask(self, req, s_bans_done, lk_replicas_pick(self->auths), &q);
    call->page = page;
    call->limit = limit;
}

/* --- publish ---------------------------------------------------------------------------- */

/* publishes one {"topic", "payload", "qos", "retain", "payload_encoding"}; NULL, or the
   error message for a 400 */
static const char *s_publish_one(self_t *self, const cJSON *m, char *id, size_t idcap)
{
    const char *topic = s_str(m, "topic");
    if (!topic || !lk_mqtt_topic_valid(topic, strlen(topic)))
        return "topic: not a valid topic name";
    int64_t qos = s_int(m, "qos", 0);
    if (qos < 0 || qos > 2)
        return "qos: 0, 1 or 2";
    const char *payload = s_str(m, "payload");
    if (!payload)
        payload = "";
    const char *enc = s_str(m, "payload_encoding");
    uint8_t *data = NULL;
    size_t len = strlen(payload);
    if (enc && strcmp(enc, "base64") == 0) {
        data = lk_malloc(len + 1);
        int n = lk_crypto_b64_decode(payload, data, len + 1);
        if (n < 0) {
            free(data);
            return "payload: not valid base64";
        }
        len = (size_t)n;
    } else if (enc && strcmp(enc, "plain") != 0)
        return "payload_encoding: plain or base64";
    bool retain = s_int(m, "retain", 0) != 0;
    lk_iclient_publish(self->ic, topic, data ? (const void *)data : payload, len, (uint32_t)qos,
                       retain, NULL, 0);
    free(data);
    self->published++;
    uint8_t rnd[16];
    lk_crypto_random(rnd, sizeof(rnd));
    for (size_t i = 0; i < sizeof(rnd) && 2 * i + 2 < idcap; i++)
        snprintf(id + 2 * i, 3, "%02X", rnd[i]);
    return NULL;
}

static void s_publish(self_t *self, lk_http_req_t *req, bool bulk)
{
    cJSON *b = s_body(req);
    if (!b)
        return;
    if (bulk ? !cJSON_IsArray(b) || cJSON_GetArraySize(b) == 0 || cJSON_GetArraySize(b) > S_BULK_MAX
             : !cJSON_IsObject(b)) {
        cJSON_Delete(b);
        api_error(req, 400, "BAD_REQUEST",
                  bulk ? "the body must be an array of 1..1000 messages" : "an object");
        return;
    }
    /* every message checked before any leaves */
    const cJSON *m;
    if (bulk)
        cJSON_ArrayForEach(m, b)
        {
            const char *t = s_str(m, "topic");
            if (!cJSON_IsObject(m) || !t || !lk_mqtt_topic_valid(t, strlen(t))) {
                cJSON_Delete(b);
                api_error(req, 400, "BAD_TOPIC", "topic: not a valid topic name");
                return;
            }
        }
    cJSON *out = cJSON_CreateArray();
    const cJSON *one = b;
    int i = 0;
    for (;;) {
        if (bulk && !(one = cJSON_GetArrayItem(b, i++)))
            break;
        char id[40] = "";
        const char *err = s_publish_one(self, one, id, sizeof(id));
        if (err) {
            cJSON_Delete(out);
            cJSON_Delete(b);
            api_error(req, 400, strncmp(err, "topic", 5) == 0 ? "BAD_TOPIC" : "BAD_REQUEST", err);
            return;
        }
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "id", id);
        cJSON_AddItemToArray(out, r);
        if (!bulk)
            break;
    }
    cJSON_Delete(b);
    if (!bulk) {
        cJSON *first = cJSON_DetachItemFromArray(out, 0);
        cJSON_Delete(out);
        api_json(req, 200, first);
    } else
        api_json(req, 200, out);
}

/* --- Latchkey's own: locks and their recent decisions -------------------------------- */

static void s_rows_done(self_t *self, api_call_t *call)
{
    Lk__AdminReply *r = s_one_reply(call, "the service did not answer");
    if (!r)
        return;
    cJSON *all = cJSON_CreateArray();
    for (size_t i = 0; i < r->n_json_rows; i++) {
        cJSON *j = cJSON_Parse(r->json_rows[i]);
        if (j)
            cJSON_AddItemToArray(all, j);
    }
    s_page(call->http, all, call->page, call->limit);
}

/* GET /latchkey/locks (each lock's last state), /latchkey/decisions (newest first) */
static void s_latchkey(self_t *self, lk_http_req_t *req, bool decisions)
{
    int64_t page, limit;
    if (!s_paging(req, &page, &limit))
        return;
    lk_peer_t *peer =
        decisions ? (self->histories ? lk_replicas_pick(self->histories) : NULL)
                  : (self->arbiters ? lk_replicas_pick(self->arbiters) : NULL);
    if (!peer) {
        api_error(req, 503, "SERVICE_UNAVAILABLE",
                  decisions ? "no history_endpoint configured" : "no arbiter_endpoint configured");
        return;
    }
    Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
    q.op = decisions ? "decisions" : "locks";
    q.limit = decisions ? (uint32_t)(page * limit > 1000 ? 1000 : page * limit) : 0;
    api_call_t *call = s_ask(self, req, s_rows_done, peer, &q);
    call->page = page;
    call->limit = limit;
}

/* --- routing -------------------------------------------------------------------------- */

bool api_rest(self_t *self, lk_http_req_t *req, const char *method, const char *path)
{
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0,
         del = strcmp(method, "DELETE") == 0;
    int n = s_nsegs(path);
    char *s0 = s_seg(path, 0);
    char *s1 = n >= 1 ? s_seg(path, 1) : NULL;
    char *s2 = n >= 2 ? s_seg(path, 2) : NULL;
    char *s3 = n >= 3 ? s_seg(path, 3) : NULL;
    bool done = true;
    if (!s0 || (n >= 1 && !s1) || (n >= 2 && !s2) || (n >= 3 && !s3)) {
        api_error(req, 400, "BAD_REQUEST", "bad percent-encoding in the path");
    } else if (strcmp(s0, "clients") == 0 && n == 0 && get) {
        s_clients(self, req);
    } else if (strcmp(s0, "clients") == 0 && n == 2 && strcmp(s1, "kickout") == 0 &&
               strcmp(s2, "bulk") == 0 && post) {
        s_kick_bulk(self, req);
    } else if (strcmp(s0, "clients") == 0 && n == 1 && get) {
        s_client(self, req, s1);
    } else if (strcmp(s0, "clients") == 0 && n == 1 && del) {
        s_kick(self, req, s1);
    } else if (strcmp(s0, "clients") == 0 && n == 2 && strcmp(s2, "subscriptions") == 0 && get) {
        s_client_subs(self, req, s1);
    } else if (strcmp(s0, "clients") == 0 && n == 2 && strcmp(s2, "subscribe") == 0 && post) {
        s_subscribe(self, req, s1, false);
    } else if (strcmp(s0, "clients") == 0 && n == 2 && strcmp(s2, "unsubscribe") == 0 && post) {
        s_subscribe(self, req, s1, true);
    } else if (strcmp(s0, "subscriptions") == 0 && n == 0 && get) {
        s_subscriptions(self, req, false);
    } else if (strcmp(s0, "topics") == 0 && n == 0 && get) {
        s_subscriptions(self, req, true);
    } else if (strcmp(s0, "mqtt") == 0 && n == 2 && strcmp(s1, "retainer") == 0 &&
               strcmp(s2, "messages") == 0 && get) {
        s_retained(self, req, NULL, false);
    } else if (strcmp(s0, "mqtt") == 0 && n >= 3 && strcmp(s1, "retainer") == 0 &&
               strcmp(s2, "message") == 0 && (get || del)) {
        /* the topic is the rest of the path (EMQX wants it percent-encoded; a client
           that left its slashes as they are is understood too) */
        char *topic = lk_strdup(path + strlen("/mqtt/retainer/message/"));
        if (lk_http_unescape(topic, false) != 0 || !*topic)
            api_error(req, 400, "BAD_REQUEST", "bad topic in the path");
        else
            s_retained(self, req, topic, del);
        free(topic);
    } else if (strcmp(s0, "banned") == 0 && n == 0 && get) {
        s_bans(self, req);
    } else if (strcmp(s0, "banned") == 0 && n == 0 && post) {
        s_ban_add(self, req);
    } else if (strcmp(s0, "banned") == 0 && n == 2 && del) {
        s_ban_del(self, req, s1, s2);
    } else if (strcmp(s0, "publish") == 0 && n == 0 && post) {
        s_publish(self, req, false);
    } else if (strcmp(s0, "publish") == 0 && n == 1 && strcmp(s1, "bulk") == 0 && post) {
        s_publish(self, req, true);
    } else if (strcmp(s0, "stats") == 0 && n == 0 && get) {
        api_prom_stats(self, req);
    } else if (strcmp(s0, "metrics") == 0 && n == 0 && get) {
        api_prom_emqx_metrics(self, req);
    } else if (strcmp(s0, "latchkey") == 0 && n == 1 && strcmp(s1, "locks") == 0 && get) {
        s_latchkey(self, req, false);
    } else if (strcmp(s0, "latchkey") == 0 && n == 1 && strcmp(s1, "decisions") == 0 && get) {
        s_latchkey(self, req, true);
    } else if (strcmp(s0, "nodes") == 0 && n == 0 && get) {
        api_prom_nodes(self, req);
    } else
        done = false;
    free(s0);
    free(s1);
    free(s2);
    free(s3);
    return done;
}
