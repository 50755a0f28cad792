/*  od_lk: Latchkey's own device OTA protocol (docs/ota.md). A device with id D, user name
    = its token, may use lk/ota/D/# and read lk/ota/announce/<its model>/#:
      lk/ota/announce/<model>/<version>  <- retained: {"model","version","size","sha256",
                                            "signature","key_id","url"}
      lk/ota/D/status                    -> {"model","version","state","error"} on connect
                                            and after every step of an update
      lk/ota/D/offer                     <- what D should install: the announcement's
                                            fields + "rollout" and a signed "url"
      lk/ota/D/req                       -> {"sha256","offset","length"} (MQTT 5: Response
                                            Topic under lk/ota/D/ + Correlation Data;
                                            3.1.1: optional "reply" topic under lk/ota/D/)
      lk/ota/D/chunk/<offset>            <- 3.1.1 answer: the bytes at <offset>
      (response topic)                   <- MQTT 5 answer: the bytes, correlation data,
                                            user properties offset and length
      lk/ota/D/error                     <- {"error","sha256","offset","length"} */
#include "od_internal.h"
#include "lk_mqtt.h"
#include "lk_ota.h"
#include <cjson/cJSON.h>

char *od_signed_url(od_t *self, const char *sha, const char *device)
{
    char url[1024];
    if (!self->url_secret || !device) {
        snprintf(url, sizeof(url), "%s/ota/images/%s", self->http_url, sha);
        return lk_strdup(url);
    }
    int64_t expires = lk_wall_ms() / 1000 + self->url_ttl_s;
    char mac[65];
    lk_ota_url_mac(self->url_secret, sha, device, expires, mac);
    snprintf(url, sizeof(url), "%s/ota/images/%s?device=%s&expires=%" PRId64 "&sig=%s",
             self->http_url, sha, device, expires, mac);
    return lk_strdup(url);
}

static cJSON *s_image_json(od_t *self, const char *model, const char *version, uint64_t size,
                           const char *sha, const char *sig, const char *key_id, const char *device)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", model);
    cJSON_AddStringToObject(o, "version", version);
    cJSON_AddNumberToObject(o, "size", (double)size);
    cJSON_AddStringToObject(o, "sha256", sha);
    cJSON_AddStringToObject(o, "signature", sig ? sig : "");
    cJSON_AddStringToObject(o, "key_id", key_id ? key_id : "");
    char *url = od_signed_url(self, sha, device);
    cJSON_AddStringToObject(o, "url", url);
    free(url);
    cJSON_AddNumberToObject(o, "max_chunk", (double)self->max_chunk);
    return o;
}

char *od_lk_announcement(od_t *self, const od_image_t *img)
{
    cJSON *o = s_image_json(self, img->model, img->version, img->size, img->sha256, img->signature,
                            img->key_id, NULL);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

void od_lk_offer(od_t *self, od_dev_t *d)
{
    cJSON *o =
        s_image_json(self, d->model, d->version, d->size, d->sha, d->signature, d->key_id, d->id);
    cJSON_AddNumberToObject(o, "rollout", (double)d->rollout_id);
    cJSON_AddNumberToObject(o, "offset", (double)d->served);
    char topic[400];
    snprintf(topic, sizeof(topic), "lk/ota/%s/offer", d->id);
    od_publish_json(self, topic, o);
}

static const char *s_str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* a whole number 0 <= v < 2^53, else -1 */
static int64_t s_uint(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 9007199254740991.0 ||
        v->valuedouble != (double)(int64_t)v->valuedouble)
        return -1;
    return (int64_t)v->valuedouble;
}

static bool s_mine(const char *topic, const char *dev)
{
    char pre[300];
    int n = snprintf(pre, sizeof(pre), "lk/ota/%s/", dev);
    return topic && strncmp(topic, pre, (size_t)n) == 0 && !strpbrk(topic, "+#") &&
           strlen(topic) > (size_t)n;
}

void od_lk_message(od_t *self, const Lk__Msg *msg, const char *dev, const char *rest)
{
    char err_topic[400];
    snprintf(err_topic, sizeof(err_topic), "lk/ota/%s/error", dev);
    cJSON *j = cJSON_ParseWithLength((const char *)msg->payload.data, msg->payload.len);
    if (strcmp(rest, "status") == 0) {
        if (cJSON_IsObject(j))
            od_report(self, dev, s_str(j, "version"), s_str(j, "state"), s_str(j, "error"));
        else
            od_error(self, err_topic, "{\"error\":\"BAD_REQUEST: status is a JSON object\"}");
        cJSON_Delete(j);
        return;
    }
    if (strcmp(rest, "req") != 0) {
        cJSON_Delete(j);
        return;
    }
    od_req_t *r = lk_calloc(1, sizeof(*r));
    r->proto = 'l';
    r->kind = 'c';
    r->err_topic = lk_strdup(err_topic);
    int64_t off = cJSON_IsObject(j) ? s_uint(j, "offset") : -1;
    int64_t len = cJSON_IsObject(j) ? s_uint(j, "length") : -1;
    const char *sha = cJSON_IsObject(j) ? s_str(j, "sha256") : NULL;
    const char *reply = cJSON_IsObject(j) ? s_str(j, "reply") : NULL;
    r->offset = off > 0 ? (uint64_t)off : 0;
    r->length = len > 0 ? (uint64_t)len : 0;
    r->sha = sha ? lk_strdup(sha) : NULL;
    lk_mqtt_props_t p = {0};
    if (msg->props.len &&
        lk_mqtt_props_decode(msg->props.data, msg->props.len, LK_MQTT_PUBLISH, &p) == 0 &&
        LK_PROP_HAS(&p, LK_PROP_RESPONSE_TOPIC)) {
        r->v5 = true;
        r->reply_topic = lk_strndup(p.response_topic.p, p.response_topic.len);
        if (LK_PROP_HAS(&p, LK_PROP_CORRELATION_DATA) && p.correlation_data.len) {
            r->corr = lk_malloc(p.correlation_data.len);
            memcpy(r->corr, p.correlation_data.p, p.correlation_data.len);
            r->corr_len = p.correlation_data.len;
        }
    }
    lk_mqtt_props_free(&p);
    const char *bad = !cJSON_IsObject(j)                      ? "BAD_REQUEST: not a JSON object"
                      : off < 0                               ? "BAD_REQUEST: offset"
                      : len < 0                               ? "BAD_REQUEST: length"
                      : sha && !lk_ota_sha_hex_ok(sha)        ? "BAD_REQUEST: sha256"
                      : reply && !s_mine(reply, dev)          ? "BAD_REQUEST: reply topic"
                      : r->v5 && !s_mine(r->reply_topic, dev) ? "BAD_REQUEST: response topic"
                                                              : NULL;
    if (!r->reply_topic) {
        char t[400];
        snprintf(t, sizeof(t), "lk/ota/%s/chunk/%" PRIu64, dev, r->offset);
        r->reply_topic = lk_strdup(reply && !bad ? reply : t);
    }
    cJSON_Delete(j);
    if (bad) {
        char e[300];
        snprintf(e, sizeof(e), "{\"error\":\"%s\",\"offset\":%" PRIu64 ",\"length\":%" PRIu64 "}",
                 bad, r->offset, r->length);
        od_error(self, err_topic, e);
        od_req_free(r);
        return;
    }
    od_serve_later(self, od_dev_get(self, dev), r);
}
