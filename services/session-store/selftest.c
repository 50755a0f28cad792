/*  session-store-selftest: runs the selftests of the session store's modules.

    The store's cases need a real Redis: this starts a private redis-server on a free
    port in a temporary directory (no persistence), runs every case against it and stops
    it again. Every wait is bounded. Prints PASS/FAIL lines and a summary; exits non-zero
    when any case failed. `session-store-selftest [-v]` */
#include "lk_common.h"
#include "lk_selftest.h"
#include "ss_codec.h"
#include "ss_store.h"
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    bool verbose = argc > 1 && strcmp(argv[1], "-v") == 0;
    lk_log_init("session-store-selftest", NULL);
    /* the cases provoke failures on purpose; their log lines are noise unless asked */
    lk_log_set_level(verbose ? LK_LOG_DEBUG : LK_LOG_ERROR);
    int passed = 0, failed = 0;

    ss_codec_test(verbose, &passed, &failed);

    char dir[] = "/tmp/ss-selftest-XXXXXX";
    pid_t pid = -1;
    int port = -1;
    /* a port free when chosen may be taken before the server binds it: three tries */
    bool made = mkdtemp(dir) != NULL;
    for (int attempt = 0; made && attempt < 3 && pid < 0; attempt++) {
        port = lk_selftest_port(false);
        pid = port > 0 ? lk_selftest_redis_start(dir, port, false) : -1;
    }
    printf("%s redis-server started\n", pid > 0 ? "PASS" : "FAIL");
    if (pid > 0) {
        passed++;
        ss_store_test("127.0.0.1", port, verbose, &passed, &failed);
        lk_selftest_redis_stop(pid);
    } else
        failed++;
    rmdir(dir);

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
