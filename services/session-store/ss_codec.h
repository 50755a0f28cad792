/*  ss_codec: the session store's one door to protobuf-c's pack and unpack.

    Redis holds lk.Deliver (queued messages), lk.Msg (retained messages) and
    lk.Subscription (a session's subscriptions) as packed protobuf. Everything else in the
    service handles the generated structs only; this file turns them into bytes and back.

    Packing writes into a caller-owned ss_buf_t that is reused from call to call, so the
    store path does not allocate per item. Unpacked objects belong to the caller, who frees
    them with the matching ss_codec_*_free (never with free()). Unpacking bytes from Redis
    may fail (foreign or corrupt data): the result is then NULL. */
#ifndef SS_CODEC_H_INCLUDED
#define SS_CODEC_H_INCLUDED

#include "latchkey.pb-c.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* a growable byte buffer; zero-initialise, release with ss_buf_release */
typedef struct {
    uint8_t *data;
    size_t size;
    size_t cap;
} ss_buf_t;

/* makes room for n bytes (contents are not kept) */
void ss_buf_reserve(ss_buf_t *buf, size_t n);
void ss_buf_release(ss_buf_t *buf);

/* pack into buf (replacing its contents); buf->size is the packed length */
void ss_codec_pack_deliver(const Lk__Deliver *deliver, ss_buf_t *buf);
void ss_codec_pack_msg(const Lk__Msg *msg, ss_buf_t *buf);
void ss_codec_pack_subscription(const Lk__Subscription *sub, ss_buf_t *buf);

/* NULL when the bytes are not a valid message; caller owns the result */
Lk__Deliver *ss_codec_unpack_deliver(const void *data, size_t len);
Lk__Msg *ss_codec_unpack_msg(const void *data, size_t len);
Lk__Subscription *ss_codec_unpack_subscription(const void *data, size_t len);

/* a received envelope kept for a later retry: packed again, unpacked when retried */
void ss_codec_pack_envelope(const Lk__Envelope *env, ss_buf_t *buf);
Lk__Envelope *ss_codec_unpack_envelope(const void *data, size_t len);
void ss_codec_envelope_free(Lk__Envelope **env_p);

void ss_codec_deliver_free(Lk__Deliver **deliver_p);
void ss_codec_msg_free(Lk__Msg **msg_p);
void ss_codec_subscription_free(Lk__Subscription **sub_p);

/* runs the codec's selftest cases, printing PASS/FAIL lines; adds to the counters */
void ss_codec_test(bool verbose, int *passed, int *failed);

#endif
