/*  lk_pbjson: protobuf-c message -> JSON through the message descriptor. */
#include "lk_pbjson.h"
#include "latchkey.pb-c.h"
#include "lk_common.h"
#include "lk_mqtt.h"
#include <cjson/cJSON.h>
#include <stdio.h>

static cJSON *s_message(const ProtobufCMessage *msg);

static cJSON *s_bytes(const ProtobufCBinaryData *b)
{
    bool text = lk_mqtt_utf8_valid((const char *)b->data, b->len);
    for (size_t i = 0; text && i < b->len; i++)
        if (b->data[i] < 0x20 && b->data[i] != '\n' && b->data[i] != '\t')
            text = false;
    if (text) {
        char *s = lk_strndup((const char *)b->data, b->len);
        cJSON *j = cJSON_CreateString(s);
        free(s);
        return j;
    }
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = lk_malloc(4 * ((b->len + 2) / 3) + 1);
    size_t o = 0;
    for (size_t i = 0; i < b->len; i += 3) {
        uint32_t v = (uint32_t)b->data[i] << 16;
        if (i + 1 < b->len)
            v |= (uint32_t)b->data[i + 1] << 8;
        if (i + 2 < b->len)
            v |= b->data[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < b->len ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < b->len ? tbl[v & 63] : '=';
    }
    out[o] = 0;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "base64", out);
    free(out);
    return j;
}

/* one value of a field; p points at it */
static cJSON *s_value(const ProtobufCFieldDescriptor *f, const void *p)
{
    char num[32];
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return cJSON_CreateNumber(*(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return cJSON_CreateNumber(*(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        /* as text: 64-bit values do not survive a double */
        snprintf(num, sizeof(num), "%" PRId64, *(const int64_t *)p);
        return cJSON_CreateString(num);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        snprintf(num, sizeof(num), "%" PRIu64, *(const uint64_t *)p);
        return cJSON_CreateString(num);
    case PROTOBUF_C_TYPE_FLOAT:
        return cJSON_CreateNumber(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return cJSON_CreateNumber(*(const double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        return cJSON_CreateBool(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumValue *v =
            protobuf_c_enum_descriptor_get_value(f->descriptor, *(const int *)p);
        return v ? cJSON_CreateString(v->name) : cJSON_CreateNumber(*(const int *)p);
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)p;
        return cJSON_CreateString(s ? s : "");
    }
    case PROTOBUF_C_TYPE_BYTES:
        return s_bytes((const ProtobufCBinaryData *)p);
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m = *(const ProtobufCMessage *const *)p;
        return m ? s_message(m) : cJSON_CreateNull();
    }
    }
    return cJSON_CreateNull();
}

static size_t s_size(const ProtobufCFieldDescriptor *f)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    default:
        return 4;
    }
}

static bool s_is_default(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)p;
        return !s || !*s;
    }
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)p)->len == 0;
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(const void *const *)p == NULL;
    default: {
        static const uint8_t zero[8];
        return memcmp(p, zero, s_size(f)) == 0;
    }
    }
}

static cJSON *s_message(const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    cJSON *obj = cJSON_CreateObject();
    const char *base = (const char *)msg;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const void *p = base + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            if (!n)
                continue;
            const char *arr = *(const char *const *)p;
            cJSON *a = cJSON_AddArrayToObject(obj, f->name);
            for (size_t k = 0; k < n; k++)
                cJSON_AddItemToArray(a, s_value(f, arr + k * s_size(f)));
            continue;
        }
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which = *(const uint32_t *)(base + f->quantifier_offset);
            if (which != f->id)
                continue;
        } else if (s_is_default(f, p))
            continue;
        cJSON_AddItemToObject(obj, f->name, s_value(f, p));
    }
    return obj;
}

char *lk_pbjson_print(const ProtobufCMessage *msg)
{
    cJSON *j = s_message(msg);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

int lk_pbjson_test(bool verbose)
{
    Lk__Msg m = LK__MSG__INIT;
    m.topic = "a/b";
    m.payload.data = (uint8_t *)"hi";
    m.payload.len = 2;
    m.qos = 1;
    Lk__Publish pub = LK__PUBLISH__INIT;
    pub.msg = &m;
    Lk__Publish *items[] = {&pub, &pub};
    Lk__PublishBatch pb = LK__PUBLISH_BATCH__INIT;
    pb.n_items = 2;
    pb.items = items;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.from = "fe-1";
    env.seq = 7;
    env.body_case = LK__ENVELOPE__BODY_PUBLISH;
    env.publish = &pb;
    char *s = lk_pbjson_print(&env.base);
    const char *want = "{\"from\":\"fe-1\",\"seq\":\"7\",\"publish\":{\"items\":[{\"msg\":{\"topic\":"
                       "\"a/b\",\"payload\":\"hi\",\"qos\":1}},{\"msg\":{\"topic\":\"a/b\","
                       "\"payload\":\"hi\",\"qos\":1}}]}}";
    int rc = strcmp(s, want) == 0 ? 0 : -1;
    if (verbose || rc)
        printf("lk_pbjson: %s\n", s);
    free(s);
    uint8_t bin[] = {0, 1, 2, 0xff};
    m.payload.data = bin;
    m.payload.len = sizeof(bin);
    s = lk_pbjson_print(&m.base);
    if (!strstr(s, "\"payload\":{\"base64\":\"AAEC/w==\"}"))
        rc = -1;
    if (verbose || rc)
        printf("lk_pbjson: %s\n", s);
    free(s);
    return rc;
}
