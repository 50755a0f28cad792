/*  od_db: PostgreSQL on a worker thread (common/lk_pgq). The loop hands queries over
    (od_db_query) and gets each result back in order; a slow or vanished server delays the
    answers, never the loop. At shutdown what is queued still runs (the last offsets). */
#include "od_internal.h"

/* one query's callback, bound to the service */
typedef struct {
    od_t *od;
    od_db_fn *done;
    void *arg;
} s_call_t;

static void s_done(lk_pg_result_t *r, void *arg)
{
    s_call_t *c = arg;
    if (r && r->status == LK_PG_ERROR)
        lk_warn("query failed: %s", r->message);
    /* no result: the queue is going away, nobody waits for the answer */
    if (r && c->done)
        c->done(c->od, r, c->arg);
    free(c);
}

od_db_t *od_db_new(od_t *od, const char *conninfo)
{
    return lk_pgq_new(od->loop, lk_pg_new(conninfo, od->node));
}

void od_db_destroy(od_db_t **db_p)
{
    lk_pgq_destroy(db_p, true);
}

void od_db_query(od_t *self, const char *sql, int n, const char *const *params, od_db_fn *done,
                 void *arg)
{
    s_call_t *c = lk_malloc(sizeof(*c));
    *c = (s_call_t){self, done, arg};
    lk_pgq_exec(self->db, sql, n, params, s_done, c);
}

size_t od_db_backlog(od_t *self)
{
    return lk_pgq_backlog(self->db);
}
