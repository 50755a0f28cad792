/*  fe_deliver: messages on their way to a client — the inflight window (Receive Maximum,
    max_inflight_messages), the queue behind it, QoS 1 and 2 outbound state, and the acks
    that let the session store forget a stored copy.

    A stored copy (store_id > 0) is acked to the session store when the client has it:
    PUBACK for QoS 1, PUBREC for QoS 2. Until then a frontend crash leaves it in Redis and
    the client gets it again on reconnect. */
#include "fe_internal.h"

/* output bytes waiting for a slow consumer past which its QoS 0 messages are shed */
#define FE_SHED_QOS0_BYTES (1u << 20)

void fe_dropped(fe_conn_t *conn, const Lk__Msg *m, const char *why)
{
    fe_server_t *srv = conn->srv;
    srv->dropped++;
    srv->drop_unlogged++;
    int64_t now = lk_loop_now(srv->loop);
    if (srv->drop_logged_ms && now - srv->drop_logged_ms < 10000)
        return;
    lk_warn("client %s: QoS %u message on '%s' dropped: %s (%" PRIu64 " dropped since the "
            "last such line, %" PRIu64 " in all)",
            conn->client_id ? conn->client_id : "-", m ? m->qos : 0,
            m && m->topic ? m->topic : "", why, srv->drop_unlogged, srv->dropped);
    srv->drop_logged_ms = now;
    srv->drop_unlogged = 0;
}

static bool s_pid_busy(fe_conn_t *conn, uint16_t pid)
{
    for (size_t i = 0; i < conn->n_inflight; i++)
        if (conn->inflight[i].pid == pid)
            return true;
    return false;
}

static uint16_t s_next_pid(fe_conn_t *conn)
{
    for (;;) {
        uint16_t pid = conn->next_pid++;
        if (conn->next_pid == 0)
            conn->next_pid = 1;
        if (pid && !s_pid_busy(conn, pid))
            return pid;
    }
}

bool fe_holds(fe_conn_t *conn, uint64_t store_id)
{
    for (size_t i = 0; i < conn->n_inflight; i++)
        if (conn->inflight[i].store_id == store_id)
            return true;
    for (fe_queued_t *q = conn->q_head; q; q = q->next)
        if (q->store_id == store_id)
            return true;
    return false;
}

void fe_store_release_add(fe_conn_t *conn, uint64_t store_id, uint16_t pid)
{
    if (conn->n_rel == conn->cap_rel) {
        conn->cap_rel = conn->cap_rel ? conn->cap_rel * 2 : 8;
        conn->rel_ids = lk_realloc(conn->rel_ids, conn->cap_rel * sizeof(uint64_t));
        conn->rel_pids = lk_realloc(conn->rel_pids, conn->cap_rel * sizeof(uint32_t));
    }
    conn->rel_ids[conn->n_rel] = store_id;
    conn->rel_pids[conn->n_rel++] = pid;
    fe_store_ack_add(conn, 0);
}

void fe_store_ack_add(fe_conn_t *conn, uint64_t store_id)
{
    if (store_id) {
        if (conn->n_acked_ids == conn->cap_acked_ids) {
            conn->cap_acked_ids = conn->cap_acked_ids ? conn->cap_acked_ids * 2 : 16;
            conn->acked_ids =
                lk_realloc(conn->acked_ids, conn->cap_acked_ids * sizeof(uint64_t));
        }
        conn->acked_ids[conn->n_acked_ids++] = store_id;
    }
    if (!conn->on_ack_list) {
        conn->on_ack_list = true;
        conn->next_ackd = conn->srv->ackd;
        conn->srv->ackd = conn;
    }
}

/* Outbound topic aliases (MQTT 5 3.3.2.3.4): a topic seen before travels as its alias
   with an empty topic; new topics take free aliases until the client's Topic Alias
   Maximum (capped, to bound memory) is used up, then go without one. */
#define FE_ALIAS_CAP 64

static void s_topic_alias(fe_conn_t *conn, lk_mqtt_packet_t *p)
{
    uint16_t max = conn->client_alias_max < FE_ALIAS_CAP ? conn->client_alias_max : FE_ALIAS_CAP;
    if (!max)
        return;
    lk_str_t *t = &p->u.publish.topic;
    for (uint16_t i = 0; i < conn->n_alias_out; i++) {
        if (strlen(conn->alias_out[i]) == t->len && memcmp(conn->alias_out[i], t->p, t->len) == 0) {
            LK_PROP_SET(&p->props, LK_PROP_TOPIC_ALIAS);
            p->props.topic_alias = (uint16_t)(i + 1);
            t->len = 0;
            return;
        }
    }
    if (conn->n_alias_out >= max)
        return;
    if (!conn->alias_out)
        conn->alias_out = lk_calloc(max, sizeof(char *));
    conn->alias_out[conn->n_alias_out++] = lk_strndup(t->p, t->len);
    LK_PROP_SET(&p->props, LK_PROP_TOPIC_ALIAS);
    p->props.topic_alias = conn->n_alias_out;
}

static void s_released_again(fe_conn_t *conn, const Lk__Deliver *d)
{
    uint16_t pid = (uint16_t)d->released_pid;
    if (s_pid_busy(conn, pid))
        return;     /* already re-sent on this connection */
    if (conn->n_inflight == conn->cap_inflight) {
        conn->cap_inflight = conn->cap_inflight ? conn->cap_inflight * 2 : 8;
        conn->inflight = lk_realloc(conn->inflight, conn->cap_inflight * sizeof(fe_inflight_t));
    }
    fe_inflight_t *f = &conn->inflight[conn->n_inflight++];
    memset(f, 0, sizeof(*f));
    f->pid = pid;
    f->qos = 2;
    f->released = true;
    f->store_id = d->store_id;
    lk_mqtt_packet_t p = {0};
    p.type = LK_MQTT_PUBREL;
    p.u.ack.packet_id = pid;
    fe_conn_send(conn, &p);
}

/* encodes the PUBLISH into the output; false when it cannot go to this client */
static bool s_send_publish(fe_conn_t *conn, const Lk__Deliver *d, uint16_t pid, bool dup)
{
    fe_server_t *srv = conn->srv;
    const Lk__Msg *m = d->msg;
    lk_mqtt_packet_t p = {0};
    p.type = LK_MQTT_PUBLISH;
    p.u.publish.topic.p = fe_mount_out(conn, m->topic);
    p.u.publish.topic.len = (uint32_t)strlen(p.u.publish.topic.p);
    p.u.publish.payload.p = (const char *)m->payload.data;
    p.u.publish.payload.len = (uint32_t)m->payload.len;
    p.u.publish.qos = (uint8_t)m->qos;
    p.u.publish.retain = m->retain;
    p.u.publish.dup = (dup || m->dup) && m->qos > 0;
    p.u.publish.packet_id = pid;
    bool props_decoded = false;
    if (conn->version == LK_MQTT_V5) {
        if (m->props.len) {
            if (lk_mqtt_props_decode(m->props.data, m->props.len, LK_MQTT_PUBLISH, &p.props) == 0)
                props_decoded = true;
            else
                memset(&p.props, 0, sizeof(p.props));
        }
        if (m->expiry_at_ms) {
            int64_t left = ((int64_t)m->expiry_at_ms - lk_wall_ms() + 999) / 1000;
            LK_PROP_SET(&p.props, LK_PROP_MESSAGE_EXPIRY);
            p.props.message_expiry = left > 0 ? (uint32_t)left : 1;
        }
        if (d->n_sub_ids) {
            LK_PROP_SET(&p.props, LK_PROP_SUBSCRIPTION_ID);
            p.props.sub_ids = d->sub_ids;
            p.props.sub_id_count = (uint32_t)d->n_sub_ids;
        }
        s_topic_alias(conn, &p);
    }
    fe_conn_out_prepare(conn);
    size_t before = conn->out.len;
    int rc = lk_mqtt_encode(&conn->out, conn->version, &p);
    if (props_decoded) {
        p.props.sub_ids = NULL;
        p.props.sub_id_count = 0;
        lk_mqtt_props_free(&p.props);
    }
    if (rc != 0)
        return false;
    if (conn->client_max_packet && conn->out.len - before > conn->client_max_packet) {
        /* [MQTT-3.1.2-25] too large for this client: dropped for it alone */
        conn->out.len = before;
        fe_dropped(conn, m, "larger than the client's Maximum Packet Size");
        return false;
    }
    srv->msgs_out++;
    conn->sent_msg++;
    srv->msgs_out_qos[m->qos > 2 ? 2 : m->qos]++;
    srv->bytes_out_qos[m->qos > 2 ? 2 : m->qos] += conn->out.len - before;
    fe_conn_mark_dirty(conn);
    return true;
}

static void s_send_now(fe_conn_t *conn, const Lk__Deliver *d, bool dup)
{
    if (d->msg->qos == 0) {
        s_send_publish(conn, d, 0, false);
        return;
    }
    /* A stored copy's packet id follows from its store id, so one sent again on a later
       connection (a reconnect, this frontend's crash) carries its original id
       [MQTT-4.4.0-1], and a new copy does not take an id the client still holds for an
       unfinished QoS 2 flow (unless 65535 copies apart: then the next free one). */
    uint16_t pid = 0;
    if (d->store_id) {
        pid = (uint16_t)(1 + (d->store_id - 1) % 65535);
        if (s_pid_busy(conn, pid))
            pid = 0;
    }
    if (!pid)
        pid = s_next_pid(conn);
    if (!s_send_publish(conn, d, pid, dup)) {
        if (d->store_id)
            fe_store_ack_add(conn, d->store_id);
        return;
    }
    if (conn->n_inflight == conn->cap_inflight) {
        conn->cap_inflight = conn->cap_inflight ? conn->cap_inflight * 2 : 8;
        conn->inflight = lk_realloc(conn->inflight, conn->cap_inflight * sizeof(fe_inflight_t));
    }
    fe_inflight_t *f = &conn->inflight[conn->n_inflight++];
    f->pid = pid;
    f->qos = (uint8_t)d->msg->qos;
    f->released = false;
    f->store_id = d->store_id;
    f->shared = NULL;
    f->shared_len = 0;
    if (d->share && *d->share && !d->store_id) {
        f->shared_len = lk__deliver__get_packed_size(d);
        f->shared = lk_malloc(f->shared_len);
        lk__deliver__pack(d, f->shared);
    }
}

/* d packed at the end of the list head .. tail */
static fe_queued_t *s_queued_append(fe_queued_t **head, fe_queued_t **tail, const Lk__Deliver *d)
{
    fe_queued_t *q = lk_calloc(1, sizeof(*q));
    q->len = lk__deliver__get_packed_size(d);
    q->data = lk_malloc(q->len ? q->len : 1);
    lk__deliver__pack(d, q->data);
    q->store_id = d->store_id;
    if (*tail)
        (*tail)->next = q;
    else
        *head = q;
    *tail = q;
    return q;
}

static void s_enqueue(fe_conn_t *conn, const Lk__Deliver *d, bool dup)
{
    fe_server_t *srv = conn->srv;
    size_t size = lk__deliver__get_packed_size(d);
    /* stored copies are bounded by the session store's own queue: dropping one here
       would strand it until the client reconnects */
    if (!d->store_id && (conn->n_queued >= srv->max_queued ||
                         (srv->max_queued_bytes &&
                          conn->queued_bytes + size > srv->max_queued_bytes))) {
        /* the session store keeps stored copies; the rest is refused here, as Mosquitto
           does past max_queued_messages */
        fe_dropped(conn, d->msg, conn->n_queued >= srv->max_queued
                                     ? "the client's queue is full (max_queued_messages)"
                                     : "the client's queue is full (max_queued_bytes)");
        return;
    }
    Lk__Deliver copy = *d;
    copy.dup = dup;
    conn->queued_bytes += s_queued_append(&conn->q_head, &conn->q_tail, &copy)->len;
    conn->n_queued++;
}

/* true when id was handed to this connection before; else remembers it */
static bool s_once_seen(fe_conn_t *conn, const char *id)
{
    for (int i = 0; i < FE_ONCE_IDS; i++)
        if (conn->once_ids[i] && strcmp(conn->once_ids[i], id) == 0)
            return true;
    free(conn->once_ids[conn->once_next]);
    conn->once_ids[conn->once_next] = lk_strdup(id);
    conn->once_next = (uint8_t)((conn->once_next + 1) % FE_ONCE_IDS);
    return false;
}

void fe_deliver_to(fe_conn_t *conn, const Lk__Deliver *d, bool dup)
{
    if (!d->msg || !d->msg->topic)
        return;
    if (d->msg->expiry_at_ms && (int64_t)d->msg->expiry_at_ms <= lk_wall_ms()) {
        if (d->store_id)
            fe_store_ack_add(conn, d->store_id);
        return;
    }
    if (conn->acl_check_deliveries &&
        !lk_acl_topic_allowed(conn->acl, conn->n_acl, fe_mount_out(conn, d->msg->topic),
                              LK_ACL_SUB)) {
        /* its subscription overlaps a deny rule, and this topic is the denied part */
        if (d->store_id)
            fe_store_ack_add(conn, d->store_id);
        return;
    }
    if (d->msg->once_id && *d->msg->once_id && s_once_seen(conn, d->msg->once_id)) {
        /* a re-published copy (the lock-arbiter restarted, or the router lost its ack):
           this connection has the message already */
        lk_info("client %s: message %s handed over before, dropped", conn->client_id,
                d->msg->once_id);
        if (d->store_id)
            fe_store_ack_add(conn, d->store_id);
        return;
    }
    if (d->released_pid && d->store_id) {
        /* the client has it (PUBREC'd before the connection broke): owe it PUBREL only */
        s_released_again(conn, d);
        return;
    }
    bool dup_flag = dup && d->dup;
    if (d->msg->qos == 0 && conn->out.len > FE_SHED_QOS0_BYTES) {
        /* a consumer this far behind loses QoS 0 first (counted in $SYS dropped) */
        fe_dropped(conn, d->msg, "slow consumer, more than 1 MiB unsent");
        return;
    }
    if (conn->state == FE_ACTIVE &&
        (d->msg->qos == 0 || (!conn->q_head && conn->n_inflight < conn->max_inflight)))
        s_send_now(conn, d, dup_flag);
    else if (d->msg->qos > 0 || conn->state != FE_ACTIVE)
        s_enqueue(conn, d, dup_flag);
}

static uint64_t *s_max_id(fe_conn_t *conn, lk_peer_t *store)
{
    lk_replicas_t *stores = conn->srv->stores;
    int i = store ? lk_replicas_index(stores, store) : -1;
    if (i <= 0)
        return &conn->max_store_id;
    if (!conn->max_store_ids)
        conn->max_store_ids = lk_calloc((size_t)lk_replicas_count(stores), sizeof(uint64_t));
    return &conn->max_store_ids[i - 1];
}

void fe_store_id_seen(fe_conn_t *conn, lk_peer_t *store, uint64_t store_id)
{
    uint64_t *max = s_max_id(conn, store);
    if (store_id > *max)
        *max = store_id;
}

void fe_deliver(fe_server_t *srv, const Lk__Deliver *d, lk_peer_t *store)
{
    fe_conn_t *conn = zhashx_lookup(srv->by_client, d->client ? d->client : "");
    if (!conn || conn->state == FE_CLOSED || conn->state == FE_AUTH)
        return;
    if (d->store_id) {
        /* stored copies before SessionOpened come with its pending list; those forwarded
           after it (while the router acks the Attach) wait in the queue */
        if (conn->state != FE_ACTIVE && !conn->opened)
            return;
        if (d->late ? fe_holds(conn, d->store_id) : d->store_id <= *s_max_id(conn, store))
            return;
        if (!d->late)
            fe_store_id_seen(conn, store, d->store_id);
        /* the store forwards what it stores while our re-open waits in its queue or on the
           way back: the answer's pending list is older (bounded: past it, order may break) */
        if (conn->reopening && conn->n_ro < srv->max_queued) {
            s_queued_append(&conn->ro_head, &conn->ro_tail, d);
            conn->n_ro++;
            return;
        }
    }
    fe_deliver_to(conn, d, false);
}

void fe_deliver_reopened(fe_conn_t *conn, Lk__Deliver **pending, size_t n)
{
    /* not "newer than max_store_id": a forward of a new copy may have overtaken this
       answer, and older copies the dead store never forwarded must still go out */
    for (size_t i = 0; i < n; i++) {
        fe_store_id_seen(conn, conn->store_peer, pending[i]->store_id);
        if (!fe_holds(conn, pending[i]->store_id))
            fe_deliver_to(conn, pending[i], true);
    }
    fe_queued_t *q = conn->ro_head;
    conn->ro_head = conn->ro_tail = NULL;
    conn->n_ro = 0;
    while (q) {
        fe_queued_t *next = q->next;
        Lk__Deliver *d = lk__deliver__unpack(NULL, q->len, q->data);
        if (d && !fe_holds(conn, d->store_id))
            fe_deliver_to(conn, d, false);
        if (d)
            lk__deliver__free_unpacked(d, NULL);
        free(q->data);
        free(q);
        q = next;
    }
}

void fe_queued_free(fe_queued_t **head_p)
{
    while (*head_p) {
        fe_queued_t *q = *head_p;
        *head_p = q->next;
        free(q->data);
        free(q);
    }
}

void fe_pump(fe_conn_t *conn)
{
    while (conn->state == FE_ACTIVE && conn->q_head && conn->n_inflight < conn->max_inflight) {
        fe_queued_t *q = conn->q_head;
        conn->q_head = q->next;
        if (!conn->q_head)
            conn->q_tail = NULL;
        conn->n_queued--;
        conn->queued_bytes -= q->len;
        Lk__Deliver *d = lk__deliver__unpack(NULL, q->len, q->data);
        if (d) {
            if (d->msg && d->msg->expiry_at_ms && (int64_t)d->msg->expiry_at_ms <= lk_wall_ms()) {
                if (d->store_id)
                    fe_store_ack_add(conn, d->store_id);
            } else if (d->msg && d->msg->topic)
                s_send_now(conn, d, d->dup);
            lk__deliver__free_unpacked(d, NULL);
        }
        free(q->data);
        free(q);
    }
}

static void s_inflight_remove(fe_conn_t *conn, size_t i)
{
    free(conn->inflight[i].shared);
    conn->inflight[i] = conn->inflight[--conn->n_inflight];
}

int fe_outbound_ack(fe_conn_t *conn, uint8_t type, uint16_t pid, uint8_t reason)
{
    size_t i;
    for (i = 0; i < conn->n_inflight; i++)
        if (conn->inflight[i].pid == pid)
            break;
    if (i == conn->n_inflight) {
        if (type == LK_MQTT_PUBREC && reason < 0x80) {
            /* MQTT 5 4.3.3: answer an unknown PUBREC with PUBREL 0x92 */
            lk_mqtt_packet_t p = {0};
            p.type = LK_MQTT_PUBREL;
            p.u.ack.packet_id = pid;
            p.u.ack.reason = conn->version == LK_MQTT_V5 ? LK_RC_PACKET_ID_NOT_FOUND : 0;
            fe_conn_send(conn, &p);
        }
        return 0;
    }
    fe_inflight_t *f = &conn->inflight[i];
    switch (type) {
    case LK_MQTT_PUBACK:
        if (f->qos != 1)
            return 0;
        if (f->store_id)
            fe_store_ack_add(conn, f->store_id);
        s_inflight_remove(conn, i);
        break;
    case LK_MQTT_PUBREC: {
        if (f->qos != 2)
            return 0;
        if (reason >= 0x80 && !f->released) {
            /* the client refused it: the exchange ends here, no PUBREL, the packet id
               is free again (MQTT 5 4.3.3); a stored copy is done with */
            if (f->store_id)
                fe_store_ack_add(conn, f->store_id);
            s_inflight_remove(conn, i);
            break;
        }
        if (f->store_id && !f->released)
            fe_store_release_add(conn, f->store_id, pid);
        f->released = true;
        lk_mqtt_packet_t p = {0};
        p.type = LK_MQTT_PUBREL;
        p.u.ack.packet_id = pid;
        fe_conn_send(conn, &p);
        return 0;
    }
    case LK_MQTT_PUBCOMP:
        if (f->qos != 2)
            return 0;
        if (f->store_id)
            fe_store_ack_add(conn, f->store_id);
        s_inflight_remove(conn, i);
        break;
    default:
        return 0;
    }
    fe_pump(conn);
    return 0;
}
