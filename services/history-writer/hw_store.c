/*  hw_store: history events into PostgreSQL; see hw_store.h. */
#include "hw_store.h"
#include "lk_common.h"
#include "lk_mqtt.h"
#include "lk_pg.h"
#include <stdio.h>
#include <unistd.h>

#define S_COLS 6
#define S_WARN_EVERY_MS 5000

/* The VALUES rows arrive as text; the SELECT gives them their types. A time of 0 means
   "not given": the row's write time is the best we know. */
#define S_HEAD_FMT                                                                                 \
    "INSERT INTO events (id, kind, lockno, actor, time, details) "                                 \
    "SELECT v.id, v.kind, nullif(v.lockno, ''), nullif(v.actor, ''), "                             \
    "CASE WHEN v.ms::bigint > 0 THEN to_timestamp(v.ms::bigint / 1000.0) ELSE now() END, "         \
    "%s FROM (VALUES"
#define S_DETAILS_JSON "coalesce(nullif(v.details, '')::jsonb, '{}'::jsonb)"
#define S_DETAILS_RAW "jsonb_build_object('raw', v.details)"
#define S_TAIL ") AS v (id, kind, lockno, actor, ms, details) ON CONFLICT (id) DO NOTHING"

struct _hw_store_t {
    lk_pg_t *pg;
    char *sql_dir;
    int version; /* > 0 once migrated */
    bool fatal;  /* a migration cannot apply */
    int64_t fatal_warned;
    char *head_json;
    char *head_raw;
    const char **params;
    char (*ms)[24];
};

//  --------------------------------------------------------------------------
//  Events

/* PostgreSQL text must be valid UTF-8: keep valid text as is, else every non-ASCII
   byte becomes '?' (deterministic, so a re-sent event is cleaned the same way) */
static char *s_clean(const char *s)
{
    if (!s)
        return lk_strdup("");
    size_t n = strlen(s);
    char *out = lk_strndup(s, n);
    if (!lk_mqtt_utf8_valid(s, n))
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)out[i] >= 0x80)
                out[i] = '?';
    return out;
}

void hw_events_add(hw_events_t *list, const Lk__HistoryEvent *src, const char *fallback_id)
{
    if (list->n == list->cap) {
        list->cap = list->cap ? list->cap * 2 : 64;
        list->v = lk_realloc(list->v, list->cap * sizeof(*list->v));
    }
    hw_event_t *e = &list->v[list->n++];
    e->id = s_clean(src->id && *src->id ? src->id : fallback_id);
    e->kind = s_clean(src->kind);
    e->lock = s_clean(src->lock);
    e->actor = s_clean(src->actor);
    e->details = s_clean(src->details);
    e->time_ms = src->time_ms;
}

void hw_events_clear(hw_events_t *list)
{
    for (size_t i = 0; i < list->n; i++) {
        hw_event_t *e = &list->v[i];
        free(e->id);
        free(e->kind);
        free(e->lock);
        free(e->actor);
        free(e->details);
    }
    list->n = 0;
}

void hw_events_release(hw_events_t *list)
{
    hw_events_clear(list);
    free(list->v);
    memset(list, 0, sizeof(*list));
}

//  --------------------------------------------------------------------------
//  Store

hw_store_t *hw_store_new(const char *conninfo, const char *node, const char *sql_dir,
                         int statement_timeout_ms)
{
    hw_store_t *self = lk_calloc(1, sizeof(*self));
    self->pg = lk_pg_new(conninfo, node);
    lk_pg_set_timing(self->pg, 2, statement_timeout_ms, 1000);
    self->sql_dir = lk_strdup(sql_dir);
    size_t n = strlen(S_HEAD_FMT) + strlen(S_DETAILS_JSON) + 1;
    self->head_json = lk_malloc(n);
    snprintf(self->head_json, n, S_HEAD_FMT, S_DETAILS_JSON);
    n = strlen(S_HEAD_FMT) + strlen(S_DETAILS_RAW) + 1;
    self->head_raw = lk_malloc(n);
    snprintf(self->head_raw, n, S_HEAD_FMT, S_DETAILS_RAW);
    self->params = lk_calloc(HW_STORE_ROWS * S_COLS, sizeof(char *));
    self->ms = lk_calloc(HW_STORE_ROWS, sizeof(*self->ms));
    return self;
}

void hw_store_destroy(hw_store_t **self_p)
{
    hw_store_t *self = *self_p;
    if (!self)
        return;
    lk_pg_destroy(&self->pg);
    free(self->sql_dir);
    free(self->head_json);
    free(self->head_raw);
    free(self->params);
    free(self->ms);
    free(self);
    *self_p = NULL;
}

bool hw_store_usable(hw_store_t *self, bool *fatal)
{
    if (fatal)
        *fatal = false;
    if (lk_pg_connect(self->pg) != 0)
        return false;
    if (self->version > 0)
        return true;
    int version;
    int rc = lk_pg_migrate(self->pg, self->sql_dir, &version);
    if (rc == 0 && version > 0) {
        self->version = version;
        self->fatal = false;
        return true;
    }
    if (rc == 0) {
        lk_error("migrations: no migration in %s (sql_dir)", self->sql_dir);
        rc = -2;
    }
    if (rc == -2) {
        self->fatal = true;
        /* retried at every use: a fixed migration folder heals without a restart */
        lk_pg_disconnect(self->pg);
        int64_t now = lk_mono_ms();
        if (!self->fatal_warned || now - self->fatal_warned >= S_WARN_EVERY_MS) {
            lk_error("postgresql schema cannot be migrated from %s: events are kept in the "
                     "spool",
                     self->sql_dir);
            self->fatal_warned = now;
        }
    }
    if (fatal)
        *fatal = rc == -2;
    return false;
}

int hw_store_schema_version(hw_store_t *self)
{
    return self->version;
}

/* one statement over events[0..n); head_json or head_raw */
static lk_pg_result_t *s_insert(hw_store_t *self, const hw_event_t *events, size_t n,
                                const char *head)
{
    for (size_t i = 0; i < n; i++) {
        const hw_event_t *e = &events[i];
        snprintf(self->ms[i], sizeof(self->ms[i]), "%" PRIu64, e->time_ms);
        const char **p = &self->params[i * S_COLS];
        p[0] = e->id;
        p[1] = e->kind;
        p[2] = e->lock;
        p[3] = e->actor;
        p[4] = self->ms[i];
        p[5] = e->details;
    }
    return lk_pg_exec_rows(self->pg, head, S_TAIL, S_COLS, n, self->params);
}

/* one event alone, after its statement was refused for its data; 0 or -1 transient */
static int s_insert_one(hw_store_t *self, const hw_event_t *e, hw_counts_t *counts)
{
    const char *heads[] = {self->head_json, self->head_raw};
    lk_pg_result_t *r = NULL;
    for (size_t h = 0; h < LK_ARRAY_LEN(heads); h++) {
        lk_pg_result_free(&r);
        r = s_insert(self, e, 1, heads[h]);
        if (r->status == LK_PG_OK || lk_pg_transient(r))
            break;
        if (h == 0)
            lk_info("event %s: %s; details stored as {\"raw\": ...}", e->id, r->message);
    }
    int rc = 0;
    if (r->status == LK_PG_OK) {
        counts->written += (uint64_t)r->affected;
        counts->duplicates += 1 - (uint64_t)r->affected;
    } else if (lk_pg_transient(r))
        rc = -1;
    else {
        lk_error("event %s (kind %s, lock %s) rejected by postgresql: %s %s", e->id, e->kind,
                 e->lock, r->sqlstate, r->message);
        counts->rejected++;
    }
    lk_pg_result_free(&r);
    return rc;
}

int hw_store_write(hw_store_t *self, const hw_event_t *events, size_t n, hw_counts_t *counts)
{
    if (!hw_store_usable(self, NULL))
        return -1;
    for (size_t off = 0; off < n; off += HW_STORE_ROWS) {
        size_t k = n - off < HW_STORE_ROWS ? n - off : HW_STORE_ROWS;
        lk_pg_result_t *r = s_insert(self, events + off, k, self->head_json);
        if (r->status == LK_PG_OK) {
            counts->written += (uint64_t)r->affected;
            counts->duplicates += k - (uint64_t)r->affected;
        } else if (lk_pg_transient(r)) {
            lk_warn("postgresql: insert of %zu event(s) failed: %s%s%s", k, r->sqlstate,
                    *r->sqlstate ? " " : "", r->message);
            lk_pg_result_free(&r);
            return -1;
        } else {
            /* some row's data: find it, one by one */
            lk_info("postgresql refused %zu event(s) (%s %s): writing them one by one", k,
                    r->sqlstate, r->message);
            for (size_t i = 0; i < k; i++)
                if (s_insert_one(self, &events[off + i], counts) != 0) {
                    lk_pg_result_free(&r);
                    return -1;
                }
        }
        lk_pg_result_free(&r);
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Selftest

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "hw_store: check failed at line %d: %s\n", __LINE__, #cond);           \
            rc = -1;                                                                               \
        }                                                                                          \
    } while (0)

static void s_ev(hw_events_t *list, const char *id, const char *kind, const char *lock,
                 const char *details, uint64_t ms)
{
    Lk__HistoryEvent e = LK__HISTORY_EVENT__INIT;
    e.id = (char *)id;
    e.kind = (char *)kind;
    e.lock = (char *)lock;
    e.actor = "tester";
    e.details = (char *)details;
    e.time_ms = ms;
    hw_events_add(list, &e, "fallback:1");
}

static const char *s_one(lk_pg_t *pg, const char *sql, char *out, size_t size)
{
    lk_pg_result_t *r = lk_pg_exec(pg, sql, 0, NULL);
    snprintf(out, size, "%s", lk_pg_value(r, 0, 0) ? lk_pg_value(r, 0, 0) : "(null)");
    lk_pg_result_free(&r);
    return out;
}

static int s_test_live(const char *conninfo, bool verbose)
{
    int rc = 0;
    char db[64], sql[256], info[1024], v[256];
    snprintf(db, sizeof(db), "lk_hw_test_%d", (int)getpid());
    snprintf(info, sizeof(info), "%s dbname=%s", conninfo, db);
    lk_pg_t *admin = lk_pg_new(conninfo, "hw_store_test");
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s", db);
    lk_pg_run(admin, sql, 0, NULL, false);
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", db);
    S_CHECK(lk_pg_run(admin, sql, 0, NULL, false) == 0);

    const char *root = getenv("LATCHKEY_ROOT");
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/sql", root && *root ? root : ".");
    hw_store_t *store = hw_store_new(info, "hw_store_test", dir, 0);
    bool fatal = true;
    S_CHECK(hw_store_usable(store, &fatal) && !fatal && hw_store_schema_version(store) >= 1);

    hw_events_t list = {0};
    s_ev(&list, "e1", "lock_state", "L1", "{\"state\": \"locked\"}", 1700000000123);
    s_ev(&list, "e2", "unlock_decision", "L1", "{\"decision\": \"unlock\"}", 1700000000456);
    s_ev(&list, "e3", "connect", "", "", 0);
    s_ev(&list, "e1", "lock_state", "L1", "{}", 1); /* the same id in one statement */
    s_ev(&list, "", "x\xff\xfe", "L2", "{\"a\": 1}", 5);
    hw_counts_t c = {0};
    S_CHECK(hw_store_write(store, list.v, list.n, &c) == 0);
    S_CHECK(c.written == 4 && c.duplicates == 1 && c.rejected == 0);
    memset(&c, 0, sizeof(c));
    S_CHECK(hw_store_write(store, list.v, list.n, &c) == 0);
    S_CHECK(c.written == 0 && c.duplicates == 5);
    hw_events_clear(&list);

    /* bad JSON is kept as raw text; a row broken beyond that is rejected, not retried */
    s_ev(&list, "e4", "lock_state", "L1", "{not json", 7);
    s_ev(&list, "e5", "lock_state", "L1", "{\"ok\": true}", 8);
    s_ev(&list, "e6", "lock_state", "L1", "\"\\u0000\"", 9);
    memset(&c, 0, sizeof(c));
    S_CHECK(hw_store_write(store, list.v, list.n, &c) == 0);
    S_CHECK(c.written == 3 && c.rejected == 0);
    hw_events_release(&list);

    lk_pg_t *pg = lk_pg_new(info, "hw_store_test");
    S_CHECK(strcmp(s_one(pg, "SELECT count(*) FROM events", v, sizeof(v)), "7") == 0);
    S_CHECK(strcmp(s_one(pg, "SELECT details->>'raw' FROM events WHERE id = 'e4'", v, sizeof(v)),
                   "{not json") == 0);
    S_CHECK(strcmp(s_one(pg, "SELECT kind || ':' || lockno FROM events WHERE id = 'fallback:1'", v,
                         sizeof(v)),
                   "x??:L2") == 0);
    S_CHECK(strcmp(s_one(pg,
                         "SELECT (extract(epoch FROM time) * 1000)::bigint FROM events "
                         "WHERE id = 'e2'",
                         v, sizeof(v)),
                   "1700000000456") == 0);
    S_CHECK(strcmp(s_one(pg,
                         "SELECT lockno IS NULL AND time > now() - interval '1 hour' "
                         "FROM events WHERE id = 'e3'",
                         v, sizeof(v)),
                   "t") == 0);
    S_CHECK(strcmp(s_one(pg,
                         "SELECT string_agg(state, ',' ORDER BY seq) FROM lock_history "
                         "WHERE id IN ('e1', 'e2')",
                         v, sizeof(v)),
                   "locked") == 0);
    S_CHECK(strcmp(s_one(pg, "SELECT decision FROM unlock_decisions", v, sizeof(v)), "unlock") ==
            0);
    lk_pg_destroy(&pg);
    hw_store_destroy(&store);
    snprintf(sql, sizeof(sql), "DROP DATABASE %s WITH (FORCE)", db);
    S_CHECK(lk_pg_run(admin, sql, 0, NULL, false) == 0);
    lk_pg_destroy(&admin);
    if (verbose)
        printf("hw_store: live checks: %s\n", rc == 0 ? "ok" : "FAILED");
    return rc;
}

lk_pg_result_t *hw_store_decisions(hw_store_t *self, int limit)
{
    if (!lk_pg_connected(self->pg))
        return NULL;
    char l[16];
    snprintf(l, sizeof(l), "%d", limit);
    const char *params[] = {l};
    lk_pg_result_t *r = lk_pg_exec(
        self->pg,
        "SELECT json_build_object('id', id, 'lock', lockno, 'decision', decision, 'actor', actor, "
        "'time', (extract(epoch FROM time) * 1000)::bigint, 'details', details)::text "
        "FROM unlock_decisions ORDER BY seq DESC LIMIT $1::int",
        1, params);
    if (r && r->status != LK_PG_OK)
        lk_pg_result_free(&r);
    return r;
}

double hw_store_ping_ms(hw_store_t *self)
{
    if (!lk_pg_connected(self->pg))
        return -1;
    int64_t a = lk_wall_ns();
    if (lk_pg_run(self->pg, "SELECT 1", 0, NULL, true) != 0)
        return -1;
    return (double)(lk_wall_ns() - a) / 1e6;
}

int hw_store_test(bool verbose)
{
    int rc = 0;
    hw_events_t list = {0};
    for (int i = 0; i < 100; i++)
        s_ev(&list, "id", "kind", "caf\xc3\xa9", "{}", 1);
    s_ev(&list, "", "bad\xc3", NULL, NULL, 2);
    S_CHECK(list.n == 101 && strcmp(list.v[0].lock, "caf\xc3\xa9") == 0);
    S_CHECK(strcmp(list.v[100].id, "fallback:1") == 0 && strcmp(list.v[100].kind, "bad?") == 0);
    S_CHECK(strcmp(list.v[100].actor, "tester") == 0 && strcmp(list.v[100].details, "") == 0);
    hw_events_release(&list);

    /* nothing listens: unusable at once, and writes fail as "try later" */
    hw_store_t *store = hw_store_new("host=127.0.0.1 port=1 dbname=x", "t", "/nonexistent", 0);
    hw_event_t e = {"i", "k", "", "", "{}", 1};
    hw_counts_t c = {0};
    bool fatal = true;
    S_CHECK(!hw_store_usable(store, &fatal) && !fatal);
    S_CHECK(hw_store_write(store, &e, 1, &c) == -1 && c.written == 0);
    hw_store_destroy(&store);

    const char *live = getenv("LATCHKEY_PG_TEST_CONNINFO");
    if (live && *live && s_test_live(live, verbose) != 0)
        rc = -1;
    return rc;
}
