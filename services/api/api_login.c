/*  api_login: POST /login, the app login of seed 004 (see README). */
#include "api_internal.h"

int api_login_init(self_t *self)
{
    return 0;
}

void api_login_destroy(self_t *self)
{
}

void api_login(self_t *self, lk_http_req_t *req)
{
    api_error(req, 404, "NOT_FOUND", "app login is not configured");
}

void api_login_reply(self_t *self, lk_peer_t *peer, const Lk__LoginReply *r)
{
}
