/*  ar_history: the arbiter's history outbox — events on their way to the history writer.

    Every event is first written to lk:{arb}:outbox (id → "kind\x1flock\x1factor\x1fms\x1f
    details-json"), inside the same Lua script as the decision it records, so a decision
    and its event exist together or not at all. It is then sent as a HistoryEvent in a
    reliable HistoryBatch to the peer "history-writer"; once that batch is acked (stored in
    PostgreSQL or the writer's spool) the entry is deleted. Entries left by a crash are sent
    again at the next start; the event id makes the writer's insert idempotent, so an event
    reaches PostgreSQL exactly once. */
#include "ar_internal.h"

int ar_outbox_split(char *v, char *f[5])
{
    for (int i = 0; i < 5; i++) {
        f[i] = v;
        if (i < 4) {
            char *sep = strchr(v, '\x1f');
            if (!sep)
                return -1;
            *sep = 0;
            v = sep + 1;
        }
    }
    return 0;
}

/* seqs are per peer: the wait key carries the replica's index in its top byte */
static uint64_t s_key(self_t *self, lk_peer_t *peer, uint64_t seq)
{
    return (uint64_t)lk_replicas_index(self->history, peer) << 56 | seq;
}

static void s_send_one(self_t *self, const char *id, const char *value)
{
    if (!self->history) {
        if (!self->outbox_warned)
            lk_warn("history_endpoint is not configured: events stay in lk:{arb}:outbox");
        self->outbox_warned = true;
        return;
    }
    if (zhashx_lookup(self->hist_sent, id))
        return;
    char *copy = lk_strdup(value), *f[5];
    if (ar_outbox_split(copy, f) != 0) {
        lk_warn("outbox entry %s is malformed: dropped", id);
        lk_redis_reply_t *r = lk_redis_cmd(self->redis, "HDEL lk:{arb}:outbox %s", id);
        lk_redis_reply_free(&r);
        free(copy);
        return;
    }
    Lk__HistoryEvent ev = LK__HISTORY_EVENT__INIT;
    ev.id = (char *)id;
    ev.kind = f[0];
    ev.lock = f[1];
    ev.actor = f[2];
    ev.time_ms = strtoull(f[3], NULL, 10);
    ev.details = f[4];
    /* one live replica while it lives: its batches stay large */
    lk_peer_t *to = lk_replicas_sticky(self->history);
    uint64_t seq = lk_bus_batch_add(self->bus, to, LK_BODY_HISTORY, &ev, true);
    zhashx_insert(self->hist_sent, id, (void *)1);
    ar_wait_add(ar_wait_for(&self->hist_waits, s_key(self, to, seq)), id);
    free(copy);
}

void ar_history_send_entries(self_t *self, const lk_redis_reply_t *r, size_t from)
{
    for (size_t i = from; i + 1 < r->count; i += 2)
        if (r->items[i].str && r->items[i + 1].str)
            s_send_one(self, r->items[i].str, r->items[i + 1].str);
}

void ar_history_event(self_t *self, const char *kind, const char *lock, const char *actor,
                      const char *details_json)
{
    lk_redis_reply_t *r = lk_redis_cmd(self->redis, "INCR lk:{arb}:evseq");
    if (!r || r->type != LK_REDIS_INT) {
        lk_redis_reply_free(&r);
        lk_warn("history event %s of %s lost: Redis failed", kind, lock);
        return;
    }
    char id[96], value[2048];
    snprintf(id, sizeof(id), "%s-%" PRId64, self->node, r->integer);
    lk_redis_reply_free(&r);
    snprintf(value, sizeof(value), "%s\x1f%s\x1f%s\x1f%" PRId64 "\x1f%s", kind, lock, actor,
             lk_wall_ms(), details_json);
    r = lk_redis_cmd(self->redis, "HSET lk:{arb}:outbox %s %s", id, value);
    bool ok = !lk_redis_reply_failed(r);
    lk_redis_reply_free(&r);
    if (ok)
        s_send_one(self, id, value);
}

void ar_history_resume(self_t *self)
{
    lk_redis_reply_t *r = lk_redis_cmd(self->redis, "HGETALL lk:{arb}:outbox");
    if (!r || r->type != LK_REDIS_ARRAY) {
        lk_redis_reply_free(&r);
        lk_warn("cannot read lk:{arb}:outbox: events wait for the next start");
        return;
    }
    if (r->count)
        lk_info("%zu history event(s) in the outbox", r->count / 2);
    ar_history_send_entries(self, r, 0);
    lk_redis_reply_free(&r);
}

void ar_history_acked(self_t *self, lk_peer_t *peer, uint64_t seq)
{
    ar_wait_t *w = ar_wait_take(&self->hist_waits, s_key(self, peer, seq));
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++) {
        lk_redis_reply_t *r = lk_redis_cmd(self->redis, "HDEL lk:{arb}:outbox %s", w->ids[i]);
        /* on failure it is sent again at the next start: the writer de-duplicates */
        lk_redis_reply_free(&r);
        zhashx_delete(self->hist_sent, w->ids[i]);
    }
    ar_wait_free(&w);
}

void ar_history_failover(self_t *self, lk_peer_t *dead)
{
    int idx = lk_replicas_index(self->history, dead);
    if (idx < 0 || !lk_replicas_other(self->history, dead))
        return; /* no live replica to take them: they wait for the first one back */
    size_t moved = 0;
    for (ar_wait_t **pp = &self->hist_waits; *pp;) {
        ar_wait_t *w = *pp;
        if ((int)(w->seq >> 56) != idx) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        for (size_t i = 0; i < w->n; i++)
            zhashx_delete(self->hist_sent, w->ids[i]);
        moved += w->n;
        ar_wait_free(&w);
    }
    if (!moved)
        return;
    /* the outbox still holds them: sent again from there; should the dead one come back
       with them, the writer's insert is idempotent by event id */
    lk_peer_drop_unacked(dead);
    lk_notice("history writer %s down: %zu unacked event(s) re-sent to another replica",
              lk_peer_name(dead), moved);
    ar_history_resume(self);
}
