/*  lk_redis: the one door to Redis (only lk_redis.c includes hiredis).

    A synchronous connection that reconnects by itself: a command on a broken link tries
    one reconnect, then fails with -1/NULL and a log line, so a service can answer
    "unavailable" and retry later rather than crash. Replies are copied into lk_redis_reply_t,
    so no hiredis type reaches domain code. Pipelining: lk_redis_append() any number of
    commands, then lk_redis_get_reply() once per command. */
#ifndef LK_REDIS_H_INCLUDED
#define LK_REDIS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _lk_redis_t lk_redis_t;

typedef enum {
    LK_REDIS_NIL = 0,
    LK_REDIS_INT,
    LK_REDIS_STR,    /* bulk or status string */
    LK_REDIS_ARRAY,
    LK_REDIS_ERR
} lk_redis_type_t;

typedef struct lk_redis_reply {
    lk_redis_type_t type;
    int64_t integer;
    char *str;      /* NUL-terminated copy; len excludes the NUL (binary safe) */
    size_t len;
    size_t count;   /* ARRAY */
    struct lk_redis_reply *items;
} lk_redis_reply_t;

/* host/port, or a unix socket path when port is 0. Connects lazily; never NULL. */
lk_redis_t *lk_redis_new(const char *host, int port);
void lk_redis_destroy(lk_redis_t **self_p);
/* connects now if not connected; 0 or -1 */
int lk_redis_connect(lk_redis_t *self);
bool lk_redis_connected(lk_redis_t *self);

/* one command, argv style (binary safe); caller frees the reply. NULL on link failure. */
lk_redis_reply_t *lk_redis_cmdv(lk_redis_t *self, int argc, const char **argv, const size_t *lens);
/* printf-style as hiredis redisCommand (%s string, %b binary ptr+len, %d, %lld ...) */
lk_redis_reply_t *lk_redis_cmd(lk_redis_t *self, const char *fmt, ...);
/* pipelining; append returns 0/-1, get_reply returns NULL on link failure */
int lk_redis_appendv(lk_redis_t *self, int argc, const char **argv, const size_t *lens);
int lk_redis_append(lk_redis_t *self, const char *fmt, ...);
lk_redis_reply_t *lk_redis_get_reply(lk_redis_t *self);

/* one PING's round trip in ms (for metrics), -1 when Redis does not answer */
double lk_redis_ping_ms(lk_redis_t *self);

void lk_redis_reply_free(lk_redis_reply_t **reply_p);
/* true for a reply that is an error or missing */
bool lk_redis_reply_failed(const lk_redis_reply_t *reply);

#endif
