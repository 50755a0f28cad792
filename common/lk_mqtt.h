/*  lk_mqtt: the MQTT codec, versions 3.1 (MQIsdp), 3.1.1 and 5.0.

    One packet struct serves both directions: lk_mqtt_decode() fills it from a complete
    frame, lk_mqtt_encode() appends its wire form to a byte buffer. Decoded strings and
    binaries are views (lk_str_t) into the caller's frame: the frame must outlive the
    packet. Arrays that a packet may carry in any number (subscribe entries, reason codes,
    user properties, subscription identifiers) are heap-allocated by decode and released
    by lk_mqtt_packet_free(); for encode the caller points them at its own storage.

    Every read is bounds-checked; bad input returns an MQTT 5 reason code (0x81 malformed,
    0x82 protocol error, ...) and never touches memory outside the frame. This file is the
    only one that knows the byte layout of MQTT.
*/
#ifndef LK_MQTT_H_INCLUDED
#define LK_MQTT_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* protocol level byte of CONNECT */
#define LK_MQTT_V31  3
#define LK_MQTT_V311 4
#define LK_MQTT_V5   5

/* packet types (high nibble of the fixed header) */
enum {
    LK_MQTT_CONNECT = 1,
    LK_MQTT_CONNACK = 2,
    LK_MQTT_PUBLISH = 3,
    LK_MQTT_PUBACK = 4,
    LK_MQTT_PUBREC = 5,
    LK_MQTT_PUBREL = 6,
    LK_MQTT_PUBCOMP = 7,
    LK_MQTT_SUBSCRIBE = 8,
    LK_MQTT_SUBACK = 9,
    LK_MQTT_UNSUBSCRIBE = 10,
    LK_MQTT_UNSUBACK = 11,
    LK_MQTT_PINGREQ = 12,
    LK_MQTT_PINGRESP = 13,
    LK_MQTT_DISCONNECT = 14,
    LK_MQTT_AUTH = 15
};

/* pseudo packet type for lk_mqtt_props_decode(): the will properties of a CONNECT */
#define LK_MQTT_WILL_PROPS 16

/* MQTT 5 reason codes used across the code base (the full set is in the spec, 2.4) */
enum {
    LK_RC_SUCCESS = 0x00,
    LK_RC_GRANTED_QOS1 = 0x01,
    LK_RC_GRANTED_QOS2 = 0x02,
    LK_RC_DISCONNECT_WITH_WILL = 0x04,
    LK_RC_NO_MATCHING_SUBSCRIBERS = 0x10,
    LK_RC_NO_SUBSCRIPTION_EXISTED = 0x11,
    LK_RC_CONTINUE_AUTH = 0x18,
    LK_RC_REAUTHENTICATE = 0x19,
    LK_RC_UNSPECIFIED = 0x80,
    LK_RC_MALFORMED = 0x81,
    LK_RC_PROTOCOL_ERROR = 0x82,
    LK_RC_IMPL_SPECIFIC = 0x83,
    LK_RC_UNSUPPORTED_VERSION = 0x84,
    LK_RC_CLIENT_ID_INVALID = 0x85,
    LK_RC_BAD_USERNAME_PASSWORD = 0x86,
    LK_RC_NOT_AUTHORIZED = 0x87,
    LK_RC_SERVER_UNAVAILABLE = 0x88,
    LK_RC_SERVER_BUSY = 0x89,
    LK_RC_BANNED = 0x8A,
    LK_RC_SERVER_SHUTTING_DOWN = 0x8B,
    LK_RC_BAD_AUTH_METHOD = 0x8C,
    LK_RC_KEEP_ALIVE_TIMEOUT = 0x8D,
    LK_RC_SESSION_TAKEN_OVER = 0x8E,
    LK_RC_TOPIC_FILTER_INVALID = 0x8F,
    LK_RC_TOPIC_NAME_INVALID = 0x90,
    LK_RC_PACKET_ID_IN_USE = 0x91,
    LK_RC_PACKET_ID_NOT_FOUND = 0x92,
    LK_RC_RECEIVE_MAX_EXCEEDED = 0x93,
    LK_RC_TOPIC_ALIAS_INVALID = 0x94,
    LK_RC_PACKET_TOO_LARGE = 0x95,
    LK_RC_MESSAGE_RATE_TOO_HIGH = 0x96,
    LK_RC_QUOTA_EXCEEDED = 0x97,
    LK_RC_ADMIN_ACTION = 0x98,
    LK_RC_PAYLOAD_FORMAT_INVALID = 0x99,
    LK_RC_RETAIN_NOT_SUPPORTED = 0x9A,
    LK_RC_QOS_NOT_SUPPORTED = 0x9B,
    LK_RC_USE_ANOTHER_SERVER = 0x9C,
    LK_RC_SERVER_MOVED = 0x9D,
    LK_RC_SHARED_SUB_NOT_SUPPORTED = 0x9E,
    LK_RC_CONNECTION_RATE_EXCEEDED = 0x9F,
    LK_RC_MAX_CONNECT_TIME = 0xA0,
    LK_RC_SUB_IDS_NOT_SUPPORTED = 0xA1,
    LK_RC_WILDCARD_SUB_NOT_SUPPORTED = 0xA2
};

/* MQTT 3.1/3.1.1 CONNACK return codes */
enum {
    LK_CONNACK_ACCEPTED = 0,
    LK_CONNACK_BAD_VERSION = 1,
    LK_CONNACK_ID_REJECTED = 2,
    LK_CONNACK_UNAVAILABLE = 3,
    LK_CONNACK_BAD_CREDENTIALS = 4,
    LK_CONNACK_NOT_AUTHORIZED = 5
};

/* property identifiers (MQTT 5, 2.2.2.2) */
enum {
    LK_PROP_PAYLOAD_FORMAT = 0x01,
    LK_PROP_MESSAGE_EXPIRY = 0x02,
    LK_PROP_CONTENT_TYPE = 0x03,
    LK_PROP_RESPONSE_TOPIC = 0x08,
    LK_PROP_CORRELATION_DATA = 0x09,
    LK_PROP_SUBSCRIPTION_ID = 0x0B,
    LK_PROP_SESSION_EXPIRY = 0x11,
    LK_PROP_ASSIGNED_CLIENT_ID = 0x12,
    LK_PROP_SERVER_KEEP_ALIVE = 0x13,
    LK_PROP_AUTH_METHOD = 0x15,
    LK_PROP_AUTH_DATA = 0x16,
    LK_PROP_REQUEST_PROBLEM_INFO = 0x17,
    LK_PROP_WILL_DELAY = 0x18,
    LK_PROP_REQUEST_RESPONSE_INFO = 0x19,
    LK_PROP_RESPONSE_INFO = 0x1A,
    LK_PROP_SERVER_REFERENCE = 0x1C,
    LK_PROP_REASON_STRING = 0x1F,
    LK_PROP_RECEIVE_MAXIMUM = 0x21,
    LK_PROP_TOPIC_ALIAS_MAXIMUM = 0x22,
    LK_PROP_TOPIC_ALIAS = 0x23,
    LK_PROP_MAXIMUM_QOS = 0x24,
    LK_PROP_RETAIN_AVAILABLE = 0x25,
    LK_PROP_USER_PROPERTY = 0x26,
    LK_PROP_MAXIMUM_PACKET_SIZE = 0x27,
    LK_PROP_WILDCARD_SUB_AVAILABLE = 0x28,
    LK_PROP_SUB_ID_AVAILABLE = 0x29,
    LK_PROP_SHARED_SUB_AVAILABLE = 0x2A
};

/* a view of bytes; not NUL-terminated */
typedef struct {
    const char *p;
    uint32_t len;
} lk_str_t;

typedef struct {
    lk_str_t key;
    lk_str_t value;
} lk_mqtt_user_prop_t;

/* MQTT 5 properties. `has` holds one bit per property id: (1ULL << id). User properties
   and subscription identifiers keep wire order. Decode sets the bits of user property
   and subscription identifier when there are any; encode sends those whenever their count
   is non-zero, whatever `has` says. Encode writes properties in id order. */
typedef struct {
    uint64_t has;
    uint8_t payload_format;
    uint32_t message_expiry;
    lk_str_t content_type;
    lk_str_t response_topic;
    lk_str_t correlation_data;
    uint32_t session_expiry;
    lk_str_t assigned_client_id;
    uint16_t server_keep_alive;
    lk_str_t auth_method;
    lk_str_t auth_data;
    uint8_t request_problem_info;
    uint32_t will_delay;
    uint8_t request_response_info;
    lk_str_t response_info;
    lk_str_t server_reference;
    lk_str_t reason_string;
    uint16_t receive_maximum;
    uint16_t topic_alias_maximum;
    uint16_t topic_alias;
    uint8_t maximum_qos;
    uint8_t retain_available;
    uint32_t maximum_packet_size;
    uint8_t wildcard_sub_available;
    uint8_t sub_id_available;
    uint8_t shared_sub_available;
    lk_mqtt_user_prop_t *user_props;    /* decode: heap; encode: caller's */
    uint32_t user_prop_count;
    uint32_t *sub_ids;                  /* decode: heap; encode: caller's */
    uint32_t sub_id_count;
    /* decode only: the raw property block (after its length), for forwarding */
    lk_str_t raw;
} lk_mqtt_props_t;

#define LK_PROP_HAS(props, id) (((props)->has >> (id)) & 1)
#define LK_PROP_SET(props, id) ((props)->has |= (1ULL << (id)))

typedef struct {
    lk_str_t topic_filter;
    uint8_t qos;                /* bits 0-1 of the options byte */
    bool no_local;              /* v5 */
    bool retain_as_published;   /* v5 */
    uint8_t retain_handling;    /* v5 */
} lk_mqtt_sub_entry_t;

typedef struct {
    lk_str_t protocol_name;     /* "MQTT" or "MQIsdp" */
    uint8_t version;            /* LK_MQTT_V31 / V311 / V5 */
    bool clean;                 /* clean session (3.x) / clean start (5) */
    bool will;
    uint8_t will_qos;
    bool will_retain;
    bool has_username;
    bool has_password;
    uint16_t keepalive;
    lk_str_t client_id;
    lk_mqtt_props_t will_props; /* v5 */
    lk_str_t will_topic;
    lk_str_t will_payload;
    lk_str_t username;
    lk_str_t password;
} lk_mqtt_connect_t;

typedef struct {
    bool session_present;
    uint8_t code;               /* 3.x return code or 5 reason code */
} lk_mqtt_connack_t;

typedef struct {
    bool dup;
    uint8_t qos;
    bool retain;
    lk_str_t topic;             /* may be empty in v5 when a topic alias is used */
    uint16_t packet_id;         /* QoS > 0 only */
    lk_str_t payload;
} lk_mqtt_publish_t;

/* PUBACK, PUBREC, PUBREL, PUBCOMP, and the packet id of SUBACK/UNSUBACK/SUBSCRIBE/UNSUBSCRIBE */
typedef struct {
    uint16_t packet_id;
    uint8_t reason;             /* v5; 0 when absent on the wire */
} lk_mqtt_ack_t;

typedef struct {
    uint16_t packet_id;
    lk_mqtt_sub_entry_t *entries;   /* decode: heap; encode: caller's */
    uint32_t count;
} lk_mqtt_subscribe_t;

typedef struct {
    uint16_t packet_id;
    lk_str_t *filters;              /* decode: heap; encode: caller's */
    uint32_t count;
} lk_mqtt_unsubscribe_t;

/* SUBACK and UNSUBACK (UNSUBACK in 3.1.1 has no codes: count 0) */
typedef struct {
    uint16_t packet_id;
    uint8_t *codes;                 /* decode: heap; encode: caller's */
    uint32_t count;
} lk_mqtt_suback_t;

/* DISCONNECT and AUTH */
typedef struct {
    uint8_t reason;
} lk_mqtt_reason_t;

typedef struct {
    uint8_t type;               /* LK_MQTT_CONNECT .. LK_MQTT_AUTH */
    uint8_t flags;              /* low nibble of the fixed header byte */
    lk_mqtt_props_t props;      /* v5 properties of the packet (will props are in connect) */
    union {
        lk_mqtt_connect_t connect;
        lk_mqtt_connack_t connack;
        lk_mqtt_publish_t publish;
        lk_mqtt_ack_t ack;      /* PUBACK PUBREC PUBREL PUBCOMP */
        lk_mqtt_subscribe_t subscribe;
        lk_mqtt_unsubscribe_t unsubscribe;
        lk_mqtt_suback_t suback;    /* SUBACK UNSUBACK */
        lk_mqtt_reason_t reason;    /* DISCONNECT AUTH */
    } u;
    /* decode bookkeeping: which arrays decode allocated (freed by lk_mqtt_packet_free) */
    void *alloc_[4];
} lk_mqtt_packet_t;

/* growable output buffer */
typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
} lk_wbuf_t;

void lk_wbuf_init(lk_wbuf_t *b);
void lk_wbuf_free(lk_wbuf_t *b);
/* makes room for n more bytes; aborts on out of memory */
void lk_wbuf_reserve(lk_wbuf_t *b, size_t n);
void lk_wbuf_append(lk_wbuf_t *b, const void *data, size_t n);
/* drops the first n bytes (after a partial write) */
void lk_wbuf_consume(lk_wbuf_t *b, size_t n);

/* Frames a packet at the start of buf. Returns 1 with *frame_len (fixed header + body)
   when a whole packet is there, 0 when more bytes are needed, -1 when the remaining
   length is malformed (more than 4 bytes; a non-minimal encoding is tolerated), -2 when
   the packet is larger than max_packet (0 = no limit beyond the protocol's 268435455 + 5).
   *body_len (and *frame_len, the total size the packet will have) is set as soon as the
   fixed header is complete (for -2 and for 0 after the header), so a caller can refuse an
   oversize packet before reading its body. Either pointer may be NULL. */
int lk_mqtt_frame(const uint8_t *buf, size_t len, size_t max_packet, size_t *frame_len,
                  size_t *body_len);

/* Decodes one whole frame (as delimited by lk_mqtt_frame). `version` is the connection's
   protocol level; it is ignored for CONNECT (read from the packet) and, before CONNECT,
   any packet other than CONNECT is a protocol error for the caller to decide.
   `server` is true when decoding what a client sent (a broker), false for a client
   decoding what a broker sent; it selects which packet types are legal.
   Returns 0, or a v5 reason code: LK_RC_MALFORMED, LK_RC_PROTOCOL_ERROR,
   LK_RC_UNSUPPORTED_VERSION (CONNECT with an unknown level or name: pkt->u.connect.version
   is still set when readable so the caller can answer in the right form),
   LK_RC_TOPIC_NAME_INVALID, LK_RC_TOPIC_FILTER_INVALID, LK_RC_PAYLOAD_FORMAT_INVALID.
   Checks done here: reserved flag bits per type, remaining-length consistency, UTF-8
   well-formedness and no U+0000 in strings, PUBLISH QoS 3 and wildcards in topic names,
   packet id 0 where one is required, SUBSCRIBE/UNSUBSCRIBE with no entries, subscription
   option reserved bits, property ids allowed per packet type and not duplicated (except
   user property and subscription identifier), subscription identifier 0, receive
   maximum 0, maximum packet size 0, topic alias 0. On error the packet needs
   lk_mqtt_packet_free() all the same.

   Decode zeroes *pkt first: free the previous packet before decoding into it again.
   Codes that every version uses: LK_RC_MALFORMED for a byte layout that cannot be right
   (bad lengths, bad UTF-8, reserved bits, QoS 3, DUP on QoS 0, property id not allowed
   for the type, trailing bytes); LK_RC_PROTOCOL_ERROR for well-formed but forbidden
   content (packet id 0 anywhere one is carried, no SUBSCRIBE/UNSUBSCRIBE entries,
   duplicate property, out-of-range property value, retain handling 3, No Local on a
   $share filter, a reason code not listed for the packet type, a packet type not legal in
   this direction or version, empty PUBLISH topic in 3.x, password without user name in
   3.1.1, subscription identifier in a PUBLISH sent to a server).

   LK_RC_TOPIC_NAME_INVALID (wildcard in a PUBLISH topic, or empty/wildcard will topic)
   and LK_RC_PAYLOAD_FORMAT_INVALID (payload format indicator 1 and a payload that is not
   UTF-8, in PUBLISH or in the will) are returned only after the whole packet decoded
   cleanly: every field, packet id included, is filled, so a broker can answer PUBACK or
   CONNACK with that reason code. A v5 PUBLISH with an empty topic returns 0: the caller
   checks that a topic alias is present.

   SUBSCRIBE/UNSUBSCRIBE filters are checked for UTF-8 only: decode never returns
   LK_RC_TOPIC_FILTER_INVALID. The caller checks each filter with lk_mqtt_filter_valid()
   and refuses it per entry (v5: SUBACK/UNSUBACK 0x8F; 3.1.1: SUBACK 0x80).

   MQTT 3.1 leniency: DUP may be set on PUBREL/SUBSCRIBE/UNSUBSCRIBE (3.1 retries set
   it), the first CONNACK byte is ignored, and a CONNECT whose user name or password
   flag is set but whose field is absent at the end decodes with the flag cleared. */
int lk_mqtt_decode(const uint8_t *frame, size_t len, uint8_t version, bool server,
                   lk_mqtt_packet_t *pkt);

void lk_mqtt_packet_free(lk_mqtt_packet_t *pkt);

/* Appends the wire form of pkt (fixed header, variable header, properties when
   version is V5, payload). Returns 0, or -1 when a field cannot be encoded (string over
   65535 bytes, packet over 268435455 bytes, QoS 3, retain handling 3, AUTH before v5,
   a version other than 3, 4, 5); out is then unchanged.
   The fixed header flags come from the packet (PUBLISH dup/qos/retain) or the type, never
   from pkt->flags. A CONNECT is encoded for `version` (its protocol name and level;
   u.connect.protocol_name and version are ignored). Only the properties allowed for the
   packet type are written. v5 acks use the short forms: no reason code when it is 0 and
   there are no properties, no property length when there are none; DISCONNECT with
   reason 0 and no properties has remaining length 0, AUTH likewise. */
int lk_mqtt_encode(lk_wbuf_t *out, uint8_t version, const lk_mqtt_packet_t *pkt);

/* Encodes just a property block's contents (no length prefix) for the ids set in
   `has & mask`. Used to carry forwardable properties in a bus Msg. A property that
   cannot be encoded (string over 65535 bytes, subscription identifier 0) is left out. */
void lk_mqtt_props_encode(lk_wbuf_t *out, const lk_mqtt_props_t *props, uint64_t mask);

/* Decodes a property block's contents (no length prefix), as made by
   lk_mqtt_props_encode. `ptype` is the packet type, for validation (LK_MQTT_PUBLISH for
   forwarded message properties, LK_MQTT_WILL_PROPS for will properties; 0 = accept any
   id). Returns 0 or a reason code; the props need lk_mqtt_props_free() either way (never
   call it on the props of a decoded packet: lk_mqtt_packet_free owns those). */
int lk_mqtt_props_decode(const uint8_t *data, size_t len, uint8_t ptype, lk_mqtt_props_t *props);
void lk_mqtt_props_free(lk_mqtt_props_t *props);

/* Size of the wire form of a property block, length prefix included. */
size_t lk_mqtt_props_size(const lk_mqtt_props_t *props);

/* Topic helpers (MQTT 4.7). Topic names: no wildcards, 1..65535 bytes, valid UTF-8.
   Filters: 1..65535 bytes, valid UTF-8, '#' only last and alone in its level, '+' alone
   in its level; "$share/<group>/<filter>" is checked as a shared subscription when
   share_ok (group non-empty without '+', '#'; filter non-empty and valid), as a plain
   filter otherwise. */
bool lk_mqtt_topic_valid(const char *topic, size_t len);
bool lk_mqtt_filter_valid(const char *filter, size_t len, bool share_ok);
/* does the topic name match the filter (no $share prefix)? Topics starting with '$'
   are not matched by a filter starting with a wildcard [MQTT-4.7.2-1]. */
bool lk_mqtt_topic_matches(const char *filter, size_t flen, const char *topic, size_t tlen);
/* UTF-8 well-formed per MQTT 1.5.4: no surrogates, no overlongs, no U+0000. */
bool lk_mqtt_utf8_valid(const char *s, size_t len);

const char *lk_mqtt_type_name(uint8_t type);

/* selftest: 0 on success */
int lk_mqtt_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
