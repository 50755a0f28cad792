/*  ar_internal: the lock-arbiter's shared structures.

    One ar_server_t actor per process owns the internal MQTT client (lk_iclient: its bus is
    the process's one bus node), the Redis connection, the link to the history writer and
    the login endpoint. Every state the arbiter decides on lives in Redis and is changed by
    Lua scripts (ar_unlock.c), so a decision is atomic however confirmations race, and a
    restart resumes from Redis. Its files:
      ar_server.c   construction, bus and MQTT dispatch, cron
      ar_unlock.c   /<lock>/statu and /<lock>/<role>: the scripts and the unlock publish
      ar_login.c    LoginRequest (temporary credentials) and /unauth (revocation)
      ar_history.c  the history outbox (Redis → history-writer)
      ar_query.c    the history query over MQTT (PostgreSQL, on a worker thread)
      ar_replica.c  replicas: lock ownership from Redis liveness, parked messages

    Redis keys (see docs/architecture.md for the whole table): lk:{arb}:lockstate,
    lk:{arb}:round:<lock>, lk:{arb}:rounds, lk:{arb}:lockcfg:<lock>, lk:{arb}:bind:<lock>,
    lk:ubind:<user>, lk:users, lk:{arb}:login:<temp>, lk:{arb}:* (outbox, unpublished
    decisions, event counter, seen messages, replica liveness). */
#ifndef AR_INTERNAL_H_INCLUDED
#define AR_INTERNAL_H_INCLUDED

#include "ar_server.h"
#include "latchkey.pb-c.h"
#include "lk_bus.h"
#include "lk_common.h"
#include "lk_config.h"
#include "lk_iclient.h"
#include "lk_pgq.h"
#include "lk_replicas.h"
#include "lk_redis.h"
#include <czmq.h>

#define AR_MAX_ROLES 8
#define AR_MAX_REPLICAS 64
#define AR_HISTORY_TOPIC "$lk/history/req"
#define AR_REPLY_PREFIX "$lk/reply/"

/* a message of a lock another replica owns, kept un-acked until it was applied */
typedef struct ar_parked ar_parked_t;

/* a publish (unlock) or a history batch waiting for its bus ack: the Redis entries to
   forget once it comes */
typedef struct ar_wait {
    uint64_t seq;
    char **ids;
    size_t n, cap;
    struct ar_wait *next;
} ar_wait_t;

struct _ar_server_t {
    lk_config_t *config;
    lk_loop_t *loop;
    char *node;
    lk_iclient_t *ic;
    lk_bus_t *bus; /* the iclient's */
    lk_redis_t *redis;
    lk_replicas_t *history; /* NULL when history_endpoint is unset */
    lk_replicas_t *auth;    /* NULL when auth_endpoint is unset */
    lk_pgq_t *pg;           /* the history query's worker, its PostgreSQL link (ar_query.c) */
    int ready_fd;
    bool ready_told;
    int exit_code; /* set when the loop was stopped for a failure */
    int cron;
    /* configuration */
    char *roles[AR_MAX_ROLES];
    int n_roles;
    int quorum;
    int64_t window_ms;
    int64_t confirm_max_age_ms; /* lock_confirm_max_age: older confirmations are refused */
    int64_t login_ttl_s;
    int history_limit;
    /* unlock publishes waiting for the router's ack (lk:{arb}:unpub entries) */
    ar_wait_t *pub_waits;
    zhashx_t *in_flight; /* decision ids being published by this process */
    /* history batches waiting for the writer's ack (lk:{arb}:outbox entries) */
    ar_wait_t *hist_waits;
    zhashx_t *hist_sent; /* outbox ids sent by this process */
    bool outbox_warned;
    int64_t redis_warned_ms; /* last "redis script failed" line (mono ms) */
    /* replicas (ar_replica.c): names, which one we are, liveness from Redis */
    int n_rep, me;
    char *rep_names[AR_MAX_REPLICAS];
    char *rep_tokens[AR_MAX_REPLICAS];
    bool rep_alive[AR_MAX_REPLICAS];
    char *live_token;
    ar_parked_t *parked, **parked_tail;
    size_t n_parked;
    /* statistics */
    uint64_t granted, refused, expired, states, logins, revoked, queries;
};

typedef ar_server_t self_t;

/* ar_server.c */
/* Redis failed where the work cannot be skipped: stop (exit 111, s6 restarts us; the
   message was not acked and comes again) */
void ar_server_fail(self_t *self, const char *why);
/* the real user behind an MQTT username (lk:{arb}:login:<temp> → user, else the name itself);
   caller frees; NULL when Redis failed */
char *ar_real_user(self_t *self, const char *username);

/* a message applied (kept a day): lock (or publisher), message id (ar_msg_id); the
   scripts of ar_unlock.c set it too */
#define AR_SEEN_KEY "lk:{arb}:seen:%s:%s"
/* how long a message's seen mark is kept (s): past it a second copy could apply again,
   so no confirmation older than this is counted */
#define AR_SEEN_TTL_S 86400
#define AR_STR2(x) #x
#define AR_STR(x) AR_STR2(x)
/* marks a message applied for the replicas that parked it, where no script does (work
   that is not a script, messages ignored); true when it was not marked before, and
   always with one replica (nothing is parked, nothing written) */
bool ar_seen_set(self_t *self, const char *key, const char *id);
/* applies one lock message (id: ar_msg_id) whichever replica's session it came from */
void ar_server_apply(self_t *self, const Lk__Msg *msg, const char *id);

/* ar_replica.c */
int ar_replica_init(self_t *self);
void ar_replica_destroy(self_t *self);
/* the MQTT client id: $lk-arbiter for one replica, $lk-arbiter-<n> for several */
const char *ar_replica_client_id(self_t *self, char *buf, size_t size);
/* this replica owns key (a lock id) now */
bool ar_replica_mine(self_t *self, const char *key);
/* the identity of a message shared by every session's copy (the store ids differ) */
void ar_msg_id(const Lk__Msg *m, char *out, size_t size);
/* a granted decision (id "<node>-<n>") waiting in lk:{arb}:unpub is ours to publish: we
   made it (before a restart), or its maker is gone and the lock is ours now */
bool ar_replica_resumes(self_t *self, const char *id, const char *lock);
/* keeps a message another replica owns (deferred, acked once applied) */
void ar_replica_park(self_t *self, const char *key, const char *id, const Lk__Msg *msg,
                     uint64_t store_id);
/* applies what is parked for key (NULL: for every lock we own now) */
void ar_replica_flush(self_t *self, const char *key);
/* first liveness read (construction), our claim once ready, and the cron */
void ar_replica_start(self_t *self);
void ar_replica_ready(self_t *self);
void ar_replica_cron(self_t *self);
int ar_replica_alive(self_t *self);
int ar_replica_test(bool verbose);

/* ar_unlock.c (id: the message id, the key of lk:{arb}:seen:<lock>:<id>) */
void ar_unlock_statu(self_t *self, const char *lock, const Lk__Msg *msg, const char *id);
void ar_unlock_confirm(self_t *self, const char *lock, const char *role, const Lk__Msg *msg,
                       const char *id);
/* the cron: rounds past their deadline become `expired` decisions */
void ar_unlock_expire(self_t *self);
/* publishes every granted decision not yet acked by the router (at start and re-open) */
void ar_unlock_resume(self_t *self);
void ar_unlock_published(self_t *self, uint64_t seq);

/* ar_login.c */
void ar_login_request(self_t *self, lk_peer_t *peer, const Lk__LoginRequest *req);
void ar_login_unauth(self_t *self, const Lk__Msg *msg);
/* the cron: logins past their expiry are revoked (their clients disconnected) */
void ar_login_expire(self_t *self);

/* ar_history.c (the outbox) and ar_query.c (the query) */
/* Takes the outbox entries a script returned (id, value pairs from reply items [from,
   count)) and sends them to the history writer. */
void ar_history_send_entries(self_t *self, const lk_redis_reply_t *r, size_t from);
/* Puts one event into the outbox and sends it (events made outside a script) */
void ar_history_event(self_t *self, const char *kind, const char *lock, const char *actor,
                      const char *details_json);
/* sends every outbox entry this process has not sent (at start, on the writer's return) */
void ar_history_resume(self_t *self);
/* splits an outbox value ("kind\x1flock\x1factor\x1fms\x1fdetails") into its five fields,
   pointers into v, which is modified; -1 when a separator is missing (ar_history.c) */
int ar_outbox_split(char *v, char *f[5]);
void ar_history_acked(self_t *self, lk_peer_t *peer, uint64_t seq);
/* the events a dead writer replica did not ack go to a live one */
void ar_history_failover(self_t *self, lk_peer_t *dead);
void ar_history_query(self_t *self, const Lk__Msg *msg);
void ar_history_close(self_t *self);

/* waits (shared by unlock and history) */
ar_wait_t *ar_wait_for(ar_wait_t **list, uint64_t seq);
void ar_wait_add(ar_wait_t *w, const char *id);
/* unlinks and returns the wait for seq (caller frees with ar_wait_free), or NULL */
ar_wait_t *ar_wait_take(ar_wait_t **list, uint64_t seq);
void ar_wait_free(ar_wait_t **w_p);

#endif
