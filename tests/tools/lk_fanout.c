/*  lk-fanout: counts every copy of a fan-out (issue 12, item 3).

    S clean-session subscribers subscribe to one topic; one publisher sends N messages of
    Z bytes at QoS Q with at most W unacknowledged. A canary pair on another topic (one
    QoS 1 publisher, one QoS 1 subscriber) exchanges a message every C ms meanwhile.
    Every PUBLISH a subscriber receives is counted by the sequence number at the head of
    its payload (a bitmap per subscriber: duplicates are told apart). The run ends when
    every copy arrived, or when nothing arrived for `quiet` seconds after the last PUBACK,
    or at the time limit.

    stdout: one JSON object: published, pubacked, expected, received (unique copies),
    duplicates, subs_complete, subs_short (subscribers that missed something), min_copies
    (fewest one subscriber got), canary_sent, canary_acked, canary_received, disconnects,
    elapsed_ms. Exit 0 when the run finished, 1 on a setup failure.

    lk-fanout -p port [-s subs] [-n msgs] [-z size] [-w window] [-q qos] [-t topic]
              [-T timeout_s] [-Q quiet_s] [-i id_prefix] [-c canary_ms] */
#include "lk_common.h"
#include "lk_mqtt.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { F_SUB, F_PUB, F_CSUB, F_CPUB };

typedef struct {
    int fd;
    int role;
    int idx;
    bool connected, subscribed, closed;
    uint8_t *rbuf;
    size_t rlen, rcap;
    lk_wbuf_t w;
    bool want_out;
    uint64_t *seen; /* subscribers: bitmap of sequence numbers */
    uint32_t got;
} f_conn_t;

typedef struct {
    int port, subs, msgs, size, window, qos, timeout, quiet, canary_ms;
    const char *topic, *prefix;
    int ep;
    f_conn_t *c; /* subs, then pub, canary sub, canary pub */
    int n;
    /* publisher */
    int sent, acked, inflight;
    uint8_t *pid_used;
    uint16_t next_pid;
    /* canary */
    int c_sent, c_acked, c_got;
    uint8_t *c_pid_used;
    uint16_t c_next_pid;
    uint64_t received, dups, disconnects;
} f_t;

static int64_t s_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_queue(f_conn_t *c, const lk_mqtt_packet_t *p)
{
    if (lk_mqtt_encode(&c->w, LK_MQTT_V311, p) != 0) {
        fprintf(stderr, "lk-fanout: cannot encode\n");
        exit(1);
    }
}

static void s_close(f_t *f, f_conn_t *c)
{
    if (c->closed)
        return;
    c->closed = true;
    f->disconnects++;
    epoll_ctl(f->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
}

static void s_flush(f_t *f, f_conn_t *c)
{
    while (!c->closed && c->w.len) {
        ssize_t n = send(c->fd, c->w.data, c->w.len, MSG_NOSIGNAL);
        if (n > 0)
            lk_wbuf_consume(&c->w, (size_t)n);
        else if (n < 0 && errno == EINTR)
            continue;
        else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        else {
            s_close(f, c);
            return;
        }
    }
    if (c->closed)
        return;
    bool want = c->w.len > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(f->ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
}

static void s_open(f_t *f, f_conn_t *c, const char *id)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)f->port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        fprintf(stderr, "lk-fanout: connect: %s\n", strerror(errno));
        exit(1);
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(f->ep, EPOLL_CTL_ADD, c->fd, &ev);
    lk_mqtt_packet_t p = {0};
    p.type = LK_MQTT_CONNECT;
    p.u.connect.clean = true;
    p.u.connect.keepalive = 60;
    p.u.connect.client_id.p = id;
    p.u.connect.client_id.len = (uint32_t)strlen(id);
    s_queue(c, &p);
    s_flush(f, c);
}

static void s_subscribe(f_t *f, f_conn_t *c, const char *topic, uint8_t qos)
{
    lk_mqtt_sub_entry_t e = {0};
    e.topic_filter.p = topic;
    e.topic_filter.len = (uint32_t)strlen(topic);
    e.qos = qos;
    lk_mqtt_packet_t p = {0};
    p.type = LK_MQTT_SUBSCRIBE;
    p.u.subscribe.packet_id = 1;
    p.u.subscribe.entries = &e;
    p.u.subscribe.count = 1;
    s_queue(c, &p);
    s_flush(f, c);
}

static void s_ack(f_conn_t *c, uint8_t type, uint16_t pid)
{
    lk_mqtt_packet_t p = {0};
    p.type = type;
    p.u.ack.packet_id = pid;
    s_queue(c, &p);
}

static uint16_t s_pid(uint8_t *used, uint16_t *next)
{
    for (;;) {
        uint16_t pid = (*next)++;
        if (*next == 0)
            *next = 1;
        if (pid && !used[pid]) {
            used[pid] = 1;
            return pid;
        }
    }
}

static void s_publish(f_conn_t *c, const char *topic, uint32_t seq, size_t size, uint8_t qos,
                      uint16_t pid)
{
    static uint8_t *payload;
    static size_t cap;
    if (size < 4)
        size = 4;
    if (size > cap) {
        payload = lk_realloc(payload, size);
        memset(payload, 'x', size);
        cap = size;
    }
    memcpy(payload, &seq, 4);
    lk_mqtt_packet_t p = {0};
    p.type = LK_MQTT_PUBLISH;
    p.u.publish.topic.p = topic;
    p.u.publish.topic.len = (uint32_t)strlen(topic);
    p.u.publish.payload.p = (const char *)payload;
    p.u.publish.payload.len = (uint32_t)size;
    p.u.publish.qos = qos;
    p.u.publish.packet_id = pid;
    s_queue(c, &p);
}

static void s_on_packet(f_t *f, f_conn_t *c, lk_mqtt_packet_t *p)
{
    switch (p->type) {
    case LK_MQTT_CONNACK:
        if (p->u.connack.code != 0) {
            fprintf(stderr, "lk-fanout: CONNACK %u\n", p->u.connack.code);
            exit(1);
        }
        c->connected = true;
        break;
    case LK_MQTT_SUBACK:
        if (p->u.suback.count != 1 || p->u.suback.codes[0] >= 0x80) {
            fprintf(stderr, "lk-fanout: subscription refused\n");
            exit(1);
        }
        c->subscribed = true;
        break;
    case LK_MQTT_PUBLISH: {
        uint32_t seq = 0;
        if (p->u.publish.payload.len >= 4)
            memcpy(&seq, p->u.publish.payload.p, 4);
        if (c->role == F_SUB && seq < (uint32_t)f->msgs) {
            uint64_t bit = 1ULL << (seq % 64);
            if (c->seen[seq / 64] & bit)
                f->dups++;
            else {
                c->seen[seq / 64] |= bit;
                c->got++;
                f->received++;
            }
        } else if (c->role == F_CSUB)
            f->c_got++;
        if (p->u.publish.qos == 1)
            s_ack(c, LK_MQTT_PUBACK, p->u.publish.packet_id);
        else if (p->u.publish.qos == 2)
            s_ack(c, LK_MQTT_PUBREC, p->u.publish.packet_id);
        break;
    }
    case LK_MQTT_PUBREL:
        s_ack(c, LK_MQTT_PUBCOMP, p->u.ack.packet_id);
        break;
    case LK_MQTT_PUBREC:
        s_ack(c, LK_MQTT_PUBREL, p->u.ack.packet_id);
        break;
    case LK_MQTT_PUBACK:
    case LK_MQTT_PUBCOMP:
        if (c->role == F_PUB && f->pid_used[p->u.ack.packet_id]) {
            f->pid_used[p->u.ack.packet_id] = 0;
            f->inflight--;
            f->acked++;
        } else if (c->role == F_CPUB && f->c_pid_used[p->u.ack.packet_id]) {
            f->c_pid_used[p->u.ack.packet_id] = 0;
            f->c_acked++;
        }
        break;
    default:
        break;
    }
}

static void s_read(f_t *f, f_conn_t *c)
{
    for (;;) {
        if (c->rcap - c->rlen < 65536) {
            c->rcap = c->rlen + 262144;
            c->rbuf = lk_realloc(c->rbuf, c->rcap);
        }
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            s_close(f, c);
            return;
        }
        c->rlen += (size_t)n;
        size_t off = 0;
        for (;;) {
            size_t fl;
            int rc = lk_mqtt_frame(c->rbuf + off, c->rlen - off, 0, &fl, NULL);
            if (rc == 0)
                break;
            if (rc < 0) {
                fprintf(stderr, "lk-fanout: bad frame\n");
                s_close(f, c);
                return;
            }
            lk_mqtt_packet_t p;
            if (lk_mqtt_decode(c->rbuf + off, fl, LK_MQTT_V311, false, &p) == 0)
                s_on_packet(f, c, &p);
            lk_mqtt_packet_free(&p);
            off += fl;
        }
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
        break;  /* one read per wake-up: a busy subscriber must not starve the others */
    }
}

static void s_poll(f_t *f, int ms)
{
    struct epoll_event ev[256];
    int n = epoll_wait(f->ep, ev, 256, ms);
    for (int i = 0; i < n; i++) {
        f_conn_t *c = ev[i].data.ptr;
        if (c->closed)
            continue;
        if (ev[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
            s_read(f, c);
        if (!c->closed && (ev[i].events & EPOLLOUT))
            s_flush(f, c);
    }
    for (int i = 0; i < f->n; i++)
        if (!f->c[i].closed && f->c[i].w.len && !f->c[i].want_out)
            s_flush(f, &f->c[i]);
}

static bool s_all(f_t *f, int from, int to, bool subscribed)
{
    for (int i = from; i < to; i++)
        if (f->c[i].closed || !(subscribed ? f->c[i].subscribed : f->c[i].connected))
            return false;
    return true;
}

int main(int argc, char **argv)
{
    f_t f = {.subs = 200, .msgs = 400, .size = 65536, .window = 100, .qos = 1, .timeout = 120,
             .quiet = 10, .topic = "fanout/t", .prefix = "fo", .canary_ms = 100};
    int opt;
    while ((opt = getopt(argc, argv, "p:s:n:z:w:q:t:T:Q:i:c:")) != -1) {
        switch (opt) {
        case 'p': f.port = atoi(optarg); break;
        case 's': f.subs = atoi(optarg); break;
        case 'n': f.msgs = atoi(optarg); break;
        case 'z': f.size = atoi(optarg); break;
        case 'w': f.window = atoi(optarg); break;
        case 'q': f.qos = atoi(optarg); break;
        case 't': f.topic = optarg; break;
        case 'T': f.timeout = atoi(optarg); break;
        case 'Q': f.quiet = atoi(optarg); break;
        case 'i': f.prefix = optarg; break;
        case 'c': f.canary_ms = atoi(optarg) > 0 ? atoi(optarg) : 100; break;
        default:
            fprintf(stderr, "usage: lk-fanout -p port [-s subs] [-n msgs] [-z size] [-w window] "
                            "[-q qos] [-t topic] [-T timeout_s] [-Q quiet_s] [-i prefix] "
                            "[-c canary_ms]\n");
            return 1;
        }
    }
    if (!f.port || f.subs < 1 || f.msgs < 1 || f.window < 1 || f.qos < 0 || f.qos > 2)
        return 1;
    f.ep = epoll_create1(EPOLL_CLOEXEC);
    f.n = f.subs + 3;
    f.c = lk_calloc((size_t)f.n, sizeof(f_conn_t));
    f.pid_used = lk_calloc(65536, 1);
    f.c_pid_used = lk_calloc(65536, 1);
    f.next_pid = f.c_next_pid = 1;
    int64_t t0 = s_ms(), deadline = t0 + f.timeout * 1000LL;
    char id[128], ctopic[160];
    snprintf(ctopic, sizeof(ctopic), "canary/%s", f.prefix);
    for (int i = 0; i < f.n; i++) {
        f_conn_t *c = &f.c[i];
        c->idx = i;
        c->role = i < f.subs ? F_SUB : i == f.subs ? F_PUB : i == f.subs + 1 ? F_CSUB : F_CPUB;
        if (c->role == F_SUB)
            c->seen = lk_calloc((size_t)(f.msgs + 63) / 64, sizeof(uint64_t));
        snprintf(id, sizeof(id), "%s-%d", f.prefix, i);
        s_open(&f, c, id);
    }
    while (!s_all(&f, 0, f.n, false) && s_ms() < deadline)
        s_poll(&f, 50);
    for (int i = 0; i < f.n; i++)
        if (f.c[i].role == F_SUB || f.c[i].role == F_CSUB)
            s_subscribe(&f, &f.c[i], f.c[i].role == F_SUB ? f.topic : ctopic,
                        f.c[i].role == F_SUB ? (uint8_t)f.qos : 1);
    while ((!s_all(&f, 0, f.subs, true) || !f.c[f.subs + 1].subscribed) && s_ms() < deadline)
        s_poll(&f, 50);
    if (!s_all(&f, 0, f.subs, true)) {
        fprintf(stderr, "lk-fanout: setup did not finish in time\n");
        return 1;
    }
    int64_t start = s_ms(), last_progress = start, next_canary = start;
    uint64_t expected = (uint64_t)f.subs * (uint64_t)f.msgs, last_count = 0;
    f_conn_t *pub = &f.c[f.subs], *cpub = &f.c[f.subs + 2];
    while (s_ms() < deadline) {
        while (f.sent < f.msgs && (f.qos == 0 || f.inflight < f.window) && pub->w.len < (4u << 20)) {
            uint16_t pid = f.qos ? s_pid(f.pid_used, &f.next_pid) : 0;
            s_publish(pub, f.topic, (uint32_t)f.sent++, (size_t)f.size, (uint8_t)f.qos, pid);
            if (f.qos)
                f.inflight++;
        }
        int64_t now = s_ms();
        bool publishing = f.sent < f.msgs || (f.qos && f.acked < f.msgs);
        if (publishing && now >= next_canary) {
            s_publish(cpub, ctopic, (uint32_t)f.c_sent++, 16, 1, s_pid(f.c_pid_used, &f.c_next_pid));
            next_canary = now + f.canary_ms;
        }
        s_poll(&f, 10);
        if (f.received != last_count || publishing) {
            last_count = f.received;
            last_progress = s_ms();
        }
        if (f.received == expected && f.c_got >= f.c_sent && f.c_acked >= f.c_sent && !publishing)
            break;
        if (!publishing && s_ms() - last_progress > f.quiet * 1000LL)
            break;
    }
    uint32_t min_copies = UINT32_MAX;
    int complete = 0, shortc = 0;
    for (int i = 0; i < f.subs; i++) {
        if (f.c[i].got < min_copies)
            min_copies = f.c[i].got;
        if (f.c[i].got == (uint32_t)f.msgs)
            complete++;
        else
            shortc++;
    }
    printf("{\"published\": %d, \"pubacked\": %d, \"expected\": %" PRIu64 ", \"received\": %" PRIu64
           ", \"duplicates\": %" PRIu64 ", \"subs_complete\": %d, \"subs_short\": %d, "
           "\"min_copies\": %u, \"canary_sent\": %d, \"canary_acked\": %d, "
           "\"canary_received\": %d, \"disconnects\": %" PRIu64 ", \"elapsed_ms\": %" PRId64 "}\n",
           f.sent, f.acked, expected, f.received, f.dups, complete, shortc, min_copies, f.c_sent,
           f.c_acked, f.c_got, f.disconnects, s_ms() - start);
    for (int i = 0; i < f.n; i++) {
        if (!f.c[i].closed)
            close(f.c[i].fd);
        free(f.c[i].rbuf);
        free(f.c[i].seen);
        lk_wbuf_free(&f.c[i].w);
    }
    free(f.c);
    free(f.pid_used);
    free(f.c_pid_used);
    close(f.ep);
    return 0;
}
