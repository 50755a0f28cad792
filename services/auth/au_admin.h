/*  au_admin: bans and API keys, kept by auth in Redis (the api process asks over the bus).

    lk:banned        hash  "<as>:<who>" -> JSON {as, who, reason, by, at, until} (ms;
                           until 0 = forever); as is clientid, username or peerhost
    lk:apikey:<key>  hash  secret ($7$ PBKDF2 hash of the secret), name, created (ms)
    lk:apikeys       set   every key

    A CONNECT whose client id, username or source address is banned (and not expired) is
    refused with reason "banned" before any password check. */
#ifndef AU_ADMIN_H_INCLUDED
#define AU_ADMIN_H_INCLUDED

#include "latchkey.pb-c.h"
#include "lk_admin.h"
#include "lk_redis.h"

/* 1 banned (*reason set, static storage of the caller's buf), 0 not, -1 Redis failed */
int au_ban_check(lk_redis_t *redis, const Lk__AuthRequest *req, char *reason, size_t cap);
/* the admin ops ban_add, ban_del, bans, apikey_check; false when op is none of them */
bool au_admin(lk_redis_t *redis, const Lk__AdminRequest *q, lk_admin_out_t *out);

#endif
