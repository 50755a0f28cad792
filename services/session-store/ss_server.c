/*  ss_server: the session-store actor (see ss_server.h).

    One self_t holds the bus, the store and the timers. Bus handlers are thin: each body
    maps to one ss_store call in s_dispatch, which returns -1 only when Redis failed and
    the envelope must be tried again; everything else (done, ignored, malformed) is acked
    so the sender can forget it.

    Retry queue: a reliable envelope whose work failed is packed again and kept, with its
    sender's epoch, and every later reliable envelope queues behind it so nothing
    overtakes (a SessionAck must not land after the SessionClose that followed it). The
    queue is drained by a timer with backoff; an entry whose sender has since restarted
    is dropped, since that sender's new life re-sends what still matters. Memory is bounded
    by the senders: the router and frontends stop when their own unacked windows fill. */
#include "ss_server.h"
#include "lk_admin.h"
#include "ss_codec.h"
#include "ss_store.h"
#include "lk_bus.h"
#include "lk_common.h"
#include "lk_msglog.h"
#include "lk_replicas.h"
#include <czmq.h>
#include <errno.h>
#include <inttypes.h>

#define SS_CRON_MS 1000
#define SS_BACKOFF_MIN_MS 100
#define SS_BACKOFF_MAX_MS 2000
#define SS_WARN_EVERY_MS 5000
#define SS_NODE_GRACE_MS 3000  /* after loading: a node not heard from by then is gone */
#define SS_RESYNC_SESSIONS 256 /* offline sessions per resync step */
#define SS_RESYNC_RETAINED 500 /* HSCAN COUNT per resync step */
#define SS_RESYNC_RETRY_MS 1000
#define SS_EXPIRE_MAX 1000 /* sessions expired per cron tick */
#define SS_MSGLOG_SEGMENT (64 * 1024 * 1024)
#define SS_HANDOFF_MS 1500 /* a holder that does not answer a Takeover by then is gone */
#define SS_LOST_MS 10000   /* how long a superseded connection's re-sent opens are refused */
#define SS_REFRESH_MAX 256 /* stale owned sessions read per cron tick (replicas) */

/* A SessionOpen waiting until the connection that holds its client is closed: the holder's
   frontend answers the Takeover with TakeoverDone after everything that connection sent
   (acks, SessionClose), so the open then sees the session as that connection left it. */
typedef struct {
    char *client;
    char *node;         /* the requester */
    uint64_t epoch;
    uint64_t conn;
    uint8_t *data;      /* its packed SessionOpen */
    size_t len;
    char *holder;       /* the node asked to close its connection */
    uint64_t holder_conn;
    uint64_t holder_epoch;
    bool resumed;
    int64_t deadline;
} s_handoff_t;

/* a reliable envelope waiting for Redis */
typedef struct {
    char *peer;
    uint64_t epoch;
    uint8_t *data;
    size_t len;
} s_retry_t;

typedef struct _ss_server_t self_t;

struct _ss_server_t {
    lk_loop_t *loop;
    lk_config_t *config;    /* the caller's; outlives us */
    char *node;
    char *session_endpoint; /* ours: the template with %n = our node id */
    const char *router_endpoint;
    const char *redis_host;
    int redis_port;
    const char *msglog_dir;
    lk_bus_t *bus;
    lk_replicas_t *routers; /* router_endpoint / router_replicas */
    lk_replicas_t *sibs;    /* session_replicas > 1: the other replicas (liveness) */
    lk_msglog_t *msglog;
    ss_store_t *store;
    int ready_fd;
    /* start-up */
    bool loaded;
    int64_t loaded_at;
    bool nodes_checked;
    int load_timer;
    int64_t load_backoff;
    int cron_timer;
    int handoff_timer;
    int sys_timer;
    /* client -> node where its delayed will waits (volatile: the will itself is too) */
    zhashx_t *will_nodes;
    /* client -> s_handoff_t: opens waiting for the previous connection to close */
    zhashx_t *handoffs;
    /* "node/epoch/conn" -> expiry (mono ms) of connections that lost a takeover race */
    zhashx_t *lost;
    /* waiting for Redis */
    zlistx_t *retry;
    int retry_timer;
    int64_t retry_backoff;
    int64_t redis_warned;
    /* router resync: to the routers that (re)started, by index (bit i); set before the
       load, the load starts it */
    uint64_t resync_mask;
    int resync_phase; /* 0 idle, 1 offline sessions, 2 retained messages */
    zlistx_t *resync_clients;
    uint64_t resync_cursor;
    int resync_timer;
    size_t resync_sessions;
    size_t resync_retained;
    /* scratch */
    uint64_t *ids;
    size_t ids_cap;
    ss_buf_t buf;
};

static void s_retry_destroy(void **item_p)
{
    s_retry_t *r = *item_p;
    if (!r)
        return;
    free(r->peer);
    free(r->data);
    free(r);
    *item_p = NULL;
}

static void s_handoff_destroy(void **item_p)
{
    s_handoff_t *h = *item_p;
    if (!h)
        return;
    free(h->client);
    free(h->node);
    free(h->data);
    free(h->holder);
    free(h);
    *item_p = NULL;
}

static zlistx_t *s_name_list(void)
{
    zlistx_t *list = zlistx_new();
    zlistx_set_destructor(list, (zlistx_destructor_fn *)zstr_free);
    return list;
}

/* A non-negative integer setting; with units, Mosquitto's h/d/w/m/y suffixes (m is a
   month of 30 days) are accepted. 0, or -1 with a log line. */
static int s_cfg_number(lk_config_t *cfg, const char *key, int64_t def, int64_t max, bool units,
                        int64_t *out)
{
    const char *v = lk_config_get(cfg, key, NULL);
    *out = def;
    if (!v || !*v)
        return 0;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    int64_t mult = 1;
    if (units && end != v && *end && !end[1]) {
        switch (*end) {
        case 'h':
            mult = 3600;
            break;
        case 'd':
            mult = 86400;
            break;
        case 'w':
            mult = 7 * 86400;
            break;
        case 'm':
            mult = 30 * 86400;
            break;
        case 'y':
            mult = 365 * 86400;
            break;
        default:
            mult = 0;
            break;
        }
        if (mult)
            end++;
    }
    if (errno || end == v || *end || x < 0 || mult == 0 || x > max / mult) {
        lk_error("configuration: %s: '%s' is not a number from 0 to %" PRId64, key, v, max);
        return -1;
    }
    *out = x * mult;
    return 0;
}

ss_server_t *ss_server_new(lk_loop_t *loop, lk_config_t *cfg, const char *node, int ready_fd)
{
    self_t *self = lk_calloc(1, sizeof(*self));
    self->loop = loop;
    self->config = cfg;
    self->node = lk_strdup(node);
    self->ready_fd = ready_fd;
    self->retry = zlistx_new();
    self->will_nodes = zhashx_new();
    self->handoffs = zhashx_new();
    zhashx_set_destructor(self->handoffs, s_handoff_destroy);
    self->lost = zhashx_new();
    zhashx_set_destructor(self->lost, (zhashx_destructor_fn *)zstr_free);
    zlistx_set_destructor(self->retry, s_retry_destroy);
    self->retry_backoff = SS_BACKOFF_MIN_MS;

    self->session_endpoint = lk_replicas_endpoint(cfg, "session", node);
    self->router_endpoint = lk_config_get(cfg, "router_endpoint", NULL);
    self->redis_host = lk_config_get(cfg, "redis_host", "127.0.0.1");
    self->msglog_dir = lk_config_get(cfg, "msglog_dir", NULL);
    if (self->msglog_dir && !*self->msglog_dir)
        self->msglog_dir = NULL;
    int64_t port, max_queued, expiration;
    int rc = 0;
    if (!self->session_endpoint || !*self->session_endpoint) {
        lk_error("configuration: session_endpoint is not set");
        rc = -1;
    }
    if (!self->router_endpoint || !*self->router_endpoint) {
        lk_error("configuration: router_endpoint is not set");
        rc = -1;
    }
    if (s_cfg_number(cfg, "redis_port", 6379, 65535, false, &port) != 0 ||
        s_cfg_number(cfg, "max_queued_messages", 1000, UINT32_MAX, false, &max_queued) != 0 ||
        s_cfg_number(cfg, "persistent_client_expiration", 0, UINT32_MAX - 1, true, &expiration) !=
            0)
        rc = -1;
    if (rc != 0) {
        ss_server_destroy(&self);
        return NULL;
    }
    self->redis_port = (int)port;
    self->store = ss_store_new(self->redis_host, self->redis_port);
    if (ss_store_configure(self->store, cfg) != 0) {
        ss_server_destroy(&self);
        return NULL;
    }
    ss_store_set_max_queued(self->store, (uint32_t)max_queued);
    ss_store_set_forced_expiry(self->store, (uint32_t)expiration);
    return self;
}

static void s_cancel(self_t *self, int *timer)
{
    if (*timer)
        lk_loop_timer_cancel(self->loop, *timer);
    *timer = 0;
}

void ss_server_destroy(ss_server_t **self_p)
{
    self_t *self = *self_p;
    if (!self)
        return;
    s_cancel(self, &self->cron_timer);
    s_cancel(self, &self->handoff_timer);
    s_cancel(self, &self->sys_timer);
    s_cancel(self, &self->load_timer);
    s_cancel(self, &self->retry_timer);
    s_cancel(self, &self->resync_timer);
    if (zlistx_size(self->retry))
        lk_notice("%zu envelope(s) not stored at exit; their senders will re-send",
                  zlistx_size(self->retry));
    lk_replicas_destroy(&self->sibs);
    lk_bus_destroy(&self->bus);
    lk_replicas_destroy(&self->routers);
    lk_msglog_close(&self->msglog);
    free(self->session_endpoint);
    ss_store_destroy(&self->store);
    zlistx_destroy(&self->retry);
    zhashx_destroy(&self->will_nodes);
    zhashx_destroy(&self->handoffs);
    zhashx_destroy(&self->lost);
    zlistx_destroy(&self->resync_clients);
    free(self->ids);
    ss_buf_release(&self->buf);
    free(self->node);
    free(self);
    *self_p = NULL;
}

static void s_send(self_t *self, lk_peer_t *peer, Lk__Envelope *env, bool reliable)
{
    if (lk_bus_send(self->bus, peer, env, reliable) < 0)
        lk_error("bus: envelope (body %d) to %s could not be packed", env->body_case,
                 lk_peer_name(peer));
}

/* env (reliable) to the routers in mask, bit i for router i: routing state (Detach) to
   every router (SS_ALL_ROUTERS), each holds the whole table; what a resync sends to the
   routers it is for (resync_mask) */
#define SS_ALL_ROUTERS (~0ull)
static void s_send_routers(self_t *self, Lk__Envelope *env, uint64_t mask)
{
    for (int i = 0; i < lk_replicas_count(self->routers); i++)
        if (mask & (1ull << i))
            s_send(self, lk_replicas_nth(self->routers, i), env, true);
}

static void s_ack(self_t *self, lk_peer_t *peer, const Lk__Envelope *env)
{
    if (env->seq)
        lk_bus_ack(self->bus, peer, env->seq);
}

static void s_redis_trouble(self_t *self)
{
    int64_t now = lk_mono_ms();
    if (self->redis_warned && now - self->redis_warned < SS_WARN_EVERY_MS)
        return;
    self->redis_warned = now;
    lk_warn("redis at %s:%d unavailable: %zu envelope(s) wait, not acked", self->redis_host,
            self->redis_port, zlistx_size(self->retry));
}

/* does node (still) hold a client it opened under epoch? */
static bool s_holds(const char *node, uint64_t epoch, void *arg)
{
    self_t *self = arg;
    lk_peer_t *p = lk_bus_peer(self->bus, node);
    return p && lk_peer_alive(p) && lk_peer_epoch(p) == epoch;
}

/* as s_holds, but in the grace period after loading a node not heard from yet still
   holds its clients (the cron's node check decides after it, as for loaded sessions) */
static bool s_holds_read(const char *node, uint64_t epoch, void *arg)
{
    self_t *self = arg;
    if (!self->nodes_checked) {
        lk_peer_t *p = lk_bus_peer(self->bus, node);
        if (!p || !lk_peer_alive(p))
            return true;
    }
    return s_holds(node, epoch, arg);
}

/* replicas: a client is ours while the owner by its id over the live replicas is us */
static bool s_owns(const char *client, void *arg)
{
    self_t *self = arg;
    return lk_replicas_mine(self->sibs, client, strlen(client));
}

static bool s_is_sibling(self_t *self, lk_peer_t *peer)
{
    return self->sibs && lk_replicas_has(self->sibs, peer);
}

/* Replicas: the sessions of these clients read from Redis first when this replica did not
   keep them current (another owned them meanwhile). -1: Redis failed. */
static int s_fresh(self_t *self, const char **clients, size_t n)
{
    if (!self->sibs)
        return 0;
    const char **need = lk_calloc(n ? n : 1, sizeof(*need));
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!clients[i] || !ss_store_needs_refresh(self->store, clients[i]))
            continue;
        bool dup = false;
        for (size_t j = 0; j < k && !dup; j++)
            dup = strcmp(need[j], clients[i]) == 0;
        if (!dup)
            need[k++] = clients[i];
    }
    int rc = ss_store_refresh(self->store, need, k, s_holds_read, self);
    free(need);
    return rc;
}

static int s_fresh1(self_t *self, const char *client)
{
    return client ? s_fresh(self, &client, 1) : 0;
}

//  --------------------------------------------------------------------------
//  Work from the router

/* the frontend holding client as far as we know (its node, while alive), or NULL */
static lk_peer_t *s_holder(self_t *self, const char *client)
{
    ss_session_t *s = ss_store_session(self->store, client);
    if (!s || !s->node || s->disconnected_at || !s_holds(s->node, s->node_epoch, self))
        return NULL;
    return lk_bus_peer(self->bus, s->node);
}

/* a stored copy goes on to the frontend holding its client, if any */
static void s_forward_deliver(self_t *self, const Lk__Deliver *d)
{
    lk_peer_t *fe = s_holder(self, d->client);
    /* acknowledged: a copy lost on the way would wait in Redis for the next reconnect */
    if (fe)
        lk_bus_batch_add(self->bus, fe, LK_BODY_DELIVER, d, true);
}

/* Replicas: a copy stored for a client another replica owns, and that we do not know to
   be held (the router moved it here while the owner looked dead, and the client's
   frontend re-opened its session at the owner, perhaps before the copy was in Redis), is
   the owner's to forward: it is told the store id. */
static void s_forward(self_t *self, const Lk__StoreItem *item, uint64_t store_id)
{
    Lk__Deliver d = LK__DELIVER__INIT;
    d.client = item->client;
    d.store_id = store_id;
    lk_peer_t *owner =
        self->sibs ? lk_replicas_owner(self->sibs, item->client, strlen(item->client)) : NULL;
    if (owner && !s_holder(self, item->client)) {
        lk_bus_batch_add(self->bus, owner, LK_BODY_DELIVER, &d, true);
        return;
    }
    d.msg = item->msg;
    d.n_sub_ids = item->n_sub_ids;
    d.sub_ids = item->sub_ids;
    s_forward_deliver(self, &d);
}

static void s_forward_late(const Lk__Deliver *d, void *arg)
{
    Lk__Deliver late = *d;
    late.late = true;
    s_forward_deliver(arg, &late);
}

/* a copy a sibling stored for a client of ours (or we for one of a sibling's) */
typedef struct {
    const char *client;
    uint64_t id;
} s_told_t;

/* told copies of our clients: those not acked meanwhile go to their frontends, read from
   Redis. 0, or -1 when Redis failed. */
static int s_forward_told(self_t *self, const s_told_t *t, size_t n)
{
    const char **names = lk_calloc(n ? n : 1, sizeof(*names));
    uint64_t *ids = lk_calloc(n ? n : 1, sizeof(*ids));
    bool *done = lk_calloc(n ? n : 1, sizeof(*done));
    for (size_t i = 0; i < n; i++)
        names[i] = t[i].client && t[i].id ? t[i].client : NULL;
    int rc = s_fresh(self, names, n);
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (!names[i] || done[i])
            continue;
        size_t k = 0;
        for (size_t j = i; j < n; j++)
            if (names[j] && !done[j] && strcmp(names[j], names[i]) == 0) {
                ids[k++] = t[j].id;
                done[j] = true;
            }
        rc = ss_store_copies(self->store, names[i], ids, k, s_forward_late, self);
    }
    free(done);
    free(ids);
    free(names);
    return rc;
}

static int s_handle_told(self_t *self, lk_peer_t *peer, Lk__Envelope *env)
{
    Lk__DeliverBatch *b = env->deliver;
    s_told_t *t = lk_calloc(b->n_items ? b->n_items : 1, sizeof(*t));
    for (size_t i = 0; i < b->n_items; i++)
        if (b->items[i]) {
            t[i].client = b->items[i]->client;
            t[i].id = b->items[i]->store_id;
        }
    int rc = s_forward_told(self, t, b->n_items);
    free(t);
    if (rc != 0)
        return -1;
    lk_info("%s stored %zu copies for our clients: handed on", lk_peer_name(peer), b->n_items);
    s_ack(self, peer, env);
    return 0;
}

typedef struct {
    s_told_t *t;
    size_t n, cap;
} s_told_list_t;

static bool s_take_told(Lk__Envelope *env, uint64_t seq, void *arg)
{
    s_told_list_t *l = arg;
    if (env->body_case != LK__ENVELOPE__BODY_DELIVER)
        return false;
    for (size_t i = 0; i < env->deliver->n_items; i++) {
        const Lk__Deliver *d = env->deliver->items[i];
        if (!d || !d->client || !d->store_id)
            continue;
        if (l->n == l->cap) {
            l->cap = l->cap ? 2 * l->cap : 64;
            l->t = lk_realloc(l->t, l->cap * sizeof(*l->t));
        }
        l->t[l->n].client = lk_strdup(d->client);
        l->t[l->n++].id = d->store_id;
    }
    return false;
}

/* A sibling went silent with copies we told it of (it looked alive when we stored them):
   their clients' owner is another one now, us or a third. Untold, they would wait in
   Redis until the client reconnects. */
static void s_retell(self_t *self, lk_peer_t *sib)
{
    s_told_list_t l = {NULL, 0, 0};
    lk_bus_each_unacked(self->bus, sib, s_take_told, &l);
    if (!l.n)
        return;
    lk_peer_drop_unacked(sib);
    s_told_t *ours = lk_calloc(l.n, sizeof(*ours));
    size_t n_ours = 0;
    for (size_t i = 0; i < l.n; i++) {
        const char *c = l.t[i].client;
        lk_peer_t *owner = lk_replicas_owner(self->sibs, c, strlen(c));
        if (owner) {
            Lk__Deliver d = LK__DELIVER__INIT;
            d.client = (char *)c;
            d.store_id = l.t[i].id;
            lk_bus_batch_add(self->bus, owner, LK_BODY_DELIVER, &d, true);
        } else
            ours[n_ours++] = l.t[i];
    }
    lk_notice("replica %s down: %zu stored copies it was told of handed on (%zu here)",
              lk_peer_name(sib), l.n, n_ours);
    if (s_forward_told(self, ours, n_ours) != 0) {
        lk_warn("%zu stored copies not forwarded (redis failed): they wait for their "
                "clients' next connection", n_ours);
        s_redis_trouble(self);
    }
    for (size_t i = 0; i < l.n; i++)
        free((char *)l.t[i].client);
    free(l.t);
    free(ours);
}

static int s_handle_store(self_t *self, lk_peer_t *peer, Lk__Envelope *env)
{
    Lk__StoreBatch *b = env->store;
    if (self->sibs) {
        const char **names = lk_calloc(b->n_items ? b->n_items : 1, sizeof(*names));
        for (size_t i = 0; i < b->n_items; i++)
            names[i] = b->items[i] ? b->items[i]->client : NULL;
        int rc = s_fresh(self, names, b->n_items);
        free(names);
        if (rc != 0)
            return -1;
    }
    if (b->n_items > self->ids_cap) {
        self->ids_cap = b->n_items;
        self->ids = lk_realloc(self->ids, self->ids_cap * sizeof(*self->ids));
    }
    if (ss_store_put(self->store, b->items, b->n_items, self->ids) != 0)
        return -1;
    s_ack(self, peer, env);
    for (size_t i = 0; i < b->n_items; i++)
        if (self->ids[i])
            s_forward(self, b->items[i], self->ids[i]);
    return 0;
}

static int s_handle_retain(self_t *self, lk_peer_t *peer, Lk__Envelope *env)
{
    if (ss_store_retain_set(self->store, env->retain->msgs, env->retain->n_msgs) != 0)
        return -1;
    s_ack(self, peer, env);
    return 0;
}

//  --------------------------------------------------------------------------
//  Work from the frontends

/* Takeover{client, conn, epoch} to node: close that connection (conn 0: only a delayed will
   of the client waits there). resumed: the new connection continues the session. */
static void s_send_takeover(self_t *self, const char *node, const char *client, uint64_t conn,
                            uint64_t epoch, const char *by_node, bool resumed)
{
    lk_peer_t *old = lk_bus_peer(self->bus, node);
    if (!old)
        return; /* never heard of since our start: it holds nobody */
    Lk__Takeover t = LK__TAKEOVER__INIT;
    t.client = (char *)client;
    t.by_node = (char *)by_node;
    t.conn = conn;
    t.epoch = epoch;
    t.resumed = resumed;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_TAKEOVER;
    env.takeover = &t;
    s_send(self, old, &env, false);
    lk_debug("client %s: connection %" PRIu64 " at %s taken over by %s%s", client, conn, node,
             by_node, resumed ? " (resumed)" : "");
}

static char *s_lost_key(const char *node, uint64_t epoch, uint64_t conn)
{
    return zsys_sprintf("%s/%" PRIu64 "/%" PRIu64, node, epoch, conn);
}

/* a connection that lost the race for its client id: closed at its node, and its
   SessionOpen (re-sent every second until answered) refused from now on */
static void s_lose(self_t *self, const char *node, uint64_t epoch, uint64_t conn,
                   const char *client, const char *by_node)
{
    char *key = s_lost_key(node, epoch, conn);
    char *until = zsys_sprintf("%" PRId64, lk_mono_ms() + SS_LOST_MS);
    zhashx_update(self->lost, key, until);
    zstr_free(&key);
    s_send_takeover(self, node, client, conn, epoch, by_node, false);
}

static int s_open_now(self_t *self, lk_peer_t *peer, Lk__SessionOpen *o)
{
    const char *node = lk_peer_name(peer);
    if (s_fresh1(self, o->client) != 0)
        return -1;
    ss_open_t req = {.req = o->req,
                     .client = o->client,
                     .clean = o->clean,
                     .expiry = o->expiry,
                     .max_queued = o->max_queued,
                     .node = node,
                     .node_epoch = lk_peer_epoch(peer),
                     .conn = o->conn};
    ss_open_result_t res;
    if (ss_store_open(self->store, &req, &res) != 0)
        return -1;
    /* the client is back: a delayed will elsewhere is dropped when the session goes on,
       sent now when this connection ends it (clean start) [MQTT-3.1.3-9, 3.1.2-8] */
    const char *will_node = zhashx_lookup(self->will_nodes, o->client);
    if (will_node && strcmp(will_node, node) != 0)
        s_send_takeover(self, will_node, o->client, 0, 0, node, !o->clean);
    zhashx_delete(self->will_nodes, o->client);

    Lk__SessionOpened reply = LK__SESSION_OPENED__INIT;
    reply.req = o->req;
    reply.client = o->client;
    reply.present = res.present;
    reply.n_subs = res.n_subs;
    reply.subs = res.subs;
    reply.n_pending = res.n_pending;
    reply.pending = res.pending;
    reply.n_rx_pids = res.n_rx_pids;
    reply.rx_pids = res.rx_pids;
    Lk__Envelope out = LK__ENVELOPE__INIT;
    out.body_case = LK__ENVELOPE__BODY_SESSION_OPENED;
    out.session_opened = &reply;
    s_send(self, peer, &out, false);
    lk_debug("client %s opened at %s (connection %" PRIu64 "): present %d, %zu subscription(s), "
             "%zu pending",
             o->client, node, o->conn, res.present, res.n_subs, res.n_pending);
    ss_open_result_clear(&res);
    return 0;
}

/* the open that waits now: from connection conn at node (epoch), its envelope kept packed */
static void s_handoff_set(s_handoff_t *h, const char *node, uint64_t epoch, uint64_t conn,
                          const Lk__Envelope *env)
{
    free(h->node);
    free(h->data);
    h->node = lk_strdup(node);
    h->epoch = epoch;
    h->conn = conn;
    h->len = lk__envelope__get_packed_size(env);
    h->data = lk_malloc(h->len ? h->len : 1);
    lk__envelope__pack(env, h->data);
}

/* The registry names one connection per client id. A SessionOpen from another connection
   while that one is open waits (s_handoff_t) until its node closed it; an open arriving
   meanwhile supersedes the waiting one, which is closed. So the last SessionOpen the
   store took wins, whatever the frontends and the timing. */
static int s_handle_open(self_t *self, lk_peer_t *peer, Lk__Envelope *env)
{
    Lk__SessionOpen *o = env->session_open;
    const char *node = lk_peer_name(peer);
    uint64_t epoch = lk_peer_epoch(peer);
    if (!o->client || !*o->client) {
        lk_warn("SessionOpen without client id from %s ignored", node);
        return 0;
    }
    if (o->conn) {
        char *key = s_lost_key(node, epoch, o->conn);
        bool lost = zhashx_lookup(self->lost, key) != NULL;
        zstr_free(&key);
        if (lost) {
            s_send_takeover(self, node, o->client, o->conn, epoch, "?", false);
            return 0;
        }
    }
    if (s_fresh1(self, o->client) != 0)
        return -1;
    ss_session_t *s = ss_store_session(self->store, o->client);
    bool is_holder = s && s->node && strcmp(s->node, node) == 0 && s->node_epoch == epoch &&
                     s->conn == o->conn;
    bool held = s && s->node && !s->disconnected_at && !is_holder &&
                s_holds(s->node, s->node_epoch, self);
    s_handoff_t *h = zhashx_lookup(self->handoffs, o->client);
    if (h) {
        if (strcmp(h->node, node) == 0 && h->epoch == epoch && h->conn == o->conn)
            return 0; /* asked again while it waits */
        if (is_holder)
            return 0; /* the holder asking again: it is being closed */
        /* a newer connection: the waiting one loses */
        s_lose(self, h->node, h->epoch, h->conn, o->client, node);
        s_handoff_set(h, node, epoch, o->conn, env);
        return 0;
    }
    if (!held)
        return s_open_now(self, peer, o);
    h = lk_calloc(1, sizeof(*h));
    h->client = lk_strdup(o->client);
    s_handoff_set(h, node, epoch, o->conn, env);
    h->holder = lk_strdup(s->node);
    h->holder_conn = s->conn;
    h->holder_epoch = s->node_epoch;
    h->deadline = lk_mono_ms() + SS_HANDOFF_MS;
    /* the session goes on only when this connection resumes it and the old one would not
       have ended it at its close (Session Expiry 0) */
    h->resumed = !o->clean && s->persistent && s->expiry > 0;
    zhashx_update(self->handoffs, o->client, h);
    s_send_takeover(self, s->node, o->client, s->conn, s->node_epoch, node, h->resumed);
    return 0;
}

/* the holder is closed (or gone): the waiting open runs now. -1: Redis failed (the
   requester asks again) */
static int s_handoff_finish(self_t *self, s_handoff_t *h)
{
    lk_peer_t *peer = lk_bus_peer(self->bus, h->node);
    int rc = 0;
    if (peer && lk_peer_alive(peer) && lk_peer_epoch(peer) == h->epoch) {
        Lk__Envelope *env = lk__envelope__unpack(NULL, h->len, h->data);
        if (env && env->body_case == LK__ENVELOPE__BODY_SESSION_OPEN)
            rc = s_open_now(self, peer, env->session_open);
        if (env)
            lk__envelope__free_unpacked(env, NULL);
    }
    zhashx_delete(self->handoffs, h->client);
    return rc;
}

static int s_handle_takeover_done(self_t *self, lk_peer_t *peer, Lk__Envelope *env)
{
    Lk__TakeoverDone *d = env->takeover_done;
    s_handoff_t *h = d->client ? zhashx_lookup(self->handoffs, d->client) : NULL;
    /* a failed open (Redis) is asked again by its frontend */
    if (h && strcmp(h->holder, lk_peer_name(peer)) == 0 && h->holder_conn == d->conn)
        (void)s_handoff_finish(self, h);
    s_ack(self, peer, env);
    return 0;
}

/* holders that will not answer: silent past the deadline, known down (node, epoch 0), or
   back under another epoch (node restarted: the old connection is gone); treated as
   closed. Superseded connections are remembered for SS_LOST_MS. */
static void s_handoffs_check(self_t *self, const char *node, uint64_t epoch)
{
    int64_t now = lk_mono_ms();
    zlistx_t *due = s_name_list();
    for (s_handoff_t *h = zhashx_first(self->handoffs); h; h = zhashx_next(self->handoffs))
        if (now >= h->deadline ||
            (node && strcmp(h->holder, node) == 0 && (!epoch || epoch != h->holder_epoch)))
            zlistx_add_end(due, lk_strdup(h->client));
    for (char *c = zlistx_first(due); c; c = zlistx_next(due)) {
        s_handoff_t *h = zhashx_lookup(self->handoffs, c);
        if (!h)
            continue;
        if (zlistx_size(self->retry)) {
            /* Redis is behind: the holder's last work may wait there; the requester asks
               again later */
            zhashx_delete(self->handoffs, c);
            continue;
        }
        bool ours = node && strcmp(h->holder, node) == 0;
        lk_info("client %s: %s did not answer the takeover (%s); opening at %s", c, h->holder,
                !ours ? "timeout" : epoch ? "restarted" : "down", h->node);
        /* once more, in case the first was lost: that connection must not stay */
        s_send_takeover(self, h->holder, c, h->holder_conn, h->holder_epoch, h->node,
                        h->resumed);
        s_handoff_finish(self, h);
    }
    zlistx_destroy(&due);
    zlistx_t *old = s_name_list();
    for (char *v = zhashx_first(self->lost); v; v = zhashx_next(self->lost))
        if (strtoll(v, NULL, 10) <= now)
            zlistx_add_end(old, lk_strdup(zhashx_cursor(self->lost)));
    for (char *k = zlistx_first(old); k; k = zlistx_next(old))
        zhashx_delete(self->lost, k);
    zlistx_destroy(&old);
}

static int s_handle_close(self_t *self, lk_peer_t *peer, Lk__Envelope *env)
{
    Lk__SessionClose *c = env->session_close;
    if (s_fresh1(self, c->client) != 0)
        return -1;
    int rc = c->client ? ss_store_close(self->store, c->client, lk_peer_name(peer), c->conn,
                                        c->expiry, c->subs, c->n_subs, c->subs_changed)
                       : 1;
    if (rc < 0)
        return -1;
    s_handoff_t *h = c->client ? zhashx_lookup(self->handoffs, c->client) : NULL;
    if (h && strcmp(h->node, lk_peer_name(peer)) == 0 && h->conn == c->conn) {
        /* the waiting connection itself is gone: nothing to open for it */
        lk_debug("client %s: connection %" PRIu64 " closed while waiting for a takeover",
                 c->client, c->conn);
        zhashx_delete(self->handoffs, c->client);
    }
    if (rc == 1)
        lk_debug("SessionClose of %s from %s ignored: not there", c->client ? c->client : "",
                 lk_peer_name(peer));
    else if (c->will_delayed)
        zhashx_update(self->will_nodes, c->client, (void *)lk_peer_name(peer));
    s_ack(self, peer, env);
    return 0;
}

static int s_handle_ack(self_t *self, lk_peer_t *peer, Lk__Envelope *env)
{
    Lk__SessionAck *a = env->session_ack;
    if (s_fresh1(self, a->client) != 0)
        return -1;
    size_t n_rel = a->n_released_ids < a->n_released_pids ? a->n_released_ids
                                                            : a->n_released_pids;
    bool delta = a->subs_changed && a->subs_delta;
    int rc = a->client ? ss_store_ack(self->store, a->client, lk_peer_name(peer), a->store_ids,
                                      a->n_store_ids, a->released_ids, a->released_pids, n_rel,
                                      a->subs, a->n_subs, a->subs_changed && !delta)
                       : 1;
    if (rc >= 0 && a->client && (a->n_rx_add || a->n_rx_del)) {
        int r2 = ss_store_rx(self->store, a->client, lk_peer_name(peer), a->rx_add, a->n_rx_add,
                             a->rx_del, a->n_rx_del);
        if (r2 < 0)
            rc = -1; /* the whole ack again: its deletions are idempotent */
    }
    if (rc < 0)
        return -1;
    /* the acks are applied (a re-send of the envelope repeats both, harmlessly) */
    if (rc == 0 && delta)
        rc = ss_store_subs_delta(self->store, a->client, lk_peer_name(peer), a->subs,
                                 a->n_subs, a->subs_removed, a->n_subs_removed);
    if (rc < 0)
        return -1;
    if (rc == 1)
        lk_debug("SessionAck of %s from %s ignored: no persistent session there",
                 a->client ? a->client : "", lk_peer_name(peer));
    s_ack(self, peer, env);
    return 0;
}

/* 0: done (acked when reliable); -1: Redis failed, try again later */
static int s_dispatch(self_t *self, lk_peer_t *peer, Lk__Envelope *env)
{
    bool from_router = lk_replicas_has(self->routers, peer);
    if (s_is_sibling(self, peer)) {
        if (env->body_case == LK__ENVELOPE__BODY_DELIVER)
            return s_handle_told(self, peer, env);
        s_ack(self, peer, env);
        return 0;
    }
    switch (env->body_case) {
    case LK__ENVELOPE__BODY_STORE:
        if (from_router)
            return s_handle_store(self, peer, env);
        break;
    case LK__ENVELOPE__BODY_RETAIN:
        if (from_router)
            return s_handle_retain(self, peer, env);
        break;
    case LK__ENVELOPE__BODY_SESSION_OPEN:
        if (!from_router)
            return s_handle_open(self, peer, env);
        break;
    case LK__ENVELOPE__BODY_SESSION_CLOSE:
        if (!from_router)
            return s_handle_close(self, peer, env);
        break;
    case LK__ENVELOPE__BODY_SESSION_ACK:
        if (!from_router)
            return s_handle_ack(self, peer, env);
        break;
    case LK__ENVELOPE__BODY_TAKEOVER_DONE:
        if (!from_router)
            return s_handle_takeover_done(self, peer, env);
        break;
    default:
        break;
    }
    lk_debug("ignored body %d from %s", env->body_case, lk_peer_name(peer));
    s_ack(self, peer, env);
    return 0;
}

//  --------------------------------------------------------------------------
//  Retry queue

static void s_retry_run(lk_loop_t *loop, void *arg);

static void s_retry_schedule(self_t *self, int64_t ms)
{
    if (!self->retry_timer)
        self->retry_timer = lk_loop_timer(self->loop, ms, false, s_retry_run, self);
}

static void s_retry_keep(self_t *self, lk_peer_t *peer, const Lk__Envelope *env)
{
    s_retry_t *r = lk_calloc(1, sizeof(*r));
    r->peer = lk_strdup(lk_peer_name(peer));
    r->epoch = lk_peer_epoch(peer);
    ss_codec_pack_envelope(env, &self->buf);
    r->len = self->buf.size;
    r->data = lk_malloc(r->len);
    memcpy(r->data, self->buf.data, r->len);
    zlistx_add_end(self->retry, r);
    if (self->loaded)
        s_retry_schedule(self, self->retry_backoff);
}

static void s_retry_run(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    self->retry_timer = 0;
    if (!self->loaded)
        return; /* s_load kicks us when done */
    size_t done = 0;
    s_retry_t *r;
    while ((r = zlistx_first(self->retry))) {
        lk_peer_t *peer = lk_bus_peer(self->bus, r->peer);
        if (!peer || lk_peer_epoch(peer) != r->epoch) {
            lk_info("work from %s's previous life dropped", r->peer);
            zlistx_delete(self->retry, NULL);
            continue;
        }
        Lk__Envelope *env = ss_codec_unpack_envelope(r->data, r->len);
        int rc = env ? s_dispatch(self, peer, env) : 0;
        ss_codec_envelope_free(&env);
        if (rc != 0) {
            s_redis_trouble(self);
            self->retry_backoff = self->retry_backoff * 2 > SS_BACKOFF_MAX_MS
                                      ? SS_BACKOFF_MAX_MS
                                      : self->retry_backoff * 2;
            s_retry_schedule(self, self->retry_backoff);
            return;
        }
        zlistx_delete(self->retry, NULL);
        done++;
    }
    self->retry_backoff = SS_BACKOFF_MIN_MS;
    if (self->redis_warned) {
        lk_notice("redis available again: %zu waiting envelope(s) done", done);
        self->redis_warned = 0;
    }
}

//  --------------------------------------------------------------------------
//  Bus handlers

static void s_on_message(lk_bus_t *bus, lk_peer_t *peer, Lk__Envelope *env, void *arg)
{
    self_t *self = arg;
    if (!self->loaded || zlistx_size(self->retry)) {
        /* nothing overtakes waiting work; SessionOpen (unreliable) is asked again */
        if (env->seq)
            s_retry_keep(self, peer, env);
        return;
    }
    if (s_dispatch(self, peer, env) != 0) {
        if (env->seq)
            s_retry_keep(self, peer, env);
        s_redis_trouble(self);
    }
}

static void s_resync_start(self_t *self);
static void s_resync_stop(self_t *self);

/* A sibling replica died or came back: ownership moved. What we no longer own goes
   stale; what we took over is read from Redis when used. Sessions the other one made
   are discovered, and the router hears of the offline ones we own now (it may have
   restarted while the dead replica's resync was half done). */
static void s_view_changed(self_t *self, lk_peer_t *sib, bool up)
{
    lk_notice("replica %s %s: %d of %d replicas live", lk_peer_name(sib), up ? "up" : "down",
              lk_replicas_alive(self->sibs), lk_replicas_count(self->sibs));
    if (!self->loaded)
        return;
    ss_store_mark_stale(self->store, false);
    if (up)
        return;
    s_retell(self, sib);
    if (ss_store_discover(self->store) != 0)
        s_redis_trouble(self);
    /* every live router hears of the offline sessions we own now */
    for (int i = 0; i < lk_replicas_count(self->routers); i++)
        if (lk_peer_alive(lk_replicas_nth(self->routers, i)))
            self->resync_mask |= 1ull << i;
    if (self->resync_mask)
        s_resync_start(self);
}

static void s_on_peer_up(lk_bus_t *bus, lk_peer_t *peer, bool restarted, void *arg)
{
    self_t *self = arg;
    if (s_is_sibling(self, peer)) {
        s_view_changed(self, peer, true);
        return;
    }
    int ri = lk_replicas_index(self->routers, peer);
    if (ri >= 0) {
        /* a new router needs the whole picture, not our news for its previous life */
        if (restarted)
            lk_peer_drop_unacked(peer);
        /* a resync under way starts over for this one too (the others get some of it
           twice: harmless, the router keeps what is newer) */
        self->resync_mask |= 1ull << ri;
        s_resync_start(self);
    } else if (self->loaded && lk_peer_epoch(peer)) {
        ss_store_node_up(self->store, lk_peer_name(peer), lk_peer_epoch(peer), lk_wall_ms());
        /* takeovers waiting on its previous life: that connection is gone (a frontend
           restarted by s6 before the detector: its clients' reconnects would wait
           SS_HANDOFF_MS) */
        if (restarted)
            s_handoffs_check(self, lk_peer_name(peer), lk_peer_epoch(peer));
    }
}

static void s_on_peer_down(lk_bus_t *bus, lk_peer_t *peer, void *arg)
{
    self_t *self = arg;
    if (s_is_sibling(self, peer)) {
        s_view_changed(self, peer, false);
        return;
    }
    int ri = lk_replicas_index(self->routers, peer);
    if (ri >= 0) {
        /* it starts over when the router is back */
        self->resync_mask &= ~(1ull << ri);
        if (!self->resync_mask)
            s_resync_stop(self);
    } else if (self->loaded) {
        ss_store_node_down(self->store, lk_peer_name(peer), lk_wall_ms());
        s_handoffs_check(self, lk_peer_name(peer), 0);
    }
}

//  --------------------------------------------------------------------------
//  Router resync: offline sessions, then retained messages, then ResyncDone

static void s_resync_stop(self_t *self)
{
    s_cancel(self, &self->resync_timer);
    self->resync_phase = 0;
    zlistx_destroy(&self->resync_clients);
}

static void s_resync_attach(const char *client, Lk__Subscription **subs, size_t n, void *arg)
{
    self_t *self = arg;
    ss_session_t *s = ss_store_session(self->store, client);
    /* connected meanwhile: its frontend speaks for it */
    if (!s || (s->node && !s->disconnected_at && s_holds(s->node, s->node_epoch, self)))
        return;
    Lk__Attach a = LK__ATTACH__INIT;
    a.client = (char *)client;
    a.persistent = true;
    a.offline = true;
    a.n_subs = n;
    a.subs = subs;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_ATTACH;
    env.attach = &a;
    s_send_routers(self, &env, self->resync_mask);
    self->resync_sessions++;
}

static void s_resync_retained(const Lk__Msg *msg, void *arg)
{
    self_t *self = arg;
    for (int i = 0; i < lk_replicas_count(self->routers); i++)
        if (self->resync_mask & (1ull << i))
            lk_bus_batch_add(self->bus, lk_replicas_nth(self->routers, i), LK_BODY_RETAIN, msg,
                             true);
    self->resync_retained++;
}

/* the retained messages are sent by one replica: the owner of the key "lk:retain" */
static bool s_retain_ours(self_t *self)
{
    return !self->sibs || s_owns("lk:retain", self);
}

/* the resync's end: ResyncDone to the routers it was for */
static void s_resync_done(self_t *self)
{
    Lk__ResyncDone done = LK__RESYNC_DONE__INIT;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_RESYNC_DONE;
    env.resync_done = &done;
    s_send_routers(self, &env, self->resync_mask);
    self->resync_mask = 0;
    lk_notice("router resync: %zu offline session(s), %zu retained message(s)",
              self->resync_sessions, self->resync_retained);
    s_resync_stop(self);
}

static void s_resync_step(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    self->resync_timer = 0;
    int64_t next = 1;
    if (self->resync_phase == 1) {
        const char *names[SS_RESYNC_SESSIONS];
        size_t n = 0;
        for (char *c = zlistx_first(self->resync_clients); c && n < SS_RESYNC_SESSIONS;
             c = zlistx_next(self->resync_clients))
            names[n++] = c;
        if (n == 0 && !s_retain_ours(self)) {
            s_resync_done(self);
            return;
        } else if (n == 0)
            self->resync_phase = 2;
        else if (s_fresh(self, names, n) != 0 ||
                 ss_store_subs(self->store, names, n, s_resync_attach, self) != 0) {
            s_redis_trouble(self);
            next = SS_RESYNC_RETRY_MS;
        } else
            for (size_t i = 0; i < n; i++)
                zlistx_delete(self->resync_clients, NULL);
    } else if (self->resync_phase == 2) {
        int rc = ss_store_retain_scan(self->store, &self->resync_cursor, SS_RESYNC_RETAINED,
                                      s_resync_retained, self);
        if (rc < 0) {
            s_redis_trouble(self);
            next = SS_RESYNC_RETRY_MS;
        } else if (rc == 0) {
            s_resync_done(self);
            return;
        }
    } else
        return;
    self->resync_timer = lk_loop_timer(loop, next, false, s_resync_step, self);
}

static void s_resync_start(self_t *self)
{
    s_resync_stop(self);
    if (!self->loaded)
        return; /* s_load starts it (resync_mask) */
    self->resync_clients = s_name_list();
    ss_store_offline(self->store, self->resync_clients, s_holds, self);
    self->resync_phase = 1;
    self->resync_cursor = 0;
    self->resync_sessions = self->resync_retained = 0;
    s_resync_step(self->loop, self);
}

//  --------------------------------------------------------------------------
//  Start-up and cron

static void s_reconcile_peer(lk_peer_t *peer, void *arg)
{
    self_t *self = arg;
    if (!lk_replicas_has(self->routers, peer) && !s_is_sibling(self, peer) && lk_peer_alive(peer) &&
        lk_peer_epoch(peer))
        ss_store_node_up(self->store, lk_peer_name(peer), lk_peer_epoch(peer), lk_wall_ms());
}

static void s_load(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    self->load_timer = 0;
    ss_store_migrate(self->store); /* keys of the untagged layout, once */
    if (ss_store_load(self->store) != 0) {
        int64_t now = lk_mono_ms();
        if (!self->redis_warned || now - self->redis_warned >= SS_WARN_EVERY_MS) {
            lk_warn("redis at %s:%d not available; retrying", self->redis_host, self->redis_port);
            self->redis_warned = now;
        }
        self->load_backoff = self->load_backoff ? self->load_backoff * 2 : SS_BACKOFF_MIN_MS;
        if (self->load_backoff > SS_BACKOFF_MAX_MS)
            self->load_backoff = SS_BACKOFF_MAX_MS;
        self->load_timer = lk_loop_timer(loop, self->load_backoff, false, s_load, self);
        return;
    }
    self->loaded = true;
    self->loaded_at = lk_mono_ms();
    self->redis_warned = 0;
    lk_notice("ready: %zu persistent session(s) loaded from redis %s:%d",
              ss_store_size(self->store), self->redis_host, self->redis_port);
    /* frontends heard from while we loaded: their epochs decide what they still hold */
    lk_bus_each_peer(self->bus, s_reconcile_peer, self);
    lk_ready_notify(self->ready_fd);
    self->ready_fd = -1;
    if (self->resync_mask)
        s_resync_start(self);
    if (zlistx_size(self->retry))
        s_retry_schedule(self, 1);
}

static void s_cron(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    if (!self->loaded)
        return;
    if (!self->nodes_checked && lk_mono_ms() - self->loaded_at >= SS_NODE_GRACE_MS) {
        /* sessions recorded at a node that has not spoken since our start */
        self->nodes_checked = true;
        zlistx_t *nodes = s_name_list();
        ss_store_nodes(self->store, nodes);
        for (char *n = zlistx_first(nodes); n; n = zlistx_next(nodes)) {
            lk_peer_t *p = lk_bus_peer(self->bus, n);
            if (!p || !lk_peer_alive(p))
                ss_store_node_down(self->store, n, lk_wall_ms());
        }
        zlistx_destroy(&nodes);
    }
    if (zlistx_size(self->retry))
        return; /* Redis is in trouble: expire later */
    if (self->sibs) {
        /* sessions taken over from a dead replica: current before they may expire */
        zlistx_t *stale = s_name_list();
        ss_store_stale_owned(self->store, stale, SS_REFRESH_MAX);
        const char *names[SS_REFRESH_MAX];
        size_t n = 0;
        for (char *c = zlistx_first(stale); c; c = zlistx_next(stale))
            names[n++] = c;
        int rc = ss_store_refresh(self->store, names, n, s_holds_read, self);
        zlistx_destroy(&stale);
        if (rc != 0) {
            s_redis_trouble(self);
            return;
        }
    }
    zlistx_t *expired = s_name_list();
    if (ss_store_expire(self->store, lk_wall_ms(), SS_EXPIRE_MAX, expired) != 0)
        s_redis_trouble(self);
    for (char *c = zlistx_first(expired); c; c = zlistx_next(expired)) {
        Lk__Detach d = LK__DETACH__INIT;
        d.client = c;
        d.persistent = false;
        Lk__Envelope env = LK__ENVELOPE__INIT;
        env.body_case = LK__ENVELOPE__BODY_DETACH;
        env.detach = &d;
        s_send_routers(self, &env, SS_ALL_ROUTERS);
        lk_info("session %s expired", c);
    }
    zlistx_destroy(&expired);
}

static void s_handoff_tick(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    if (zhashx_size(self->handoffs) || zhashx_size(self->lost))
        s_handoffs_check(self, NULL, 0);
}

/* --- the api's requests (lk.AdminRequest) ----------------------------------------- */

static void s_admin(lk_bus_t *bus, lk_peer_t *peer, const Lk__AdminRequest *q,
                    lk_admin_out_t *out, void *arg)
{
    self_t *self = arg;
    const char *op = q->op ? q->op : "";
    if (strcmp(op, "node") == 0) {
        zlistx_t *names = s_name_list();
        ss_store_offline(self->store, names, NULL, NULL);
        size_t offline = zlistx_size(names);
        zlistx_destroy(&names);
        lk_admin_metric(out, "latchkey_session_store_sessions", NULL,
                        (double)ss_store_size(self->store), false);
        lk_admin_metric(out, "latchkey_sessions_offline", NULL, (double)offline, false);
        lk_admin_metric(out, "latchkey_messages_dropped_total", "reason=\"queue_full\"",
                        (double)ss_store_dropped(self->store), true);
        double rtt = ss_store_ping_ms(self->store);
        lk_admin_metric(out, "latchkey_redis_up", NULL, rtt >= 0 ? 1 : 0, false);
        if (rtt >= 0)
            lk_admin_metric(out, "latchkey_redis_rtt_seconds", NULL, rtt / 1000.0, false);
    } else if (strcmp(op, "sessions") == 0) {
        zlistx_t *names = s_name_list();
        ss_store_offline(self->store, names, NULL, NULL);
        uint64_t total = 0;
        for (char *c = zlistx_first(names); c; c = zlistx_next(names)) {
            if (q->client && *q->client && strcmp(q->client, c) != 0)
                continue;
            if (q->like && *q->like && !strstr(c, q->like))
                continue;
            ss_session_t *s = ss_store_session(self->store, c);
            if (!s)
                continue;
            total++;
            if (q->limit && total > q->limit)
                continue;
            Lk__AdminClient *a = lk_admin_client_add(out);
            a->client = lk_admin_str(out, c);
            a->expiry = s->expiry;
            a->mqueue_len = (uint32_t)s->qlen;
            a->connected = false;
            a->disconnected_at_ms = (uint64_t)s->disconnected_at;
            a->node = lk_admin_str(out, s->node);
        }
        zlistx_destroy(&names);
        lk_admin_reply(out)->total = total;
    } else if (strcmp(op, "session_clear") == 0) {
        int rc = s_fresh1(self, q->client ? q->client : "");
        if (rc == 0)
            rc = ss_store_clear(self->store, q->client ? q->client : "");
        if (rc < 0) {
            lk_admin_error(out, "SERVICE_UNAVAILABLE", "Redis failed");
            return;
        }
        if (rc > 0) {
            lk_admin_error(out, "CLIENTID_NOT_FOUND", "no offline session");
            return;
        }
        Lk__Detach d = LK__DETACH__INIT;
        d.client = q->client;
        d.persistent = false;
        Lk__Envelope env = LK__ENVELOPE__INIT;
        env.body_case = LK__ENVELOPE__BODY_DETACH;
        env.detach = &d;
        s_send_routers(self, &env, SS_ALL_ROUTERS);
        lk_admin_reply(out)->count = 1;
        lk_notice("session %s cleared by %s", q->client, lk_peer_name(peer));
    } else
        lk_admin_error(out, "BAD_REQUEST", "session-store does not answer '%s'", op);
}

/* the router's $SYS topics: what the store holds (unreliable; the next one replaces it) */
static void s_sys_stats(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    Lk__NodeStats st = LK__NODE_STATS__INIT;
    st.stored_messages = ss_store_queued(self->store);
    st.heap_bytes = lk_admin_rss();
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_STATS;
    env.stats = &st;
    /* the router that publishes $SYS: the first live one (as the frontends choose) */
    lk_peer_t *to = lk_replicas_other(self->routers, NULL);
    lk_bus_send(self->bus, to ? to : lk_replicas_nth(self->routers, 0), &env, false);
}

int ss_server_start(ss_server_t *self)
{
    lk_bus_handlers_t h = {s_on_message, s_on_peer_up, s_on_peer_down};
    self->bus = lk_bus_new(self->loop, self->node, "session-store", &h, self);
    lk_bus_on_admin(self->bus, s_admin, self);
    if (lk_bus_configure(self->bus, self->config) != 0)
        return -1;
    if (self->msglog_dir) {
        self->msglog = lk_msglog_open(self->msglog_dir, self->node, lk_bus_epoch(self->bus),
                                      SS_MSGLOG_SEGMENT);
        if (!self->msglog)
            return -1;
        lk_bus_set_msglog(self->bus, self->msglog);
    }
    if (lk_bus_bind(self->bus, self->session_endpoint) != 0)
        return -1;
    if (!(self->routers = lk_replicas_connect(self->bus, self->config, "router", "router")))
        return -1;
    if (lk_config_get_int(self->config, "session_replicas", 1) > 1) {
        self->sibs =
            lk_replicas_siblings(self->bus, self->config, "session", "session-store", self->node);
        if (!self->sibs)
            return -1;
        ss_store_set_owner(self->store, s_owns, self);
    }
    self->cron_timer = lk_loop_timer(self->loop, SS_CRON_MS, true, s_cron, self);
    self->handoff_timer = lk_loop_timer(self->loop, 250, true, s_handoff_tick, self);
    self->sys_timer = lk_loop_timer(
        self->loop, lk_config_get_int(self->config, "sys_interval", 5) * 500, true, s_sys_stats,
        self);
    lk_info("serving %s, router at %s, redis %s:%d", self->session_endpoint, self->router_endpoint,
            self->redis_host, self->redis_port);
    s_load(self->loop, self);
    return 0;
}
