/*  lk_jwt: ID token checks (see lk_jwt.h); the signature math is lk_crypto's. */
#include "lk_jwt.h"
#include "lk_common.h"
#include "lk_crypto.h"
#include <stdio.h>

#define S_TOKEN_MAX 16000

static const char *s_jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static cJSON *s_b64json(const char *p, size_t n)
{
    uint8_t *buf = lk_malloc(n + 1);
    int len = lk_crypto_b64url_decode(p, n, buf, n + 1);
    cJSON *j = len > 0 ? cJSON_ParseWithLength((const char *)buf, (size_t)len) : NULL;
    free(buf);
    return j;
}

static bool s_aud_ok(const cJSON *aud, const char *want)
{
    if (!want)
        return true;
    if (cJSON_IsString(aud))
        return strcmp(aud->valuestring, want) == 0;
    if (!cJSON_IsArray(aud))
        return false;
    const cJSON *a;
    cJSON_ArrayForEach(a, aud)
    {
        if (cJSON_IsString(a) && strcmp(a->valuestring, want) == 0)
            return true;
    }
    return false;
}

/* 1 valid with a key of the set (kid matched when given), 0 invalid, -1 no key fits */
static int s_verify_sig(const cJSON *jwks, const char *kid, const char *alg, const char *input,
                        size_t input_len, const uint8_t *sig, size_t sig_len)
{
    int tried = 0;
    const cJSON *keys = jwks ? cJSON_GetObjectItem(jwks, "keys") : NULL;
    if (!cJSON_IsArray(keys))
        return -1;
    const cJSON *k;
    cJSON_ArrayForEach(k, keys)
    {
        const char *kk = s_jstr(k, "kid");
        if (kid && (!kk || strcmp(kk, kid) != 0))
            continue;
        const char *kalg = s_jstr(k, "alg");
        if (kalg && strcmp(kalg, alg) != 0)
            continue;
        lk_crypto_jwk_t jwk = {s_jstr(k, "kty"), s_jstr(k, "crv"), s_jstr(k, "n"),
                               s_jstr(k, "e"),   s_jstr(k, "x"),   s_jstr(k, "y")};
        int r = lk_crypto_jws_verify(&jwk, alg, input, input_len, sig, sig_len);
        if (r == 1)
            return 1;
        if (r == 0)
            tried++;
    }
    return tried ? 0 : -1;
}

char *lk_jwt_verify(const lk_jwt_check_t *c, const char *tok, int64_t *exp_s, const char **why,
                    bool *unknown_key)
{
    *unknown_key = false;
    size_t tl = strlen(tok);
    const char *d1 = memchr(tok, '.', tl);
    const char *d2 = d1 ? memchr(d1 + 1, '.', tl - (size_t)(d1 + 1 - tok)) : NULL;
    if (!d1 || !d2 || strchr(d2 + 1, '.') || tl > S_TOKEN_MAX) {
        *why = "not a JWS compact token";
        return NULL;
    }
    cJSON *hdr = s_b64json(tok, (size_t)(d1 - tok));
    cJSON *claims = s_b64json(d1 + 1, (size_t)(d2 - d1 - 1));
    uint8_t sig[1024];
    int sl = lk_crypto_b64url_decode(d2 + 1, strlen(d2 + 1), sig, sizeof(sig));
    char *user = NULL;
    const char *alg = cJSON_IsObject(hdr) ? s_jstr(hdr, "alg") : NULL;
    double now = (double)c->now_s, lw = c->leeway_s;
    if (!cJSON_IsObject(hdr) || !cJSON_IsObject(claims) || sl <= 0) {
        *why = "undecodable token";
    } else if (!alg || (strcmp(alg, "RS256") != 0 && strcmp(alg, "ES256") != 0)) {
        *why = "alg must be RS256 or ES256";
    } else {
        int v = s_verify_sig(c->jwks, s_jstr(hdr, "kid"), alg, tok, (size_t)(d2 - tok), sig,
                             (size_t)sl);
        const cJSON *exp = cJSON_GetObjectItem(claims, "exp");
        const cJSON *nbf = cJSON_GetObjectItem(claims, "nbf");
        const cJSON *iat = cJSON_GetObjectItem(claims, "iat");
        const char *iss = s_jstr(claims, "iss");
        const char *u = s_jstr(claims, c->user_claim ? c->user_claim : "sub");
        if (v != 1) {
            *why = v == 0 ? "bad signature" : "no key of the issuer fits";
            *unknown_key = v < 0;
        } else if (c->issuer && (!iss || strcmp(iss, c->issuer) != 0))
            *why = "wrong issuer";
        else if (!s_aud_ok(cJSON_GetObjectItem(claims, "aud"), c->audience))
            *why = "wrong audience";
        else if (!cJSON_IsNumber(exp) || exp->valuedouble + lw < now)
            *why = "expired";
        else if (cJSON_IsNumber(nbf) && nbf->valuedouble - lw > now)
            *why = "not valid yet";
        else if (cJSON_IsNumber(iat) && iat->valuedouble - lw > now)
            *why = "issued in the future";
        else if (!u || !*u)
            *why = "no user claim";
        else {
            user = lk_strdup(u);
            *exp_s = (int64_t)exp->valuedouble + c->leeway_s;
        }
    }
    cJSON_Delete(hdr);
    cJSON_Delete(claims);
    return user;
}

int lk_jwt_test(bool verbose)
{
    /* the shape checks (the signature path is covered by test_73 against OpenSSL keys) */
    cJSON *jwks = cJSON_Parse("{\"keys\": [{\"kty\": \"RSA\", \"kid\": \"a\", \"n\": \"AQAB\", "
                              "\"e\": \"AQAB\"}]}");
    lk_jwt_check_t c = {jwks, "https://i", "app", "sub", 1000, 30};
    const char *why = NULL;
    bool unk;
    int64_t exp;
    int fails = 0;
    /* {"alg":"none"}.{"sub":"x"}. */
    char *u = lk_jwt_verify(&c, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", &exp, &why, &unk);
    if (u || !why || strcmp(why, "undecodable token") != 0)
        fails++;
    free(u);
    u = lk_jwt_verify(&c, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.AAAA", &exp, &why, &unk);
    if (u || strcmp(why, "alg must be RS256 or ES256") != 0)
        fails++;
    free(u);
    /* {"alg":"RS256","kid":"a"}.{"sub":"x"}.AAAA: the 8-bit key is refused as unusable */
    u = lk_jwt_verify(&c, "eyJhbGciOiJSUzI1NiIsImtpZCI6ImEifQ.eyJzdWIiOiJ4In0.AAAA", &exp, &why,
                      &unk);
    if (u || strcmp(why, "no key of the issuer fits") != 0 || !unk)
        fails++;
    free(u);
    u = lk_jwt_verify(&c, "a.b.c.d", &exp, &why, &unk);
    if (u || strcmp(why, "not a JWS compact token") != 0)
        fails++;
    free(u);
    cJSON_Delete(jwks);
    uint8_t out[8];
    if (lk_crypto_b64url_decode("-_8", 3, out, sizeof(out)) != 2 || out[0] != 0xfb ||
        out[1] != 0xff || lk_crypto_b64url_decode("a", 1, out, sizeof(out)) != -1)
        fails++;
    if (verbose || fails)
        printf("%s lk_jwt\n", fails ? "FAIL" : "PASS");
    return fails ? -1 : 0;
}
