/*  lk_replicas: a client's view of a stateless service's replicas (see lk_replicas.h). */
#include "lk_replicas.h"
#include "lk_common.h"
#include <stdio.h>
#include <unistd.h>

struct _lk_replicas_t {
    int n;
    int next;      /* round robin position */
    int current;   /* sticky choice, -1 none */
    int self_i;    /* lk_replicas_siblings: our own index (no peer, always alive); else -1 */
    lk_peer_t *peers[LK_REPLICAS_MAX];
};

static bool s_alive(const lk_replicas_t *self, int i)
{
    return i == self->self_i || (self->peers[i] && lk_peer_alive(self->peers[i]));
}

static void s_name(char *buf, size_t size, const char *kind, int n, int i)
{
    if (n == 1)
        snprintf(buf, size, "%s", kind);
    else
        snprintf(buf, size, "%s-%d", kind, i + 1);
}

static const char *s_template(lk_config_t *config, const char *prefix)
{
    char key[96];
    snprintf(key, sizeof(key), "%s_endpoint", prefix);
    const char *t = lk_config_get(config, key, NULL);
    return t && *t ? t : NULL;
}

char *lk_replicas_endpoint(lk_config_t *config, const char *prefix, const char *node)
{
    const char *t = s_template(config, prefix);
    return t ? lk_str_subst(t, 'n', node) : NULL;
}

/* mode 0: connect to every replica; 1: the replicas connect to us (peers by name);
   2: a replica itself (self_node), connecting to its siblings */
static lk_replicas_t *s_open(lk_bus_t *bus, lk_config_t *config, const char *prefix,
                             const char *kind, int mode, const char *self_node)
{
    const char *t = s_template(config, prefix);
    if (!t && mode != 1)
        return NULL;
    char key[96];
    snprintf(key, sizeof(key), "%s_replicas", prefix);
    int64_t n = lk_config_get_int(config, key, 1);
    if (n < 1 || n > LK_REPLICAS_MAX) {
        lk_error("%s: %" PRId64 " is not between 1 and %d", key, n, LK_REPLICAS_MAX);
        return NULL;
    }
    if (n > 1 && t && !strstr(t, "%n")) {
        lk_error("%s_endpoint %s: %" PRId64 " replicas need %%n (the node id) in it", prefix,
                 t, n);
        return NULL;
    }
    lk_replicas_t *self = lk_calloc(1, sizeof(*self));
    self->n = (int)n;
    self->current = -1;
    self->self_i = -1;
    for (int i = 0; i < self->n; i++) {
        char name[128];
        s_name(name, sizeof(name), kind, self->n, i);
        if (mode == 2 && strcmp(name, self_node) == 0) {
            self->self_i = i;
            continue;
        }
        if (mode == 1) {
            self->peers[i] = lk_bus_peer_ensure(bus, name);
            continue;
        }
        char *ep = lk_str_subst(t, 'n', name);
        self->peers[i] = lk_bus_connect(bus, name, ep);
        free(ep);
    }
    if (mode == 2 && self->self_i < 0) {
        lk_error("%s_replicas %d: node %s is not one of the %s replicas", prefix, self->n,
                 self_node, kind);
        free(self);
        return NULL;
    }
    return self;
}

lk_replicas_t *lk_replicas_connect(lk_bus_t *bus, lk_config_t *config, const char *prefix,
                                   const char *kind)
{
    return s_open(bus, config, prefix, kind, 0, NULL);
}

lk_replicas_t *lk_replicas_served(lk_bus_t *bus, lk_config_t *config, const char *prefix,
                                  const char *kind)
{
    return s_open(bus, config, prefix, kind, 1, NULL);
}

lk_replicas_t *lk_replicas_siblings(lk_bus_t *bus, lk_config_t *config, const char *prefix,
                                    const char *kind, const char *self_node)
{
    return s_open(bus, config, prefix, kind, 2, self_node);
}

/* index of lk_replicas_owner(key) (with siblings: may be our own index) */
static int s_owner_index(lk_replicas_t *self, const void *key, size_t len)
{
    int home = lk_replicas_home(key, len, self->n);
    for (int k = 0; k < self->n; k++) {
        int i = (home + k) % self->n;
        if (s_alive(self, i))
            return i;
    }
    return home;
}

bool lk_replicas_mine(lk_replicas_t *self, const void *key, size_t len)
{
    return self->self_i >= 0 && s_owner_index(self, key, len) == self->self_i;
}

lk_peer_t *lk_replicas_successor(lk_replicas_t *self, lk_peer_t *peer)
{
    int at = lk_replicas_index(self, peer);
    for (int k = 1; at >= 0 && k < self->n; k++) {
        int i = (at + k) % self->n;
        if (s_alive(self, i))
            return self->peers[i];
    }
    return NULL;
}

void lk_replicas_destroy(lk_replicas_t **self_p)
{
    if (*self_p) {
        free(*self_p);
        *self_p = NULL;
    }
}

lk_peer_t *lk_replicas_pick(lk_replicas_t *self)
{
    for (int k = 0; k < self->n; k++) {
        int i = (self->next + k) % self->n;
        if (self->peers[i] && lk_peer_alive(self->peers[i])) {
            self->next = (i + 1) % self->n;
            self->current = i;
            return self->peers[i];
        }
    }
    int i = self->next;
    self->next = (i + 1) % self->n;
    self->current = i;
    return self->peers[i];
}

lk_peer_t *lk_replicas_sticky(lk_replicas_t *self)
{
    if (self->current >= 0 && lk_peer_alive(self->peers[self->current]))
        return self->peers[self->current];
    if (self->current >= 0) {
        /* look past the dead one first */
        for (int k = 1; k <= self->n; k++) {
            int i = (self->current + k) % self->n;
            if (self->peers[i] && lk_peer_alive(self->peers[i])) {
                self->current = i;
                return self->peers[i];
            }
        }
        return self->peers[self->current];
    }
    return lk_replicas_pick(self);
}

lk_peer_t *lk_replicas_other(lk_replicas_t *self, lk_peer_t *not)
{
    for (int i = 0; i < self->n; i++)
        if (self->peers[i] && self->peers[i] != not && lk_peer_alive(self->peers[i]))
            return self->peers[i];
    return NULL;
}

/* FNV-1a, 32 bits */
static uint32_t s_hash(const void *key, size_t len)
{
    const unsigned char *p = key;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    return h;
}

int lk_replicas_home(const void *key, size_t len, int n)
{
    return n > 1 ? (int)(s_hash(key, len) % (uint32_t)n) : 0;
}

lk_peer_t *lk_replicas_owner(lk_replicas_t *self, const void *key, size_t len)
{
    return self->peers[s_owner_index(self, key, len)];
}

int lk_replicas_index(lk_replicas_t *self, lk_peer_t *peer)
{
    for (int i = 0; self && peer && i < self->n; i++)
        if (self->peers[i] == peer)
            return i;
    return -1;
}

bool lk_replicas_has(lk_replicas_t *self, lk_peer_t *peer)
{
    return lk_replicas_index(self, peer) >= 0;
}

int lk_replicas_count(lk_replicas_t *self)
{
    return self ? self->n : 0;
}

lk_peer_t *lk_replicas_nth(lk_replicas_t *self, int i)
{
    return self && i >= 0 && i < self->n ? self->peers[i] : NULL;
}

int lk_replicas_alive(lk_replicas_t *self)
{
    int n = 0;
    for (int i = 0; self && i < self->n; i++)
        n += s_alive(self, i);
    return n;
}

/* ---- selftest: naming, endpoints, and picks over peers that are not alive; a reliable
   envelope moved from a replica that never came to one that serves ------------------ */

typedef struct {
    lk_loop_t *loop;
    int got, acked;
} s_mv_t;

static void s_mv_msg(lk_bus_t *bus, lk_peer_t *peer, Lk__Envelope *env, void *arg)
{
    s_mv_t *t = arg;
    t->got++;
    if (env->seq)
        lk_bus_ack(bus, peer, env->seq);
}

static void s_mv_acked(lk_bus_t *bus, lk_peer_t *peer, uint64_t seq, void *arg)
{
    s_mv_t *t = arg;
    if (++t->acked == 2)
        lk_loop_stop(t->loop);
}

static void s_mv_timeout(lk_loop_t *loop, void *arg)
{
    lk_loop_stop(loop);
}

static int s_test_move(void)
{
    char ep[96];
    snprintf(ep, sizeof(ep), "ipc:///tmp/lk-rtest-mv-%d.ipc", (int)getpid());
    s_mv_t t = {lk_loop_new(), 0, 0};
    lk_bus_handlers_t hs = {s_mv_msg, NULL, NULL}, hc = {NULL, NULL, NULL};
    lk_bus_t *server = lk_bus_new(t.loop, "svc-2", "svc", &hs, &t);
    lk_bus_t *client = lk_bus_new(t.loop, "t-mv", "test", &hc, &t);
    lk_bus_on_acked(client, s_mv_acked);
    int rc = lk_bus_bind(server, ep);
    lk_peer_t *gone = lk_bus_connect(client, "svc-1", "ipc:///tmp/lk-rtest-nobody.ipc");
    lk_peer_t *live = lk_bus_connect(client, "svc-2", ep);
    Lk__Revoke rv = LK__REVOKE__INIT;
    char *users[] = {"u1"};
    rv.n_usernames = 1;
    rv.usernames = users;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_REVOKE;
    env.revoke = &rv;
    lk_bus_send(client, gone, &env, true);
    lk_bus_send(client, gone, &env, true);
    if (lk_peer_unacked(gone) != 2 || lk_bus_move_unacked(client, gone, live, NULL, NULL) != 2 ||
        lk_peer_unacked(gone) != 0 || lk_peer_unacked(live) != 2)
        rc = -1;
    int timer = lk_loop_timer(t.loop, 5000, false, s_mv_timeout, NULL);
    lk_loop_run(t.loop);
    lk_loop_timer_cancel(t.loop, timer);
    if (t.got != 2 || t.acked != 2 || lk_peer_unacked(live) != 0)
        rc = -1;
    lk_bus_destroy(&client);
    lk_bus_destroy(&server);
    lk_loop_destroy(&t.loop);
    return rc;
}

int lk_replicas_test(bool verbose)
{
    int rc = 0;
    lk_loop_t *loop = lk_loop_new();
    lk_bus_handlers_t h = {NULL, NULL, NULL};
    lk_bus_t *bus = lk_bus_new(loop, "t-client", "test", &h, NULL);
    lk_config_t *cfg = lk_config_parse("auth_endpoint ipc:///tmp/lk-rtest-%n.ipc\n"
                                       "auth_replicas 3\n"
                                       "history_endpoint ipc:///tmp/lk-rtest-h.ipc\n"
                                       "history_replicas 2\n",
                                       "selftest");
    lk_replicas_t *rs = lk_replicas_connect(bus, cfg, "auth", "auth");
    if (!rs || lk_replicas_count(rs) != 3 || strcmp(lk_peer_name(lk_replicas_nth(rs, 1)), "auth-2"))
        rc = -1;
    char *ep = lk_replicas_endpoint(cfg, "auth", "auth-2");
    if (!ep || strcmp(ep, "ipc:///tmp/lk-rtest-auth-2.ipc") != 0)
        rc = -1;
    free(ep);
    /* none alive: plain rotation, so a caller's re-send moves on */
    if (rs) {
        lk_peer_t *a = lk_replicas_pick(rs), *b = lk_replicas_pick(rs);
        if (a == b || lk_replicas_alive(rs) != 0 || lk_replicas_other(rs, a) != NULL)
            rc = -1;
        if (lk_replicas_sticky(rs) != b || lk_replicas_index(rs, b) != 1)
            rc = -1;
        /* none alive: the owner is the configured one; FNV-1a's known value */
        if (s_hash("a", 1) != 0xe40c292cu)
            rc = -1;
        int home = lk_replicas_home("client-7", 8, 3);
        if (lk_replicas_owner(rs, "client-7", 8) != lk_replicas_nth(rs, home) ||
            lk_replicas_home("x", 1, 1) != 0)
            rc = -1;
    }
    /* a replica's view of its siblings: itself alive, peerless; the owner of every key
       while the others are silent */
    lk_config_t *scfg = lk_config_parse("session_endpoint ipc:///tmp/lk-rtest-%n.ipc\n"
                                        "session_replicas 3\n",
                                        "selftest");
    lk_replicas_t *sibs =
        lk_replicas_siblings(bus, scfg, "session", "session-store", "session-store-2");
    if (!sibs || sibs->self_i != 1 || lk_replicas_nth(sibs, 1) != NULL ||
        lk_replicas_alive(sibs) != 1 || !s_alive(sibs, 1) || s_owner_index(sibs, "a", 1) != 1 ||
        s_owner_index(sibs, "zz", 2) != 1 || !lk_replicas_mine(sibs, "a", 1) ||
        lk_replicas_successor(sibs, lk_replicas_nth(sibs, 0)) != NULL)
        rc = -1;
    lk_replicas_destroy(&sibs);
    if (lk_replicas_siblings(bus, scfg, "session", "session-store", "session-store-9"))
        rc = -1;
    /* the replicas that connect to us: peers by name, none alive yet */
    lk_replicas_t *served = lk_replicas_served(bus, scfg, "session", "session-store");
    if (!served || lk_replicas_count(served) != 3 || served->self_i != -1 ||
        lk_replicas_mine(served, "k", 1) ||
        strcmp(lk_peer_name(lk_replicas_nth(served, 2)), "session-store-3") != 0 ||
        lk_replicas_successor(served, lk_replicas_nth(served, 0)) != NULL ||
        lk_replicas_owner(served, "k", 1) != lk_replicas_nth(served, lk_replicas_home("k", 1, 3)))
        rc = -1;
    lk_replicas_destroy(&served);
    lk_config_destroy(&scfg);
    /* two replicas on one endpoint without %n: refused */
    lk_replicas_t *bad = lk_replicas_connect(bus, cfg, "history", "history-writer");
    if (bad)
        rc = -1;
    lk_replicas_destroy(&bad);
    lk_replicas_destroy(&rs);
    lk_config_destroy(&cfg);
    lk_bus_destroy(&bus);
    lk_loop_destroy(&loop);
    if (s_test_move() != 0)
        rc = -1;
    if (verbose)
        printf("lk_replicas: %s\n", rc ? "FAILED" : "ok");
    return rc;
}
