/*  hw_server: the history-writer actor (see hw_server.h).

    One self_t holds the bus, the store, the spool, the events of this turn and the acks
    they wait for. The turn-end hook is registered before the bus is made, so it runs
    before the bus's own hook and the acks it releases leave in the same turn. */
#include "hw_server.h"
#include "hw_spool.h"
#include "lk_admin.h"
#include "lk_pg.h"
#include "lk_replicas.h"
#include "hw_store.h"
#include "lk_bus.h"
#include "lk_common.h"
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>

#define HW_CRON_MS 1000
#define HW_DRAIN_EVENTS 5000 /* events per drain step: keeps each step short */
#define HW_WARN_EVERY_MS 5000

typedef struct {
    lk_peer_t *peer;
    uint64_t epoch; /* the producer's life the seq belongs to */
    uint64_t seq;
} s_ack_t;

typedef struct _hw_server_t self_t;

struct _hw_server_t {
    lk_loop_t *loop;
    lk_config_t *config;    /* the caller's; outlives us */
    char *node;
    int ready_fd;
    char *endpoint; /* history_endpoint with %n = our node id */
    const char *conninfo;
    char *sql_dir;
    char *spool_dir;
    uint64_t spool_max;
    int64_t stats_ms;
    lk_bus_t *bus;
    hw_store_t *store;
    hw_spool_t *spool;
    bool hooked;
    /* received, neither in PostgreSQL nor in the spool yet */
    hw_events_t pending;
    s_ack_t *acks;
    size_t n_acks, acks_cap;
    int cron_timer;
    int drain_timer;
    int stats_timer;
    /* what happened, for the periodic log line */
    hw_counts_t counts;
    uint64_t received, spooled, drained;
    uint64_t logged_received;
    int64_t spool_started_ms; /* when the current spooling episode began; 0 = none */
    uint64_t spool_episode;   /* events spooled in it */
    int64_t blocked_warned;
    int64_t drain_warned;
};

/* the api's "node" request: the spool and PostgreSQL for Prometheus */
static void s_admin(lk_bus_t *bus, lk_peer_t *peer, const Lk__AdminRequest *q,
                    lk_admin_out_t *out, void *arg)
{
    self_t *self = arg;
    if (strcmp(q->op ? q->op : "", "decisions") == 0) {
        int limit = q->limit && q->limit <= 1000 ? (int)q->limit : 50;
        lk_pg_result_t *r = self->store ? hw_store_decisions(self->store, limit) : NULL;
        if (!r) {
            lk_admin_error(out, "SERVICE_UNAVAILABLE", "PostgreSQL did not answer");
            return;
        }
        for (size_t i = 0; i < r->nrows; i++)
            if (r->values[i * r->ncols])
                lk_admin_row_add(out, r->values[i * r->ncols]);
        lk_pg_result_free(&r);
        return;
    }
    if (strcmp(q->op ? q->op : "", "node") != 0) {
        lk_admin_error(out, "BAD_REQUEST", "history-writer does not answer '%s'", q->op);
        return;
    }
    lk_admin_metric(out, "latchkey_history_received_total", NULL, (double)self->received, true);
    lk_admin_metric(out, "latchkey_history_spooled_total", NULL, (double)self->spooled, true);
    lk_admin_metric(out, "latchkey_history_drained_total", NULL, (double)self->drained, true);
    lk_admin_metric(out, "latchkey_history_spool_events", NULL,
                    self->spool ? (double)hw_spool_events(self->spool) : 0, false);
    lk_admin_metric(out, "latchkey_history_spool_bytes", NULL,
                    self->spool ? (double)hw_spool_bytes(self->spool) : 0, false);
    double rtt = self->store ? hw_store_ping_ms(self->store) : -1;
    lk_admin_metric(out, "latchkey_postgres_up", NULL, rtt >= 0 ? 1 : 0, false);
    if (rtt >= 0)
        lk_admin_metric(out, "latchkey_postgres_rtt_seconds", NULL, rtt / 1000.0, false);
}

static char *s_env_path(const char *var, const char *suffix)
{
    const char *v = getenv(var);
    if (!v || !*v)
        return NULL;
    size_t n = strlen(v) + strlen(suffix) + 1;
    char *p = lk_malloc(n);
    snprintf(p, n, "%s%s", v, suffix);
    return p;
}

/* value of key, else ${var}suffix; NULL (logged) when neither is known */
static char *s_cfg_path(lk_config_t *cfg, const char *key, const char *var, const char *suffix)
{
    const char *v = lk_config_get(cfg, key, NULL);
    if (v && *v)
        return lk_strdup(v);
    char *p = s_env_path(var, suffix);
    if (!p)
        lk_error("configuration: %s is not set and neither is %s", key, var);
    return p;
}

hw_server_t *hw_server_new(lk_loop_t *loop, lk_config_t *cfg, const char *node, int ready_fd)
{
    self_t *self = lk_calloc(1, sizeof(*self));
    self->loop = loop;
    self->config = cfg;
    self->node = lk_strdup(node);
    self->ready_fd = ready_fd;
    self->endpoint = lk_replicas_endpoint(cfg, "history", node);
    self->conninfo = lk_config_get(cfg, "pg_conninfo", NULL);
    self->sql_dir = s_cfg_path(cfg, "sql_dir", "LATCHKEY_ROOT", "/sql");
    self->spool_dir = s_cfg_path(cfg, "spool_dir", "RUN_DIR", "/data/history-spool");
    if (self->spool_dir) {
        /* each replica its own spool: %n, or a sub-folder named after a replica's node */
        char *d = lk_str_subst(self->spool_dir, 'n', node);
        if (!strstr(self->spool_dir, "%n") && strcmp(node, "history-writer") != 0) {
            char *sub = lk_malloc(strlen(d) + strlen(node) + 2);
            sprintf(sub, "%s/%s", d, node);
            free(d);
            d = sub;
        }
        free(self->spool_dir);
        self->spool_dir = d;
    }
    int64_t max = lk_config_get_int(cfg, "spool_max_bytes", (int64_t)1 << 30);
    int64_t timeout = lk_config_get_int(cfg, "pg_statement_timeout_ms", 5000);
    self->stats_ms = lk_config_get_int(cfg, "stats_interval", 10) * 1000;
    int rc = 0;
    if (!self->endpoint || !*self->endpoint) {
        lk_error("configuration: history_endpoint is not set");
        rc = -1;
    }
    if (!self->conninfo || !*self->conninfo) {
        lk_error("configuration: pg_conninfo is not set");
        rc = -1;
    }
    if (max < 4096) {
        lk_error("configuration: spool_max_bytes must be at least 4096");
        rc = -1;
    }
    if (timeout <= 0 || timeout > 3600 * 1000 || self->stats_ms < 0) {
        lk_error("configuration: pg_statement_timeout_ms and stats_interval must be positive");
        rc = -1;
    }
    if (!self->sql_dir || !self->spool_dir)
        rc = -1;
    if (rc != 0) {
        hw_server_destroy(&self);
        return NULL;
    }
    self->spool_max = (uint64_t)max;
    self->store = hw_store_new(self->conninfo, node, self->sql_dir, (int)timeout);
    return self;
}

static void s_cancel(self_t *self, int *timer)
{
    if (*timer)
        lk_loop_timer_cancel(self->loop, *timer);
    *timer = 0;
}

static void s_stats(self_t *self, bool always);
static void s_flush(self_t *self);
static void s_turn_end(lk_loop_t *loop, void *arg);

void hw_server_destroy(hw_server_t **self_p)
{
    self_t *self = *self_p;
    if (!self)
        return;
    s_cancel(self, &self->cron_timer);
    s_cancel(self, &self->drain_timer);
    s_cancel(self, &self->stats_timer);
    if (self->spool && self->bus) {
        s_flush(self); /* the last turn's events; the bus sends their acks as it goes */
        if (self->pending.n)
            lk_notice("%zu event(s) not stored at exit; their producers will re-send",
                      self->pending.n);
        s_stats(self, true);
    }
    if (self->hooked)
        lk_loop_remove_turn_end(self->loop, s_turn_end, self);
    lk_bus_destroy(&self->bus);
    hw_spool_destroy(&self->spool);
    hw_store_destroy(&self->store);
    hw_events_release(&self->pending);
    free(self->acks);
    free(self->sql_dir);
    free(self->spool_dir);
    free(self->endpoint);
    free(self->node);
    free(self);
    *self_p = NULL;
}

//  --------------------------------------------------------------------------
//  Receiving

static void s_ack_later(self_t *self, lk_peer_t *peer, uint64_t seq)
{
    if (self->n_acks == self->acks_cap) {
        self->acks_cap = self->acks_cap ? self->acks_cap * 2 : 64;
        self->acks = lk_realloc(self->acks, self->acks_cap * sizeof(*self->acks));
    }
    self->acks[self->n_acks++] = (s_ack_t){peer, lk_peer_epoch(peer), seq};
}

static void s_ack_all(self_t *self)
{
    for (size_t i = 0; i < self->n_acks; i++) {
        s_ack_t *a = &self->acks[i];
        /* a producer that restarted meanwhile re-uses seqs: never ack its new life's */
        if (lk_peer_epoch(a->peer) == a->epoch)
            lk_bus_ack(self->bus, a->peer, a->seq);
    }
    self->n_acks = 0;
}

static void s_on_message(lk_bus_t *bus, lk_peer_t *peer, Lk__Envelope *env, void *arg)
{
    self_t *self = arg;
    if (env->body_case != LK__ENVELOPE__BODY_HISTORY || !env->history) {
        lk_debug("ignored body %d from %s", env->body_case, lk_peer_name(peer));
        if (env->seq)
            lk_bus_ack(bus, peer, env->seq);
        return;
    }
    Lk__HistoryBatch *b = env->history;
    char fallback[384];
    for (size_t i = 0; i < b->n_events; i++) {
        /* an event without id gets one from its envelope: the same on every re-send */
        if (env->seq)
            snprintf(fallback, sizeof(fallback), "%s:%" PRIu64 ":%" PRIu64 ":%zu",
                     lk_peer_name(peer), env->epoch, env->seq, i);
        else /* never re-sent: any unique id does */
            snprintf(fallback, sizeof(fallback), "%s:%" PRIu64 ":u%" PRIu64 ":%zu",
                     lk_peer_name(peer), env->epoch, self->received, i);
        hw_events_add(&self->pending, b->events[i], fallback);
    }
    self->received += b->n_events;
    if (env->seq)
        s_ack_later(self, peer, env->seq);
}

//  --------------------------------------------------------------------------
//  Writing: PostgreSQL or the spool

static void s_drain_schedule(self_t *self, int64_t ms);

static void s_flush(self_t *self)
{
    if (self->pending.n == 0) {
        s_ack_all(self); /* envelopes with no event */
        return;
    }
    bool stored = false;
    if (hw_spool_empty(self->spool) && hw_store_usable(self->store, NULL))
        stored = hw_store_write(self->store, self->pending.v, self->pending.n, &self->counts) == 0;
    if (!stored) {
        if (hw_spool_append(self->spool, self->pending.v, self->pending.n) != 0) {
            int64_t now = lk_mono_ms();
            if (!self->blocked_warned || now - self->blocked_warned >= HW_WARN_EVERY_MS) {
                lk_error("%zu event(s) can go neither to postgresql nor to the spool (%s, "
                         "%" PRIu64 " of %" PRIu64 " bytes): not acked, retrying",
                         self->pending.n, errno == ENOSPC ? "full" : strerror(errno),
                         hw_spool_bytes(self->spool), self->spool_max);
                self->blocked_warned = now;
            }
            return;
        }
        if (!self->spool_started_ms) {
            self->spool_started_ms = lk_mono_ms();
            self->spool_episode = 0;
            lk_notice("postgresql not usable: spooling events to %s", hw_spool_path(self->spool));
        }
        self->spool_episode += self->pending.n;
        self->spooled += self->pending.n;
        s_drain_schedule(self, HW_CRON_MS);
    }
    if (self->blocked_warned) {
        lk_notice("events flow again");
        self->blocked_warned = 0;
    }
    s_ack_all(self);
    hw_events_clear(&self->pending);
}

static void s_turn_end(lk_loop_t *loop, void *arg)
{
    s_flush(arg);
}

/* one step of writing the spool into PostgreSQL; schedules the next while any is left */
static void s_drain(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    self->drain_timer = 0;
    if (hw_spool_empty(self->spool))
        return;
    if (!hw_store_usable(self->store, NULL)) {
        s_drain_schedule(self, HW_CRON_MS);
        return;
    }
    hw_events_t batch = {0};
    int64_t n = hw_spool_read(self->spool, HW_DRAIN_EVENTS, &batch);
    int rc = n < 0 ? 0 : hw_store_write(self->store, batch.v, batch.n, &self->counts);
    hw_events_release(&batch);
    if (rc != 0) {
        int64_t now = lk_mono_ms();
        if (!self->drain_warned || now - self->drain_warned >= HW_WARN_EVERY_MS) {
            lk_warn("spool: draining into postgresql failed; %" PRIu64 " event(s) wait",
                    hw_spool_events(self->spool));
            self->drain_warned = now;
        }
        s_drain_schedule(self, HW_CRON_MS);
        return;
    }
    if (n > 0) {
        hw_spool_consume(self->spool);
        self->drained += (uint64_t)n;
    }
    self->drain_warned = 0;
    if (!hw_spool_empty(self->spool)) {
        s_drain_schedule(self, 0);
        return;
    }
    lk_notice("spool drained: %" PRIu64 " event(s) spooled over %.1f s are in postgresql",
              self->spool_episode,
              self->spool_started_ms ? (lk_mono_ms() - self->spool_started_ms) / 1000.0 : 0.0);
    self->spool_started_ms = 0;
    self->spool_episode = 0;
}

static void s_drain_schedule(self_t *self, int64_t ms)
{
    if (!self->drain_timer && !hw_spool_empty(self->spool))
        self->drain_timer = lk_loop_timer(self->loop, ms, false, s_drain, self);
}

static void s_cron(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    if (self->pending.n)
        s_flush(self); /* events that could go nowhere: try again */
    s_drain_schedule(self, 0);
}

static void s_stats(self_t *self, bool always)
{
    if (!always && self->received == self->logged_received && hw_spool_empty(self->spool))
        return;
    self->logged_received = self->received;
    lk_notice("history: %" PRIu64 " received, %" PRIu64 " written, %" PRIu64
              " duplicates skipped, %" PRIu64 " spooled, %" PRIu64 " drained, %" PRIu64
              " rejected; spool %" PRIu64 " event(s) %" PRIu64 " bytes; %zu waiting",
              self->received, self->counts.written, self->counts.duplicates, self->spooled,
              self->drained, self->counts.rejected, hw_spool_events(self->spool),
              hw_spool_bytes(self->spool), self->pending.n);
}

static void s_stats_tick(lk_loop_t *loop, void *arg)
{
    s_stats(arg, false);
}

//  --------------------------------------------------------------------------
//  Start-up

int hw_server_start(hw_server_t *self)
{
    self->spool = hw_spool_open(self->spool_dir, self->spool_max);
    if (!self->spool)
        return -1;
    /* before the bus: our acks must be made before its turn-end flush */
    lk_loop_on_turn_end(self->loop, s_turn_end, self);
    self->hooked = true;
    lk_bus_handlers_t h = {s_on_message, NULL, NULL};
    self->bus = lk_bus_new(self->loop, self->node, "history-writer", &h, self);
    lk_bus_on_admin(self->bus, s_admin, self);
    if (lk_bus_configure(self->bus, self->config) != 0 ||
        lk_bus_enable_msglog(self->bus, lk_config_get(self->config, "msglog_dir", "")) != 0)
        return -1;
    if (lk_bus_bind(self->bus, self->endpoint) != 0)
        return -1;
    bool fatal = false;
    if (hw_store_usable(self->store, &fatal))
        lk_notice("serving %s; postgresql schema at version %d (migrations in %s)", self->endpoint,
                  hw_store_schema_version(self->store), self->sql_dir);
    else if (fatal)
        return -2;
    else
        lk_warn("serving %s; postgresql NOT available at start: events are spooled to %s "
                "until it is back",
                self->endpoint, hw_spool_path(self->spool));
    self->cron_timer = lk_loop_timer(self->loop, HW_CRON_MS, true, s_cron, self);
    if (self->stats_ms > 0)
        self->stats_timer = lk_loop_timer(self->loop, self->stats_ms, true, s_stats_tick, self);
    if (!hw_spool_empty(self->spool)) {
        self->spool_started_ms = lk_mono_ms();
        self->spool_episode = hw_spool_events(self->spool);
        s_drain_schedule(self, 0);
    }
    lk_ready_notify(self->ready_fd);
    self->ready_fd = -1;
    return 0;
}
