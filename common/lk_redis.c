/*  lk_redis: synchronous hiredis wrapper with reconnect, Redis Cluster routing and WAIT;
    see lk_redis.h. */
#include "lk_redis.h"
#include "lk_common.h"
#include "lk_selftest.h"
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define S_SLOTS 16384
#define S_REDIRECTS 5    /* MOVED/ASK hops for one command */
#define S_RETRY_MS 600   /* TRYAGAIN / CLUSTERDOWN / a dead master: how long to retry */
#define S_REFRESH_MS 100 /* at most one CLUSTER SLOTS in this period, unless forced */

/* one server's link: the single server, or a cluster node */
typedef struct {
    char *host;
    int port;             /* 0: host is a unix socket */
    redisContext *ctx;    /* NULL while not connected */
    int64_t last_fail_ms; /* throttles reconnect attempts and their log lines */
    bool dirty;           /* written since its last WAIT */
} s_node_t;

/* an appended command of a cluster pipeline, kept for a re-send after MOVED/ASK */
/* Redis Cluster has no transaction over slots: such a MULTI ... EXEC runs as a plain
   pipeline (each command atomic alone) with MULTI's, the QUEUEDs' and EXEC's replies made up */
enum { S_SYN_NONE = 0, S_SYN_OK, S_SYN_QUEUED, S_SYN_EXEC };

typedef struct {
    char *cmd; /* RESP */
    size_t len;
    int node;   /* -1: not sent (a MULTI waiting for its transaction's node) */
    bool write; /* may write, and WAIT is on: its node is dirty once it succeeded */
    bool in_txn;
    bool failed;       /* its node's link broke: the reply is NULL */
    int slot;          /* of its key, -1 keyless */
    int synth;         /* a transaction over several slots: S_SYN_* */
    int group;         /* a DEL/EXISTS... over slots split in parts: their count on the
                          first part, -1 on the others; one summed reply for them */
    redisReply *early; /* read ahead while a redirect drained its node */
} s_entry_t;

struct _lk_redis_t {
    s_node_t one; /* single-node mode: the server */
    int pending;  /* single node: appended commands whose replies are not read yet */
    int wait_replicas;
    int wait_timeout_ms;
    /* cluster mode */
    bool cluster;
    s_node_t *nodes;
    int n_nodes;
    int16_t *slots; /* slot -> node index, -1 unknown */
    int64_t map_ms;
    bool map_stale;
    s_entry_t *q; /* the pipeline: q[q_head .. q_len - 1] wait for their replies */
    size_t q_head, q_len, q_cap;
    bool txn;            /* a MULTI is held back until its EXEC */
    size_t txn_at;       /* its queue index */
    redisReply **tx_res; /* the replies of a made-up transaction so far */
    size_t n_tx_res;
    bool flushed;
};

lk_redis_t *lk_redis_new(const char *host, int port)
{
    lk_redis_t *self = lk_calloc(1, sizeof(*self));
    self->one.host = lk_strdup(host ? host : "127.0.0.1");
    self->one.port = port;
    self->wait_timeout_ms = 1000;
    return self;
}

static void s_node_drop(s_node_t *n)
{
    if (n->ctx)
        redisFree(n->ctx);
    n->ctx = NULL;
    n->dirty = false;
}

static void s_drop(lk_redis_t *self)
{
    s_node_drop(&self->one);
    self->pending = 0;
}

/* the links: the cluster's nodes, or the single server */
static s_node_t *s_nodes(lk_redis_t *self, int *n)
{
    *n = self->cluster ? self->n_nodes : 1;
    return self->cluster ? self->nodes : &self->one;
}

static void s_queue_clear(lk_redis_t *self)
{
    for (size_t i = self->q_head; i < self->q_len; i++) {
        free(self->q[i].cmd);
        if (self->q[i].early)
            freeReplyObject(self->q[i].early);
    }
    self->q_head = self->q_len = 0;
    self->txn = false;
    self->flushed = false;
    for (size_t i = 0; i < self->n_tx_res; i++)
        if (self->tx_res[i])
            freeReplyObject(self->tx_res[i]);
    self->n_tx_res = 0;
}

void lk_redis_destroy(lk_redis_t **self_p)
{
    lk_redis_t *self = *self_p;
    if (!self)
        return;
    s_drop(self);
    s_queue_clear(self);
    for (int i = 0; i < self->n_nodes; i++) {
        s_node_drop(&self->nodes[i]);
        free(self->nodes[i].host);
    }
    free(self->nodes);
    free(self->slots);
    free(self->q);
    free(self->tx_res);
    free(self->one.host);
    free(self);
    *self_p = NULL;
}

void lk_redis_set_wait(lk_redis_t *self, int replicas, int timeout_ms)
{
    self->wait_replicas = replicas > 0 ? replicas : 0;
    self->wait_timeout_ms = timeout_ms > 0 ? timeout_ms : 1000;
}

bool lk_redis_is_cluster(lk_redis_t *self)
{
    return self->cluster;
}

/* ---- slots ---------------------------------------------------------------------------- */

static uint16_t s_crc16(const char *buf, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint8_t)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

int lk_redis_key_slot(const char *key, size_t len)
{
    /* the tag: between the first '{' and the first '}' after it, when not empty */
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1)
            return s_crc16(open + 1, (size_t)(close - open - 1)) & (S_SLOTS - 1);
    }
    return s_crc16(key, len) & (S_SLOTS - 1);
}

/* argument i of a RESP command ("*N\r\n$L\r\n...\r\n"); false when absent */
static bool s_arg(const char *cmd, size_t len, int i, const char **p, size_t *l)
{
    const char *end = cmd + len, *c = cmd;
    if (c >= end || *c != '*')
        return false;
    long n = strtol(c + 1, NULL, 10);
    if (i >= n)
        return false;
    c = memchr(c, '\n', (size_t)(end - c));
    for (int k = 0; c && k <= i; k++) {
        c++;
        if (c >= end || *c != '$')
            return false;
        long al = strtol(c + 1, NULL, 10);
        c = memchr(c, '\n', (size_t)(end - c));
        if (!c || al < 0 || c + 1 + al > end)
            return false;
        if (k == i) {
            *p = c + 1;
            *l = (size_t)al;
            return true;
        }
        c = c + 1 + al + 1; /* past the data and its \r, onto \n */
    }
    return false;
}

static bool s_is(const char *p, size_t l, const char *name)
{
    return strlen(name) == l && strncasecmp(p, name, l) == 0;
}

/* commands that never write (no WAIT after them) */
static bool s_readonly(const char *p, size_t l)
{
    static const char *names[] = {
        "GET",     "MGET",  "HGET",     "HMGET",         "HGETALL", "HKEYS",   "HVALS",  "HLEN",
        "HEXISTS", "HSCAN", "SMEMBERS", "SISMEMBER",     "SCARD",   "SSCAN",   "EXISTS", "TTL",
        "PTTL",    "TYPE",  "ZRANGE",   "ZRANGEBYSCORE", "ZSCORE",  "ZCARD",   "ZSCAN",  "LRANGE",
        "LLEN",    "SCAN",  "KEYS",     "PING",          "INFO",    "DBSIZE",  "STRLEN", "CLUSTER",
        "WAIT",    "ECHO",  "TIME",     "ASKING",        "MULTI",   "DISCARD", NULL};
    for (int i = 0; names[i]; i++)
        if (s_is(p, l, names[i]))
            return true;
    return false;
}

/* the slot of a RESP command's key, -1 for a keyless command */
static int s_cmd_slot(const char *cmd, size_t len)
{
    const char *p, *k;
    size_t l, kl;
    if (!s_arg(cmd, len, 0, &p, &l))
        return -1;
    int at = 1;
    if (s_is(p, l, "EVAL") || s_is(p, l, "EVALSHA") || s_is(p, l, "FCALL")) {
        const char *np;
        size_t nl;
        if (!s_arg(cmd, len, 2, &np, &nl) || nl == 0 || np[0] == '0')
            return -1;
        at = 3;
    } else if (s_is(p, l, "PING") || s_is(p, l, "MULTI") || s_is(p, l, "EXEC") ||
               s_is(p, l, "DISCARD") || s_is(p, l, "INFO") || s_is(p, l, "FLUSHALL") ||
               s_is(p, l, "FLUSHDB") || s_is(p, l, "DBSIZE") || s_is(p, l, "SCAN") ||
               s_is(p, l, "KEYS") || s_is(p, l, "WAIT") || s_is(p, l, "CLUSTER") ||
               s_is(p, l, "CLIENT") || s_is(p, l, "SCRIPT") || s_is(p, l, "TIME") ||
               s_is(p, l, "CONFIG") || s_is(p, l, "ECHO") || s_is(p, l, "ASKING"))
        return -1;
    if (!s_arg(cmd, len, at, &k, &kl))
        return -1;
    return lk_redis_key_slot(k, kl);
}

/* ---- single node ---------------------------------------------------------------------- */

/* connects n if not connected, with the timeouts we want; 0, or -1 after a warning (at
   most one every 5 s per node) */
static int s_link(s_node_t *n)
{
    if (n->ctx)
        return 0;
    struct timeval tv = {1, 0};
    redisContext *c = n->port ? redisConnectWithTimeout(n->host, n->port, tv)
                              : redisConnectUnixWithTimeout(n->host, tv);
    if (!c || c->err) {
        int64_t now = lk_mono_ms();
        if (now - n->last_fail_ms > 5000)
            lk_warn("redis %s:%d: %s", n->host, n->port, c ? c->errstr : "no memory");
        n->last_fail_ms = now;
        if (c)
            redisFree(c);
        return -1;
    }
    /* commands must not hang the event loop forever on a stuck server */
    struct timeval cmd_tv = {5, 0};
    redisSetTimeout(c, cmd_tv);
    n->ctx = c;
    n->dirty = false;
    return 0;
}

static void s_copy(lk_redis_reply_t *dst, const redisReply *src)
{
    memset(dst, 0, sizeof(*dst));
    switch (src->type) {
    case REDIS_REPLY_INTEGER:
        dst->type = LK_REDIS_INT;
        dst->integer = src->integer;
        break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        dst->type = src->type == REDIS_REPLY_ERROR ? LK_REDIS_ERR : LK_REDIS_STR;
        dst->len = src->len;
        dst->str = lk_malloc(src->len + 1);
        memcpy(dst->str, src->str, src->len);
        dst->str[src->len] = 0;
        break;
    case REDIS_REPLY_ARRAY:
        dst->type = LK_REDIS_ARRAY;
        dst->count = src->elements;
        if (src->elements) {
            dst->items = lk_calloc(src->elements, sizeof(*dst->items));
            for (size_t i = 0; i < src->elements; i++)
                s_copy(&dst->items[i], src->element[i]);
        }
        break;
    default:
        dst->type = LK_REDIS_NIL;
        break;
    }
}

static void s_free_items(lk_redis_reply_t *r)
{
    for (size_t i = 0; i < r->count; i++)
        s_free_items(&r->items[i]);
    free(r->items);
    free(r->str);
}

void lk_redis_reply_free(lk_redis_reply_t **reply_p)
{
    lk_redis_reply_t *r = *reply_p;
    if (!r)
        return;
    s_free_items(r);
    free(r);
    *reply_p = NULL;
}

bool lk_redis_reply_failed(const lk_redis_reply_t *reply)
{
    return !reply || reply->type == LK_REDIS_ERR;
}

/* a reply made here: an error, a status string, or an empty array (text NULL) */
static lk_redis_reply_t *s_reply(lk_redis_type_t type, const char *text)
{
    lk_redis_reply_t *r = lk_calloc(1, sizeof(*r));
    r->type = type;
    if (text) {
        r->str = lk_strdup(text);
        r->len = strlen(text);
    }
    return r;
}

/* rr copied and freed; NULL stays NULL */
static lk_redis_reply_t *s_convert(redisReply *rr)
{
    if (!rr)
        return NULL;
    lk_redis_reply_t *r = lk_malloc(sizeof(*r));
    s_copy(r, rr);
    if (r->type == LK_REDIS_ERR)
        lk_warn("redis: %s", r->str);
    freeReplyObject(rr);
    return r;
}

static lk_redis_reply_t *s_wrap(lk_redis_t *self, redisReply *rr)
{
    if (!rr) {
        lk_warn("redis: %s", self->one.ctx ? self->one.ctx->errstr : "not connected");
        s_drop(self);
        return NULL;
    }
    return s_convert(rr);
}

/* WAIT on one connection; true when enough replicas have every write so far */
static bool s_wait_node(lk_redis_t *self, s_node_t *n)
{
    redisReply *w = redisCommand(n->ctx, "WAIT %d %d", self->wait_replicas, self->wait_timeout_ms);
    bool ok = w && w->type == REDIS_REPLY_INTEGER && w->integer >= self->wait_replicas;
    if (!ok)
        lk_warn("redis %s:%d: WAIT %d: %s %lld replica(s) acknowledged", n->host, n->port,
                self->wait_replicas, w ? "only" : "failed,",
                w && w->type == REDIS_REPLY_INTEGER ? w->integer : 0LL);
    if (w)
        freeReplyObject(w);
    return ok;
}

/* r ends a command or a pipeline: WAIT on every link written to since its last WAIT; r
   becomes an error when a write is not on enough replicas */
static lk_redis_reply_t *s_waited(lk_redis_t *self, lk_redis_reply_t *r)
{
    int n;
    s_node_t *nodes = s_nodes(self, &n);
    bool ok = true;
    for (int i = 0; i < n; i++) {
        if (!nodes[i].dirty)
            continue;
        nodes[i].dirty = false;
        if (self->wait_replicas && nodes[i].ctx)
            ok = s_wait_node(self, &nodes[i]) && ok;
    }
    if (ok || !r)
        return r;
    lk_redis_reply_free(&r);
    return s_reply(LK_REDIS_ERR, "LKWAIT write not acknowledged by enough replicas");
}

/* a RESP command that may write (any not known to be read-only) */
static bool s_cmd_write(const char *cmd, size_t len)
{
    const char *p;
    size_t l;
    return !s_arg(cmd, len, 0, &p, &l) || !s_readonly(p, l);
}

/* ---- cluster -------------------------------------------------------------------------- */

static int s_node_find(lk_redis_t *self, const char *host, int port, bool add)
{
    for (int i = 0; i < self->n_nodes; i++)
        if (self->nodes[i].port == port && strcmp(self->nodes[i].host, host) == 0)
            return i;
    if (!add)
        return -1;
    self->nodes = lk_realloc(self->nodes, (size_t)(self->n_nodes + 1) * sizeof(*self->nodes));
    s_node_t *n = &self->nodes[self->n_nodes];
    memset(n, 0, sizeof(*n));
    n->host = lk_strdup(host);
    n->port = port;
    return self->n_nodes++;
}

/* "host:port" (the host may be [v6]; empty: deflt, as a MOVED from a node that knows no
   address of its own says ":port"); node index or -1 */
static int s_node_parse_at(lk_redis_t *self, const char *addr, size_t len, const char *deflt)
{
    char buf[300];
    if (len == 0 || len >= sizeof(buf))
        return -1;
    memcpy(buf, addr, len);
    buf[len] = 0;
    char *colon = strrchr(buf, ':');
    if (!colon || (colon == buf && !deflt))
        return -1;
    *colon = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (port <= 0 || port > 65535 || (*end && *end != '@'))
        return -1;
    char *host = colon == buf ? (char *)deflt : buf;
    if (colon != buf && *host == '[' && colon[-1] == ']') {
        host++;
        colon[-1] = 0;
    }
    return s_node_find(self, host, (int)port, true);
}

static int s_node_connect(lk_redis_t *self, int i)
{
    return s_link(&self->nodes[i]);
}

/* a node's link broke: its unread entries fail, the map is to be refreshed */
static void s_node_broken(lk_redis_t *self, int i)
{
    s_node_t *n = &self->nodes[i];
    lk_warn("redis %s:%d: %s", n->host, n->port, n->ctx ? n->ctx->errstr : "not connected");
    s_node_drop(n);
    for (size_t k = self->q_head; k < self->q_len; k++)
        if (self->q[k].node == i && !self->q[k].early)
            self->q[k].failed = true;
    self->map_stale = true;
}

/* CLUSTER SLOTS from one node into the map; 0 or -1 */
static int s_map_from(lk_redis_t *self, int i)
{
    if (s_node_connect(self, i) != 0)
        return -1;
    redisReply *r = redisCommand(self->nodes[i].ctx, "CLUSTER SLOTS");
    if (!r) {
        s_node_broken(self, i);
        return -1;
    }
    int rc = -1;
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
        rc = 0;
        for (size_t k = 0; k < r->elements; k++) {
            redisReply *e = r->element[k];
            if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
                e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2)
                continue;
            long long lo = e->element[0]->integer, hi = e->element[1]->integer;
            redisReply *m = e->element[2];
            const char *host = m->element[0]->type == REDIS_REPLY_STRING && m->element[0]->len
                                   ? m->element[0]->str
                                   : self->nodes[i].host;
            int port = (int)m->element[1]->integer;
            if (lo < 0 || hi >= S_SLOTS || lo > hi || port <= 0)
                continue;
            int idx = s_node_find(self, host, port, true);
            for (long long s = lo; s <= hi; s++)
                self->slots[s] = (int16_t)idx;
        }
    }
    freeReplyObject(r);
    return rc;
}

/* the slot map from any node that answers (connected ones first); 0 or -1 */
static int s_map_refresh(lk_redis_t *self, bool force)
{
    int64_t now = lk_mono_ms();
    if (!force && now - self->map_ms < S_REFRESH_MS)
        return self->map_ms ? 0 : -1;
    self->map_ms = now;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < self->n_nodes; i++)
            if ((pass == 0) == (self->nodes[i].ctx != NULL) && s_map_from(self, i) == 0) {
                self->map_stale = false;
                return 0;
            }
    self->map_ms = 0;
    return -1;
}

static int s_any_node(lk_redis_t *self)
{
    for (int i = 0; i < self->n_nodes; i++)
        if (self->nodes[i].ctx)
            return i;
    for (int s = 0; s < S_SLOTS; s++)
        if (self->slots[s] >= 0 && s_node_connect(self, self->slots[s]) == 0)
            return self->slots[s];
    for (int i = 0; i < self->n_nodes; i++)
        if (s_node_connect(self, i) == 0)
            return i;
    return -1;
}

/* the node a command of this slot goes to, connected; -1 when none answers */
static int s_route(lk_redis_t *self, int slot)
{
    if (self->map_stale || !self->map_ms)
        s_map_refresh(self, false);
    if (slot < 0)
        return s_any_node(self);
    int i = self->slots[slot];
    if (i < 0)
        return s_any_node(self); /* unknown: its MOVED tells */
    if (s_node_connect(self, i) == 0)
        return i;
    self->map_stale = true;
    return -1;
}

int lk_redis_set_cluster(lk_redis_t *self, const char *seeds)
{
    const char *p = seeds;
    int added = 0;
    if (!self->slots) {
        self->slots = lk_malloc(S_SLOTS * sizeof(*self->slots));
        for (int s = 0; s < S_SLOTS; s++)
            self->slots[s] = -1;
    }
    while (p && *p) {
        p += strspn(p, " \t,");
        size_t l = strcspn(p, " \t,");
        if (!l)
            break;
        if (s_node_parse_at(self, p, l, NULL) < 0) {
            lk_error("redis_cluster: '%.*s' is not host:port", (int)l, p);
            return -1;
        }
        added++;
        p += l;
    }
    if (!added) {
        lk_error("redis_cluster: no seed node");
        return -1;
    }
    self->cluster = true;
    return 0;
}

/* send the RESP command to node i; 0 or -1 (the node is then broken) */
static int s_send(lk_redis_t *self, int i, const char *cmd, size_t len)
{
    if (s_node_connect(self, i) != 0)
        return -1;
    if (redisAppendFormattedCommand(self->nodes[i].ctx, cmd, len) != REDIS_OK) {
        s_node_broken(self, i);
        return -1;
    }
    return 0;
}

/* sends a held-back transaction q[txn_at .. q_len - 1] (MULTI ... EXEC/DISCARD): whole to
   one master when its keys share a slot, else command by command (see S_SYN_*). An entry
   not sent is marked failed: it answers NULL when read. */
static void s_txn_send(lk_redis_t *self)
{
    int slot = -1;
    bool one = true;
    for (size_t k = self->txn_at; k < self->q_len; k++) {
        int s = self->q[k].slot;
        if (s >= 0 && slot >= 0 && s != slot)
            one = false;
        if (s >= 0 && slot < 0)
            slot = s;
    }
    const char *p;
    size_t l;
    bool discard = s_arg(self->q[self->q_len - 1].cmd, self->q[self->q_len - 1].len, 0, &p, &l) &&
                   s_is(p, l, "DISCARD");
    if (one || discard) {
        int node = s_route(self, slot);
        for (size_t k = self->txn_at; k < self->q_len; k++) {
            if (node < 0 || s_send(self, node, self->q[k].cmd, self->q[k].len) != 0) {
                self->q[k].failed = true;
                node = -1;
                continue;
            }
            self->q[k].node = node;
            self->q[k].in_txn = true;
        }
        return;
    }
    for (size_t k = self->txn_at; k < self->q_len; k++) {
        s_entry_t *e = &self->q[k];
        if (k == self->txn_at) {
            e->synth = S_SYN_OK;
            continue;
        }
        if (k == self->q_len - 1) {
            e->synth = S_SYN_EXEC;
            continue;
        }
        e->synth = S_SYN_QUEUED;
        int node = s_route(self, e->slot);
        if (node < 0 || s_send(self, node, e->cmd, e->len) != 0) {
            e->failed = true;
            continue;
        }
        e->node = node;
    }
}

/* a new entry at the end of the pipeline */
static s_entry_t *s_q_push(lk_redis_t *self)
{
    if (self->q_len == self->q_cap) {
        self->q_cap = self->q_cap ? self->q_cap * 2 : 16;
        self->q = lk_realloc(self->q, self->q_cap * sizeof(*self->q));
    }
    return &self->q[self->q_len++];
}

static int s_cluster_append_one(lk_redis_t *self, char *cmd, size_t len, int group)
{
    const char *name;
    size_t nl;
    if (!s_arg(cmd, len, 0, &name, &nl)) {
        free(cmd);
        return -1;
    }
    if (self->q_head == self->q_len)
        self->q_head = self->q_len = 0;
    s_entry_t e = {.cmd = cmd,
                   .len = len,
                   .node = -1,
                   .write = self->wait_replicas && !s_readonly(name, nl),
                   .slot = s_cmd_slot(cmd, len),
                   .group = group};
    self->flushed = false;
    if (s_is(name, nl, "MULTI") && !self->txn) {
        self->txn = true;
        self->txn_at = self->q_len;
    }
    if (self->txn) {
        /* held back: where it goes depends on every key up to EXEC */
        *s_q_push(self) = e;
        if (s_is(name, nl, "EXEC") || s_is(name, nl, "DISCARD")) {
            self->txn = false;
            s_txn_send(self);
        }
        return 0;
    }
    int node = s_route(self, e.slot);
    if (node < 0 || s_send(self, node, cmd, len) != 0) {
        free(cmd);
        return -1;
    }
    e.node = node;
    *s_q_push(self) = e;
    return 0;
}

/* DEL, UNLINK, EXISTS, TOUCH of keys in several slots (mqtt_user:<u> with mqtt_acl:<u>, say)
   become one command a key, their integer replies summed into one */
static int s_cluster_append(lk_redis_t *self, char *cmd, size_t len)
{
    const char *name, *k;
    size_t nl, kl;
    if (!s_arg(cmd, len, 0, &name, &nl) || cmd[0] != '*')
        return s_cluster_append_one(self, cmd, len, 1);
    long argc = strtol(cmd + 1, NULL, 10);
    bool splittable = argc > 2 && argc < 1000 &&
                      (s_is(name, nl, "DEL") || s_is(name, nl, "UNLINK") ||
                       s_is(name, nl, "EXISTS") || s_is(name, nl, "TOUCH"));
    int slot = -1;
    bool spans = false;
    for (long i = 1; splittable && i < argc && s_arg(cmd, len, (int)i, &k, &kl); i++) {
        int sl = lk_redis_key_slot(k, kl);
        spans = spans || (slot >= 0 && sl != slot);
        slot = sl;
    }
    if (!spans)
        return s_cluster_append_one(self, cmd, len, 1);
    char cname[16];
    snprintf(cname, sizeof(cname), "%.*s", (int)(nl < 15 ? nl : 15), name);
    for (long i = 1; i < argc; i++) {
        char *part = NULL;
        int plen = -1;
        if (s_arg(cmd, len, (int)i, &k, &kl)) {
            const char *argv[2] = {cname, k};
            size_t lens[2] = {strlen(cname), kl};
            plen = redisFormatCommandArgv(&part, 2, argv, lens);
        }
        int rc = plen < 0
                     ? -1
                     : s_cluster_append_one(self, part, (size_t)plen, i == 1 ? (int)argc - 1 : -1);
        if (rc != 0 && i == 1) {
            free(cmd);
            return -1;
        }
        if (rc != 0) {
            /* a placeholder keeps the group whole: its part answers NULL */
            *s_q_push(self) = (s_entry_t){.node = -1, .failed = true, .slot = -1, .group = -1};
        }
    }
    free(cmd);
    return 0;
}

/* the replies of a split command's parts, summed; NULL or the first error wins */
static redisReply *s_sum(redisReply *a, redisReply *b)
{
    if (!a || a->type == REDIS_REPLY_ERROR) {
        if (b)
            freeReplyObject(b);
        return a;
    }
    if (!b || b->type == REDIS_REPLY_ERROR) {
        freeReplyObject(a);
        return b;
    }
    if (a->type == REDIS_REPLY_INTEGER && b->type == REDIS_REPLY_INTEGER)
        a->integer += b->integer;
    freeReplyObject(b);
    return a;
}

/* every queued entry of node i after the head gets its reply read ahead */
static int s_drain(lk_redis_t *self, int i)
{
    for (size_t k = self->q_head + 1; k < self->q_len; k++) {
        s_entry_t *e = &self->q[k];
        if (e->node != i || e->early || e->failed)
            continue;
        void *rr = NULL;
        if (redisGetReply(self->nodes[i].ctx, &rr) != REDIS_OK) {
            s_node_broken(self, i);
            return -1;
        }
        e->early = rr;
    }
    return 0;
}

/* the reply of the head entry from its node, following redirections */
static redisReply *s_head_reply(lk_redis_t *self)
{
    s_entry_t *e = &self->q[self->q_head];
    if (e->failed || e->node < 0)
        return NULL;
    redisReply *rr = e->early;
    e->early = NULL;
    if (!rr) {
        if (!self->nodes[e->node].ctx) {
            e->failed = true;
            return NULL;
        }
        void *v = NULL;
        if (redisGetReply(self->nodes[e->node].ctx, &v) != REDIS_OK) {
            s_node_broken(self, e->node);
            return NULL;
        }
        rr = v;
    }
    int64_t deadline = lk_mono_ms() + S_RETRY_MS;
    for (int hop = 0; rr && rr->type == REDIS_REPLY_ERROR && !e->in_txn && hop < S_REDIRECTS + 20;
         hop++) {
        bool moved = strncmp(rr->str, "MOVED ", 6) == 0;
        bool ask = strncmp(rr->str, "ASK ", 4) == 0;
        bool busy =
            strncmp(rr->str, "TRYAGAIN", 8) == 0 || strncmp(rr->str, "CLUSTERDOWN", 11) == 0;
        if (!moved && !ask && !busy)
            break;
        int target = e->node;
        if (moved || ask) {
            if (hop >= S_REDIRECTS)
                break;
            const char *sp = strchr(rr->str + (moved ? 6 : 4), ' ');
            int slot = atoi(rr->str + (moved ? 6 : 4));
            target =
                sp ? s_node_parse_at(self, sp + 1, strlen(sp + 1), self->nodes[e->node].host) : -1;
            if (target < 0)
                break;
            if (moved && slot >= 0 && slot < S_SLOTS) {
                if (self->slots[slot] != target)
                    lk_notice("redis: slot %d moved to %s:%d", slot, self->nodes[target].host,
                              self->nodes[target].port);
                self->slots[slot] = (int16_t)target;
                self->map_stale = true;
            }
        } else {
            if (lk_mono_ms() > deadline)
                break;
            usleep(50 * 1000);
            s_map_refresh(self, true);
            int slot = s_cmd_slot(e->cmd, e->len);
            if (slot >= 0 && self->slots[slot] >= 0)
                target = self->slots[slot];
        }
        freeReplyObject(rr);
        rr = NULL;
        if (s_node_connect(self, target) != 0 || s_drain(self, target) != 0)
            return NULL;
        redisContext *c = self->nodes[target].ctx;
        if (!c)
            return NULL;
        if (ask && redisAppendCommand(c, "ASKING") != REDIS_OK) {
            s_node_broken(self, target);
            return NULL;
        }
        if (redisAppendFormattedCommand(c, e->cmd, e->len) != REDIS_OK) {
            s_node_broken(self, target);
            return NULL;
        }
        void *v = NULL;
        if (ask) {
            if (redisGetReply(c, &v) != REDIS_OK) {
                s_node_broken(self, target);
                return NULL;
            }
            freeReplyObject(v);
            v = NULL;
        }
        if (redisGetReply(c, &v) != REDIS_OK) {
            s_node_broken(self, target);
            return NULL;
        }
        rr = v;
        e->node = target;
    }
    if (rr && rr->type == REDIS_REPLY_ERROR && strncmp(rr->str, "MOVED ", 6) == 0)
        self->map_stale = true;
    return rr;
}

static void s_flush_all(lk_redis_t *self)
{
    if (self->flushed)
        return;
    self->flushed = true;
    for (int i = 0; i < self->n_nodes; i++) {
        redisContext *c = self->nodes[i].ctx;
        int done = 0;
        while (c && !done)
            if (redisBufferWrite(c, &done) != REDIS_OK) {
                s_node_broken(self, i);
                break;
            }
    }
}

/* the head entry is answered (rr, not taken): a write makes its node dirty; it leaves */
static void s_head_done(lk_redis_t *self, const redisReply *rr)
{
    s_entry_t *e = &self->q[self->q_head++];
    if (rr && rr->type != REDIS_REPLY_ERROR && e->write && e->node >= 0)
        self->nodes[e->node].dirty = true;
    free(e->cmd);
    if (e->early)
        freeReplyObject(e->early);
}

/* EXEC's reply of a made-up transaction: the replies gathered, or an error when one of
   them is missing */
static lk_redis_reply_t *s_txn_exec_reply(lk_redis_t *self)
{
    bool lost = false;
    for (size_t i = 0; i < self->n_tx_res; i++)
        lost = lost || !self->tx_res[i];
    lk_redis_reply_t *made =
        lost ? s_reply(LK_REDIS_ERR, "LKLINK a command of the transaction got no reply")
             : s_reply(LK_REDIS_ARRAY, NULL);
    if (!lost && self->n_tx_res) {
        made->count = self->n_tx_res;
        made->items = lk_calloc(self->n_tx_res, sizeof(*made->items));
    }
    for (size_t i = 0; i < self->n_tx_res; i++) {
        if (!lost)
            s_copy(&made->items[i], self->tx_res[i]);
        if (self->tx_res[i])
            freeReplyObject(self->tx_res[i]);
    }
    self->n_tx_res = 0;
    return made;
}

static lk_redis_reply_t *s_cluster_get_reply(lk_redis_t *self)
{
    if (self->q_head >= self->q_len)
        return NULL;
    s_flush_all(self);
    s_entry_t *e = &self->q[self->q_head];
    redisReply *rr = NULL;
    lk_redis_reply_t *made = NULL;
    if (e->synth == S_SYN_OK)
        made = s_reply(LK_REDIS_STR, "OK");
    else if (e->synth == S_SYN_EXEC)
        made = s_txn_exec_reply(self);
    else
        rr = s_head_reply(self);
    /* the other parts of a split command: one summed reply for the caller */
    int parts = e->group;
    for (int part = 1; part < parts && self->q_head + 1 < self->q_len; part++) {
        s_head_done(self, rr);
        rr = s_sum(rr, s_head_reply(self));
    }
    e = &self->q[self->q_head];
    bool queued = e->synth == S_SYN_QUEUED;
    s_head_done(self, rr);
    if (queued) {
        self->tx_res = lk_realloc(self->tx_res, (self->n_tx_res + 1) * sizeof(*self->tx_res));
        self->tx_res[self->n_tx_res++] = rr;
        made = s_reply(LK_REDIS_STR, "QUEUED");
        rr = NULL;
    }
    lk_redis_reply_t *r = made ? made : s_convert(rr);
    if (!r)
        lk_warn("redis: a cluster command failed (link lost)");
    if (self->q_head == self->q_len) {
        self->q_head = self->q_len = 0;
        r = s_waited(self, r);
    }
    return r;
}

/* one command in cluster mode: a pipeline of one; retried while its master is away */
static lk_redis_reply_t *s_cluster_cmd(lk_redis_t *self, char *cmd, size_t len)
{
    if (self->q_head < self->q_len || self->txn) {
        /* a command's reply must not be confused with an earlier pipeline's */
        lk_error("redis: command issued with %zu pipelined replies unread",
                 self->q_len - self->q_head);
        for (size_t k = self->q_head; k < self->q_len; k++)
            if (self->q[k].node >= 0 && !self->q[k].early)
                s_node_drop(&self->nodes[self->q[k].node]);
        s_queue_clear(self);
    }
    int64_t deadline = lk_mono_ms() + S_RETRY_MS;
    for (;;) {
        /* a copy: a command that never reached a node may be sent again */
        char *copy = lk_malloc(len + 1);
        memcpy(copy, cmd, len);
        copy[len] = 0;
        if (s_cluster_append(self, copy, len) == 0) {
            free(cmd);
            return s_cluster_get_reply(self);
        }
        if (lk_mono_ms() > deadline)
            break;
        usleep(50 * 1000);
        s_map_refresh(self, true);
    }
    free(cmd);
    return NULL;
}

/* ---- the API -------------------------------------------------------------------------- */

int lk_redis_connect(lk_redis_t *self)
{
    if (!self->cluster)
        return s_link(&self->one);
    if (self->map_ms && !self->map_stale && s_any_node(self) >= 0)
        return 0;
    if (s_map_refresh(self, true) != 0)
        return -1;
    return s_any_node(self) >= 0 ? 0 : -1;
}

bool lk_redis_connected(lk_redis_t *self)
{
    int n;
    s_node_t *nodes = s_nodes(self, &n);
    for (int i = 0; i < n; i++)
        if (nodes[i].ctx)
            return true;
    return false;
}

/* one RESP command on the single server, reconnecting once */
static lk_redis_reply_t *s_single_cmd(lk_redis_t *self, const char *cmd, size_t len)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (s_link(&self->one) != 0)
            return NULL;
        if (self->pending) {
            /* a command's reply must not be confused with an earlier pipeline's */
            lk_error("redis: command issued with %d pipelined replies unread", self->pending);
            s_drop(self);
            continue;
        }
        void *v = NULL;
        if (redisAppendFormattedCommand(self->one.ctx, cmd, len) == REDIS_OK &&
            redisGetReply(self->one.ctx, &v) == REDIS_OK && v) {
            redisReply *rr = v;
            if (self->wait_replicas && rr->type != REDIS_REPLY_ERROR && s_cmd_write(cmd, len))
                self->one.dirty = true;
            return s_waited(self, s_wrap(self, rr));
        }
        s_drop(self);
    }
    return NULL;
}

/* one formatted command (cmd ours; len < 0: formatting failed) in either mode */
static lk_redis_reply_t *s_cmd(lk_redis_t *self, char *cmd, long long len)
{
    if (len < 0)
        return NULL;
    if (self->cluster)
        return s_cluster_cmd(self, cmd, (size_t)len);
    lk_redis_reply_t *r = s_single_cmd(self, cmd, (size_t)len);
    free(cmd);
    return r;
}

/* one formatted command (cmd ours; len < 0: formatting failed) appended in either mode */
static int s_append(lk_redis_t *self, char *cmd, long long len)
{
    if (len < 0)
        return -1;
    if (self->cluster)
        return s_cluster_append(self, cmd, (size_t)len);
    int rc = -1;
    if (s_link(&self->one) == 0) {
        if (redisAppendFormattedCommand(self->one.ctx, cmd, (size_t)len) == REDIS_OK) {
            if (self->wait_replicas && s_cmd_write(cmd, (size_t)len))
                self->one.dirty = true;
            self->pending++;
            rc = 0;
        } else {
            s_drop(self);
        }
    }
    free(cmd);
    return rc;
}

lk_redis_reply_t *lk_redis_cmdv(lk_redis_t *self, int argc, const char **argv, const size_t *lens)
{
    char *cmd = NULL;
    long long len = redisFormatCommandArgv(&cmd, argc, argv, lens);
    return s_cmd(self, cmd, len);
}

lk_redis_reply_t *lk_redis_cmd(lk_redis_t *self, const char *fmt, ...)
{
    char *cmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    return s_cmd(self, cmd, len);
}

/* the nth distinct master of the slot map, -1 past the last */
static int s_master(lk_redis_t *self, int nth)
{
    int seen = 0;
    for (int i = 0; i < self->n_nodes; i++) {
        bool owns = false;
        for (int sl = 0; sl < S_SLOTS && !owns; sl++)
            owns = self->slots[sl] == i;
        if (owns && seen++ == nth)
            return i;
    }
    return -1;
}

int lk_redis_masters(lk_redis_t *self)
{
    if (!self->cluster)
        return 1;
    if (lk_redis_connect(self) != 0)
        return 0;
    int n = 0;
    while (s_master(self, n) >= 0)
        n++;
    return n;
}

lk_redis_reply_t *lk_redis_cmdv_at(lk_redis_t *self, int nth, int argc, const char **argv,
                                   const size_t *lens)
{
    if (!self->cluster)
        return nth == 0 ? lk_redis_cmdv(self, argc, argv, lens) : NULL;
    int i = s_master(self, nth);
    if (i < 0 || self->q_head < self->q_len || s_node_connect(self, i) != 0)
        return NULL;
    redisReply *rr = redisCommandArgv(self->nodes[i].ctx, argc, argv, lens);
    if (!rr) {
        s_node_broken(self, i);
        return NULL;
    }
    return s_convert(rr);
}

double lk_redis_ping_ms(lk_redis_t *self)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    lk_redis_reply_t *r = lk_redis_cmd(self, "PING");
    clock_gettime(CLOCK_MONOTONIC, &b);
    bool ok = !lk_redis_reply_failed(r);
    lk_redis_reply_free(&r);
    if (!ok)
        return -1;
    return (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
}

int lk_redis_appendv(lk_redis_t *self, int argc, const char **argv, const size_t *lens)
{
    char *cmd = NULL;
    long long len = redisFormatCommandArgv(&cmd, argc, argv, lens);
    return s_append(self, cmd, len);
}

int lk_redis_append(lk_redis_t *self, const char *fmt, ...)
{
    char *cmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    return s_append(self, cmd, len);
}

lk_redis_reply_t *lk_redis_get_reply(lk_redis_t *self)
{
    if (self->cluster)
        return s_cluster_get_reply(self);
    if (!self->one.ctx || self->pending == 0)
        return NULL;
    void *rr = NULL;
    if (redisGetReply(self->one.ctx, &rr) != REDIS_OK) {
        lk_warn("redis: %s", self->one.ctx->errstr);
        s_drop(self);
        return NULL;
    }
    self->pending--;
    lk_redis_reply_t *r = s_wrap(self, rr);
    return self->pending == 0 ? s_waited(self, r) : r;
}

/* ---- configuration -------------------------------------------------------------------- */

int lk_redis_configure(lk_redis_t *self, lk_config_t *config)
{
    int64_t replicas = lk_config_get_int(config, "redis_wait_replicas", 0);
    int64_t timeout = lk_config_get_int(config, "redis_wait_timeout_ms", 1000);
    if (replicas < 0 || replicas > 64 || timeout < 1 || timeout > 60000) {
        lk_error("redis_wait_replicas (0..64) or redis_wait_timeout_ms (1..60000) out of range");
        return -1;
    }
    lk_redis_set_wait(self, (int)replicas, (int)timeout);
    int n = lk_config_count(config, "redis_cluster");
    for (int i = 0; i < n; i++) {
        const char *seeds = lk_config_get_nth(config, "redis_cluster", i);
        /* an empty value (LATCHKEY_REDIS_CLUSTER="") keeps single-node mode */
        if (seeds && *seeds && lk_redis_set_cluster(self, seeds) != 0)
            return -1;
    }
    return 0;
}

lk_redis_t *lk_redis_new_config(lk_config_t *config)
{
    int64_t port = lk_config_get_int(config, "redis_port", 6379);
    if (port < 0 || port > 65535) {
        lk_error("redis_port: %lld is out of range", (long long)port);
        return NULL;
    }
    lk_redis_t *self = lk_redis_new(lk_config_get(config, "redis_host", "127.0.0.1"), (int)port);
    if (lk_redis_configure(self, config) != 0)
        lk_redis_destroy(&self);
    return self;
}

/* ---- selftest ------------------------------------------------------------------------- */

/* a private redis-server in its own folder under dir; its pid once up, or -1 */
static pid_t s_test_server(const char *dir, int port, bool cluster)
{
    char sub[256];
    snprintf(sub, sizeof(sub), "%s/%d", dir, port);
    mkdir(sub, 0700);
    return port > 0 ? lk_selftest_redis_start(sub, port, cluster) : -1;
}

/* a case of the selftest: its line, and rc -1 when it failed */
#define S_CHECK(name, cond)                                                                        \
    do {                                                                                           \
        bool ok_ = (cond);                                                                         \
        if (!ok_ || verbose)                                                                       \
            fprintf(stderr, "lk_redis: %s: %s\n", name, ok_ ? "ok" : "FAILED");                    \
        if (!ok_)                                                                                  \
            rc = -1;                                                                               \
    } while (0)

/* the reply's string is want */
static bool s_test_str(lk_redis_reply_t *r, const char *want)
{
    bool ok = r && r->type == LK_REDIS_STR && strcmp(r->str, want) == 0;
    lk_redis_reply_t *x = r;
    lk_redis_reply_free(&x);
    return ok;
}

/* polls cmd on a single-node client until its reply contains want (~10 s) */
static bool s_test_until(lk_redis_t *r, const char *cmd, const char *want)
{
    for (int i = 0; i < 200; i++) {
        lk_redis_reply_t *x = lk_redis_cmd(r, cmd);
        bool ok = x && x->str && strstr(x->str, want);
        lk_redis_reply_free(&x);
        if (ok)
            return true;
        usleep(50 * 1000);
    }
    return false;
}

/* against real servers: WAIT on one server, then a 3-master cluster made here */
static int s_test_live(bool verbose)
{
    int rc = 0;
    char dir[] = "/tmp/lk-redis-test-XXXXXX";
    if (!mkdtemp(dir))
        return -1;
    /* one server, no replica: WAIT 1 cannot be met, so a write is refused; reads pass */
    int port = lk_selftest_port(false);
    pid_t one = s_test_server(dir, port, false);
    lk_redis_t *r = lk_redis_new("127.0.0.1", port);
    S_CHECK("single: up", one > 0);
    lk_redis_set_wait(r, 1, 50);
    lk_redis_reply_t *x = lk_redis_cmd(r, "SET k v");
    S_CHECK("single: write without a replica refused",
            x && x->type == LK_REDIS_ERR && strncmp(x->str, "LKWAIT", 6) == 0);
    lk_redis_reply_free(&x);
    S_CHECK("single: read not waited for", s_test_str(lk_redis_cmd(r, "GET k"), "v"));
    lk_redis_append(r, "GET k");
    lk_redis_append(r, "SET k w");
    x = lk_redis_get_reply(r);
    S_CHECK("single: pipeline's first reply", s_test_str(x, "v"));
    x = lk_redis_get_reply(r);
    S_CHECK("single: pipeline with a write refused at its end", x && x->type == LK_REDIS_ERR);
    lk_redis_reply_free(&x);
    lk_redis_set_wait(r, 0, 0);
    S_CHECK("single: no wait", s_test_str(lk_redis_cmd(r, "SET k v"), "OK"));
    lk_redis_destroy(&r);
    lk_selftest_redis_stop(one);

    /* three masters, the slots split in three */
    int ports[3];
    pid_t pids[3] = {-1, -1, -1};
    lk_redis_t *admin[3] = {NULL, NULL, NULL};
    bool up = true;
    for (int i = 0; i < 3; i++) {
        ports[i] = lk_selftest_port(true);
        pids[i] = s_test_server(dir, ports[i], true);
        admin[i] = lk_redis_new("127.0.0.1", ports[i]);
        up = up && pids[i] > 0;
    }
    for (int i = 0; up && i < 3; i++) {
        x = lk_redis_cmd(admin[i], "CLUSTER ADDSLOTSRANGE %d %d", i * 5462,
                         i == 2 ? S_SLOTS - 1 : i * 5462 + 5461);
        up = !lk_redis_reply_failed(x);
        lk_redis_reply_free(&x);
        if (i) {
            x = lk_redis_cmd(admin[0], "CLUSTER MEET 127.0.0.1 %d", ports[i]);
            up = up && !lk_redis_reply_failed(x);
            lk_redis_reply_free(&x);
        }
    }
    for (int i = 0; up && i < 3; i++)
        up = s_test_until(admin[i], "CLUSTER INFO", "cluster_state:ok");
    S_CHECK("cluster: three masters up", up);
    char seeds[64];
    snprintf(seeds, sizeof(seeds), "127.0.0.1:%d", ports[1]);
    r = lk_redis_new("127.0.0.1", 1);
    lk_redis_set_cluster(r, seeds);
    S_CHECK("cluster: connect from one seed", up && lk_redis_connect(r) == 0);
    S_CHECK("cluster: three masters known", up && lk_redis_masters(r) == 3);
    /* a pipeline over every master: replies in append order */
    for (int i = 0; i < 40; i++)
        lk_redis_append(r, "SET key%d val%d", i, i);
    for (int i = 0; i < 40; i++)
        lk_redis_append(r, "GET key%d", i);
    bool order = true;
    for (int i = 0; i < 40; i++)
        order = s_test_str(lk_redis_get_reply(r), "OK") && order;
    for (int i = 0; i < 40; i++) {
        char want[16];
        snprintf(want, sizeof(want), "val%d", i);
        order = s_test_str(lk_redis_get_reply(r), want) && order;
    }
    S_CHECK("cluster: pipeline over masters in order", order);
    bool spread = true;
    for (int i = 0; i < 3; i++) {
        x = lk_redis_cmd(admin[i], "DBSIZE");
        spread = spread && x && x->type == LK_REDIS_INT && x->integer > 0;
        lk_redis_reply_free(&x);
    }
    S_CHECK("cluster: keys on every master", spread);
    /* a transaction within one slot, and one over slots (made up) */
    const char *tx[][3] = {{"MULTI", NULL, NULL},
                           {"SET", "t:{a}1", "x"},
                           {"SET", "t:{a}2", "y"},
                           {"EXEC", NULL, NULL}};
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            tx[1][1] = "t:foo";
            tx[2][1] = "t:bar";
        }
        for (int i = 0; i < 4; i++) {
            size_t lens[3] = {strlen(tx[i][0]), tx[i][1] ? strlen(tx[i][1]) : 0,
                              tx[i][2] ? strlen(tx[i][2]) : 0};
            lk_redis_appendv(r, tx[i][1] ? 3 : 1, tx[i], lens);
        }
        bool ok = s_test_str(lk_redis_get_reply(r), "OK") &&
                  s_test_str(lk_redis_get_reply(r), "QUEUED") &&
                  s_test_str(lk_redis_get_reply(r), "QUEUED");
        x = lk_redis_get_reply(r);
        ok = ok && x && x->type == LK_REDIS_ARRAY && x->count == 2 && x->items[1].str &&
             strcmp(x->items[1].str, "OK") == 0;
        lk_redis_reply_free(&x);
        ok = ok && s_test_str(lk_redis_cmd(r, "GET %s", tx[2][1]), "y");
        S_CHECK(pass ? "cluster: MULTI over slots" : "cluster: MULTI in one slot", ok);
    }
    /* DEL / EXISTS over slots: one command a key, the counts summed */
    x = lk_redis_cmd(r, "EXISTS key1 key2 key3 nokey");
    bool split = x && x->type == LK_REDIS_INT && x->integer == 3;
    lk_redis_reply_free(&x);
    lk_redis_append(r, "MULTI");
    lk_redis_append(r, "DEL key1 key2 nokey");
    lk_redis_append(r, "SET t:foo z");
    lk_redis_append(r, "EXEC");
    split = split && s_test_str(lk_redis_get_reply(r), "OK") &&
            s_test_str(lk_redis_get_reply(r), "QUEUED") &&
            s_test_str(lk_redis_get_reply(r), "QUEUED");
    x = lk_redis_get_reply(r);
    split = split && x && x->type == LK_REDIS_ARRAY && x->count == 2 &&
            x->items[0].type == LK_REDIS_INT && x->items[0].integer == 2;
    lk_redis_reply_free(&x);
    x = lk_redis_cmd(r, "DEL key3 key1");
    split = split && x && x->type == LK_REDIS_INT && x->integer == 1;
    lk_redis_reply_free(&x);
    S_CHECK("cluster: DEL/EXISTS over slots split and summed", split);
    /* a script on its key's master; WAIT 1 without replicas refuses the write */
    S_CHECK("cluster: EVAL routed by key",
            s_test_str(lk_redis_cmd(r, "EVAL %s 1 %s", "return redis.call('GET', KEYS[1])", "key7"),
                       "val7"));
    lk_redis_set_wait(r, 1, 50);
    x = lk_redis_cmd(r, "SET key8 z");
    S_CHECK("cluster: WAIT without replicas refuses",
            x && x->type == LK_REDIS_ERR && strncmp(x->str, "LKWAIT", 6) == 0);
    lk_redis_reply_free(&x);
    lk_redis_set_wait(r, 0, 0);
    /* a master gone: its keys fail fast, the others still answer */
    lk_selftest_redis_stop(pids[2]);
    pids[2] = -1;
    int64_t t0 = lk_mono_ms();
    bool others = true;
    for (int i = 0; i < 40; i++) {
        x = lk_redis_cmd(r, "GET key%d", i);
        char k[16];
        snprintf(k, sizeof(k), "key%d", i);
        if (lk_redis_key_slot(k, strlen(k)) / 5462 < 2)
            others = others && x && x->type != LK_REDIS_ERR;
        lk_redis_reply_free(&x);
    }
    S_CHECK("cluster: a dead master's keys fail, the others' answer", others);
    S_CHECK("cluster: failing keys fail within the retry bound", lk_mono_ms() - t0 < 40 * 1000);
    lk_redis_destroy(&r);
    for (int i = 0; i < 3; i++) {
        lk_redis_destroy(&admin[i]);
        lk_selftest_redis_stop(pids[i]);
    }
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        rc = -1;
    return rc;
}

int lk_redis_test(bool verbose)
{
    int rc = 0;
    /* CRC16/XMODEM's check value, and slots Redis itself reports (CLUSTER KEYSLOT) */
    S_CHECK("crc16 check value", s_crc16("123456789", 9) == 0x31C3);
    S_CHECK("slot foo", lk_redis_key_slot("foo", 3) == 12182);
    S_CHECK("slot bar", lk_redis_key_slot("bar", 3) == 5061);
    S_CHECK("slot hello", lk_redis_key_slot("hello", 5) == 866);
    S_CHECK("slot empty key", lk_redis_key_slot("", 0) == 0);
    /* the tag rule */
    S_CHECK("tag: same slot", lk_redis_key_slot("{user1000}.following", 20) ==
                                  lk_redis_key_slot("{user1000}.followers", 20));
    S_CHECK("tag: slot of the tag",
            lk_redis_key_slot("lk:sess:{c1}", 12) == lk_redis_key_slot("c1", 2));
    S_CHECK("tag: first braces only",
            lk_redis_key_slot("foo{bar}{zap}", 13) == lk_redis_key_slot("bar", 3));
    S_CHECK("tag: empty tag hashes the whole key",
            lk_redis_key_slot("foo{}{bar}", 10) == s_crc16("foo{}{bar}", 10) % S_SLOTS);
    S_CHECK("tag: nested", lk_redis_key_slot("foo{{bar}}zap", 13) == lk_redis_key_slot("{bar", 4));
    S_CHECK("tag: no closing brace",
            lk_redis_key_slot("foo{bar", 7) == s_crc16("foo{bar", 7) % S_SLOTS);
    /* the key of a formatted command */
    char *cmd = NULL;
    int len = redisFormatCommand(&cmd, "HSET lk:q:{c1} 7 x");
    S_CHECK("cmd slot: argv[1]", s_cmd_slot(cmd, (size_t)len) == lk_redis_key_slot("c1", 2));
    redisFreeCommand(cmd);
    len = redisFormatCommand(&cmd, "EVAL %s 1 lk:sess:{c9} a", "return 1");
    S_CHECK("cmd slot: EVAL's first key",
            s_cmd_slot(cmd, (size_t)len) == lk_redis_key_slot("c9", 2));
    redisFreeCommand(cmd);
    len = redisFormatCommand(&cmd, "EVAL %s 0 x", "return 1");
    S_CHECK("cmd slot: EVAL without keys", s_cmd_slot(cmd, (size_t)len) == -1);
    redisFreeCommand(cmd);
    len = redisFormatCommand(&cmd, "PING");
    S_CHECK("cmd slot: PING", s_cmd_slot(cmd, (size_t)len) == -1);
    redisFreeCommand(cmd);
    bool ro = s_readonly("hgetall", 7) && !s_readonly("HSET", 4);
    const char *names[] = {"GET", "DEL"};
    for (int i = 0; i < 2; i++) {
        len = redisFormatCommand(&cmd, "%s x", names[i]);
        ro = ro && s_cmd_write(cmd, (size_t)len) == (i == 1);
        redisFreeCommand(cmd);
    }
    S_CHECK("readonly", ro && s_cmd_write("", 0));
    /* seeds */
    lk_redis_t *r = lk_redis_new("127.0.0.1", 1);
    S_CHECK("seeds parse",
            lk_redis_set_cluster(r, "127.0.0.1:7000, [::1]:7001 localhost:7002") == 0 &&
                r->n_nodes == 3 && r->nodes[1].port == 7001 &&
                strcmp(r->nodes[1].host, "::1") == 0 && lk_redis_is_cluster(r));
    S_CHECK("seeds: bad one refused", lk_redis_set_cluster(r, "nohost") != 0);
    lk_redis_destroy(&r);
    lk_config_t *cfg = lk_config_parse("redis_port 1\nredis_cluster 127.0.0.1:1\n"
                                       "redis_wait_replicas 1\nredis_wait_timeout_ms 200\n",
                                       "t");
    r = lk_redis_new_config(cfg);
    S_CHECK("config", r && r->cluster && r->wait_replicas == 1 && r->wait_timeout_ms == 200);
    /* nothing listens on port 1: a command fails, it does not hang or crash */
    lk_redis_reply_t *rep = r ? lk_redis_cmd(r, "GET lk:x:{a}") : NULL;
    S_CHECK("dead cluster: NULL", rep == NULL);
    lk_redis_destroy(&r);
    lk_config_destroy(&cfg);
    if (system("command -v redis-server >/dev/null 2>&1") == 0) {
        if (s_test_live(verbose) != 0)
            rc = -1;
    } else {
        fprintf(stderr, "lk_redis: redis-server not installed: live cases skipped\n");
    }
#undef S_CHECK
    return rc;
}
