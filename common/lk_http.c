/*  lk_http: HTTP/1.1 on libmicrohttpd, run from the process's lk_loop (and a blocking
    client on libcurl, lk_http_get).

    libmicrohttpd is started without threads (MHD_USE_EPOLL, external polling): its epoll
    fd sits in our loop, and MHD_run is called when it is readable, on a 1 s tick (its
    idle timeouts) and right after a turn that left it work (a 1 ms one-shot). Requests
    answered later are suspended; the answer resumes them and MHD queues it on its next
    call of the access handler, the only place MHD_queue_response may be called.

    The request target is taken raw (the URI log callback sees it before MHD decodes it):
    REST paths carry percent-encoded segments such as topics ("a%2Fb") that must not turn
    into path separators. */
#include "lk_http.h"
#include "lk_common.h"
#include "lk_crypto.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_MAX_HEADERS 32
#define S_MAX_QUERY 64

typedef struct {
    char *name;
    char *value;
} s_pair_t;

struct _lk_http_t {
    lk_loop_t *loop;
    struct MHD_Daemon *mhd;
    int epfd;
    int port;
    size_t max_body;
    lk_http_fn *fn;
    void *arg;
    int tick_timer;
    int soon_timer;
    char *tls_cert;
    char *tls_key;
    uint64_t requests;
    bool in_run;
    lk_http_req_t *suspended; /* list, so destroy can resume them */
};

struct _lk_http_req_t {
    lk_http_t *http;
    struct MHD_Connection *con;
    char *uri;    /* raw target */
    char *path;   /* raw path */
    const char *method;
    s_pair_t query[S_MAX_QUERY];
    int query_count;
    char *body;
    size_t body_len;
    size_t body_cap;
    bool started;      /* first access-handler call seen */
    bool too_big;
    bool dispatched;   /* handler called */
    bool suspended;
    bool answered;
    bool ended;        /* MHD finished with the connection's request */
    struct MHD_Response *response;
    unsigned status;
    s_pair_t headers[S_MAX_HEADERS];
    int header_count;
    char *auth_buf;
    char peer[INET6_ADDRSTRLEN];
    lk_http_req_t *next_suspended;
    lk_http_req_t *prev_suspended;
};

static void s_run(lk_http_t *self);

static void s_curl_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void s_pairs_free(s_pair_t *p, int n)
{
    for (int i = 0; i < n; i++) {
        free(p[i].name);
        free(p[i].value);
    }
}

static void s_req_free(lk_http_req_t *req)
{
    if (req->response)
        MHD_destroy_response(req->response);
    s_pairs_free(req->query, req->query_count);
    s_pairs_free(req->headers, req->header_count);
    free(req->uri);
    free(req->path);
    free(req->body);
    free(req->auth_buf);
    free(req);
}

static void s_unlink_suspended(lk_http_req_t *req)
{
    lk_http_t *h = req->http;
    if (req->prev_suspended)
        req->prev_suspended->next_suspended = req->next_suspended;
    else if (h->suspended == req)
        h->suspended = req->next_suspended;
    if (req->next_suspended)
        req->next_suspended->prev_suspended = req->prev_suspended;
    req->next_suspended = req->prev_suspended = NULL;
}

/* --- helpers --------------------------------------------------------------------------- */

static int s_hex(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int lk_http_unescape(char *s, bool plus)
{
    char *w = s;
    for (char *r = s; *r; r++) {
        if (*r == '%') {
            int hi = s_hex((unsigned char)r[1]);
            int lo = hi < 0 ? -1 : s_hex((unsigned char)r[2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return -1;
            *w++ = (char)(hi * 16 + lo);
            r += 2;
        } else if (*r == '+' && plus)
            *w++ = ' ';
        else
            *w++ = *r;
    }
    *w = 0;
    return 0;
}

static bool s_parse_u64(const char **p, uint64_t *out)
{
    const char *s = *p;
    if (!isdigit((unsigned char)*s))
        return false;
    uint64_t v = 0;
    while (isdigit((unsigned char)*s)) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
        s++;
    }
    *p = s;
    *out = v;
    return true;
}

int lk_http_range_parse(const char *header, uint64_t size, uint64_t *first, uint64_t *last)
{
    if (!header)
        return 0;
    const char *p = header;
    while (*p == ' ' || *p == '\t')
        p++;
    if (strncasecmp(p, "bytes", 5) != 0)
        return 0;
    p += 5;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p++ != '=')
        return 0;
    while (*p == ' ' || *p == '\t')
        p++;
    if (strchr(p, ','))
        return 0; /* several ranges: we answer the whole resource (RFC 7233 3.1 allows) */
    uint64_t a = 0, b = 0;
    bool has_a = false, has_b = false;
    if (*p != '-') {
        if (!s_parse_u64(&p, &a))
            return 0;
        has_a = true;
    }
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p++ != '-')
        return 0;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p) {
        if (!s_parse_u64(&p, &b))
            return 0;
        has_b = true;
    }
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p || (!has_a && !has_b))
        return 0;
    if (!has_a) { /* suffix: the last b bytes */
        if (b == 0 || size == 0)
            return -1;
        *first = b >= size ? 0 : size - b;
        *last = size - 1;
        return 1;
    }
    if (has_b && b < a)
        return 0; /* invalid: ignored (RFC 7233 2.1) */
    if (a >= size)
        return -1;
    *first = a;
    *last = (!has_b || b >= size) ? size - 1 : b;
    return 1;
}

static void s_query_parse(lk_http_req_t *req, const char *q)
{
    while (q && *q && req->query_count < S_MAX_QUERY) {
        const char *amp = strchr(q, '&');
        size_t n = amp ? (size_t)(amp - q) : strlen(q);
        if (n) {
            char *kv = lk_strndup(q, n);
            char *eq = strchr(kv, '=');
            char *v = lk_strdup(eq ? eq + 1 : "");
            if (eq)
                *eq = 0;
            if (lk_http_unescape(kv, true) == 0 && lk_http_unescape(v, true) == 0) {
                req->query[req->query_count].name = kv;
                req->query[req->query_count].value = v;
                req->query_count++;
            } else {
                free(kv);
                free(v);
            }
        }
        q = amp ? amp + 1 : NULL;
    }
}

/* --- libmicrohttpd callbacks ----------------------------------------------------------- */

static void *s_on_uri(void *cls, const char *uri, struct MHD_Connection *con)
{
    lk_http_t *self = cls;
    lk_http_req_t *req = lk_calloc(1, sizeof(*req));
    req->http = self;
    req->con = con;
    req->uri = lk_strdup(uri ? uri : "/");
    const char *q = strchr(req->uri, '?');
    req->path = q ? lk_strndup(req->uri, (size_t)(q - req->uri)) : lk_strdup(req->uri);
    s_query_parse(req, q ? q + 1 : NULL);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(con, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, req->peer,
                      sizeof(req->peer));
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, req->peer,
                      sizeof(req->peer));
    }
    self->requests++;
    return req;
}

static void s_on_completed(void *cls, struct MHD_Connection *con, void **con_cls,
                           enum MHD_RequestTerminationCode toe)
{
    lk_http_req_t *req = *con_cls;
    if (!req)
        return;
    *con_cls = NULL;
    req->ended = true;
    req->con = NULL;
    if (req->dispatched && !req->answered)
        return; /* the handler still owns it: freed when it answers */
    s_req_free(req);
}

static enum MHD_Result s_queue(lk_http_req_t *req)
{
    enum MHD_Result r = MHD_queue_response(req->con, req->status, req->response);
    MHD_destroy_response(req->response);
    req->response = NULL;
    return r;
}

static void s_answer_simple(lk_http_req_t *req, int status, const char *code, const char *msg)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "{\"code\":\"%s\",\"message\":\"%s\"}", code, msg);
    lk_http_respond_json(req, status, buf);
}

static enum MHD_Result s_access(void *cls, struct MHD_Connection *con, const char *url,
                                const char *method, const char *version, const char *upload,
                                size_t *upload_size, void **con_cls)
{
    lk_http_t *self = cls;
    lk_http_req_t *req = *con_cls;
    if (!req)
        return MHD_NO;
    if (!req->started) {
        req->started = true;
        req->method = method;
        const char *cl = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > self->max_body) {
            /* refused before the body is read; MHD closes the connection after it */
            req->too_big = req->dispatched = true;
            s_answer_simple(req, 413, "BAD_REQUEST", "request body too large");
            return s_queue(req);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!req->too_big && req->body_len + *upload_size <= self->max_body) {
            if (req->body_len + *upload_size + 1 > req->body_cap) {
                req->body_cap = (req->body_len + *upload_size + 1) * 2;
                if (req->body_cap > self->max_body + 1)
                    req->body_cap = self->max_body + 1;
                req->body = lk_realloc(req->body, req->body_cap);
            }
            memcpy(req->body + req->body_len, upload, *upload_size);
            req->body_len += *upload_size;
            req->body[req->body_len] = 0;
        } else
            req->too_big = true;
        *upload_size = 0;
        return MHD_YES;
    }
    if (req->response)
        return s_queue(req);
    if (req->dispatched)
        return MHD_YES; /* resumed without an answer: cannot happen, but harmless */
    req->dispatched = true;
    if (req->too_big)
        s_answer_simple(req, 413, "BAD_REQUEST", "request body too large");
    else
        self->fn(req, self->arg);
    if (req->response)
        return s_queue(req);
    if (!req->answered) {
        MHD_suspend_connection(con);
        req->suspended = true;
        req->next_suspended = self->suspended;
        if (self->suspended)
            self->suspended->prev_suspended = req;
        self->suspended = req;
    }
    return MHD_YES;
}

static void s_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char buf[512];
    vsnprintf(buf, sizeof(buf), fmt, ap);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = 0;
    lk_info("http: %s", buf);
}

/* --- the loop side --------------------------------------------------------------------- */

static void s_on_soon(lk_loop_t *loop, void *arg)
{
    lk_http_t *self = arg;
    self->soon_timer = 0;
    s_run(self);
}

static void s_run(lk_http_t *self)
{
    if (self->in_run)
        return;
    self->in_run = true;
    MHD_run(self->mhd);
    self->in_run = false;
    MHD_UNSIGNED_LONG_LONG t = 0;
    if (MHD_get_timeout(self->mhd, &t) == MHD_YES && t == 0 && !self->soon_timer)
        self->soon_timer = lk_loop_timer(self->loop, 1, false, s_on_soon, self);
}

static void s_on_epoll(lk_loop_t *loop, int fd, uint32_t events, void *arg)
{
    s_run(arg);
}

static void s_on_tick(lk_loop_t *loop, void *arg)
{
    s_run(arg);
}

lk_http_t *lk_http_new(lk_loop_t *loop, const lk_http_opts_t *opts, lk_http_fn *fn, void *arg)
{
    lk_http_t *self = lk_calloc(1, sizeof(*self));
    self->loop = loop;
    self->fn = fn;
    self->arg = arg;
    self->max_body = opts->max_body ? opts->max_body : 1 << 20;
    const char *addr = opts->address && *opts->address ? opts->address : "127.0.0.1";
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (inet_pton(AF_INET, addr, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)opts->port);
    } else if (inet_pton(AF_INET6, addr, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)opts->port);
        flags |= MHD_USE_IPv6;
    } else {
        lk_error("http: listen address '%s' is not an IP address", addr);
        free(self);
        return NULL;
    }
    bool tls = opts->tls_cert_file && *opts->tls_cert_file;
    if (tls) {
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
            lk_error("http: this libmicrohttpd has no TLS");
            free(self);
            return NULL;
        }
        self->tls_cert = lk_file_read_text(opts->tls_cert_file, "HTTPS certificate", NULL);
        self->tls_key = lk_file_read_text(opts->tls_key_file ? opts->tls_key_file : "",
                                          "HTTPS key", NULL);
        if (!self->tls_cert || !self->tls_key) {
            free(self->tls_cert);
            free(self->tls_key);
            free(self);
            return NULL;
        }
        flags |= MHD_USE_TLS;
    }
    /* only when asked: the option with 0 would also drop MHD's default SO_REUSEADDR, and a
       restarted server could not bind while its old connections sit in TIME_WAIT */
    struct MHD_OptionItem reuse_opts[] = {
        {opts->reuse_port ? MHD_OPTION_LISTENING_ADDRESS_REUSE : MHD_OPTION_END, 1, NULL},
        {MHD_OPTION_END, 0, NULL}};
    struct MHD_OptionItem tls_opts[] = {
        {tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, self->tls_cert},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, self->tls_key},
        {MHD_OPTION_END, 0, NULL}};
    self->mhd = MHD_start_daemon(
        flags, (uint16_t)opts->port, NULL, NULL, s_access, self, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)(opts->max_connections ? opts->max_connections : 1000),
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(opts->timeout_s ? opts->timeout_s : 30),
        MHD_OPTION_URI_LOG_CALLBACK, s_on_uri, self, MHD_OPTION_NOTIFY_COMPLETED,
        s_on_completed, self, MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, self, MHD_OPTION_ARRAY,
        reuse_opts, MHD_OPTION_ARRAY, tls_opts, MHD_OPTION_END);
    if (!self->mhd) {
        lk_error("http: cannot listen on %s:%d: %s", addr, opts->port, strerror(errno));
        free(self->tls_cert);
        free(self->tls_key);
        free(self);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(self->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    self->epfd = di ? di->epoll_fd : -1;
    di = MHD_get_daemon_info(self->mhd, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);
    if (di && getsockname(di->listen_fd, (struct sockaddr *)&bound, &blen) == 0)
        self->port = ntohs(bound.ss_family == AF_INET6
                               ? ((struct sockaddr_in6 *)&bound)->sin6_port
                               : ((struct sockaddr_in *)&bound)->sin_port);
    if (self->epfd < 0) {
        lk_error("http: libmicrohttpd gave no epoll fd");
        MHD_stop_daemon(self->mhd);
        free(self->tls_cert);
        free(self->tls_key);
        free(self);
        return NULL;
    }
    lk_loop_add_fd(loop, self->epfd, EPOLLIN, s_on_epoll, self);
    self->tick_timer = lk_loop_timer(loop, 1000, true, s_on_tick, self);
    return self;
}

void lk_http_destroy(lk_http_t **self_p)
{
    lk_http_t *self = *self_p;
    if (!self)
        return;
    *self_p = NULL;
    /* MHD cannot stop with suspended connections: answer them */
    while (self->suspended) {
        lk_http_req_t *req = self->suspended;
        s_answer_simple(req, 503, "SERVICE_UNAVAILABLE", "shutting down");
    }
    lk_loop_del_fd(self->loop, self->epfd);
    lk_loop_timer_cancel(self->loop, self->tick_timer);
    if (self->soon_timer)
        lk_loop_timer_cancel(self->loop, self->soon_timer);
    MHD_stop_daemon(self->mhd);
    free(self->tls_cert);
    free(self->tls_key);
    free(self);
}

int lk_http_port(lk_http_t *self)
{
    return self->port;
}

uint64_t lk_http_requests(lk_http_t *self)
{
    return self->requests;
}

/* --- the request ------------------------------------------------------------------------ */

const char *lk_http_method(const lk_http_req_t *req)
{
    return req->method ? req->method : "";
}

const char *lk_http_path(const lk_http_req_t *req)
{
    return req->path;
}

const char *lk_http_query(const lk_http_req_t *req, const char *name)
{
    for (int i = 0; i < req->query_count; i++)
        if (strcmp(req->query[i].name, name) == 0)
            return req->query[i].value;
    return NULL;
}

const char *lk_http_header(const lk_http_req_t *req, const char *name)
{
    if (!req->con)
        return NULL;
    return MHD_lookup_connection_value(req->con, MHD_HEADER_KIND, name);
}

const char *lk_http_body(const lk_http_req_t *req, size_t *len)
{
    if (len)
        *len = req->body_len;
    return req->body ? req->body : "";
}

const char *lk_http_peer(const lk_http_req_t *req)
{
    return req->peer;
}

bool lk_http_is_tls(const lk_http_req_t *req)
{
    return req->con && MHD_get_connection_info(req->con, MHD_CONNECTION_INFO_PROTOCOL) != NULL;
}

int lk_http_basic_auth(lk_http_req_t *req, const char **user, const char **password)
{
    const char *h = lk_http_header(req, "Authorization");
    if (!h || strncasecmp(h, "Basic ", 6) != 0)
        return -1;
    h += 6;
    while (*h == ' ')
        h++;
    size_t cap = strlen(h) / 4 * 3 + 4;
    free(req->auth_buf);
    req->auth_buf = lk_calloc(1, cap + 1);
    int n = lk_crypto_b64_decode(h, (uint8_t *)req->auth_buf, cap);
    if (n < 0 || memchr(req->auth_buf, 0, (size_t)n))
        return -1;
    req->auth_buf[n] = 0;
    char *colon = strchr(req->auth_buf, ':');
    if (!colon)
        return -1;
    *colon = 0;
    *user = req->auth_buf;
    *password = colon + 1;
    return 0;
}

/* --- the answer ------------------------------------------------------------------------- */

void lk_http_add_header(lk_http_req_t *req, const char *name, const char *value)
{
    if (req->header_count == S_MAX_HEADERS)
        return;
    req->headers[req->header_count].name = lk_strdup(name);
    req->headers[req->header_count].value = lk_strdup(value);
    req->header_count++;
}

/* takes response; queues it now (inside the handler) or resumes the connection */
static void s_answer(lk_http_req_t *req, int status, struct MHD_Response *response)
{
    if (req->answered) {
        MHD_destroy_response(response);
        return;
    }
    req->answered = true;
    for (int i = 0; i < req->header_count; i++)
        MHD_add_response_header(response, req->headers[i].name, req->headers[i].value);
    if (req->ended) { /* the client is gone */
        MHD_destroy_response(response);
        s_req_free(req);
        return;
    }
    req->status = (unsigned)status;
    req->response = response;
    if (req->suspended) {
        lk_http_t *h = req->http;
        req->suspended = false;
        s_unlink_suspended(req);
        MHD_resume_connection(req->con);
        if (!h->soon_timer)
            h->soon_timer = lk_loop_timer(h->loop, 1, false, s_on_soon, h);
    }
}

void lk_http_respond(lk_http_req_t *req, int status, const char *ctype, const void *body,
                     size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (ctype)
        MHD_add_response_header(r, "Content-Type", ctype);
    s_answer(req, status, r);
}

void lk_http_respond_json(lk_http_req_t *req, int status, const char *json)
{
    lk_http_respond(req, status, "application/json", json, strlen(json));
}

static bool s_etag_match(const char *list, const char *quoted)
{
    if (!list)
        return false;
    if (strcmp(list, "*") == 0)
        return true;
    size_t q = strlen(quoted);
    for (const char *p = list; (p = strstr(p, quoted)) != NULL; p += q) {
        const char *end = p + q;
        if (*end == 0 || *end == ',' || *end == ' ')
            return true;
    }
    return false;
}

void lk_http_respond_file(lk_http_req_t *req, int fd, uint64_t size, const char *ctype,
                          const char *etag)
{
    char quoted[160] = "";
    if (etag)
        snprintf(quoted, sizeof(quoted), "\"%s\"", etag);
    if (etag) {
        lk_http_add_header(req, "ETag", quoted);
        if (s_etag_match(lk_http_header(req, "If-None-Match"), quoted)) {
            close(fd);
            lk_http_respond(req, 304, NULL, "", 0);
            return;
        }
    }
    lk_http_add_header(req, "Accept-Ranges", "bytes");
    uint64_t first = 0, last = 0;
    int r = lk_http_range_parse(lk_http_header(req, "Range"), size, &first, &last);
    const char *if_range = lk_http_header(req, "If-Range");
    if (r != 0 && if_range && (!etag || strcmp(if_range, quoted) != 0))
        r = 0; /* the validator does not match: the whole resource */
    char cr[96];
    if (r < 0) {
        close(fd);
        snprintf(cr, sizeof(cr), "bytes */%" PRIu64, size);
        lk_http_add_header(req, "Content-Range", cr);
        lk_http_respond(req, 416, NULL, "", 0);
        return;
    }
    uint64_t off = r > 0 ? first : 0;
    uint64_t len = r > 0 ? last - first + 1 : size;
    struct MHD_Response *resp;
    if (len == 0) {
        close(fd);
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    } else {
        resp = MHD_create_response_from_fd_at_offset64(len, fd, off);
        if (!resp) {
            close(fd);
            s_answer_simple(req, 500, "INTERNAL_ERROR", "cannot serve the file");
            return;
        }
    }
    MHD_add_response_header(resp, "Content-Type", ctype ? ctype : "application/octet-stream");
    if (r > 0) {
        snprintf(cr, sizeof(cr), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, first, last, size);
        MHD_add_response_header(resp, "Content-Range", cr);
    }
    s_answer(req, r > 0 ? 206 : 200, resp);
}

/* --- the client (libcurl) ---------------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t len;
    size_t max;
    bool over;
} s_sink_t;

static size_t s_sink(char *p, size_t size, size_t n, void *arg)
{
    s_sink_t *k = arg;
    size_t m = size * n;
    if (k->len + m > k->max) {
        k->over = true;
        return 0; /* libcurl stops with CURLE_WRITE_ERROR */
    }
    k->buf = lk_realloc(k->buf, k->len + m + 1);
    memcpy(k->buf + k->len, p, m);
    k->len += m;
    k->buf[k->len] = 0;
    return m;
}

int lk_http_get(const char *url, const char *cafile, int timeout_ms, size_t max_bytes,
                int *status, char **out, size_t *out_len)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, s_curl_init);
    *out = NULL;
    if (out_len)
        *out_len = 0;
    if (strncmp(url, "https://", 8) != 0) {
        lk_warn("https: %s: only https:// URLs", url);
        return -1;
    }
    CURL *c = curl_easy_init();
    if (!c)
        return -1;
    s_sink_t k = {.max = max_bytes};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(c, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    if (cafile)
        curl_easy_setopt(c, CURLOPT_CAINFO, cafile);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "latchkey/" LK_VERSION);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_sink);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &k);
    CURLcode rc = curl_easy_perform(c);
    long st = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &st);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK) {
        if (k.over)
            lk_warn("https: answer of %s larger than %zu bytes", url, max_bytes);
        else
            lk_warn("https: %s: %s", url, curl_easy_strerror(rc));
        free(k.buf);
        return -1;
    }
    *status = (int)st;
    *out = k.buf ? k.buf : lk_strdup("");
    if (out_len)
        *out_len = k.len;
    return 0;
}

/* --- selftest --------------------------------------------------------------------------- */

typedef struct {
    lk_http_req_t *later;
    int calls;
} s_test_t;

static void s_test_handler(lk_http_req_t *req, void *arg)
{
    s_test_t *t = arg;
    t->calls++;
    const char *path = lk_http_path(req);
    if (strcmp(path, "/later") == 0) {
        t->later = req; /* answered by the test's timer */
        return;
    }
    if (strcmp(path, "/file") == 0) {
        char tmpl[] = "/tmp/lk-http-test.XXXXXX";
        int fd = mkstemp(tmpl);
        unlink(tmpl);
        if (fd < 0 || write(fd, "0123456789", 10) != 10) {
            lk_http_respond(req, 500, NULL, "", 0);
            return;
        }
        lk_http_respond_file(req, fd, 10, "text/plain", "abc");
        return;
    }
    const char *user = NULL, *pw = NULL;
    if (lk_http_basic_auth(req, &user, &pw) != 0)
        user = pw = "-";
    char buf[256];
    snprintf(buf, sizeof(buf), "%s %s q=%s body=%s auth=%s:%s", lk_http_method(req), path,
             lk_http_query(req, "q") ? lk_http_query(req, "q") : "-", lk_http_body(req, NULL),
             user, pw);
    lk_http_respond(req, 200, "text/plain", buf, strlen(buf));
}

typedef struct {
    int port;
    char *cmd;
    char out[512];
    int rc;
    bool done;
} s_client_t;

/* a blocking client in a thread: the loop must keep running while it waits */
static void *s_client_thread(void *arg)
{
    s_client_t *c = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->rc = -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        write(fd, c->cmd, strlen(c->cmd)) == (ssize_t)strlen(c->cmd)) {
        size_t n = 0;
        ssize_t r;
        while (n < sizeof(c->out) - 1 && (r = read(fd, c->out + n, sizeof(c->out) - 1 - n)) > 0)
            n += (size_t)r;
        c->out[n] = 0;
        c->rc = 0;
    }
    close(fd);
    __atomic_store_n(&c->done, true, __ATOMIC_SEQ_CST);
    return NULL;
}

typedef struct {
    s_test_t *t;
    s_client_t *clients;
    int n;
    int ticks;
} s_test_loop_t;

static void s_test_tick(lk_loop_t *loop, void *arg)
{
    s_test_loop_t *tl = arg;
    if (tl->t->later && ++tl->ticks >= 3) {
        lk_http_respond(tl->t->later, 202, "text/plain", "later", 5);
        tl->t->later = NULL;
    }
    bool all = true;
    for (int i = 0; i < tl->n; i++)
        all = all && __atomic_load_n(&tl->clients[i].done, __ATOMIC_SEQ_CST);
    if (all || tl->ticks > 500)
        lk_loop_stop(loop);
}

int lk_http_test(bool verbose)
{
    int fails = 0;
#define S_EXPECT(cond)                                                                             \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("lk_http: %s:%d: %s\n", __FILE__, __LINE__, #cond);                             \
            fails++;                                                                               \
        }                                                                                          \
    } while (0)
    uint64_t a = 0, b = 0;
    S_EXPECT(lk_http_range_parse("bytes=0-4", 10, &a, &b) == 1 && a == 0 && b == 4);
    S_EXPECT(lk_http_range_parse("bytes=5-", 10, &a, &b) == 1 && a == 5 && b == 9);
    S_EXPECT(lk_http_range_parse("bytes=-3", 10, &a, &b) == 1 && a == 7 && b == 9);
    S_EXPECT(lk_http_range_parse("bytes=-30", 10, &a, &b) == 1 && a == 0 && b == 9);
    S_EXPECT(lk_http_range_parse("bytes=3-100", 10, &a, &b) == 1 && a == 3 && b == 9);
    S_EXPECT(lk_http_range_parse("bytes=10-", 10, &a, &b) == -1);
    S_EXPECT(lk_http_range_parse("bytes=-0", 10, &a, &b) == -1);
    S_EXPECT(lk_http_range_parse("bytes=0-0", 0, &a, &b) == -1);
    S_EXPECT(lk_http_range_parse("bytes=5-3", 10, &a, &b) == 0);
    S_EXPECT(lk_http_range_parse("bytes=0-1,3-4", 10, &a, &b) == 0);
    S_EXPECT(lk_http_range_parse("items=0-1", 10, &a, &b) == 0);
    S_EXPECT(lk_http_range_parse("bytes=x-1", 10, &a, &b) == 0);
    S_EXPECT(lk_http_range_parse("bytes=99999999999999999999-", 10, &a, &b) == 0);
    S_EXPECT(lk_http_range_parse(NULL, 10, &a, &b) == 0);
    char s1[] = "a%2Fb+c", s2[] = "bad%2", s3[] = "nul%00";
    S_EXPECT(lk_http_unescape(s1, true) == 0 && strcmp(s1, "a/b c") == 0);
    S_EXPECT(lk_http_unescape(s2, false) == -1);
    S_EXPECT(lk_http_unescape(s3, false) == -1);

    lk_loop_t *loop = lk_loop_new();
    s_test_t t = {0};
    lk_http_opts_t o = {.port = 0};
    lk_http_t *h = lk_http_new(loop, &o, s_test_handler, &t);
    S_EXPECT(h != NULL);
    if (!h) {
        lk_loop_destroy(&loop);
        return -1;
    }
    S_EXPECT(lk_http_port(h) > 0);
    char *cmds[] = {
        "GET /x/a%2Fb?q=1%202&z HTTP/1.1\r\nHost: x\r\nAuthorization: Basic dXNlcjpwYXNz\r\n"
        "Connection: close\r\n\r\n",
        "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        "GET /later HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /file HTTP/1.1\r\nHost: x\r\nRange: bytes=2-4\r\nConnection: close\r\n\r\n",
        "GET /file HTTP/1.1\r\nHost: x\r\nRange: bytes=20-\r\nConnection: close\r\n\r\n",
        "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\nConnection: close\r\n\r\n",
    };
    enum { N = sizeof(cmds) / sizeof(cmds[0]) };
    s_client_t clients[N];
    pthread_t th[N];
    memset(clients, 0, sizeof(clients));
    for (int i = 0; i < N; i++) {
        clients[i].port = lk_http_port(h);
        clients[i].cmd = cmds[i];
        pthread_create(&th[i], NULL, s_client_thread, &clients[i]);
    }
    s_test_loop_t tl = {.t = &t, .clients = clients, .n = N};
    lk_loop_timer(loop, 10, true, s_test_tick, &tl);
    lk_loop_run(loop);
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    if (verbose)
        for (int i = 0; i < N; i++)
            printf("lk_http: answer %d: %s\n---\n", i, clients[i].out);
    S_EXPECT(strstr(clients[0].out, "200 OK") &&
             strstr(clients[0].out, "GET /x/a%2Fb q=1 2 body= auth=user:pass"));
    S_EXPECT(strstr(clients[1].out, "POST /p q=- body=hello"));
    S_EXPECT(strstr(clients[2].out, "202") && strstr(clients[2].out, "later"));
    S_EXPECT(strstr(clients[3].out, "206") && strstr(clients[3].out, "bytes 2-4/10") &&
             strstr(clients[3].out, "\r\n\r\n234") && strstr(clients[3].out, "\"abc\""));
    S_EXPECT(strstr(clients[4].out, "416") && strstr(clients[4].out, "bytes */10"));
    S_EXPECT(strstr(clients[5].out, "413"));
    lk_http_destroy(&h);
    lk_loop_destroy(&loop);
    return fails ? -1 : 0;
#undef S_EXPECT
}
