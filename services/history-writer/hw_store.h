/*  hw_store: history events into PostgreSQL (through lk_pg, the only door to it).

    An hw_event_t is one lk.HistoryEvent owned by the writer: its strings are valid UTF-8
    (invalid bytes became '?') because PostgreSQL refuses anything else, and its id is never
    empty. hw_store_write inserts a list with multi-row INSERT ... ON CONFLICT (id) DO
    NOTHING statements of at most HW_STORE_ROWS rows; each statement is its own transaction
    and a statement that fails leaves nothing behind, so writing a list again after any
    failure is harmless: rows already there are skipped (counted as duplicates).

    A row PostgreSQL refuses for its data (details that are not JSON, say) is written with
    its details wrapped as {"raw": "<text>"}; a row refused even so is logged and counted as
    rejected, never retried: the producer could not fix it by re-sending. */
#ifndef HW_STORE_H_INCLUDED
#define HW_STORE_H_INCLUDED

#include "lk_pg.h"
#include "latchkey.pb-c.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HW_STORE_ROWS 1000

typedef struct {
    char *id;
    char *kind;
    char *lock;
    char *actor;
    char *details;
    uint64_t time_ms;
} hw_event_t;

typedef struct {
    hw_event_t *v;
    size_t n, cap;
} hw_events_t;

/* appends a clean copy of src; an empty id becomes fallback_id (deterministic for one
   envelope, so a re-sent envelope gets the same ids) */
void hw_events_add(hw_events_t *list, const Lk__HistoryEvent *src, const char *fallback_id);
/* frees the events, keeps the array for reuse */
void hw_events_clear(hw_events_t *list);
void hw_events_release(hw_events_t *list);

typedef struct {
    uint64_t written;    /* rows inserted */
    uint64_t duplicates; /* events whose id was already there */
    uint64_t rejected;   /* events PostgreSQL refused for their data */
} hw_counts_t;

typedef struct _hw_store_t hw_store_t;

/* conninfo: pg_conninfo; sql_dir: the migrations; statement_timeout_ms 0 = default */
hw_store_t *hw_store_new(const char *conninfo, const char *node, const char *sql_dir,
                         int statement_timeout_ms);
void hw_store_destroy(hw_store_t **self_p);

/* true when PostgreSQL answers (a reconnect is tried at most once a second) and the
   schema is migrated (done once per process, here, when first possible). A migration
   that cannot apply keeps it false and is logged; *fatal (may be NULL) says so. */
bool hw_store_usable(hw_store_t *self, bool *fatal);
/* the schema version once migrated, else 0 */
int hw_store_schema_version(hw_store_t *self);

/* 0: every event is in PostgreSQL (or rejected); -1: PostgreSQL unavailable or failing
   (some may be written: write them again later). counts are added to. */
int hw_store_write(hw_store_t *self, const hw_event_t *events, size_t n, hw_counts_t *counts);

/* the newest `limit` unlock decisions as JSON objects {id, lock, decision, actor, time (ms),
   details}, newest first; NULL when PostgreSQL cannot answer. Caller frees the result. */
lk_pg_result_t *hw_store_decisions(hw_store_t *self, int limit);
/* one SELECT 1's round trip in ms when connected, -1 otherwise (never connects) */
double hw_store_ping_ms(hw_store_t *self);

int hw_store_test(bool verbose);

#endif
