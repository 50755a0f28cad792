/*  fe_route: direct QoS 0 delivery (lk.Route in proto/latchkey.proto).

    A QoS 0 PUBLISH goes to the router as Publish{resolve}; the router answers
    each with a Route naming the frontend subscribers, and this frontend hands the message
    to them itself: locally, or over its own link to the subscriber's frontend. A route the
    router marks `cache` serves later messages on the topic without asking, which takes the
    router off the QoS 0 path: one hop fewer, and no hop at all between clients of one
    frontend. Retained messages always ask (the router keeps them) and wills take the same
    way, so they stay in order with the rest.

    Order per publisher and topic: everything this frontend sends to another one travels one
    link, in the order it sends. A cached route is used only when no answer for the topic
    is outstanding, so a message never overtakes an earlier one that went through the
    router. A RouteFlush (routing changed) empties the cache; the router answers SUBSCRIBE
    only once every frontend holding routes has acked it.

    Several routers: a topic's routes come from its owner (fe_router_for); each route
    remembers the router that gave it, whose RouteFlush (with its own generation) is the
    only one that voids it. A router that restarts or falls silent voids its routes. */
#include "fe_internal.h"

typedef struct {
    lk_peer_t *peer; /* NULL: a client of ours */
    char *client;
    uint32_t sub_ids[8];
    size_t n_sub_ids;
} s_target_t;

typedef struct {
    char *topic;
    int rt;          /* index of the router asked / that answered */
    uint64_t gen;
    bool ready;      /* targets hold while gen is the current generation */
    uint32_t asking; /* Publish{resolve} sent, Route not yet back */
    s_target_t *targets;
    size_t n_targets;
} s_route_t;

static void s_route_clear(s_route_t *r)
{
    for (size_t i = 0; i < r->n_targets; i++)
        free(r->targets[i].client);
    free(r->targets);
    r->targets = NULL;
    r->n_targets = 0;
    r->ready = false;
}

static void s_route_free(void **item)
{
    s_route_t *r = *item;
    if (!r)
        return;
    s_route_clear(r);
    free(r->topic);
    free(r);
    *item = NULL;
}

void fe_route_init(fe_server_t *srv)
{
    srv->routes = zhashx_new();
    zhashx_set_key_duplicator(srv->routes, NULL);
    zhashx_set_key_destructor(srv->routes, NULL);
    zhashx_set_destructor(srv->routes, s_route_free);
    srv->route_max = (size_t)lk_config_get_int(srv->config, "route_cache_topics", 100000);
    srv->links = zhashx_new();
}

void fe_route_destroy(fe_server_t *srv)
{
    zhashx_destroy(&srv->routes);
    zhashx_destroy(&srv->links);
}

/* empties the cache of router rt's routes (-1: every router's); routes with answers
   outstanding stay, for the count, unless the router's life ended (all) */
static void s_drop(fe_server_t *srv, int rt, bool all)
{
    zlistx_t *gone = zlistx_new();
    for (s_route_t *r = zhashx_first(srv->routes); r; r = zhashx_next(srv->routes)) {
        if (rt >= 0 && r->rt != rt)
            continue;
        s_route_clear(r);
        if (!r->asking || all)
            zlistx_add_end(gone, r->topic);
    }
    for (char *t = zlistx_first(gone); t; t = zlistx_next(gone))
        zhashx_delete(srv->routes, t);
    zlistx_destroy(&gone);
}

static void s_drop_all(fe_server_t *srv)
{
    s_drop(srv, -1, false);
}

void fe_route_flush(fe_server_t *srv, lk_peer_t *router, const Lk__RouteFlush *f)
{
    int rt = lk_replicas_index(srv->routers, router);
    if (rt < 0)
        return;
    if (f->gen > srv->rt[rt].route_gen)
        srv->rt[rt].route_gen = f->gen;
    s_drop(srv, rt, false);
}

void fe_route_reset(fe_server_t *srv, lk_peer_t *router)
{
    /* a new (or silent) router: the answers it owed never come */
    int rt = lk_replicas_index(srv->routers, router);
    if (rt < 0)
        return;
    s_drop(srv, rt, true);
    srv->rt[rt].route_gen = 0;
}

/* the link to another frontend (ours: connecting from here; always the same one) */
static lk_peer_t *s_link(fe_server_t *srv, const char *node, const char *endpoint)
{
    lk_peer_t *p = zhashx_lookup(srv->links, node);
    if (p)
        return p;
    if (!endpoint || !*endpoint)
        return NULL;
    p = lk_bus_connect_as(srv->bus, node, srv->link_key, endpoint);
    zhashx_insert(srv->links, node, p);
    lk_info("direct link to %s (%s)", node, endpoint);
    return p;
}

static void s_hand(fe_server_t *srv, lk_peer_t *peer, const char *client, uint32_t *sub_ids,
                   size_t n_sub_ids, Lk__Msg *m)
{
    Lk__Deliver d = LK__DELIVER__INIT;
    d.client = (char *)client;
    d.msg = m;
    d.n_sub_ids = n_sub_ids;
    d.sub_ids = sub_ids;
    if (peer)
        lk_bus_batch_add(srv->bus, peer, LK_BODY_DELIVER, &d, false);
    else
        fe_deliver(srv, &d, NULL);
}

/* the router may never see it: the log keeps it as the Publish it would have got */
static void s_note(fe_server_t *srv, Lk__Msg *m)
{
    Lk__Publish pub = LK__PUBLISH__INIT;
    Lk__Publish *items[1] = {&pub};
    Lk__PublishBatch b = LK__PUBLISH_BATCH__INIT;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    pub.msg = m;
    b.n_items = 1;
    b.items = items;
    env.body_case = LK__ENVELOPE__BODY_PUBLISH;
    env.publish = &b;
    lk_bus_msglog_note(srv->bus, "direct", &env);
}

bool fe_route_publish(fe_server_t *srv, Lk__Msg *m, bool ask)
{
    if (!srv->direct || m->qos != 0)
        return false;
    if (lk_bus_msglog_on(srv->bus))
        s_note(srv, m);
    s_route_t *r = zhashx_lookup(srv->routes, m->topic);
    int rt = fe_router_index_for(srv, m->topic);
    /* a retained message always goes to the router, which keeps it */
    if (r && r->ready && !r->asking && r->rt == rt && r->gen == srv->rt[rt].route_gen &&
        !m->retain && !ask) {
        for (size_t i = 0; i < r->n_targets; i++) {
            s_target_t *t = &r->targets[i];
            s_hand(srv, t->peer, t->client, t->sub_ids, t->n_sub_ids, m);
        }
        return true;
    }
    if (!r) {
        if (zhashx_size(srv->routes) >= srv->route_max)
            s_drop_all(srv);
        r = lk_calloc(1, sizeof(*r));
        r->topic = lk_strdup(m->topic);
        zhashx_insert(srv->routes, r->topic, r);
    } else if (r->ready && (r->rt != rt || r->gen != srv->rt[r->rt].route_gen))
        s_route_clear(r);
    if (r->rt != rt)
        r->asking = 0;  /* the owner moved: what the other one owes is not waited for */
    r->rt = rt;
    r->asking++;
    Lk__Publish pub = LK__PUBLISH__INIT;
    pub.msg = m;
    pub.resolve = true;
    fe_router_publish(srv, &pub, false, NULL);
    return true;
}

static void s_route_one(fe_server_t *srv, int from, const Lk__Route *rt)
{
    if (rt->gen > srv->rt[from].route_gen)
        srv->rt[from].route_gen = rt->gen;
    const char *self = lk_bus_node(srv->bus);
    s_route_t *r = rt->topic ? zhashx_lookup(srv->routes, rt->topic) : NULL;
    if (r && r->rt != from)
        r = NULL;   /* an answer from the topic's previous owner: deliver, do not cache */
    if (r && r->asking)
        r->asking--;
    bool keep = r && rt->cache && rt->gen == srv->rt[from].route_gen;
    if (keep) {
        s_route_clear(r);
        r->targets = lk_calloc(rt->n_targets ? rt->n_targets : 1, sizeof(s_target_t));
    }
    for (size_t i = 0; i < rt->n_targets; i++) {
        const Lk__RouteTarget *t = rt->targets[i];
        if (!t->node || !t->client)
            continue;
        lk_peer_t *peer = NULL;
        if (strcmp(t->node, self) != 0) {
            const char *ep = NULL;
            for (size_t k = 0; k < rt->n_nodes; k++)
                if (rt->nodes[k]->node && strcmp(rt->nodes[k]->node, t->node) == 0)
                    ep = rt->nodes[k]->endpoint;
            if (!(peer = s_link(srv, t->node, ep))) {
                keep = false; /* nowhere to send: this copy is lost, never cache it */
                continue;
            }
        }
        if (rt->msg) {
            rt->msg->retain = t->retain;
            s_hand(srv, peer, t->client, t->sub_ids, t->n_sub_ids, rt->msg);
        }
        if (keep) {
            s_target_t *c = &r->targets[r->n_targets++];
            c->peer = peer;
            c->client = lk_strdup(t->client);
            c->n_sub_ids = t->n_sub_ids < 8 ? t->n_sub_ids : 8;
            if (c->n_sub_ids)
                memcpy(c->sub_ids, t->sub_ids, c->n_sub_ids * sizeof(uint32_t));
        }
    }
    if (keep) {
        r->gen = rt->gen;
        r->ready = true;
    } else if (r) {
        s_route_clear(r);
        if (!r->asking)
            zhashx_delete(srv->routes, r->topic);
    }
}

void fe_route_batch(fe_server_t *srv, lk_peer_t *router, const Lk__RouteBatch *b)
{
    int from = lk_replicas_index(srv->routers, router);
    if (from < 0)
        return;
    for (size_t i = 0; i < b->n_items; i++)
        s_route_one(srv, from, b->items[i]);
}
