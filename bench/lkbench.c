/*  lkbench: the MQTT load generator behind bench/run (issue 7).

    One process drives many MQTT 3.1.1 connections from a single epoll loop (non-blocking
    sockets, level-triggered reads, EPOLLOUT only while a write is pending). Three modes:

      pubsub    publishers and subscribers in one of four topologies (p2p, fanin, fanout,
                wildcard), QoS 0/1/2, at the highest rate the broker sustains (a window of
                undelivered messages per publisher) or at a fixed offered rate. Each payload
                starts with the send time (CLOCK_MONOTONIC ns), the publisher's index and
                its sequence number, so the subscribers measure end-to-end latency and, per
                (subscriber, publisher) pair, lost, duplicated and out-of-order messages.
      idle      opens N connections spread over source addresses 127.0.0.x (bind before
                connect, IP_BIND_ADDRESS_NO_PORT) and holds them with keepalive pings; prints
                "READY ..." once every attempt settled so the driver can measure memory.
      connrate  connect, CONNACK, DISCONNECT, close, as fast as C concurrent slots allow.

    pubsub's clients connect with clean session 1 and a closed connection stays closed
    (counted in "disconnects"; what it had not delivered counts as lost), unless:

      --persistent  clean session 0 for publishers and subscribers (ids <prefix>-p<i>,
                    <prefix>-s<i>); after the drain each id connects once more with clean
                    session 1 and disconnects, so no session is left behind
                    ("sessions_removed").
      --reconnect   (implies --persistent) a connection that closes after setup (the broker
                    process killed, a reset) is opened again after 100 ms, backing off to 1 s
                    while attempts fail, during the run and the drain, as a real client
                    would. A subscriber whose CONNACK says session present keeps its
                    subscription, else it subscribes again ("sessions_lost" counts those,
                    and publishers' lost sessions). A publisher re-sends, in order, what its
                    old connection left incomplete [MQTT-4.4.0-1]: the same PUBLISH (DUP,
                    same packet id, same seq and send time) without PUBACK/PUBREC, PUBREL
                    without PUBCOMP. So with a correct broker "lost" is 0 after the drain.
                    Also counted: "reconnects" (connections ready again), "refused"
                    (CONNACK code != 0, any time), "connect_failures" (TCP-level or no
                    CONNACK within 10 s), "max_reconnect_s" (longest close -> ready again).
                    Setup still fails fast: reconnection starts once every client is ready.
      --progress S  a line of these counters on stderr every S seconds, stamped with
                    CLOCK_MONOTONIC, to match them to faults a driver caused.

    Every mode prints one JSON object on stdout at the end. All encoding and decoding goes
    through common/lk_mqtt.h. Bounds: each phase has its own time limit (setup, run, drain,
    hold, session removal 10 s); SIGINT/SIGTERM end the current phase early: in pubsub a
    signal during the run stops publishing and the drain still runs (a second signal ends
    it), so the JSON is complete. This is a benchmark tool, not a test: it never decides
    pass or fail, it reports.
*/
#include "lk_common.h"
#include "lk_mqtt.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define S_HDR 16          /* payload header: ts ns (8), publisher (4), seq (4) */
#define S_SUB_BUCKETS 128 /* histogram: 128 linear buckets per power of two */
#define S_HIST_SLOTS (64 * S_SUB_BUCKETS)
#define S_READ_CHUNK 65536
#define S_BATCH 64                      /* messages a publisher queues per loop turn */
#define S_RETRY_FIRST 100000000LL       /* --reconnect: first retry 100 ms after a close */
#define S_RETRY_MAX 1000000000LL        /* backing off to at most 1 s */
#define S_CONNACK_TIMEOUT 10000000000LL /* a reconnect attempt with no CONNACK is retried */
#define S_SLOW_RECONNECT 500000000LL    /* a reconnect slower than this gets a line on stderr */
#define S_CLEANUP_NS 10000000000LL      /* --persistent: the sessions' removal takes at most 10 s */

/* SIGINT/SIGTERM seen so far: each one ends the phase that is running (pubsub's run phase,
   then its drain, then its session clean-up) */
static volatile sig_atomic_t s_signals;

static void s_on_signal(int sig)
{
    (void)sig;
    s_signals++;
}

static int64_t s_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* --- latency histogram (log-linear, relative error < 1/128) ------------------------- */

typedef struct {
    uint64_t counts[S_HIST_SLOTS];
    uint64_t n;
    uint64_t max;
} lb_hist_t;

static int s_hist_slot(uint64_t v)
{
    if (v < S_SUB_BUCKETS)
        return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - 7;
    return (shift + 1) * S_SUB_BUCKETS + (int)((v >> shift) & (S_SUB_BUCKETS - 1));
}

static double s_hist_value(int slot)
{
    if (slot < S_SUB_BUCKETS)
        return slot;
    int shift = slot / S_SUB_BUCKETS - 1;
    double lo = (double)((uint64_t)(S_SUB_BUCKETS + slot % S_SUB_BUCKETS) << shift);
    return lo + (double)(1ULL << shift) / 2; /* the bucket's middle */
}

static void s_hist_add(lb_hist_t *h, uint64_t v)
{
    h->counts[s_hist_slot(v)]++;
    h->n++;
    if (v > h->max)
        h->max = v;
}

/* the value at quantile q (0..1), in the histogram's unit */
static double s_hist_quantile(const lb_hist_t *h, double q)
{
    if (h->n == 0)
        return 0;
    uint64_t rank = (uint64_t)ceil(q * (double)h->n);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < S_HIST_SLOTS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            double v = s_hist_value(i);
            return v > (double)h->max ? (double)h->max : v;
        }
    }
    return (double)h->max;
}

static void s_hist_json(const lb_hist_t *h, const char *name, double unit)
{
    printf("\"%s\":{\"n\":%" PRIu64 ",\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,"
           "\"max\":%.1f}",
           name, h->n, s_hist_quantile(h, 0.5) / unit, s_hist_quantile(h, 0.9) / unit,
           s_hist_quantile(h, 0.99) / unit, s_hist_quantile(h, 0.999) / unit,
           (double)h->max / unit);
}

/* --- connections ----------------------------------------------------------------------- */

enum { LB_PUB, LB_SUB, LB_IDLE, LB_CR };
enum { LB_CONNECTING, LB_WAIT_CONNACK, LB_WAIT_SUBACK, LB_READY, LB_CLOSED };

typedef struct lb_conn_s {
    int fd;
    int role;
    int idx; /* publisher / subscriber / slot index */
    int state;
    uint8_t *rbuf;
    size_t rlen, rcap;
    lk_wbuf_t wbuf;
    bool want_out; /* EPOLLOUT is registered */
    bool dirty;    /* on the flush list */
    struct lb_conn_s *next_dirty;
    int64_t t_start;   /* connect started (ns) */
    int64_t next_ping; /* idle: next PINGREQ (ns) */
    /* --reconnect */
    bool down;          /* closed after setup, waiting for next_retry */
    int64_t t_down;     /* when the ready connection closed (ns) */
    int64_t next_retry; /* next connect attempt (ns) */
    int64_t backoff;    /* delay before the attempt after a failed one (ns) */
    int attempts;       /* connect attempts since it closed */
} lb_conn_t;

/* what one subscriber saw of one publisher */
typedef struct {
    uint64_t *bits; /* seen sequence numbers */
    uint32_t nwords;
    int64_t last; /* highest sequence number seen, -1 none */
    uint64_t unique, dups, ooo;
} lb_track_t;

typedef struct {
    lb_conn_t *conn;
    char topic[64];
    uint32_t seq;
    uint64_t sent;
    uint64_t expected; /* deliveries its messages should cause */
    uint64_t received; /* deliveries of its messages, duplicates included */
    uint64_t forgiven; /* deliveries written off after a stall (QoS 0) */
    uint64_t acked;
    int64_t last_progress;
    int64_t next_due; /* fixed-rate mode: when the next message is due (ns) */
    int inflight;
    uint16_t next_pid;
    uint8_t *pid_used; /* 65536: packet ids in flight, 1 = PUBLISH sent, 2 = PUBREC came */
    uint32_t *pid_seq; /* --reconnect: per packet id, the message's seq and send time, to */
    int64_t *pid_ts;   /* re-send it unchanged on the next connection [MQTT-4.4.0-1] */
} lb_pub_t;

typedef struct {
    lb_conn_t *conn;
    lb_track_t *track; /* one per publisher */
    /* 65536: inbound QoS 2 packet ids PUBRECed and not yet released (session state, kept
       across reconnects): a PUBLISH again with one of them is not a new message
       [MQTT-4.3.3-10] */
    uint8_t *qos2_in;
} lb_sub_t;

/* the generator: options, connections and counters (one per process) */
typedef struct {
    /* options */
    const char *mode;
    const char *host;
    int port;
    const char *topology;
    int qos;
    int size;
    int npubs, nsubs;
    double rate; /* total offered msg/s, 0 = as fast as the window allows */
    double duration, warmup, drain, setup_timeout, settle;
    int window;          /* undelivered messages per publisher (max-rate mode) */
    int inflight_max;    /* QoS>0 messages in flight per publisher */
    int filters, groups; /* wildcard topology */
    int conns;           /* idle */
    int conn_offset;     /* idle: this process's first global connection index */
    int keepalive;       /* seconds */
    double hold;
    int concurrency;    /* connrate, idle: connects in progress at once */
    int src_count;      /* source addresses 127.0.0.2 .. 127.0.0.(1+src_count) */
    const char *prefix; /* client id prefix */
    bool nodelay;
    bool persistent; /* pubsub: clean session 0, sessions removed at the end */
    bool reconnect;  /* pubsub: reopen closed connections after setup, re-send in flight */
    /* state */
    int ep;
    struct sockaddr_in dst;
    lb_conn_t *dirty;
    lb_pub_t *pubs;
    lb_sub_t *subs;
    lb_conn_t **all;
    int nall;
    int fanout; /* deliveries per message (non-wildcard) */
    uint8_t *payload;
    bool running;             /* publishing */
    int64_t t_measure, t_end; /* measurement window (ns) */
    lb_hist_t *lat;           /* ns */
    lb_hist_t *conn_lat;      /* connrate: ns */
    uint64_t received, received_window, unique_total, dups, ooo, bad_payload;
    uint64_t disconnects, connect_failures, stalls, pings, pongs, connected, completed;
    uint64_t src_seq;
    /* --persistent / --reconnect */
    bool live;     /* setup done: a closed connection is reopened (with --reconnect) */
    bool cleaning; /* removing the sessions: connections only CONNECT and DISCONNECT */
    int down;      /* connections waiting to be reopened */
    uint64_t reconnects, refused, sessions_lost, cleaned;
    int64_t max_reconnect_ns;
    int64_t next_cron, next_ping; /* s_cron's next turn, next PINGREQ to every client (ns) */
    double progress;              /* pubsub: seconds between progress lines, 0 none */
    int64_t next_progress, window_reconnect_ns;
} lb_t;

static void s_die(const char *what)
{
    fprintf(stderr, "lkbench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void s_mark_dirty(lb_t *self, lb_conn_t *c)
{
    if (!c->dirty && c->state != LB_CLOSED) {
        c->dirty = true;
        c->next_dirty = self->dirty;
        self->dirty = c;
    }
}

static void s_send(lb_t *self, lb_conn_t *c, const lk_mqtt_packet_t *p)
{
    if (lk_mqtt_encode(&c->wbuf, LK_MQTT_V311, p) != 0) {
        fprintf(stderr, "lkbench: cannot encode %s\n", lk_mqtt_type_name(p->type));
        exit(1);
    }
    s_mark_dirty(self, c);
}

static void s_send_ack(lb_t *self, lb_conn_t *c, uint8_t type, uint16_t pid)
{
    lk_mqtt_packet_t p = {0};
    p.type = type;
    p.u.ack.packet_id = pid;
    s_send(self, c, &p);
}

/* --reconnect: the next attempt is due after the delay, doubled after each failure */
static void s_schedule_retry(lb_t *self, lb_conn_t *c, int64_t now)
{
    if (!c->down) {
        c->down = true;
        c->t_down = now;
        c->backoff = S_RETRY_FIRST;
        c->attempts = 0;
        self->down++;
    } else {
        c->backoff = c->backoff * 2 > S_RETRY_MAX ? S_RETRY_MAX : c->backoff * 2;
    }
    c->next_retry = now + c->backoff;
}

static void s_close(lb_t *self, lb_conn_t *c, bool counted)
{
    if (c->state == LB_CLOSED)
        return;
    if (self->cleaning)
        counted = false;
    if (counted && (c->state == LB_READY || c->state == LB_WAIT_SUBACK))
        self->disconnects++;
    else if (counted)
        self->connect_failures++;
    epoll_ctl(self->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = LB_CLOSED;
    c->rlen = 0;
    c->wbuf.len = 0;
    if (self->reconnect && self->live && !self->cleaning &&
        (c->role == LB_PUB || c->role == LB_SUB))
        s_schedule_retry(self, c, s_now_ns());
}

/* the connection is ready again after a close: how long it took */
static void s_back(lb_t *self, lb_conn_t *c, int64_t now)
{
    if (!c->down)
        return;
    c->down = false;
    self->down--;
    self->reconnects++;
    if (now - c->t_down > self->max_reconnect_ns)
        self->max_reconnect_ns = now - c->t_down;
    if (now - c->t_down > self->window_reconnect_ns)
        self->window_reconnect_ns = now - c->t_down;
    if (now - c->t_down > S_SLOW_RECONNECT)
        fprintf(stderr,
                "lkbench: %s %d ready again %.3f s after its close (%d attempts; the last: "
                "%.3f s from connect to ready)\n",
                c->role == LB_SUB ? "subscriber" : "publisher", c->idx,
                (double)(now - c->t_down) / 1e9, c->attempts, (double)(now - c->t_start) / 1e9);
}

/* Starts a non-blocking connect with CONNECT already queued: the first EPOLLOUT flushes
   it. Returns 0, or -1 (counted as a connect failure) when the socket cannot be made. */
static int s_open(lb_t *self, lb_conn_t *c, const char *client_id)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        self->connect_failures++;
        c->state = LB_CLOSED;
        return -1;
    }
    int one = 1;
    if (self->nodelay)
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (self->src_count > 0) {
        /* spread over 127.0.0.x so 100 000 connections fit in the ephemeral ports */
        struct sockaddr_in src = {0};
        src.sin_family = AF_INET;
        uint32_t host = 0x7f000002u + (uint32_t)(self->src_seq++ % (uint64_t)self->src_count);
        src.sin_addr.s_addr = htonl(host);
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(c->fd, (struct sockaddr *)&src, sizeof(src)) != 0) {
            close(c->fd);
            self->connect_failures++;
            c->state = LB_CLOSED;
            return -1;
        }
    }
    c->t_start = s_now_ns();
    if (connect(c->fd, (struct sockaddr *)&self->dst, sizeof(self->dst)) != 0 &&
        errno != EINPROGRESS) {
        close(c->fd);
        self->connect_failures++;
        c->state = LB_CLOSED;
        return -1;
    }
    c->state = LB_WAIT_CONNACK;
    c->rlen = 0;
    c->wbuf.len = 0;
    c->want_out = true;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(self->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
        s_die("epoll_ctl");
    lk_mqtt_packet_t p = {0};
    p.type = LK_MQTT_CONNECT;
    p.u.connect.clean =
        !(self->persistent && !self->cleaning && (c->role == LB_PUB || c->role == LB_SUB));
    p.u.connect.keepalive = (uint16_t)self->keepalive;
    p.u.connect.client_id.p = client_id;
    p.u.connect.client_id.len = (uint32_t)strlen(client_id);
    s_send(self, c, &p);
    return 0;
}

/* writes what is queued; keeps EPOLLOUT registered only while something is left */
static void s_flush(lb_t *self, lb_conn_t *c)
{
    while (c->wbuf.len > 0 && c->state != LB_CLOSED) {
        ssize_t n = write(c->fd, c->wbuf.data, c->wbuf.len);
        if (n > 0) {
            lk_wbuf_consume(&c->wbuf, (size_t)n);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            s_close(self, c, true);
            return;
        }
    }
    if (c->state == LB_CLOSED)
        return;
    bool want = c->wbuf.len > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(self->ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
}

static void s_flush_dirty(lb_t *self)
{
    while (self->dirty) {
        lb_conn_t *c = self->dirty;
        self->dirty = c->next_dirty;
        c->dirty = false;
        c->next_dirty = NULL;
        s_flush(self, c);
    }
}

/* --- pubsub: topology ------------------------------------------------------------------ */

static bool s_is(const lb_t *self, const char *t)
{
    return strcmp(self->topology, t) == 0;
}

/* deliveries a message of publisher p with sequence number seq causes */
static int s_fanout_of(const lb_t *self)
{
    if (s_is(self, "wildcard"))
        return self->nsubs * self->filters / self->groups;
    if (s_is(self, "fanout"))
        return self->nsubs;
    return 1;
}

static void s_subscribe(lb_t *self, lb_sub_t *s)
{
    int n = s_is(self, "wildcard") ? self->filters : 1;
    char(*names)[64] = lk_calloc((size_t)n, 64);
    lk_mqtt_sub_entry_t *entries = lk_calloc((size_t)n, sizeof(*entries));
    int i = s->conn->idx;
    for (int j = 0; j < n; j++) {
        if (s_is(self, "p2p"))
            snprintf(names[j], 64, "bench/p2p/%d", i);
        else if (s_is(self, "fanin"))
            snprintf(names[j], 64, "bench/in/+");
        else if (s_is(self, "fanout"))
            snprintf(names[j], 64, "bench/out");
        else {
            /* subscriber i takes the filters of class i % classes: each group of topics is
               subscribed by nsubs / classes distinct clients */
            int classes = self->groups / self->filters;
            snprintf(names[j], 64, "bench/+/g%d", (i % classes) * self->filters + j);
        }
        entries[j].topic_filter.p = names[j];
        entries[j].topic_filter.len = (uint32_t)strlen(names[j]);
        entries[j].qos = (uint8_t)self->qos;
    }
    lk_mqtt_packet_t p = {0};
    p.type = LK_MQTT_SUBSCRIBE;
    p.u.subscribe.packet_id = 1;
    p.u.subscribe.entries = entries;
    p.u.subscribe.count = (uint32_t)n;
    s_send(self, s->conn, &p);
    free(entries);
    free(names);
}

/* queues message seq of pub, sent first at ts (a re-send keeps both, and its packet id) */
static void s_send_publish(lb_t *self, lb_pub_t *pub, uint32_t seq, int64_t ts, uint16_t id,
                           bool dup)
{
    uint8_t *pl = self->payload;
    uint32_t pidx = (uint32_t)pub->conn->idx;
    memcpy(pl, &ts, 8);
    memcpy(pl + 8, &pidx, 4);
    memcpy(pl + 12, &seq, 4);
    lk_mqtt_packet_t p = {0};
    p.type = LK_MQTT_PUBLISH;
    p.u.publish.qos = (uint8_t)self->qos;
    p.u.publish.dup = dup;
    char topic[64];
    if (s_is(self, "wildcard")) {
        snprintf(topic, sizeof(topic), "bench/p%u/g%u", pidx, seq % (uint32_t)self->groups);
        p.u.publish.topic.p = topic;
    } else {
        p.u.publish.topic.p = pub->topic;
    }
    p.u.publish.topic.len = (uint32_t)strlen(p.u.publish.topic.p);
    p.u.publish.payload.p = (const char *)pl;
    p.u.publish.payload.len = (uint32_t)self->size;
    p.u.publish.packet_id = id;
    s_send(self, pub->conn, &p);
}

static void s_publish_one(lb_t *self, lb_pub_t *pub, int64_t now)
{
    uint16_t id = 0;
    if (self->qos > 0) {
        id = pub->next_pid;
        while (id == 0 || pub->pid_used[id])
            id++;
        pub->next_pid = (uint16_t)(id + 1);
        pub->pid_used[id] = 1;
        pub->inflight++;
        if (pub->pid_seq) {
            pub->pid_seq[id] = pub->seq;
            pub->pid_ts[id] = now;
        }
    }
    s_send_publish(self, pub, pub->seq, now, id, false);
    pub->seq++;
    pub->sent++;
    pub->expected += (uint64_t)self->fanout;
}

static int s_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* --reconnect: on the new connection, what the old one left incomplete, in the order it was
   first sent [MQTT-4.4.0-1]: PUBLISH again (DUP) without PUBACK/PUBREC, PUBREL without
   PUBCOMP */
static void s_resend(lb_t *self, lb_pub_t *pub)
{
    if (pub->inflight == 0 || !pub->pid_seq)
        return;
    uint64_t *order = lk_calloc((size_t)pub->inflight, sizeof(uint64_t));
    int n = 0;
    for (uint32_t id = 1; id < 65536 && n < pub->inflight; id++)
        if (pub->pid_used[id])
            order[n++] = (uint64_t)pub->pid_seq[id] << 16 | id;
    qsort(order, (size_t)n, sizeof(uint64_t), s_cmp_u64);
    for (int i = 0; i < n; i++) {
        uint16_t id = (uint16_t)(order[i] & 0xffff);
        if (pub->pid_used[id] == 2)
            s_send_ack(self, pub->conn, LK_MQTT_PUBREL, id);
        else
            s_send_publish(self, pub, pub->pid_seq[id], pub->pid_ts[id], id, true);
    }
    free(order);
}

/* queues what each publisher may send now */
static void s_publish_turn(lb_t *self, int64_t now)
{
    for (int i = 0; i < self->npubs; i++) {
        lb_pub_t *pub = &self->pubs[i];
        if (pub->conn->state != LB_READY)
            continue;
        for (int b = 0; b < S_BATCH; b++) {
            if (self->qos > 0 && pub->inflight >= self->inflight_max)
                break;
            if (self->rate > 0) {
                if (now < pub->next_due)
                    break;
                /* a publisher more than a second behind drops the backlog */
                double per = 1e9 * self->npubs / self->rate;
                if (now - pub->next_due > 1000000000LL)
                    pub->next_due = now;
                pub->next_due += (int64_t)per;
            } else {
                uint64_t outstanding = pub->expected - pub->received - pub->forgiven;
                if (outstanding >= (uint64_t)self->window * (uint64_t)self->fanout) {
                    /* QoS 0 may lose: a publisher that saw nothing delivered for 300 ms
                       writes its outstanding messages off instead of waiting forever */
                    if (self->qos == 0 && now - pub->last_progress > 300000000LL) {
                        pub->forgiven += outstanding;
                        pub->last_progress = now;
                        self->stalls++;
                        continue;
                    }
                    break;
                }
            }
            s_publish_one(self, pub, now);
        }
    }
}

static lb_track_t *s_track(lb_t *self, lb_sub_t *s, uint32_t pidx)
{
    if (!s->track)
        s->track = lk_calloc((size_t)self->npubs, sizeof(lb_track_t));
    lb_track_t *t = &s->track[pidx];
    if (!t->bits)
        t->last = -1;
    return t;
}

static void s_on_message(lb_t *self, lb_sub_t *s, const lk_mqtt_publish_t *m, int64_t now)
{
    if (m->payload.len < S_HDR) {
        self->bad_payload++;
        return;
    }
    int64_t ts;
    uint32_t pidx, seq;
    memcpy(&ts, m->payload.p, 8);
    memcpy(&pidx, m->payload.p + 8, 4);
    memcpy(&seq, m->payload.p + 12, 4);
    if (pidx >= (uint32_t)self->npubs) {
        self->bad_payload++;
        return;
    }
    self->received++;
    if (self->running && now >= self->t_measure && now <= self->t_end)
        self->received_window++;
    if (ts >= self->t_measure && self->t_measure > 0)
        s_hist_add(self->lat, (uint64_t)(now > ts ? now - ts : 0));
    lb_pub_t *pub = &self->pubs[pidx];
    pub->received++;
    pub->last_progress = now;

    lb_track_t *t = s_track(self, s, pidx);
    uint32_t w = seq / 64;
    if (w >= t->nwords) {
        uint32_t n = t->nwords ? t->nwords : 64;
        while (n <= w)
            n *= 2;
        t->bits = lk_realloc(t->bits, n * sizeof(uint64_t));
        memset(t->bits + t->nwords, 0, (n - t->nwords) * sizeof(uint64_t));
        t->nwords = n;
    }
    uint64_t bit = 1ULL << (seq % 64);
    if (t->bits[w] & bit) {
        t->dups++;
        self->dups++;
        return;
    }
    t->bits[w] |= bit;
    t->unique++;
    self->unique_total++;
    if ((int64_t)seq < t->last) {
        t->ooo++;
        self->ooo++;
    } else {
        t->last = seq;
    }
}

/* --- packets from the broker ----------------------------------------------------------- */

static void s_idle_ready(lb_t *self, lb_conn_t *c, int64_t now);

static void s_on_packet(lb_t *self, lb_conn_t *c, lk_mqtt_packet_t *p, int64_t now)
{
    switch (p->type) {
    case LK_MQTT_CONNACK:
        if (c->state != LB_WAIT_CONNACK) {
            fprintf(stderr, "lkbench: CONNACK out of turn on connection %d\n", c->idx);
            s_close(self, c, true);
            return;
        }
        if (p->u.connack.code != 0) {
            fprintf(stderr, "lkbench: CONNACK %u (refused) on connection %d\n", p->u.connack.code,
                    c->idx);
            self->refused++;
            /* idle and connrate count it as a failure, as they always did */
            s_close(self, c, c->role == LB_IDLE || c->role == LB_CR);
            return;
        }
        if (self->cleaning) {
            /* the clean session replaced the persistent one; end it too */
            lk_mqtt_packet_t d = {0};
            d.type = LK_MQTT_DISCONNECT;
            s_send(self, c, &d);
            s_flush(self, c);
            self->cleaned++;
            s_close(self, c, false);
            return;
        }
        if (self->live && !p->u.connack.session_present && self->persistent) {
            self->sessions_lost++;
            fprintf(stderr, "lkbench: %s %d reconnected without its session\n",
                    c->role == LB_SUB ? "subscriber" : "publisher", c->idx);
        }
        if (c->role == LB_SUB && !p->u.connack.session_present)
            memset(self->subs[c->idx].qos2_in, 0, 65536); /* a new session */
        if (c->role == LB_SUB && self->live && p->u.connack.session_present) {
            c->state = LB_READY; /* the broker kept the subscription */
            s_back(self, c, now);
        } else if (c->role == LB_SUB) {
            c->state = LB_WAIT_SUBACK;
            s_subscribe(self, &self->subs[c->idx]);
        } else if (c->role == LB_PUB && self->live) {
            s_resend(self, &self->pubs[c->idx]);
            c->state = LB_READY;
            s_back(self, c, now);
        } else if (c->role == LB_CR) {
            s_hist_add(self->conn_lat, (uint64_t)(now - c->t_start));
            self->completed++;
            lk_mqtt_packet_t d = {0};
            d.type = LK_MQTT_DISCONNECT;
            s_send(self, c, &d);
            s_flush(self, c);
            c->state = LB_READY;
            s_close(self, c, false);
        } else {
            c->state = LB_READY;
            self->connected++;
            if (c->role == LB_IDLE)
                s_idle_ready(self, c, now);
        }
        break;
    case LK_MQTT_SUBACK:
        for (uint32_t i = 0; i < p->u.suback.count; i++) {
            if (p->u.suback.codes[i] >= 0x80) {
                fprintf(stderr, "lkbench: subscription refused (0x%02x)\n", p->u.suback.codes[i]);
                s_close(self, c, true);
                return;
            }
        }
        if (c->state != LB_WAIT_SUBACK)
            break;
        c->state = LB_READY;
        if (self->live)
            s_back(self, c, now);
        else
            self->connected++;
        break;
    case LK_MQTT_PUBLISH: {
        uint16_t pid = p->u.publish.packet_id;
        uint8_t *held = c->role == LB_SUB ? self->subs[c->idx].qos2_in : NULL;
        if (c->role == LB_SUB && !(p->u.publish.qos == 2 && held && held[pid]))
            s_on_message(self, &self->subs[c->idx], &p->u.publish, now);
        if (p->u.publish.qos == 1)
            s_send_ack(self, c, LK_MQTT_PUBACK, pid);
        else if (p->u.publish.qos == 2) {
            if (held)
                held[pid] = 1;
            s_send_ack(self, c, LK_MQTT_PUBREC, pid);
        }
        break;
    }
    case LK_MQTT_PUBREL:
        if (c->role == LB_SUB && self->subs[c->idx].qos2_in)
            self->subs[c->idx].qos2_in[p->u.ack.packet_id] = 0;
        s_send_ack(self, c, LK_MQTT_PUBCOMP, p->u.ack.packet_id);
        break;
    case LK_MQTT_PUBREC:
        if (c->role == LB_PUB && self->pubs[c->idx].pid_used[p->u.ack.packet_id])
            self->pubs[c->idx].pid_used[p->u.ack.packet_id] = 2;
        s_send_ack(self, c, LK_MQTT_PUBREL, p->u.ack.packet_id);
        break;
    case LK_MQTT_PUBACK:
    case LK_MQTT_PUBCOMP:
        if (c->role == LB_PUB) {
            lb_pub_t *pub = &self->pubs[c->idx];
            if (pub->pid_used[p->u.ack.packet_id]) {
                pub->pid_used[p->u.ack.packet_id] = 0;
                pub->inflight--;
                pub->acked++;
            }
        }
        break;
    case LK_MQTT_PINGRESP:
        self->pongs++;
        break;
    default:
        break;
    }
}

static void s_on_readable(lb_t *self, lb_conn_t *c, int64_t now)
{
    if (c->rcap - c->rlen < S_READ_CHUNK) {
        c->rcap = c->rlen + S_READ_CHUNK;
        c->rbuf = lk_realloc(c->rbuf, c->rcap);
    }
    ssize_t n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR && errno != EWOULDBLOCK)) {
        s_close(self, c, true);
        return;
    }
    if (n < 0)
        return;
    c->rlen += (size_t)n;
    size_t off = 0;
    while (c->state != LB_CLOSED) {
        size_t frame_len;
        int rc = lk_mqtt_frame(c->rbuf + off, c->rlen - off, 0, &frame_len, NULL);
        if (rc == 0)
            break;
        if (rc < 0) {
            fprintf(stderr, "lkbench: bad frame from the broker\n");
            s_close(self, c, true);
            return;
        }
        lk_mqtt_packet_t p;
        int drc = lk_mqtt_decode(c->rbuf + off, frame_len, LK_MQTT_V311, false, &p);
        if (drc != 0) {
            fprintf(stderr, "lkbench: undecodable packet (0x%02x) from the broker\n", drc);
            lk_mqtt_packet_free(&p);
            s_close(self, c, true);
            return;
        }
        s_on_packet(self, c, &p, now);
        lk_mqtt_packet_free(&p);
        off += frame_len;
    }
    if (c->state == LB_CLOSED)
        return;
    if (off > 0) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
    /* idle connections hold thousands of buffers: give the read buffer back */
    if (c->role == LB_IDLE && c->rlen == 0) {
        free(c->rbuf);
        c->rbuf = NULL;
        c->rcap = 0;
    }
}

static void s_client_id(const lb_t *self, const lb_conn_t *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s-%c%d", self->prefix, c->role == LB_SUB ? 's' : 'p', c->idx);
}

/* --persistent / --reconnect housekeeping, every 10 ms at most: reopens the connections
   whose retry is due, gives up on attempts that got no CONNACK / SUBACK in time, and pings
   (a long run's subscribers may send nothing else for a keepalive). */
static void s_cron(lb_t *self, int64_t now)
{
    if (now < self->next_cron)
        return;
    self->next_cron = now + 10000000LL;
    char id[96];
    for (int i = 0; i < self->nall && self->down > 0; i++) {
        lb_conn_t *c = self->all[i];
        if (!c->down)
            continue;
        if (c->state == LB_CLOSED && now >= c->next_retry) {
            c->attempts++;
            s_client_id(self, c, id, sizeof(id));
            if (s_open(self, c, id) != 0)
                s_schedule_retry(self, c, now);
        } else if ((c->state == LB_WAIT_CONNACK || c->state == LB_WAIT_SUBACK) &&
                   now - c->t_start > S_CONNACK_TIMEOUT) {
            fprintf(stderr, "lkbench: connection %d: no %s in %lld s, retrying\n", c->idx,
                    c->state == LB_WAIT_CONNACK ? "CONNACK" : "SUBACK",
                    (long long)(S_CONNACK_TIMEOUT / 1000000000LL));
            s_close(self, c, true);
        }
    }
    if (!self->cleaning && now >= self->next_ping) {
        if (self->next_ping != 0) {
            lk_mqtt_packet_t p = {0};
            p.type = LK_MQTT_PINGREQ;
            for (int i = 0; i < self->nall; i++)
                if (self->all[i]->state == LB_READY) {
                    s_send(self, self->all[i], &p);
                    self->pings++;
                }
        }
        self->next_ping = now + (int64_t)self->keepalive * 500000000LL;
    }
}

/* --progress: one line of counters on stderr; t is CLOCK_MONOTONIC, so a driver can
   match the lines to what it did to the broker (Python's time.monotonic() is the same
   clock). reconnect_max_s: the slowest reconnect completed since the previous line. */
static void s_progress(lb_t *self, int64_t now)
{
    if (now < self->next_progress)
        return;
    self->next_progress = now + (int64_t)(self->progress * 1e9);
    uint64_t sent = 0, acked = 0;
    for (int i = 0; i < self->npubs; i++) {
        sent += self->pubs[i].sent;
        acked += self->pubs[i].acked;
    }
    fprintf(stderr,
            "lkbench: progress t=%.3f sent=%" PRIu64 " acked=%" PRIu64 " unique=%" PRIu64
            " dup=%" PRIu64 " ooo=%" PRIu64 " disconnects=%" PRIu64 " reconnects=%" PRIu64
            " refused=%" PRIu64 " connect_failures=%" PRIu64 " sessions_lost=%" PRIu64
            " down=%d reconnect_max_s=%.3f\n",
            (double)now / 1e9, sent, acked, self->unique_total, self->dups, self->ooo,
            self->disconnects, self->reconnects, self->refused, self->connect_failures,
            self->sessions_lost, self->down, (double)self->window_reconnect_ns / 1e9);
    self->window_reconnect_ns = 0;
}

/* one epoll turn, at most timeout_ns. The wait has nanosecond precision (epoll_pwait2):
   a fixed-rate run sleeps until the next message is due instead of spinning, which
   would take a core from the broker under test. */
static void s_poll_ns(lb_t *self, int64_t timeout_ns)
{
    struct epoll_event evs[256];
    s_flush_dirty(self);
    struct timespec ts = {.tv_sec = timeout_ns / 1000000000LL,
                          .tv_nsec = timeout_ns % 1000000000LL};
    int n = epoll_pwait2(self->ep, evs, 256, &ts, NULL);
    int64_t now = s_now_ns();
    for (int i = 0; i < n; i++) {
        lb_conn_t *c = evs[i].data.ptr;
        if (c->state == LB_CLOSED)
            continue;
        if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
            s_on_readable(self, c, now);
        if (c->state != LB_CLOSED && (evs[i].events & EPOLLOUT))
            s_flush(self, c);
    }
    if (self->persistent)
        s_cron(self, now);
    if (self->progress > 0 && self->pubs && !self->cleaning)
        s_progress(self, now);
    s_flush_dirty(self);
}

static void s_poll(lb_t *self, int timeout_ms)
{
    s_poll_ns(self, (int64_t)timeout_ms * 1000000);
}

static lb_conn_t *s_conn_new(lb_t *self, int role, int idx)
{
    lb_conn_t *c = lk_calloc(1, sizeof(*c));
    c->fd = -1;
    c->role = role;
    c->idx = idx;
    c->state = LB_CLOSED;
    lk_wbuf_init(&c->wbuf);
    self->all[self->nall++] = c;
    return c;
}

/* --- mode pubsub ----------------------------------------------------------------------- */

/* --persistent: leaves no session behind. Each client id connects once more with clean
   session 1, which discards its persistent session, and disconnects; bounded by
   S_CLEANUP_NS and by a signal. */
static void s_remove_sessions(lb_t *self)
{
    self->cleaning = true;
    self->down = 0;
    lk_mqtt_packet_t d = {0};
    d.type = LK_MQTT_DISCONNECT;
    for (int i = 0; i < self->nall; i++) {
        lb_conn_t *c = self->all[i];
        c->down = false;
        if (c->state == LB_READY || c->state == LB_WAIT_SUBACK) {
            s_send(self, c, &d);
            s_flush(self, c);
        }
        s_close(self, c, false);
    }
    char id[96];
    for (int i = 0; i < self->nall; i++) {
        s_client_id(self, self->all[i], id, sizeof(id));
        s_open(self, self->all[i], id);
    }
    int64_t end = s_now_ns() + S_CLEANUP_NS;
    int sig0 = s_signals;
    while (s_signals == sig0 && s_now_ns() < end) {
        bool open = false;
        for (int i = 0; i < self->nall && !open; i++)
            open = self->all[i]->state != LB_CLOSED;
        if (!open)
            break;
        s_poll(self, 10);
    }
    if (self->cleaned < (uint64_t)self->nall)
        fprintf(stderr, "lkbench: removed %" PRIu64 " of %d sessions\n", self->cleaned, self->nall);
}

static int s_run_pubsub(lb_t *self)
{
    if (s_is(self, "p2p"))
        self->nsubs = self->npubs;
    else if (s_is(self, "fanin"))
        self->nsubs = 1;
    else if (s_is(self, "wildcard")) {
        if (self->filters <= 0 || self->groups % self->filters != 0 ||
            self->nsubs % (self->groups / self->filters) != 0) {
            fprintf(stderr, "lkbench: wildcard needs groups %% filters == 0 and "
                            "subs %% (groups / filters) == 0\n");
            return 2;
        }
    } else if (!s_is(self, "fanout")) {
        fprintf(stderr, "lkbench: unknown topology '%s'\n", self->topology);
        return 2;
    }
    if (self->size < S_HDR)
        self->size = S_HDR;
    self->fanout = s_fanout_of(self);
    self->payload = lk_calloc(1, (size_t)self->size);
    memset(self->payload + S_HDR, 'x', (size_t)self->size - S_HDR);
    self->all = lk_calloc((size_t)(self->npubs + self->nsubs), sizeof(lb_conn_t *));
    self->subs = lk_calloc((size_t)self->nsubs, sizeof(lb_sub_t));
    self->pubs = lk_calloc((size_t)self->npubs, sizeof(lb_pub_t));
    char id[96];
    int64_t t_setup = s_now_ns();

    /* subscribers first, so every publisher's first message has its audience */
    for (int i = 0; i < self->nsubs; i++) {
        self->subs[i].conn = s_conn_new(self, LB_SUB, i);
        self->subs[i].qos2_in = lk_calloc(65536, 1);
        snprintf(id, sizeof(id), "%s-s%d", self->prefix, i);
        s_open(self, self->subs[i].conn, id);
    }
    int64_t deadline = t_setup + (int64_t)(self->setup_timeout * 1e9);
    while (!s_signals && self->connected < (uint64_t)self->nsubs && s_now_ns() < deadline &&
           self->connect_failures + self->disconnects + self->refused == 0)
        s_poll(self, 10);
    for (int i = 0; i < self->npubs; i++) {
        lb_pub_t *pub = &self->pubs[i];
        pub->conn = s_conn_new(self, LB_PUB, i);
        pub->pid_used = lk_calloc(65536, 1);
        if (self->reconnect && self->qos > 0) {
            pub->pid_seq = lk_calloc(65536, sizeof(uint32_t));
            pub->pid_ts = lk_calloc(65536, sizeof(int64_t));
        }
        pub->next_pid = 1;
        if (s_is(self, "p2p"))
            snprintf(pub->topic, sizeof(pub->topic), "bench/p2p/%d", i);
        else if (s_is(self, "fanin"))
            snprintf(pub->topic, sizeof(pub->topic), "bench/in/%d", i);
        else
            snprintf(pub->topic, sizeof(pub->topic), "bench/out");
        snprintf(id, sizeof(id), "%s-p%d", self->prefix, i);
        s_open(self, pub->conn, id);
    }
    uint64_t want = (uint64_t)(self->nsubs + self->npubs);
    while (!s_signals && self->connected < want && s_now_ns() < deadline &&
           self->connect_failures + self->disconnects + self->refused == 0)
        s_poll(self, 10);
    double setup_s = (double)(s_now_ns() - t_setup) / 1e9;
    if (self->connected < want) {
        printf("{\"mode\":\"pubsub\",\"error\":\"setup: %" PRIu64 " of %" PRIu64
               " connections ready, %" PRIu64 " failed, %" PRIu64 " refused\"}\n",
               self->connected, want, self->connect_failures + self->disconnects, self->refused);
        if (self->persistent)
            s_remove_sessions(self);
        return 1;
    }
    /* from here on a closed connection is reopened (--reconnect) */
    self->live = true;
    /* a SUBACK may come before the subscription reached every part of a broker */
    int64_t settle_end = s_now_ns() + (int64_t)(self->settle * 1e9);
    while (!s_signals && s_now_ns() < settle_end)
        s_poll(self, 10);

    if (self->persistent || self->progress > 0) /* a driver may fault the broker now */
        fprintf(stderr, "lkbench: run started\n");
    int64_t t0 = s_now_ns();
    self->t_measure = t0 + (int64_t)(self->warmup * 1e9);
    self->t_end = t0 + (int64_t)((self->warmup + self->duration) * 1e9);
    for (int i = 0; i < self->npubs; i++) {
        self->pubs[i].last_progress = t0;
        self->pubs[i].next_due =
            t0 + (int64_t)(1e9 * self->npubs / (self->rate > 0 ? self->rate : 1) * i / self->npubs);
    }
    self->running = true;
    uint64_t sent_at_measure = 0;
    bool measuring = false;
    int64_t now = t0;
    while (!s_signals && now < self->t_end) {
        if (!measuring && now >= self->t_measure) {
            measuring = true;
            for (int i = 0; i < self->npubs; i++)
                sent_at_measure += self->pubs[i].sent;
        }
        s_publish_turn(self, now);
        int64_t timeout = 0;
        if (self->rate > 0) {
            int64_t next = self->t_end;
            for (int i = 0; i < self->npubs; i++)
                if (self->pubs[i].next_due < next)
                    next = self->pubs[i].next_due;
            timeout = next > now ? next - now : 0;
            if (timeout > 5000000)
                timeout = 5000000;
        }
        s_poll_ns(self, timeout);
        now = s_now_ns();
    }
    int64_t t_stop = now;
    if (t_stop < self->t_end)
        self->t_end = t_stop;
    uint64_t sent = 0, expected = 0, acked = 0, sent_window = 0;
    for (int i = 0; i < self->npubs; i++) {
        sent += self->pubs[i].sent;
        expected += self->pubs[i].expected;
    }
    sent_window = sent - sent_at_measure;
    uint64_t received_window = self->received_window;
    self->running = false;

    /* drain: until every expected delivery and every ack came, or the drain time passed (a
       signal during the run ends the run, not the drain; one more ends the drain) */
    int64_t drain_end = t_stop + (int64_t)(self->drain * 1e9);
    int64_t t_drained = 0;
    int sig0 = s_signals;
    while (s_signals == sig0 && s_now_ns() < drain_end) {
        bool done = self->unique_total >= expected;
        for (int i = 0; i < self->npubs && done; i++)
            if (self->pubs[i].inflight > 0)
                done = false;
        if (done) {
            t_drained = s_now_ns();
            break;
        }
        s_poll(self, 5);
    }
    for (int i = 0; i < self->npubs; i++)
        acked += self->pubs[i].acked;
    int ready = 0;
    for (int i = 0; i < self->nall; i++)
        if (self->all[i]->state == LB_READY)
            ready++;
    /* the measurement is over: what happens to connections from here on is not counted */
    uint64_t disconnects = self->disconnects, connect_failures = self->connect_failures;
    uint64_t reconnects = self->reconnects, refused = self->refused;
    uint64_t sessions_lost = self->sessions_lost;
    int down_at_end = self->down;
    if (self->persistent)
        s_remove_sessions(self);

    double window_s = (double)(self->t_end - self->t_measure) / 1e9;
    if (window_s <= 0)
        window_s = 1e-9;
    printf("{\"mode\":\"pubsub\",\"topology\":\"%s\",\"qos\":%d,\"size\":%d,\"pubs\":%d,"
           "\"subs\":%d,\"fanout\":%d,\"rate\":%.0f,\"window_s\":%.3f,\"setup_s\":%.3f,",
           self->topology, self->qos, self->size, self->npubs, self->nsubs, self->fanout,
           self->rate, window_s, setup_s);
    printf("\"sent\":%" PRIu64 ",\"acked\":%" PRIu64 ",\"expected\":%" PRIu64
           ",\"received\":%" PRIu64 ",\"unique\":%" PRIu64 ",\"lost\":%" PRId64 ",\"dup\":%" PRIu64
           ",\"ooo\":%" PRIu64 ",\"bad_payload\":%" PRIu64 ",\"stalls\":%" PRIu64
           ",\"disconnects\":%" PRIu64 ",\"ready_at_end\":%d,",
           sent, acked, expected, self->received, self->unique_total,
           (int64_t)(expected - self->unique_total), self->dups, self->ooo, self->bad_payload,
           self->stalls, disconnects, ready);
    printf("\"persistent\":%s,\"reconnect\":%s,\"reconnects\":%" PRIu64 ",\"refused\":%" PRIu64
           ",\"connect_failures\":%" PRIu64 ",\"sessions_lost\":%" PRIu64
           ",\"max_reconnect_s\":%.3f,\"down_at_end\":%d,"
           "\"sessions_removed\":%" PRIu64 ",",
           self->persistent ? "true" : "false", self->reconnect ? "true" : "false", reconnects,
           refused, connect_failures, sessions_lost, (double)self->max_reconnect_ns / 1e9,
           down_at_end, self->cleaned);
    printf("\"drained_s\":%.3f,\"pub_rate\":%.1f,\"throughput\":%.1f,",
           t_drained ? (double)(t_drained - t_stop) / 1e9 : -1.0, (double)sent_window / window_s,
           (double)received_window / window_s);
    s_hist_json(self->lat, "lat_us", 1000.0);
    printf("}\n");
    return 0;
}

/* --- mode idle ------------------------------------------------------------------------- */

static void s_idle_ready(lb_t *self, lb_conn_t *c, int64_t now)
{
    /* pings every half keepalive, spread so they do not come in one burst */
    int64_t every = (int64_t)self->keepalive * 500000000LL;
    c->next_ping = now + every / 2 + (every * (c->idx % 1000)) / 1000;
}

static int s_run_idle(lb_t *self)
{
    self->all = lk_calloc((size_t)self->conns, sizeof(lb_conn_t *));
    for (int i = 0; i < self->conns; i++)
        s_conn_new(self, LB_IDLE, i);
    /* the global index decides the source address, so processes do not collide */
    self->src_seq = (uint64_t)self->conn_offset;
    char id[96];
    int64_t t0 = s_now_ns();
    int64_t deadline = t0 + (int64_t)(self->setup_timeout * 1e9);
    int next = 0;
    while (!s_signals && s_now_ns() < deadline) {
        /* a connection that was ready and dropped counts in connected already */
        uint64_t settled = self->connected + self->connect_failures;
        int pending = next - (int)settled;
        while (next < self->conns && pending < self->concurrency) {
            snprintf(id, sizeof(id), "%s-%d", self->prefix, self->conn_offset + next);
            s_open(self, self->all[next], id);
            next++;
            pending++;
        }
        if (next >= self->conns && settled >= (uint64_t)self->conns)
            break;
        s_poll(self, 10);
    }
    double connect_s = (double)(s_now_ns() - t0) / 1e9;
    uint64_t connected = self->connected;
    printf("READY connected=%" PRIu64 " failed=%" PRIu64 " secs=%.3f\n", connected,
           self->connect_failures + self->disconnects, connect_s);
    fflush(stdout);

    int64_t hold_end = s_now_ns() + (int64_t)(self->hold * 1e9);
    int64_t every = (int64_t)self->keepalive * 500000000LL;
    int64_t next_scan = 0;
    while (!s_signals && s_now_ns() < hold_end) {
        int64_t now = s_now_ns();
        if (now >= next_scan) {
            for (int i = 0; i < self->conns; i++) {
                lb_conn_t *c = self->all[i];
                if (c->state == LB_READY && now >= c->next_ping) {
                    lk_mqtt_packet_t p = {0};
                    p.type = LK_MQTT_PINGREQ;
                    s_send(self, c, &p);
                    self->pings++;
                    c->next_ping = now + every;
                }
            }
            next_scan = now + 50000000LL;
        }
        s_poll(self, 20);
    }
    int open = 0;
    for (int i = 0; i < self->conns; i++)
        if (self->all[i]->state == LB_READY)
            open++;
    printf("{\"mode\":\"idle\",\"conns\":%d,\"connected\":%" PRIu64 ",\"connect_failures\":%" PRIu64
           ",\"connect_s\":%.3f,\"open_at_end\":%d,\"disconnects\":%" PRIu64 ",\"pings\":%" PRIu64
           ",\"pongs\":%" PRIu64 "}\n",
           self->conns, connected, self->connect_failures, connect_s, open, self->disconnects,
           self->pings, self->pongs);
    return 0;
}

/* --- mode connrate --------------------------------------------------------------------- */

static int s_run_connrate(lb_t *self)
{
    self->all = lk_calloc((size_t)self->concurrency, sizeof(lb_conn_t *));
    for (int i = 0; i < self->concurrency; i++)
        s_conn_new(self, LB_CR, i);
    char id[96];
    uint64_t attempt = 0;
    int64_t t0 = s_now_ns();
    int64_t t_end = t0 + (int64_t)(self->duration * 1e9);
    while (!s_signals && s_now_ns() < t_end) {
        for (int i = 0; i < self->concurrency; i++) {
            if (self->all[i]->state == LB_CLOSED) {
                snprintf(id, sizeof(id), "%s-%" PRIu64, self->prefix, attempt++);
                s_open(self, self->all[i], id);
            }
        }
        s_poll(self, 5);
    }
    double secs = (double)(s_now_ns() - t0) / 1e9;
    printf("{\"mode\":\"connrate\",\"concurrency\":%d,\"secs\":%.3f,\"completed\":%" PRIu64
           ",\"failures\":%" PRIu64 ",\"rate\":%.1f,",
           self->concurrency, secs, self->completed, self->connect_failures + self->disconnects,
           (double)self->completed / secs);
    s_hist_json(self->conn_lat, "connect_ms", 1e6);
    printf("}\n");
    return 0;
}

/* --- main ------------------------------------------------------------------------------ */

static void s_usage(void)
{
    fprintf(stderr,
            "usage: lkbench MODE [options]   (MODE: pubsub | idle | connrate)\n"
            "  --host A --port P          broker (127.0.0.1:1883)\n"
            "  --topology T               pubsub: p2p | fanin | fanout | wildcard (p2p)\n"
            "  --pubs N --subs M          publishers (10), subscribers (10; p2p: = pubs)\n"
            "  --qos Q --size B           QoS 0..2 (0), payload bytes >= 16 (16)\n"
            "  --rate R                   total offered msg/s; 0 = max under --window (0)\n"
            "  --window W                 undelivered messages per publisher (1000)\n"
            "  --inflight N               QoS>0 messages in flight per publisher (20)\n"
            "  --filters F --groups G     wildcard: filters per subscriber (20), groups (100)\n"
            "  --duration S --warmup S --drain S --setup-timeout S --settle S\n"
            "  --conns N --offset K       idle: connections, first global index\n"
            "  --keepalive S --hold S     idle: keepalive (20), hold time (10)\n"
            "  --concurrency C            connects in progress at once (idle 500, connrate 20)\n"
            "  --src-count K              source addresses 127.0.0.2.. (idle 200, else 0)\n"
            "  --prefix P --no-nodelay    client id prefix (lkb); leave Nagle on in our sockets\n"
            "  --persistent               pubsub: clean session 0; the sessions are removed at\n"
            "                             the end (clean session 1, DISCONNECT)\n"
            "  --reconnect                pubsub (implies --persistent): after setup, reopen a\n"
            "                             closed connection (100 ms, backing off to 1 s) and\n"
            "                             re-send what was in flight; resubscribe if the\n"
            "                             session is gone\n"
            "  --progress S               pubsub: a line of counters on stderr every S s (0)\n"
            "  SIGINT/SIGTERM end the current phase: in pubsub the run, then the drain\n");
}

int main(int argc, char **argv)
{
    /* fixed-rate sends are paced by timed waits: 10 µs of slack, not the default 50 */
    prctl(PR_SET_TIMERSLACK, 10000UL, 0, 0, 0);
    if (argc < 2) {
        s_usage();
        return 2;
    }
    lb_t self_ = {
        .mode = argv[1],
        .host = "127.0.0.1",
        .port = 1883,
        .topology = "p2p",
        .qos = 0,
        .size = 16,
        .npubs = 10,
        .nsubs = 10,
        .rate = 0,
        .duration = 5,
        .warmup = 1,
        .drain = 3,
        .setup_timeout = 60,
        .settle = 0.5,
        .window = 1000,
        .inflight_max = 20,
        .filters = 20,
        .groups = 100,
        .conns = 1000,
        .keepalive = 20,
        .hold = 10,
        .concurrency = -1,
        .src_count = -1,
        .prefix = "lkb",
        .nodelay = true,
    };
    lb_t *self = &self_;
    static const struct option opts[] = {{"host", 1, 0, 'H'},
                                         {"port", 1, 0, 'p'},
                                         {"topology", 1, 0, 't'},
                                         {"qos", 1, 0, 'q'},
                                         {"size", 1, 0, 's'},
                                         {"pubs", 1, 0, 'P'},
                                         {"subs", 1, 0, 'S'},
                                         {"rate", 1, 0, 'r'},
                                         {"window", 1, 0, 'w'},
                                         {"inflight", 1, 0, 'i'},
                                         {"filters", 1, 0, 'f'},
                                         {"groups", 1, 0, 'g'},
                                         {"duration", 1, 0, 'd'},
                                         {"warmup", 1, 0, 'W'},
                                         {"drain", 1, 0, 'D'},
                                         {"setup-timeout", 1, 0, 'T'},
                                         {"settle", 1, 0, 'e'},
                                         {"conns", 1, 0, 'n'},
                                         {"offset", 1, 0, 'o'},
                                         {"keepalive", 1, 0, 'k'},
                                         {"hold", 1, 0, 'h'},
                                         {"concurrency", 1, 0, 'c'},
                                         {"src-count", 1, 0, 'x'},
                                         {"prefix", 1, 0, 'X'},
                                         {"nodelay", 0, 0, 'N'},
                                         {"persistent", 0, 0, 'Y'},
                                         {"reconnect", 0, 0, 'R'},
                                         {"progress", 1, 0, 'G'},
                                         {0, 0, 0, 0}};
    int opt;
    optind = 2;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'H':
            self->host = optarg;
            break;
        case 'p':
            self->port = atoi(optarg);
            break;
        case 't':
            self->topology = optarg;
            break;
        case 'q':
            self->qos = atoi(optarg);
            break;
        case 's':
            self->size = atoi(optarg);
            break;
        case 'P':
            self->npubs = atoi(optarg);
            break;
        case 'S':
            self->nsubs = atoi(optarg);
            break;
        case 'r':
            self->rate = atof(optarg);
            break;
        case 'w':
            self->window = atoi(optarg);
            break;
        case 'i':
            self->inflight_max = atoi(optarg);
            break;
        case 'f':
            self->filters = atoi(optarg);
            break;
        case 'g':
            self->groups = atoi(optarg);
            break;
        case 'd':
            self->duration = atof(optarg);
            break;
        case 'W':
            self->warmup = atof(optarg);
            break;
        case 'D':
            self->drain = atof(optarg);
            break;
        case 'T':
            self->setup_timeout = atof(optarg);
            break;
        case 'e':
            self->settle = atof(optarg);
            break;
        case 'n':
            self->conns = atoi(optarg);
            break;
        case 'o':
            self->conn_offset = atoi(optarg);
            break;
        case 'k':
            self->keepalive = atoi(optarg);
            break;
        case 'h':
            self->hold = atof(optarg);
            break;
        case 'c':
            self->concurrency = atoi(optarg);
            break;
        case 'x':
            self->src_count = atoi(optarg);
            break;
        case 'X':
            self->prefix = optarg;
            break;
        case 'N':
            self->nodelay = false;
            break;
        case 'Y':
            self->persistent = true;
            break;
        case 'R':
            self->reconnect = self->persistent = true;
            break;
        case 'G':
            self->progress = atof(optarg);
            break;
        default:
            s_usage();
            return 2;
        }
    }
    bool idle = strcmp(self->mode, "idle") == 0;
    if (self->concurrency < 0)
        self->concurrency = idle ? 500 : 20;
    if (self->src_count < 0)
        self->src_count = idle || strcmp(self->mode, "connrate") == 0 ? 200 : 0;
    if (self->qos < 0 || self->qos > 2 || self->npubs < 1 || self->nsubs < 1 ||
        self->concurrency < 1 || self->src_count > 250 || self->keepalive < 1) {
        s_usage();
        return 2;
    }
    /* up to the hard limit: idle needs one descriptor a connection */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);
    self->dst.sin_family = AF_INET;
    self->dst.sin_port = htons((uint16_t)self->port);
    if (inet_pton(AF_INET, self->host, &self->dst.sin_addr) != 1) {
        fprintf(stderr, "lkbench: bad host '%s' (an IPv4 address)\n", self->host);
        return 2;
    }
    self->ep = epoll_create1(EPOLL_CLOEXEC);
    if (self->ep < 0)
        s_die("epoll_create1");
    self->lat = lk_calloc(1, sizeof(lb_hist_t));
    self->conn_lat = lk_calloc(1, sizeof(lb_hist_t));

    int rc;
    if (strcmp(self->mode, "pubsub") == 0)
        rc = s_run_pubsub(self);
    else if (idle)
        rc = s_run_idle(self);
    else if (strcmp(self->mode, "connrate") == 0)
        rc = s_run_connrate(self);
    else {
        s_usage();
        rc = 2;
    }
    fflush(stdout);
    /* the kernel closes the sockets; freeing 100 000 connections one by one is no use */
    return rc;
}
