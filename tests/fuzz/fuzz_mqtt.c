/*  fuzz_mqtt: libFuzzer target for the MQTT codec (common/lk_mqtt.c).

    Every input is read as a stream of packets and decoded for each protocol level
    (3.1, 3.1.1, 5) and both directions. Whatever decodes is encoded, decoded again and
    encoded again: the two decodes must agree field by field and the two encodings byte
    by byte. The same input also drives the property block codec and, split at its first
    newline, the topic helpers, whose matcher is checked against a naive one.
*/
#include "lk_mqtt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_mqtt: %s:%d: %s\n", __FILE__, __LINE__, #cond);                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static bool s_str_eq(lk_str_t a, lk_str_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static bool s_props_eq(const lk_mqtt_props_t *a, const lk_mqtt_props_t *b)
{
    if (a->has != b->has || a->payload_format != b->payload_format ||
        a->message_expiry != b->message_expiry || a->session_expiry != b->session_expiry ||
        a->server_keep_alive != b->server_keep_alive ||
        a->request_problem_info != b->request_problem_info || a->will_delay != b->will_delay ||
        a->request_response_info != b->request_response_info ||
        a->receive_maximum != b->receive_maximum ||
        a->topic_alias_maximum != b->topic_alias_maximum || a->topic_alias != b->topic_alias ||
        a->maximum_qos != b->maximum_qos || a->retain_available != b->retain_available ||
        a->maximum_packet_size != b->maximum_packet_size ||
        a->wildcard_sub_available != b->wildcard_sub_available ||
        a->sub_id_available != b->sub_id_available ||
        a->shared_sub_available != b->shared_sub_available)
        return false;
    if (!s_str_eq(a->content_type, b->content_type) ||
        !s_str_eq(a->response_topic, b->response_topic) ||
        !s_str_eq(a->correlation_data, b->correlation_data) ||
        !s_str_eq(a->assigned_client_id, b->assigned_client_id) ||
        !s_str_eq(a->auth_method, b->auth_method) || !s_str_eq(a->auth_data, b->auth_data) ||
        !s_str_eq(a->response_info, b->response_info) ||
        !s_str_eq(a->server_reference, b->server_reference) ||
        !s_str_eq(a->reason_string, b->reason_string))
        return false;
    if (a->user_prop_count != b->user_prop_count || a->sub_id_count != b->sub_id_count)
        return false;
    for (uint32_t i = 0; i < a->user_prop_count; i++)
        if (!s_str_eq(a->user_props[i].key, b->user_props[i].key) ||
            !s_str_eq(a->user_props[i].value, b->user_props[i].value))
            return false;
    for (uint32_t i = 0; i < a->sub_id_count; i++)
        if (a->sub_ids[i] != b->sub_ids[i])
            return false;
    return true;
}

static bool s_packet_eq(const lk_mqtt_packet_t *a, const lk_mqtt_packet_t *b, uint8_t version)
{
    if (a->type != b->type || !s_props_eq(&a->props, &b->props))
        return false;
    /* 3.1 tolerates DUP on PUBREL/SUBSCRIBE/UNSUBSCRIBE; encode never sets it */
    if (a->flags != b->flags && (version != LK_MQTT_V31 || a->type == LK_MQTT_PUBLISH))
        return false;
    switch (a->type) {
    case LK_MQTT_CONNECT: {
        const lk_mqtt_connect_t *x = &a->u.connect, *y = &b->u.connect;
        return s_str_eq(x->protocol_name, y->protocol_name) && x->version == y->version &&
               x->clean == y->clean && x->will == y->will && x->will_qos == y->will_qos &&
               x->will_retain == y->will_retain && x->has_username == y->has_username &&
               x->has_password == y->has_password && x->keepalive == y->keepalive &&
               s_str_eq(x->client_id, y->client_id) && s_props_eq(&x->will_props, &y->will_props) &&
               s_str_eq(x->will_topic, y->will_topic) &&
               s_str_eq(x->will_payload, y->will_payload) && s_str_eq(x->username, y->username) &&
               s_str_eq(x->password, y->password);
    }
    case LK_MQTT_CONNACK:
        return a->u.connack.session_present == b->u.connack.session_present &&
               a->u.connack.code == b->u.connack.code;
    case LK_MQTT_PUBLISH: {
        const lk_mqtt_publish_t *x = &a->u.publish, *y = &b->u.publish;
        return x->dup == y->dup && x->qos == y->qos && x->retain == y->retain &&
               s_str_eq(x->topic, y->topic) && x->packet_id == y->packet_id &&
               s_str_eq(x->payload, y->payload);
    }
    case LK_MQTT_PUBACK:
    case LK_MQTT_PUBREC:
    case LK_MQTT_PUBREL:
    case LK_MQTT_PUBCOMP:
        return a->u.ack.packet_id == b->u.ack.packet_id && a->u.ack.reason == b->u.ack.reason;
    case LK_MQTT_SUBSCRIBE: {
        const lk_mqtt_subscribe_t *x = &a->u.subscribe, *y = &b->u.subscribe;
        if (x->packet_id != y->packet_id || x->count != y->count)
            return false;
        for (uint32_t i = 0; i < x->count; i++) {
            const lk_mqtt_sub_entry_t *e = &x->entries[i], *f = &y->entries[i];
            if (!s_str_eq(e->topic_filter, f->topic_filter) || e->qos != f->qos ||
                e->no_local != f->no_local || e->retain_as_published != f->retain_as_published ||
                e->retain_handling != f->retain_handling)
                return false;
        }
        return true;
    }
    case LK_MQTT_UNSUBSCRIBE: {
        const lk_mqtt_unsubscribe_t *x = &a->u.unsubscribe, *y = &b->u.unsubscribe;
        if (x->packet_id != y->packet_id || x->count != y->count)
            return false;
        for (uint32_t i = 0; i < x->count; i++)
            if (!s_str_eq(x->filters[i], y->filters[i]))
                return false;
        return true;
    }
    case LK_MQTT_SUBACK:
    case LK_MQTT_UNSUBACK: {
        const lk_mqtt_suback_t *x = &a->u.suback, *y = &b->u.suback;
        return x->packet_id == y->packet_id && x->count == y->count &&
               (x->count == 0 || memcmp(x->codes, y->codes, x->count) == 0);
    }
    case LK_MQTT_PINGREQ:
    case LK_MQTT_PINGRESP:
        return true;
    default:
        return a->u.reason.reason == b->u.reason.reason;
    }
}

static size_t s_vbi_size(size_t v)
{
    return v < 128 ? 1 : v < 16384 ? 2 : v < 2097152 ? 3 : 4;
}

/* a decode result after which the packet is complete */
static bool s_complete(int rc)
{
    return rc == 0 || rc == LK_RC_TOPIC_NAME_INVALID || rc == LK_RC_PAYLOAD_FORMAT_INVALID;
}

static void s_round_trip(const uint8_t *frame, size_t len, uint8_t version, bool server)
{
    lk_mqtt_packet_t p1, p2;
    int rc = lk_mqtt_decode(frame, len, version, server, &p1);
    if (!s_complete(rc)) {
        lk_mqtt_packet_free(&p1);
        return;
    }
    uint8_t ver = p1.type == LK_MQTT_CONNECT ? p1.u.connect.version : version;
    lk_wbuf_t e1, e2;
    lk_wbuf_init(&e1);
    lk_wbuf_init(&e2);
    S_CHECK(lk_mqtt_encode(&e1, ver, &p1) == 0);
    size_t fl = 0, bl = 0;
    S_CHECK(lk_mqtt_frame(e1.data, e1.len, 0, &fl, &bl) == 1 && fl == e1.len);
    S_CHECK(e1.len <= len + 1); /* shortest forms; AUTH may gain a property length */
    S_CHECK(lk_mqtt_decode(e1.data, e1.len, ver, server, &p2) == rc);
    S_CHECK(s_packet_eq(&p1, &p2, ver));
    S_CHECK(lk_mqtt_encode(&e2, ver, &p2) == 0);
    S_CHECK(e2.len == e1.len && memcmp(e1.data, e2.data, e1.len) == 0);
    /* the property block helpers agree with the packet codec */
    if (ver == LK_MQTT_V5) {
        lk_wbuf_t pb;
        lk_wbuf_init(&pb);
        lk_mqtt_props_encode(&pb, &p1.props, ~0ULL);
        S_CHECK(lk_mqtt_props_size(&p1.props) == s_vbi_size(pb.len) + pb.len);
        lk_mqtt_props_t back;
        S_CHECK(lk_mqtt_props_decode(pb.data, pb.len, p1.type, &back) == 0);
        S_CHECK(s_props_eq(&back, &p1.props));
        lk_mqtt_props_free(&back);
        lk_wbuf_free(&pb);
    }
    lk_mqtt_packet_free(&p1);
    lk_mqtt_packet_free(&p2);
    lk_wbuf_free(&e1);
    lk_wbuf_free(&e2);
}

/* the obvious matcher, level by level, to check lk_mqtt_topic_matches against */
static size_t s_levels(const char *s, size_t n, size_t *off, size_t *len, size_t max)
{
    size_t k = 0, start = 0;
    for (size_t i = 0; i <= n && k < max; i++)
        if (i == n || s[i] == '/') {
            off[k] = start;
            len[k] = i - start;
            k++;
            start = i + 1;
        }
    return k;
}

static bool s_naive_match(const char *f, size_t fn, const char *t, size_t tn)
{
    /* inputs are at most 1000 bytes, so at most 1001 levels */
    static size_t fo[1024], fl[1024], to[1024], tl[1024];
    size_t nf = s_levels(f, fn, fo, fl, 1024), nt = s_levels(t, tn, to, tl, 1024);
    if (t[0] == '$' && (f[0] == '+' || f[0] == '#'))
        return false;
    for (size_t i = 0; i < nf; i++) {
        if (fl[i] == 1 && f[fo[i]] == '#')
            return true;
        if (i >= nt)
            return false;
        if (fl[i] == 1 && f[fo[i]] == '+')
            continue;
        if (fl[i] != tl[i] || memcmp(f + fo[i], t + to[i], fl[i]) != 0)
            return false;
    }
    return nf == nt;
}

static void s_topics(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    const char *nl = memchr(s, '\n', size);
    if (!nl || size > 1000)
        return;
    size_t fn = (size_t)(nl - s), tn = size - fn - 1;
    const char *f = s, *t = nl + 1;
    bool fv = lk_mqtt_filter_valid(f, fn, false);
    (void)lk_mqtt_filter_valid(f, fn, true);
    bool tv = lk_mqtt_topic_valid(t, tn);
    bool m = lk_mqtt_topic_matches(f, fn, t, tn);
    if (fv && tv)
        S_CHECK(m == s_naive_match(f, fn, t, tn));
    /* a valid topic name is a valid filter that matches itself */
    if (tv) {
        S_CHECK(lk_mqtt_filter_valid(t, tn, false));
        S_CHECK(lk_mqtt_topic_matches(t, tn, t, tn));
    }
    if (tv)
        S_CHECK(lk_mqtt_utf8_valid(t, tn));
}

static void s_props(const uint8_t *data, size_t size)
{
    if (size < 1)
        return;
    uint8_t ptype = data[0] % (LK_MQTT_WILL_PROPS + 1);
    lk_mqtt_props_t a, b;
    int rc = lk_mqtt_props_decode(data + 1, size - 1, ptype, &a);
    if (rc == 0) {
        lk_wbuf_t out;
        lk_wbuf_init(&out);
        lk_mqtt_props_encode(&out, &a, ~0ULL);
        S_CHECK(lk_mqtt_props_size(&a) == s_vbi_size(out.len) + out.len);
        S_CHECK(lk_mqtt_props_decode(out.data, out.len, ptype, &b) == 0);
        S_CHECK(s_props_eq(&a, &b));
        lk_mqtt_props_free(&b);
        lk_wbuf_free(&out);
    }
    lk_mqtt_props_free(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t versions[] = {LK_MQTT_V31, LK_MQTT_V311, LK_MQTT_V5};
    for (size_t v = 0; v < sizeof versions; v++)
        for (int server = 0; server < 2; server++) {
            const uint8_t *p = data;
            size_t left = size;
            for (int k = 0; k < 16 && left; k++) {
                size_t fl = 0, bl = 0;
                int fr = lk_mqtt_frame(p, left, 0, &fl, &bl);
                if (fr == 0 && left >= 2) {
                    /* a truncated packet must not decode */
                    lk_mqtt_packet_t pkt;
                    S_CHECK(lk_mqtt_decode(p, left, versions[v], server, &pkt) != 0);
                    lk_mqtt_packet_free(&pkt);
                }
                if (fr != 1)
                    break;
                S_CHECK(fl >= 2 && fl <= left && fl - bl >= 2 && fl - bl <= 5);
                /* a copy of exactly the frame, so ASan sees any read past its end */
                uint8_t *frame = malloc(fl);
                S_CHECK(frame != NULL);
                memcpy(frame, p, fl);
                s_round_trip(frame, fl, versions[v], server);
                free(frame);
                p += fl;
                left -= fl;
            }
        }
    s_props(data, size);
    s_topics(data, size);
    return 0;
}
