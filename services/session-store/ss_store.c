/*  ss_store: the session store's Redis layer (see ss_store.h for the contract).

    Every change is one pipeline through lk_redis (append every command, then read every
    reply), so a StoreBatch of any size costs one round trip. The in-memory map is the
    index: which clients have a persistent session, where each is connected, its queue
    length and last store id. Messages, subscriptions and retained messages live only in
    Redis and are read when needed (SessionOpen, router resync).

    Layout (docs/architecture.md); {<client>} is a Redis Cluster hash tag, so one
    client's keys share a slot:
        lk:sess:{<client>}  hash  node, node_epoch, expiry, disconnected_at,
                                  sub:<filter> -> packed lk.Subscription
        lk:sessions         set   clients with a persistent session
        lk:q:{<client>}     hash  store id -> packed lk.Deliver
        lk:rel:{<client>}   hash  store id -> packet id of a PUBREL sent
        lk:rx:{<client>}    set   inbound QoS 2 packet ids PUBRECed, not yet released
        lk:qseq:{<client>}  str   last store id handed out
        lk:retain           hash  topic -> packed lk.Msg */
#include "ss_store.h"
#include "ss_codec.h"
#include "lk_common.h"
#include "lk_redis.h"
#include "lk_layout.h"
#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#define SS_DEFAULT_MAX_QUEUED 1000
#define SS_LOAD_CHUNK 500
#define SS_DROP_LOG_MS 60000

/* Replaces the sub:* fields of a session hash in one atomic step: deleting the old set
   and writing the new one separately could lose every subscription on a failure in
   between. ARGV: field, value, field, value, ... */
static const char s_replace_subs_lua[] =
    "local f = redis.call('HKEYS', KEYS[1]) "
    "for i = 1, #f do "
    "  if string.sub(f[i], 1, 4) == 'sub:' then redis.call('HDEL', KEYS[1], f[i]) end "
    "end "
    "for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end "
    "return 1";

/* Stores a client's new messages under ids taken from its counter in the same atomic
   step: replicas that briefly both store for one client (ownership moving) never hand
   out an id twice. KEYS: lk:qseq:<c>, lk:q:<c>; ARGV: the packed messages. Returns the
   counter after. */
static const char s_put_lua[] =
    "local n = redis.call('INCRBY', KEYS[1], #ARGV) "
    "for i = 1, #ARGV do redis.call('HSET', KEYS[2], n - #ARGV + i, ARGV[i]) end "
    "return n";

struct _ss_store_t {
    ss_owns_fn *owns; /* replicas: does this one own the client now (NULL: all) */
    void *owns_arg;
    bool shared; /* other replicas write the same Redis */
    lk_redis_t *redis;
    zhashx_t *sessions; /* client -> ss_session_t; the key is the session's client */
    zhashx_t *node_names; /* node -> its one shared name string */
    uint32_t max_queued;
    uint32_t forced_expiry; /* s, for SS_EXPIRY_NEVER sessions; 0 = never */
    uint64_t dropped;       /* over quota, since start */
    uint64_t mark;          /* batch generation for ss_session_t.mark */
    ss_session_t **touched; /* sessions of the current batch */
    size_t touched_cap;
    ss_buf_t key; /* scratch: hiredis copies arguments at append time, */
    ss_buf_t val; /* so one buffer each serves a whole pipeline */
};

/* A pipeline in progress: appends stop at the first failure (the link is gone, and a
   reconnect in the middle would split the pipeline over two connections); every reply
   appended is read back, so the connection is never left with replies pending. */
typedef struct {
    lk_redis_t *redis;
    int count;
    int read;
    bool failed;
} s_pipe_t;

static void s_pipe_begin(s_pipe_t *p, lk_redis_t *redis)
{
    p->redis = redis;
    p->count = p->read = 0;
    p->failed = false;
}

static void s_pipe_cmd(s_pipe_t *p, int argc, const char **argv, const size_t *lens)
{
    if (p->failed)
        return;
    if (lk_redis_appendv(p->redis, argc, argv, lens) != 0) {
        p->failed = true;
        return;
    }
    p->count++;
}

/* a command of NUL-terminated strings, NULL-terminated list */
static void s_pipe_str(s_pipe_t *p, const char *arg, ...)
{
    const char *argv[16];
    size_t lens[16];
    int argc = 0;
    va_list ap;
    va_start(ap, arg);
    for (const char *a = arg; a; a = va_arg(ap, const char *)) {
        assert(argc < 16);
        argv[argc] = a;
        lens[argc++] = strlen(a);
    }
    va_end(ap);
    s_pipe_cmd(p, argc, argv, lens);
}

/* next reply, or NULL when it failed (the pipeline is then marked failed) */
static lk_redis_reply_t *s_pipe_next(s_pipe_t *p)
{
    if (p->read >= p->count)
        return NULL;
    p->read++;
    lk_redis_reply_t *r = lk_redis_get_reply(p->redis);
    if (lk_redis_reply_failed(r)) {
        p->failed = true;
        lk_redis_reply_free(&r);
    }
    return r;
}

static void s_pipe_skip(s_pipe_t *p)
{
    lk_redis_reply_t *r = s_pipe_next(p);
    lk_redis_reply_free(&r);
}

/* reads what is left; 0 when every command succeeded */
static int s_pipe_end(s_pipe_t *p)
{
    while (p->read < p->count)
        s_pipe_skip(p);
    return p->failed ? -1 : 0;
}

/* <prefix>{<client>}: the braces are Redis Cluster's hash tag, so every key of a client
   lives in one slot (a client id holding '}' still maps all its keys to one slot) */
static const char *s_key(ss_store_t *self, const char *prefix, const char *client)
{
    size_t pl = strlen(prefix), cl = strlen(client);
    ss_buf_reserve(&self->key, pl + cl + 3);
    memcpy(self->key.data, prefix, pl);
    self->key.data[pl] = '{';
    memcpy(self->key.data + pl + 1, client, cl);
    memcpy(self->key.data + pl + 1 + cl, "}", 2);
    self->key.size = pl + cl + 2;
    return (const char *)self->key.data;
}

/* argv[0] = cmd, argv[1] = the key <prefix><client>, the rest filled by the caller */
static void s_pipe_key_cmd(ss_store_t *self, s_pipe_t *p, const char *cmd, const char *prefix,
                           const char *client, size_t argc, const char **argv, size_t *lens)
{
    argv[0] = cmd;
    lens[0] = strlen(cmd);
    argv[1] = s_key(self, prefix, client);
    lens[1] = self->key.size;
    s_pipe_cmd(p, (int)argc, argv, lens);
}

/* "sub:<filter>", the field of a subscription in lk:sess:<client>; *len: its length */
static char *s_sub_field(const char *filter, size_t *len)
{
    size_t fl = strlen(filter);
    char *f = lk_malloc(fl + 5);
    memcpy(f, "sub:", 4);
    memcpy(f + 4, filter, fl + 1);
    *len = fl + 4;
    return f;
}

/* argv from argn on: field and packed value of each subscription (those without a filter
   left out); fields[i] / bufs[i] hold what argv points to, for the caller to free. Returns
   the new argn. */
static size_t s_argv_subs(Lk__Subscription **subs, size_t n, const char **argv, size_t *lens,
                          size_t argn, char **fields, ss_buf_t *bufs)
{
    for (size_t i = 0; i < n; i++) {
        if (!subs[i] || !subs[i]->filter || !*subs[i]->filter)
            continue;
        argv[argn] = fields[i] = s_sub_field(subs[i]->filter, &lens[argn]);
        argn++;
        ss_codec_pack_subscription(subs[i], &bufs[i]);
        argv[argn] = (const char *)bufs[i].data;
        lens[argn++] = bufs[i].size;
    }
    return argn;
}

static uint64_t s_reply_u64(const lk_redis_reply_t *r)
{
    if (!r)
        return 0;
    if (r->type == LK_REDIS_INT)
        return r->integer > 0 ? (uint64_t)r->integer : 0;
    if (r->type == LK_REDIS_STR && r->str)
        return strtoull(r->str, NULL, 10);
    return 0;
}

static void s_session_destroy(void **item_p)
{
    ss_session_t *s = *item_p;
    if (!s)
        return;
    free(s->client);
    free(s);
    *item_p = NULL;
}

static void s_name_free(void **item)
{
    free(*item);
    *item = NULL;
}

static zhashx_t *s_sessions_new(void)
{
    zhashx_t *h = zhashx_new();
    /* the key is the session's own client string: no copy per entry */
    zhashx_set_key_duplicator(h, NULL);
    zhashx_set_key_destructor(h, NULL);
    zhashx_set_destructor(h, s_session_destroy);
    return h;
}

static ss_session_t *s_session_add(ss_store_t *self, const char *client)
{
    ss_session_t *s = lk_calloc(1, sizeof(*s));
    s->client = lk_strdup(client);
    s->max_queued = self->max_queued;
    zhashx_insert(self->sessions, s->client, s);
    return s;
}

/* Node names are few and every session names one: one shared copy of each, owned by the
   store, instead of a copy per session (which was 32 bytes per connected client). */
static const char *s_node_name(ss_store_t *self, const char *node)
{
    char *n = zhashx_lookup(self->node_names, node);
    if (!n) {
        n = lk_strdup(node);
        zhashx_insert(self->node_names, node, n);
    }
    return n;
}

static void s_session_set_node(ss_store_t *self, ss_session_t *s, const char *node,
                               uint64_t epoch)
{
    s->node = node && *node ? (char *)s_node_name(self, node) : NULL;
    s->node_epoch = s->node ? epoch : 0;
    if (!s->node)
        s->conn = 0;
}

static void s_session_forget(ss_store_t *self, ss_session_t *s)
{
    zhashx_delete(self->sessions, s->client);
}

ss_store_t *ss_store_new(const char *host, int port)
{
    ss_store_t *self = lk_calloc(1, sizeof(*self));
    self->redis = lk_redis_new(host, port);
    self->sessions = s_sessions_new();
    self->node_names = zhashx_new();
    zhashx_set_destructor(self->node_names, s_name_free);
    self->max_queued = SS_DEFAULT_MAX_QUEUED;
    return self;
}

int ss_store_configure(ss_store_t *self, lk_config_t *cfg)
{
    return lk_redis_configure(self->redis, cfg);
}

int ss_store_migrate(ss_store_t *self)
{
    return lk_layout_migrate(self->redis);
}

void ss_store_destroy(ss_store_t **self_p)
{
    ss_store_t *self = *self_p;
    if (!self)
        return;
    zhashx_destroy(&self->sessions);
    zhashx_destroy(&self->node_names);
    lk_redis_destroy(&self->redis);
    free(self->touched);
    ss_buf_release(&self->key);
    ss_buf_release(&self->val);
    free(self);
    *self_p = NULL;
}

void ss_store_set_max_queued(ss_store_t *self, uint32_t max_queued)
{
    self->max_queued = max_queued;
}

void ss_store_set_forced_expiry(ss_store_t *self, uint32_t seconds)
{
    self->forced_expiry = seconds;
}

/* one client's record, counter and queue length: three commands in p, their replies for
   s_record_ok / s_record_apply */
static void s_pipe_record(ss_store_t *self, s_pipe_t *p, const char *client)
{
    s_pipe_str(p, "HMGET", s_key(self, "lk:sess:", client), "node", "node_epoch", "expiry",
               "disconnected_at", "conn", NULL);
    s_pipe_str(p, "GET", s_key(self, "lk:qseq:", client), NULL);
    s_pipe_str(p, "HLEN", s_key(self, "lk:q:", client), NULL);
}

/* the HMGET of s_pipe_record found a session record */
static bool s_record_ok(const lk_redis_reply_t *rec)
{
    return rec && rec->type == LK_REDIS_ARRAY && rec->count == 5 &&
           rec->items[2].type != LK_REDIS_NIL;
}

/* a persistent session as the replies of s_pipe_record say (s_record_ok(rec)) */
static void s_record_apply(ss_store_t *self, ss_session_t *s, const lk_redis_reply_t *rec,
                           const lk_redis_reply_t *seq, const lk_redis_reply_t *len)
{
    s_session_set_node(self, s, rec->items[0].str, s_reply_u64(&rec->items[1]));
    s->expiry = (uint32_t)s_reply_u64(&rec->items[2]);
    s->disconnected_at = (int64_t)s_reply_u64(&rec->items[3]);
    s->conn = s->node ? s_reply_u64(&rec->items[4]) : 0;
    s->persistent = true;
    s->qseq = s_reply_u64(seq);
    s->qlen = (size_t)s_reply_u64(len);
}

/* the next SSCAN page of lk:sessions from *cursor (advanced): an array reply whose
   items[1] holds the members; NULL when Redis failed */
static lk_redis_reply_t *s_scan_sessions(ss_store_t *self, uint64_t *cursor)
{
    lk_redis_reply_t *r = lk_redis_cmd(self->redis, "SSCAN lk:sessions %llu COUNT %d",
                                       (unsigned long long)*cursor, SS_LOAD_CHUNK);
    if (lk_redis_reply_failed(r) || r->type != LK_REDIS_ARRAY || r->count != 2 ||
        r->items[1].type != LK_REDIS_ARRAY) {
        lk_redis_reply_free(&r);
        return NULL;
    }
    *cursor = s_reply_u64(&r->items[0]);
    return r;
}

static void s_write_records(ss_store_t *self, zlistx_t *clients);

static bool s_owns(ss_store_t *self, const ss_session_t *s)
{
    return ss_store_owns(self, s->client);
}

void ss_store_set_owner(ss_store_t *self, ss_owns_fn *fn, void *arg)
{
    self->owns = fn;
    self->owns_arg = arg;
    self->shared = fn != NULL;
}

void ss_store_mark_stale(ss_store_t *self, bool all)
{
    for (ss_session_t *s = zhashx_first(self->sessions); s; s = zhashx_next(self->sessions))
        if (all || !s_owns(self, s))
            s->stale = true;
}

bool ss_store_needs_refresh(ss_store_t *self, const char *client)
{
    if (!self->shared)
        return false;
    ss_session_t *s = zhashx_lookup(self->sessions, client);
    return !s || s->stale;
}

bool ss_store_owns(ss_store_t *self, const char *client)
{
    return !self->owns || self->owns(client, self->owns_arg);
}

int ss_store_refresh(ss_store_t *self, const char **clients, size_t n, ss_holds_fn *holds,
                     void *arg)
{
    if (n == 0)
        return 0;
    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    for (size_t i = 0; i < n; i++)
        s_pipe_record(self, &p, clients[i]);
    lk_redis_reply_t **r = lk_calloc(3 * n, sizeof(*r));
    for (size_t i = 0; i < 3 * n; i++)
        r[i] = s_pipe_next(&p);
    int rc = s_pipe_end(&p);
    int64_t now = lk_wall_ms();
    zlistx_t *gone = zlistx_new();
    zlistx_set_destructor(gone, (zlistx_destructor_fn *)zstr_free);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        lk_redis_reply_t *rec = r[3 * i], *seq = r[3 * i + 1], *len = r[3 * i + 2];
        ss_session_t *s = zhashx_lookup(self->sessions, clients[i]);
        if (!s_record_ok(rec)) {
            /* no session in Redis; a registration of a clean session we did not keep
               current is not trusted either (its frontend registers it again) */
            if (s && (s->persistent || s->stale))
                s_session_forget(self, s);
            continue;
        }
        if (!s)
            s = s_session_add(self, clients[i]);
        s_record_apply(self, s, rec, seq, len);
        if (!s->disconnected_at && (!s->node || (holds && !holds(s->node, s->node_epoch, arg)))) {
            s->disconnected_at = now; /* its node is gone: offline since now */
            zlistx_add_end(gone, lk_strdup(s->client));
        }
        s->stale = false;
    }
    for (size_t i = 0; i < 3 * n; i++)
        lk_redis_reply_free(&r[i]);
    free(r);
    /* so that the next owner counts its expiry from the same moment */
    if (zlistx_size(gone))
        s_write_records(self, gone);
    zlistx_destroy(&gone);
    return rc;
}

ss_session_t *ss_store_session(ss_store_t *self, const char *client)
{
    return zhashx_lookup(self->sessions, client);
}

size_t ss_store_size(ss_store_t *self)
{
    return zhashx_size(self->sessions);
}

uint64_t ss_store_dropped(ss_store_t *self)
{
    return self->dropped;
}

/* HSET of the session's record fields (not its subscriptions) */
static void s_append_record(ss_store_t *self, s_pipe_t *p, const char *client, const char *node,
                            uint64_t epoch, uint64_t conn, uint32_t expiry,
                            int64_t disconnected_at)
{
    char e[24], c[24], x[16], d[24];
    snprintf(e, sizeof(e), "%" PRIu64, epoch);
    snprintf(c, sizeof(c), "%" PRIu64, conn);
    snprintf(x, sizeof(x), "%" PRIu32, expiry);
    snprintf(d, sizeof(d), "%" PRId64, disconnected_at);
    s_pipe_str(p, "HSET", s_key(self, "lk:sess:", client), "node", node ? node : "", "node_epoch",
               e, "conn", c, "expiry", x, "disconnected_at", d, NULL);
}

/* every key of a session, and its lk:sessions membership */
static void s_append_delete(ss_store_t *self, s_pipe_t *p, const char *client)
{
    s_pipe_str(p, "DEL", s_key(self, "lk:sess:", client), NULL);
    s_pipe_str(p, "DEL", s_key(self, "lk:q:", client), NULL);
    s_pipe_str(p, "DEL", s_key(self, "lk:rel:", client), NULL);
    s_pipe_str(p, "DEL", s_key(self, "lk:rx:", client), NULL);
    s_pipe_str(p, "DEL", s_key(self, "lk:qseq:", client), NULL);
    s_pipe_str(p, "SREM", "lk:sessions", client, NULL);
}

/* EVAL of s_replace_subs_lua for the session's new subscription set */
static void s_append_replace_subs(ss_store_t *self, s_pipe_t *p, const char *client,
                                  Lk__Subscription **subs, size_t n)
{
    size_t argc = 4 + 2 * n;
    const char **argv = lk_calloc(argc, sizeof(*argv));
    size_t *lens = lk_calloc(argc, sizeof(*lens));
    ss_buf_t *bufs = lk_calloc(n ? n : 1, sizeof(*bufs));
    char **fields = lk_calloc(n ? n : 1, sizeof(*fields));
    argv[0] = "EVAL";
    argv[1] = s_replace_subs_lua;
    argv[2] = "1";
    argv[3] = s_key(self, "lk:sess:", client);
    lens[3] = self->key.size;
    size_t argn = s_argv_subs(subs, n, argv, lens, 4, fields, bufs);
    for (size_t i = 0; i < 3; i++)
        lens[i] = strlen(argv[i]);
    s_pipe_cmd(p, (int)argn, argv, lens);
    for (size_t i = 0; i < n; i++) {
        free(fields[i]);
        ss_buf_release(&bufs[i]);
    }
    free(fields);
    free(bufs);
    free(lens);
    free(argv);
}

/* the sub:* fields of an HGETALL reply of lk:sess:<client>, unpacked */
static Lk__Subscription **s_parse_subs(const lk_redis_reply_t *r, size_t *n_out)
{
    *n_out = 0;
    if (!r || r->type != LK_REDIS_ARRAY || r->count < 2)
        return NULL;
    Lk__Subscription **subs = lk_calloc(r->count / 2, sizeof(*subs));
    size_t n = 0;
    for (size_t i = 0; i + 1 < r->count; i += 2) {
        const lk_redis_reply_t *f = &r->items[i], *v = &r->items[i + 1];
        if (!f->str || f->len < 4 || memcmp(f->str, "sub:", 4) != 0 || !v->str)
            continue;
        Lk__Subscription *sub = ss_codec_unpack_subscription(v->str, v->len);
        if (!sub) {
            lk_warn("redis: unreadable subscription '%s' skipped", f->str);
            continue;
        }
        subs[n++] = sub;
    }
    *n_out = n;
    return subs;
}

static void s_free_subs(Lk__Subscription **subs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ss_codec_subscription_free(&subs[i]);
    free(subs);
}

//  --------------------------------------------------------------------------
//  Loading

/* one SSCAN page of lk:sessions: reads each member's record, queue length and counter */
static int s_load_page(ss_store_t *self, zhashx_t *into, const lk_redis_reply_t *members,
                       zlistx_t *stale)
{
    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    for (size_t i = 0; i < members->count; i++)
        s_pipe_record(self, &p, members->items[i].str ? members->items[i].str : "");
    for (size_t i = 0; i < members->count && !p.failed; i++) {
        const char *c = members->items[i].str ? members->items[i].str : "";
        lk_redis_reply_t *rec = s_pipe_next(&p);
        lk_redis_reply_t *seq = s_pipe_next(&p);
        lk_redis_reply_t *len = s_pipe_next(&p);
        if (rec && seq && len && !zhashx_lookup(into, c)) {
            if (!s_record_ok(rec))
                zlistx_add_end(stale, lk_strdup(c)); /* member without a record */
            else {
                ss_session_t *s = lk_calloc(1, sizeof(*s));
                s->client = lk_strdup(c);
                s->max_queued = self->max_queued;
                s_record_apply(self, s, rec, seq, len);
                /* a record without node nor disconnect time: offline since now */
                if (!s->node && !s->disconnected_at)
                    s->disconnected_at = lk_wall_ms();
                zhashx_insert(into, s->client, s);
            }
        }
        lk_redis_reply_free(&rec);
        lk_redis_reply_free(&seq);
        lk_redis_reply_free(&len);
    }
    return s_pipe_end(&p);
}

int ss_store_discover(ss_store_t *self)
{
    uint64_t cursor = 0;
    do {
        lk_redis_reply_t *r = s_scan_sessions(self, &cursor);
        if (!r)
            return -1;
        const lk_redis_reply_t *m = &r->items[1];
        for (size_t i = 0; i < m->count; i++)
            if (m->items[i].str && !zhashx_lookup(self->sessions, m->items[i].str)) {
                ss_session_t *s = s_session_add(self, m->items[i].str);
                s->persistent = true;
                s->stale = true;
            }
        lk_redis_reply_free(&r);
    } while (cursor != 0);
    return 0;
}

void ss_store_stale_owned(ss_store_t *self, zlistx_t *list, size_t max)
{
    for (ss_session_t *s = zhashx_first(self->sessions); s && zlistx_size(list) < max;
         s = zhashx_next(self->sessions))
        if (s->stale && s_owns(self, s))
            zlistx_add_end(list, lk_strdup(s->client));
}

int ss_store_load(ss_store_t *self)
{
    zhashx_t *fresh = s_sessions_new();
    zlistx_t *stale = zlistx_new();
    zlistx_set_destructor(stale, (zlistx_destructor_fn *)zstr_free);
    uint64_t cursor = 0;
    int rc = 0;
    do {
        lk_redis_reply_t *r = s_scan_sessions(self, &cursor);
        if (!r) {
            rc = -1;
            break;
        }
        rc = s_load_page(self, fresh, &r->items[1], stale);
        lk_redis_reply_free(&r);
    } while (rc == 0 && cursor != 0);

    if (rc == 0) {
        zhashx_destroy(&self->sessions);
        self->sessions = fresh;
        /* replicas: what we read may change under our siblings until we own it */
        if (self->shared)
            ss_store_mark_stale(self, true);
        for (char *c = zlistx_first(stale); c; c = zlistx_next(stale)) {
            lk_warn("redis: lk:sessions lists '%s' without a session record; removed", c);
            lk_redis_reply_t *r = lk_redis_cmd(self->redis, "SREM lk:sessions %s", c);
            lk_redis_reply_free(&r);
        }
    } else
        zhashx_destroy(&fresh);
    zlistx_destroy(&stale);
    return rc;
}

//  --------------------------------------------------------------------------
//  Sessions

typedef struct {
    uint64_t id;
    Lk__Deliver *deliver;
} s_pending_t;

static int s_pending_cmp(const void *a, const void *b)
{
    uint64_t x = ((const s_pending_t *)a)->id, y = ((const s_pending_t *)b)->id;
    return x < y ? -1 : x > y;
}

/* <cmd> <prefix><client> id... (HDEL of stored copies, SADD / SREM of packet ids) */
static void s_append_ids(ss_store_t *self, s_pipe_t *p, const char *cmd, const char *prefix,
                         const char *client, const uint64_t *ids, size_t n)
{
    const char **argv = lk_calloc(n + 2, sizeof(*argv));
    size_t *lens = lk_calloc(n + 2, sizeof(*lens));
    char *nums = lk_malloc(n * 24);
    for (size_t i = 0; i < n; i++) {
        char *num = nums + i * 24;
        lens[i + 2] = (size_t)snprintf(num, 24, "%" PRIu64, ids[i]);
        argv[i + 2] = num;
    }
    s_pipe_key_cmd(self, p, cmd, prefix, client, n + 2, argv, lens);
    free(nums);
    free(lens);
    free(argv);
}

/* two commands: the copies, then their released marks (the first reply counts deletions) */
static void s_append_hdel_ids(ss_store_t *self, s_pipe_t *p, const char *client,
                              const uint64_t *ids, size_t n)
{
    s_append_ids(self, p, "HDEL", "lk:q:", client, ids, n);
    s_append_ids(self, p, "HDEL", "lk:rel:", client, ids, n);
}

/* QoS 2 copies the client PUBRECed: kept, marked with the packet id to re-send PUBREL on */
static void s_append_released(ss_store_t *self, s_pipe_t *p, const char *client,
                              const uint64_t *ids, const uint32_t *pids, size_t n)
{
    const char **argv = lk_calloc(2 * n + 2, sizeof(*argv));
    size_t *lens = lk_calloc(2 * n + 2, sizeof(*lens));
    char *nums = lk_malloc(n * 48);
    for (size_t i = 0; i < n; i++) {
        char *num = nums + i * 48;
        lens[2 * i + 2] = (size_t)snprintf(num, 24, "%" PRIu64, ids[i]);
        argv[2 * i + 2] = num;
        lens[2 * i + 3] = (size_t)snprintf(num + 24, 24, "%" PRIu32, pids[i]);
        argv[2 * i + 3] = num + 24;
    }
    s_pipe_key_cmd(self, p, "HSET", "lk:rel:", client, 2 * n + 2, argv, lens);
    free(nums);
    free(lens);
    free(argv);
}

/* The HGETALL reply of lk:q:<client> as pending Delivers sorted by store id; expired and
   unreadable entries are deleted. Updates the session's qlen and qseq. */
/* the packet id lk:rel:<client> records for store id, or 0 */
static uint32_t s_released_pid(const lk_redis_reply_t *rel, uint64_t id)
{
    size_t pairs = rel && rel->type == LK_REDIS_ARRAY ? rel->count / 2 : 0;
    for (size_t i = 0; i < pairs; i++)
        if (s_reply_u64(&rel->items[2 * i]) == id)
            return (uint32_t)s_reply_u64(&rel->items[2 * i + 1]);
    return 0;
}

static void s_parse_pending(ss_store_t *self, ss_session_t *s, const lk_redis_reply_t *r,
                            const lk_redis_reply_t *rel, ss_open_result_t *result)
{
    size_t pairs = r && r->type == LK_REDIS_ARRAY ? r->count / 2 : 0;
    s_pending_t *list = lk_calloc(pairs ? pairs : 1, sizeof(*list));
    uint64_t *gone = lk_calloc(pairs ? pairs : 1, sizeof(*gone));
    size_t n = 0, n_gone = 0;
    int64_t now = lk_wall_ms();
    for (size_t i = 0; i < pairs; i++) {
        const lk_redis_reply_t *f = &r->items[2 * i], *v = &r->items[2 * i + 1];
        uint64_t id = s_reply_u64(f);
        Lk__Deliver *d = v->str ? ss_codec_unpack_deliver(v->str, v->len) : NULL;
        if (id > s->qseq)
            s->qseq = id;
        if (!d || !d->msg) {
            lk_warn("client %s: unreadable stored message %" PRIu64 " deleted", s->client, id);
            ss_codec_deliver_free(&d);
            gone[n_gone++] = id;
            continue;
        }
        d->released_pid = s_released_pid(rel, id);
        /* a released copy is the client's already: only its PUBREL is owed */
        if (!d->released_pid && d->msg->expiry_at_ms && (int64_t)d->msg->expiry_at_ms <= now) {
            ss_codec_deliver_free(&d);
            gone[n_gone++] = id;
            continue;
        }
        d->store_id = id;
        list[n].id = id;
        list[n++].deliver = d;
    }
    qsort(list, n, sizeof(*list), s_pending_cmp);
    result->pending = lk_calloc(n ? n : 1, sizeof(*result->pending));
    for (size_t i = 0; i < n; i++)
        result->pending[i] = list[i].deliver;
    result->n_pending = n;
    s->qlen = n;
    if (n_gone) {
        /* best effort: a failure leaves them to be skipped again next time */
        s_pipe_t p;
        s_pipe_begin(&p, self->redis);
        s_append_hdel_ids(self, &p, s->client, gone, n_gone);
        s_pipe_end(&p);
    }
    free(gone);
    free(list);
}

int ss_store_open(ss_store_t *self, const ss_open_t *req, ss_open_result_t *result)
{
    memset(result, 0, sizeof(*result));
    ss_session_t *s = zhashx_lookup(self->sessions, req->client);
    bool existed = s && s->persistent;
    /* the same request again (its answer was lost): same answer, and no second clean
       start, which would delete what was stored for the new session meanwhile */
    bool retry = s && req->req && s->last_req == req->req && s->node && !s->disconnected_at &&
                 strcmp(s->node, req->node) == 0 && s->node_epoch == req->node_epoch &&
                 s->conn == req->conn;
    bool keep = existed && (!req->clean || retry);
    /* MQTT 5 clean_start=0 with expiry 0 resumes a stored session that then ends at
       disconnect: it stays in Redis until then */
    bool persistent = req->expiry > 0 || keep;

    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    if (existed && !keep) {
        s_pipe_str(&p, "DEL", s_key(self, "lk:sess:", req->client), NULL);
        s_pipe_str(&p, "DEL", s_key(self, "lk:q:", req->client), NULL);
        s_pipe_str(&p, "DEL", s_key(self, "lk:rel:", req->client), NULL);
        s_pipe_str(&p, "DEL", s_key(self, "lk:rx:", req->client), NULL);
        /* lk:qseq survives a clean start so store ids never repeat for this client */
        if (!persistent) {
            s_pipe_str(&p, "DEL", s_key(self, "lk:qseq:", req->client), NULL);
            s_pipe_str(&p, "SREM", "lk:sessions", req->client, NULL);
        }
    }
    if (persistent) {
        s_append_record(self, &p, req->client, req->node, req->node_epoch, req->conn,
                        req->expiry, 0);
        s_pipe_str(&p, "SADD", "lk:sessions", req->client, NULL);
    }
    int n_fixed = p.count;
    if (keep) {
        s_pipe_str(&p, "HGETALL", s_key(self, "lk:sess:", req->client), NULL);
        s_pipe_str(&p, "HGETALL", s_key(self, "lk:q:", req->client), NULL);
        s_pipe_str(&p, "HGETALL", s_key(self, "lk:rel:", req->client), NULL);
        s_pipe_str(&p, "SMEMBERS", s_key(self, "lk:rx:", req->client), NULL);
    }
    if (p.failed) {
        s_pipe_end(&p);
        return -1;
    }
    for (int i = 0; i < n_fixed; i++)
        s_pipe_skip(&p);
    lk_redis_reply_t *sess = keep ? s_pipe_next(&p) : NULL;
    lk_redis_reply_t *queue = keep ? s_pipe_next(&p) : NULL;
    lk_redis_reply_t *rel = keep ? s_pipe_next(&p) : NULL;
    lk_redis_reply_t *rx = keep ? s_pipe_next(&p) : NULL;
    if (s_pipe_end(&p) != 0) {
        lk_redis_reply_free(&sess);
        lk_redis_reply_free(&queue);
        lk_redis_reply_free(&rel);
        lk_redis_reply_free(&rx);
        return -1;
    }

    if (!s)
        s = s_session_add(self, req->client);
    bool present = retry ? s->last_present : keep;
    s_session_set_node(self, s, req->node, req->node_epoch);
    s->conn = req->conn;
    s->expiry = req->expiry;
    s->disconnected_at = 0;
    s->persistent = persistent;
    s->max_queued = req->max_queued ? req->max_queued : self->max_queued;
    s->last_req = req->req;
    s->last_present = present;
    if (!keep)
        s->qlen = 0;
    result->present = present;
    if (keep) {
        result->subs = s_parse_subs(sess, &result->n_subs);
        s_parse_pending(self, s, queue, rel, result);
        size_t n = rx && rx->type == LK_REDIS_ARRAY ? rx->count : 0;
        result->rx_pids = lk_calloc(n ? n : 1, sizeof(*result->rx_pids));
        for (size_t i = 0; i < n; i++) {
            uint64_t pid = s_reply_u64(&rx->items[i]);
            if (pid > 0 && pid <= 65535)
                result->rx_pids[result->n_rx_pids++] = (uint32_t)pid;
        }
    }
    lk_redis_reply_free(&sess);
    lk_redis_reply_free(&queue);
    lk_redis_reply_free(&rel);
    lk_redis_reply_free(&rx);
    return 0;
}

void ss_open_result_clear(ss_open_result_t *result)
{
    s_free_subs(result->subs, result->n_subs);
    for (size_t i = 0; i < result->n_pending; i++)
        ss_codec_deliver_free(&result->pending[i]);
    free(result->pending);
    free(result->rx_pids);
    memset(result, 0, sizeof(*result));
}

static bool s_at_node(const ss_session_t *s, const char *node)
{
    return s && s->node && node && strcmp(s->node, node) == 0;
}

int ss_store_close(ss_store_t *self, const char *client, const char *node, uint64_t conn,
                   uint32_t expiry, Lk__Subscription **subs, size_t n_subs, bool subs_changed)
{
    ss_session_t *s = zhashx_lookup(self->sessions, client);
    /* a connection taken over, or superseded before it was registered, ends nothing */
    if (!s_at_node(s, node) || s->conn != conn)
        return 1;
    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    if (expiry == 0) {
        if (s->persistent) {
            s_append_delete(self, &p, client);
            if (s_pipe_end(&p) != 0)
                return -1;
        }
        s_session_forget(self, s);
        return 0;
    }
    int64_t now = lk_wall_ms();
    s_append_record(self, &p, client, NULL, 0, 0, expiry, now);
    s_pipe_str(&p, "SADD", "lk:sessions", client, NULL);
    if (subs_changed)
        s_append_replace_subs(self, &p, client, subs, n_subs);
    if (s_pipe_end(&p) != 0)
        return -1;
    s_session_set_node(self, s, NULL, 0); /* and conn = 0 */
    s->expiry = expiry;
    s->disconnected_at = now;
    s->persistent = true;
    return 0;
}

int ss_store_ack(ss_store_t *self, const char *client, const char *node, const uint64_t *ids,
                 size_t n_ids, const uint64_t *rel_ids, const uint32_t *rel_pids, size_t n_rel,
                 Lk__Subscription **subs, size_t n_subs, bool subs_changed)
{
    ss_session_t *s = zhashx_lookup(self->sessions, client);
    if (!s_at_node(s, node) || !s->persistent)
        return 1;
    if (n_ids == 0 && n_rel == 0 && !subs_changed)
        return 0;
    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    if (n_ids)
        s_append_hdel_ids(self, &p, client, ids, n_ids);
    if (n_rel)
        s_append_released(self, &p, client, rel_ids, rel_pids, n_rel);
    if (subs_changed)
        s_append_replace_subs(self, &p, client, subs, n_subs);
    lk_redis_reply_t *del = n_ids ? s_pipe_next(&p) : NULL;
    size_t deleted = (size_t)s_reply_u64(del);
    lk_redis_reply_free(&del);
    if (s_pipe_end(&p) != 0)
        return -1;
    s->qlen = deleted < s->qlen ? s->qlen - deleted : 0;
    return 0;
}

/* SADD / SREM of packet ids on lk:rx:<client> */
static void s_append_pids(ss_store_t *self, s_pipe_t *p, const char *cmd, const char *client,
                          const uint32_t *pids, size_t n)
{
    uint64_t *ids = lk_malloc(n * sizeof(*ids));
    for (size_t i = 0; i < n; i++)
        ids[i] = pids[i];
    s_append_ids(self, p, cmd, "lk:rx:", client, ids, n);
    free(ids);
}

int ss_store_rx(ss_store_t *self, const char *client, const char *node, const uint32_t *add,
                size_t n_add, const uint32_t *del, size_t n_del)
{
    ss_session_t *s = zhashx_lookup(self->sessions, client);
    if (!s_at_node(s, node) || !s->persistent)
        return 1;
    if (n_add == 0 && n_del == 0)
        return 0;
    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    /* a PUBREL then a new PUBLISH with the same id in one batch: delete first, then add */
    if (n_del)
        s_append_pids(self, &p, "SREM", client, del, n_del);
    if (n_add)
        s_append_pids(self, &p, "SADD", client, add, n_add);
    return s_pipe_end(&p);
}

int ss_store_subs_delta(ss_store_t *self, const char *client, const char *node,
                        Lk__Subscription **subs, size_t n_subs, char **removed,
                        size_t n_removed)
{
    ss_session_t *s = zhashx_lookup(self->sessions, client);
    if (!s_at_node(s, node) || !s->persistent)
        return 1;
    size_t argc = 2 + 2 * n_subs + n_removed;
    const char **argv = lk_calloc(argc, sizeof(*argv));
    size_t *lens = lk_calloc(argc, sizeof(*lens));
    ss_buf_t *bufs = lk_calloc(n_subs ? n_subs : 1, sizeof(*bufs));
    char **fields = lk_calloc(n_subs + n_removed + 1, sizeof(char *));
    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    /* sub:<filter> fields, as s_append_replace_subs writes them */
    size_t argn = s_argv_subs(subs, n_subs, argv, lens, 2, fields, bufs);
    if (argn > 2)
        s_pipe_key_cmd(self, &p, "HSET", "lk:sess:", client, argn, argv, lens);
    argn = 2;
    for (size_t i = 0; i < n_removed; i++) {
        if (!removed[i] || !*removed[i])
            continue;
        argv[argn] = fields[n_subs + i] = s_sub_field(removed[i], &lens[argn]);
        argn++;
    }
    if (argn > 2)
        s_pipe_key_cmd(self, &p, "HDEL", "lk:sess:", client, argn, argv, lens);
    int rc = s_pipe_end(&p);
    for (size_t i = 0; i < n_subs + n_removed; i++)
        free(fields[i]);
    for (size_t i = 0; i < n_subs; i++)
        ss_buf_release(&bufs[i]);
    free(fields);
    free(bufs);
    free(lens);
    free(argv);
    return rc != 0 ? -1 : 0;
}

//  --------------------------------------------------------------------------
//  Storing

static void s_touch(ss_store_t *self, ss_session_t *s, size_t *n_touched)
{
    if (s->mark == self->mark)
        return;
    if (*n_touched == self->touched_cap) {
        self->touched_cap = self->touched_cap ? self->touched_cap * 2 : 64;
        self->touched = lk_realloc(self->touched, self->touched_cap * sizeof(*self->touched));
    }
    self->touched[(*n_touched)++] = s;
    s->mark = self->mark;
    s->added = 0;
}

static void s_drop_full(ss_store_t *self, ss_session_t *s)
{
    self->dropped++;
    s->dropped++;
    int64_t now = lk_mono_ms();
    if (s->drop_logged_ms == 0 || now - s->drop_logged_ms >= SS_DROP_LOG_MS) {
        lk_warn("client %s: queue full (%zu messages), %" PRIu64 " message(s) dropped", s->client,
                s->qlen, s->dropped);
        s->drop_logged_ms = now;
        s->dropped = 0;
    }
}

/* the stored copy of an item (lk.Deliver) into out; dup: its client is online now, so it
   gets this one forwarded at once and a later redelivery (after a reconnect) must say DUP */
static void s_pack_item(const Lk__StoreItem *it, uint64_t store_id, bool dup, ss_buf_t *out)
{
    Lk__Deliver d = LK__DELIVER__INIT;
    d.client = it->client;
    d.msg = it->msg;
    d.n_sub_ids = it->n_sub_ids;
    d.sub_ids = it->sub_ids;
    d.store_id = store_id;
    d.dup = dup;
    ss_codec_pack_deliver(&d, out);
}

/* not stored (as far as we know): the quota must not count it */
static void s_put_undo(ss_store_t *self, size_t n_touched)
{
    for (size_t i = 0; i < n_touched; i++) {
        ss_session_t *s = self->touched[i];
        s->qlen = s->added < s->qlen ? s->qlen - s->added : 0;
    }
}

/* replicas: each client's messages and its counter in one script (s_put_lua); the ids
   are the counter's, whatever this replica last knew of it */
static int s_put_shared(ss_store_t *self, Lk__StoreItem **items, size_t n, uint64_t *ids,
                        size_t n_touched)
{
    /* the items grouped by client, in batch order (counting sort on touched index) */
    size_t *start = lk_calloc(n_touched + 1, sizeof(*start));
    size_t *order = lk_calloc(n ? n : 1, sizeof(*order));
    for (size_t t = 0; t < n_touched; t++) {
        self->touched[t]->tidx = t;
        start[t + 1] = start[t] + self->touched[t]->added;
    }
    for (size_t i = 0; i < n; i++)
        if (ids[i]) {
            ss_session_t *s = zhashx_lookup(self->sessions, items[i]->client);
            order[start[s->tidx]++] = i;
        }
    for (size_t t = n_touched; t > 0; t--)
        start[t] = start[t - 1];
    start[0] = 0;
    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    for (size_t t = 0; t < n_touched; t++) {
        ss_session_t *s = self->touched[t];
        size_t argc = 5 + s->added;
        const char **argv = lk_calloc(argc, sizeof(*argv));
        size_t *lens = lk_calloc(argc, sizeof(*lens));
        ss_buf_t *vals = lk_calloc(s->added, sizeof(*vals));
        argv[0] = "EVAL";
        argv[1] = s_put_lua;
        argv[2] = "2";
        char *k1 = lk_strdup(s_key(self, "lk:qseq:", s->client));
        argv[3] = k1;
        lens[3] = strlen(k1);
        argv[4] = s_key(self, "lk:q:", s->client);
        lens[4] = self->key.size;
        size_t k = 0;
        for (size_t j = start[t]; j < start[t] + s->added; j++) {
            s_pack_item(items[order[j]], 0, s->node != NULL, &vals[k]);
            argv[5 + k] = (const char *)vals[k].data;
            lens[5 + k] = vals[k].size;
            k++;
        }
        for (size_t i = 0; i < 3; i++)
            lens[i] = strlen(argv[i]);
        s_pipe_cmd(&p, (int)(5 + k), argv, lens);
        for (size_t i = 0; i < k; i++)
            ss_buf_release(&vals[i]);
        free(vals);
        free(k1);
        free(lens);
        free(argv);
    }
    for (size_t t = 0; t < n_touched; t++) {
        lk_redis_reply_t *r = s_pipe_next(&p);
        ss_session_t *s = self->touched[t];
        uint64_t top = s_reply_u64(r);
        lk_redis_reply_free(&r);
        s->qseq = top >= s->added ? top - s->added : 0; /* ids are handed out below */
    }
    if (s_pipe_end(&p) != 0) {
        s_put_undo(self, n_touched);
        free(start);
        free(order);
        return -1;
    }
    for (size_t t = 0; t < n_touched; t++)
        for (size_t j = start[t]; j < start[t] + self->touched[t]->added; j++)
            ids[order[j]] = ++self->touched[t]->qseq;
    free(start);
    free(order);
    return 0;
}

int ss_store_put(ss_store_t *self, Lk__StoreItem **items, size_t n, uint64_t *ids)
{
    int64_t now = lk_wall_ms();
    size_t n_touched = 0;
    self->mark++;
    /* first pass: choose what is stored and give it an id */
    for (size_t i = 0; i < n; i++) {
        ids[i] = 0;
        Lk__StoreItem *it = items[i];
        if (!it || !it->client || !it->msg) {
            lk_warn("store: malformed item dropped");
            continue;
        }
        ss_session_t *s = zhashx_lookup(self->sessions, it->client);
        if (!s || !s->persistent) {
            lk_debug("store: client %s has no persistent session; item dropped", it->client);
            continue;
        }
        if (it->msg->expiry_at_ms && (int64_t)it->msg->expiry_at_ms <= now)
            continue;
        if (s->max_queued && s->qlen >= s->max_queued) {
            s_drop_full(self, s);
            continue;
        }
        s_touch(self, s, &n_touched);
        ids[i] = ++s->qseq;
        s->qlen++;
        s->added++;
    }
    if (n_touched == 0)
        return 0;
    if (self->shared)
        return s_put_shared(self, items, n, ids, n_touched);

    /* Counters go first: Redis runs a pipeline in order, so any message that made it
       is covered by a counter that did too, and ids are not handed out twice after a
       restart even when the pipeline broke half way. */
    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    for (size_t i = 0; i < n_touched; i++) {
        char num[24];
        snprintf(num, sizeof(num), "%" PRIu64, self->touched[i]->qseq);
        s_pipe_str(&p, "SET", s_key(self, "lk:qseq:", self->touched[i]->client), num, NULL);
    }
    for (size_t i = 0; i < n && !p.failed; i++) {
        if (!ids[i])
            continue;
        Lk__StoreItem *it = items[i];
        ss_session_t *owner = zhashx_lookup(self->sessions, it->client);
        s_pack_item(it, ids[i], owner && owner->node, &self->val);
        char num[24];
        size_t num_len = (size_t)snprintf(num, sizeof(num), "%" PRIu64, ids[i]);
        const char *argv[4] = {"HSET", s_key(self, "lk:q:", it->client), num,
                               (const char *)self->val.data};
        size_t lens[4] = {4, self->key.size, num_len, self->val.size};
        s_pipe_cmd(&p, 4, argv, lens);
    }
    if (s_pipe_end(&p) != 0) {
        s_put_undo(self, n_touched);
        return -1;
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Retained messages

int ss_store_retain_set(ss_store_t *self, Lk__Msg **msgs, size_t n)
{
    int64_t now = lk_wall_ms();
    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    for (size_t i = 0; i < n; i++) {
        Lk__Msg *m = msgs[i];
        if (!m || !m->topic || !*m->topic) {
            lk_warn("retain: message without topic ignored");
            continue;
        }
        /* an already expired retained message replaces the old one by nothing */
        if (m->payload.len == 0 || (m->expiry_at_ms && (int64_t)m->expiry_at_ms <= now)) {
            s_pipe_str(&p, "HDEL", "lk:retain", m->topic, NULL);
            continue;
        }
        ss_codec_pack_msg(m, &self->val);
        const char *argv[4] = {"HSET", "lk:retain", m->topic, (const char *)self->val.data};
        size_t lens[4] = {4, 9, strlen(m->topic), self->val.size};
        s_pipe_cmd(&p, 4, argv, lens);
    }
    return s_pipe_end(&p);
}

int ss_store_retain_scan(ss_store_t *self, uint64_t *cursor, size_t count, ss_retain_fn *fn,
                         void *arg)
{
    lk_redis_reply_t *r = lk_redis_cmd(self->redis, "HSCAN lk:retain %llu COUNT %llu",
                                       (unsigned long long)*cursor, (unsigned long long)count);
    if (lk_redis_reply_failed(r) || r->type != LK_REDIS_ARRAY || r->count != 2 ||
        r->items[1].type != LK_REDIS_ARRAY) {
        lk_redis_reply_free(&r);
        return -1;
    }
    const lk_redis_reply_t *kv = &r->items[1];
    int64_t now = lk_wall_ms();
    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    for (size_t i = 0; i + 1 < kv->count; i += 2) {
        const lk_redis_reply_t *f = &kv->items[i], *v = &kv->items[i + 1];
        if (!f->str || !v->str)
            continue;
        Lk__Msg *m = ss_codec_unpack_msg(v->str, v->len);
        if (!m)
            lk_warn("retain: unreadable message for '%s' deleted", f->str);
        if (m && (!m->expiry_at_ms || (int64_t)m->expiry_at_ms > now))
            fn(m, arg);
        else {
            const char *argv[3] = {"HDEL", "lk:retain", f->str};
            size_t lens[3] = {4, 9, f->len};
            s_pipe_cmd(&p, 3, argv, lens);
        }
        ss_codec_msg_free(&m);
    }
    s_pipe_end(&p); /* best effort: expired ones are skipped again next time */
    *cursor = s_reply_u64(&r->items[0]);
    lk_redis_reply_free(&r);
    return *cursor ? 1 : 0;
}

//  --------------------------------------------------------------------------
//  Router resync

void ss_store_offline(ss_store_t *self, zlistx_t *list, ss_holds_fn *holds, void *arg)
{
    for (ss_session_t *s = zhashx_first(self->sessions); s; s = zhashx_next(self->sessions))
        if (s->persistent && s_owns(self, s) &&
            (s->disconnected_at || !s->node || (holds && !holds(s->node, s->node_epoch, arg))))
            zlistx_add_end(list, lk_strdup(s->client));
}

int ss_store_subs(ss_store_t *self, const char **clients, size_t n, ss_subs_fn *fn, void *arg)
{
    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    for (size_t i = 0; i < n; i++)
        s_pipe_str(&p, "HGETALL", s_key(self, "lk:sess:", clients[i]), NULL);
    lk_redis_reply_t **replies = lk_calloc(n ? n : 1, sizeof(*replies));
    for (size_t i = 0; i < n; i++)
        replies[i] = s_pipe_next(&p);
    int rc = s_pipe_end(&p);
    for (size_t i = 0; i < n; i++) {
        ss_session_t *s = zhashx_lookup(self->sessions, clients[i]);
        if (rc == 0 && s && s->persistent) {
            size_t n_subs;
            Lk__Subscription **subs = s_parse_subs(replies[i], &n_subs);
            fn(clients[i], subs, n_subs, arg);
            s_free_subs(subs, n_subs);
        }
        lk_redis_reply_free(&replies[i]);
    }
    free(replies);
    return rc;
}

int ss_store_copies(ss_store_t *self, const char *client, const uint64_t *ids, size_t n,
                    ss_copy_fn *fn, void *arg)
{
    if (n == 0)
        return 0;
    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    s_append_ids(self, &p, "HMGET", "lk:q:", client, ids, n);
    s_append_ids(self, &p, "HMGET", "lk:rel:", client, ids, n);
    lk_redis_reply_t *q = s_pipe_next(&p), *rel = s_pipe_next(&p);
    int rc = s_pipe_end(&p);
    if (rc == 0 && q && q->type == LK_REDIS_ARRAY && q->count == n) {
        for (size_t i = 0; i < n; i++) {
            const lk_redis_reply_t *v = &q->items[i];
            Lk__Deliver *d = v->str ? ss_codec_unpack_deliver(v->str, v->len) : NULL;
            if (d && d->msg) {
                d->store_id = ids[i];
                if (rel && rel->type == LK_REDIS_ARRAY && rel->count == n)
                    d->released_pid = (uint32_t)s_reply_u64(&rel->items[i]);
                fn(d, arg);
            }
            ss_codec_deliver_free(&d);
        }
    }
    lk_redis_reply_free(&q);
    lk_redis_reply_free(&rel);
    return rc;
}

//  --------------------------------------------------------------------------
//  Node liveness

/* Writes the records of the listed sessions (best effort: liveness is re-derived from
   the bus after a restart anyway). */
static void s_write_records(ss_store_t *self, zlistx_t *clients)
{
    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    for (char *c = zlistx_first(clients); c; c = zlistx_next(clients)) {
        ss_session_t *s = zhashx_lookup(self->sessions, c);
        /* replicas: only the owner writes, from a record it keeps current */
        if (s && s->persistent && !s->stale && s_owns(self, s))
            s_append_record(self, &p, c, s->node, s->node_epoch, s->conn, s->expiry,
                            s->disconnected_at);
    }
    if (s_pipe_end(&p) != 0)
        lk_warn("redis: session states not written");
}

static zlistx_t *s_name_list(void)
{
    zlistx_t *list = zlistx_new();
    zlistx_set_destructor(list, (zlistx_destructor_fn *)zstr_free);
    return list;
}

void ss_store_node_down(ss_store_t *self, const char *node, int64_t now_ms)
{
    zlistx_t *gone = s_name_list(), *changed = s_name_list();
    for (ss_session_t *s = zhashx_first(self->sessions); s; s = zhashx_next(self->sessions)) {
        if (!s_at_node(s, node))
            continue;
        if (!s->persistent)
            zlistx_add_end(gone, lk_strdup(s->client));
        else if (!s->disconnected_at) {
            s->disconnected_at = now_ms;
            zlistx_add_end(changed, lk_strdup(s->client));
        }
    }
    for (char *c = zlistx_first(gone); c; c = zlistx_next(gone))
        zhashx_delete(self->sessions, c);
    if (zlistx_size(gone) || zlistx_size(changed))
        lk_info("node %s down: %zu volatile session(s) forgotten, %zu offline", node,
                zlistx_size(gone), zlistx_size(changed));
    s_write_records(self, changed);
    zlistx_destroy(&gone);
    zlistx_destroy(&changed);
}

void ss_store_node_up(ss_store_t *self, const char *node, uint64_t epoch, int64_t now_ms)
{
    zlistx_t *gone = s_name_list(), *changed = s_name_list();
    size_t back = 0;
    for (ss_session_t *s = zhashx_first(self->sessions); s; s = zhashx_next(self->sessions)) {
        if (!s_at_node(s, node))
            continue;
        if (s->node_epoch == epoch) {
            if (s->disconnected_at) {
                s->disconnected_at = 0; /* the node came back: so did its client */
                zlistx_add_end(changed, lk_strdup(s->client));
                back++;
            }
        } else if (!s->persistent)
            zlistx_add_end(gone, lk_strdup(s->client));
        else {
            s_session_set_node(self, s, NULL, 0);
            if (!s->disconnected_at)
                s->disconnected_at = now_ms;
            zlistx_add_end(changed, lk_strdup(s->client));
        }
    }
    for (char *c = zlistx_first(gone); c; c = zlistx_next(gone))
        zhashx_delete(self->sessions, c);
    if (zlistx_size(gone) || zlistx_size(changed))
        lk_info("node %s up: %zu session(s) back, %zu left with its old epoch", node, back,
                zlistx_size(gone) + zlistx_size(changed) - back);
    s_write_records(self, changed);
    zlistx_destroy(&gone);
    zlistx_destroy(&changed);
}

void ss_store_nodes(ss_store_t *self, zlistx_t *list)
{
    zhashx_t *seen = zhashx_new();
    for (ss_session_t *s = zhashx_first(self->sessions); s; s = zhashx_next(self->sessions))
        if (s->node && !s->disconnected_at && !zhashx_lookup(seen, s->node)) {
            zhashx_insert(seen, s->node, s);
            zlistx_add_end(list, lk_strdup(s->node));
        }
    zhashx_destroy(&seen);
}

//  --------------------------------------------------------------------------
//  Expiry

int ss_store_expire(ss_store_t *self, int64_t now_ms, size_t max, zlistx_t *expired)
{
    zlistx_t *due = s_name_list();
    for (ss_session_t *s = zhashx_first(self->sessions); s && zlistx_size(due) < max;
         s = zhashx_next(self->sessions)) {
        if (!s->persistent || !s->disconnected_at || s->stale || !s_owns(self, s))
            continue;
        uint32_t e = s->expiry;
        if (e == SS_EXPIRY_NEVER) {
            if (!self->forced_expiry)
                continue;
            e = self->forced_expiry;
        }
        if (now_ms - s->disconnected_at >= (int64_t)e * 1000)
            zlistx_add_end(due, lk_strdup(s->client));
    }
    if (zlistx_size(due) == 0) {
        zlistx_destroy(&due);
        return 0;
    }
    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    for (char *c = zlistx_first(due); c; c = zlistx_next(due))
        s_append_delete(self, &p, c);
    if (s_pipe_end(&p) != 0) {
        zlistx_destroy(&due);
        return -1;
    }
    for (char *c = zlistx_first(due); c; c = zlistx_next(due)) {
        zhashx_delete(self->sessions, c);
        zlistx_add_end(expired, lk_strdup(c));
    }
    zlistx_destroy(&due);
    return 0;
}

int ss_store_clear(ss_store_t *self, const char *client)
{
    ss_session_t *s = zhashx_lookup(self->sessions, client);
    if (!s || !s->persistent || !s->disconnected_at)
        return 1;
    s_pipe_t p;
    s_pipe_begin(&p, self->redis);
    s_append_delete(self, &p, client);
    if (s_pipe_end(&p) != 0)
        return -1;
    zhashx_delete(self->sessions, client);
    return 0;
}

uint64_t ss_store_queued(ss_store_t *self)
{
    uint64_t n = 0;
    for (ss_session_t *s = zhashx_first(self->sessions); s; s = zhashx_next(self->sessions))
        if (s_owns(self, s))
            n += s->qlen;
    return n;
}

double ss_store_ping_ms(ss_store_t *self)
{
    return lk_redis_ping_ms(self->redis);
}

//  --------------------------------------------------------------------------
//  Selftest: runs against a real redis-server (started by selftest.c), which it flushes.

typedef struct {
    lk_redis_t *raw; /* a second connection to look at Redis directly */
    int *passed, *failed;
    bool verbose;
} s_test_t;

static void s_check(s_test_t *t, const char *name, bool ok)
{
    printf("%s %s\n", ok ? "PASS" : "FAIL", name);
    if (ok)
        (*t->passed)++;
    else
        (*t->failed)++;
}

/* integer result of a raw command, -1 on failure */
static int64_t s_raw_int(s_test_t *t, const char *fmt, const char *arg)
{
    lk_redis_reply_t *r = lk_redis_cmd(t->raw, fmt, arg);
    int64_t v = -1;
    if (!lk_redis_reply_failed(r))
        v = r->type == LK_REDIS_INT ? r->integer : r->type == LK_REDIS_STR ? atoll(r->str) : 0;
    lk_redis_reply_free(&r);
    return v;
}

static int s_test_open(ss_store_t *store, const char *client, const char *node, uint64_t epoch,
                       bool clean, uint32_t expiry, ss_open_result_t *res)
{
    ss_open_t req = {.req = 0,
                     .client = client,
                     .clean = clean,
                     .expiry = expiry,
                     .node = node,
                     .node_epoch = epoch};
    return ss_store_open(store, &req, res);
}

/* stores n messages for client (topic t/<i>); ids get the store ids */
typedef struct {
    size_t n;
    uint64_t ids[8];
    bool msgs_ok;
} s_copies_t;

static void s_test_copy(const Lk__Deliver *d, void *arg)
{
    s_copies_t *c = arg;
    if (c->n == 0)
        c->msgs_ok = true;
    c->msgs_ok = c->msgs_ok && d->msg && d->msg->topic && strncmp(d->msg->topic, "t/", 2) == 0 &&
                 d->client && strcmp(d->client, "r9") == 0;
    if (c->n < 8)
        c->ids[c->n++] = d->store_id;
}

static int s_test_put(ss_store_t *store, const char *client, size_t n, int64_t expiry_at,
                      uint64_t *ids)
{
    Lk__StoreItem *items = lk_calloc(n, sizeof(*items));
    Lk__Msg *msgs = lk_calloc(n, sizeof(*msgs));
    Lk__StoreItem **ptrs = lk_calloc(n, sizeof(*ptrs));
    char(*topics)[32] = lk_calloc(n, sizeof(*topics));
    uint32_t sub_id = 5;
    for (size_t i = 0; i < n; i++) {
        lk__msg__init(&msgs[i]);
        snprintf(topics[i], sizeof(topics[i]), "t/%zu", i);
        msgs[i].topic = topics[i];
        msgs[i].payload.data = (uint8_t *)"payload";
        msgs[i].payload.len = 7;
        msgs[i].qos = 1;
        msgs[i].expiry_at_ms = (uint64_t)expiry_at;
        lk__store_item__init(&items[i]);
        items[i].client = (char *)client;
        items[i].msg = &msgs[i];
        items[i].n_sub_ids = 1;
        items[i].sub_ids = &sub_id;
        ptrs[i] = &items[i];
    }
    int rc = ss_store_put(store, ptrs, n, ids);
    free(topics);
    free(ptrs);
    free(msgs);
    free(items);
    return rc;
}

static void s_collect_topic(const Lk__Msg *msg, void *arg)
{
    zlistx_add_end((zlistx_t *)arg, lk_strdup(msg->topic));
}

typedef struct {
    const char *client;
    size_t n_subs;
    bool seen;
} s_subs_probe_t;

static void s_probe_subs(const char *client, Lk__Subscription **subs, size_t n, void *arg)
{
    s_subs_probe_t *probe = arg;
    if (strcmp(client, probe->client) == 0) {
        probe->seen = true;
        probe->n_subs = n;
    }
}

static bool s_list_has(zlistx_t *list, const char *s)
{
    for (char *x = zlistx_first(list); x; x = zlistx_next(list))
        if (strcmp(x, s) == 0)
            return true;
    return false;
}

static bool s_test_owns_all(const char *client, void *arg)
{
    return true;
}

void ss_store_test(const char *host, int port, bool verbose, int *passed, int *failed)
{
    s_test_t t = {
        .raw = lk_redis_new(host, port), .passed = passed, .failed = failed, .verbose = verbose};
    lk_redis_reply_t *r = lk_redis_cmd(t.raw, "FLUSHALL");
    s_check(&t, "store: redis reachable", !lk_redis_reply_failed(r));
    lk_redis_reply_free(&r);

    ss_store_t *store = ss_store_new(host, port);
    s_check(&t, "store: load of an empty database",
            ss_store_load(store) == 0 && ss_store_size(store) == 0);

    // --- open a persistent session
    ss_open_result_t res;
    bool ok = s_test_open(store, "c1", "fe-1", 11, false, 3600, &res) == 0 && !res.present &&
              res.n_pending == 0 && res.n_subs == 0;
    ss_open_result_clear(&res);
    ss_session_t *s = ss_store_session(store, "c1");
    ok = ok && s && s->persistent && s->node && strcmp(s->node, "fe-1") == 0 &&
         s->disconnected_at == 0 && s_raw_int(&t, "SISMEMBER lk:sessions %s", "c1") == 1 &&
         s_raw_int(&t, "HGET lk:sess:{%s} expiry", "c1") == 3600;
    s_check(&t, "store: open records a persistent session", ok);

    // --- store items, sequence ids, non-persistent clients dropped
    uint64_t ids[16];
    ok = s_test_put(store, "c1", 3, 0, ids) == 0 && ids[0] == 1 && ids[1] == 2 && ids[2] == 3;
    ok = ok && s_raw_int(&t, "HLEN lk:q:{%s}", "c1") == 3 &&
         s_raw_int(&t, "GET lk:qseq:{%s}", "c1") == 3 && s->qlen == 3;
    s_check(&t, "store: items stored with ids 1..3", ok);
    ok = s_test_put(store, "nobody", 2, 0, ids) == 0 && ids[0] == 0 && ids[1] == 0;
    ss_open_result_clear(&res);
    s_test_open(store, "v1", "fe-1", 11, true, 0, &res);
    ss_open_result_clear(&res);
    ok = ok && s_test_put(store, "v1", 1, 0, ids) == 0 && ids[0] == 0 &&
         ss_store_session(store, "v1") && !ss_store_session(store, "v1")->persistent &&
         s_raw_int(&t, "EXISTS lk:sess:{%s}", "v1") == 0;
    s_check(&t, "store: unknown and volatile clients dropped", ok);
    ok = s_test_put(store, "c1", 1, lk_wall_ms() - 10, ids) == 0 && ids[0] == 0;
    s_check(&t, "store: already expired message not stored", ok);

    // --- pending order: ids 1..12 (numeric, not lexical, order), takeover to fe-2
    ok = s_test_put(store, "c1", 9, 0, ids) == 0 && ids[8] == 12;
    ok = ok && s_test_open(store, "c1", "fe-2", 22, false, 3600, &res) == 0 && res.present &&
         res.n_pending == 12;
    for (size_t i = 0; ok && i < res.n_pending; i++)
        ok = res.pending[i]->store_id == i + 1 && strcmp(res.pending[i]->client, "c1") == 0 &&
             res.pending[i]->msg && res.pending[i]->n_sub_ids == 1;
    ss_open_result_clear(&res);
    s = ss_store_session(store, "c1");
    ok = ok && s && strcmp(s->node, "fe-2") == 0 && s->node_epoch == 22;
    s_check(&t, "store: pending listed in store id order", ok);

    // --- ack deletion, only from the node holding the client
    uint64_t acks[] = {1, 2, 999};
    ok = ss_store_ack(store, "c1", "fe-1", acks, 2, NULL, NULL, 0, NULL, 0, false) == 1 &&
         s_raw_int(&t, "HLEN lk:q:{%s}", "c1") == 12;
    ok = ok && ss_store_ack(store, "c1", "fe-2", acks, 3, NULL, NULL, 0, NULL, 0, false) == 0 &&
         s_raw_int(&t, "HLEN lk:q:{%s}", "c1") == 10 && s->qlen == 10;
    ok = ok && s_test_open(store, "c1", "fe-2", 22, false, 3600, &res) == 0 &&
         res.n_pending == 10 && res.pending[0]->store_id == 3;
    ss_open_result_clear(&res);
    s_check(&t, "store: ack deletes stored messages", ok);

    // --- subscription set replace
    Lk__Subscription sa = LK__SUBSCRIPTION__INIT, sb = LK__SUBSCRIPTION__INIT,
                     sc = LK__SUBSCRIPTION__INIT;
    sa.filter = "a/#";
    sa.qos = 1;
    sb.filter = "b";
    sb.qos = 2;
    sc.filter = "$share/g/c/+";
    sc.sub_id = 4;
    Lk__Subscription *set1[] = {&sa, &sb}, *set2[] = {&sc};
    ok = ss_store_ack(store, "c1", "fe-2", NULL, 0, NULL, NULL, 0, set1, 2, true) == 0 &&
         s_raw_int(&t, "HEXISTS lk:sess:{%s} sub:a/#", "c1") == 1 &&
         s_raw_int(&t, "HEXISTS lk:sess:{%s} sub:b", "c1") == 1;
    ok = ok && ss_store_ack(store, "c1", "fe-2", NULL, 0, NULL, NULL, 0, set2, 1, true) == 0 &&
         s_raw_int(&t, "HEXISTS lk:sess:{%s} sub:a/#", "c1") == 0 &&
         s_raw_int(&t, "HEXISTS lk:sess:{%s} sub:b", "c1") == 0 &&
         s_raw_int(&t, "HLEN lk:sess:{%s}", "c1") == 6; /* 5 record fields + 1 subscription */
    ok = ok && s_test_open(store, "c1", "fe-2", 22, false, 3600, &res) == 0 && res.n_subs == 1 &&
         strcmp(res.subs[0]->filter, "$share/g/c/+") == 0 && res.subs[0]->sub_id == 4;
    ss_open_result_clear(&res);
    s_check(&t, "store: subscription set replaced", ok);

    // --- a delta adds and removes single subscriptions, the rest stays
    {
        char *gone[] = {"$share/g/c/+", "never/held"};
        int64_t before = s_raw_int(&t, "HLEN lk:sess:{%s}", "c1");
        ok = ss_store_subs_delta(store, "c1", "fe-2", set1, 2, NULL, 0) == 0 &&
             s_raw_int(&t, "HEXISTS lk:sess:{%s} sub:a/#", "c1") == 1 &&
             s_raw_int(&t, "HLEN lk:sess:{%s}", "c1") == before + 2;
        ok = ok && ss_store_subs_delta(store, "c1", "fe-2", NULL, 0, gone, 2) == 0 &&
             s_raw_int(&t, "HEXISTS lk:sess:{%s} sub:$share/g/c/+", "c1") == 0 &&
             s_raw_int(&t, "HLEN lk:sess:{%s}", "c1") == before + 1;
        ok = ok && ss_store_subs_delta(store, "c1", "fe-1", set2, 1, NULL, 0) == 1;
        s_check(&t, "store: subscription delta", ok);
    }

    // --- expired pending messages skipped and deleted
    ok = s_test_put(store, "c1", 1, lk_wall_ms() + 50, ids) == 0 && ids[0] == 13;
    zclock_sleep(100);
    ok = ok && s_test_open(store, "c1", "fe-2", 22, false, 3600, &res) == 0 &&
         res.n_pending == 10 && res.pending[9]->store_id == 12 &&
         s_raw_int(&t, "HEXISTS lk:q:{%s} 13", "c1") == 0 &&
         ss_store_session(store, "c1")->qlen == 10;
    ss_open_result_clear(&res);
    s_check(&t, "store: expired pending message skipped and deleted", ok);

    // --- retried SessionOpen keeps its first answer
    ss_open_t again = {
        .req = 7, .client = "c9", .clean = true, .expiry = 60, .node = "fe-1", .node_epoch = 11};
    ok = ss_store_open(store, &again, &res) == 0 && !res.present;
    ss_open_result_clear(&res);
    ok = ok && s_test_put(store, "c9", 1, 0, ids) == 0 && ids[0] == 1;
    ok = ok && ss_store_open(store, &again, &res) == 0 && !res.present && res.n_pending == 1;
    ss_open_result_clear(&res);
    s_check(&t, "store: retried open answers the same", ok);

    // --- clean start: everything goes but the id counter
    ok = s_test_open(store, "c1", "fe-1", 11, true, 3600, &res) == 0 && !res.present &&
         res.n_pending == 0 && res.n_subs == 0;
    ss_open_result_clear(&res);
    ok = ok && s_raw_int(&t, "EXISTS lk:q:{%s}", "c1") == 0 &&
         s_raw_int(&t, "HEXISTS lk:sess:{%s} sub:$share/g/c/+", "c1") == 0 &&
         s_raw_int(&t, "SISMEMBER lk:sessions %s", "c1") == 1;
    ok = ok && s_test_put(store, "c1", 1, 0, ids) == 0 && ids[0] == 14;
    s_check(&t, "store: clean start deletes the old session", ok);
    ok = s_test_open(store, "c1", "fe-1", 11, true, 0, &res) == 0 && !res.present;
    ss_open_result_clear(&res);
    ok = ok && s_raw_int(&t, "EXISTS lk:q:{%s}", "c1") == 0 &&
         s_raw_int(&t, "EXISTS lk:sess:{%s}", "c1") == 0 &&
         s_raw_int(&t, "EXISTS lk:qseq:{%s}", "c1") == 0 &&
         s_raw_int(&t, "SISMEMBER lk:sessions %s", "c1") == 0 &&
         !ss_store_session(store, "c1")->persistent;
    s_check(&t, "store: clean start with expiry 0 leaves nothing in redis", ok);

    // --- close: only from the holding node; expiry 0 deletes; else offline, then expires
    ok = s_test_open(store, "c2", "fe-1", 11, false, 1, &res) == 0;
    ss_open_result_clear(&res);
    ok = ok && ss_store_close(store, "c2", "fe-2", 0, 1, NULL, 0, false) == 1;
    ok = ok && ss_store_close(store, "c2", "fe-1", 0, 1, set1, 2, true) == 0;
    s = ss_store_session(store, "c2");
    int64_t closed_at = s ? s->disconnected_at : 0;
    ok = ok && s && !s->node && closed_at > 0 &&
         s_raw_int(&t, "HEXISTS lk:sess:{%s} sub:b", "c2") == 1;
    zlistx_t *list = s_name_list();
    ok = ok && ss_store_expire(store, closed_at + 500, 100, list) == 0 && zlistx_size(list) == 0;
    ok = ok && ss_store_expire(store, closed_at + 1000, 100, list) == 0 && zlistx_size(list) == 1 &&
         s_list_has(list, "c2") && !ss_store_session(store, "c2") &&
         s_raw_int(&t, "EXISTS lk:sess:{%s}", "c2") == 0 &&
         s_raw_int(&t, "SISMEMBER lk:sessions %s", "c2") == 0;
    zlistx_purge(list);
    s_check(&t, "store: closed session expires", ok);

    ok = s_test_open(store, "c3", "fe-1", 11, false, SS_EXPIRY_NEVER, &res) == 0;
    ss_open_result_clear(&res);
    ok = ok && ss_store_close(store, "c3", "fe-1", 0, SS_EXPIRY_NEVER, NULL, 0, false) == 0;
    int64_t later = lk_wall_ms() + 10LL * 365 * 86400 * 1000;
    ok = ok && ss_store_expire(store, later, 100, list) == 0 && zlistx_size(list) == 0;
    ss_store_set_forced_expiry(store, 10);
    ok =
        ok && ss_store_expire(store, lk_wall_ms() + 5000, 100, list) == 0 && zlistx_size(list) == 0;
    ok = ok && ss_store_expire(store, lk_wall_ms() + 11000, 100, list) == 0 &&
         s_list_has(list, "c3") && !ss_store_session(store, "c3");
    ss_store_set_forced_expiry(store, 0);
    zlistx_purge(list);
    s_check(&t, "store: never-expiring session expires by persistent_client_expiration", ok);

    ok = s_test_open(store, "c4", "fe-1", 11, false, 100, &res) == 0;
    ss_open_result_clear(&res);
    ok = ok && s_test_put(store, "c4", 2, 0, ids) == 0 &&
         ss_store_close(store, "c4", "fe-1", 0, 0, NULL, 0, false) == 0 &&
         !ss_store_session(store, "c4") && s_raw_int(&t, "EXISTS lk:q:{%s}", "c4") == 0 &&
         s_raw_int(&t, "EXISTS lk:sess:{%s}", "c4") == 0;
    s_check(&t, "store: close with expiry 0 deletes the session", ok);

    // --- the registry names one connection: a close from another changes nothing
    {
        ss_open_t a = {.client = "c5", .expiry = 100, .node = "fe-1", .node_epoch = 11, .conn = 4};
        ss_open_t b = {.client = "c5", .expiry = 100, .node = "fe-1", .node_epoch = 11, .conn = 9};
        ok = ss_store_open(store, &a, &res) == 0;
        ss_open_result_clear(&res);
        ok = ok && ss_store_open(store, &b, &res) == 0 && res.present;
        ss_open_result_clear(&res);
        ok = ok && ss_store_close(store, "c5", "fe-1", 4, 0, NULL, 0, false) == 1 &&
             ss_store_session(store, "c5") && ss_store_session(store, "c5")->conn == 9 &&
             s_raw_int(&t, "EXISTS lk:sess:{%s}", "c5") == 1;
        ok = ok && ss_store_close(store, "c5", "fe-1", 9, 100, NULL, 0, false) == 0 &&
             ss_store_session(store, "c5")->disconnected_at > 0;
        s_check(&t, "store: close names its connection", ok);

        // --- inbound QoS 2 packet ids are session state, returned on resume
        uint32_t add[] = {7, 9}, del[] = {7};
        ss_open_t c = {.client = "c5", .expiry = 100, .node = "fe-2", .node_epoch = 5, .conn = 1};
        ok = ss_store_open(store, &c, &res) == 0 && res.present;
        ss_open_result_clear(&res);
        ok = ok && ss_store_rx(store, "c5", "fe-2", add, 2, NULL, 0) == 0 &&
             ss_store_rx(store, "c5", "fe-1", del, 1, NULL, 0) == 1 &&
             ss_store_rx(store, "c5", "fe-2", NULL, 0, del, 1) == 0 &&
             ss_store_close(store, "c5", "fe-2", 1, 100, NULL, 0, false) == 0;
        c.conn = 2;
        ok = ok && ss_store_open(store, &c, &res) == 0 && res.present && res.n_rx_pids == 1 &&
             res.rx_pids[0] == 9;
        ss_open_result_clear(&res);
        c.clean = true;
        c.conn = 3;
        ok = ok && ss_store_open(store, &c, &res) == 0 && !res.present && res.n_rx_pids == 0 &&
             s_raw_int(&t, "EXISTS lk:rx:{%s}", "c5") == 0;
        ss_open_result_clear(&res);
        ok = ok && ss_store_close(store, "c5", "fe-2", 3, 0, NULL, 0, false) == 0;
        s_check(&t, "store: inbound QoS 2 ids kept with the session", ok);
    }

    // --- retained set / delete / scan / expiry
    Lk__Msg rm[4];
    Lk__Msg *rptr[4];
    const char *rtopics[] = {"r/1", "r/2", "r/3", "r/4"};
    for (int i = 0; i < 4; i++) {
        lk__msg__init(&rm[i]);
        rm[i].topic = (char *)rtopics[i];
        rm[i].payload.data = (uint8_t *)"x";
        rm[i].payload.len = 1;
        rm[i].retain = true;
        rptr[i] = &rm[i];
    }
    rm[3].expiry_at_ms = (uint64_t)lk_wall_ms() + 50;
    ok = ss_store_retain_set(store, rptr, 4) == 0 && s_raw_int(&t, "HLEN %s", "lk:retain") == 4;
    rm[1].payload.len = 0; /* delete r/2 */
    ok = ok && ss_store_retain_set(store, &rptr[1], 1) == 0 &&
         s_raw_int(&t, "HLEN %s", "lk:retain") == 3;
    zclock_sleep(100);
    uint64_t cursor = 0;
    int steps = 0, rc;
    while ((rc = ss_store_retain_scan(store, &cursor, 1, s_collect_topic, list)) == 1 &&
           steps < 100)
        steps++;
    ok = ok && rc == 0 && zlistx_size(list) == 2 && s_list_has(list, "r/1") &&
         s_list_has(list, "r/3") && s_raw_int(&t, "HEXISTS lk:retain %s", "r/4") == 0;
    zlistx_purge(list);
    s_check(&t, "store: retained set, delete, scan, expiry", ok);

    // --- node down / up
    ok = s_test_open(store, "n1", "fe-9", 5, false, 600, &res) == 0;
    ss_open_result_clear(&res);
    ok = ok && s_test_open(store, "n2", "fe-9", 5, false, 0, &res) == 0;
    ss_open_result_clear(&res);
    ss_store_nodes(store, list);
    ok = ok && s_list_has(list, "fe-9");
    zlistx_purge(list);
    ss_store_node_down(store, "fe-9", 1000);
    s = ss_store_session(store, "n1");
    ok = ok && !ss_store_session(store, "n2") && s && s->disconnected_at == 1000 && s->node &&
         s_raw_int(&t, "HGET lk:sess:{%s} disconnected_at", "n1") == 1000;
    ss_store_node_up(store, "fe-9", 5, 2000);
    ok = ok && s->disconnected_at == 0 && s->node;
    ss_store_node_up(store, "fe-9", 6, 3000);
    ok = ok && s->disconnected_at == 3000 && !s->node;
    s_check(&t, "store: node down, back, restarted", ok);

    // --- offline list and their subscriptions (for the router resync)
    ok = s_test_open(store, "n3", "fe-1", 11, false, 600, &res) == 0;
    ss_open_result_clear(&res);
    ok = ok && ss_store_close(store, "n3", "fe-1", 0, 600, set1, 2, true) == 0;
    ss_store_offline(store, list, NULL, NULL);
    ok = ok && s_list_has(list, "n1") && s_list_has(list, "n3") && !s_list_has(list, "c9");
    zlistx_purge(list);
    const char *who[] = {"n3", "gone"};
    s_subs_probe_t probe = {.client = "n3"};
    ok = ok && ss_store_subs(store, who, 2, s_probe_subs, &probe) == 0 && probe.seen &&
         probe.n_subs == 2;
    s_check(&t, "store: offline sessions and their subscriptions", ok);

    // --- queue limit
    ss_open_t q = {.client = "q1", .expiry = 60, .max_queued = 3, .node = "fe-1", .node_epoch = 11};
    ok = ss_store_open(store, &q, &res) == 0;
    ss_open_result_clear(&res);
    uint64_t before = ss_store_dropped(store);
    ok = ok && s_test_put(store, "q1", 5, 0, ids) == 0 && ids[0] == 1 && ids[2] == 3 &&
         ids[3] == 0 && ids[4] == 0 && ss_store_dropped(store) == before + 2 &&
         s_raw_int(&t, "HLEN lk:q:{%s}", "q1") == 3;
    ok = ok && ss_store_ack(store, "q1", "fe-1", ids, 1, NULL, NULL, 0, NULL, 0, false) == 0 &&
         s_test_put(store, "q1", 2, 0, ids) == 0 && ids[0] == 4 && ids[1] == 0;
    s_check(&t, "store: queue limit drops and counts", ok);

    // --- a broken link: not stored, not counted, and the next batch works
    s = ss_store_session(store, "n3");
    size_t qlen = s->qlen;
    r = lk_redis_cmd(t.raw, "CLIENT KILL TYPE normal SKIPME yes");
    lk_redis_reply_free(&r);
    rc = s_test_put(store, "n3", 2, 0, ids);
    ok = rc == -1 && s->qlen == qlen;
    ok = ok && s_test_put(store, "n3", 2, 0, ids) == 0 && s->qlen == qlen + 2;
    s_check(&t, "store: failed pipeline reported, then recovers", ok);

    // --- restart: a new store on the same Redis sees the same sessions and counters
    s = ss_store_session(store, "c9");
    uint64_t c9_seq = s ? s->qseq : 0;
    size_t n_sessions = ss_store_size(store);
    size_t n_persistent = 0;
    for (ss_session_t *x = zhashx_first(store->sessions); x; x = zhashx_next(store->sessions))
        n_persistent += x->persistent;
    ss_store_destroy(&store);
    store = ss_store_new(host, port);
    ok = ss_store_load(store) == 0 && ss_store_size(store) == n_persistent &&
         n_persistent < n_sessions;
    s = ss_store_session(store, "c9");
    ok = ok && s && s->persistent && s->qseq == c9_seq && s->qlen == 1 && s->node &&
         strcmp(s->node, "fe-1") == 0 && s->node_epoch == 11 && s->disconnected_at == 0;
    ok = ok && s_test_put(store, "c9", 1, 0, ids) == 0 && ids[0] == c9_seq + 1;
    s = ss_store_session(store, "n3");
    ok = ok && s && !s->node && s->disconnected_at > 0 && s->expiry == 600;
    s = ss_store_session(store, "n1");
    ok = ok && s && !s->node && s->disconnected_at == 3000;
    s_check(&t, "store: load after restart", ok);

    // --- a store with Redis gone answers -1 and changes nothing
    ss_store_t *dead = ss_store_new("127.0.0.1", 1);
    ok = ss_store_load(dead) == -1 && s_test_open(dead, "z", "fe-1", 1, false, 9, &res) == -1 &&
         !ss_store_session(dead, "z");
    ss_store_destroy(&dead);
    s_check(&t, "store: redis unreachable reported", ok);

    // --- replicas: two stores over one Redis, each believing it owns the client
    ss_store_t *ra = ss_store_new(host, port), *rb = ss_store_new(host, port);
    ss_store_set_owner(ra, s_test_owns_all, NULL);
    ss_store_set_owner(rb, s_test_owns_all, NULL);
    ok = ss_store_load(ra) == 0 && ss_store_load(rb) == 0 && ss_store_needs_refresh(ra, "c9") &&
         ss_store_needs_refresh(rb, "r1");
    ok = ok && s_test_open(ra, "r1", "fe-1", 11, false, 600, &res) == 0 && !res.present;
    ss_open_result_clear(&res);
    ok = ok && !ss_store_needs_refresh(ra, "r1") && s_test_put(ra, "r1", 2, 0, ids) == 0 &&
         ids[0] == 1 && ids[1] == 2;
    /* rb never saw r1: it reads it before storing, and continues the ids */
    const char *r1 = "r1";
    ok = ok && ss_store_needs_refresh(rb, "r1") && ss_store_refresh(rb, &r1, 1, NULL, NULL) == 0 &&
         ss_store_session(rb, "r1") && ss_store_session(rb, "r1")->qseq == 2 &&
         ss_store_session(rb, "r1")->qlen == 2;
    ok = ok && s_test_put(rb, "r1", 1, 0, ids) == 0 && ids[0] == 3;
    /* ra's memory is behind (the overlap of a move): its ids still come from Redis */
    ok = ok && s_test_put(ra, "r1", 2, 0, ids) == 0 && ids[0] == 4 && ids[1] == 5 &&
         s_raw_int(&t, "HLEN lk:q:{%s}", "r1") == 5 && s_raw_int(&t, "GET lk:qseq:{%s}", "r1") == 5;
    s_check(&t, "store: replicas never hand out one store id twice", ok);
    /* the owner told of copies a sibling stored: those still queued, in id order */
    {
        s_copies_t got = {0};
        const uint64_t told[] = {1, 2, 3, 9};
        ok = s_test_open(ra, "r9", "fe-1", 11, false, 600, &res) == 0;
        ss_open_result_clear(&res);
        const char *r9 = "r9";
        ok = ok && ss_store_refresh(rb, &r9, 1, NULL, NULL) == 0 &&
             s_test_put(rb, "r9", 3, 0, ids) == 0 && ids[2] == 3 &&
             s_raw_int(&t, "HDEL lk:q:{%s} 2", "r9") == 1 &&
             ss_store_copies(ra, "r9", told, 4, s_test_copy, &got) == 0 && got.n == 2 &&
             got.ids[0] == 1 && got.ids[1] == 3 && got.msgs_ok;
        s_check(&t, "store: copies told by a sibling read back if still queued", ok);
    }
    ok = s_test_open(rb, "r1", "fe-2", 22, false, 600, &res) == 0 && res.present &&
         res.n_pending == 5;
    ss_open_result_clear(&res);
    /* a session deleted by the other replica is forgotten at refresh */
    ss_store_mark_stale(ra, true);
    ok = ok && ss_store_close(rb, "r1", "fe-2", 0, 0, NULL, 0, false) == 0 &&
         ss_store_needs_refresh(ra, "r1") && ss_store_refresh(ra, &r1, 1, NULL, NULL) == 0 &&
         !ss_store_session(ra, "r1");
    /* discover: sessions made by the other replica after our load */
    ok = ok && s_test_open(ra, "r2", "fe-1", 11, false, 600, &res) == 0;
    ss_open_result_clear(&res);
    ok = ok && !ss_store_session(rb, "r2") && ss_store_discover(rb) == 0 &&
         ss_store_session(rb, "r2") && ss_store_session(rb, "r2")->stale;
    s_check(&t, "store: replicas read what the other changed", ok);
    ss_store_destroy(&ra);
    ss_store_destroy(&rb);

    // --- keys of the layout before hash tags moved once, TTLs kept, then loaded
    const char *old_layout[] = {
        "DEL lk:layout",
        "HSET lk:sess:old1 node_epoch 0 conn 0 expiry 900 disconnected_at 5",
        "HSET lk:q:old1 1 x",
        "SET lk:qseq:old1 1",
        "SADD lk:sessions old1",
        "SET lk:arb:evseq 41",
        "HSET lk:bind:L1 ann m",
        "SET lk:login:tmp1 ann EX 500",
        "SET lk:sess:{old1}x keep"};
    for (size_t i = 0; i < LK_ARRAY_LEN(old_layout); i++) {
        r = lk_redis_cmd(t.raw, old_layout[i]);
        lk_redis_reply_free(&r);
    }
    ok = ss_store_migrate(store) == 0 && s_raw_int(&t, "EXISTS lk:sess:%s", "old1") == 0 &&
         s_raw_int(&t, "HGET lk:sess:{%s} expiry", "old1") == 900 &&
         s_raw_int(&t, "HLEN lk:q:{%s}", "old1") == 1 &&
         s_raw_int(&t, "GET lk:qseq:{%s}", "old1") == 1 &&
         s_raw_int(&t, "GET %s", "lk:{arb}:evseq") == 41 &&
         s_raw_int(&t, "HEXISTS lk:{arb}:bind:%s ann", "L1") == 1 &&
         s_raw_int(&t, "TTL lk:{arb}:login:%s", "tmp1") > 0 &&
         s_raw_int(&t, "GET %s", "lk:layout") == 2 && ss_store_load(store) == 0 &&
         ss_store_session(store, "old1") && ss_store_session(store, "old1")->expiry == 900;
    /* once only: an old name written afterwards stays */
    r = lk_redis_cmd(t.raw, "SET lk:arb:evseq 1");
    lk_redis_reply_free(&r);
    ok = ok && ss_store_migrate(store) == 0 && s_raw_int(&t, "GET %s", "lk:arb:evseq") == 1 &&
         s_raw_int(&t, "GET %s", "lk:{arb}:evseq") == 41;
    s_check(&t, "store: old key layout migrated once", ok);

    zlistx_destroy(&list);
    ss_store_destroy(&store);
    lk_redis_destroy(&t.raw);
}
