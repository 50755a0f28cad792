/*  router-selftest: runs the selftest of every module of the router's library.
    `router-selftest [-v] [name]` runs all, or the one named; -v adds timings. */
#include "lk_selftest.h"
#include "rt_retain.h"
#include "rt_trie.h"

static const lk_selftest_t s_tests[] = {
    {"rt_trie", rt_trie_test}, {"rt_retain", rt_retain_test}, {NULL, NULL}};

int main(int argc, char **argv)
{
    return lk_selftest_main(argc, argv, s_tests, NULL);
}
