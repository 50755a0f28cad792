/*  session-store-selftest: runs the selftests of the session store's modules.

    The store's cases need a real Redis: this starts a private redis-server on a free
    port in a temporary directory (no persistence), runs every case against it and stops
    it again. Every wait is bounded. Prints PASS/FAIL lines and a summary; exits non-zero
    when any case failed. `session-store-selftest [-v]` */
#include "lk_common.h"
#include "lk_redis.h"
#include "ss_codec.h"
#include "ss_store.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* a TCP port that was free a moment ago */
static int s_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static pid_t s_redis_start(const char *dir, int port)
{
    char port_s[16];
    snprintf(port_s, sizeof(port_s), "%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        execlp("redis-server", "redis-server", "--port", port_s, "--bind", "127.0.0.1", "--save",
               "", "--appendonly", "no", "--daemonize", "no", "--dir", dir, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* PING until it answers, at most ~5 s */
static bool s_redis_ready(int port, pid_t pid)
{
    lk_redis_t *r = lk_redis_new("127.0.0.1", port);
    bool ok = false;
    for (int i = 0; i < 100 && !ok; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            break; /* it died (port taken, not installed) */
        lk_redis_reply_t *reply = lk_redis_connect(r) == 0 ? lk_redis_cmd(r, "PING") : NULL;
        ok = !lk_redis_reply_failed(reply);
        lk_redis_reply_free(&reply);
        if (!ok)
            usleep(50 * 1000);
    }
    lk_redis_destroy(&r);
    return ok;
}

static void s_redis_stop(pid_t pid)
{
    kill(pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return;
        usleep(50 * 1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

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
    bool up = false;
    if (mkdtemp(dir)) {
        for (int attempt = 0; attempt < 3 && !up; attempt++) {
            port = s_free_port();
            if (port <= 0)
                continue;
            pid = s_redis_start(dir, port);
            up = pid > 0 && s_redis_ready(port, pid);
            if (!up && pid > 0) {
                s_redis_stop(pid);
                pid = -1;
            }
        }
    }
    printf("%s redis-server started\n", up ? "PASS" : "FAIL");
    if (up) {
        passed++;
        ss_store_test("127.0.0.1", port, verbose, &passed, &failed);
        s_redis_stop(pid);
    } else
        failed++;
    rmdir(dir);

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
