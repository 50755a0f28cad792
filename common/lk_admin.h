/*  lk_admin: building the AdminReply a node sends the `api` process (proto: AdminRequest /
    AdminReply), and answering op "node" for every node from lk_bus.

    The reply owns everything added through these calls (strings are copied) and is freed
    with lk_admin_out_free after it was sent. A service registers its handler with
    lk_bus_on_admin(); the bus answers "node" itself (identity, uptime, memory, peers and
    their backlog) and then calls the handler with the same op so that the service adds
    its connections and metrics. */
#ifndef LK_ADMIN_H_INCLUDED
#define LK_ADMIN_H_INCLUDED

#include "latchkey.pb-c.h"
#include <stdbool.h>
#include <stdint.h>

typedef struct _lk_admin_out_t lk_admin_out_t;

lk_admin_out_t *lk_admin_out_new(uint64_t req);
void lk_admin_out_free(lk_admin_out_t **self_p);
/* the reply being built (ok = true until lk_admin_error) */
Lk__AdminReply *lk_admin_reply(lk_admin_out_t *self);

/* a copy of s that lives as long as the reply ("" for NULL) */
char *lk_admin_str(lk_admin_out_t *self, const char *s);
/* marks the reply failed: code as EMQX names them (NOT_FOUND, BAD_REQUEST, ...) */
void lk_admin_error(lk_admin_out_t *self, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* the node block (created on first use) */
Lk__AdminNode *lk_admin_node(lk_admin_out_t *self);
Lk__AdminPeer *lk_admin_peer_add(lk_admin_out_t *self);
/* a metric: name (Prometheus form), labels in exposition form (a="x") or NULL */
void lk_admin_metric(lk_admin_out_t *self, const char *name, const char *labels, double value,
                     bool counter);
/* zero-initialised items the caller fills (strings through lk_admin_str) */
Lk__AdminClient *lk_admin_client_add(lk_admin_out_t *self);
Lk__AdminSub *lk_admin_sub_add(lk_admin_out_t *self);
Lk__AdminBan *lk_admin_ban_add(lk_admin_out_t *self);
/* a zero-initialised Subscription owned by the reply */
Lk__Subscription *lk_admin_subscription(lk_admin_out_t *self);
/* one JSON object (copied) into json_rows */
void lk_admin_row_add(lk_admin_out_t *self, const char *json);
/* a copy of msg (topic, payload, qos, props and origin) with its time */
void lk_admin_retained_add(lk_admin_out_t *self, const Lk__Msg *msg, uint64_t at_ms);

/* the address part of a peer "ip:port" / "[v6]:port" into buf (a bare v6 address, with
   several ':', stays whole): what a peerhost ban or filter names */
void lk_admin_peerhost(const char *peer, char *buf, size_t cap);

/* the process's resident set in bytes (0 when unknown) */
uint64_t lk_admin_rss(void);

int lk_admin_test(bool verbose);

#endif
