/*  mqtt-frontend-selftest: the selftests of the frontend's modules that run without a
    stack (the rest is covered by tests/integration). `mqtt-frontend-selftest [-v] [name]`
    runs all, or the one named. */
#include "fe_limits.h"
#include "lk_common.h"
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*fn)(bool verbose);
} s_test_t;

static const s_test_t s_tests[] = {{"fe_limits", fe_limits_test}, {NULL, NULL}};

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
    lk_log_init("mqtt-frontend-selftest", NULL);
    lk_log_set_level(verbose ? LK_LOG_DEBUG : LK_LOG_ERROR);
    int passed = 0, failed = 0;
    for (const s_test_t *t = s_tests; t->name; t++) {
        if (only && strcmp(only, t->name) != 0)
            continue;
        int rc = t->fn(verbose);
        printf("%s %s\n", rc == 0 ? "PASS" : "FAIL", t->name);
        fflush(stdout);
        if (rc == 0)
            passed++;
        else
            failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
