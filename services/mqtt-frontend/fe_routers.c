/*  fe_routers: the frontend's side of several routers (router_replicas; see "Router
    replicas" in docs/architecture.md).

    Every router holds the whole routing state: Attach, Detach, SubscribeReq and
    UnsubscribeReq go to each of them, and what the client waits for (CONNACK, SUBACK,
    UNSUBACK) leaves once every router alive at sending time acked — a router that falls
    silent meanwhile is not waited for (it is re-sent everything when it returns, and
    re-attached from scratch when it restarted). Publishes are partitioned: a topic goes
    to its owner (lk_replicas_owner order, FNV-1a of the topic), so one publisher's
    messages on one topic meet at one router, in order. When the owner falls silent, the
    publish batches it did not ack move to the topic's new owner (marked resent, so
    subscribers see DUP on what the silent one may have delivered) and the PUBACKs wait
    for the new owner. When it returns, it gets its topics back only once the fallback
    acked what we sent it before (FE_HOLD_MS at most): no message of ours on a topic
    overtakes an earlier one on it. */
#include "fe_internal.h"

#define FE_HOLD_MS 3000

int fe_routers_connect(fe_server_t *srv)
{
    srv->routers = lk_replicas_connect(srv->bus, srv->config, "router", "router");
    return srv->routers ? 0 : -1;
}

bool fe_is_router(fe_server_t *srv, lk_peer_t *peer)
{
    return lk_replicas_has(srv->routers, peer);
}

int fe_router_index_for(fe_server_t *srv, const char *topic)
{
    int n = lk_replicas_count(srv->routers);
    if (n == 1)
        return 0;
    int home = lk_replicas_home(topic, strlen(topic), n);
    for (int k = 0; k < n; k++) {
        int i = (home + k) % n;
        if (lk_peer_alive(lk_replicas_nth(srv->routers, i)) && !srv->rt[i].held)
            return i;
    }
    /* none alive (or all held): the configured owner, its work waits for it */
    return home;
}

lk_peer_t *fe_router_for(fe_server_t *srv, const char *topic)
{
    return lk_replicas_nth(srv->routers, fe_router_index_for(srv, topic));
}

lk_peer_t *fe_router_first(fe_server_t *srv)
{
    int n = lk_replicas_count(srv->routers);
    for (int i = 0; i < n; i++)
        if (lk_peer_alive(lk_replicas_nth(srv->routers, i)))
            return lk_replicas_nth(srv->routers, i);
    return lk_replicas_nth(srv->routers, 0);
}

/* the SubscribeReq's send_retained goes to one router only: this one */
static lk_peer_t *s_router_for_retained(fe_server_t *srv, fe_conn_t *conn,
                                        Lk__Subscription **subs, size_t n)
{
    if (lk_replicas_count(srv->routers) == 1)
        return lk_replicas_nth(srv->routers, 0);
    /* $SYS retained messages live only at the router that publishes them */
    for (size_t i = 0; i < n; i++)
        if (subs[i]->filter && strncmp(subs[i]->filter, "$SYS", 4) == 0)
            return fe_router_first(srv);
    const char *id = conn->client_id ? conn->client_id : "";
    return lk_replicas_owner(srv->routers, id, strlen(id));
}

size_t fe_routers_backlog(fe_server_t *srv)
{
    size_t sum = 0;
    int n = lk_replicas_count(srv->routers);
    for (int i = 0; i < n; i++) {
        lk_peer_t *p = lk_replicas_nth(srv->routers, i);
        if (n == 1 || lk_peer_alive(p))
            sum += lk_peer_unacked_bytes(p);
    }
    return sum;
}

static fe_join_t *s_join(const fe_wait_item_t *it)
{
    if (!it)
        return NULL;
    fe_join_t *j = lk_calloc(1, sizeof(*j));
    j->item = *it;
    return j;
}

static void s_part(fe_server_t *srv, fe_join_t *j, fe_wait_kind_t kind, lk_peer_t *p,
                   uint64_t seq)
{
    fe_wait_item_t part = {kind, -1, 0, 0, NULL, 0, j};
    j->left++;
    fe_wait_add(fe_wait_for(srv, p, seq), &part);
}

/* no part was added: the item is due now */
static void s_join_done(fe_server_t *srv, fe_join_t *j)
{
    if (j && !j->left) {
        fe_wait_item_release(srv, &j->item);
        free(j);
    }
}

/* env adjusted for router p before it is sent there */
typedef void(s_each_fn)(Lk__Envelope *env, lk_peer_t *p, void *arg);

static bool s_send_all(fe_server_t *srv, Lk__Envelope *env, const fe_wait_item_t *it,
                       s_each_fn *each, void *arg)
{
    fe_join_t *j = s_join(it);
    int n = lk_replicas_count(srv->routers);
    int live = lk_replicas_alive(srv->routers);
    bool sent = false;
    for (int i = 0; i < n; i++) {
        lk_peer_t *p = lk_replicas_nth(srv->routers, i);
        if (each)
            each(env, p, arg);
        int64_t seq = lk_bus_send(srv->bus, p, env, true);
        if (seq <= 0)
            continue;
        sent = true;
        /* none alive: every one is waited for (a CONNECT then waits for a router) */
        if (j && (lk_peer_alive(p) || !live))
            s_part(srv, j, FE_WAIT_JOIN, p, (uint64_t)seq);
    }
    if (!sent && j) {
        free(j);
        return false;
    }
    s_join_done(srv, j);
    return sent;
}

bool fe_routers_send_all(fe_server_t *srv, Lk__Envelope *env, const fe_wait_item_t *it)
{
    return s_send_all(srv, env, it, NULL, NULL);
}

/* nothing could be sent: what the client waits for is answered now */
static void s_send_all_or_release(fe_server_t *srv, Lk__Envelope *env, const fe_wait_item_t *it,
                                  s_each_fn *each, void *arg)
{
    if (!s_send_all(srv, env, it, each, arg) && it) {
        fe_wait_item_t copy = *it;
        fe_wait_item_release(srv, &copy);
    }
}

static void s_send_retained(Lk__Envelope *env, lk_peer_t *p, void *retained_by)
{
    env->subscribe->send_retained = p == retained_by;
}

void fe_router_subscribe(fe_conn_t *conn, Lk__Subscription **subs, protobuf_c_boolean *is_new,
                         size_t n, const fe_wait_item_t *it)
{
    fe_server_t *srv = conn->srv;
    Lk__SubscribeReq sr = LK__SUBSCRIBE_REQ__INIT;
    sr.client = conn->client_id;
    sr.n_subs = n;
    sr.subs = subs;
    sr.n_is_new = n;
    sr.is_new = is_new;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_SUBSCRIBE;
    env.subscribe = &sr;
    /* every router gets the subscription; one of them sends the retained messages
       (each holds them all), so the client gets each once */
    s_send_all_or_release(srv, &env, it, s_send_retained,
                          s_router_for_retained(srv, conn, subs, n));
}

void fe_router_unsubscribe(fe_conn_t *conn, char **filters, size_t n, const fe_wait_item_t *it)
{
    Lk__UnsubscribeReq ur = LK__UNSUBSCRIBE_REQ__INIT;
    ur.client = conn->client_id;
    ur.n_filters = n;
    ur.filters = filters;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_UNSUBSCRIBE;
    env.unsubscribe = &ur;
    s_send_all_or_release(conn->srv, &env, it, NULL, NULL);
}

void fe_router_publish(fe_server_t *srv, Lk__Publish *pub, bool reliable,
                       const fe_wait_item_t *it)
{
    Lk__Msg *m = pub->msg;
    lk_peer_t *owner = fe_router_for(srv, m->topic);
    int n = lk_replicas_count(srv->routers);
    bool copies = n > 1 && m->retain && !(pub->share && *pub->share);
    if (!copies) {
        uint64_t seq = lk_bus_batch_add(srv->bus, owner, LK_BODY_PUBLISH, pub, reliable);
        if (it && seq)
            fe_wait_add(fe_wait_for(srv, owner, seq), it);
        return;
    }
    /* a retained message: every router keeps it (any of them may answer a SUBSCRIBE
       with it); the owner delivers it and has the session store keep it */
    fe_join_t *j = s_join(it);
    uint64_t seq = lk_bus_batch_add(srv->bus, owner, LK_BODY_PUBLISH, pub, reliable);
    if (j && seq)
        s_part(srv, j, FE_WAIT_JOIN_OWNER, owner, seq);
    Lk__Publish copy = *pub;
    copy.resolve = false;
    copy.retain_only = true;
    for (int i = 0; i < n; i++) {
        lk_peer_t *p = lk_replicas_nth(srv->routers, i);
        if (p == owner)
            continue;
        uint64_t s2 = lk_bus_batch_add(srv->bus, p, LK_BODY_PUBLISH, &copy, true);
        if (j && s2 && lk_peer_alive(p))
            s_part(srv, j, FE_WAIT_JOIN, p, s2);
    }
    s_join_done(srv, j);
}

/* the parts of joins that wait on routers that are silent: done */
static void s_release_silent(fe_server_t *srv)
{
    for (fe_wait_t *w = srv->waits; w; w = w->next) {
        if (lk_peer_alive(w->peer) || !fe_is_router(srv, w->peer))
            continue;
        for (size_t i = 0; i < w->n; i++)
            if (w->items[i].kind == FE_WAIT_JOIN)
                fe_wait_item_release(srv, &w->items[i]);
    }
}

typedef struct {
    fe_server_t *srv;
    lk_peer_t *from;
    size_t waits_moved;
} s_move_t;

static lk_peer_t *s_move_to(const Lk__Envelope *env, void *arg)
{
    s_move_t *mv = arg;
    /* routing state stays for the router's return; retained copies only: the owner has
       the message */
    const char *topic = lk_bus_publish_topic(env);
    if (!topic)
        return NULL;
    lk_peer_t *to = fe_router_for(mv->srv, topic);
    return to != mv->from && lk_peer_alive(to) ? to : NULL;
}

static void s_moved(lk_peer_t *from, uint64_t old_seq, lk_peer_t *to, uint64_t new_seq,
                    void *arg)
{
    s_move_t *mv = arg;
    if (fe_wait_moved(mv->srv, from, old_seq, to, new_seq))
        mv->waits_moved++;
}

/* the publish batches a silent router did not ack go to their topics' owners now */
static void s_move_publishes(fe_server_t *srv, lk_peer_t *peer)
{
    s_move_t mv = {srv, peer, 0};
    size_t n = lk_bus_move_unacked_by(srv->bus, peer, s_move_to, s_moved, &mv);
    if (n)
        lk_notice("%s silent: %zu publish batch(es) (%zu waited for) re-sent to its topics' "
                  "new owners",
                  lk_peer_name(peer), n, mv.waits_moved);
}

typedef struct {
    fe_server_t *srv;
    lk_peer_t *from;
    size_t n;
} s_reask_t;

/* A SubscribeReq that asked `from` for the retained messages: the client's router now
   sends them instead (retained_only), and `from` no longer does when it returns. Its
   subscriptions stay queued for it. A retained message `from` sent just before it fell
   silent may reach the client twice. */
static bool s_reask_retained(Lk__Envelope *env, uint64_t seq, void *arg)
{
    s_reask_t *ra = arg;
    if (env->body_case != LK__ENVELOPE__BODY_SUBSCRIBE || !env->subscribe->send_retained ||
        !env->subscribe->client)
        return false;
    Lk__SubscribeReq *sr = env->subscribe;
    fe_conn_t *conn = zhashx_lookup(ra->srv->by_client, sr->client);
    if (!conn)
        return false;
    lk_peer_t *to = s_router_for_retained(ra->srv, conn, sr->subs, sr->n_subs);
    if (to == ra->from || !lk_peer_alive(to))
        return false;
    Lk__SubscribeReq again = *sr;
    again.retained_only = true;
    Lk__Envelope out = LK__ENVELOPE__INIT;
    out.body_case = LK__ENVELOPE__BODY_SUBSCRIBE;
    out.subscribe = &again;
    if (lk_bus_send(ra->srv->bus, to, &out, true) <= 0)
        return false;
    ra->n++;
    sr->send_retained = false;
    return true;
}

void fe_routers_peer_down(fe_server_t *srv, lk_peer_t *peer)
{
    int idx = lk_replicas_index(srv->routers, peer);
    if (idx < 0 || lk_replicas_count(srv->routers) == 1)
        return;
    srv->rt[idx].was_down = true;
    srv->rt[idx].held = false;
    s_release_silent(srv);
    s_move_publishes(srv, peer);
    s_reask_t ra = {srv, peer, 0};
    lk_bus_each_unacked(srv->bus, peer, s_reask_retained, &ra);
    if (ra.n)
        lk_notice("%s silent: %zu SUBSCRIBE(s) ask another router for their retained "
                  "messages",
                  lk_peer_name(peer), ra.n);
}

void fe_routers_peer_up(fe_server_t *srv, lk_peer_t *peer)
{
    int idx = lk_replicas_index(srv->routers, peer);
    if (idx < 0 || lk_replicas_count(srv->routers) == 1)
        return;
    /* joins that waited on every router while none was alive: the silent ones are not
       waited for any more */
    s_release_silent(srv);
    /* publishes that waited for silent routers while none was alive: to this one now,
       before anything newer on their topics */
    for (int i = 0; i < lk_replicas_count(srv->routers); i++) {
        lk_peer_t *p = lk_replicas_nth(srv->routers, i);
        if (p != peer && !lk_peer_alive(p) && srv->rt[i].was_down && lk_peer_unacked(p))
            s_move_publishes(srv, p);
    }
    fe_router_state_t *rs = &srv->rt[idx];
    if (!rs->was_down)
        return;
    rs->was_down = false;
    rs->held = true;
    rs->hold_mark = srv->wait_no;
    rs->hold_since = lk_loop_now(srv->loop);
    fe_routers_check(srv);
}

static bool s_publish_wait(const fe_wait_t *w)
{
    for (size_t i = 0; i < w->n; i++) {
        fe_wait_kind_t k = w->items[i].kind;
        if (k == FE_WAIT_PUBACK || k == FE_WAIT_PUBREC || k == FE_WAIT_JOIN_OWNER)
            return true;
    }
    return false;
}

void fe_routers_check(fe_server_t *srv)
{
    int n = lk_replicas_count(srv->routers);
    int64_t now = lk_loop_now(srv->loop);
    for (int i = 0; i < n; i++) {
        fe_router_state_t *rs = &srv->rt[i];
        if (!rs->held)
            continue;
        lk_peer_t *back = lk_replicas_nth(srv->routers, i);
        bool busy = false;
        for (fe_wait_t *w = srv->waits; w && !busy; w = w->next)
            busy = w->no <= rs->hold_mark && w->peer != back &&
                   fe_is_router(srv, w->peer) && s_publish_wait(w);
        bool late = now - rs->hold_since > FE_HOLD_MS;
        if (busy && !late)
            continue;
        rs->held = false;
        if (busy)
            lk_warn("%s back: its topics return before the fallback acked our earlier "
                    "publishes (%d ms): their order may break once",
                    lk_peer_name(back), FE_HOLD_MS);
        else
            lk_notice("%s back: its topics return to it", lk_peer_name(back));
    }
}
