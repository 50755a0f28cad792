/*  lk_ota: see lk_ota.h. */
#include "lk_ota.h"
#include "lk_common.h"
#include "lk_crypto.h"
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static void s_hex(const uint8_t *b, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[b[i] >> 4];
        out[2 * i + 1] = d[b[i] & 15];
    }
    out[2 * n] = 0;
}

bool lk_ota_sha_hex_ok(const char *s)
{
    if (!s || strlen(s) != 64)
        return false;
    for (int i = 0; i < 64; i++)
        if (!isxdigit((unsigned char)s[i]) || isupper((unsigned char)s[i]))
            return false;
    return true;
}

char *lk_ota_image_path(const char *dir, const char *sha_hex)
{
    size_t n = strlen(dir) + strlen(sha_hex) + 8;
    char *p = lk_malloc(n);
    snprintf(p, n, "%s/%.2s/%s", dir, sha_hex, sha_hex);
    return p;
}

int lk_ota_file_sha256(const char *path, char hex[65], uint64_t *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    uint8_t buf[65536];
    uint64_t total = 0;
    ssize_t r;
    while ((r = read(fd, buf, sizeof(buf))) != 0) {
        if (r < 0) {
            if (errno == EINTR)
                continue;
            close(fd);
            EVP_MD_CTX_free(ctx);
            return -1;
        }
        EVP_DigestUpdate(ctx, buf, (size_t)r);
        total += (uint64_t)r;
    }
    close(fd);
    uint8_t md[32];
    unsigned int mdlen = 0;
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    s_hex(md, 32, hex);
    if (size)
        *size = total;
    return 0;
}

int lk_ota_hex_decode(const char *hex, uint8_t out[32])
{
    if (!lk_ota_sha_hex_ok(hex))
        return -1;
    for (int i = 0; i < 32; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (uint8_t)v;
    }
    return 0;
}

int lk_ota_keygen(const char *dir)
{
    EVP_PKEY *key = NULL;
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    if (!pc || EVP_PKEY_keygen_init(pc) <= 0 || EVP_PKEY_keygen(pc, &key) <= 0) {
        fprintf(stderr, "latchkey: Ed25519 key generation failed\n");
        EVP_PKEY_CTX_free(pc);
        return -1;
    }
    EVP_PKEY_CTX_free(pc);
    char path[4096];
    int rc = -1;
    mkdir(dir, 0700);
    snprintf(path, sizeof(path), "%s/ota.key", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        fprintf(stderr, "latchkey: cannot create %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        goto out;
    }
    bool ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) == 1;
    ok = fclose(f) == 0 && ok;
    snprintf(path, sizeof(path), "%s/ota.pub", dir);
    f = ok ? fopen(path, "w") : NULL;
    if (!f || PEM_write_PUBKEY(f, key) != 1) {
        fprintf(stderr, "latchkey: cannot write %s\n", path);
        if (f)
            fclose(f);
        goto out;
    }
    rc = fclose(f) == 0 ? 0 : -1;
out:
    EVP_PKEY_free(key);
    return rc;
}

static void s_key_id(EVP_PKEY *key, char out[17])
{
    uint8_t raw[32], md[32];
    size_t n = sizeof(raw);
    char hex[65];
    if (EVP_PKEY_get_raw_public_key(key, raw, &n) != 1) {
        strcpy(out, "?");
        return;
    }
    lk_crypto_sha256(raw, n, md);
    s_hex(md, 32, hex);
    memcpy(out, hex, 16);
    out[16] = 0;
}

char *lk_ota_sign(const char *key_path, const uint8_t digest[32], char key_id[17])
{
    FILE *f = fopen(key_path, "r");
    if (!f) {
        fprintf(stderr, "latchkey: cannot read %s: %s\n", key_path, strerror(errno));
        return NULL;
    }
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!key || EVP_PKEY_id(key) != EVP_PKEY_ED25519) {
        fprintf(stderr, "latchkey: %s is not an Ed25519 private key\n", key_path);
        EVP_PKEY_free(key);
        return NULL;
    }
    uint8_t sig[64];
    size_t siglen = sizeof(sig);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = EVP_DigestSignInit(ctx, NULL, NULL, NULL, key) == 1 &&
              EVP_DigestSign(ctx, sig, &siglen, digest, 32) == 1;
    EVP_MD_CTX_free(ctx);
    s_key_id(key, key_id);
    EVP_PKEY_free(key);
    if (!ok) {
        fprintf(stderr, "latchkey: signing failed\n");
        return NULL;
    }
    return lk_crypto_b64_encode(sig, siglen);
}

int lk_ota_verify(const char *pub_path, const uint8_t digest[32], const char *sig_b64)
{
    FILE *f = fopen(pub_path, "r");
    if (!f)
        return -1;
    EVP_PKEY *key = PEM_read_PUBKEY(f, NULL, NULL, NULL);
    fclose(f);
    uint8_t sig[128];
    int n = sig_b64 ? lk_crypto_b64_decode(sig_b64, sig, sizeof(sig)) : -1;
    if (!key || n != 64) {
        EVP_PKEY_free(key);
        return -1;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int rc = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1 &&
             EVP_DigestVerify(ctx, sig, 64, digest, 32) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(key);
    return rc;
}

int lk_ota_version_cmp(const char *a, const char *b)
{
    a = a ? a : "";
    b = b ? b : "";
    if (*a == 'v' && isdigit((unsigned char)a[1]))
        a++;
    if (*b == 'v' && isdigit((unsigned char)b[1]))
        b++;
    while (*a && *b) {
        if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
            while (*a == '0' && isdigit((unsigned char)a[1]))
                a++;
            while (*b == '0' && isdigit((unsigned char)b[1]))
                b++;
            size_t na = strspn(a, "0123456789"), nb = strspn(b, "0123456789");
            if (na != nb)
                return na < nb ? -1 : 1;
            int c = strncmp(a, b, na);
            if (c)
                return c < 0 ? -1 : 1;
            a += na;
            b += nb;
        } else {
            if (*a != *b)
                return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
            a++;
            b++;
        }
    }
    return *a ? 1 : *b ? -1 : 0;
}

void lk_ota_url_mac(const char *secret, const char *sha, const char *device, int64_t expires,
                    char out[65])
{
    char msg[512];
    int n = snprintf(msg, sizeof(msg), "%s:%s:%" PRId64, sha, device, expires);
    uint8_t md[32];
    unsigned int mdlen = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const uint8_t *)msg,
         (size_t)(n < (int)sizeof(msg) ? n : (int)sizeof(msg) - 1), md, &mdlen);
    s_hex(md, 32, out);
}

static bool s_digits(const char *s, size_t n)
{
    if (n == 0 || n > 18)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

int lk_ota_tb_chunk_parse(const char *rest, const void *payload, size_t len, char reqid[24],
                          uint64_t *chunk, uint64_t *size, bool *has_size)
{
    static const char pre[] = "v2/fw/request/";
    if (strncmp(rest, pre, sizeof(pre) - 1) != 0)
        return -1;
    const char *req = rest + sizeof(pre) - 1, *slash = strchr(req, '/');
    const char *idx = slash && strncmp(slash, "/chunk/", 7) == 0 ? slash + 7 : NULL;
    if (!idx || !s_digits(req, (size_t)(slash - req)) || !s_digits(idx, strlen(idx)))
        return -1;
    memcpy(reqid, req, (size_t)(slash - req));
    reqid[slash - req] = 0;
    *chunk = strtoull(idx, NULL, 10);
    const char *p = payload;
    while (len && isspace((unsigned char)p[len - 1]))
        len--;
    *has_size = len > 0;
    *size = 0;
    if (!len)
        return 0;
    if (!s_digits(p, len))
        return -2;
    char num[24];
    memcpy(num, p, len); /* the payload has no NUL */
    num[len] = 0;
    *size = strtoull(num, NULL, 10);
    return 0;
}

int lk_ota_test(bool verbose)
{
    int fails = 0;
#define S_T(c)                                                                                     \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fails++;                                                                               \
            printf("  FAIL lk_ota: %s\n", #c);                                                     \
        } else if (verbose)                                                                        \
            printf("  ok   lk_ota: %s\n", #c);                                                     \
    } while (0)
    S_T(lk_ota_version_cmp("1.9", "1.10") < 0);
    S_T(lk_ota_version_cmp("1.10", "1.9") > 0);
    S_T(lk_ota_version_cmp("v2.0.0", "2.0.0") == 0);
    S_T(lk_ota_version_cmp("1.0", "1.0.1") < 0);
    S_T(lk_ota_version_cmp("1.01", "1.1") == 0);
    S_T(lk_ota_sha_hex_ok("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    S_T(!lk_ota_sha_hex_ok("E3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    S_T(!lk_ota_sha_hex_ok("../etc/passwd"));
    char dir[] = "/tmp/lk-ota-test-XXXXXX";
    if (mkdtemp(dir)) {
        char kp[128], pp[128], key_id[17];
        snprintf(kp, sizeof(kp), "%s/ota.key", dir);
        snprintf(pp, sizeof(pp), "%s/ota.pub", dir);
        uint8_t d[32] = {1, 2, 3};
        S_T(lk_ota_keygen(dir) == 0);
        char *sig = lk_ota_sign(kp, d, key_id);
        S_T(sig != NULL);
        S_T(lk_ota_verify(pp, d, sig) == 1);
        d[0] ^= 1;
        S_T(lk_ota_verify(pp, d, sig) == 0);
        free(sig);
        unlink(kp);
        unlink(pp);
        rmdir(dir);
    }
    char rid[24];
    uint64_t chunk = 0, size = 0;
    bool has = false;
    S_T(lk_ota_tb_chunk_parse("v2/fw/request/12/chunk/3", "1024", 4, rid, &chunk, &size, &has) ==
            0 &&
        strcmp(rid, "12") == 0 && chunk == 3 && size == 1024 && has);
    S_T(lk_ota_tb_chunk_parse("v2/fw/request/12/chunk/3", "", 0, rid, &chunk, &size, &has) == 0 &&
        !has);
    S_T(lk_ota_tb_chunk_parse("v2/fw/request/1x/chunk/3", "1", 1, rid, &chunk, &size, &has) == -1);
    S_T(lk_ota_tb_chunk_parse("v2/fw/request/1/chunk/", "1", 1, rid, &chunk, &size, &has) == -1);
    S_T(lk_ota_tb_chunk_parse("v2/fw/request/1/chunk/0", "12a", 3, rid, &chunk, &size, &has) == -2);
    S_T(lk_ota_tb_chunk_parse("v2/fw/request/1/chunk/0", "1234567890123456789", 19, rid, &chunk,
                              &size, &has) == -2);
    char m1[65], m2[65];
    lk_ota_url_mac("s", "abc", "dev", 10, m1);
    lk_ota_url_mac("s", "abc", "dev", 11, m2);
    S_T(strlen(m1) == 64 && strcmp(m1, m2) != 0);
    return fails;
}
