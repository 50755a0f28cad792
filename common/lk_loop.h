/*  lk_loop: the one event loop of a Latchkey process (epoll).

    It serves plain file descriptors (client sockets, listeners), ZeroMQ sockets through
    their ZMQ_FD, a handful of timers, SIGINT/SIGTERM/SIGHUP through a signalfd, and
    "turn end" hooks that run once after every batch of events: that is where nodes flush
    their bus batches, so nothing waits when idle and much is grouped under load. */
#ifndef LK_LOOP_H_INCLUDED
#define LK_LOOP_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>

typedef struct _lk_loop_t lk_loop_t;

/* events are EPOLLIN / EPOLLOUT / EPOLLERR / EPOLLHUP bits */
typedef void(lk_loop_fd_fn)(lk_loop_t *loop, int fd, uint32_t events, void *arg);
/* called while the socket has input; should read at most a few messages and return */
typedef void(lk_loop_zsock_fn)(lk_loop_t *loop, void *zsock, void *arg);
typedef void(lk_loop_fn)(lk_loop_t *loop, void *arg);

lk_loop_t *lk_loop_new(void);
void lk_loop_destroy(lk_loop_t **self_p);

/* registers fd for events (level-triggered); arg is passed back */
int lk_loop_add_fd(lk_loop_t *self, int fd, uint32_t events, lk_loop_fd_fn *fn, void *arg);
int lk_loop_mod_fd(lk_loop_t *self, int fd, uint32_t events);
void lk_loop_del_fd(lk_loop_t *self, int fd);

/* zsock is a CZMQ zsock_t *. The loop calls fn whenever the socket is readable. */
int lk_loop_add_zsock(lk_loop_t *self, void *zsock, lk_loop_zsock_fn *fn, void *arg);
void lk_loop_del_zsock(lk_loop_t *self, void *zsock);

/* a timer every interval_ms (repeat) or once; returns an id > 0 */
int lk_loop_timer(lk_loop_t *self, int64_t interval_ms, bool repeat, lk_loop_fn *fn, void *arg);
void lk_loop_timer_cancel(lk_loop_t *self, int id);

/* runs fn after each turn of the loop, in order of registration */
void lk_loop_on_turn_end(lk_loop_t *self, lk_loop_fn *fn, void *arg);
void lk_loop_remove_turn_end(lk_loop_t *self, lk_loop_fn *fn, void *arg);
/* SIGHUP handler (SIGINT and SIGTERM stop the loop) */
void lk_loop_on_hup(lk_loop_t *self, lk_loop_fn *fn, void *arg);

/* runs until lk_loop_stop or SIGINT/SIGTERM; returns 0 */
int lk_loop_run(lk_loop_t *self);
void lk_loop_stop(lk_loop_t *self);
/* the time at the start of this turn (lk_mono_ms), cheap to ask often */
int64_t lk_loop_now(lk_loop_t *self);

int lk_loop_test(bool verbose);

#endif
