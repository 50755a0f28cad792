/*  fe_transport: what lies between a client socket and MQTT on listeners that are not
    plain TCP — a PROXY protocol header first, then TLS, then WebSocket — so that fe_conn
    sees one byte stream either way.

    Layers, from the socket up: [PROXY header] → [TLS (lk_tls)] → [WebSocket (lk_ws)] →
    MQTT bytes in conn->rbuf. Output goes the other way: conn->out holds MQTT packets;
    WebSocket wraps what is pending in one binary frame into wout at flush, TLS encrypts
    straight from the buffer being written. A plain TCP connection without PROXY has no
    transport at all (conn->tp NULL) and keeps fe_conn's direct recv/send path.

    The PROXY header is taken off the socket exactly — peeked, then consumed up to its
    end and not a byte further — so that TLS and WebSocket start on a clean stream. */
#include "fe_internal.h"
#include "lk_proxy.h"
#include "lk_ws.h"
#include <errno.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define FE_TP_CHUNK 16384
/* output a client leaves unread before it is cut off (as fe_conn's FE_OUT_MAX) */
#define FE_TP_OUT_MAX (64u * 1024 * 1024)

struct fe_transport {
    fe_listener_t *lst;
    bool proxy_pending;         /* the PROXY header has not been read yet */
    uint8_t pbuf[LK_PROXY_MAX]; /* its bytes so far */
    size_t plen;
    lk_tls_t *tls;
    bool read_wants_write;      /* TLS: the last read waits for the socket to be writable */
    bool write_wants_read;      /* TLS: the last write waits for it to be readable */
    bool ws;
    bool ws_open;               /* the upgrade was answered */
    bool ws_eof;                /* the client sent a close frame */
    bool ws_closed;             /* we sent one */
    uint16_t ws_close_code;
    lk_ws_decoder_t wsd;
    lk_wbuf_t win;              /* WebSocket: bytes read, not yet deframed */
    lk_wbuf_t wout;             /* WebSocket: frames not yet written */
};

int fe_transport_attach(fe_conn_t *conn, fe_listener_t *lst)
{
    if (!lst->tls_ctx && !lst->websockets && !lst->proxy_protocol)
        return 0;
    fe_transport_t *tp = lk_calloc(1, sizeof(*tp));
    tp->lst = lst;
    tp->proxy_pending = lst->proxy_protocol;
    tp->ws = lst->websockets;
    tp->ws_close_code = LK_WS_CLOSE_NORMAL;
    lk_ws_decoder_init(&tp->wsd);
    lk_wbuf_init(&tp->win);
    lk_wbuf_init(&tp->wout);
    conn->tp = tp;
    if (lst->tls_ctx && !(tp->tls = lk_tls_new(lst->tls_ctx, conn->fd)))
        return -1;
    return 0;
}

void fe_transport_free(fe_conn_t *conn)
{
    fe_transport_t *tp = conn->tp;
    if (!tp)
        return;
    lk_tls_destroy(&tp->tls);
    lk_wbuf_free(&tp->win);
    lk_wbuf_free(&tp->wout);
    free(tp);
    conn->tp = NULL;
}

/* ---- the socket, with or without TLS ----------------------------------------------- */

/* > 0 bytes, -1 closed or failed (*why), -2 would block */
static ssize_t s_raw_read(fe_conn_t *conn, void *buf, size_t len, const char **why)
{
    fe_transport_t *tp = conn->tp;
    if (tp->tls) {
        ssize_t n = lk_tls_read(tp->tls, buf, len);
        if (n > 0)
            return n;
        tp->read_wants_write = n == LK_TLS_WANT_WRITE;
        if (n == LK_TLS_WANT_READ || n == LK_TLS_WANT_WRITE) {
            if (tp->read_wants_write)
                fe_conn_want_write(conn, true);
            return -2;
        }
        if (n == LK_TLS_CLOSED)
            *why = "closed by client";
        else {
            static char msg[200];
            snprintf(msg, sizeof(msg), "TLS: %s", lk_tls_error(tp->tls));
            *why = msg;
        }
        return -1;
    }
    ssize_t n = recv(conn->fd, buf, len, 0);
    if (n > 0)
        return n;
    if (n == 0) {
        *why = "closed by client";
        return -1;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return -2;
    *why = strerror(errno);
    return -1;
}

/* >= 0 bytes taken, -1 failed (*why) */
static ssize_t s_raw_write(fe_conn_t *conn, const uint8_t *buf, size_t len, const char **why)
{
    fe_transport_t *tp = conn->tp;
    if (!tp->tls) {
        ssize_t n = send(conn->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;
        *why = strerror(errno);
        return -1;
    }
    /* SSL_write takes a record at a time: go on until all is taken or the socket is full */
    size_t done = 0;
    while (done < len) {
        ssize_t n = lk_tls_write(tp->tls, buf + done, len - done);
        if (n > 0) {
            done += (size_t)n;
            continue;
        }
        if (n == LK_TLS_WANT_WRITE || n == LK_TLS_WANT_READ) {
            tp->write_wants_read = n == LK_TLS_WANT_READ;
            break;
        }
        static char msg[200];
        snprintf(msg, sizeof(msg), "TLS: %s",
                 n == LK_TLS_CLOSED ? "closed by client" : lk_tls_error(tp->tls));
        *why = msg;
        return -1;
    }
    return (ssize_t)done;
}

/* ---- PROXY ------------------------------------------------------------------------- */

/* 0 done, -1 close (*why), -2 more needed */
static int s_proxy(fe_conn_t *conn, const char **why)
{
    fe_transport_t *tp = conn->tp;
    uint8_t buf[LK_PROXY_MAX];
    memcpy(buf, tp->pbuf, tp->plen);
    ssize_t n = recv(conn->fd, buf + tp->plen, sizeof(buf) - tp->plen, MSG_PEEK);
    if (n == 0) {
        *why = "closed by client before its PROXY header";
        return -1;
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return -2;
        *why = strerror(errno);
        return -1;
    }
    lk_proxy_hdr_t hdr;
    int r = lk_proxy_parse(buf, tp->plen + (size_t)n, &hdr);
    if (r < 0) {
        *why = "no valid PROXY protocol header";
        return -1;
    }
    /* consume what belongs to the header: all of it while incomplete, else up to its end */
    size_t take = r == 0 ? (size_t)n : (size_t)r - tp->plen;
    ssize_t got = recv(conn->fd, tp->pbuf + tp->plen, take, 0);
    if (got != (ssize_t)take) {
        *why = "PROXY header: short read";
        return -1;
    }
    tp->plen += take;
    if (r == 0)
        return -2;
    tp->proxy_pending = false;
    if (!hdr.local) {
        char peer[64];
        lk_proxy_peer(&hdr, peer, sizeof(peer));
        lk_info("connection from %s via PROXY v%d from %s", peer, hdr.version, conn->peer);
        snprintf(conn->peer, sizeof(conn->peer), "%s", peer);
    }
    return 0;
}

/* ---- WebSocket --------------------------------------------------------------------- */

static void s_ws_control(fe_transport_t *tp, uint8_t opcode, const void *payload, size_t len)
{
    uint8_t hdr[LK_WS_HEADER_MAX];
    size_t hl = lk_ws_header(hdr, opcode, len, NULL);
    lk_wbuf_append(&tp->wout, hdr, hl);
    if (len)
        lk_wbuf_append(&tp->wout, payload, len);
}

static void s_ws_close_frame(fe_transport_t *tp, uint16_t code)
{
    if (tp->ws_closed)
        return;
    tp->ws_closed = true;
    uint8_t c[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    s_ws_control(tp, LK_WS_OP_CLOSE, c, code == 1005 ? 0 : 2);
}

static void s_rbuf_reserve(fe_conn_t *conn, size_t n)
{
    if (conn->rcap - conn->rlen >= n)
        return;
    size_t cap = conn->rcap ? conn->rcap : FE_TP_CHUNK;
    while (cap - conn->rlen < n)
        cap *= 2;
    conn->rbuf = lk_realloc(conn->rbuf, cap);
    conn->rcap = cap;
}

/* the upgrade request: 1 answered, -2 more needed, -1 refused (*why) */
static int s_ws_upgrade(fe_conn_t *conn, const char **why)
{
    fe_transport_t *tp = conn->tp;
    lk_ws_request_t req;
    int r = lk_ws_request_parse(tp->win.data, tp->win.len, &req);
    if (r == 0)
        return -2;
    if (r < 0) {
        const char *ans = lk_ws_refusal(r, &req);
        lk_wbuf_append(&tp->wout, ans, strlen(ans));
        tp->ws_closed = true; /* no close frame: this is not WebSocket yet */
        *why = r == -2 ? "WebSocket upgrade request too large" : "not a WebSocket upgrade";
        return -1;
    }
    char ans[256];
    int n = lk_ws_response(&req, ans, sizeof(ans));
    lk_wbuf_append(&tp->wout, ans, (size_t)n);
    lk_wbuf_consume(&tp->win, (size_t)r);
    tp->ws_open = true;
    lk_debug("client %s: WebSocket upgrade, path %s, subprotocol %s", conn->peer, req.path,
             req.protocol[0] ? req.protocol : "-");
    fe_conn_mark_dirty(conn);
    return 1;
}

/* deframes win into rbuf; returns the MQTT bytes added, or -1 (*why) */
static ssize_t s_ws_deframe(fe_conn_t *conn, const char **why)
{
    fe_transport_t *tp = conn->tp;
    size_t off = 0, added = 0;
    ssize_t rc = 0;
    while (off < tp->win.len && !tp->ws_eof) {
        size_t used = 0, dl = 0;
        const uint8_t *data = NULL;
        lk_ws_event_t ev =
            lk_ws_decode(&tp->wsd, tp->win.data + off, tp->win.len - off, &used, &data, &dl);
        off += used;
        if (ev == LK_WS_MORE)
            break;
        if (ev == LK_WS_DATA) {
            s_rbuf_reserve(conn, added + dl);
            memcpy(conn->rbuf + conn->rlen + added, data, dl);
            added += dl;
        } else if (ev == LK_WS_PING) {
            s_ws_control(tp, LK_WS_OP_PONG, tp->wsd.ctl, tp->wsd.ctl_len);
            fe_conn_mark_dirty(conn);
        } else if (ev == LK_WS_CLOSE) {
            /* answer with the same code; the connection ends once what came before it
               is handled */
            tp->ws_eof = true;
            s_ws_close_frame(tp, tp->wsd.close_code);
        } else if (ev == LK_WS_ERROR) {
            s_ws_close_frame(tp, tp->wsd.close_code);
            static char msg[120];
            snprintf(msg, sizeof(msg), "WebSocket protocol error: %s", tp->wsd.error);
            *why = msg;
            rc = -1;
            break;
        }
    }
    lk_wbuf_consume(&tp->win, off);
    return rc < 0 ? -1 : (ssize_t)added;
}

/* ---- the stream -------------------------------------------------------------------- */

ssize_t fe_transport_read(fe_conn_t *conn, const char **why)
{
    fe_transport_t *tp = conn->tp;
    if (tp->proxy_pending) {
        int r = s_proxy(conn, why);
        if (r != 0)
            return r;
    }
    if (tp->write_wants_read) {
        tp->write_wants_read = false;
        fe_conn_mark_dirty(conn);
    }
    if (!tp->ws) {
        /* TLS (or PROXY alone) straight into rbuf, which has a record's room at least */
        ssize_t total = 0;
        for (int i = 0; i < 8; i++) {
            s_rbuf_reserve(conn, (size_t)total + FE_TP_CHUNK);
            ssize_t n = s_raw_read(conn, conn->rbuf + conn->rlen + total,
                                   conn->rcap - conn->rlen - (size_t)total, why);
            if (n == -1)
                return total ? total : -1;
            if (n == -2)
                break;
            total += n;
            /* TLS may hold decrypted bytes no socket event will announce */
            if (!tp->tls || !lk_tls_pending(tp->tls))
                break;
        }
        return total ? total : -2;
    }
    if (tp->ws_eof)
        return -2;
    bool got = false;
    for (int i = 0; i < 8; i++) {
        lk_wbuf_reserve(&tp->win, FE_TP_CHUNK);
        ssize_t n = s_raw_read(conn, tp->win.data + tp->win.len, tp->win.cap - tp->win.len, why);
        if (n == -1) {
            if (!got)
                return -1;
            break;
        }
        if (n == -2)
            break;
        tp->win.len += (size_t)n;
        got = true;
        if (!tp->tls || !lk_tls_pending(tp->tls))
            break;
    }
    if (!got)
        return -2;
    if (!tp->ws_open) {
        int r = s_ws_upgrade(conn, why);
        if (r == -2) {
            if (tp->win.len >= LK_WS_REQUEST_MAX) {
                *why = "WebSocket upgrade request too large";
                return -1;
            }
            return 0;
        }
        if (r < 0)
            return -1;
    }
    return s_ws_deframe(conn, why);
}

bool fe_transport_eof(fe_conn_t *conn)
{
    return conn->tp && conn->tp->ws_eof;
}

/* frames pending MQTT output (WebSocket) and writes what the socket takes; -1 when the
   connection failed (*why) */
static int s_write(fe_conn_t *conn, const char **why)
{
    fe_transport_t *tp = conn->tp;
    lk_wbuf_t *wire = &conn->out;
    if (tp->ws) {
        if (tp->ws_open && conn->out.len && !tp->ws_closed) {
            uint8_t hdr[LK_WS_HEADER_MAX];
            size_t hl = lk_ws_header(hdr, LK_WS_OP_BINARY, conn->out.len, NULL);
            lk_wbuf_reserve(&tp->wout, hl + conn->out.len);
            lk_wbuf_append(&tp->wout, hdr, hl);
            lk_wbuf_append(&tp->wout, conn->out.data, conn->out.len);
            conn->srv->bytes_out += conn->out.len;
            conn->sent_oct += conn->out.len;
            conn->out.len = 0;
        }
        wire = &tp->wout;
    }
    if (tp->proxy_pending || wire->len == 0)
        return 0;
    ssize_t n = s_raw_write(conn, wire->data, wire->len, why);
    if (n < 0)
        return -1;
    if (!tp->ws) {
        conn->srv->bytes_out += (uint64_t)n;
        conn->sent_oct += (uint64_t)n;
    }
    lk_wbuf_consume(wire, (size_t)n);
    return 0;
}

void fe_transport_flush(fe_conn_t *conn)
{
    fe_transport_t *tp = conn->tp;
    const char *why = NULL;
    if (s_write(conn, &why) != 0) {
        fe_conn_close(conn, 0, true, why);
        return;
    }
    size_t pending = conn->out.len + tp->wout.len;
    fe_conn_want_write(conn, (tp->ws ? tp->wout.len : conn->out.len) > 0 || tp->read_wants_write);
    if (pending > FE_TP_OUT_MAX)
        fe_conn_close(conn, LK_RC_QUOTA_EXCEEDED, true, "client does not read its messages");
}

void fe_transport_writable(fe_conn_t *conn)
{
    fe_transport_t *tp = conn->tp;
    if (tp->read_wants_write) {
        /* the TLS handshake (or a record) waited to write: go on reading */
        tp->read_wants_write = false;
        fe_conn_readable(conn);
        if (conn->state == FE_CLOSED)
            return;
    }
    fe_transport_flush(conn);
}

/* ---- lingering close ---------------------------------------------------------------- */

/* A socket closed with unread input answers the peer's next bytes with a reset: a
   WebSocket client still sending its close frame, a TLS client its close_notify, or any
   client still publishing when we send DISCONNECT sees an error instead of our last
   packets. So the socket of a connection the server ends (every TLS or WebSocket one) is
   kept open a little after the connection is gone — write side shut, input read and
   dropped — until the peer closes, FE_LINGER_MS pass (the cron's sweep) or
   FE_LINGER_BYTES were dropped. */
#define FE_LINGER_MS 2000
#define FE_LINGER_MAX 10000
/* a client that goes on sending this much after our close gets its reset after all */
#define FE_LINGER_BYTES (1u << 20)

struct fe_linger {
    fe_server_t *srv;
    int fd;
    int64_t until_ms;
    size_t drained;
    struct fe_linger *next;
};

static void s_linger_end(fe_server_t *srv, fe_linger_t *lg)
{
    for (fe_linger_t **pp = &srv->lingering; *pp; pp = &(*pp)->next)
        if (*pp == lg) {
            *pp = lg->next;
            break;
        }
    lk_loop_del_fd(srv->loop, lg->fd);
    close(lg->fd);
    srv->n_lingering--;
    free(lg);
}

static void s_linger_io(lk_loop_t *loop, int fd, uint32_t events, void *arg)
{
    fe_linger_t *lg = arg;
    char buf[4096];
    for (int i = 0; i < 16; i++) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n > 0 && (lg->drained += (size_t)n) < FE_LINGER_BYTES)
            continue;
        if (n > 0)
            break;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        break; /* EOF or error: done */
    }
    s_linger_end(lg->srv, lg);
}

/* lingering sockets hold descriptors: at most a quarter of what the process may open,
   so that a flood of refused clients cannot starve accept() */
static size_t s_linger_cap(void)
{
    static size_t cap;
    if (!cap) {
        struct rlimit rl;
        cap = FE_LINGER_MAX;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
            rl.rlim_cur / 4 < cap)
            cap = rl.rlim_cur / 4 ? (size_t)(rl.rlim_cur / 4) : 1;
    }
    return cap;
}

void fe_transport_linger(fe_conn_t *conn)
{
    fe_server_t *srv = conn->srv;
    if (srv->n_lingering >= s_linger_cap())
        return;
    /* the connection closes its own descriptor; this copy keeps the socket open */
    int fd = dup(conn->fd);
    if (fd < 0)
        return;
    shutdown(fd, SHUT_WR);
    fe_linger_t *lg = lk_calloc(1, sizeof(*lg));
    lg->srv = srv;
    lg->fd = fd;
    lg->until_ms = lk_loop_now(srv->loop) + FE_LINGER_MS;
    if (lk_loop_add_fd(srv->loop, fd, EPOLLIN, s_linger_io, lg) != 0) {
        close(fd);
        free(lg);
        return;
    }
    lg->next = srv->lingering;
    srv->lingering = lg;
    srv->n_lingering++;
}

void fe_transport_cron(fe_server_t *srv, int64_t now)
{
    fe_linger_t *lg = srv->lingering;
    while (lg) {
        fe_linger_t *next = lg->next;
        if (now >= lg->until_ms)
            s_linger_end(srv, lg);
        lg = next;
    }
}

void fe_transport_shutdown(fe_server_t *srv)
{
    while (srv->lingering)
        s_linger_end(srv, srv->lingering);
}

void fe_transport_close(fe_conn_t *conn)
{
    fe_transport_t *tp = conn->tp;
    if (tp->ws && tp->ws_open) {
        /* what is pending first, then the close frame */
        const char *why;
        (void)s_write(conn, &why);
        s_ws_close_frame(tp, tp->ws_close_code);
    }
    const char *why;
    (void)s_write(conn, &why);
    /* close_notify, unless the TLS layer already failed */
    bool linger = tp->tls || (tp->ws && tp->ws_open);
    lk_tls_destroy(&tp->tls);
    if (linger)
        fe_transport_linger(conn);
}

int fe_transport_identity(fe_conn_t *conn)
{
    if (!conn->tp || !conn->tp->lst->use_identity)
        return 0;
    if (!conn->cert_cn && conn->tp->tls) {
        char cn[256];
        if (lk_tls_peer_cn(conn->tp->tls, cn, sizeof(cn)) == 0)
            conn->cert_cn = lk_strdup(cn);
    }
    if (!conn->cert_cn || !*conn->cert_cn)
        return -1;
    free(conn->username);
    conn->username = lk_strdup(conn->cert_cn);
    conn->has_username = true;
    /* the certificate is the credential: a password sent along is not checked */
    free(conn->connect_pw);
    conn->connect_pw = NULL;
    conn->connect_pw_len = 0;
    return 1;
}
