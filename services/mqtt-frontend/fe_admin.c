/*  fe_admin: what a frontend answers the `api` process (lk.AdminRequest, see lk_admin.h):
    its clients (filtered here so that only matches cross the bus), kicks by client id,
    username or address (bans), subscribe / unsubscribe on a client's behalf, and its
    numbers for /nodes and Prometheus. Reads the connection table; changes a connection only
    through the functions a packet handler would use. */
#include "fe_internal.h"
#include "lk_admin.h"
#include <stdio.h>

static bool s_match(fe_conn_t *c, const Lk__AdminRequest *q)
{
    if (c->state != FE_ACTIVE || !c->client_id)
        return false;
    if (q->client && *q->client && strcmp(q->client, c->client_id) != 0)
        return false;
    if (q->like && *q->like && !strstr(c->client_id, q->like))
        return false;
    if (q->username && *q->username && (!c->username || strcmp(q->username, c->username) != 0))
        return false;
    if (q->peerhost && *q->peerhost) {
        char host[64];
        lk_admin_peerhost(c->peer, host, sizeof(host));
        if (strcmp(host, q->peerhost) != 0)
            return false;
    }
    if (q->proto_ver && q->proto_ver != c->version)
        return false;
    return true;
}

static void s_client(fe_server_t *srv, fe_conn_t *c, lk_admin_out_t *out)
{
    Lk__AdminClient *a = lk_admin_client_add(out);
    a->client = lk_admin_str(out, c->client_id);
    a->username = lk_admin_str(out, c->username);
    a->peer = lk_admin_str(out, c->peer);
    a->proto_ver = c->version;
    a->connected_at_ms = (uint64_t)c->connected_wall_ms;
    a->keepalive = c->keepalive;
    a->clean_start = c->clean;
    a->expiry = c->expiry;
    a->subscriptions = (uint32_t)c->n_subs;
    a->inflight = (uint32_t)c->n_inflight;
    a->inflight_max = c->max_inflight;
    a->mqueue_len = (uint32_t)c->n_queued;
    a->recv_msg = c->recv_msg;
    a->sent_msg = c->sent_msg;
    a->recv_oct = c->recv_oct;
    a->sent_oct = c->sent_oct;
    a->node = lk_admin_str(out, srv->node);
    a->connected = true;
    a->superuser = c->superuser;
}

static void s_clients(fe_server_t *srv, const Lk__AdminRequest *q, lk_admin_out_t *out)
{
    uint64_t total = 0;
    for (int fd = 0; fd < srv->by_fd_cap; fd++) {
        fe_conn_t *c = srv->by_fd[fd];
        if (!c || !s_match(c, q))
            continue;
        total++;
        if (!q->limit || total <= q->limit)
            s_client(srv, c, out);
    }
    lk_admin_reply(out)->total = total;
}

/* kick: by client id, or every client of a username / an address (a new ban) */
static void s_kick(fe_server_t *srv, const Lk__AdminRequest *q, lk_admin_out_t *out)
{
    if ((!q->client || !*q->client) && (!q->username || !*q->username) &&
        (!q->peerhost || !*q->peerhost)) {
        lk_admin_error(out, "BAD_REQUEST", "kick needs a client, username or peerhost");
        return;
    }
    uint32_t n = 0;
    for (int fd = 0; fd < srv->by_fd_cap; fd++) {
        fe_conn_t *c = srv->by_fd[fd];
        if (!c || c->state == FE_CLOSED || !c->client_id)
            continue;
        /* any of the given fields (a ban names one of them) */
        bool hit = false;
        if (q->client && *q->client && strcmp(q->client, c->client_id) == 0)
            hit = true;
        if (q->username && *q->username && c->username && strcmp(q->username, c->username) == 0)
            hit = true;
        if (q->peerhost && *q->peerhost) {
            char host[64];
            lk_admin_peerhost(c->peer, host, sizeof(host));
            hit = hit || strcmp(host, q->peerhost) == 0;
        }
        if (!hit)
            continue;
        lk_notice("client %s: kicked out by the operator (%s)", c->client_id,
                  q->topic && *q->topic ? q->topic : "api");
        fe_conn_close(c, LK_RC_ADMIN_ACTION, true, NULL);
        n++;
    }
    lk_admin_reply(out)->count = n;
}

static fe_conn_t *s_active(fe_server_t *srv, const char *client, lk_admin_out_t *out)
{
    fe_conn_t *c = zhashx_lookup(srv->by_client, client ? client : "");
    if (!c || c->state != FE_ACTIVE) {
        lk_admin_error(out, "CLIENTID_NOT_FOUND", "client not connected here");
        return NULL;
    }
    return c;
}

static void s_subscribe(fe_server_t *srv, const Lk__AdminRequest *q, lk_admin_out_t *out)
{
    fe_conn_t *c = s_active(srv, q->client, out);
    if (!c)
        return;
    Lk__Subscription **subs = lk_calloc(q->n_subs ? q->n_subs : 1, sizeof(*subs));
    protobuf_c_boolean *is_new = lk_calloc(q->n_subs ? q->n_subs : 1, sizeof(*is_new));
    size_t n = 0;
    for (size_t i = 0; i < q->n_subs; i++) {
        Lk__Subscription *s = q->subs[i];
        if (!s->filter || !lk_mqtt_filter_valid(s->filter, strlen(s->filter), true))
            continue;
        bool fresh = false;
        fe_sub_set(c, s->filter, s->qos > 2 ? 2 : (uint8_t)s->qos, s->no_local,
                   s->retain_as_published,
                   (uint8_t)(s->retain_handling > 2 ? 2 : s->retain_handling), 0, &fresh);
        fe_sub_changed(c, s->filter);
        is_new[n] = fresh;
        subs[n++] = s;
    }
    if (n)
        fe_router_subscribe(c, subs, is_new, n, NULL);
    else
        lk_admin_error(out, "INVALID_PARAMETER", "no valid topic filter");
    lk_admin_reply(out)->count = (uint32_t)n;
    free(subs);
    free(is_new);
}

static void s_unsubscribe(fe_server_t *srv, const Lk__AdminRequest *q, lk_admin_out_t *out)
{
    fe_conn_t *c = s_active(srv, q->client, out);
    if (!c)
        return;
    uint32_t n = 0;
    for (size_t i = 0; i < q->n_filters; i++) {
        ssize_t k = q->filters[i] ? fe_sub_find(c, q->filters[i]) : -1;
        if (k >= 0) {
            fe_sub_remove_at(c, (size_t)k);
            fe_sub_changed(c, q->filters[i]);
            n++;
        }
    }
    fe_router_unsubscribe(c, q->filters, q->n_filters, NULL);
    lk_admin_reply(out)->count = n;
}

/* the client's subscriptions as this frontend holds them */
static void s_client_subs(fe_server_t *srv, const Lk__AdminRequest *q, lk_admin_out_t *out)
{
    fe_conn_t *c = s_active(srv, q->client, out);
    if (!c)
        return;
    for (size_t i = 0; i < c->n_subs; i++) {
        Lk__AdminSub *a = lk_admin_sub_add(out);
        a->client = lk_admin_str(out, c->client_id);
        a->node = lk_admin_str(out, srv->node);
        Lk__Subscription *s = lk_admin_subscription(out);
        fe_sub_to_proto(&c->subs[i], s);
        s->filter = lk_admin_str(out, c->subs[i].filter);
        a->sub = s;
    }
}

static void s_node(fe_server_t *srv, lk_admin_out_t *out)
{
    lk_admin_node(out)->connections = zhashx_size(srv->by_client);
    lk_admin_metric(out, "latchkey_connections", NULL, (double)zhashx_size(srv->by_client), false);
    lk_admin_metric(out, "latchkey_sockets", NULL, (double)srv->n_conns, false);
    lk_admin_metric(out, "latchkey_connections_accepted_total", NULL,
                    (double)srv->connections_total, true);
    for (int q = 0; q < 3; q++) {
        char l[16];
        snprintf(l, sizeof(l), "qos=\"%d\"", q);
        lk_admin_metric(out, "latchkey_messages_received_total", l, (double)srv->msgs_in_qos[q],
                        true);
        lk_admin_metric(out, "latchkey_messages_sent_total", l, (double)srv->msgs_out_qos[q], true);
        lk_admin_metric(out, "latchkey_payload_bytes_received_total", l,
                        (double)srv->bytes_in_qos[q], true);
        lk_admin_metric(out, "latchkey_packet_bytes_sent_total", l, (double)srv->bytes_out_qos[q],
                        true);
    }
    lk_admin_metric(out, "latchkey_bytes_received_total", NULL, (double)srv->bytes_in, true);
    lk_admin_metric(out, "latchkey_bytes_sent_total", NULL, (double)srv->bytes_out, true);
    lk_admin_metric(out, "latchkey_messages_dropped_total", "reason=\"client\"",
                    (double)srv->dropped, true);
    uint64_t subs = 0, inflight = 0, queued = 0;
    for (int fd = 0; fd < srv->by_fd_cap; fd++) {
        fe_conn_t *c = srv->by_fd[fd];
        if (!c || c->state != FE_ACTIVE)
            continue;
        subs += c->n_subs;
        inflight += c->n_inflight;
        queued += c->n_queued;
    }
    lk_admin_metric(out, "latchkey_client_subscriptions", NULL, (double)subs, false);
    lk_admin_metric(out, "latchkey_client_inflight", NULL, (double)inflight, false);
    lk_admin_metric(out, "latchkey_client_queued", NULL, (double)queued, false);
    lk_admin_metric(out, "latchkey_router_backlog_paused", NULL, srv->congested ? 1 : 0, false);
}

void fe_admin(lk_bus_t *bus, lk_peer_t *peer, const Lk__AdminRequest *q, lk_admin_out_t *out,
              void *arg)
{
    fe_server_t *srv = arg;
    const char *op = q->op ? q->op : "";
    if (strcmp(op, "node") == 0)
        s_node(srv, out);
    else if (strcmp(op, "clients") == 0)
        s_clients(srv, q, out);
    else if (strcmp(op, "kick") == 0)
        s_kick(srv, q, out);
    else if (strcmp(op, "subscribe") == 0)
        s_subscribe(srv, q, out);
    else if (strcmp(op, "unsubscribe") == 0)
        s_unsubscribe(srv, q, out);
    else if (strcmp(op, "client_subs") == 0)
        s_client_subs(srv, q, out);
    else
        lk_admin_error(out, "BAD_REQUEST", "mqtt-frontend does not answer '%s'", op);
}
