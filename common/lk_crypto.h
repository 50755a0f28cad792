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

/* standard base64 of len bytes (padded); caller frees */
char *lk_crypto_b64_encode(const void *data, size_t len);
/* decodes standard padded base64 into out (capacity cap); returns the byte count, or -1
   when in is not valid base64 or does not fit */
int lk_crypto_b64_decode(const char *in, uint8_t *out, size_t cap);

int lk_crypto_test(bool verbose);

#endif
