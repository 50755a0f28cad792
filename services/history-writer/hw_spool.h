/*  hw_spool: the local file where history events wait while PostgreSQL is away.

    One file, <spool_dir>/history.spool, of framed records: u32 magic "LKS1", u32 payload
    length, u32 CRC-32 of the payload, then the payload, one packed lk.HistoryBatch (the
    events of one write). Little-endian. hw_spool_append writes a record and fdatasyncs it
    before returning 0: only then may the events be acked to their producer.

    Draining reads records in order from the read position (hw_spool_read); once those
    events are in PostgreSQL, hw_spool_consume moves past them, and when nothing is left
    the file is truncated to zero. The read position lives in memory only: after a crash
    the whole file is drained again, which is harmless as event ids are idempotent in
    PostgreSQL. On open a torn last record (a crash during an append, never acked) is cut
    off. The file is bounded by max_bytes: an append that would pass it fails. */
#ifndef HW_SPOOL_H_INCLUDED
#define HW_SPOOL_H_INCLUDED

#include "hw_store.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _hw_spool_t hw_spool_t;

/* creates dir when missing; NULL with a log line when it cannot be used */
hw_spool_t *hw_spool_open(const char *dir, uint64_t max_bytes);
void hw_spool_destroy(hw_spool_t **self_p);

/* nothing left to drain */
bool hw_spool_empty(hw_spool_t *self);
/* size of the file, and events in it not yet consumed */
uint64_t hw_spool_bytes(hw_spool_t *self);
uint64_t hw_spool_events(hw_spool_t *self);
const char *hw_spool_path(hw_spool_t *self);

/* appends one record of events[0..n) and syncs it; 0, or -1 when full (errno ENOSPC) or
   on an I/O error (logged; nothing appended) */
int hw_spool_append(hw_spool_t *self, const hw_event_t *events, size_t n);

/* adds the events of the records from the read position on (whole records, until at
   least max_events) to out; returns how many, 0 when empty, -1 on a corrupt record
   (logged; the rest of the file is set aside as <path>.corrupt-<time>) */
int64_t hw_spool_read(hw_spool_t *self, size_t max_events, hw_events_t *out);
/* the events of the last read are stored: move past them (truncate when all done) */
void hw_spool_consume(hw_spool_t *self);

int hw_spool_test(bool verbose);

#endif
