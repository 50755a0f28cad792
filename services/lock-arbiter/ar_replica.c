/*  ar_replica: lock-arbiter replicas — every lock has one owner among the live replicas,
    and nothing a replica's session acknowledged is lost when the owner dies.

    Each replica has its own persistent session ($lk-arbiter-<n>) subscribed to every lock
    topic, so every replica's session receives a copy of every lock message, in the
    router's order. A replica handles the messages of the locks it owns (lk_replicas_home
    of the lock over the live replicas, next live after a dead home) and *parks* the
    others: kept un-acked in memory until their owner has applied them (the per-message
    key lk:{arb}:seen:<lock>:<msg id>, written by the applying script), then acked to its
    session. When an owner dies its locks move to the next live replica, which applies
    what it parked for them, in order; what the dead one had applied is found seen and
    skipped. So no message is lost (somebody's session holds every un-applied copy) and
    none is applied twice (the seen key is set in the same script as the change).

    Liveness is Redis's: each replica refreshes lk:{arb}:live:<node> (PX S_LIVE_TTL_MS, a
    token per process start) every cron tick and reads all of them; every replica computes
    ownership from the same keys, a dead replica's key is gone within S_LIVE_TTL_MS.
    During a disagreement (a replica stalled past the TTL, a restart seen late) two
    replicas may apply the same lock's messages at once; that is safe: both hold the same
    sequence, each applies it in order and skips what is seen, so every message is
    applied once and in sequence order whoever applies it. For the same reason a message
    parked for longer than S_PARK_MAX_MS is applied by the replica that parked it (with
    what it parked before for that lock): an owner that never got its copy stalls
    nothing for longer than that.

    The message id: a hash of what every session's copy shares (topic, payload, publisher
    client/node/user, the frontend's acceptance time); the store ids differ per session. */
#include "ar_internal.h"
#include <unistd.h>

#define S_LIVE_TTL_MS 1000
#define S_LIVE_KEY "lk:{arb}:live:%s" /* a replica's liveness: its node id */
#define S_SEEN_BATCH 2000
/* a parked message its live owner has not applied by then is applied by us: the owner
   may never have got it (e.g. a router restart matched it before the owner re-attached) */
#define S_PARK_MAX_MS 3000

struct ar_parked {
    char *key; /* the lock (or the publisher, for other topics) */
    char id[40];
    uint8_t *msg; /* packed Lk__Msg */
    size_t len;
    uint64_t store_id;
    int64_t since_ms; /* monotonic */
    ar_parked_t *next;
};

static char *s_live_key(const char *node)
{
    size_t n = strlen(node) + 16;
    char *k = lk_malloc(n);
    snprintf(k, n, S_LIVE_KEY, node);
    return k;
}

int ar_replica_init(self_t *self)
{
    int64_t n = lk_config_get_int(self->config, "arbiter_replicas", 1);
    if (n < 1 || n > AR_MAX_REPLICAS) {
        lk_error("arbiter_replicas: %" PRId64 " is not between 1 and %d", n, AR_MAX_REPLICAS);
        return -1;
    }
    self->n_rep = (int)n;
    self->me = -1;
    for (int i = 0; i < self->n_rep; i++) {
        char name[64];
        if (n == 1)
            snprintf(name, sizeof(name), "lock-arbiter");
        else
            snprintf(name, sizeof(name), "lock-arbiter-%d", i + 1);
        self->rep_names[i] = lk_strdup(name);
        if (strcmp(name, self->node) == 0)
            self->me = i;
    }
    if (self->me < 0) {
        if (n > 1) {
            lk_error("arbiter_replicas %" PRId64 ": node '%s' is none of lock-arbiter-1..%" PRId64,
                     n, self->node, n);
            return -1;
        }
        self->me = 0; /* one replica under another name: it owns everything */
    }
    char token[64];
    snprintf(token, sizeof(token), "%d.%" PRId64, (int)getpid(), lk_wall_ms());
    self->live_token = lk_strdup(token);
    for (int i = 0; i < self->n_rep; i++)
        self->rep_alive[i] = i == self->me;
    self->parked_tail = &self->parked;
    return 0;
}

void ar_replica_destroy(self_t *self)
{
    while (self->parked) {
        ar_parked_t *p = self->parked;
        self->parked = p->next;
        free(p->key);
        free(p->msg);
        free(p);
    }
    for (int i = 0; i < self->n_rep; i++) {
        free(self->rep_names[i]);
        free(self->rep_tokens[i]);
    }
    free(self->live_token);
}

const char *ar_replica_client_id(self_t *self, char *buf, size_t size)
{
    if (self->n_rep == 1)
        snprintf(buf, size, "$lk-arbiter");
    else
        snprintf(buf, size, "$lk-arbiter-%d", self->me + 1);
    return buf;
}

bool ar_replica_mine(self_t *self, const char *key)
{
    if (self->n_rep == 1)
        return true;
    int home = lk_replicas_home(key, strlen(key), self->n_rep);
    for (int k = 0; k < self->n_rep; k++) {
        int i = (home + k) % self->n_rep;
        if (self->rep_alive[i])
            return i == self->me;
    }
    return true;
}

bool ar_replica_resumes(self_t *self, const char *id, const char *lock)
{
    const char *dash = strrchr(id, '-');
    size_t n = dash ? (size_t)(dash - id) : 0;
    for (int i = 0; i < self->n_rep; i++)
        if (strlen(self->rep_names[i]) == n && strncmp(self->rep_names[i], id, n) == 0) {
            if (i == self->me)
                return true;
            /* a live maker publishes its own (in flight, or at its own restart) */
            return !self->rep_alive[i] && ar_replica_mine(self, lock);
        }
    return ar_replica_mine(self, lock); /* a maker we do not know (another count) */
}

/* FNV-1a 64 over the fields every session's copy shares, each closed by a 0 byte */
static uint64_t s_fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    h ^= 0xff;
    return h * 1099511628211ull;
}

void ar_msg_id(const Lk__Msg *m, char *out, size_t size)
{
    uint64_t h = 14695981039346656037ull;
    const char *s[] = {m->topic, m->origin_client, m->origin_node, m->origin_user};
    for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++)
        h = s_fnv(h, s[i] ? s[i] : "", s[i] ? strlen(s[i]) : 0);
    h = s_fnv(h, m->payload.data, m->payload.len);
    snprintf(out, size, "%" PRIu64 "-%016" PRIx64, m->accepted_at_ms, h);
}

void ar_replica_park(self_t *self, const char *key, const char *id, const Lk__Msg *msg,
                     uint64_t store_id)
{
    ar_parked_t *p = lk_calloc(1, sizeof(*p));
    p->key = lk_strdup(key);
    snprintf(p->id, sizeof(p->id), "%s", id);
    p->len = lk__msg__get_packed_size(msg);
    p->msg = lk_malloc(p->len ? p->len : 1);
    lk__msg__pack(msg, p->msg);
    p->store_id = store_id;
    p->since_ms = lk_mono_ms();
    *self->parked_tail = p;
    self->parked_tail = &p->next;
    self->n_parked++;
}

/* unlinks *pp (fixing the tail) and frees it */
static void s_unlink(self_t *self, ar_parked_t **pp)
{
    ar_parked_t *p = *pp;
    *pp = p->next;
    if (self->parked_tail == &p->next)
        self->parked_tail = pp;
    self->n_parked--;
    free(p->key);
    free(p->msg);
    free(p);
}

/* Applies the parked messages of the locks this replica owns now (only `key`'s when key
   is set), in their order; stops at a failure (they stay, un-acked) */
void ar_replica_flush(self_t *self, const char *key)
{
    ar_parked_t **pp = &self->parked;
    size_t n = 0;
    while (*pp && !self->exit_code) {
        ar_parked_t *p = *pp;
        if (key ? strcmp(p->key, key) != 0 : !ar_replica_mine(self, p->key)) {
            pp = &p->next;
            continue;
        }
        Lk__Msg *m = lk__msg__unpack(NULL, p->len, p->msg);
        if (m) {
            ar_server_apply(self, m, p->id);
            lk__msg__free_unpacked(m, NULL);
        }
        if (self->exit_code)
            break;
        lk_iclient_ack(self->ic, p->store_id);
        s_unlink(self, pp);
        n++;
    }
    if (n && !key)
        lk_notice("took over %zu parked message(s) of locks now ours", n);
}

/* acks the parked messages their owner has applied (seen) */
static void s_drop_seen(self_t *self)
{
    if (!self->parked)
        return;
    const char *argv[S_SEEN_BATCH + 1];
    size_t lens[S_SEEN_BATCH + 1];
    char *keys[S_SEEN_BATCH];
    argv[0] = "MGET";
    lens[0] = 4;
    int n = 0;
    for (ar_parked_t *p = self->parked; p && n < S_SEEN_BATCH; p = p->next) {
        size_t len = strlen(p->key) + strlen(p->id) + 16;
        keys[n] = lk_malloc(len);
        snprintf(keys[n], len, AR_SEEN_KEY, p->key, p->id);
        argv[n + 1] = keys[n];
        lens[n + 1] = strlen(keys[n]);
        n++;
    }
    lk_redis_reply_t *r = lk_redis_cmdv(self->redis, n + 1, argv, lens);
    for (int i = 0; i < n; i++)
        free(keys[i]);
    if (!r || r->type != LK_REDIS_ARRAY || r->count != (size_t)n) {
        lk_redis_reply_free(&r);
        return; /* next tick */
    }
    ar_parked_t **pp = &self->parked;
    for (int i = 0; i < n && *pp; i++) {
        if (r->items[i].type == LK_REDIS_STR) {
            lk_iclient_ack(self->ic, (*pp)->store_id);
            s_unlink(self, pp);
        } else
            pp = &(*pp)->next;
    }
    lk_redis_reply_free(&r);
}

/* sets our key (a token per process start, expiring unless refreshed) */
static void s_refresh(self_t *self)
{
    lk_redis_reply_t *r = lk_redis_cmd(self->redis, "SET " S_LIVE_KEY " %s PX %d", self->node,
                                       self->live_token, S_LIVE_TTL_MS);
    lk_redis_reply_free(&r);
}

/* refreshes our key (when refresh), reads everyone's; true when a replica died or
   restarted (its work in flight is ours to finish where we own the lock) */
static bool s_liveness(self_t *self, bool refresh)
{
    if (refresh)
        s_refresh(self);
    if (self->n_rep == 1)
        return false;
    const char *argv[AR_MAX_REPLICAS + 1];
    size_t lens[AR_MAX_REPLICAS + 1];
    char *keys[AR_MAX_REPLICAS];
    argv[0] = "MGET";
    lens[0] = 4;
    for (int i = 0; i < self->n_rep; i++) {
        keys[i] = s_live_key(self->rep_names[i]);
        argv[i + 1] = keys[i];
        lens[i + 1] = strlen(keys[i]);
    }
    lk_redis_reply_t *r = lk_redis_cmdv(self->redis, self->n_rep + 1, argv, lens);
    for (int i = 0; i < self->n_rep; i++)
        free(keys[i]);
    if (!r || r->type != LK_REDIS_ARRAY || r->count != (size_t)self->n_rep) {
        lk_redis_reply_free(&r);
        return false;
    }
    bool lost = false;
    for (int i = 0; i < self->n_rep; i++) {
        if (i == self->me)
            continue;
        const char *tok = r->items[i].type == LK_REDIS_STR ? r->items[i].str : NULL;
        bool alive = tok != NULL;
        bool restarted = tok && self->rep_tokens[i] && strcmp(tok, self->rep_tokens[i]) != 0;
        if (self->rep_alive[i] && (!alive || restarted)) {
            lk_notice("replica %s %s: its locks' work in flight is taken over", self->rep_names[i],
                      alive ? "restarted" : "is gone");
            lost = true;
        } else if (!self->rep_alive[i] && alive)
            lk_notice("replica %s is live: it takes its locks back", self->rep_names[i]);
        self->rep_alive[i] = alive;
        if (tok && (!self->rep_tokens[i] || strcmp(tok, self->rep_tokens[i]) != 0)) {
            free(self->rep_tokens[i]);
            self->rep_tokens[i] = lk_strdup(tok);
        }
    }
    lk_redis_reply_free(&r);
    return lost;
}

/* We claim our locks (refresh our key) only while we can get their messages: the session
   is open with every subscription and the router is there. A replica cut off from the
   router lets its key lapse, and its locks go to one that hears them. */
static bool s_can_serve(self_t *self)
{
    /* any router: with router replicas none is named "router" */
    return lk_iclient_ready(self->ic) && lk_iclient_routed(self->ic);
}

/* applies, in order, the parked messages of every lock that has one parked for too long */
static void s_apply_overdue(self_t *self)
{
    int64_t limit = lk_mono_ms() - S_PARK_MAX_MS;
    size_t before = self->n_parked;
    for (;;) {
        ar_parked_t *p = self->parked;
        while (p && p->since_ms > limit)
            p = p->next;
        if (!p || self->exit_code)
            break;
        char *key = lk_strdup(p->key);
        lk_warn("lock %s: a message parked for %" PRId64 " ms was not applied by its owner: "
                "applying it here",
                key, lk_mono_ms() - p->since_ms);
        ar_replica_flush(self, key);
        free(key);
        if (self->n_parked == before)
            break; /* nothing applied (a failure): next tick */
        before = self->n_parked;
    }
}

void ar_replica_start(self_t *self)
{
    s_liveness(self, false);
}

void ar_replica_ready(self_t *self)
{
    s_liveness(self, s_can_serve(self));
}

void ar_replica_cron(self_t *self)
{
    bool lost = s_liveness(self, s_can_serve(self));
    if (self->exit_code || !lk_iclient_ready(self->ic))
        return;
    ar_replica_flush(self, NULL);
    if (self->exit_code)
        return;
    s_drop_seen(self);
    s_apply_overdue(self);
    if (self->exit_code)
        return;
    if (lost) {
        /* decisions the dead one made and had not seen acked; events it had not sent */
        ar_unlock_resume(self);
        ar_history_resume(self);
    }
}

int ar_replica_alive(self_t *self)
{
    int n = 0;
    for (int i = 0; i < self->n_rep; i++)
        n += self->rep_alive[i];
    return n;
}

/* ---- selftest: the message id is the same for every session's copy and differs with
   the content; ownership follows the home replica and moves to the next live one ------- */

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "ar_replica: %s:%d: %s\n", __FILE__, __LINE__, #cond);                 \
            rc = -1;                                                                               \
        }                                                                                          \
    } while (0)

int ar_replica_test(bool verbose)
{
    int rc = 0;
    Lk__Msg a = LK__MSG__INIT, b;
    a.topic = "/L1/m";
    a.payload.data = (uint8_t *)"1";
    a.payload.len = 1;
    a.origin_client = "c1";
    a.origin_node = "fe-1";
    a.origin_user = "u1";
    a.accepted_at_ms = 1765000000123;
    a.qos = 1;
    char ia[40], ib[40];
    ar_msg_id(&a, ia, sizeof(ia));
    /* what differs between two sessions' copies changes nothing */
    b = a;
    b.dup = true;
    b.qos = 0;
    b.props.data = (uint8_t *)"\x26";
    b.props.len = 1;
    ar_msg_id(&b, ib, sizeof(ib));
    S_CHECK(strcmp(ia, ib) == 0);
    /* the content does */
    b = a;
    b.payload.data = (uint8_t *)"2";
    ar_msg_id(&b, ib, sizeof(ib));
    S_CHECK(strcmp(ia, ib) != 0);
    b = a;
    b.accepted_at_ms++;
    ar_msg_id(&b, ib, sizeof(ib));
    S_CHECK(strcmp(ia, ib) != 0);
    /* field boundaries count: "ab"+"c" is not "a"+"bc" */
    b = a;
    b.origin_client = "c";
    b.origin_node = "1fe-1";
    ar_msg_id(&b, ib, sizeof(ib));
    S_CHECK(strcmp(ia, ib) != 0);

    self_t s;
    memset(&s, 0, sizeof(s));
    s.n_rep = 3;
    int homes[3] = {0};
    for (int k = 0; k < 300; k++) {
        char key[16];
        snprintf(key, sizeof(key), "lock%d", k);
        int h = lk_replicas_home(key, strlen(key), 3);
        homes[h]++;
        for (int me = 0; me < 3; me++) {
            s.me = me;
            for (int i = 0; i < 3; i++)
                s.rep_alive[i] = true;
            S_CHECK(ar_replica_mine(&s, key) == (me == h));
            /* the home dead: the next live one after it, and only that one */
            s.rep_alive[h] = me == h; /* a replica always sees itself alive */
            int next = (h + 1) % 3;
            if (me != h)
                S_CHECK(ar_replica_mine(&s, key) == (me == next));
        }
    }
    S_CHECK(homes[0] > 50 && homes[1] > 50 && homes[2] > 50);
    /* who publishes a waiting decision: its maker while it lives, else the lock's owner */
    char n1[] = "lock-arbiter-1", n2[] = "lock-arbiter-2";
    s.n_rep = 2;
    s.rep_names[0] = n1;
    s.rep_names[1] = n2;
    const char *l0 = NULL, *l1 = NULL;
    for (int k = 0; k < 100 && (!l0 || !l1); k++) {
        static char keys[100][16];
        snprintf(keys[k], sizeof(keys[k]), "lock%d", k);
        if (lk_replicas_home(keys[k], strlen(keys[k]), 2) == 0)
            l0 = l0 ? l0 : keys[k];
        else
            l1 = l1 ? l1 : keys[k];
    }
    s.me = 0;
    s.rep_alive[0] = s.rep_alive[1] = true;
    S_CHECK(ar_replica_resumes(&s, "lock-arbiter-1-7", l1));
    S_CHECK(!ar_replica_resumes(&s, "lock-arbiter-2-8", l0));
    s.rep_alive[1] = false;
    S_CHECK(ar_replica_resumes(&s, "lock-arbiter-2-8", l1));
    S_CHECK(ar_replica_resumes(&s, "lock-arbiter-2-8", l0));
    S_CHECK(ar_replica_resumes(&s, "lock-arbiter-9", l0)); /* from one replica, before */
    s.n_rep = 1;
    S_CHECK(ar_replica_mine(&s, "anything"));
    if (verbose)
        printf("ar_replica: id %s, homes %d/%d/%d\n", ia, homes[0], homes[1], homes[2]);
    return rc;
}
