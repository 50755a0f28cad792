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
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* a TCP port nobody listens on right now (the kernel's pick) */
static int s_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* starts redis-server on port in dir; its pid once it answers PING (5 s at most), or -1 */
static pid_t s_redis_start(const char *dir, int port)
{
    char port_s[16], log[256];
    snprintf(port_s, sizeof(port_s), "%d", port);
    snprintf(log, sizeof(log), "%s/redis.log", dir);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execlp("redis-server", "redis-server", "--port", port_s, "--bind", "127.0.0.1", "--save",
               "", "--appendonly", "no", "--dir", dir, (char *)NULL);
        _exit(127);
    }
    lk_redis_t *rd = lk_redis_new("127.0.0.1", port);
    int64_t deadline = lk_mono_ms() + 5000;
    bool up = false;
    while (!up && lk_mono_ms() < deadline) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            break; /* it died: not installed, or the port was taken meanwhile */
        lk_redis_reply_t *r = lk_redis_cmd(rd, "PING");
        up = !lk_redis_reply_failed(r);
        lk_redis_reply_free(&r);
        if (!up)
            usleep(50 * 1000);
    }
    lk_redis_destroy(&rd);
    if (!up) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

static void s_redis_stop(pid_t pid)
{
    kill(pid, SIGTERM);
    int64_t deadline = lk_mono_ms() + 3000;
    while (lk_mono_ms() < deadline) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return;
        usleep(20 * 1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

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
    int port = s_free_port();
    if (mkdtemp(dir) && port > 0)
        redis = s_redis_start(dir, port);
    AU_CHECK(&t, "redis-server started", redis > 0);
    if (redis > 0) {
        au_check_test(&t, port);
        au_server_test(&t, port);
        s_redis_stop(redis);
    }
    char log[300];
    snprintf(log, sizeof(log), "%s/redis.log", dir);
    unlink(log);
    rmdir(dir);

    printf("%d passed, %d failed\n", t.passed, t.failed);
    return t.failed ? 1 : 0;
}
