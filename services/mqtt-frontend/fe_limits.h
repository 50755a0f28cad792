/*  fe_limits: the frontend's limits against abuse. One fe_limits_t per frontend (owned by
    fe_server_t) holds the configuration, the per-address connection counts, the LRU of
    addresses with recent authentication failures and the refusal-log limiter; each
    connection carries an fe_limits_conn_t (its token buckets and pause state).

    Configuration (0 or a negative value = no limit, unless said otherwise):
      max_connections              connections this frontend holds at once (Mosquitto's
                                   name); an accept over the limit is closed at once
      max_connections_per_address  connections from one source IP at once; same refusal
      max_publish_rate             PUBLISH packets a second per client (token bucket, one
                                   second of burst)
      max_publish_bytes_per_sec    PUBLISH payload+topic bytes a second per client (same)
                                   Over either: the frontend stops reading that socket
                                   until the bucket has refilled (back-pressure: TCP flow
                                   control slows the client; nobody is disconnected)
      max_subscriptions            subscriptions one client holds; SUBACK 0x97 quota
                                   exceeded (v5) / 0x80 (3.x) for the entries past it
      max_topic_levels             levels ('/'-separated) in a topic name or filter
      max_topic_length             bytes in a topic name or filter
                                   PUBLISH over either: v5 QoS 1/2 PUBACK/PUBREC 0x90
                                   (topic name invalid), v5 QoS 0 dropped, 3.x the
                                   connection is closed (3.x has no refusal code, and a
                                   silent drop would hide the fault); SUBSCRIBE entry:
                                   0x8F (v5) / 0x80 (3.x)
      auth_fail_threshold          10: failed logins from one address within
      auth_fail_window             60 s before its CONNECTs are slowed down: each is held
                                   (not sent to auth) for auth_fail_delay_ms (500),
                                   doubling with every further failure up to
      auth_fail_max_delay_ms       10000; CONNECTs from that address are served one
                                   delay apart, and one whose turn is further away than
                                   the max delay is refused at once with CONNACK 0x9F
                                   connection rate exceeded (3.x: 0x03 unavailable).
                                   auth_fail_threshold 0 turns this off.
      auth_fail_addresses          10000: addresses remembered (least recently failed
                                   forgotten first), so memory stays bounded

    Each refusal is logged once per connection and kind, and at most 20 refusal lines
    leave a frontend every 10 s (a summary counts the rest). */
#ifndef FE_LIMITS_H_INCLUDED
#define FE_LIMITS_H_INCLUDED

#include "lk_config.h"
#include "lk_loop.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _fe_limits_t fe_limits_t;
typedef struct _fe_server_t fe_server_t;
struct fe_conn;

/* per-connection state, inside fe_conn_t (zero-initialised) */
typedef struct {
    char addr[48];     /* source address counted in the per-address table ("" = none) */
    double msg_tokens; /* token buckets; negative = debt being waited out */
    double byte_tokens;
    int64_t refill_ms; /* 0 = buckets not started */
    bool paused;       /* reading stopped until the buckets refill */
    int timer;         /* resume or held-CONNECT timer (0 = none) */
    uint32_t logged;   /* refusal kinds already logged for this connection */
    int acl_timer;     /* fe_acl: an ACL re-read waits for auth (0 = none) */
    int64_t acl_since_ms;
} fe_limits_conn_t;

/* NULL with a log line on a bad value. loop stays the caller's. */
fe_limits_t *fe_limits_new(lk_config_t *config, lk_loop_t *loop);
void fe_limits_destroy(fe_limits_t **self_p);

/* At accept, before the connection exists: false (logged) when max_connections or
   max_connections_per_address is reached; the caller closes the socket. */
bool fe_limits_accept(fe_server_t *srv, const char *addr);
/* the new connection from addr now counts against its address */
void fe_limits_opened(struct fe_conn *conn, const char *addr);
/* the connection is closing: uncount it, cancel its timer */
void fe_limits_closed(struct fe_conn *conn);

/* End of a valid CONNECT: sends the AuthRequest now, holds it while the source address is
   backing off, or refuses the CONNECT (0x9F) when its turn is too far away. */
void fe_limits_connect(struct fe_conn *conn);
/* auth refused this connection (reason as in AuthReply): counts a failure for its
   address unless auth was merely unavailable */
void fe_limits_auth_failed(struct fe_conn *conn, const char *reason);

/* A PUBLISH to topic (resolved, valid) with `bytes` of payload: charges the client's
   buckets (pausing its reading when in debt) and checks the topic limits. 0: go on;
   1: refused and answered (PUBACK/PUBREC with 0x90, or dropped); -1: the connection was
   closed. */
int fe_limits_publish(struct fe_conn *conn, const char *topic, uint8_t qos, uint16_t pid,
                      size_t bytes);
/* A SUBSCRIBE entry (valid filter): 0 when allowed, else the SUBACK code to answer */
uint8_t fe_limits_subscribe(struct fe_conn *conn, const char *filter);

/* Why the server cut a client off: one notice line per connection, at most 10 at once
   and 1 a second per kind after that; the lines left out are counted in a summary line
   ("N more ... not logged"), at the latest 10 s later (fe_limits_cron). */
typedef enum {
    FE_CUT_PROTOCOL,  /* protocol error, malformed packet (with the reason code) */
    FE_CUT_KEEPALIVE, /* keepalive timeout */
    FE_CUT_OVERSIZE,  /* packet over max_packet_size */
    FE_CUT_REFUSED,   /* CONNECT refused (with the reason) */
    FE_CUT_TIMEOUT,   /* no whole CONNECT in connect_timeout_ms */
    FE_CUT_SLOW,      /* does not read what it is sent */
    FE_CUT_KINDS
} fe_cut_t;
void fe_limits_cut(struct fe_conn *conn, fe_cut_t kind, const char *why);
/* the summary lines of kinds whose suppressed lines wait for 10 s */
void fe_limits_cron(fe_limits_t *self, int64_t now);

/* ---- the pure parts, exposed for the selftest ---- */

/* levels of a topic or filter ("$share/<group>/" not counted) */
int fe_limits_levels(const char *topic);
/* token bucket: refills *tokens at rate/s up to burst since *last_ms, takes cost; returns
   the ms to wait until *tokens is back to 0 (0 when not in debt) */
int64_t fe_limits_bucket(double *tokens, int64_t *last_ms, int64_t now, double rate, double burst,
                         double cost);

int fe_limits_test(bool verbose);

#endif
