/*  lock-arbiter-selftest: the selftests of the lock-arbiter's library that need no server
    (the rest runs against a real stack: tests/integration/test_18, test_20 .. test_24).
    `lock-arbiter-selftest [-v] [name]`. */
#include "ar_internal.h"
#include "lk_selftest.h"

static const lk_selftest_t s_tests[] = {{"ar_replica", ar_replica_test}, {NULL, NULL}};

int main(int argc, char **argv)
{
    return lk_selftest_main(argc, argv, s_tests, NULL);
}
