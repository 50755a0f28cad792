/*  lk_msglog: the message log — every envelope a service receives, in segment files.

    Record: u32 magic "LKR1", u32 length of what follows the CRC, u32 CRC-32 (IEEE) of it,
    then u64 receive time (wall ns), u16 peer-identity length, the identity, the envelope
    bytes. Little-endian. Segments are <dir>/<node>-<epoch>-<index>.lkm and roll over at
    segment_bytes. A reader stops at the first torn or corrupt record of a segment and
    says so (the tail of a segment cut by a crash is expected). */
#ifndef LK_MSGLOG_H_INCLUDED
#define LK_MSGLOG_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _lk_msglog_t lk_msglog_t;
typedef struct _lk_msglog_reader_t lk_msglog_reader_t;

/* NULL with a log line when dir cannot be created or written */
lk_msglog_t *lk_msglog_open(const char *dir, const char *node, uint64_t epoch,
                            size_t segment_bytes);
void lk_msglog_close(lk_msglog_t **self_p);
int lk_msglog_append(lk_msglog_t *self, const char *peer, const uint8_t *data, size_t len);
/* writes buffered records to the kernel (called at every loop turn end) */
void lk_msglog_flush(lk_msglog_t *self);

typedef struct {
    uint64_t time_ns;
    char peer[256];
    const uint8_t *data;    /* valid until the next call */
    size_t len;
} lk_msglog_record_t;

lk_msglog_reader_t *lk_msglog_reader_open(const char *path);
void lk_msglog_reader_close(lk_msglog_reader_t **self_p);
/* 1 record read, 0 clean end, -1 corrupt or torn record (reading stops) */
int lk_msglog_reader_next(lk_msglog_reader_t *self, lk_msglog_record_t *rec);

uint32_t lk_crc32(const void *data, size_t len);

int lk_msglog_test(bool verbose);

#endif
