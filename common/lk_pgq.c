/*  lk_pgq: see lk_pgq.h. Two lists under one mutex: todo (loop → worker) and done
    (worker → loop); the worker writes the eventfd after each statement, the loop takes
    the whole done list at once. */
#include "lk_pgq.h"
#include "lk_common.h"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

typedef struct s_job {
    char *sql;
    int n;
    char **params;
    lk_pgq_fn *done;
    void *arg;
    lk_pg_result_t *res;
    struct s_job *next;
} s_job_t;

struct _lk_pgq_t {
    lk_loop_t *loop;
    lk_pg_t *pg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    s_job_t *todo, *todo_tail, *done, *done_tail;
    size_t backlog; /* the loop's count: given and not yet handed back */
    bool stop, drain;
    int efd;
};

static void s_job_free(s_job_t *j, bool answered)
{
    if (!answered && j->done)
        j->done(NULL, j->arg);
    free(j->sql);
    for (int i = 0; i < j->n; i++)
        free(j->params[i]);
    free(j->params);
    lk_pg_result_free(&j->res);
    free(j);
}

static void *s_worker(void *arg)
{
    lk_pgq_t *self = arg;
    pthread_mutex_lock(&self->mu);
    while (!self->stop || (self->drain && self->todo)) {
        s_job_t *j = self->todo;
        if (!j) {
            pthread_cond_wait(&self->cv, &self->mu);
            continue;
        }
        self->todo = j->next;
        if (!self->todo)
            self->todo_tail = NULL;
        j->next = NULL;
        pthread_mutex_unlock(&self->mu);
        j->res = lk_pg_exec(self->pg, j->sql, j->n, (const char *const *)j->params);
        pthread_mutex_lock(&self->mu);
        if (self->done_tail)
            self->done_tail->next = j;
        else
            self->done = j;
        self->done_tail = j;
        uint64_t one = 1;
        (void)!write(self->efd, &one, sizeof(one));
    }
    pthread_mutex_unlock(&self->mu);
    return NULL;
}

/* the loop side: hands over every result the worker finished */
static void s_on_done(lk_loop_t *loop, int fd, uint32_t events, void *arg)
{
    lk_pgq_t *self = arg;
    uint64_t v;
    (void)!read(fd, &v, sizeof(v));
    pthread_mutex_lock(&self->mu);
    s_job_t *list = self->done;
    self->done = self->done_tail = NULL;
    pthread_mutex_unlock(&self->mu);
    while (list) {
        s_job_t *j = list;
        list = j->next;
        self->backlog--;
        if (j->done)
            j->done(j->res, j->arg);
        s_job_free(j, true);
    }
}

lk_pgq_t *lk_pgq_new(lk_loop_t *loop, lk_pg_t *pg)
{
    lk_pgq_t *self = lk_calloc(1, sizeof(*self));
    self->loop = loop;
    self->pg = pg;
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cv, NULL);
    self->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->efd < 0 || lk_loop_add_fd(loop, self->efd, EPOLLIN, s_on_done, self) != 0) {
        lk_error("PostgreSQL worker: no eventfd (%s)", strerror(errno));
    } else if (pthread_create(&self->thread, NULL, s_worker, self) != 0) {
        lk_error("PostgreSQL worker: cannot start the thread");
        lk_loop_del_fd(loop, self->efd);
    } else
        return self;
    if (self->efd >= 0)
        close(self->efd);
    lk_pg_destroy(&self->pg);
    pthread_mutex_destroy(&self->mu);
    pthread_cond_destroy(&self->cv);
    free(self);
    return NULL;
}

void lk_pgq_destroy(lk_pgq_t **self_p, bool drain)
{
    lk_pgq_t *self = *self_p;
    if (!self)
        return;
    pthread_mutex_lock(&self->mu);
    self->stop = true;
    self->drain = drain;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
    pthread_join(self->thread, NULL);
    lk_loop_del_fd(self->loop, self->efd);
    close(self->efd);
    for (s_job_t *lists[2] = {self->done, self->todo}, **l = lists; l < lists + 2; l++)
        while (*l) {
            s_job_t *j = *l;
            *l = j->next;
            s_job_free(j, false);
        }
    lk_pg_destroy(&self->pg);
    pthread_mutex_destroy(&self->mu);
    pthread_cond_destroy(&self->cv);
    free(self);
    *self_p = NULL;
}

void lk_pgq_exec(lk_pgq_t *self, const char *sql, int n, const char *const *params, lk_pgq_fn *done,
                 void *arg)
{
    s_job_t *j = lk_calloc(1, sizeof(*j));
    j->sql = lk_strdup(sql);
    j->n = n;
    j->params = lk_calloc(n ? (size_t)n : 1, sizeof(char *));
    for (int i = 0; i < n; i++)
        j->params[i] = params[i] ? lk_strdup(params[i]) : NULL;
    j->done = done;
    j->arg = arg;
    self->backlog++;
    pthread_mutex_lock(&self->mu);
    if (self->todo_tail)
        self->todo_tail->next = j;
    else
        self->todo = j;
    self->todo_tail = j;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
}

size_t lk_pgq_backlog(lk_pgq_t *self)
{
    return self->backlog;
}

/* ---- selftest ---- */

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "lk_pgq: check failed at line %d: %s\n", __LINE__, #cond);             \
            rc = -1;                                                                               \
        }                                                                                          \
    } while (0)

typedef struct {
    lk_loop_t *loop;
    int answered, link, nulls;
} s_test_t;

static void s_test_done(lk_pg_result_t *r, void *arg)
{
    s_test_t *t = arg;
    if (!r) {
        t->nulls++;
        return;
    }
    t->link += r->status == LK_PG_LINK;
    if (++t->answered == 3)
        lk_loop_stop(t->loop);
}

static void s_test_timeout(lk_loop_t *loop, void *arg)
{
    lk_loop_stop(loop);
}

int lk_pgq_test(bool verbose)
{
    int rc = 0;
    s_test_t t = {.loop = lk_loop_new()};
    /* nothing listens on port 1: every statement fails at once with LK_PG_LINK */
    lk_pg_t *pg = lk_pg_new("host=127.0.0.1 port=1 dbname=none user=none", "lk_pgq_test");
    lk_pg_set_timing(pg, 1, 0, 60000);
    lk_pgq_t *q = lk_pgq_new(t.loop, pg);
    S_CHECK(q != NULL);
    if (!q) {
        lk_loop_destroy(&t.loop);
        return rc;
    }
    const char *p[] = {"x"};
    for (int i = 0; i < 3; i++)
        lk_pgq_exec(q, "SELECT $1::text", 1, p, s_test_done, &t);
    S_CHECK(lk_pgq_backlog(q) == 3);
    int timer = lk_loop_timer(t.loop, 5000, false, s_test_timeout, NULL);
    lk_loop_run(t.loop);
    lk_loop_timer_cancel(t.loop, timer);
    S_CHECK(t.answered == 3 && t.link == 3 && t.nulls == 0);
    S_CHECK(lk_pgq_backlog(q) == 0);
    /* given, never handed over: the callback gets NULL at the destroy, drained or not */
    lk_pgq_exec(q, "SELECT 1", 0, NULL, s_test_done, &t);
    lk_pgq_exec(q, "SELECT 2", 0, NULL, s_test_done, &t);
    lk_pgq_destroy(&q, false);
    S_CHECK(q == NULL && t.nulls == 2 && t.answered == 3);
    pg = lk_pg_new("host=127.0.0.1 port=1 dbname=none user=none", "lk_pgq_test");
    lk_pg_set_timing(pg, 1, 0, 60000);
    q = lk_pgq_new(t.loop, pg);
    lk_pgq_exec(q, "SELECT 3", 0, NULL, s_test_done, &t);
    lk_pgq_destroy(&q, true);
    S_CHECK(t.nulls == 3 && t.answered == 3);
    lk_loop_destroy(&t.loop);
    if (verbose)
        printf("lk_pgq: %s\n", rc == 0 ? "ok" : "FAILED");
    return rc;
}
