/*  lk_iclient: an internal MQTT client — a service that subscribes and publishes on the
    bus like a connected client does, without a socket.

    It is a bus node of its own (lk_bus) that connects to the router (router_endpoint) and
    the session store (session_endpoint) and speaks to them exactly what an mqtt-frontend
    speaks for one socket client: Attach{persistent} to the router, SessionOpen to the
    session store (→ SessionOpened{subs, pending}), SubscribeReq, PublishBatch items,
    Deliver handling, SessionAck{store_ids} once a stored copy was handled, re-Attach with
    every subscription when the router restarts, Detach/SessionClose at close.

    The session is persistent and never expires, so QoS >= 1 messages that match its
    subscriptions while the service is down are stored by the session store and handed to
    on_message when it returns (SessionOpened's pending list). A stored copy is acked to
    the session store only after on_message returned: a crash inside the handler means the
    message comes again (at-least-once), so handlers must be idempotent; Lk__Deliver's
    store_id is passed along for that (strictly increasing per client id, never reused).

    The service may use the same bus for its own peers (lk_iclient_bus(): bind, connect
    more servers); envelopes, peer events and acks concerning those peers are passed on
    through the optional handlers below. */
#ifndef LK_ICLIENT_H_INCLUDED
#define LK_ICLIENT_H_INCLUDED

#include "latchkey.pb-c.h"
#include "lk_bus.h"
#include "lk_config.h"
#include "lk_loop.h"
#include <stdbool.h>
#include <stdint.h>

typedef struct _lk_iclient_t lk_iclient_t;

typedef struct {
    /* A message for one of the subscriptions. store_id > 0: a stored copy (QoS >= 1),
       acked to the session store when this returns — unless the handler called
       lk_iclient_defer() for it. msg is freed after the return: copy what you keep. */
    void (*on_message)(lk_iclient_t *self, const Lk__Msg *msg, uint64_t store_id, void *arg);
    /* the session is open and every subscription so far is acked by the router; called
       again after each re-open (a restart of the session store or router) */
    void (*on_ready)(lk_iclient_t *self, void *arg);
    /* the router acked the publish batch with this seq (see lk_iclient_publish) */
    void (*on_published)(lk_iclient_t *self, uint64_t seq, void *arg);
    /* the service's own peers (neither router nor session-store), and the bodies from
       those two the client does not handle itself; the handler acks env->seq */
    void (*on_envelope)(lk_iclient_t *self, lk_peer_t *peer, Lk__Envelope *env, void *arg);
    void (*on_peer_up)(lk_iclient_t *self, lk_peer_t *peer, bool restarted, void *arg);
    void (*on_acked)(lk_iclient_t *self, lk_peer_t *peer, uint64_t seq, void *arg);
    /* one of the service's own peers went silent (may be NULL) */
    void (*on_peer_down)(lk_iclient_t *self, lk_peer_t *peer, void *arg);
} lk_iclient_handlers_t;

/* node: the bus node id (unique on the bus, e.g. "lock-arbiter"); kind: the service name
   peers see in Hello; client_id: the MQTT client id (distinct from every real client's,
   e.g. "$lk-arbiter"). Reads router_endpoint, session_endpoint and iclient_max_queued
   (default 100000) from config. NULL with a log line when an endpoint is missing.
   handlers are copied; loop and config must outlive the client. */
lk_iclient_t *lk_iclient_new(lk_loop_t *loop, lk_config_t *config, const char *node,
                             const char *kind, const char *client_id,
                             const lk_iclient_handlers_t *handlers, void *arg);
/* frees without telling the bus (see lk_iclient_close) */
void lk_iclient_destroy(lk_iclient_t **self_p);

/* the bus the client runs on, for the service's own binds and connects */
lk_bus_t *lk_iclient_bus(lk_iclient_t *self);
const char *lk_iclient_client_id(lk_iclient_t *self);
/* the session is open and every subscription is acked */
bool lk_iclient_ready(lk_iclient_t *self);
/* at least one router (of router_replicas) is alive */
bool lk_iclient_routed(lk_iclient_t *self);

/* Adds (or changes) a subscription; kept for re-attaches and told to the session store.
   QoS >= 1 gives stored delivery while the service is away. 0 or -1 for an invalid
   filter. */
int lk_iclient_subscribe(lk_iclient_t *self, const char *filter, uint32_t qos);

/* Publishes one message (props: MQTT 5 properties in wire form without length prefix,
   as in Lk__Msg.props, or NULL). Returns an id (> 0) of the publish batch it travels in
   for QoS >= 1 — on_published(id) follows once the router stored every durable copy —
   or 0 for QoS 0. Several publishes of one loop turn to one router share an id. Publishes made before
   the router is reachable wait in the bus's unacked queue. */
uint64_t lk_iclient_publish(lk_iclient_t *self, const char *topic, const void *payload, size_t len,
                            uint32_t qos, bool retain, const void *props, size_t props_len);

/* The same, with a message identity (Lk__Msg.once_id, e.g. a decision id) stable over
   re-publishing: a connection is handed at most one copy of it. */
uint64_t lk_iclient_publish_once(lk_iclient_t *self, const char *topic, const void *payload,
                                 size_t len, uint32_t qos, const void *props, size_t props_len,
                                 const char *once_id);

/* Inside on_message: do not ack this stored copy now; the service calls
   lk_iclient_ack(store_id) when its work is done (or never: it comes again at the next
   session open). */
void lk_iclient_defer(lk_iclient_t *self);
void lk_iclient_ack(lk_iclient_t *self, uint64_t store_id);

/* Leaves politely: Detach{persistent} to the router and SessionClose to the session store,
   then runs the loop until both are acked or timeout_ms passed. Call after lk_loop_run
   returned. Stored messages keep accumulating for the session. */
void lk_iclient_close(lk_iclient_t *self, int timeout_ms);

#endif
