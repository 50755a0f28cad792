/*  lk_selftest: the shared selftest runner; see lk_selftest.h. */
#include "lk_selftest.h"
#include "lk_log.h"
#include <stdio.h>
#include <string.h>

int lk_selftest_main(int argc, char **argv, const lk_selftest_t *tests, const char *log_name)
{
    bool verbose = false;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-v") == 0)
            verbose = true;
        else
            only = argv[i];
    }
    if (log_name) {
        lk_log_init(log_name, NULL);
        lk_log_set_level(verbose ? LK_LOG_DEBUG : LK_LOG_ERROR);
    }
    int passed = 0, failed = 0;
    for (const lk_selftest_t *t = tests; t->name; t++) {
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
