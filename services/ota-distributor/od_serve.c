/*  od_serve: a chunk request answered — checked against the device's offer or the image
    it names, paced by its rollout's token bucket, read from ota_dir and published; the
    device's progress noted (offered -> downloading once, the highest offset for the
    record). Every refusal is a message on the device's error topic, never a crash. */
#include "od_internal.h"
#include "lk_mqtt.h"
#include <errno.h>
#include <unistd.h>

#define S_MAX_QUEUED 100000 /* chunk requests waiting for tokens, per rollout */

void od_req_free(od_req_t *r)
{
    if (!r)
        return;
    free(r->reply_topic);
    free(r->err_topic);
    free(r->corr);
    free(r->sha);
    free(r->keys);
    free(r);
}

void od_error(od_t *self, const char *topic, const char *text)
{
    self->errors++;
    lk_info("%s: %s", topic, text);
    od_publish(self, topic, text, strlen(text), false, NULL, 0);
}

static void s_errorf(od_t *self, const od_req_t *r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void s_errorf(od_t *self, const od_req_t *r, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (r->proto == 'l') {
        /* Latchkey: JSON with the request it answers */
        char json[800];
        snprintf(json, sizeof(json),
                 "{\"error\":\"%s\",\"sha256\":\"%s\",\"offset\":%" PRIu64 ",\"length\":%" PRIu64
                 "}",
                 text, r->sha ? r->sha : "", r->offset, r->length);
        od_error(self, r->err_topic, json);
    } else
        od_error(self, r->err_topic, text);
}

/* --- token buckets ----------------------------------------------------------------- */

static od_bucket_t *s_bucket(od_t *self, int64_t rollout)
{
    char key[24];
    snprintf(key, sizeof(key), "%" PRId64, rollout);
    return zhashx_lookup(self->buckets, key);
}

void od_bucket_set(od_t *self, int64_t rollout, uint64_t rate)
{
    od_bucket_t *b = s_bucket(self, rollout);
    if (!b) {
        char key[24];
        snprintf(key, sizeof(key), "%" PRId64, rollout);
        b = lk_calloc(1, sizeof(*b));
        b->id = rollout;
        b->last_ms = lk_loop_now(self->loop);
        zhashx_insert(self->buckets, key, b);
    }
    b->rate = rate;
}

static void s_refill(od_t *self, od_bucket_t *b)
{
    int64_t now = lk_loop_now(self->loop);
    double cap = (double)b->rate / 10;
    if (cap < (double)self->max_chunk)
        cap = (double)self->max_chunk;
    b->tokens += (double)b->rate * (double)(now - b->last_ms) / 1000.0;
    if (b->tokens > cap)
        b->tokens = cap;
    b->last_ms = now;
}

/* --- sending ----------------------------------------------------------------------- */

static void s_progress(od_t *self, od_dev_t *d, uint64_t end)
{
    if (end > d->served) {
        d->served = end;
        d->dirty = true;
    }
    if (d->state && strcmp(d->state, "offered") == 0) {
        free(d->state);
        d->state = lk_strdup("downloading");
        char rid[24], off[24];
        snprintf(rid, sizeof(rid), "%" PRId64, d->rollout_id);
        snprintf(off, sizeof(off), "%" PRIu64, end);
        const char *p[] = {rid, d->id, off};
        od_db_query(self,
                    "SELECT ota_device_set($1::bigint, $2, '{offered}', 'downloading', NULL, "
                    "$3::bigint)",
                    3, p, NULL, NULL);
    }
}

static void s_send(od_t *self, od_req_t *r, const char *sha, uint64_t size)
{
    od_dev_t *d = r->dev;
    uint64_t len = r->offset + r->length > size ? size - r->offset : r->length;
    uint8_t *buf = lk_malloc(len ? len : 1);
    int fd = od_image_fd(self, sha);
    size_t got = 0;
    while (fd >= 0 && got < len) {
        ssize_t n = pread(fd, buf + got, len - got, (off_t)(r->offset + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    if (got != len) {
        s_errorf(self, r, "FAILURE: image %s cannot be read", sha);
        free(buf);
        return;
    }
    lk_wbuf_t props;
    lk_wbuf_init(&props);
    if (r->v5) {
        lk_mqtt_props_t p = {0};
        char off[24], ln[24];
        snprintf(off, sizeof(off), "%" PRIu64, r->offset);
        snprintf(ln, sizeof(ln), "%" PRIu64, len);
        lk_mqtt_user_prop_t up[2] = {{{"offset", 6}, {off, (uint32_t)strlen(off)}},
                                     {{"length", 6}, {ln, (uint32_t)strlen(ln)}}};
        p.user_props = up;
        p.user_prop_count = 2;
        if (r->corr) {
            p.correlation_data.p = (const char *)r->corr;
            p.correlation_data.len = (uint32_t)r->corr_len;
            LK_PROP_SET(&p, LK_PROP_CORRELATION_DATA);
        }
        lk_mqtt_props_encode(&props, &p, ~0ULL);
    }
    od_publish(self, r->reply_topic, buf, len, false, props.len ? props.data : NULL, props.len);
    lk_wbuf_free(&props);
    free(buf);
    self->chunks++;
    self->bytes += len;
    if (d && d->rollout_id && d->sha && strcmp(d->sha, sha) == 0)
        s_progress(self, d, r->offset + len);
}

void od_buckets_drain(od_t *self)
{
    for (od_bucket_t *b = zhashx_first(self->buckets); b; b = zhashx_next(self->buckets)) {
        if (!b->q_head)
            continue;
        s_refill(self, b);
        while (b->q_head && b->tokens >= 0) {
            od_req_t *r = b->q_head;
            b->q_head = r->next;
            if (!b->q_head)
                b->q_tail = NULL;
            b->q_len--;
            od_dev_t *d = r->dev;
            const char *sha = r->sha ? r->sha : d->sha;
            od_image_t *img = od_image(self, sha);
            uint64_t size = img ? img->size : d->size;
            uint64_t len = r->offset + r->length > size ? size - r->offset : r->length;
            b->tokens -= (double)len;
            s_send(self, r, sha, size);
            od_req_free(r);
        }
    }
}

void od_serve(od_t *self, od_dev_t *d, od_req_t *r)
{
    r->dev = d;
    if (!d->known) {
        s_errorf(self, r, "NOT_FOUND: unknown device %s", d->id);
        od_req_free(r);
        return;
    }
    if (r->kind == 'a') {
        od_tb_attributes(self, d, r);
        od_req_free(r);
        return;
    }
    const char *sha = r->sha;
    uint64_t size = 0;
    if (!sha) {
        if (!d->rollout_id || !d->sha) {
            s_errorf(self, r, "NOT_FOUND: no firmware is assigned to %s", d->id);
            od_req_free(r);
            return;
        }
        sha = d->sha;
        size = d->size;
    } else if (d->rollout_id && d->sha && strcmp(d->sha, sha) == 0) {
        size = d->size; /* its offer: known before the image list is re-read */
    } else {
        od_image_t *img = od_image(self, sha);
        if (!img || !d->model || strcmp(img->model, d->model) != 0) {
            s_errorf(self, r, "NOT_FOUND: no image %s for model %s", sha,
                     d->model ? d->model : "?");
            od_req_free(r);
            return;
        }
        size = img->size;
    }
    if (r->length == 0) {
        s_errorf(self, r, "BAD_REQUEST: chunk size 0");
        od_req_free(r);
        return;
    }
    if (r->length > self->max_chunk) {
        s_errorf(self, r, "PAYLOAD_TOO_LARGE: chunk size %" PRIu64 " over %" PRIu64, r->length,
                 self->max_chunk);
        od_req_free(r);
        return;
    }
    if (r->offset >= size) {
        if (r->offset == size && r->proto == 't')
            /* as ThingsBoard: the chunk after the last is empty */
            od_publish(self, r->reply_topic, "", 0, false, NULL, 0);
        else
            s_errorf(self, r, "OUT_OF_RANGE: offset %" PRIu64 " is past the end (size %" PRIu64 ")",
                     r->offset, size);
        od_req_free(r);
        return;
    }
    od_bucket_t *b =
        d->rollout_id && d->sha && strcmp(d->sha, sha) == 0 ? s_bucket(self, d->rollout_id) : NULL;
    if (b && b->rate) {
        s_refill(self, b);
        if (b->q_head || b->tokens < 0) {
            if (b->q_len >= S_MAX_QUEUED) {
                s_errorf(self, r, "BUSY: the rollout's byte budget is exhausted; retry");
                od_req_free(r);
                return;
            }
            if (r->sha == NULL)
                r->sha = lk_strdup(sha);
            r->next = NULL;
            if (b->q_tail)
                b->q_tail->next = r;
            else
                b->q_head = r;
            b->q_tail = r;
            b->q_len++;
            return;
        }
        uint64_t len = r->offset + r->length > size ? size - r->offset : r->length;
        b->tokens -= (double)len;
    }
    s_send(self, r, sha, size);
    od_req_free(r);
}
