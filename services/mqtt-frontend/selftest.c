/*  mqtt-frontend-selftest: the selftests of the frontend's modules that run without a
    stack (the rest is covered by tests/integration). `mqtt-frontend-selftest [-v] [name]`
    runs all, or the one named. */
#include "lk_selftest.h"
#include "fe_internal.h"
#include "fe_limits.h"
#include "lk_common.h"

static const lk_selftest_t s_tests[] = {
    {"fe_limits", fe_limits_test}, {"fe_mount", fe_mount_test}, {NULL, NULL}};

int main(int argc, char **argv)
{
    return lk_selftest_main(argc, argv, s_tests, "mqtt-frontend-selftest");
}
