/*  ar_server: the lock-arbiter actor — construction, the MQTT and bus dispatch, readiness
    and the cron (see ar_server.h and ar_internal.h).

    Failure policy: when Redis fails under a message the arbiter must not skip, it stops
    with exit 111 without acking that message; s6 restarts it and the session store hands
    the message over again. Every script is idempotent for a message seen twice. */
#include "ar_internal.h"
#include "lk_layout.h"
#include "lk_admin.h"
#include <cjson/cJSON.h>
#include <unistd.h>

#define S_REDIS_WAIT_MS 10000
#define S_CRON_MS 250

/* --- waits ------------------------------------------------------------------------ */

ar_wait_t *ar_wait_for(ar_wait_t **list, uint64_t seq)
{
    for (ar_wait_t *w = *list; w; w = w->next)
        if (w->seq == seq)
            return w;
    ar_wait_t *w = lk_calloc(1, sizeof(*w));
    w->seq = seq;
    w->next = *list;
    *list = w;
    return w;
}

void ar_wait_add(ar_wait_t *w, const char *id)
{
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 8;
        w->ids = lk_realloc(w->ids, w->cap * sizeof(char *));
    }
    w->ids[w->n++] = lk_strdup(id);
}

ar_wait_t *ar_wait_take(ar_wait_t **list, uint64_t seq)
{
    for (ar_wait_t **pp = list; *pp; pp = &(*pp)->next)
        if ((*pp)->seq == seq) {
            ar_wait_t *w = *pp;
            *pp = w->next;
            w->next = NULL;
            return w;
        }
    return NULL;
}

void ar_wait_free(ar_wait_t **w_p)
{
    ar_wait_t *w = *w_p;
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++)
        free(w->ids[i]);
    free(w->ids);
    free(w);
    *w_p = NULL;
}

static void s_waits_free(ar_wait_t **list)
{
    while (*list) {
        ar_wait_t *w = *list;
        *list = w->next;
        ar_wait_free(&w);
    }
}

/* --- helpers ---------------------------------------------------------------------- */

void ar_server_fail(self_t *self, const char *why)
{
    if (!self->exit_code)
        lk_error("%s: stopping (exit %d) so that the work is done again after a restart", why,
                 LK_EXIT_TEMPORARY);
    self->exit_code = LK_EXIT_TEMPORARY;
    lk_iclient_defer(self->ic);
    lk_loop_stop(self->loop);
}

char *ar_real_user(self_t *self, const char *username)
{
    if (!username || !*username)
        return lk_strdup("");
    lk_redis_reply_t *r = lk_redis_cmd(self->redis, "GET lk:{arb}:login:%s", username);
    if (!r || r->type == LK_REDIS_ERR) {
        lk_redis_reply_free(&r);
        return NULL;
    }
    char *user = lk_strdup(r->type == LK_REDIS_STR ? r->str : username);
    lk_redis_reply_free(&r);
    return user;
}

/* --- MQTT messages ---------------------------------------------------------------- */

enum { S_IGNORE, S_QUERY, S_UNAUTH, S_STATU, S_ROLE };

/* what a topic is for; lock gets the lock id of /<lock>/<what> */
static int s_classify(self_t *self, const char *t, char lock[256], const char **what)
{
    if (strcmp(t, AR_HISTORY_TOPIC) == 0)
        return S_QUERY;
    if (strcmp(t, "/unauth") == 0)
        return S_UNAUTH;
    /* /<lock>/<what>: exactly three levels, the first empty */
    if (t[0] != '/')
        return S_IGNORE;
    const char *l = t + 1;
    const char *slash = strchr(l, '/');
    if (!slash || slash == l || strchr(slash + 1, '/'))
        return S_IGNORE;
    size_t n = (size_t)(slash - l);
    if (n >= 256) {
        lk_info("topic '%s': lock id too long, ignored", t);
        return S_IGNORE;
    }
    memcpy(lock, l, n);
    lock[n] = 0;
    *what = slash + 1;
    if (strcmp(*what, "statu") == 0)
        return S_STATU;
    for (int i = 0; i < self->n_roles; i++)
        if (strcmp(*what, self->roles[i]) == 0)
            return S_ROLE;
    return S_IGNORE;
}

/* the owner key of a message: its lock, else its publisher (queries, /unauth) */
static const char *s_key(const Lk__Msg *msg, int kind, const char *lock)
{
    if (kind == S_STATU || kind == S_ROLE)
        return lock;
    return msg->origin_client ? msg->origin_client : "";
}

bool ar_seen_set(self_t *self, const char *key, const char *id)
{
    if (self->n_rep == 1)
        return true; /* nobody parks: nothing to mark */
    lk_redis_reply_t *r = lk_redis_cmd(
        self->redis, "SET " AR_SEEN_KEY " 1 NX EX " AR_STR(AR_SEEN_TTL_S), key, id);
    bool first = r && r->type == LK_REDIS_STR;
    lk_redis_reply_free(&r);
    return first;
}

/* applies a message s_classify said is of kind (lock, what: its lock topic) */
static void s_apply(self_t *self, const Lk__Msg *msg, int kind, const char *lock, const char *what,
                    const char *id)
{
    switch (kind) {
    case S_QUERY:
        /* at most once: an app asks again */
        if (ar_seen_set(self, s_key(msg, kind, lock), id))
            ar_history_query(self, msg);
        break;
    case S_UNAUTH:
        /* at least once: revoking twice is harmless */
        ar_login_unauth(self, msg);
        if (!self->exit_code)
            ar_seen_set(self, s_key(msg, kind, lock), id);
        break;
    case S_STATU:
        ar_unlock_statu(self, lock, msg, id);
        break;
    case S_ROLE:
        ar_unlock_confirm(self, lock, what, msg, id);
        break;
    default:
        break;
    }
}

void ar_server_apply(self_t *self, const Lk__Msg *msg, const char *id)
{
    char lock[256];
    const char *what = NULL;
    int kind = s_classify(self, msg->topic, lock, &what);
    s_apply(self, msg, kind, lock, what, id);
}

static void s_on_message(lk_iclient_t *ic, const Lk__Msg *msg, uint64_t store_id, void *arg)
{
    self_t *self = arg;
    if (self->exit_code) {
        lk_iclient_defer(ic);
        return;
    }
    char lock[256], id[40];
    const char *what = NULL;
    int kind = s_classify(self, msg->topic, lock, &what);
    if (kind == S_IGNORE)
        return;
    ar_msg_id(msg, id, sizeof(id));
    const char *key = s_key(msg, kind, lock);
    if (!ar_replica_mine(self, key)) {
        /* QoS 0: not stored for any session, the owner has its own copy */
        if (store_id) {
            ar_replica_park(self, key, id, msg, store_id);
            lk_iclient_defer(ic);
        }
        return;
    }
    /* what we parked for this lock before it became ours goes first (order) */
    if (self->n_parked)
        ar_replica_flush(self, key);
    if (self->exit_code) {
        lk_iclient_defer(ic);
        return;
    }
    s_apply(self, msg, kind, lock, what, id);
}

static void s_on_ready(lk_iclient_t *ic, void *arg)
{
    self_t *self = arg;
    ar_replica_ready(self);
    ar_unlock_resume(self);
    ar_history_resume(self);
    if (!self->ready_told) {
        self->ready_told = true;
        lk_ready_notify(self->ready_fd);
        self->ready_fd = -1;
        lk_notice("ready: roles %d, quorum %d, window %" PRId64 " ms", self->n_roles, self->quorum,
                  self->window_ms);
    }
}

static void s_on_published(lk_iclient_t *ic, uint64_t seq, void *arg)
{
    ar_unlock_published((self_t *)arg, seq);
}

/* --- the service's own peers: login clients, auth, history writer ------------------ */

static void s_on_envelope(lk_iclient_t *ic, lk_peer_t *peer, Lk__Envelope *env, void *arg)
{
    self_t *self = arg;
    switch (env->body_case) {
    case LK__ENVELOPE__BODY_LOGIN_REQUEST:
        ar_login_request(self, peer, env->login_request);
        break;
    default:
        lk_debug("ignored body %d from %s", env->body_case, lk_peer_name(peer));
        break;
    }
    if (env->seq)
        lk_bus_ack(self->bus, peer, env->seq);
}

static void s_on_peer_up(lk_iclient_t *ic, lk_peer_t *peer, bool restarted, void *arg)
{
    /* work unacked by a restarted writer or auth is re-sent by the bus */
    lk_info("peer %s (%s) %s", lk_peer_name(peer), lk_peer_kind(peer),
            restarted ? "restarted" : "up");
    self_t *self = arg;
    /* events that waited for a writer replica which is still away */
    if (lk_replicas_has(self->history, peer))
        for (int i = 0; i < lk_replicas_count(self->history); i++) {
            lk_peer_t *p = lk_replicas_nth(self->history, i);
            if (p != peer && !lk_peer_alive(p))
                ar_history_failover(self, p);
        }
}

static void s_on_peer_down(lk_iclient_t *ic, lk_peer_t *peer, void *arg)
{
    self_t *self = arg;
    if (lk_replicas_has(self->history, peer))
        ar_history_failover(self, peer);
    /* Revokes a dead auth replica did not ack: another one forwards them (nothing here
       waits for their seqs) */
    lk_peer_t *other = lk_replicas_has(self->auth, peer) && lk_peer_unacked(peer)
                           ? lk_replicas_other(self->auth, peer)
                           : NULL;
    if (other) {
        size_t n = lk_bus_move_unacked(self->bus, peer, other, NULL, NULL);
        lk_notice("auth replica %s down: %zu Revoke(s) handed to %s", lk_peer_name(peer), n,
                  lk_peer_name(other));
    }
}

static void s_on_acked(lk_iclient_t *ic, lk_peer_t *peer, uint64_t seq, void *arg)
{
    self_t *self = arg;
    if (lk_replicas_has(self->history, peer))
        ar_history_acked(self, peer, seq);
}

/* --- the api's "node" request: decisions for Prometheus --------------------------- */

static void s_admin(lk_bus_t *bus, lk_peer_t *peer, const Lk__AdminRequest *q, lk_admin_out_t *out,
                    void *arg)
{
    self_t *self = arg;
    if (strcmp(q->op ? q->op : "", "locks") == 0) {
        lk_redis_reply_t *r = lk_redis_cmd(self->redis, "HGETALL lk:{arb}:lockstate");
        if (!r || r->type != LK_REDIS_ARRAY) {
            lk_redis_reply_free(&r);
            lk_admin_error(out, "SERVICE_UNAVAILABLE", "Redis failed");
            return;
        }
        for (size_t i = 0; i + 1 < r->count; i += 2) {
            cJSON *j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "lock", r->items[i].str);
            /* the last /<lock>/statu payload: -2 (its Will) offline, 0 unlocked, 1 locked */
            const char *v = r->items[i + 1].str ? r->items[i + 1].str : "";
            const char *state = strcmp(v, "-2") == 0  ? "offline"
                                : strcmp(v, "0") == 0 ? "unlocked"
                                : strcmp(v, "1") == 0 ? "locked"
                                                      : v;
            cJSON_AddStringToObject(j, "state", state);
            cJSON_AddStringToObject(j, "statu", v);
            char *text = cJSON_PrintUnformatted(j);
            lk_admin_row_add(out, text);
            free(text);
            cJSON_Delete(j);
        }
        lk_redis_reply_free(&r);
        return;
    }
    if (strcmp(q->op ? q->op : "", "node") != 0) {
        lk_admin_error(out, "BAD_REQUEST", "lock-arbiter does not answer '%s'", q->op);
        return;
    }
    const char *m = "latchkey_lock_decisions_total";
    lk_admin_metric(out, m, "outcome=\"granted\"", (double)self->granted, true);
    lk_admin_metric(out, m, "outcome=\"refused\"", (double)self->refused, true);
    lk_admin_metric(out, m, "outcome=\"expired\"", (double)self->expired, true);
    lk_admin_metric(out, "latchkey_lock_state_changes_total", NULL, (double)self->states, true);
    lk_admin_metric(out, "latchkey_lock_logins_total", NULL, (double)self->logins, true);
    lk_admin_metric(out, "latchkey_lock_logins_revoked_total", NULL, (double)self->revoked, true);
    lk_admin_metric(out, "latchkey_lock_history_queries_total", NULL, (double)self->queries, true);
    /* replicas: how many this one sees live, what it keeps for others' locks */
    lk_admin_metric(out, "latchkey_lock_replicas_live", NULL, (double)ar_replica_alive(self),
                    false);
    lk_admin_metric(out, "latchkey_lock_parked_messages", NULL, (double)self->n_parked, false);
}

/* --- cron ------------------------------------------------------------------------- */

static void s_cron(lk_loop_t *loop, void *arg)
{
    self_t *self = arg;
    if (self->exit_code)
        return;
    ar_replica_cron(self);
    if (self->exit_code || !lk_iclient_ready(self->ic))
        return;
    ar_unlock_expire(self);
    ar_login_expire(self);
}

/* --- construction ----------------------------------------------------------------- */

static int s_config(self_t *self)
{
    const char *roles = lk_config_get(self->config, "lock_roles", "m f");
    char *copy = lk_strdup(roles), *save = NULL;
    int rc = 0;
    for (char *w = strtok_r(copy, " \t,", &save); w; w = strtok_r(NULL, " \t,", &save)) {
        if (self->n_roles == AR_MAX_ROLES) {
            lk_error("lock_roles: at most %d roles", AR_MAX_ROLES);
            rc = -1;
            break;
        }
        if (strcmp(w, "statu") == 0 || strcmp(w, "call") == 0 || strpbrk(w, "+#/$")) {
            lk_error("lock_roles: '%s' cannot be a role", w);
            rc = -1;
            break;
        }
        self->roles[self->n_roles++] = lk_strdup(w);
    }
    free(copy);
    if (rc == 0 && self->n_roles == 0) {
        lk_error("lock_roles: no role");
        rc = -1;
    }
    self->quorum = (int)lk_config_get_int(self->config, "lock_quorum", self->n_roles);
    if (rc == 0 && (self->quorum < 1 || self->quorum > self->n_roles)) {
        lk_error("lock_quorum: %d is not between 1 and the %d roles", self->quorum, self->n_roles);
        rc = -1;
    }
    const char *win = lk_config_get(self->config, "lock_window", "35");
    char *end = NULL;
    double w = strtod(win, &end);
    if (rc == 0 && (!end || *end || w <= 0 || w > 86400)) {
        lk_error("lock_window: '%s' is not a number of seconds (0 < window <= 86400)", win);
        rc = -1;
    }
    self->window_ms = (int64_t)(w * 1000);
    int64_t age = lk_config_get_int(self->config, "lock_confirm_max_age", AR_SEEN_TTL_S);
    if (rc == 0 && (age < 1 || age > AR_SEEN_TTL_S)) {
        lk_error("lock_confirm_max_age: %" PRId64 " seconds is not between 1 and %d", age,
                 AR_SEEN_TTL_S);
        rc = -1;
    }
    self->confirm_max_age_ms = age * 1000;
    self->login_ttl_s = lk_config_get_int(self->config, "login_ttl", 86400);
    if (rc == 0 && (self->login_ttl_s < 1 || self->login_ttl_s > 365 * 86400)) {
        lk_error("login_ttl: %" PRId64 " seconds is out of range", self->login_ttl_s);
        rc = -1;
    }
    self->history_limit = (int)lk_config_get_int(self->config, "history_query_limit", 500);
    if (self->history_limit < 1)
        self->history_limit = 500;
    return rc;
}

static int s_wait_redis(self_t *self)
{
    int64_t deadline = lk_mono_ms() + S_REDIS_WAIT_MS;
    int64_t delay = 50;
    while (lk_redis_connect(self->redis) != 0) {
        int64_t left = deadline - lk_mono_ms();
        if (left <= 0) {
            lk_error("redis not reachable after %d ms", S_REDIS_WAIT_MS);
            return -1;
        }
        usleep((useconds_t)(delay < left ? delay : left) * 1000);
        delay = delay * 2 > 1000 ? 1000 : delay * 2;
    }
    return 0;
}

ar_server_t *ar_server_new(lk_loop_t *loop, lk_config_t *config, const char *node, int ready_fd,
                           int *exit_code)
{
    self_t *self = lk_calloc(1, sizeof(*self));
    self->config = config;
    self->loop = loop;
    self->node = lk_strdup(node);
    self->ready_fd = ready_fd;
    self->in_flight = zhashx_new();
    self->hist_sent = zhashx_new();
    *exit_code = LK_EXIT_CONFIG;
    if (s_config(self) != 0) {
        ar_server_destroy(&self);
        return NULL;
    }
    int64_t port = lk_config_get_int(config, "redis_port", 6379);
    if (port < 0 || port > 65535) {
        lk_error("redis_port: %" PRId64 " is out of range", port);
        ar_server_destroy(&self);
        return NULL;
    }
    self->redis = lk_redis_new(lk_config_get(config, "redis_host", "127.0.0.1"), (int)port);
    if (lk_redis_configure(self->redis, config) != 0) {
        ar_server_destroy(&self);
        return NULL;
    }
    lk_iclient_handlers_t h = {s_on_message, s_on_ready, s_on_published, s_on_envelope,
                               s_on_peer_up, s_on_acked, s_on_peer_down};
    if (ar_replica_init(self) != 0) {
        ar_server_destroy(&self);
        return NULL;
    }
    char cid[64];
    self->ic = lk_iclient_new(loop, config, node, "lock-arbiter",
                              ar_replica_client_id(self, cid, sizeof(cid)), &h, self);
    if (!self->ic) {
        ar_server_destroy(&self);
        return NULL;
    }
    self->bus = lk_iclient_bus(self->ic);
    lk_bus_on_admin(self->bus, s_admin, self);
    if (lk_bus_enable_msglog(self->bus, lk_config_get(config, "msglog_dir", "")) != 0) {
        ar_server_destroy(&self);
        return NULL;
    }
    *exit_code = LK_EXIT_TEMPORARY;
    if (s_wait_redis(self) != 0) {
        ar_server_destroy(&self);
        return NULL;
    }
    lk_layout_migrate(self->redis); /* keys of the untagged layout, once */
    /* before the subscriptions are in place: which locks are ours */
    ar_replica_start(self);
    /* %n: our node id (each replica serves logins on its own endpoint) */
    char *aep = lk_replicas_endpoint(config, "arbiter", node);
    if (self->n_rep > 1 && aep && !strstr(lk_config_get(config, "arbiter_endpoint", ""), "%n")) {
        lk_error("arbiter_endpoint: %d replicas need %%n (the node id) in it", self->n_rep);
        free(aep);
        ar_server_destroy(&self);
        return NULL;
    }
    if (aep && lk_bus_bind(self->bus, aep) != 0) {
        free(aep);
        ar_server_destroy(&self);
        return NULL;
    }
    if (!aep)
        lk_warn("arbiter_endpoint is not configured: no login service");
    free(aep);
    const char *ep = lk_config_get(config, "auth_endpoint", NULL);
    if (ep && *ep) {
        if (!(self->auth = lk_replicas_connect(self->bus, config, "auth", "auth"))) {
            ar_server_destroy(&self);
            return NULL;
        }
    } else
        lk_warn("auth_endpoint is not configured: revoked logins stay connected");
    ep = lk_config_get(config, "history_endpoint", NULL);
    if (ep && *ep) {
        self->history = lk_replicas_connect(self->bus, config, "history", "history-writer");
        if (!self->history) {
            ar_server_destroy(&self);
            return NULL;
        }
    } else
        lk_warn("history_endpoint is not configured: history events wait in Redis");
    /* QoS 1 on a persistent session: what is published while we are away is kept */
    char filter[64];
    lk_iclient_subscribe(self->ic, "/+/statu", 1);
    for (int i = 0; i < self->n_roles; i++) {
        snprintf(filter, sizeof(filter), "/+/%s", self->roles[i]);
        lk_iclient_subscribe(self->ic, filter, 1);
    }
    lk_iclient_subscribe(self->ic, "/unauth", 1);
    lk_iclient_subscribe(self->ic, AR_HISTORY_TOPIC, 1);
    self->cron = lk_loop_timer(loop, S_CRON_MS, true, s_cron, self);
    *exit_code = 0;
    return self;
}

int ar_server_exit_code(ar_server_t *self)
{
    return self->exit_code;
}

void ar_server_destroy(ar_server_t **self_p)
{
    self_t *self = *self_p;
    if (!self)
        return;
    if (self->cron)
        lk_loop_timer_cancel(self->loop, self->cron);
    if (self->ic) {
        lk_notice("%" PRIu64 " granted, %" PRIu64 " refused, %" PRIu64 " expired, %" PRIu64
                  " state changes, %" PRIu64 " logins, %" PRIu64 " revoked, %" PRIu64
                  " history queries",
                  self->granted, self->refused, self->expired, self->states, self->logins,
                  self->revoked, self->queries);
        /* after a failure the unhandled message must stay un-acked: leave abruptly */
        if (!self->exit_code)
            lk_iclient_close(self->ic, 500);
        lk_iclient_destroy(&self->ic);
    }
    ar_history_close(self);
    ar_replica_destroy(self);
    s_waits_free(&self->pub_waits);
    s_waits_free(&self->hist_waits);
    lk_replicas_destroy(&self->history);
    lk_replicas_destroy(&self->auth);
    zhashx_destroy(&self->in_flight);
    zhashx_destroy(&self->hist_sent);
    lk_redis_destroy(&self->redis);
    for (int i = 0; i < self->n_roles; i++)
        free(self->roles[i]);
    free(self->node);
    free(self);
    *self_p = NULL;
}
