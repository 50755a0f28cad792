/*  lk_layout: moves keys of the Redis layout before issue 17 (no hash tags) to their
    tagged names, once, on a single Redis server.

    lk:sess:<c> lk:q:<c> lk:rel:<c> lk:rx:<c> lk:qseq:<c>  ->  lk:<kind>:{<c>}
    lk:round:<l> lk:bind:<l> lk:lockcfg:<l> lk:login:<n> lk:rounds lk:lockstate[:sid]
    lk:arb:{evseq,outbox,unpub,seen:<id>}                   ->  lk:{arb}:...

    Each move is one script (EXISTS old, not EXISTS new, RENAME: a TTL is kept), so the
    session-store and the lock-arbiter may both run it at their start. Done when
    lk:layout is 2; in cluster mode there is no older data and nothing is done. */
#ifndef LK_LAYOUT_H_INCLUDED
#define LK_LAYOUT_H_INCLUDED

#include "lk_redis.h"

/* 0, or -1 when Redis failed (the caller may go on: a later start tries again) */
int lk_layout_migrate(lk_redis_t *redis);

#endif
