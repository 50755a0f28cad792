/*  au_server: the auth actor. It serves `auth_endpoint` (ROUTER) on the bus, answers
    every AuthRequest with au_check's AuthReply (unreliable: the frontend retries on
    timeout), forwards a Revoke from an operator (the CLI, kind "latchkey", or the
    lock-arbiter) reliably to every connected mqtt-frontend — with acl_changed set they
    re-read the ACL of those users' clients (AuthRequest{acl_only}) instead of
    disconnecting them — and reloads the password and ACL files on SIGHUP, after which
    every connected client re-reads its ACL. */
#ifndef AU_SERVER_H_INCLUDED
#define AU_SERVER_H_INCLUDED

#include "au_test.h"
#include "lk_config.h"
#include "lk_loop.h"

typedef struct _au_server_t au_server_t;

/* NULL with a log line on a bad configuration. loop and config stay the caller's and
   must outlive the server. */
au_server_t *au_server_new(lk_loop_t *loop, lk_config_t *config, const char *node);
void au_server_destroy(au_server_t **self_p);

/* Waits until Redis answers (when a backend needs it), retrying with a backoff that grows
   to 1 s, for at most timeout_ms. 0 or -1 with a log line. */
int au_server_wait_redis(au_server_t *self, int64_t timeout_ms);
/* binds auth_endpoint (or the given endpoint when not NULL); 0 or -1 */
int au_server_bind(au_server_t *self, const char *endpoint);

/* a real bus round trip in-process: a DEALER asks the server over ipc:// */
int au_server_test(au_tally_t *tally, int redis_port);

#endif
