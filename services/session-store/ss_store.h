/*  ss_store: the session store's Redis layer and its in-memory session map.

    Owns one lk_redis connection and the map client id -> ss_session_t, which mirrors the
    lk:sess:* hashes (see docs/architecture.md, "Redis layout") plus the volatile
    registrations (clients with no persistent session, kept in memory only so a takeover
    can be detected). It knows nothing of the bus: ss_server turns envelopes into calls
    here and the results back into envelopes, and the selftest drives it against a real
    redis-server without ZeroMQ.

    Contract: every method that changes Redis runs as one pipeline and returns -1 when any
    command failed; memory is updated only after every reply was OK, so the caller can
    withhold its ack and let the sender re-send. (A pipeline may have partly run when it
    fails; re-running it is harmless: stores may then hold a duplicate, which MQTT allows.)

    Store ids: per client, monotonic, never reused across restarts: lk:qseq:<client> is
    written in the same pipeline before the messages that use the new ids, and seeds the
    in-memory counter on load. It survives a clean start, so an ack still in flight from
    the previous connection cannot name a message of the new session.

    Online/offline: a session is online at `node` while disconnected_at == 0. When a node
    falls silent its persistent sessions keep node and node_epoch but get disconnected_at
    (the node may come back with the same epoch); when it shows a new epoch, or its client
    leaves, node is cleared. Only offline persistent sessions expire. */
#ifndef SS_STORE_H_INCLUDED
#define SS_STORE_H_INCLUDED

#include "latchkey.pb-c.h"
#include "lk_config.h"
#include <czmq.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct _ss_store_t ss_store_t;

/* MQTT 3.1.1 clean_session=0 sessions: expiry "never" */
#define SS_EXPIRY_NEVER 0xFFFFFFFFu

/* One client's session. Read-only outside ss_store.c; valid until the next call that
   may delete sessions (open, close, node_up/down, expire). */
typedef struct {
    char *client;
    char *node;              /* node holding the client, NULL when none (shared string) */
    uint64_t node_epoch;     /* that node's epoch when the client opened there */
    uint64_t conn;           /* the connection there (its id at that node and epoch) */
    uint32_t expiry;         /* session expiry interval, seconds */
    int64_t disconnected_at; /* wall ms; 0 = connected at node */
    bool persistent;         /* has state in Redis (lk:sessions member) */
    uint64_t qseq;           /* last store id handed out */
    size_t qlen;             /* entries in lk:q:<client> (queued + unacked) */
    uint32_t max_queued;     /* 0 = no limit */
    uint64_t last_req;       /* last SessionOpen req answered, for idempotent retries */
    bool last_present;
    uint64_t dropped; /* over quota since the last log line */
    int64_t drop_logged_ms;
    uint64_t mark; /* scratch for batch bookkeeping */
    size_t added;
    size_t tidx;
    bool stale; /* replicas: may have changed in Redis since we read it (not owned) */
} ss_session_t;

/* a SessionOpen request, node/node_epoch being the requesting frontend's */
typedef struct {
    uint64_t req;
    const char *client;
    bool clean;
    uint32_t expiry;
    uint32_t max_queued; /* 0: the store's default */
    const char *node;
    uint64_t node_epoch;
    uint64_t conn; /* the requesting connection at node (0: an internal client) */
} ss_open_t;

/* the answer: caller owns the arrays, release with ss_open_result_clear */
typedef struct {
    bool present;
    Lk__Subscription **subs;
    size_t n_subs;
    Lk__Deliver **pending; /* by store id */
    size_t n_pending;
    uint32_t *rx_pids; /* inbound QoS 2 packet ids not yet released (lk:rx:<client>) */
    size_t n_rx_pids;
} ss_open_result_t;

/* called with each retained message (borrowed for the call) */
typedef void(ss_retain_fn)(const Lk__Msg *msg, void *arg);
/* called with a session's subscriptions (borrowed for the call) */
typedef void(ss_subs_fn)(const char *client, Lk__Subscription **subs, size_t n, void *arg);

/* Redis at host:port (port 0: unix socket path). Connects lazily. */
ss_store_t *ss_store_new(const char *host, int port);
/* redis_cluster and redis_wait_* (lk_redis_configure); 0 or -1 */
int ss_store_configure(ss_store_t *self, lk_config_t *cfg);
/* moves keys of the layout before hash tags to their tagged names (lk_layout); 0 / -1 */
int ss_store_migrate(ss_store_t *self);
void ss_store_destroy(ss_store_t **self_p);

/* per-client queue limit for sessions that do not bring one (0 = none); default 1000 */
void ss_store_set_max_queued(ss_store_t *self, uint32_t max_queued);
/* seconds after which offline "never expiring" sessions expire anyway; 0 = never */
void ss_store_set_forced_expiry(ss_store_t *self, uint32_t seconds);

/* Replicas (session_replicas > 1). fn says whether this replica owns a client now;
   only owned sessions are listed offline, expired, counted as queued and have their
   records written on node changes. Setting it also makes the store shared: new messages
   take their ids from Redis atomically (INCRBY in a script), and ss_store_load marks
   every session stale. */
typedef bool(ss_owns_fn)(const char *client, void *arg);
void ss_store_set_owner(ss_store_t *self, ss_owns_fn *fn, void *arg);
bool ss_store_owns(ss_store_t *self, const char *client);
/* marks stale every session not owned now (all: every session) */
void ss_store_mark_stale(ss_store_t *self, bool all);
/* shared store and the client unknown here or stale: read it before working on it */
bool ss_store_needs_refresh(ss_store_t *self, const char *client);
typedef bool(ss_holds_fn)(const char *node, uint64_t node_epoch, void *arg);
/* Reads the records of n clients from Redis (one pipeline) into the map: sessions not in
   Redis are forgotten (and stale clean-session registrations with them), the others
   become current; one whose node does not hold it (holds() false) is offline since now.
   0, or -1 (Redis; nothing changed). */
int ss_store_refresh(ss_store_t *self, const char **clients, size_t n, ss_holds_fn *holds,
                     void *arg);

/* Adds (stale, to be read when used) the persistent sessions listed in lk:sessions that
   the map does not know: a sibling replica made them. 0, or -1 (Redis). */
int ss_store_discover(ss_store_t *self);
/* Appends (strdup'ed) up to max stale sessions this replica owns now. */
void ss_store_stale_owned(ss_store_t *self, zlistx_t *list, size_t max);

/* Loads every persistent session from Redis, replacing the map. 0, or -1 (Redis). */
int ss_store_load(ss_store_t *self);

ss_session_t *ss_store_session(ss_store_t *self, const char *client);
size_t ss_store_size(ss_store_t *self);
/* messages dropped over quota since start */
uint64_t ss_store_dropped(ss_store_t *self);

/* SessionOpen: clean start, record the node, answer present/subs/pending. -1: Redis
   failed, nothing changed in memory. */
int ss_store_open(ss_store_t *self, const ss_open_t *req, ss_open_result_t *result);
void ss_open_result_clear(ss_open_result_t *result);

/* SessionClose of connection conn at node: 0 done, 1 ignored (the client is not registered
   at that connection), -1 Redis failed */
int ss_store_close(ss_store_t *self, const char *client, const char *node, uint64_t conn,
                   uint32_t expiry, Lk__Subscription **subs, size_t n_subs, bool subs_changed);

/* inbound QoS 2 packet ids of a persistent session at node: add (PUBREC sent) and delete
   (PUBREL received). 0 done, 1 ignored (not at node, or not persistent), -1 Redis failed */
int ss_store_rx(ss_store_t *self, const char *client, const char *node, const uint32_t *add,
                size_t n_add, const uint32_t *del, size_t n_del);

/* SessionAck from node: deletes acked messages, replaces the subscription set when
   subs_changed. 0 done, 1 ignored (not at node, or not persistent), -1 Redis failed */
int ss_store_ack(ss_store_t *self, const char *client, const char *node, const uint64_t *ids,
                 size_t n_ids, const uint64_t *rel_ids, const uint32_t *rel_pids, size_t n_rel,
                 Lk__Subscription **subs, size_t n_subs, bool subs_changed);

/* SessionAck with subs_delta from node: writes subs, deletes the removed filters, keeps
   the rest (O(changes), not O(set)). 0 done, 1 ignored (as ss_store_ack), -1 Redis failed */
int ss_store_subs_delta(ss_store_t *self, const char *client, const char *node,
                        Lk__Subscription **subs, size_t n_subs, char **removed,
                        size_t n_removed);

/* StoreBatch: stores every item whose client has a persistent session and room in its
   queue; ids[i] gets the store id, or 0 when item i was dropped. -1: Redis failed (ids
   are then meaningless). */
int ss_store_put(ss_store_t *self, Lk__StoreItem **items, size_t n, uint64_t *ids);

/* RetainSet: set (or, for an empty payload, delete) each topic's retained message */
int ss_store_retain_set(ss_store_t *self, Lk__Msg **msgs, size_t n);
/* One HSCAN step of lk:retain from *cursor (start with 0): calls fn for each live
   message, deletes expired ones. Returns 1 when more remain, 0 when done, -1 on failure. */
int ss_store_retain_scan(ss_store_t *self, uint64_t *cursor, size_t count, ss_retain_fn *fn,
                         void *arg);

/* ss_holds_fn: whether node still holds a client it took under node_epoch (the caller
   knows the bus) */
/* Appends (strdup'ed, list must free its items) the client ids of the persistent
   sessions no node holds: offline ones, and online ones for which holds() says no (their
   node is gone but we have not heard so yet). holds may be NULL. */
void ss_store_offline(ss_store_t *self, zlistx_t *list, ss_holds_fn *holds, void *arg);
/* Reads the subscriptions of n clients in one pipeline and calls fn for each client that
   still has a persistent session. 0 or -1. */
int ss_store_subs(ss_store_t *self, const char **clients, size_t n, ss_subs_fn *fn, void *arg);
/* Replicas: of the copies `ids` (ascending) stored for client, those still queued (not
   acked meanwhile), as Delivers (store_id and released_pid set) to fn in id order. 0, or
   -1 when Redis failed. */
typedef void(ss_copy_fn)(const Lk__Deliver *d, void *arg);
int ss_store_copies(ss_store_t *self, const char *client, const uint64_t *ids, size_t n,
                    ss_copy_fn *fn, void *arg);

/* node fell silent: its volatile clients are forgotten, its persistent ones go offline
   (keeping node, so they come back if the node returns with the same epoch) */
void ss_store_node_down(ss_store_t *self, const char *node, int64_t now_ms);
/* node is alive with epoch: its sessions opened under another epoch are gone (node
   cleared, volatile forgotten); sessions under this epoch are online again */
void ss_store_node_up(ss_store_t *self, const char *node, uint64_t epoch, int64_t now_ms);
/* Appends (strdup'ed) the distinct nodes recorded for online sessions. */
void ss_store_nodes(ss_store_t *self, zlistx_t *list);

/* Deletes up to `max` offline persistent sessions whose expiry has passed at now_ms and
   appends their client ids (strdup'ed) to expired. 0 or -1 (then nothing was deleted). */
int ss_store_expire(ss_store_t *self, int64_t now_ms, size_t max, zlistx_t *expired);

/* Deletes an offline persistent session at once (the operator's DELETE /clients/{id}):
   0 done, 1 no such session or it is connected, -1 Redis failed. */
int ss_store_clear(ss_store_t *self, const char *client);
/* messages held for all sessions (queued and unacked) */
uint64_t ss_store_queued(ss_store_t *self);
/* Redis round trip in ms (-1: down) */
double ss_store_ping_ms(ss_store_t *self);

/* runs the store's selftest cases against the redis-server at host:port (which it
   flushes), printing PASS/FAIL lines; adds to the counters */
void ss_store_test(const char *host, int port, bool verbose, int *passed, int *failed);

#endif
