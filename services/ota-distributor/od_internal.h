/*  od_internal: ota-distributor's shared structures (see docs/ota.md).

    One actor on one lk_loop: an internal MQTT client on the bus (device traffic, through
    shared subscriptions so replicas split the requests), PostgreSQL through a worker
    thread (od_db.c: the loop never waits for a query), image bytes read from ota_dir, and
    the HTTP download server (od_http.c, lk_http).

    What it keeps in memory is a cache that a restart may lose: the devices it talked to
    lately (their current offer, the chunk size of each ThingsBoard request id, the
    highest offset served), the image list, per-rollout token buckets and the chunk
    requests waiting for tokens. The record — rollouts, per-device states, offsets — is in
    PostgreSQL. */
#ifndef OD_INTERNAL_H_INCLUDED
#define OD_INTERNAL_H_INCLUDED

#include "latchkey.pb-c.h"
#include "lk_common.h"
#include "lk_config.h"
#include "lk_http.h"
#include "lk_iclient.h"
#include "lk_loop.h"
#include "lk_pg.h"
#include "lk_pgq.h"
#include <czmq.h>

typedef struct od od_t;

/* --- od_db.c: queries on a worker thread ------------------------------------------- */
typedef void(od_db_fn)(od_t *self, lk_pg_result_t *r, void *arg);
typedef lk_pgq_t od_db_t;
od_db_t *od_db_new(od_t *self, const char *conninfo);
void od_db_destroy(od_db_t **db_p);
/* runs sql with text params (copied; NULL = SQL NULL) on the worker; done (may be NULL)
   runs on the loop with the result, which is freed after it returns */
void od_db_query(od_t *self, const char *sql, int n, const char *const *params, od_db_fn *done,
                 void *arg);
size_t od_db_backlog(od_t *self);

/* --- images (od_server.c) ----------------------------------------------------------- */
typedef struct {
    char *id, *model, *version, *sha256, *signature, *key_id;
    uint64_t size;
    bool seen; /* still in PostgreSQL at the last refresh */
} od_image_t;

/* --- a chunk request waiting for tokens or for its device's record ------------------ */
typedef struct od_req {
    int proto;         /* 't' ThingsBoard, 'l' Latchkey */
    char kind;         /* 'c' a chunk, 'a' a ThingsBoard attribute request */
    char *keys;        /* 'a': the sharedKeys asked for (NULL: all) */
    char *reply_topic; /* where the bytes go */
    char *err_topic;
    uint8_t *corr; /* v5 correlation data */
    size_t corr_len;
    bool v5; /* reply with user properties offset/length */
    uint64_t offset;
    uint64_t length;
    char *sha; /* the image asked for (Latchkey); NULL: the device's offer */
    void *dev; /* od_dev_t (kept until the process ends) */
    struct od_req *next;
} od_req_t;

/* --- a device seen lately ---------------------------------------------------------- */
typedef struct {
    char *id;
    bool known;   /* in ota_devices */
    bool loading; /* a load from PostgreSQL is under way */
    int64_t loaded_ms;
    char proto; /* 't' or 'l' */
    char *model;
    /* the offer: its open rollout's image (rollout_id 0: none) */
    int64_t rollout_id;
    char *state; /* offered, downloading, downloaded */
    char *sha, *version, *signature, *key_id;
    uint64_t size;
    /* ThingsBoard: chunk size of the last request id (an empty payload repeats it) */
    char *tb_req;
    uint64_t tb_size;
    uint64_t served; /* highest offset + length served, flushed to bytes_offset */
    bool dirty;
    od_req_t *pending; /* requests that came while loading */
} od_dev_t;

/* --- a rollout's byte budget (token bucket) ---------------------------------------- */
typedef struct {
    int64_t id;
    uint64_t rate; /* bytes/s; 0 = no cap */
    double tokens;
    int64_t last_ms;
    od_req_t *q_head, *q_tail;
    size_t q_len;
} od_bucket_t;

struct od {
    lk_config_t *config;
    lk_loop_t *loop;
    lk_iclient_t *ic;
    char *node;
    int ready_fd;
    bool ready_told;
    int exit_code;
    od_db_t *db;
    lk_http_t *http;
    char *ota_dir;
    char *http_url;   /* ota_http_url: base of the download URLs */
    char *url_secret; /* ota_url_secret: HMAC key of signed URLs (NULL: none) */
    int64_t url_ttl_s;
    int64_t resend_s; /* ota_offer_resend: offers not taken up are sent again */
    uint64_t max_chunk;
    uint32_t qos;
    zhashx_t *images; /* sha256 -> od_image_t (first of that sha) */
    zhashx_t *by_mv;  /* "model/version" -> od_image_t */
    bool images_loaded, images_loading, announced;
    zhashx_t *devs;    /* id -> od_dev_t */
    zhashx_t *buckets; /* rollout id text -> od_bucket_t */
    zhashx_t *fds;     /* sha256 -> open fd (int) + 1 */
    bool stepping;
    int cron, drain;
    /* counters */
    uint64_t chunks, bytes, errors, offers, reports;
};

/* od_server.c */
od_dev_t *od_dev_get(od_t *self, const char *id);
/* the device's record is current: fn(self, dev) now or once loaded */
void od_dev_load(od_t *self, od_dev_t *dev);
void od_publish(od_t *self, const char *topic, const void *p, size_t n, bool retain,
                const void *props, size_t props_len);
struct cJSON;
/* publishes o printed compactly (QoS of the service, not retained) and deletes o */
void od_publish_json(od_t *self, const char *topic, struct cJSON *o);
void od_offer(od_t *self, od_dev_t *dev);
void od_report(od_t *self, const char *dev, const char *version, const char *state,
               const char *error);
od_image_t *od_image(od_t *self, const char *sha);
int od_image_fd(od_t *self, const char *sha);

/* serves req for dev now, or once the device's record is loaded (od_server.c) */
void od_serve_later(od_t *self, od_dev_t *dev, od_req_t *req);

/* od_serve.c: chunks */
void od_serve(od_t *self, od_dev_t *dev, od_req_t *req);
void od_req_free(od_req_t *req);
void od_error(od_t *self, const char *topic, const char *text);
void od_buckets_drain(od_t *self);
void od_bucket_set(od_t *self, int64_t rollout, uint64_t rate);

/* od_tb.c / od_lk.c: the two device protocols */
void od_tb_message(od_t *self, const Lk__Msg *msg, const char *dev, const char *rest);
void od_tb_offer(od_t *self, od_dev_t *dev);
void od_tb_attributes(od_t *self, od_dev_t *dev, od_req_t *req);
void od_lk_message(od_t *self, const Lk__Msg *msg, const char *dev, const char *rest);
void od_lk_offer(od_t *self, od_dev_t *dev);
char *od_lk_announcement(od_t *self, const od_image_t *img);
/* the signed download URL of sha for device (the plain one without ota_url_secret) */
char *od_signed_url(od_t *self, const char *sha, const char *device);

/* od_http.c */
int od_http_start(od_t *self);

#endif
