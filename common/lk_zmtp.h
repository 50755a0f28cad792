/*  lk_zmtp: ZeroMQ's wire protocol (ZMTP 3.0, NULL mechanism) over ipc://, spoken from
    the process's own event loop.

    libzmq hands every message to an I/O thread on the sending side and from an I/O thread
    on the receiving side: four thread wake-ups per hop, about 45 µs each way on the 2-core
    machines we measure on, twice per MQTT message (frontend → router → frontend). Here the
    socket is served by the loop itself: one write per connection per loop turn, one read
    per wake-up, no threads. The bytes on the wire are ZMTP 3.0, so libzmq ROUTER and
    DEALER sockets talk to these ones (the selftest checks both directions); tcp:// stays
    with libzmq, which brings CurveZMQ.

    A router serves one or more ipc:// endpoints and routes by the identity each dealer
    gives in its READY; a newer connection with the same identity replaces the older one
    (ZMQ_ROUTER_HANDOVER). A dealer connects to one endpoint and reconnects (100 ms,
    doubling to 500 ms) whenever the link drops. Each message is one frame; extra frames
    of a multipart message from a libzmq peer are dropped.

    Sending only queues: lk_zmtp_flush() writes every connection with pending bytes (the
    bus calls it at the end of each loop turn). What is queued for a link that drops is
    lost, like a full libzmq pipe: the bus's acknowledged channel re-sends what matters. */
#ifndef LK_ZMTP_H_INCLUDED
#define LK_ZMTP_H_INCLUDED

#include "lk_loop.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _lk_zmtp_t lk_zmtp_t;

/* one message from the peer with this identity (a dealer sees its server's name as given
   to lk_zmtp_dealer_new); data is valid during the call only. The callback must not
   destroy the lk_zmtp_t. */
typedef void(lk_zmtp_msg_fn)(lk_zmtp_t *z, const char *identity, const uint8_t *data, size_t len,
                             void *arg);

lk_zmtp_t *lk_zmtp_router_new(lk_loop_t *loop, lk_zmtp_msg_fn *fn, void *arg);
/* identity: what this dealer tells the router (our node id); peer_name: what fn is told */
lk_zmtp_t *lk_zmtp_dealer_new(lk_loop_t *loop, const char *identity, const char *peer_name,
                              lk_zmtp_msg_fn *fn, void *arg);
void lk_zmtp_destroy(lk_zmtp_t **self_p);

/* true for the endpoints this module serves (ipc://path, ipc://@abstract) */
bool lk_zmtp_endpoint_ok(const char *endpoint);
/* router: listen on endpoint (a stale socket file is replaced); 0 or -1 with a log line */
int lk_zmtp_bind(lk_zmtp_t *self, const char *endpoint);
/* dealer: connect (and keep reconnecting) to endpoint; 0 or -1 with a log line */
int lk_zmtp_connect(lk_zmtp_t *self, const char *endpoint);

/* queues one message: a router to the dealer named identity, a dealer to its server
   (identity ignored; queued while the link is down, as libzmq does). 0, or -1 when there
   is no such dealer or the queue is past its limit (256 MiB; counted, and logged at
   warning level at most every 10 s). */
int lk_zmtp_send(lk_zmtp_t *self, const char *identity, const uint8_t *data, size_t len);
/* the same for a message the caller keeps until the peer acknowledges it: queued
   whatever the queue holds (the caller bounds what it keeps unacknowledged); a dealer
   without a link does not queue it (returns 0): the caller sends it again when the link
   number has moved, after the older ones it kept, so their order holds */
int lk_zmtp_send_kept(lk_zmtp_t *self, const char *identity, const uint8_t *data, size_t len);
/* Changes whenever what was sent may have been lost: a dealer's number goes up at every
   link loss and every link up; a router gives each dealer's link its own number, 0 while there is none.
   A message sent at one value and never refused is delivered while it holds. */
uint64_t lk_zmtp_link_gen(lk_zmtp_t *self, const char *identity);
/* stream positions on the current link (dealer: across links too): the end of what is
   queued, and how far of it the socket has taken. A message queued to end at P has
   left this process once lk_zmtp_written_pos() >= P (and the link number held). */
int64_t lk_zmtp_queued_pos(lk_zmtp_t *self, const char *identity);
int64_t lk_zmtp_written_pos(lk_zmtp_t *self, const char *identity);
/* messages lk_zmtp_send refused for a full queue */
/* the limit lk_zmtp_send applies (256 MiB; for tests) */
void lk_zmtp_set_max_queue(lk_zmtp_t *self, size_t bytes);
uint64_t lk_zmtp_dropped(lk_zmtp_t *self);
/* writes what is queued, as far as the sockets take it */
void lk_zmtp_flush(lk_zmtp_t *self);
/* dealer: the handshake with the server is done */
bool lk_zmtp_connected(lk_zmtp_t *self);

/* --- the wire, as pure functions (for the fuzzer) --------------------------------- */

#define LK_ZMTP_GREETING 64
#define LK_ZMTP_MORE 0x01
#define LK_ZMTP_LONG 0x02
#define LK_ZMTP_COMMAND 0x04

typedef struct {
    uint8_t flags;
    const uint8_t *body;
    uint64_t size;
} lk_zmtp_frame_t;

/* the peer's greeting: 64 when it is a ZMTP 3.x NULL greeting, 0 when fewer than 64
   bytes are there and those agree with one, -1 when it is not one */
int lk_zmtp_greeting_parse(const uint8_t *buf, size_t len);
/* one frame at buf: its total length (header + body) when complete, 0 when more bytes
   are needed, -1 when malformed (reserved flag bits), -2 when its body is over max */
int64_t lk_zmtp_frame_parse(const uint8_t *buf, size_t len, uint64_t max, lk_zmtp_frame_t *f);
/* a READY command body: 0 with the Socket-Type and Identity properties copied out
   (NUL-terminated, empty when absent; identity_len is its byte count, which may include
   NULs), -1 when it is not a READY or is malformed or a value does not fit */
int lk_zmtp_ready_parse(const uint8_t *body, size_t len, char *socket_type, size_t st_cap,
                        char *identity, size_t id_cap, size_t *identity_len);

int lk_zmtp_test(bool verbose);

#endif
