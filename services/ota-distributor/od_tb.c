/*  od_tb: ThingsBoard's device OTA protocol, as its devices speak it, under the device's
    mount point tb/<device>/ (the frontend adds and strips it; see fe_mount.c):
      v1/devices/me/attributes                  <- the offer: fw_title, fw_version, fw_size,
                                                   fw_checksum, fw_checksum_algorithm
      v1/devices/me/attributes/request/<id>     -> {"sharedKeys":"fw_title,..."}
      v1/devices/me/attributes/response/<id>    <- {"shared":{...}}
      v2/fw/request/<req>/chunk/<n>             -> chunk size, ASCII decimal (empty: the
                                                   previous size of this request id)
      v2/fw/response/<req>/chunk/<n>            <- the bytes at n * size
      v2/fw/error                               <- why a request was refused (text)
      v1/devices/me/telemetry                   -> fw_state, current_fw_title,
                                                   current_fw_version, fw_error */
#include "od_internal.h"
#include "lk_ota.h"
#include <cjson/cJSON.h>
#include <ctype.h>

static const char *s_fw_keys[] = {
    "fw_title", "fw_version", "fw_size", "fw_checksum", "fw_checksum_algorithm", "fw_signature"};

/* the offer's attributes in obj, only the keys in `keys` (comma separated) when given */
static void s_fw_attrs(od_dev_t *d, cJSON *obj, const char *keys)
{
    for (size_t i = 0; i < LK_ARRAY_LEN(s_fw_keys); i++) {
        const char *k = s_fw_keys[i];
        if (keys) {
            const char *p = keys;
            size_t kl = strlen(k);
            bool want = false;
            while ((p = strstr(p, k))) {
                if ((p == keys || p[-1] == ',' || p[-1] == ' ') &&
                    (p[kl] == 0 || p[kl] == ',' || p[kl] == ' '))
                    want = true;
                p += kl;
            }
            if (!want)
                continue;
        }
        switch (i) {
        case 0:
            cJSON_AddStringToObject(obj, k, d->model);
            break;
        case 1:
            cJSON_AddStringToObject(obj, k, d->version);
            break;
        case 2:
            cJSON_AddNumberToObject(obj, k, (double)d->size);
            break;
        case 3:
            cJSON_AddStringToObject(obj, k, d->sha);
            break;
        case 4:
            cJSON_AddStringToObject(obj, k, "SHA256");
            break;
        case 5:
            cJSON_AddStringToObject(obj, k, d->signature ? d->signature : "");
            break;
        }
    }
}

void od_tb_offer(od_t *self, od_dev_t *d)
{
    cJSON *o = cJSON_CreateObject();
    s_fw_attrs(d, o, NULL);
    char topic[400];
    snprintf(topic, sizeof(topic), "tb/%s/v1/devices/me/attributes", d->id);
    od_publish_json(self, topic, o);
}

void od_tb_attributes(od_t *self, od_dev_t *d, od_req_t *r)
{
    cJSON *o = cJSON_CreateObject();
    if (d->rollout_id && d->sha) {
        cJSON *shared = cJSON_CreateObject();
        s_fw_attrs(d, shared, r->keys);
        if (cJSON_GetArraySize(shared))
            cJSON_AddItemToObject(o, "shared", shared);
        else
            cJSON_Delete(shared);
    }
    od_publish_json(self, r->reply_topic, o);
}

static const char *s_str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void s_telemetry(od_t *self, const char *dev, const Lk__Msg *msg)
{
    cJSON *j = cJSON_ParseWithLength((const char *)msg->payload.data, msg->payload.len);
    /* {"k":v,...}, {"ts":..,"values":{...}} or an array of those */
    cJSON *items = cJSON_IsArray(j) ? j : NULL;
    int n = items ? cJSON_GetArraySize(items) : 1;
    for (int i = 0; i < n; i++) {
        cJSON *o = items ? cJSON_GetArrayItem(items, i) : j;
        if (!cJSON_IsObject(o))
            continue;
        cJSON *vals = cJSON_GetObjectItemCaseSensitive(o, "values");
        if (cJSON_IsObject(vals))
            o = vals;
        const char *ver = s_str(o, "current_fw_version"), *st = s_str(o, "fw_state");
        if (ver || st)
            od_report(self, dev, ver, st, s_str(o, "fw_error"));
    }
    cJSON_Delete(j);
}

void od_tb_message(od_t *self, const Lk__Msg *msg, const char *dev, const char *rest)
{
    char topic[512];
    if (strcmp(rest, "v1/devices/me/telemetry") == 0) {
        s_telemetry(self, dev, msg);
        return;
    }
    static const char areq[] = "v1/devices/me/attributes/request/";
    if (strncmp(rest, areq, sizeof(areq) - 1) == 0) {
        const char *id = rest + sizeof(areq) - 1;
        if (!*id || strchr(id, '/'))
            return;
        od_req_t *r = lk_calloc(1, sizeof(*r));
        r->proto = 't';
        r->kind = 'a';
        snprintf(topic, sizeof(topic), "tb/%s/v1/devices/me/attributes/response/%s", dev, id);
        r->reply_topic = lk_strdup(topic);
        snprintf(topic, sizeof(topic), "tb/%s/v2/fw/error", dev);
        r->err_topic = lk_strdup(topic);
        cJSON *j = cJSON_ParseWithLength((const char *)msg->payload.data, msg->payload.len);
        const char *keys = cJSON_IsObject(j) ? s_str(j, "sharedKeys") : NULL;
        r->keys = keys ? lk_strdup(keys) : NULL;
        cJSON_Delete(j);
        od_serve_later(self, od_dev_get(self, dev), r);
        return;
    }
    snprintf(topic, sizeof(topic), "tb/%s/v2/fw/error", dev);
    char reqid[24];
    uint64_t n = 0, size = 0;
    bool has_size = false;
    int pr = lk_ota_tb_chunk_parse(rest, msg->payload.data, msg->payload.len, reqid, &n, &size,
                                   &has_size);
    if (pr == -1 && strncmp(rest, "v2/fw/request/", 14) != 0)
        return;
    if (pr == -1) {
        od_error(self, topic, "BAD_REQUEST: want v2/fw/request/<number>/chunk/<number>");
        return;
    }
    if (pr == -2) {
        od_error(self, topic, "BAD_REQUEST: the chunk size is not a decimal number");
        return;
    }
    od_dev_t *d = od_dev_get(self, dev);
    if (!has_size) {
        if (!d->tb_req || strcmp(d->tb_req, reqid) != 0) {
            char e[160];
            snprintf(e, sizeof(e), "BAD_REQUEST: unknown request id %s (no chunk size yet)", reqid);
            od_error(self, topic, e);
            return;
        }
        size = d->tb_size;
    } else {
        free(d->tb_req);
        d->tb_req = lk_strdup(reqid);
        d->tb_size = size;
    }
    const char *idx = strrchr(rest, '/') + 1;
    od_req_t *r = lk_calloc(1, sizeof(*r));
    r->proto = 't';
    r->kind = 'c';
    r->err_topic = lk_strdup(topic);
    snprintf(topic, sizeof(topic), "tb/%s/v2/fw/response/%s/chunk/%s", dev, reqid, idx);
    r->reply_topic = lk_strdup(topic);
    r->length = size;
    /* n * size past any image: refused as out of range below */
    r->offset = size && n > UINT64_MAX / 2 / size ? UINT64_MAX / 2 : n * size;
    od_serve_later(self, d, r);
}
