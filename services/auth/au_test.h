/*  au_test: the tally the auth selftests share. Every check prints "PASS <name>" or
    "FAIL <name>" on stdout, so a failure names itself; selftest.c prints the totals. */
#ifndef AU_TEST_H_INCLUDED
#define AU_TEST_H_INCLUDED

#include <stdbool.h>
#include <stdio.h>

typedef struct {
    int passed;
    int failed;
    bool verbose;
} au_tally_t;

#define AU_CHECK(tally, name, cond)                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            (tally)->passed++;                                                                     \
            printf("PASS %s\n", (name));                                                           \
        } else {                                                                                   \
            (tally)->failed++;                                                                     \
            printf("FAIL %s (%s:%d: %s)\n", (name), __FILE__, __LINE__, #cond);                    \
        }                                                                                          \
        fflush(stdout);                                                                            \
    } while (0)

#endif
