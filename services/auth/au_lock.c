/*  au_lock: the lock rules of a connection; see au_lock.h. */
#include "au_lock.h"
#include "lk_common.h"
#include <stdio.h>

#define S_MAX_ROLES 8

struct _au_lock_t {
    char *roles[S_MAX_ROLES];
    int n_roles;
    char *ver;    /* lk:locks:ver of the cached set; NULL = none read */
    char **locks; /* the cached lk:locks */
    size_t n_locks;
    int64_t warned_ms;
};

au_lock_t *au_lock_new(lk_config_t *config)
{
    au_lock_t *self = lk_calloc(1, sizeof(*self));
    char *copy = lk_strdup(lk_config_get(config, "lock_roles", "m f")), *save = NULL;
    for (char *w = strtok_r(copy, " \t,", &save); w && self->n_roles < S_MAX_ROLES;
         w = strtok_r(NULL, " \t,", &save))
        self->roles[self->n_roles++] = lk_strdup(w);
    free(copy);
    return self;
}

static void s_forget(au_lock_t *self)
{
    for (size_t i = 0; i < self->n_locks; i++)
        free(self->locks[i]);
    free(self->locks);
    self->locks = NULL;
    self->n_locks = 0;
    free(self->ver);
    self->ver = NULL;
}

void au_lock_destroy(au_lock_t **self_p)
{
    au_lock_t *self = *self_p;
    if (!self)
        return;
    s_forget(self);
    for (int i = 0; i < self->n_roles; i++)
        free(self->roles[i]);
    free(self);
    *self_p = NULL;
}

static lk_redis_reply_t *s_cmd(lk_redis_t *redis, const char *a, const char *b)
{
    const char *argv[2] = {a, b};
    size_t lens[2] = {strlen(a), strlen(b)};
    lk_redis_reply_t *r = lk_redis_cmdv(redis, 2, argv, lens);
    if (lk_redis_reply_failed(r)) {
        lk_redis_reply_free(&r);
        return NULL;
    }
    return r;
}

/* the lock set, re-read when its version moved; -1 when Redis failed */
static int s_refresh(au_lock_t *self, lk_redis_t *redis)
{
    lk_redis_reply_t *v = s_cmd(redis, "GET", "lk:locks:ver");
    if (!v)
        return -1;
    const char *ver = v->type == LK_REDIS_STR ? v->str : "";
    if (self->ver && strcmp(self->ver, ver) == 0) {
        lk_redis_reply_free(&v);
        return 0;
    }
    lk_redis_reply_t *m = s_cmd(redis, "SMEMBERS", "lk:locks");
    if (!m || m->type != LK_REDIS_ARRAY) {
        lk_redis_reply_free(&m);
        lk_redis_reply_free(&v);
        return -1;
    }
    s_forget(self);
    self->ver = lk_strdup(ver);
    self->locks = lk_calloc(m->count ? m->count : 1, sizeof(char *));
    for (size_t i = 0; i < m->count; i++)
        if (m->items[i].type == LK_REDIS_STR && m->items[i].len)
            self->locks[self->n_locks++] = lk_strdup(m->items[i].str);
    lk_debug("lock set version %s: %zu lock(s)", ver, self->n_locks);
    lk_redis_reply_free(&m);
    lk_redis_reply_free(&v);
    return 0;
}

static bool s_has_role(const char *roles, const char *role)
{
    size_t n = strlen(role);
    for (const char *p = roles; (p = strstr(p, role)) != NULL; p += n)
        if ((p == roles || p[-1] == ' ') && (p[n] == 0 || p[n] == ' '))
            return true;
    return false;
}

/* true when a grant of the first n rules reaches a topic of filter */
static bool s_reaches(const lk_acl_list_t *acl, size_t n, const char *filter)
{
    for (size_t i = 0; i < n; i++)
        if (!(acl->rules[i].access & LK_ACL_DENY) && lk_acl_overlaps(acl->rules[i].pattern, filter))
            return true;
    return false;
}

/* Redis unreachable and no lock set known: every lock-shaped topic closed */
static void s_closed(au_lock_t *self, lk_acl_list_t *acl)
{
    lk_acl_list_add(acl, "/+/call", LK_ACL_DENY | LK_ACL_BOTH);
    lk_acl_list_add(acl, "/+/statu", LK_ACL_DENY | LK_ACL_BOTH);
    char t[64];
    for (int r = 0; r < self->n_roles; r++) {
        snprintf(t, sizeof(t), "/+/%s", self->roles[r]);
        lk_acl_list_add(acl, t, LK_ACL_DENY | LK_ACL_BOTH);
    }
}

int au_lock_rules(au_lock_t *self, lk_redis_t *redis, const char *user, lk_acl_list_t *acl)
{
    /* Redis away: fail closed without refusing the connection — the last lock set read
       with no binding (nobody reaches a lock), or every lock-shaped topic when none was
       ever read. The client keeps these rules until its ACL is read again. */
    bool down = s_refresh(self, redis) != 0;
    if (down) {
        int64_t now = lk_mono_ms();
        if (now - self->warned_ms > 5000) {
            self->warned_ms = now;
            lk_warn("lock registry unreadable (Redis): lock topics closed to new clients");
        }
        if (!self->ver) {
            s_closed(self, acl);
            return 0;
        }
    }
    if (self->n_locks == 0)
        return 0;
    lk_redis_reply_t *binds = NULL, *dev = NULL;
    if (user && *user && !down) {
        char key[300];
        snprintf(key, sizeof(key), "lk:{arb}:login:%s", user);
        lk_redis_reply_t *real = s_cmd(redis, "GET", key);
        snprintf(key, sizeof(key), "lk:ubind:%s",
                 real && real->type == LK_REDIS_STR ? real->str : user);
        binds = real ? s_cmd(redis, "HGETALL", key) : NULL;
        lk_redis_reply_free(&real);
        snprintf(key, sizeof(key), "lk:devlock:%s", user);
        dev = binds ? s_cmd(redis, "GET", key) : NULL;
        if (!binds || !dev || binds->type != LK_REDIS_ARRAY) {
            lk_redis_reply_free(&binds);
            lk_redis_reply_free(&dev);
            binds = dev = NULL; /* Redis failed halfway: no binding counts */
        }
    }
    const char *dev_lock = dev && dev->type == LK_REDIS_STR ? dev->str : NULL;
    size_t granted = acl->count; /* what the other sources gave: the overlap test's base */
    char t[300];
    for (size_t k = 0; k < self->n_locks; k++) {
        const char *lock = self->locks[k];
        const char *roles = NULL;
        for (size_t i = 0; binds && i + 1 < binds->count; i += 2)
            if (strcmp(binds->items[i].str, lock) == 0)
                roles = binds->items[i + 1].str;
        bool is_dev = dev_lock && strcmp(dev_lock, lock) == 0;
        if (roles && *roles) {
            snprintf(t, sizeof(t), "/%s/#", lock);
            lk_acl_list_add(acl, t, LK_ACL_SUB);
            for (int r = 0; r < self->n_roles; r++) {
                snprintf(t, sizeof(t), "/%s/%s", lock, self->roles[r]);
                lk_acl_list_add(acl, t,
                                s_has_role(roles, self->roles[r]) ? LK_ACL_PUB
                                                                  : LK_ACL_DENY | LK_ACL_PUB);
            }
            snprintf(t, sizeof(t), "/%s/call", lock);
            lk_acl_list_add(acl, t, LK_ACL_DENY | LK_ACL_PUB);
            snprintf(t, sizeof(t), "/%s/statu", lock);
            lk_acl_list_add(acl, t, LK_ACL_DENY | LK_ACL_PUB);
            /* the arbiter's answers (/<lock>/<role>/result) and anything deeper */
            snprintf(t, sizeof(t), "/%s/+/+/#", lock);
            lk_acl_list_add(acl, t, LK_ACL_DENY | LK_ACL_PUB);
        } else if (is_dev) {
            snprintf(t, sizeof(t), "/%s/statu", lock);
            lk_acl_list_add(acl, t, LK_ACL_PUB);
            snprintf(t, sizeof(t), "/%s/call", lock);
            lk_acl_list_add(acl, t, LK_ACL_SUB);
            lk_acl_list_add(acl, t, LK_ACL_DENY | LK_ACL_PUB);
            for (int r = 0; r < self->n_roles; r++) {
                snprintf(t, sizeof(t), "/%s/%s", lock, self->roles[r]);
                lk_acl_list_add(acl, t, LK_ACL_DENY | LK_ACL_BOTH);
            }
        } else {
            snprintf(t, sizeof(t), "/%s/#", lock);
            if (s_reaches(acl, granted, t))
                lk_acl_list_add(acl, t, LK_ACL_DENY | LK_ACL_BOTH);
        }
    }
    /* a bound user asks the lock-arbiter for history: $lk/history/req, answered under
       $lk/reply/<username>/ (a name with wildcards or '/' gets no such rule) */
    if (binds && binds->count && !strpbrk(user, "+#/")) {
        lk_acl_list_add(acl, "$lk/history/req", LK_ACL_PUB);
        snprintf(t, sizeof(t), "$lk/reply/%s/#", user);
        lk_acl_list_add(acl, t, LK_ACL_SUB);
    }
    lk_redis_reply_free(&binds);
    lk_redis_reply_free(&dev);
    return 0;
}
