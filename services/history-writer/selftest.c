/*  history-writer-selftest: runs the selftest of every module of the history-writer's
    library, and of lk_pg (the PostgreSQL door it is the first user of).
    `history-writer-selftest [-v] [name]` runs all, or the one named. With
    LATCHKEY_PG_TEST_CONNINFO set (a server where databases may be created), lk_pg and
    hw_store also run their live checks. */
#include "hw_spool.h"
#include "hw_store.h"
#include "lk_pg.h"
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*fn)(bool verbose);
} s_test_t;

static const s_test_t s_tests[] = {
    {"lk_pg", lk_pg_test}, {"hw_spool", hw_spool_test}, {"hw_store", hw_store_test}, {NULL, NULL}};

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
        fflush(stdout);
        if (rc == 0)
            passed++;
        else
            failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
