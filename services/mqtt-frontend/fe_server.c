/*  fe_server: the MQTT frontend actor — listeners, the connection table, the bus links
    and the cron (keepalive, connect and request timeouts).

    Several frontend processes share one port through SO_REUSEPORT; the kernel spreads
    new connections across them. Each frontend talks to the router (publish, subscribe,
    attach), the session store (sessions, stored deliveries and their acks) and auth. */
#include "fe_internal.h"
#include "lk_admin.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

/* --- waits: client acks held until the router acks our envelope ------------------- */

fe_wait_t *fe_wait_for(fe_server_t *srv, lk_peer_t *peer, uint64_t seq)
{
    if (srv->waits_tail && srv->waits_tail->seq == seq && srv->waits_tail->peer == peer)
        return srv->waits_tail;
    for (fe_wait_t *w = srv->waits; w; w = w->next)
        if (w->seq == seq && w->peer == peer)
            return w;
    fe_wait_t *w = lk_calloc(1, sizeof(*w));
    w->peer = peer;
    w->seq = seq;
    w->no = ++srv->wait_no;
    if (srv->waits_tail)
        srv->waits_tail->next = w;
    else
        srv->waits = w;
    srv->waits_tail = w;
    return w;
}

void fe_wait_add(fe_wait_t *w, const fe_wait_item_t *item)
{
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 8;
        w->items = lk_realloc(w->items, w->cap * sizeof(fe_wait_item_t));
    }
    w->items[w->n++] = *item;
}

bool fe_store_rx(fe_conn_t *conn, uint16_t pid, bool add)
{
    fe_server_t *srv = conn->srv;
    lk_peer_t *store = fe_store(srv, conn->client_id);
    if (conn->expiry == 0 || conn->unregistered || !lk_peer_alive(store))
        return false;
    uint32_t p32 = pid;
    Lk__SessionAck sa = LK__SESSION_ACK__INIT;
    sa.client = conn->client_id;
    if (add) {
        sa.n_rx_add = 1;
        sa.rx_add = &p32;
    } else {
        sa.n_rx_del = 1;
        sa.rx_del = &p32;
    }
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_SESSION_ACK;
    env.session_ack = &sa;
    int64_t seq = lk_bus_send(srv->bus, store, &env, true);
    if (seq <= 0)
        return false;
    fe_wait_item_t it = {add ? FE_WAIT_RX_ADD : FE_WAIT_RX_DEL, conn->fd, conn->id, pid, NULL, 0};
    fe_wait_add(fe_wait_for(srv, store, (uint64_t)seq), &it);
    return true;
}

void fe_wait_item_release(fe_server_t *srv, fe_wait_item_t *it)
{
    if (it->kind == FE_WAIT_NONE)
        return;
    if (it->kind == FE_WAIT_JOIN || it->kind == FE_WAIT_JOIN_OWNER) {
        fe_join_t *j = it->join;
        it->kind = FE_WAIT_NONE;
        it->join = NULL;
        if (j && --j->left <= 0) {
            fe_wait_item_release(srv, &j->item);
            free(j);
        }
        return;
    }
    fe_conn_t *conn = fe_conn_find(srv, it->fd, it->conn_id);
    if (conn && it->kind == FE_WAIT_ATTACH)
        fe_attach_acked(conn);
    else if (conn && conn->state == FE_ACTIVE) {
        lk_mqtt_packet_t p = {0};
        switch (it->kind) {
        case FE_WAIT_PUBACK:
        case FE_WAIT_PUBREC:
            if (conn->n_rt_wait)
                conn->n_rt_wait--;
            if (it->kind == FE_WAIT_PUBACK && conn->n_qos1_in)
                conn->n_qos1_in--;
            /* the packet id is session state [MQTT-4.3.3-10]: PUBREC once the
               session store has it, so a PUBLISH re-sent after a reconnect (to any
               frontend) is recognised */
            if (it->kind == FE_WAIT_PUBREC && fe_store_rx(conn, it->pid, true))
                break;
            p.type = it->kind == FE_WAIT_PUBACK ? LK_MQTT_PUBACK : LK_MQTT_PUBREC;
            p.u.ack.packet_id = it->pid;
            fe_conn_send(conn, &p);
            break;
        case FE_WAIT_RX_ADD:
        case FE_WAIT_RX_DEL:
            p.type = it->kind == FE_WAIT_RX_ADD ? LK_MQTT_PUBREC : LK_MQTT_PUBCOMP;
            p.u.ack.packet_id = it->pid;
            fe_conn_send(conn, &p);
            break;
        case FE_WAIT_ATTACH:
        case FE_WAIT_JOIN:
        case FE_WAIT_JOIN_OWNER:
        case FE_WAIT_NONE:
            break;
        case FE_WAIT_SUBACK:
        case FE_WAIT_UNSUBACK:
            p.type = it->kind == FE_WAIT_SUBACK ? LK_MQTT_SUBACK : LK_MQTT_UNSUBACK;
            p.u.suback.packet_id = it->pid;
            p.u.suback.codes = it->codes;
            /* 3.1.1 UNSUBACK carries no codes */
            p.u.suback.count =
                (it->kind == FE_WAIT_UNSUBACK && conn->version != LK_MQTT_V5) ? 0 : it->n_codes;
            fe_conn_send(conn, &p);
            break;
        }
    }
    free(it->codes);
    it->codes = NULL;
    it->kind = FE_WAIT_NONE;
}

static void s_wait_release(fe_server_t *srv, fe_wait_t *w)
{
    for (size_t i = 0; i < w->n; i++)
        fe_wait_item_release(srv, &w->items[i]);
    free(w->items);
    free(w);
}

void fe_backlog_check(fe_server_t *srv)
{
    if (!srv->congested || fe_routers_backlog(srv) > srv->backlog_low)
        return;
    srv->congested = false;
    int64_t now = lk_loop_now(srv->loop);
    int n = 0;
    for (int fd = 0; fd < srv->by_fd_cap; fd++) {
        fe_conn_t *c = srv->by_fd[fd];
        if (!c || !c->bp_paused)
            continue;
        c->bp_paused = false;
        c->last_rx_ms = now;    /* its silence was ours */
        /* reading again; packets already in rbuf (behind a CONNECT, before an end of
           stream) get no socket event: they are handled at turn end */
        fe_conn_resume(c);
        n++;
    }
    lk_notice("router backlog %zu bytes: reading resumed (%d connections)",
              fe_routers_backlog(srv), n);
}

static void s_on_acked(lk_bus_t *bus, lk_peer_t *peer, uint64_t seq, void *arg)
{
    fe_server_t *srv = arg;
    bool router = fe_is_router(srv, peer);
    if (router && srv->congested)
        fe_backlog_check(srv);
    fe_wait_t **pp = &srv->waits, *prev = NULL;
    while (*pp && !((*pp)->seq == seq && (*pp)->peer == peer)) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    fe_wait_t *w = *pp;
    if (!w)
        return;
    *pp = w->next;
    if (srv->waits_tail == w)
        srv->waits_tail = prev;
    s_wait_release(srv, w);
}

/* --- bus -------------------------------------------------------------------------- */

/* a router restarted: it learns every client we hold again, with its subscriptions */
static void s_reattach(fe_server_t *srv, lk_peer_t *router)
{
    int n = 0;
    for (int fd = 0; fd < srv->by_fd_cap; fd++) {
        fe_conn_t *c = srv->by_fd[fd];
        if (!c || (c->state != FE_ACTIVE && c->state != FE_SESSION) || !c->attach_sent)
            continue;
        Lk__Subscription store[c->n_subs ? c->n_subs : 1];
        Lk__Subscription *ptrs[c->n_subs ? c->n_subs : 1];
        fe_conn_subs_to_proto(c, ptrs, store);
        Lk__Attach a = LK__ATTACH__INIT;
        a.client = c->client_id;
        a.persistent = c->expiry > 0;
        a.n_subs = c->n_subs;
        a.subs = ptrs;
        Lk__Envelope env = LK__ENVELOPE__INIT;
        env.body_case = LK__ENVELOPE__BODY_ATTACH;
        env.attach = &a;
        lk_bus_send(srv->bus, router, &env, true);
        n++;
    }
    lk_notice("%s restarted: re-attached %d clients", lk_peer_name(router), n);
}

lk_peer_t *fe_store(fe_server_t *srv, const char *client)
{
    return lk_replicas_owner(srv->stores, client, strlen(client));
}

/* The session store restarted: what it stored but had not yet forwarded would wait for
   the client's next reconnect. Opening each session again (same connection, not clean)
   registers the connection again and returns its pending messages;
   fe_handle_session_opened delivers the ones the connection does not have yet.
   Connections made while the store was down (clean sessions, `unregistered`) are opened
   as they connected (clean): a client id now held twice is taken over then, the later
   SessionOpen winning. all = false: only those.
   Replicas: the same for the connections whose owner changed (a replica died, or came
   back): the new owner learns them, and builds what the old one held in memory. peer:
   the replica that restarted or changed (all: those that had opened at it). */
static bool s_must_reopen(fe_server_t *srv, fe_conn_t *c, lk_peer_t *peer, bool all)
{
    if (c->unregistered)
        return true;
    if (c->store_peer && fe_store(srv, c->client_id) != c->store_peer)
        return true; /* its owner changed */
    return all && (!c->store_peer || c->store_peer == peer);
}

static void s_reopen(fe_server_t *srv, lk_peer_t *peer, bool all, const char *why)
{
    int n = 0;
    for (int fd = 0; fd < srv->by_fd_cap; fd++) {
        fe_conn_t *c = srv->by_fd[fd];
        if (!c || c->state != FE_ACTIVE || !s_must_reopen(srv, c, peer, all))
            continue;
        c->req = fe_conn_req(c);
        if (!c->unregistered)
            c->clean = false;
        c->reopening = true;
        fe_session_open_send(c);
        n++;
    }
    if (n)
        lk_notice("session store %s %s: re-opened %d sessions", lk_peer_name(peer), why, n);
}

bool fe_wait_moved(fe_server_t *srv, lk_peer_t *from, uint64_t old_seq, lk_peer_t *to,
                   uint64_t new_seq)
{
    for (fe_wait_t *w = srv->waits; w; w = w->next)
        if (w->peer == from && w->seq == old_seq) {
            w->peer = to;
            w->seq = new_seq;
            return true;
        }
    return false;
}

static void s_wait_moved(lk_peer_t *from, uint64_t old_seq, lk_peer_t *to, uint64_t new_seq,
                         void *arg)
{
    fe_wait_moved(arg, from, old_seq, to, new_seq);
}

/* A session-store replica is silent: its clients are the next live one's now. What it
   did not ack (acks, closes, QoS 2 packet ids) goes there, and the connections it held
   open their sessions there. store_down notes it: its return re-opens what it held. */
static void s_store_down(fe_server_t *srv, lk_peer_t *peer)
{
    srv->store_down |= 1ull << lk_replicas_index(srv->stores, peer);
    lk_peer_t *next = lk_replicas_successor(srv->stores, peer);
    if (!next)
        return; /* none left: the work waits for the first one back */
    size_t moved = lk_bus_move_unacked(srv->bus, peer, next, s_wait_moved, srv);
    if (moved)
        lk_notice("session store %s down: %zu envelope(s) moved to %s", lk_peer_name(peer),
                  moved, lk_peer_name(next));
    s_reopen(srv, peer, false, "down");
    /* CONNECTs that asked it: asked again of the new owner now, not at the next re-ask */
    for (int fd = 0; fd < srv->by_fd_cap; fd++) {
        fe_conn_t *c = srv->by_fd[fd];
        if (c && c->state == FE_SESSION && !c->opened && c->open_sent && c->store_peer == peer)
            fe_session_open_send(c);
    }
}

static void s_auth_resend(fe_server_t *srv, lk_peer_t *peer, const char *why);

static void s_on_peer_up(lk_bus_t *bus, lk_peer_t *peer, bool restarted, void *arg)
{
    fe_server_t *srv = arg;
    lk_info("peer %s %s", lk_peer_name(peer), restarted ? "restarted" : "up");
    if (fe_is_router(srv, peer)) {
        srv->router_down_ms = 0;
        if (restarted) {
            fe_route_reset(srv, peer);
            s_reattach(srv, peer);
        }
        fe_routers_peer_up(srv, peer);
    }
    if (lk_replicas_has(srv->stores, peer)) {
        /* back after silence without a restart (a partition): it took our connections
           for gone (offline, or forgotten when clean) and keeps what it stores for them;
           re-opening registers them again and returns what it did not forward */
        uint64_t bit = 1ull << lk_replicas_index(srv->stores, peer);
        bool was_down = srv->store_down & bit;
        s_reopen(srv, peer, restarted || was_down,
                 restarted ? "restarted" : was_down ? "back after silence" : "back");
        srv->store_down &= ~bit;
    }
    if (restarted)
        s_auth_resend(srv, peer, "restarted");
}

/* CONNECTs that an auth replica lost (it died, or restarted without them) are asked
   again at once, of a live replica: the failure detector bounds their delay */
static void s_auth_resend(fe_server_t *srv, lk_peer_t *peer, const char *why)
{
    if (!lk_replicas_has(srv->auths, peer) || !lk_replicas_alive(srv->auths))
        return;
    int n = 0;
    for (int fd = 0; fd < srv->by_fd_cap; fd++) {
        fe_conn_t *c = srv->by_fd[fd];
        if (c && c->state == FE_AUTH && c->auth_peer == peer) {
            fe_auth_request_send(c);
            n++;
        }
    }
    if (n)
        lk_notice("auth replica %s %s: %d CONNECT(s) asked again", lk_peer_name(peer), why, n);
}

static void s_on_peer_down(lk_bus_t *bus, lk_peer_t *peer, void *arg)
{
    fe_server_t *srv = arg;
    if (fe_is_router(srv, peer)) {
        /* several routers: its topics go elsewhere now, and it cannot flush what it gave
           (one router: its routes keep QoS 0 flowing while it is away) */
        if (lk_replicas_count(srv->routers) > 1)
            fe_route_reset(srv, peer);
        fe_routers_peer_down(srv, peer);
        /* QoS > 0 publishes give up only when no router is left */
        if (!lk_replicas_alive(srv->routers) && !srv->router_down_ms)
            srv->router_down_ms = lk_loop_now(srv->loop);
    }
    s_auth_resend(srv, peer, "down");
    if (lk_replicas_has(srv->stores, peer))
        s_store_down(srv, peer);
}

static void s_revoke(fe_server_t *srv, Lk__Revoke *r)
{
    if (r->acl_changed) {
        fe_acl_changed(srv, r); /* not a revocation: re-read those clients' ACLs */
        return;
    }
    for (int fd = 0; fd < srv->by_fd_cap; fd++) {
        fe_conn_t *c = srv->by_fd[fd];
        if (!c || !c->username || c->state == FE_CLOSED)
            continue;
        for (size_t i = 0; i < r->n_usernames; i++)
            if (strcmp(c->username, r->usernames[i]) == 0) {
                lk_notice("client %s (user %s): credentials revoked", c->client_id, c->username);
                fe_conn_close(c, LK_RC_ADMIN_ACTION, true, NULL);
                break;
            }
    }
}

static void s_on_message(lk_bus_t *bus, lk_peer_t *peer, Lk__Envelope *env, void *arg)
{
    fe_server_t *srv = arg;
    switch (env->body_case) {
    case LK__ENVELOPE__BODY_DELIVER:
        for (size_t i = 0; i < env->deliver->n_items; i++)
            fe_deliver(srv, env->deliver->items[i],
                       lk_replicas_has(srv->stores, peer) ? peer : NULL);
        break;
    case LK__ENVELOPE__BODY_AUTH_REPLY:
        fe_handle_auth_reply(srv, env->auth_reply);
        break;
    case LK__ENVELOPE__BODY_SESSION_OPENED:
        fe_handle_session_opened(srv, env->session_opened);
        break;
    case LK__ENVELOPE__BODY_TAKEOVER:
        if (lk_replicas_has(srv->stores, peer))
            fe_takeover(srv, peer, env->takeover);
        break;
    case LK__ENVELOPE__BODY_REVOKE:
        s_revoke(srv, env->revoke);
        break;
    case LK__ENVELOPE__BODY_ROUTE:
        if (fe_is_router(srv, peer))
            fe_route_batch(srv, peer, env->route);
        break;
    case LK__ENVELOPE__BODY_ROUTE_FLUSH:
        if (fe_is_router(srv, peer))
            fe_route_flush(srv, peer, env->route_flush);
        break;
    default:
        lk_debug("ignored body %d from %s", env->body_case, lk_peer_name(peer));
        break;
    }
    if (env->seq)
        lk_bus_ack(bus, peer, env->seq);
}

/* --- listeners -------------------------------------------------------------------- */

static void s_accept_resume(lk_loop_t *loop, void *arg)
{
    fe_listener_t *lst = arg;
    lk_loop_mod_fd(loop, lst->fd, EPOLLIN);
}

static void s_accept(lk_loop_t *loop, int lfd, uint32_t events, void *arg)
{
    fe_listener_t *lst = arg;
    fe_server_t *srv = lst->srv;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* out of descriptors: the pending connection stays queued and the listener
                   readable, so stop watching it for a while rather than spin */
                int64_t now = lk_loop_now(loop);
                if (now - srv->accept_warned_ms > 10000) {
                    lk_warn("accept: %s: new connections wait (%zu open)", strerror(errno),
                            srv->n_conns);
                    srv->accept_warned_ms = now;
                }
                lk_loop_mod_fd(loop, lfd, 0);
                lk_loop_timer(loop, 100, false, s_accept_resume, lst);
            } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                lk_warn("accept: %s", strerror(errno));
            return;
        }
        char host[INET6_ADDRSTRLEN] = "?", peer[64];
        int port = 0;
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
            port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
            port = ntohs(a->sin6_port);
        }
        snprintf(peer, sizeof(peer), "%s:%d", host, port);
        srv->connections_total++;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (!fe_limits_accept(srv, host)) {
            close(fd);
            continue;
        }
        fe_conn_t *conn = fe_conn_new(srv, fd, peer);
        if (conn && lst->mountpoint)
            conn->mount_tpl = lk_strdup(lst->mountpoint);
        if (conn)
            fe_limits_opened(conn, host);
        if (conn && fe_transport_attach(conn, lst) != 0)
            fe_conn_close(conn, 0, false, "cannot set up TLS");
    }
}

static int s_listen(fe_server_t *srv, fe_listener_t *lst, const char *spec)
{
    char host[256] = "0.0.0.0";
    int port = 0;
    if (sscanf(spec, "%d %255s", &port, host) < 1 || port < 0 || port > 65535) {
        lk_error("listener '%s': expected 'port [address]'", spec);
        return -1;
    }
    struct sockaddr_storage ss = {0};
    socklen_t sl;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        sl = sizeof(*a4);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        sl = sizeof(*a6);
    } else {
        lk_error("listener '%s': bad address", spec);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 4096) != 0) {
        lk_error("listener %s:%d: %s", host, port, strerror(errno));
        close(fd);
        return -1;
    }
    lst->fd = fd;
    snprintf(lst->name, sizeof(lst->name), "%s:%d", host, port);
    lk_loop_add_fd(srv->loop, fd, EPOLLIN, s_accept, lst);
    lk_notice("listening on %s (%s%s%s%s)", lst->name, lst->tls_ctx ? "TLS " : "",
              lst->websockets ? "WebSocket" : "MQTT",
              lst->tls.require_certificate ? ", client certificates" : "",
              lst->proxy_protocol ? ", PROXY protocol" : "");
    return 0;
}

/* --- listener sections ------------------------------------------------------------ */

/* the keys a `listener` line opens a section for (Mosquitto's per-listener names) */
static const char *s_tls_keys[] = {"certfile", "keyfile", "cafile", "capath", "crlfile",
                                   "ciphers", "ciphersuites", "tls_version"};

static void s_listener_free(fe_listener_t *lst)
{
    if (!lst)
        return;
    if (lst->srv && lst->fd >= 0) {
        lk_loop_del_fd(lst->srv->loop, lst->fd);
        close(lst->fd);
    }
    lk_tls_ctx_destroy(&lst->tls_ctx);
    free(lst->mountpoint);
    const char **strs[] = {&lst->tls.certfile, &lst->tls.keyfile,      &lst->tls.cafile,
                           &lst->tls.capath,   &lst->tls.crlfile,      &lst->tls.ciphers,
                           &lst->tls.ciphersuites, &lst->tls.tls_version};
    for (size_t i = 0; i < LK_ARRAY_LEN(strs); i++)
        free((char *)*strs[i]);
    free(lst);
}

typedef struct {
    fe_server_t *srv;
    fe_listener_t *cur;
    char *spec;
    int rc;
} s_sections_t;

static int s_bool(const char *key, const char *value, bool *out)
{
    if (!strcmp(value, "true") || !strcmp(value, "1") || !strcmp(value, "yes"))
        *out = true;
    else if (!strcmp(value, "false") || !strcmp(value, "0") || !strcmp(value, "no"))
        *out = false;
    else {
        lk_error("%s: '%s' is not true/false", key, value);
        return -1;
    }
    return 0;
}

/* the section just read: checked, its TLS context made, its socket bound */
static int s_section_end(s_sections_t *st)
{
    fe_listener_t *lst = st->cur;
    if (!lst)
        return 0;
    st->cur = NULL;
    fe_server_t *srv = st->srv;
    srv->listeners =
        lk_realloc(srv->listeners, (size_t)(srv->n_listen + 1) * sizeof(fe_listener_t *));
    srv->listeners[srv->n_listen++] = lst;
    lst->srv = srv;
    lst->fd = -1;
    lk_tls_config_t *t = &lst->tls;
    bool any_tls = t->keyfile || t->cafile || t->capath || t->crlfile || t->ciphers ||
                   t->ciphersuites || t->tls_version || t->require_certificate;
    if (!t->certfile && any_tls) {
        lk_error("listener %s: TLS settings without certfile", st->spec);
        return -1;
    }
    if (lst->use_identity && !t->require_certificate) {
        lk_error("listener %s: use_identity_as_username needs require_certificate true",
                 st->spec);
        return -1;
    }
    if (t->certfile && !(lst->tls_ctx = lk_tls_ctx_new(t))) {
        lk_error("listener %s: TLS not set up", st->spec);
        return -1;
    }
    return s_listen(srv, lst, st->spec);
}

static int s_section_key(const char *key, const char *value, void *arg)
{
    s_sections_t *st = arg;
    if (strcmp(key, "listener") == 0) {
        if (s_section_end(st) != 0)
            return -1;
        free(st->spec);
        st->spec = lk_strdup(value);
        st->cur = lk_calloc(1, sizeof(fe_listener_t));
        return 0;
    }
    bool known = false;
    for (size_t i = 0; i < LK_ARRAY_LEN(s_tls_keys); i++)
        known |= strcmp(key, s_tls_keys[i]) == 0;
    known = known || !strcmp(key, "protocol") || !strcmp(key, "require_certificate") ||
                 !strcmp(key, "use_identity_as_username") || !strcmp(key, "proxy_protocol") ||
                 !strcmp(key, "mountpoint");
    if (!known)
        return 0;
    fe_listener_t *lst = st->cur;
    if (!lst) {
        lk_error("%s: a per-listener setting must follow a 'listener' line", key);
        return -1;
    }
    lk_tls_config_t *t = &lst->tls;
    const char **field = !strcmp(key, "certfile")       ? &t->certfile
                         : !strcmp(key, "keyfile")      ? &t->keyfile
                         : !strcmp(key, "cafile")       ? &t->cafile
                         : !strcmp(key, "capath")       ? &t->capath
                         : !strcmp(key, "crlfile")      ? &t->crlfile
                         : !strcmp(key, "ciphers")      ? &t->ciphers
                         : !strcmp(key, "ciphersuites") ? &t->ciphersuites
                         : !strcmp(key, "tls_version")  ? &t->tls_version
                                                        : NULL;
    if (field) {
        free((char *)*field);
        *field = *value ? lk_strdup(value) : NULL;
        return 0;
    }
    if (!strcmp(key, "protocol")) {
        if (!strcmp(value, "websockets"))
            lst->websockets = true;
        else if (!strcmp(value, "mqtt"))
            lst->websockets = false;
        else {
            lk_error("listener %s: protocol '%s': want mqtt or websockets", st->spec, value);
            return -1;
        }
        return 0;
    }
    if (!strcmp(key, "mountpoint")) {
        free(lst->mountpoint);
        lst->mountpoint = *value ? lk_strdup(value) : NULL;
        return 0;
    }
    if (!strcmp(key, "require_certificate"))
        return s_bool(key, value, &t->require_certificate);
    if (!strcmp(key, "use_identity_as_username"))
        return s_bool(key, value, &lst->use_identity);
    return s_bool(key, value, &lst->proxy_protocol);
}

/* Every `listener` line and the per-listener lines after it, in file order. The
   per-listener keys are read from the file only (LATCHKEY_<KEY> does not apply to them);
   LATCHKEY_LISTENER, when set, replaces the whole set by one plain listener. */
static int s_listeners(fe_server_t *srv)
{
    s_sections_t st = {.srv = srv};
    const char *env = getenv("LATCHKEY_LISTENER");
    if (env || lk_config_count(srv->config, "listener") == 0) {
        st.spec = lk_strdup(env ? lk_config_get(srv->config, "listener", "") : "1883 127.0.0.1");
        st.cur = lk_calloc(1, sizeof(fe_listener_t));
        int rc = s_section_end(&st);
        free(st.spec);
        return rc;
    }
    int rc = lk_config_each(srv->config, s_section_key, &st);
    if (rc == 0)
        rc = s_section_end(&st);
    else
        s_listener_free(st.cur);
    free(st.spec);
    return rc ? -1 : 0;
}

/* SIGHUP: certificates, keys, CAs and CRLs read again into new TLS contexts for new
   connections; existing connections keep the context they were made with */
static void s_on_hup(lk_loop_t *loop, void *arg)
{
    fe_server_t *srv = arg;
    for (int i = 0; i < srv->n_listen; i++) {
        fe_listener_t *lst = srv->listeners[i];
        if (!lst->tls_ctx)
            continue;
        lk_tls_ctx_t *ctx = lk_tls_ctx_new(&lst->tls);
        if (!ctx) {
            lk_error("listener %s: TLS reload failed: keeping the previous certificate",
                     lst->name);
            continue;
        }
        lk_tls_ctx_destroy(&lst->tls_ctx);
        lst->tls_ctx = ctx;
        lk_notice("listener %s: TLS reloaded (certificate serial %s)", lst->name,
                  lk_tls_ctx_serial(ctx));
    }
}

/* --- delayed wills ---------------------------------------------------------------- */

void fe_will_publish(fe_server_t *srv, const char *client_id, Lk__Msg *msg)
{
    lk_info("client %s: will published on %s", client_id, msg->topic);
    if (fe_route_publish(srv, msg, true))
        return; /* QoS 0: the way the client's other messages took */
    Lk__Publish pub = LK__PUBLISH__INIT;
    pub.msg = msg;
    fe_router_publish(srv, &pub, msg->qos > 0, NULL);
}

void fe_will_schedule(fe_server_t *srv, const char *client_id, Lk__Msg *msg, uint32_t delay_s)
{
    fe_will_cancel(srv, client_id);
    fe_will_t *w = lk_calloc(1, sizeof(*w));
    w->client_id = lk_strdup(client_id);
    w->msg = msg;
    w->due_ms = lk_loop_now(srv->loop) + (int64_t)delay_s * 1000;
    w->next = srv->wills;
    srv->wills = w;
}

static void s_will_free(fe_will_t *w)
{
    lk__msg__free_unpacked(w->msg, NULL);
    free(w->client_id);
    free(w);
}

bool fe_will_cancel(fe_server_t *srv, const char *client_id)
{
    for (fe_will_t **pp = &srv->wills; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->client_id, client_id) == 0) {
            fe_will_t *w = *pp;
            *pp = w->next;
            s_will_free(w);
            return true;
        }
    }
    return false;
}

bool fe_will_fire(fe_server_t *srv, const char *client_id)
{
    for (fe_will_t **pp = &srv->wills; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->client_id, client_id) == 0) {
            fe_will_t *w = *pp;
            *pp = w->next;
            fe_will_publish(srv, w->client_id, w->msg);
            s_will_free(w);
            return true;
        }
    }
    return false;
}

static void s_wills_due(fe_server_t *srv, int64_t now)
{
    fe_will_t **pp = &srv->wills;
    while (*pp) {
        fe_will_t *w = *pp;
        if (w->due_ms <= now) {
            *pp = w->next;
            fe_will_publish(srv, w->client_id, w->msg);
            s_will_free(w);
        } else
            pp = &w->next;
    }
}

/* --- statistics for the router's $SYS topics --------------------------------------- */

static void s_stats(lk_loop_t *loop, void *arg)
{
    fe_server_t *srv = arg;
    Lk__NodeStats st = LK__NODE_STATS__INIT;
    st.clients = zhashx_size(srv->by_client);
    st.msgs_received = srv->msgs_in;
    st.msgs_sent = srv->msgs_out;
    st.bytes_received = srv->bytes_in;
    st.bytes_sent = srv->bytes_out;
    /* with the QoS 0 deliveries our bus links refused for room (to other frontends) */
    st.msgs_dropped = srv->dropped + lk_bus_dropped(srv->bus);
    st.connections_total = srv->connections_total;
    st.heap_bytes = lk_admin_rss();
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_STATS;
    env.stats = &st;
    lk_bus_send(srv->bus, fe_router_first(srv), &env, false);
}

/* --- cron ------------------------------------------------------------------------- */

static void s_cron(lk_loop_t *loop, void *arg)
{
    fe_server_t *srv = arg;
    int64_t now = lk_loop_now(loop);
    if (srv->wills)
        s_wills_due(srv, now);
    fe_backlog_check(srv);
    fe_routers_check(srv);
    if (srv->lingering)
        fe_transport_cron(srv, now);
    fe_limits_cron(srv->limits, now);
    for (int fd = 0; fd < srv->by_fd_cap; fd++) {
        fe_conn_t *c = srv->by_fd[fd];
        if (!c || c->state == FE_CLOSED)
            continue;
        if (c->state == FE_NEW && now - c->accepted_ms > srv->connect_timeout_ms) {
            fe_limits_cut(c, FE_CUT_TIMEOUT, "no whole CONNECT in time");
            fe_conn_close(c, 0, false, NULL);
        } else if (c->state == FE_AUTH || c->state == FE_SESSION) {
            if (now - c->req_first_ms > srv->request_timeout_ms) {
                fe_conn_refuse(c, LK_RC_SERVER_UNAVAILABLE,
                               c->state == FE_AUTH ? "auth did not answer"
                               : c->opened         ? "router did not ack the attach"
                                                   : "session store did not answer");
            } else if (c->state == FE_SESSION && !c->opened && c->clean && c->expiry == 0 &&
                       (!lk_peer_alive(fe_store(srv, c->client_id)) ||
                        now - c->req_first_ms > srv->request_timeout_ms * 3 / 5)) {
                /* a clean session does not need the session store: it connects now and
                   is registered when the store is back */
                Lk__SessionOpened none = LK__SESSION_OPENED__INIT;
                none.req = c->req;
                none.client = c->client_id;
                c->unregistered = true;
                fe_session_ready(c, &none);
            } else if (now - c->req_sent_ms > 1000 && !c->opened) {
                /* the reply may have been lost with a restarting service: ask again */
                if (c->state == FE_AUTH)
                    fe_auth_request_send(c);
                else
                    fe_session_open_send(c);
            }
        } else if (c->state == FE_ACTIVE && (c->reopening || c->unregistered) &&
                   now - c->req_sent_ms > 1000 && lk_peer_alive(fe_store(srv, c->client_id))) {
            /* a store that restarted answers only once it has loaded Redis; a connection
               made without it is registered as soon as it answers */
            c->req = fe_conn_req(c);
            c->reopening = true;
            fe_session_open_send(c);
        } else if (c->state == FE_ACTIVE && c->n_rt_wait && srv->router_down_ms &&
                   now - srv->router_down_ms > srv->router_timeout_ms) {
            /* its QoS > 0 publishes cannot be acknowledged: the client is told (v5 0x88)
               and re-sends them when it reconnects, rather than wait without end */
            fe_conn_close(c, LK_RC_SERVER_UNAVAILABLE, true, "router unavailable");
        } else if (c->state == FE_ACTIVE && c->keepalive && !c->bp_paused &&
                   now - c->last_rx_ms > (int64_t)c->keepalive * 1500) {
            fe_conn_close(c, LK_RC_KEEP_ALIVE_TIMEOUT, true, "keepalive timeout");
        }
    }
}

/* --- turn end: one write per connection, then the session store's acks ------------ */

static void s_sub_changes_clear(fe_conn_t *c)
{
    for (size_t i = 0; i < c->n_sub_changes; i++)
        free(c->sub_changes[i]);
    c->n_sub_changes = 0;
}

void fe_session_ack_flush(fe_conn_t *c)
{
    fe_server_t *srv = c->srv;
    if (c->expiry == 0 || c->unregistered) {
        /* no session to keep: nothing to tell */
        s_sub_changes_clear(c);
        return;
    }
    size_t nch = c->n_sub_changes;
    if (!c->n_acked_ids && !c->n_rel && !nch)
        return;
    Lk__SessionAck sa = LK__SESSION_ACK__INIT;
    sa.client = c->client_id;
    sa.n_store_ids = c->n_acked_ids;
    sa.store_ids = c->acked_ids;
    sa.n_released_ids = c->n_rel;
    sa.released_ids = c->rel_ids;
    sa.n_released_pids = c->n_rel;
    sa.released_pids = c->rel_pids;
    /* only the subscriptions that changed: what is held now is written, the rest
       deleted (the store applies them in order, so a repeat is harmless) */
    Lk__Subscription *store = nch ? lk_calloc(nch, sizeof(*store)) : NULL;
    Lk__Subscription **ptrs = nch ? lk_calloc(nch, sizeof(*ptrs)) : NULL;
    char **removed = nch ? lk_calloc(nch, sizeof(char *)) : NULL;
    if (nch) {
        sa.subs_changed = true;
        sa.subs_delta = true;
        for (size_t i = 0; i < nch; i++) {
            ssize_t k = fe_sub_find(c, c->sub_changes[i]);
            if (k < 0) {
                removed[sa.n_subs_removed++] = c->sub_changes[i];
                continue;
            }
            fe_sub_to_proto(&c->subs[k], &store[sa.n_subs]);
            ptrs[sa.n_subs] = &store[sa.n_subs];
            sa.n_subs++;
        }
        sa.subs = ptrs;
        sa.subs_removed = removed;
    }
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_SESSION_ACK;
    env.session_ack = &sa;
    lk_bus_send(srv->bus, fe_store(srv, c->client_id), &env, true);
    free(store);
    free(ptrs);
    free(removed);
    s_sub_changes_clear(c);
    c->n_acked_ids = 0;
    c->n_rel = 0;
}

static void s_turn_end(lk_loop_t *loop, void *arg)
{
    fe_server_t *srv = arg;
    /* packets that waited behind a CONNECT accepted this turn: their answers and acks
       leave in this turn too */
    if (srv->resume)
        fe_conn_resume_all(srv);
    while (srv->ackd) {
        fe_conn_t *c = srv->ackd;
        srv->ackd = c->next_ackd;
        c->on_ack_list = false;
        c->next_ackd = NULL;
        fe_session_ack_flush(c);
    }
    /* the bus first: one write takes this turn's publishes to the router, where the
       client writes below would make them wait ~10 us per subscriber written */
    lk_bus_flush(srv->bus);
    while (srv->dirty) {
        fe_conn_t *c = srv->dirty;
        srv->dirty = c->next_dirty;
        c->next_dirty = NULL;
        c->out_pending = false;
        fe_conn_flush(c);
    }
    fe_conn_reap(srv);
}

/* --- construction ----------------------------------------------------------------- */

uint8_t fe_connack_code(uint8_t version, uint8_t reason5)
{
    if (version == LK_MQTT_V5)
        return reason5;
    switch (reason5) {
    case LK_RC_SUCCESS:
        return LK_CONNACK_ACCEPTED;
    case LK_RC_UNSUPPORTED_VERSION:
        return LK_CONNACK_BAD_VERSION;
    case LK_RC_CLIENT_ID_INVALID:
        return LK_CONNACK_ID_REJECTED;
    case LK_RC_BAD_USERNAME_PASSWORD:
        return LK_CONNACK_BAD_CREDENTIALS;
    case LK_RC_NOT_AUTHORIZED:
    case LK_RC_BANNED:
        return LK_CONNACK_NOT_AUTHORIZED;
    default:
        return LK_CONNACK_UNAVAILABLE;
    }
}

fe_server_t *fe_server_new(lk_config_t *config, lk_loop_t *loop, const char *node)
{
    fe_server_t *srv = lk_calloc(1, sizeof(*srv));
    srv->config = config;
    srv->loop = loop;
    srv->node = lk_strdup(node);
    srv->by_client = zhashx_new();
    /* keys are the connections' own client ids (an entry goes before its connection) */
    zhashx_set_key_duplicator(srv->by_client, NULL);
    zhashx_set_key_destructor(srv->by_client, NULL);
    lk_wbuf_init(&srv->scratch);
    srv->max_inflight = (uint16_t)lk_config_get_int(config, "max_inflight_messages", 20);
    if (srv->max_inflight == 0)
        srv->max_inflight = 65535;
    srv->max_queued = (uint32_t)lk_config_get_int(config, "max_queued_messages", 1000);
    srv->max_queued_bytes = (uint64_t)lk_config_get_int(config, "max_queued_bytes", 0);
    srv->backlog_high = (size_t)lk_config_get_int(config, "router_backlog_bytes", 16 << 20);
    srv->backlog_low = srv->backlog_high / 2;
    srv->max_packet = (uint32_t)lk_config_get_int(config, "max_packet_size", 268435455);
    /* 60 s, as the MQTT 5 interoperability suite expects of a Server Keep Alive */
    srv->max_keepalive = (uint16_t)lk_config_get_int(config, "max_keepalive", 60);
    srv->receive_maximum = (uint16_t)lk_config_get_int(config, "receive_maximum", 100);
    if (srv->receive_maximum == 0)
        srv->receive_maximum = 65535;
    srv->max_topic_alias = (uint16_t)lk_config_get_int(config, "max_topic_alias", 10);
    srv->persistent_expiration =
        (uint32_t)lk_config_get_int(config, "persistent_client_expiration", 0);
    /* slowloris: a socket that has not sent a whole CONNECT by then is closed */
    srv->connect_timeout_ms = (int)lk_config_get_int(config, "connect_timeout_ms", 5000);
    srv->request_timeout_ms = (int)lk_config_get_int(config, "request_timeout_ms", 5000);
    /* QoS > 0 publishes wait this long for a router that is gone (TCP back-pressure holds
       the publisher meanwhile), then the connection is closed */
    srv->router_timeout_ms = (int)lk_config_get_int(config, "router_timeout_ms", 30000);
    srv->allow_zero_length_id = lk_config_get_bool(config, "allow_zero_length_clientid", true);
    if (!(srv->limits = fe_limits_new(config, loop))) {
        fe_server_destroy(&srv);
        return NULL;
    }

    /* before the bus's own hook: what this one queues must leave in the same turn */
    lk_loop_on_turn_end(loop, s_turn_end, srv);
    lk_bus_handlers_t h = {s_on_message, s_on_peer_up, s_on_peer_down};
    srv->bus = lk_bus_new(loop, node, "mqtt-frontend", &h, srv);
    lk_bus_on_acked(srv->bus, s_on_acked);
    lk_bus_on_admin(srv->bus, fe_admin, srv);
    if (lk_bus_configure(srv->bus, config) != 0) {
        fe_server_destroy(&srv);
        return NULL;
    }
    if (lk_bus_enable_msglog(srv->bus, lk_config_get(config, "msglog_dir", "")) != 0) {
        fe_server_destroy(&srv);
        return NULL;
    }
    const char *rep = lk_config_get(config, "router_endpoint", NULL);
    const char *sep = lk_config_get(config, "session_endpoint", NULL);
    const char *aep = lk_config_get(config, "auth_endpoint", NULL);
    if (!rep || !sep || !aep || !*rep || !*sep || !*aep) {
        lk_error("router_endpoint, session_endpoint and auth_endpoint must be configured");
        fe_server_destroy(&srv);
        return NULL;
    }
    fe_route_init(srv);
    const char *fep = lk_config_get(config, "frontend_endpoint", "");
    if (*fep) {
        /* %n: this node's id, so that one configuration serves every frontend */
        char *ep = lk_str_subst(fep, 'n', node);
        /* tcp://<host>:<port>: the others are told <host> (a DNS name in containers,
           which ZeroMQ cannot bind), we listen on every interface */
        char *bind = NULL;
        const char *colon = strrchr(ep, ':');
        if (strncmp(ep, "tcp://", 6) == 0 && colon && colon > ep + 6)
            bind = lk_str_subst("tcp://*%p", 'p', colon);
        else if (strncmp(ep, "ipc://", 6) == 0)
            bind = lk_strdup(ep);
        if (!bind)
            lk_warn("frontend_endpoint %s: neither ipc:// nor tcp://<host>:<port>; QoS 0 "
                    "goes through the router",
                    ep);
        else if (lk_bus_bind(srv->bus, bind) != 0) {
            free(bind);
            free(ep);
            fe_server_destroy(&srv);
            return NULL;
        } else {
            lk_bus_advertise(srv->bus, ep);
            srv->direct = true;
        }
        free(bind);
        free(ep);
        const char *lkey = lk_config_get(config, "frontend_curve_server_key", "");
        srv->link_key = *lkey ? lk_strdup(lkey) : NULL;
    }
    if (fe_routers_connect(srv) != 0) {
        fe_server_destroy(&srv);
        return NULL;
    }
    srv->stores = lk_replicas_connect(srv->bus, config, "session", "session-store");
    if (!srv->stores) {
        fe_server_destroy(&srv);
        return NULL;
    }
    if (!(srv->auths = lk_replicas_connect(srv->bus, config, "auth", "auth"))) {
        fe_server_destroy(&srv);
        return NULL;
    }

    if (s_listeners(srv) != 0) {
        fe_server_destroy(&srv);
        return NULL;
    }
    lk_loop_on_hup(loop, s_on_hup, srv);
    lk_loop_timer(loop, 250, true, s_cron, srv);
    lk_loop_timer(loop, lk_config_get_int(config, "sys_interval", 5) * 500, true, s_stats, srv);
    return srv;
}

void fe_server_destroy(fe_server_t **self_p)
{
    fe_server_t *srv = *self_p;
    if (!srv)
        return;
    lk_loop_remove_turn_end(srv->loop, s_turn_end, srv);
    fe_conn_reap(srv);
    for (int fd = 0; fd < srv->by_fd_cap; fd++)
        if (srv->by_fd[fd])
            fe_conn_free(srv->by_fd[fd]);
    free(srv->by_fd);
    fe_transport_shutdown(srv);
    for (int i = 0; i < srv->n_listen; i++)
        s_listener_free(srv->listeners[i]);
    free(srv->listeners);
    while (srv->wills) {
        fe_will_t *w = srv->wills;
        srv->wills = w->next;
        s_will_free(w);
    }
    while (srv->waits) {
        fe_wait_t *w = srv->waits;
        srv->waits = w->next;
        for (size_t i = 0; i < w->n; i++) {
            free(w->items[i].codes);
            fe_join_t *j = w->items[i].join;
            if (j && --j->left <= 0) {
                free(j->item.codes);
                free(j);
            }
        }
        free(w->items);
        free(w);
    }
    lk_replicas_destroy(&srv->auths);
    lk_replicas_destroy(&srv->routers);
    lk_replicas_destroy(&srv->stores);
    lk_bus_destroy(&srv->bus);
    fe_route_destroy(srv);
    fe_limits_destroy(&srv->limits);
    zhashx_destroy(&srv->by_client);
    lk_wbuf_free(&srv->scratch);
    free(srv->rbuf);
    for (int i = 0; i < srv->out_pool_n; i++)
        lk_wbuf_free(&srv->out_pool[i]);
    free(srv->node);
    free(srv->link_key);
    free(srv);
    *self_p = NULL;
}
