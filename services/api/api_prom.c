/*  api_prom: numbers from every node — Prometheus text exposition (/metrics and
    /api/v5/prometheus/stats), and EMQX's GET /stats, /metrics and /nodes. One "node"
    AdminRequest to every live node; each answers its identity and its metrics
    (lk_admin_metric), which are printed with a `node` and a `kind` label. Names and
    meanings: docs/metrics.md. */
#include "api_internal.h"
#include "lk_admin.h"
#include <stdio.h>

static Lk__AdminReply *s_node_reply(api_call_t *call, size_t i)
{
    Lk__AdminReply *r = call->answers[i].reply;
    return r && r->ok && r->node ? r : NULL;
}

/* the value of metric name (labels: exact, NULL = any, summed) in one reply */
static double s_metric(const Lk__AdminReply *r, const char *name, const char *labels)
{
    double v = 0;
    for (size_t i = 0; r && i < r->n_metrics; i++)
        if (strcmp(r->metrics[i]->name, name) == 0 &&
            (!labels || strcmp(r->metrics[i]->labels ? r->metrics[i]->labels : "", labels) == 0))
            v += r->metrics[i]->value;
    return v;
}

/* the same summed over every node of kind (NULL = all) */
static double s_sum(api_call_t *call, const char *kind, const char *name, const char *labels)
{
    double v = 0;
    for (size_t i = 0; i < call->n; i++) {
        Lk__AdminReply *r = s_node_reply(call, i);
        if (r && (!kind || strcmp(r->node->kind, kind) == 0))
            v += s_metric(r, name, labels);
    }
    return v;
}

/* what every router holds alike (router replicas): one router's value, the largest */
static double s_router(api_call_t *call, const char *name)
{
    double v = 0;
    for (size_t i = 0; i < call->n; i++) {
        Lk__AdminReply *r = s_node_reply(call, i);
        if (r && strcmp(r->node->kind, "router") == 0) {
            double x = s_metric(r, name, NULL);
            v = x > v ? x : v;
        }
    }
    return v;
}

/* --- Prometheus ------------------------------------------------------------------------ */

typedef struct {
    char *buf;
    size_t len, cap;
} s_text_t;

static void s_printf(s_text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_printf(s_text_t *t, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        t->cap = t->cap * 2 + (size_t)(n > 0 ? n : 0) + 4096;
        t->buf = lk_realloc(t->buf, t->cap);
    }
}

static void s_value(s_text_t *t, double v)
{
    if (v == (double)(int64_t)v)
        s_printf(t, "%" PRId64 "\n", (int64_t)v);
    else
        s_printf(t, "%.9g\n", v);
}

static void s_metrics_done(self_t *self, api_call_t *call)
{
    s_text_t t = {lk_malloc(8192), 0, 8192};
    t.buf[0] = 0;
    /* one TYPE line per name, then every node's samples of it */
    zhashx_t *names = zhashx_new();
    for (size_t i = 0; i < call->n; i++) {
        Lk__AdminReply *r = s_node_reply(call, i);
        for (size_t m = 0; r && m < r->n_metrics; m++)
            if (!zhashx_lookup(names, r->metrics[m]->name))
                zhashx_insert(names, r->metrics[m]->name, r->metrics[m]->counter ? "c" : "g");
    }
    zlistx_t *keys = zhashx_keys(names);
    zlistx_set_comparator(keys, (zlistx_comparator_fn *)strcmp);
    zlistx_sort(keys);
    for (const char *name = zlistx_first(keys); name; name = zlistx_next(keys)) {
        const char *type = zhashx_lookup(names, name);
        s_printf(&t, "# TYPE %s %s\n", name, *type == 'c' ? "counter" : "gauge");
        for (size_t i = 0; i < call->n; i++) {
            Lk__AdminReply *r = s_node_reply(call, i);
            for (size_t m = 0; r && m < r->n_metrics; m++) {
                Lk__AdminMetric *x = r->metrics[m];
                if (strcmp(x->name, name) != 0)
                    continue;
                s_printf(&t, "%s{node=\"%s\",kind=\"%s\"%s%s} ", name, r->node->node, r->node->kind,
                         x->labels && *x->labels ? "," : "", x->labels ? x->labels : "");
                s_value(&t, x->value);
            }
        }
    }
    zlistx_destroy(&keys);
    zhashx_destroy(&names);
    /* the nodes themselves, and the api's own numbers */
    s_printf(&t, "# TYPE latchkey_node_up gauge\n");
    for (size_t i = 0; i < call->n; i++)
        s_printf(&t, "latchkey_node_up{node=\"%s\",kind=\"%s\"} %d\n", call->answers[i].node,
                 call->answers[i].kind, s_node_reply(call, i) ? 1 : 0);
    s_printf(&t, "# TYPE latchkey_node_info gauge\n");
    for (size_t i = 0; i < call->n; i++) {
        Lk__AdminReply *r = s_node_reply(call, i);
        if (r)
            s_printf(&t, "latchkey_node_info{node=\"%s\",kind=\"%s\",version=\"%s\"} 1\n",
                     r->node->node, r->node->kind, r->node->version);
    }
    s_printf(&t, "# TYPE latchkey_api_http_requests_total counter\n");
    s_printf(&t, "latchkey_api_http_requests_total{node=\"%s\",kind=\"api\"} %" PRIu64 "\n",
             self->node,
             lk_http_requests(self->http) + (self->https ? lk_http_requests(self->https) : 0));
    s_printf(&t, "# TYPE latchkey_api_published_total counter\n");
    s_printf(&t, "latchkey_api_published_total{node=\"%s\",kind=\"api\"} %" PRIu64 "\n", self->node,
             self->published);
    s_printf(&t, "# TYPE latchkey_process_resident_memory_bytes gauge\n");
    s_printf(&t, "latchkey_process_resident_memory_bytes{node=\"%s\",kind=\"api\"} %" PRIu64 "\n",
             self->node, lk_admin_rss());
    lk_http_respond(call->http, 200, "text/plain; version=0.0.4; charset=utf-8", t.buf, t.len);
    free(t.buf);
}

/* "node" to every live node; step: the handler's */
static void s_ask_all(self_t *self, lk_http_req_t *req, api_call_fn *done, int step)
{
    Lk__AdminRequest q = LK__ADMIN_REQUEST__INIT;
    q.op = "node";
    api_call_t *call = api_call_new(self, req, done);
    call->step = step;
    api_call_all(call, &q);
    api_call_start(call);
}

void api_prom_metrics(self_t *self, lk_http_req_t *req)
{
    s_ask_all(self, req, s_metrics_done, 0);
}

/* --- EMQX's /stats, /metrics, /nodes --------------------------------------------------- */

static bool s_aggregate(lk_http_req_t *req)
{
    const char *a = lk_http_query(req, "aggregate");
    return a && strcmp(a, "true") == 0;
}

typedef cJSON *(s_of_fn)(api_call_t *call, Lk__AdminReply *fe);

/* EMQX's per-node shape: one object (of(call, NULL)) with ?aggregate=true (call->step),
   else an array of one object a frontend */
static void s_per_frontend(api_call_t *call, s_of_fn *of)
{
    if (call->step) {
        api_json(call->http, 200, of(call, NULL));
        return;
    }
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < call->n; i++) {
        Lk__AdminReply *r = s_node_reply(call, i);
        if (r && strcmp(r->node->kind, "mqtt-frontend") == 0)
            cJSON_AddItemToArray(arr, of(call, r));
    }
    api_json(call->http, 200, arr);
}

static cJSON *s_stats_of(api_call_t *call, Lk__AdminReply *fe)
{
    /* a frontend's own numbers; the router's (cluster-wide) for what lives there */
    double conns = fe ? s_metric(fe, "latchkey_connections", NULL)
                      : s_sum(call, "mqtt-frontend", "latchkey_connections", NULL);
    cJSON *j = cJSON_CreateObject();
    if (fe)
        cJSON_AddStringToObject(j, "node", fe->node->node);
    cJSON_AddNumberToObject(j, "connections.count", conns);
    cJSON_AddNumberToObject(j, "live_connections.count", conns);
    cJSON_AddNumberToObject(j, "sessions.count",
                            s_router(call, "latchkey_router_clients"));
    cJSON_AddNumberToObject(j, "subscriptions.count",
                            s_router(call, "latchkey_subscriptions"));
    cJSON_AddNumberToObject(j, "subscribers.count",
                            s_router(call, "latchkey_subscribers"));
    cJSON_AddNumberToObject(j, "topics.count",
                            s_router(call, "latchkey_subscriptions"));
    cJSON_AddNumberToObject(j, "retained.count",
                            s_router(call, "latchkey_retained_messages"));
    return j;
}

static void s_stats_done(self_t *self, api_call_t *call)
{
    s_per_frontend(call, s_stats_of);
}

void api_prom_stats(self_t *self, lk_http_req_t *req)
{
    s_ask_all(self, req, s_stats_done, s_aggregate(req));
}

static cJSON *s_emqx_metrics_of(api_call_t *call, Lk__AdminReply *fe)
{
    cJSON *j = cJSON_CreateObject();
    if (fe)
        cJSON_AddStringToObject(j, "node", fe->node->node);
#define S_M(key, name, labels)                                                                     \
    cJSON_AddNumberToObject(                                                                       \
        j, key, fe ? s_metric(fe, name, labels) : s_sum(call, "mqtt-frontend", name, labels))
    S_M("messages.received", "latchkey_messages_received_total", NULL);
    S_M("messages.sent", "latchkey_messages_sent_total", NULL);
    S_M("messages.qos0.received", "latchkey_messages_received_total", "qos=\"0\"");
    S_M("messages.qos1.received", "latchkey_messages_received_total", "qos=\"1\"");
    S_M("messages.qos2.received", "latchkey_messages_received_total", "qos=\"2\"");
    S_M("messages.qos0.sent", "latchkey_messages_sent_total", "qos=\"0\"");
    S_M("messages.qos1.sent", "latchkey_messages_sent_total", "qos=\"1\"");
    S_M("messages.qos2.sent", "latchkey_messages_sent_total", "qos=\"2\"");
    S_M("messages.dropped", "latchkey_messages_dropped_total", NULL);
    S_M("bytes.received", "latchkey_bytes_received_total", NULL);
    S_M("bytes.sent", "latchkey_bytes_sent_total", NULL);
    S_M("client.connected", "latchkey_connections_accepted_total", NULL);
#undef S_M
    cJSON_AddNumberToObject(j, "messages.retained",
                            s_router(call, "latchkey_retained_messages"));
    return j;
}

static void s_emqx_metrics_done(self_t *self, api_call_t *call)
{
    s_per_frontend(call, s_emqx_metrics_of);
}

void api_prom_emqx_metrics(self_t *self, lk_http_req_t *req)
{
    s_ask_all(self, req, s_emqx_metrics_done, s_aggregate(req));
}

static cJSON *s_node_json(const char *node, const char *kind, const Lk__AdminNode *n, double conns)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "node", node);
    cJSON_AddStringToObject(j, "kind", kind);
    cJSON_AddStringToObject(j, "node_status", n ? "running" : "stopped");
    if (n) {
        cJSON_AddStringToObject(j, "version", n->version);
        cJSON_AddNumberToObject(j, "uptime", (double)n->uptime_ms);
        cJSON_AddNumberToObject(j, "memory_used", (double)n->memory_bytes);
        cJSON_AddNumberToObject(j, "connections", conns);
        cJSON_AddNumberToObject(j, "load1", (double)n->load1_x100 / 100.0);
        cJSON_AddNumberToObject(j, "load5", (double)n->load5_x100 / 100.0);
        cJSON_AddNumberToObject(j, "load15", (double)n->load15_x100 / 100.0);
        cJSON_AddStringToObject(j, "role", "core");
        char epoch[32];
        snprintf(epoch, sizeof(epoch), "%" PRIu64, n->epoch);
        cJSON_AddStringToObject(j, "epoch", epoch);
    }
    return j;
}

static void s_nodes_done(self_t *self, api_call_t *call)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < call->n; i++) {
        Lk__AdminReply *r = s_node_reply(call, i);
        cJSON_AddItemToArray(arr, s_node_json(call->answers[i].node, call->answers[i].kind,
                                              r ? r->node : NULL,
                                              r ? s_metric(r, "latchkey_connections", NULL) : 0));
    }
    /* this api process */
    Lk__AdminNode me = LK__ADMIN_NODE__INIT;
    me.version = LK_VERSION;
    me.uptime_ms = (uint64_t)(lk_mono_ms() - self->started_ms);
    me.memory_bytes = lk_admin_rss();
    me.epoch = lk_bus_epoch(self->bus);
    double load[3] = {0, 0, 0};
    if (getloadavg(load, 3) == 3) {
        me.load1_x100 = (uint64_t)(load[0] * 100);
        me.load5_x100 = (uint64_t)(load[1] * 100);
        me.load15_x100 = (uint64_t)(load[2] * 100);
    }
    cJSON_AddItemToArray(arr, s_node_json(self->node, "api", &me, 0));
    api_json(call->http, 200, arr);
}

void api_prom_nodes(self_t *self, lk_http_req_t *req)
{
    s_ask_all(self, req, s_nodes_done, 0);
}
