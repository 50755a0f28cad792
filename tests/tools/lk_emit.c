/*  lk-emit: a test producer of history events. It joins the bus like a real producer
    (a DEALER to history_endpoint, peer "history-writer") and sends `count` events with
    ids "<prefix>-<i>" (deterministic: running it again re-sends the same events) through
    lk_bus_batch_add(..., reliable), keeping at most `window` envelopes unacked and at most
    `rate` events a second. The bus re-sends what is unacked when the writer restarts, so
    the emitter keeps running across a history-writer kill.

    stdout: "progress sent=N acked=N unacked=N" every 500 ms, then "done sent=N acked=N"
    (exit 0) once every event is acked, or "timeout sent=N acked=N" (exit 1).

    lk-emit -e ENDPOINT [-c count] [-p prefix] [-r rate] [-w window] [-b batch]
            [-t timeout_s] [-n node] [-k kind] [-l lock] */
#include "lk_bus.h"
#include "lk_common.h"
#include "lk_loop.h"
#include <getopt.h>
#include <stdio.h>

typedef struct {
    lk_loop_t *loop;
    lk_bus_t *bus;
    lk_peer_t *writer;
    const char *prefix, *kind, *lock, *node;
    long count, rate, window, batch;
    long sent, acked;
    uint32_t *per_seq; /* events carried by each seq */
    size_t per_seq_cap;
    int64_t started;
    int rc;
} s_emit_t;

static void s_acked(lk_bus_t *bus, lk_peer_t *peer, uint64_t seq, void *arg)
{
    s_emit_t *e = arg;
    if (seq < e->per_seq_cap) {
        e->acked += e->per_seq[seq];
        e->per_seq[seq] = 0;
    }
    if (e->acked >= e->count) {
        printf("done sent=%ld acked=%ld\n", e->sent, e->acked);
        fflush(stdout);
        e->rc = 0;
        lk_loop_stop(e->loop);
    }
}

static void s_produce(lk_loop_t *loop, void *arg)
{
    s_emit_t *e = arg;
    if (e->sent >= e->count || (long)lk_peer_unacked(e->writer) >= e->window)
        return;
    long allowed = e->count;
    if (e->rate > 0) {
        long by_rate = (long)(e->rate * (lk_mono_ms() - e->started) / 1000) + 1;
        if (by_rate < allowed)
            allowed = by_rate;
    }
    long n = allowed - e->sent;
    if (n > e->batch)
        n = e->batch;
    char id[256], details[128];
    for (long k = 0; k < n; k++) {
        long i = e->sent++;
        snprintf(id, sizeof(id), "%s-%ld", e->prefix, i);
        snprintf(details, sizeof(details), "{\"i\": %ld, \"emitter\": \"%s\"}", i, e->node);
        Lk__HistoryEvent ev = LK__HISTORY_EVENT__INIT;
        ev.id = id;
        ev.kind = (char *)e->kind;
        ev.lock = (char *)e->lock;
        ev.actor = (char *)e->node;
        ev.time_ms = (uint64_t)lk_wall_ms();
        ev.details = details;
        uint64_t seq = lk_bus_batch_add(e->bus, e->writer, LK_BODY_HISTORY, &ev, true);
        if (seq >= e->per_seq_cap) {
            size_t cap = e->per_seq_cap ? e->per_seq_cap * 2 : 1024;
            while (cap <= seq)
                cap *= 2;
            e->per_seq = lk_realloc(e->per_seq, cap * sizeof(uint32_t));
            memset(e->per_seq + e->per_seq_cap, 0, (cap - e->per_seq_cap) * sizeof(uint32_t));
            e->per_seq_cap = cap;
        }
        e->per_seq[seq]++;
    }
}

static void s_progress(lk_loop_t *loop, void *arg)
{
    s_emit_t *e = arg;
    printf("progress sent=%ld acked=%ld unacked=%zu\n", e->sent, e->acked,
           lk_peer_unacked(e->writer));
    fflush(stdout);
}

static void s_timeout(lk_loop_t *loop, void *arg)
{
    s_emit_t *e = arg;
    printf("timeout sent=%ld acked=%ld\n", e->sent, e->acked);
    fflush(stdout);
    e->rc = 1;
    lk_loop_stop(loop);
}

int main(int argc, char **argv)
{
    s_emit_t e = {.prefix = "ev",
                  .kind = "lock_state",
                  .lock = "L1",
                  .node = "lk-emit",
                  .count = 100,
                  .window = 20,
                  .batch = 100,
                  .rc = 1};
    const char *endpoint = NULL;
    long timeout = 60;
    int opt;
    while ((opt = getopt(argc, argv, "e:c:p:r:w:b:t:n:k:l:")) != -1) {
        switch (opt) {
        case 'e':
            endpoint = optarg;
            break;
        case 'c':
            e.count = atol(optarg);
            break;
        case 'p':
            e.prefix = optarg;
            break;
        case 'r':
            e.rate = atol(optarg);
            break;
        case 'w':
            e.window = atol(optarg);
            break;
        case 'b':
            e.batch = atol(optarg);
            break;
        case 't':
            timeout = atol(optarg);
            break;
        case 'n':
            e.node = optarg;
            break;
        case 'k':
            e.kind = optarg;
            break;
        case 'l':
            e.lock = optarg;
            break;
        default:
            fprintf(stderr, "usage: lk-emit -e ENDPOINT [-c count] [-p prefix] [-r rate] "
                            "[-w window] [-b batch] [-t timeout_s] [-n node] [-k kind] "
                            "[-l lock]\n");
            return 2;
        }
    }
    if (!endpoint || e.count < 0 || e.window < 1 || e.batch < 1 || timeout < 1) {
        fprintf(stderr, "lk-emit: -e ENDPOINT is required; counts must be positive\n");
        return 2;
    }
    lk_log_init("lk-emit", e.node);
    e.loop = lk_loop_new();
    lk_bus_handlers_t h = {NULL, NULL, NULL};
    e.bus = lk_bus_new(e.loop, e.node, "lk-emit", &h, &e);
    lk_bus_on_acked(e.bus, s_acked);
    e.writer = lk_bus_connect(e.bus, "history-writer", endpoint);
    e.started = lk_mono_ms();
    if (e.count == 0) {
        printf("done sent=0 acked=0\n");
        e.rc = 0;
    } else {
        lk_loop_timer(e.loop, 10, true, s_produce, &e);
        lk_loop_timer(e.loop, 500, true, s_progress, &e);
        lk_loop_timer(e.loop, timeout * 1000, false, s_timeout, &e);
        lk_loop_run(e.loop);
    }
    lk_bus_destroy(&e.bus);
    lk_loop_destroy(&e.loop);
    free(e.per_seq);
    return e.rc;
}
