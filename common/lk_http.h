/*  lk_http: the one door to HTTP (only lk_http.c includes libmicrohttpd).

    An HTTP/1.1 server (HTTPS when a certificate is given) driven by the process's own
    lk_loop: libmicrohttpd runs without threads of its own, from the loop, so handlers run
    on the service's thread and may use its bus and state directly.

    A handler is called once per request, with the whole body read (at most max_body bytes;
    a larger one is answered 413 without calling it). It answers with one lk_http_respond*
    call, then or later: a handler that returns without answering keeps the request open
    (the connection is suspended) until it answers, e.g. after a bus round trip. A request
    whose client went away stays valid until answered; the answer is then dropped.
    lk_http_req_t pointers must not be kept past the answer. */
#ifndef LK_HTTP_H_INCLUDED
#define LK_HTTP_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lk_loop.h"

typedef struct _lk_http_t lk_http_t;
typedef struct _lk_http_req_t lk_http_req_t;

typedef void(lk_http_fn)(lk_http_req_t *req, void *arg);

typedef struct {
    const char *address;        /* listen address; NULL = 127.0.0.1 */
    int port;                   /* 0 = any free port (lk_http_port tells which) */
    const char *tls_cert_file;  /* PEM; with tls_key_file: HTTPS */
    const char *tls_key_file;
    size_t max_body;            /* 0 = 1 MiB */
    unsigned max_connections;   /* 0 = 1000 */
    unsigned timeout_s;         /* idle connection timeout; 0 = 30 */
    bool reuse_port;            /* SO_REUSEPORT: replicas of a service share the port, the
                                   kernel spreads connections over the live ones */
} lk_http_opts_t;

/* NULL (and a log line) when the address cannot be bound or TLS files cannot be read */
lk_http_t *lk_http_new(lk_loop_t *loop, const lk_http_opts_t *opts, lk_http_fn *fn, void *arg);
void lk_http_destroy(lk_http_t **self_p);
int lk_http_port(lk_http_t *self);
/* requests taken, answered (both since start) */
uint64_t lk_http_requests(lk_http_t *self);

/* --- the request ------------------------------------------------------------------- */
const char *lk_http_method(const lk_http_req_t *req);
/* path as sent, still percent-encoded, without the query ("/api/v5/clients/a%2Fb") */
const char *lk_http_path(const lk_http_req_t *req);
/* query parameter, decoded; NULL when absent. The first of repeated ones. */
const char *lk_http_query(const lk_http_req_t *req, const char *name);
/* request header (case-insensitive name); NULL when absent */
const char *lk_http_header(const lk_http_req_t *req, const char *name);
/* body, NUL-terminated (len excludes the NUL); "" when none */
const char *lk_http_body(const lk_http_req_t *req, size_t *len);
/* client address as text ("127.0.0.1", "::1") */
const char *lk_http_peer(const lk_http_req_t *req);
bool lk_http_is_tls(const lk_http_req_t *req);
/* HTTP Basic credentials; 0 and pointers into the request (valid until the answer), or -1 */
int lk_http_basic_auth(lk_http_req_t *req, const char **user, const char **password);

/* --- the answer (exactly one per request) ------------------------------------------ */
/* adds a header to the answer; call before lk_http_respond* */
void lk_http_add_header(lk_http_req_t *req, const char *name, const char *value);
/* body copied; ctype NULL = none */
void lk_http_respond(lk_http_req_t *req, int status, const char *ctype, const void *body,
                     size_t len);
/* application/json body */
void lk_http_respond_json(lk_http_req_t *req, int status, const char *json);
/* serves the open file fd (taken: closed by lk_http) of size bytes as a resource with
   RFC 7233 single byte ranges (206 / 416, Accept-Ranges), HEAD, and when etag is given
   ETag, If-None-Match (304) and If-Range. ctype NULL = application/octet-stream. */
void lk_http_respond_file(lk_http_req_t *req, int fd, uint64_t size, const char *ctype,
                          const char *etag);

/* --- the client side ------------------------------------------------------------------ */
/* A blocking HTTPS GET with libcurl (an identity provider's keys or code exchange: call it
   from a worker thread, it touches no state of ours). The server's certificate is checked
   against cafile (NULL: the system's store) and its name against the URL's host; only
   https:// URLs. 0 with *status and the body (*out, NUL-terminated, caller frees; *out_len
   when given), or -1 (a log line): unreachable, TLS refused, timeout_ms passed, or an
   answer larger than max_bytes. */
int lk_http_get(const char *url, const char *cafile, int timeout_ms, size_t max_bytes,
                int *status, char **out, size_t *out_len);

/* --- helpers, exposed for the selftest and the fuzzer ------------------------------ */
/* decodes %XX and (when plus) '+' as space in place; -1 on a bad escape or a NUL byte */
int lk_http_unescape(char *s, bool plus);
/* parses a Range header against a resource of size bytes: 1 and [*first, *last] for one
   satisfiable range, 0 when the header should be ignored (absent, not bytes, several
   ranges, malformed), -1 when unsatisfiable (416) */
int lk_http_range_parse(const char *header, uint64_t size, uint64_t *first, uint64_t *last);

int lk_http_test(bool verbose);

#endif
