/*  fuzz_proxy: libFuzzer target for the PROXY protocol header parser (common/lk_proxy.c).

    Besides not crashing, the parser must keep the promise the frontend's reader relies
    on: a header found at length r is found at every length from r up, and every shorter
    prefix asks for more (0) — never a refusal, never a different length. An incomplete
    answer (0) must hold for every shorter prefix as well. */
#include "lk_proxy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_proxy: %s:%d: %s\n", __FILE__, __LINE__, #cond);                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4 * LK_PROXY_MAX)
        return 0;
    lk_proxy_hdr_t h, h2;
    int r = lk_proxy_parse(data, size, &h);
    S_CHECK(r >= -1 && r <= (int)size && r <= LK_PROXY_MAX);
    if (r > 0) {
        S_CHECK(h.version == 1 || h.version == 2);
        S_CHECK(memchr(h.src, 0, sizeof(h.src)) && memchr(h.dst, 0, sizeof(h.dst)));
        /* the same header alone */
        S_CHECK(lk_proxy_parse(data, (size_t)r, &h2) == r);
        S_CHECK(h2.version == h.version && h2.local == h.local && h2.src_port == h.src_port &&
                strcmp(h2.src, h.src) == 0);
        char peer[64];
        lk_proxy_peer(&h, peer, sizeof(peer));
    }
    /* prefixes: all of them for short inputs, a spread for long ones */
    size_t limit = r > 0 ? (size_t)r : (r == 0 ? size : 0);
    size_t step = limit > 300 ? limit / 97 + 1 : 1;
    for (size_t k = 0; k < limit; k += step)
        S_CHECK(lk_proxy_parse(data, k, &h2) == 0);
    return 0;
}
