/*  au_server: the auth actor on the bus; see au_server.h. All state is in self_t; the
    decision itself is au_check's. Requests are answered inline (Redis is local and the
    password work is ~0.1 ms), so the actor has no queue of its own. */
#include "au_server.h"
#include "au_admin.h"
#include "lk_replicas.h"
#include "au_check.h"
#include "lk_bus.h"
#include "lk_common.h"
#include "lk_crypto.h"
#include "lk_redis.h"
#include <stdio.h>
#include <unistd.h>

struct _au_server_t {
    lk_loop_t *loop;     /* not owned */
    lk_config_t *config; /* not owned */
    lk_bus_t *bus;
    au_check_t *check;
    uint64_t requests;
    uint64_t refused;
    uint64_t bans_refused;
    int64_t ban_warned_ms;
};
typedef au_server_t self_t;

/* peers allowed to revoke credentials: the operator CLI and the lock arbiter */
static bool s_may_revoke(lk_peer_t *peer)
{
    const char *kind = lk_peer_kind(peer);
    return kind && (strcmp(kind, "latchkey") == 0 || strcmp(kind, "lock-arbiter") == 0);
}

static void s_handle_auth_request(self_t *self, lk_peer_t *peer, const Lk__AuthRequest *req)
{
    self->requests++;
    Lk__AuthReply *reply = NULL;
    char why[200];
    int banned = req->acl_only ? 0 : au_ban_check(au_check_redis(self->check), req, why, sizeof(why));
    if (banned < 0 && lk_mono_ms() - self->ban_warned_ms > 10000) {
        /* bans are checked again at the next CONNECT; refusing everyone would be worse */
        self->ban_warned_ms = lk_mono_ms();
        lk_warn("bans not checked: Redis did not answer");
    }
    if (banned == 1) {
        lk_info("client %s (user %s, %s): banned (%s)", req->client ? req->client : "",
                req->username ? req->username : "", req->peer ? req->peer : "", why);
        reply = lk_calloc(1, sizeof(*reply));
        lk__auth_reply__init(reply);
        reply->req = req->req;
        reply->reason = lk_strdup("banned");
        self->bans_refused++;
    } else
        reply = au_check_request(self->check, req);
    if (!reply->ok)
        self->refused++;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_AUTH_REPLY;
    env.auth_reply = reply;
    /* unreliable: a lost reply is recovered by the frontend asking again */
    if (lk_bus_send(self->bus, peer, &env, false) < 0)
        lk_error("cannot send AuthReply to %s", lk_peer_name(peer));
    au_reply_destroy(&reply);
}

typedef struct {
    self_t *self;
    Lk__Envelope *env;
    int sent;
} s_forward_t;

static void s_forward_one(lk_peer_t *peer, void *arg)
{
    s_forward_t *f = arg;
    const char *kind = lk_peer_kind(peer);
    if (!kind || strcmp(kind, "mqtt-frontend") != 0)
        return;
    if (lk_bus_send(f->self->bus, peer, f->env, true) >= 0)
        f->sent++;
}

static void s_handle_revoke(self_t *self, lk_peer_t *peer, Lk__Revoke *revoke)
{
    if (!s_may_revoke(peer)) {
        lk_warn("Revoke from %s (kind '%s') ignored: not an operator", lk_peer_name(peer),
                lk_peer_kind(peer) ? lk_peer_kind(peer) : "");
        return;
    }
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_REVOKE;
    env.revoke = revoke;
    s_forward_t f = {self, &env, 0};
    lk_bus_each_peer(self->bus, s_forward_one, &f);
    lk_notice("%s of %zu user(s) from %s forwarded to %d frontend(s)",
              revoke->acl_changed ? "ACL change" : "revoke", revoke->n_usernames,
              lk_peer_name(peer), f.sent);
}

static void s_on_message(lk_bus_t *bus, lk_peer_t *peer, Lk__Envelope *env, void *arg)
{
    self_t *self = arg;
    switch (env->body_case) {
    case LK__ENVELOPE__BODY_AUTH_REQUEST:
        s_handle_auth_request(self, peer, env->auth_request);
        break;
    case LK__ENVELOPE__BODY_REVOKE:
        s_handle_revoke(self, peer, env->revoke);
        break;
    default:
        lk_debug("ignoring envelope body %d from %s", (int)env->body_case, lk_peer_name(peer));
        break;
    }
    /* everything is done inline: the ack can go at once */
    if (env->seq)
        lk_bus_ack(bus, peer, env->seq);
}

static void s_on_peer_up(lk_bus_t *bus, lk_peer_t *peer, bool restarted, void *arg)
{
    /* a restarted frontend holds no clients: the revocations it missed are moot */
    if (restarted)
        lk_peer_drop_unacked(peer);
    lk_info("peer %s (%s) %s", lk_peer_name(peer), lk_peer_kind(peer),
            restarted ? "restarted" : "up");
}

static void s_on_peer_down(lk_bus_t *bus, lk_peer_t *peer, void *arg)
{
    lk_info("peer %s (%s) down", lk_peer_name(peer), lk_peer_kind(peer));
}

static void s_on_hup(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    lk_notice("SIGHUP: reloading password and ACL files");
    au_check_reload(self->check);
    /* the files may have changed anybody's rights: every connected client re-reads its
       ACL (and one whose user left the password file is disconnected) */
    Lk__Revoke all = LK__REVOKE__INIT;
    all.acl_changed = true;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_REVOKE;
    env.revoke = &all;
    s_forward_t f = {self, &env, 0};
    lk_bus_each_peer(self->bus, s_forward_one, &f);
}

static void s_admin(lk_bus_t *bus, lk_peer_t *peer, const Lk__AdminRequest *q,
                    lk_admin_out_t *out, void *arg)
{
    self_t *self = arg;
    if (strcmp(q->op ? q->op : "", "node") == 0) {
        lk_admin_metric(out, "latchkey_auth_requests_total", NULL, (double)self->requests, true);
        lk_admin_metric(out, "latchkey_auth_refused_total", "reason=\"any\"", (double)self->refused,
                        true);
        lk_admin_metric(out, "latchkey_auth_refused_total", "reason=\"banned\"",
                        (double)self->bans_refused, true);
        double rtt = lk_redis_ping_ms(au_check_redis(self->check));
        lk_admin_metric(out, "latchkey_redis_up", NULL, rtt >= 0 ? 1 : 0, false);
        if (rtt >= 0)
            lk_admin_metric(out, "latchkey_redis_rtt_seconds", NULL, rtt / 1000.0, false);
        return;
    }
    if (!au_admin(au_check_redis(self->check), q, out))
        lk_admin_error(out, "BAD_REQUEST", "auth does not answer '%s'", q->op ? q->op : "");
}

au_server_t *au_server_new(lk_loop_t *loop, lk_config_t *config, const char *node)
{
    au_check_t *check = au_check_new(config);
    if (!check)
        return NULL;
    self_t *self = lk_calloc(1, sizeof(*self));
    self->loop = loop;
    self->config = config;
    self->check = check;
    lk_bus_handlers_t h = {s_on_message, s_on_peer_up, s_on_peer_down};
    self->bus = lk_bus_new(loop, node, "auth", &h, self);
    lk_bus_on_admin(self->bus, s_admin, self);
    lk_loop_on_hup(loop, s_on_hup, self);
    if (lk_bus_configure(self->bus, config) != 0 ||
        lk_bus_enable_msglog(self->bus, lk_config_get(config, "msglog_dir", "")) != 0) {
        au_server_destroy(&self);
        return NULL;
    }
    return self;
}

void au_server_destroy(au_server_t **self_p)
{
    self_t *self = *self_p;
    if (!self)
        return;
    lk_info("%" PRIu64 " requests, %" PRIu64 " refused", self->requests, self->refused);
    lk_bus_destroy(&self->bus);
    au_check_destroy(&self->check);
    free(self);
    *self_p = NULL;
}

int au_server_wait_redis(au_server_t *self, int64_t timeout_ms)
{
    if (!au_check_uses_redis(self->check))
        return 0;
    int64_t deadline = lk_mono_ms() + timeout_ms;
    int64_t delay = 50;
    for (;;) {
        if (au_check_ping(self->check) == 0)
            return 0;
        int64_t left = deadline - lk_mono_ms();
        if (left <= 0) {
            lk_error("redis not reachable after %" PRId64 " ms", timeout_ms);
            return -1;
        }
        usleep((useconds_t)(delay < left ? delay : left) * 1000);
        delay = delay * 2 > 1000 ? 1000 : delay * 2;
    }
}

int au_server_bind(au_server_t *self, const char *endpoint)
{
    char *own = NULL;
    if (!endpoint) /* %n: our node id, so that one configuration serves every replica */
        endpoint = own = lk_replicas_endpoint(self->config, "auth", lk_bus_node(self->bus));
    if (!endpoint || !*endpoint) {
        lk_error("auth_endpoint is not configured");
        free(own);
        return -1;
    }
    int rc = lk_bus_bind(self->bus, endpoint);
    free(own);
    return rc;
}

/* ---- selftest: a frontend and a CLI talk to the server over ipc:// in one loop ------- */

typedef struct {
    lk_loop_t *loop;
    lk_bus_t *fe, *cli, *fe2;
    lk_peer_t *fe_auth, *cli_auth, *fe2_auth;
    bool cli_up, fe2_up, revoke_sent, stopping;
    int replies;
    bool good_ok, bad_refused, good_acl;
    bool fe_ann, fe2_ann, impostor_seen; /* which Revokes the frontends got */
    bool cli_acked, fe2_acked;
} s_bt_t;

static void s_bt_send_auth(s_bt_t *st, uint64_t req, const char *password)
{
    Lk__AuthRequest ar = LK__AUTH_REQUEST__INIT;
    ar.req = req;
    ar.client = "bt-client";
    ar.username = "ann";
    ar.has_username = true;
    ar.password.data = (uint8_t *)password;
    ar.password.len = strlen(password);
    ar.has_password = true;
    ar.peer = "127.0.0.1:1";
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_AUTH_REQUEST;
    env.auth_request = &ar;
    lk_bus_send(st->fe, st->fe_auth, &env, false);
}

static void s_bt_send_revoke(lk_bus_t *bus, lk_peer_t *to, char *user)
{
    char *users[] = {user};
    Lk__Revoke rv = LK__REVOKE__INIT;
    rv.n_usernames = 1;
    rv.usernames = users;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_REVOKE;
    env.revoke = &rv;
    lk_bus_send(bus, to, &env, true);
}

static void s_bt_timeout(lk_loop_t *loop, void *arg)
{
    lk_loop_stop(loop);
}

static void s_bt_maybe(s_bt_t *st)
{
    if (!st->revoke_sent && st->cli_up && st->fe2_up && st->replies == 2) {
        st->revoke_sent = true;
        /* a frontend may not revoke: the server must ack it and forward nothing */
        s_bt_send_revoke(st->fe2, st->fe2_auth, "impostor");
        s_bt_send_revoke(st->cli, st->cli_auth, "ann");
    }
    if (!st->stopping && st->cli_acked && st->fe2_acked && st->fe_ann && st->fe2_ann) {
        /* a little longer, for a wrongly forwarded impostor to show up */
        st->stopping = true;
        lk_loop_timer(st->loop, 100, false, s_bt_timeout, st);
    }
}

static void s_bt_message(lk_bus_t *bus, lk_peer_t *peer, Lk__Envelope *env, void *arg)
{
    s_bt_t *st = arg;
    if (env->body_case == LK__ENVELOPE__BODY_AUTH_REPLY) {
        Lk__AuthReply *r = env->auth_reply;
        st->replies++;
        if (r->req == 1) {
            st->good_ok = r->ok && !r->superuser;
            st->good_acl = r->n_acl == 3 && strcmp(r->acl[0]->pattern, "x/ann/#") == 0 &&
                           r->acl[0]->access == 3;
        } else if (r->req == 2)
            st->bad_refused = !r->ok && strcmp(r->reason, AU_REASON_BAD_CREDENTIALS) == 0;
    } else if (env->body_case == LK__ENVELOPE__BODY_REVOKE) {
        for (size_t i = 0; i < env->revoke->n_usernames; i++) {
            const char *u = env->revoke->usernames[i];
            if (strcmp(u, "impostor") == 0)
                st->impostor_seen = true;
            else if (strcmp(u, "ann") == 0 && bus == st->fe)
                st->fe_ann = true;
            else if (strcmp(u, "ann") == 0 && bus == st->fe2)
                st->fe2_ann = true;
        }
    }
    if (env->seq)
        lk_bus_ack(bus, peer, env->seq);
    s_bt_maybe(st);
}

static void s_bt_up(lk_bus_t *bus, lk_peer_t *peer, bool restarted, void *arg)
{
    s_bt_t *st = arg;
    if (bus == st->fe) {
        s_bt_send_auth(st, 1, "secret");
        s_bt_send_auth(st, 2, "wrong");
    } else if (bus == st->cli)
        st->cli_up = true;
    else if (bus == st->fe2)
        st->fe2_up = true;
    s_bt_maybe(st);
}

static void s_bt_acked(lk_bus_t *bus, lk_peer_t *peer, uint64_t seq, void *arg)
{
    /* lk_bus_on_acked passes the bus's own arg: the test state */
    s_bt_t *st = arg;
    if (bus == st->cli)
        st->cli_acked = true;
    else if (bus == st->fe2)
        st->fe2_acked = true;
    s_bt_maybe(st);
}

int au_server_test(au_tally_t *t, int redis_port)
{
    int failed = t->failed;
    char text[512], endpoint[128];
    snprintf(endpoint, sizeof(endpoint), "ipc:///tmp/au-selftest-%d.ipc", (int)getpid());
    snprintf(text, sizeof(text), "redis_port %d\nauth_endpoint %s\n", redis_port, endpoint);
    lk_config_t *cfg = lk_config_parse(text, "test");

    /* ann / secret with one ACL entry */
    lk_redis_t *rd = lk_redis_new("127.0.0.1", redis_port);
    char *h = lk_crypto_pw_hash("secret", 6, 0);
    lk_redis_reply_t *r = lk_redis_cmd(rd, "HSET mqtt_user:ann password %s", h);
    lk_redis_reply_free(&r);
    r = lk_redis_cmd(rd, "DEL mqtt_acl:ann");
    lk_redis_reply_free(&r);
    r = lk_redis_cmd(rd, "HSET mqtt_acl:ann x/%%u/# 3");
    lk_redis_reply_free(&r);
    free(h);
    lk_redis_destroy(&rd);

    lk_loop_t *loop = lk_loop_new();
    au_server_t *server = au_server_new(loop, cfg, "auth");
    AU_CHECK(t, "server: new", server != NULL);
    if (!server) {
        lk_loop_destroy(&loop);
        lk_config_destroy(&cfg);
        return -1;
    }
    AU_CHECK(t, "server: redis reachable", au_server_wait_redis(server, 2000) == 0);
    AU_CHECK(t, "server: bind", au_server_bind(server, NULL) == 0);

    s_bt_t st = {0};
    st.loop = loop;
    lk_bus_handlers_t h2 = {s_bt_message, s_bt_up, NULL};
    st.fe = lk_bus_new(loop, "fe-bt", "mqtt-frontend", &h2, &st);
    st.fe2 = lk_bus_new(loop, "fe-bt2", "mqtt-frontend", &h2, &st);
    st.cli = lk_bus_new(loop, "cli-bt", "latchkey", &h2, &st);
    lk_bus_on_acked(st.cli, s_bt_acked);
    lk_bus_on_acked(st.fe2, s_bt_acked);
    st.fe_auth = lk_bus_connect(st.fe, "auth", endpoint);
    st.fe2_auth = lk_bus_connect(st.fe2, "auth", endpoint);
    st.cli_auth = lk_bus_connect(st.cli, "auth", endpoint);
    int timer = lk_loop_timer(loop, 5000, false, s_bt_timeout, &st);
    lk_loop_run(loop);
    lk_loop_timer_cancel(loop, timer);

    AU_CHECK(t, "server: two AuthReplies over the bus", st.replies == 2);
    AU_CHECK(t, "server: good password accepted over the bus", st.good_ok);
    AU_CHECK(t, "server: ACL with %u substituted over the bus", st.good_acl);
    AU_CHECK(t, "server: bad password refused over the bus", st.bad_refused);
    AU_CHECK(t, "server: Revoke forwarded to both frontends", st.fe_ann && st.fe2_ann);
    AU_CHECK(t, "server: Revoke acked to the CLI", st.cli_acked);
    AU_CHECK(t, "server: Revoke from a frontend acked, not forwarded",
             st.fe2_acked && !st.impostor_seen);

    lk_bus_destroy(&st.fe);
    lk_bus_destroy(&st.fe2);
    lk_bus_destroy(&st.cli);
    au_server_destroy(&server);
    lk_loop_destroy(&loop);
    lk_config_destroy(&cfg);
    unlink(endpoint + 6);
    return t->failed == failed ? 0 : -1;
}
