/*  lk_tls: OpenSSL behind the frontend's TLS listeners; see lk_tls.h. The only file that
    includes OpenSSL's SSL headers.

    The SSL object reads and writes the socket itself (SSL_set_fd): no memory BIOs, no
    copy but the cipher's own. Buffers are released while a connection is idle
    (SSL_MODE_RELEASE_BUFFERS), which is what keeps tens of thousands of quiet TLS clients
    cheap. Partial writes are allowed and the caller's buffer may move between retries,
    since the frontend's output buffer grows by realloc. */
#include "lk_tls.h"
#include "lk_common.h"
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

struct _lk_tls_ctx_t {
    SSL_CTX *ctx;
    char serial[80];
};

struct _lk_tls_t {
    SSL *ssl;
    bool sent_shutdown;
    char error[160];
};

static bool s_set(const char *s)
{
    return s && *s;
}

/* the first queued OpenSSL error as text (and the queue emptied) */
static void s_ssl_error(char *out, size_t cap, const char *fallback)
{
    unsigned long e = ERR_get_error();
    if (e) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof(buf));
        /* "error:0A000086:SSL routines::certificate verify failed": the reason is last */
        const char *r = strrchr(buf, ':');
        snprintf(out, cap, "%.150s", r && r[1] ? r + 1 : buf);
    } else
        snprintf(out, cap, "%s", fallback);
    ERR_clear_error();
}

static void s_log_ssl(const char *what, const char *file)
{
    char why[160];
    s_ssl_error(why, sizeof(why), "unknown error");
    lk_error("tls: %s%s%s: %s", what, file ? " " : "", file ? file : "", why);
}

lk_tls_ctx_t *lk_tls_ctx_new(const lk_tls_config_t *cfg)
{
    if (!s_set(cfg->certfile) || !s_set(cfg->keyfile)) {
        lk_error("tls: certfile and keyfile are both needed");
        return NULL;
    }
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        s_log_ssl("cannot create a context", NULL);
        return NULL;
    }
    int minv = TLS1_2_VERSION;
    if (s_set(cfg->tls_version)) {
        if (strcmp(cfg->tls_version, "tlsv1.3") == 0)
            minv = TLS1_3_VERSION;
        else if (strcmp(cfg->tls_version, "tlsv1.2") != 0) {
            lk_error("tls: tls_version '%s': want tlsv1.2 or tlsv1.3 (TLS 1.0 and 1.1 are "
                     "not offered)",
                     cfg->tls_version);
            goto fail;
        }
    }
    SSL_CTX_set_min_proto_version(ctx, minv);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    /* resumption works with client certificates only with a context id */
    static const unsigned char sid[] = "latchkey";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
    if (s_set(cfg->ciphers) && SSL_CTX_set_cipher_list(ctx, cfg->ciphers) != 1) {
        s_log_ssl("ciphers", cfg->ciphers);
        goto fail;
    }
    if (s_set(cfg->ciphersuites) && SSL_CTX_set_ciphersuites(ctx, cfg->ciphersuites) != 1) {
        s_log_ssl("ciphersuites", cfg->ciphersuites);
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->certfile) != 1) {
        s_log_ssl("certfile", cfg->certfile);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->keyfile, SSL_FILETYPE_PEM) != 1) {
        s_log_ssl("keyfile", cfg->keyfile);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        s_log_ssl("keyfile does not match certfile:", cfg->keyfile);
        goto fail;
    }
    bool ca = s_set(cfg->cafile) || s_set(cfg->capath);
    if (ca) {
        if (SSL_CTX_load_verify_locations(ctx, s_set(cfg->cafile) ? cfg->cafile : NULL,
                                          s_set(cfg->capath) ? cfg->capath : NULL) != 1) {
            s_log_ssl("cafile/capath", s_set(cfg->cafile) ? cfg->cafile : cfg->capath);
            goto fail;
        }
        if (s_set(cfg->cafile)) {
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->cafile);
            if (names)
                SSL_CTX_set_client_CA_list(ctx, names);
        }
    }
    if (cfg->require_certificate && !ca) {
        lk_error("tls: require_certificate needs cafile or capath");
        goto fail;
    }
    if (s_set(cfg->crlfile)) {
        X509_STORE *store = SSL_CTX_get_cert_store(ctx);
        X509_LOOKUP *lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
        if (!lookup || X509_load_crl_file(lookup, cfg->crlfile, X509_FILETYPE_PEM) < 1) {
            s_log_ssl("crlfile", cfg->crlfile);
            goto fail;
        }
        /* the client's certificate is checked; its CA's CRL must then be there */
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
    }
    /* a client certificate is asked for when a CA is configured, and required when so told */
    SSL_CTX_set_verify(ctx,
                       ca ? SSL_VERIFY_PEER | (cfg->require_certificate
                                                   ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                                                   : 0)
                          : SSL_VERIFY_NONE,
                       NULL);

    lk_tls_ctx_t *self = lk_calloc(1, sizeof(*self));
    self->ctx = ctx;
    X509 *cert = SSL_CTX_get0_certificate(ctx);
    BIGNUM *bn = cert ? ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL) : NULL;
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    snprintf(self->serial, sizeof(self->serial), "%s", hex ? hex : "");
    OPENSSL_free(hex);
    BN_free(bn);
    ERR_clear_error();
    return self;
fail:
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return NULL;
}

void lk_tls_ctx_destroy(lk_tls_ctx_t **self_p)
{
    lk_tls_ctx_t *self = *self_p;
    if (!self)
        return;
    SSL_CTX_free(self->ctx);
    free(self);
    *self_p = NULL;
}

const char *lk_tls_ctx_serial(lk_tls_ctx_t *self)
{
    return self->serial;
}

lk_tls_t *lk_tls_new(lk_tls_ctx_t *ctx, int fd)
{
    /* SSL_new takes its own reference to the SSL_CTX */
    SSL *ssl = SSL_new(ctx->ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1) {
        s_log_ssl("cannot create a connection", NULL);
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_accept_state(ssl);
    lk_tls_t *self = lk_calloc(1, sizeof(*self));
    self->ssl = ssl;
    return self;
}

void lk_tls_destroy(lk_tls_t **self_p)
{
    lk_tls_t *self = *self_p;
    if (!self)
        return;
    ERR_clear_error();
    if (SSL_is_init_finished(self->ssl) && !self->sent_shutdown)
        SSL_shutdown(self->ssl); /* close_notify, best effort: the socket is non-blocking */
    ERR_clear_error();
    SSL_free(self->ssl);
    free(self);
    *self_p = NULL;
}

static ssize_t s_result(lk_tls_t *self, int n)
{
    int e = SSL_get_error(self->ssl, n);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        return LK_TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return LK_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        ERR_clear_error();
        return LK_TLS_CLOSED;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0) {
            /* a socket error, or an EOF without close_notify: nobody to tell either way */
            self->sent_shutdown = true;
            if (errno) {
                snprintf(self->error, sizeof(self->error), "%s", strerror(errno));
                return LK_TLS_ERROR;
            }
            return LK_TLS_CLOSED;
        }
        /* fall through */
    default:
        s_ssl_error(self->error, sizeof(self->error), "TLS error");
        /* no close_notify after a fatal alert */
        self->sent_shutdown = true;
        return LK_TLS_ERROR;
    }
}

ssize_t lk_tls_read(lk_tls_t *self, void *buf, size_t len)
{
    ERR_clear_error();
    errno = 0;
    int n = SSL_read(self->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    return n > 0 ? n : s_result(self, n);
}

ssize_t lk_tls_write(lk_tls_t *self, const void *buf, size_t len)
{
    if (len == 0)
        return 0;
    ERR_clear_error();
    errno = 0;
    int n = SSL_write(self->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    return n > 0 ? n : s_result(self, n);
}

bool lk_tls_pending(lk_tls_t *self)
{
    return SSL_pending(self->ssl) > 0;
}

bool lk_tls_handshake_done(lk_tls_t *self)
{
    return SSL_is_init_finished(self->ssl);
}

const char *lk_tls_error(lk_tls_t *self)
{
    return self->error;
}

int lk_tls_peer_cn(lk_tls_t *self, char *out, size_t cap)
{
    X509 *cert = SSL_get0_peer_certificate(self->ssl);
    if (!cert || SSL_get_verify_result(self->ssl) != X509_V_OK)
        return -1;
    X509_NAME *name = X509_get_subject_name(cert);
    int idx = name ? X509_NAME_get_index_by_NID(name, NID_commonName, -1) : -1;
    if (idx < 0)
        return -1;
    ASN1_STRING *data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
    unsigned char *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, data);
    int rc = -1;
    /* a CN with a NUL inside could pass for another name: refuse it */
    if (n > 0 && (size_t)n < cap && !memchr(utf8, 0, (size_t)n)) {
        memcpy(out, utf8, (size_t)n);
        out[n] = 0;
        rc = 0;
    }
    OPENSSL_free(utf8);
    return rc;
}

void lk_tls_describe(lk_tls_t *self, char *out, size_t cap)
{
    snprintf(out, cap, "%s %s", SSL_get_version(self->ssl),
             SSL_get_cipher_name(self->ssl) ? SSL_get_cipher_name(self->ssl) : "-");
}

/* ---- selftest ------------------------------------------------------------------------ */

/* a self-signed certificate for cn (its own CA) and its key, written as PEM files */
static int s_make_cert(const char *cn, long serial, const char *cert_path, const char *key_path)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    int rc = -1;
    if (!key || !x)
        goto done;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
    if (ext) {
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    if (!X509_sign(x, key, EVP_sha256()))
        goto done;
    FILE *f = fopen(cert_path, "w");
    if (!f)
        goto done;
    PEM_write_X509(f, x);
    fclose(f);
    f = fopen(key_path, "w");
    if (!f)
        goto done;
    PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    rc = 0;
done:
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}

/* drives a client SSL and a server lk_tls_t over a socket pair until both handshakes end
   (or fail); returns 0 when the server's handshake succeeded */
static int s_handshake(SSL *client, lk_tls_t *server)
{
    for (int i = 0; i < 200; i++) {
        int c = SSL_do_handshake(client);
        char b[1];
        ssize_t s = lk_tls_read(server, b, sizeof(b));
        if (s == LK_TLS_ERROR || s == LK_TLS_CLOSED)
            return -1;
        if (c == 1 && lk_tls_handshake_done(server))
            return 0;
        if (c <= 0) {
            int e = SSL_get_error(client, c);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                /* the client gave up: let the server read its alert */
                ERR_clear_error();
                for (int j = 0; j < 5; j++) {
                    s = lk_tls_read(server, b, sizeof(b));
                    if (s == LK_TLS_ERROR || s == LK_TLS_CLOSED)
                        return -1;
                }
                return -1;
            }
        }
    }
    return -1;
}

int lk_tls_test(bool verbose)
{
    int fails = 0;
#define S_EXPECT(cond)                                                                             \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("lk_tls: %s:%d: %s\n", __FILE__, __LINE__, #cond);                              \
            fails++;                                                                               \
        }                                                                                          \
    } while (0)
    char dir[] = "/tmp/lk-tls-test.XXXXXX";
    if (!mkdtemp(dir))
        return -1;
    char srv_crt[64], srv_key[64], cli_crt[64], cli_key[64], other_crt[64], other_key[64];
    snprintf(srv_crt, sizeof(srv_crt), "%s/s.crt", dir);
    snprintf(srv_key, sizeof(srv_key), "%s/s.key", dir);
    snprintf(cli_crt, sizeof(cli_crt), "%s/c.crt", dir);
    snprintf(cli_key, sizeof(cli_key), "%s/c.key", dir);
    snprintf(other_crt, sizeof(other_crt), "%s/o.crt", dir);
    snprintf(other_key, sizeof(other_key), "%s/o.key", dir);
    S_EXPECT(s_make_cert("localhost", 0x1234, srv_crt, srv_key) == 0);
    S_EXPECT(s_make_cert("alice", 7, cli_crt, cli_key) == 0);
    S_EXPECT(s_make_cert("mallory", 8, other_crt, other_key) == 0);

    /* bad configurations fail with a log line, not a crash */
    lk_tls_config_t bad = {.certfile = srv_crt, .keyfile = cli_key};
    S_EXPECT(lk_tls_ctx_new(&bad) == NULL);
    bad = (lk_tls_config_t){.certfile = srv_crt, .keyfile = srv_key, .tls_version = "tlsv1.1"};
    S_EXPECT(lk_tls_ctx_new(&bad) == NULL);
    bad = (lk_tls_config_t){.certfile = srv_crt, .keyfile = srv_key, .require_certificate = true};
    S_EXPECT(lk_tls_ctx_new(&bad) == NULL);

    /* the client's certificate is its own CA: the server trusts it as such */
    lk_tls_config_t cfg = {.certfile = srv_crt, .keyfile = srv_key, .cafile = cli_crt,
                           .require_certificate = true};
    lk_tls_ctx_t *ctx = lk_tls_ctx_new(&cfg);
    S_EXPECT(ctx && strcmp(lk_tls_ctx_serial(ctx), "1234") == 0);
    for (int round = 0; ctx && round < 3; round++) {
        /* 0: alice's certificate, 1: none, 2: one from another "CA" */
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) != 0)
            break;
        SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_load_verify_locations(cctx, srv_crt, NULL);
        SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL);
        if (round == 0) {
            SSL_CTX_use_certificate_file(cctx, cli_crt, SSL_FILETYPE_PEM);
            SSL_CTX_use_PrivateKey_file(cctx, cli_key, SSL_FILETYPE_PEM);
        } else if (round == 2) {
            SSL_CTX_use_certificate_file(cctx, other_crt, SSL_FILETYPE_PEM);
            SSL_CTX_use_PrivateKey_file(cctx, other_key, SSL_FILETYPE_PEM);
        }
        SSL *client = SSL_new(cctx);
        SSL_set_fd(client, sv[0]);
        SSL_set_connect_state(client);
        lk_tls_t *server = lk_tls_new(ctx, sv[1]);
        /* the context may go now: the connection holds its own reference */
        if (round == 2)
            lk_tls_ctx_destroy(&ctx);
        int hs = s_handshake(client, server);
        char cn[64] = "";
        if (round == 0) {
            S_EXPECT(hs == 0);
            S_EXPECT(lk_tls_peer_cn(server, cn, sizeof(cn)) == 0 && strcmp(cn, "alice") == 0);
            char desc[64];
            lk_tls_describe(server, desc, sizeof(desc));
            S_EXPECT(strncmp(desc, "TLSv1.3 ", 8) == 0);
            /* data both ways, larger than a record */
            static uint8_t big[70000], got[70000];
            for (size_t i = 0; i < sizeof(big); i++)
                big[i] = (uint8_t)(i * 13);
            size_t sent = 0, recvd = 0;
            for (int i = 0; i < 1000 && recvd < sizeof(big); i++) {
                if (sent < sizeof(big)) {
                    int n = SSL_write(client, big + sent, (int)(sizeof(big) - sent));
                    if (n > 0)
                        sent += (size_t)n;
                }
                ssize_t r = lk_tls_read(server, got + recvd, sizeof(got) - recvd);
                if (r > 0)
                    recvd += (size_t)r;
            }
            S_EXPECT(recvd == sizeof(big) && memcmp(big, got, sizeof(big)) == 0);
            S_EXPECT(lk_tls_write(server, "pong", 4) == 4);
            char back[8] = "";
            int n = 0;
            for (int i = 0; i < 10 && n <= 0; i++)
                n = SSL_read(client, back, sizeof(back));
            S_EXPECT(n == 4 && memcmp(back, "pong", 4) == 0);
            /* a clean close reads as closed */
            SSL_shutdown(client);
            ssize_t r = lk_tls_read(server, got, sizeof(got));
            S_EXPECT(r == LK_TLS_CLOSED);
        } else {
            S_EXPECT(hs != 0);
            S_EXPECT(lk_tls_peer_cn(server, cn, sizeof(cn)) == -1);
            S_EXPECT(*lk_tls_error(server));
            if (verbose)
                printf("  refused (%s): %s\n", round == 1 ? "no certificate" : "other CA",
                       lk_tls_error(server));
        }
        lk_tls_destroy(&server);
        SSL_free(client);
        SSL_CTX_free(cctx);
        close(sv[0]);
        close(sv[1]);
        ERR_clear_error();
    }
    lk_tls_ctx_destroy(&ctx);
    const char *files[] = {srv_crt, srv_key, cli_crt, cli_key, other_crt, other_key};
    for (size_t i = 0; i < LK_ARRAY_LEN(files); i++)
        unlink(files[i]);
    rmdir(dir);
#undef S_EXPECT
    if (verbose)
        printf("lk_tls: %s\n", fails ? "FAIL" : "ok");
    return fails ? -1 : 0;
}
