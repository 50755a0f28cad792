/*  lk_ratelog: a token bucket for log lines of one kind, so that a flood of bad clients
    (refused CONNECTs, protocol errors) leaves a bounded number of lines and a count of
    the rest. Not thread-safe: one per kind and process (or actor).

        static lk_ratelog_t rl = LK_RATELOG_INIT(10, 1);   // burst 10, then 1 a second
        uint64_t skipped;
        if (lk_ratelog_take(&rl, now_ms, &skipped)) {
            if (skipped) lk_notice("%" PRIu64 " more ... not logged", skipped);
            lk_notice(...);
        }
    and from a timer, so that a count is not held back when the flood stops:
        if ((skipped = lk_ratelog_flush(&rl, now_ms, 10000))) lk_notice(...);  */
#ifndef LK_RATELOG_H_INCLUDED
#define LK_RATELOG_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    double burst;           /* lines at once */
    double per_s;           /* lines a second after that */
    double tokens;
    int64_t last_ms;        /* 0: not started (full bucket) */
    uint64_t suppressed;    /* lines refused since the last one let through or reported */
    int64_t suppressed_since_ms;
} lk_ratelog_t;

#define LK_RATELOG_INIT(burst, per_s) {(burst), (per_s), 0, 0, 0, 0}

/* true: log this line. *skipped: lines refused since the last report (log a summary
   before the line when > 0); they count as reported from then on. */
bool lk_ratelog_take(lk_ratelog_t *r, int64_t now_ms, uint64_t *skipped);
/* lines refused and not reported, once the oldest is window_ms old (0 otherwise); they
   count as reported from then on */
uint64_t lk_ratelog_flush(lk_ratelog_t *r, int64_t now_ms, int64_t window_ms);

int lk_ratelog_test(bool verbose);

#endif
