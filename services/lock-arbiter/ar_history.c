/*  ar_history: the arbiter's history outbox — events on their way to the history writer.

    Every event is first written to lk:arb:outbox (id → "kind\x1flock\x1factor\x1fms\x1f
    details-json"), inside the same Lua script as the decision it records, so a decision
    and its event exist together or not at all. It is then sent as a HistoryEvent in a
    reliable HistoryBatch to the peer "history-writer"; once that batch is acked (stored in
    PostgreSQL or the writer's spool) the entry is deleted. Entries left by a crash are sent
    again at the next start; the event id makes the writer's insert idempotent, so an event
    reaches PostgreSQL exactly once. */
#include "ar_internal.h"

/* splits an outbox value into its five fields (pointers into v, which is modified) */
static int s_split(char *v, char *f[5])
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

static void s_send_one(self_t *self, const char *id, const char *value)
{
    if (!self->history) {
        if (!self->outbox_warned)
            lk_warn("history_endpoint is not configured: events stay in lk:arb:outbox");
        self->outbox_warned = true;
        return;
    }
    if (zhashx_lookup(self->hist_sent, id))
        return;
    char *copy = lk_strdup(value), *f[5];
    if (s_split(copy, f) != 0) {
        lk_warn("outbox entry %s is malformed: dropped", id);
        lk_redis_reply_t *r = lk_redis_cmd(self->redis, "HDEL lk:arb:outbox %s", id);
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
    uint64_t seq = lk_bus_batch_add(self->bus, self->history, LK_BODY_HISTORY, &ev, true);
    zhashx_insert(self->hist_sent, id, (void *)1);
    ar_wait_add(ar_wait_for(&self->hist_waits, seq), id);
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
    lk_redis_reply_t *r = lk_redis_cmd(self->redis, "INCR lk:arb:evseq");
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
    r = lk_redis_cmd(self->redis, "HSET lk:arb:outbox %s %s", id, value);
    bool ok = !lk_redis_reply_failed(r);
    lk_redis_reply_free(&r);
    if (ok)
        s_send_one(self, id, value);
}

void ar_history_resume(self_t *self)
{
    lk_redis_reply_t *r = lk_redis_cmd(self->redis, "HGETALL lk:arb:outbox");
    if (!r || r->type != LK_REDIS_ARRAY) {
        lk_redis_reply_free(&r);
        lk_warn("cannot read lk:arb:outbox: events wait for the next start");
        return;
    }
    if (r->count)
        lk_info("%zu history event(s) in the outbox", r->count / 2);
    ar_history_send_entries(self, r, 0);
    lk_redis_reply_free(&r);
}

void ar_history_acked(self_t *self, uint64_t seq)
{
    ar_wait_t *w = ar_wait_take(&self->hist_waits, seq);
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++) {
        lk_redis_reply_t *r = lk_redis_cmd(self->redis, "HDEL lk:arb:outbox %s", w->ids[i]);
        /* on failure it is sent again at the next start: the writer de-duplicates */
        lk_redis_reply_free(&r);
        zhashx_delete(self->hist_sent, w->ids[i]);
    }
    ar_wait_free(&w);
}
