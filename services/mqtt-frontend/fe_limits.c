/*  fe_limits: connection, rate, subscription, topic and login-failure limits of one
    frontend; see fe_limits.h. The hooks are short calls from fe_server.c (accept),
    fe_conn.c (close, the read loop's pause), and fe_handle.c (CONNECT, auth reply,
    PUBLISH, SUBSCRIBE); everything the limits decide and remember lives here.

    Back-pressure: a client in debt has EPOLLIN removed from its socket and a one-shot
    timer set for when its buckets are back to zero; the timer re-arms EPOLLIN and handles
    the packets already buffered (fe_conn_readable with nothing new to read). Packets
    after the one that went into debt wait in the read buffer meanwhile, so the order of a
    client's packets is kept. */
#include "fe_limits.h"
#include "fe_internal.h"
#include "lk_ratelog.h"
#include <stdarg.h>
#include <stdio.h>

/* refusal kinds, one bit each: logged once per connection */
enum {
    S_LOG_CONNS = 1u << 0,
    S_LOG_ADDR = 1u << 1,
    S_LOG_RATE = 1u << 2,
    S_LOG_SUBS = 1u << 3,
    S_LOG_TOPIC = 1u << 4,
    S_LOG_BACKOFF = 1u << 5,
    S_LOG_HELD = 1u << 6
};

#define S_LOG_WINDOW_MS 10000
#define S_LOG_PER_WINDOW 20

/* an address with recent login failures; on the LRU list, newest first */
typedef struct s_fail {
    char addr[48];
    uint32_t failures; /* within the window */
    int64_t first_ms;  /* the window starts at the first failure */
    int64_t last_ms;   /* last failure */
    int64_t next_ms;   /* the earliest time the next CONNECT from here goes to auth */
    struct s_fail *prev, *next;
} s_fail_t;

struct _fe_limits_t {
    lk_loop_t *loop;
    int64_t max_conns, max_per_addr;
    double pub_rate, byte_rate;
    int64_t max_subs, max_levels, max_topic_len;
    int64_t fail_threshold, fail_window_ms, fail_delay_ms, fail_max_delay_ms, fail_cap;
    zhashx_t *per_addr; /* addr -> (uintptr_t) connection count */
    zhashx_t *fails;    /* addr -> s_fail_t (owned through the list) */
    s_fail_t *lru_head, *lru_tail;
    /* the refusal-log limiter */
    int64_t log_window_ms;
    int log_lines;
    uint64_t log_suppressed;
    lk_ratelog_t cut[FE_CUT_KINDS];
};

static const char *s_cut_names[FE_CUT_KINDS] = {"protocol error", "keepalive timeout",
                                                "oversize packet", "refused CONNECT",
                                                "CONNECT timeout", "slow consumer"};

fe_limits_t *fe_limits_new(lk_config_t *config, lk_loop_t *loop)
{
    fe_limits_t *self = lk_calloc(1, sizeof(*self));
    self->loop = loop;
    self->max_conns = lk_config_get_int(config, "max_connections", -1);
    self->max_per_addr = lk_config_get_int(config, "max_connections_per_address", 0);
    self->pub_rate = (double)lk_config_get_int(config, "max_publish_rate", 0);
    self->byte_rate = (double)lk_config_get_int(config, "max_publish_bytes_per_sec", 0);
    self->max_subs = lk_config_get_int(config, "max_subscriptions", 0);
    self->max_levels = lk_config_get_int(config, "max_topic_levels", 0);
    self->max_topic_len = lk_config_get_int(config, "max_topic_length", 0);
    self->fail_threshold = lk_config_get_int(config, "auth_fail_threshold", 10);
    self->fail_window_ms = lk_config_get_int(config, "auth_fail_window", 60) * 1000;
    self->fail_delay_ms = lk_config_get_int(config, "auth_fail_delay_ms", 500);
    self->fail_max_delay_ms = lk_config_get_int(config, "auth_fail_max_delay_ms", 10000);
    self->fail_cap = lk_config_get_int(config, "auth_fail_addresses", 10000);
    if (self->fail_threshold > 0 &&
        (self->fail_window_ms <= 0 || self->fail_delay_ms <= 0 ||
         self->fail_max_delay_ms < self->fail_delay_ms || self->fail_cap <= 0)) {
        lk_error("auth_fail_window, auth_fail_delay_ms, auth_fail_addresses must be > 0 and "
                 "auth_fail_max_delay_ms >= auth_fail_delay_ms");
        free(self);
        return NULL;
    }
    self->per_addr = zhashx_new();
    self->fails = zhashx_new();
    for (int i = 0; i < FE_CUT_KINDS; i++)
        self->cut[i] = (lk_ratelog_t)LK_RATELOG_INIT(10, 1);
    return self;
}

void fe_limits_destroy(fe_limits_t **self_p)
{
    fe_limits_t *self = *self_p;
    if (!self)
        return;
    zhashx_destroy(&self->per_addr);
    zhashx_destroy(&self->fails);
    while (self->lru_head) {
        s_fail_t *f = self->lru_head;
        self->lru_head = f->next;
        free(f);
    }
    free(self);
    *self_p = NULL;
}

/* ---- the refusal log ------------------------------------------------------------- */

static void s_refusal(fe_limits_t *self, fe_conn_t *conn, uint32_t kind, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void s_refusal(fe_limits_t *self, fe_conn_t *conn, uint32_t kind, const char *fmt, ...)
{
    if (conn) {
        if (conn->lim.logged & kind)
            return;
        conn->lim.logged |= kind;
    }
    int64_t now = lk_loop_now(self->loop);
    if (now - self->log_window_ms >= S_LOG_WINDOW_MS) {
        if (self->log_suppressed)
            lk_notice("limits: %" PRIu64 " more refusal(s) not logged in the last %d s",
                      self->log_suppressed, S_LOG_WINDOW_MS / 1000);
        self->log_window_ms = now;
        self->log_lines = 0;
        self->log_suppressed = 0;
    }
    if (self->log_lines >= S_LOG_PER_WINDOW) {
        self->log_suppressed++;
        return;
    }
    self->log_lines++;
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (conn)
        lk_notice("client %s (%s): %s", conn->client_id ? conn->client_id : "-", conn->peer, text);
    else
        lk_notice("%s", text);
}

void fe_limits_cut(fe_conn_t *conn, fe_cut_t kind, const char *why)
{
    fe_limits_t *self = conn->srv->limits;
    uint64_t skipped;
    if (!lk_ratelog_take(&self->cut[kind], lk_loop_now(self->loop), &skipped))
        return;
    if (skipped)
        lk_notice("%" PRIu64 " more %s line(s) not logged", skipped, s_cut_names[kind]);
    const char *cid = conn->client_id ? conn->client_id : "-";
    if (kind == FE_CUT_REFUSED)
        lk_notice("client %s (%s): refused CONNECT: %s", cid, conn->peer, why ? why : "-");
    else
        lk_notice("client %s (%s): cut off: %s: %s", cid, conn->peer, s_cut_names[kind],
                  why ? why : "-");
}

void fe_limits_cron(fe_limits_t *self, int64_t now)
{
    for (int i = 0; i < FE_CUT_KINDS; i++) {
        uint64_t n = lk_ratelog_flush(&self->cut[i], now, 10000);
        if (n)
            lk_notice("%" PRIu64 " more %s line(s) not logged", n, s_cut_names[i]);
    }
}

/* ---- connections ----------------------------------------------------------------- */

bool fe_limits_accept(fe_server_t *srv, const char *addr)
{
    fe_limits_t *self = srv->limits;
    if (self->max_conns > 0 && (int64_t)srv->n_conns >= self->max_conns) {
        s_refusal(self, NULL, S_LOG_CONNS,
                  "connection from %s refused: max_connections (%" PRId64 ") reached", addr,
                  self->max_conns);
        return false;
    }
    if (self->max_per_addr > 0) {
        uintptr_t n = (uintptr_t)zhashx_lookup(self->per_addr, addr);
        if ((int64_t)n >= self->max_per_addr) {
            s_refusal(self, NULL, S_LOG_ADDR,
                      "connection from %s refused: max_connections_per_address (%" PRId64
                      ") reached",
                      addr, self->max_per_addr);
            return false;
        }
    }
    return true;
}

void fe_limits_opened(fe_conn_t *conn, const char *addr)
{
    fe_limits_t *self = conn->srv->limits;
    if (self->max_per_addr <= 0)
        return;
    snprintf(conn->lim.addr, sizeof(conn->lim.addr), "%s", addr);
    uintptr_t n = (uintptr_t)zhashx_lookup(self->per_addr, addr);
    zhashx_update(self->per_addr, addr, (void *)(n + 1));
}

void fe_limits_closed(fe_conn_t *conn)
{
    fe_limits_t *self = conn->srv->limits;
    if (conn->lim.timer) {
        lk_loop_timer_cancel(self->loop, conn->lim.timer);
        conn->lim.timer = 0;
    }
    if (conn->lim.acl_timer) {
        lk_loop_timer_cancel(self->loop, conn->lim.acl_timer);
        conn->lim.acl_timer = 0;
    }
    if (conn->lim.addr[0]) {
        uintptr_t n = (uintptr_t)zhashx_lookup(self->per_addr, conn->lim.addr);
        if (n <= 1)
            zhashx_delete(self->per_addr, conn->lim.addr);
        else
            zhashx_update(self->per_addr, conn->lim.addr, (void *)(n - 1));
        conn->lim.addr[0] = 0;
    }
}

/* ---- login failures -------------------------------------------------------------- */

/* the host part of "host:port" (IPv6 hosts contain ':' too: cut at the last one) */
static void s_host(const char *peer, char *out, size_t cap)
{
    const char *colon = strrchr(peer, ':');
    size_t n = colon ? (size_t)(colon - peer) : strlen(peer);
    if (n >= cap)
        n = cap - 1;
    memcpy(out, peer, n);
    out[n] = 0;
}

static void s_lru_unlink(fe_limits_t *self, s_fail_t *f)
{
    if (f->prev)
        f->prev->next = f->next;
    else
        self->lru_head = f->next;
    if (f->next)
        f->next->prev = f->prev;
    else
        self->lru_tail = f->prev;
    f->prev = f->next = NULL;
}

static void s_lru_push(fe_limits_t *self, s_fail_t *f)
{
    f->next = self->lru_head;
    if (self->lru_head)
        self->lru_head->prev = f;
    self->lru_head = f;
    if (!self->lru_tail)
        self->lru_tail = f;
}

/* the entry of addr, aged: a window that began more than auth_fail_window ago is over,
   and its failures are forgotten */
static s_fail_t *s_fail_find(fe_limits_t *self, const char *addr, int64_t now)
{
    s_fail_t *f = zhashx_lookup(self->fails, addr);
    if (f && now - f->first_ms > self->fail_window_ms) {
        zhashx_delete(self->fails, addr);
        s_lru_unlink(self, f);
        free(f);
        f = NULL;
    }
    return f;
}

/* the hold between two CONNECTs from an address with `failures` recent failures */
static int64_t s_delay(fe_limits_t *self, uint32_t failures)
{
    if ((int64_t)failures < self->fail_threshold)
        return 0;
    int64_t d = self->fail_delay_ms;
    for (int64_t i = self->fail_threshold; i < (int64_t)failures && d < self->fail_max_delay_ms;
         i++)
        d *= 2;
    return d < self->fail_max_delay_ms ? d : self->fail_max_delay_ms;
}

void fe_limits_auth_failed(fe_conn_t *conn, const char *reason)
{
    fe_limits_t *self = conn->srv->limits;
    if (self->fail_threshold <= 0 || (reason && strcmp(reason, "unavailable") == 0))
        return;
    int64_t now = lk_loop_now(self->loop);
    char addr[48];
    s_host(conn->peer, addr, sizeof(addr));
    s_fail_t *f = s_fail_find(self, addr, now);
    if (!f) {
        f = lk_calloc(1, sizeof(*f));
        snprintf(f->addr, sizeof(f->addr), "%s", addr);
        f->first_ms = now;
        zhashx_insert(self->fails, f->addr, f);
        while ((int64_t)zhashx_size(self->fails) > self->fail_cap && self->lru_tail) {
            s_fail_t *old = self->lru_tail;
            s_lru_unlink(self, old);
            zhashx_delete(self->fails, old->addr);
            free(old);
        }
    } else
        s_lru_unlink(self, f);
    s_lru_push(self, f);
    f->failures++;
    f->last_ms = now;
    /* the next CONNECT from here waits one delay after this failure */
    int64_t delay = s_delay(self, f->failures);
    if (delay && f->next_ms < now + delay)
        f->next_ms = now + delay;
    if ((int64_t)f->failures == self->fail_threshold)
        s_refusal(self, NULL, S_LOG_BACKOFF,
                  "%s: %u failed logins within %" PRId64 " s: its CONNECTs are slowed down now",
                  addr, f->failures, self->fail_window_ms / 1000);
}

static void s_held_release(lk_loop_t *loop, void *arg)
{
    fe_conn_t *conn = arg;
    conn->lim.timer = 0;
    if (conn->state != FE_AUTH)
        return;
    conn->req_first_ms = lk_loop_now(loop);
    fe_auth_request_send(conn);
}

void fe_limits_connect(fe_conn_t *conn)
{
    fe_limits_t *self = conn->srv->limits;
    int64_t now = lk_loop_now(self->loop);
    s_fail_t *f = NULL;
    if (self->fail_threshold > 0) {
        char addr[48];
        s_host(conn->peer, addr, sizeof(addr));
        f = s_fail_find(self, addr, now);
    }
    int64_t delay = f ? s_delay(self, f->failures) : 0;
    if (delay == 0) {
        fe_auth_request_send(conn);
        return;
    }
    int64_t at = f->next_ms > now ? f->next_ms : now;
    if (at - now > self->fail_max_delay_ms) {
        s_refusal(self, conn, S_LOG_BACKOFF,
                  "CONNECT refused: too many failed logins from "
                  "this address (next turn in %" PRId64 " ms)",
                  at - now);
        fe_conn_refuse(conn, LK_RC_CONNECTION_RATE_EXCEEDED, "login back-off");
        return;
    }
    f->next_ms = at + delay;
    if (at == now) {
        fe_auth_request_send(conn);
        return;
    }
    /* held: the cron's auth timeout and retry count from the release time */
    conn->req_first_ms = at;
    conn->req_sent_ms = at;
    conn->lim.timer = lk_loop_timer(self->loop, at - now, false, s_held_release, conn);
    s_refusal(self, conn, S_LOG_HELD,
              "CONNECT held %" PRId64 " ms: failed logins from this "
              "address",
              at - now);
}

/* ---- publish rate and bandwidth -------------------------------------------------- */

int64_t fe_limits_bucket(double *tokens, int64_t *last_ms, int64_t now, double rate, double burst,
                         double cost)
{
    if (*last_ms == 0) {
        *tokens = burst;
        *last_ms = now;
    }
    if (now > *last_ms) {
        *tokens += rate * (double)(now - *last_ms) / 1000.0;
        if (*tokens > burst)
            *tokens = burst;
        *last_ms = now;
    }
    *tokens -= cost;
    if (*tokens >= 0)
        return 0;
    /* +1: the timer must not fire a hair before the debt is paid */
    return (int64_t)(-*tokens * 1000.0 / rate) + 1;
}

static void s_io_events(fe_conn_t *conn)
{
    fe_conn_io_events(conn);
}

static void s_resume(lk_loop_t *loop, void *arg)
{
    fe_conn_t *conn = arg;
    conn->lim.timer = 0;
    conn->lim.paused = false;
    if (conn->state == FE_CLOSED)
        return;
    /* reading again; the packets that waited in the read buffer at turn end */
    fe_conn_resume(conn);
}

/* charges one PUBLISH; pauses reading when in debt */
static void s_charge(fe_limits_t *self, fe_conn_t *conn, size_t bytes)
{
    if (self->pub_rate <= 0 && self->byte_rate <= 0)
        return;
    int64_t now = lk_loop_now(self->loop);
    int64_t last = conn->lim.refill_ms, last2 = conn->lim.refill_ms, wait = 0;
    if (self->pub_rate > 0)
        wait = fe_limits_bucket(&conn->lim.msg_tokens, &last, now, self->pub_rate,
                                self->pub_rate < 1 ? 1 : self->pub_rate, 1);
    if (self->byte_rate > 0) {
        int64_t w = fe_limits_bucket(&conn->lim.byte_tokens, &last2, now, self->byte_rate,
                                     self->byte_rate, (double)bytes);
        wait = w > wait ? w : wait;
    }
    conn->lim.refill_ms = now;
    if (wait == 0 || conn->lim.paused)
        return;
    conn->lim.paused = true;
    s_io_events(conn);
    conn->lim.timer = lk_loop_timer(self->loop, wait, false, s_resume, conn);
    s_refusal(self, conn, S_LOG_RATE,
              "publish rate limit reached: reading paused %" PRId64 " ms"
              " (logged once a connection)",
              wait);
}

/* ---- topics and subscriptions ---------------------------------------------------- */

int fe_limits_levels(const char *topic)
{
    if (strncmp(topic, "$share/", 7) == 0) {
        const char *slash = strchr(topic + 7, '/');
        topic = slash ? slash + 1 : topic + 7;
    }
    int n = 1;
    for (const char *p = topic; *p; p++)
        n += *p == '/';
    return n;
}

/* NULL when topic is within the limits, else why not */
static const char *s_topic_over(fe_limits_t *self, const char *topic)
{
    if (self->max_topic_len > 0 && (int64_t)strlen(topic) > self->max_topic_len)
        return "max_topic_length";
    if (self->max_levels > 0 && fe_limits_levels(topic) > self->max_levels)
        return "max_topic_levels";
    return NULL;
}

int fe_limits_publish(fe_conn_t *conn, const char *topic, uint8_t qos, uint16_t pid, size_t bytes)
{
    fe_limits_t *self = conn->srv->limits;
    s_charge(self, conn, bytes + strlen(topic));
    const char *over = s_topic_over(self, topic);
    if (!over)
        return 0;
    s_refusal(self, conn, S_LOG_TOPIC, "PUBLISH to a topic over %s refused", over);
    conn->srv->dropped++;
    if (conn->version != LK_MQTT_V5) {
        fe_conn_close(conn, 0, true, "topic over the limits (3.x has no refusal code)");
        return -1;
    }
    if (qos > 0) {
        lk_mqtt_packet_t p = {0};
        p.type = qos == 1 ? LK_MQTT_PUBACK : LK_MQTT_PUBREC;
        p.u.ack.packet_id = pid;
        p.u.ack.reason = LK_RC_TOPIC_NAME_INVALID;
        fe_conn_send(conn, &p);
    }
    return 1;
}

uint8_t fe_limits_subscribe(fe_conn_t *conn, const char *filter)
{
    fe_limits_t *self = conn->srv->limits;
    bool v5 = conn->version == LK_MQTT_V5;
    const char *over = s_topic_over(self, filter);
    if (over) {
        s_refusal(self, conn, S_LOG_TOPIC, "subscription to a filter over %s refused", over);
        return v5 ? LK_RC_TOPIC_FILTER_INVALID : 0x80;
    }
    if (self->max_subs > 0 && (int64_t)conn->n_subs >= self->max_subs) {
        if (fe_sub_find(conn, filter) >= 0)
            return 0; /* replaces one it holds: no new quota needed */
        s_refusal(self, conn, S_LOG_SUBS,
                  "subscription refused: max_subscriptions (%" PRId64 ") reached", self->max_subs);
        return v5 ? LK_RC_QUOTA_EXCEEDED : 0x80;
    }
    return 0;
}

/* ---- selftest -------------------------------------------------------------------- */

#define S_T(name, cond)                                                                            \
    do {                                                                                           \
        if (cond)                                                                                  \
            passed++;                                                                              \
        else {                                                                                     \
            failed++;                                                                              \
            printf("FAIL %s (%s:%d)\n", name, __FILE__, __LINE__);                                 \
        }                                                                                          \
        if (verbose && (cond))                                                                     \
            printf("PASS %s\n", name);                                                             \
    } while (0)

int fe_limits_test(bool verbose)
{
    int passed = 0, failed = 0;
    S_T("levels: one", fe_limits_levels("a") == 1);
    S_T("levels: three", fe_limits_levels("a/b/c") == 3);
    S_T("levels: empty levels count", fe_limits_levels("/a/") == 3);
    S_T("levels: $share prefix skipped", fe_limits_levels("$share/g/a/b") == 2);

    /* 10 msgs/s, burst 10: ten pass at once, the eleventh waits ~100 ms */
    double tok = 0;
    int64_t last = 0, now = 1000;
    int64_t w = 0;
    for (int i = 0; i < 10; i++)
        w |= fe_limits_bucket(&tok, &last, now, 10, 10, 1);
    S_T("bucket: burst passes", w == 0);
    w = fe_limits_bucket(&tok, &last, now, 10, 10, 1);
    S_T("bucket: over the burst waits ~100 ms", w >= 100 && w <= 102);
    w = fe_limits_bucket(&tok, &last, now + 100, 10, 10, 1);
    S_T("bucket: refilled debt, next waits again", w >= 100 && w <= 102);
    w = fe_limits_bucket(&tok, &last, now + 10000, 10, 10, 1);
    S_T("bucket: refill is capped at the burst", w == 0 && tok <= 9.0001);
    /* a message larger than the whole bucket passes and is paid for afterwards */
    double bt = 0;
    int64_t bl = 0;
    w = fe_limits_bucket(&bt, &bl, 5000, 1000, 1000, 3000);
    S_T("bucket: oversize message paid by waiting 2 s", w >= 2000 && w <= 2001);

    /* login back-off: a limits object on its own (no server) */
    lk_config_t *cfg = lk_config_parse("auth_fail_threshold 3\nauth_fail_delay_ms 100\n"
                                       "auth_fail_max_delay_ms 1000\nauth_fail_addresses 2\n",
                                       "test");
    lk_loop_t *loop = lk_loop_new();
    fe_limits_t *lim = fe_limits_new(cfg, loop);
    S_T("limits: new", lim != NULL);
    if (lim) {
        S_T("delay: below threshold", s_delay(lim, 2) == 0);
        S_T("delay: at threshold", s_delay(lim, 3) == 100);
        S_T("delay: doubles", s_delay(lim, 5) == 400);
        S_T("delay: capped", s_delay(lim, 30) == 1000);
        fe_server_t srv = {0};
        srv.limits = lim;
        fe_conn_t c = {0};
        c.srv = &srv;
        const char *peers[] = {"10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:3"};
        for (int k = 0; k < 3; k++) {
            snprintf(c.peer, sizeof(c.peer), "%s", peers[k]);
            for (int i = 0; i < 3; i++)
                fe_limits_auth_failed(&c, "bad username or password");
        }
        S_T("lru: bounded", zhashx_size(lim->fails) == 2);
        S_T("lru: oldest forgotten", zhashx_lookup(lim->fails, "10.0.0.1") == NULL);
        s_fail_t *f = zhashx_lookup(lim->fails, "10.0.0.3");
        S_T("lru: newest kept", f && f->failures == 3);
        snprintf(c.peer, sizeof(c.peer), "10.0.0.3:9");
        fe_limits_auth_failed(&c, "unavailable");
        S_T("fail: unavailable does not count", f && f->failures == 3);
        S_T("host: ipv6", (s_host("::1:1883", c.peer, sizeof(c.peer)), strcmp(c.peer, "::1") == 0));
        fe_limits_destroy(&lim);
    }
    lk_loop_destroy(&loop);
    lk_config_destroy(&cfg);
    cfg = lk_config_parse("auth_fail_delay_ms 0\n", "test");
    lim = fe_limits_new(cfg, NULL);
    S_T("limits: bad configuration refused", lim == NULL);
    fe_limits_destroy(&lim);
    lk_config_destroy(&cfg);
    if (verbose)
        printf("fe_limits: %d checks passed, %d failed\n", passed, failed);
    return failed ? -1 : 0;
}
