/*  lk_selftest: the shared selftest runner; see lk_selftest.h. */
#include "lk_selftest.h"
#include "lk_common.h"
#include "lk_log.h"
#include "lk_redis.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

int lk_selftest_main(int argc, char **argv, const lk_selftest_t *tests, const char *log_name)
{
    bool verbose = false;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-v") == 0)
            verbose = true;
        else
            only = argv[i];
    }
    if (log_name) {
        lk_log_init(log_name, NULL);
        lk_log_set_level(verbose ? LK_LOG_DEBUG : LK_LOG_ERROR);
    }
    int passed = 0, failed = 0;
    for (const lk_selftest_t *t = tests; t->name; t++) {
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

/* port bound on 127.0.0.1 (0: the kernel's pick); the port, or -1 */
static int s_bind(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int got = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        got = ntohs(sa.sin_port);
    if (fd >= 0)
        close(fd);
    return got;
}

int lk_selftest_port(bool bus)
{
    for (int attempt = 0; attempt < 50; attempt++) {
        int port = s_bind(0);
        if (port > 0 && (!bus || (port + 10000 <= 65535 && s_bind(port + 10000) > 0)))
            return port;
    }
    return -1;
}

pid_t lk_selftest_redis_start(const char *dir, int port, bool cluster)
{
    char port_s[16];
    snprintf(port_s, sizeof(port_s), "%d", port);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        const char *argv[] = {"redis-server",
                              "--port",
                              port_s,
                              "--bind",
                              "127.0.0.1",
                              "--save",
                              "",
                              "--appendonly",
                              "no",
                              "--daemonize",
                              "no",
                              "--dir",
                              dir,
                              "--cluster-enabled",
                              "yes",
                              "--cluster-node-timeout",
                              "1000",
                              "--cluster-require-full-coverage",
                              "no",
                              NULL};
        if (!cluster)
            argv[13] = NULL;
        execvp("redis-server", (char **)argv);
        _exit(127);
    }
    lk_redis_t *r = lk_redis_new("127.0.0.1", port);
    bool up = false, dead = false;
    for (int64_t deadline = lk_mono_ms() + 10000; !up && !dead && lk_mono_ms() < deadline;) {
        /* dead: not installed, or the port was taken meanwhile */
        if ((dead = waitpid(pid, NULL, WNOHANG) == pid))
            break;
        lk_redis_reply_t *x = lk_redis_cmd(r, "PING");
        up = !lk_redis_reply_failed(x);
        lk_redis_reply_free(&x);
        if (!up)
            usleep(50 * 1000);
    }
    lk_redis_destroy(&r);
    if (up)
        return pid;
    if (!dead)
        lk_selftest_redis_stop(pid);
    return -1;
}

void lk_selftest_redis_stop(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return;
        usleep(50 * 1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}
