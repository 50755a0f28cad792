/*  router-selftest: runs the selftest of every module of the router's library.
    `router-selftest [-v] [name]` runs all, or the one named; -v adds timings. */
#include "rt_retain.h"
#include "rt_trie.h"
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*fn)(bool verbose);
} s_test_t;

static const s_test_t s_tests[] = {
    {"rt_trie", rt_trie_test}, {"rt_retain", rt_retain_test}, {NULL, NULL}};

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
