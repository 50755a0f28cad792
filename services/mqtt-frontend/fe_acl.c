/*  fe_acl: live ACL changes for connected clients.

    A connection caches the ACL auth gave it at CONNECT. When an operator changes a user's
    rules (`latchkey acl set`), or auth reloads its files (SIGHUP), auth forwards
    Revoke{acl_changed, usernames} (no names = everybody) to every frontend. For each
    client of those users the frontend asks auth again with AuthRequest{acl_only} (no
    password: the user only has to exist still) and applies the reply at once:
      - ok: the new rules replace the cached ones; subscriptions the new rules no longer
        allow are dropped (router and session store told), and deliveries are checked
        against the rules from then on;
      - refused (the user is gone): the client is disconnected (v5 DISCONNECT 0x98
        administrative action);
      - no answer or "unavailable": asked again every second; after request_timeout_ms the
        client is disconnected rather than left with rights that may be gone.
    Re-fetching rather than disconnecting keeps sessions alive across harmless edits. */
#include "fe_internal.h"

#define S_RETRY_MS 1000

static fe_conn_t *s_conn_of_req(fe_server_t *srv, uint64_t req)
{
    int fd = (int)(req >> 40);
    if (fd < 0 || fd >= srv->by_fd_cap || !srv->by_fd[fd])
        return NULL;
    fe_conn_t *c = srv->by_fd[fd];
    return (c->id & 0xFFFFFFFFFFULL) == (req & 0xFFFFFFFFFFULL) ? c : NULL;
}

static void s_ask(fe_conn_t *conn)
{
    fe_server_t *srv = conn->srv;
    Lk__AuthRequest r = LK__AUTH_REQUEST__INIT;
    r.req = conn->req;
    r.client = conn->client_id;
    r.has_username = conn->has_username;
    r.username = conn->username ? conn->username : "";
    r.peer = conn->peer;
    r.acl_only = true;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_AUTH_REQUEST;
    env.auth_request = &r;
    lk_bus_send(srv->bus, lk_replicas_pick(srv->auths), &env, false);
}

static void s_retry(lk_loop_t *loop, void *arg)
{
    fe_conn_t *conn = arg;
    conn->lim.acl_timer = 0;
    if (conn->state != FE_ACTIVE && conn->state != FE_SESSION)
        return;
    if (lk_loop_now(loop) - conn->lim.acl_since_ms > conn->srv->request_timeout_ms) {
        fe_conn_close(conn, LK_RC_SERVER_UNAVAILABLE, true, "ACL changed and auth did not answer");
        return;
    }
    s_ask(conn);
    conn->lim.acl_timer = lk_loop_timer(loop, S_RETRY_MS, false, s_retry, conn);
}

static void s_reload(fe_conn_t *conn)
{
    fe_server_t *srv = conn->srv;
    if (!conn->lim.acl_timer)
        conn->lim.acl_since_ms = lk_loop_now(srv->loop);
    else
        lk_loop_timer_cancel(srv->loop, conn->lim.acl_timer);
    s_ask(conn);
    conn->lim.acl_timer = lk_loop_timer(srv->loop, S_RETRY_MS, false, s_retry, conn);
}

void fe_acl_changed(fe_server_t *srv, const Lk__Revoke *r)
{
    int n = 0;
    for (int fd = 0; fd < srv->by_fd_cap; fd++) {
        fe_conn_t *c = srv->by_fd[fd];
        if (!c || (c->state != FE_ACTIVE && c->state != FE_SESSION))
            continue;
        bool mine = r->n_usernames == 0;
        for (size_t i = 0; !mine && c->username && i < r->n_usernames; i++)
            mine = strcmp(c->username, r->usernames[i]) == 0;
        if (mine) {
            s_reload(c);
            n++;
        }
    }
    if (n)
        lk_notice("ACL changed for %zu user(s)%s: re-reading it for %d client(s)", r->n_usernames,
                  r->n_usernames ? "" : " (all)", n);
}

/* drops the subscriptions the connection's rules no longer allow */
static void s_prune_subs(fe_conn_t *conn)
{
    if (conn->superuser || conn->n_subs == 0)
        return;
    char **gone = lk_calloc(conn->n_subs, sizeof(char *));
    size_t n = 0;
    for (size_t i = 0; i < conn->n_subs;) {
        if (lk_acl_filter_allowed(conn->acl, conn->n_acl, conn->subs[i].filter, LK_ACL_SUB)) {
            i++;
            continue;
        }
        lk_info("client %s: subscription '%s' dropped: no longer allowed", conn->client_id,
                conn->subs[i].filter);
        gone[n++] = lk_strdup(conn->subs[i].filter);
        fe_sub_changed(conn, conn->subs[i].filter);
        fe_sub_remove_at(conn, i);
    }
    if (n)
        fe_router_unsubscribe(conn, gone, n, NULL);
    for (size_t i = 0; i < n; i++)
        free(gone[i]);
    free(gone);
}

void fe_acl_reply(fe_server_t *srv, const Lk__AuthReply *r)
{
    fe_conn_t *conn = s_conn_of_req(srv, r->req);
    if (!conn || !conn->lim.acl_timer || (conn->state != FE_ACTIVE && conn->state != FE_SESSION))
        return;
    if (!r->ok && r->reason && strcmp(r->reason, "unavailable") == 0)
        return; /* the retry timer asks again */
    lk_loop_timer_cancel(srv->loop, conn->lim.acl_timer);
    conn->lim.acl_timer = 0;
    if (!r->ok) {
        lk_notice("client %s (user %s): ACL re-read refused (%s): disconnecting", conn->client_id,
                  conn->username ? conn->username : "-", r->reason ? r->reason : "");
        fe_conn_close(conn, LK_RC_ADMIN_ACTION, true, NULL);
        return;
    }
    for (size_t i = 0; i < conn->n_acl; i++)
        free(conn->acl[i].pattern);
    free(conn->acl);
    conn->superuser = r->superuser;
    conn->n_acl = r->n_acl;
    conn->acl = lk_calloc(r->n_acl ? r->n_acl : 1, sizeof(lk_acl_rule_t));
    for (size_t i = 0; i < r->n_acl; i++) {
        conn->acl[i].pattern = lk_strdup(r->acl[i]->pattern ? r->acl[i]->pattern : "");
        conn->acl[i].access = r->acl[i]->access;
    }
    /* a subscription made under the old rules may reach topics the new ones deny: check
       each delivery from now on (cheap next to losing a revocation) */
    conn->acl_check_deliveries = !conn->superuser;
    s_prune_subs(conn);
    lk_info("client %s (user %s): ACL updated, %zu rule(s)", conn->client_id,
            conn->username ? conn->username : "-", conn->n_acl);
}
