/*  fe_conn: one client connection — reading and framing packets, the output buffer
    written once per loop turn, and closing (will, detach, session close).

    Packets are decoded in place: the views in a decoded packet point into rbuf, which is
    compacted only after every whole packet of a read has been handled. A connection
    closed while handling is unhooked from the fd table at once and freed at turn end, so
    the lists that still name it stay valid until then. */
#include "fe_internal.h"
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#define FE_READ_CHUNK 65536
/* a client that does not read its messages gets cut off rather than eat our memory */
#define FE_OUT_MAX (64u * 1024 * 1024)

static void s_io(lk_loop_t *loop, int fd, uint32_t events, void *arg)
{
    fe_conn_t *conn = arg;
    if (fe_conn_connecting(conn) && (events & (EPOLLHUP | EPOLLERR))) {
        /* not read while its CONNECT is answered; a reset or hang-up ends it now (the
           epoll reports those even without EPOLLIN) */
        fe_conn_close(conn, 0, false, "connection lost before CONNACK");
        return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        fe_conn_readable(conn);
    if (conn->state != FE_CLOSED && (events & EPOLLOUT))
        fe_conn_writable(conn);
}

fe_conn_t *fe_conn_new(fe_server_t *srv, int fd, const char *peer)
{
    if (fd >= srv->by_fd_cap) {
        int cap = srv->by_fd_cap ? srv->by_fd_cap : 1024;
        while (cap <= fd)
            cap *= 2;
        srv->by_fd = lk_realloc(srv->by_fd, (size_t)cap * sizeof(fe_conn_t *));
        memset(srv->by_fd + srv->by_fd_cap, 0, (size_t)(cap - srv->by_fd_cap) * sizeof(fe_conn_t *));
        srv->by_fd_cap = cap;
    }
    fe_conn_t *conn = lk_calloc(1, sizeof(*conn));
    conn->srv = srv;
    conn->fd = fd;
    conn->id = ++srv->next_conn_id;
    conn->state = FE_NEW;
    snprintf(conn->peer, sizeof(conn->peer), "%s", peer);
    conn->accepted_ms = lk_loop_now(srv->loop);
    conn->connected_wall_ms = lk_wall_ms();
    conn->last_rx_ms = conn->accepted_ms;
    conn->next_pid = 1;
    lk_wbuf_init(&conn->out);
    srv->by_fd[fd] = conn;
    srv->n_conns++;
    if (lk_loop_add_fd(srv->loop, fd, EPOLLIN, s_io, conn) != 0) {
        srv->by_fd[fd] = NULL;
        srv->n_conns--;
        close(fd);
        lk_wbuf_free(&conn->out);
        free(conn);
        return NULL;
    }
    return conn;
}

fe_conn_t *fe_conn_find(fe_server_t *srv, int fd, uint64_t id)
{
    if (fd < 0 || fd >= srv->by_fd_cap)
        return NULL;
    fe_conn_t *c = srv->by_fd[fd];
    return (c && c->id == id) ? c : NULL;
}

void fe_conn_mark_dirty(fe_conn_t *conn)
{
    if (conn->out_pending || conn->state == FE_CLOSED)
        return;
    conn->out_pending = true;
    conn->next_dirty = conn->srv->dirty;
    conn->srv->dirty = conn;
}

void fe_conn_out_prepare(fe_conn_t *conn)
{
    fe_server_t *srv = conn->srv;
    if (!conn->out.data && srv->out_pool_n > 0)
        conn->out = srv->out_pool[--srv->out_pool_n];
}

/* an emptied output buffer goes back to the pool (or is freed) */
static void s_out_release(fe_conn_t *conn)
{
    fe_server_t *srv = conn->srv;
    if (conn->out.data && conn->out.cap <= FE_OUT_POOL_CAP && srv->out_pool_n < FE_OUT_POOL) {
        conn->out.len = 0;
        srv->out_pool[srv->out_pool_n++] = conn->out;
    } else
        lk_wbuf_free(&conn->out);
    lk_wbuf_init(&conn->out);
}

/* properties left out, in this order, of a packet larger than the client's Maximum
   Packet Size: first what is only informative [MQTT-3.1.2-29 and the like], then, for
   CONNACK, what the client can do without (each has a default it then assumes) */
static const uint8_t s_shed_props[] = {
    LK_PROP_REASON_STRING,       LK_PROP_USER_PROPERTY,  LK_PROP_TOPIC_ALIAS_MAXIMUM,
    LK_PROP_MAXIMUM_PACKET_SIZE, LK_PROP_RECEIVE_MAXIMUM, LK_PROP_SERVER_KEEP_ALIVE,
    LK_PROP_ASSIGNED_CLIENT_ID};

void fe_conn_send(fe_conn_t *conn, const lk_mqtt_packet_t *pkt)
{
    if (conn->state == FE_CLOSED)
        return;
    fe_conn_out_prepare(conn);
    uint8_t version = conn->version ? conn->version : LK_MQTT_V311;
    size_t before = conn->out.len;
    if (lk_mqtt_encode(&conn->out, version, pkt) != 0) {
        lk_warn("client %s: cannot encode %s", conn->client_id ? conn->client_id : conn->peer,
                lk_mqtt_type_name(pkt->type));
        return;
    }
    if (version == LK_MQTT_V5 && conn->client_max_packet &&
        conn->out.len - before > conn->client_max_packet) {
        /* [MQTT-3.1.2-24] never larger than the client allows */
        lk_mqtt_packet_t smaller = *pkt;
        size_t k = 0;
        while (conn->out.len - before > conn->client_max_packet &&
               k < sizeof(s_shed_props)) {
            uint8_t id = s_shed_props[k++];
            if (!LK_PROP_HAS(&smaller.props, id))
                continue;
            if (id != LK_PROP_REASON_STRING && id != LK_PROP_USER_PROPERTY &&
                pkt->type != LK_MQTT_CONNACK)
                break;
            smaller.props.has &= ~(1ULL << id);
            conn->out.len = before;
            if (lk_mqtt_encode(&conn->out, version, &smaller) != 0)
                break;
        }
        if (conn->out.len - before > conn->client_max_packet) {
            conn->out.len = before;
            lk_notice("client %s (%s): %s not sent: larger than its Maximum Packet Size %u",
                      conn->client_id ? conn->client_id : "-", conn->peer,
                      lk_mqtt_type_name(pkt->type), conn->client_max_packet);
            return;
        }
    }
    fe_conn_mark_dirty(conn);
}

/* one write of everything pending; EPOLLOUT only while the kernel buffer is full */
void fe_conn_flush(fe_conn_t *conn)
{
    if (conn->state == FE_CLOSED)
        return;
    if (conn->tp) {
        fe_transport_flush(conn);
        return;
    }
    if (conn->out.len == 0)
        return;
    ssize_t n = send(conn->fd, conn->out.data, conn->out.len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            n = 0;
        else {
            fe_conn_close(conn, 0, true, strerror(errno));
            return;
        }
    }
    conn->srv->bytes_out += (uint64_t)n;
    conn->sent_oct += (uint64_t)n;
    lk_wbuf_consume(&conn->out, (size_t)n);
    if (conn->out.len == 0)
        s_out_release(conn); /* an idle connection holds no output buffer either */
    fe_conn_want_write(conn, conn->out.len > 0);
    if (conn->out.len > FE_OUT_MAX)
        fe_conn_close(conn, LK_RC_QUOTA_EXCEEDED, true, "client does not read its messages");
}

void fe_conn_io_events(fe_conn_t *conn)
{
    if (conn->state == FE_CLOSED)
        return;
    /* not read while the CONNECT is answered: what follows it waits in the socket (TCP
       back-pressure) or, as far as one read took it, in rbuf */
    bool read = !conn->lim.paused && !conn->bp_paused && !fe_conn_connecting(conn) &&
                !conn->rd_eof;
    lk_loop_mod_fd(conn->srv->loop, conn->fd,
                   (read ? EPOLLIN : 0) | (conn->want_write ? EPOLLOUT : 0));
}

void fe_conn_want_write(fe_conn_t *conn, bool want)
{
    if (want != conn->want_write) {
        conn->want_write = want;
        fe_conn_io_events(conn);
    }
}

void fe_conn_writable(fe_conn_t *conn)
{
    if (conn->tp)
        fe_transport_writable(conn);
    else
        fe_conn_flush(conn);
}

static void s_protocol_close(fe_conn_t *conn, int rc, const char *what)
{
    char why[160];
    snprintf(why, sizeof(why), "%s (reason 0x%02x)", what, rc);
    if (conn->state == FE_NEW && conn->version == LK_MQTT_V5 && rc != LK_RC_UNSUPPORTED_VERSION)
        fe_conn_refuse(conn, (uint8_t)rc, why);
    else
        fe_conn_close(conn, (uint8_t)rc, true, why);
}

/* Handles every whole packet of buf[0..len). Returns the bytes consumed, or -1 when the
   connection closed meanwhile. *want: the size of the incomplete packet at the end, once
   its fixed header is there (0 otherwise). The decoded packets' views point into buf. */
static ssize_t s_process(fe_conn_t *conn, const uint8_t *buf, size_t len, size_t *want)
{
    fe_server_t *srv = conn->srv;
    size_t off = 0;
    *want = 0;
    /* stops behind a CONNECT being answered: what follows waits for CONNACK */
    while (off < len && conn->state != FE_CLOSED && !conn->lim.paused &&
           !fe_conn_connecting(conn)) {
        size_t flen = 0, blen = 0;
        int r = lk_mqtt_frame(buf + off, len - off, srv->max_packet, &flen, &blen);
        if (r == 0) {
            /* incomplete: its size is known once the header is */
            *want = blen ? blen + 5 : 0;
            break;
        }
        if (r == -2) {
            s_protocol_close(conn, LK_RC_PACKET_TOO_LARGE, "packet too large");
            return -1;
        }
        if (r < 0) {
            s_protocol_close(conn, LK_RC_MALFORMED, "malformed remaining length");
            return -1;
        }
        lk_mqtt_packet_t pkt;
        memset(&pkt, 0, sizeof(pkt));
        uint8_t type = buf[off] >> 4;
        if (conn->state == FE_NEW && type != LK_MQTT_CONNECT) {
            /* [MQTT-3.1.0-1] the first packet must be CONNECT */
            fe_conn_close(conn, LK_RC_PROTOCOL_ERROR, false, "first packet is not CONNECT");
            return -1;
        }
        if (conn->state != FE_NEW && type == LK_MQTT_CONNECT) {
            /* [MQTT-3.1.0-2] a second CONNECT is a protocol violation */
            fe_conn_close(conn, LK_RC_PROTOCOL_ERROR, true, "second CONNECT");
            return -1;
        }
        int rc = lk_mqtt_decode(buf + off, flen, conn->version, true, &pkt);
        if (type == LK_MQTT_CONNECT && pkt.u.connect.version)
            conn->version = pkt.u.connect.version;
        if (rc != 0) {
            if (type == LK_MQTT_CONNECT && rc == LK_RC_UNSUPPORTED_VERSION) {
                /* [MQTT-3.1.2-2] answer 0x01 (3.1.1) / 0x84 (5) and close */
                if (conn->version != LK_MQTT_V5 && conn->version != LK_MQTT_V311 &&
                    conn->version != LK_MQTT_V31)
                    conn->version = LK_MQTT_V311;
                fe_conn_refuse(conn, LK_RC_UNSUPPORTED_VERSION, "unsupported protocol version");
            } else
                s_protocol_close(conn, rc, lk_mqtt_type_name(type));
            lk_mqtt_packet_free(&pkt);
            return -1;
        }
        off += flen;
        int hr = fe_handle_packet(conn, &pkt);
        lk_mqtt_packet_free(&pkt);
        if (hr != 0)
            return -1;
    }
    return conn->state == FE_CLOSED ? -1 : (ssize_t)off;
}

/* keeps the bytes of an incomplete packet (or of packets a paused client sent) */
static void s_keep(fe_conn_t *conn, const uint8_t *data, size_t len, size_t want)
{
    size_t cap = want > len ? want : len;
    cap = cap < 512 ? 512 : cap;
    conn->rbuf = lk_malloc(cap);
    conn->rcap = cap;
    memcpy(conn->rbuf, data, len);
    conn->rlen = len;
}

/* the peer closed or the socket failed: handle what rbuf holds first */
static void s_eof(fe_conn_t *conn, const char *why)
{
    conn->rd_eof = true;
    snprintf(conn->eof_why, sizeof(conn->eof_why), "%s", why);
}

void fe_conn_readable(fe_conn_t *conn)
{
    fe_server_t *srv = conn->srv;
    size_t want = 0;
    if (conn->state == FE_CLOSED)
        return;
    if (fe_conn_connecting(conn)) {
        /* its CONNECT is being answered: nothing more is read until CONNACK */
        fe_conn_io_events(conn);
        return;
    }
    if (conn->state == FE_ACTIVE &&
        (srv->congested || fe_routers_backlog(srv) > srv->backlog_high)) {
        /* the router is behind: leave the bytes in the socket, so TCP slows the
           publisher down, rather than take messages we could not keep */
        if (!srv->congested) {
            srv->congested = true;
            lk_warn("router backlog %zu bytes: reading paused", fe_routers_backlog(srv));
        }
        conn->bp_paused = true;
        fe_conn_io_events(conn);
        return;
    }
    if (!conn->tp && conn->rlen == 0 && !conn->rd_eof) {
        /* the common case: read into the process's one buffer and keep only what is left
           of an incomplete packet, so that an idle connection holds no read buffer */
        if (!srv->rbuf)
            srv->rbuf = lk_malloc(FE_READ_CHUNK);
        ssize_t n = recv(conn->fd, srv->rbuf, FE_READ_CHUNK, 0);
        if (n == 0) {
            fe_conn_close(conn, 0, true, "closed by client");
            return;
        }
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                fe_conn_close(conn, 0, true, strerror(errno));
            return;
        }
        srv->bytes_in += (uint64_t)n;
        conn->recv_oct += (uint64_t)n;
        conn->last_rx_ms = lk_loop_now(srv->loop);
        ssize_t off = s_process(conn, srv->rbuf, (size_t)n, &want);
        if (off >= 0 && off < n)
            s_keep(conn, srv->rbuf + off, (size_t)(n - off), want);
        return;
    }
    if (conn->rcap - conn->rlen < FE_READ_CHUNK / 4) {
        size_t cap = conn->rcap ? conn->rcap * 2 : FE_READ_CHUNK;
        while (cap - conn->rlen < FE_READ_CHUNK / 4)
            cap *= 2;
        conn->rbuf = lk_realloc(conn->rbuf, cap);
        conn->rcap = cap;
    }
    ssize_t n = 0;
    if (conn->rd_eof) {
        /* nothing more to read: what waits in rbuf is handled below */
    } else if (conn->tp) {
        /* TLS, WebSocket, PROXY: MQTT bytes come out of the layers below */
        const char *why = "closed by client";
        n = fe_transport_read(conn, &why);
        if (n == -1) {
            s_eof(conn, why);
            n = 0;
        } else if (n < 0)
            n = 0;
    } else if ((n = recv(conn->fd, conn->rbuf + conn->rlen, conn->rcap - conn->rlen, 0)) == 0) {
        s_eof(conn, "closed by client");
    } else if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            s_eof(conn, strerror(errno));
        n = 0; /* fe_limits or a CONNACK resumed the client: handle what waits in rbuf */
    }
    if (n > 0) {
        conn->rlen += (size_t)n;
        srv->bytes_in += (uint64_t)n;
        conn->recv_oct += (uint64_t)n;
        conn->last_rx_ms = lk_loop_now(srv->loop);
    }
    if (conn->rlen) {
        ssize_t done = s_process(conn, conn->rbuf, conn->rlen, &want);
        if (done < 0)
            return;
        size_t off = (size_t)done;
        if (off) {
            memmove(conn->rbuf, conn->rbuf + off, conn->rlen - off);
            conn->rlen -= off;
        }
    }
    if (want > conn->rcap) {
        /* make room for the whole packet, now that its size is known */
        conn->rbuf = lk_realloc(conn->rbuf, want);
        conn->rcap = want;
    } else if (conn->rlen == 0) {
        free(conn->rbuf);
        conn->rbuf = NULL;
        conn->rcap = 0;
    }
    if (conn->rd_eof) {
        /* every whole packet before the end is handled (an incomplete one is not a
           packet); a pause or a CONNECT being answered keeps the rest for later */
        if (conn->lim.paused || conn->bp_paused || fe_conn_connecting(conn)) {
            fe_conn_io_events(conn);
            return;
        }
        fe_conn_close(conn, 0, true, conn->eof_why);
        return;
    }
    if (conn->tp && fe_transport_eof(conn) && !fe_conn_connecting(conn))
        fe_conn_close(conn, 0, true, "closed by client (WebSocket close)");
}

void fe_conn_resume(fe_conn_t *conn)
{
    fe_conn_io_events(conn);
    if (conn->on_resume || (!conn->rlen && !conn->rd_eof && !conn->tp))
        return; /* nothing waits: the socket's own readiness brings the rest */
    conn->on_resume = true;
    conn->next_resume = conn->srv->resume;
    conn->srv->resume = conn;
}

void fe_conn_resume_all(fe_server_t *srv)
{
    while (srv->resume) {
        fe_conn_t *c = srv->resume;
        srv->resume = c->next_resume;
        c->next_resume = NULL;
        c->on_resume = false;
        if (c->state == FE_ACTIVE)
            fe_conn_readable(c);
    }
}

/* the will now, or after its delay: the smaller of Will Delay and Session Expiry
   (MQTT 5 3.1.3.2.2) */
static bool s_will(fe_conn_t *conn)
{
    /* the ACL may have changed since CONNECT (a lock unbound): a will is a publish */
    if (!conn->superuser && conn->will->topic &&
        !lk_acl_topic_allowed(conn->acl, conn->n_acl, fe_mount_out(conn, conn->will->topic),
                              LK_ACL_PUB)) {
        lk_info("client %s: will on '%s' not allowed now, dropped", conn->client_id,
                conn->will->topic);
        return false;
    }
    uint32_t delay = 0;
    if (conn->version == LK_MQTT_V5)
        delay = conn->will_delay < conn->expiry ? conn->will_delay : conn->expiry;
    if (delay == 0) {
        fe_will_publish(conn->srv, conn->client_id, conn->will);
        return false;
    }
    fe_will_schedule(conn->srv, conn->client_id, conn->will, delay);
    conn->will = NULL;
    return true;
}

/* a session that ends with shared-subscription messages the client did not ack hands
   them back to the router for another member of the group (MQTT 5 4.8.2) */
static void s_shared_return(fe_conn_t *conn)
{
    fe_server_t *srv = conn->srv;
    int n = 0;
    for (size_t i = 0; i < conn->n_inflight; i++) {
        fe_inflight_t *f = &conn->inflight[i];
        if (!f->shared || f->released)
            continue;
        Lk__Deliver *d = lk__deliver__unpack(NULL, f->shared_len, f->shared);
        if (d && d->msg && d->share && *d->share) {
            Lk__Publish pub = LK__PUBLISH__INIT;
            pub.msg = d->msg;
            pub.share = d->share;
            fe_router_publish(srv, &pub, true, NULL);
            n++;
        }
        if (d)
            lk__deliver__free_unpacked(d, NULL);
    }
    for (fe_queued_t *q = conn->q_head; q; q = q->next) {
        Lk__Deliver *d = lk__deliver__unpack(NULL, q->len, q->data);
        if (d && d->msg && d->share && *d->share && d->msg->qos > 0) {
            Lk__Publish pub = LK__PUBLISH__INIT;
            pub.msg = d->msg;
            pub.share = d->share;
            fe_router_publish(srv, &pub, true, NULL);
            n++;
        }
        if (d)
            lk__deliver__free_unpacked(d, NULL);
    }
    if (n)
        lk_info("client %s: %d shared-subscription message(s) handed back", conn->client_id, n);
}

void fe_conn_close(fe_conn_t *conn, uint8_t reason, bool publish_will, const char *why)
{
    fe_server_t *srv = conn->srv;
    if (conn->state == FE_CLOSED)
        return;
    if (why) {
        /* a client we cut off for what it did: one notice line (rate-limited); the
           rest (closed by the client, taken over, ...) at info */
        int kind = -1;
        if (reason == LK_RC_KEEP_ALIVE_TIMEOUT)
            kind = FE_CUT_KEEPALIVE;
        else if (reason == LK_RC_PACKET_TOO_LARGE)
            kind = FE_CUT_OVERSIZE;
        else if (reason == LK_RC_QUOTA_EXCEEDED)
            kind = FE_CUT_SLOW;
        else if (reason >= 0x80 && reason != LK_RC_SESSION_TAKEN_OVER &&
                 reason != LK_RC_ADMIN_ACTION && reason != LK_RC_SERVER_UNAVAILABLE &&
                 reason != LK_RC_SERVER_SHUTTING_DOWN)
            kind = FE_CUT_PROTOCOL;
        if (kind >= 0) {
            char text[192];
            if (strstr(why, "reason 0x"))
                snprintf(text, sizeof(text), "%s", why);
            else
                snprintf(text, sizeof(text), "%s (reason 0x%02x)", why, reason);
            fe_limits_cut(conn, (fe_cut_t)kind, text);
        }
        else
            lk_info("client %s (%s): closing: %s", conn->client_id ? conn->client_id : "-",
                    conn->peer, why);
    }
    if (reason && conn->version == LK_MQTT_V5 && conn->state == FE_ACTIVE) {
        lk_mqtt_packet_t p = {0};
        p.type = LK_MQTT_DISCONNECT;
        p.u.reason.reason = reason;
        fe_conn_send(conn, &p);
    }
    if (conn->tp)
        fe_transport_close(conn);
    else {
        if (conn->out.len)
            (void)!send(conn->fd, conn->out.data, conn->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        /* we end it while the client may still be sending: let it read our last
           packets rather than a reset */
        if (!conn->rd_eof)
            fe_transport_linger(conn);
    }
    bool attached = conn->state == FE_ACTIVE || conn->state == FE_SESSION;
    bool mine = conn->client_id && zhashx_lookup(srv->by_client, conn->client_id) == conn;
    bool will_delayed = false;
    if (attached && publish_will && conn->will && conn->state == FE_ACTIVE)
        will_delayed = s_will(conn);
    if (attached && mine) {
        Lk__Detach d = LK__DETACH__INIT;
        d.client = conn->client_id;
        d.persistent = conn->expiry > 0;
        Lk__Envelope env = LK__ENVELOPE__INIT;
        env.body_case = LK__ENVELOPE__BODY_DETACH;
        env.detach = &d;
        fe_routers_send_all(srv, &env, NULL);
    }
    if (attached && conn->open_sent) {
        /* what the client acked first, then the close, on the one link: the store (and a
           connection taking over, which waits for our TakeoverDone) sees the session as
           this connection left it. The store ignores it unless it still registers this
           connection. */
        fe_session_ack_flush(conn);
        Lk__Subscription store[conn->n_subs ? conn->n_subs : 1];
        Lk__Subscription *ptrs[conn->n_subs ? conn->n_subs : 1];
        fe_conn_subs_to_proto(conn, ptrs, store);
        Lk__SessionClose sc = LK__SESSION_CLOSE__INIT;
        sc.client = conn->client_id;
        sc.conn = conn->id;
        sc.expiry = conn->expiry;
        /* before the store answered, we do not know the subscriptions: keep its set */
        sc.subs_changed = conn->state == FE_ACTIVE || conn->opened;
        sc.will_delayed = will_delayed;
        sc.n_subs = conn->n_subs;
        sc.subs = ptrs;
        Lk__Envelope env2 = LK__ENVELOPE__INIT;
        env2.body_case = LK__ENVELOPE__BODY_SESSION_CLOSE;
        env2.session_close = &sc;
        lk_bus_send(srv->bus, fe_store(srv, conn->client_id), &env2, true);
    }
    /* after the Detach, so that the router no longer counts this client a member */
    if (attached && mine && conn->expiry == 0 && conn->state == FE_ACTIVE)
        s_shared_return(conn);
    if (mine)
        zhashx_delete(srv->by_client, conn->client_id);
    lk_loop_del_fd(srv->loop, conn->fd);
    close(conn->fd);
    srv->by_fd[conn->fd] = NULL;
    srv->n_conns--;
    fe_limits_closed(conn);
    conn->state = FE_CLOSED;
    /* freed at turn end, after the dirty and ack lists that may still name it */
    conn->next_dead = srv->graveyard;
    srv->graveyard = conn;
    conn->out_pending = true;
}

void fe_conn_refuse(fe_conn_t *conn, uint8_t reason5, const char *why)
{
    if (conn->state == FE_CLOSED)
        return;
    lk_mqtt_packet_t p = {0};
    p.type = LK_MQTT_CONNACK;
    p.u.connack.code = fe_connack_code(conn->version, reason5);
    fe_conn_send(conn, &p);
    char text[160];
    snprintf(text, sizeof(text), "%s (CONNACK 0x%02x)", why, p.u.connack.code);
    fe_limits_cut(conn, FE_CUT_REFUSED, text);
    /* anything it sent behind the CONNECT is dropped unread */
    conn->rlen = 0;
    fe_conn_close(conn, 0, false, NULL);
}

void fe_conn_free(fe_conn_t *conn)
{
    if (conn->on_resume)
        for (fe_conn_t **pp = &conn->srv->resume; *pp; pp = &(*pp)->next_resume)
            if (*pp == conn) {
                *pp = conn->next_resume;
                break;
            }
    if (conn->state != FE_CLOSED) {
        lk_loop_del_fd(conn->srv->loop, conn->fd);
        close(conn->fd);
        conn->srv->by_fd[conn->fd] = NULL;
    }
    fe_transport_free(conn);
    free(conn->opened);
    free(conn->cert_cn);
    free(conn->rbuf);
    s_out_release(conn);
    free(conn->client_id);
    free(conn->username);
    fe_mount_free(conn);
    free(conn->connect_pw);
    if (conn->will)
        lk__msg__free_unpacked(conn->will, NULL);
    for (int i = 0; i < FE_ONCE_IDS; i++)
        free(conn->once_ids[i]);
    for (size_t i = 0; i < conn->n_acl; i++)
        free(conn->acl[i].pattern);
    free(conn->acl);
    for (uint16_t i = 0; i < conn->alias_in_max; i++)
        free(conn->alias_in ? conn->alias_in[i] : NULL);
    free(conn->alias_in);
    fe_subs_free(conn);
    free(conn->qos2_in);
    for (size_t i = 0; i < conn->n_inflight; i++)
        free(conn->inflight[i].shared);
    free(conn->inflight);
    for (uint16_t i = 0; i < conn->n_alias_out; i++)
        free(conn->alias_out[i]);
    free(conn->alias_out);
    fe_queued_free(&conn->q_head);
    fe_queued_free(&conn->ro_head);
    free(conn->max_store_ids);
    free(conn->acked_ids);
    free(conn->rel_ids);
    free(conn->rel_pids);
    free(conn);
}

void fe_conn_reap(fe_server_t *srv)
{
    while (srv->graveyard) {
        fe_conn_t *c = srv->graveyard;
        srv->graveyard = c->next_dead;
        fe_conn_free(c);
    }
}
