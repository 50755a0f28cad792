/*  lk_bus: a node on the Latchkey bus.

    A node serves (ROUTER, lk_bus_bind) and/or connects to named servers (DEALER,
    lk_bus_connect); the peer's node id is its ZeroMQ identity. Every frame is one
    lk.Envelope (proto/latchkey.proto). ipc:// endpoints are spoken by lk_zmtp (ZMTP 3.0
    from this loop, no I/O threads: the hot path's latency); tcp:// ones by libzmq.

    Liveness: connectors send Hello every heartbeat; servers answer. A peer that shows a
    new epoch restarted: on_peer_up(restarted=true) is where a service re-sends its state.
    A peer silent for `dead_ms` gets on_peer_down; nothing ever blocks on it.

    Acknowledged channel: lk_bus_send(..., reliable=true) gives the envelope a sequence
    number and keeps its bytes until the receiver acks it; unacked envelopes are re-sent
    when the receiver appears or shows a new epoch, and after `resend_ms` without an ack. The
    receiving bus drops duplicates before the handler sees them; the handler calls
    lk_bus_ack() when the work is done (at once, or later when it depends on others).

    Batches: lk_bus_batch_add() packs one item into the pending batch of a body type for a
    peer; every pending batch goes out as one envelope at the end of the loop turn (or
    when it grows past batch_max bytes).

    Message log: with lk_bus_set_msglog(), every envelope received is recorded.

    CurveZMQ: a tcp:// endpoint is authenticated and encrypted (CZMQ zcert + zauth); ipc://
    stays plain (one host, file permissions). lk_bus_configure() reads
      bus_curve_secret <file>       this node's certificate (zcert: `latchkey keygen` writes
                                    <node>.key and <node>.key_secret; either name works)
      bus_curve_public_dir <dir>    serving node: the public certificates of the clients it
                                    admits (a zauth actor checks every handshake)
      bus_curve_server_dir <dir>    connecting node: <name>.key, the public certificate of
                                    each server it connects to by that name
      bus_allow_plaintext_tcp       false (default): a tcp:// bind or connect without the
                                    keys above is refused with a log line
    Curve is a property of libzmq's socket: a node that serves tcp:// with Curve serves
    its other tcp:// endpoints with Curve too. One process holds at most one zauth (ZeroMQ's ZAP
    handler is per process): one Curve-serving bus per process. */
#ifndef LK_BUS_H_INCLUDED
#define LK_BUS_H_INCLUDED

#include "lk_config.h"
#include "lk_loop.h"
#include "latchkey.pb-c.h"
#include <stdbool.h>
#include <stdint.h>

typedef struct _lk_bus_t lk_bus_t;
typedef struct _lk_peer_t lk_peer_t;
typedef struct _lk_msglog_t lk_msglog_t;

typedef struct {
    /* Every envelope with a body other than Hello. For env->seq > 0 the bus has already
       dropped duplicates: call lk_bus_ack(bus, peer, env->seq) once the work is done.
       The envelope is freed when this returns: copy what you keep. */
    void (*on_message)(lk_bus_t *bus, lk_peer_t *peer, Lk__Envelope *env, void *arg);
    /* a peer appeared (restarted = false) or showed a new epoch (restarted = true) */
    void (*on_peer_up)(lk_bus_t *bus, lk_peer_t *peer, bool restarted, void *arg);
    /* a peer has been silent for dead_ms */
    void (*on_peer_down)(lk_bus_t *bus, lk_peer_t *peer, void *arg);
} lk_bus_handlers_t;

/* node: this node's id; kind: its service name. handlers are copied. */
lk_bus_t *lk_bus_new(lk_loop_t *loop, const char *node, const char *kind,
                     const lk_bus_handlers_t *handlers, void *arg);
void lk_bus_destroy(lk_bus_t **self_p);

/* timings in ms; defaults: heartbeat 200, dead 1000, resend 2000 */
void lk_bus_set_timing(lk_bus_t *self, int heartbeat_ms, int dead_ms, int resend_ms);

const char *lk_bus_node(lk_bus_t *self);
uint64_t lk_bus_epoch(lk_bus_t *self);

/* CurveZMQ and the plaintext policy from the configuration keys above; call before
   lk_bus_bind / lk_bus_connect. 0, or -1 with a log line (unreadable certificate). */
int lk_bus_configure(lk_bus_t *self, lk_config_t *config);
/* the same with explicit values (NULL = unset) */
int lk_bus_set_curve(lk_bus_t *self, const char *secret_cert, const char *public_dir,
                     const char *server_dir);
void lk_bus_allow_plaintext_tcp(lk_bus_t *self, bool allow);

/* serve on endpoint ("ipc://..." or "tcp://127.0.0.1:port"); 0 or -1 with a log line */
int lk_bus_bind(lk_bus_t *self, const char *endpoint);
/* connect to the server known as `name` at endpoint; returns its peer (never NULL) */
lk_peer_t *lk_bus_connect(lk_bus_t *self, const char *name, const char *endpoint);
/* the same, the server's certificate being <bus_curve_server_dir>/<key>.key (key NULL:
   <name>.key): peers sharing one certificate, such as scaled frontends in containers */
lk_peer_t *lk_bus_connect_as(lk_bus_t *self, const char *name, const char *key,
                             const char *endpoint);

/* a peer by node id, or NULL when never heard of */
lk_peer_t *lk_bus_peer(lk_bus_t *self, const char *name);
/* the peer named so, created (not alive) when never heard of: work sent to it waits in
   its unacked queue until it appears */
lk_peer_t *lk_bus_peer_ensure(lk_bus_t *self, const char *name);
/* calls fn for every known peer */
void lk_bus_each_peer(lk_bus_t *self, void (*fn)(lk_peer_t *peer, void *arg), void *arg);

const char *lk_peer_name(lk_peer_t *peer);
const char *lk_peer_kind(lk_peer_t *peer);
/* the endpoint the peer's Hello advertises ("" when none) */
const char *lk_peer_endpoint(lk_peer_t *peer);
/* endpoint to advertise in our Hello (NULL or "": none) */
void lk_bus_advertise(lk_bus_t *self, const char *endpoint);
uint64_t lk_peer_epoch(lk_peer_t *peer);
/* the peer's current life has sent us an envelope naming our epoch: what it sent after
   learning of our (re)start is arriving (what it queued before may have come first) */
bool lk_peer_knows_us(lk_peer_t *peer);
/* heard from within dead_ms (for a server we connect to: its Hello answers) */
bool lk_peer_alive(lk_peer_t *peer);
/* envelopes sent reliably and not yet acked, and their bytes */
size_t lk_peer_unacked(lk_peer_t *peer);
size_t lk_peer_unacked_bytes(lk_peer_t *peer);
/* drop every unacked envelope to this peer (its work is moot) */
void lk_peer_drop_unacked(lk_peer_t *peer);
/* Hands every envelope sent reliably to `from` and not acked to `to` (a replica of the
   same service: `from` fell silent), in order, as new sends: they get `to`'s sequence
   numbers, so on_acked reports them under those. They are marked resent (`from` may have
   done them before it fell silent) and each is reported to moved(from, old seq, to, new
   seq) when moved is not NULL, so waits keyed by seq follow them. Pending batches are
   flushed first. Returns how many moved. */
typedef void(lk_bus_moved_fn)(lk_peer_t *from, uint64_t old_seq, lk_peer_t *to,
                              uint64_t new_seq, void *arg);
size_t lk_bus_move_unacked(lk_bus_t *self, lk_peer_t *from, lk_peer_t *to, lk_bus_moved_fn *moved,
                           void *arg);
/* The same envelope by envelope: to(env, arg) names the peer an unacked envelope of
   `from` goes to (NULL or `from`: it stays queued for `from`, in order). */
typedef lk_peer_t *(lk_bus_move_to_fn)(const Lk__Envelope *env, void *arg);
size_t lk_bus_move_unacked_by(lk_bus_t *self, lk_peer_t *from, lk_bus_move_to_fn *to,
                              lk_bus_moved_fn *moved, void *arg);
/* fn(env, seq, arg) on each envelope sent reliably to peer and not acked yet, in order
   (pending batches are flushed first). fn may change env and return true: from then on
   the changed envelope is what a re-send carries. */
typedef bool(lk_bus_each_fn)(Lk__Envelope *env, uint64_t seq, void *arg);
void lk_bus_each_unacked(lk_bus_t *self, lk_peer_t *peer, lk_bus_each_fn *fn, void *arg);
/* the topic a publish batch is partitioned by (its owner among router replicas): that of
   its first publish that is not a retain-only copy; NULL for other envelopes and for
   batches of copies only */
const char *lk_bus_publish_topic(const Lk__Envelope *env);
/* service data attached to a peer */
void lk_peer_set_data(lk_peer_t *peer, void *data);
void *lk_peer_data(lk_peer_t *peer);

/* Sends env to peer now; from/epoch/seq/acks are filled by the bus. env stays the
   caller's. reliable: keep until acked, re-send as described above. Returns the seq
   (reliable) or 0; -1 when the envelope cannot be packed. Pending batches for this peer
   are flushed first, so order is kept. */
int64_t lk_bus_send(lk_bus_t *self, lk_peer_t *peer, Lk__Envelope *env, bool reliable);

/* The envelope body field numbers that carry batches (lk.Envelope oneof) */
#define LK_BODY_PUBLISH 11
#define LK_BODY_DELIVER 12
#define LK_BODY_STORE 17
#define LK_BODY_RETAIN 18
#define LK_BODY_HISTORY 40
#define LK_BODY_ROUTE 44

/* Packs item into the pending batch of `body` (one of LK_BODY_*) for peer; item is
   a Lk__Publish, Lk__Deliver, Lk__StoreItem, Lk__Msg (RETAIN), Lk__HistoryEvent or Lk__Route
   matching the body.
   The batch goes out as one envelope at turn end, reliable if any item was. Returns the
   seq the batch will carry when reliable (so the caller can wait for its ack), else 0. */
uint64_t lk_bus_batch_add(lk_bus_t *self, lk_peer_t *peer, int body, const void *item,
                          bool reliable);
/* items of unreliable DeliverBatch / Route envelopes (QoS 0 deliveries) a full transport
   refused; reliable envelopes are never refused for room (the sender bounds them) */
uint64_t lk_bus_dropped(lk_bus_t *self);

/* flushes every pending batch and ack now (the loop does it at every turn end) */
void lk_bus_flush(lk_bus_t *self);

/* marks seq (received from peer) done; the ack travels at turn end */
void lk_bus_ack(lk_bus_t *self, lk_peer_t *peer, uint64_t seq);

/* Called with each seq of ours the peer acked (after the bus forgot it), so a service
   can release work that waited for it (e.g. send PUBACK). */
void lk_bus_on_acked(lk_bus_t *self,
                     void (*fn)(lk_bus_t *bus, lk_peer_t *peer, uint64_t seq, void *arg));

/* record every received envelope into log (the bus does not own it) */
void lk_bus_set_msglog(lk_bus_t *self, lk_msglog_t *log);

/* records into segment files under dir (msglog_dir); no-op for an empty dir; -1 when the
   folder cannot be written */
int lk_bus_enable_msglog(lk_bus_t *self, const char *dir);

/* whether a message log records; and records env as if received from `identity` (for
   work a node does without an envelope, e.g. a frontend's cached QoS 0 routes) */
bool lk_bus_msglog_on(lk_bus_t *self);
void lk_bus_msglog_note(lk_bus_t *self, const char *identity, Lk__Envelope *env);

/* Feeds one received frame as if it came from a peer; for replay and fuzzing. */
void lk_bus_inject(lk_bus_t *self, const char *from_identity, const uint8_t *data, size_t len);

/* Admin requests (lk.AdminRequest from a peer of kind "api" or "latchkey"; others get
   FORBIDDEN) are answered by the bus: op "node" with this node's identity, memory,
   uptime and peers, then fn (when set) for every op, which fills `out` (lk_admin.h) or
   marks it an error (unknown op: lk_admin_error BAD_REQUEST). The reply leaves when fn
   returns; fn answers synchronously. */
typedef struct _lk_admin_out_t lk_admin_out_t;
typedef void(lk_bus_admin_fn)(lk_bus_t *bus, lk_peer_t *peer, const Lk__AdminRequest *req,
                              lk_admin_out_t *out, void *arg);
void lk_bus_on_admin(lk_bus_t *self, lk_bus_admin_fn *fn, void *arg);

int lk_bus_test(bool verbose);

#endif
