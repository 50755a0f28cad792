/*  lk_crypto: password hashes in the Mosquitto and EMQX formats, constant-time compare,
    random bytes and tokens. The only file besides lk_tls.c that includes OpenSSL; nothing
    of OpenSSL shows in the header. See lk_crypto.h for the formats. */
#include "lk_crypto.h"
#include "lk_common.h"
#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <unistd.h>

#define S_SALT_LEN 12  /* what mosquitto_passwd uses */
#define S_KEY_LEN 64   /* SHA-512 output, the PBKDF2 key length Mosquitto uses */
#define S_MAX_SALT 256 /* a stored salt longer than this is malformed */
/* A stored hash asking for more iterations than this is treated as malformed: the file or
   Redis hash is operator data, but one bad entry must not stall the auth actor. */
#define S_MAX_ITERATIONS 10000000

int lk_crypto_random(void *buf, size_t len)
{
    if (len > INT32_MAX || RAND_bytes(buf, (int)len) != 1) {
        lk_error("crypto: no random bytes: %s", ERR_error_string(ERR_get_error(), NULL));
        return -1;
    }
    return 0;
}

bool lk_crypto_equal(const void *a, const void *b, size_t len)
{
    return CRYPTO_memcmp(a, b, len) == 0;
}

char *lk_crypto_b64_encode(const void *data, size_t len)
{
    char *out = lk_malloc(4 * ((len + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

static bool s_b64_char(int c)
{
    return isalnum(c) || c == '+' || c == '/';
}

int lk_crypto_b64_decode(const char *in, uint8_t *out, size_t cap)
{
    /* EVP_DecodeBlock skips blanks and does not report padding: check the shape here so
       a malformed stored hash is refused rather than half-read. */
    size_t n = strlen(in);
    if (n == 0 || n % 4 || n / 4 * 3 > cap + 2 || n > INT32_MAX)
        return -1;
    size_t pad = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)in[i];
        if (c == '=') {
            if (i < n - 2)
                return -1;
            pad++;
        } else if (pad || !s_b64_char(c))
            return -1;
    }
    size_t len = n / 4 * 3 - pad;
    if (len > cap)
        return -1;
    uint8_t *tmp = lk_malloc(n / 4 * 3 + 1);
    int r = EVP_DecodeBlock(tmp, (const unsigned char *)in, (int)n);
    if (r < 0 || (size_t)r < len) {
        free(tmp);
        return -1;
    }
    memcpy(out, tmp, len);
    free(tmp);
    return (int)len;
}

char *lk_crypto_token(size_t nbytes)
{
    uint8_t *raw = lk_malloc(nbytes);
    if (lk_crypto_random(raw, nbytes) != 0)
        abort();
    char *s = lk_crypto_b64_encode(raw, nbytes);
    free(raw);
    /* URL-safe alphabet and no padding: the token travels in topics, URLs and JSON */
    size_t w = 0;
    for (size_t i = 0; s[i]; i++) {
        if (s[i] == '=')
            continue;
        s[w++] = s[i] == '+' ? '-' : s[i] == '/' ? '_' : s[i];
    }
    s[w] = 0;
    return s;
}

static int s_pbkdf2(const void *password, size_t len, const uint8_t *salt, size_t salt_len,
                    int iterations, uint8_t *key)
{
    if (len > INT32_MAX)
        return -1;
    /* an empty password is legal; OpenSSL wants a non-NULL pointer for it */
    const char *pw = len ? password : "";
    return PKCS5_PBKDF2_HMAC(pw, (int)len, salt, (int)salt_len, iterations, EVP_sha512(), S_KEY_LEN,
                             key) == 1
               ? 0
               : -1;
}

char *lk_crypto_pw_hash(const void *password, size_t len, int iterations)
{
    if (iterations <= 0)
        iterations = LK_CRYPTO_PBKDF2_ITERATIONS;
    uint8_t salt[S_SALT_LEN], key[S_KEY_LEN];
    if (lk_crypto_random(salt, sizeof(salt)) != 0)
        return NULL;
    if (s_pbkdf2(password, len, salt, sizeof(salt), iterations, key) != 0)
        return NULL;
    char *s64 = lk_crypto_b64_encode(salt, sizeof(salt));
    char *k64 = lk_crypto_b64_encode(key, sizeof(key));
    size_t n = strlen(s64) + strlen(k64) + 32;
    char *out = lk_malloc(n);
    snprintf(out, n, "$7$%d$%s$%s", iterations, s64, k64);
    free(s64);
    free(k64);
    return out;
}

/* splits "a$b" at the first '$' into a NUL-terminated copy of a (into buf) and returns b */
static const char *s_field(const char *s, char *buf, size_t cap)
{
    const char *d = strchr(s, '$');
    if (!d || (size_t)(d - s) >= cap)
        return NULL;
    memcpy(buf, s, (size_t)(d - s));
    buf[d - s] = 0;
    return d + 1;
}

static int s_verify_pbkdf2(const char *rest, const void *password, size_t len)
{
    char it_s[16], salt_s[S_MAX_SALT * 2];
    const char *p = s_field(rest, it_s, sizeof(it_s));
    if (!p || !(p = s_field(p, salt_s, sizeof(salt_s))))
        return -1;
    char *end;
    long it = strtol(it_s, &end, 10);
    if (*end || it < 1 || it > S_MAX_ITERATIONS)
        return -1;
    uint8_t salt[S_MAX_SALT], want[S_KEY_LEN + 4], got[S_KEY_LEN];
    int salt_len = lk_crypto_b64_decode(salt_s, salt, sizeof(salt));
    int want_len = lk_crypto_b64_decode(p, want, sizeof(want));
    if (salt_len < 0 || want_len != S_KEY_LEN)
        return -1;
    if (s_pbkdf2(password, len, salt, (size_t)salt_len, (int)it, got) != 0)
        return -1;
    return lk_crypto_equal(got, want, S_KEY_LEN) ? 1 : 0;
}

static int s_verify_sha512(const char *rest, const void *password, size_t len)
{
    char salt_s[S_MAX_SALT * 2];
    const char *p = s_field(rest, salt_s, sizeof(salt_s));
    if (!p)
        return -1;
    uint8_t salt[S_MAX_SALT], want[SHA512_DIGEST_LENGTH + 4], got[SHA512_DIGEST_LENGTH];
    int salt_len = lk_crypto_b64_decode(salt_s, salt, sizeof(salt));
    int want_len = lk_crypto_b64_decode(p, want, sizeof(want));
    if (salt_len < 0 || want_len != SHA512_DIGEST_LENGTH)
        return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int n = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha512(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, password, len) == 1 &&
             EVP_DigestUpdate(ctx, salt, (size_t)salt_len) == 1 &&
             EVP_DigestFinal_ex(ctx, got, &n) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return -1;
    return lk_crypto_equal(got, want, SHA512_DIGEST_LENGTH) ? 1 : 0;
}

static int s_verify_sha256(const char *stored, const char *salt, const void *password, size_t len)
{
    uint8_t want[SHA256_DIGEST_LENGTH], got[SHA256_DIGEST_LENGTH];
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        unsigned v;
        if (sscanf(stored + 2 * i, "%2x", &v) != 1)
            return -1;
        want[i] = (uint8_t)v;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int n = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, password, len) == 1 &&
             EVP_DigestUpdate(ctx, salt ? salt : "", salt ? strlen(salt) : 0) == 1 &&
             EVP_DigestFinal_ex(ctx, got, &n) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return -1;
    return lk_crypto_equal(got, want, SHA256_DIGEST_LENGTH) ? 1 : 0;
}

static bool s_is_hex64(const char *s)
{
    size_t i = 0;
    for (; s[i]; i++)
        if (!isxdigit((unsigned char)s[i]))
            return false;
    return i == 2 * SHA256_DIGEST_LENGTH;
}

int lk_crypto_pw_verify(const char *stored, const char *salt, const void *password, size_t len)
{
    if (!stored)
        return -1;
    if (strncmp(stored, "$7$", 3) == 0)
        return s_verify_pbkdf2(stored + 3, password, len);
    if (strncmp(stored, "$6$", 3) == 0)
        return s_verify_sha512(stored + 3, password, len);
    if (s_is_hex64(stored))
        return s_verify_sha256(stored, salt, password, len);
    return -1;
}

void lk_crypto_pw_dummy(const void *password, size_t len)
{
    static const uint8_t salt[S_SALT_LEN] = {0};
    uint8_t key[S_KEY_LEN];
    s_pbkdf2(password, len, salt, sizeof(salt), LK_CRYPTO_PBKDF2_ITERATIONS, key);
}

/* --------------------------------------------------------------------------------- */

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "lk_crypto: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);    \
            failed++;                                                                              \
        } else if (verbose)                                                                        \
            fprintf(stderr, "lk_crypto: ok: %s\n", #cond);                                         \
    } while (0)

int lk_crypto_test(bool verbose)
{
    int failed = 0;
    /* produced by `mosquitto_passwd -c -b /tmp/pw user secret` (mosquitto 2.0.11) */
    const char *mosq7 = "$7$101$dyCjTi1tguIj1yjv$jO0ld0b8r+r6XUHy4Q9pyjQSYmhnEhOmxM0TammV0Vzx6"
                        "+h/D9ndisK4TCYVhCq5Vc8oP3uEt7eZCm17QHGUZA==";
    S_CHECK(lk_crypto_pw_verify(mosq7, NULL, "secret", 6) == 1);
    S_CHECK(lk_crypto_pw_verify(mosq7, NULL, "Secret", 6) == 0);
    S_CHECK(lk_crypto_pw_verify(mosq7, NULL, "", 0) == 0);
    /* SHA512(password || salt) as Mosquitto 1.x wrote (computed with Python hashlib) */
    const char *mosq6 = "$6$MDEyMzQ1Njc4OWFi$qEXipeLbgxRlwd06QHfY5WITkUZg0jLg9SZbXzq3ifXjfj+v3G"
                        "bJGrSfC5PAg3UNCS+UFfbhUIZX4bmIAs330w==";
    S_CHECK(lk_crypto_pw_verify(mosq6, NULL, "secret", 6) == 1);
    S_CHECK(lk_crypto_pw_verify(mosq6, NULL, "secret!", 7) == 0);
    /* sha256("secret" + "pepper") and sha256("secret") */
    const char *h256 = "37ed63206cdbaf3f6675549dadf40ba61f411d59ec57ec7c12e439a317d5d39b";
    S_CHECK(lk_crypto_pw_verify(h256, "pepper", "secret", 6) == 1);
    S_CHECK(lk_crypto_pw_verify(h256, NULL, "secret", 6) == 0);
    S_CHECK(lk_crypto_pw_verify("2BB80D537B1DA3E38BD30361AA855686BDE0EACD7162FEF6A25FE97BF527A25B",
                                "", "secret", 6) == 1);
    /* malformed or unknown formats are -1, never a match */
    S_CHECK(lk_crypto_pw_verify("secret", NULL, "secret", 6) == -1);
    S_CHECK(lk_crypto_pw_verify("", NULL, "", 0) == -1);
    S_CHECK(lk_crypto_pw_verify("$7$101$abc", NULL, "secret", 6) == -1);
    S_CHECK(lk_crypto_pw_verify("$7$0$dyCjTi1tguIj1yjv$AAAA", NULL, "x", 1) == -1);
    S_CHECK(lk_crypto_pw_verify("$7$101$dyCj*i1tguIj1yjv$AAAA", NULL, "x", 1) == -1);
    S_CHECK(lk_crypto_pw_verify("$7$999999999999$dyCjTi1tguIj1yjv$AAAA", NULL, "x", 1) == -1);
    S_CHECK(lk_crypto_pw_verify("$6$MDEy$short==", NULL, "x", 1) == -1);
    S_CHECK(lk_crypto_pw_verify(NULL, NULL, "x", 1) == -1);

    /* our own hashes: $7$101$, 16-char salt, verifiable, salted (two differ) */
    char *a = lk_crypto_pw_hash("pa\0ss", 5, 0);
    char *b = lk_crypto_pw_hash("pa\0ss", 5, 0);
    S_CHECK(a && strncmp(a, "$7$101$", 7) == 0 && strlen(a) == 7 + 16 + 1 + 88);
    S_CHECK(a && b && strcmp(a, b) != 0);
    S_CHECK(a && lk_crypto_pw_verify(a, NULL, "pa\0ss", 5) == 1);
    S_CHECK(a && lk_crypto_pw_verify(a, NULL, "pa", 2) == 0);
    free(a);
    free(b);
    char *c = lk_crypto_pw_hash("", 0, 1000);
    S_CHECK(c && strncmp(c, "$7$1000$", 8) == 0 && lk_crypto_pw_verify(c, NULL, "", 0) == 1);
    free(c);
    lk_crypto_pw_dummy("x", 1);

    /* a hash this machine's mosquitto_passwd writes, when it is installed */
    char dir[] = "/tmp/lk-crypto-XXXXXX";
    if (mkdtemp(dir)) {
        char cmd[256], path[128];
        snprintf(path, sizeof(path), "%s/pw", dir);
        snprintf(cmd, sizeof(cmd), "mosquitto_passwd -c -b %s user 's3 cr\"et' >/dev/null 2>&1",
                 path);
        if (system(cmd) == 0) {
            FILE *f = fopen(path, "r");
            char line[512] = "";
            if (f) {
                if (!fgets(line, sizeof(line), f))
                    line[0] = 0;
                fclose(f);
            }
            line[strcspn(line, "\r\n")] = 0;
            const char *h = strchr(line, ':');
            S_CHECK(h && lk_crypto_pw_verify(h + 1, NULL, "s3 cr\"et", 8) == 1);
            S_CHECK(h && lk_crypto_pw_verify(h + 1, NULL, "s3 cr\"e", 7) == 0);
        } else if (verbose)
            fprintf(stderr, "lk_crypto: mosquitto_passwd not available, skipped\n");
        unlink(path);
        rmdir(dir);
    }

    S_CHECK(lk_crypto_equal("abc", "abc", 3) && !lk_crypto_equal("abc", "abd", 3));
    uint8_t r1[32] = {0}, r2[32] = {0};
    S_CHECK(lk_crypto_random(r1, sizeof(r1)) == 0 && lk_crypto_random(r2, sizeof(r2)) == 0);
    S_CHECK(memcmp(r1, r2, sizeof(r1)) != 0);
    char *t = lk_crypto_token(18);
    S_CHECK(strlen(t) == 24 && strspn(t, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                         "0123456789-_") == 24);
    free(t);
    t = lk_crypto_token(16);
    S_CHECK(strlen(t) == 22 && !strchr(t, '='));
    free(t);

    uint8_t out[8];
    S_CHECK(lk_crypto_b64_decode("YWJj", out, sizeof(out)) == 3 && memcmp(out, "abc", 3) == 0);
    S_CHECK(lk_crypto_b64_decode("YQ==", out, sizeof(out)) == 1 && out[0] == 'a');
    S_CHECK(lk_crypto_b64_decode("YQ=a", out, sizeof(out)) == -1);
    S_CHECK(lk_crypto_b64_decode("YWJjZGVmZ2hp", out, sizeof(out)) == -1);
    S_CHECK(lk_crypto_b64_decode("YW Jj", out, sizeof(out)) == -1);
    return failed ? -1 : 0;
}
