/*  lk_ws: the server side of WebSocket (RFC 6455) as MQTT uses it (MQTT 5 §6): the HTTP
    upgrade request and its answer, and a frame decoder/encoder. Pure byte functions, no
    sockets: the frontend feeds what it reads and writes what these produce.

    MQTT rides in binary frames as a byte stream: a frame may hold several packets or a
    part of one, so the decoder hands out payload bytes as they come, whatever the frame
    boundaries and fragmentation, and never buffers a data frame whole. Control frames
    (ping, pong, close: at most 125 bytes) are collected and reported one at a time. */
#ifndef LK_WS_H_INCLUDED
#define LK_WS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LK_WS_OP_CONT 0x0
#define LK_WS_OP_TEXT 0x1
#define LK_WS_OP_BINARY 0x2
#define LK_WS_OP_CLOSE 0x8
#define LK_WS_OP_PING 0x9
#define LK_WS_OP_PONG 0xA

/* close codes we send */
#define LK_WS_CLOSE_NORMAL 1000
#define LK_WS_CLOSE_PROTOCOL 1002
#define LK_WS_CLOSE_UNSUPPORTED 1003
#define LK_WS_CLOSE_INVALID 1007

/* the longest request head (request line and headers) we read, and a frame header */
#define LK_WS_REQUEST_MAX 8192
#define LK_WS_HEADER_MAX 14

/* ---- the opening handshake --------------------------------------------------------- */

typedef struct {
    char path[256];
    char key[32];       /* Sec-WebSocket-Key as sent (24 base64 characters) */
    /* the subprotocol we answer with: "mqtt" (MQTT 3.1.1 and 5) or "mqttv3.1" when that is
       all the client offers; empty when the client named none (answered without one) */
    char protocol[16];
    bool bad_version;   /* Sec-WebSocket-Version is not 13: answer 426 */
} lk_ws_request_t;

/* Parses the HTTP/1.1 upgrade request at the start of buf. Returns the length of the
   request head (through the blank line) when whole and valid, 0 when more bytes are
   needed, -1 when it is not a valid WebSocket upgrade (answer lk_ws_refusal(), close),
   -2 when the head passes LK_WS_REQUEST_MAX. A client that offers subprotocols none of
   which is MQTT's is refused (-1). */
int lk_ws_request_parse(const uint8_t *buf, size_t len, lk_ws_request_t *req);

/* Sec-WebSocket-Accept for key: base64(SHA-1(key + GUID)), 28 characters + NUL */
void lk_ws_accept_key(const char *key, char out[29]);

/* the 101 Switching Protocols answer for req, NUL-terminated in out; its length, or -1
   when cap is too small (256 is enough) */
int lk_ws_response(const lk_ws_request_t *req, char *out, size_t cap);

/* the canned answer to a bad request (rc -1 / -2, or req->bad_version) */
const char *lk_ws_refusal(int rc, const lk_ws_request_t *req);

/* ---- frames ------------------------------------------------------------------------ */

typedef enum {
    LK_WS_MORE = 0,     /* everything given was used; read more */
    LK_WS_DATA,         /* *data, *data_len: payload bytes of a binary message */
    LK_WS_PING,         /* a whole ping: answer a pong with d->ctl / d->ctl_len */
    LK_WS_PONG,         /* a pong (ignored by a server that sends no pings) */
    LK_WS_CLOSE,        /* the peer closes: d->close_code (1005 when none was given) */
    LK_WS_ERROR         /* protocol violation: close with d->close_code */
} lk_ws_event_t;

typedef struct {
    /* the frame being read */
    bool in_frame;
    bool fin;
    uint8_t opcode;
    uint8_t mask[4];
    uint64_t len;
    uint64_t done;      /* payload bytes of the frame consumed */
    bool fragmented;    /* a data message began and has not finished */
    /* control frame payload, whole once its frame ends */
    uint8_t ctl[125];
    size_t ctl_len;
    uint16_t close_code;
    const char *error;  /* what the protocol error was, for a log line */
} lk_ws_decoder_t;

void lk_ws_decoder_init(lk_ws_decoder_t *d);

/* Decodes client-to-server frames (which must be masked) from in[0..len), unmasking data
   in place. *used is set to the bytes consumed; the caller calls again with what remains
   until LK_WS_MORE (or an event it acts on). LK_WS_DATA's bytes point into in. */
lk_ws_event_t lk_ws_decode(lk_ws_decoder_t *d, uint8_t *in, size_t len, size_t *used,
                           const uint8_t **data, size_t *data_len);

/* XORs n bytes with mask, p[0] being payload byte number offset */
void lk_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset);

/* Writes the header of a final frame of opcode carrying len payload bytes, masked with
   mask when not NULL (a client's frame; servers send unmasked ones), into hdr; returns the
   header's length (2 to 14). */
size_t lk_ws_header(uint8_t hdr[LK_WS_HEADER_MAX], uint8_t opcode, uint64_t len,
                    const uint8_t *mask);

int lk_ws_test(bool verbose);

#endif
