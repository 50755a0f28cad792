/*  fuzz_ota: libFuzzer target for what ota-distributor reads from devices itself in
    common/lk_ota.c: ThingsBoard's chunk request (topic and ASCII size) and the version
    order it compares reported versions with.

    Input: a topic up to the first NUL, the payload after it. A parsed request has a
    decimal request id of at most 18 digits; version order is antisymmetric. */
#include "lk_ota.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_ota: %s:%d: %s\n", __FILE__, __LINE__, #cond);                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t tlen = nul ? (size_t)(nul - data) : size;
    char *topic = malloc(tlen + 1);
    memcpy(topic, data, tlen);
    topic[tlen] = 0;
    const uint8_t *payload = nul ? nul + 1 : data + size;
    size_t plen = nul ? size - tlen - 1 : 0;
    /* the payload as its own heap block: reads past it are caught */
    uint8_t *p = malloc(plen ? plen : 1);
    memcpy(p, payload, plen);
    char reqid[24];
    uint64_t chunk = 0, csize = 0;
    bool has = false;
    int rc = lk_ota_tb_chunk_parse(topic, p, plen, reqid, &chunk, &csize, &has);
    if (rc == 0) {
        size_t n = strlen(reqid);
        S_CHECK(n >= 1 && n <= 18);
        for (size_t i = 0; i < n; i++)
            S_CHECK(isdigit((unsigned char)reqid[i]));
        S_CHECK(has || csize == 0);
    }
    char *b = malloc(plen + 1);
    memcpy(b, p, plen);
    b[plen] = 0;
    int x = lk_ota_version_cmp(topic, b), y = lk_ota_version_cmp(b, topic);
    S_CHECK((x < 0 && y > 0) || (x > 0 && y < 0) || (x == 0 && y == 0));
    free(b);
    free(p);
    free(topic);
    return 0;
}
