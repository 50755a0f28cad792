/*  lk_tls: server-side TLS for the MQTT frontend's listeners — the one file that includes
    OpenSSL's TLS headers.

    An lk_tls_ctx_t is a listener's configuration made ready (certificate, key, CA, CRL,
    versions, ciphers); an lk_tls_t is one connection on a non-blocking socket, reading and
    writing through the socket itself. A connection holds a reference to the context it
    was made from, so a listener may swap in a new context (SIGHUP reload) while older
    connections go on with theirs. TLS 1.2 and 1.3 only. */
#ifndef LK_TLS_H_INCLUDED
#define LK_TLS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct _lk_tls_ctx_t lk_tls_ctx_t;
typedef struct _lk_tls_t lk_tls_t;

/* a listener's TLS settings (Mosquitto's names); NULL or "" = unset. The strings are read
   by lk_tls_ctx_new only. */
typedef struct {
    const char *certfile;       /* PEM chain, server certificate first (required) */
    const char *keyfile;        /* PEM private key (required) */
    const char *cafile;         /* PEM CA certificates that sign client certificates */
    const char *capath;         /* a c_rehash'ed folder of them */
    const char *crlfile;        /* PEM CRL(s): client certificates revoked */
    const char *ciphers;        /* TLS 1.2 cipher list (OpenSSL syntax) */
    const char *ciphersuites;   /* TLS 1.3 suites */
    const char *tls_version;    /* the oldest accepted: "tlsv1.2" (default) or "tlsv1.3" */
    bool require_certificate;   /* clients must present a certificate the CA signed */
} lk_tls_config_t;

/* Builds a context; NULL with log lines naming what is wrong. Caller owns it. */
lk_tls_ctx_t *lk_tls_ctx_new(const lk_tls_config_t *cfg);
/* drops the caller's reference; connections made from it keep it alive */
void lk_tls_ctx_destroy(lk_tls_ctx_t **self_p);
/* the server certificate's serial number in hex (for logs), "" when unknown */
const char *lk_tls_ctx_serial(lk_tls_ctx_t *self);

/* results of read and write besides a byte count */
#define LK_TLS_CLOSED 0         /* the peer closed (close_notify or EOF) */
#define LK_TLS_ERROR (-1)       /* fatal: lk_tls_error() says why */
#define LK_TLS_WANT_READ (-2)   /* call again when the socket is readable */
#define LK_TLS_WANT_WRITE (-3)  /* call again when the socket is writable */

/* A server-side connection on fd (non-blocking; not owned: the caller closes it).
   The handshake happens within the first reads. Caller owns the result. */
lk_tls_t *lk_tls_new(lk_tls_ctx_t *ctx, int fd);
/* sends close_notify when the handshake was done (once, without waiting), then frees */
void lk_tls_destroy(lk_tls_t **self_p);
/* up to len plaintext bytes into buf: > 0 bytes read, or an LK_TLS_* result */
ssize_t lk_tls_read(lk_tls_t *self, void *buf, size_t len);
/* writes up to len bytes of buf: > 0 bytes taken, or an LK_TLS_* result. After
   WANT_WRITE/WANT_READ the same bytes must be offered again (they may have moved). */
ssize_t lk_tls_write(lk_tls_t *self, const void *buf, size_t len);
/* plaintext already decrypted and waiting inside (no socket event will announce it) */
bool lk_tls_pending(lk_tls_t *self);
bool lk_tls_handshake_done(lk_tls_t *self);
/* why the last LK_TLS_ERROR happened */
const char *lk_tls_error(lk_tls_t *self);
/* the common name of the client's certificate when one was presented and verified
   against the CA: 0 with it in out, -1 when there is none (or it is longer than cap) */
int lk_tls_peer_cn(lk_tls_t *self, char *out, size_t cap);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384", for a log line */
void lk_tls_describe(lk_tls_t *self, char *out, size_t cap);

int lk_tls_test(bool verbose);

#endif
