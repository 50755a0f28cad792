/*  od_db: PostgreSQL on a worker thread. The loop hands queries over (od_db_query) and gets
    each result back through an eventfd, in order; a slow or vanished server delays the
    answers, never the loop (lk_pg bounds every statement and reconnects by itself). */
#include "od_internal.h"
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

typedef struct job {
    char *sql;
    int n;
    char **params;
    od_db_fn *done;
    void *arg;
    lk_pg_result_t *res;
    struct job *next;
} job_t;

struct od_db {
    od_t *od;
    lk_pg_t *pg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job_t *todo, *todo_tail, *done, *done_tail;
    size_t backlog;
    bool stop, started;
    int efd;
};

static void *s_worker(void *arg)
{
    od_db_t *db = arg;
    pthread_mutex_lock(&db->mu);
    /* at stop, what is queued still runs (the last offsets) */
    while (!db->stop || db->todo) {
        job_t *j = db->todo;
        if (!j) {
            pthread_cond_wait(&db->cv, &db->mu);
            continue;
        }
        db->todo = j->next;
        if (!db->todo)
            db->todo_tail = NULL;
        pthread_mutex_unlock(&db->mu);
        j->res = lk_pg_exec(db->pg, j->sql, j->n, (const char *const *)j->params);
        if (j->res->status == LK_PG_ERROR)
            lk_warn("query failed: %s", j->res->message);
        j->next = NULL;
        pthread_mutex_lock(&db->mu);
        if (db->done_tail)
            db->done_tail->next = j;
        else
            db->done = j;
        db->done_tail = j;
        uint64_t one = 1;
        ssize_t w = write(db->efd, &one, sizeof(one));
        (void)w;
    }
    pthread_mutex_unlock(&db->mu);
    return NULL;
}

static void s_job_free(job_t *j)
{
    free(j->sql);
    for (int i = 0; i < j->n; i++)
        free(j->params[i]);
    free(j->params);
    lk_pg_result_free(&j->res);
    free(j);
}

static void s_on_done(lk_loop_t *loop, int fd, uint32_t events, void *arg)
{
    od_db_t *db = arg;
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof(v));
    (void)r;
    pthread_mutex_lock(&db->mu);
    job_t *list = db->done;
    db->done = db->done_tail = NULL;
    pthread_mutex_unlock(&db->mu);
    while (list) {
        job_t *j = list;
        list = j->next;
        db->backlog--;
        if (j->done)
            j->done(db->od, j->res, j->arg);
        s_job_free(j);
    }
}

od_db_t *od_db_new(od_t *od, const char *conninfo)
{
    od_db_t *db = lk_calloc(1, sizeof(*db));
    db->od = od;
    db->pg = lk_pg_new(conninfo, od->node);
    pthread_mutex_init(&db->mu, NULL);
    pthread_cond_init(&db->cv, NULL);
    db->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (db->efd < 0 || pthread_create(&db->thread, NULL, s_worker, db) != 0) {
        lk_error("cannot start the database thread");
        od_db_destroy(&db);
        return NULL;
    }
    db->started = true;
    lk_loop_add_fd(od->loop, db->efd, EPOLLIN, s_on_done, db);
    return db;
}

void od_db_destroy(od_db_t **db_p)
{
    od_db_t *db = *db_p;
    if (!db)
        return;
    if (db->started) {
        pthread_mutex_lock(&db->mu);
        db->stop = true;
        pthread_cond_signal(&db->cv);
        pthread_mutex_unlock(&db->mu);
        pthread_join(db->thread, NULL);
        lk_loop_del_fd(db->od->loop, db->efd);
    }
    for (job_t *lists[2] = {db->todo, db->done}, **l = lists; l < lists + 2; l++)
        while (*l) {
            job_t *j = *l;
            *l = j->next;
            s_job_free(j);
        }
    if (db->efd >= 0)
        close(db->efd);
    lk_pg_destroy(&db->pg);
    pthread_mutex_destroy(&db->mu);
    pthread_cond_destroy(&db->cv);
    free(db);
    *db_p = NULL;
}

void od_db_query(od_t *self, const char *sql, int n, const char *const *params, od_db_fn *done,
                 void *arg)
{
    od_db_t *db = self->db;
    job_t *j = lk_calloc(1, sizeof(*j));
    j->sql = lk_strdup(sql);
    j->n = n;
    j->params = lk_calloc(n ? (size_t)n : 1, sizeof(char *));
    for (int i = 0; i < n; i++)
        j->params[i] = params[i] ? lk_strdup(params[i]) : NULL;
    j->done = done;
    j->arg = arg;
    pthread_mutex_lock(&db->mu);
    if (db->todo_tail)
        db->todo_tail->next = j;
    else
        db->todo = j;
    db->todo_tail = j;
    db->backlog++;
    pthread_cond_signal(&db->cv);
    pthread_mutex_unlock(&db->mu);
}

size_t od_db_backlog(od_t *self)
{
    return self->db->backlog;
}
