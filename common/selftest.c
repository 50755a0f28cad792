/*  common-selftest: runs the selftest of every module of the common library.
    `common-selftest [-v] [name]` runs all, or the one named. */
#include "lk_common.h"
#include "lk_acl.h"
#include "lk_crypto.h"
#include "lk_mqtt.h"
#include "lk_config.h"
#include "lk_loop.h"
#include "lk_msglog.h"
#include "lk_bus.h"
#include "lk_pbjson.h"
#include "lk_proxy.h"
#include "lk_tls.h"
#include "lk_ws.h"
#include <stdio.h>
#include <czmq.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*fn)(bool verbose);
} s_test_t;

static const s_test_t s_tests[] = {
    {"lk_common", lk_common_test},
    {"lk_config", lk_config_test},
    {"lk_loop", lk_loop_test},
    {"lk_msglog", lk_msglog_test},
    {"lk_bus", lk_bus_test},
    {"lk_pbjson", lk_pbjson_test},
    {"lk_mqtt", lk_mqtt_test},
    {"lk_crypto", lk_crypto_test},
    {"lk_acl", lk_acl_test},
    {"lk_ws", lk_ws_test},
    {"lk_proxy", lk_proxy_test},
    {"lk_tls", lk_tls_test},
    {NULL, NULL}};

int main(int argc, char **argv)
{
    bool verbose = false;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-v") == 0)
            verbose = true;
        else
            only = argv[i];
    }
    int passed = 0, failed = 0;
    for (const s_test_t *t = s_tests; t->name; t++) {
        if (only && strcmp(only, t->name) != 0)
            continue;
        int rc = t->fn(verbose);
        printf("%s %s\n", rc == 0 ? "PASS" : "FAIL", t->name);
        if (rc == 0)
            passed++;
        else
            failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
