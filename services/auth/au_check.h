/*  au_check: the auth decision. Given an AuthRequest it produces the AuthReply: whether
    the client may connect, whether it is a superuser, and its ACL. No bus here: the actor
    (au_server) feeds it requests, and the selftest calls it directly.

    Configuration it reads:
      redis_host, redis_port   the Redis that holds mqtt_user:<name> / mqtt_acl:<name>
      allow_anonymous          false by default: a CONNECT without a username is refused
      password_file            optional Mosquitto password file (reloaded by au_check_reload)
      acl_file                 optional Mosquitto ACL file (reloaded by au_check_reload)
      auth_backends            the password sources, tried in order, separated by blanks or
                               commas: "file" (password_file), "redis" (the seed's layout:
                               redis_user_key, default mqtt_user:%u, field `password`;
                               redis_acl_key, default mqtt_acl:%u, values 1/2/3) and/or
                               "emqx" (EMQX 5's layout: emqx_user_key, default mqtt:%u,
                               fields password_hash, salt, is_superuser; emqx_acl_key,
                               default mqtt_acl:%u, values subscribe/publish/all or JSON
                               {"action": ...}; a JSON rule limited by qos or retain grants
                               nothing; emqx_password_hash plain|md5|sha|sha256|sha512|
                               bcrypt|pbkdf2 <mac> <iterations> [<dk_length>], default
                               sha256; emqx_salt_position prefix (default)|suffix|disable).
                               Either ACL layout's values are understood in both. The first one
                               that knows the username decides; the next is asked only about
                               users the previous one does not know. Default "redis", or
                               "file redis" when password_file is set.
      acl_nomatch              "deny" (default) or "allow": what an authenticated user gets
                               when no source gives it any rule (allow = `#` both ways).

    Decision:
      no username      ok iff allow_anonymous; ACL = the acl_file's anonymous rules (plus
                       patterns with %c) when acl_file is set, else `#` with both rights.
      username         password checked against the backends. Redis users: hash
                       mqtt_user:<name> fields `password` ($7$, $6$ or hex sha256; see
                       lk_crypto.h), `salt` (sha256 only), `is_superuser` ("1"/"true").
                       Superusers get `#` both ways and superuser=true. Others get the
                       fields of mqtt_acl:<name> (filter -> "1" sub, "2" pub, "3" both,
                       %u/%c substituted) if Redis authenticated them, plus the acl_file's
                       rules for them; none at all -> acl_nomatch.
    AuthRequest{acl_only} (a connected client's ACL re-read after a change): no password is
    checked; the user must still be known to a backend; the reply echoes acl_only.
    Reasons on refusal, for the frontend's CONNACK: AU_REASON_BAD_CREDENTIALS (unknown user
    and wrong password alike, in the same time), AU_REASON_NOT_AUTHORIZED (anonymous while
    not allowed), AU_REASON_UNAVAILABLE (Redis unreachable). */
#ifndef AU_CHECK_H_INCLUDED
#define AU_CHECK_H_INCLUDED

#include "au_test.h"
#include "latchkey.pb-c.h"
#include "lk_config.h"
#include <stdbool.h>

#define AU_REASON_BAD_CREDENTIALS "bad username or password"
#define AU_REASON_NOT_AUTHORIZED "not authorized"
#define AU_REASON_UNAVAILABLE "unavailable"

typedef struct _au_check_t au_check_t;

/* Reads the configuration and loads the files; NULL with a log line on a bad
   configuration (unknown backend, unreadable or malformed file). config stays the
   caller's and must outlive the result. */
au_check_t *au_check_new(lk_config_t *config);
void au_check_destroy(au_check_t **self_p);

/* reloads password_file and acl_file; a file that fails keeps its previous copy (-1) */
int au_check_reload(au_check_t *self);

/* true when a backend is Redis */
bool au_check_uses_redis(au_check_t *self);
/* the Redis connection (bans and API keys live there too; see au_admin.h) */
struct _lk_redis_t *au_check_redis(au_check_t *self);
/* PING Redis: 0 when it answers, -1 otherwise */
int au_check_ping(au_check_t *self);

/* The reply to req (req->req echoed). Never NULL. Logs one line per refusal (client id,
   username, peer; never the password). Caller destroys it with au_reply_destroy(). */
Lk__AuthReply *au_check_request(au_check_t *self, const Lk__AuthRequest *req);
void au_reply_destroy(Lk__AuthReply **reply_p);

/* needs a Redis server at redis_port (the selftest starts one) */
int au_check_test(au_tally_t *tally, int redis_port);

#endif
