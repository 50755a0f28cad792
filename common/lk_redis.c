/*  lk_redis: synchronous hiredis wrapper with reconnect; see lk_redis.h. */
#include "lk_redis.h"
#include "lk_common.h"
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <time.h>

struct _lk_redis_t {
    char *host;
    int port;
    redisContext *ctx;
    int64_t last_fail_ms;   /* throttles reconnect attempts and their log lines */
    int pending;            /* appended commands whose replies are not read yet */
};

lk_redis_t *lk_redis_new(const char *host, int port)
{
    lk_redis_t *self = lk_calloc(1, sizeof(*self));
    self->host = lk_strdup(host ? host : "127.0.0.1");
    self->port = port;
    return self;
}

static void s_drop(lk_redis_t *self)
{
    if (self->ctx)
        redisFree(self->ctx);
    self->ctx = NULL;
    self->pending = 0;
}

void lk_redis_destroy(lk_redis_t **self_p)
{
    lk_redis_t *self = *self_p;
    if (!self)
        return;
    s_drop(self);
    free(self->host);
    free(self);
    *self_p = NULL;
}

int lk_redis_connect(lk_redis_t *self)
{
    if (self->ctx)
        return 0;
    struct timeval tv = {1, 0};
    redisContext *c = self->port ? redisConnectWithTimeout(self->host, self->port, tv)
                                 : redisConnectUnixWithTimeout(self->host, tv);
    if (!c || c->err) {
        int64_t now = lk_mono_ms();
        if (now - self->last_fail_ms > 5000)
            lk_warn("redis %s:%d: %s", self->host, self->port, c ? c->errstr : "no memory");
        self->last_fail_ms = now;
        if (c)
            redisFree(c);
        return -1;
    }
    /* commands must not hang the event loop forever on a stuck server */
    struct timeval cmd_tv = {5, 0};
    redisSetTimeout(c, cmd_tv);
    self->ctx = c;
    self->pending = 0;
    return 0;
}

bool lk_redis_connected(lk_redis_t *self)
{
    return self->ctx != NULL;
}

static void s_copy(lk_redis_reply_t *dst, const redisReply *src)
{
    memset(dst, 0, sizeof(*dst));
    switch (src->type) {
    case REDIS_REPLY_INTEGER:
        dst->type = LK_REDIS_INT;
        dst->integer = src->integer;
        break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        dst->type = src->type == REDIS_REPLY_ERROR ? LK_REDIS_ERR : LK_REDIS_STR;
        dst->len = src->len;
        dst->str = lk_malloc(src->len + 1);
        memcpy(dst->str, src->str, src->len);
        dst->str[src->len] = 0;
        break;
    case REDIS_REPLY_ARRAY:
        dst->type = LK_REDIS_ARRAY;
        dst->count = src->elements;
        if (src->elements) {
            dst->items = lk_calloc(src->elements, sizeof(*dst->items));
            for (size_t i = 0; i < src->elements; i++)
                s_copy(&dst->items[i], src->element[i]);
        }
        break;
    default:
        dst->type = LK_REDIS_NIL;
        break;
    }
}

static void s_free_items(lk_redis_reply_t *r)
{
    for (size_t i = 0; i < r->count; i++)
        s_free_items(&r->items[i]);
    free(r->items);
    free(r->str);
}

void lk_redis_reply_free(lk_redis_reply_t **reply_p)
{
    lk_redis_reply_t *r = *reply_p;
    if (!r)
        return;
    s_free_items(r);
    free(r);
    *reply_p = NULL;
}

bool lk_redis_reply_failed(const lk_redis_reply_t *reply)
{
    return !reply || reply->type == LK_REDIS_ERR;
}

static lk_redis_reply_t *s_wrap(lk_redis_t *self, redisReply *rr)
{
    if (!rr) {
        lk_warn("redis: %s", self->ctx ? self->ctx->errstr : "not connected");
        s_drop(self);
        return NULL;
    }
    lk_redis_reply_t *r = lk_malloc(sizeof(*r));
    s_copy(r, rr);
    if (r->type == LK_REDIS_ERR)
        lk_warn("redis: %s", r->str);
    freeReplyObject(rr);
    return r;
}

lk_redis_reply_t *lk_redis_cmdv(lk_redis_t *self, int argc, const char **argv, const size_t *lens)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (lk_redis_connect(self) != 0)
            return NULL;
        if (self->pending) {
            /* a command's reply must not be confused with an earlier pipeline's */
            lk_error("redis: command issued with %d pipelined replies unread", self->pending);
            s_drop(self);
            continue;
        }
        redisReply *rr = redisCommandArgv(self->ctx, argc, argv, lens);
        if (rr)
            return s_wrap(self, rr);
        s_drop(self);
    }
    return NULL;
}

lk_redis_reply_t *lk_redis_cmd(lk_redis_t *self, const char *fmt, ...)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (lk_redis_connect(self) != 0)
            return NULL;
        va_list ap;
        va_start(ap, fmt);
        redisReply *rr = redisvCommand(self->ctx, fmt, ap);
        va_end(ap);
        if (rr)
            return s_wrap(self, rr);
        s_drop(self);
    }
    return NULL;
}

double lk_redis_ping_ms(lk_redis_t *self)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    lk_redis_reply_t *r = lk_redis_cmd(self, "PING");
    clock_gettime(CLOCK_MONOTONIC, &b);
    bool ok = !lk_redis_reply_failed(r);
    lk_redis_reply_free(&r);
    if (!ok)
        return -1;
    return (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
}

int lk_redis_appendv(lk_redis_t *self, int argc, const char **argv, const size_t *lens)
{
    if (lk_redis_connect(self) != 0)
        return -1;
    if (redisAppendCommandArgv(self->ctx, argc, argv, lens) != REDIS_OK) {
        s_drop(self);
        return -1;
    }
    self->pending++;
    return 0;
}

int lk_redis_append(lk_redis_t *self, const char *fmt, ...)
{
    if (lk_redis_connect(self) != 0)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    int rc = redisvAppendCommand(self->ctx, fmt, ap);
    va_end(ap);
    if (rc != REDIS_OK) {
        s_drop(self);
        return -1;
    }
    self->pending++;
    return 0;
}

lk_redis_reply_t *lk_redis_get_reply(lk_redis_t *self)
{
    if (!self->ctx || self->pending == 0)
        return NULL;
    void *rr = NULL;
    if (redisGetReply(self->ctx, &rr) != REDIS_OK) {
        lk_warn("redis: %s", self->ctx->errstr);
        s_drop(self);
        return NULL;
    }
    self->pending--;
    return s_wrap(self, rr);
}
