/*  la_log: `latchkey log dump|replay` — read the message log that services write with
    msglog_dir (common/lk_msglog.h).

    dump: every record of the given segment files as one JSON line: receive time, the
    sending peer's identity, the envelope decoded (lk_pbjson). A torn tail — the last
    record of a segment cut by a crash — ends that file with a note on stderr.
    replay: sends the recorded envelopes to a service endpoint from a bus node of its
    own, in order, at the recorded pace divided by --speed (0 = as fast as possible), so a
    bug seen in production can be re-run against a test stack. -b keeps one kind of body
    (e.g. publish): replaying a frontend's attaches would move its clients to the replayer. */
#include "la_cli.h"
#include "latchkey.pb-c.h"
#include "lk_bus.h"
#include "lk_common.h"
#include "lk_msglog.h"
#include "lk_pbjson.h"
#include <czmq.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static int s_dump(int argc, char **argv)
{
    int rc = LA_EXIT_OK;
    for (int i = 0; i < argc; i++) {
        lk_msglog_reader_t *r = lk_msglog_reader_open(argv[i]);
        if (!r) {
            fprintf(stderr, "latchkey: cannot read %s\n", argv[i]);
            rc = LA_EXIT_FAIL;
            continue;
        }
        lk_msglog_record_t rec;
        int k;
        while ((k = lk_msglog_reader_next(r, &rec)) == 1) {
            Lk__Envelope *env = lk__envelope__unpack(NULL, rec.len, rec.data);
            char *json = env ? lk_pbjson_print(&env->base) : NULL;
            printf("{\"time_ns\":\"%" PRIu64 "\",\"peer\":\"%s\",\"bytes\":%zu,\"envelope\":%s}\n",
                   rec.time_ns, rec.peer, rec.len, json ? json : "null");
            free(json);
            if (env)
                lk__envelope__free_unpacked(env, NULL);
        }
        if (k < 0)
            fprintf(stderr, "latchkey: %s: torn or corrupt record, rest of file skipped\n",
                    argv[i]);
        lk_msglog_reader_close(&r);
    }
    return rc;
}

typedef struct {
    lk_loop_t *loop;
} s_replay_t;

static void s_stop(lk_loop_t *loop, void *arg)
{
    lk_loop_stop(loop);
}

/* lets the bus work (connect, send) for ms milliseconds */
static void s_spin(lk_loop_t *loop, int ms)
{
    lk_loop_timer(loop, ms < 1 ? 1 : ms, false, s_stop, NULL);
    lk_loop_run(loop);
}

/* the name of an envelope's body ("publish", "attach", ...) */
static const char *s_body_name(const Lk__Envelope *env)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(&lk__envelope__descriptor, env->body_case);
    return f ? f->name : "";
}

static int s_replay(lk_config_t *config, int argc, char **argv)
{
    const char *endpoint = NULL, *name = "replay-target", *only = NULL;
    double speed = 1.0;
    int opt;
    optind = 1;
    while ((opt = getopt(argc, argv, "b:e:n:s:")) != -1) {
        switch (opt) {
        case 'b':
            only = optarg;
            break;
        case 'e':
            endpoint = optarg;
            break;
        case 'n':
            name = optarg;
            break;
        case 's':
            speed = atof(optarg);
            break;
        default:
            return la_usage("log");
        }
    }
    if (!endpoint || optind >= argc)
        return la_usage("log");
    lk_loop_t *loop = lk_loop_new();
    char node[64];
    snprintf(node, sizeof(node), "replay-%d", (int)getpid());
    lk_bus_t *bus = lk_bus_new(loop, node, "latchkey", NULL, NULL);
    lk_bus_configure(bus, config);
    lk_peer_t *peer = lk_bus_connect(bus, name, endpoint);
    s_spin(loop, 300);
    if (!lk_peer_alive(peer))
        fprintf(stderr, "latchkey: %s does not answer; sending anyway\n", endpoint);
    int64_t sent = 0;
    uint64_t first_rec = 0;
    int64_t first_wall = lk_mono_ms();
    for (int i = optind; i < argc; i++) {
        lk_msglog_reader_t *r = lk_msglog_reader_open(argv[i]);
        if (!r) {
            fprintf(stderr, "latchkey: cannot read %s\n", argv[i]);
            continue;
        }
        lk_msglog_record_t rec;
        while (lk_msglog_reader_next(r, &rec) == 1) {
            Lk__Envelope *env = lk__envelope__unpack(NULL, rec.len, rec.data);
            if (!env)
                continue;
            if (env->body_case == LK__ENVELOPE__BODY_HELLO ||
                env->body_case == LK__ENVELOPE__BODY__NOT_SET ||
                (only && strcmp(only, s_body_name(env)) != 0)) {
                lk__envelope__free_unpacked(env, NULL);
                continue;
            }
            if (speed > 0) {
                if (!first_rec)
                    first_rec = rec.time_ns;
                int64_t due = first_wall + (int64_t)((rec.time_ns - first_rec) / 1e6 / speed);
                int64_t wait = due - lk_mono_ms();
                if (wait > 0)
                    s_spin(loop, (int)wait);
            }
            /* a frontend's "route it for me" (direct QoS 0): the router is to deliver it */
            if (env->body_case == LK__ENVELOPE__BODY_PUBLISH)
                for (size_t k = 0; k < env->publish->n_items; k++)
                    env->publish->items[k]->resolve = false;
            /* unacknowledged: the replayed target need not answer to us */
            lk_bus_send(bus, peer, env, false);
            lk__envelope__free_unpacked(env, NULL);
            sent++;
        }
        lk_msglog_reader_close(&r);
    }
    s_spin(loop, 200);
    printf("replayed %" PRId64 " envelope(s) to %s\n", sent, endpoint);
    lk_bus_destroy(&bus);
    lk_loop_destroy(&loop);
    return LA_EXIT_OK;
}

int la_cmd_log(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc < 3)
        return la_usage("log");
    if (strcmp(argv[1], "dump") == 0)
        return s_dump(argc - 2, argv + 2);
    if (strcmp(argv[1], "replay") == 0)
        return s_replay(ctx->config, argc - 1, argv + 1);
    return la_usage("log");
}
