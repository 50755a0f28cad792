/*  lk_msglog: framed, CRC-checked segment files of received envelopes; see lk_msglog.h. */
#include "lk_msglog.h"
#include "lk_common.h"
#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_MAGIC 0x31524b4cu /* "LKR1" little-endian */

struct _lk_msglog_t {
    char *dir;
    char *node;
    uint64_t epoch;
    size_t segment_bytes;
    int index;
    FILE *f;
    size_t written;
};

struct _lk_msglog_reader_t {
    FILE *f;
    uint8_t *buf;
    size_t cap;
};

static uint32_t s_crc_table[256];

static void s_crc_init(void)
{
    if (s_crc_table[1])
        return;
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        s_crc_table[i] = c;
    }
}

uint32_t lk_crc32(const void *data, size_t len)
{
    s_crc_init();
    const uint8_t *p = data;
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++)
        c = s_crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static int s_roll(lk_msglog_t *self)
{
    if (self->f)
        fclose(self->f);
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s-%" PRIu64 "-%04d.lkm", self->dir, self->node, self->epoch,
             self->index++);
    self->f = fopen(path, "wb");
    self->written = 0;
    if (!self->f) {
        lk_error("message log: cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

lk_msglog_t *lk_msglog_open(const char *dir, const char *node, uint64_t epoch,
                            size_t segment_bytes)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        lk_error("message log: cannot create %s: %s", dir, strerror(errno));
        return NULL;
    }
    lk_msglog_t *self = lk_calloc(1, sizeof(*self));
    self->dir = lk_strdup(dir);
    self->node = lk_strdup(node);
    self->epoch = epoch;
    self->segment_bytes = segment_bytes ? segment_bytes : 64 * 1024 * 1024;
    if (s_roll(self) != 0) {
        lk_msglog_close(&self);
        return NULL;
    }
    return self;
}

void lk_msglog_close(lk_msglog_t **self_p)
{
    lk_msglog_t *self = *self_p;
    if (!self)
        return;
    if (self->f)
        fclose(self->f);
    free(self->dir);
    free(self->node);
    free(self);
    *self_p = NULL;
}

static void s_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t s_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int lk_msglog_append(lk_msglog_t *self, const char *peer, const uint8_t *data, size_t len)
{
    if (!self->f)
        return -1;
    size_t plen = strlen(peer);
    if (plen > 255)
        plen = 255;
    size_t body = 8 + 2 + plen + len;
    uint8_t *rec = lk_malloc(12 + body);
    uint64_t t = lk_wall_ns();
    uint8_t *b = rec + 12;
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(t >> (8 * i));
    b[8] = (uint8_t)plen;
    b[9] = (uint8_t)(plen >> 8);
    memcpy(b + 10, peer, plen);
    memcpy(b + 10 + plen, data, len);
    s_put32(rec, S_MAGIC);
    s_put32(rec + 4, (uint32_t)body);
    s_put32(rec + 8, lk_crc32(b, body));
    size_t w = fwrite(rec, 1, 12 + body, self->f);
    free(rec);
    if (w != 12 + body) {
        lk_warn("message log: write failed: %s", strerror(errno));
        return -1;
    }
    self->written += w;
    if (self->written >= self->segment_bytes)
        return s_roll(self);
    return 0;
}

void lk_msglog_flush(lk_msglog_t *self)
{
    if (self && self->f)
        fflush(self->f);
}

lk_msglog_reader_t *lk_msglog_reader_open(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    lk_msglog_reader_t *self = lk_calloc(1, sizeof(*self));
    self->f = f;
    return self;
}

void lk_msglog_reader_close(lk_msglog_reader_t **self_p)
{
    lk_msglog_reader_t *self = *self_p;
    if (!self)
        return;
    fclose(self->f);
    free(self->buf);
    free(self);
    *self_p = NULL;
}

int lk_msglog_reader_next(lk_msglog_reader_t *self, lk_msglog_record_t *rec)
{
    uint8_t hdr[12];
    size_t n = fread(hdr, 1, sizeof(hdr), self->f);
    if (n == 0)
        return 0;
    if (n != sizeof(hdr) || s_get32(hdr) != S_MAGIC)
        return -1;
    uint32_t body = s_get32(hdr + 4);
    if (body < 10 || body > (1u << 30))
        return -1;
    if (body > self->cap) {
        self->cap = body;
        self->buf = lk_realloc(self->buf, body);
    }
    if (fread(self->buf, 1, body, self->f) != body)
        return -1;
    if (lk_crc32(self->buf, body) != s_get32(hdr + 8))
        return -1;
    const uint8_t *b = self->buf;
    rec->time_ns = 0;
    for (int i = 0; i < 8; i++)
        rec->time_ns |= (uint64_t)b[i] << (8 * i);
    size_t plen = (size_t)b[8] | (size_t)b[9] << 8;
    if (10 + plen > body || plen > 255)
        return -1;
    memcpy(rec->peer, b + 10, plen);
    rec->peer[plen] = 0;
    rec->data = b + 10 + plen;
    rec->len = body - 10 - plen;
    return 1;
}

int lk_msglog_test(bool verbose)
{
    char dir[] = "/tmp/lk-msglog-XXXXXX";
    if (!mkdtemp(dir))
        return -1;
    lk_msglog_t *log = lk_msglog_open(dir, "t", 42, 100);
    if (!log)
        return -1;
    int rc = 0;
    for (int i = 0; i < 5; i++) {
        uint8_t data[40];
        memset(data, i, sizeof(data));
        rc |= lk_msglog_append(log, "fe-1", data, sizeof(data));
    }
    lk_msglog_close(&log);
    /* 5 records of 66 bytes, segments roll past 100 bytes: 3 files (2+2+1) */
    int total = 0;
    for (int seg = 0; seg < 3; seg++) {
        char path[256];
        snprintf(path, sizeof(path), "%s/t-42-%04d.lkm", dir, seg);
        lk_msglog_reader_t *r = lk_msglog_reader_open(path);
        if (!r)
            return -1;
        lk_msglog_record_t rec;
        int k;
        while ((k = lk_msglog_reader_next(r, &rec)) == 1) {
            if (strcmp(rec.peer, "fe-1") != 0 || rec.len != 40 || rec.data[0] != total)
                rc = -1;
            total++;
        }
        if (k != 0)
            rc = -1;
        lk_msglog_reader_close(&r);
        if (seg == 0) {
            /* a torn tail is detected, not misread */
            FILE *f = fopen(path, "ab");
            fwrite("LKR1\x50\0\0\0", 1, 8, f);
            fclose(f);
            r = lk_msglog_reader_open(path);
            int got = 0;
            while ((k = lk_msglog_reader_next(r, &rec)) == 1)
                got++;
            if (got != 2 || k != -1)
                rc = -1;
            lk_msglog_reader_close(&r);
        }
        unlink(path);
    }
    rmdir(dir);
    if (total != 5)
        rc = -1;
    if (lk_crc32("123456789", 9) != 0xCBF43926u)
        rc = -1;
    if (verbose)
        printf("lk_msglog: %d records\n", total);
    return rc;
}
