/*  lk_jwt: checks an OpenID Connect ID token (a JWS in compact form, RFC 7515/7519) against
    a JSON Web Key Set: the signature (RS256 or ES256 only: "none" and HMAC are refused),
    iss, aud (a string or a list), exp, nbf and iat with a leeway, and returns one claim
    (the user). Pure: no I/O and no clock of its own (now is given), so the fuzzer runs it. */
#ifndef LK_JWT_H_INCLUDED
#define LK_JWT_H_INCLUDED

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    const cJSON *jwks;      /* {"keys": [...]} */
    const char *issuer;     /* required iss, or NULL */
    const char *audience;   /* required in aud, or NULL */
    const char *user_claim; /* e.g. "sub" */
    int64_t now_s;
    int leeway_s;
} lk_jwt_check_t;

/* the user claim's value (caller frees) and *exp_s, or NULL with *why (static text).
   *unknown_key is set when no key of the set fits the token's kid/alg: the caller may
   refresh the set and try again. */
char *lk_jwt_verify(const lk_jwt_check_t *c, const char *token, int64_t *exp_s, const char **why,
                    bool *unknown_key);

int lk_jwt_test(bool verbose);

#endif
