/*  fuzz_jwt: libFuzzer target for the ID token checks of the api's app login
    (common/lk_jwt.c, common/lk_crypto.c's base64url and JWS verification).

    The input is the token. Against a fixed key set (a real RSA 2048 and EC P-256 public
    key), nothing may crash or leak, and no token may be accepted: the fuzzer does not
    hold the private keys, so an accepted token means a broken check. */
#include "lk_common.h"
#include "lk_jwt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *s_jwks =
    "{\"keys\": [{\"kty\": \"RSA\", \"kid\": \"r1\", \"n\": \"xtOejfqZJtTxn-GQw61OYlgJvVFFFWAKFjYE"
    "7IlwC2FwtoWsUof1G3Xx4nLp2kwkSq5-4EjNotn_SCL5gWSYJQbT5_siuMCH-F2EqLjkuRJRKrLAgJN5"
    "ASWPNTEHR8N2mCREOTMyCw0ODiUPrsryzIvGvuNS0-0dlieak_fHu7t7u8I3YCyrU9G6wfNmTA-Q_fiR"
    "1pIuQdXJZLPI8mPtZqmQR37OPJTzZARcbrOxKaFeP42RYpkksz4ADS4K31qSi0TPS-KhfBU2tGlA3are"
    "vNq0K5JlB8dnIptR8MbyXS6sUWGOTbyBHUbKFjmcAgi7UVlNmiAN9VNgt3AqsYlZqQ\", \"e\": \"AQAB\""
    "}, {\"kty\": \"EC\", \"kid\": \"e1\", \"crv\": \"P-256\", \"x\": "
    "\"J7QilaYLOpIgMGnLmt6Qnkw2492n"
    "QGkiDOdc6bNQurk\", \"y\": \"BGVy4tzQYlTboQA4GHG44Glorxcx2axqnHZKUou4y3Y\"}]}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static cJSON *jwks;
    if (!jwks)
        jwks = cJSON_Parse(s_jwks);
    char *tok = malloc(size + 1);
    memcpy(tok, data, size);
    tok[size] = 0;
    lk_jwt_check_t c = {jwks, "https://issuer", "app", "sub", 1700000000, 30};
    int64_t exp = 0;
    const char *why = NULL;
    bool unknown = false;
    char *user = lk_jwt_verify(&c, tok, &exp, &why, &unknown);
    if (user || !why) {
        fprintf(stderr, "fuzz_jwt: a token was accepted without the private key\n");
        abort();
    }
    free(tok);
    return 0;
}
