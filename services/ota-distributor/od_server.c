/*  od_server: the ota-distributor actor — configuration, the bus client and its dispatch,
    the device cache, the image list and its retained announcements, and the cron that
    steps the rollouts (ota_rollout_step in PostgreSQL decides; we publish the offers). */
#include "od_internal.h"
#include "lk_ota.h"
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <unistd.h>

#define S_CRON_MS 500
#define S_DEV_TTL_MS 5000 /* a device's cached offer is re-read after this */
#define S_IMAGES_MS 3000  /* the image list is re-read this often */
#define S_MAX_PENDING 64  /* requests kept per device while its record loads */

/* --- publishing ---------------------------------------------------------------------- */

void od_publish(od_t *self, const char *topic, const void *p, size_t n, bool retain,
                const void *props, size_t props_len)
{
    lk_iclient_publish(self->ic, topic, p, n, retain && n == 0 ? 1 : self->qos, retain, props,
                       props_len);
}

void od_publish_json(od_t *self, const char *topic, cJSON *o)
{
    char *json = cJSON_PrintUnformatted(o);
    od_publish(self, topic, json, strlen(json), false, NULL, 0);
    free(json);
    cJSON_Delete(o);
}

/* --- images -------------------------------------------------------------------------- */

od_image_t *od_image(od_t *self, const char *sha)
{
    return sha ? zhashx_lookup(self->images, sha) : NULL;
}

int od_image_fd(od_t *self, const char *sha)
{
    intptr_t v = (intptr_t)zhashx_lookup(self->fds, sha);
    if (v)
        return (int)(v - 1);
    if (!lk_ota_sha_hex_ok(sha))
        return -1;
    char *path = lk_ota_image_path(self->ota_dir, sha);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        lk_warn("image %s: cannot open %s", sha, path);
    free(path);
    if (fd >= 0)
        zhashx_insert(self->fds, sha, (void *)(intptr_t)(fd + 1));
    return fd;
}

static void s_image_free(void **item)
{
    od_image_t *img = *item;
    if (!img)
        return;
    free(img->id);
    free(img->model);
    free(img->version);
    free(img->sha256);
    free(img->signature);
    free(img->key_id);
    free(img);
    *item = NULL;
}

static void s_announce(od_t *self, const od_image_t *img, bool remove)
{
    char topic[512];
    snprintf(topic, sizeof(topic), "lk/ota/announce/%s/%s", img->model, img->version);
    if (remove) {
        od_publish(self, topic, "", 0, true, NULL, 0);
        return;
    }
    char *json = od_lk_announcement(self, img);
    od_publish(self, topic, json, strlen(json), true, NULL, 0);
    free(json);
}

static void s_images_loaded(od_t *self, lk_pg_result_t *r, void *arg)
{
    self->images_loading = false;
    if (r->status != LK_PG_OK)
        return;
    od_image_t *img;
    for (img = zhashx_first(self->by_mv); img; img = zhashx_next(self->by_mv))
        img->seen = false;
    for (size_t i = 0; i < r->nrows; i++) {
        char mv[600];
        snprintf(mv, sizeof(mv), "%s/%s", lk_pg_value(r, i, 1), lk_pg_value(r, i, 2));
        img = zhashx_lookup(self->by_mv, mv);
        if (img && strcmp(img->sha256, lk_pg_value(r, i, 4)) == 0) {
            img->seen = true;
            continue;
        }
        img = lk_calloc(1, sizeof(*img));
        img->id = lk_strdup(lk_pg_value(r, i, 0));
        img->model = lk_strdup(lk_pg_value(r, i, 1));
        img->version = lk_strdup(lk_pg_value(r, i, 2));
        img->size = strtoull(lk_pg_value(r, i, 3), NULL, 10);
        img->sha256 = lk_strdup(lk_pg_value(r, i, 4));
        img->signature = lk_strdup(lk_pg_value(r, i, 5));
        img->key_id = lk_strdup(lk_pg_value(r, i, 6));
        img->seen = true;
        zhashx_update(self->by_mv, mv, img);
        if (!zhashx_lookup(self->images, img->sha256))
            zhashx_insert(self->images, img->sha256, img);
        if (self->announced)
            s_announce(self, img, false);
    }
    /* gone from PostgreSQL: its announcement goes too */
    zlistx_t *gone = zlistx_new();
    for (img = zhashx_first(self->by_mv); img; img = zhashx_next(self->by_mv))
        if (!img->seen)
            zlistx_add_end(gone, (void *)zhashx_cursor(self->by_mv));
    for (const char *mv = zlistx_first(gone); mv; mv = zlistx_next(gone)) {
        img = zhashx_lookup(self->by_mv, mv);
        lk_info("image %s removed", mv);
        s_announce(self, img, true);
        if (zhashx_lookup(self->images, img->sha256) == img)
            zhashx_delete(self->images, img->sha256);
        intptr_t fd = (intptr_t)zhashx_lookup(self->fds, img->sha256);
        if (fd) {
            close((int)(fd - 1));
            zhashx_delete(self->fds, img->sha256);
        }
        zhashx_delete(self->by_mv, mv); /* frees img */
    }
    zlistx_destroy(&gone);
    if (!self->announced && lk_iclient_ready(self->ic)) {
        for (img = zhashx_first(self->by_mv); img; img = zhashx_next(self->by_mv))
            s_announce(self, img, false);
        self->announced = true;
    }
    self->images_loaded = true;
}

static void s_images_refresh(od_t *self)
{
    if (self->images_loading)
        return;
    self->images_loading = true;
    od_db_query(self,
                "SELECT id, model, version, size, sha256, signature, key_id FROM ota_images "
                "ORDER BY id",
                0, NULL, s_images_loaded, NULL);
}

/* --- devices ------------------------------------------------------------------------- */

static void s_dev_free(void **item)
{
    od_dev_t *d = *item;
    if (!d)
        return;
    while (d->pending) {
        od_req_t *r = d->pending;
        d->pending = r->next;
        od_req_free(r);
    }
    free(d->id);
    free(d->model);
    free(d->state);
    free(d->sha);
    free(d->version);
    free(d->signature);
    free(d->key_id);
    free(d->tb_req);
    free(d);
    *item = NULL;
}

od_dev_t *od_dev_get(od_t *self, const char *id)
{
    od_dev_t *d = zhashx_lookup(self->devs, id);
    if (!d) {
        d = lk_calloc(1, sizeof(*d));
        d->id = lk_strdup(id);
        zhashx_insert(self->devs, id, d);
    }
    return d;
}

static void s_set(char **field, const char *v)
{
    free(*field);
    *field = v ? lk_strdup(v) : NULL;
}

static void s_dev_loaded(od_t *self, lk_pg_result_t *r, void *arg)
{
    od_dev_t *d = arg;
    d->loading = false;
    if (r->status != LK_PG_OK) {
        /* PostgreSQL away: what waits is answered with an error (devices retry) */
        while (d->pending) {
            od_req_t *q = d->pending;
            d->pending = q->next;
            od_error(self, q->err_topic, "UNAVAILABLE: the OTA store is not reachable; retry");
            od_req_free(q);
        }
        return;
    }
    d->loaded_ms = lk_loop_now(self->loop);
    d->known = r->nrows > 0;
    if (d->known) {
        d->proto = strcmp(lk_pg_value(r, 0, 0), "lk") == 0 ? 'l' : 't';
        s_set(&d->model, lk_pg_value(r, 0, 1));
        const char *rid = lk_pg_value(r, 0, 2);
        int64_t old = d->rollout_id;
        d->rollout_id = rid ? strtoll(rid, NULL, 10) : 0;
        s_set(&d->state, lk_pg_value(r, 0, 3));
        s_set(&d->sha, lk_pg_value(r, 0, 4));
        s_set(&d->version, lk_pg_value(r, 0, 5));
        s_set(&d->signature, lk_pg_value(r, 0, 6));
        s_set(&d->key_id, lk_pg_value(r, 0, 7));
        d->size = lk_pg_value(r, 0, 8) ? strtoull(lk_pg_value(r, 0, 8), NULL, 10) : 0;
        uint64_t off = lk_pg_value(r, 0, 9) ? strtoull(lk_pg_value(r, 0, 9), NULL, 10) : 0;
        if (old != d->rollout_id)
            d->served = off;
        if (d->rollout_id)
            od_bucket_set(self, d->rollout_id, strtoull(lk_pg_value(r, 0, 10), NULL, 10));
    }
    while (d->pending) {
        od_req_t *q = d->pending;
        d->pending = q->next;
        od_serve(self, d, q);
    }
}

/* reads d's record and current offer; done gets the row s_dev_loaded takes apart */
static void s_dev_query(od_t *self, od_dev_t *d, od_db_fn *done)
{
    d->loading = true;
    const char *p[] = {d->id};
    od_db_query(self,
                "SELECT d.protocol, d.model, o.rollout_id, o.state, o.sha256, o.version, "
                "o.signature, o.key_id, o.size, o.bytes_offset, ro.max_bps FROM ota_devices d "
                "LEFT JOIN ota_offers o ON o.device_id = d.id LEFT JOIN ota_rollouts ro ON "
                "ro.id = o.rollout_id WHERE d.id = $1 ORDER BY o.rollout_id DESC LIMIT 1",
                1, p, done, d);
}

void od_dev_load(od_t *self, od_dev_t *d)
{
    if (!d->loading)
        s_dev_query(self, d, s_dev_loaded);
}

/* serves req for dev now, or after (re)loading its record */
static void s_dispatch(od_t *self, od_dev_t *d, od_req_t *req)
{
    bool fresh = d->loaded_ms && lk_loop_now(self->loop) - d->loaded_ms < S_DEV_TTL_MS;
    if (fresh && !d->loading) {
        od_serve(self, d, req);
        return;
    }
    size_t n = 0;
    od_req_t **pp = &d->pending;
    for (; *pp; pp = &(*pp)->next)
        n++;
    if (n >= S_MAX_PENDING) {
        od_error(self, req->err_topic, "BUSY: too many requests in flight; retry");
        od_req_free(req);
        return;
    }
    *pp = req;
    od_dev_load(self, d);
}

/* --- offers and reports ------------------------------------------------------------ */

static void s_offer_loaded(od_t *self, od_dev_t *d)
{
    if (!d->known || !d->rollout_id)
        return;
    self->offers++;
    if (d->proto == 't')
        od_tb_offer(self, d);
    else
        od_lk_offer(self, d);
}

static void s_offer_after_load(od_t *self, lk_pg_result_t *r, void *arg)
{
    s_dev_loaded(self, r, arg);
    if (r->status == LK_PG_OK)
        s_offer_loaded(self, arg);
}

void od_offer(od_t *self, od_dev_t *d)
{
    s_dev_query(self, d, s_offer_after_load);
}

static void s_reported(od_t *self, lk_pg_result_t *r, void *arg)
{
    char *id = arg;
    const char *st = r->status == LK_PG_OK ? lk_pg_value(r, 0, 0) : NULL;
    od_dev_t *d = zhashx_lookup(self->devs, id);
    if (d && st) {
        d->loaded_ms = 0; /* its offer changed, or may have: read it again */
        if (d->proto == 'l' && (strcmp(st, "offered") == 0 || strcmp(st, "downloading") == 0))
            od_offer(self, d); /* a Latchkey device told us it is there: remind it */
    }
    free(id);
}

void od_report(od_t *self, const char *dev, const char *version, const char *state,
               const char *error)
{
    self->reports++;
    const char *p[] = {dev, version, state, error};
    od_db_query(self, "SELECT ota_device_report($1, $2, $3, $4)", 4, p, s_reported, lk_strdup(dev));
}

/* --- MQTT ---------------------------------------------------------------------------- */

/* "<prefix><dev>/<rest>": the device id and what follows; false when not that shape */
static bool s_split(const char *topic, const char *prefix, char *dev, size_t cap, const char **rest)
{
    size_t pl = strlen(prefix);
    if (strncmp(topic, prefix, pl) != 0)
        return false;
    const char *d = topic + pl, *slash = strchr(d, '/');
    if (!slash || slash == d || (size_t)(slash - d) >= cap)
        return false;
    memcpy(dev, d, (size_t)(slash - d));
    dev[slash - d] = 0;
    *rest = slash + 1;
    return true;
}

static void s_on_message(lk_iclient_t *ic, const Lk__Msg *msg, uint64_t store_id, void *arg)
{
    od_t *self = arg;
    char dev[256];
    const char *rest;
    if (!msg->topic)
        return;
    if (s_split(msg->topic, "tb/", dev, sizeof(dev), &rest))
        od_tb_message(self, msg, dev, rest);
    else if (s_split(msg->topic, "lk/ota/", dev, sizeof(dev), &rest) &&
             strcmp(dev, "announce") != 0)
        od_lk_message(self, msg, dev, rest);
}

void od_serve_later(od_t *self, od_dev_t *d, od_req_t *req)
{
    s_dispatch(self, d, req);
}

/* --- cron: rollout steps, offsets ---------------------------------------------------- */

typedef struct {
    char *rollout;
} s_step_t;

static void s_stepped(od_t *self, lk_pg_result_t *r, void *arg)
{
    if (r->status != LK_PG_OK)
        return;
    for (size_t i = 0; i < r->nrows; i++) {
        od_dev_t *d = od_dev_get(self, lk_pg_value(r, i, 0));
        lk_info("offering to %s (%s)", d->id, lk_pg_value(r, i, 1));
        od_offer(self, d);
    }
}

static void s_rollouts(od_t *self, lk_pg_result_t *r, void *arg)
{
    self->stepping = false;
    if (r->status != LK_PG_OK)
        return;
    for (size_t i = 0; i < r->nrows; i++) {
        const char *p[] = {lk_pg_value(r, i, 0)};
        od_bucket_set(self, strtoll(p[0], NULL, 10), strtoull(lk_pg_value(r, i, 1), NULL, 10));
        od_db_query(self, "SELECT device_id, protocol FROM ota_rollout_step($1)", 1, p, s_stepped,
                    NULL);
    }
}

static void s_flush_offsets(od_t *self)
{
    size_t n = 0;
    char *ids = NULL, *offs = NULL, *rids = NULL;
    size_t li = 0, lo = 0, lr = 0, ci = 0, co = 0, cr = 0;
    for (od_dev_t *d = zhashx_first(self->devs); d; d = zhashx_next(self->devs)) {
        if (!d->dirty || !d->rollout_id)
            continue;
        d->dirty = false;
        char num[48];
        /* {a,b}: device ids are free of , " \ and blanks (latchkey ota device add) */
        for (int k = 0; k < 3; k++) {
            char **buf = k == 0 ? &ids : k == 1 ? &offs : &rids;
            size_t *len = k == 0 ? &li : k == 1 ? &lo : &lr;
            size_t *cap = k == 0 ? &ci : k == 1 ? &co : &cr;
            const char *v = d->id;
            if (k == 1) {
                snprintf(num, sizeof(num), "%" PRIu64, d->served);
                v = num;
            } else if (k == 2) {
                snprintf(num, sizeof(num), "%" PRId64, d->rollout_id);
                v = num;
            }
            size_t need = *len + strlen(v) + 4;
            if (need > *cap) {
                *cap = need * 2;
                *buf = lk_realloc(*buf, *cap);
            }
            *len += (size_t)sprintf(*buf + *len, "%s%s", n ? "," : "{", v);
        }
        n++;
    }
    if (!n)
        return;
    strcat(ids, "}");
    strcat(offs, "}");
    strcat(rids, "}");
    const char *p[] = {ids, offs, rids};
    od_db_query(self,
                "UPDATE ota_rollout_devices rd SET bytes_offset = greatest(rd.bytes_offset, "
                "u.off), updated = CASE WHEN u.off > rd.bytes_offset THEN now() ELSE "
                "rd.updated END FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(dev, "
                "off, rid) WHERE rd.device_id = u.dev AND rd.rollout_id = u.rid",
                3, p, NULL, NULL);
    free(ids);
    free(offs);
    free(rids);
}

static void s_resend(od_t *self, lk_pg_result_t *r, void *arg)
{
    for (size_t i = 0; r->status == LK_PG_OK && i < r->nrows; i++)
        od_offer(self, od_dev_get(self, lk_pg_value(r, i, 0)));
}

static void s_cron(lk_loop_t *loop, void *arg)
{
    od_t *self = arg;
    static int64_t last_images, last_resend;
    int64_t now = lk_loop_now(loop);
    if (self->resend_s > 0 && now - last_resend >= self->resend_s * 1000) {
        /* an offer lost on the way (the device was away, we were restarted), or a
           download that stopped moving (its request lost while we were down): again */
        last_resend = now;
        char s[24];
        snprintf(s, sizeof(s), "%" PRId64, self->resend_s);
        const char *p[] = {s};
        od_db_query(self,
                    "SELECT rd.device_id FROM ota_rollout_devices rd JOIN ota_rollouts ro ON "
                    "ro.id = rd.rollout_id WHERE ro.state IN ('running', 'paused') AND "
                    "((rd.state = 'offered' AND rd.updated < now() - $1 * interval '1 s') OR "
                    "(rd.state = 'downloading' AND rd.updated < now() - 2 * $1 * interval "
                    "'1 s')) LIMIT 1000",
                    1, p, s_resend, NULL);
    }
    if (now - last_images >= S_IMAGES_MS) {
        last_images = now;
        s_images_refresh(self);
    }
    s_flush_offsets(self);
    if (!self->stepping && od_db_backlog(self) < 1000) {
        self->stepping = true;
        od_db_query(self,
                    "SELECT id, max_bps FROM ota_rollouts WHERE state = 'running' OR (state = "
                    "'scheduled' AND start_at <= now()) OR state = 'paused' ORDER BY id",
                    0, NULL, s_rollouts, NULL);
    }
}

static void s_drain(lk_loop_t *loop, void *arg)
{
    od_buckets_drain(arg);
}

static void s_on_ready(lk_iclient_t *ic, void *arg)
{
    od_t *self = arg;
    self->announced = false;
    s_images_refresh(self);
    if (!self->ready_told) {
        self->ready_told = true;
        lk_ready_notify(self->ready_fd);
        self->ready_fd = -1;
        lk_notice("ready: images in %s, HTTP %s", self->ota_dir,
                  self->http ? self->http_url : "off");
    }
}

/* --- construction ------------------------------------------------------------------ */

static int s_wait_migrate(od_t *self)
{
    const char *dir = lk_config_get(self->config, "sql_dir", NULL);
    lk_pg_t *pg = lk_pg_new(lk_config_get(self->config, "pg_conninfo", ""), self->node);
    int64_t deadline = lk_mono_ms() + 15000;
    int rc = -1, version = 0;
    while (lk_mono_ms() < deadline) {
        if (!dir || !*dir) {
            rc = lk_pg_connect(pg);
        } else
            rc = lk_pg_migrate(pg, dir, &version);
        if (rc == 0 || rc == -2)
            break;
        usleep(300 * 1000);
    }
    lk_pg_destroy(&pg);
    if (rc != 0)
        lk_error("PostgreSQL: %s", rc == -2 ? "the schema could not be applied" : "not reachable");
    return rc;
}

od_t *od_server_new(lk_loop_t *loop, lk_config_t *config, const char *node, int ready_fd,
                    int *exit_code);
int od_server_exit_code(od_t *self);
void od_server_destroy(od_t **self_p);

od_t *od_server_new(lk_loop_t *loop, lk_config_t *config, const char *node, int ready_fd,
                    int *exit_code)
{
    od_t *self = lk_calloc(1, sizeof(*self));
    self->config = config;
    self->loop = loop;
    self->node = lk_strdup(node);
    self->ready_fd = ready_fd;
    self->images = zhashx_new();
    self->by_mv = zhashx_new();
    zhashx_set_destructor(self->by_mv, s_image_free);
    self->devs = zhashx_new();
    zhashx_set_destructor(self->devs, s_dev_free);
    self->buckets = zhashx_new();
    self->fds = zhashx_new();
    *exit_code = LK_EXIT_CONFIG;
    self->ota_dir = lk_strdup(lk_config_get(config, "ota_dir", "/var/lib/latchkey/ota"));
    self->http_url = lk_strdup(lk_config_get(config, "ota_http_url", "http://127.0.0.1:8090"));
    const char *secret = lk_config_get(config, "ota_url_secret", "");
    self->url_secret = *secret ? lk_strdup(secret) : NULL;
    if (self->url_secret && strlen(self->url_secret) < 16) {
        lk_error("ota_url_secret: at least 16 characters");
        od_server_destroy(&self);
        return NULL;
    }
    self->url_ttl_s = lk_config_get_int(config, "ota_url_ttl", 3600);
    self->resend_s = lk_config_get_int(config, "ota_offer_resend", 15);
    self->max_chunk = (uint64_t)lk_config_get_int(config, "ota_max_chunk", 65536);
    self->qos = (uint32_t)lk_config_get_int(config, "ota_qos", 1);
    if (self->max_chunk < 64 || self->max_chunk > 16 * 1024 * 1024 || self->qos > 1 ||
        self->url_ttl_s < 1) {
        lk_error("ota_max_chunk (64..16777216), ota_qos (0 or 1) or ota_url_ttl out of range");
        od_server_destroy(&self);
        return NULL;
    }
    lk_iclient_handlers_t h = {s_on_message, s_on_ready, NULL, NULL, NULL, NULL};
    char cid[300];
    snprintf(cid, sizeof(cid), "$lk-ota-%s", node);
    self->ic = lk_iclient_new(loop, config, node, "ota-distributor", cid, &h, self);
    if (!self->ic) {
        od_server_destroy(&self);
        return NULL;
    }
    if (lk_bus_enable_msglog(lk_iclient_bus(self->ic), lk_config_get(config, "msglog_dir", "")) !=
        0) {
        od_server_destroy(&self);
        return NULL;
    }
    if (lk_config_get_int(config, "ota_http_port", 0) > 0 && od_http_start(self) != 0) {
        od_server_destroy(&self);
        return NULL;
    }
    *exit_code = LK_EXIT_TEMPORARY;
    if (s_wait_migrate(self) != 0) {
        od_server_destroy(&self);
        return NULL;
    }
    self->db = od_db_new(self, lk_config_get(config, "pg_conninfo", ""));
    if (!self->db) {
        od_server_destroy(&self);
        return NULL;
    }
    /* shared: each request reaches one replica; QoS 1 on our persistent session: what
       devices ask while we are restarted waits for us (answering twice is harmless) */
    static const char *subs[] = {"$share/ota/tb/+/v1/devices/me/attributes/request/+",
                                 "$share/ota/tb/+/v1/devices/me/telemetry",
                                 "$share/ota/tb/+/v2/fw/request/+/chunk/+",
                                 "$share/ota/lk/ota/+/req", "$share/ota/lk/ota/+/status"};
    for (size_t i = 0; i < LK_ARRAY_LEN(subs); i++)
        lk_iclient_subscribe(self->ic, subs[i], 1);
    self->cron = lk_loop_timer(loop, S_CRON_MS, true, s_cron, self);
    self->drain = lk_loop_timer(loop, 20, true, s_drain, self);
    *exit_code = 0;
    return self;
}

int od_server_exit_code(od_t *self)
{
    return self->exit_code;
}

void od_server_destroy(od_t **self_p)
{
    od_t *self = *self_p;
    if (!self)
        return;
    if (self->cron)
        lk_loop_timer_cancel(self->loop, self->cron);
    if (self->drain)
        lk_loop_timer_cancel(self->loop, self->drain);
    lk_http_destroy(&self->http);
    if (self->ic) {
        lk_notice("%" PRIu64 " chunks, %" PRIu64 " bytes, %" PRIu64 " errors, %" PRIu64
                  " offers, %" PRIu64 " reports",
                  self->chunks, self->bytes, self->errors, self->offers, self->reports);
        if (self->db)
            s_flush_offsets(self);
        lk_iclient_close(self->ic, 500);
        lk_iclient_destroy(&self->ic);
    }
    od_db_destroy(&self->db);
    for (od_bucket_t *b = zhashx_first(self->buckets); b; b = zhashx_next(self->buckets)) {
        while (b->q_head) {
            od_req_t *r = b->q_head;
            b->q_head = r->next;
            od_req_free(r);
        }
        free(b);
    }
    zhashx_destroy(&self->buckets);
    for (void *v = zhashx_first(self->fds); v; v = zhashx_next(self->fds))
        close((int)((intptr_t)v - 1));
    zhashx_destroy(&self->fds);
    zhashx_destroy(&self->devs);
    zhashx_destroy(&self->images);
    zhashx_destroy(&self->by_mv);
    free(self->ota_dir);
    free(self->http_url);
    free(self->url_secret);
    free(self->node);
    free(self);
    *self_p = NULL;
}
