/*  lk_zmtp: ZMTP 3.0 (NULL mechanism) over Unix stream sockets, served by lk_loop.
    See lk_zmtp.h for why this exists next to libzmq.

    A connection goes GREETING (the peer's 64 bytes) → READY (the peer's READY command:
    socket type, identity) → OPEN (message frames). Ours go out all at once on connect:
    greeting, READY, then whatever the dealer queued while the link was down. Input is
    parsed in place in the connection's buffer; a message is handed to the callback as a
    pointer into it. Output is appended to the connection's buffer and written by
    lk_zmtp_flush() (EPOLLOUT only while a write is incomplete).

    Connections closed during a turn are freed by the next lk_zmtp_flush() (or destroy)
    that runs outside the message callback: the connection being parsed may be the one
    that closed. */
#include "lk_zmtp.h"
#include "lk_common.h"
#include "lk_mqtt.h"
#include <czmq.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define S_MAX_FRAME ((uint64_t)512 << 20) /* larger frames end the link */
#define S_MAX_QUEUE ((size_t)256 << 20)   /* queued bytes per link before sends drop */
#define S_READ_CHUNK 65536
#define S_READ_BUDGET (1 << 20)  /* bytes read per wake-up; the rest next turn */
#define S_RESERVE_MAX (16 << 20) /* room made ahead for a frame's body */
#define S_KEEP_CAP (1 << 20)     /* idle buffers larger than this are freed */
#define S_RETRY_MIN_MS 100
#define S_RETRY_MAX_MS 500

typedef enum { S_GREETING, S_READY, S_OPEN } s_stage_t;

typedef struct s_conn {
    lk_zmtp_t *owner;
    int fd; /* -1 while down (dealer) or once closed */
    s_stage_t stage;
    lk_wbuf_t in;
    lk_wbuf_t out;
    size_t out_off; /* bytes of out already written */
    bool want_out;  /* EPOLLOUT registered */
    bool skip;      /* dropping the rest of a multipart message */
    bool dead;      /* router: closed, to be freed */
    char *identity; /* router: the dealer's, once READY */
    uint64_t gen;   /* router: this link's number (lk_zmtp_link_gen) */
    int64_t base;   /* stream position of out.data[0] (lk_zmtp_queued_pos) */
    struct s_conn *next;
} s_conn_t;

typedef struct {
    int fd;
    char *path; /* NULL for an abstract name */
    ino_t ino;
} s_listener_t;

struct _lk_zmtp_t {
    lk_loop_t *loop;
    bool is_router;
    lk_zmtp_msg_fn *fn;
    void *arg;
    /* router */
    s_listener_t *listeners;
    int n_listeners;
    s_conn_t *conns;
    zhashx_t *by_id; /* identity → READY connection */
    int dispatching; /* inside the callback: closed connections are not freed yet */
    /* dealer */
    char *identity;
    char *peer_name;
    char *endpoint;
    s_conn_t *link; /* always there; fd -1 while down */
    bool connected;
    int retry_ms;
    int retry_timer;
    /* messages refused past S_MAX_QUEUE, and when we last said so */
    uint64_t dropped;
    int64_t drop_warned_ms;
    size_t max_queue;
    /* lk_zmtp_link_gen: dealer, bumped at every link loss; router, the last given out */
    uint64_t gen;
};

static void s_conn_event(lk_loop_t *loop, int fd, uint32_t events, void *arg);
static void s_dealer_try(lk_loop_t *loop, void *arg);

/* --- wire ------------------------------------------------------------------------- */

static void s_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint64_t s_get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void s_put_frame_header(lk_wbuf_t *b, uint8_t flags, uint64_t size)
{
    uint8_t h[9];
    if (size <= 255) {
        h[0] = flags;
        h[1] = (uint8_t)size;
        lk_wbuf_append(b, h, 2);
        return;
    }
    h[0] = flags | LK_ZMTP_LONG;
    for (int i = 0; i < 8; i++)
        h[1 + i] = (uint8_t)(size >> (56 - 8 * i));
    lk_wbuf_append(b, h, 9);
}

static void s_put_greeting(lk_wbuf_t *b, bool as_server)
{
    uint8_t g[LK_ZMTP_GREETING] = {0};
    g[0] = 0xFF;
    g[9] = 0x7F;
    g[10] = 3;
    g[11] = 0;
    memcpy(g + 12, "NULL", 4);
    g[32] = as_server ? 1 : 0;
    lk_wbuf_append(b, g, sizeof(g));
}

static void s_put_property(lk_wbuf_t *b, const char *name, const void *value, size_t len)
{
    uint8_t n = (uint8_t)strlen(name);
    lk_wbuf_append(b, &n, 1);
    lk_wbuf_append(b, name, n);
    uint8_t l[4];
    s_put_be32(l, (uint32_t)len);
    lk_wbuf_append(b, l, 4);
    lk_wbuf_append(b, value, len);
}

static void s_put_ready(lk_wbuf_t *b, const char *socket_type, const char *identity)
{
    lk_wbuf_t body;
    lk_wbuf_init(&body);
    lk_wbuf_append(&body, "\x05READY", 6);
    s_put_property(&body, "Socket-Type", socket_type, strlen(socket_type));
    if (identity)
        s_put_property(&body, "Identity", identity, strlen(identity));
    s_put_frame_header(b, LK_ZMTP_COMMAND, body.len);
    lk_wbuf_append(b, body.data, body.len);
    lk_wbuf_free(&body);
}

int lk_zmtp_greeting_parse(const uint8_t *buf, size_t len)
{
    static const uint8_t mech[20] = {'N', 'U', 'L', 'L'};
    if (len >= 1 && buf[0] != 0xFF)
        return -1;
    if (len >= 10 && !(buf[9] & 0x01))
        return -1;
    if (len >= 11 && buf[10] < 3)
        return -1;
    for (size_t i = 12; i < 32 && i < len; i++)
        if (buf[i] != mech[i - 12])
            return -1;
    return len >= LK_ZMTP_GREETING ? LK_ZMTP_GREETING : 0;
}

int64_t lk_zmtp_frame_parse(const uint8_t *buf, size_t len, uint64_t max, lk_zmtp_frame_t *f)
{
    if (len < 1)
        return 0;
    uint8_t flags = buf[0];
    if (flags & ~(LK_ZMTP_MORE | LK_ZMTP_LONG | LK_ZMTP_COMMAND))
        return -1;
    if ((flags & LK_ZMTP_COMMAND) && (flags & LK_ZMTP_MORE))
        return -1;
    size_t hdr = (flags & LK_ZMTP_LONG) ? 9 : 2;
    if (len < hdr)
        return 0;
    uint64_t size = (flags & LK_ZMTP_LONG) ? s_get_be64(buf + 1) : buf[1];
    if (size > max)
        return -2;
    if (len - hdr < size)
        return 0;
    f->flags = flags;
    f->body = buf + hdr;
    f->size = size;
    return (int64_t)(hdr + size);
}

/* copies a property value out as a NUL-terminated string; -1 when it does not fit */
static int s_copy_value(char *dst, size_t cap, const uint8_t *v, size_t n)
{
    if (!dst || n + 1 > cap)
        return -1;
    memcpy(dst, v, n);
    dst[n] = 0;
    return 0;
}

int lk_zmtp_ready_parse(const uint8_t *body, size_t len, char *socket_type, size_t st_cap,
                        char *identity, size_t id_cap, size_t *identity_len)
{
    if (len < 6 || body[0] != 5 || memcmp(body + 1, "READY", 5) != 0)
        return -1;
    if (st_cap)
        socket_type[0] = 0;
    if (id_cap)
        identity[0] = 0;
    *identity_len = 0;
    size_t i = 6;
    while (i < len) {
        size_t nl = body[i++];
        if (nl == 0 || len - i < nl)
            return -1;
        const char *name = (const char *)body + i;
        i += nl;
        if (len - i < 4)
            return -1;
        uint32_t vl = ((uint32_t)body[i] << 24) | ((uint32_t)body[i + 1] << 16) |
                      ((uint32_t)body[i + 2] << 8) | body[i + 3];
        i += 4;
        if (len - i < vl)
            return -1;
        /* property names are case-insensitive */
        if (nl == 11 && strncasecmp(name, "Socket-Type", 11) == 0) {
            if (s_copy_value(socket_type, st_cap, body + i, vl) != 0)
                return -1;
        } else if (nl == 8 && strncasecmp(name, "Identity", 8) == 0) {
            if (s_copy_value(identity, id_cap, body + i, vl) != 0)
                return -1;
            *identity_len = vl;
        }
        i += vl;
    }
    return 0;
}

/* --- connections ------------------------------------------------------------------ */

static s_conn_t *s_conn_new(lk_zmtp_t *self, int fd)
{
    s_conn_t *c = lk_calloc(1, sizeof(*c));
    c->owner = self;
    c->fd = fd;
    lk_wbuf_init(&c->in);
    lk_wbuf_init(&c->out);
    return c;
}

static void s_conn_free(s_conn_t *c)
{
    lk_wbuf_free(&c->in);
    lk_wbuf_free(&c->out);
    free(c->identity);
    free(c);
}

/* ends the link: the fd is closed now, the connection freed later (router) or reused
   (dealer, which reconnects) */
static void s_conn_close(s_conn_t *c, const char *why)
{
    lk_zmtp_t *self = c->owner;
    if (c->fd >= 0) {
        lk_loop_del_fd(self->loop, c->fd);
        close(c->fd);
        c->fd = -1;
    }
    c->want_out = false;
    if (self->is_router) {
        if (c->dead)
            return;
        c->dead = true;
        if (c->identity) {
            lk_debug("zmtp: %s left (%s)", c->identity, why);
            if (zhashx_lookup(self->by_id, c->identity) == c)
                zhashx_delete(self->by_id, c->identity);
        }
        return;
    }
    /* dealer: half-written frames cannot go on another link; drop what was queued */
    lk_debug("zmtp: link to %s down (%s)", self->peer_name, why);
    self->gen++;
    self->connected = false;
    c->stage = S_GREETING;
    c->skip = false;
    c->in.len = 0;
    c->base += (int64_t)c->out.len;
    c->out.len = 0;
    c->out_off = 0;
    if (!self->retry_timer) {
        self->retry_timer = lk_loop_timer(self->loop, self->retry_ms, false, s_dealer_try, self);
        self->retry_ms = self->retry_ms * 2 > S_RETRY_MAX_MS ? S_RETRY_MAX_MS : self->retry_ms * 2;
    }
}

/* writes as much of out as the socket takes; false when the link ended */
static bool s_conn_write(s_conn_t *c)
{
    if (c->fd < 0)
        return false;
    while (c->out_off < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (c->out_off >= S_KEEP_CAP && c->out_off >= c->out.len / 2) {
                /* a link never idle would otherwise keep every byte it ever queued */
                memmove(c->out.data, c->out.data + c->out_off, c->out.len - c->out_off);
                c->out.len -= c->out_off;
                c->base += (int64_t)c->out_off;
                c->out_off = 0;
            }
            if (!c->want_out) {
                c->want_out = true;
                lk_loop_mod_fd(c->owner->loop, c->fd, EPOLLIN | EPOLLOUT);
            }
            return true;
        }
        s_conn_close(c, n < 0 ? strerror(errno) : "write failed");
        return false;
    }
    c->base += (int64_t)c->out.len;
    c->out.len = 0;
    c->out_off = 0;
    if (c->out.cap > S_KEEP_CAP) {
        lk_wbuf_free(&c->out);
        lk_wbuf_init(&c->out);
    }
    if (c->want_out) {
        c->want_out = false;
        lk_loop_mod_fd(c->owner->loop, c->fd, EPOLLIN);
    }
    return true;
}

static void s_send_pong(s_conn_t *c, const lk_zmtp_frame_t *f)
{
    /* PING: name, TTL (2 bytes), context (up to 16 bytes) echoed in the PONG */
    size_t ctx = f->size > 7 ? (size_t)f->size - 7 : 0;
    if (ctx > 16)
        ctx = 16;
    uint8_t body[5 + 16];
    memcpy(body, "\x04PONG", 5);
    memcpy(body + 5, f->body + 7, ctx);
    s_put_frame_header(&c->out, LK_ZMTP_COMMAND, 5 + ctx);
    lk_wbuf_append(&c->out, body, 5 + ctx);
}

static bool s_type_ok(lk_zmtp_t *self, const char *type)
{
    if (self->is_router)
        return !strcmp(type, "DEALER") || !strcmp(type, "REQ") || !strcmp(type, "ROUTER");
    return !strcmp(type, "ROUTER") || !strcmp(type, "REP") || !strcmp(type, "DEALER");
}

/* the peer's READY: true when the link may open */
static bool s_on_ready(s_conn_t *c, const lk_zmtp_frame_t *f)
{
    lk_zmtp_t *self = c->owner;
    char type[32], id[256];
    size_t id_len;
    if (!(f->flags & LK_ZMTP_COMMAND) ||
        lk_zmtp_ready_parse(f->body, (size_t)f->size, type, sizeof(type), id, sizeof(id),
                            &id_len) != 0) {
        lk_warn("zmtp: %s: no valid READY from the peer",
                self->is_router ? "router" : self->peer_name);
        return false;
    }
    if (!s_type_ok(self, type)) {
        lk_warn("zmtp: a %s socket cannot talk to a %s socket",
                self->is_router ? "ROUTER" : "DEALER", type);
        return false;
    }
    if (!self->is_router) {
        self->connected = true;
        self->gen++;    /* what was kept and not queued while down is due again */
        self->retry_ms = S_RETRY_MIN_MS;
        lk_debug("zmtp: link to %s up", self->peer_name);
        return true;
    }
    if (id_len == 0 || strlen(id) != id_len) {
        lk_warn("zmtp: a dealer without a usable identity (%zu bytes) refused", id_len);
        return false;
    }
    s_conn_t *old = zhashx_lookup(self->by_id, id);
    if (old && old != c)
        s_conn_close(old, "replaced by a new link with the same identity");
    c->identity = lk_strdup(id);
    c->gen = ++self->gen;
    zhashx_update(self->by_id, id, c);
    lk_debug("zmtp: %s joined", id);
    return true;
}

/* handles every complete frame in c->in */
static void s_conn_parse(s_conn_t *c)
{
    lk_zmtp_t *self = c->owner;
    size_t off = 0;
    while (c->fd >= 0 && off < c->in.len) {
        const uint8_t *p = c->in.data + off;
        size_t avail = c->in.len - off;
        if (c->stage == S_GREETING) {
            int r = lk_zmtp_greeting_parse(p, avail);
            if (r < 0) {
                lk_warn("zmtp: %s: the peer does not speak ZMTP 3 with NULL security",
                        self->is_router ? "router" : self->peer_name);
                s_conn_close(c, "bad greeting");
                return;
            }
            if (r == 0)
                break;
            off += (size_t)r;
            c->stage = S_READY;
            continue;
        }
        lk_zmtp_frame_t f;
        int64_t r = lk_zmtp_frame_parse(p, avail, S_MAX_FRAME, &f);
        if (r < 0) {
            lk_warn("zmtp: %s: %s frame, link closed",
                    c->identity       ? c->identity
                    : self->peer_name ? self->peer_name
                                      : "peer",
                    r == -1 ? "malformed" : "oversized");
            s_conn_close(c, "bad frame");
            return;
        }
        if (r == 0) {
            /* make room for the whole frame at once, up to S_RESERVE_MAX: a header alone
               must not make us allocate what its sender never sends */
            if (avail >= 9 || (avail >= 2 && !(p[0] & LK_ZMTP_LONG))) {
                uint64_t want = (p[0] & LK_ZMTP_LONG) ? 9 + s_get_be64(p + 1) : 2u + p[1];
                if (want > avail)
                    lk_wbuf_reserve(&c->in, (size_t)(want - avail > S_RESERVE_MAX ? S_RESERVE_MAX
                                                                                  : want - avail));
            }
            break;
        }
        off += (size_t)r;
        if (c->stage == S_READY) {
            if (!s_on_ready(c, &f)) {
                s_conn_close(c, "handshake failed");
                return;
            }
            c->stage = S_OPEN;
            continue;
        }
        if (f.flags & LK_ZMTP_COMMAND) {
            if (f.size >= 5 && memcmp(f.body, "\x04PING", 5) == 0)
                s_send_pong(c, &f);
            else if (f.size >= 6 && memcmp(f.body,
                                           "\x05"
                                           "ERROR",
                                           6) == 0) {
                lk_warn("zmtp: the peer reported an error, link closed");
                s_conn_close(c, "ERROR command");
                return;
            }
            continue;
        }
        bool first = !c->skip;
        c->skip = (f.flags & LK_ZMTP_MORE) != 0;
        if (first) {
            self->dispatching++;
            self->fn(self, self->is_router ? c->identity : self->peer_name, f.body, (size_t)f.size,
                     self->arg);
            self->dispatching--;
        }
    }
    if (c->fd < 0)
        return;
    lk_wbuf_consume(&c->in, off);
    if (c->in.len == 0 && c->in.cap > S_KEEP_CAP) {
        lk_wbuf_free(&c->in);
        lk_wbuf_init(&c->in);
    }
}

static void s_conn_read(s_conn_t *c)
{
    size_t got = 0;
    bool eof = false;
    while (got < S_READ_BUDGET) {
        lk_wbuf_reserve(&c->in, S_READ_CHUNK);
        ssize_t n = read(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len);
        if (n > 0) {
            size_t asked = c->in.cap - c->in.len;
            c->in.len += (size_t)n;
            got += (size_t)n;
            if ((size_t)n < asked)
                break; /* drained: spare the read that would say EAGAIN */
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        eof = true;
        break;
    }
    if (got)
        s_conn_parse(c);
    if (eof && c->fd >= 0)
        s_conn_close(c, "closed by the peer");
}

static void s_conn_event(lk_loop_t *loop, int fd, uint32_t events, void *arg)
{
    s_conn_t *c = arg;
    if (c->fd != fd)
        return;
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        s_conn_read(c);
    if (c->fd >= 0 && (events & EPOLLOUT))
        s_conn_write(c);
}

/* a fresh link: our greeting and READY go first */
static void s_conn_start(s_conn_t *c, const char *socket_type, const char *identity)
{
    lk_zmtp_t *self = c->owner;
    lk_wbuf_t hs;
    lk_wbuf_init(&hs);
    s_put_greeting(&hs, self->is_router);
    s_put_ready(&hs, socket_type, identity);
    /* what was queued keeps its stream position behind the handshake */
    c->base += (int64_t)c->out_off - (int64_t)hs.len;
    if (c->out.len > c->out_off)
        lk_wbuf_append(&hs, c->out.data + c->out_off, c->out.len - c->out_off);
    lk_wbuf_free(&c->out);
    c->out = hs;
    c->out_off = 0;
    c->stage = S_GREETING;
    c->want_out = false;
    lk_loop_add_fd(self->loop, c->fd, EPOLLIN, s_conn_event, c);
    s_conn_write(c);
}

/* --- endpoints -------------------------------------------------------------------- */

bool lk_zmtp_endpoint_ok(const char *endpoint)
{
    return endpoint && strncmp(endpoint, "ipc://", 6) == 0 && endpoint[6];
}

/* sockaddr for ipc://path or ipc://@name; -1 when it does not fit */
static int s_sockaddr(const char *endpoint, struct sockaddr_un *sa, socklen_t *sa_len)
{
    const char *path = endpoint + 6;
    size_t n = strlen(path);
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (n == 0 || n >= sizeof(sa->sun_path)) {
        lk_error("zmtp: %s: the path must have 1 to %zu bytes", endpoint, sizeof(sa->sun_path) - 1);
        return -1;
    }
    memcpy(sa->sun_path, path, n);
    if (path[0] == '@') {
        sa->sun_path[0] = 0; /* abstract namespace */
        *sa_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else
        *sa_len = (socklen_t)sizeof(*sa);
    return 0;
}

static void s_accept(lk_loop_t *loop, int fd, uint32_t events, void *arg)
{
    lk_zmtp_t *self = arg;
    for (int i = 0; i < 64; i++) {
        int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                lk_warn("zmtp: accept: %s", strerror(errno));
            return;
        }
        s_conn_t *c = s_conn_new(self, cfd);
        c->next = self->conns;
        self->conns = c;
        s_conn_start(c, "ROUTER", NULL);
    }
}

lk_zmtp_t *lk_zmtp_router_new(lk_loop_t *loop, lk_zmtp_msg_fn *fn, void *arg)
{
    lk_zmtp_t *self = lk_calloc(1, sizeof(*self));
    self->loop = loop;
    self->is_router = true;
    self->fn = fn;
    self->arg = arg;
    self->by_id = zhashx_new();
    self->max_queue = S_MAX_QUEUE;
    return self;
}

lk_zmtp_t *lk_zmtp_dealer_new(lk_loop_t *loop, const char *identity, const char *peer_name,
                              lk_zmtp_msg_fn *fn, void *arg)
{
    lk_zmtp_t *self = lk_calloc(1, sizeof(*self));
    self->loop = loop;
    self->fn = fn;
    self->arg = arg;
    self->identity = lk_strdup(identity);
    self->peer_name = lk_strdup(peer_name);
    self->link = s_conn_new(self, -1);
    self->retry_ms = S_RETRY_MIN_MS;
    self->gen = 1;
    self->max_queue = S_MAX_QUEUE;
    return self;
}

void lk_zmtp_destroy(lk_zmtp_t **self_p)
{
    lk_zmtp_t *self = *self_p;
    if (!self)
        return;
    lk_zmtp_flush(self);
    for (int i = 0; i < self->n_listeners; i++) {
        s_listener_t *l = &self->listeners[i];
        lk_loop_del_fd(self->loop, l->fd);
        close(l->fd);
        /* only our own socket file: a successor may have bound the path already */
        struct stat st;
        if (l->path && stat(l->path, &st) == 0 && st.st_ino == l->ino)
            unlink(l->path);
        free(l->path);
    }
    free(self->listeners);
    while (self->conns) {
        s_conn_t *c = self->conns;
        self->conns = c->next;
        s_conn_close(c, "shutdown");
        s_conn_free(c);
    }
    zhashx_destroy(&self->by_id);
    if (self->link) {
        if (self->link->fd >= 0) {
            lk_loop_del_fd(self->loop, self->link->fd);
            close(self->link->fd);
        }
        s_conn_free(self->link);
    }
    if (self->retry_timer)
        lk_loop_timer_cancel(self->loop, self->retry_timer);
    free(self->identity);
    free(self->peer_name);
    free(self->endpoint);
    free(self);
    *self_p = NULL;
}

int lk_zmtp_bind(lk_zmtp_t *self, const char *endpoint)
{
    assert(self->is_router);
    struct sockaddr_un sa;
    socklen_t sa_len;
    if (!lk_zmtp_endpoint_ok(endpoint) || s_sockaddr(endpoint, &sa, &sa_len) != 0)
        return -1;
    const char *path = endpoint + 6;
    if (path[0] != '@')
        unlink(path); /* a stale socket file of a previous life */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sa_len) != 0 || listen(fd, 128) != 0) {
        lk_error("zmtp: cannot bind %s: %s", endpoint, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    self->listeners =
        lk_realloc(self->listeners, (size_t)(self->n_listeners + 1) * sizeof(s_listener_t));
    s_listener_t *l = &self->listeners[self->n_listeners++];
    l->fd = fd;
    l->path = path[0] != '@' ? lk_strdup(path) : NULL;
    struct stat st;
    l->ino = l->path && stat(l->path, &st) == 0 ? st.st_ino : 0;
    lk_loop_add_fd(self->loop, fd, EPOLLIN, s_accept, self);
    return 0;
}

static void s_dealer_try(lk_loop_t *loop, void *arg)
{
    lk_zmtp_t *self = arg;
    self->retry_timer = 0;
    s_conn_t *c = self->link;
    if (c->fd >= 0)
        return;
    struct sockaddr_un sa;
    socklen_t sa_len;
    if (s_sockaddr(self->endpoint, &sa, &sa_len) != 0)
        return;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        lk_warn("zmtp: socket: %s", strerror(errno));
    } else if (connect(fd, (struct sockaddr *)&sa, sa_len) == 0) {
        c->fd = fd;
        s_conn_start(c, "DEALER", self->identity);
        return;
    } else {
        close(fd);
    }
    /* nobody listening yet (or the backlog is full): later */
    self->retry_timer = lk_loop_timer(loop, self->retry_ms, false, s_dealer_try, self);
    self->retry_ms = self->retry_ms * 2 > S_RETRY_MAX_MS ? S_RETRY_MAX_MS : self->retry_ms * 2;
}

int lk_zmtp_connect(lk_zmtp_t *self, const char *endpoint)
{
    assert(!self->is_router);
    struct sockaddr_un sa;
    socklen_t sa_len;
    if (!lk_zmtp_endpoint_ok(endpoint) || s_sockaddr(endpoint, &sa, &sa_len) != 0)
        return -1;
    free(self->endpoint);
    self->endpoint = lk_strdup(endpoint);
    if (self->link->fd < 0 && !self->retry_timer)
        s_dealer_try(self->loop, self);
    return 0;
}

bool lk_zmtp_connected(lk_zmtp_t *self)
{
    return self->connected;
}

/* --- sending ---------------------------------------------------------------------- */

static int s_send(lk_zmtp_t *self, const char *identity, const uint8_t *data, size_t len,
                  bool keep)
{
    s_conn_t *c = self->is_router ? zhashx_lookup(self->by_id, identity) : self->link;
    if (!c || c->dead)
        return -1;
    if (keep && !self->is_router && !self->connected)
        /* the caller keeps it and sends it again once a link is up (the link number
           moves then): queued here it would reach a restarted peer ahead of the older
           messages the caller re-sends, and break their order */
        return 0;
    if (!keep && c->out.len - c->out_off + len > self->max_queue) {
        /* only what the sender may lose comes here (the bus's unacknowledged envelopes
           are kept): counted, and said at warning level at most every 10 s */
        self->dropped++;
        int64_t now = lk_mono_ms();
        if (now - self->drop_warned_ms >= 10000) {
            lk_warn("zmtp: queue to %s past %zu MiB: message dropped (%" PRIu64 " so far)",
                    self->is_router ? identity : self->peer_name, self->max_queue >> 20,
                    self->dropped);
            self->drop_warned_ms = now;
        }
        return -1;
    }
    s_put_frame_header(&c->out, 0, len);
    lk_wbuf_append(&c->out, data, len);
    return 0;
}

int lk_zmtp_send(lk_zmtp_t *self, const char *identity, const uint8_t *data, size_t len)
{
    return s_send(self, identity, data, len, false);
}

int lk_zmtp_send_kept(lk_zmtp_t *self, const char *identity, const uint8_t *data, size_t len)
{
    return s_send(self, identity, data, len, true);
}

uint64_t lk_zmtp_link_gen(lk_zmtp_t *self, const char *identity)
{
    if (!self->is_router)
        return self->gen;
    s_conn_t *c = zhashx_lookup(self->by_id, identity);
    return c && !c->dead ? c->gen : 0;
}

static s_conn_t *s_link(lk_zmtp_t *self, const char *identity)
{
    if (!self->is_router)
        return self->link;
    s_conn_t *c = zhashx_lookup(self->by_id, identity);
    return c && !c->dead ? c : NULL;
}

int64_t lk_zmtp_queued_pos(lk_zmtp_t *self, const char *identity)
{
    s_conn_t *c = s_link(self, identity);
    return c ? c->base + (int64_t)c->out.len : 0;
}

int64_t lk_zmtp_written_pos(lk_zmtp_t *self, const char *identity)
{
    s_conn_t *c = s_link(self, identity);
    return c ? c->base + (int64_t)c->out_off : 0;
}

void lk_zmtp_set_max_queue(lk_zmtp_t *self, size_t bytes)
{
    self->max_queue = bytes;
}

uint64_t lk_zmtp_dropped(lk_zmtp_t *self)
{
    return self->dropped;
}

void lk_zmtp_flush(lk_zmtp_t *self)
{
    if (!self->is_router) {
        s_conn_t *c = self->link;
        if (c->fd >= 0 && !c->want_out && c->out.len > c->out_off)
            s_conn_write(c);
        return;
    }
    s_conn_t **pp = &self->conns;
    while (*pp) {
        s_conn_t *c = *pp;
        if (!c->dead && !c->want_out && c->out.len > c->out_off)
            s_conn_write(c);
        if (c->dead && !self->dispatching) {
            *pp = c->next;
            s_conn_free(c);
        } else
            pp = &c->next;
    }
}

/* --- selftest --------------------------------------------------------------------- */

typedef struct {
    lk_loop_t *loop;
    int got;
    size_t bytes;
    char last_from[64];
    char last[64];
    lk_zmtp_t *echo; /* echoes what it gets back to the sender */
} s_zt_t;

static void s_zt_msg(lk_zmtp_t *z, const char *identity, const uint8_t *data, size_t len, void *arg)
{
    s_zt_t *t = arg;
    t->got++;
    t->bytes += len;
    snprintf(t->last_from, sizeof(t->last_from), "%s", identity);
    size_t n = len < sizeof(t->last) - 1 ? len : sizeof(t->last) - 1;
    memcpy(t->last, data, n);
    t->last[n] = 0;
    if (t->echo)
        lk_zmtp_send(t->echo, identity, data, len);
}

static void s_zt_turn(lk_loop_t *loop, void *arg)
{
    lk_zmtp_t **zs = arg;
    for (int i = 0; zs[i]; i++)
        lk_zmtp_flush(zs[i]);
}

static void s_zt_stop(lk_loop_t *loop, void *arg)
{
    lk_loop_stop(loop);
}

/* runs the loop until *counter reaches want or ms pass */
typedef struct {
    int *counter;
    int want;
} s_zt_wait_t;

static void s_zt_check(lk_loop_t *loop, void *arg)
{
    s_zt_wait_t *w = arg;
    if (*w->counter >= w->want)
        lk_loop_stop(loop);
}

static void s_zt_until(lk_loop_t *loop, int *counter, int want, int ms)
{
    s_zt_wait_t w = {counter, want};
    int t1 = lk_loop_timer(loop, ms, false, s_zt_stop, NULL);
    int t2 = lk_loop_timer(loop, 2, true, s_zt_check, &w);
    if (*counter < want)
        lk_loop_run(loop);
    lk_loop_timer_cancel(loop, t1);
    lk_loop_timer_cancel(loop, t2);
}

int lk_zmtp_test(bool verbose)
{
    int rc = 0;
#define S_CHECK(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "lk_zmtp: %s:%d: %s\n", __FILE__, __LINE__, #c);                       \
            rc = -1;                                                                               \
        }                                                                                          \
    } while (0)

    /* pure parsers */
    lk_wbuf_t b;
    lk_wbuf_init(&b);
    s_put_greeting(&b, false);
    for (size_t i = 0; i < LK_ZMTP_GREETING; i++)
        S_CHECK(lk_zmtp_greeting_parse(b.data, i) == 0);
    S_CHECK(lk_zmtp_greeting_parse(b.data, b.len) == LK_ZMTP_GREETING);
    b.data[12] = 'C'; /* CURVE is not ours */
    S_CHECK(lk_zmtp_greeting_parse(b.data, b.len) == -1);
    b.len = 0;
    s_put_ready(&b, "DEALER", "fe-1");
    lk_zmtp_frame_t f;
    S_CHECK(lk_zmtp_frame_parse(b.data, b.len, 1 << 20, &f) == (int64_t)b.len);
    S_CHECK(f.flags == LK_ZMTP_COMMAND);
    char type[16], id[16];
    size_t id_len;
    S_CHECK(lk_zmtp_ready_parse(f.body, f.size, type, sizeof(type), id, sizeof(id), &id_len) == 0);
    S_CHECK(strcmp(type, "DEALER") == 0 && strcmp(id, "fe-1") == 0 && id_len == 4);
    S_CHECK(lk_zmtp_ready_parse(f.body, f.size, type, sizeof(type), id, 4, &id_len) == -1);
    S_CHECK(lk_zmtp_ready_parse(f.body, f.size - 1, type, sizeof(type), id, sizeof(id), &id_len) ==
            -1);
    b.len = 0;
    uint8_t big[300] = {0};
    s_put_frame_header(&b, 0, sizeof(big));
    lk_wbuf_append(&b, big, sizeof(big));
    S_CHECK(b.data[0] == LK_ZMTP_LONG && b.len == 9 + sizeof(big));
    S_CHECK(lk_zmtp_frame_parse(b.data, b.len - 1, 1 << 20, &f) == 0);
    S_CHECK(lk_zmtp_frame_parse(b.data, b.len, 1 << 20, &f) == (int64_t)b.len);
    S_CHECK(lk_zmtp_frame_parse(b.data, b.len, 100, &f) == -2);
    b.data[0] = 0x08;
    S_CHECK(lk_zmtp_frame_parse(b.data, b.len, 1 << 20, &f) == -1);
    lk_wbuf_free(&b);

    /* our router and dealer, then each against libzmq */
    char dir[] = "/tmp/lk-zmtp-XXXXXX";
    if (!mkdtemp(dir))
        return -1;
    char ep[128], ep2[128];
    snprintf(ep, sizeof(ep), "ipc://%s/r.ipc", dir);
    snprintf(ep2, sizeof(ep2), "ipc://%s/z.ipc", dir);
    lk_loop_t *loop = lk_loop_new();
    s_zt_t rt = {.loop = loop}, dt = {.loop = loop}, d2t = {.loop = loop};
    lk_zmtp_t *r = lk_zmtp_router_new(loop, s_zt_msg, &rt);
    rt.echo = r;
    lk_zmtp_t *d = lk_zmtp_dealer_new(loop, "fe-1", "router", s_zt_msg, &dt);
    lk_zmtp_t *d2 = lk_zmtp_dealer_new(loop, "fe-2", "router", s_zt_msg, &d2t);
    lk_zmtp_t *all[] = {r, d, d2, NULL};
    lk_loop_on_turn_end(loop, s_zt_turn, all);

    /* the dealer starts first: what it sends waits for the router */
    S_CHECK(lk_zmtp_connect(d, ep) == 0);
    S_CHECK(lk_zmtp_send(d, NULL, (const uint8_t *)"early", 5) == 0);
    S_CHECK(lk_zmtp_bind(r, ep) == 0);
    S_CHECK(lk_zmtp_connect(d2, ep) == 0);
    s_zt_until(loop, &dt.got, 1, 3000);
    S_CHECK(rt.got == 1 && strcmp(rt.last_from, "fe-1") == 0 && strcmp(rt.last, "early") == 0);
    S_CHECK(dt.got == 1 && strcmp(dt.last_from, "router") == 0 && strcmp(dt.last, "early") == 0);
    S_CHECK(lk_zmtp_connected(d));
    /* many small and a few large messages, both ways, order kept */
    static uint8_t large[3 << 20];
    memset(large, 'x', sizeof(large));
    for (int i = 0; i < 1000; i++) {
        char m[32];
        int n = snprintf(m, sizeof(m), "m%d", i);
        lk_zmtp_send(d2, NULL, (const uint8_t *)m, (size_t)n);
        if (i % 400 == 0)
            lk_zmtp_send(d2, NULL, large, sizeof(large));
    }
    s_zt_until(loop, &d2t.got, 1003, 5000);
    S_CHECK(d2t.got == 1003 && strcmp(d2t.last, "m999") == 0);
    S_CHECK(d2t.bytes == 3 * sizeof(large) + 10 + 90 * 2 + 900 * 3 + 1000);
    int before;
    /* the queue limit: what may be lost is refused and counted, kept messages never */
    lk_zmtp_set_max_queue(d2, 1 << 20);
    before = d2t.got;
    uint64_t gen = lk_zmtp_link_gen(d2, NULL);
    S_CHECK(lk_zmtp_send(d2, NULL, large, 400 << 10) == 0);
    S_CHECK(lk_zmtp_send(d2, NULL, large, 400 << 10) == 0);
    S_CHECK(lk_zmtp_send(d2, NULL, large, 400 << 10) == -1 && lk_zmtp_dropped(d2) == 1);
    S_CHECK(lk_zmtp_send_kept(d2, NULL, large, 400 << 10) == 0);
    S_CHECK(lk_zmtp_send_kept(d2, NULL, large, 400 << 10) == 0);
    s_zt_until(loop, &d2t.got, before + 4, 5000);
    S_CHECK(d2t.got == before + 4 && lk_zmtp_dropped(d2) == 1);
    S_CHECK(lk_zmtp_link_gen(d2, NULL) == gen && gen > 0);
    S_CHECK(lk_zmtp_link_gen(r, "fe-2") > 0 && lk_zmtp_link_gen(r, "nobody") == 0);
    lk_zmtp_set_max_queue(d2, S_MAX_QUEUE);
    /* no such dealer */
    S_CHECK(lk_zmtp_send(r, "nobody", (const uint8_t *)"x", 1) == -1);
    /* handover: a second dealer with the identity fe-1 takes the name over */
    lk_zmtp_t *d3 = lk_zmtp_dealer_new(loop, "fe-1", "router", s_zt_msg, &d2t);
    lk_zmtp_t *all2[] = {r, d, d2, d3, NULL};
    lk_loop_remove_turn_end(loop, s_zt_turn, all);
    lk_loop_on_turn_end(loop, s_zt_turn, all2);
    lk_zmtp_connect(d3, ep);
    before = d2t.got;
    lk_zmtp_send(d3, NULL, (const uint8_t *)"from d3", 7);
    s_zt_until(loop, &d2t.got, before + 1, 3000);
    S_CHECK(d2t.got == before + 1 && strcmp(d2t.last, "from d3") == 0);
    lk_zmtp_destroy(&d3);
    lk_loop_remove_turn_end(loop, s_zt_turn, all2);
    lk_loop_on_turn_end(loop, s_zt_turn, all);

    /* the router goes away and comes back: the dealer reconnects, its link number moves */
    for (int i = 0; i < 100 && !lk_zmtp_connected(d); i++)
        s_zt_until(loop, &dt.got, INT32_MAX, 20);   /* back from the handover above */
    S_CHECK(lk_zmtp_connected(d));
    uint64_t gen_before = lk_zmtp_link_gen(d, NULL);
    lk_zmtp_destroy(&r);
    all[0] = r = lk_zmtp_router_new(loop, s_zt_msg, &rt);
    rt.echo = r;
    S_CHECK(lk_zmtp_bind(r, ep) == 0);
    before = dt.got;
    int tries = 0;
    while (dt.got == before && tries++ < 20) {
        lk_zmtp_send(d, NULL, (const uint8_t *)"again", 5);
        s_zt_until(loop, &dt.got, before + 1, 200);
    }
    S_CHECK(dt.got > before && strcmp(dt.last, "again") == 0);
    S_CHECK(lk_zmtp_link_gen(d, NULL) > gen_before);

    /* libzmq DEALER → our router, and our dealer → libzmq ROUTER */
    zsock_t *zd = zsock_new(ZMQ_DEALER);
    zsock_set_identity(zd, "zdealer");
    zsock_connect(zd, "%s", ep);
    zsock_t *zr = zsock_new(ZMQ_ROUTER);
    zsock_bind(zr, "%s", ep2);
    lk_zmtp_t *d4 = lk_zmtp_dealer_new(loop, "ours", "zrouter", s_zt_msg, &d2t);
    lk_zmtp_t *all3[] = {r, d, d2, d4, NULL};
    lk_loop_remove_turn_end(loop, s_zt_turn, all);
    lk_loop_on_turn_end(loop, s_zt_turn, all3);
    lk_zmtp_connect(d4, ep2);
    zstr_send(zd, "hello from libzmq");
    before = rt.got;
    s_zt_until(loop, &rt.got, before + 1, 3000);
    S_CHECK(rt.got == before + 1 && strcmp(rt.last_from, "zdealer") == 0 &&
            strcmp(rt.last, "hello from libzmq") == 0);
    lk_zmtp_flush(r);
    zsock_set_rcvtimeo(zd, 3000);
    char *echo = zstr_recv(zd);
    S_CHECK(echo && strcmp(echo, "hello from libzmq") == 0);
    zstr_free(&echo);
    lk_zmtp_send(d4, NULL, (const uint8_t *)"to libzmq", 9);
    for (int i = 0; i < 50 && !lk_zmtp_connected(d4); i++)
        s_zt_until(loop, &d2t.got, INT32_MAX, 20);
    lk_zmtp_flush(d4);
    zsock_set_rcvtimeo(zr, 3000);
    char *who = NULL, *what = NULL;
    zstr_recvx(zr, &who, &what, NULL);
    S_CHECK(who && strcmp(who, "ours") == 0 && what && strcmp(what, "to libzmq") == 0);
    before = d2t.got;
    if (who)
        zstr_sendx(zr, who, "from libzmq", NULL);
    zstr_free(&who);
    zstr_free(&what);
    s_zt_until(loop, &d2t.got, before + 1, 3000);
    S_CHECK(d2t.got == before + 1 && strcmp(d2t.last_from, "zrouter") == 0 &&
            strcmp(d2t.last, "from libzmq") == 0);
    zsock_destroy(&zd);
    zsock_destroy(&zr);

    /* a peer that speaks something else is dropped, and the router goes on */
    char path[128];
    snprintf(path, sizeof(path), "%s/r.ipc", dir);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t plen = strlen(path) < sizeof(sa.sun_path) - 1 ? strlen(path) : sizeof(sa.sun_path) - 1;
    memcpy(sa.sun_path, path, plen);
    int junk = socket(AF_UNIX, SOCK_STREAM, 0);
    S_CHECK(connect(junk, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    S_CHECK(write(junk, "GET / HTTP/1.1\r\n\r\n", 18) == 18);
    int n0 = 0;
    s_zt_until(loop, &n0, 1, 100);
    char tmp[256];
    ssize_t got;
    do
        got = recv(junk, tmp, sizeof(tmp), MSG_DONTWAIT);
    while (got > 0);
    S_CHECK(got == 0); /* closed by the router */
    close(junk);
    before = dt.got;
    lk_zmtp_send(d, NULL, (const uint8_t *)"still", 5);
    s_zt_until(loop, &dt.got, before + 1, 3000);
    S_CHECK(dt.got == before + 1);

    lk_loop_remove_turn_end(loop, s_zt_turn, all3);
    lk_zmtp_destroy(&d4);
    lk_zmtp_destroy(&d);
    lk_zmtp_destroy(&d2);
    lk_zmtp_destroy(&r);
    struct stat st;
    S_CHECK(stat(path, &st) != 0); /* the router removed its socket file */
    lk_loop_destroy(&loop);
    rmdir(dir);
    if (verbose)
        printf("lk_zmtp: %s\n", rc == 0 ? "ok" : "FAILED");
#undef S_CHECK
    return rc;
}
