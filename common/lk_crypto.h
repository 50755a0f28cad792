/*  lk_crypto: password hashes, constant-time comparison and random bytes (only
    lk_crypto.c includes OpenSSL for these; lk_tls.c owns the TLS side).

    Stored password formats understood by lk_crypto_pw_verify():
      $7$<iterations>$<b64 salt>$<b64 hash>   Mosquitto 2.x: PBKDF2-HMAC-SHA512, 64-byte
                                              key; mosquitto_passwd writes 101 iterations
                                              and a 12-byte salt. This is what we create.
      $6$<b64 salt>$<b64 hash>                Mosquitto 1.x: SHA512(password || salt)
      <64 hex digits>                         EMQX-style SHA256(password || salt), salt given
                                              separately (a Redis `salt` field; may be empty).
                                              Only password-then-salt order is supported.
    The base64 is standard (+ /, padded); salts are the decoded bytes. Passwords are bytes
    (MQTT passwords are binary data), never logged. */
#ifndef LK_CRYPTO_H_INCLUDED
#define LK_CRYPTO_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* the iteration count mosquitto_passwd uses; what lk_crypto_pw_hash() writes */
#define LK_CRYPTO_PBKDF2_ITERATIONS 101

/* fills buf with len cryptographically random bytes; 0 or -1 with a log line */
int lk_crypto_random(void *buf, size_t len);

/* A random token of nbytes of entropy, URL-safe base64 without padding ([A-Za-z0-9_-]),
   usable as a temporary username or password. Caller frees. Aborts when the system has
   no randomness (nothing safe can go on then). */
char *lk_crypto_token(size_t nbytes);

/* constant-time comparison of two equal-length buffers (time depends on len only) */
bool lk_crypto_equal(const void *a, const void *b, size_t len);

/* A new "$7$<iterations>$<salt>$<hash>" string for password (iterations <= 0: the
   default 101). Caller frees. NULL only when randomness fails. */
char *lk_crypto_pw_hash(const void *password, size_t len, int iterations);

/* Checks password against a stored hash in one of the formats above; salt is used only by
   the sha256 format (NULL = empty). Returns 1 on a match, 0 on a mismatch, -1 when stored
   is not a format we know (or is malformed). The comparison of digests is constant-time. */
int lk_crypto_pw_verify(const char *stored, const char *salt, const void *password, size_t len);

/* Burns the time a $7$ verification at the default iteration count takes, for requests
   about unknown users, so that the reply time does not say whether the user exists. */
void lk_crypto_pw_dummy(const void *password, size_t len);

/* SHA-1 of len bytes, for the WebSocket handshake's Sec-WebSocket-Accept (RFC 6455): not
   for anything that needs a secure hash */
void lk_crypto_sha1(const void *data, size_t len, uint8_t out[20]);

/* EMQX 5 password hashing (its Redis authenticator's `password_hash` field, with `salt`):
   plain (the password itself), md5 / sha (SHA-1) / sha256 / sha512 as lowercase hex of
   the digest of salt+password (salt prefix) or password+salt (suffix), bcrypt as a
   crypt(3) string ($2a$ / $2b$ / $2y$, through libxcrypt; the salt field is not used),
   and pbkdf2 as the hex of PBKDF2-HMAC-<mac>(password, salt, iterations, dk_length). */
typedef enum {
    LK_EMQX_PLAIN = 0,
    LK_EMQX_MD5,
    LK_EMQX_SHA,
    LK_EMQX_SHA256,
    LK_EMQX_SHA512,
    LK_EMQX_BCRYPT,
    LK_EMQX_PBKDF2
} lk_emqx_alg_t;

typedef enum { LK_EMQX_SALT_DISABLE = 0, LK_EMQX_SALT_PREFIX, LK_EMQX_SALT_SUFFIX } lk_emqx_salt_t;

typedef struct {
    lk_emqx_alg_t alg;
    lk_emqx_salt_t salt_position;
    char mac[16];   /* pbkdf2: md5 sha sha224 sha256 sha384 sha512 */
    int iterations; /* pbkdf2 */
    int dk_length;  /* pbkdf2 key bytes; 0 = the mac's digest size */
} lk_crypto_emqx_t;

/* spec: "plain", "md5", "sha", "sha256", "sha512", "bcrypt" or
   "pbkdf2 <mac> <iterations> [<dk_length>]"; salt_position "prefix" (EMQX's default),
   "suffix" or "disable". 0, or -1 with a log line. */
int lk_crypto_emqx_parse(lk_crypto_emqx_t *alg, const char *spec, const char *salt_position);
/* 1 on a match, 0 on a mismatch, -1 when stored does not fit the algorithm. The digests
   (or, for plain, the SHA-256 of both sides) are compared in constant time. */
int lk_crypto_emqx_verify(const lk_crypto_emqx_t *alg, const char *stored, const char *salt,
                          const void *password, size_t len);
/* A new stored hash for password, and *salt_out the salt to store beside it (empty for
   plain and bcrypt). Caller frees both. NULL when randomness or the algorithm fails. */
char *lk_crypto_emqx_hash(const lk_crypto_emqx_t *alg, const void *password, size_t len,
                          char **salt_out);

/* standard base64 of len bytes (padded); caller frees */
char *lk_crypto_b64_encode(const void *data, size_t len);
/* decodes standard padded base64 into out (capacity cap); returns the byte count, or -1
   when in is not valid base64 or does not fit */
int lk_crypto_b64_decode(const char *in, uint8_t *out, size_t cap);

/* SHA-256 of len bytes */
void lk_crypto_sha256(const void *data, size_t len, uint8_t out[32]);
/* decodes base64url (RFC 4648 section 5, padding optional) into out (capacity cap): the byte
   count, or -1 */
int lk_crypto_b64url_decode(const char *in, size_t len, uint8_t *out, size_t cap);

/* A JWS signature check with one JSON Web Key (RFC 7517/7518): alg "RS256" (kty RSA, n
   and e) or "ES256" (kty EC, crv P-256, x and y; the signature is r||s, 64 bytes), the
   key's members base64url as in the JWK. 1 valid, 0 invalid, -1 unusable key or alg. */
typedef struct {
    const char *kty, *crv, *n, *e, *x, *y;
} lk_crypto_jwk_t;
int lk_crypto_jws_verify(const lk_crypto_jwk_t *jwk, const char *alg, const void *input,
                         size_t input_len, const uint8_t *sig, size_t sig_len);

int lk_crypto_test(bool verbose);

#endif
