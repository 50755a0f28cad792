/*  lk_mqtt: the MQTT codec for 3.1 (MQIsdp), 3.1.1 and 5.0; the contract is lk_mqtt.h.

    Decoding is one forward pass over a complete frame through a bounds-checked reader;
    strings are views into the frame. Arrays that a packet may carry in any number are
    counted by a first pass and allocated once by a second, so a PUBLISH without user
    properties or subscription identifiers never touches the heap.

    Encoding runs the same body writer twice, first only counting, then writing, so the
    remaining length is known before the fixed header goes out and the two passes cannot
    disagree. Errors (a string over 65535 bytes, ...) are all found by the counting pass,
    which leaves the output buffer untouched.

    This file includes only standard headers and lk_mqtt.h: it is shared by the broker,
    the fuzzers and the CLI, and must not pull in the rest of common/.
*/
#include "lk_mqtt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_MAX_REMAINING 268435455u
#define S_BIT(id) (1ULL << (id))

/*  --------------------------------------------------------------------------
    Output buffer */

void lk_wbuf_init(lk_wbuf_t *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void lk_wbuf_free(lk_wbuf_t *b)
{
    free(b->data);
    lk_wbuf_init(b);
}

void lk_wbuf_reserve(lk_wbuf_t *b, size_t n)
{
    if (b->cap - b->len >= n)
        return;
    size_t need = b->len + n;
    if (need < b->len)
        abort();
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    uint8_t *data = realloc(b->data, cap);
    if (!data)
        abort();
    b->data = data;
    b->cap = cap;
}

void lk_wbuf_append(lk_wbuf_t *b, const void *data, size_t n)
{
    if (n == 0)
        return;
    lk_wbuf_reserve(b, n);
    memcpy(b->data + b->len, data, n);
    b->len += n;
}

void lk_wbuf_consume(lk_wbuf_t *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

/*  --------------------------------------------------------------------------
    UTF-8 and topics */

/* MQTT 1.5.4: well-formed per RFC 3629 (no overlongs, no surrogates, nothing above
   U+10FFFF). U+0000 is refused in strings [MQTT-1.5.4-2] but is well-formed UTF-8, so a
   payload with payload format indicator 1 may carry it. */
static bool s_utf8(const uint8_t *s, size_t n, bool allow_nul)
{
    size_t i = 0;
    while (i < n) {
        /* ASCII runs dominate topics and client ids: take them 8 bytes at a time */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ULL)
                break;
            if (!allow_nul && ((w - 0x0101010101010101ULL) & ~w & 0x8080808080808080ULL))
                return false;
            i += 8;
        }
        if (i >= n)
            break;
        uint8_t c = s[i];
        if (c < 0x80) {
            if (c == 0 && !allow_nul)
                return false;
            i++;
        } else if (c < 0xC2) /* stray continuation, or overlong 2-byte form */
            return false;
        else if (c < 0xE0) {
            if (n - i < 2 || (s[i + 1] & 0xC0) != 0x80)
                return false;
            i += 2;
        } else if (c < 0xF0) {
            if (n - i < 3)
                return false;
            uint8_t c1 = s[i + 1], c2 = s[i + 2];
            if ((c1 & 0xC0) != 0x80 || (c2 & 0xC0) != 0x80)
                return false;
            if (c == 0xE0 && c1 < 0xA0) /* overlong */
                return false;
            if (c == 0xED && c1 >= 0xA0) /* U+D800..U+DFFF */
                return false;
            i += 3;
        } else if (c < 0xF5) {
            if (n - i < 4)
                return false;
            uint8_t c1 = s[i + 1], c2 = s[i + 2], c3 = s[i + 3];
            if ((c1 & 0xC0) != 0x80 || (c2 & 0xC0) != 0x80 || (c3 & 0xC0) != 0x80)
                return false;
            if (c == 0xF0 && c1 < 0x90) /* overlong */
                return false;
            if (c == 0xF4 && c1 >= 0x90) /* above U+10FFFF */
                return false;
            i += 4;
        } else
            return false;
    }
    return true;
}

bool lk_mqtt_utf8_valid(const char *s, size_t len)
{
    return s_utf8((const uint8_t *)s, len, false);
}

/* on the PUBLISH hot path: 8 bytes at a time, testing for a zero byte in w ^ '+'... */
static bool s_has_wildcard(const char *s, size_t n)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w, a, b;
        memcpy(&w, s + i, 8);
        a = w ^ (ones * '+');
        b = w ^ (ones * '#');
        if (((a - ones) & ~a & highs) | ((b - ones) & ~b & highs))
            return true;
    }
    for (; i < n; i++)
        if (s[i] == '+' || s[i] == '#')
            return true;
    return false;
}

bool lk_mqtt_topic_valid(const char *topic, size_t len)
{
    return len >= 1 && len <= 65535 && !s_has_wildcard(topic, len) &&
           s_utf8((const uint8_t *)topic, len, false);
}

/* level rules only: '#' alone in the last level, '+' alone in its level */
static bool s_filter_levels_ok(const char *f, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (f[i] != '+' && f[i] != '#')
            continue;
        if (i > 0 && f[i - 1] != '/')
            return false;
        if (f[i] == '#') {
            if (i != n - 1)
                return false;
        } else if (i + 1 < n && f[i + 1] != '/')
            return false;
    }
    return true;
}

static bool s_is_shared(const char *f, size_t n)
{
    return n >= 7 && memcmp(f, "$share/", 7) == 0;
}

bool lk_mqtt_filter_valid(const char *filter, size_t len, bool share_ok)
{
    if (len == 0 || len > 65535 || !s_utf8((const uint8_t *)filter, len, false))
        return false;
    if (share_ok && s_is_shared(filter, len)) {
        /* $share/<group>/<filter>: group non-empty, no wildcards (and no '/' by
           construction); the filter part must be a valid, non-empty filter */
        const char *group = filter + 7;
        size_t rest = len - 7;
        const char *slash = memchr(group, '/', rest);
        if (!slash || slash == group || s_has_wildcard(group, (size_t)(slash - group)))
            return false;
        filter = slash + 1;
        len = rest - (size_t)(slash - group) - 1;
    }
    return s_filter_levels_ok(filter, len);
}

bool lk_mqtt_topic_matches(const char *f, size_t flen, const char *t, size_t tlen)
{
    /* [MQTT-4.7.2-1] "#", "+/..." never match "$SYS/..." and the like */
    if (tlen > 0 && t[0] == '$' && flen > 0 && (f[0] == '+' || f[0] == '#'))
        return false;
    size_t fi = 0, ti = 0;
    while (true) {
        /* here both fi and ti are at the start of a level */
        if (fi < flen && f[fi] == '#')
            return true;
        if (fi < flen && f[fi] == '+') {
            fi++;
            if (fi < flen && f[fi] != '/')
                return false;
            while (ti < tlen && t[ti] != '/')
                ti++;
        } else {
            while (fi < flen && ti < tlen && f[fi] != '/' && t[ti] != '/') {
                if (f[fi] != t[ti])
                    return false;
                fi++;
                ti++;
            }
            if ((fi < flen && f[fi] != '/') || (ti < tlen && t[ti] != '/'))
                return false;
        }
        if (fi == flen)
            return ti == tlen;
        if (ti == tlen) /* "sport/#" matches "sport" (4.7.1.2) */
            return flen - fi == 2 && f[fi + 1] == '#';
        fi++;
        ti++;
    }
}

const char *lk_mqtt_type_name(uint8_t type)
{
    static const char *names[16] = {"RESERVED",  "CONNECT",  "CONNACK",     "PUBLISH",
                                    "PUBACK",    "PUBREC",   "PUBREL",      "PUBCOMP",
                                    "SUBSCRIBE", "SUBACK",   "UNSUBSCRIBE", "UNSUBACK",
                                    "PINGREQ",   "PINGRESP", "DISCONNECT",  "AUTH"};
    return type < 16 ? names[type] : "UNKNOWN";
}

/*  --------------------------------------------------------------------------
    Property tables (MQTT 5, 2.2.2.2) */

enum { S_NONE, S_BYTE, S_U16, S_U32, S_VBI, S_STR, S_BIN, S_PAIR };

typedef struct {
    uint8_t kind;
    uint16_t off; /* of the field in lk_mqtt_props_t */
} s_prop_info_t;

#define S_P(id, kind, field) [id] = {kind, offsetof(lk_mqtt_props_t, field)}
static const s_prop_info_t s_prop_info[64] = {
    S_P(LK_PROP_PAYLOAD_FORMAT, S_BYTE, payload_format),
    S_P(LK_PROP_MESSAGE_EXPIRY, S_U32, message_expiry),
    S_P(LK_PROP_CONTENT_TYPE, S_STR, content_type),
    S_P(LK_PROP_RESPONSE_TOPIC, S_STR, response_topic),
    S_P(LK_PROP_CORRELATION_DATA, S_BIN, correlation_data),
    S_P(LK_PROP_SUBSCRIPTION_ID, S_VBI, sub_ids),
    S_P(LK_PROP_SESSION_EXPIRY, S_U32, session_expiry),
    S_P(LK_PROP_ASSIGNED_CLIENT_ID, S_STR, assigned_client_id),
    S_P(LK_PROP_SERVER_KEEP_ALIVE, S_U16, server_keep_alive),
    S_P(LK_PROP_AUTH_METHOD, S_STR, auth_method),
    S_P(LK_PROP_AUTH_DATA, S_BIN, auth_data),
    S_P(LK_PROP_REQUEST_PROBLEM_INFO, S_BYTE, request_problem_info),
    S_P(LK_PROP_WILL_DELAY, S_U32, will_delay),
    S_P(LK_PROP_REQUEST_RESPONSE_INFO, S_BYTE, request_response_info),
    S_P(LK_PROP_RESPONSE_INFO, S_STR, response_info),
    S_P(LK_PROP_SERVER_REFERENCE, S_STR, server_reference),
    S_P(LK_PROP_REASON_STRING, S_STR, reason_string),
    S_P(LK_PROP_RECEIVE_MAXIMUM, S_U16, receive_maximum),
    S_P(LK_PROP_TOPIC_ALIAS_MAXIMUM, S_U16, topic_alias_maximum),
    S_P(LK_PROP_TOPIC_ALIAS, S_U16, topic_alias),
    S_P(LK_PROP_MAXIMUM_QOS, S_BYTE, maximum_qos),
    S_P(LK_PROP_RETAIN_AVAILABLE, S_BYTE, retain_available),
    S_P(LK_PROP_USER_PROPERTY, S_PAIR, user_props),
    S_P(LK_PROP_MAXIMUM_PACKET_SIZE, S_U32, maximum_packet_size),
    S_P(LK_PROP_WILDCARD_SUB_AVAILABLE, S_BYTE, wildcard_sub_available),
    S_P(LK_PROP_SUB_ID_AVAILABLE, S_BYTE, sub_id_available),
    S_P(LK_PROP_SHARED_SUB_AVAILABLE, S_BYTE, shared_sub_available),
};

#define S_B(name) S_BIT(LK_PROP_##name)
#define S_ACK_PROPS (S_B(REASON_STRING) | S_B(USER_PROPERTY))
#define S_WILL_PROPS                                                                               \
    (S_B(WILL_DELAY) | S_B(PAYLOAD_FORMAT) | S_B(MESSAGE_EXPIRY) | S_B(CONTENT_TYPE) |             \
     S_B(RESPONSE_TOPIC) | S_B(CORRELATION_DATA) | S_B(USER_PROPERTY))

/* which property ids each packet type may carry, indexed by packet type */
static const uint64_t s_allowed[LK_MQTT_WILL_PROPS + 1] = {
    [LK_MQTT_CONNECT] = S_B(SESSION_EXPIRY) | S_B(RECEIVE_MAXIMUM) | S_B(MAXIMUM_PACKET_SIZE) |
                        S_B(TOPIC_ALIAS_MAXIMUM) | S_B(REQUEST_RESPONSE_INFO) |
                        S_B(REQUEST_PROBLEM_INFO) | S_B(USER_PROPERTY) | S_B(AUTH_METHOD) |
                        S_B(AUTH_DATA),
    [LK_MQTT_CONNACK] = S_B(SESSION_EXPIRY) | S_B(RECEIVE_MAXIMUM) | S_B(MAXIMUM_QOS) |
                        S_B(RETAIN_AVAILABLE) | S_B(MAXIMUM_PACKET_SIZE) | S_B(ASSIGNED_CLIENT_ID) |
                        S_B(TOPIC_ALIAS_MAXIMUM) | S_B(REASON_STRING) | S_B(USER_PROPERTY) |
                        S_B(WILDCARD_SUB_AVAILABLE) | S_B(SUB_ID_AVAILABLE) |
                        S_B(SHARED_SUB_AVAILABLE) | S_B(SERVER_KEEP_ALIVE) | S_B(RESPONSE_INFO) |
                        S_B(SERVER_REFERENCE) | S_B(AUTH_METHOD) | S_B(AUTH_DATA),
    [LK_MQTT_PUBLISH] = S_B(PAYLOAD_FORMAT) | S_B(MESSAGE_EXPIRY) | S_B(TOPIC_ALIAS) |
                        S_B(RESPONSE_TOPIC) | S_B(CORRELATION_DATA) | S_B(USER_PROPERTY) |
                        S_B(SUBSCRIPTION_ID) | S_B(CONTENT_TYPE),
    [LK_MQTT_PUBACK] = S_ACK_PROPS,
    [LK_MQTT_PUBREC] = S_ACK_PROPS,
    [LK_MQTT_PUBREL] = S_ACK_PROPS,
    [LK_MQTT_PUBCOMP] = S_ACK_PROPS,
    [LK_MQTT_SUBSCRIBE] = S_B(SUBSCRIPTION_ID) | S_B(USER_PROPERTY),
    [LK_MQTT_SUBACK] = S_ACK_PROPS,
    [LK_MQTT_UNSUBSCRIBE] = S_B(USER_PROPERTY),
    [LK_MQTT_UNSUBACK] = S_ACK_PROPS,
    [LK_MQTT_DISCONNECT] =
        S_B(SESSION_EXPIRY) | S_B(REASON_STRING) | S_B(USER_PROPERTY) | S_B(SERVER_REFERENCE),
    [LK_MQTT_AUTH] = S_B(AUTH_METHOD) | S_B(AUTH_DATA) | S_B(REASON_STRING) | S_B(USER_PROPERTY),
    [LK_MQTT_WILL_PROPS] = S_WILL_PROPS,
};

static uint64_t s_allowed_for(uint8_t ptype)
{
    if (ptype == 0) {
        uint64_t all = 0;
        for (int t = 1; t <= LK_MQTT_WILL_PROPS; t++)
            all |= s_allowed[t];
        return all;
    }
    return ptype <= LK_MQTT_WILL_PROPS ? s_allowed[ptype] : 0;
}

/* reason codes each v5 packet may carry (3.x CONNACK and SUBACK are checked apart) */
static const uint8_t s_rc_connack[] = {0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86,
                                       0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
                                       0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F};
static const uint8_t s_rc_puback[] = {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99};
static const uint8_t s_rc_pubrel[] = {0x00, 0x92};
static const uint8_t s_rc_suback[] = {0x00, 0x01, 0x02, 0x80, 0x83, 0x87,
                                      0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2};
static const uint8_t s_rc_unsuback[] = {0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91};
static const uint8_t s_rc_disconnect[] = {
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94,
    0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2};
static const uint8_t s_rc_auth[] = {0x00, 0x18, 0x19};

#define S_RC_OK(code, list) (memchr((list), (code), sizeof(list)) != NULL)

/*  --------------------------------------------------------------------------
    Reader */

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} s_rd_t;

static inline size_t s_left(const s_rd_t *r)
{
    return (size_t)(r->end - r->p);
}

static inline bool s_rd_u8(s_rd_t *r, uint8_t *v)
{
    if (r->p >= r->end)
        return false;
    *v = *r->p++;
    return true;
}

static inline bool s_rd_u16(s_rd_t *r, uint16_t *v)
{
    if (s_left(r) < 2)
        return false;
    *v = (uint16_t)(r->p[0] << 8 | r->p[1]);
    r->p += 2;
    return true;
}

static inline bool s_rd_u32(s_rd_t *r, uint32_t *v)
{
    if (s_left(r) < 4)
        return false;
    *v = (uint32_t)r->p[0] << 24 | (uint32_t)r->p[1] << 16 | (uint32_t)r->p[2] << 8 | r->p[3];
    r->p += 4;
    return true;
}

/* variable byte integer: at most 4 bytes; non-minimal forms are tolerated */
static inline bool s_rd_vbi(s_rd_t *r, uint32_t *v)
{
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t b;
        if (!s_rd_u8(r, &b))
            return false;
        x |= (uint32_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) {
            *v = x;
            return true;
        }
    }
    return false;
}

static inline bool s_rd_bin(s_rd_t *r, lk_str_t *s)
{
    uint16_t n;
    if (!s_rd_u16(r, &n) || s_left(r) < n)
        return false;
    s->p = (const char *)r->p;
    s->len = n;
    r->p += n;
    return true;
}

/* a UTF-8 string: length-prefixed, well-formed, no U+0000 [MQTT-1.5.4-1/2] */
static inline bool s_rd_str(s_rd_t *r, lk_str_t *s)
{
    return s_rd_bin(r, s) && s_utf8((const uint8_t *)s->p, s->len, false);
}

/*  --------------------------------------------------------------------------
    Property decoding */

/* One pass over a property block. With the arrays NULL it validates and counts user
   properties and subscription ids; with them allocated it fills them too. */
static int s_props_scan(const uint8_t *data, size_t len, uint64_t allowed, lk_mqtt_props_t *pr)
{
    /* an empty block may come as NULL: NULL + 0 is undefined behaviour in C */
    s_rd_t r = {data, len ? data + len : data};
    uint64_t has = 0;
    uint32_t nuser = 0, nsub = 0;
    while (r.p < r.end) {
        uint32_t id;
        if (!s_rd_vbi(&r, &id))
            return LK_RC_MALFORMED;
        /* an id not valid for the packet type makes it malformed (2.2.2.2) */
        if (id >= 64 || !((allowed >> id) & 1))
            return LK_RC_MALFORMED;
        if (((has >> id) & 1) && id != LK_PROP_USER_PROPERTY && id != LK_PROP_SUBSCRIPTION_ID)
            return LK_RC_PROTOCOL_ERROR;
        has |= S_BIT(id);
        const s_prop_info_t *pi = &s_prop_info[id];
        char *field = (char *)pr + pi->off;
        switch (pi->kind) {
        case S_BYTE: {
            uint8_t v;
            if (!s_rd_u8(&r, &v))
                return LK_RC_MALFORMED;
            /* every byte property of MQTT 5 is a 0/1 switch; another value is a
               protocol error (3.1.2.11.6, 3.1.2.11.7, 3.2.2.3.4, ...) */
            if (v > 1)
                return LK_RC_PROTOCOL_ERROR;
            *(uint8_t *)field = v;
            break;
        }
        case S_U16: {
            uint16_t v;
            if (!s_rd_u16(&r, &v))
                return LK_RC_MALFORMED;
            if (v == 0 && (id == LK_PROP_RECEIVE_MAXIMUM || id == LK_PROP_TOPIC_ALIAS))
                return LK_RC_PROTOCOL_ERROR;
            *(uint16_t *)field = v;
            break;
        }
        case S_U32: {
            uint32_t v;
            if (!s_rd_u32(&r, &v))
                return LK_RC_MALFORMED;
            if (v == 0 && id == LK_PROP_MAXIMUM_PACKET_SIZE)
                return LK_RC_PROTOCOL_ERROR;
            *(uint32_t *)field = v;
            break;
        }
        case S_VBI: {
            uint32_t v;
            if (!s_rd_vbi(&r, &v))
                return LK_RC_MALFORMED;
            if (v == 0)
                return LK_RC_PROTOCOL_ERROR;
            if (pr->sub_ids)
                pr->sub_ids[nsub] = v;
            nsub++;
            break;
        }
        case S_STR: {
            lk_str_t s;
            if (!s_rd_str(&r, &s))
                return LK_RC_MALFORMED;
            /* [MQTT-3.3.2-14] the response topic is a topic name */
            if (id == LK_PROP_RESPONSE_TOPIC && (s.len == 0 || s_has_wildcard(s.p, s.len)))
                return LK_RC_PROTOCOL_ERROR;
            *(lk_str_t *)field = s;
            break;
        }
        case S_BIN: {
            lk_str_t s;
            if (!s_rd_bin(&r, &s))
                return LK_RC_MALFORMED;
            *(lk_str_t *)field = s;
            break;
        }
        case S_PAIR: {
            lk_mqtt_user_prop_t up;
            if (!s_rd_str(&r, &up.key) || !s_rd_str(&r, &up.value))
                return LK_RC_MALFORMED;
            if (pr->user_props)
                pr->user_props[nuser] = up;
            nuser++;
            break;
        }
        default:
            return LK_RC_MALFORMED;
        }
    }
    /* authentication data without a method (3.1.2.11.10, 3.2.2.3.18, 3.15.2.2.3) */
    if ((has & S_B(AUTH_DATA)) && !(has & S_B(AUTH_METHOD)))
        return LK_RC_PROTOCOL_ERROR;
    pr->has = has;
    pr->user_prop_count = nuser;
    pr->sub_id_count = nsub;
    return 0;
}

static void s_track(lk_mqtt_packet_t *pkt, void *p)
{
    for (size_t i = 0; i < sizeof pkt->alloc_ / sizeof pkt->alloc_[0]; i++)
        if (!pkt->alloc_[i]) {
            pkt->alloc_[i] = p;
            return;
        }
    abort(); /* no packet has more than 4 arrays: a bug here, not bad input */
}

static void *s_alloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p)
        abort();
    return p;
}

/* Decodes a property block's contents. With pkt, arrays are tracked in pkt->alloc_;
   without, the props own them (lk_mqtt_props_free). */
static int s_props_parse(const uint8_t *data, size_t len, uint64_t allowed, lk_mqtt_props_t *pr,
                         lk_mqtt_packet_t *pkt)
{
    pr->raw.p = (const char *)data;
    pr->raw.len = (uint32_t)len;
    int rc = s_props_scan(data, len, allowed, pr);
    /* SUBSCRIBE carries at most one subscription identifier (3.8.2.1.2) */
    if (rc == 0 && pr->sub_id_count > 1 && allowed == s_allowed[LK_MQTT_SUBSCRIBE])
        rc = LK_RC_PROTOCOL_ERROR;
    if (rc || (pr->user_prop_count == 0 && pr->sub_id_count == 0))
        return rc;
    if (pr->user_prop_count) {
        pr->user_props = s_alloc(pr->user_prop_count, sizeof *pr->user_props);
        if (pkt)
            s_track(pkt, pr->user_props);
    }
    if (pr->sub_id_count) {
        pr->sub_ids = s_alloc(pr->sub_id_count, sizeof *pr->sub_ids);
        if (pkt)
            s_track(pkt, pr->sub_ids);
    }
    return s_props_scan(data, len, allowed, pr);
}

/* a property block in a packet: length, then contents */
static int s_rd_props(s_rd_t *r, uint8_t ptype, lk_mqtt_props_t *pr, lk_mqtt_packet_t *pkt)
{
    uint32_t n;
    if (!s_rd_vbi(r, &n) || n > s_left(r))
        return LK_RC_MALFORMED;
    const uint8_t *data = r->p;
    r->p += n;
    return s_props_parse(data, n, s_allowed[ptype], pr, pkt);
}

int lk_mqtt_props_decode(const uint8_t *data, size_t len, uint8_t ptype, lk_mqtt_props_t *props)
{
    memset(props, 0, sizeof *props);
    if (len > S_MAX_REMAINING)
        return LK_RC_MALFORMED;
    return s_props_parse(data, len, s_allowed_for(ptype), props, NULL);
}

void lk_mqtt_props_free(lk_mqtt_props_t *props)
{
    free(props->user_props);
    free(props->sub_ids);
    props->user_props = NULL;
    props->sub_ids = NULL;
    props->user_prop_count = 0;
    props->sub_id_count = 0;
}

/*  --------------------------------------------------------------------------
    Framing */

int lk_mqtt_frame(const uint8_t *buf, size_t len, size_t max_packet, size_t *frame_len,
                  size_t *body_len)
{
    uint32_t rl = 0;
    size_t i = 1;
    for (;; i++) {
        if (i > 4) /* a fifth length byte */
            return -1;
        if (i >= len)
            return 0;
        rl |= (uint32_t)(buf[i] & 0x7F) << (7 * (i - 1));
        if (!(buf[i] & 0x80))
            break;
    }
    size_t total = i + 1 + rl;
    if (body_len)
        *body_len = rl;
    if (frame_len)
        *frame_len = total;
    if (max_packet && total > max_packet)
        return -2;
    return len >= total ? 1 : 0;
}

/*  --------------------------------------------------------------------------
    Decoding */

static int s_dec_connect(s_rd_t *r, lk_mqtt_packet_t *pkt)
{
    lk_mqtt_connect_t *c = &pkt->u.connect;
    if (!s_rd_bin(r, &c->protocol_name) || !s_rd_u8(r, &c->version))
        return LK_RC_MALFORMED;
    bool mqisdp = c->protocol_name.len == 6 && memcmp(c->protocol_name.p, "MQIsdp", 6) == 0;
    bool mqtt = c->protocol_name.len == 4 && memcmp(c->protocol_name.p, "MQTT", 4) == 0;
    /* [MQTT-3.1.2-1/2] the name must go with the level */
    if (!(mqisdp && c->version == LK_MQTT_V31) &&
        !(mqtt && (c->version == LK_MQTT_V311 || c->version == LK_MQTT_V5)))
        return LK_RC_UNSUPPORTED_VERSION;
    bool v5 = c->version == LK_MQTT_V5;

    uint8_t f;
    if (!s_rd_u8(r, &f) || !s_rd_u16(r, &c->keepalive))
        return LK_RC_MALFORMED;
    if (f & 0x01) /* [MQTT-3.1.2-3] */
        return LK_RC_MALFORMED;
    c->clean = f & 0x02;
    c->will = f & 0x04;
    c->will_qos = (f >> 3) & 3;
    c->will_retain = f & 0x20;
    c->has_password = f & 0x40;
    c->has_username = f & 0x80;
    if (c->will_qos == 3) /* [MQTT-3.1.2-14] */
        return LK_RC_MALFORMED;
    if (!c->will && (c->will_qos || c->will_retain)) /* [MQTT-3.1.2-11/13/15] */
        return LK_RC_MALFORMED;
    if (c->version == LK_MQTT_V311 && c->has_password && !c->has_username) /* [MQTT-3.1.2-22] */
        return LK_RC_PROTOCOL_ERROR;

    int rc;
    if (v5 && (rc = s_rd_props(r, LK_MQTT_CONNECT, &pkt->props, pkt)))
        return rc;
    if (!s_rd_str(r, &c->client_id))
        return LK_RC_MALFORMED;
    int deferred = 0;
    if (c->will) {
        if (v5 && (rc = s_rd_props(r, LK_MQTT_WILL_PROPS, &c->will_props, pkt)))
            return rc;
        if (!s_rd_str(r, &c->will_topic) || !s_rd_bin(r, &c->will_payload))
            return LK_RC_MALFORMED;
        if (c->will_topic.len == 0 || s_has_wildcard(c->will_topic.p, c->will_topic.len))
            deferred = LK_RC_TOPIC_NAME_INVALID;
        else if (v5 && LK_PROP_HAS(&c->will_props, LK_PROP_PAYLOAD_FORMAT) &&
                 c->will_props.payload_format == 1 &&
                 !s_utf8((const uint8_t *)c->will_payload.p, c->will_payload.len, true))
            deferred = LK_RC_PAYLOAD_FORMAT_INVALID;
    }
    /* 3.1 clients in the wild set the flags and leave the fields out: drop the flags */
    if (c->version == LK_MQTT_V31 && s_left(r) == 0)
        c->has_username = c->has_password = false;
    if (c->has_username && !s_rd_str(r, &c->username)) /* [MQTT-3.1.2-19] */
        return LK_RC_MALFORMED;
    if (c->version == LK_MQTT_V31 && s_left(r) == 0)
        c->has_password = false;
    if (c->has_password && !s_rd_bin(r, &c->password)) /* [MQTT-3.1.2-21] */
        return LK_RC_MALFORMED;
    if (s_left(r))
        return LK_RC_MALFORMED;
    return deferred;
}

static int s_dec_connack(s_rd_t *r, uint8_t version, lk_mqtt_packet_t *pkt)
{
    lk_mqtt_connack_t *c = &pkt->u.connack;
    uint8_t f;
    if (!s_rd_u8(r, &f) || !s_rd_u8(r, &c->code))
        return LK_RC_MALFORMED;
    if (version != LK_MQTT_V31) { /* 3.1 has no flags: the byte is unused */
        if (f & 0xFE)             /* [MQTT-3.2.2-1] */
            return LK_RC_MALFORMED;
        c->session_present = f & 1;
    }
    if (version == LK_MQTT_V5) {
        int rc = s_rd_props(r, LK_MQTT_CONNACK, &pkt->props, pkt);
        if (rc)
            return rc;
        if (!S_RC_OK(c->code, s_rc_connack))
            return LK_RC_PROTOCOL_ERROR;
    } else if (c->code > LK_CONNACK_NOT_AUTHORIZED)
        return LK_RC_PROTOCOL_ERROR;
    if (s_left(r))
        return LK_RC_MALFORMED;
    if (c->session_present && c->code) /* [MQTT-3.2.2-4] (3.1.1), [MQTT-3.2.2-6] (5) */
        return LK_RC_PROTOCOL_ERROR;
    return 0;
}

static int s_dec_publish(s_rd_t *r, uint8_t flags, bool v5, bool server, lk_mqtt_packet_t *pkt)
{
    lk_mqtt_publish_t *m = &pkt->u.publish;
    m->dup = flags & 0x08;
    m->qos = (flags >> 1) & 3;
    m->retain = flags & 0x01;
    if (m->qos == 3) /* [MQTT-3.3.1-4] */
        return LK_RC_MALFORMED;
    if (m->dup && m->qos == 0) /* [MQTT-3.3.1-2] */
        return LK_RC_MALFORMED;
    if (!s_rd_str(r, &m->topic))
        return LK_RC_MALFORMED;
    /* a bad topic name is reported after the whole packet is read, so that the packet id
       is there for a PUBACK 0x90 */
    int deferred = 0;
    if (m->topic.len == 0) {
        if (!v5) /* [MQTT-4.7.3-1]; v5: allowed with a topic alias, which the caller checks */
            return LK_RC_PROTOCOL_ERROR;
    } else if (s_has_wildcard(m->topic.p, m->topic.len)) /* [MQTT-3.3.2-2] */
        deferred = LK_RC_TOPIC_NAME_INVALID;
    if (m->qos) {
        if (!s_rd_u16(r, &m->packet_id))
            return LK_RC_MALFORMED;
        if (m->packet_id == 0) /* [MQTT-2.2.1-3] */
            return LK_RC_PROTOCOL_ERROR;
    }
    if (v5) {
        int rc = s_rd_props(r, LK_MQTT_PUBLISH, &pkt->props, pkt);
        if (rc)
            return rc;
        if (server && pkt->props.sub_id_count) /* [MQTT-3.3.4-6] */
            return LK_RC_PROTOCOL_ERROR;
    }
    m->payload.p = (const char *)r->p;
    m->payload.len = (uint32_t)s_left(r);
    if (!deferred && v5 && LK_PROP_HAS(&pkt->props, LK_PROP_PAYLOAD_FORMAT) &&
        pkt->props.payload_format == 1 &&
        !s_utf8((const uint8_t *)m->payload.p, m->payload.len, true))
        deferred = LK_RC_PAYLOAD_FORMAT_INVALID;
    return deferred;
}

/* PUBACK, PUBREC, PUBREL, PUBCOMP */
static int s_dec_ack(s_rd_t *r, uint8_t type, bool v5, lk_mqtt_packet_t *pkt)
{
    lk_mqtt_ack_t *a = &pkt->u.ack;
    if (!s_rd_u16(r, &a->packet_id))
        return LK_RC_MALFORMED;
    /* v5: remaining length 2 means reason 0 and no properties; below 4, no properties */
    if (v5 && s_left(r)) {
        if (!s_rd_u8(r, &a->reason))
            return LK_RC_MALFORMED;
        if (s_left(r)) {
            int rc = s_rd_props(r, type, &pkt->props, pkt);
            if (rc)
                return rc;
        }
    }
    if (s_left(r))
        return LK_RC_MALFORMED;
    if (a->packet_id == 0) /* [MQTT-2.2.1-3] */
        return LK_RC_PROTOCOL_ERROR;
    if (v5 && !(type == LK_MQTT_PUBACK || type == LK_MQTT_PUBREC ? S_RC_OK(a->reason, s_rc_puback)
                                                                 : S_RC_OK(a->reason, s_rc_pubrel)))
        return LK_RC_PROTOCOL_ERROR;
    return 0;
}

static int s_sub_options(uint8_t o, bool v5, lk_str_t filter, lk_mqtt_sub_entry_t *e)
{
    e->topic_filter = filter;
    e->qos = o & 3;
    if (e->qos == 3)
        return LK_RC_MALFORMED;
    if (!v5)
        /* [MQTT-3-8.3-4] (3.1.1) the upper 6 bits of the requested QoS are reserved */
        return (o & 0xFC) ? LK_RC_MALFORMED : 0;
    if (o & 0xC0) /* [MQTT-3.8.3-5] */
        return LK_RC_MALFORMED;
    e->no_local = o & 0x04;
    e->retain_as_published = o & 0x08;
    e->retain_handling = (o >> 4) & 3;
    if (e->retain_handling == 3) /* 3.8.3.1 */
        return LK_RC_PROTOCOL_ERROR;
    if (e->no_local && s_is_shared(filter.p, filter.len)) /* [MQTT-3.8.3-4] */
        return LK_RC_PROTOCOL_ERROR;
    return 0;
}

/* Filters are checked as UTF-8 only: whether each is a valid filter is for the caller
   (lk_mqtt_filter_valid), because v5 refuses a bad filter per entry (0x8F). */
static int s_dec_subscribe(s_rd_t *r, bool v5, lk_mqtt_packet_t *pkt)
{
    lk_mqtt_subscribe_t *s = &pkt->u.subscribe;
    int rc;
    if (!s_rd_u16(r, &s->packet_id))
        return LK_RC_MALFORMED;
    if (s->packet_id == 0) /* [MQTT-2.2.1-3] */
        return LK_RC_PROTOCOL_ERROR;
    if (v5 && (rc = s_rd_props(r, LK_MQTT_SUBSCRIBE, &pkt->props, pkt)))
        return rc;
    s_rd_t start = *r;
    uint32_t n = 0;
    while (s_left(r)) {
        lk_str_t f;
        uint8_t o;
        lk_mqtt_sub_entry_t e;
        if (!s_rd_str(r, &f) || !s_rd_u8(r, &o))
            return LK_RC_MALFORMED;
        if ((rc = s_sub_options(o, v5, f, &e)))
            return rc;
        n++;
    }
    if (n == 0) /* [MQTT-3.8.3-3] */
        return LK_RC_PROTOCOL_ERROR;
    s->entries = s_alloc(n, sizeof *s->entries);
    s_track(pkt, s->entries);
    s->count = n;
    *r = start;
    for (uint32_t i = 0; i < n; i++) {
        lk_str_t f;
        uint8_t o;
        if (!s_rd_str(r, &f) || !s_rd_u8(r, &o) || s_sub_options(o, v5, f, &s->entries[i]))
            return LK_RC_MALFORMED; /* cannot happen: the first pass accepted it */
    }
    return 0;
}

static int s_dec_unsubscribe(s_rd_t *r, bool v5, lk_mqtt_packet_t *pkt)
{
    lk_mqtt_unsubscribe_t *u = &pkt->u.unsubscribe;
    int rc;
    if (!s_rd_u16(r, &u->packet_id))
        return LK_RC_MALFORMED;
    if (u->packet_id == 0) /* [MQTT-2.2.1-3] */
        return LK_RC_PROTOCOL_ERROR;
    if (v5 && (rc = s_rd_props(r, LK_MQTT_UNSUBSCRIBE, &pkt->props, pkt)))
        return rc;
    s_rd_t start = *r;
    uint32_t n = 0;
    while (s_left(r)) {
        lk_str_t f;
        if (!s_rd_str(r, &f))
            return LK_RC_MALFORMED;
        n++;
    }
    if (n == 0) /* [MQTT-3.10.3-2] */
        return LK_RC_PROTOCOL_ERROR;
    u->filters = s_alloc(n, sizeof *u->filters);
    s_track(pkt, u->filters);
    u->count = n;
    *r = start;
    for (uint32_t i = 0; i < n; i++)
        if (!s_rd_str(r, &u->filters[i]))
            return LK_RC_MALFORMED;
    return 0;
}

/* SUBACK, UNSUBACK */
static int s_dec_suback(s_rd_t *r, uint8_t type, uint8_t version, lk_mqtt_packet_t *pkt)
{
    lk_mqtt_suback_t *s = &pkt->u.suback;
    bool v5 = version == LK_MQTT_V5;
    int rc;
    if (!s_rd_u16(r, &s->packet_id))
        return LK_RC_MALFORMED;
    if (v5 && (rc = s_rd_props(r, type, &pkt->props, pkt)))
        return rc;
    if (type == LK_MQTT_UNSUBACK && !v5) {
        if (s_left(r)) /* 3.x UNSUBACK has no payload */
            return LK_RC_MALFORMED;
    } else {
        size_t n = s_left(r);
        if (n == 0) /* one code per filter, and there is at least one filter */
            return LK_RC_PROTOCOL_ERROR;
        for (size_t i = 0; i < n; i++) {
            uint8_t c = r->p[i];
            bool ok = !v5                      ? (c <= 2 || c == 0x80)
                      : type == LK_MQTT_SUBACK ? S_RC_OK(c, s_rc_suback)
                                               : S_RC_OK(c, s_rc_unsuback);
            if (!ok)
                return LK_RC_PROTOCOL_ERROR;
        }
        s->codes = s_alloc(n, 1);
        s_track(pkt, s->codes);
        memcpy(s->codes, r->p, n);
        s->count = (uint32_t)n;
        r->p += n;
    }
    if (s->packet_id == 0) /* [MQTT-2.2.1-3] */
        return LK_RC_PROTOCOL_ERROR;
    return 0;
}

/* DISCONNECT, AUTH (v5): remaining length 0 means reason 0; below 2, no properties */
static int s_dec_reason(s_rd_t *r, uint8_t type, bool v5, bool server, lk_mqtt_packet_t *pkt)
{
    uint8_t *reason = &pkt->u.reason.reason;
    if (v5 && s_left(r)) {
        if (!s_rd_u8(r, reason))
            return LK_RC_MALFORMED;
        if (s_left(r)) {
            int rc = s_rd_props(r, type, &pkt->props, pkt);
            if (rc)
                return rc;
        }
    }
    if (s_left(r))
        return LK_RC_MALFORMED;
    if (type == LK_MQTT_AUTH)
        return S_RC_OK(*reason, s_rc_auth) ? 0 : LK_RC_PROTOCOL_ERROR;
    if (!S_RC_OK(*reason, s_rc_disconnect))
        return LK_RC_PROTOCOL_ERROR;
    /* [MQTT-3.14.2-2] a server never sends a session expiry in DISCONNECT */
    if (!server && LK_PROP_HAS(&pkt->props, LK_PROP_SESSION_EXPIRY))
        return LK_RC_PROTOCOL_ERROR;
    return 0;
}

/* is this type legal in this direction and version? */
static bool s_type_legal(uint8_t type, bool v5, bool server)
{
    switch (type) {
    case LK_MQTT_CONNECT:
    case LK_MQTT_SUBSCRIBE:
    case LK_MQTT_UNSUBSCRIBE:
    case LK_MQTT_PINGREQ:
        return server;
    case LK_MQTT_CONNACK:
    case LK_MQTT_SUBACK:
    case LK_MQTT_UNSUBACK:
    case LK_MQTT_PINGRESP:
        return !server;
    case LK_MQTT_DISCONNECT: /* 3.x brokers just close */
        return server || v5;
    case LK_MQTT_AUTH:
        return v5;
    default:
        return true;
    }
}

int lk_mqtt_decode(const uint8_t *frame, size_t len, uint8_t version, bool server,
                   lk_mqtt_packet_t *pkt)
{
    /* Zeroing the whole 660-byte struct cost more than the rest of a small PUBLISH
       decode: zero the header, properties and publish part, the rest only for other
       types. The empty asm hides the constant size so that the compiler calls libc's
       vectorised memset instead of inlining `rep stos`, slow to start on current CPUs. */
    size_t head = offsetof(lk_mqtt_packet_t, u) + sizeof pkt->u.publish;
    __asm__("" : "+r"(head));
    memset(pkt, 0, head);
    memset(pkt->alloc_, 0, sizeof pkt->alloc_);
    if (len < 2)
        return LK_RC_MALFORMED;
    if (frame[0] >> 4 != LK_MQTT_PUBLISH)
        memset(&pkt->u, 0, sizeof pkt->u);
    pkt->type = frame[0] >> 4;
    pkt->flags = frame[0] & 0x0F;
    s_rd_t r = {frame + 1, frame + len};
    uint32_t rl;
    if (!s_rd_vbi(&r, &rl) || rl != s_left(&r))
        return LK_RC_MALFORMED;
    uint8_t type = pkt->type;
    bool v5 = version == LK_MQTT_V5;
    if (type == 0)
        return LK_RC_MALFORMED;

    /* [MQTT-2.2.2-1/2] reserved flags; 3.1 retries PUBREL, SUBSCRIBE and UNSUBSCRIBE with
       DUP set, which 3.1 allowed */
    if (type == LK_MQTT_PUBREL || type == LK_MQTT_SUBSCRIBE || type == LK_MQTT_UNSUBSCRIBE) {
        uint8_t f = version == LK_MQTT_V31 ? (pkt->flags & 0x07) : pkt->flags;
        if (f != 0x02)
            return LK_RC_MALFORMED;
    } else if (type != LK_MQTT_PUBLISH && pkt->flags)
        return LK_RC_MALFORMED;

    if (!s_type_legal(type, v5, server))
        return LK_RC_PROTOCOL_ERROR;

    switch (type) {
    case LK_MQTT_CONNECT:
        return s_dec_connect(&r, pkt);
    case LK_MQTT_CONNACK:
        return s_dec_connack(&r, version, pkt);
    case LK_MQTT_PUBLISH:
        return s_dec_publish(&r, pkt->flags, v5, server, pkt);
    case LK_MQTT_PUBACK:
    case LK_MQTT_PUBREC:
    case LK_MQTT_PUBREL:
    case LK_MQTT_PUBCOMP:
        return s_dec_ack(&r, type, v5, pkt);
    case LK_MQTT_SUBSCRIBE:
        return s_dec_subscribe(&r, v5, pkt);
    case LK_MQTT_UNSUBSCRIBE:
        return s_dec_unsubscribe(&r, v5, pkt);
    case LK_MQTT_SUBACK:
    case LK_MQTT_UNSUBACK:
        return s_dec_suback(&r, type, version, pkt);
    case LK_MQTT_PINGREQ:
    case LK_MQTT_PINGRESP:
        return s_left(&r) ? LK_RC_MALFORMED : 0;
    default: /* DISCONNECT, AUTH */
        return s_dec_reason(&r, type, v5, server, pkt);
    }
}

void lk_mqtt_packet_free(lk_mqtt_packet_t *pkt)
{
    if (!pkt)
        return;
    for (size_t i = 0; i < sizeof pkt->alloc_ / sizeof pkt->alloc_[0]; i++)
        if (pkt->alloc_[i]) {
            free(pkt->alloc_[i]);
            pkt->alloc_[i] = NULL;
        }
}

/*  --------------------------------------------------------------------------
    Writer: with p NULL it only counts */

typedef struct {
    uint8_t *p;
    size_t n;
    bool bad; /* something could not be encoded */
} s_wr_t;

static inline void s_put(s_wr_t *w, const void *data, size_t n)
{
    if (w->p && n)
        memcpy(w->p + w->n, data, n);
    w->n += n;
}

static inline void s_put8(s_wr_t *w, uint8_t v)
{
    if (w->p)
        w->p[w->n] = v;
    w->n++;
}

static inline void s_put16(s_wr_t *w, uint16_t v)
{
    uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    s_put(w, b, 2);
}

static inline void s_put32(s_wr_t *w, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    s_put(w, b, 4);
}

static size_t s_vbi_size(size_t v)
{
    return v < 128 ? 1 : v < 16384 ? 2 : v < 2097152 ? 3 : 4;
}

static void s_put_vbi(s_wr_t *w, size_t v)
{
    if (v > S_MAX_REMAINING) {
        w->bad = true;
        v = S_MAX_REMAINING;
    }
    do {
        uint8_t b = v & 0x7F;
        v >>= 7;
        s_put8(w, v ? b | 0x80 : b);
    } while (v);
}

static void s_put_bin(s_wr_t *w, lk_str_t s)
{
    if (s.len > 65535) {
        w->bad = true;
        s.len = 0;
    }
    s_put16(w, (uint16_t)s.len);
    s_put(w, s.p, s.len);
}

/* properties the struct holds: `has`, plus the arrays when they have entries */
static uint64_t s_props_present(const lk_mqtt_props_t *pr)
{
    uint64_t has = pr->has & ~(S_B(USER_PROPERTY) | S_B(SUBSCRIPTION_ID));
    if (pr->user_prop_count)
        has |= S_B(USER_PROPERTY);
    if (pr->sub_id_count)
        has |= S_B(SUBSCRIPTION_ID);
    return has;
}

/* The contents of a property block, in id order. A property that cannot be encoded
   (string over 65535 bytes, subscription id 0 or too large) is left out and w->bad set. */
static void s_put_props(s_wr_t *w, const lk_mqtt_props_t *pr, uint64_t mask)
{
    uint64_t has = s_props_present(pr) & mask;
    while (has) {
        int id = __builtin_ctzll(has);
        has &= has - 1;
        const s_prop_info_t *pi = &s_prop_info[id];
        const char *field = (const char *)pr + pi->off;
        switch (pi->kind) {
        case S_BYTE:
            s_put8(w, (uint8_t)id);
            s_put8(w, *(const uint8_t *)field);
            break;
        case S_U16:
            s_put8(w, (uint8_t)id);
            s_put16(w, *(const uint16_t *)field);
            break;
        case S_U32:
            s_put8(w, (uint8_t)id);
            s_put32(w, *(const uint32_t *)field);
            break;
        case S_STR:
        case S_BIN: {
            lk_str_t s = *(const lk_str_t *)field;
            if (s.len > 65535) {
                w->bad = true;
                break;
            }
            s_put8(w, (uint8_t)id);
            s_put_bin(w, s);
            break;
        }
        case S_VBI:
            for (uint32_t i = 0; i < pr->sub_id_count; i++) {
                uint32_t v = pr->sub_ids[i];
                if (v == 0 || v > S_MAX_REMAINING) {
                    w->bad = true;
                    continue;
                }
                s_put8(w, (uint8_t)id);
                s_put_vbi(w, v);
            }
            break;
        case S_PAIR:
            for (uint32_t i = 0; i < pr->user_prop_count; i++) {
                const lk_mqtt_user_prop_t *up = &pr->user_props[i];
                if (up->key.len > 65535 || up->value.len > 65535) {
                    w->bad = true;
                    continue;
                }
                s_put8(w, (uint8_t)id);
                s_put_bin(w, up->key);
                s_put_bin(w, up->value);
            }
            break;
        default:
            break;
        }
    }
}

/* a property block with its length prefix */
static void s_put_props_block(s_wr_t *w, const lk_mqtt_props_t *pr, uint64_t mask)
{
    s_wr_t count = {NULL, 0, false};
    s_put_props(&count, pr, mask);
    w->bad |= count.bad;
    s_put_vbi(w, count.n);
    s_put_props(w, pr, mask);
}

void lk_mqtt_props_encode(lk_wbuf_t *out, const lk_mqtt_props_t *props, uint64_t mask)
{
    s_wr_t count = {NULL, 0, false};
    s_put_props(&count, props, mask);
    if (count.n == 0)
        return; /* out->data may still be NULL, and NULL + 0 is undefined behaviour */
    lk_wbuf_reserve(out, count.n);
    s_wr_t w = {out->data + out->len, 0, false};
    s_put_props(&w, props, mask);
    out->len += w.n;
}

size_t lk_mqtt_props_size(const lk_mqtt_props_t *props)
{
    s_wr_t count = {NULL, 0, false};
    s_put_props(&count, props, ~0ULL);
    return s_vbi_size(count.n) + count.n;
}

/*  --------------------------------------------------------------------------
    Encoding */

static void s_put_str(s_wr_t *w, const char *s)
{
    lk_str_t v = {s, (uint32_t)strlen(s)};
    s_put_bin(w, v);
}

/* v5 acks, DISCONNECT and AUTH may shorten: are there properties to send? */
static bool s_has_props(const lk_mqtt_props_t *pr, uint8_t type)
{
    return (s_props_present(pr) & s_allowed[type]) != 0;
}

/* Writes the variable header and payload; returns the first byte of the fixed header,
   or -1 when the packet type cannot be encoded in this version. */
static int s_put_body(s_wr_t *w, uint8_t version, const lk_mqtt_packet_t *pkt)
{
    bool v5 = version == LK_MQTT_V5;
    uint8_t type = pkt->type;
    const lk_mqtt_props_t *pr = &pkt->props;
    switch (type) {
    case LK_MQTT_CONNECT: {
        const lk_mqtt_connect_t *c = &pkt->u.connect;
        if (c->will && c->will_qos > 2)
            return -1;
        s_put_str(w, version == LK_MQTT_V31 ? "MQIsdp" : "MQTT");
        s_put8(w, version);
        uint8_t f =
            (c->clean ? 0x02 : 0) | (c->has_password ? 0x40 : 0) | (c->has_username ? 0x80 : 0);
        if (c->will)
            f |= 0x04 | (uint8_t)(c->will_qos << 3) | (c->will_retain ? 0x20 : 0);
        s_put8(w, f);
        s_put16(w, c->keepalive);
        if (v5)
            s_put_props_block(w, pr, s_allowed[LK_MQTT_CONNECT]);
        s_put_bin(w, c->client_id);
        if (c->will) {
            if (v5)
                s_put_props_block(w, &c->will_props, S_WILL_PROPS);
            s_put_bin(w, c->will_topic);
            s_put_bin(w, c->will_payload);
        }
        if (c->has_username)
            s_put_bin(w, c->username);
        if (c->has_password)
            s_put_bin(w, c->password);
        return LK_MQTT_CONNECT << 4;
    }
    case LK_MQTT_CONNACK: {
        const lk_mqtt_connack_t *c = &pkt->u.connack;
        s_put8(w, version != LK_MQTT_V31 && c->session_present ? 1 : 0);
        s_put8(w, c->code);
        if (v5)
            s_put_props_block(w, pr, s_allowed[LK_MQTT_CONNACK]);
        return LK_MQTT_CONNACK << 4;
    }
    case LK_MQTT_PUBLISH: {
        const lk_mqtt_publish_t *m = &pkt->u.publish;
        if (m->qos > 2)
            return -1;
        s_put_bin(w, m->topic);
        if (m->qos)
            s_put16(w, m->packet_id);
        if (v5)
            s_put_props_block(w, pr, s_allowed[LK_MQTT_PUBLISH]);
        s_put(w, m->payload.p, m->payload.len);
        return LK_MQTT_PUBLISH << 4 | (m->dup ? 0x08 : 0) | m->qos << 1 | (m->retain ? 1 : 0);
    }
    case LK_MQTT_PUBACK:
    case LK_MQTT_PUBREC:
    case LK_MQTT_PUBREL:
    case LK_MQTT_PUBCOMP: {
        const lk_mqtt_ack_t *a = &pkt->u.ack;
        s_put16(w, a->packet_id);
        /* shortest v5 form: no reason when 0 and no properties, no property length when
           there are none */
        bool props = v5 && s_has_props(pr, type);
        if (v5 && (a->reason || props))
            s_put8(w, a->reason);
        if (props)
            s_put_props_block(w, pr, s_allowed[type]);
        return type << 4 | (type == LK_MQTT_PUBREL ? 0x02 : 0);
    }
    case LK_MQTT_SUBSCRIBE: {
        const lk_mqtt_subscribe_t *s = &pkt->u.subscribe;
        s_put16(w, s->packet_id);
        if (v5)
            s_put_props_block(w, pr, s_allowed[LK_MQTT_SUBSCRIBE]);
        for (uint32_t i = 0; i < s->count; i++) {
            const lk_mqtt_sub_entry_t *e = &s->entries[i];
            if (e->qos > 2 || e->retain_handling > 2)
                return -1;
            s_put_bin(w, e->topic_filter);
            uint8_t o = e->qos;
            if (v5)
                o |= (e->no_local ? 0x04 : 0) | (e->retain_as_published ? 0x08 : 0) |
                     (uint8_t)(e->retain_handling << 4);
            s_put8(w, o);
        }
        return LK_MQTT_SUBSCRIBE << 4 | 0x02;
    }
    case LK_MQTT_UNSUBSCRIBE: {
        const lk_mqtt_unsubscribe_t *u = &pkt->u.unsubscribe;
        s_put16(w, u->packet_id);
        if (v5)
            s_put_props_block(w, pr, s_allowed[LK_MQTT_UNSUBSCRIBE]);
        for (uint32_t i = 0; i < u->count; i++)
            s_put_bin(w, u->filters[i]);
        return LK_MQTT_UNSUBSCRIBE << 4 | 0x02;
    }
    case LK_MQTT_SUBACK:
    case LK_MQTT_UNSUBACK: {
        const lk_mqtt_suback_t *s = &pkt->u.suback;
        s_put16(w, s->packet_id);
        if (v5)
            s_put_props_block(w, pr, s_allowed[type]);
        if (v5 || type == LK_MQTT_SUBACK) /* 3.x UNSUBACK has no payload */
            s_put(w, s->codes, s->count);
        return type << 4;
    }
    case LK_MQTT_PINGREQ:
    case LK_MQTT_PINGRESP:
        return type << 4;
    case LK_MQTT_DISCONNECT:
    case LK_MQTT_AUTH: {
        if (!v5)
            return type == LK_MQTT_AUTH ? -1 : type << 4;
        uint8_t reason = pkt->u.reason.reason;
        bool props = s_has_props(pr, type);
        if (reason || props)
            s_put8(w, reason);
        /* DISCONNECT may stop after the reason; AUTH is only shortened to nothing */
        if (props || (reason && type == LK_MQTT_AUTH))
            s_put_props_block(w, pr, s_allowed[type]);
        return type << 4;
    }
    default:
        return -1;
    }
}

int lk_mqtt_encode(lk_wbuf_t *out, uint8_t version, const lk_mqtt_packet_t *pkt)
{
    if (version < LK_MQTT_V31 || version > LK_MQTT_V5)
        return -1;
    s_wr_t count = {NULL, 0, false};
    int b0 = s_put_body(&count, version, pkt);
    if (b0 < 0 || count.bad || count.n > S_MAX_REMAINING)
        return -1;
    size_t total = 1 + s_vbi_size(count.n) + count.n;
    lk_wbuf_reserve(out, total);
    s_wr_t w = {out->data + out->len, 0, false};
    s_put8(&w, (uint8_t)b0);
    s_put_vbi(&w, count.n);
    s_put_body(&w, version, pkt);
    if (w.n != total) /* the two passes run the same code: a bug if they differ */
        abort();
    out->len += total;
    return 0;
}

/*  --------------------------------------------------------------------------
    Selftest. Golden vectors are written by hand from the spec: hex bytes, with 'text'
    for ASCII runs. */

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "lk_mqtt: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);      \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

static size_t s_hex(const char *src, uint8_t *out, size_t cap)
{
    size_t n = 0;
    while (*src) {
        if (*src == '\'') {
            for (src++; *src && *src != '\''; src++)
                if (n < cap)
                    out[n++] = (uint8_t)*src;
            if (*src)
                src++;
        } else if (*src == ' ')
            src++;
        else {
            unsigned v;
            if (sscanf(src, "%2x", &v) != 1)
                abort(); /* a typo in a test vector */
            if (n < cap)
                out[n++] = (uint8_t)v;
            src += 2;
        }
    }
    return n;
}

static bool s_eq(lk_str_t s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.p, lit, s.len) == 0;
}

typedef struct {
    const char *what; /* with the spec requirement where there is one */
    uint8_t version;
    bool server; /* decoded by a broker */
    int rc;      /* expected from decode */
    bool exact;  /* encode(decode(bytes)) == bytes */
    const char *hex;
} s_vec_t;

#define V31 LK_MQTT_V31
#define V4 LK_MQTT_V311
#define V5 LK_MQTT_V5
#define SRV true
#define CLI false
#define MAL LK_RC_MALFORMED
#define PROTO LK_RC_PROTOCOL_ERROR

static const s_vec_t s_vectors[] = {
    /* valid packets of every type and version, byte-exact round trips */
    {"3.1.1 CONNECT minimal", V4, SRV, 0, true, "10 0f 00 04 'MQTT' 04 02 00 3c 00 03 'abc'"},
    {"3.1.1 CONNECT will, user name, password", V4, SRV, 0, true,
     "10 1e 00 04 'MQTT' 04 ee 00 0a 00 02 'c1' 00 03 'w/t' 00 03 'bye' 00 01 'u' 00 01 'p'"},
    {"3.1 CONNECT", V31, SRV, 0, true, "10 11 00 06 'MQIsdp' 03 02 00 3c 00 03 'abc'"},
    {"5 CONNECT properties and will properties", V5, SRV, 0, true,
     "10 27 00 04 'MQTT' 05 06 00 3c 08 11 00 00 0e 10 21 00 14 00 03 'abc'"
     " 07 01 01 18 00 00 00 05 00 01 't' 00 02 'hi'"},
    {"5 CONNECT password without user name is allowed", V5, SRV, 0, true,
     "10 11 00 04 'MQTT' 05 42 00 00 00 00 00 00 02 'pw'"},
    {"3.1.1 CONNACK session present", V4, CLI, 0, true, "20 02 01 00"},
    {"3.1 CONNACK not authorized", V31, CLI, 0, true, "20 02 00 05"},
    {"5 CONNACK minimal", V5, CLI, 0, true, "20 03 00 00 00"},
    {"5 CONNACK refused", V5, CLI, 0, true, "20 03 00 87 00"},
    {"5 CONNACK properties", V5, CLI, 0, true, "20 08 00 00 05 21 00 0a 24 01"},
    {"3.1.1 PUBLISH QoS 0", V4, SRV, 0, true, "30 0a 00 03 'a/b' 'hello'"},
    {"3.1.1 PUBLISH QoS 2 dup retain", V4, SRV, 0, true, "3d 0c 00 03 'a/b' 12 34 'hello'"},
    {"3.1 PUBLISH QoS 1", V31, CLI, 0, true, "32 06 00 01 't' 00 09 'x'"},
    {"5 PUBLISH with properties", V5, SRV, 0, true,
     "32 22 00 03 'a/b' 00 0a 15 01 01 02 00 00 00 3c 03 00 04 'text'"
     " 26 00 01 'k' 00 01 'v' 'hello'"},
    {"5 PUBLISH empty topic with alias", V5, SRV, 0, true, "30 07 00 00 03 23 00 01 'x'"},
    {"5 PUBLISH from broker with subscription ids", V5, CLI, 0, true,
     "30 09 00 01 't' 05 0b 01 0b 81 01"},
    {"5 PUBLISH two user properties keep order", V5, SRV, 0, true,
     "30 12 00 01 't' 0e 26 00 01 'a' 00 01 'b' 26 00 01 'a' 00 01 'c'"},
    {"5 PUBLISH format 1 payload with U+0000 is UTF-8", V5, SRV, 0, true,
     "30 08 00 01 't' 02 01 01 'a' 00"},
    {"3.1.1 PUBACK", V4, SRV, 0, true, "40 02 00 01"},
    {"3.1.1 PUBREC", V4, CLI, 0, true, "50 02 00 01"},
    {"3.1.1 PUBREL", V4, SRV, 0, true, "62 02 00 01"},
    {"3.1.1 PUBCOMP", V4, CLI, 0, true, "70 02 ff ff"},
    {"5 PUBACK short form", V5, SRV, 0, true, "40 02 00 01"},
    {"5 PUBACK no matching subscribers", V5, CLI, 0, true, "40 03 00 01 10"},
    {"5 PUBREC reason string", V5, CLI, 0, true, "50 09 00 01 80 05 1f 00 02 'no'"},
    {"5 PUBREL packet id not found", V5, SRV, 0, true, "62 03 00 01 92"},
    {"5 PUBCOMP", V5, SRV, 0, true, "70 02 00 07"},
    {"5 PUBACK reason 0, empty properties (long form)", V5, SRV, 0, false, "40 04 00 01 00 00"},
    {"5 PUBACK reason 0, no property length", V5, SRV, 0, false, "40 03 00 01 00"},
    {"3.1.1 SUBSCRIBE", V4, SRV, 0, true, "82 08 00 01 00 03 'a/b' 01"},
    {"3.1.1 SUBSCRIBE two filters", V4, SRV, 0, true, "82 0e 00 02 00 03 'a/b' 00 00 03 'c/#' 02"},
    {"5 SUBSCRIBE options and subscription id", V5, SRV, 0, true,
     "82 0b 00 01 02 0b 05 00 03 'a/b' 2d"},
    {"3.1.1 SUBSCRIBE invalid filter decodes (caller refuses)", V4, SRV, 0, true,
     "82 08 00 01 00 03 'a#b' 00"},
    {"5 SUBSCRIBE empty filter decodes (caller refuses)", V5, SRV, 0, true,
     "82 06 00 01 00 00 00 01"},
    {"3.1 SUBSCRIBE retried with DUP", V31, SRV, 0, false, "8a 08 00 01 00 03 'a/b' 01"},
    {"3.1.1 SUBACK", V4, CLI, 0, true, "90 04 00 01 01 80"},
    {"5 SUBACK", V5, CLI, 0, true, "90 05 00 01 00 01 8f"},
    {"3.1.1 UNSUBSCRIBE", V4, SRV, 0, true, "a2 05 00 01 00 01 'a'"},
    {"5 UNSUBSCRIBE", V5, SRV, 0, true, "a2 06 00 01 00 00 01 'a'"},
    {"3.1.1 UNSUBACK", V4, CLI, 0, true, "b0 02 00 01"},
    {"5 UNSUBACK", V5, CLI, 0, true, "b0 05 00 01 00 00 11"},
    {"PINGREQ", V4, SRV, 0, true, "c0 00"},
    {"PINGRESP", V5, CLI, 0, true, "d0 00"},
    {"PINGREQ non-minimal remaining length is tolerated", V4, SRV, 0, false, "c0 80 00"},
    {"3.1.1 DISCONNECT", V4, SRV, 0, true, "e0 00"},
    {"5 DISCONNECT short form", V5, SRV, 0, true, "e0 00"},
    {"5 DISCONNECT with will", V5, SRV, 0, true, "e0 01 04"},
    {"5 DISCONNECT session expiry", V5, SRV, 0, true, "e0 07 00 05 11 00 00 00 0a"},
    {"5 DISCONNECT from broker", V5, CLI, 0, true, "e0 01 8b"},
    {"5 AUTH short form", V5, SRV, 0, true, "f0 00"},
    {"5 AUTH continue", V5, CLI, 0, true, "f0 0a 18 08 15 00 05 'SCRAM'"},
    {"5 AUTH method and data", V5, SRV, 0, true, "f0 0e 18 0c 15 00 05 'SCRAM' 16 00 01 ff"},
    {"3.1 CONNECT user name flag without field is tolerated", V31, SRV, 0, false,
     "10 11 00 06 'MQIsdp' 03 82 00 3c 00 03 'abc'"},

    /* fixed header */
    {"[MQTT-2.2.2-2] PUBACK reserved flags", V4, SRV, MAL, false, "41 02 00 01"},
    {"[MQTT-3.6.1-1] PUBREL flags 0", V4, SRV, MAL, false, "60 02 00 01"},
    {"[MQTT-3.8.1-1] SUBSCRIBE flags 0", V4, SRV, MAL, false, "80 08 00 01 00 03 'a/b' 01"},
    {"[MQTT-3.8.1-1] 3.1.1 SUBSCRIBE with DUP", V4, SRV, MAL, false, "8a 08 00 01 00 03 'a/b' 01"},
    {"[MQTT-3.10.1-1] UNSUBSCRIBE flags 0", V5, SRV, MAL, false, "a0 06 00 01 00 00 01 'a'"},
    {"[MQTT-2.2.2-2] CONNECT flags", V4, SRV, MAL, false,
     "11 0f 00 04 'MQTT' 04 02 00 3c 00 03 'abc'"},
    {"[MQTT-2.2.2-2] PINGREQ flags", V4, SRV, MAL, false, "c1 00"},
    {"[MQTT-2.2.2-2] 5 DISCONNECT flags", V5, SRV, MAL, false, "e8 00"},
    {"reserved packet type 0", V4, SRV, MAL, false, "00 00"},
    {"remaining length of 5 bytes", V4, SRV, MAL, false, "c0 80 80 80 80 00"},

    /* direction and version */
    {"CONNECT sent to a client", V4, CLI, PROTO, false,
     "10 0f 00 04 'MQTT' 04 02 00 3c 00 03 'abc'"},
    {"CONNACK sent to a broker", V5, SRV, PROTO, false, "20 03 00 00 00"},
    {"SUBSCRIBE sent to a client", V4, CLI, PROTO, false, "82 08 00 01 00 03 'a/b' 01"},
    {"3.1.1 DISCONNECT sent by a broker", V4, CLI, PROTO, false, "e0 00"},
    {"3.1.1 AUTH", V4, SRV, PROTO, false, "f0 00"},

    /* PUBLISH */
    {"[MQTT-3.3.1-4] PUBLISH QoS 3", V4, SRV, MAL, false, "36 0c 00 03 'a/b' 00 01 'hello'"},
    {"[MQTT-3.3.1-4] 5 PUBLISH QoS 3", V5, SRV, MAL, false, "36 0d 00 03 'a/b' 00 01 00 'hello'"},
    {"[MQTT-3.3.1-2] PUBLISH DUP with QoS 0", V4, SRV, MAL, false, "38 0a 00 03 'a/b' 'hello'"},
    {"[MQTT-3.3.2-2] PUBLISH topic with +", V4, SRV, LK_RC_TOPIC_NAME_INVALID, false,
     "30 0a 00 03 'a/+' 'hello'"},
    {"[MQTT-3.3.2-2] 5 PUBLISH topic with #", V5, SRV, LK_RC_TOPIC_NAME_INVALID, false,
     "32 08 00 03 'a/#' 00 07 00"},
    {"[MQTT-4.7.3-1] 3.1.1 PUBLISH empty topic", V4, SRV, PROTO, false, "30 07 00 00 'hello'"},
    {"5 PUBLISH empty topic is for the caller to check", V5, SRV, 0, true,
     "30 08 00 00 00 'hello'"},
    {"[MQTT-2.2.1-3] PUBLISH QoS 1 packet id 0", V4, SRV, PROTO, false,
     "32 09 00 03 'a/b' 00 00 'hi'"},
    {"PUBLISH QoS 1 without packet id", V4, SRV, MAL, false, "32 04 00 02 'ab'"},
    {"PUBLISH topic longer than the packet", V4, SRV, MAL, false, "30 04 00 05 'ab'"},
    {"[MQTT-1.5.4-1] PUBLISH topic with a surrogate", V4, SRV, MAL, false, "30 05 00 03 ed a0 80"},
    {"[MQTT-1.5.4-2] PUBLISH topic with U+0000", V4, SRV, MAL, false, "30 05 00 03 'a' 00 'b'"},
    {"5 PUBLISH payload format 1, payload not UTF-8", V5, SRV, LK_RC_PAYLOAD_FORMAT_INVALID, false,
     "30 07 00 01 't' 02 01 01 ff"},
    {"[MQTT-3.3.4-6] 5 PUBLISH to broker with subscription id", V5, SRV, PROTO, false,
     "30 06 00 01 't' 02 0b 01"},

    /* properties */
    {"5 property not allowed in PUBLISH", V5, SRV, MAL, false, "30 09 00 01 't' 05 11 00 00 00 01"},
    {"5 unknown property id", V5, SRV, MAL, false, "30 05 00 01 't' 01 7f"},
    {"5 duplicate payload format indicator", V5, SRV, PROTO, false,
     "30 08 00 01 't' 04 01 00 01 01"},
    {"5 payload format indicator 2", V5, SRV, PROTO, false, "30 06 00 01 't' 02 01 02"},
    {"5 topic alias 0", V5, SRV, PROTO, false, "30 07 00 01 't' 03 23 00 00"},
    {"[MQTT-3.3.2-14] 5 response topic with wildcard", V5, SRV, PROTO, false,
     "30 09 00 01 't' 05 08 00 02 'a#'"},
    {"5 property length beyond the packet", V5, SRV, MAL, false, "30 05 00 01 't' 05 01"},
    {"5 property value truncated", V5, SRV, MAL, false, "30 06 00 01 't' 02 02 00"},
    {"5 user property key not UTF-8", V5, SRV, MAL, false,
     "30 0b 00 01 't' 07 26 00 01 c0 00 01 'v'"},
    {"5 subscription identifier 0", V5, SRV, PROTO, false, "82 0b 00 01 02 0b 00 00 03 'a/b' 00"},
    {"5 SUBSCRIBE with two subscription identifiers", V5, SRV, PROTO, false,
     "82 0d 00 01 04 0b 01 0b 02 00 03 'a/b' 00"},
    {"5 subscription identifier of 5 bytes", V5, SRV, MAL, false,
     "82 0e 00 01 05 0b 80 80 80 80 00 03 'a/b' 00"},
    {"5 receive maximum 0", V5, SRV, PROTO, false,
     "10 13 00 04 'MQTT' 05 02 00 3c 03 21 00 00 00 03 'abc'"},
    {"5 maximum packet size 0", V5, SRV, PROTO, false,
     "10 15 00 04 'MQTT' 05 02 00 3c 05 27 00 00 00 00 00 03 'abc'"},
    {"5 request problem information 2", V5, SRV, PROTO, false,
     "10 12 00 04 'MQTT' 05 02 00 3c 02 17 02 00 03 'abc'"},
    {"5 request response information 2", V5, SRV, PROTO, false,
     "10 12 00 04 'MQTT' 05 02 00 3c 02 19 02 00 03 'abc'"},
    {"5 duplicate session expiry", V5, SRV, PROTO, false,
     "10 1a 00 04 'MQTT' 05 02 00 3c 0a 11 00 00 00 01 11 00 00 00 02 00 03 'abc'"},
    {"5 maximum QoS 2", V5, CLI, PROTO, false, "20 05 00 00 02 24 02"},
    {"5 authentication data without method", V5, SRV, PROTO, false, "f0 06 18 04 16 00 01 'x'"},

    /* acks */
    {"3.1.1 PUBACK of 3 bytes", V4, SRV, MAL, false, "40 03 00 01 00"},
    {"[MQTT-2.2.1-3] PUBACK packet id 0", V4, SRV, PROTO, false, "40 02 00 00"},
    {"5 PUBACK unknown reason", V5, SRV, PROTO, false, "40 03 00 01 05"},
    {"5 PUBREL reason of PUBACK", V5, SRV, PROTO, false, "62 03 00 01 10"},
    {"5 PUBACK topic alias property", V5, SRV, MAL, false, "40 07 00 01 00 03 23 00 01"},
    {"[MQTT-3.2.2-1] CONNACK reserved flags", V4, CLI, MAL, false, "20 02 02 00"},
    {"[MQTT-3.2.2-4] CONNACK session present with refusal", V4, CLI, PROTO, false, "20 02 01 05"},
    {"[MQTT-3.2.2-6] 5 CONNACK session present with refusal", V5, CLI, PROTO, false,
     "20 03 01 87 00"},
    {"3.1.1 CONNACK return code 6", V4, CLI, PROTO, false, "20 02 00 06"},
    {"5 CONNACK without properties", V5, CLI, MAL, false, "20 02 00 00"},
    {"3.1.1 SUBACK without codes", V4, CLI, PROTO, false, "90 02 00 01"},
    {"3.1.1 SUBACK code 3", V4, CLI, PROTO, false, "90 03 00 01 03"},
    {"3.1.1 UNSUBACK with payload", V4, CLI, MAL, false, "b0 03 00 01 00"},
    {"5 UNSUBACK without codes", V5, CLI, PROTO, false, "b0 03 00 01 00"},
    {"PINGREQ with a body", V4, SRV, MAL, false, "c0 01 00"},
    {"3.1.1 DISCONNECT with a body", V4, SRV, MAL, false, "e0 01 00"},
    {"5 DISCONNECT unknown reason", V5, SRV, PROTO, false, "e0 01 05"},
    {"[MQTT-3.14.2-2] 5 DISCONNECT from broker with session expiry", V5, CLI, PROTO, false,
     "e0 07 00 05 11 00 00 00 0a"},
    {"5 AUTH unknown reason", V5, SRV, PROTO, false, "f0 02 01 00"},

    /* SUBSCRIBE / UNSUBSCRIBE */
    {"[MQTT-2.2.1-3] SUBSCRIBE packet id 0", V4, SRV, PROTO, false, "82 08 00 00 00 03 'a/b' 01"},
    {"[MQTT-2.2.1-3] UNSUBSCRIBE packet id 0", V4, SRV, PROTO, false, "a2 05 00 00 00 01 'a'"},
    {"[MQTT-3.8.3-3] SUBSCRIBE without entries", V4, SRV, PROTO, false, "82 02 00 01"},
    {"[MQTT-3.8.3-3] 5 SUBSCRIBE without entries", V5, SRV, PROTO, false, "82 03 00 01 00"},
    {"[MQTT-3.10.3-2] UNSUBSCRIBE without entries", V4, SRV, PROTO, false, "a2 02 00 01"},
    {"[MQTT-3-8.3-4] 3.1.1 requested QoS reserved bits", V4, SRV, MAL, false,
     "82 08 00 01 00 03 'a/b' 05"},
    {"[MQTT-3-8.3-4] 3.1.1 requested QoS 3", V4, SRV, MAL, false, "82 08 00 01 00 03 'a/b' 03"},
    {"[MQTT-3.8.3-5] 5 subscription options bits 6-7", V5, SRV, MAL, false,
     "82 09 00 01 00 00 03 'a/b' 41"},
    {"5 retain handling 3", V5, SRV, PROTO, false, "82 09 00 01 00 00 03 'a/b' 30"},
    {"[MQTT-3.8.3-4] 5 No Local on a shared subscription", V5, SRV, PROTO, false,
     "82 10 00 01 00 00 0a '$share/g/t' 04"},
    {"SUBSCRIBE filter not UTF-8", V4, SRV, MAL, false, "82 07 00 01 00 02 c0 80 00"},
    {"SUBSCRIBE entry without options", V4, SRV, MAL, false, "82 07 00 01 00 03 'a/b'"},

    /* CONNECT */
    {"[MQTT-3.1.2-2] MQTT with level 3", V4, SRV, LK_RC_UNSUPPORTED_VERSION, false,
     "10 0f 00 04 'MQTT' 03 02 00 3c 00 03 'abc'"},
    {"[MQTT-3.1.2-2] MQIsdp with level 4", V4, SRV, LK_RC_UNSUPPORTED_VERSION, false,
     "10 11 00 06 'MQIsdp' 04 02 00 3c 00 03 'abc'"},
    {"[MQTT-3.1.2-2] MQTT level 6", V4, SRV, LK_RC_UNSUPPORTED_VERSION, false,
     "10 0f 00 04 'MQTT' 06 02 00 3c 00 03 'abc'"},
    {"[MQTT-3.1.2-1] protocol name MQTX", V4, SRV, LK_RC_UNSUPPORTED_VERSION, false,
     "10 0f 00 04 'MQTX' 04 02 00 3c 00 03 'abc'"},
    {"CONNECT cut in the protocol name", V4, SRV, MAL, false, "10 04 00 04 'MQ'"},
    {"[MQTT-3.1.2-3] CONNECT reserved flag", V4, SRV, MAL, false,
     "10 0f 00 04 'MQTT' 04 03 00 3c 00 03 'abc'"},
    {"[MQTT-3.1.2-14] will QoS 3", V4, SRV, MAL, false,
     "10 15 00 04 'MQTT' 04 1e 00 3c 00 03 'abc' 00 01 't' 00 01 'x'"},
    {"[MQTT-3.1.2-13] will QoS without will flag", V4, SRV, MAL, false,
     "10 0f 00 04 'MQTT' 04 0a 00 3c 00 03 'abc'"},
    {"[MQTT-3.1.2-15] will retain without will flag", V5, SRV, MAL, false,
     "10 10 00 04 'MQTT' 05 22 00 3c 00 00 03 'abc'"},
    {"[MQTT-3.1.2-22] 3.1.1 password without user name", V4, SRV, PROTO, false,
     "10 13 00 04 'MQTT' 04 42 00 3c 00 03 'abc' 00 02 'pw'"},
    {"[MQTT-1.5.4-1] client id with a surrogate", V4, SRV, MAL, false,
     "10 0f 00 04 'MQTT' 04 02 00 3c 00 03 ed a0 80"},
    {"[MQTT-1.5.4-2] client id with U+0000", V4, SRV, MAL, false,
     "10 0f 00 04 'MQTT' 04 02 00 3c 00 03 'a' 00 'b'"},
    {"[MQTT-3.1.2-19] user name flag without user name", V4, SRV, MAL, false,
     "10 0f 00 04 'MQTT' 04 82 00 3c 00 03 'abc'"},
    {"[MQTT-3.1.2-21] password flag without password", V4, SRV, MAL, false,
     "10 12 00 04 'MQTT' 04 c2 00 3c 00 03 'abc' 00 01 'u'"},
    {"[MQTT-3.1.3-11] user name not UTF-8", V4, SRV, MAL, false,
     "10 12 00 04 'MQTT' 04 82 00 3c 00 03 'abc' 00 01 ff"},
    {"CONNECT trailing byte", V4, SRV, MAL, false, "10 10 00 04 'MQTT' 04 02 00 3c 00 03 'abc' 00"},
    {"CONNECT will flag without will topic", V4, SRV, MAL, false,
     "10 0f 00 04 'MQTT' 04 06 00 3c 00 03 'abc'"},
    {"CONNECT will topic with wildcard", V4, SRV, LK_RC_TOPIC_NAME_INVALID, false,
     "10 15 00 04 'MQTT' 04 06 00 3c 00 03 'abc' 00 01 '#' 00 01 'x'"},
    {"5 CONNECT will payload format 1, payload not UTF-8", V5, SRV, LK_RC_PAYLOAD_FORMAT_INVALID,
     false, "10 1a 00 04 'MQTT' 05 06 00 3c 00 00 03 'abc' 02 01 01 00 01 't' 00 02 ff fe"},
    {"5 CONNECT will property not allowed", V5, SRV, MAL, false,
     "10 1a 00 04 'MQTT' 05 06 00 3c 00 00 03 'abc' 03 21 00 01 00 01 't' 00 01 'x'"},
    {NULL, 0, false, 0, false, NULL}};

/* decode, encode, decode again, encode again: the two encodings must agree */
static int s_check_vector(const s_vec_t *v, bool verbose)
{
    uint8_t in[512];
    size_t n = s_hex(v->hex, in, sizeof in);
    size_t frame_len = 0, body_len = 0;
    int fr = lk_mqtt_frame(in, n, 0, &frame_len, &body_len);
    if (v->rc == MAL && fr == -1)
        return 0; /* a bad remaining length stops at framing */
    if (fr != 1 || frame_len != n) {
        fprintf(stderr, "lk_mqtt: '%s': frame %d, %zu of %zu bytes\n", v->what, fr, frame_len, n);
        return 1;
    }
    lk_mqtt_packet_t pkt, again;
    lk_wbuf_t out, out2;
    lk_wbuf_init(&out);
    lk_wbuf_init(&out2);
    int rc = lk_mqtt_decode(in, n, v->version, v->server, &pkt);
    int fail = 0;
    if (rc != v->rc) {
        fprintf(stderr, "lk_mqtt: '%s': decode %#x, expected %#x\n", v->what, rc, v->rc);
        fail = 1;
    } else if (rc == 0 || rc == LK_RC_TOPIC_NAME_INVALID || rc == LK_RC_PAYLOAD_FORMAT_INVALID) {
        uint8_t ver = pkt.type == LK_MQTT_CONNECT ? pkt.u.connect.version : v->version;
        if (lk_mqtt_encode(&out, ver, &pkt) != 0)
            fail = 2;
        else if (v->exact && (out.len != n || memcmp(out.data, in, n) != 0))
            fail = 3;
        else if (lk_mqtt_decode(out.data, out.len, ver, v->server, &again) != rc)
            fail = 4;
        else if (lk_mqtt_encode(&out2, ver, &again) != 0 || out2.len != out.len ||
                 memcmp(out2.data, out.data, out.len) != 0)
            fail = 5;
        if (fail >= 4)
            lk_mqtt_packet_free(&again);
        if (fail == 0)
            lk_mqtt_packet_free(&again);
        if (fail) {
            fprintf(stderr, "lk_mqtt: '%s': round trip failed (%d); encoded:", v->what, fail);
            for (size_t i = 0; i < out.len; i++)
                fprintf(stderr, " %02x", out.data[i]);
            fprintf(stderr, "\n");
        }
    }
    if (verbose && !fail)
        printf("  ok  %s\n", v->what);
    lk_mqtt_packet_free(&pkt);
    lk_wbuf_free(&out);
    lk_wbuf_free(&out2);
    return fail;
}

static int s_decode_hex(const char *hex, uint8_t *buf, size_t cap, uint8_t version, bool server,
                        lk_mqtt_packet_t *pkt)
{
    size_t n = s_hex(hex, buf, cap);
    return lk_mqtt_decode(buf, n, version, server, pkt);
}

/* encode pkt and compare with the hand-written bytes */
static bool s_encodes_to(uint8_t version, const lk_mqtt_packet_t *pkt, const char *hex)
{
    uint8_t want[512];
    size_t n = s_hex(hex, want, sizeof want);
    lk_wbuf_t out;
    lk_wbuf_init(&out);
    bool ok =
        lk_mqtt_encode(&out, version, pkt) == 0 && out.len == n && memcmp(out.data, want, n) == 0;
    if (!ok) {
        fprintf(stderr, "lk_mqtt: encoded:");
        for (size_t i = 0; i < out.len; i++)
            fprintf(stderr, " %02x", out.data[i]);
        fprintf(stderr, "\n       expected: %s\n", hex);
    }
    lk_wbuf_free(&out);
    return ok;
}

static int s_test_fields(void)
{
    uint8_t buf[512];
    lk_mqtt_packet_t p;

    S_CHECK(s_decode_hex("10 1e 00 04 'MQTT' 04 ee 00 0a 00 02 'c1' 00 03 'w/t' 00 03 'bye'"
                         " 00 01 'u' 00 01 'p'",
                         buf, sizeof buf, 0, true, &p) == 0);
    lk_mqtt_connect_t *c = &p.u.connect;
    S_CHECK(p.type == LK_MQTT_CONNECT && c->version == LK_MQTT_V311);
    S_CHECK(s_eq(c->protocol_name, "MQTT") && c->clean && c->will && c->will_qos == 1);
    S_CHECK(c->will_retain && c->has_username && c->has_password && c->keepalive == 10);
    S_CHECK(s_eq(c->client_id, "c1") && s_eq(c->will_topic, "w/t"));
    S_CHECK(s_eq(c->will_payload, "bye") && s_eq(c->username, "u") && s_eq(c->password, "p"));
    lk_mqtt_packet_free(&p);

    S_CHECK(s_decode_hex("10 27 00 04 'MQTT' 05 06 00 3c 08 11 00 00 0e 10 21 00 14 00 03 'abc'"
                         " 07 01 01 18 00 00 00 05 00 01 't' 00 02 'hi'",
                         buf, sizeof buf, 0, true, &p) == 0);
    S_CHECK(c->version == LK_MQTT_V5 && p.props.session_expiry == 3600);
    S_CHECK(p.props.receive_maximum == 20);
    S_CHECK(p.props.has == (S_BIT(LK_PROP_SESSION_EXPIRY) | S_BIT(LK_PROP_RECEIVE_MAXIMUM)));
    S_CHECK(c->will_props.will_delay == 5 && c->will_props.payload_format == 1);
    S_CHECK(s_eq(c->will_topic, "t") && s_eq(c->will_payload, "hi"));
    S_CHECK(p.props.raw.len == 8 && c->will_props.raw.len == 7);
    lk_mqtt_packet_free(&p);

    /* the version of a refused CONNECT is still reported */
    S_CHECK(s_decode_hex("10 0f 00 04 'MQTT' 06 02 00 3c 00 03 'abc'", buf, sizeof buf, 0, true,
                         &p) == LK_RC_UNSUPPORTED_VERSION);
    S_CHECK(p.u.connect.version == 6);
    lk_mqtt_packet_free(&p);

    /* 3.1 CONNECT whose user name is missing: the flags are dropped */
    S_CHECK(s_decode_hex("10 11 00 06 'MQIsdp' 03 c2 00 3c 00 03 'abc'", buf, sizeof buf, 0, true,
                         &p) == 0);
    S_CHECK(!p.u.connect.has_username && !p.u.connect.has_password);
    lk_mqtt_packet_free(&p);

    /* PUBLISH with properties but no user properties: no allocation (hot path) */
    S_CHECK(s_decode_hex("32 14 00 03 'a/b' 00 0a 07 01 01 02 00 00 00 3c 'hello'", buf, sizeof buf,
                         LK_MQTT_V5, true, &p) == 0);
    for (int i = 0; i < 4; i++)
        S_CHECK(p.alloc_[i] == NULL);
    S_CHECK(p.u.publish.qos == 1 && p.u.publish.packet_id == 10);
    S_CHECK(s_eq(p.u.publish.topic, "a/b") && s_eq(p.u.publish.payload, "hello"));
    S_CHECK(p.props.payload_format == 1 && p.props.message_expiry == 60);
    S_CHECK(p.props.user_props == NULL && p.props.sub_ids == NULL);
    lk_mqtt_packet_free(&p);

    S_CHECK(s_decode_hex("32 22 00 03 'a/b' 00 0a 15 01 01 02 00 00 00 3c 03 00 04 'text'"
                         " 26 00 01 'k' 00 01 'v' 'hello'",
                         buf, sizeof buf, LK_MQTT_V5, true, &p) == 0);
    S_CHECK(s_eq(p.props.content_type, "text") && p.props.user_prop_count == 1);
    S_CHECK(s_eq(p.props.user_props[0].key, "k") && s_eq(p.props.user_props[0].value, "v"));
    S_CHECK(LK_PROP_HAS(&p.props, LK_PROP_USER_PROPERTY) && p.alloc_[0] != NULL);
    lk_mqtt_packet_free(&p);
    S_CHECK(p.alloc_[0] == NULL);

    S_CHECK(s_decode_hex("30 12 00 01 't' 0e 26 00 01 'a' 00 01 'b' 26 00 01 'a' 00 01 'c'", buf,
                         sizeof buf, LK_MQTT_V5, true, &p) == 0);
    S_CHECK(p.props.user_prop_count == 2 && s_eq(p.props.user_props[1].value, "c"));
    lk_mqtt_packet_free(&p);

    S_CHECK(s_decode_hex("30 09 00 01 't' 05 0b 01 0b 81 01", buf, sizeof buf, LK_MQTT_V5, false,
                         &p) == 0);
    S_CHECK(p.props.sub_id_count == 2 && p.props.sub_ids[0] == 1 && p.props.sub_ids[1] == 129);
    lk_mqtt_packet_free(&p);

    /* a bad topic is reported once the packet id is known, for PUBACK 0x90 */
    S_CHECK(s_decode_hex("32 08 00 03 'a/#' 00 07 00", buf, sizeof buf, LK_MQTT_V5, true, &p) ==
            LK_RC_TOPIC_NAME_INVALID);
    S_CHECK(p.u.publish.packet_id == 7);
    lk_mqtt_packet_free(&p);

    S_CHECK(s_decode_hex("82 0b 00 01 02 0b 05 00 03 'a/b' 2d", buf, sizeof buf, LK_MQTT_V5, true,
                         &p) == 0);
    lk_mqtt_subscribe_t *s = &p.u.subscribe;
    S_CHECK(s->packet_id == 1 && s->count == 1 && p.props.sub_ids[0] == 5);
    S_CHECK(s_eq(s->entries[0].topic_filter, "a/b") && s->entries[0].qos == 1);
    S_CHECK(s->entries[0].no_local && s->entries[0].retain_as_published);
    S_CHECK(s->entries[0].retain_handling == 2);
    lk_mqtt_packet_free(&p);

    /* an invalid filter is decoded: the broker refuses that entry alone */
    S_CHECK(s_decode_hex("82 0e 00 02 00 03 'a#b' 00 00 03 'c/#' 02", buf, sizeof buf, LK_MQTT_V311,
                         true, &p) == 0);
    S_CHECK(p.u.subscribe.count == 2);
    S_CHECK(
        !lk_mqtt_filter_valid(s->entries[0].topic_filter.p, s->entries[0].topic_filter.len, false));
    S_CHECK(
        lk_mqtt_filter_valid(s->entries[1].topic_filter.p, s->entries[1].topic_filter.len, false));
    lk_mqtt_packet_free(&p);

    S_CHECK(s_decode_hex("90 05 00 01 00 01 8f", buf, sizeof buf, LK_MQTT_V5, false, &p) == 0);
    S_CHECK(p.u.suback.count == 2 && p.u.suback.codes[1] == 0x8F);
    lk_mqtt_packet_free(&p);

    S_CHECK(s_decode_hex("b0 02 00 01", buf, sizeof buf, LK_MQTT_V311, false, &p) == 0);
    S_CHECK(p.u.suback.count == 0 && p.u.suback.packet_id == 1);
    lk_mqtt_packet_free(&p);

    S_CHECK(s_decode_hex("e0 00", buf, sizeof buf, LK_MQTT_V5, true, &p) == 0);
    S_CHECK(p.u.reason.reason == 0);
    lk_mqtt_packet_free(&p);

    S_CHECK(s_decode_hex("40 02 00 01", buf, sizeof buf, LK_MQTT_V5, true, &p) == 0);
    S_CHECK(p.u.ack.packet_id == 1 && p.u.ack.reason == 0);
    lk_mqtt_packet_free(&p);

    /* the frame must hold exactly the packet */
    size_t n = s_hex("30 0a 00 03 'a/b' 'hello'", buf, sizeof buf);
    S_CHECK(lk_mqtt_decode(buf, n - 1, LK_MQTT_V311, true, &p) == LK_RC_MALFORMED);
    lk_mqtt_packet_free(&p);
    buf[n] = 0;
    S_CHECK(lk_mqtt_decode(buf, n + 1, LK_MQTT_V311, true, &p) == LK_RC_MALFORMED);
    lk_mqtt_packet_free(&p);
    S_CHECK(lk_mqtt_decode(buf, 1, LK_MQTT_V311, true, &p) == LK_RC_MALFORMED);
    lk_mqtt_packet_free(&p);
    return 0;
}

static int s_test_frame(void)
{
    uint8_t buf[64] = {0};
    size_t fl = 0, bl = 0, n;
    S_CHECK(lk_mqtt_frame(buf, 0, 0, &fl, &bl) == 0);
    n = s_hex("30", buf, sizeof buf);
    S_CHECK(lk_mqtt_frame(buf, n, 0, &fl, &bl) == 0);
    n = s_hex("30 80", buf, sizeof buf);
    S_CHECK(lk_mqtt_frame(buf, n, 0, &fl, &bl) == 0);
    /* the body length is known as soon as the fixed header is */
    n = s_hex("30 02 00", buf, sizeof buf);
    S_CHECK(lk_mqtt_frame(buf, n, 0, &fl, &bl) == 0 && bl == 2 && fl == 4);
    n = s_hex("30 80 01", buf, sizeof buf);
    S_CHECK(lk_mqtt_frame(buf, n, 0, &fl, &bl) == 0 && bl == 128 && fl == 131);
    n = s_hex("30 ff ff ff 7f", buf, sizeof buf);
    S_CHECK(lk_mqtt_frame(buf, n, 0, &fl, &bl) == 0 && bl == 268435455 && fl == 268435460);
    S_CHECK(lk_mqtt_frame(buf, n, 1000, &fl, &bl) == -2 && bl == 268435455);
    S_CHECK(lk_mqtt_frame(buf, n, 268435460, &fl, &bl) == 0);
    /* a fifth length byte is malformed, even before it is read */
    n = s_hex("30 ff ff ff ff", buf, sizeof buf);
    S_CHECK(lk_mqtt_frame(buf, n, 0, &fl, &bl) == -1);
    n = s_hex("30 ff ff ff ff 01", buf, sizeof buf);
    S_CHECK(lk_mqtt_frame(buf, n, 0, &fl, &bl) == -1);
    n = s_hex("c0 00 d0 00", buf, sizeof buf);
    S_CHECK(lk_mqtt_frame(buf, n, 0, &fl, &bl) == 1 && fl == 2 && bl == 0);
    S_CHECK(lk_mqtt_frame(buf, n, 2, NULL, NULL) == 1);
    S_CHECK(lk_mqtt_frame(buf, n, 1, &fl, &bl) == -2);
    n = s_hex("30 0a 00 03 'a/b' 'hello'", buf, sizeof buf);
    S_CHECK(lk_mqtt_frame(buf, n, 0, &fl, &bl) == 1 && fl == 12 && bl == 10);
    S_CHECK(lk_mqtt_frame(buf, n - 1, 0, &fl, &bl) == 0 && fl == 12);
    return 0;
}

static int s_test_encode(void)
{
    lk_mqtt_packet_t p;
    memset(&p, 0, sizeof p);

    p.type = LK_MQTT_CONNECT;
    p.u.connect.clean = true;
    p.u.connect.keepalive = 60;
    p.u.connect.client_id = (lk_str_t){"abc", 3};
    S_CHECK(s_encodes_to(LK_MQTT_V31, &p, "10 11 00 06 'MQIsdp' 03 02 00 3c 00 03 'abc'"));
    S_CHECK(s_encodes_to(LK_MQTT_V311, &p, "10 0f 00 04 'MQTT' 04 02 00 3c 00 03 'abc'"));
    S_CHECK(s_encodes_to(LK_MQTT_V5, &p, "10 10 00 04 'MQTT' 05 02 00 3c 00 00 03 'abc'"));
    /* will QoS and retain are sent only with a will */
    p.u.connect.will_qos = 2;
    p.u.connect.will_retain = true;
    S_CHECK(s_encodes_to(LK_MQTT_V311, &p, "10 0f 00 04 'MQTT' 04 02 00 3c 00 03 'abc'"));

    /* v5 acks take the short forms */
    memset(&p, 0, sizeof p);
    p.type = LK_MQTT_PUBACK;
    p.u.ack.packet_id = 1;
    S_CHECK(s_encodes_to(LK_MQTT_V5, &p, "40 02 00 01"));
    p.u.ack.reason = 0x10;
    S_CHECK(s_encodes_to(LK_MQTT_V5, &p, "40 03 00 01 10"));
    S_CHECK(s_encodes_to(LK_MQTT_V311, &p, "40 02 00 01"));
    p.u.ack.reason = 0;
    p.props.reason_string = (lk_str_t){"no", 2};
    LK_PROP_SET(&p.props, LK_PROP_REASON_STRING);
    S_CHECK(s_encodes_to(LK_MQTT_V5, &p, "40 09 00 01 00 05 1f 00 02 'no'"));
    /* a property the type may not carry is left out */
    memset(&p.props, 0, sizeof p.props);
    p.props.topic_alias = 3;
    LK_PROP_SET(&p.props, LK_PROP_TOPIC_ALIAS);
    S_CHECK(s_encodes_to(LK_MQTT_V5, &p, "40 02 00 01"));
    p.type = LK_MQTT_PUBREL;
    S_CHECK(s_encodes_to(LK_MQTT_V5, &p, "62 02 00 01"));

    memset(&p, 0, sizeof p);
    p.type = LK_MQTT_DISCONNECT;
    S_CHECK(s_encodes_to(LK_MQTT_V5, &p, "e0 00"));
    p.u.reason.reason = LK_RC_SESSION_TAKEN_OVER;
    S_CHECK(s_encodes_to(LK_MQTT_V5, &p, "e0 01 8e"));
    S_CHECK(s_encodes_to(LK_MQTT_V311, &p, "e0 00"));
    p.type = LK_MQTT_AUTH;
    p.u.reason.reason = LK_RC_CONTINUE_AUTH;
    S_CHECK(s_encodes_to(LK_MQTT_V5, &p, "f0 02 18 00"));
    lk_wbuf_t out;
    lk_wbuf_init(&out);
    S_CHECK(lk_mqtt_encode(&out, LK_MQTT_V311, &p) == -1 && out.len == 0);

    /* 3.1.1 UNSUBACK carries no codes */
    uint8_t codes[2] = {0x00, 0x11};
    memset(&p, 0, sizeof p);
    p.type = LK_MQTT_UNSUBACK;
    p.u.suback.packet_id = 9;
    p.u.suback.codes = codes;
    p.u.suback.count = 2;
    S_CHECK(s_encodes_to(LK_MQTT_V311, &p, "b0 02 00 09"));
    S_CHECK(s_encodes_to(LK_MQTT_V5, &p, "b0 05 00 09 00 00 11"));

    /* publish: flags from the fields, subscription ids and user properties from counts */
    lk_mqtt_user_prop_t up = {{"k", 1}, {"v", 1}};
    uint32_t ids[2] = {1, 129};
    memset(&p, 0, sizeof p);
    p.type = LK_MQTT_PUBLISH;
    p.flags = 0x0F; /* ignored */
    p.u.publish.qos = 1;
    p.u.publish.packet_id = 10;
    p.u.publish.topic = (lk_str_t){"a/b", 3};
    p.u.publish.payload = (lk_str_t){"hello", 5};
    p.props.user_props = &up;
    p.props.user_prop_count = 1;
    p.props.sub_ids = ids;
    p.props.sub_id_count = 2;
    S_CHECK(s_encodes_to(LK_MQTT_V5, &p,
                         "32 19 00 03 'a/b' 00 0a 0c 0b 01 0b 81 01 26 00 01 'k' 00 01 'v'"
                         " 'hello'"));
    S_CHECK(s_encodes_to(LK_MQTT_V311, &p, "32 0c 00 03 'a/b' 00 0a 'hello'"));
    p.u.publish.qos = 3;
    S_CHECK(lk_mqtt_encode(&out, LK_MQTT_V311, &p) == -1 && out.len == 0);

    /* a string over 65535 bytes cannot be encoded; the buffer is left as it was */
    static char big[70000];
    memset(big, 'a', sizeof big);
    p.u.publish.qos = 0;
    p.u.publish.topic = (lk_str_t){big, 65536};
    lk_wbuf_append(&out, "x", 1);
    S_CHECK(lk_mqtt_encode(&out, LK_MQTT_V311, &p) == -1 && out.len == 1);
    p.u.publish.topic = (lk_str_t){big, 65535};
    S_CHECK(lk_mqtt_encode(&out, LK_MQTT_V311, &p) == 0 && out.len == 1 + 1 + 3 + 2 + 65535 + 5);
    lk_wbuf_consume(&out, 1);
    lk_mqtt_packet_t back;
    S_CHECK(lk_mqtt_decode(out.data, out.len, LK_MQTT_V311, true, &back) == 0);
    S_CHECK(back.u.publish.topic.len == 65535 && s_eq(back.u.publish.payload, "hello"));
    lk_mqtt_packet_free(&back);
    lk_wbuf_consume(&out, out.len);
    S_CHECK(out.len == 0);

    /* subscribe: v5 options byte, 3.x QoS only */
    lk_mqtt_sub_entry_t e = {{"a/b", 3}, 1, true, true, 2};
    memset(&p, 0, sizeof p);
    p.type = LK_MQTT_SUBSCRIBE;
    p.u.subscribe.packet_id = 1;
    p.u.subscribe.entries = &e;
    p.u.subscribe.count = 1;
    S_CHECK(s_encodes_to(LK_MQTT_V5, &p, "82 09 00 01 00 00 03 'a/b' 2d"));
    S_CHECK(s_encodes_to(LK_MQTT_V311, &p, "82 08 00 01 00 03 'a/b' 01"));
    lk_wbuf_free(&out);
    return 0;
}

static int s_test_props(void)
{
    lk_mqtt_user_prop_t ups[2] = {{{"a", 1}, {"1", 1}}, {{"b", 1}, {"2", 1}}};
    uint32_t ids[1] = {268435455};
    lk_mqtt_props_t in;
    memset(&in, 0, sizeof in);
    in.payload_format = 1;
    in.message_expiry = 100;
    in.content_type = (lk_str_t){"text/plain", 10};
    in.response_topic = (lk_str_t){"re/ply", 6};
    in.correlation_data = (lk_str_t){"\x00\x01", 2};
    in.topic_alias = 7;
    in.user_props = ups;
    in.user_prop_count = 2;
    in.sub_ids = ids;
    in.sub_id_count = 1;
    in.has = S_BIT(LK_PROP_PAYLOAD_FORMAT) | S_BIT(LK_PROP_MESSAGE_EXPIRY) |
             S_BIT(LK_PROP_CONTENT_TYPE) | S_BIT(LK_PROP_RESPONSE_TOPIC) |
             S_BIT(LK_PROP_CORRELATION_DATA) | S_BIT(LK_PROP_TOPIC_ALIAS);

    lk_wbuf_t out;
    lk_wbuf_init(&out);
    lk_mqtt_props_encode(&out, &in, ~0ULL);
    /* 2 + 5 + 13 + 9 + 5 + 3 + 5 (sub id 268435455) + 2 * 7 */
    S_CHECK(out.len == 56);
    S_CHECK(lk_mqtt_props_size(&in) == 1 + out.len);

    lk_mqtt_props_t back;
    S_CHECK(lk_mqtt_props_decode(out.data, out.len, LK_MQTT_PUBLISH, &back) == 0);
    S_CHECK(back.payload_format == 1 && back.message_expiry == 100 && back.topic_alias == 7);
    S_CHECK(s_eq(back.content_type, "text/plain") && s_eq(back.response_topic, "re/ply"));
    S_CHECK(back.correlation_data.len == 2 && back.correlation_data.p[1] == 1);
    S_CHECK(back.user_prop_count == 2 && s_eq(back.user_props[1].key, "b"));
    S_CHECK(back.sub_id_count == 1 && back.sub_ids[0] == 268435455);
    S_CHECK(back.has == (in.has | S_BIT(LK_PROP_USER_PROPERTY) | S_BIT(LK_PROP_SUBSCRIPTION_ID)));
    lk_mqtt_props_free(&back);
    S_CHECK(back.user_props == NULL && back.sub_ids == NULL);

    /* the mask picks the forwardable ones */
    lk_wbuf_consume(&out, out.len);
    lk_mqtt_props_encode(&out, &in, S_BIT(LK_PROP_CONTENT_TYPE) | S_BIT(LK_PROP_USER_PROPERTY));
    S_CHECK(out.len == 13 + 14);
    S_CHECK(lk_mqtt_props_decode(out.data, out.len, 0, &back) == 0);
    S_CHECK(back.has == (S_BIT(LK_PROP_CONTENT_TYPE) | S_BIT(LK_PROP_USER_PROPERTY)));
    lk_mqtt_props_free(&back);

    /* ids checked against the packet type; 0 accepts any */
    uint8_t se[] = {LK_PROP_SESSION_EXPIRY, 0, 0, 0, 1};
    S_CHECK(lk_mqtt_props_decode(se, sizeof se, LK_MQTT_PUBLISH, &back) == LK_RC_MALFORMED);
    lk_mqtt_props_free(&back);
    S_CHECK(lk_mqtt_props_decode(se, sizeof se, 0, &back) == 0 && back.session_expiry == 1);
    lk_mqtt_props_free(&back);
    uint8_t wd[] = {LK_PROP_WILL_DELAY, 0, 0, 0, 9};
    S_CHECK(lk_mqtt_props_decode(wd, sizeof wd, LK_MQTT_WILL_PROPS, &back) == 0);
    S_CHECK(back.will_delay == 9);
    lk_mqtt_props_free(&back);
    S_CHECK(lk_mqtt_props_decode(wd, sizeof wd, LK_MQTT_CONNECT, &back) == LK_RC_MALFORMED);
    lk_mqtt_props_free(&back);
    S_CHECK(lk_mqtt_props_decode(wd, 0, LK_MQTT_PUBLISH, &back) == 0 && back.has == 0);
    lk_mqtt_props_free(&back);

    /* unencodable entries are left out */
    memset(&in, 0, sizeof in);
    static char big[65536];
    in.reason_string = (lk_str_t){big, sizeof big};
    LK_PROP_SET(&in, LK_PROP_REASON_STRING);
    lk_wbuf_consume(&out, out.len);
    lk_mqtt_props_encode(&out, &in, ~0ULL);
    S_CHECK(out.len == 0 && lk_mqtt_props_size(&in) == 1);
    lk_mqtt_packet_t p;
    memset(&p, 0, sizeof p);
    p.type = LK_MQTT_PUBACK;
    p.u.ack.packet_id = 1;
    p.props = in;
    S_CHECK(lk_mqtt_encode(&out, LK_MQTT_V5, &p) == -1 && out.len == 0);
    lk_wbuf_free(&out);
    return 0;
}

static int s_test_utf8(void)
{
    static const struct {
        const char *hex;
        bool ok;
    } cases[] = {
        {"", true},
        {"'a/b/c'", true},
        {"'0123456789abcdef0123456789'", true},
        {"c3 a9", true},       /* é */
        {"e2 82 ac", true},    /* € */
        {"f0 9f 98 80", true}, /* U+1F600 */
        {"ef bb bf", true},    /* U+FEFF is not skipped [MQTT-1.5.4-3] */
        {"ef bf bf", true},    /* U+FFFF: a non-character, still well-formed */
        {"f4 8f bf bf", true}, /* U+10FFFF */
        {"ed 9f bf", true},    /* U+D7FF */
        {"ee 80 80", true},    /* U+E000 */
        {"00", false},         /* [MQTT-1.5.4-2] */
        {"'abcdefgh' 00 'abcdefgh'", false},
        {"c0 80", false},       /* overlong U+0000 [MQTT-1.5.4-1] */
        {"c1 bf", false},       /* overlong */
        {"e0 80 80", false},    /* overlong */
        {"e0 9f bf", false},    /* overlong */
        {"f0 8f bf bf", false}, /* overlong */
        {"ed a0 80", false},    /* U+D800 [MQTT-1.5.4-1] */
        {"ed bf bf", false},    /* U+DFFF */
        {"f4 90 80 80", false}, /* U+110000 */
        {"f5 80 80 80", false},
        {"ff", false},
        {"80", false},              /* stray continuation */
        {"'abcdefg' e2 82", false}, /* truncated */
        {"e2 28 a1", false},        /* bad continuation */
        {"f0 9f 98", false},
        {"'abcdefghijklmnop' c3", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t buf[64];
        size_t n = s_hex(cases[i].hex, buf, sizeof buf);
        if (lk_mqtt_utf8_valid((const char *)buf, n) != cases[i].ok) {
            fprintf(stderr, "lk_mqtt: UTF-8 case '%s' should be %s\n", cases[i].hex,
                    cases[i].ok ? "valid" : "invalid");
            return 1;
        }
    }
    /* U+0000 is well-formed UTF-8: a format-1 payload may hold it */
    S_CHECK(s_utf8((const uint8_t *)"a\0b", 3, true));
    S_CHECK(!s_utf8((const uint8_t *)"a\xc0\x80", 3, true));
    return 0;
}

#define S_STR(lit) lit, sizeof(lit) - 1

static int s_test_topics(void)
{
    /* topic names */
    S_CHECK(lk_mqtt_topic_valid(S_STR("a/b")));
    S_CHECK(lk_mqtt_topic_valid(S_STR("/")));
    S_CHECK(lk_mqtt_topic_valid(S_STR("$SYS/x")));
    S_CHECK(!lk_mqtt_topic_valid(S_STR("")));    /* [MQTT-4.7.3-1] */
    S_CHECK(!lk_mqtt_topic_valid(S_STR("a/+"))); /* [MQTT-3.3.2-2] */
    S_CHECK(!lk_mqtt_topic_valid(S_STR("a/#")));
    S_CHECK(!lk_mqtt_topic_valid(S_STR("a\0b"))); /* [MQTT-4.7.3-2] */

    /* filters (4.7.1) */
    S_CHECK(lk_mqtt_filter_valid(S_STR("#"), false));
    S_CHECK(lk_mqtt_filter_valid(S_STR("+"), false));
    S_CHECK(lk_mqtt_filter_valid(S_STR("sport/#"), false));
    S_CHECK(lk_mqtt_filter_valid(S_STR("sport/tennis/+"), false));
    S_CHECK(lk_mqtt_filter_valid(S_STR("+/+"), false));
    S_CHECK(lk_mqtt_filter_valid(S_STR("/+"), false));
    S_CHECK(lk_mqtt_filter_valid(S_STR("+/tennis/#"), false));
    S_CHECK(lk_mqtt_filter_valid(S_STR("/"), false));
    S_CHECK(lk_mqtt_filter_valid(S_STR("//"), false));
    S_CHECK(!lk_mqtt_filter_valid(S_STR(""), false));              /* [MQTT-4.7.3-1] */
    S_CHECK(!lk_mqtt_filter_valid(S_STR("sport/tennis#"), false)); /* [MQTT-4.7.1-2] */
    S_CHECK(!lk_mqtt_filter_valid(S_STR("sport/tennis/#/ranking"), false));
    S_CHECK(!lk_mqtt_filter_valid(S_STR("#/a"), false));
    S_CHECK(!lk_mqtt_filter_valid(S_STR("sport+"), false)); /* [MQTT-4.7.1-3] */
    S_CHECK(!lk_mqtt_filter_valid(S_STR("sport/+tennis"), false));
    S_CHECK(!lk_mqtt_filter_valid(S_STR("++"), false));
    S_CHECK(!lk_mqtt_filter_valid(S_STR("a\0b"), false));
    S_CHECK(!lk_mqtt_filter_valid("\xed\xa0\x80", 3, false));

    /* shared subscriptions (4.8.2) */
    S_CHECK(lk_mqtt_filter_valid(S_STR("$share/group/a/b"), true));
    S_CHECK(lk_mqtt_filter_valid(S_STR("$share/group/#"), true));
    S_CHECK(lk_mqtt_filter_valid(S_STR("$share/g/+/x"), true));
    S_CHECK(lk_mqtt_filter_valid(S_STR("$share/g//"), true));
    S_CHECK(!lk_mqtt_filter_valid(S_STR("$share//a"), true));   /* empty group */
    S_CHECK(!lk_mqtt_filter_valid(S_STR("$share/g+/a"), true)); /* [MQTT-4.8.2-2] */
    S_CHECK(!lk_mqtt_filter_valid(S_STR("$share/#/a"), true));
    S_CHECK(!lk_mqtt_filter_valid(S_STR("$share/+/a"), true));
    S_CHECK(!lk_mqtt_filter_valid(S_STR("$share/group"), true));  /* no filter */
    S_CHECK(!lk_mqtt_filter_valid(S_STR("$share/group/"), true)); /* [MQTT-4.8.2-1] */
    S_CHECK(!lk_mqtt_filter_valid(S_STR("$share/group/a#"), true));
    S_CHECK(!lk_mqtt_filter_valid(S_STR("$share/"), true));
    /* without share_ok, $share/... is an ordinary filter */
    S_CHECK(lk_mqtt_filter_valid(S_STR("$share/group"), false));
    S_CHECK(lk_mqtt_filter_valid(S_STR("$share/group/"), false));
    S_CHECK(lk_mqtt_filter_valid(S_STR("$sharegroup/a"), true));

    /* matching (4.7.1, 4.7.2) */
    static const struct {
        const char *filter;
        const char *topic;
        bool match;
    } m[] = {
        {"sport/tennis/player1/#", "sport/tennis/player1", true},
        {"sport/tennis/player1/#", "sport/tennis/player1/ranking", true},
        {"sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
        {"sport/#", "sport", true},
        {"sport/#", "sports", false},
        {"sport/#", "sport/", true},
        {"#", "sport/tennis", true},
        {"#", "/", true},
        {"sport/tennis/+", "sport/tennis/player1", true},
        {"sport/tennis/+", "sport/tennis/player1/ranking", false},
        {"sport/+", "sport", false},
        {"sport/+", "sport/", true},
        {"+/+", "/finance", true},
        {"/+", "/finance", true},
        {"+", "/finance", false},
        {"+", "finance", true},
        {"+/tennis/#", "sport/tennis", true},
        {"+/tennis/#", "sport/tennis/x/y", true},
        {"+/tennis/#", "sport/golf", false},
        {"a/b", "a/b", true},
        {"a/b", "a/bc", false},
        {"a/bc", "a/b", false},
        {"a/b", "a/b/c", false},
        {"a/b/c", "a/b", false},
        {"a//b", "a//b", true},
        {"a/+/b", "a//b", true},
        {"/", "/", true},
        {"A", "a", false},
        /* [MQTT-4.7.2-1] wildcards at the start do not match $ topics */
        {"#", "$SYS/broker/uptime", false},
        {"+/monitor/Clients", "$SYS/monitor/Clients", false},
        {"+", "$SYS", false},
        {"$SYS/#", "$SYS/monitor/Clients", true},
        {"$SYS/monitor/+", "$SYS/monitor/Clients", true},
        {"$SYS/#", "$SYS", true},
        {"a/#", "a/$x", true},
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        bool got =
            lk_mqtt_topic_matches(m[i].filter, strlen(m[i].filter), m[i].topic, strlen(m[i].topic));
        if (got != m[i].match) {
            fprintf(stderr, "lk_mqtt: '%s' vs '%s' should %smatch\n", m[i].filter, m[i].topic,
                    m[i].match ? "" : "not ");
            return 1;
        }
    }

    S_CHECK(strcmp(lk_mqtt_type_name(LK_MQTT_PUBLISH), "PUBLISH") == 0);
    S_CHECK(strcmp(lk_mqtt_type_name(LK_MQTT_AUTH), "AUTH") == 0);
    S_CHECK(strcmp(lk_mqtt_type_name(99), "UNKNOWN") == 0);
    return 0;
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int s_bench(const char *what, const char *hex, uint8_t version)
{
    uint8_t buf[512];
    size_t n = s_hex(hex, buf, sizeof buf);
    lk_mqtt_packet_t p;
    S_CHECK(lk_mqtt_decode(buf, n, version, true, &p) == 0);
    lk_mqtt_packet_free(&p);
    const int rounds = 2000000;
    double t0 = s_now();
    unsigned sink = 0;
    for (int i = 0; i < rounds; i++) {
        sink += (unsigned)lk_mqtt_decode(buf, n, version, true, &p);
        sink += p.u.publish.payload.len;
        lk_mqtt_packet_free(&p);
    }
    double t1 = s_now();
    lk_wbuf_t out;
    lk_wbuf_init(&out);
    lk_mqtt_decode(buf, n, version, true, &p);
    for (int i = 0; i < rounds; i++) {
        out.len = 0;
        sink += (unsigned)lk_mqtt_encode(&out, version, &p);
    }
    double t2 = s_now();
    lk_mqtt_packet_free(&p);
    lk_wbuf_free(&out);
    printf("  bench %s: decode %.1f ns, encode %.1f ns (%u)\n", what, (t1 - t0) * 1e9 / rounds,
           (t2 - t1) * 1e9 / rounds, sink & 1);
    return 0;
}

int lk_mqtt_test(bool verbose)
{
    if (verbose)
        printf(" * lk_mqtt: ");
    int failed = 0, count = 0;
    for (const s_vec_t *v = s_vectors; v->what; v++, count++)
        if (s_check_vector(v, verbose))
            failed++;
    if (verbose)
        printf("  %d vectors, %d failed\n", count, failed);
    if (failed)
        return 1;
    if (s_test_fields() || s_test_frame() || s_test_encode() || s_test_props() || s_test_utf8() ||
        s_test_topics())
        return 1;
    if (verbose) {
        int rc =
            s_bench("3.1.1 PUBLISH QoS 0",
                    "30 38 00 1a 'devices/d-000042/telemetry' 'temperature=21.5;humidity=40'", 4);
        rc |= s_bench("5 PUBLISH QoS 1 with 2 properties",
                      "32 42 00 1a 'devices/d-000042/telemetry' 00 01 07 01 01 02 00 00 00 3c"
                      " 'temperature=21.5;humidity=40'",
                      5);
        if (rc)
            return 1;
        printf("OK\n");
    }
    return 0;
}
