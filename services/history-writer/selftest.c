/*  history-writer-selftest: runs the selftest of every module of the history-writer's
    library, and of lk_pg (the PostgreSQL door it is the first user of).
    `history-writer-selftest [-v] [name]` runs all, or the one named. With
    LATCHKEY_PG_TEST_CONNINFO set (a server where databases may be created), lk_pg and
    hw_store also run their live checks. */
#include "lk_selftest.h"
#include "hw_spool.h"
#include "hw_store.h"
#include "lk_pg.h"

static const lk_selftest_t s_tests[] = {
    {"lk_pg", lk_pg_test}, {"hw_spool", hw_spool_test}, {"hw_store", hw_store_test}, {NULL, NULL}};

int main(int argc, char **argv)
{
    return lk_selftest_main(argc, argv, s_tests, NULL);
}
