/*  fuzz_zmtp: libFuzzer target for the ZMTP 3.0 parsers of common/lk_zmtp.c (the bus's
    wire on ipc://): the greeting, frames, READY properties.

    The input is read as a connection would see it: a greeting, then frames until the
    bytes run out. Besides not crashing, each parser must be prefix-consistent, which
    the connection's incremental reader relies on: a frame complete at length r is
    found at every length from r up with the same flags and size; a shorter prefix asks
    for more (0) unless the header already shows it malformed or oversized. */
#include "lk_zmtp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_zmtp: %s:%d: %s\n", __FILE__, __LINE__, #cond);                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define S_MAX 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 16)
        return 0;
    int g = lk_zmtp_greeting_parse(data, size);
    S_CHECK(g == -1 || g == 0 || g == LK_ZMTP_GREETING);
    if (g == LK_ZMTP_GREETING)
        for (size_t i = 0; i < LK_ZMTP_GREETING; i++)
            S_CHECK(lk_zmtp_greeting_parse(data, i) == 0);
    /* frames from after the greeting when there is one, else from the start */
    size_t off = g == LK_ZMTP_GREETING ? LK_ZMTP_GREETING : 0;
    while (off < size) {
        lk_zmtp_frame_t f, f2;
        int64_t r = lk_zmtp_frame_parse(data + off, size - off, S_MAX, &f);
        S_CHECK(r >= -2 && r <= (int64_t)(size - off));
        if (r <= 0) {
            if (r < 0) /* the verdict holds for every longer input too */
                S_CHECK(lk_zmtp_frame_parse(data + off, size - off, S_MAX, &f2) == r);
            break;
        }
        S_CHECK(f.body >= data + off && f.body + f.size == data + off + r);
        S_CHECK(f.size <= S_MAX);
        for (size_t n = 0; n < (size_t)r; n += 1 + (size_t)r / 64) {
            int64_t p = lk_zmtp_frame_parse(data + off, n, S_MAX, &f2);
            S_CHECK(p == 0);
        }
        if (f.flags & LK_ZMTP_COMMAND) {
            char type[32], id[256];
            size_t id_len = 0;
            if (lk_zmtp_ready_parse(f.body, (size_t)f.size, type, sizeof(type), id, sizeof(id),
                                    &id_len) == 0) {
                S_CHECK(strlen(type) < sizeof(type));
                S_CHECK(id_len < sizeof(id) && id[id_len] == 0);
            }
        }
        off += (size_t)r;
    }
    return 0;
}
