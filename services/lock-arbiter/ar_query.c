/*  ar_query: the history query over MQTT 5 request/response, so an app needs nothing but
    MQTT (the seed's app asked an HTTP back end).

    Request: PUBLISH to $lk/history/req, payload {"lock": "<lock>", "from": ms, "to": ms,
    "limit": n} (from/to: wall-clock ms, default the last 24 h; limit default and cap
    history_query_limit), with a Response Topic under $lk/reply/<username>/ (the only
    topics a temporary login may subscribe to besides its locks', and the only ones the
    arbiter answers on, so it cannot be made to publish elsewhere) and Correlation Data.
    Reply: PUBLISH to the response topic with the same correlation data, content type
    application/json, payload {"ok": true, "lock": ..., "rows": [{"id", "kind", "lock",
    "actor", "time" (ms), "details"}...]} oldest first (the newest `limit` of the range), or
    {"ok": false, "error": "..."}. Only users bound to the lock (any role) get rows.

    PostgreSQL is read on a worker thread of its own (common/lk_pgq, its own connection),
    so a slow or locked PostgreSQL never holds the event loop — a decision does not wait for
    a history query (issue 13). The loop hands the worker the statement (lock, range, limit)
    with where to answer; the result comes back to the loop, which publishes the answer.
    At most S_MAX_JOBS queries wait; more are answered "busy". Statements run under
    statement_timeout (3 s), which also bounds the wait at shutdown.

    This file and the CLI are the only ones of the arbiter that use cJSON (the request is
    JSON; the rows come out of PostgreSQL as JSON). Over MQTT 3.1.1 (no response topic or
    correlation data) a request's payload may carry them: {"lock": ..., "reply": "$lk/reply/
    <username>/...", "corr": "..."}; the answer echoes "corr" in its JSON. */
#include "ar_internal.h"
#include "lk_mqtt.h"
#include "lk_pg.h"
#include <cjson/cJSON.h>

#define S_DAY_MS 86400000LL
#define S_MAX_JOBS 64

/* one history query on its way through the worker: where to answer */
typedef struct {
    self_t *self;
    char *lock, *user;
    char *topic;   /* the answer's topic */
    uint8_t *corr; /* MQTT 5 correlation data */
    size_t corr_len;
    char *corr_json; /* MQTT 3.1.1: "corr" to echo in the JSON; NULL */
    uint32_t qos;
} s_job_t;

static const char s_sql[] =
    "SELECT coalesce(json_agg(json_build_object('id', id, 'kind', kind, 'lock', lockno, "
    "'actor', actor, 'time', (extract(epoch FROM time) * 1000)::bigint, 'details', details) "
    "ORDER BY time, seq), '[]'::json)::text FROM (SELECT * FROM events WHERE lockno = $1 "
    "AND time >= to_timestamp($2::double precision / 1000) "
    "AND time <= to_timestamp($3::double precision / 1000) "
    "ORDER BY time DESC, seq DESC LIMIT $4) e";

static void s_job_free(s_job_t *j)
{
    free(j->lock);
    free(j->user);
    free(j->topic);
    free(j->corr);
    free(j->corr_json);
    free(j);
}

/* the worker, with its own PostgreSQL link, started at the first query; NULL (logged)
   when it cannot start */
static lk_pgq_t *s_worker(self_t *self)
{
    if (!self->pg) {
        lk_pg_t *pg = lk_pg_new(lk_config_get(self->config, "pg_conninfo", ""), "lock-arbiter");
        lk_pg_set_timing(pg, 2, 3000, 1000);
        self->pg = lk_pgq_new(self->loop, pg);
    }
    return self->pg;
}

void ar_history_close(self_t *self)
{
    /* a statement running is bounded by statement_timeout; queued ones are dropped */
    lk_pgq_destroy(&self->pg, false);
}

/* publishes text to the response topic with the request's correlation data (MQTT 5) */
static void s_answer(self_t *self, const char *topic, lk_str_t corr, uint32_t qos, const char *text)
{
    lk_mqtt_props_t p;
    memset(&p, 0, sizeof(p));
    LK_PROP_SET(&p, LK_PROP_CONTENT_TYPE);
    p.content_type.p = "application/json";
    p.content_type.len = 16;
    LK_PROP_SET(&p, LK_PROP_PAYLOAD_FORMAT);
    p.payload_format = 1;
    if (corr.len) {
        LK_PROP_SET(&p, LK_PROP_CORRELATION_DATA);
        p.correlation_data = corr;
    }
    lk_wbuf_t buf;
    lk_wbuf_init(&buf);
    lk_mqtt_props_encode(&buf, &p, ~0ULL);
    lk_iclient_publish(self->ic, topic, text, strlen(text), qos > 1 ? 1 : qos, false, buf.data,
                       buf.len);
    lk_wbuf_free(&buf);
}

/* {"ok": ..., "lock": ..., "corr": ..., then the rest} as text (caller frees) */
static char *s_reply_json(bool ok, const char *lock, const char *corr_json, const char *error,
                          const char *rows)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", ok);
    if (lock)
        cJSON_AddStringToObject(o, "lock", lock);
    if (corr_json)
        cJSON_AddStringToObject(o, "corr", corr_json);
    if (error)
        cJSON_AddStringToObject(o, "error", error);
    if (rows) /* rows are JSON already: wrapped without re-parsing */
        cJSON_AddItemToObject(o, "rows", cJSON_CreateRaw(rows));
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

static void s_error(self_t *self, const char *topic, lk_str_t corr, const char *corr_json,
                    uint32_t qos, const char *lock, const char *error)
{
    char *text = s_reply_json(false, lock, corr_json, error, NULL);
    s_answer(self, topic, corr, qos, text);
    free(text);
}

/* the loop side: answers a query the worker ran (r NULL: shutting down, no answer) */
static void s_answer_job(lk_pg_result_t *r, void *arg)
{
    s_job_t *j = arg;
    self_t *self = j->self;
    const char *rows = r && r->status == LK_PG_OK ? lk_pg_value(r, 0, 0) : NULL;
    lk_str_t corr = {(const char *)j->corr, (uint32_t)j->corr_len};
    if (!r) {
        /* the worker is going away */
    } else if (!rows) {
        lk_warn("history of %s: %s", j->lock,
                r->message && *r->message ? r->message : "PostgreSQL unavailable");
        s_error(self, j->topic, corr, j->corr_json, j->qos, j->lock, "unavailable");
    } else {
        char *text = s_reply_json(true, j->lock, j->corr_json, NULL, rows);
        s_answer(self, j->topic, corr, j->qos, text);
        lk_info("history of %s for %s: %zu bytes", j->lock, j->user, strlen(text));
        free(text);
    }
    s_job_free(j);
}

/* a JSON number member as int64, or def when absent; false when present but not a number */
static bool s_num(const cJSON *o, const char *name, int64_t def, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return true;
    }
    if (!cJSON_IsNumber(v))
        return false;
    *out = (int64_t)v->valuedouble;
    return true;
}

void ar_history_query(self_t *self, const Lk__Msg *msg)
{
    self->queries++;
    const char *login = msg->origin_user ? msg->origin_user : "";
    lk_mqtt_props_t props;
    memset(&props, 0, sizeof(props));
    bool v5 = msg->props.len &&
              lk_mqtt_props_decode(msg->props.data, msg->props.len, LK_MQTT_PUBLISH, &props) == 0 &&
              LK_PROP_HAS(&props, LK_PROP_RESPONSE_TOPIC);
    cJSON *req = cJSON_ParseWithLength((const char *)msg->payload.data, msg->payload.len);
    /* MQTT 3.1.1 has no response topic: the request names it ("reply", "corr") */
    const cJSON *jr = req ? cJSON_GetObjectItemCaseSensitive(req, "reply") : NULL;
    const cJSON *jc = req ? cJSON_GetObjectItemCaseSensitive(req, "corr") : NULL;
    char *topic = NULL;
    if (v5)
        topic = lk_strndup(props.response_topic.p, props.response_topic.len);
    else if (cJSON_IsString(jr))
        topic = lk_strdup(jr->valuestring);
    const char *corr_json = !v5 && cJSON_IsString(jc) ? jc->valuestring : NULL;
    char prefix[200];
    snprintf(prefix, sizeof(prefix), AR_REPLY_PREFIX "%s/", login);
    if (!topic || !*login || strncmp(topic, prefix, strlen(prefix)) != 0 ||
        !lk_mqtt_topic_valid(topic, strlen(topic))) {
        lk_notice("history request from user '%s': response topic '%s' is not under %s, "
                  "ignored",
                  login, topic ? topic : "(none)", prefix);
        free(topic);
        cJSON_Delete(req);
        lk_mqtt_props_free(&props);
        return;
    }
    lk_str_t corr = v5 && LK_PROP_HAS(&props, LK_PROP_CORRELATION_DATA) ? props.correlation_data
                                                                        : (lk_str_t){NULL, 0};
    uint32_t qos = msg->qos;
    const cJSON *jl = req ? cJSON_GetObjectItemCaseSensitive(req, "lock") : NULL;
    int64_t now = lk_wall_ms(), from = 0, to = 0, limit = 0;
    char *user = NULL;
    if (!req || !cJSON_IsObject(req) || !cJSON_IsString(jl) || !*jl->valuestring ||
        strpbrk(jl->valuestring, "/+#")) {
        s_error(self, topic, corr, corr_json, qos, NULL, "bad request: want {\"lock\": ...}");
    } else if (!s_num(req, "to", now, &to) || !s_num(req, "from", to - S_DAY_MS, &from) ||
               !s_num(req, "limit", self->history_limit, &limit) || from > to || limit < 1) {
        s_error(self, topic, corr, corr_json, qos, jl->valuestring, "bad request: from, to, limit");
    } else if (!(user = ar_real_user(self, login))) {
        s_error(self, topic, corr, corr_json, qos, jl->valuestring, "unavailable");
    } else {
        const char *lock = jl->valuestring;
        lk_redis_reply_t *b = lk_redis_cmd(self->redis, "HEXISTS lk:{arb}:bind:%s %s", lock, user);
        lk_pgq_t *w = s_worker(self);
        if (!b || b->type != LK_REDIS_INT)
            s_error(self, topic, corr, corr_json, qos, lock, "unavailable");
        else if (b->integer != 1) {
            lk_notice("history of %s refused to '%s' (login %s): not bound", lock, user, login);
            s_error(self, topic, corr, corr_json, qos, lock, "not bound to this lock");
        } else if (!w || lk_pgq_backlog(w) >= S_MAX_JOBS) {
            s_error(self, topic, corr, corr_json, qos, lock, "busy");
        } else {
            if (limit > self->history_limit)
                limit = self->history_limit;
            s_job_t *j = lk_calloc(1, sizeof(*j));
            char f[24], t[24], l[24];
            snprintf(f, sizeof(f), "%" PRId64, from);
            snprintf(t, sizeof(t), "%" PRId64, to);
            snprintf(l, sizeof(l), "%" PRId64, limit);
            j->self = self;
            j->lock = lk_strdup(lock);
            j->user = lk_strdup(user);
            j->topic = topic;
            topic = NULL;
            if (corr.len) {
                j->corr = lk_malloc(corr.len);
                memcpy(j->corr, corr.p, corr.len);
                j->corr_len = corr.len;
            }
            j->corr_json = corr_json ? lk_strdup(corr_json) : NULL;
            j->qos = qos;
            const char *params[] = {lock, f, t, l};
            lk_pgq_exec(w, s_sql, 4, params, s_answer_job, j);
        }
        lk_redis_reply_free(&b);
    }
    free(user);
    cJSON_Delete(req);
    free(topic);
    lk_mqtt_props_free(&props);
}
