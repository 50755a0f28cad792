/*  lk_replicas: the replicas of a service as its clients see them: stateless ones (auth,
    history-writer) picked per request, partitioned ones (router, session-store) by the
    owner of a key (lk_replicas_owner); also the router's view of the session-store
    replicas that connect to it (lk_replicas_served) and a replica's view of its siblings
    (lk_replicas_siblings).

    Configuration: <prefix>_endpoint is an endpoint template where %n stands for the
    replica's node id, and <prefix>_replicas (default 1) how many run. One replica is the
    node named like its kind ("auth"); N > 1 are <kind>-1 .. <kind>-N. The replica itself
    binds the template with %n replaced by its own node id (lk_replicas_endpoint).

    A client connects to every replica (lk_replicas_connect) and picks one per request:
    round robin over the live ones (lk_replicas_pick) for independent requests, or the same
    live one while it lives (lk_replicas_sticky) for a stream whose order helps batching.
    Liveness is the bus's Hello (lk_peer_alive). Requests a dead replica did not answer are
    the caller's to re-send: it asks lk_replicas_has() in its on_peer_down. */
#ifndef LK_REPLICAS_H_INCLUDED
#define LK_REPLICAS_H_INCLUDED

#include "lk_bus.h"
#include "lk_config.h"

typedef struct _lk_replicas_t lk_replicas_t;

/* the most replicas of one kind (a bit each in 64-bit masks) */
#define LK_REPLICAS_MAX 64

/* Connects bus to every replica of `kind` per the keys <prefix>_endpoint and
   <prefix>_replicas. NULL when the endpoint is unset (no log line), or after a log line
   when the count is not 1..64 or N > 1 replicas share an endpoint without %n. */
lk_replicas_t *lk_replicas_connect(lk_bus_t *bus, lk_config_t *config, const char *prefix,
                                   const char *kind);
/* The replicas of `kind` that connect to us (the router: session-store replicas are its
   DEALER clients): peers by name, nothing connected; <prefix>_endpoint may be unset. */
lk_replicas_t *lk_replicas_served(lk_bus_t *bus, lk_config_t *config, const char *prefix,
                                  const char *kind);
/* A replica's view of its siblings: connects to every replica but self_node, which counts
   as alive and has no peer (lk_replicas_nth returns NULL for it). NULL after a log line
   when self_node is not one of the configured names. */
lk_replicas_t *lk_replicas_siblings(lk_bus_t *bus, lk_config_t *config, const char *prefix,
                                    const char *kind, const char *self_node);
void lk_replicas_destroy(lk_replicas_t **self_p);
/* lk_replicas_siblings: the owner of key (lk_replicas_owner) is us */
bool lk_replicas_mine(lk_replicas_t *self, const void *key, size_t len);
/* the first live replica after peer in order: who owns a dead replica's keys now (its
   own home keys and those it had taken over), or NULL */
lk_peer_t *lk_replicas_successor(lk_replicas_t *self, lk_peer_t *peer);

/* the endpoint a replica named node binds (template from <prefix>_endpoint), malloc'ed;
   NULL when unset */
char *lk_replicas_endpoint(lk_config_t *config, const char *prefix, const char *node);

/* the next live replica in turn; when none is alive, the next one anyway (its work waits
   for it, or for the caller's re-send) */
lk_peer_t *lk_replicas_pick(lk_replicas_t *self);
/* the replica last returned while it is alive, else the next live one (as pick) */
lk_peer_t *lk_replicas_sticky(lk_replicas_t *self);
/* a live replica other than `not`, or NULL */
lk_peer_t *lk_replicas_other(lk_replicas_t *self, lk_peer_t *not);

/* The replica that owns `key` (a client id, a topic, a lock): the configured replica
   lk_replicas_home(key, n) while it is alive, else the next live one after it in
   order, else the configured one (work for it waits). Every client of the service
   computes the same owner from the same liveness, so partitioned work (a client's
   session, a topic's publishes, a lock's rounds) meets at one replica. Ownership moves
   back when the configured replica returns: callers that need order across that moment
   check lk_peer_unacked() of the replica they used before switching. */
lk_peer_t *lk_replicas_owner(lk_replicas_t *self, const void *key, size_t len);
/* index of the configured owner of key among n replicas, whatever their liveness:
   FNV-1a (32 bits: stable across processes, versions and hosts) of key, modulo n */
int lk_replicas_home(const void *key, size_t len, int n);

bool lk_replicas_has(lk_replicas_t *self, lk_peer_t *peer);
int lk_replicas_count(lk_replicas_t *self);
lk_peer_t *lk_replicas_nth(lk_replicas_t *self, int i);
/* index of peer among the replicas, -1 when it is not one */
int lk_replicas_index(lk_replicas_t *self, lk_peer_t *peer);
int lk_replicas_alive(lk_replicas_t *self);

int lk_replicas_test(bool verbose);

#endif
