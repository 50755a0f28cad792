/*  ar_server: the lock-arbiter actor — the smart lock's two-party unlock, its state
    history, temporary logins and their revocation, and the MQTT history query (seed 004's
    "monitor" and "login", generalised; see ar_internal.h for its parts).

    It is an internal MQTT client (node "lock-arbiter", client id "$lk-arbiter"; replicas
    lock-arbiter-<n> / $lk-arbiter-<n>, ar_replica.c) that subscribes with QoS 1 and a
    persistent session to /+/statu, /+/<role> for each configured role, /unauth and
    $lk/history/req; serves LoginRequest on arbiter_endpoint (%n: its node id); sends
    Revoke to auth and HistoryBatch to the history writer. */
#ifndef AR_SERVER_H_INCLUDED
#define AR_SERVER_H_INCLUDED

#include "lk_config.h"
#include "lk_loop.h"

typedef struct _ar_server_t ar_server_t;

/* Waits (bounded) for Redis, binds arbiter_endpoint, joins the bus. NULL with a log line
   and *exit_code set (LK_EXIT_CONFIG for a bad configuration, LK_EXIT_TEMPORARY when
   Redis or the endpoint is unavailable). Reports readiness on ready_fd (-1: none) once
   the subscriptions are in place. loop and config must outlive the server. */
ar_server_t *ar_server_new(lk_loop_t *loop, lk_config_t *config, const char *node, int ready_fd,
                           int *exit_code);
/* leaves the bus politely (after lk_loop_run returned), then frees */
void ar_server_destroy(ar_server_t **self_p);
/* 0, or the exit code the loop was stopped for (LK_EXIT_TEMPORARY when Redis failed) */
int ar_server_exit_code(ar_server_t *self);

#endif
