/*  common-selftest: runs the selftest of every module of the common library.
    `common-selftest [-v] [name]` runs all, or the one named. */
#include "lk_selftest.h"
#include "lk_common.h"
#include "lk_acl.h"
#include "lk_admin.h"
#include "lk_jwt.h"
#include "lk_crypto.h"
#include "lk_mqtt.h"
#include "lk_ota.h"
#include "lk_config.h"
#include "lk_loop.h"
#include "lk_msglog.h"
#include "lk_bus.h"
#include "lk_pbjson.h"
#include "lk_proxy.h"
#include "lk_ratelog.h"
#include "lk_tls.h"
#include "lk_ws.h"
#include "lk_http.h"
#include "lk_pgq.h"
#include "lk_zmtp.h"
#include "lk_replicas.h"
#include "lk_redis.h"

static const lk_selftest_t s_tests[] = {
    {"lk_common", lk_common_test},
    {"lk_config", lk_config_test},
    {"lk_loop", lk_loop_test},
    {"lk_msglog", lk_msglog_test},
    {"lk_zmtp", lk_zmtp_test},
    {"lk_bus", lk_bus_test},
    {"lk_pbjson", lk_pbjson_test},
    {"lk_mqtt", lk_mqtt_test},
    {"lk_crypto", lk_crypto_test},
    {"lk_acl", lk_acl_test},
    {"lk_ws", lk_ws_test},
    {"lk_proxy", lk_proxy_test},
    {"lk_tls", lk_tls_test},
    {"lk_admin", lk_admin_test},
    {"lk_jwt", lk_jwt_test},
    {"lk_ota", lk_ota_test},
    {"lk_pgq", lk_pgq_test},
    {"lk_http", lk_http_test},
    {"lk_ratelog", lk_ratelog_test},
    {"lk_replicas", lk_replicas_test},
    {"lk_redis", lk_redis_test},
    {NULL, NULL}};

int main(int argc, char **argv)
{
    return lk_selftest_main(argc, argv, s_tests, NULL);
}
