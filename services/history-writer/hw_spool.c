/*  hw_spool: framed, CRC-checked, fdatasync'ed spool file; see hw_spool.h. This file is
    the spool's codec: the only place in the writer that packs and unpacks protobuf. */
#include "hw_spool.h"
#include "lk_common.h"
#include "lk_msglog.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define S_MAGIC 0x31534b4cu /* "LKS1" little-endian */
#define S_HEADER 12
#define S_RECORD_MAX (256u * 1024 * 1024)

struct _hw_spool_t {
    char *path;
    int fd;
    uint64_t max_bytes;
    uint64_t size;     /* bytes of whole, valid records */
    uint64_t read_pos; /* records before it are in PostgreSQL */
    uint64_t read_end; /* end of the records handed out by the last read */
    uint64_t events;   /* events from read_pos on */
    uint64_t read_events;
    uint8_t *buf;
    size_t cap;
};

static void s_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t s_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void s_reserve(hw_spool_t *self, size_t n)
{
    if (n > self->cap) {
        self->cap = n;
        self->buf = lk_realloc(self->buf, n);
    }
}

static int s_pread_full(int fd, uint8_t *buf, size_t n, uint64_t off)
{
    size_t done = 0;
    while (done < n) {
        ssize_t k = pread(fd, buf + done, n - done, (off_t)(off + done));
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        done += (size_t)k;
    }
    return 0;
}

/* the record at off: payload into self->buf; 1 ok, 0 end of file, -1 torn or corrupt */
static int s_record(hw_spool_t *self, uint64_t off, uint64_t end, uint32_t *len)
{
    if (off == end)
        return 0;
    uint8_t h[S_HEADER];
    if (end - off < S_HEADER || s_pread_full(self->fd, h, S_HEADER, off) != 0)
        return -1;
    *len = s_get32(h + 4);
    if (s_get32(h) != S_MAGIC || *len > S_RECORD_MAX || end - off - S_HEADER < *len)
        return -1;
    s_reserve(self, *len ? *len : 1);
    if (s_pread_full(self->fd, self->buf, *len, off + S_HEADER) != 0 ||
        lk_crc32(self->buf, *len) != s_get32(h + 8))
        return -1;
    return 1;
}

static size_t s_count_events(const uint8_t *data, size_t len)
{
    Lk__HistoryBatch *b = lk__history_batch__unpack(NULL, len, data);
    size_t n = b ? b->n_events : 0;
    lk__history_batch__free_unpacked(b, NULL);
    return n;
}

hw_spool_t *hw_spool_open(const char *dir, uint64_t max_bytes)
{
    /* a replica's spool is a sub-folder: its parent first */
    char *parent = lk_strdup(dir), *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = 0;
        if (mkdir(parent, 0750) != 0 && errno != EEXIST)
            lk_warn("spool: cannot create %s: %s", parent, strerror(errno));
    }
    free(parent);
    if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
        lk_error("spool: cannot create %s: %s", dir, strerror(errno));
        return NULL;
    }
    hw_spool_t *self = lk_calloc(1, sizeof(*self));
    size_t n = strlen(dir) + 32;
    self->path = lk_malloc(n);
    snprintf(self->path, n, "%s/history.spool", dir);
    self->max_bytes = max_bytes;
    self->fd = open(self->path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    struct stat st;
    if (self->fd < 0 || fstat(self->fd, &st) != 0) {
        lk_error("spool: cannot open %s: %s", self->path, strerror(errno));
        hw_spool_destroy(&self);
        return NULL;
    }
    /* every whole record counts; a torn tail was never acked: cut it off */
    uint64_t end = (uint64_t)st.st_size, off = 0;
    uint32_t len;
    int rc;
    while ((rc = s_record(self, off, end, &len)) == 1) {
        self->events += s_count_events(self->buf, len);
        off += S_HEADER + len;
    }
    if (rc < 0) {
        lk_warn("spool: %s: torn or corrupt record at byte %" PRIu64 " of %" PRIu64
                ": cut off (it was never acknowledged)",
                self->path, off, end);
        if (ftruncate(self->fd, (off_t)off) != 0 || fdatasync(self->fd) != 0) {
            lk_error("spool: cannot truncate %s: %s", self->path, strerror(errno));
            hw_spool_destroy(&self);
            return NULL;
        }
    }
    self->size = off;
    if (self->size)
        lk_notice("spool: %s holds %" PRIu64 " event(s) (%" PRIu64 " bytes) to write", self->path,
                  self->events, self->size);
    return self;
}

void hw_spool_destroy(hw_spool_t **self_p)
{
    hw_spool_t *self = *self_p;
    if (!self)
        return;
    if (self->fd >= 0)
        close(self->fd);
    free(self->path);
    free(self->buf);
    free(self);
    *self_p = NULL;
}

bool hw_spool_empty(hw_spool_t *self)
{
    return self->read_pos == self->size;
}

uint64_t hw_spool_bytes(hw_spool_t *self)
{
    return self->size;
}

uint64_t hw_spool_events(hw_spool_t *self)
{
    return self->events;
}

const char *hw_spool_path(hw_spool_t *self)
{
    return self->path;
}

int hw_spool_append(hw_spool_t *self, const hw_event_t *events, size_t n)
{
    Lk__HistoryEvent *items = lk_calloc(n ? n : 1, sizeof(*items));
    Lk__HistoryEvent **ptrs = lk_calloc(n ? n : 1, sizeof(*ptrs));
    for (size_t i = 0; i < n; i++) {
        lk__history_event__init(&items[i]);
        items[i].id = events[i].id;
        items[i].kind = events[i].kind;
        items[i].lock = events[i].lock;
        items[i].actor = events[i].actor;
        items[i].details = events[i].details;
        items[i].time_ms = events[i].time_ms;
        ptrs[i] = &items[i];
    }
    Lk__HistoryBatch batch = LK__HISTORY_BATCH__INIT;
    batch.n_events = n;
    batch.events = ptrs;
    size_t len = lk__history_batch__get_packed_size(&batch);
    int rc = 0;
    if (len > S_RECORD_MAX || self->size + S_HEADER + len > self->max_bytes) {
        errno = ENOSPC;
        rc = -1;
    } else {
        s_reserve(self, S_HEADER + len);
        lk__history_batch__pack(&batch, self->buf + S_HEADER);
        s_put32(self->buf, S_MAGIC);
        s_put32(self->buf + 4, (uint32_t)len);
        s_put32(self->buf + 8, lk_crc32(self->buf + S_HEADER, len));
        size_t total = S_HEADER + len, done = 0;
        while (done < total) {
            ssize_t k =
                pwrite(self->fd, self->buf + done, total - done, (off_t)(self->size + done));
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0) {
                rc = -1;
                break;
            }
            done += (size_t)k;
        }
        if (rc == 0 && fdatasync(self->fd) != 0)
            rc = -1;
        if (rc != 0) {
            int e = errno;
            lk_error("spool: cannot append to %s: %s", self->path, strerror(e));
            /* a record that may not be durable must not count: cut it off again */
            if (ftruncate(self->fd, (off_t)self->size) != 0)
                lk_error("spool: cannot truncate %s: %s", self->path, strerror(errno));
            errno = e;
        } else {
            self->size += total;
            self->events += n;
        }
    }
    free(items);
    free(ptrs);
    return rc;
}

/* a record that passed the check at open went bad: keep it for a human, start over */
static void s_set_aside(hw_spool_t *self)
{
    char aside[4200];
    snprintf(aside, sizeof(aside), "%s.corrupt-%ld", self->path, (long)time(NULL));
    lk_error("spool: corrupt record at byte %" PRIu64 " of %s: %" PRIu64
             " event(s) from there on are set aside in %s",
             self->read_pos, self->path, self->events, aside);
    if (link(self->path, aside) != 0)
        lk_error("spool: cannot keep %s: %s", aside, strerror(errno));
    if (ftruncate(self->fd, 0) != 0 || fdatasync(self->fd) != 0)
        lk_error("spool: cannot truncate %s: %s", self->path, strerror(errno));
    self->size = self->read_pos = self->read_end = 0;
    self->events = self->read_events = 0;
}

int64_t hw_spool_read(hw_spool_t *self, size_t max_events, hw_events_t *out)
{
    uint64_t off = self->read_pos;
    size_t got = 0;
    uint32_t len;
    while (got < max_events) {
        int rc = s_record(self, off, self->size, &len);
        if (rc == 0)
            break;
        Lk__HistoryBatch *b = rc == 1 ? lk__history_batch__unpack(NULL, len, self->buf) : NULL;
        if (!b) {
            s_set_aside(self);
            return -1;
        }
        for (size_t i = 0; i < b->n_events; i++)
            hw_events_add(out, b->events[i], "spool:no-id");
        got += b->n_events;
        lk__history_batch__free_unpacked(b, NULL);
        off += S_HEADER + len;
    }
    self->read_end = off;
    self->read_events = got;
    return (int64_t)got;
}

void hw_spool_consume(hw_spool_t *self)
{
    if (self->read_end <= self->read_pos)
        return;
    self->read_pos = self->read_end;
    self->events -= self->read_events < self->events ? self->read_events : self->events;
    self->read_events = 0;
    if (self->read_pos < self->size)
        return;
    /* all in PostgreSQL: start over from an empty file */
    if (ftruncate(self->fd, 0) != 0 || fdatasync(self->fd) != 0) {
        lk_error("spool: cannot truncate %s: %s (its events are written again after a "
                 "restart: harmless)",
                 self->path, strerror(errno));
        return;
    }
    self->size = self->read_pos = self->read_end = 0;
    self->events = 0;
}

//  --------------------------------------------------------------------------
//  Selftest

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "hw_spool: check failed at line %d: %s\n", __LINE__, #cond);           \
            rc = -1;                                                                               \
        }                                                                                          \
    } while (0)

static hw_event_t s_test_event(char *id)
{
    hw_event_t e = {id, "lock_state", "L1", "u", "{\"state\": \"locked\"}", 1700000000000};
    return e;
}

int hw_spool_test(bool verbose)
{
    int rc = 0;
    char dir[128], file[256];
    snprintf(dir, sizeof(dir), "/tmp/hw-spool-test-%d", (int)getpid());
    hw_spool_t *sp = hw_spool_open(dir, 4096);
    S_CHECK(sp && hw_spool_empty(sp) && hw_spool_bytes(sp) == 0);
    if (!sp)
        return -1;
    snprintf(file, sizeof(file), "%s", hw_spool_path(sp));
    char ids[10][8];
    hw_event_t ev[10];
    for (int i = 0; i < 10; i++) {
        snprintf(ids[i], sizeof(ids[i]), "e%d", i);
        ev[i] = s_test_event(ids[i]);
    }
    S_CHECK(hw_spool_append(sp, ev, 3) == 0);
    S_CHECK(hw_spool_append(sp, ev + 3, 4) == 0);
    S_CHECK(!hw_spool_empty(sp) && hw_spool_events(sp) == 7);

    /* read 2 → the whole first record (3); not consumed → read again gives the same */
    hw_events_t out = {0};
    S_CHECK(hw_spool_read(sp, 2, &out) == 3 && strcmp(out.v[0].id, "e0") == 0);
    hw_events_clear(&out);
    S_CHECK(hw_spool_read(sp, 2, &out) == 3);
    hw_spool_consume(sp);
    S_CHECK(hw_spool_events(sp) == 4 && !hw_spool_empty(sp));
    hw_events_clear(&out);

    /* reopened after a "crash": everything again, and a torn tail is cut off */
    uint64_t size = hw_spool_bytes(sp);
    hw_spool_destroy(&sp);
    int fd = open(file, O_WRONLY | O_APPEND);
    S_CHECK(fd >= 0 && write(fd, "LKS1\x20\0\0\0torn", 12) == 12);
    close(fd);
    sp = hw_spool_open(dir, 4096);
    S_CHECK(sp && hw_spool_bytes(sp) == size && hw_spool_events(sp) == 7);
    if (!sp)
        return -1;
    S_CHECK(hw_spool_read(sp, 100, &out) == 7 && strcmp(out.v[6].id, "e6") == 0);
    S_CHECK(strcmp(out.v[6].details, "{\"state\": \"locked\"}") == 0 &&
            out.v[6].time_ms == 1700000000000);
    hw_spool_consume(sp);
    hw_events_clear(&out);
    S_CHECK(hw_spool_empty(sp) && hw_spool_bytes(sp) == 0 && hw_spool_events(sp) == 0);

    /* bounded: appends fail once max_bytes would be passed, nothing half-written */
    int appended = 0;
    while (hw_spool_append(sp, ev, 10) == 0 && appended < 1000)
        appended++;
    S_CHECK(appended > 0 && appended < 1000 && errno == ENOSPC);
    S_CHECK(hw_spool_bytes(sp) <= 4096 && hw_spool_events(sp) == (uint64_t)appended * 10);
    S_CHECK(hw_spool_read(sp, 1000000, &out) == appended * 10);
    hw_spool_consume(sp);
    hw_events_release(&out);
    S_CHECK(hw_spool_empty(sp) && hw_spool_bytes(sp) == 0);
    hw_spool_destroy(&sp);
    unlink(file);
    rmdir(dir);
    if (verbose)
        printf("hw_spool: %d appends fit in 4096 bytes\n", appended);
    return rc;
}
