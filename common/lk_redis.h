/*  lk_redis: the one door to Redis (only lk_redis.c includes hiredis).

    A synchronous connection that reconnects by itself: a command on a broken link tries
    one reconnect, then fails with -1/NULL and a log line, so a service can answer
    "unavailable" and retry later rather than crash. Replies are copied into lk_redis_reply_t,
    so no hiredis type reaches domain code. Pipelining: lk_redis_append() any number of
    commands, then lk_redis_get_reply() once per command.

    Cluster mode (lk_redis_set_cluster, the `redis_cluster` key): a connection per master,
    the slot map from CLUSTER SLOTS, each command sent to the master of its key's slot
    (argv[1]; EVAL/EVALSHA: the first key after numkeys; a {hash tag} decides the slot),
    MOVED (map refreshed, command re-sent) and ASK (ASKING, re-sent) followed, TRYAGAIN and
    CLUSTERDOWN retried for a short while, the map refreshed from any live node when a
    master dies. A pipeline may span masters: replies still come back in append order.
    MULTI ... EXEC goes whole to the master of its first keyed command (its keys must share
    a slot). Keyless commands (PING, SCAN, FLUSHALL ...) go to one master only.

    Durability (lk_redis_set_wait, `redis_wait_replicas` / `redis_wait_timeout_ms`): after a
    write command, or a pipeline holding writes, WAIT on every connection written to; a
    WAIT that saw fewer replicas makes that command (the pipeline's last reply) an error,
    so the caller does not acknowledge what a failover could lose. */
#ifndef LK_REDIS_H_INCLUDED
#define LK_REDIS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "lk_config.h"

typedef struct _lk_redis_t lk_redis_t;

typedef enum {
    LK_REDIS_NIL = 0,
    LK_REDIS_INT,
    LK_REDIS_STR, /* bulk or status string */
    LK_REDIS_ARRAY,
    LK_REDIS_ERR
} lk_redis_type_t;

typedef struct lk_redis_reply {
    lk_redis_type_t type;
    int64_t integer;
    char *str; /* NUL-terminated copy; len excludes the NUL (binary safe) */
    size_t len;
    size_t count; /* ARRAY */
    struct lk_redis_reply *items;
} lk_redis_reply_t;

/* host/port, or a unix socket path when port is 0. Connects lazily; never NULL. */
lk_redis_t *lk_redis_new(const char *host, int port);
/* from configuration: redis_host, redis_port, redis_cluster, redis_wait_replicas,
   redis_wait_timeout_ms; NULL (after a log line) when a value is invalid */
lk_redis_t *lk_redis_new_config(lk_config_t *config);
/* applies redis_cluster and redis_wait_* of config to self; 0 or -1 (invalid value) */
int lk_redis_configure(lk_redis_t *self, lk_config_t *config);
/* cluster mode from seed nodes "host:port host:port ..." (spaces or commas); 0 or -1 */
int lk_redis_set_cluster(lk_redis_t *self, const char *seeds);
bool lk_redis_is_cluster(lk_redis_t *self);
/* WAIT replicas timeout_ms after writes; replicas 0 = never (the default) */
void lk_redis_set_wait(lk_redis_t *self, int replicas, int timeout_ms);
void lk_redis_destroy(lk_redis_t **self_p);
/* connects now if not connected (cluster: one node and the slot map); 0 or -1 */
int lk_redis_connect(lk_redis_t *self);
bool lk_redis_connected(lk_redis_t *self);

/* one command, argv style (binary safe; lens NULL: strings, their strlen); caller frees the
   reply. NULL on link failure. */
lk_redis_reply_t *lk_redis_cmdv(lk_redis_t *self, int argc, const char **argv, const size_t *lens);
/* printf-style as hiredis redisCommand (%s string, %b binary ptr+len, %d, %lld ...) */
lk_redis_reply_t *lk_redis_cmd(lk_redis_t *self, const char *fmt, ...);
/* pipelining; append returns 0/-1, get_reply returns NULL on link failure */
int lk_redis_appendv(lk_redis_t *self, int argc, const char **argv, const size_t *lens);
int lk_redis_append(lk_redis_t *self, const char *fmt, ...);
lk_redis_reply_t *lk_redis_get_reply(lk_redis_t *self);

/* keyless commands meant for every master (SCAN, KEYS ...): how many masters there are
   (1 in single-node mode; 0 when none answers), and one command sent to the nth */
int lk_redis_masters(lk_redis_t *self);
lk_redis_reply_t *lk_redis_cmdv_at(lk_redis_t *self, int nth, int argc, const char **argv,
                                   const size_t *lens);

/* one PING's round trip in ms (for metrics), -1 when Redis does not answer */
double lk_redis_ping_ms(lk_redis_t *self);

void lk_redis_reply_free(lk_redis_reply_t **reply_p);
/* true for a reply that is an error or missing */
bool lk_redis_reply_failed(const lk_redis_reply_t *reply);

/* Redis Cluster's slot of a key: CRC16 (XMODEM) of its {hash tag}, or of the whole key
   when it has none, modulo 16384 */
int lk_redis_key_slot(const char *key, size_t len);

int lk_redis_test(bool verbose);

#endif
