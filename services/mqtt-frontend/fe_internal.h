/*  fe_internal: the MQTT frontend's shared structures.

    One fe_server_t actor per process owns the listeners, every connection, and the bus
    links to router, session-store and auth. A connection goes NEW (waiting for CONNECT)
    → AUTH (waiting for auth's reply) → SESSION (waiting for the session store) → ACTIVE
    → gone. Work that waits for another service is keyed by bus sequence number or request
    id and finds its connection again by (fd, conn id), so a connection that closed
    meanwhile is simply not found. */
#ifndef FE_INTERNAL_H_INCLUDED
#define FE_INTERNAL_H_INCLUDED

#include "fe_limits.h"
#include "fe_server.h"
#include "latchkey.pb-c.h"
#include "lk_acl.h"
#include "lk_bus.h"
#include "lk_common.h"
#include "lk_config.h"
#include "lk_mqtt.h"
#include "lk_replicas.h"
#include "lk_tls.h"
#include <czmq.h>

typedef enum { FE_NEW = 0, FE_AUTH, FE_SESSION, FE_ACTIVE, FE_CLOSED } fe_state_t;

#define FE_OUT_POOL 64                   /* spare output buffers kept per process */
#define FE_OUT_POOL_CAP (64u * 1024)     /* larger ones are freed, not kept */

/* one listening socket and how its connections speak (fe_server.c parses a `listener`
   section; fe_transport.c does the speaking) */
typedef struct fe_listener {
    fe_server_t *srv;
    int fd;
    char name[80];              /* "addr:port", for logs */
    bool websockets;            /* protocol websockets */
    bool proxy_protocol;        /* a PROXY v1/v2 header comes first */
    bool use_identity;          /* use_identity_as_username */
    char *mountpoint;           /* topic mount of its clients (fe_mount.c); NULL: none */
    lk_tls_config_t tls;        /* its strings are owned by the listener */
    lk_tls_ctx_t *tls_ctx;      /* NULL: no TLS; replaced on SIGHUP */
} fe_listener_t;

/* a connection's layers below MQTT (fe_transport.c); NULL for plain TCP without PROXY */
typedef struct fe_transport fe_transport_t;
/* a closed TLS/WebSocket socket drained for a moment before its close (fe_transport.c) */
typedef struct fe_linger fe_linger_t;

/* a subscription the connection holds (kept for resync and the session store) */
typedef struct {
    char *filter;
    uint8_t qos;
    bool no_local;
    bool rap;
    uint8_t rh;
    uint32_t sub_id;
} fe_sub_t;

/* an outgoing QoS > 0 message sent and not yet completed by the client */
typedef struct {
    uint16_t pid;
    uint8_t qos;
    bool released;      /* QoS 2: PUBREC received, PUBREL sent, waiting for PUBCOMP */
    uint64_t store_id;
    /* a shared-subscription delivery keeps its message (packed lk.Deliver), so that it can
       go to another member if this session ends before the client acks it */
    uint8_t *shared;
    size_t shared_len;
} fe_inflight_t;

/* a Last Will waiting for its delay (MQTT 5 Will Delay Interval) */
typedef struct fe_will {
    char *client_id;
    Lk__Msg *msg;
    int64_t due_ms;
    struct fe_will *next;
} fe_will_t;

/* an outgoing message waiting for a free inflight slot: a packed lk.Deliver */
typedef struct fe_queued {
    uint8_t *data;
    size_t len;
    uint64_t store_id;
    struct fe_queued *next;
} fe_queued_t;

/* message identities remembered per connection (a re-published lock decision) */
#define FE_ONCE_IDS 16

typedef struct fe_conn {
    fe_server_t *srv;
    int fd;
    uint64_t id;
    fe_state_t state;
    char peer[64];
    fe_transport_t *tp;     /* TLS / WebSocket / PROXY; NULL on the plain TCP fast path */
    char *cert_cn;          /* verified client certificate's CN (use_identity_as_username) */
    int64_t accepted_ms;
    int64_t last_rx_ms;
    /* input */
    uint8_t *rbuf;
    size_t rlen, rcap;
    /* the peer closed (or the socket failed) with packets still to handle in rbuf: they
       are handled first, then the connection closes with eof_why */
    bool rd_eof;
    char eof_why[96];
    /* packets that came behind the CONNECT wait in rbuf (and the socket is not read)
       until CONNACK; then the connection is on srv->resume to handle them at turn end */
    bool on_resume;
    struct fe_conn *next_resume;
    /* output, written once per loop turn */
    lk_wbuf_t out;
    bool out_pending;   /* on the server's dirty list */
    bool want_write;    /* EPOLLOUT armed */
    bool close_after_flush;
    /* identity */
    uint8_t version;
    char *client_id;
    char *username;
    bool has_username;
    bool assigned_id;
    bool clean;
    uint32_t expiry;        /* session expiry seconds; 0 = ends at disconnect */
    uint16_t keepalive;
    uint64_t req;           /* pending auth/session request id */
    bool reopening;         /* ACTIVE, re-opening its session after a session store restart */
    lk_peer_t *store_peer;  /* the session-store replica its last SessionOpen went to */
    bool open_sent;         /* SessionOpen sent: the store may register this connection */
    bool unregistered;      /* connected without the session store (clean session while it
                               was down): registered when it is back */
    uint32_t n_rt_wait;     /* QoS > 0 publishes waiting for the router's ack */
    bool bp_paused;         /* not read while the router's backlog is too large */
    size_t queued_bytes;    /* packed size of what waits in the queue */
    int64_t req_sent_ms;
    int64_t req_first_ms;
    uint8_t *connect_pw;    /* kept only until auth answers */
    lk_peer_t *auth_peer;   /* the auth replica asked last */
    size_t connect_pw_len;
    /* will */
    Lk__Msg *will;
    uint32_t will_delay;
    /* authorisation */
    bool superuser;
    lk_acl_rule_t *acl;
    size_t n_acl;
    bool acl_check_deliveries;  /* a deny rule: each delivery is checked */
    /* v5 limits the client asked for */
    uint16_t client_receive_max;
    uint32_t client_max_packet;
    uint16_t client_alias_max;
    /* inbound topic aliases (v5) */
    char **alias_in;
    uint16_t alias_in_max;
    /* subscriptions; sub_idx: filter -> index + 1, once there are many */
    fe_sub_t *subs;
    size_t n_subs, cap_subs;
    zhashx_t *sub_idx;
    /* filters subscribed or unsubscribed since the last SessionAck: the session store
       is told only these (one SUBSCRIBE must not rewrite the whole set) */
    char **sub_changes;
    size_t n_sub_changes, cap_sub_changes;
    /* outbound topic aliases (v5): alias i+1 stands for alias_out[i] */
    char **alias_out;
    uint16_t n_alias_out;
    /* inbound QoS 1 publishes waiting for the router (Receive Maximum accounting) */
    uint32_t n_qos1_in;
    /* inbound QoS 2 packet ids between PUBLISH and PUBREL */
    uint16_t *qos2_in;
    size_t n_qos2_in, cap_qos2_in;
    /* outbound */
    fe_inflight_t *inflight;
    size_t n_inflight, cap_inflight;
    uint16_t max_inflight;
    fe_queued_t *q_head, *q_tail;
    size_t n_queued;
    /* stored copies forwarded while re-opening: they go out after the answer's pending
       list, which holds older ones */
    fe_queued_t *ro_head, *ro_tail;
    size_t n_ro;
    uint16_t next_pid;
    /* per session-store replica, the highest store id it handed us (forwarded, or in an
       open's pending list): one replica forwards a client's copies in id order, two
       (ownership moving) interleave theirs. [0] inline, the others in max_store_ids. */
    uint64_t max_store_id;
    uint64_t *max_store_ids;
    /* the last message identities (Lk__Msg.once_id) handed to this connection */
    char *once_ids[FE_ONCE_IDS];
    uint8_t once_next;
    /* store ids completed by the client this turn, for the session store */
    uint64_t *acked_ids;
    size_t n_acked_ids, cap_acked_ids;
    /* QoS 2 store ids PUBRECed this turn, and their packet ids (parallel) */
    uint64_t *rel_ids;
    uint32_t *rel_pids;
    size_t n_rel, cap_rel;
    struct fe_conn *next_dirty;
    struct fe_conn *next_dead;
    struct fe_conn *next_ackd;
    bool on_ack_list;
    /* the Attach goes to the router once the session store answered (so the router sees
       the connections of one client id in the order the store chose); CONNACK waits for
       its ack: routes cached on other frontends are flushed by then, so QoS 0 published
       after CONNACK finds this connection */
    bool attach_sent;
    uint8_t *opened;        /* the SessionOpened, kept until the router acks (packed) */
    size_t opened_len;
    fe_limits_conn_t lim;   /* fe_limits: buckets, pause, address */
    /* for the api's client list (fe_admin.c) */
    int64_t connected_wall_ms;
    uint64_t recv_msg, sent_msg, recv_oct, sent_oct;
    char *mount_tpl;        /* its listener's mountpoint (fe_mount.c) */
    char *mount;            /* the prefix of every topic it uses; NULL: none */
    size_t mount_len;
} fe_conn_t;

/* work waiting for one reliable bus envelope to be acked */
typedef enum {
    FE_WAIT_PUBACK,
    FE_WAIT_PUBREC,
    FE_WAIT_SUBACK,
    FE_WAIT_UNSUBACK,
    FE_WAIT_ATTACH,
    FE_WAIT_RX_ADD,     /* session store recorded the QoS 2 packet id: PUBREC */
    FE_WAIT_RX_DEL,     /* session store forgot it: PUBCOMP */
    /* router replicas: one router's part of a join (fe_routers.c). JOIN: an envelope
       every router got (Attach, SubscribeReq, a retained copy): done when that router
       acks or falls silent. JOIN_OWNER: the publish at the topic's owner: done only when
       acked (it moves with its envelope when the owner dies). */
    FE_WAIT_JOIN,
    FE_WAIT_JOIN_OWNER,
    FE_WAIT_NONE        /* a released part */
} fe_wait_kind_t;

typedef struct fe_join fe_join_t;

typedef struct {
    fe_wait_kind_t kind;
    int fd;
    uint64_t conn_id;
    uint16_t pid;
    uint8_t *codes;     /* SUBACK / UNSUBACK reason codes */
    uint32_t n_codes;
    fe_join_t *join;    /* FE_WAIT_JOIN*: the item released once every part is done */
} fe_wait_item_t;

/* an item waiting for several routers' acks */
struct fe_join {
    int left;
    fe_wait_item_t item;
};

/* one router replica as this frontend sees it (fe_routers.c, fe_route.c) */
typedef struct {
    uint64_t route_gen; /* its routes' generation: a route is flushed by the router that
                           gave it */
    bool was_down;      /* reported down, not up since */
    /* back after it was reported down: it gets its topics back only once what its
       fallback had from us (waits numbered up to hold_mark) is acked (order per topic),
       or after FE_HOLD_MS from hold_since */
    bool held;
    uint64_t hold_mark;
    int64_t hold_since;
} fe_router_state_t;

typedef struct fe_wait {
    lk_peer_t *peer;
    uint64_t seq;
    uint64_t no;        /* creation order (fe_routers.c: a returning router's hold) */
    fe_wait_item_t *items;
    size_t n, cap;
    struct fe_wait *next;
} fe_wait_t;

struct _fe_server_t {
    lk_config_t *config;
    lk_loop_t *loop;
    lk_bus_t *bus;
    char *node;
    lk_replicas_t *routers; /* router_endpoint / router_replicas (fe_routers.c) */
    fe_router_state_t rt[64]; /* by replica index */
    uint64_t wait_no;
    lk_replicas_t *stores; /* session_endpoint / session_replicas: a client's owner */
    lk_replicas_t *auths; /* auth_endpoint / auth_replicas */
    fe_listener_t **listeners;
    int n_listen;
    fe_linger_t *lingering;
    size_t n_lingering;
    fe_conn_t **by_fd;
    int by_fd_cap;
    zhashx_t *by_client;    /* client id -> fe_conn_t (ACTIVE or on its way) */
    uint64_t next_conn_id;
    uint64_t next_req;
    fe_conn_t *dirty;       /* connections with output to write this turn */
    fe_conn_t *ackd;        /* connections with store ids / subs for the session store */
    fe_conn_t *graveyard;   /* closed this turn, freed at turn end */
    fe_conn_t *resume;      /* accepted this turn with packets waiting behind the CONNECT */
    uint8_t *rbuf;          /* the read buffer every plain connection reads into */
    /* output buffers of connections that wrote everything, for the next one that has
       something to send: an idle connection holds none, and none is malloc'ed per
       message */
    lk_wbuf_t out_pool[FE_OUT_POOL];
    int out_pool_n;
    int64_t accept_warned_ms;
    /* back-pressure: past backlog_high unacked bytes towards the router, active
       connections are not read until acks bring it under backlog_low */
    bool congested;
    size_t backlog_high, backlog_low;
    uint64_t max_queued_bytes;
    fe_wait_t *waits, *waits_tail;
    size_t n_conns;
    int64_t router_down_ms; /* when the router fell silent; 0 while it is alive */
    /* the session store was reported down (silent, or cut off by a partition): when it
       is back, with or without a restart, every connection registers again */
    uint64_t store_down; /* session-store replicas (by index) reported down since */
    /* configuration */
    bool allow_zero_length_id;
    uint16_t max_inflight;
    uint32_t max_queued;
    uint32_t max_packet;
    uint16_t max_keepalive;
    uint16_t max_topic_alias;
    uint16_t receive_maximum;
    fe_will_t *wills;       /* delayed wills */
    uint64_t connections_total;
    uint32_t persistent_expiration;
    int connect_timeout_ms;
    int request_timeout_ms;
    int router_timeout_ms;
    /* direct QoS 0 routing (fe_route.c) */
    bool direct;            /* frontend_endpoint set: ask the router for routes */
    zhashx_t *routes;       /* topic -> route */
    zhashx_t *links;        /* node -> our link to another frontend */
    char *link_key;         /* frontend_curve_server_key: their shared certificate, or NULL */
    size_t route_max;
    /* statistics */
    uint64_t msgs_in, msgs_out, bytes_in, bytes_out, dropped;
    uint64_t msgs_in_qos[3], msgs_out_qos[3], bytes_in_qos[3], bytes_out_qos[3];
    int64_t drop_logged_ms;     /* fe_dropped's last line, and the drops since */
    uint64_t drop_unlogged;
    lk_wbuf_t scratch;
    fe_limits_t *limits;
};

/* fe_conn.c */
fe_conn_t *fe_conn_new(fe_server_t *srv, int fd, const char *peer);
void fe_conn_readable(fe_conn_t *conn);
void fe_conn_writable(fe_conn_t *conn);
/* queues the encoded packet; written at turn end */
void fe_conn_send(fe_conn_t *conn, const lk_mqtt_packet_t *pkt);
/* gives conn an output buffer from the pool when it has none (call before encoding) */
void fe_conn_out_prepare(fe_conn_t *conn);
void fe_conn_mark_dirty(fe_conn_t *conn);
void fe_conn_flush(fe_conn_t *conn);
/* the epoll events this connection wants now: EPOLLIN unless a limit or back-pressure
   stopped reading, EPOLLOUT while output waits */
void fe_conn_io_events(fe_conn_t *conn);
/* re-reads everything back-pressure paused, when the router's backlog is low again */
void fe_backlog_check(fe_server_t *srv);
/* a CONNECT is being answered (auth, session store, router): nothing past it is read or
   handled until CONNACK. Clients need not wait for CONNACK (3.1.4); what they send on is
   handled in order once accepted, and dropped unread when refused [MQTT-3.1.4-5] (5.0:
   3.1.4-6) */
static inline bool fe_conn_connecting(const fe_conn_t *conn)
{
    return conn->state == FE_AUTH || conn->state == FE_SESSION;
}
/* the CONNECT was accepted: what the client sent behind it is handled at turn end */
void fe_conn_resume(fe_conn_t *conn);
/* handles the connections fe_conn_resume listed (turn end) */
void fe_conn_resume_all(fe_server_t *srv);
/* closes: will published when publish_will; v5 DISCONNECT with reason first when reason
   != 0 and the connection is past CONNECT */
void fe_conn_close(fe_conn_t *conn, uint8_t reason, bool publish_will, const char *why);
/* sends CONNACK refusing with the v5 reason (mapped for 3.x), then closes */
void fe_conn_refuse(fe_conn_t *conn, uint8_t reason5, const char *why);
fe_conn_t *fe_conn_find(fe_server_t *srv, int fd, uint64_t id);
void fe_conn_free(fe_conn_t *conn);
/* frees the connections closed during this turn (after every list naming them is done) */
void fe_conn_reap(fe_server_t *srv);

/* fe_transport.c: every function here is for connections with conn->tp set */
/* sets up the layers the listener asks for (none for plain TCP); -1 when that fails */
int fe_transport_attach(fe_conn_t *conn, fe_listener_t *lst);
/* reads from the socket through the layers, appending MQTT bytes at conn->rbuf + rlen
   (growing rbuf). Returns the byte count (maybe 0 when only lower layers progressed),
   -1 when the connection must close (*why says why), -2 when nothing could be read. */
ssize_t fe_transport_read(fe_conn_t *conn, const char **why);
/* true once the peer has closed its side (WebSocket close) and what it sent is handled */
bool fe_transport_eof(fe_conn_t *conn);
/* writes conn->out through the layers; arms EPOLLOUT while something waits */
void fe_transport_flush(fe_conn_t *conn);
/* the socket became writable */
void fe_transport_writable(fe_conn_t *conn);
/* last write before close (best effort, non-blocking), WebSocket close, TLS close_notify */
void fe_transport_close(fe_conn_t *conn);
void fe_transport_free(fe_conn_t *conn);
/* after the last write of a connection the server closes: the socket's write side is
   shut and its input drained and dropped for up to 2 s (bounded in bytes and sockets),
   so that the client reads what we sent (DISCONNECT, CONNACK refusal, close frame)
   instead of a reset caused by the bytes it was still sending */
void fe_transport_linger(fe_conn_t *conn);
/* the cron: closes the sockets that have lingered long enough */
void fe_transport_cron(fe_server_t *srv, int64_t now);
/* at exit: closes every lingering socket */
void fe_transport_shutdown(fe_server_t *srv);
/* use_identity_as_username: replaces the CONNECT's username with the certificate's CN and
   drops the password. 0 when the listener does not use it, 1 when done, -1 when the client
   has no usable certificate identity (refuse the CONNECT). */
int fe_transport_identity(fe_conn_t *conn);
/* EPOLLOUT wanted or not (EPOLLIN kept as fe_limits has it) */
void fe_conn_want_write(fe_conn_t *conn, bool want);

/* fe_route.c */
void fe_route_init(fe_server_t *srv);
void fe_route_destroy(fe_server_t *srv);
/* a QoS 0 message from a client: handed to its subscribers from the cache, or sent to the
   router to be resolved (always when ask: a will, sent while its connection closes).
   false: not for this path (send it the usual way) */
bool fe_route_publish(fe_server_t *srv, Lk__Msg *m, bool ask);
void fe_route_batch(fe_server_t *srv, lk_peer_t *router, const Lk__RouteBatch *b);
void fe_route_flush(fe_server_t *srv, lk_peer_t *router, const Lk__RouteFlush *f);
/* the router restarted or fell silent: the routes it gave are void */
void fe_route_reset(fe_server_t *srv, lk_peer_t *router);

/* fe_routers.c: several routers (router_replicas). Routing state (Attach, Detach,
   SubscribeReq, UnsubscribeReq) goes to every router; a publish to its topic's owner. */
int fe_routers_connect(fe_server_t *srv);
bool fe_is_router(fe_server_t *srv, lk_peer_t *peer);
/* the router that takes publishes on topic now */
lk_peer_t *fe_router_for(fe_server_t *srv, const char *topic);
/* its index among the routers */
int fe_router_index_for(fe_server_t *srv, const char *topic);
/* the router that publishes $SYS and gets NodeStats: the first live one */
lk_peer_t *fe_router_first(fe_server_t *srv);
/* unacked bytes towards the live routers (back-pressure) */
size_t fe_routers_backlog(fe_server_t *srv);
/* sends env reliably to every router; it (NULL: none) is released once every router
   alive now acked (each silent one counts as done). false when nothing could be sent */
bool fe_routers_send_all(fe_server_t *srv, Lk__Envelope *env, const fe_wait_item_t *it);
/* a publish to its topic's owner (reliable: QoS > 0 or share); a retained one also as a
   retain-only copy to every other router. it (NULL: none) waits for the owner's ack and
   the live copies' */
void fe_router_publish(fe_server_t *srv, Lk__Publish *pub, bool reliable,
                       const fe_wait_item_t *it);
void fe_routers_peer_up(fe_server_t *srv, lk_peer_t *peer);
void fe_routers_peer_down(fe_server_t *srv, lk_peer_t *peer);
/* the cron (every 250 ms): ends holds whose fallback acked what came before */
void fe_routers_check(fe_server_t *srv);
/* SubscribeReq / UnsubscribeReq for conn to every router (acknowledged); it (NULL: none)
   is released once every live router acked, or at once when none could be sent to */
void fe_router_subscribe(fe_conn_t *conn, Lk__Subscription **subs, protobuf_c_boolean *is_new,
                         size_t n, const fe_wait_item_t *it);
void fe_router_unsubscribe(fe_conn_t *conn, char **filters, size_t n, const fe_wait_item_t *it);
/* fe_server.c: releases one wait item (join parts count down) */
void fe_wait_item_release(fe_server_t *srv, fe_wait_item_t *it);

/* fe_handle.c */
int fe_handle_packet(fe_conn_t *conn, lk_mqtt_packet_t *pkt);
void fe_handle_auth_reply(fe_server_t *srv, Lk__AuthReply *r);
void fe_handle_session_opened(fe_server_t *srv, Lk__SessionOpened *r);
/* the router acked the connection's Attach: CONNACK if the session store answered */
void fe_attach_acked(fe_conn_t *conn);
void fe_session_open_send(fe_conn_t *conn);
/* a SessionOpened for a connection in FE_SESSION (or an empty one made up when the session
   store is down and the session is clean): Attach to the router, CONNACK on its ack */
void fe_session_ready(fe_conn_t *conn, Lk__SessionOpened *r);
/* Takeover from the session store: closes the named connection (will per `resumed`) */
void fe_takeover(fe_server_t *srv, lk_peer_t *from, const Lk__Takeover *t);
/* the session-store replica that owns client now (its id's home, or the next live one) */
lk_peer_t *fe_store(fe_server_t *srv, const char *client);
/* the connection is replaced by a newer one of its client id: closed with 0x8E; its will
   dropped when the session goes on (resumed), published now when the session ends */
void fe_takeover_close(fe_conn_t *conn, bool resumed, const char *by);
/* the request id of a connection's auth/session requests: its fd and id, so a reply
   finds it again (or nothing, once it closed) */
uint64_t fe_conn_req(fe_conn_t *conn);
void fe_auth_request_send(fe_conn_t *conn);
/* the subscription as the bus carries it (the filter is borrowed) */
void fe_sub_to_proto(const fe_sub_t *fs, Lk__Subscription *s);
void fe_conn_subs_to_proto(fe_conn_t *conn, Lk__Subscription **subs_out, Lk__Subscription *store);
/* sends the connection's pending SessionAck (store ids, released ids, subscriptions) now */
void fe_session_ack_flush(fe_conn_t *conn);
/* the index of the subscription to filter, or -1 */
ssize_t fe_sub_find(fe_conn_t *conn, const char *filter);
/* adds or replaces the subscription to filter; *is_new tells which */
void fe_sub_set(fe_conn_t *conn, const char *filter, uint8_t qos, bool nl, bool rap, uint8_t rh,
                uint32_t sub_id, bool *is_new);
/* removes subscription i (its filter is freed) */
void fe_sub_remove_at(fe_conn_t *conn, size_t i);
/* filter was subscribed or unsubscribed: the session store hears of it at turn end
   (conn goes on the ack list) */
void fe_sub_changed(fe_conn_t *conn, const char *filter);
void fe_subs_free(fe_conn_t *conn);

/* fe_acl.c: Revoke{acl_changed} from auth, and the AuthReply{acl_only} it leads to */
void fe_acl_changed(fe_server_t *srv, const Lk__Revoke *r);
void fe_acl_reply(fe_server_t *srv, const Lk__AuthReply *r);

/* fe_deliver.c */
/* a message not delivered to conn's client: counted ($SYS dropped) and logged, one line
   per 10 s per frontend with the count since the last */
void fe_dropped(fe_conn_t *conn, const Lk__Msg *m, const char *why);
/* store: the session-store replica that sent it (NULL: not from a store) */
void fe_deliver(fe_server_t *srv, const Lk__Deliver *d, lk_peer_t *store);
/* the store id is one `store` handed us (see max_store_id) */
void fe_store_id_seen(fe_conn_t *conn, lk_peer_t *store, uint64_t store_id);
void fe_deliver_to(fe_conn_t *conn, const Lk__Deliver *d, bool dup);
void fe_pump(fe_conn_t *conn);
/* a re-open's answer: its pending copies the connection does not hold, then those held
   back meanwhile */
void fe_deliver_reopened(fe_conn_t *conn, Lk__Deliver **pending, size_t n);
void fe_queued_free(fe_queued_t **head_p);
/* PUBACK / PUBREC / PUBCOMP from the client; reason: its reason code (v5, else 0) */
int fe_outbound_ack(fe_conn_t *conn, uint8_t type, uint16_t pid, uint8_t reason);
void fe_store_ack_add(fe_conn_t *conn, uint64_t store_id);
/* a stored copy the connection has in flight or queued */
bool fe_holds(fe_conn_t *conn, uint64_t store_id);
/* a QoS 2 stored copy the client PUBRECed under pid: kept, for PUBREL after a reconnect */
void fe_store_release_add(fe_conn_t *conn, uint64_t store_id, uint16_t pid);

/* fe_admin.c: the api's requests (lk_bus_on_admin) */
typedef struct _lk_admin_out_t lk_admin_out_t;
void fe_admin(lk_bus_t *bus, lk_peer_t *peer, const Lk__AdminRequest *q, lk_admin_out_t *out,
              void *arg);

/* fe_server.c */
void fe_will_schedule(fe_server_t *srv, const char *client_id, Lk__Msg *msg, uint32_t delay_s);
bool fe_will_cancel(fe_server_t *srv, const char *client_id);
/* publishes a delayed will now (its session ended); false when none waits */
bool fe_will_fire(fe_server_t *srv, const char *client_id);
void fe_will_publish(fe_server_t *srv, const char *client_id, Lk__Msg *msg);
fe_wait_t *fe_wait_for(fe_server_t *srv, lk_peer_t *peer, uint64_t seq);
void fe_wait_add(fe_wait_t *w, const fe_wait_item_t *item);
/* the envelope from/old_seq waited for was re-sent as to/new_seq (lk_bus_move_unacked*):
   its wait follows it. false: nothing waited for it */
bool fe_wait_moved(fe_server_t *srv, lk_peer_t *from, uint64_t old_seq, lk_peer_t *to,
                   uint64_t new_seq);
/* a QoS 2 packet id added to (PUBLISH) or removed from (PUBREL) the persistent session
   in the store; true: the PUBREC / PUBCOMP waits for the store's ack (FE_WAIT_RX_*),
   false: no session to keep it in, answer now */
bool fe_store_rx(fe_conn_t *conn, uint16_t pid, bool add);
uint8_t fe_connack_code(uint8_t version, uint8_t reason5);

/* fe_mount.c: topic mount points. set: after auth (from_auth: the user's, else the
   listener's; mounts the will too), -1 when %u/%c cannot fill it safely; in: a topic or
   filter from the client, mounted (takes and returns a malloc'ed string); out: the
   client's view of a delivered topic */
int fe_mount_set(fe_conn_t *conn, const char *from_auth);
char *fe_mount_in(fe_conn_t *conn, char *topic);
const char *fe_mount_out(const fe_conn_t *conn, const char *topic);
void fe_mount_free(fe_conn_t *conn);
int fe_mount_test(bool verbose);

#endif
