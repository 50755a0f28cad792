/*  lk_selftest: the one runner behind every `*-selftest` binary.
    `<name>-selftest [-v] [test]` runs every test of the table, or the one named, printing
    `PASS x` / `FAIL x` lines and last `N passed, N failed` (tests/run-all reads it). */
#ifndef LK_SELFTEST_H_INCLUDED
#define LK_SELFTEST_H_INCLUDED

#include <stdbool.h>

typedef struct {
    const char *name;
    int (*fn)(bool verbose);    /* 0 on success */
} lk_selftest_t;

/* tests ends with {NULL, NULL}. log_name: when not NULL, logging is set up under that name
   at level error (debug with -v), for tests of code that logs. Returns the exit code. */
int lk_selftest_main(int argc, char **argv, const lk_selftest_t *tests, const char *log_name);

#endif
