/*  fuzz_http: libFuzzer target for the parts of common/lk_http.c that read request bytes
    themselves (libmicrohttpd parses the rest): the Range header and percent-decoding.

    The input's first 8 bytes are a resource size, the rest a header value (cut at a NUL).
    A satisfiable range must lie inside the resource; unescaping never grows a string. */
#include "lk_http.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_http: %s:%d: %s\n", __FILE__, __LINE__, #cond);                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t rsize = 0;
    if (size >= 8) {
        memcpy(&rsize, data, 8);
        data += 8;
        size -= 8;
    }
    rsize %= 1ULL << 40;
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = 0;
    uint64_t first = 0, last = 0;
    int r = lk_http_range_parse(s, rsize, &first, &last);
    S_CHECK(r >= -1 && r <= 1);
    if (r == 1)
        S_CHECK(first <= last && last < rsize);
    size_t before = strlen(s);
    if (lk_http_unescape(s, (size & 1) != 0) == 0)
        S_CHECK(strlen(s) <= before);
    free(s);
    return 0;
}
