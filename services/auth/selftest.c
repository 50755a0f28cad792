/*  auth-selftest: the auth service's selftests. Starts a private redis-server on a free
    port in a temporary folder (killed at the end), then runs the password-file, decision
    and bus tests against it. `auth-selftest [-v]`; prints PASS/FAIL per check and the
    totals, and exits non-zero on any failure. */
#include "au_check.h"
#include "au_pwfile.h"
#include "au_server.h"
#include "au_test.h"
#include "lk_common.h"
#include "lk_redis.h"
#include "lk_selftest.h"
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    au_tally_t t = {0};
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "-v") == 0)
            t.verbose = true;
    lk_log_init("auth-selftest", NULL);
    lk_log_set_level(t.verbose ? LK_LOG_DEBUG : LK_LOG_ERROR);

    au_pwfile_test(&t);

    char dir[] = "/tmp/au-selftest-XXXXXX";
    pid_t redis = -1;
    int port = lk_selftest_port(false);
    if (mkdtemp(dir) && port > 0)
        redis = lk_selftest_redis_start(dir, port, false);
    AU_CHECK(&t, "redis-server started", redis > 0);
    if (redis > 0) {
        au_check_test(&t, port);
        au_server_test(&t, port);
        lk_selftest_redis_stop(redis);
    }
    rmdir(dir);

    printf("%d passed, %d failed\n", t.passed, t.failed);
    return t.failed ? 1 : 0;
}
