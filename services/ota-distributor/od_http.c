/*  od_http: image downloads over HTTP(S) (lk_http): GET/HEAD /ota/images/<sha256> and
    /ota/images/<model>/<version>, single byte ranges (206/416), ETag = the SHA-256.
    Authorised per device: an unexpired signed URL (device, expires, sig = HMAC-SHA256 of
    ota_url_secret, as the offer carries), or HTTP Basic with the device's MQTT credential
    (user name = its token) for an image of its model. */
#include "od_internal.h"
#include "lk_crypto.h"
#include "lk_ota.h"
#include <fcntl.h>
#include <unistd.h>

typedef struct {
    lk_http_req_t *req;
    char *sha;
} s_wait_t;

static void s_send_image(od_t *self, lk_http_req_t *req, const od_image_t *img)
{
    char *path = lk_ota_image_path(self->ota_dir, img->sha256);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    if (fd < 0) {
        lk_http_respond(req, 500, "text/plain", "image file missing\n", 19);
        return;
    }
    lk_http_add_header(req, "Cache-Control", "private, max-age=31536000, immutable");
    lk_http_respond_file(req, fd, img->size, "application/octet-stream", img->sha256);
}

static void s_unauthorised(lk_http_req_t *req, const char *why)
{
    lk_http_add_header(req, "WWW-Authenticate", "Basic realm=\"latchkey-ota\"");
    lk_http_respond(req, 401, "text/plain", why, strlen(why));
}

static void s_token_checked(od_t *self, lk_pg_result_t *r, void *arg)
{
    s_wait_t *w = arg;
    od_image_t *img = od_image(self, w->sha);
    if (r->status != LK_PG_OK)
        lk_http_respond(w->req, 503, "text/plain", "store unavailable\n", 18);
    else if (r->nrows == 0)
        s_unauthorised(w->req, "unknown device credential\n");
    else if (!img || strcmp(lk_pg_value(r, 0, 0), img->model) != 0)
        lk_http_respond(w->req, 403, "text/plain", "not an image of this device's model\n", 36);
    else
        s_send_image(self, w->req, img);
    free(w->sha);
    free(w);
}

static void s_handle(lk_http_req_t *req, void *arg)
{
    od_t *self = arg;
    const char *m = lk_http_method(req);
    if (strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0) {
        lk_http_add_header(req, "Allow", "GET, HEAD");
        lk_http_respond(req, 405, "text/plain", "GET or HEAD\n", 12);
        return;
    }
    const char *path = lk_http_path(req);
    static const char pre[] = "/ota/images/";
    if (strncmp(path, pre, sizeof(pre) - 1) != 0) {
        lk_http_respond(req, 404, "text/plain", "not found\n", 10);
        return;
    }
    char name[512];
    snprintf(name, sizeof(name), "%s", path + sizeof(pre) - 1);
    if (lk_http_unescape(name, false) != 0) {
        lk_http_respond(req, 400, "text/plain", "bad path\n", 9);
        return;
    }
    od_image_t *img = strchr(name, '/') ? zhashx_lookup(self->by_mv, name) : od_image(self, name);
    if (!img) {
        lk_http_respond(req, 404, "text/plain", "no such image\n", 14);
        return;
    }
    const char *dev = lk_http_query(req, "device"), *exp = lk_http_query(req, "expires");
    const char *sig = lk_http_query(req, "sig");
    if (sig) {
        char *end = NULL;
        long long e = exp ? strtoll(exp, &end, 10) : 0;
        char mac[65];
        if (!self->url_secret || !dev || !exp || *end || strlen(sig) != 64) {
            s_unauthorised(req, "bad signed URL\n");
            return;
        }
        lk_ota_url_mac(self->url_secret, img->sha256, dev, e, mac);
        if (!lk_crypto_equal(mac, sig, 64)) {
            s_unauthorised(req, "bad signed URL\n");
            return;
        }
        if (e < lk_wall_ms() / 1000) {
            s_unauthorised(req, "signed URL expired\n");
            return;
        }
        s_send_image(self, req, img);
        return;
    }
    const char *user = NULL, *pw = NULL;
    if (lk_http_basic_auth(req, &user, &pw) != 0 || !user || !*user) {
        s_unauthorised(req, "credentials required\n");
        return;
    }
    s_wait_t *w = lk_calloc(1, sizeof(*w));
    w->req = req;
    w->sha = lk_strdup(img->sha256);
    const char *p[] = {user};
    od_db_query(self, "SELECT model FROM ota_devices WHERE token = $1", 1, p, s_token_checked, w);
}

int od_http_start(od_t *self)
{
    lk_http_opts_t o = {0};
    o.address = lk_config_get(self->config, "ota_http_address", "127.0.0.1");
    o.port = (int)lk_config_get_int(self->config, "ota_http_port", 0);
    /* ota_replicas: every replica serves downloads on the same port */
    o.reuse_port = lk_config_get_int(self->config, "ota_replicas", 1) > 1;
    const char *cert = lk_config_get(self->config, "ota_http_certfile", "");
    const char *key = lk_config_get(self->config, "ota_http_keyfile", "");
    o.tls_cert_file = *cert ? cert : NULL;
    o.tls_key_file = *key ? key : NULL;
    o.max_body = 4096;
    o.max_connections = (unsigned)lk_config_get_int(self->config, "ota_http_max_connections", 2000);
    self->http = lk_http_new(self->loop, &o, s_handle, self);
    if (!self->http)
        return -1;
    lk_notice("HTTP%s downloads on %s:%d", o.tls_cert_file ? "S" : "", o.address,
              lk_http_port(self->http));
    return 0;
}
