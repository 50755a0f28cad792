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

    PostgreSQL is read through lk_pg; this file and the CLI are the only ones of the
    arbiter that use cJSON (the request is JSON; the rows come out of PostgreSQL as JSON). */
#include "ar_internal.h"
#include "lk_mqtt.h"
#include "lk_pg.h"
#include <cjson/cJSON.h>

#define S_DAY_MS 86400000LL

static const char s_sql[] =
    "SELECT coalesce(json_agg(json_build_object('id', id, 'kind', kind, 'lock', lockno, "
    "'actor', actor, 'time', (extract(epoch FROM time) * 1000)::bigint, 'details', details) "
    "ORDER BY time, seq), '[]'::json)::text FROM (SELECT * FROM events WHERE lockno = $1 "
    "AND time >= to_timestamp($2::double precision / 1000) "
    "AND time <= to_timestamp($3::double precision / 1000) "
    "ORDER BY time DESC, seq DESC LIMIT $4) e";

static lk_pg_t *s_pg(self_t *self)
{
    if (!self->pg) {
        const char *ci = lk_config_get(self->config, "pg_conninfo", "");
        lk_pg_t *pg = lk_pg_new(ci, "lock-arbiter");
        lk_pg_set_timing(pg, 2, 3000, 1000);
        self->pg = pg;
    }
    return self->pg;
}

void ar_history_close(self_t *self)
{
    lk_pg_t *pg = self->pg;
    lk_pg_destroy(&pg);
    self->pg = NULL;
}

/* publishes text to the response topic with the request's correlation data */
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

static void s_error(self_t *self, const char *topic, lk_str_t corr, uint32_t qos, const char *lock,
                    const char *error)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", false);
    if (lock)
        cJSON_AddStringToObject(o, "lock", lock);
    cJSON_AddStringToObject(o, "error", error);
    char *text = cJSON_PrintUnformatted(o);
    s_answer(self, topic, corr, qos, text);
    free(text);
    cJSON_Delete(o);
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
    if (!msg->props.len ||
        lk_mqtt_props_decode(msg->props.data, msg->props.len, LK_MQTT_PUBLISH, &props) != 0 ||
        !LK_PROP_HAS(&props, LK_PROP_RESPONSE_TOPIC)) {
        lk_info("history request from %s without a response topic ignored",
                msg->origin_client ? msg->origin_client : "?");
        lk_mqtt_props_free(&props);
        return;
    }
    char *topic = lk_strndup(props.response_topic.p, props.response_topic.len);
    char prefix[200];
    snprintf(prefix, sizeof(prefix), AR_REPLY_PREFIX "%s/", login);
    if (!*login || strncmp(topic, prefix, strlen(prefix)) != 0 ||
        !lk_mqtt_topic_valid(topic, strlen(topic))) {
        lk_notice("history request from user '%s': response topic '%s' is not under %s, "
                  "ignored",
                  login, topic, prefix);
        free(topic);
        lk_mqtt_props_free(&props);
        return;
    }
    lk_str_t corr = LK_PROP_HAS(&props, LK_PROP_CORRELATION_DATA) ? props.correlation_data
                                                                  : (lk_str_t){NULL, 0};
    uint32_t qos = msg->qos;
    cJSON *req = cJSON_ParseWithLength((const char *)msg->payload.data, msg->payload.len);
    const cJSON *jl = req ? cJSON_GetObjectItemCaseSensitive(req, "lock") : NULL;
    int64_t now = lk_wall_ms(), from = 0, to = 0, limit = 0;
    char *user = NULL;
    if (!req || !cJSON_IsObject(req) || !cJSON_IsString(jl) || !*jl->valuestring ||
        strpbrk(jl->valuestring, "/+#")) {
        s_error(self, topic, corr, qos, NULL, "bad request: want {\"lock\": ...}");
    } else if (!s_num(req, "to", now, &to) || !s_num(req, "from", to - S_DAY_MS, &from) ||
               !s_num(req, "limit", self->history_limit, &limit) || from > to || limit < 1) {
        s_error(self, topic, corr, qos, jl->valuestring, "bad request: from, to, limit");
    } else if (!(user = ar_real_user(self, login))) {
        s_error(self, topic, corr, qos, jl->valuestring, "unavailable");
    } else {
        const char *lock = jl->valuestring;
        lk_redis_reply_t *b = lk_redis_cmd(self->redis, "HEXISTS lk:bind:%s %s", lock, user);
        if (!b || b->type != LK_REDIS_INT)
            s_error(self, topic, corr, qos, lock, "unavailable");
        else if (b->integer != 1) {
            lk_notice("history of %s refused to '%s' (login %s): not bound", lock, user, login);
            s_error(self, topic, corr, qos, lock, "not bound to this lock");
        } else {
            if (limit > self->history_limit)
                limit = self->history_limit;
            char f[24], t[24], l[24];
            snprintf(f, sizeof(f), "%" PRId64, from);
            snprintf(t, sizeof(t), "%" PRId64, to);
            snprintf(l, sizeof(l), "%" PRId64, limit);
            const char *params[] = {lock, f, t, l};
            lk_pg_result_t *r = lk_pg_exec(s_pg(self), s_sql, 4, params);
            const char *rows = r->status == LK_PG_OK ? lk_pg_value(r, 0, 0) : NULL;
            if (!rows) {
                lk_warn("history of %s: %s", lock,
                        r->message && *r->message ? r->message : "PostgreSQL unavailable");
                s_error(self, topic, corr, qos, lock, "unavailable");
            } else {
                /* rows are JSON already: wrap them without re-parsing */
                cJSON *o = cJSON_CreateObject();
                cJSON_AddBoolToObject(o, "ok", true);
                cJSON_AddStringToObject(o, "lock", lock);
                cJSON_AddItemToObject(o, "rows", cJSON_CreateRaw(rows));
                char *text = cJSON_PrintUnformatted(o);
                s_answer(self, topic, corr, qos, text);
                lk_info("history of %s for %s: %zu bytes", lock, user, strlen(text));
                free(text);
                cJSON_Delete(o);
            }
            lk_pg_result_free(&r);
        }
        lk_redis_reply_free(&b);
    }
    free(user);
    cJSON_Delete(req);
    free(topic);
    lk_mqtt_props_free(&props);
}
