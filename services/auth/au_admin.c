/*  au_admin: bans and API keys in Redis (see au_admin.h). */
#include "au_admin.h"
#include "lk_common.h"
#include "lk_crypto.h"
#include <cjson/cJSON.h>
#include <stdio.h>

/* a string member of a stored ban, "" when absent */
static const char *s_jstr(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItem(j, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

/* a stored ban that still holds: 1 and its reason */
static int s_ban_live(const lk_redis_reply_t *r, int64_t now, char *reason, size_t cap)
{
    if (!r || r->type != LK_REDIS_STR)
        return 0;
    cJSON *j = cJSON_Parse(r->str);
    if (!j)
        return 0;
    cJSON *until = cJSON_GetObjectItem(j, "until");
    int live = !cJSON_IsNumber(until) || until->valuedouble <= 0 || until->valuedouble > now;
    if (live)
        snprintf(reason, cap, "%s", s_jstr(j, "reason"));
    cJSON_Delete(j);
    return live;
}

int au_ban_check(lk_redis_t *redis, const Lk__AuthRequest *req, char *reason, size_t cap)
{
    char host[64];
    lk_admin_peerhost(req->peer, host, sizeof(host));
    char f1[600], f2[600], f3[100];
    snprintf(f1, sizeof(f1), "clientid:%.512s", req->client ? req->client : "");
    snprintf(f2, sizeof(f2), "username:%.512s", req->username ? req->username : "");
    snprintf(f3, sizeof(f3), "peerhost:%s", host);
    lk_redis_reply_t *r = lk_redis_cmd(redis, "HMGET lk:banned %s %s %s", f1,
                                       req->has_username ? f2 : "username:", f3);
    if (!r || r->type != LK_REDIS_ARRAY) {
        lk_redis_reply_free(&r);
        return -1;
    }
    int64_t now = lk_wall_ms();
    int banned = 0;
    for (size_t i = 0; i < r->count && !banned; i++) {
        if (i == 1 && !req->has_username)
            continue;
        banned = s_ban_live(&r->items[i], now, reason, cap);
    }
    lk_redis_reply_free(&r);
    return banned;
}

static bool s_as_valid(const char *as)
{
    return as && (strcmp(as, "clientid") == 0 || strcmp(as, "username") == 0 ||
                  strcmp(as, "peerhost") == 0);
}

static void s_ban_add(lk_redis_t *redis, const Lk__AdminRequest *q, lk_admin_out_t *out)
{
    const Lk__AdminBan *b = q->ban;
    if (!b || !s_as_valid(b->as) || !b->who || !*b->who) {
        lk_admin_error(out, "BAD_REQUEST", "as must be clientid, username or peerhost; who set");
        return;
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "as", b->as);
    cJSON_AddStringToObject(j, "who", b->who);
    cJSON_AddStringToObject(j, "reason", b->reason ? b->reason : "");
    cJSON_AddStringToObject(j, "by", b->by ? b->by : "");
    cJSON_AddNumberToObject(j, "at", (double)(b->at_ms ? b->at_ms : (uint64_t)lk_wall_ms()));
    cJSON_AddNumberToObject(j, "until", (double)b->until_ms);
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    char field[600];
    snprintf(field, sizeof(field), "%s:%.512s", b->as, b->who);
    lk_redis_reply_t *r = lk_redis_cmd(redis, "HSETNX lk:banned %s %s", field, text);
    free(text);
    if (lk_redis_reply_failed(r))
        lk_admin_error(out, "SERVICE_UNAVAILABLE", "Redis failed");
    else if (r->integer == 0)
        lk_admin_error(out, "ALREADY_EXISTS", "already banned");
    else {
        lk_admin_reply(out)->count = 1;
        lk_notice("banned %s %s until %" PRIu64 " (%s)", b->as, b->who, b->until_ms,
                  b->reason ? b->reason : "");
    }
    lk_redis_reply_free(&r);
}

static void s_ban_del(lk_redis_t *redis, const Lk__AdminRequest *q, lk_admin_out_t *out)
{
    const Lk__AdminBan *b = q->ban;
    if (!b || !s_as_valid(b->as) || !b->who) {
        lk_admin_error(out, "BAD_REQUEST", "as must be clientid, username or peerhost");
        return;
    }
    char field[600];
    snprintf(field, sizeof(field), "%s:%.512s", b->as, b->who);
    lk_redis_reply_t *r = lk_redis_cmd(redis, "HDEL lk:banned %s", field);
    if (lk_redis_reply_failed(r))
        lk_admin_error(out, "SERVICE_UNAVAILABLE", "Redis failed");
    else if (r->integer == 0)
        lk_admin_error(out, "NOT_FOUND", "not banned");
    else {
        lk_admin_reply(out)->count = 1;
        lk_notice("ban of %s %s lifted", b->as, b->who);
    }
    lk_redis_reply_free(&r);
}

static void s_bans(lk_redis_t *redis, lk_admin_out_t *out)
{
    lk_redis_reply_t *r = lk_redis_cmd(redis, "HGETALL lk:banned");
    if (lk_redis_reply_failed(r) || r->type != LK_REDIS_ARRAY) {
        lk_admin_error(out, "SERVICE_UNAVAILABLE", "Redis failed");
        lk_redis_reply_free(&r);
        return;
    }
    int64_t now = lk_wall_ms();
    for (size_t i = 0; i + 1 < r->count; i += 2) {
        cJSON *j = cJSON_Parse(r->items[i + 1].str ? r->items[i + 1].str : "");
        if (!j)
            continue;
        cJSON *until = cJSON_GetObjectItem(j, "until");
        double u = cJSON_IsNumber(until) ? until->valuedouble : 0;
        if (u > 0 && u <= now) {
            /* expired: forget it now */
            lk_redis_reply_t *d = lk_redis_cmd(redis, "HDEL lk:banned %s", r->items[i].str);
            lk_redis_reply_free(&d);
            cJSON_Delete(j);
            continue;
        }
        Lk__AdminBan *b = lk_admin_ban_add(out);
        b->as = lk_admin_str(out, s_jstr(j, "as"));
        b->who = lk_admin_str(out, s_jstr(j, "who"));
        b->reason = lk_admin_str(out, s_jstr(j, "reason"));
        b->by = lk_admin_str(out, s_jstr(j, "by"));
        cJSON *at = cJSON_GetObjectItem(j, "at");
        b->at_ms = cJSON_IsNumber(at) ? (uint64_t)at->valuedouble : 0;
        b->until_ms = (uint64_t)u;
        cJSON_Delete(j);
    }
    lk_admin_reply(out)->total = lk_admin_reply(out)->n_bans;
    lk_redis_reply_free(&r);
}

static void s_apikey_check(lk_redis_t *redis, const Lk__AdminRequest *q, lk_admin_out_t *out)
{
    const char *key = q->username ? q->username : "";
    lk_redis_reply_t *r = lk_redis_cmd(redis, "HGET lk:apikey:%s secret", key);
    if (!r) {
        lk_admin_error(out, "SERVICE_UNAVAILABLE", "Redis failed");
        return;
    }
    if (r->type != LK_REDIS_STR) {
        lk_crypto_pw_dummy(q->password.data, q->password.len);
        lk_admin_error(out, "BAD_API_KEY_OR_SECRET", "unknown key or wrong secret");
    } else if (lk_crypto_pw_verify(r->str, NULL, q->password.data, q->password.len) != 1)
        lk_admin_error(out, "BAD_API_KEY_OR_SECRET", "unknown key or wrong secret");
    lk_redis_reply_free(&r);
}

bool au_admin(lk_redis_t *redis, const Lk__AdminRequest *q, lk_admin_out_t *out)
{
    const char *op = q->op ? q->op : "";
    if (strcmp(op, "ban_add") == 0)
        s_ban_add(redis, q, out);
    else if (strcmp(op, "ban_del") == 0)
        s_ban_del(redis, q, out);
    else if (strcmp(op, "bans") == 0)
        s_bans(redis, out);
    else if (strcmp(op, "apikey_check") == 0)
        s_apikey_check(redis, q, out);
    else
        return false;
    return true;
}
