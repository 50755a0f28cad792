/*  lk_common: what every Latchkey file includes: the standard headers we always use,
    clocks, and the allocation policy (out of memory aborts: quotas keep us far from it). */
#ifndef LK_COMMON_H_INCLUDED
#define LK_COMMON_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lk_log.h"

#define LK_VERSION "0.1.0"

/* monotonic milliseconds, for timeouts */
int64_t lk_mono_ms(void);
/* wall-clock milliseconds since the epoch, for message expiry and history */
int64_t lk_wall_ms(void);
/* wall-clock nanoseconds since the epoch; a node's epoch */
uint64_t lk_wall_ns(void);

void *lk_malloc(size_t n);
void *lk_calloc(size_t n, size_t size);
void *lk_realloc(void *p, size_t n);
char *lk_strdup(const char *s);
char *lk_strndup(const char *s, size_t n);

#define LK_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

int lk_common_test(bool verbose);

#endif
