/*  lk_ws: WebSocket (RFC 6455) upgrade parsing and framing for the MQTT frontend; see
    lk_ws.h. Only the server's side: client frames must be masked, ours are not; no
    extensions are negotiated, so the reserved bits must be zero. The SHA-1 of the
    handshake comes from lk_crypto (the one file that talks to OpenSSL's crypto). */
#include "lk_ws.h"
#include "lk_common.h"
#include "lk_crypto.h"
#include <ctype.h>
#include <stdio.h>
#include <strings.h>

static const char s_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* ---- the opening handshake --------------------------------------------------------- */

static char *s_trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
        *--e = 0;
    return s;
}

/* true when the comma-separated list holds token (case-insensitive) */
static bool s_has_token(const char *list, const char *token)
{
    size_t tl = strlen(token);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *te = e;
        while (te > p && (te[-1] == ' ' || te[-1] == '\t'))
            te--;
        if ((size_t)(te - p) == tl && strncasecmp(p, token, tl) == 0)
            return true;
        p = e;
    }
    return false;
}

int lk_ws_request_parse(const uint8_t *buf, size_t len, lk_ws_request_t *req)
{
    static const char get[] = "GET ";
    /* first: lk_ws_refusal() reads req after any outcome */
    memset(req, 0, sizeof(*req));
    size_t n = len < 4 ? len : 4;
    if (memcmp(buf, get, n) != 0)
        return -1;
    size_t end = 0;
    size_t scan = len < LK_WS_REQUEST_MAX ? len : LK_WS_REQUEST_MAX;
    for (size_t i = 3; i < scan; i++)
        if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' && buf[i - 3] == '\r') {
            end = i + 1;
            break;
        }
    if (end == 0)
        return len >= LK_WS_REQUEST_MAX ? -2 : 0;
    if (memchr(buf, 0, end))
        return -1;
    char head[LK_WS_REQUEST_MAX + 1];
    memcpy(head, buf, end);
    head[end] = 0;

    char *save = NULL;
    char *line = strtok_r(head, "\r\n", &save);
    /* GET <path> HTTP/1.1 (or a later 1.x) */
    char path[sizeof(req->path)], version[16];
    if (!line || sscanf(line, "GET %255s HTTP/%15s", path, version) != 2 ||
        strncmp(version, "1.", 2) != 0 || !isdigit((unsigned char)version[2]) ||
        version[2] == '0' || version[3])
        return -1;
    snprintf(req->path, sizeof(req->path), "%s", path);

    bool upgrade = false, connection = false, has_version = false, offered = false;
    bool mqtt = false, mqtt31 = false;
    while ((line = strtok_r(NULL, "\r\n", &save)) != NULL) {
        char *colon = strchr(line, ':');
        if (!colon || colon == line)
            return -1;
        *colon = 0;
        char *name = line, *value = s_trim(colon + 1);
        for (char *c = name; *c; c++)
            if (*c == ' ' || *c == '\t')
                return -1; /* no space before the colon (RFC 7230 3.2.4) */
        if (strcasecmp(name, "Upgrade") == 0)
            upgrade |= s_has_token(value, "websocket");
        else if (strcasecmp(name, "Connection") == 0)
            connection |= s_has_token(value, "upgrade");
        else if (strcasecmp(name, "Sec-WebSocket-Key") == 0) {
            uint8_t raw[32];
            if (strlen(value) >= sizeof(req->key) ||
                lk_crypto_b64_decode(value, raw, sizeof(raw)) != 16)
                return -1;
            snprintf(req->key, sizeof(req->key), "%s", value);
        } else if (strcasecmp(name, "Sec-WebSocket-Version") == 0) {
            has_version = true;
            if (strcmp(value, "13") != 0)
                req->bad_version = true;
        } else if (strcasecmp(name, "Sec-WebSocket-Protocol") == 0) {
            offered = true;
            mqtt |= s_has_token(value, "mqtt");
            mqtt31 |= s_has_token(value, "mqttv3.1");
        }
    }
    if (!upgrade || !connection || !req->key[0] || !has_version || req->bad_version)
        return -1;
    if (offered && !mqtt && !mqtt31)
        return -1;
    snprintf(req->protocol, sizeof(req->protocol), "%s",
             mqtt ? "mqtt" : mqtt31 ? "mqttv3.1" : "");
    return (int)end;
}

void lk_ws_accept_key(const char *key, char out[29])
{
    char in[64 + sizeof(s_guid)];
    int n = snprintf(in, sizeof(in), "%s%s", key, s_guid);
    uint8_t sha[20];
    lk_crypto_sha1(in, (size_t)n, sha);
    char *b = lk_crypto_b64_encode(sha, sizeof(sha));
    snprintf(out, 29, "%s", b);
    free(b);
}

int lk_ws_response(const lk_ws_request_t *req, char *out, size_t cap)
{
    char accept[29];
    lk_ws_accept_key(req->key, accept);
    char proto[48] = "";
    if (req->protocol[0])
        snprintf(proto, sizeof(proto), "Sec-WebSocket-Protocol: %s\r\n", req->protocol);
    int n = snprintf(out, cap,
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n"
                     "%s\r\n",
                     accept, proto);
    return n < 0 || (size_t)n >= cap ? -1 : n;
}

const char *lk_ws_refusal(int rc, const lk_ws_request_t *req)
{
    if (rc == -2)
        return "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
               "Content-Length: 0\r\n\r\n";
    if (req && req->bad_version)
        return "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"
               "Connection: close\r\nContent-Length: 0\r\n\r\n";
    return "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
}

/* ---- frames ------------------------------------------------------------------------ */

void lk_ws_decoder_init(lk_ws_decoder_t *d)
{
    memset(d, 0, sizeof(*d));
}

void lk_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset)
{
    /* rotate the key so that key[i & 3] applies to p[i], then go a word at a time */
    uint8_t k[8];
    for (int i = 0; i < 8; i++)
        k[i] = mask[(offset + (uint64_t)i) & 3];
    size_t i = 0;
    uint64_t kw;
    memcpy(&kw, k, 8);
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        w ^= kw;
        memcpy(p + i, &w, 8);
    }
    for (; i < n; i++)
        p[i] ^= k[i & 7];
}

size_t lk_ws_header(uint8_t hdr[LK_WS_HEADER_MAX], uint8_t opcode, uint64_t len,
                    const uint8_t *mask)
{
    size_t n = 0;
    hdr[n++] = (uint8_t)(0x80 | (opcode & 0x0f));
    uint8_t m = mask ? 0x80 : 0;
    if (len < 126)
        hdr[n++] = (uint8_t)(m | len);
    else if (len <= 0xffff) {
        hdr[n++] = m | 126;
        hdr[n++] = (uint8_t)(len >> 8);
        hdr[n++] = (uint8_t)len;
    } else {
        hdr[n++] = m | 127;
        for (int s = 56; s >= 0; s -= 8)
            hdr[n++] = (uint8_t)(len >> s);
    }
    if (mask) {
        memcpy(hdr + n, mask, 4);
        n += 4;
    }
    return n;
}

static lk_ws_event_t s_error(lk_ws_decoder_t *d, uint16_t code, const char *why)
{
    d->close_code = code;
    d->error = why;
    return LK_WS_ERROR;
}

/* close codes a peer may send (RFC 6455 7.4.1, 7.4.2) */
static bool s_close_code_ok(uint16_t c)
{
    return (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1011) || (c >= 3000 && c <= 4999);
}

/* parses a frame header at in; 0 more needed, 1 done (*hl its length), -1 error */
static int s_header(lk_ws_decoder_t *d, const uint8_t *in, size_t len, size_t *hl)
{
    if (len < 2)
        return 0;
    uint8_t b0 = in[0], b1 = in[1];
    uint8_t op = b0 & 0x0f, plen = b1 & 0x7f;
    bool fin = b0 & 0x80;
    if (b0 & 0x70) {
        s_error(d, LK_WS_CLOSE_PROTOCOL, "reserved bits set");
        return -1;
    }
    if (!(b1 & 0x80)) {
        s_error(d, LK_WS_CLOSE_PROTOCOL, "unmasked client frame");
        return -1;
    }
    if (op >= 0x8) {
        if (op > LK_WS_OP_PONG) {
            s_error(d, LK_WS_CLOSE_PROTOCOL, "unknown control opcode");
            return -1;
        }
        if (!fin || plen > 125) {
            s_error(d, LK_WS_CLOSE_PROTOCOL, "fragmented or long control frame");
            return -1;
        }
    } else if (op == LK_WS_OP_CONT) {
        if (!d->fragmented) {
            s_error(d, LK_WS_CLOSE_PROTOCOL, "continuation without a message");
            return -1;
        }
    } else if (op == LK_WS_OP_BINARY || op == LK_WS_OP_TEXT) {
        if (d->fragmented) {
            s_error(d, LK_WS_CLOSE_PROTOCOL, "new message inside a fragmented one");
            return -1;
        }
        if (op == LK_WS_OP_TEXT) {
            /* [MQTT-6.0.0-1] MQTT is carried in binary frames only */
            s_error(d, LK_WS_CLOSE_UNSUPPORTED, "text frame");
            return -1;
        }
    } else {
        s_error(d, LK_WS_CLOSE_PROTOCOL, "unknown data opcode");
        return -1;
    }
    size_t ext = plen == 126 ? 2 : plen == 127 ? 8 : 0;
    size_t need = 2 + ext + 4;
    if (len < need)
        return 0;
    uint64_t L = plen;
    if (ext) {
        L = 0;
        for (size_t i = 0; i < ext; i++)
            L = (L << 8) | in[2 + i];
        /* the shortest encoding is a MUST (5.2); the top bit of 64 is zero */
        if ((ext == 2 && L < 126) || (ext == 8 && (L <= 0xffff || (L >> 63)))) {
            s_error(d, LK_WS_CLOSE_PROTOCOL, "non-minimal payload length");
            return -1;
        }
    }
    d->in_frame = true;
    d->fin = fin;
    d->opcode = op;
    d->len = L;
    d->done = 0;
    memcpy(d->mask, in + 2 + ext, 4);
    if (op < 0x8) {
        d->fragmented = !fin;
    } else
        d->ctl_len = 0;
    *hl = need;
    return 1;
}

lk_ws_event_t lk_ws_decode(lk_ws_decoder_t *d, uint8_t *in, size_t len, size_t *used,
                           const uint8_t **data, size_t *data_len)
{
    size_t off = 0;
    *data = NULL;
    *data_len = 0;
    for (;;) {
        if (!d->in_frame) {
            size_t hl = 0;
            int r = s_header(d, in + off, len - off, &hl);
            if (r <= 0) {
                *used = off;
                return r == 0 ? LK_WS_MORE : LK_WS_ERROR;
            }
            off += hl;
        }
        uint64_t left = d->len - d->done;
        size_t avail = len - off;
        size_t n = left < avail ? (size_t)left : avail;
        if (d->opcode >= 0x8) {
            memcpy(d->ctl + d->ctl_len, in + off, n);
            lk_ws_mask(d->ctl + d->ctl_len, n, d->mask, d->done);
            d->ctl_len += n;
            d->done += n;
            off += n;
            *used = off;
            if (d->done < d->len)
                return LK_WS_MORE;
            d->in_frame = false;
            if (d->opcode == LK_WS_OP_PING)
                return LK_WS_PING;
            if (d->opcode == LK_WS_OP_PONG)
                return LK_WS_PONG;
            if (d->ctl_len == 1)
                return s_error(d, LK_WS_CLOSE_PROTOCOL, "one-byte close payload");
            d->close_code = 1005;
            if (d->ctl_len >= 2) {
                uint16_t c = (uint16_t)((d->ctl[0] << 8) | d->ctl[1]);
                if (!s_close_code_ok(c))
                    return s_error(d, LK_WS_CLOSE_PROTOCOL, "invalid close code");
                d->close_code = c;
            }
            return LK_WS_CLOSE;
        }
        if (left == 0) {
            /* an empty data frame: nothing to hand out */
            d->in_frame = false;
            continue;
        }
        if (n == 0) {
            *used = off;
            return LK_WS_MORE;
        }
        lk_ws_mask(in + off, n, d->mask, d->done);
        *data = in + off;
        *data_len = n;
        d->done += n;
        off += n;
        if (d->done == d->len)
            d->in_frame = false;
        *used = off;
        return LK_WS_DATA;
    }
}

/* ---- selftest ------------------------------------------------------------------------ */

/* decodes everything in buf (in pieces of step bytes) into out; returns the last event
   that stopped decoding, or LK_WS_MORE */
static lk_ws_event_t s_feed(lk_ws_decoder_t *d, uint8_t *buf, size_t len, size_t step,
                            uint8_t *out, size_t *out_len, int *pings)
{
    uint8_t pending[4096];
    size_t plen = 0, pos = 0;
    *out_len = 0;
    while (pos < len || plen) {
        size_t take = len - pos < step ? len - pos : step;
        memcpy(pending + plen, buf + pos, take);
        plen += take;
        pos += take;
        size_t off = 0;
        for (;;) {
            size_t used;
            const uint8_t *data;
            size_t dl;
            lk_ws_event_t ev = lk_ws_decode(d, pending + off, plen - off, &used, &data, &dl);
            off += used;
            if (ev == LK_WS_DATA) {
                memcpy(out + *out_len, data, dl);
                *out_len += dl;
            } else if (ev == LK_WS_PING)
                (*pings)++;
            else if (ev == LK_WS_MORE)
                break;
            else if (ev != LK_WS_PONG)
                return ev;
        }
        memmove(pending, pending + off, plen - off);
        plen -= off;
        if (take == 0)
            break;
    }
    return LK_WS_MORE;
}

static size_t s_frame(uint8_t *out, uint8_t b0, const void *payload, size_t len,
                      const uint8_t mask[4])
{
    size_t n = lk_ws_header(out, b0 & 0x0f, len, mask);
    out[0] = b0;
    memcpy(out + n, payload, len);
    if (mask)
        lk_ws_mask(out + n, len, mask, 0);
    return n + len;
}

int lk_ws_test(bool verbose)
{
    int fails = 0;
#define S_EXPECT(cond)                                                                             \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("lk_ws: %s:%d: %s\n", __FILE__, __LINE__, #cond);                               \
            fails++;                                                                               \
        }                                                                                          \
    } while (0)
    /* RFC 6455 1.3's example */
    char acc[29];
    lk_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", acc);
    S_EXPECT(strcmp(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0);

    /* refused before the head is read: req is still defined for lk_ws_refusal (fuzz_ws) */
    {
        lk_ws_request_t junk;
        memset(&junk, 0x5b, sizeof(junk));
        const char *post = "POST / HTTP/1.1\r\n\r\n";
        int r = lk_ws_request_parse((const uint8_t *)post, strlen(post), &junk);
        S_EXPECT(r == -1 && !junk.bad_version);
        S_EXPECT(strncmp(lk_ws_refusal(r, &junk), "HTTP/1.1 400", 12) == 0);
    }

    const char *req = "GET /mqtt HTTP/1.1\r\n"
                      "Host: 127.0.0.1:8080\r\n"
                      "Upgrade: websocket\r\n"
                      "Connection: keep-alive, Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "sec-websocket-protocol: mqttv3.1, mqtt\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n\x10";
    lk_ws_request_t r;
    size_t rl = strlen(req);
    S_EXPECT(lk_ws_request_parse((const uint8_t *)req, rl, &r) == (int)rl - 1);
    S_EXPECT(strcmp(r.path, "/mqtt") == 0 && strcmp(r.protocol, "mqtt") == 0);
    for (size_t i = 0; i < rl - 1; i++)
        S_EXPECT(lk_ws_request_parse((const uint8_t *)req, i, &r) == 0);
    char resp[256];
    S_EXPECT(lk_ws_request_parse((const uint8_t *)req, rl, &r) > 0);
    S_EXPECT(lk_ws_response(&r, resp, sizeof(resp)) > 0);
    S_EXPECT(strstr(resp, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n") &&
             strstr(resp, "Sec-WebSocket-Protocol: mqtt\r\n"));
    const char *bad[] = {
        "\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00",         /* MQTT on a WS port */
        "POST /mqtt HTTP/1.1\r\n\r\n",                          /* method */
        "GET /mqtt HTTP/1.0\r\nUpgrade: websocket\r\n\r\n",     /* version */
        "GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n",                /* plain HTTP */
        "GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n", /* 5-byte key */
        "GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: chat\r\n\r\n", /* no MQTT subprotocol */
    };
    for (size_t i = 0; i < LK_ARRAY_LEN(bad); i++)
        S_EXPECT(lk_ws_request_parse((const uint8_t *)bad[i], strlen(bad[i]), &r) == -1);
    const char *v8 = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n";
    S_EXPECT(lk_ws_request_parse((const uint8_t *)v8, strlen(v8), &r) == -1 && r.bad_version);
    S_EXPECT(strstr(lk_ws_refusal(-1, &r), "426"));
    char big[LK_WS_REQUEST_MAX + 10];
    memset(big, 'a', sizeof(big));
    memcpy(big, "GET /", 5);
    S_EXPECT(lk_ws_request_parse((const uint8_t *)big, sizeof(big), &r) == -2);

    /* frames: a masked binary message in three fragments with a ping between, fed one
       byte at a time and all at once */
    const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    uint8_t msg[300];
    for (size_t i = 0; i < sizeof(msg); i++)
        msg[i] = (uint8_t)(i * 7);
    uint8_t wire[1024];
    size_t wl = 0;
    wl += s_frame(wire + wl, LK_WS_OP_BINARY, msg, 10, mask);           /* not final */
    wl += s_frame(wire + wl, 0x80 | LK_WS_OP_PING, "hi", 2, mask);
    wl += s_frame(wire + wl, LK_WS_OP_CONT, msg + 10, 0, mask);          /* empty */
    wl += s_frame(wire + wl, LK_WS_OP_CONT, msg + 10, 200, mask);        /* 16-bit length */
    wl += s_frame(wire + wl, 0x80 | LK_WS_OP_CONT, msg + 210, 90, mask); /* final */
    uint8_t copy[1024], out[1024];
    for (size_t step = 1; step <= wl; step = step * 3 + 1) {
        memcpy(copy, wire, wl);
        lk_ws_decoder_t d;
        lk_ws_decoder_init(&d);
        size_t ol;
        int pings = 0;
        S_EXPECT(s_feed(&d, copy, wl, step, out, &ol, &pings) == LK_WS_MORE);
        S_EXPECT(ol == sizeof(msg) && memcmp(out, msg, ol) == 0 && pings == 1);
        S_EXPECT(!d.fragmented && !d.in_frame);
    }
    /* a close with a code */
    {
        lk_ws_decoder_t d;
        lk_ws_decoder_init(&d);
        uint8_t cw[16];
        size_t cl = s_frame(cw, 0x80 | LK_WS_OP_CLOSE, "\x03\xe8", 2, mask);
        size_t used, dl;
        const uint8_t *data;
        S_EXPECT(lk_ws_decode(&d, cw, cl, &used, &data, &dl) == LK_WS_CLOSE && used == cl &&
                 d.close_code == 1000);
    }
    /* violations */
    struct {
        uint8_t b0;
        size_t len;
        bool masked;
        uint16_t code;
    } viol[] = {
        {0x80 | LK_WS_OP_TEXT, 3, true, LK_WS_CLOSE_UNSUPPORTED},
        {0x80 | LK_WS_OP_BINARY, 3, false, LK_WS_CLOSE_PROTOCOL},
        {0xC0 | LK_WS_OP_BINARY, 3, true, LK_WS_CLOSE_PROTOCOL}, /* RSV1 */
        {0x80 | LK_WS_OP_CONT, 3, true, LK_WS_CLOSE_PROTOCOL},
        {LK_WS_OP_PING, 3, true, LK_WS_CLOSE_PROTOCOL},          /* fragmented ping */
        {0x80 | 0x3, 3, true, LK_WS_CLOSE_PROTOCOL},
        {0x80 | 0xB, 3, true, LK_WS_CLOSE_PROTOCOL},
        {0x80 | LK_WS_OP_PING, 126, true, LK_WS_CLOSE_PROTOCOL},
        {0x80 | LK_WS_OP_CLOSE, 1, true, LK_WS_CLOSE_PROTOCOL},
    };
    for (size_t i = 0; i < LK_ARRAY_LEN(viol); i++) {
        lk_ws_decoder_t d;
        lk_ws_decoder_init(&d);
        uint8_t fw[300];
        size_t fl = s_frame(fw, viol[i].b0, msg, viol[i].len, viol[i].masked ? mask : NULL);
        size_t used, dl;
        const uint8_t *data;
        lk_ws_event_t ev = lk_ws_decode(&d, fw, fl, &used, &data, &dl);
        S_EXPECT(ev == LK_WS_ERROR && d.close_code == viol[i].code);
    }
    {
        /* non-minimal 16-bit length; close code 1005 may not be sent */
        lk_ws_decoder_t d;
        lk_ws_decoder_init(&d);
        uint8_t fw[16] = {0x82, 0x80 | 126, 0, 5, 1, 2, 3, 4};
        size_t used, dl;
        const uint8_t *data;
        S_EXPECT(lk_ws_decode(&d, fw, 8, &used, &data, &dl) == LK_WS_ERROR);
        lk_ws_decoder_init(&d);
        size_t cl = s_frame(fw, 0x80 | LK_WS_OP_CLOSE, "\x03\xed", 2, mask);
        S_EXPECT(lk_ws_decode(&d, fw, cl, &used, &data, &dl) == LK_WS_ERROR);
        /* a binary frame inside a fragmented message */
        lk_ws_decoder_init(&d);
        size_t l1 = s_frame(fw, LK_WS_OP_BINARY, "a", 1, mask);
        S_EXPECT(lk_ws_decode(&d, fw, l1, &used, &data, &dl) == LK_WS_DATA);
        l1 = s_frame(fw, 0x80 | LK_WS_OP_BINARY, "b", 1, mask);
        S_EXPECT(lk_ws_decode(&d, fw, l1, &used, &data, &dl) == LK_WS_ERROR);
    }
    /* server frame headers */
    uint8_t h[LK_WS_HEADER_MAX];
    S_EXPECT(lk_ws_header(h, LK_WS_OP_BINARY, 5, NULL) == 2 && h[0] == 0x82 && h[1] == 5);
    S_EXPECT(lk_ws_header(h, LK_WS_OP_BINARY, 300, NULL) == 4 && h[1] == 126 && h[2] == 1 &&
             h[3] == 44);
    S_EXPECT(lk_ws_header(h, LK_WS_OP_BINARY, 70000, NULL) == 10 && h[1] == 127 && h[7] == 1);
#undef S_EXPECT
    if (verbose)
        printf("lk_ws: %s\n", fails ? "FAIL" : "ok");
    return fails ? -1 : 0;
}
