/*  lk_iclient: an internal MQTT client on the bus (see lk_iclient.h).

    It mirrors what services/mqtt-frontend does for one socket client with a persistent
    session: the state goes OPENING (Attach sent, SessionOpen sent and re-sent every second
    until SessionOpened) → OPEN. Stored deliveries (store_id > 0) that arrive before
    SessionOpened are dropped: the pending list of SessionOpened carries them, and any
    store id at or below the highest seen is a duplicate. Acks for stored copies are
    collected during a loop turn and leave as one SessionAck at its end.

    Readiness (on_ready) needs the router to have acked the last Attach or SubscribeReq,
    so a service that reports itself ready has its subscriptions in place.

    The session is opened again whenever the session store comes back (restarted, or
    heard from after a silence): a store forwards a stored copy only to a node it currently
    sees, so copies stored before it heard from us again would otherwise wait for our next
    start.

    Several routers (router_replicas): the Attach and subscriptions go to each (ready once
    every live one acked), a publish to its topic's owner (lk_replicas_owner), a retained
    one also as a retain-only copy to the others. The publish ids handed out are ours
    (a router's seq alone would be ambiguous); when an owner falls silent, the batches it
    did not ack move to the topic's new owner and keep their ids. */
#include "lk_iclient.h"
#include "lk_common.h"
#include "lk_mqtt.h"
#include "lk_replicas.h"

/* a publish batch at a router, and the id the service knows it by */
typedef struct {
    lk_peer_t *peer;
    uint64_t seq;
    uint64_t id;
} s_pub_t;

#define S_REOPEN_MS 1000
#define S_CRON_MS 250
#define S_EXPIRY_NEVER 0xFFFFFFFFu

typedef enum { S_OPENING = 0, S_OPEN } s_state_t;

typedef struct {
    char *filter;
    uint32_t qos;
} s_sub_t;

struct _lk_iclient_t {
    lk_loop_t *loop;
    lk_bus_t *bus;
    lk_replicas_t *routers;
    lk_peer_t *store;        /* the replica our session was last opened at */
    lk_replicas_t *stores;   /* session_endpoint / session_replicas */
    char *node;
    char *client_id;
    lk_iclient_handlers_t h;
    void *arg;
    s_state_t state;
    uint64_t req;
    int64_t open_sent_ms;
    uint32_t max_queued;
    int cron;
    /* subscriptions */
    s_sub_t *subs;
    size_t n_subs, cap_subs;
    bool subs_changed; /* to tell the session store at turn end */
    /* per router: seq of the last Attach/SubscribeReq; 0 = acked */
    uint64_t sub_seq[LK_REPLICAS_MAX];
    /* publish batches waiting for their router's ack */
    s_pub_t *pubs;
    size_t n_pubs, cap_pubs;
    uint64_t pub_id;
    bool ready_told;
    /* stored copies handled this turn */
    uint64_t *acks;
    size_t n_acks, cap_acks;
    uint64_t max_store_id;
    bool deferred; /* set by lk_iclient_defer inside on_message */
    /* closing */
    uint64_t close_seqs[2];
    bool closing;
};

typedef lk_iclient_t self_t;

/* --- subscriptions ---------------------------------------------------------------- */

static void s_subs_to_proto(self_t *self, Lk__Subscription **ptrs, Lk__Subscription *store)
{
    for (size_t i = 0; i < self->n_subs; i++) {
        lk__subscription__init(&store[i]);
        store[i].filter = self->subs[i].filter;
        store[i].qos = self->subs[i].qos;
        ptrs[i] = &store[i];
    }
}

/* only: that router (restarted), NULL: every one */
static void s_attach(self_t *self, lk_peer_t *only)
{
    size_t n = self->n_subs ? self->n_subs : 1;
    Lk__Subscription store[n];
    Lk__Subscription *ptrs[n];
    s_subs_to_proto(self, ptrs, store);
    Lk__Attach a = LK__ATTACH__INIT;
    a.client = self->client_id;
    a.persistent = true;
    a.n_subs = self->n_subs;
    a.subs = ptrs;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_ATTACH;
    env.attach = &a;
    for (int i = 0; i < lk_replicas_count(self->routers); i++) {
        lk_peer_t *r = lk_replicas_nth(self->routers, i);
        if (only && r != only)
            continue;
        int64_t seq = lk_bus_send(self->bus, r, &env, true);
        if (seq > 0)
            self->sub_seq[i] = (uint64_t)seq;
    }
}

static void s_subscribe_send(self_t *self, s_sub_t *subs, size_t n)
{
    Lk__Subscription store[n ? n : 1];
    Lk__Subscription *ptrs[n ? n : 1];
    for (size_t i = 0; i < n; i++) {
        lk__subscription__init(&store[i]);
        store[i].filter = subs[i].filter;
        store[i].qos = subs[i].qos;
        ptrs[i] = &store[i];
    }
    Lk__SubscribeReq sr = LK__SUBSCRIBE_REQ__INIT;
    sr.client = self->client_id;
    sr.n_subs = n;
    sr.subs = ptrs;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_SUBSCRIBE;
    env.subscribe = &sr;
    for (int i = 0; i < lk_replicas_count(self->routers); i++) {
        int64_t seq = lk_bus_send(self->bus, lk_replicas_nth(self->routers, i), &env, true);
        if (seq > 0)
            self->sub_seq[i] = (uint64_t)seq;
    }
    self->subs_changed = true;
}

int lk_iclient_subscribe(lk_iclient_t *self, const char *filter, uint32_t qos)
{
    if (!filter || !lk_mqtt_filter_valid(filter, strlen(filter), true)) {
        lk_error("iclient %s: invalid filter '%s'", self->client_id, filter ? filter : "");
        return -1;
    }
    if (qos > 2)
        qos = 2;
    s_sub_t *s = NULL;
    for (size_t i = 0; i < self->n_subs; i++)
        if (strcmp(self->subs[i].filter, filter) == 0)
            s = &self->subs[i];
    if (!s) {
        if (self->n_subs == self->cap_subs) {
            self->cap_subs = self->cap_subs ? self->cap_subs * 2 : 8;
            self->subs = lk_realloc(self->subs, self->cap_subs * sizeof(s_sub_t));
        }
        s = &self->subs[self->n_subs++];
        s->filter = lk_strdup(filter);
    }
    s->qos = qos;
    /* while opening, SessionOpened sends the whole set */
    if (self->state == S_OPEN)
        s_subscribe_send(self, s, 1);
    return 0;
}

/* --- session ---------------------------------------------------------------------- */

/* the replica owning our client id now */
static lk_peer_t *s_owner(self_t *self)
{
    return lk_replicas_owner(self->stores, self->client_id, strlen(self->client_id));
}

static void s_open_send(self_t *self)
{
    Lk__SessionOpen o = LK__SESSION_OPEN__INIT;
    o.req = self->req;
    o.client = self->client_id;
    o.clean = false;
    o.expiry = S_EXPIRY_NEVER;
    o.max_queued = self->max_queued;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_SESSION_OPEN;
    env.session_open = &o;
    self->store = s_owner(self);
    lk_bus_send(self->bus, self->store, &env, false);
    self->open_sent_ms = lk_loop_now(self->loop);
}

/* (re)starts the session: Attach (router) then SessionOpen (session store) */
static void s_open(self_t *self)
{
    self->state = S_OPENING;
    self->ready_told = false;
    self->req++;
    s_attach(self, NULL);
    s_open_send(self);
}

/* every live router acked our Attach and subscriptions */
static bool s_subs_acked(self_t *self)
{
    bool any = false;
    for (int i = 0; i < lk_replicas_count(self->routers); i++) {
        bool alive = lk_peer_alive(lk_replicas_nth(self->routers, i));
        if (self->sub_seq[i] && (alive || lk_replicas_count(self->routers) == 1))
            return false;
        any = any || alive || !self->sub_seq[i];
    }
    return any;
}

static void s_maybe_ready(self_t *self)
{
    if (self->state != S_OPEN || !s_subs_acked(self) || self->ready_told)
        return;
    self->ready_told = true;
    lk_info("iclient %s: session open, %zu subscription(s) in place", self->client_id,
            self->n_subs);
    if (self->h.on_ready)
        self->h.on_ready(self, self->arg);
}

static void s_ack_add(self_t *self, uint64_t store_id)
{
    if (self->n_acks == self->cap_acks) {
        self->cap_acks = self->cap_acks ? self->cap_acks * 2 : 64;
        self->acks = lk_realloc(self->acks, self->cap_acks * sizeof(uint64_t));
    }
    self->acks[self->n_acks++] = store_id;
}

static void s_deliver(self_t *self, const Lk__Deliver *d, bool from_store)
{
    if (!d->msg || !d->msg->topic || (d->client && strcmp(d->client, self->client_id) != 0))
        return;
    if (d->store_id) {
        /* before SessionOpened, stored copies come with its pending list */
        if (self->state != S_OPEN || d->store_id <= self->max_store_id)
            return;
        self->max_store_id = d->store_id;
    }
    if (d->msg->expiry_at_ms && (int64_t)d->msg->expiry_at_ms <= lk_wall_ms()) {
        if (d->store_id)
            s_ack_add(self, d->store_id);
        return;
    }
    self->deferred = false;
    if (self->h.on_message)
        self->h.on_message(self, d->msg, d->store_id, self->arg);
    if (d->store_id && !self->deferred)
        s_ack_add(self, d->store_id);
    self->deferred = false;
}

static void s_opened(self_t *self, Lk__SessionOpened *r)
{
    if (self->state != S_OPENING || r->req != self->req)
        return;
    self->state = S_OPEN;
    /* the session store's subscriptions and ours: ours are the truth (the service
       subscribes what it needs at every start); the router may have lost either */
    if (self->n_subs)
        s_subscribe_send(self, self->subs, self->n_subs);
    lk_info("iclient %s: session %s, %zu pending", self->client_id, r->present ? "resumed" : "new",
            r->n_pending);
    for (size_t i = 0; i < r->n_pending; i++) {
        Lk__Deliver *d = r->pending[i];
        if (!d->store_id || d->store_id <= self->max_store_id)
            continue;
        self->max_store_id = d->store_id;
        if (d->msg && d->msg->topic) {
            self->deferred = false;
            if (self->h.on_message)
                self->h.on_message(self, d->msg, d->store_id, self->arg);
            if (!self->deferred)
                s_ack_add(self, d->store_id);
            self->deferred = false;
        } else
            s_ack_add(self, d->store_id);
    }
    s_maybe_ready(self);
}

void lk_iclient_defer(lk_iclient_t *self)
{
    self->deferred = true;
}

void lk_iclient_ack(lk_iclient_t *self, uint64_t store_id)
{
    if (store_id)
        s_ack_add(self, store_id);
}

/* --- bus -------------------------------------------------------------------------- */

static void s_on_message(lk_bus_t *bus, lk_peer_t *peer, Lk__Envelope *env, void *arg)
{
    self_t *self = arg;
    bool from_store = lk_replicas_has(self->stores, peer);
    if (!lk_replicas_has(self->routers, peer) && !from_store) {
        if (self->h.on_envelope)
            self->h.on_envelope(self, peer, env, self->arg);
        else if (env->seq)
            lk_bus_ack(bus, peer, env->seq);
        return;
    }
    switch (env->body_case) {
    case LK__ENVELOPE__BODY_DELIVER:
        for (size_t i = 0; i < env->deliver->n_items; i++)
            s_deliver(self, env->deliver->items[i], from_store);
        break;
    case LK__ENVELOPE__BODY_SESSION_OPENED:
        s_opened(self, env->session_opened);
        break;
    case LK__ENVELOPE__BODY_TAKEOVER:
        /* another node opened our client id: two instances of one service run */
        lk_error("iclient %s: taken over by %s; is the service running twice?", self->client_id,
                 env->takeover->by_node ? env->takeover->by_node : "?");
        break;
    default:
        /* the service's own business with these peers (e.g. the api's AdminReply) */
        if (self->h.on_envelope) {
            self->h.on_envelope(self, peer, env, self->arg);
            return;
        }
        lk_debug("iclient: ignored body %d from %s", env->body_case, lk_peer_name(peer));
        break;
    }
    if (env->seq)
        lk_bus_ack(bus, peer, env->seq);
}

static void s_move_publishes(self_t *self, lk_peer_t *from);

static void s_on_peer_up(lk_bus_t *bus, lk_peer_t *peer, bool restarted, void *arg)
{
    self_t *self = arg;
    if (lk_replicas_has(self->routers, peer)) {
        lk_info("iclient %s: %s %s", self->client_id, lk_peer_name(peer),
                restarted ? "restarted" : "up");
        if (restarted && !self->closing) {
            /* it starts empty: our client and its subscriptions again */
            s_attach(self, peer);
        }
        /* publishes that waited for routers silent while none was alive: to this one
           now, before anything newer on their topics */
        for (int i = 0; i < lk_replicas_count(self->routers); i++) {
            lk_peer_t *p = lk_replicas_nth(self->routers, i);
            if (p != peer && !lk_peer_alive(p) && lk_peer_unacked(p))
                s_move_publishes(self, p);
        }
    } else if (lk_replicas_has(self->stores, peer)) {
        lk_info("iclient %s: session store %s %s", self->client_id, lk_peer_name(peer),
                restarted ? "restarted" : "up");
        /* A store that restarted (or lost sight of us) forwards nothing it stored before
           it heard from us again: open again, and its pending list brings those. The
           same when our client id moves back to a replica that returned. */
        if ((peer == self->store || s_owner(self) != self->store) && self->state == S_OPEN &&
            !self->closing)
            s_open(self);
    } else if (self->h.on_peer_up)
        self->h.on_peer_up(self, peer, restarted, self->arg);
}

typedef struct {
    self_t *self;
    lk_peer_t *from;
} s_move_t;

static lk_peer_t *s_move_to(const Lk__Envelope *env, void *arg)
{
    s_move_t *mv = arg;
    const char *topic = lk_bus_publish_topic(env);
    if (!topic)
        return NULL;
    lk_peer_t *to = lk_replicas_owner(mv->self->routers, topic, strlen(topic));
    return to != mv->from && lk_peer_alive(to) ? to : NULL;
}

static void s_moved(lk_peer_t *from, uint64_t old_seq, lk_peer_t *to, uint64_t new_seq,
                    void *arg)
{
    s_move_t *mv = arg;
    for (size_t i = 0; i < mv->self->n_pubs; i++) {
        s_pub_t *p = &mv->self->pubs[i];
        if (p->peer == mv->from && p->seq == old_seq) {
            p->peer = to;
            p->seq = new_seq;
        }
    }
}

/* the publishes queued for silent router `from` go to their topics' live owners, with
   their ids */
static void s_move_publishes(self_t *self, lk_peer_t *from)
{
    s_move_t mv = {self, from};
    size_t n = lk_bus_move_unacked_by(self->bus, from, s_move_to, s_moved, &mv);
    if (n)
        lk_notice("iclient %s: %zu publish batch(es) of silent %s re-sent", self->client_id,
                  n, lk_peer_name(from));
    s_maybe_ready(self);
}

static void s_on_peer_down(lk_bus_t *bus, lk_peer_t *peer, void *arg)
{
    self_t *self = arg;
    if (lk_replicas_has(self->routers, peer)) {
        if (lk_replicas_count(self->routers) > 1)
            s_move_publishes(self, peer);
        return;
    }
    if (lk_replicas_has(self->stores, peer)) {
        /* our session's replica died: the next live one owns it, gets what the dead one
           did not ack, and our open */
        lk_peer_t *next = s_owner(self);
        if (peer == self->store && next != peer && !self->closing) {
            lk_bus_move_unacked(bus, peer, next, NULL, NULL);
            if (self->state == S_OPEN)
                s_open(self);
        }
        return;
    }
    if (self->h.on_peer_down)
        self->h.on_peer_down(self, peer, self->arg);
}

static void s_on_acked(lk_bus_t *bus, lk_peer_t *peer, uint64_t seq, void *arg)
{
    self_t *self = arg;
    int ri = lk_replicas_index(self->routers, peer);
    if (ri >= 0) {
        if (ri == 0 && seq == self->close_seqs[0])
            self->close_seqs[0] = 0;
        if (seq == self->sub_seq[ri]) {
            self->sub_seq[ri] = 0;
            s_maybe_ready(self);
        }
        for (size_t i = 0; i < self->n_pubs; i++) {
            if (self->pubs[i].peer != peer || self->pubs[i].seq != seq)
                continue;
            uint64_t id = self->pubs[i].id;
            self->pubs[i] = self->pubs[--self->n_pubs];
            if (self->h.on_published)
                self->h.on_published(self, id, self->arg);
            break;
        }
    } else if (lk_replicas_has(self->stores, peer)) {
        if (seq == self->close_seqs[1])
            self->close_seqs[1] = 0;
    } else if (self->h.on_acked)
        self->h.on_acked(self, peer, seq, self->arg);
}

/* --- turn end and cron ------------------------------------------------------------ */

static void s_turn_end(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    if (self->closing || (!self->n_acks && !self->subs_changed))
        return;
    size_t n = self->subs_changed && self->n_subs ? self->n_subs : 1;
    Lk__Subscription store[n];
    Lk__Subscription *ptrs[n];
    Lk__SessionAck sa = LK__SESSION_ACK__INIT;
    sa.client = self->client_id;
    sa.n_store_ids = self->n_acks;
    sa.store_ids = self->acks;
    if (self->subs_changed) {
        s_subs_to_proto(self, ptrs, store);
        sa.subs_changed = true;
        sa.n_subs = self->n_subs;
        sa.subs = ptrs;
    }
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_SESSION_ACK;
    env.session_ack = &sa;
    lk_bus_send(self->bus, s_owner(self), &env, true);
    self->n_acks = 0;
    self->subs_changed = false;
}

static void s_cron(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    /* the SessionOpened may have been lost with a restarting session store: ask again */
    if (self->state == S_OPENING && !self->closing &&
        lk_loop_now(loop) - self->open_sent_ms >= S_REOPEN_MS)
        s_open_send(self);
}

/* --- publish ---------------------------------------------------------------------- */

static uint64_t s_publish(lk_iclient_t *self, const char *topic, const void *payload, size_t len,
                          uint32_t qos, bool retain, const void *props, size_t props_len,
                          const char *once_id);

uint64_t lk_iclient_publish(lk_iclient_t *self, const char *topic, const void *payload, size_t len,
                            uint32_t qos, bool retain, const void *props, size_t props_len)
{
    return s_publish(self, topic, payload, len, qos, retain, props, props_len, NULL);
}

uint64_t lk_iclient_publish_once(lk_iclient_t *self, const char *topic, const void *payload,
                                 size_t len, uint32_t qos, const void *props, size_t props_len,
                                 const char *once_id)
{
    return s_publish(self, topic, payload, len, qos, false, props, props_len, once_id);
}

static uint64_t s_publish(lk_iclient_t *self, const char *topic, const void *payload, size_t len,
                          uint32_t qos, bool retain, const void *props, size_t props_len,
                          const char *once_id)
{
    Lk__Msg m = LK__MSG__INIT;
    m.topic = (char *)topic;
    m.payload.data = (uint8_t *)payload;
    m.payload.len = len;
    m.qos = qos > 2 ? 2 : qos;
    m.retain = retain;
    m.props.data = (uint8_t *)props;
    m.props.len = props ? props_len : 0;
    m.origin_client = self->client_id;
    m.origin_node = self->node;
    if (once_id)
        m.once_id = (char *)once_id;
    Lk__Publish pub = LK__PUBLISH__INIT;
    pub.msg = &m;
    lk_peer_t *owner = lk_replicas_owner(self->routers, topic, strlen(topic));
    uint64_t seq = lk_bus_batch_add(self->bus, owner, LK_BODY_PUBLISH, &pub, m.qos > 0);
    if (retain && lk_replicas_count(self->routers) > 1) {
        /* every router keeps every retained message; the owner delivers and stores it */
        pub.retain_only = true;
        for (int i = 0; i < lk_replicas_count(self->routers); i++)
            if (lk_replicas_nth(self->routers, i) != owner)
                lk_bus_batch_add(self->bus, lk_replicas_nth(self->routers, i), LK_BODY_PUBLISH,
                                 &pub, true);
    }
    if (!seq)
        return 0;
    /* the publishes of one turn to one router share its batch, and so their id */
    for (size_t i = self->n_pubs; i-- > 0;)
        if (self->pubs[i].peer == owner && self->pubs[i].seq == seq)
            return self->pubs[i].id;
    if (self->n_pubs == self->cap_pubs) {
        self->cap_pubs = self->cap_pubs ? self->cap_pubs * 2 : 16;
        self->pubs = lk_realloc(self->pubs, self->cap_pubs * sizeof(s_pub_t));
    }
    s_pub_t *p = &self->pubs[self->n_pubs++];
    p->peer = owner;
    p->seq = seq;
    p->id = ++self->pub_id;
    return p->id;
}

/* --- construction ----------------------------------------------------------------- */

lk_iclient_t *lk_iclient_new(lk_loop_t *loop, lk_config_t *config, const char *node,
                             const char *kind, const char *client_id,
                             const lk_iclient_handlers_t *handlers, void *arg)
{
    const char *rep = lk_config_get(config, "router_endpoint", NULL);
    const char *sep = lk_config_get(config, "session_endpoint", NULL);
    if (!rep || !sep || !*rep || !*sep) {
        lk_error("router_endpoint and session_endpoint must be configured");
        return NULL;
    }
    self_t *self = lk_calloc(1, sizeof(*self));
    self->loop = loop;
    self->node = lk_strdup(node);
    self->client_id = lk_strdup(client_id);
    if (handlers)
        self->h = *handlers;
    self->arg = arg;
    int64_t mq = lk_config_get_int(config, "iclient_max_queued", 100000);
    self->max_queued = mq > 0 && mq <= UINT32_MAX ? (uint32_t)mq : 100000;
    /* before the bus's own hook: the SessionAck queued here leaves in the same turn */
    lk_loop_on_turn_end(loop, s_turn_end, self);
    lk_bus_handlers_t h = {s_on_message, s_on_peer_up, s_on_peer_down};
    self->bus = lk_bus_new(loop, node, kind, &h, self);
    if (lk_bus_configure(self->bus, config) != 0)
        lk_error("iclient %s: bus configuration refused; tcp:// endpoints will not work", node);
    lk_bus_on_acked(self->bus, s_on_acked);
    self->routers = lk_replicas_connect(self->bus, config, "router", "router");
    if (!self->routers) {
        lk_iclient_destroy(&self);
        return NULL;
    }
    self->stores = lk_replicas_connect(self->bus, config, "session", "session-store");
    if (!self->stores) {
        lk_iclient_destroy(&self);
        return NULL;
    }
    self->store = s_owner(self);
    self->cron = lk_loop_timer(loop, S_CRON_MS, true, s_cron, self);
    s_open(self);
    return self;
}

void lk_iclient_destroy(lk_iclient_t **self_p)
{
    self_t *self = *self_p;
    if (!self)
        return;
    lk_loop_remove_turn_end(self->loop, s_turn_end, self);
    if (self->cron)
        lk_loop_timer_cancel(self->loop, self->cron);
    lk_replicas_destroy(&self->stores);
    lk_bus_destroy(&self->bus);
    lk_replicas_destroy(&self->routers);
    free(self->pubs);
    for (size_t i = 0; i < self->n_subs; i++)
        free(self->subs[i].filter);
    free(self->subs);
    free(self->acks);
    free(self->node);
    free(self->client_id);
    free(self);
    *self_p = NULL;
}

lk_bus_t *lk_iclient_bus(lk_iclient_t *self)
{
    return self->bus;
}

const char *lk_iclient_client_id(lk_iclient_t *self)
{
    return self->client_id;
}

bool lk_iclient_ready(lk_iclient_t *self)
{
    return self->state == S_OPEN && s_subs_acked(self);
}

bool lk_iclient_routed(lk_iclient_t *self)
{
    return lk_replicas_alive(self->routers) > 0;
}

static void s_close_check(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    if (!self->close_seqs[0] && !self->close_seqs[1])
        lk_loop_stop(loop);
}

static void s_close_timeout(lk_loop_t *loop, void *arg)
{
    lk_loop_stop(loop);
}

void lk_iclient_close(lk_iclient_t *self, int timeout_ms)
{
    /* the last acks of handled messages first, so they are not delivered again */
    s_turn_end(self->loop, self);
    self->closing = true;
    Lk__Detach d = LK__DETACH__INIT;
    d.client = self->client_id;
    d.persistent = true;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_DETACH;
    env.detach = &d;
    int64_t s0 = 0;
    for (int i = 0; i < lk_replicas_count(self->routers); i++) {
        lk_peer_t *r = lk_replicas_nth(self->routers, i);
        int64_t sq = lk_peer_alive(r) ? lk_bus_send(self->bus, r, &env, true) : 0;
        if (i == 0)
            s0 = sq;    /* the close waits for the first router's ack only */
    }
    size_t n = self->n_subs ? self->n_subs : 1;
    Lk__Subscription store[n];
    Lk__Subscription *ptrs[n];
    s_subs_to_proto(self, ptrs, store);
    Lk__SessionClose sc = LK__SESSION_CLOSE__INIT;
    sc.client = self->client_id;
    sc.expiry = S_EXPIRY_NEVER;
    sc.subs_changed = true;
    sc.n_subs = self->n_subs;
    sc.subs = ptrs;
    Lk__Envelope env2 = LK__ENVELOPE__INIT;
    env2.body_case = LK__ENVELOPE__BODY_SESSION_CLOSE;
    env2.session_close = &sc;
    lk_peer_t *owner = s_owner(self);
    int64_t s1 = lk_peer_alive(owner) ? lk_bus_send(self->bus, owner, &env2, true) : 0;
    self->close_seqs[0] = s0 > 0 ? (uint64_t)s0 : 0;
    self->close_seqs[1] = s1 > 0 ? (uint64_t)s1 : 0;
    if (!self->close_seqs[0] && !self->close_seqs[1])
        return;
    int check = lk_loop_timer(self->loop, 10, true, s_close_check, self);
    int stop = lk_loop_timer(self->loop, timeout_ms, false, s_close_timeout, self);
    lk_loop_run(self->loop);
    lk_loop_timer_cancel(self->loop, check);
    lk_loop_timer_cancel(self->loop, stop);
}
