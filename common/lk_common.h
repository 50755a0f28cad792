/*  lk_common: what every Latchkey file includes: the standard headers we always use,
    clocks, and the allocation policy (out of memory aborts: quotas keep us far from it). */
#ifndef LK_COMMON_H_INCLUDED
#define LK_COMMON_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lk_log.h"

#define LK_VERSION "0.1.0"

/* monotonic milliseconds, for timeouts */
int64_t lk_mono_ms(void);
/* wall-clock milliseconds since the epoch, for message expiry and history */
int64_t lk_wall_ms(void);
/* wall-clock nanoseconds since the epoch; a node's epoch */
uint64_t lk_wall_ns(void);

void *lk_malloc(size_t n);
void *lk_calloc(size_t n, size_t size);
void *lk_realloc(void *p, size_t n);
char *lk_strdup(const char *s);
char *lk_strndup(const char *s, size_t n);

#define LK_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Command line every daemon shares: -c config file, -n node id, -r readiness fd. */
typedef struct {
    const char *config_path; /* NULL: defaults and environment only */
    const char *node;        /* default given by the service */
    int ready_fd;            /* -1: no readiness notification */
} lk_args_t;

/* parses argv; prints usage and returns -1 on a bad option */
int lk_args_parse(int argc, char **argv, const char *service, const char *default_node,
                  lk_args_t *args);
/* Reads a whole text file into a NUL-terminated buffer (caller frees; *len, when given,
   is its length). NULL with a log line naming `what` ("ACL file", ...) when it cannot be
   read or holds a NUL byte, which no text format of ours allows. */
char *lk_file_read_text(const char *path, const char *what, size_t *len);

/* template with every "%u" replaced by user (Redis key templates of the auth backends);
   caller frees */
char *lk_str_subst_user(const char *template, const char *user);
/* template with every "%<key>" replaced by value; malloc'ed */
char *lk_str_subst(const char *template, char key, const char *value);

/* s6 readiness: writes a newline to fd and closes it (no-op when fd < 0) */
void lk_ready_notify(int fd);

/* Asks the kernel for a time slice of `us` microseconds for the calling thread (EEVDF,
   Linux 6.12 and later: sched_attr.sched_runtime for SCHED_OTHER, 100 µs to 100 ms).
   A short slice gets a woken thread onto the CPU sooner: each MQTT message wakes three
   of our processes in turn, and on a busy machine each wake-up otherwise waits for the
   running task's default slice (about 3 ms). 0 leaves the kernel's default. Returns 0, or
   -1 with a log line (an older kernel ignores the request silently). */
int lk_sched_slice(int64_t us);

/* exit codes understood by the s6 finish scripts */
#define LK_EXIT_TEMPORARY 111
#define LK_EXIT_CONFIG 100

int lk_common_test(bool verbose);

#endif
