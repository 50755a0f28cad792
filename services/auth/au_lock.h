/*  au_lock: the smart lock's topics, guarded whatever the other sources grant.

    For every registered lock (Redis lk:locks, kept by `latchkey lock add|del|sync`) the
    rules of a non-superuser connection get, after everything else was computed:
      bound user (lk:ubind:<user>, a temporary login through lk:{arb}:login:<temp>):
        grant subscribe /<lock>/#, grant publish /<lock>/<role> for each bound role,
        deny publish /<lock>/call, /<lock>/statu and every other role of lock_roles;
        and (bound to any lock) publish $lk/history/req, subscribe $lk/reply/<username>/#;
      the lock's device credential (lk:devlock:<username> → lock):
        grant publish /<lock>/statu, grant subscribe /<lock>/call,
        deny publish /<lock>/call and every role;
      anybody else whose grants reach into /<lock>/# (anonymous `#`, `/+/+`, ...):
        deny both /<lock>/#.
    Deny rules win over grants (lk_acl), so no ACL hash, ACL file or allow_anonymous can
    open a lock's topics to someone else; only the lock-arbiter (an internal client, no
    ACL) publishes /<lock>/call. A connection whose grants do not reach a lock gets no rule
    for it, so the rule count grows with the locks only for broad grants.

    The lock set is cached and re-read when lk:locks:ver changes (one GET per request). */
#ifndef AU_LOCK_H_INCLUDED
#define AU_LOCK_H_INCLUDED

#include "lk_acl.h"
#include "lk_config.h"
#include "lk_redis.h"

typedef struct _au_lock_t au_lock_t;

au_lock_t *au_lock_new(lk_config_t *config);
void au_lock_destroy(au_lock_t **self_p);

/* Appends the lock rules for user (NULL or "" = anonymous) to acl. Redis unreachable:
   fails closed without refusing — the last lock set read with no binding, or when none was
   ever read, deny rules for every lock-shaped topic (/+/call, /+/statu, /+/<role>). 0. */
int au_lock_rules(au_lock_t *self, lk_redis_t *redis, const char *user, lk_acl_list_t *acl);

#endif
