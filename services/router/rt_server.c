/*  rt_server: the router actor — subscription index, retained index and fan-out.

    The router holds no durable state. Clients are records (client id → the frontend node
    serving it, or none while a persistent session is offline); subscriptions live in the
    trie, retained messages in the retained index. After a restart everything comes back
    from the peers: frontends re-attach their clients, the session store re-sends offline
    persistent sessions and the retained set, then says ResyncDone. Publishes that arrive
    before that ("warming") wait, so a message is never matched against a half-built index.

    Acknowledgement of a publish batch (the PUBACK guarantee): a reliable PublishBatch is
    acked only once every durable copy it caused — StoreItems for persistent subscribers,
    retained updates — has been acked by the session store. `jobs` tracks which store
    batches each publish batch waits for.

    Direct QoS 0 routing (lk.Route): a frontend asks with Publish{resolve}; the router
    matches and returns the frontend subscribers for the asker to hand the message to
    itself, and delivers the rest (shared subscriptions, internal clients). A route marked
    `cache` holds until the routing generation changes (any subscription or client move);
    the frontends that hold routes get a reliable RouteFlush, and a SUBSCRIBE or
    UNSUBSCRIBE is acked (so SUBACK / UNSUBACK sent) only once every one of them acked it. */
#include "rt_server.h"
#include "lk_admin.h"
#include "lk_bus.h"
#include "lk_common.h"
#include "lk_config.h"
#include "lk_replicas.h"
#include "rt_retain.h"
#include "rt_trie.h"
#include <czmq.h>
#include <math.h>
#include <stdarg.h>

typedef struct {
    char *id;
    lk_peer_t *node;        /* serving frontend; NULL while offline */
    bool persistent;
    /* fan-out scratch: the index of this client in the current publish's targets */
    uint64_t match_gen;
    size_t match_idx;
} s_client_t;

typedef struct {
    s_client_t *client;
    uint32_t qos;
    bool retain;
    uint32_t sub_ids[8];
    size_t n_sub_ids;
    const char *share;      /* the shared filter this copy goes through, or NULL */
} s_target_t;

/* the latest statistics of one frontend */
typedef struct {
    Lk__NodeStats st;
    lk_peer_t *peer;
    int64_t at;     /* ms, when received */
} s_stats_t;

/* a publish batch waiting for the session store to ack its durable copies */
typedef struct s_job {
    lk_peer_t *peer;
    uint64_t seq;
    uint64_t peer_epoch;
    int waits;
    struct s_job *next;
} s_job_t;

/* (peer, seq) of one of our reliable envelopes -> jobs waiting on its ack */
typedef struct s_wait {
    lk_peer_t *peer;
    uint64_t store_seq;
    s_job_t **jobs;
    size_t n, cap;
    struct s_wait *next;
} s_wait_t;

/* a frontend that asks for routes (peer data) */
typedef struct {
    bool has_routes;        /* handed a cacheable route since its last flush */
    uint64_t flush_seq;     /* our RouteFlush it has not acked, 0 when none */
    uint64_t flush_round;   /* the round of that flush */
} s_cacher_t;

/* an ack held until the route flushes sent before it are acked */
typedef struct s_defer {
    lk_peer_t *peer;
    uint64_t seq;
    uint64_t peer_epoch;
    uint64_t round;
    struct s_defer *next;
} s_defer_t;

/* a publish envelope kept while warming */
typedef struct s_held {
    lk_peer_t *peer;
    int64_t since;      /* ms, when held */
    uint8_t *data;
    size_t len;
    struct s_held *next;
} s_held_t;

struct _rt_server_t {
    lk_config_t *config;
    lk_loop_t *loop;
    lk_bus_t *bus;
    zhashx_t *clients;
    rt_trie_t *trie;
    rt_retain_t *retain;
    lk_replicas_t *stores;  /* the session-store replicas (they connect to us) */
    uint64_t resync_seen;   /* replicas (bits by index) that sent ResyncDone */
    s_target_t *targets;
    size_t n_targets, cap_targets;
    uint64_t match_gen;
    s_wait_t *waits;
    s_held_t *held, *held_tail;
    bool warming;
    bool resync_done;
    int64_t warm_deadline;
    int64_t warm_min;
    /* the envelopes carrying the durable copies the current publish batch caused
       (StoreBatch, RetainSet): its ack waits for theirs */
    struct {
        lk_peer_t *peer;
        uint64_t seq;
    } *cur_waits;
    size_t n_cur_waits, cap_cur_waits;
    /* back-pressure: publishes wait while a peer has this much unacked from us */
    size_t deliver_backlog;
    bool pressed;
    int64_t pressed_since;
    uint64_t pressed_count;
    const char *cur_origin;
    const char *cur_share;
    /* retained caps (0 = none) */
    uint64_t max_retained, max_retained_size, retain_refused;
    int64_t retain_warned_ms;
    /* $SYS */
    zhashx_t *stats;        /* node -> s_stats_t */
    int64_t started_ms;
    int64_t sys_interval_s;
    int n_routers;              /* router_replicas: > 1, $SYS only while frontends report here */
    uint64_t sys_expired;       /* sessions the store expired */
    uint64_t sys_max_clients;   /* most clients connected at once */
    uint64_t sys_max_heap;
    Lk__NodeStats sys_prev;     /* the sums at the previous tick, for the load averages */
    bool sys_have_prev;
    double sys_load[5][3];      /* per minute: msgs in/out, bytes in/out, connections; 1/5/15 min */
    /* direct routing */
    uint64_t route_gen;
    uint64_t flush_round;
    s_defer_t *deferred;
    size_t route_max_targets;
    bool cur_nl_seen;       /* a No Local subscription matched the current publish */
    Lk__RouteTarget *rtargets;
    Lk__RouteTarget **rtarget_ptrs;
    size_t cap_rtargets;
    Lk__RouteNode *rnodes;
    Lk__RouteNode **rnode_ptrs;
    size_t cap_rnodes;
    /* counters */
    uint64_t published, delivered, stored, dropped_expired;
};

/* --- clients ---------------------------------------------------------------------- */

static void s_client_free(void **item)
{
    s_client_t *c = *item;
    if (!c)
        return;
    free(c->id);
    free(c);
    *item = NULL;
}

static s_client_t *s_client_get(rt_server_t *self, const char *id)
{
    s_client_t *c = zhashx_lookup(self->clients, id);
    if (!c) {
        c = lk_calloc(1, sizeof(*c));
        c->id = lk_strdup(id);
        zhashx_insert(self->clients, c->id, c);
    }
    return c;
}

static void s_client_remove(rt_server_t *self, s_client_t *c)
{
    rt_trie_remove_client(self->trie, c);
    zhashx_delete(self->clients, c->id);
}

static void s_retain_free(void *msg)
{
    lk__msg__free_unpacked((Lk__Msg *)msg, NULL);
}

/* deep copy through the wire form: protobuf-c has no copy */
static Lk__Msg *s_msg_copy(const Lk__Msg *m)
{
    size_t n = lk__msg__get_packed_size(m);
    uint8_t *buf = lk_malloc(n ? n : 1);
    lk__msg__pack(m, buf);
    Lk__Msg *copy = lk__msg__unpack(NULL, n, buf);
    free(buf);
    return copy;
}

static void s_sub_opts(const Lk__Subscription *s, rt_sub_opts_t *o)
{
    o->qos = (uint8_t)(s->qos > 2 ? 2 : s->qos);
    o->no_local = s->no_local;
    o->retain_as_published = s->retain_as_published;
    o->retain_handling = (uint8_t)(s->retain_handling > 2 ? 2 : s->retain_handling);
    o->sub_id = s->sub_id;
}

/* --- jobs: publish acks waiting on store acks ------------------------------------- */

/* the session-store replica that owns key (a client id; a retained message's topic) */
static lk_peer_t *s_store(rt_server_t *self, const char *key)
{
    return lk_replicas_owner(self->stores, key, strlen(key));
}

static bool s_is_store(rt_server_t *self, lk_peer_t *peer)
{
    return lk_replicas_has(self->stores, peer);
}

static void s_wait_add(rt_server_t *self, lk_peer_t *peer, uint64_t store_seq, s_job_t *job)
{
    s_wait_t *w;
    for (w = self->waits; w; w = w->next)
        if (w->store_seq == store_seq && w->peer == peer)
            break;
    if (!w) {
        w = lk_calloc(1, sizeof(*w));
        w->peer = peer;
        w->store_seq = store_seq;
        w->next = self->waits;
        self->waits = w;
    }
    for (size_t i = 0; i < w->n; i++)
        if (w->jobs[i] == job)
            return;
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 4;
        w->jobs = lk_realloc(w->jobs, w->cap * sizeof(s_job_t *));
    }
    w->jobs[w->n++] = job;
    job->waits++;
}

static void s_release_deferred(rt_server_t *self);
static void s_pressure_check(rt_server_t *self);

static void s_wait_done(rt_server_t *self, s_wait_t *w)
{
    for (size_t i = 0; i < w->n; i++) {
        s_job_t *job = w->jobs[i];
        if (--job->waits == 0) {
            /* a publisher's frontend that restarted meanwhile has nobody to PUBACK */
            if (lk_peer_epoch(job->peer) == job->peer_epoch)
                lk_bus_ack(self->bus, job->peer, job->seq);
            free(job);
        }
    }
    free(w->jobs);
    free(w);
}

static void s_store_acked(lk_bus_t *bus, lk_peer_t *peer, uint64_t seq, void *arg)
{
    rt_server_t *self = arg;
    s_cacher_t *k = lk_peer_data(peer);
    if (k && k->flush_seq == seq) {
        k->flush_seq = 0;
        s_release_deferred(self);
    }
    s_wait_t **pp = &self->waits;
    while (*pp && ((*pp)->store_seq != seq || (*pp)->peer != peer))
        pp = &(*pp)->next;
    s_wait_t *w = *pp;
    if (w) {
        *pp = w->next;
        s_wait_done(self, w);
    }
    if (self->pressed)
        s_pressure_check(self);
}

/* the current publish batch's ack waits for seq (reliable, to peer) */
static void s_cur_wait(rt_server_t *self, lk_peer_t *peer, uint64_t seq)
{
    if (!seq)
        return;
    for (size_t i = self->n_cur_waits; i-- > 0;)
        if (self->cur_waits[i].peer == peer && self->cur_waits[i].seq == seq)
            return;
    if (self->n_cur_waits == self->cap_cur_waits) {
        self->cap_cur_waits = self->cap_cur_waits ? self->cap_cur_waits * 2 : 8;
        self->cur_waits =
            lk_realloc(self->cur_waits, self->cap_cur_waits * sizeof(*self->cur_waits));
    }
    self->cur_waits[self->n_cur_waits].peer = peer;
    self->cur_waits[self->n_cur_waits++].seq = seq;
}

/* --- fan-out ---------------------------------------------------------------------- */

static void s_on_match(void *client, const rt_sub_opts_t *opts, const char *filter,
                       const char *group, void *arg)
{
    rt_server_t *self = arg;
    s_client_t *c = client;
    (void)filter;
    if (opts->no_local)
        self->cur_nl_seen = true;
    /* No Local [MQTT-3.8.3-3]: never back to the publisher through this subscription */
    if (opts->no_local && self->cur_origin && strcmp(self->cur_origin, c->id) == 0)
        return;
    /* a message handed back by a shared-subscription member goes to its group only */
    if (self->cur_share && (!group || strcmp(filter, self->cur_share) != 0))
        return;
    s_target_t *t;
    /* one message per client (with every matching subscription id, at the highest QoS,
       MQTT 5 3.3.4); a shared-subscription delivery is its own copy */
    if (!group && c->match_gen == self->match_gen) {
        t = &self->targets[c->match_idx];
    } else {
        if (self->n_targets == self->cap_targets) {
            self->cap_targets = self->cap_targets ? self->cap_targets * 2 : 64;
            self->targets = lk_realloc(self->targets, self->cap_targets * sizeof(s_target_t));
        }
        if (!group) {
            c->match_gen = self->match_gen;
            c->match_idx = self->n_targets;
        }
        t = &self->targets[self->n_targets++];
        t->client = c;
        t->qos = 0;
        t->retain = false;
        t->n_sub_ids = 0;
        t->share = group ? filter : NULL;
    }
    if (opts->qos > t->qos)
        t->qos = opts->qos;
    if (opts->retain_as_published)
        t->retain = true;
    if (opts->sub_id && t->n_sub_ids < LK_ARRAY_LEN(t->sub_ids))
        t->sub_ids[t->n_sub_ids++] = opts->sub_id;
}

static bool s_available(void *client, void *arg)
{
    s_client_t *c = client;
    return c->node && lk_peer_alive(c->node);
}

/* a new retained message must fit the caps; replacing an existing topic always may */
static bool s_retain_fits(rt_server_t *self, const Lk__Msg *msg)
{
    if (self->max_retained_size && msg->payload.len > self->max_retained_size)
        return false;
    return !self->max_retained || rt_retain_count(self->retain) < self->max_retained ||
           rt_retain_get(self->retain, msg->topic) != NULL;
}

/* keeps (an empty payload: drops) the retained message in the index; false: over
   max_retained_messages / max_retained_size, not kept */
static bool s_retain_keep(rt_server_t *self, Lk__Msg *msg)
{
    if (msg->payload.len == 0)
        rt_retain_delete(self->retain, msg->topic);
    else if (s_retain_fits(self, msg))
        rt_retain_set(self->retain, msg->topic, s_msg_copy(msg));
    else
        return false;
    return true;
}

/* a retained message: kept here; durable: also stored by the session store ($SYS is not) */
static void s_retain_update(rt_server_t *self, Lk__Msg *msg, bool durable)
{
    if (!durable) {
        rt_retain_set(self->retain, msg->topic, s_msg_copy(msg));
    } else if (!s_retain_keep(self, msg)) {
        /* delivered, not retained */
        self->retain_refused++;
        if (lk_mono_ms() - self->retain_warned_ms > 10000) {
            lk_warn("retained message on '%s' (%zu bytes) not kept: %" PRIu64
                    " refused so far (max_retained_messages %" PRIu64 ", max_retained_size %"
                    PRIu64 ")",
                    msg->topic, msg->payload.len, self->retain_refused, self->max_retained,
                    self->max_retained_size);
            self->retain_warned_ms = lk_mono_ms();
        }
    } else {
        lk_peer_t *store = s_store(self, msg->topic);
        uint64_t seq = lk_bus_batch_add(self->bus, store, LK_BODY_RETAIN, msg, true);
        s_cur_wait(self, store, seq);
    }
}

/* router replicas: another router owns the topic (delivers it, has the session store
   keep it); this one only keeps its index like the owner's, for the SUBSCRIBEs it
   answers with retained messages */
static void s_retain_copy(rt_server_t *self, Lk__Msg *msg)
{
    if (msg->topic && *msg->topic)
        s_retain_keep(self, msg);
}

/* one copy to a connected client: RETAIN kept only for Retain As Published. QoS >= 1
   travels on the acknowledged channel: kept until the frontend took it, never dropped
   for room (s_must_hold bounds how much waits). The publish does not wait for that ack:
   it would add a hop to every PUBACK (p2p QoS 1 ran at half the rate) and guard only
   against a router crash, which loses clean-session state anyway. */
static void s_deliver(rt_server_t *self, s_target_t *t, Lk__Msg *msg)
{
    bool retain = msg->retain;
    msg->retain = t->retain && retain;
    Lk__Deliver d = LK__DELIVER__INIT;
    d.client = t->client->id;
    d.msg = msg;
    d.n_sub_ids = t->n_sub_ids;
    d.sub_ids = t->sub_ids;
    d.share = (char *)t->share;
    lk_bus_batch_add(self->bus, t->client->node, LK_BODY_DELIVER, &d, msg->qos > 0);
    self->delivered++;
    msg->retain = retain;
}

/* fills self->targets: one per client the message goes to */
static void s_match(rt_server_t *self, const Lk__Msg *msg)
{
    self->match_gen++;
    self->n_targets = 0;
    self->cur_origin = msg->origin_client;
    self->cur_nl_seen = false;
    rt_trie_match(self->trie, msg->topic, strlen(msg->topic), s_on_match, s_available, self);
}

/* share: deliver only through that shared filter (a handed-back message);
   durable_retain: a retained message is also stored by the session store ($SYS is not) */
static void s_publish_one(rt_server_t *self, Lk__Msg *msg, const char *share,
                          bool durable_retain)
{
    self->published++;
    if (!msg->topic || !*msg->topic)
        return;
    if (msg->expiry_at_ms && (int64_t)msg->expiry_at_ms <= lk_wall_ms()) {
        self->dropped_expired++;
        return;
    }
    if (share && *share)
        self->cur_share = share;
    else if (msg->retain)
        s_retain_update(self, msg, durable_retain);
    s_match(self, msg);
    bool retain_flag = msg->retain;
    uint32_t pub_qos = msg->qos;
    for (size_t i = 0; i < self->n_targets; i++) {
        s_target_t *t = &self->targets[i];
        s_client_t *c = t->client;
        uint32_t q = pub_qos < t->qos ? pub_qos : t->qos;
        msg->qos = q;
        msg->retain = t->retain && retain_flag;
        if (c->persistent && q >= 1) {
            Lk__StoreItem item = LK__STORE_ITEM__INIT;
            item.client = c->id;
            item.msg = msg;
            item.n_sub_ids = t->n_sub_ids;
            item.sub_ids = t->sub_ids;
            lk_peer_t *store = s_store(self, c->id);
            s_cur_wait(self, store, lk_bus_batch_add(self->bus, store, LK_BODY_STORE, &item, true));
            self->stored++;
        } else if (c->node)
            s_deliver(self, t, msg);
    }
    msg->qos = pub_qos;
    msg->retain = retain_flag;
    self->cur_share = NULL;
}

/* --- direct QoS 0 routing --------------------------------------------------------- */

static s_cacher_t *s_cacher(lk_peer_t *peer)
{
    s_cacher_t *k = lk_peer_data(peer);
    if (!k) {
        k = lk_calloc(1, sizeof(*k));
        lk_peer_set_data(peer, k);
    }
    return k;
}

static void s_flush_one(lk_peer_t *peer, void *arg)
{
    rt_server_t *self = arg;
    s_cacher_t *k = lk_peer_data(peer);
    if (!k || !k->has_routes)
        return;
    k->has_routes = false;
    Lk__RouteFlush f = LK__ROUTE_FLUSH__INIT;
    f.gen = self->route_gen;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_ROUTE_FLUSH;
    env.route_flush = &f;
    int64_t seq = lk_bus_send(self->bus, peer, &env, true);
    if (seq > 0) {
        /* a newer flush supersedes: the peer handles them in order */
        k->flush_seq = (uint64_t)seq;
        k->flush_round = ++self->flush_round;
    }
}

/* the routing changed: every cached route is void from now on */
static void s_route_changed(rt_server_t *self)
{
    self->route_gen++;
    lk_bus_each_peer(self->bus, s_flush_one, self);
}

static void s_min_round(lk_peer_t *peer, void *arg)
{
    uint64_t *min = arg;
    s_cacher_t *k = lk_peer_data(peer);
    if (k && k->flush_seq && k->flush_round < *min)
        *min = k->flush_round;
}

/* the lowest round still waiting for an ack, UINT64_MAX when none */
static uint64_t s_pending_round(rt_server_t *self)
{
    uint64_t min = UINT64_MAX;
    lk_bus_each_peer(self->bus, s_min_round, &min);
    return min;
}

/* ack now, or once the flushes sent so far are acked */
static void s_ack_after_flush(rt_server_t *self, lk_peer_t *peer, uint64_t seq)
{
    if (s_pending_round(self) == UINT64_MAX) {
        lk_bus_ack(self->bus, peer, seq);
        return;
    }
    s_defer_t *d = lk_calloc(1, sizeof(*d));
    d->peer = peer;
    d->seq = seq;
    d->peer_epoch = lk_peer_epoch(peer);
    d->round = self->flush_round;
    s_defer_t **pp = &self->deferred;
    while (*pp)
        pp = &(*pp)->next;
    *pp = d;
}

static void s_release_deferred(rt_server_t *self)
{
    uint64_t min = s_pending_round(self);
    s_defer_t **pp = &self->deferred;
    while (*pp) {
        s_defer_t *d = *pp;
        if (d->round < min) {
            *pp = d->next;
            if (lk_peer_epoch(d->peer) == d->peer_epoch)
                lk_bus_ack(self->bus, d->peer, d->seq);
            free(d);
        } else
            pp = &d->next;
    }
}

/* a peer whose routes are gone with it (restarted) or that is silent: nothing to wait for */
static void s_cacher_gone(rt_server_t *self, lk_peer_t *peer)
{
    s_cacher_t *k = lk_peer_data(peer);
    if (!k)
        return;
    k->has_routes = false;
    k->flush_seq = 0;
    s_release_deferred(self);
}

static void s_any_sub(void *client, const rt_sub_opts_t *opts, const char *filter,
                      const char *group, void *arg)
{
    (void)client, (void)opts, (void)filter, (void)group;
    *(bool *)arg = true;
}

static bool s_client_has_subs(rt_server_t *self, s_client_t *c)
{
    bool any = false;
    rt_trie_each_client_sub(self->trie, c, s_any_sub, &any);
    return any;
}

/* can the asker hand a message to this node's clients itself? */
static bool s_direct(lk_peer_t *asker, lk_peer_t *node)
{
    return node == asker || *lk_peer_endpoint(node);
}

/* Publish{resolve} from asker: answered with a Route, always (the asker counts them) */
static void s_resolve_one(rt_server_t *self, lk_peer_t *asker, Lk__Msg *msg, const char *share)
{
    Lk__Route r = LK__ROUTE__INIT;
    r.topic = msg->topic ? msg->topic : "";
    r.gen = self->route_gen;
    if (msg->qos != 0 || !msg->topic || !*msg->topic || (share && *share)) {
        s_publish_one(self, msg, share, true); /* not a resolvable message: the usual way */
        lk_bus_batch_add(self->bus, asker, LK_BODY_ROUTE, &r, false);
        return;
    }
    self->published++;
    if (msg->expiry_at_ms && (int64_t)msg->expiry_at_ms <= lk_wall_ms()) {
        self->dropped_expired++;
        lk_bus_batch_add(self->bus, asker, LK_BODY_ROUTE, &r, false);
        return;
    }
    if (msg->retain)
        s_retain_update(self, msg, true);
    s_match(self, msg);
    /* the route holds for any publisher of the asker only without No Local subscriptions */
    bool cache = !self->cur_nl_seen;
    size_t nd = 0;
    for (size_t i = 0; i < self->n_targets; i++) {
        s_target_t *t = &self->targets[i];
        if (!t->client->node)
            continue;   /* offline: QoS 0 is not kept */
        if (!t->share && s_direct(asker, t->client->node))
            nd++;
        else
            cache = false;
    }
    if (nd > self->route_max_targets) {
        nd = 0;         /* too many to send back per message: deliver them all here */
        cache = false;
    }
    if (nd > self->cap_rtargets) {
        self->cap_rtargets = nd * 2;
        self->rtargets = lk_realloc(self->rtargets, self->cap_rtargets * sizeof(*self->rtargets));
        self->rtarget_ptrs =
            lk_realloc(self->rtarget_ptrs, self->cap_rtargets * sizeof(*self->rtarget_ptrs));
    }
    size_t n = 0, nn = 0;
    for (size_t i = 0; i < self->n_targets; i++) {
        s_target_t *t = &self->targets[i];
        lk_peer_t *node = t->client->node;
        if (!node)
            continue;
        if (!nd || t->share || !s_direct(asker, node)) {
            s_deliver(self, t, msg);
            continue;
        }
        Lk__RouteTarget *rt = &self->rtargets[n];
        lk__route_target__init(rt);
        rt->node = (char *)lk_peer_name(node);
        rt->client = t->client->id;
        rt->n_sub_ids = t->n_sub_ids;
        rt->sub_ids = t->sub_ids;
        rt->retain = t->retain && msg->retain;
        self->rtarget_ptrs[n++] = rt;
        self->delivered++;
        if (node == asker)
            continue;
        size_t k;
        for (k = 0; k < nn; k++)
            if (strcmp(self->rnodes[k].node, rt->node) == 0)
                break;
        if (k < nn)
            continue;
        if (nn == self->cap_rnodes) {
            self->cap_rnodes = self->cap_rnodes ? self->cap_rnodes * 2 : 8;
            self->rnodes = lk_realloc(self->rnodes, self->cap_rnodes * sizeof(*self->rnodes));
            self->rnode_ptrs =
                lk_realloc(self->rnode_ptrs, self->cap_rnodes * sizeof(*self->rnode_ptrs));
        }
        lk__route_node__init(&self->rnodes[nn]);
        self->rnodes[nn].node = rt->node;
        self->rnodes[nn].endpoint = (char *)lk_peer_endpoint(node);
        nn++;
    }
    for (size_t k = 0; k < nn; k++)
        self->rnode_ptrs[k] = &self->rnodes[k];
    r.cache = cache;
    r.n_targets = n;
    r.targets = self->rtarget_ptrs;
    r.n_nodes = nn;
    r.nodes = self->rnode_ptrs;
    if (n)
        r.msg = msg;
    lk_bus_batch_add(self->bus, asker, LK_BODY_ROUTE, &r, false);
    if (cache)
        s_cacher(asker)->has_routes = true;
}

static void s_publish_batch(rt_server_t *self, lk_peer_t *peer, Lk__Envelope *env)
{
    self->n_cur_waits = 0;
    for (size_t i = 0; i < env->publish->n_items; i++)
        if (env->publish->items[i]->msg && env->resent)
            env->publish->items[i]->msg->dup = true;   /* a router before us may have sent it */
    for (size_t i = 0; i < env->publish->n_items; i++) {
        Lk__Publish *p = env->publish->items[i];
        if (p->retain_only && p->msg)
            s_retain_copy(self, p->msg);
        else if (p->resolve && p->msg)
            s_resolve_one(self, peer, p->msg, p->share);
        else if (p->msg)
            s_publish_one(self, p->msg, p->share, true);
    }
    if (!env->seq) {
        self->n_cur_waits = 0;
        return;
    }
    if (!self->n_cur_waits) {
        lk_bus_ack(self->bus, peer, env->seq);
        return;
    }
    s_job_t *job = lk_calloc(1, sizeof(*job));
    job->peer = peer;
    job->seq = env->seq;
    job->peer_epoch = lk_peer_epoch(peer);
    for (size_t i = 0; i < self->n_cur_waits; i++)
        s_wait_add(self, self->cur_waits[i].peer, self->cur_waits[i].seq, job);
    self->n_cur_waits = 0;
}

/* --- the other requests ----------------------------------------------------------- */

static void s_attach(rt_server_t *self, lk_peer_t *peer, Lk__Attach *a)
{
    if (!a->client || !*a->client)
        return;
    s_client_t *c = s_client_get(self, a->client);
    if (a->n_subs || s_client_has_subs(self, c))
        s_route_changed(self);
    if (a->clean)
        rt_trie_remove_client(self->trie, c);
    c->persistent = a->persistent;
    if (a->offline) {
        /* the session store's view must not undo a frontend's newer attach */
        if (c->node && lk_peer_alive(c->node) && s_is_store(self, peer))
            ;
        else
            c->node = NULL;
    } else
        c->node = peer;
    for (size_t i = 0; i < a->n_subs; i++) {
        rt_sub_opts_t o;
        s_sub_opts(a->subs[i], &o);
        if (rt_trie_add(self->trie, c, a->subs[i]->filter, &o, NULL) != 0)
            lk_warn("client %s: invalid filter '%s' ignored", c->id, a->subs[i]->filter);
    }
}

static void s_detach(rt_server_t *self, lk_peer_t *peer, Lk__Detach *d)
{
    s_client_t *c = zhashx_lookup(self->clients, d->client ? d->client : "");
    if (!c)
        return;
    if (s_client_has_subs(self, c))
        s_route_changed(self);
    if (s_is_store(self, peer)) {
        /* session expired in the store */
        if (!c->node) {
            s_client_remove(self, c);
            self->sys_expired++;
        }
        return;
    }
    if (c->node != peer)
        return;     /* taken over by another node meanwhile */
    c->node = NULL;
    if (!d->persistent)
        s_client_remove(self, c);
}

typedef struct {
    rt_server_t *self;
    s_client_t *client;
    const Lk__Subscription *sub;
} s_retained_ctx_t;

static int s_send_retained(const char *topic, void *msgp, void *arg)
{
    s_retained_ctx_t *ctx = arg;
    Lk__Msg *m = msgp;
    if (m->expiry_at_ms && (int64_t)m->expiry_at_ms <= lk_wall_ms())
        return RT_RETAIN_DELETE;
    uint32_t q0 = m->qos;
    m->qos = q0 < ctx->sub->qos ? q0 : ctx->sub->qos;
    Lk__Deliver d = LK__DELIVER__INIT;
    d.client = ctx->client->id;
    d.msg = m;
    d.retained = true;
    uint32_t sid = ctx->sub->sub_id;
    if (sid) {
        d.n_sub_ids = 1;
        d.sub_ids = &sid;
    }
    lk_bus_batch_add(ctx->self->bus, ctx->client->node, LK_BODY_DELIVER, &d, false);
    m->qos = q0;
    return RT_RETAIN_KEEP;
}

/* a frontend's re-ask: the router it first asked for a SUBSCRIBE's retained messages fell
   silent. Only subscriptions the client still holds, through that frontend, get them:
   an UNSUBSCRIBE or a disconnect may have come since. */
static void s_retained_only(rt_server_t *self, lk_peer_t *peer, Lk__SubscribeReq *r)
{
    s_client_t *c = zhashx_lookup(self->clients, r->client);
    if (!c || c->node != peer)
        return;
    for (size_t i = 0; i < r->n_subs; i++) {
        Lk__Subscription *s = r->subs[i];
        bool is_new = i < r->n_is_new && r->is_new[i];
        if (!s->filter || strncmp(s->filter, "$share/", 7) == 0 ||
            !rt_trie_lookup(self->trie, c, s->filter) ||
            !(s->retain_handling == 0 || (s->retain_handling == 1 && is_new)))
            continue;
        s_retained_ctx_t ctx = {self, c, s};
        rt_retain_match(self->retain, s->filter, s_send_retained, &ctx);
    }
}

static void s_subscribe(rt_server_t *self, lk_peer_t *peer, Lk__SubscribeReq *r)
{
    if (!r->client)
        return;
    if (r->retained_only) {
        s_retained_only(self, peer, r);
        return;
    }
    s_client_t *c = s_client_get(self, r->client);
    if (!c->node)
        c->node = peer;
    s_route_changed(self);
    for (size_t i = 0; i < r->n_subs; i++) {
        Lk__Subscription *s = r->subs[i];
        rt_sub_opts_t o;
        s_sub_opts(s, &o);
        bool is_new = false;
        if (rt_trie_add(self->trie, c, s->filter, &o, &is_new) != 0) {
            lk_warn("client %s: invalid filter '%s' ignored", c->id, s->filter);
            continue;
        }
        bool shared = strncmp(s->filter, "$share/", 7) == 0;
        bool want = r->send_retained && !shared &&
                    (s->retain_handling == 0 || (s->retain_handling == 1 && is_new));
        if (want && c->node) {
            s_retained_ctx_t ctx = {self, c, s};
            rt_retain_match(self->retain, s->filter, s_send_retained, &ctx);
        }
    }
}

static void s_unsubscribe(rt_server_t *self, Lk__UnsubscribeReq *r)
{
    s_client_t *c = zhashx_lookup(self->clients, r->client ? r->client : "");
    if (!c)
        return;
    s_route_changed(self);
    for (size_t i = 0; i < r->n_filters; i++)
        rt_trie_remove(self->trie, c, r->filters[i]);
}

static void s_retain_resync(rt_server_t *self, Lk__RetainSet *rs)
{
    for (size_t i = 0; i < rs->n_msgs; i++) {
        Lk__Msg *m = rs->msgs[i];
        if (!m->topic || !*m->topic)
            continue;
        if (m->payload.len == 0)
            rt_retain_delete(self->retain, m->topic);
        else if (!rt_retain_get(self->retain, m->topic))
            /* a retained publish seen since our start is newer than the store's copy */
            rt_retain_set(self->retain, m->topic, s_msg_copy(m));
    }
}

/* --- $SYS ------------------------------------------------------------------------- */

static void s_sys_one(rt_server_t *self, const char *topic, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void s_sys_one(rt_server_t *self, const char *topic, const char *fmt, ...)
{
    char value[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(value, sizeof(value), fmt, ap);
    va_end(ap);
    Lk__Msg m = LK__MSG__INIT;
    m.topic = (char *)topic;
    m.payload.data = (uint8_t *)value;
    m.payload.len = strlen(value);
    m.retain = true;
    m.origin_node = (char *)lk_bus_node(self->bus);
    /* retained in the router only: the next interval rewrites them anyway */
    s_publish_one(self, &m, NULL, false);
}

/* the rest of Mosquitto's list: load averages (exponentially damped per-minute rates, as
   Mosquitto computes them), clients expired / maximum, stored messages, heap */
static void s_sys_more(rt_server_t *self, const Lk__NodeStats *sum, size_t total)
{
    uint64_t stored = 0, heap = lk_admin_rss();
    for (s_stats_t *n = zhashx_first(self->stats); n; n = zhashx_next(self->stats))
        if (lk_peer_alive(n->peer)) {
            stored += n->st.stored_messages;
            heap += n->st.heap_bytes;
        }
    if (sum->clients > self->sys_max_clients)
        self->sys_max_clients = sum->clients;
    if (heap > self->sys_max_heap)
        self->sys_max_heap = heap;
    uint64_t now[5] = {sum->msgs_received, sum->msgs_sent, sum->bytes_received, sum->bytes_sent,
                       sum->connections_total};
    uint64_t prev[5] = {self->sys_prev.msgs_received, self->sys_prev.msgs_sent,
                        self->sys_prev.bytes_received, self->sys_prev.bytes_sent,
                        self->sys_prev.connections_total};
    static const double periods[3] = {60, 300, 900};
    double dt = (double)(self->sys_interval_s > 0 ? self->sys_interval_s : 1);
    for (int k = 0; k < 5; k++) {
        /* a counter that went back (a frontend restarted) counts as no traffic */
        double per_min = self->sys_have_prev && now[k] >= prev[k]
                             ? (double)(now[k] - prev[k]) * 60.0 / dt
                             : 0;
        for (int p = 0; p < 3; p++) {
            double f = exp(-dt / periods[p]);
            self->sys_load[k][p] = self->sys_load[k][p] * f + per_min * (1 - f);
        }
    }
    self->sys_prev = *sum;
    self->sys_have_prev = true;
    static const char *what[5] = {"messages/received", "messages/sent", "bytes/received",
                                  "bytes/sent", "connections"};
    static const char *span[3] = {"1min", "5min", "15min"};
    for (int k = 0; k < 5; k++)
        for (int p = 0; p < 3; p++) {
            char t[96];
            snprintf(t, sizeof(t), "$SYS/broker/load/%s/%s", what[k], span[p]);
            s_sys_one(self, t, "%.2f", self->sys_load[k][p]);
        }
    s_sys_one(self, "$SYS/broker/clients/expired", "%" PRIu64, self->sys_expired);
    s_sys_one(self, "$SYS/broker/clients/maximum", "%" PRIu64, self->sys_max_clients);
    s_sys_one(self, "$SYS/broker/clients/active", "%" PRIu64, sum->clients);
    s_sys_one(self, "$SYS/broker/clients/inactive", "%" PRIu64,
              total > sum->clients ? total - sum->clients : 0);
    s_sys_one(self, "$SYS/broker/messages/stored", "%" PRIu64, stored);
    s_sys_one(self, "$SYS/broker/store/messages/count", "%" PRIu64, stored);
    s_sys_one(self, "$SYS/broker/publish/messages/received", "%" PRIu64, sum->msgs_received);
    s_sys_one(self, "$SYS/broker/publish/messages/sent", "%" PRIu64, sum->msgs_sent);
    s_sys_one(self, "$SYS/broker/heap/current", "%" PRIu64, heap);
    s_sys_one(self, "$SYS/broker/heap/maximum", "%" PRIu64, self->sys_max_heap);
}

static void s_sys(lk_loop_t *loop, void *arg)
{
    rt_server_t *self = arg;
    if (self->warming)
        return;
    Lk__NodeStats sum = LK__NODE_STATS__INIT;
    /* several routers: the nodes send their NodeStats to the first live router only, and
       only a router they report to publishes $SYS (one publisher, not one per router) */
    int64_t fresh = lk_mono_ms() - 2 * 1000 * (self->sys_interval_s > 0 ? self->sys_interval_s : 1);
    bool reported = false;
    for (s_stats_t *n = zhashx_first(self->stats); n; n = zhashx_next(self->stats)) {
        if (!lk_peer_alive(n->peer) || n->at < fresh)
            continue;
        reported = true;
        sum.clients += n->st.clients;
        sum.msgs_received += n->st.msgs_received;
        sum.msgs_sent += n->st.msgs_sent;
        sum.bytes_received += n->st.bytes_received;
        sum.bytes_sent += n->st.bytes_sent;
        sum.msgs_dropped += n->st.msgs_dropped;
        sum.connections_total += n->st.connections_total;
    }
    if (self->n_routers > 1 && !reported)
        return;
    sum.msgs_dropped += lk_bus_dropped(self->bus);    /* QoS 0 deliveries refused for room */
    size_t total = zhashx_size(self->clients);
    s_sys_one(self, "$SYS/broker/version", "latchkey version %s", LK_VERSION);
    s_sys_one(self, "$SYS/broker/uptime", "%" PRId64 " seconds",
              (lk_mono_ms() - self->started_ms) / 1000);
    s_sys_one(self, "$SYS/broker/clients/connected", "%" PRIu64, sum.clients);
    s_sys_one(self, "$SYS/broker/clients/total", "%zu", total);
    s_sys_one(self, "$SYS/broker/clients/disconnected", "%" PRIu64,
              total > sum.clients ? total - sum.clients : 0);
    s_sys_one(self, "$SYS/broker/messages/received", "%" PRIu64, sum.msgs_received);
    s_sys_one(self, "$SYS/broker/messages/sent", "%" PRIu64, sum.msgs_sent);
    s_sys_one(self, "$SYS/broker/bytes/received", "%" PRIu64, sum.bytes_received);
    s_sys_one(self, "$SYS/broker/bytes/sent", "%" PRIu64, sum.bytes_sent);
    s_sys_one(self, "$SYS/broker/publish/messages/dropped", "%" PRIu64, sum.msgs_dropped);
    s_sys_one(self, "$SYS/broker/subscriptions/count", "%zu", rt_trie_count(self->trie));
    s_sys_one(self, "$SYS/broker/retained messages/count", "%zu", rt_retain_count(self->retain));
    s_sys_more(self, &sum, total);
}

static void s_stats_free(void **item)
{
    free(*item);
    *item = NULL;
}

static void s_stats_update(rt_server_t *self, lk_peer_t *peer, const Lk__NodeStats *st)
{
    s_stats_t *n = zhashx_lookup(self->stats, lk_peer_name(peer));
    if (!n) {
        n = lk_calloc(1, sizeof(*n));
        zhashx_insert(self->stats, lk_peer_name(peer), n);
    }
    n->st = *st;
    n->st.base.descriptor = &lk__node_stats__descriptor;
    n->peer = peer;
    n->at = lk_mono_ms();
}

/* --- the api's requests (lk.AdminRequest) ----------------------------------------- */

typedef struct {
    rt_server_t *self;
    const Lk__AdminRequest *q;
    lk_admin_out_t *out;
    uint64_t total;
    zhashx_t *seen; /* topics: filter -> 1 */
} s_admin_t;

static void s_admin_sub(void *client, const rt_sub_opts_t *opts, const char *filter,
                        const char *group, void *arg)
{
    s_admin_t *a = arg;
    s_client_t *c = client;
    if (a->seen) {
        /* topics: one row per (filter, node) as EMQX's routes */
        char key[512];
        snprintf(key, sizeof(key), "%.400s\n%.100s", filter, c->node ? lk_peer_name(c->node) : "");
        if (zhashx_lookup(a->seen, key))
            return;
        zhashx_insert(a->seen, key, (void *)1);
    }
    if (a->q->like && *a->q->like && !strstr(filter, a->q->like))
        return;
    if (a->q->topic && *a->q->topic && strcmp(filter, a->q->topic) != 0)
        return;
    a->total++;
    if (a->q->limit && a->total > a->q->limit)
        return;
    Lk__AdminSub *s = lk_admin_sub_add(a->out);
    s->client = lk_admin_str(a->out, a->seen ? "" : c->id);
    s->node = lk_admin_str(a->out, c->node ? lk_peer_name(c->node) : "");
    Lk__Subscription *sub = lk_admin_subscription(a->out);
    sub->filter = lk_admin_str(a->out, filter);
    sub->qos = opts->qos;
    sub->no_local = opts->no_local;
    sub->retain_as_published = opts->retain_as_published;
    sub->retain_handling = opts->retain_handling;
    sub->sub_id = opts->sub_id;
    s->sub = sub;
}

static int s_admin_retained(const char *topic, void *msg, void *arg)
{
    s_admin_t *a = arg;
    a->total++;
    if (!a->q->limit || a->total <= a->q->limit)
        lk_admin_retained_add(a->out, msg, 0);
    return RT_RETAIN_KEEP;
}

static void s_admin(lk_bus_t *bus, lk_peer_t *peer, const Lk__AdminRequest *q,
                    lk_admin_out_t *out, void *arg)
{
    rt_server_t *self = arg;
    const char *op = q->op ? q->op : "";
    s_admin_t a = {self, q, out, 0, NULL};
    if (strcmp(op, "node") == 0) {
        Lk__NodeStats sum = LK__NODE_STATS__INIT;
        for (s_stats_t *n = zhashx_first(self->stats); n; n = zhashx_next(self->stats))
            if (lk_peer_alive(n->peer))
                sum.clients += n->st.clients;
        size_t persistent = 0;
        for (s_client_t *c = zhashx_first(self->clients); c; c = zhashx_next(self->clients))
            persistent += c->persistent;
        lk_admin_metric(out, "latchkey_router_clients", NULL, (double)zhashx_size(self->clients),
                        false);
        lk_admin_metric(out, "latchkey_sessions", NULL, (double)persistent, false);
        lk_admin_metric(out, "latchkey_subscriptions", NULL, (double)rt_trie_count(self->trie),
                        false);
        lk_admin_metric(out, "latchkey_subscribers", NULL,
                        (double)rt_trie_client_count(self->trie), false);
        lk_admin_metric(out, "latchkey_retained_messages", NULL,
                        (double)rt_retain_count(self->retain), false);
        lk_admin_metric(out, "latchkey_router_published_total", NULL, (double)self->published,
                        true);
        lk_admin_metric(out, "latchkey_router_delivered_total", NULL, (double)self->delivered,
                        true);
        lk_admin_metric(out, "latchkey_router_stored_total", NULL, (double)self->stored, true);
        lk_admin_metric(out, "latchkey_messages_dropped_total", "reason=\"expired\"",
                        (double)self->dropped_expired, true);
        lk_admin_metric(out, "latchkey_messages_dropped_total", "reason=\"retain_refused\"",
                        (double)self->retain_refused, true);
    } else if (strcmp(op, "subscriptions") == 0) {
        if (q->client && *q->client) {
            s_client_t *c = zhashx_lookup(self->clients, q->client);
            if (c)
                rt_trie_each_client_sub(self->trie, c, s_admin_sub, &a);
        } else
            rt_trie_each(self->trie, s_admin_sub, &a);
        lk_admin_reply(out)->total = a.total;
    } else if (strcmp(op, "topics") == 0) {
        a.seen = zhashx_new();
        rt_trie_each(self->trie, s_admin_sub, &a);
        zhashx_destroy(&a.seen);
        lk_admin_reply(out)->total = a.total;
    } else if (strcmp(op, "retained") == 0) {
        if (q->topic && *q->topic) {
            Lk__Msg *m = rt_retain_get(self->retain, q->topic);
            if (m)
                s_admin_retained(q->topic, m, &a);
            else
                lk_admin_error(out, "NOT_FOUND", "no retained message on that topic");
        } else if (q->like && *q->like) {
            if (rt_retain_match(self->retain, q->like, s_admin_retained, &a) != 0)
                lk_admin_error(out, "BAD_REQUEST", "invalid topic filter");
        } else
            rt_retain_each(self->retain, s_admin_retained, &a);
        lk_admin_reply(out)->total = a.total;
    } else if (strcmp(op, "retained_delete") == 0) {
        if (!q->topic || rt_retain_delete(self->retain, q->topic) != 0) {
            lk_admin_error(out, "NOT_FOUND", "no retained message on that topic");
            return;
        }
        /* the session store forgets it too (an empty payload deletes) */
        Lk__Msg m = LK__MSG__INIT;
        m.topic = q->topic;
        m.retain = true;
        lk_bus_batch_add(self->bus, s_store(self, q->topic), LK_BODY_RETAIN, &m, true);
        lk_admin_reply(out)->count = 1;
        lk_notice("retained message on '%s' deleted by %s", q->topic, lk_peer_name(peer));
    } else
        lk_admin_error(out, "BAD_REQUEST", "router does not answer '%s'", op);
}

/* --- warming ---------------------------------------------------------------------- */

static void s_handle(rt_server_t *self, lk_peer_t *peer, Lk__Envelope *env);

static void s_warm_end(rt_server_t *self, const char *why)
{
    if (!self->warming)
        return;
    self->warming = false;
    int n = 0;
    /* taken out first: one may be held again (back-pressure), behind the others */
    s_held_t *list = self->held;
    self->held = self->held_tail = NULL;
    while (list) {
        s_held_t *h = list;
        list = h->next;
        Lk__Envelope *env = lk__envelope__unpack(NULL, h->len, h->data);
        if (env) {
            s_handle(self, h->peer, env);
            lk__envelope__free_unpacked(env, NULL);
        }
        free(h->data);
        free(h);
        n++;
    }
    lk_notice("ready (%s): %zu clients, %zu subscriptions, %zu retained, %d held publishes",
              why, zhashx_size(self->clients), rt_trie_count(self->trie),
              rt_retain_count(self->retain), n);
}

/* a replica's ResyncDone: every live replica has resynced its share */
static bool s_resync_complete(rt_server_t *self, lk_peer_t *peer)
{
    self->resync_seen |= 1ull << lk_replicas_index(self->stores, peer);
    for (int i = 0; i < lk_replicas_count(self->stores); i++)
        if (lk_peer_alive(lk_replicas_nth(self->stores, i)) && !(self->resync_seen & (1ull << i)))
            return false;
    return true;
}

static void s_warm_check(lk_loop_t *loop, void *arg)
{
    rt_server_t *self = arg;
    if (self->warming && lk_loop_now(loop) >= self->warm_deadline)
        s_warm_end(self, self->resync_done ? "session store resync done"
                                           : "no session store resync in time");
    s_pressure_check(self);
}

/* --- back-pressure ---------------------------------------------------------------- */

typedef struct {
    size_t limit;
    lk_peer_t *over;
} s_over_t;

static void s_peer_over(lk_peer_t *peer, void *arg)
{
    s_over_t *o = arg;
    if (lk_peer_alive(peer) && lk_peer_unacked_bytes(peer) > o->limit)
        o->over = peer;
}

/* a live peer with more than limit bytes from us unacked, or NULL */
static lk_peer_t *s_over(rt_server_t *self, size_t limit)
{
    s_over_t o = {limit, NULL};
    lk_bus_each_peer(self->bus, s_peer_over, &o);
    return o.over;
}

/* a peer that restarted us: publishes it queued before it learnt of our start may come
   before its re-Attach; they wait for it (at most this long, for a frontend that has no
   client left to re-attach and sends nothing else) */
#define S_SYNC_WAIT_MS 2000

/* Publishes wait (unread, unacked) while a peer is slow to take what we sent it: the
   frontends' own router_backlog_bytes then stops them reading their publishers. Held
   ones go on once every peer is under half the backlog again, in arrival order. */
static void s_pressure_check(rt_server_t *self)
{
    if (self->warming)
        return;
    if (self->pressed) {
        if (s_over(self, self->deliver_backlog / 2))
            return;
        self->pressed = false;
        lk_info("deliveries caught up after %" PRId64 " ms: held publishes go on",
                lk_mono_ms() - self->pressed_since);
    }
    int64_t now = lk_mono_ms();
    while (self->held && !self->pressed) {
        s_held_t *h = self->held;
        if (!lk_peer_knows_us(h->peer) && now - h->since < S_SYNC_WAIT_MS)
            break;
        self->held = h->next;
        if (!self->held)
            self->held_tail = NULL;
        Lk__Envelope *env = lk__envelope__unpack(NULL, h->len, h->data);
        if (env) {
            s_publish_batch(self, h->peer, env);
            lk__envelope__free_unpacked(env, NULL);
        }
        free(h->data);
        free(h);
        if (self->deliver_backlog && s_over(self, self->deliver_backlog)) {
            self->pressed = true;
            self->pressed_since = lk_mono_ms();
        }
    }
}

static bool s_must_hold(rt_server_t *self, lk_peer_t *peer)
{
    if (self->warming || self->held || !lk_peer_knows_us(peer))
        return true;
    lk_peer_t *slow = self->deliver_backlog ? s_over(self, self->deliver_backlog) : NULL;
    if (!slow)
        return false;
    self->pressed = true;
    self->pressed_since = lk_mono_ms();
    if (self->pressed_count++ % 100 == 0)
        lk_notice("%s has %zu bytes from us unacked (deliver_backlog_bytes %zu): publishes "
                  "wait (%" PRIu64 " times so far)",
                  lk_peer_name(slow), lk_peer_unacked_bytes(slow), self->deliver_backlog,
                  self->pressed_count);
    return true;
}

/* --- bus handlers ----------------------------------------------------------------- */

static void s_handle(rt_server_t *self, lk_peer_t *peer, Lk__Envelope *env)
{
    switch (env->body_case) {
    case LK__ENVELOPE__BODY_PUBLISH:
        if (s_must_hold(self, peer)) {
            s_held_t *h = lk_calloc(1, sizeof(*h));
            h->peer = peer;
            h->since = lk_mono_ms();
            h->len = lk__envelope__get_packed_size(env);
            h->data = lk_malloc(h->len);
            lk__envelope__pack(env, h->data);
            if (self->held_tail)
                self->held_tail->next = h;
            else
                self->held = h;
            self->held_tail = h;
            return;
        }
        s_publish_batch(self, peer, env);
        return;     /* acked by s_publish_batch or when the store acks */
    case LK__ENVELOPE__BODY_ATTACH:
        s_attach(self, peer, env->attach);
        /* the frontend sends CONNACK on this ack: after the flush, no stale route */
        if (env->seq)
            s_ack_after_flush(self, peer, env->seq);
        return;
    case LK__ENVELOPE__BODY_DETACH:
        s_detach(self, peer, env->detach);
        break;
    case LK__ENVELOPE__BODY_SUBSCRIBE:
        s_subscribe(self, peer, env->subscribe);
        if (env->seq)
            s_ack_after_flush(self, peer, env->seq);
        return;
    case LK__ENVELOPE__BODY_UNSUBSCRIBE:
        s_unsubscribe(self, env->unsubscribe);
        if (env->seq)
            s_ack_after_flush(self, peer, env->seq);
        return;
    case LK__ENVELOPE__BODY_RETAIN:
        s_retain_resync(self, env->retain);
        break;
    case LK__ENVELOPE__BODY_STATS:
        s_stats_update(self, peer, env->stats);
        break;
    case LK__ENVELOPE__BODY_RESYNC_DONE:
        if (!self->warming || !s_is_store(self, peer) || !s_resync_complete(self, peer))
            break;
        if (lk_loop_now(self->loop) >= self->warm_min)
            s_warm_end(self, "session store resync done");
        else {
            self->resync_done = true;
            self->warm_deadline = self->warm_min;   /* frontends get their grace period */
        }
        break;
    default:
        lk_debug("ignored body %d from %s", env->body_case, lk_peer_name(peer));
        break;
    }
    if (env->seq)
        lk_bus_ack(self->bus, peer, env->seq);
}

static void s_on_message(lk_bus_t *bus, lk_peer_t *peer, Lk__Envelope *env, void *arg)
{
    rt_server_t *self = arg;
    s_handle(self, peer, env);
    /* e.g. the re-Attach a held publish of this peer waited for */
    if (self->held)
        s_pressure_check(self);
}

static void s_forget_node(rt_server_t *self, lk_peer_t *peer)
{
    zlistx_t *gone = zlistx_new();
    for (s_client_t *c = zhashx_first(self->clients); c; c = zhashx_next(self->clients))
        if (c->node == peer)
            zlistx_add_end(gone, c);
    if (zlistx_size(gone))
        s_route_changed(self);
    for (s_client_t *c = zlistx_first(gone); c; c = zlistx_next(gone)) {
        c->node = NULL;
        if (!c->persistent)
            s_client_remove(self, c);
    }
    zlistx_destroy(&gone);
}

static void s_on_peer_up(lk_bus_t *bus, lk_peer_t *peer, bool restarted, void *arg)
{
    rt_server_t *self = arg;
    lk_info("peer %s (%s) %s", lk_peer_name(peer), lk_peer_kind(peer),
            restarted ? "restarted" : "up");
    if (restarted && !s_is_store(self, peer)) {
        /* its clients are gone with its old life; deliveries to them are moot */
        s_forget_node(self, peer);
        lk_peer_drop_unacked(peer);
        s_cacher_gone(self, peer);
        s_pressure_check(self);
    }
}

static void s_wait_moved(lk_peer_t *from, uint64_t old_seq, lk_peer_t *to, uint64_t new_seq,
                         void *arg)
{
    rt_server_t *self = arg;
    for (s_wait_t *w = self->waits; w; w = w->next)
        if (w->peer == from && w->store_seq == old_seq) {
            w->peer = to;
            w->store_seq = new_seq;
            break;
        }
}

/* A session-store replica is silent: the next live one owns its clients (and retained
   topics) now and stores what it did not ack; the publishes waiting on those copies
   wait on the new envelopes. */
static void s_store_down(rt_server_t *self, lk_peer_t *peer)
{
    lk_peer_t *next = lk_replicas_successor(self->stores, peer);
    if (!next)
        return; /* none left: the copies wait for the first one back */
    size_t n = lk_bus_move_unacked(self->bus, peer, next, s_wait_moved, self);
    if (n)
        lk_notice("session store %s down: %zu envelope(s) moved to %s", lk_peer_name(peer), n,
                  lk_peer_name(next));
}

static void s_on_peer_down(lk_bus_t *bus, lk_peer_t *peer, void *arg)
{
    rt_server_t *self = arg;
    (void)bus;
    /* a silent frontend must not hold SUBACKs; its flush is re-sent when it returns */
    s_cacher_gone(self, peer);
    if (s_is_store(self, peer))
        s_store_down(self, peer);
    /* nor other publishes (its copies stay kept, re-sent when it returns) */
    s_pressure_check(self);
}

static void s_free_cacher(lk_peer_t *peer, void *arg)
{
    (void)arg;
    free(lk_peer_data(peer));
    lk_peer_set_data(peer, NULL);
}

/* --- construction ----------------------------------------------------------------- */

rt_server_t *rt_server_new(lk_config_t *config, lk_loop_t *loop, const char *node)
{
    rt_server_t *self = lk_calloc(1, sizeof(*self));
    self->config = config;
    self->loop = loop;
    self->clients = zhashx_new();
    /* the key is the record's own id: no second copy per client */
    zhashx_set_key_duplicator(self->clients, NULL);
    zhashx_set_key_destructor(self->clients, NULL);
    zhashx_set_destructor(self->clients, s_client_free);
    self->trie = rt_trie_new();
    self->retain = rt_retain_new(s_retain_free);
    self->stats = zhashx_new();
    zhashx_set_destructor(self->stats, s_stats_free);
    self->started_ms = lk_mono_ms();
    self->max_retained = (uint64_t)lk_config_get_int(config, "max_retained_messages", 0);
    self->max_retained_size = (uint64_t)lk_config_get_int(config, "max_retained_size", 0);
    self->route_gen = 1;
    self->route_max_targets = (size_t)lk_config_get_int(config, "route_max_targets", 1024);
    self->deliver_backlog =
        (size_t)lk_config_get_int(config, "deliver_backlog_bytes", 16 << 20);
    lk_bus_handlers_t h = {s_on_message, s_on_peer_up, s_on_peer_down};
    self->bus = lk_bus_new(loop, node, "router", &h, self);
    if (lk_bus_configure(self->bus, config) != 0) {
        rt_server_destroy(&self);
        return NULL;
    }
    lk_bus_on_acked(self->bus, s_store_acked);
    lk_bus_on_admin(self->bus, s_admin, self);
    if (lk_bus_enable_msglog(self->bus, lk_config_get(config, "msglog_dir", "")) != 0) {
        rt_server_destroy(&self);
        return NULL;
    }
    self->stores = lk_replicas_served(self->bus, config, "session", "session-store");
    if (!self->stores) {
        rt_server_destroy(&self);
        return NULL;
    }
    /* router_endpoint is a template (%n: our node id) when several routers serve */
    char *ep = lk_replicas_endpoint(config, "router", node);
    if (!ep || !*ep) {
        lk_error("router_endpoint is not configured");
        free(ep);
        rt_server_destroy(&self);
        return NULL;
    }
    int brc = lk_bus_bind(self->bus, ep);
    free(ep);
    if (brc != 0) {
        rt_server_destroy(&self);
        return NULL;
    }
    self->n_routers = (int)lk_config_get_int(config, "router_replicas", 1);
    self->warming = true;
    int64_t now = lk_mono_ms();
    self->warm_min = now + lk_config_get_int(config, "router_warmup_min_ms", 600);
    self->warm_deadline = now + lk_config_get_int(config, "router_warmup_max_ms", 3000);
    lk_loop_timer(loop, 100, true, s_warm_check, self);
    self->sys_interval_s = lk_config_get_int(config, "sys_interval", 5);
    lk_loop_timer(loop, self->sys_interval_s * 1000, true, s_sys, self);
    return self;
}

void rt_server_destroy(rt_server_t **self_p)
{
    rt_server_t *self = *self_p;
    if (!self)
        return;
    if (self->bus)
        lk_bus_each_peer(self->bus, s_free_cacher, NULL);
    lk_bus_destroy(&self->bus);
    while (self->deferred) {
        s_defer_t *d = self->deferred;
        self->deferred = d->next;
        free(d);
    }
    free(self->rtargets);
    free(self->rtarget_ptrs);
    free(self->rnodes);
    free(self->rnode_ptrs);
    rt_trie_destroy(&self->trie);
    zhashx_destroy(&self->clients);
    rt_retain_destroy(&self->retain);
    zhashx_destroy(&self->stats);
    while (self->waits) {
        s_wait_t *w = self->waits;
        self->waits = w->next;
        for (size_t i = 0; i < w->n; i++)
            if (--w->jobs[i]->waits == 0)
                free(w->jobs[i]);
        free(w->jobs);
        free(w);
    }
    while (self->held) {
        s_held_t *h = self->held;
        self->held = h->next;
        free(h->data);
        free(h);
    }
    free(self->targets);
    free(self->cur_waits);
    lk_replicas_destroy(&self->stores);
    free(self);
    *self_p = NULL;
}
