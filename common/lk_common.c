/*  lk_common: clocks, allocation that aborts on exhaustion, the daemons' shared command
    line and s6 readiness. */
#include "lk_common.h"
#include <errno.h>
#include <getopt.h>
#include <sys/syscall.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int64_t lk_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t lk_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t lk_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void s_oom(size_t n)
{
    fprintf(stderr, "out of memory allocating %zu bytes\n", n);
    abort();
}

void *lk_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        s_oom(n);
    return p;
}

void *lk_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        s_oom(n * size);
    return p;
}

void *lk_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        s_oom(n);
    return q;
}

char *lk_strdup(const char *s)
{
    return lk_strndup(s, strlen(s));
}

char *lk_strndup(const char *s, size_t n)
{
    char *d = lk_malloc(n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

int lk_args_parse(int argc, char **argv, const char *service, const char *default_node,
                  lk_args_t *args)
{
    args->config_path = NULL;
    args->node = default_node;
    args->ready_fd = -1;
    int c;
    optind = 1;
    while ((c = getopt(argc, argv, "c:n:r:h")) != -1) {
        switch (c) {
        case 'c':
            args->config_path = optarg;
            break;
        case 'n':
            args->node = optarg;
            break;
        case 'r': {
            char *end;
            long fd = strtol(optarg, &end, 10);
            if (*end || fd < 0 || fd > 1024) {
                fprintf(stderr, "%s: bad readiness fd '%s'\n", service, optarg);
                return -1;
            }
            args->ready_fd = (int)fd;
            break;
        }
        default:
            fprintf(stderr, "usage: %s [-c config] [-n node-id] [-r readiness-fd]\n", service);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "%s: unexpected argument '%s'\n", service, argv[optind]);
        return -1;
    }
    return 0;
}

char *lk_file_read_text(const char *path, const char *what, size_t *len_out)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        lk_error("cannot read %s %s: %s", what, path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0, r;
    char *buf = lk_malloc(cap);
    while ((r = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += r;
        if (cap - len < 2) {
            cap *= 2;
            buf = lk_realloc(buf, cap);
        }
    }
    bool bad = ferror(f) != 0;
    fclose(f);
    buf[len] = 0;
    if (bad || memchr(buf, 0, len)) {
        lk_error("%s: %s", path, bad ? "read error" : "NUL byte in file");
        free(buf);
        return NULL;
    }
    if (len_out)
        *len_out = len;
    return buf;
}

char *lk_str_subst_user(const char *template, const char *user)
{
    return lk_str_subst(template, 'u', user);
}

char *lk_str_subst(const char *template, char key, const char *value)
{
    const char pat[3] = {'%', key, 0};
    size_t n = strlen(template) + 1, ulen = strlen(value);
    for (const char *p = strstr(template, pat); p; p = strstr(p + 2, pat))
        n += ulen;
    char *out = lk_malloc(n), *w = out;
    for (const char *p = template; *p;) {
        if (p[0] == '%' && p[1] == key) {
            memcpy(w, value, ulen);
            w += ulen;
            p += 2;
        } else
            *w++ = *p++;
    }
    *w = 0;
    return out;
}

void lk_ready_notify(int fd)
{
    if (fd < 0)
        return;
    ssize_t n;
    do
        n = write(fd, "\n", 1);
    while (n < 0 && errno == EINTR);
    close(fd);
}

/* struct sched_attr (SCHED_ATTR_SIZE_VER1); glibc has no wrapper for sched_setattr */
typedef struct {
    uint32_t size;
    uint32_t sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime;
    uint64_t sched_deadline;
    uint64_t sched_period;
    uint32_t sched_util_min;
    uint32_t sched_util_max;
} s_sched_attr_t;

int lk_sched_slice(int64_t us)
{
    if (us <= 0)
        return 0;
    if (us < 100 || us > 100000) {
        lk_error("sched_slice_us %" PRId64 ": want 0 (the kernel's default) or 100 to 100000", us);
        return -1;
    }
    s_sched_attr_t attr;
    memset(&attr, 0, sizeof(attr));
    if (syscall(SYS_sched_getattr, 0, &attr, (unsigned)sizeof(attr), 0) != 0) {
        lk_warn("sched_getattr: %s", strerror(errno));
        return -1;
    }
    if (attr.sched_policy != 0) /* SCHED_OTHER only: leave real-time and batch alone */
        return 0;
    /* keep the nice value and the rest: only the slice changes, which needs no privilege */
    attr.size = sizeof(attr);
    attr.sched_flags = 0;
    attr.sched_runtime = (uint64_t)us * 1000;
    if (syscall(SYS_sched_setattr, 0, &attr, 0) != 0) {
        lk_warn("sched_setattr (slice %" PRId64 " us): %s", us, strerror(errno));
        return -1;
    }
    return 0;
}

int lk_common_test(bool verbose)
{
    int64_t a = lk_mono_ms();
    char *s = lk_strndup("abcdef", 3);
    int rc =
        (strcmp(s, "abc") == 0 && lk_mono_ms() >= a && lk_wall_ms() > 1600000000000LL) ? 0 : -1;
    free(s);
    char *k = lk_str_subst_user("mqtt:%u:%u%", "bob");
    if (strcmp(k, "mqtt:bob:bob%") != 0)
        rc = -1;
    free(k);
    k = lk_str_subst("ipc:///run/%n.ipc", 'n', "fe-2");
    if (strcmp(k, "ipc:///run/fe-2.ipc") != 0)
        rc = -1;
    free(k);
    return rc;
}
