/*  la_log: `latchkey log dump|replay` — read the message log that services write with
    msglog_dir (common/lk_msglog.h).

    dump: every record of the given segment files as one JSON line: receive time, the
    sending peer's identity, the envelope decoded (lk_pbjson). Heartbeats (hello) and
    envelopes with only acks are left out unless -a; -t <body> keeps one kind (publish,
    deliver, lock_snapshot, ...; repeatable). A torn tail — the last record of a segment
    cut by a crash — ends that file with a note on stderr.
    replay: sends the recorded envelopes to a service endpoint from a bus node of its
    own, in order, at the recorded pace divided by --speed (0 = as fast as possible), so a
    bug seen in production can be re-run against a test stack. -b keeps one kind of body
    (e.g. publish): replaying a frontend's attaches would move its clients to the replayer.
    Recorded LoginRequests are never sent again (they would issue working credentials).
    -D (decisions): the segments are a lock-arbiter's; its LockSnapshots are written into
    the Redis of the CLI's configuration (-c: the TEST stack's) and the confirmations it
    received are published again through the router at -e, as their original users, with
    their acceptance times shifted to now, at the recorded pace: the test stack's arbiter
    takes the same decisions. The endpoint is always explicit; nothing else is sent. */
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

/* the name of an envelope's body ("publish", "attach", ...) */
static const char *s_body_name(const Lk__Envelope *env)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(&lk__envelope__descriptor, env->body_case);
    return f ? f->name : "";
}

static int s_dump(int argc, char **argv)
{
    int rc = LA_EXIT_OK;
    bool all = false;
    const char *types[16];
    int n_types = 0, opt;
    optind = 1;
    while ((opt = getopt(argc, argv, "at:")) != -1) {
        if (opt == 'a')
            all = true;
        else if (opt == 't' && n_types < 16)
            types[n_types++] = optarg;
        else
            return la_usage("log");
    }
    argc -= optind;
    argv += optind;
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
            bool keep = true;
            if (env && !all &&
                (env->body_case == LK__ENVELOPE__BODY_HELLO ||
                 env->body_case == LK__ENVELOPE__BODY__NOT_SET))
                keep = false;
            if (env && n_types) {
                keep = false;
                for (int t = 0; t < n_types; t++)
                    keep |= strcmp(types[t], s_body_name(env)) == 0;
            }
            if (!keep) {
                lk__envelope__free_unpacked(env, NULL);
                continue;
            }
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

/* -D: a snapshot written into the test stack's Redis (the arbiter's mirror keys), in one
   transaction: the arbiter may be deciding the previous confirmation meanwhile, and a lock
   without bindings for a moment refuses it */
static void s_apply_snapshot(la_ctx_t *ctx, const Lk__LockSnapshot *sn, bool first)
{
    char kb[300], kc[300], kr[300];
    snprintf(kb, sizeof(kb), "lk:{arb}:bind:%s", sn->lock);
    snprintf(kc, sizeof(kc), "lk:{arb}:lockcfg:%s", sn->lock);
    snprintf(kr, sizeof(kr), "lk:{arb}:round:%s", sn->lock);
    la_tx_t tx = {0};
    const char *d[] = {"DEL", kb, kc};
    la_tx_add(&tx, 3, d);
    for (size_t i = 0; i < sn->n_bindings; i++) {
        char *copy = lk_strdup(sn->bindings[i]), *tab = strchr(copy, '\t');
        if (tab) {
            *tab = 0;
            char ku[300];
            snprintf(ku, sizeof(ku), "lk:ubind:%s", copy);
            const char *a[] = {"HSET", kb, copy, tab + 1};
            const char *b[] = {"HSET", ku, sn->lock, tab + 1};
            const char *u[] = {"SADD", "lk:users", copy};
            la_tx_add(&tx, 4, a);
            la_tx_add(&tx, 4, b);
            la_tx_add(&tx, 3, u);
        }
        free(copy);
    }
    if (sn->window_ms && *sn->window_ms) {
        const char *a[] = {"HSET", kc, "window_ms", sn->window_ms};
        la_tx_add(&tx, 4, a);
    }
    if (sn->quorum && *sn->quorum) {
        const char *a[] = {"HSET", kc, "quorum", sn->quorum};
        la_tx_add(&tx, 4, a);
    }
    if (sn->user && *sn->user && sn->login && *sn->login) {
        /* the mapping only, for one hour: no credential is created */
        char kl[300];
        snprintf(kl, sizeof(kl), "lk:{arb}:login:%s", sn->login);
        const char *a[] = {"SET", kl, sn->user, "EX", "3600"};
        la_tx_add(&tx, 5, a);
    }
    if (first && sn->n_round == 0) {
        const char *a[] = {"DEL", kr};
        la_tx_add(&tx, 2, a);
    }
    la_tx_run(ctx, &tx);
    /* a round open when the recording began is rebuilt once; later ones grow by replay
       (its times are the recorded ones: a recording should start before the round) */
}

static int s_replay(la_ctx_t *ctx, int argc, char **argv)
{
    lk_config_t *config = ctx->config;
    const char *endpoint = NULL, *name = "replay-target", *only = NULL;
    double speed = 1.0;
    bool decisions = false;
    zhashx_t *seen_locks = NULL;
    int64_t shift_ms = 0;
    bool shift_set = false;
    int opt;
    optind = 1;
    const char *only_lock = NULL;
    char lock_prefix[300] = "";
    while ((opt = getopt(argc, argv, "b:e:n:s:Dl:")) != -1) {
        switch (opt) {
        case 'l':
            only_lock = optarg;
            snprintf(lock_prefix, sizeof(lock_prefix), "/%s/", optarg);
            break;
        case 'D':
            decisions = true;
            name = "router";
            break;
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
            /* never: heartbeats, bare acks, and LoginRequests (they would issue new
               working credentials) */
            if (env->body_case == LK__ENVELOPE__BODY_HELLO ||
                env->body_case == LK__ENVELOPE__BODY__NOT_SET ||
                env->body_case == LK__ENVELOPE__BODY_LOGIN_REQUEST ||
                (only && strcmp(only, s_body_name(env)) != 0)) {
                lk__envelope__free_unpacked(env, NULL);
                continue;
            }
            if (decisions) {
                if (env->body_case == LK__ENVELOPE__BODY_LOCK_SNAPSHOT &&
                    (!only_lock || strcmp(only_lock, env->lock_snapshot->lock) == 0)) {
                    if (!seen_locks)
                        seen_locks = zhashx_new();
                    bool first = !zhashx_lookup(seen_locks, env->lock_snapshot->lock);
                    zhashx_insert(seen_locks, env->lock_snapshot->lock, (void *)1);
                    s_apply_snapshot(ctx, env->lock_snapshot, first);
                    lk__envelope__free_unpacked(env, NULL);
                    continue;
                }
                /* the confirmations the arbiter was handed (its session's deliveries) */
                bool mine = env->body_case == LK__ENVELOPE__BODY_DELIVER;
                for (size_t k = 0; mine && only_lock && k < env->deliver->n_items; k++) {
                    const Lk__Msg *m = env->deliver->items[k]->msg;
                    mine =
                        m && m->topic && strncmp(m->topic, lock_prefix, strlen(lock_prefix)) == 0;
                }
                if (!mine) {
                    lk__envelope__free_unpacked(env, NULL);
                    continue;
                }
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
            if (decisions) {
                /* each delivered confirmation becomes a publish of its original user; the
                   acceptance time moves by the time between recording and replay */
                Lk__Publish **pubs = lk_calloc(env->deliver->n_items + 1, sizeof(*pubs));
                Lk__Publish *pv = lk_calloc(env->deliver->n_items + 1, sizeof(*pv));
                size_t np = 0;
                for (size_t k = 0; k < env->deliver->n_items; k++) {
                    Lk__Msg *m = env->deliver->items[k]->msg;
                    if (!m || !m->topic || m->topic[0] != '/' || strcmp(m->topic, "/unauth") == 0)
                        continue;
                    /* a stored copy handed over again (after a restart) was one message */
                    char sid[32];
                    snprintf(sid, sizeof(sid), "%" PRIu64, env->deliver->items[k]->store_id);
                    if (!seen_locks)
                        seen_locks = zhashx_new();
                    char key[40];
                    snprintf(key, sizeof(key), "sid:%s", sid);
                    if (env->deliver->items[k]->store_id && zhashx_lookup(seen_locks, key))
                        continue;
                    zhashx_insert(seen_locks, key, (void *)1);
                    if (!shift_set && m->accepted_at_ms) {
                        shift_ms = lk_wall_ms() - (int64_t)m->accepted_at_ms;
                        shift_set = true;
                    }
                    if (m->accepted_at_ms)
                        m->accepted_at_ms = (uint64_t)((int64_t)m->accepted_at_ms + shift_ms);
                    m->dup = false;
                    lk__publish__init(&pv[np]);
                    pv[np].msg = m;
                    pubs[np] = &pv[np];
                    np++;
                }
                if (np) {
                    Lk__PublishBatch pb = LK__PUBLISH_BATCH__INIT;
                    pb.n_items = np;
                    pb.items = pubs;
                    Lk__Envelope out = LK__ENVELOPE__INIT;
                    out.body_case = LK__ENVELOPE__BODY_PUBLISH;
                    out.publish = &pb;
                    lk_bus_send(bus, peer, &out, false);
                    sent++;
                }
                free(pubs);
                free(pv);
                lk__envelope__free_unpacked(env, NULL);
                continue;
            }
            /* unacknowledged: the replayed target need not answer to us */
            lk_bus_send(bus, peer, env, false);
            lk__envelope__free_unpacked(env, NULL);
            sent++;
        }
        lk_msglog_reader_close(&r);
    }
    s_spin(loop, 200);
    zhashx_destroy(&seen_locks);
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
        return s_dump(argc - 1, argv + 1);
    if (strcmp(argv[1], "replay") == 0)
        return s_replay(ctx, argc - 1, argv + 1);
    return la_usage("log");
}
