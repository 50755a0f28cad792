/*  lk_pgq: PostgreSQL off the event loop — statements run in order on a worker thread with
    its own lk_pg connection, and each result comes back to the loop through an eventfd.

    A slow or vanished server delays the answers, never the loop (lk_pg bounds every
    statement and reconnects by itself). The loop hands a statement over with lk_pgq_exec
    (sql and parameters are copied); its callback runs later on the loop's thread, in the
    order the statements were given. Used by the ota-distributor (od_db.c) and the
    lock-arbiter's history query (ar_query.c). */
#ifndef LK_PGQ_H_INCLUDED
#define LK_PGQ_H_INCLUDED

#include "lk_loop.h"
#include "lk_pg.h"
#include <stdbool.h>
#include <stddef.h>

typedef struct _lk_pgq_t lk_pgq_t;

/* On the loop's thread: r is the statement's result (freed after the call). r is NULL
   when the queue is destroyed before the statement was answered: free arg only. */
typedef void(lk_pgq_fn)(lk_pg_result_t *r, void *arg);

/* Starts the worker on pg (taken over: destroyed with the queue, or at once on failure)
   and watches its eventfd on loop. NULL (logged) when the thread cannot start. */
lk_pgq_t *lk_pgq_new(lk_loop_t *loop, lk_pg_t *pg);
/* Stops the worker. drain: the statements queued still run first (their writes are
   done); else they are dropped, only the running one finishes (bounded by its statement
   timeout). No result is handed over any more: callbacks get r == NULL. */
void lk_pgq_destroy(lk_pgq_t **self_p, bool drain);

/* queues one statement (text parameters, NULL = SQL NULL); done (may be NULL) gets the
   result on the loop's thread */
void lk_pgq_exec(lk_pgq_t *self, const char *sql, int n, const char *const *params, lk_pgq_fn *done,
                 void *arg);
/* statements given and not yet answered (queued, running, or done and not handed over) */
size_t lk_pgq_backlog(lk_pgq_t *self);

/* selftest, without a server: answers, backlog, and the NULL results of a destroy */
int lk_pgq_test(bool verbose);

#endif
