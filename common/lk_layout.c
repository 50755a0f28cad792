/*  lk_layout: the one-time move to the hash-tagged key names; see lk_layout.h. */
#include "lk_layout.h"
#include "lk_common.h"
#include <stdio.h>
#include <string.h>

#define S_LAYOUT "2"

static const char *s_move_lua =
    "if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('EXISTS', KEYS[2]) == 0 then "
    "  redis.call('RENAME', KEYS[1], KEYS[2]) return 1 end return 0";

/* the reply of an EVAL of s_move_lua, freed: 1 moved, 0 nothing to move, -1 Redis failed */
static int s_moved(lk_redis_reply_t *r)
{
    int rc = lk_redis_reply_failed(r) ? -1 : (r->type == LK_REDIS_INT && r->integer == 1);
    lk_redis_reply_free(&r);
    return rc;
}

/* a client's keys: lk:<kind>:<c> -> lk:<kind>:{<c>}; how many moved, or -1 */
static int s_move_client(lk_redis_t *redis, const char *c, size_t skip)
{
    static const char *kinds[] = {"sess", "q", "rel", "rx", "qseq"};
    int moved = 0;
    for (size_t k = 0; k < LK_ARRAY_LEN(kinds); k++) {
        int m = s_moved(lk_redis_cmd(redis, "EVAL %s 2 lk:%s:%s lk:%s:{%s}", s_move_lua, kinds[k],
                                     c, kinds[k], c));
        if (m < 0)
            return -1;
        moved += m;
    }
    return moved;
}

/* a lock-arbiter's key: to "lk:{arb}:" + the part after skip chars; 1, 0 or -1 */
static int s_move_arb(lk_redis_t *redis, const char *key, size_t skip)
{
    if (strlen(key) <= skip)
        return 0;
    return s_moved(lk_redis_cmd(redis, "EVAL %s 2 %s lk:{arb}:%s", s_move_lua, key, key + skip));
}

/* fn on every member of set (SSCAN), or on every key matching match (SCAN: set NULL);
   the moves counted in *moved; 0 or -1 */
static int s_each(lk_redis_t *redis, const char *set, const char *match,
                  int (*fn)(lk_redis_t *, const char *, size_t), size_t skip, int *moved)
{
    char cursor[32] = "0";
    do {
        lk_redis_reply_t *r =
            set ? lk_redis_cmd(redis, "SSCAN %s %s COUNT 1000", set, cursor)
                : lk_redis_cmd(redis, "SCAN %s MATCH %s COUNT 1000", cursor, match);
        if (lk_redis_reply_failed(r) || r->type != LK_REDIS_ARRAY || r->count != 2) {
            lk_redis_reply_free(&r);
            return -1;
        }
        snprintf(cursor, sizeof(cursor), "%s", r->items[0].str ? r->items[0].str : "0");
        for (size_t i = 0; i < r->items[1].count; i++) {
            const char *item = r->items[1].items[i].str;
            int m = item ? fn(redis, item, skip) : 0;
            if (m < 0) {
                lk_redis_reply_free(&r);
                return -1;
            }
            *moved += m;
        }
        lk_redis_reply_free(&r);
    } while (strcmp(cursor, "0") != 0);
    return 0;
}

int lk_layout_migrate(lk_redis_t *redis)
{
    if (lk_redis_is_cluster(redis))
        return 0;
    lk_redis_reply_t *r = lk_redis_cmd(redis, "GET lk:layout");
    if (lk_redis_reply_failed(r)) {
        lk_redis_reply_free(&r);
        return -1;
    }
    bool done = r->type == LK_REDIS_STR && strcmp(r->str, S_LAYOUT) == 0;
    lk_redis_reply_free(&r);
    if (done)
        return 0;
    int moved = 0;
    /* sessions: every member of lk:sessions (a client's keys exist only with it) */
    if (s_each(redis, "lk:sessions", NULL, s_move_client, 0, &moved) != 0)
        return -1;
    /* the lock-arbiter's keys */
    static const char *globals[][2] = {{"lk:rounds", "lk:{arb}:rounds"},
                                       {"lk:lockstate", "lk:{arb}:lockstate"},
                                       {"lk:lockstate:sid", "lk:{arb}:lockstate:sid"},
                                       {"lk:arb:evseq", "lk:{arb}:evseq"},
                                       {"lk:arb:outbox", "lk:{arb}:outbox"},
                                       {"lk:arb:unpub", "lk:{arb}:unpub"}};
    for (size_t i = 0; i < LK_ARRAY_LEN(globals); i++) {
        int m = s_moved(
            lk_redis_cmd(redis, "EVAL %s 2 %s %s", s_move_lua, globals[i][0], globals[i][1]));
        if (m < 0)
            return -1;
        moved += m;
    }
    if (s_each(redis, NULL, "lk:round:*", s_move_arb, 3, &moved) != 0 ||
        s_each(redis, NULL, "lk:bind:*", s_move_arb, 3, &moved) != 0 ||
        s_each(redis, NULL, "lk:lockcfg:*", s_move_arb, 3, &moved) != 0 ||
        s_each(redis, NULL, "lk:login:*", s_move_arb, 3, &moved) != 0 ||
        s_each(redis, NULL, "lk:arb:seen:*", s_move_arb, 7, &moved) != 0)
        return -1;
    r = lk_redis_cmd(redis, "SET lk:layout " S_LAYOUT);
    bool ok = !lk_redis_reply_failed(r);
    lk_redis_reply_free(&r);
    if (moved)
        lk_notice("redis: %d key(s) moved to the hash-tagged layout (lk:layout " S_LAYOUT ")",
                  moved);
    return ok ? 0 : -1;
}
