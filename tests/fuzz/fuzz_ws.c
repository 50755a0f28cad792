/*  fuzz_ws: libFuzzer target for the WebSocket codec (common/lk_ws.c).

    The first byte picks what the rest is:
      even: an HTTP upgrade request. A request accepted at length r is accepted at every
            longer length with the same result, every shorter prefix asks for more, and
            the 101 answer is well formed.
      odd:  client frames. The stream is decoded twice — all at once, and in pieces whose
            sizes come from the input — and both runs must hand out the same data bytes
            and the same control events, stopping at the same error. Each data slice must
            lie inside the buffer given. Then the data bytes are framed again as masked
            client frames of varying sizes and must decode back to themselves. */
#include "lk_common.h"
#include "lk_mqtt.h"
#include "lk_ws.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_ws: %s:%d: %s\n", __FILE__, __LINE__, #cond);                    \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

typedef struct {
    lk_wbuf_t data;     /* data bytes handed out */
    lk_wbuf_t events;   /* one byte per control event, then the close code */
    int end;            /* LK_WS_MORE, LK_WS_CLOSE or LK_WS_ERROR */
} s_run_t;

/* decodes in[0..len) fed in pieces of the sizes in steps (cycled; empty = all at once) */
static void s_decode(const uint8_t *in, size_t len, const uint8_t *steps, size_t nsteps,
                     s_run_t *run)
{
    lk_ws_decoder_t d;
    lk_ws_decoder_init(&d);
    lk_wbuf_init(&run->data);
    lk_wbuf_init(&run->events);
    run->end = LK_WS_MORE;
    uint8_t *buf = malloc(len + 1);
    size_t have = 0, fed = 0, si = 0;
    while (fed < len || have) {
        size_t take = nsteps ? (size_t)steps[si++ % nsteps] + 1 : len;
        if (take > len - fed)
            take = len - fed;
        memcpy(buf + have, in + fed, take);
        have += take;
        fed += take;
        size_t off = 0;
        for (;;) {
            size_t used = 0, dl = 0;
            const uint8_t *p = NULL;
            lk_ws_event_t ev = lk_ws_decode(&d, buf + off, have - off, &used, &p, &dl);
            S_CHECK(used <= have - off);
            off += used;
            if (ev == LK_WS_DATA) {
                S_CHECK(dl > 0 && p >= buf && p + dl <= buf + off);
                lk_wbuf_append(&run->data, p, dl);
                continue;
            }
            if (ev == LK_WS_MORE)
                break;
            uint8_t e = (uint8_t)ev;
            lk_wbuf_append(&run->events, &e, 1);
            if (ev == LK_WS_PING || ev == LK_WS_PONG) {
                S_CHECK(d.ctl_len <= 125);
                lk_wbuf_append(&run->events, d.ctl, d.ctl_len);
                continue;
            }
            /* close or error: the end */
            S_CHECK(d.close_code >= 1000);
            lk_wbuf_append(&run->events, &d.close_code, sizeof(d.close_code));
            run->end = ev;
            free(buf);
            return;
        }
        memmove(buf, buf + off, have - off);
        have -= off;
        if (take == 0)
            break;
    }
    free(buf);
}

static bool s_same(const lk_wbuf_t *x, const lk_wbuf_t *y)
{
    return x->len == y->len && (x->len == 0 || memcmp(x->data, y->data, x->len) == 0);
}

static void s_free(s_run_t *r)
{
    lk_wbuf_free(&r->data);
    lk_wbuf_free(&r->events);
}

static void s_frames(const uint8_t *data, size_t size)
{
    /* the first few bytes are piece sizes for the second run */
    size_t nsteps = size ? data[0] % 8 : 0;
    if (size < 1 + nsteps)
        return;
    const uint8_t *steps = data + 1;
    const uint8_t *in = data + 1 + nsteps;
    size_t len = size - 1 - nsteps;
    s_run_t a, b;
    s_decode(in, len, NULL, 0, &a);
    s_decode(in, len, steps, nsteps, &b);
    S_CHECK(a.end == b.end);
    S_CHECK(s_same(&a.data, &b.data));
    S_CHECK(s_same(&a.events, &b.events));

    /* the data again as masked client frames: a fragmented message, piece sizes from the
       input, must decode to the same bytes */
    if (a.data.len) {
        lk_wbuf_t wire;
        lk_wbuf_init(&wire);
        const uint8_t mask[4] = {in[0], (uint8_t)(len * 7), 0x5a, 0xc3};
        size_t pos = 0, i = 0;
        while (pos < a.data.len) {
            size_t n = ((size_t)in[i % len] * 37 + 1) % 300 + 1;
            if (i == 3)
                n = 70000; /* one 64-bit length, now and then */
            if (n > a.data.len - pos)
                n = a.data.len - pos;
            bool last = pos + n == a.data.len;
            uint8_t hdr[LK_WS_HEADER_MAX];
            size_t hl = lk_ws_header(hdr, i == 0 ? LK_WS_OP_BINARY : LK_WS_OP_CONT, n, mask);
            if (!last)
                hdr[0] &= 0x7f; /* not final */
            lk_wbuf_append(&wire, hdr, hl);
            size_t at = wire.len;
            lk_wbuf_append(&wire, a.data.data + pos, n);
            lk_ws_mask(wire.data + at, n, mask, 0);
            pos += n;
            i++;
        }
        s_run_t c;
        s_decode(wire.data, wire.len, steps, nsteps, &c);
        S_CHECK(c.end == LK_WS_MORE && c.events.len == 0);
        S_CHECK(s_same(&c.data, &a.data));
        s_free(&c);
        lk_wbuf_free(&wire);
    }
    s_free(&a);
    s_free(&b);
}

static void s_request(const uint8_t *data, size_t size)
{
    lk_ws_request_t req, req2;
    int r = lk_ws_request_parse(data, size, &req);
    S_CHECK(r >= -2 && r <= (int)size);
    if (r > 0) {
        S_CHECK(memchr(req.path, 0, sizeof(req.path)) && memchr(req.key, 0, sizeof(req.key)));
        char out[256];
        int n = lk_ws_response(&req, out, sizeof(out));
        S_CHECK(n > 0 && strncmp(out, "HTTP/1.1 101 ", 13) == 0 && strstr(out, "\r\n\r\n"));
        S_CHECK(lk_ws_request_parse(data, (size_t)r, &req2) == r);
        S_CHECK(strcmp(req.key, req2.key) == 0 && strcmp(req.protocol, req2.protocol) == 0);
    } else {
        const char *ans = lk_ws_refusal(r, &req);
        S_CHECK(strncmp(ans, "HTTP/1.1 4", 10) == 0);
    }
    if (r > 0 || r == 0) {
        size_t limit = r > 0 ? (size_t)r : size;
        size_t step = limit > 200 ? limit / 61 + 1 : 1;
        for (size_t k = 0; k < limit; k += step)
            S_CHECK(lk_ws_request_parse(data, k, &req2) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 200000)
        return 0;
    if (data[0] & 1)
        s_frames(data + 1, size - 1);
    else
        s_request(data + 1, size - 1);
    return 0;
}
