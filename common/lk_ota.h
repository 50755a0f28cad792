/*  lk_ota: what the `latchkey ota` CLI and ota-distributor share about firmware images:
    where an image lives under ota_dir (content-addressed by SHA-256), its digest, the
    Ed25519 signature of the digest (OpenSSL EVP), version order, and the HMAC of the
    expiring download URLs. */
#ifndef LK_OTA_H_INCLUDED
#define LK_OTA_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* <dir>/<sha[0:2]>/<sha>; caller frees */
char *lk_ota_image_path(const char *dir, const char *sha_hex);
/* SHA-256 of a file as 64 lower-case hex characters (+ NUL) and its size; 0 or -1 */
int lk_ota_file_sha256(const char *path, char hex[65], uint64_t *size);
/* hex (64 chars) to 32 bytes; 0 or -1 */
int lk_ota_hex_decode(const char *hex, uint8_t out[32]);
bool lk_ota_sha_hex_ok(const char *s);

/* writes an Ed25519 key pair as PEM: <dir>/ota.key (0600) and <dir>/ota.pub; 0 or -1
   (printed on stderr) */
int lk_ota_keygen(const char *dir);
/* base64 signature of the 32 digest bytes with the private key in key_path (PEM), and the
   key id (first 16 hex of the SHA-256 of the raw public key). NULL after stderr. */
char *lk_ota_sign(const char *key_path, const uint8_t digest[32], char key_id[17]);
/* 1 good, 0 bad, -1 unusable key or signature */
int lk_ota_verify(const char *pub_path, const uint8_t digest[32], const char *sig_b64);

/* version order: numeric runs compare as numbers ("1.10" > "1.9"); <0, 0, >0 */
int lk_ota_version_cmp(const char *a, const char *b);

/* hex HMAC-SHA256(secret, "<sha>:<device>:<expires>") into out (65 bytes) */
void lk_ota_url_mac(const char *secret, const char *sha, const char *device, int64_t expires,
                    char out[65]);

/* ThingsBoard's chunk request: rest = "v2/fw/request/<requestId>/chunk/<n>" (decimal ids,
   at most 18 digits), payload the chunk size in ASCII decimal (blanks after it allowed),
   possibly empty. 0: reqid copied, *chunk set, *size set and *has_size true unless the
   payload is empty; -1 a malformed topic; -2 a payload that is not a number. */
int lk_ota_tb_chunk_parse(const char *rest, const void *payload, size_t len, char reqid[24],
                          uint64_t *chunk, uint64_t *size, bool *has_size);

int lk_ota_test(bool verbose);

#endif
