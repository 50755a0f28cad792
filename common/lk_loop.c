/*  lk_loop: epoll event loop for plain fds, ZeroMQ sockets, timers and signals.

    ZeroMQ sockets are edge-signalled through ZMQ_FD: the fd only tells that ZMQ_EVENTS
    should be read again. So before every epoll_wait the loop asks each socket for
    ZMQ_POLLIN and keeps serving it while it has input; a socket that still has input
    after its share of the turn makes the next epoll_wait non-blocking. Registrations
    removed during a turn are freed at the end of the turn, since the same epoll batch
    may still name them. */
#include "lk_loop.h"
#include "lk_common.h"
#include <czmq.h>
#include <errno.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

typedef enum { S_FD, S_ZSOCK, S_SIGNAL } s_kind_t;

typedef struct s_reg {
    s_kind_t kind;
    int fd;
    lk_loop_fd_fn *fd_fn;
    lk_loop_zsock_fn *z_fn;
    void *zsock;
    void *arg;
    bool dead;
    struct s_reg *next_dead;
} s_reg_t;

typedef struct {
    int id;
    int64_t interval;
    int64_t due;
    bool repeat;
    bool active;
    lk_loop_fn *fn;
    void *arg;
} s_timer_t;

typedef struct {
    lk_loop_fn *fn;
    void *arg;
} s_hook_t;

struct _lk_loop_t {
    int epfd;
    int sigfd;
    s_reg_t sigreg;
    s_reg_t **by_fd;        /* plain fds, indexed by fd */
    int by_fd_cap;
    s_reg_t **zsocks;
    int zsock_count;
    int zsock_cap;
    s_timer_t *timers;
    int timer_count;
    int timer_cap;
    int next_timer_id;
    s_hook_t *hooks;
    int hook_count;
    s_hook_t hup;
    s_reg_t *dead;
    bool stop;
    int64_t now;
};

lk_loop_t *lk_loop_new(void)
{
    lk_loop_t *self = lk_calloc(1, sizeof(*self));
    /* signals come through a signalfd; CZMQ must not install handlers of its own, and the
       mask must be set before ZeroMQ starts its threads, which inherit it */
    zsys_handler_set(NULL);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    self->sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (self->epfd < 0 || self->sigfd < 0) {
        lk_error("event loop: %s", strerror(errno));
        abort();
    }
    self->sigreg.kind = S_SIGNAL;
    self->sigreg.fd = self->sigfd;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &self->sigreg};
    epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->sigfd, &ev);
    self->now = lk_mono_ms();
    return self;
}

static void s_free_dead(lk_loop_t *self)
{
    while (self->dead) {
        s_reg_t *r = self->dead;
        self->dead = r->next_dead;
        free(r);
    }
}

void lk_loop_destroy(lk_loop_t **self_p)
{
    lk_loop_t *self = *self_p;
    if (!self)
        return;
    for (int i = 0; i < self->by_fd_cap; i++)
        free(self->by_fd[i]);
    free(self->by_fd);
    for (int i = 0; i < self->zsock_count; i++)
        free(self->zsocks[i]);
    free(self->zsocks);
    s_free_dead(self);
    free(self->timers);
    free(self->hooks);
    close(self->epfd);
    close(self->sigfd);
    free(self);
    *self_p = NULL;
}

int lk_loop_add_fd(lk_loop_t *self, int fd, uint32_t events, lk_loop_fd_fn *fn, void *arg)
{
    if (fd < 0)
        return -1;
    if (fd >= self->by_fd_cap) {
        int cap = self->by_fd_cap ? self->by_fd_cap : 256;
        while (cap <= fd)
            cap *= 2;
        self->by_fd = lk_realloc(self->by_fd, (size_t)cap * sizeof(s_reg_t *));
        memset(self->by_fd + self->by_fd_cap, 0,
               (size_t)(cap - self->by_fd_cap) * sizeof(s_reg_t *));
        self->by_fd_cap = cap;
    }
    if (self->by_fd[fd])
        return -1;
    s_reg_t *r = lk_calloc(1, sizeof(*r));
    r->kind = S_FD;
    r->fd = fd;
    r->fd_fn = fn;
    r->arg = arg;
    struct epoll_event ev = {.events = events, .data.ptr = r};
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        lk_error("epoll add fd %d: %s", fd, strerror(errno));
        free(r);
        return -1;
    }
    self->by_fd[fd] = r;
    return 0;
}

int lk_loop_mod_fd(lk_loop_t *self, int fd, uint32_t events)
{
    if (fd < 0 || fd >= self->by_fd_cap || !self->by_fd[fd])
        return -1;
    struct epoll_event ev = {.events = events, .data.ptr = self->by_fd[fd]};
    return epoll_ctl(self->epfd, EPOLL_CTL_MOD, fd, &ev);
}

void lk_loop_del_fd(lk_loop_t *self, int fd)
{
    if (fd < 0 || fd >= self->by_fd_cap || !self->by_fd[fd])
        return;
    s_reg_t *r = self->by_fd[fd];
    epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL);
    self->by_fd[fd] = NULL;
    r->dead = true;
    r->next_dead = self->dead;
    self->dead = r;
}

int lk_loop_add_zsock(lk_loop_t *self, void *zsock, lk_loop_zsock_fn *fn, void *arg)
{
    s_reg_t *r = lk_calloc(1, sizeof(*r));
    r->kind = S_ZSOCK;
    r->zsock = zsock;
    r->fd = zsock_fd(zsock);
    r->z_fn = fn;
    r->arg = arg;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = r};
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, r->fd, &ev) != 0) {
        lk_error("epoll add zsock: %s", strerror(errno));
        free(r);
        return -1;
    }
    if (self->zsock_count == self->zsock_cap) {
        self->zsock_cap = self->zsock_cap ? self->zsock_cap * 2 : 8;
        self->zsocks = lk_realloc(self->zsocks, (size_t)self->zsock_cap * sizeof(s_reg_t *));
    }
    self->zsocks[self->zsock_count++] = r;
    return 0;
}

void lk_loop_del_zsock(lk_loop_t *self, void *zsock)
{
    for (int i = 0; i < self->zsock_count; i++) {
        s_reg_t *r = self->zsocks[i];
        if (r->zsock != zsock)
            continue;
        epoll_ctl(self->epfd, EPOLL_CTL_DEL, r->fd, NULL);
        self->zsocks[i] = self->zsocks[--self->zsock_count];
        r->dead = true;
        r->next_dead = self->dead;
        self->dead = r;
        return;
    }
}

int lk_loop_timer(lk_loop_t *self, int64_t interval_ms, bool repeat, lk_loop_fn *fn, void *arg)
{
    if (self->timer_count == self->timer_cap) {
        self->timer_cap = self->timer_cap ? self->timer_cap * 2 : 8;
        self->timers = lk_realloc(self->timers, (size_t)self->timer_cap * sizeof(s_timer_t));
    }
    s_timer_t *t = &self->timers[self->timer_count++];
    t->id = ++self->next_timer_id;
    t->interval = interval_ms < 1 ? 1 : interval_ms;
    t->due = lk_mono_ms() + t->interval;
    t->repeat = repeat;
    t->active = true;
    t->fn = fn;
    t->arg = arg;
    return t->id;
}

void lk_loop_timer_cancel(lk_loop_t *self, int id)
{
    for (int i = 0; i < self->timer_count; i++)
        if (self->timers[i].id == id)
            self->timers[i].active = false;
}

void lk_loop_on_turn_end(lk_loop_t *self, lk_loop_fn *fn, void *arg)
{
    self->hooks = lk_realloc(self->hooks, (size_t)(self->hook_count + 1) * sizeof(s_hook_t));
    self->hooks[self->hook_count].fn = fn;
    self->hooks[self->hook_count].arg = arg;
    self->hook_count++;
}

void lk_loop_remove_turn_end(lk_loop_t *self, lk_loop_fn *fn, void *arg)
{
    int w = 0;
    for (int i = 0; i < self->hook_count; i++)
        if (self->hooks[i].fn != fn || self->hooks[i].arg != arg)
            self->hooks[w++] = self->hooks[i];
    self->hook_count = w;
}

void lk_loop_on_hup(lk_loop_t *self, lk_loop_fn *fn, void *arg)
{
    self->hup.fn = fn;
    self->hup.arg = arg;
}

void lk_loop_stop(lk_loop_t *self)
{
    self->stop = true;
}

int64_t lk_loop_now(lk_loop_t *self)
{
    return self->now;
}

static bool s_zsock_readable(s_reg_t *r)
{
    return (zsock_events(r->zsock) & ZMQ_POLLIN) != 0;
}

/* serves every ZeroMQ socket with input, a bounded number of rounds; true when some
   socket still has input. *served: whether any handler ran. */
static bool s_serve_zsocks(lk_loop_t *self, bool *served)
{
    bool more = false;
    for (int i = 0; i < self->zsock_count; i++) {
        s_reg_t *r = self->zsocks[i];
        int rounds = 0;
        while (!r->dead && s_zsock_readable(r)) {
            if (++rounds > 64) {
                more = true;
                break;
            }
            r->z_fn(self, r->zsock, r->arg);
            *served = true;
        }
    }
    return more;
}

static void s_signals(lk_loop_t *self)
{
    struct signalfd_siginfo si;
    while (read(self->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGHUP) {
            if (self->hup.fn)
                self->hup.fn(self, self->hup.arg);
        } else {
            lk_notice("signal %u: stopping", si.ssi_signo);
            self->stop = true;
        }
    }
}

static void s_run_timers(lk_loop_t *self)
{
    int n = self->timer_count;
    for (int i = 0; i < n; i++) {
        s_timer_t *t = &self->timers[i];
        if (!t->active || t->due > self->now)
            continue;
        if (t->repeat) {
            t->due += t->interval;
            if (t->due <= self->now)
                t->due = self->now + t->interval;
        } else
            t->active = false;
        lk_loop_fn *fn = t->fn;
        void *arg = t->arg;
        fn(self, arg);  /* may add timers: self->timers may move */
    }
    int w = 0;
    for (int i = 0; i < self->timer_count; i++)
        if (self->timers[i].active)
            self->timers[w++] = self->timers[i];
    self->timer_count = w;
}

int lk_loop_run(lk_loop_t *self)
{
    struct epoll_event events[256];
    self->stop = false;
    bool first = true; /* what was queued before the loop ran goes out now */
    while (!self->stop) {
        self->now = lk_mono_ms();
        bool served = first;
        first = false;
        bool more = s_serve_zsocks(self, &served);
        /* the hooks ran at the end of the last turn: again only if a socket was served */
        for (int i = 0; served && i < self->hook_count; i++)
            self->hooks[i].fn(self, self->hooks[i].arg);
        /* the hooks may have sent: sockets can have become readable without a signal */
        for (int i = 0; i < self->zsock_count && !more; i++)
            more = s_zsock_readable(self->zsocks[i]);
        int timeout = 1000;
        for (int i = 0; i < self->timer_count; i++) {
            if (!self->timers[i].active)
                continue;
            int64_t d = self->timers[i].due - self->now;
            if (d < timeout)
                timeout = d < 0 ? 0 : (int)d;
        }
        if (more)
            timeout = 0;
        int n = epoll_wait(self->epfd, events, (int)LK_ARRAY_LEN(events), timeout);
        if (n < 0 && errno != EINTR) {
            lk_error("epoll_wait: %s", strerror(errno));
            return -1;
        }
        self->now = lk_mono_ms();
        for (int i = 0; i < n; i++) {
            s_reg_t *r = events[i].data.ptr;
            if (r->dead)
                continue;
            if (r->kind == S_FD)
                r->fd_fn(self, r->fd, events[i].events, r->arg);
            else if (r->kind == S_SIGNAL)
                s_signals(self);
            /* zsocks are served at the top of the turn */
        }
        s_run_timers(self);
        s_serve_zsocks(self, &served);
        for (int i = 0; i < self->hook_count; i++)
            self->hooks[i].fn(self, self->hooks[i].arg);
        s_free_dead(self);
    }
    return 0;
}

/* selftest: a pipe, a timer, a turn hook */
typedef struct {
    int reads;
    int ticks;
    int turns;
    lk_loop_t *loop;
} s_test_t;

static void s_test_read(lk_loop_t *loop, int fd, uint32_t events, void *arg)
{
    s_test_t *t = arg;
    char buf[16];
    if (read(fd, buf, sizeof(buf)) > 0)
        t->reads++;
}

static void s_test_tick(lk_loop_t *loop, void *arg)
{
    s_test_t *t = arg;
    if (++t->ticks == 3)
        lk_loop_stop(loop);
}

static void s_test_turn(lk_loop_t *loop, void *arg)
{
    ((s_test_t *)arg)->turns++;
}

int lk_loop_test(bool verbose)
{
    lk_loop_t *loop = lk_loop_new();
    s_test_t t = {0};
    int p[2];
    if (pipe(p) != 0)
        return -1;
    lk_loop_add_fd(loop, p[0], EPOLLIN, s_test_read, &t);
    if (write(p[1], "x", 1) != 1)
        return -1;
    lk_loop_timer(loop, 10, true, s_test_tick, &t);
    lk_loop_on_turn_end(loop, s_test_turn, &t);
    lk_loop_run(loop);
    lk_loop_del_fd(loop, p[0]);
    close(p[0]);
    close(p[1]);
    lk_loop_destroy(&loop);
    int rc = (t.reads == 1 && t.ticks == 3 && t.turns >= 3) ? 0 : -1;
    if (verbose)
        printf("lk_loop: reads %d ticks %d turns %d\n", t.reads, t.ticks, t.turns);
    return rc;
}
