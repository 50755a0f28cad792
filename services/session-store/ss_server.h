/*  ss_server: the session-store actor — the bus side of the service.

    It serves the frontends on `session_endpoint` (ROUTER) and connects to the router
    (`router_endpoint`, peer "router"). Envelopes become calls on ss_store (the Redis
    layer); results become replies, acks and Deliver batches. Reliable envelopes are
    acked only once their effect is in Redis: when Redis fails, the envelope is kept
    (the bus would drop the sender's re-send as a duplicate still in our hands) and
    retried in order, with backoff, until it succeeds or its sender restarts.

    Start-up: the bus binds and connects at once; Redis is loaded in the loop, retried
    with a bounded backoff, and only then the readiness fd is written and work begins
    (reliable envelopes that arrive meanwhile wait in the retry queue; SessionOpen is
    left unanswered, the frontend asks again).

    On the router's first Hello and on each of its restarts the server re-sends what the
    router cannot rebuild from the frontends: every persistent session no frontend holds
    (Attach{offline}), every retained message (RetainSet), then ResyncDone. A 1 s cron
    expires offline sessions (Detach to the router) and marks sessions of nodes that
    never came back as offline. */
#ifndef SS_SERVER_H_INCLUDED
#define SS_SERVER_H_INCLUDED

#include "lk_config.h"
#include "lk_loop.h"

typedef struct _ss_server_t ss_server_t;

/* Reads the configuration (logging what is wrong and returning NULL on a bad value) and
   builds the actor on loop. cfg must outlive the server. ready_fd (or -1) is written
   once Redis is loaded. */
ss_server_t *ss_server_new(lk_loop_t *loop, lk_config_t *cfg, const char *node, int ready_fd);
void ss_server_destroy(ss_server_t **self_p);

/* binds the session endpoint, connects the router, starts loading Redis; 0 or -1 */
int ss_server_start(ss_server_t *self);

#endif
