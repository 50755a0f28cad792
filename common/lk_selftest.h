/*  lk_selftest: the one runner behind every `*-selftest` binary.
    `<name>-selftest [-v] [test]` runs every test of the table, or the one named, printing
    `PASS x` / `FAIL x` lines and last `N passed, N failed` (tests/run-all reads it).
    Also the helpers of tests that need a real server: a free port, a private redis-server. */
#ifndef LK_SELFTEST_H_INCLUDED
#define LK_SELFTEST_H_INCLUDED

#include <stdbool.h>
#include <sys/types.h>

typedef struct {
    const char *name;
    int (*fn)(bool verbose); /* 0 on success */
} lk_selftest_t;

/* tests ends with {NULL, NULL}. log_name: when not NULL, logging is set up under that name
   at level error (debug with -v), for tests of code that logs. Returns the exit code. */
int lk_selftest_main(int argc, char **argv, const lk_selftest_t *tests, const char *log_name);

/* a TCP port of 127.0.0.1 free a moment ago (with bus: port + 10000 too, a Redis Cluster
   node's bus port), or -1 */
int lk_selftest_port(bool bus);
/* a redis-server on 127.0.0.1:port in the existing folder dir (no persistence, output
   discarded; cluster: cluster-enabled, node timeout 1 s); its pid once it answers PING
   (10 s at most), or -1 (it is then stopped) */
pid_t lk_selftest_redis_start(const char *dir, int port, bool cluster);
/* SIGTERM, then SIGKILL after 5 s; pid <= 0 is ignored */
void lk_selftest_redis_stop(pid_t pid);

#endif
