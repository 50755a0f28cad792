/*  lk_layout: the one-time move to the hash-tagged key names; see lk_layout.h. */
#include "lk_layout.h"
#include "lk_common.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define S_LAYOUT "2"

static char *s_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *out = lk_malloc((size_t)(n > 0 ? n : 0) + 1);
    va_start(ap, fmt);
    vsnprintf(out, (size_t)(n > 0 ? n : 0) + 1, fmt, ap);
    va_end(ap);
    return out;
}

static const char *s_move_lua =
    "if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('EXISTS', KEYS[2]) == 0 then "
    "  redis.call('RENAME', KEYS[1], KEYS[2]) return 1 end return 0";

/* 1 moved, 0 nothing to move, -1 Redis failed */
static int s_move(lk_redis_t *redis, const char *from, const char *to)
{
    lk_redis_reply_t *r = lk_redis_cmd(redis, "EVAL %s 2 %s %s", s_move_lua, from, to);
    int rc = lk_redis_reply_failed(r) ? -1 : (r->type == LK_REDIS_INT && r->integer == 1);
    lk_redis_reply_free(&r);
    return rc;
}

/* every key SCAN finds for match moved to "lk:{arb}:" + the part after skip chars */
static int s_move_scan(lk_redis_t *redis, const char *match, size_t skip, int *moved)
{
    char cursor[32] = "0";
    do {
        lk_redis_reply_t *r = lk_redis_cmd(redis, "SCAN %s MATCH %s COUNT 1000", cursor, match);
        if (lk_redis_reply_failed(r) || r->type != LK_REDIS_ARRAY || r->count != 2) {
            lk_redis_reply_free(&r);
            return -1;
        }
        snprintf(cursor, sizeof(cursor), "%s", r->items[0].str ? r->items[0].str : "0");
        for (size_t i = 0; i < r->items[1].count; i++) {
            const char *k = r->items[1].items[i].str;
            if (!k || strlen(k) <= skip)
                continue;
            char *to = s_printf("lk:{arb}:%s", k + skip);
            int m = s_move(redis, k, to);
            free(to);
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
    char cursor[32] = "0";
    static const char *kinds[] = {"sess", "q", "rel", "rx", "qseq"};
    do {
        r = lk_redis_cmd(redis, "SSCAN lk:sessions %s COUNT 1000", cursor);
        if (lk_redis_reply_failed(r) || r->type != LK_REDIS_ARRAY || r->count != 2) {
            lk_redis_reply_free(&r);
            return -1;
        }
        snprintf(cursor, sizeof(cursor), "%s", r->items[0].str ? r->items[0].str : "0");
        for (size_t i = 0; i < r->items[1].count; i++) {
            const char *c = r->items[1].items[i].str;
            for (size_t k = 0; c && k < LK_ARRAY_LEN(kinds); k++) {
                char *from = s_printf("lk:%s:%s", kinds[k], c);
                char *to = s_printf("lk:%s:{%s}", kinds[k], c);
                int m = s_move(redis, from, to);
                free(from);
                free(to);
                if (m < 0) {
                    lk_redis_reply_free(&r);
                    return -1;
                }
                moved += m;
            }
        }
        lk_redis_reply_free(&r);
    } while (strcmp(cursor, "0") != 0);
    /* the lock-arbiter's keys */
    static const char *globals[][2] = {{"lk:rounds", "lk:{arb}:rounds"},
                                       {"lk:lockstate", "lk:{arb}:lockstate"},
                                       {"lk:lockstate:sid", "lk:{arb}:lockstate:sid"},
                                       {"lk:arb:evseq", "lk:{arb}:evseq"},
                                       {"lk:arb:outbox", "lk:{arb}:outbox"},
                                       {"lk:arb:unpub", "lk:{arb}:unpub"}};
    for (size_t i = 0; i < LK_ARRAY_LEN(globals); i++) {
        int m = s_move(redis, globals[i][0], globals[i][1]);
        if (m < 0)
            return -1;
        moved += m;
    }
    if (s_move_scan(redis, "lk:round:*", 3, &moved) != 0 ||
        s_move_scan(redis, "lk:bind:*", 3, &moved) != 0 ||
        s_move_scan(redis, "lk:lockcfg:*", 3, &moved) != 0 ||
        s_move_scan(redis, "lk:login:*", 3, &moved) != 0 ||
        s_move_scan(redis, "lk:arb:seen:*", 7, &moved) != 0)
        return -1;
    r = lk_redis_cmd(redis, "SET lk:layout " S_LAYOUT);
    bool ok = !lk_redis_reply_failed(r);
    lk_redis_reply_free(&r);
    if (moved)
        lk_notice("redis: %d key(s) moved to the hash-tagged layout (lk:layout " S_LAYOUT ")",
                  moved);
    return ok ? 0 : -1;
}
