/*  lk_ratelog: token-bucket limiter for log lines; see lk_ratelog.h. */
#include "lk_ratelog.h"
#include <stdio.h>

bool lk_ratelog_take(lk_ratelog_t *r, int64_t now_ms, uint64_t *skipped)
{
    *skipped = 0;
    if (r->last_ms == 0) {
        r->tokens = r->burst;
        r->last_ms = now_ms;
    } else if (now_ms > r->last_ms) {
        r->tokens += r->per_s * (double)(now_ms - r->last_ms) / 1000.0;
        if (r->tokens > r->burst)
            r->tokens = r->burst;
        r->last_ms = now_ms;
    }
    if (r->tokens < 1.0) {
        if (r->suppressed++ == 0)
            r->suppressed_since_ms = now_ms;
        return false;
    }
    r->tokens -= 1.0;
    *skipped = r->suppressed;
    r->suppressed = 0;
    return true;
}

uint64_t lk_ratelog_flush(lk_ratelog_t *r, int64_t now_ms, int64_t window_ms)
{
    if (!r->suppressed || now_ms - r->suppressed_since_ms < window_ms)
        return 0;
    uint64_t n = r->suppressed;
    r->suppressed = 0;
    return n;
}

int lk_ratelog_test(bool verbose)
{
    int failed = 0;
    lk_ratelog_t r = LK_RATELOG_INIT(3, 1);
    uint64_t sk = 0;
    int passed = 0;
    for (int i = 0; i < 10; i++)
        passed += lk_ratelog_take(&r, 1000, &sk);
    if (passed != 3 || r.suppressed != 7) {
        printf("FAIL ratelog burst (%d passed)\n", passed);
        failed++;
    }
    if (lk_ratelog_flush(&r, 5000, 10000) != 0) {
        printf("FAIL ratelog flush too early\n");
        failed++;
    }
    /* a second later one line passes and reports the 7 before it */
    if (!lk_ratelog_take(&r, 2000, &sk) || sk != 7) {
        printf("FAIL ratelog refill/summary (%llu)\n", (unsigned long long)sk);
        failed++;
    }
    lk_ratelog_take(&r, 2000, &sk);
    if (lk_ratelog_flush(&r, 12001, 10000) != 1) {
        printf("FAIL ratelog flush\n");
        failed++;
    }
    if (verbose && !failed)
        printf("PASS lk_ratelog\n");
    return failed ? -1 : 0;
}
