/*  fe_handle: what the frontend does with each packet a client sends (one function per
    packet type, one dispatcher), and with the replies of auth and the session store that
    complete a CONNECT. */
#include "fe_internal.h"

/* forwarded with a message: payload format, content type, response topic, correlation
   data, user properties (MQTT 5 3.3.2.3) */
#define FE_FORWARD_PROPS                                                                           \
    ((1ULL << LK_PROP_PAYLOAD_FORMAT) | (1ULL << LK_PROP_CONTENT_TYPE) |                          \
     (1ULL << LK_PROP_RESPONSE_TOPIC) | (1ULL << LK_PROP_CORRELATION_DATA) |                      \
     (1ULL << LK_PROP_USER_PROPERTY))

static char *s_dup(lk_str_t s)
{
    return lk_strndup(s.p ? s.p : "", s.len);
}

uint64_t fe_conn_req(fe_conn_t *conn)
{
    return ((uint64_t)conn->fd << 40) | (conn->id & 0xFFFFFFFFFFULL);
}

static fe_conn_t *s_conn_of_req(fe_server_t *srv, uint64_t req)
{
    int fd = (int)(req >> 40);
    if (fd < 0 || fd >= srv->by_fd_cap || !srv->by_fd[fd])
        return NULL;
    fe_conn_t *c = srv->by_fd[fd];
    return (c->id & 0xFFFFFFFFFFULL) == (req & 0xFFFFFFFFFFULL) ? c : NULL;
}

/* builds a bus message from a PUBLISH or a will; caller frees with lk__msg__free_unpacked
   when heap is true */
static void s_msg_fill(fe_conn_t *conn, Lk__Msg *m, lk_str_t topic, lk_str_t payload,
                       uint8_t qos, bool retain, const lk_mqtt_props_t *props)
{
    fe_server_t *srv = conn->srv;
    m->topic = (char *)topic.p;
    m->payload.data = (uint8_t *)payload.p;
    m->payload.len = payload.len;
    m->qos = qos;
    m->retain = retain;
    m->origin_client = conn->client_id;
    m->origin_node = srv->node;
    if (conn->username)
        m->origin_user = conn->username;
    m->accepted_at_ms = (uint64_t)lk_wall_ms();
    if (conn->version == LK_MQTT_V5 && props && (props->has & FE_FORWARD_PROPS)) {
        srv->scratch.len = 0;
        lk_mqtt_props_encode(&srv->scratch, props, FE_FORWARD_PROPS);
        m->props.data = srv->scratch.data;
        m->props.len = srv->scratch.len;
    }
    if (props && LK_PROP_HAS(props, LK_PROP_MESSAGE_EXPIRY))
        m->expiry_at_ms = (uint64_t)lk_wall_ms() + (uint64_t)props->message_expiry * 1000;
}

/* --- CONNECT ---------------------------------------------------------------------- */

void fe_auth_request_send(fe_conn_t *conn)
{
    fe_server_t *srv = conn->srv;
    Lk__AuthRequest r = LK__AUTH_REQUEST__INIT;
    r.req = conn->req;
    r.client = conn->client_id;
    r.has_username = conn->has_username;
    r.username = conn->username ? conn->username : "";
    r.has_password = conn->connect_pw != NULL;
    r.password.data = conn->connect_pw;
    r.password.len = conn->connect_pw_len;
    r.peer = conn->peer;
    r.cert_cn = conn->cert_cn ? conn->cert_cn : ""; /* set only by use_identity_as_username */
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_AUTH_REQUEST;
    env.auth_request = &r;
    /* round robin over live replicas; a re-send (cron, or the replica died) moves on */
    conn->auth_peer = lk_replicas_pick(srv->auths);
    lk_bus_send(srv->bus, conn->auth_peer, &env, false);
    conn->req_sent_ms = lk_loop_now(srv->loop);
}

void fe_session_open_send(fe_conn_t *conn)
{
    fe_server_t *srv = conn->srv;
    Lk__SessionOpen o = LK__SESSION_OPEN__INIT;
    o.req = conn->req;
    o.client = conn->client_id;
    o.clean = conn->clean;
    o.expiry = conn->expiry;
    o.max_queued = srv->max_queued;
    o.conn = conn->id;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_SESSION_OPEN;
    env.session_open = &o;
    conn->store_peer = fe_store(srv, conn->client_id);
    lk_bus_send(srv->bus, conn->store_peer, &env, false);
    conn->open_sent = true;
    conn->req_sent_ms = lk_loop_now(srv->loop);
}

static int s_connect(fe_conn_t *conn, lk_mqtt_packet_t *pkt)
{
    fe_server_t *srv = conn->srv;
    lk_mqtt_connect_t *c = &pkt->u.connect;
    conn->version = c->version;
    conn->clean = c->clean;
    conn->keepalive = c->keepalive;
    if (c->client_id.len == 0) {
        /* 3.1 has no empty ids; 3.1.1 only with a clean session [MQTT-3.1.3-8] */
        if (c->version == LK_MQTT_V31 || (c->version == LK_MQTT_V311 && !c->clean) ||
            !srv->allow_zero_length_id) {
            fe_conn_refuse(conn, LK_RC_CLIENT_ID_INVALID, "empty client id");
            return -1;
        }
        uint8_t rnd[12];
        zuuid_t *u = zuuid_new();
        memcpy(rnd, zuuid_data(u), sizeof(rnd));
        zuuid_destroy(&u);
        char id[64];
        snprintf(id, sizeof(id), "lk-%s-", srv->node);
        size_t n = strlen(id);
        for (size_t i = 0; i < sizeof(rnd); i++)
            n += (size_t)snprintf(id + n, sizeof(id) - n, "%02x", rnd[i]);
        conn->client_id = lk_strdup(id);
        conn->assigned_id = true;
    } else {
        if (c->version == LK_MQTT_V31 && c->client_id.len > 23) {
            fe_conn_refuse(conn, LK_RC_CLIENT_ID_INVALID, "3.1 client id longer than 23");
            return -1;
        }
        conn->client_id = s_dup(c->client_id);
    }
    if (c->has_username) {
        conn->has_username = true;
        conn->username = s_dup(c->username);
    }
    if (c->has_password) {
        conn->connect_pw = lk_malloc(c->password.len + 1);
        memcpy(conn->connect_pw, c->password.p, c->password.len);
        conn->connect_pw_len = c->password.len;
    }
    if (fe_transport_identity(conn) < 0) {
        fe_conn_refuse(conn, LK_RC_NOT_AUTHORIZED, "no client certificate identity");
        return -1;
    }
    if (c->version == LK_MQTT_V5) {
        lk_mqtt_props_t *p = &pkt->props;
        if (LK_PROP_HAS(p, LK_PROP_AUTH_METHOD)) {
            fe_conn_refuse(conn, LK_RC_BAD_AUTH_METHOD, "no enhanced authentication configured");
            return -1;
        }
        conn->expiry = LK_PROP_HAS(p, LK_PROP_SESSION_EXPIRY) ? p->session_expiry : 0;
        conn->client_receive_max =
            LK_PROP_HAS(p, LK_PROP_RECEIVE_MAXIMUM) ? p->receive_maximum : 65535;
        conn->client_max_packet =
            LK_PROP_HAS(p, LK_PROP_MAXIMUM_PACKET_SIZE) ? p->maximum_packet_size : 0;
        conn->client_alias_max =
            LK_PROP_HAS(p, LK_PROP_TOPIC_ALIAS_MAXIMUM) ? p->topic_alias_maximum : 0;
    } else {
        conn->expiry = c->clean ? 0
                       : srv->persistent_expiration ? srv->persistent_expiration
                                                    : 0xFFFFFFFFu;
        conn->client_receive_max = 65535;
    }
    conn->max_inflight = srv->max_inflight < conn->client_receive_max ? srv->max_inflight
                                                                      : conn->client_receive_max;
    if (c->will) {
        if (!lk_mqtt_topic_valid(c->will_topic.p, c->will_topic.len)) {
            fe_conn_refuse(conn, LK_RC_TOPIC_NAME_INVALID, "invalid will topic");
            return -1;
        }
        Lk__Msg m = LK__MSG__INIT;
        char *topic = s_dup(c->will_topic);
        lk_str_t t = {topic, c->will_topic.len};
        s_msg_fill(conn, &m, t, c->will_payload, c->will_qos, c->will_retain,
                   c->version == LK_MQTT_V5 ? &c->will_props : NULL);
        /* a heap copy: the frame goes away after this call */
        size_t n = lk__msg__get_packed_size(&m);
        uint8_t *buf = lk_malloc(n ? n : 1);
        lk__msg__pack(&m, buf);
        conn->will = lk__msg__unpack(NULL, n, buf);
        free(buf);
        free(topic);
        if (c->version == LK_MQTT_V5 && LK_PROP_HAS(&c->will_props, LK_PROP_WILL_DELAY))
            conn->will_delay = c->will_props.will_delay;
    }
    conn->state = FE_AUTH;
    conn->req = fe_conn_req(conn);
    conn->req_first_ms = lk_loop_now(srv->loop);
    fe_limits_connect(conn); /* sends the AuthRequest, or holds or refuses the CONNECT */
    fe_conn_io_events(conn); /* not read on until CONNACK */
    return 0;
}

static bool s_allowed(fe_conn_t *conn, const char *topic_or_filter, uint32_t access, bool filter);

void fe_handle_auth_reply(fe_server_t *srv, Lk__AuthReply *r)
{
    if (r->acl_only) {
        fe_acl_reply(srv, r); /* an ACL re-read for a connected client */
        return;
    }
    fe_conn_t *conn = s_conn_of_req(srv, r->req);
    if (!conn || conn->state != FE_AUTH)
        return;
    free(conn->connect_pw);
    conn->connect_pw = NULL;
    if (!r->ok) {
        fe_limits_auth_failed(conn, r->reason);
        bool unavailable = r->reason && strcmp(r->reason, "unavailable") == 0;
        bool banned = r->reason && strcmp(r->reason, "banned") == 0;
        fe_conn_refuse(conn,
                       unavailable ? LK_RC_SERVER_UNAVAILABLE
                       : banned    ? LK_RC_BANNED
                       : conn->has_username ? LK_RC_BAD_USERNAME_PASSWORD
                                            : LK_RC_NOT_AUTHORIZED,
                       r->reason ? r->reason : "not authorised");
        return;
    }
    conn->superuser = r->superuser;
    conn->n_acl = r->n_acl;
    conn->acl = lk_calloc(r->n_acl ? r->n_acl : 1, sizeof(lk_acl_rule_t));
    for (size_t i = 0; i < r->n_acl; i++) {
        conn->acl[i].pattern = lk_strdup(r->acl[i]->pattern ? r->acl[i]->pattern : "");
        conn->acl[i].access = r->acl[i]->access;
    }
    conn->acl_check_deliveries =
        !conn->superuser && lk_acl_has_deny(conn->acl, conn->n_acl, LK_ACL_SUB);
    /* a will is a publish: a client may not leave one where it may not publish (as
       Mosquitto refuses it at CONNECT) — else a Last Will could unlock a smart lock. Checked
       in the client's own view, before the mount point is put in front of it */
    if (conn->will && !s_allowed(conn, conn->will->topic, LK_ACL_PUB, false)) {
        fe_conn_refuse(conn, LK_RC_NOT_AUTHORIZED, "will topic not allowed");
        return;
    }
    if (fe_mount_set(conn, r->mountpoint) != 0) {
        fe_conn_refuse(conn, LK_RC_NOT_AUTHORIZED, "mountpoint");
        return;
    }
    /* a connection of the same client on this frontend is taken over here; the one on
       another frontend by the session store's Takeover */
    fe_conn_t *old = zhashx_lookup(srv->by_client, conn->client_id);
    if (old && old != conn) {
        fe_takeover_close(old, !conn->clean && old->expiry > 0, conn->peer);
        /* its SessionClose went first: the store sees it closed before our SessionOpen */
    }
    /* delete, then insert: an update would keep the old connection's key string */
    zhashx_delete(srv->by_client, conn->client_id);
    zhashx_insert(srv->by_client, conn->client_id, conn);
    /* a will delayed here (the old connection's too): a resumed session cancels it, a
       clean start ends the old session and so sends it now [MQTT-3.1.3-9] */
    if (conn->clean)
        fe_will_fire(srv, conn->client_id);
    else
        fe_will_cancel(srv, conn->client_id);
    conn->state = FE_SESSION;
    conn->req_first_ms = lk_loop_now(srv->loop);
    if (conn->clean && conn->expiry == 0 && !lk_peer_alive(fe_store(srv, conn->client_id))) {
        /* no session store: a clean session needs nothing from it. Registered (and a
           second holder of the client id taken over) once the store is back. */
        Lk__SessionOpened none = LK__SESSION_OPENED__INIT;
        none.req = conn->req;
        none.client = conn->client_id;
        conn->unregistered = true;
        lk_info("client %s: session store unavailable, clean session connects unregistered",
                conn->client_id);
        fe_session_ready(conn, &none);
        return;
    }
    fe_session_open_send(conn);
}

/* closes conn for a newer connection of its client id (this frontend's or, by Takeover,
   another's). MQTT 5 3.1.2.5 / 3.1.3.2.2: the will is not published when the new connection
   continues the session [MQTT-3.1.2-8, 3.1.3-9]; when the session ends (clean start, or
   the old connection's Session Expiry 0) it is published now, whatever its delay, as
   Mosquitto does. */
void fe_takeover_close(fe_conn_t *conn, bool resumed, const char *by)
{
    fe_server_t *srv = conn->srv;
    /* what the client sent before it left (a DISCONNECT with Session Expiry 0, acks) is
       read first: it decides what the new connection finds */
    if (conn->state == FE_ACTIVE && !conn->lim.paused && !conn->bp_paused)
        fe_conn_readable(conn);
    if (conn->state == FE_CLOSED)
        return;
    if (conn->will && conn->state == FE_ACTIVE) {
        if (!resumed)
            fe_will_publish(srv, conn->client_id, conn->will);
        lk__msg__free_unpacked(conn->will, NULL);
        conn->will = NULL;
    }
    lk_info("client %s (%s): taken over by %s%s", conn->client_id, conn->peer, by,
            resumed ? ", session resumed" : "");
    fe_conn_close(conn, LK_RC_SESSION_TAKEN_OVER, false, NULL);
}

void fe_takeover(fe_server_t *srv, lk_peer_t *from, const Lk__Takeover *t)
{
    if (!t->client)
        return;
    const char *by = t->by_node && *t->by_node ? t->by_node : "another node";
    fe_conn_t *c = zhashx_lookup(srv->by_client, t->client);
    bool ours = t->conn && t->epoch == lk_bus_epoch(srv->bus);
    if (c && ours && c->id == t->conn && c->state != FE_CLOSED)
        fe_takeover_close(c, t->resumed, by);
    else if (!c || c->state == FE_CLOSED) {
        /* nobody connected here with that id: a will delayed here goes now when the
           session ended, is dropped when it goes on elsewhere [MQTT-3.1.3-9] */
        bool done = t->resumed ? fe_will_cancel(srv, t->client) : fe_will_fire(srv, t->client);
        if (done)
            lk_info("client %s: delayed will %s, reconnected on %s", t->client,
                    t->resumed ? "cancelled" : "published (session ended)", by);
    }
    if (t->conn) {
        /* after everything that connection sent: the store lets the new one open now */
        Lk__TakeoverDone d = LK__TAKEOVER_DONE__INIT;
        d.client = t->client;
        d.conn = t->conn;
        Lk__Envelope env = LK__ENVELOPE__INIT;
        env.body_case = LK__ENVELOPE__BODY_TAKEOVER_DONE;
        env.takeover_done = &d;
        /* to the replica waiting for it (behind the close, when it owns the client) */
        lk_bus_send(srv->bus, from, &env, true);
    }
}

/* past this many subscriptions a connection indexes them by filter */
#define FE_SUB_INDEX_MIN 16

static void s_sub_index_put(fe_conn_t *conn, size_t i)
{
    if (conn->sub_idx)
        zhashx_update(conn->sub_idx, conn->subs[i].filter, (void *)(uintptr_t)(i + 1));
}

ssize_t fe_sub_find(fe_conn_t *conn, const char *filter)
{
    if (!conn->sub_idx && conn->n_subs >= FE_SUB_INDEX_MIN) {
        conn->sub_idx = zhashx_new();
        /* keys are the subscriptions' own filters */
        zhashx_set_key_duplicator(conn->sub_idx, NULL);
        zhashx_set_key_destructor(conn->sub_idx, NULL);
        for (size_t i = 0; i < conn->n_subs; i++)
            s_sub_index_put(conn, i);
    }
    if (conn->sub_idx) {
        uintptr_t v = (uintptr_t)zhashx_lookup(conn->sub_idx, filter);
        return v ? (ssize_t)v - 1 : -1;
    }
    for (size_t i = 0; i < conn->n_subs; i++)
        if (strcmp(conn->subs[i].filter, filter) == 0)
            return (ssize_t)i;
    return -1;
}

void fe_sub_remove_at(fe_conn_t *conn, size_t i)
{
    if (conn->sub_idx)
        zhashx_delete(conn->sub_idx, conn->subs[i].filter);
    free(conn->subs[i].filter);
    conn->subs[i] = conn->subs[--conn->n_subs];
    if (i < conn->n_subs)
        s_sub_index_put(conn, i);
}

void fe_sub_changed(fe_conn_t *conn, const char *filter)
{
    if (conn->n_sub_changes == conn->cap_sub_changes) {
        conn->cap_sub_changes = conn->cap_sub_changes ? conn->cap_sub_changes * 2 : 8;
        conn->sub_changes =
            lk_realloc(conn->sub_changes, conn->cap_sub_changes * sizeof(char *));
    }
    conn->sub_changes[conn->n_sub_changes++] = lk_strdup(filter);
    fe_store_ack_add(conn, 0);
}

void fe_subs_free(fe_conn_t *conn)
{
    zhashx_destroy(&conn->sub_idx);
    for (size_t i = 0; i < conn->n_subs; i++)
        free(conn->subs[i].filter);
    free(conn->subs);
    conn->subs = NULL;
    conn->n_subs = conn->cap_subs = 0;
    for (size_t i = 0; i < conn->n_sub_changes; i++)
        free(conn->sub_changes[i]);
    free(conn->sub_changes);
    conn->sub_changes = NULL;
    conn->n_sub_changes = conn->cap_sub_changes = 0;
}

void fe_sub_set(fe_conn_t *conn, const char *filter, uint8_t qos, bool nl, bool rap, uint8_t rh,
                uint32_t sub_id, bool *is_new)
{
    ssize_t at = fe_sub_find(conn, filter);
    if (at >= 0) {
        fe_sub_t *s = &conn->subs[at];
        s->qos = qos;
        s->no_local = nl;
        s->rap = rap;
        s->rh = rh;
        s->sub_id = sub_id;
        *is_new = false;
        return;
    }
    if (conn->n_subs == conn->cap_subs) {
        conn->cap_subs = conn->cap_subs ? conn->cap_subs * 2 : 4;
        conn->subs = lk_realloc(conn->subs, conn->cap_subs * sizeof(fe_sub_t));
    }
    fe_sub_t *s = &conn->subs[conn->n_subs++];
    s->filter = lk_strdup(filter);
    s_sub_index_put(conn, conn->n_subs - 1);
    s->qos = qos;
    s->no_local = nl;
    s->rap = rap;
    s->rh = rh;
    s->sub_id = sub_id;
    *is_new = true;
}

void fe_sub_to_proto(const fe_sub_t *fs, Lk__Subscription *s)
{
    lk__subscription__init(s);
    s->filter = fs->filter;
    s->qos = fs->qos;
    s->no_local = fs->no_local;
    s->retain_as_published = fs->rap;
    s->retain_handling = fs->rh;
    s->sub_id = fs->sub_id;
}

void fe_conn_subs_to_proto(fe_conn_t *conn, Lk__Subscription **ptrs, Lk__Subscription *store)
{
    for (size_t i = 0; i < conn->n_subs; i++) {
        fe_sub_to_proto(&conn->subs[i], &store[i]);
        ptrs[i] = &store[i];
    }
}

static void s_qos2_in_add(fe_conn_t *conn, uint16_t pid);
static bool s_qos2_in_has(fe_conn_t *conn, uint16_t pid);

void fe_handle_session_opened(fe_server_t *srv, Lk__SessionOpened *r)
{
    fe_conn_t *conn = s_conn_of_req(srv, r->req);
    if (!conn || (conn->state != FE_SESSION && conn->state != FE_ACTIVE))
        return;
    if (conn->state == FE_ACTIVE) {
        /* a re-open after the session store restarted: only what we do not have yet */
        conn->reopening = false;
        conn->unregistered = false;
        fe_deliver_reopened(conn, r->pending, r->n_pending);
        fe_pump(conn);
        return;
    }
    if (conn->opened)
        return; /* answered twice (a re-sent SessionOpen): the first answer holds */
    fe_session_ready(conn, r);
}

void fe_session_ready(fe_conn_t *conn, Lk__SessionOpened *r)
{
    fe_server_t *srv = conn->srv;
    bool present = r->present && !conn->clean;
    if (present) {
        for (size_t i = 0; i < r->n_subs; i++) {
            Lk__Subscription *s = r->subs[i];
            bool is_new;
            if (s->filter)
                fe_sub_set(conn, s->filter, (uint8_t)s->qos, s->no_local, s->retain_as_published,
                          (uint8_t)s->retain_handling, s->sub_id, &is_new);
        }
        /* QoS 2 exchanges the client started in an earlier connection [MQTT-4.3.3-10] */
        for (size_t i = 0; i < r->n_rx_pids; i++)
            if (!s_qos2_in_has(conn, (uint16_t)r->rx_pids[i]))
                s_qos2_in_add(conn, (uint16_t)r->rx_pids[i]);
    }
    conn->opened_len = lk__session_opened__get_packed_size(r);
    conn->opened = lk_malloc(conn->opened_len ? conn->opened_len : 1);
    lk__session_opened__pack(r, conn->opened);
    /* the router learns of this connection only now, in the order the session store chose
       among racing connections; a resumed session's subscriptions come with it (the router
       may have lost them in a restart: re-adding is harmless) */
    Lk__Subscription store[conn->n_subs ? conn->n_subs : 1];
    Lk__Subscription *ptrs[conn->n_subs ? conn->n_subs : 1];
    fe_conn_subs_to_proto(conn, ptrs, store);
    Lk__Attach a = LK__ATTACH__INIT;
    a.client = conn->client_id;
    a.persistent = conn->expiry > 0;
    a.clean = !present;
    a.n_subs = conn->n_subs;
    a.subs = ptrs;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_ATTACH;
    env.attach = &a;
    conn->attach_sent = true;
    /* CONNACK once every live router acked; no router within request_timeout_ms: CONNACK
       0x88 (3.x: 3) from the cron. Never a CONNACK that leaves publishes hanging. */
    fe_wait_item_t it = {FE_WAIT_ATTACH, conn->fd, conn->id, 0, NULL, 0, NULL};
    if (!fe_routers_send_all(srv, &env, &it))
        fe_conn_refuse(conn, LK_RC_SERVER_UNAVAILABLE, "attach could not be sent");
}

static void s_connack(fe_conn_t *conn, Lk__SessionOpened *r)
{
    fe_server_t *srv = conn->srv;
    bool present = r->present && !conn->clean;
    lk_mqtt_packet_t p = {0};
    p.type = LK_MQTT_CONNACK;
    p.u.connack.session_present = present;
    p.u.connack.code = 0;
    if (conn->version == LK_MQTT_V5) {
        if (conn->assigned_id) {
            LK_PROP_SET(&p.props, LK_PROP_ASSIGNED_CLIENT_ID);
            p.props.assigned_client_id.p = conn->client_id;
            p.props.assigned_client_id.len = (uint32_t)strlen(conn->client_id);
        }
        if (srv->max_topic_alias) {
            LK_PROP_SET(&p.props, LK_PROP_TOPIC_ALIAS_MAXIMUM);
            p.props.topic_alias_maximum = srv->max_topic_alias;
        }
        if (srv->receive_maximum < 65535) {
            LK_PROP_SET(&p.props, LK_PROP_RECEIVE_MAXIMUM);
            p.props.receive_maximum = srv->receive_maximum;
        }
        if (conn->keepalive > srv->max_keepalive || (conn->keepalive == 0 && srv->max_keepalive < 65535)) {
            conn->keepalive = srv->max_keepalive;
            LK_PROP_SET(&p.props, LK_PROP_SERVER_KEEP_ALIVE);
            p.props.server_keep_alive = srv->max_keepalive;
        }
        if (srv->max_packet < 268435455) {
            LK_PROP_SET(&p.props, LK_PROP_MAXIMUM_PACKET_SIZE);
            p.props.maximum_packet_size = srv->max_packet;
        }
    }
    fe_conn_send(conn, &p);
    conn->state = FE_ACTIVE;
    conn->alias_in_max = srv->max_topic_alias;
    if (conn->alias_in_max)
        conn->alias_in = lk_calloc(conn->alias_in_max + 1u, sizeof(char *));
    lk_info("client %s (%s) connected, v%d, %s session%s%s", conn->client_id, conn->peer,
            conn->version, conn->expiry ? "persistent" : "clean", present ? " resumed" : "",
            conn->unregistered ? " (session store unavailable)" : "");
    /* what arrived while the router acked the Attach is newer than the pending list: it
       goes behind it */
    fe_queued_t *early = conn->q_head, *early_tail = conn->q_tail;
    size_t early_n = conn->n_queued, early_bytes = conn->queued_bytes;
    conn->q_head = conn->q_tail = NULL;
    conn->n_queued = conn->queued_bytes = 0;
    /* QoS 2 copies owed only a PUBREL first: they keep their packet ids, so those must be
       taken before new deliveries pick ids */
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < r->n_pending; i++) {
            Lk__Deliver *d = r->pending[i];
            if ((pass == 0) == (d->released_pid != 0)) {
                fe_store_id_seen(conn, conn->store_peer, d->store_id);
                fe_deliver_to(conn, d, true);
            }
        }
    if (early) {
        if (conn->q_tail)
            conn->q_tail->next = early;
        else
            conn->q_head = early;
        conn->q_tail = early_tail;
        conn->n_queued += early_n;
        conn->queued_bytes += early_bytes;
    }
    fe_pump(conn);
    /* the packets the client sent behind its CONNECT, in order, after the CONNACK */
    fe_conn_resume(conn);
}

/* --- PUBLISH and its acks --------------------------------------------------------- */

void fe_attach_acked(fe_conn_t *conn)
{
    if (conn->state != FE_SESSION || !conn->opened)
        return;
    Lk__SessionOpened *r = lk__session_opened__unpack(NULL, conn->opened_len, conn->opened);
    free(conn->opened);
    conn->opened = NULL;
    if (r) {
        s_connack(conn, r);
        lk__session_opened__free_unpacked(r, NULL);
    } else
        fe_conn_refuse(conn, LK_RC_SERVER_UNAVAILABLE, "session answer unreadable");
}

static bool s_qos2_in_has(fe_conn_t *conn, uint16_t pid)
{
    for (size_t i = 0; i < conn->n_qos2_in; i++)
        if (conn->qos2_in[i] == pid)
            return true;
    return false;
}

static void s_qos2_in_add(fe_conn_t *conn, uint16_t pid)
{
    if (conn->n_qos2_in == conn->cap_qos2_in) {
        conn->cap_qos2_in = conn->cap_qos2_in ? conn->cap_qos2_in * 2 : 8;
        conn->qos2_in = lk_realloc(conn->qos2_in, conn->cap_qos2_in * sizeof(uint16_t));
    }
    conn->qos2_in[conn->n_qos2_in++] = pid;
}

static bool s_qos2_in_del(fe_conn_t *conn, uint16_t pid)
{
    for (size_t i = 0; i < conn->n_qos2_in; i++)
        if (conn->qos2_in[i] == pid) {
            conn->qos2_in[i] = conn->qos2_in[--conn->n_qos2_in];
            return true;
        }
    return false;
}

static void s_ack(fe_conn_t *conn, uint8_t type, uint16_t pid, uint8_t reason)
{
    lk_mqtt_packet_t p = {0};
    p.type = type;
    p.u.ack.packet_id = pid;
    p.u.ack.reason = reason;
    fe_conn_send(conn, &p);
}

static bool s_allowed(fe_conn_t *conn, const char *topic_or_filter, uint32_t access, bool filter)
{
    if (conn->superuser)
        return true;
    return filter ? lk_acl_filter_allowed(conn->acl, conn->n_acl, topic_or_filter, access)
                  : lk_acl_topic_allowed(conn->acl, conn->n_acl, topic_or_filter, access);
}

static int s_publish(fe_conn_t *conn, lk_mqtt_packet_t *pkt)
{
    fe_server_t *srv = conn->srv;
    lk_mqtt_publish_t *p = &pkt->u.publish;
    srv->msgs_in++;
    conn->recv_msg++;
    srv->msgs_in_qos[p->qos > 2 ? 2 : p->qos]++;
    srv->bytes_in_qos[p->qos > 2 ? 2 : p->qos] += p->topic.len + p->payload.len;
    /* topic alias (MQTT 5 3.3.2.3.4) */
    char *topic = NULL;
    if (conn->version == LK_MQTT_V5 && LK_PROP_HAS(&pkt->props, LK_PROP_TOPIC_ALIAS)) {
        uint16_t a = pkt->props.topic_alias;
        if (a == 0 || a > conn->alias_in_max) {
            fe_conn_close(conn, LK_RC_TOPIC_ALIAS_INVALID, true, "topic alias out of range");
            return -1;
        }
        if (p->topic.len) {
            free(conn->alias_in[a]);
            conn->alias_in[a] = s_dup(p->topic);
        } else if (!conn->alias_in[a]) {
            fe_conn_close(conn, LK_RC_PROTOCOL_ERROR, true, "unknown topic alias");
            return -1;
        }
        topic = lk_strdup(conn->alias_in[a]);
    } else {
        if (p->topic.len == 0) {
            fe_conn_close(conn, LK_RC_PROTOCOL_ERROR, true, "empty topic");
            return -1;
        }
        topic = s_dup(p->topic);
    }
    if (p->qos == 2 && s_qos2_in_has(conn, p->packet_id)) {
        /* a re-sent QoS 2 PUBLISH already forwarded: only answer again [MQTT-4.3.3-10] */
        s_ack(conn, LK_MQTT_PUBREC, p->packet_id, 0);
        free(topic);
        return 0;
    }
    if (p->qos > 0 && conn->version == LK_MQTT_V5 &&
        conn->n_qos1_in + conn->n_qos2_in >= srv->receive_maximum) {
        /* [MQTT-3.3.4-9] more unacknowledged QoS > 0 publishes than we allowed */
        free(topic);
        fe_conn_close(conn, LK_RC_RECEIVE_MAX_EXCEEDED, true, "receive maximum exceeded");
        return -1;
    }
    int lr = fe_limits_publish(conn, topic, p->qos, p->packet_id, p->payload.len);
    if (lr != 0) {
        free(topic);
        return lr < 0 ? -1 : 0;
    }
    if (!s_allowed(conn, topic, LK_ACL_PUB, false)) {
        lk_info("client %s: publish to '%s' denied", conn->client_id, topic);
        /* 3.x has no refusal code: acknowledge and drop, as Mosquitto does */
        uint8_t rc = conn->version == LK_MQTT_V5 ? LK_RC_NOT_AUTHORIZED : 0;
        if (p->qos == 1)
            s_ack(conn, LK_MQTT_PUBACK, p->packet_id, rc);
        else if (p->qos == 2) {
            if (rc == 0)
                s_qos2_in_add(conn, p->packet_id);
            s_ack(conn, LK_MQTT_PUBREC, p->packet_id, rc);
        }
        free(topic);
        return 0;
    }
    topic = fe_mount_in(conn, topic);
    Lk__Msg m = LK__MSG__INIT;
    lk_str_t t = {topic, (uint32_t)strlen(topic)};
    s_msg_fill(conn, &m, t, p->payload, p->qos, p->retain, &pkt->props);
    if (fe_route_publish(srv, &m, false)) {
        free(topic);
        return 0;
    }
    Lk__Publish pub = LK__PUBLISH__INIT;
    pub.msg = &m;
    if (p->qos == 0) {
        fe_router_publish(srv, &pub, false, NULL);
        free(topic);
        return 0;
    }
    if (p->qos == 2)
        s_qos2_in_add(conn, p->packet_id);
    else
        conn->n_qos1_in++;
    conn->n_rt_wait++;
    fe_wait_item_t it = {p->qos == 1 ? FE_WAIT_PUBACK : FE_WAIT_PUBREC, conn->fd, conn->id,
                         p->packet_id, NULL, 0, NULL};
    fe_router_publish(srv, &pub, true, &it);
    free(topic);
    return 0;
}

static int s_pubrel(fe_conn_t *conn, lk_mqtt_packet_t *pkt)
{
    uint16_t pid = pkt->u.ack.packet_id;
    bool found = s_qos2_in_del(conn, pid);
    /* PUBCOMP once the session store forgot the id: the client may reuse it at once,
       on any frontend */
    if (found && fe_store_rx(conn, pid, false))
        return 0;
    s_ack(conn, LK_MQTT_PUBCOMP, pid,
          (found || conn->version != LK_MQTT_V5) ? 0 : LK_RC_PACKET_ID_NOT_FOUND);
    return 0;
}

/* --- SUBSCRIBE / UNSUBSCRIBE ------------------------------------------------------ */

static int s_subscribe(fe_conn_t *conn, lk_mqtt_packet_t *pkt)
{
    lk_mqtt_subscribe_t *s = &pkt->u.subscribe;
    uint32_t sub_id = 0;
    if (pkt->props.sub_id_count)
        sub_id = pkt->props.sub_ids[0];
    uint8_t *codes = lk_malloc(s->count ? s->count : 1);
    Lk__Subscription *store = lk_calloc(s->count ? s->count : 1, sizeof(Lk__Subscription));
    Lk__Subscription **ptrs = lk_calloc(s->count ? s->count : 1, sizeof(Lk__Subscription *));
    protobuf_c_boolean *is_new = lk_calloc(s->count ? s->count : 1, sizeof(protobuf_c_boolean));
    char **filters = lk_calloc(s->count ? s->count : 1, sizeof(char *));
    size_t n = 0;
    for (uint32_t i = 0; i < s->count; i++) {
        lk_mqtt_sub_entry_t *e = &s->entries[i];
        char *f = s_dup(e->topic_filter);
        if (!lk_mqtt_filter_valid(f, e->topic_filter.len, true)) {
            codes[i] = conn->version == LK_MQTT_V5 ? LK_RC_TOPIC_FILTER_INVALID : 0x80;
            free(f);
            continue;
        }
        uint8_t lr = fe_limits_subscribe(conn, f);
        if (lr) {
            codes[i] = lr;
            free(f);
            continue;
        }
        if (!s_allowed(conn, f, LK_ACL_SUB, true)) {
            lk_info("client %s: subscription to '%s' denied", conn->client_id, f);
            /* 0x80 in both versions: MQTT 5 allows any failure code here, and clients
               and the interoperability suites expect the 3.1.1 one */
            codes[i] = 0x80;
            free(f);
            continue;
        }
        bool shared = strncmp(f, "$share/", 7) == 0;
        if (shared && e->no_local && conn->version == LK_MQTT_V5) {
            /* [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error */
            free(f);
            for (size_t k = 0; k < n; k++)
                free(filters[k]);
            free(codes);
            free(store);
            free(ptrs);
            free(is_new);
            free(filters);
            fe_conn_close(conn, LK_RC_PROTOCOL_ERROR, true, "No Local on a shared subscription");
            return -1;
        }
        f = fe_mount_in(conn, f);
        uint8_t q = e->qos > 2 ? 2 : e->qos;
        codes[i] = q;
        bool fresh;
        fe_sub_set(conn, f, q, e->no_local, e->retain_as_published, e->retain_handling, sub_id,
                  &fresh);
        fe_sub_changed(conn, f);
        Lk__Subscription *ls = &store[n];
        lk__subscription__init(ls);
        ls->filter = f;
        ls->qos = q;
        ls->no_local = e->no_local;
        ls->retain_as_published = e->retain_as_published;
        ls->retain_handling = e->retain_handling;
        ls->sub_id = sub_id;
        ptrs[n] = ls;
        is_new[n] = fresh;
        filters[n] = f;
        n++;
    }
    fe_wait_item_t it = {FE_WAIT_SUBACK, conn->fd, conn->id, s->packet_id, codes, s->count};
    if (n) {
        fe_router_subscribe(conn, ptrs, is_new, n, &it);
    } else {
        lk_mqtt_packet_t p = {0};
        p.type = LK_MQTT_SUBACK;
        p.u.suback.packet_id = s->packet_id;
        p.u.suback.codes = codes;
        p.u.suback.count = s->count;
        fe_conn_send(conn, &p);
        free(codes);
    }
    for (size_t k = 0; k < n; k++)
        free(filters[k]);
    free(filters);
    free(store);
    free(ptrs);
    free(is_new);
    return 0;
}

static int s_unsubscribe(fe_conn_t *conn, lk_mqtt_packet_t *pkt)
{
    lk_mqtt_unsubscribe_t *u = &pkt->u.unsubscribe;
    uint8_t *codes = lk_malloc(u->count ? u->count : 1);
    char **filters = lk_calloc(u->count ? u->count : 1, sizeof(char *));
    for (uint32_t i = 0; i < u->count; i++) {
        filters[i] = fe_mount_in(conn, s_dup(u->filters[i]));
        codes[i] = LK_RC_NO_SUBSCRIPTION_EXISTED;
        if (!lk_mqtt_filter_valid(filters[i], u->filters[i].len, true)) {
            /* no subscription can have it: "Topic Filter invalid" (MQTT 5 3.11.3) */
            codes[i] = LK_RC_TOPIC_FILTER_INVALID;
            continue;
        }
        ssize_t k = fe_sub_find(conn, filters[i]);
        if (k >= 0) {
            fe_sub_remove_at(conn, (size_t)k);
            fe_sub_changed(conn, filters[i]);
            codes[i] = LK_RC_SUCCESS;
        }
    }
    fe_wait_item_t it = {FE_WAIT_UNSUBACK, conn->fd, conn->id, u->packet_id, codes, u->count,
                         NULL};
    fe_router_unsubscribe(conn, filters, u->count, &it);
    for (uint32_t i = 0; i < u->count; i++)
        free(filters[i]);
    free(filters);
    return 0;
}

/* --- dispatcher ------------------------------------------------------------------- */

int fe_handle_packet(fe_conn_t *conn, lk_mqtt_packet_t *pkt)
{
    if (pkt->type == LK_MQTT_CONNECT)
        return s_connect(conn, pkt);
    if (conn->state != FE_ACTIVE) {
        /* cannot happen: fe_conn reads nothing past a CONNECT until it is accepted */
        fe_conn_close(conn, LK_RC_PROTOCOL_ERROR, false, "packet handled before CONNACK");
        return -1;
    }
    switch (pkt->type) {
    case LK_MQTT_PUBLISH:
        return s_publish(conn, pkt);
    case LK_MQTT_PUBACK:
    case LK_MQTT_PUBREC:
    case LK_MQTT_PUBCOMP:
        return fe_outbound_ack(conn, pkt->type, pkt->u.ack.packet_id,
                               conn->version == LK_MQTT_V5 ? pkt->u.ack.reason : 0);
    case LK_MQTT_PUBREL:
        return s_pubrel(conn, pkt);
    case LK_MQTT_SUBSCRIBE:
        return s_subscribe(conn, pkt);
    case LK_MQTT_UNSUBSCRIBE:
        return s_unsubscribe(conn, pkt);
    case LK_MQTT_PINGREQ: {
        lk_mqtt_packet_t p = {0};
        p.type = LK_MQTT_PINGRESP;
        fe_conn_send(conn, &p);
        return 0;
    }
    case LK_MQTT_DISCONNECT: {
        uint8_t reason = pkt->u.reason.reason;
        if (conn->version == LK_MQTT_V5 && LK_PROP_HAS(&pkt->props, LK_PROP_SESSION_EXPIRY)) {
            if (conn->expiry == 0 && pkt->props.session_expiry != 0) {
                /* [MQTT-3.14.2-2]; a close for a protocol error sends the will
                   [MQTT-3.1.2-8] */
                fe_conn_close(conn, LK_RC_PROTOCOL_ERROR, true,
                              "session expiry set at DISCONNECT after CONNECT had none");
                return -1;
            }
            conn->expiry = pkt->props.session_expiry;
        }
        fe_conn_close(conn, 0, reason == LK_RC_DISCONNECT_WITH_WILL, "DISCONNECT");
        return -1;
    }
    case LK_MQTT_AUTH:
        fe_conn_close(conn, LK_RC_PROTOCOL_ERROR, true, "AUTH without an authentication method");
        return -1;
    default:
        fe_conn_close(conn, LK_RC_PROTOCOL_ERROR, true, "unexpected packet type");
        return -1;
    }
}
