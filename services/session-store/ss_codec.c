/*  ss_codec: packs and unpacks the protobuf messages the session store keeps in Redis.
    The only file of the service that calls protobuf-c's pack/unpack/free; see ss_codec.h. */
#include "ss_codec.h"
#include "lk_common.h"
#include <stdio.h>

void ss_buf_reserve(ss_buf_t *buf, size_t n)
{
    if (n <= buf->cap)
        return;
    size_t cap = buf->cap ? buf->cap : 256;
    while (cap < n)
        cap *= 2;
    buf->data = lk_realloc(buf->data, cap);
    buf->cap = cap;
}

void ss_buf_release(ss_buf_t *buf)
{
    free(buf->data);
    buf->data = NULL;
    buf->size = buf->cap = 0;
}

void ss_codec_pack_deliver(const Lk__Deliver *deliver, ss_buf_t *buf)
{
    ss_buf_reserve(buf, lk__deliver__get_packed_size(deliver));
    buf->size = lk__deliver__pack(deliver, buf->data);
}

void ss_codec_pack_msg(const Lk__Msg *msg, ss_buf_t *buf)
{
    ss_buf_reserve(buf, lk__msg__get_packed_size(msg));
    buf->size = lk__msg__pack(msg, buf->data);
}

void ss_codec_pack_subscription(const Lk__Subscription *sub, ss_buf_t *buf)
{
    ss_buf_reserve(buf, lk__subscription__get_packed_size(sub));
    buf->size = lk__subscription__pack(sub, buf->data);
}

Lk__Deliver *ss_codec_unpack_deliver(const void *data, size_t len)
{
    return lk__deliver__unpack(NULL, len, data);
}

Lk__Msg *ss_codec_unpack_msg(const void *data, size_t len)
{
    return lk__msg__unpack(NULL, len, data);
}

Lk__Subscription *ss_codec_unpack_subscription(const void *data, size_t len)
{
    return lk__subscription__unpack(NULL, len, data);
}

void ss_codec_pack_envelope(const Lk__Envelope *env, ss_buf_t *buf)
{
    ss_buf_reserve(buf, lk__envelope__get_packed_size(env));
    buf->size = lk__envelope__pack(env, buf->data);
}

Lk__Envelope *ss_codec_unpack_envelope(const void *data, size_t len)
{
    return lk__envelope__unpack(NULL, len, data);
}

void ss_codec_envelope_free(Lk__Envelope **env_p)
{
    if (*env_p)
        lk__envelope__free_unpacked(*env_p, NULL);
    *env_p = NULL;
}

void ss_codec_deliver_free(Lk__Deliver **deliver_p)
{
    if (*deliver_p)
        lk__deliver__free_unpacked(*deliver_p, NULL);
    *deliver_p = NULL;
}

void ss_codec_msg_free(Lk__Msg **msg_p)
{
    if (*msg_p)
        lk__msg__free_unpacked(*msg_p, NULL);
    *msg_p = NULL;
}

void ss_codec_subscription_free(Lk__Subscription **sub_p)
{
    if (*sub_p)
        lk__subscription__free_unpacked(*sub_p, NULL);
    *sub_p = NULL;
}

//  --------------------------------------------------------------------------
//  Selftest

static void s_check(const char *name, bool ok, int *passed, int *failed)
{
    printf("%s %s\n", ok ? "PASS" : "FAIL", name);
    if (ok)
        (*passed)++;
    else
        (*failed)++;
}

void ss_codec_test(bool verbose, int *passed, int *failed)
{
    ss_buf_t buf = {0};

    Lk__Msg msg = LK__MSG__INIT;
    msg.topic = "a/b";
    msg.payload.data = (uint8_t *)"hello\0world";
    msg.payload.len = 11;
    msg.qos = 1;
    msg.expiry_at_ms = 1234567890123ULL;
    uint32_t sub_ids[] = {3, 7};
    Lk__Deliver d = LK__DELIVER__INIT;
    d.client = "c1";
    d.msg = &msg;
    d.n_sub_ids = 2;
    d.sub_ids = sub_ids;
    d.store_id = 42;
    ss_codec_pack_deliver(&d, &buf);
    Lk__Deliver *back = ss_codec_unpack_deliver(buf.data, buf.size);
    bool ok = back && strcmp(back->client, "c1") == 0 && back->store_id == 42 && back->msg &&
              strcmp(back->msg->topic, "a/b") == 0 && back->msg->payload.len == 11 &&
              memcmp(back->msg->payload.data, "hello\0world", 11) == 0 &&
              back->msg->expiry_at_ms == 1234567890123ULL && back->n_sub_ids == 2 &&
              back->sub_ids[1] == 7;
    ss_codec_deliver_free(&back);
    s_check("codec: deliver round trip", ok && back == NULL, passed, failed);

    ss_codec_pack_msg(&msg, &buf);
    Lk__Msg *m = ss_codec_unpack_msg(buf.data, buf.size);
    ok = m && m->qos == 1 && strcmp(m->topic, "a/b") == 0;
    ss_codec_msg_free(&m);
    s_check("codec: msg round trip", ok, passed, failed);

    Lk__Subscription sub = LK__SUBSCRIPTION__INIT;
    sub.filter = "$share/g/x/#";
    sub.qos = 2;
    sub.no_local = true;
    sub.sub_id = 9;
    ss_codec_pack_subscription(&sub, &buf);
    Lk__Subscription *s = ss_codec_unpack_subscription(buf.data, buf.size);
    ok =
        s && s->qos == 2 && s->no_local && s->sub_id == 9 && strcmp(s->filter, "$share/g/x/#") == 0;
    ss_codec_subscription_free(&s);
    s_check("codec: subscription round trip", ok, passed, failed);

    Lk__StoreBatch batch = LK__STORE_BATCH__INIT;
    Lk__StoreItem item = LK__STORE_ITEM__INIT, *items[] = {&item};
    item.client = "c1";
    item.msg = &msg;
    batch.n_items = 1;
    batch.items = items;
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.from = "router";
    env.epoch = 77;
    env.seq = 5;
    env.body_case = LK__ENVELOPE__BODY_STORE;
    env.store = &batch;
    ss_codec_pack_envelope(&env, &buf);
    Lk__Envelope *e = ss_codec_unpack_envelope(buf.data, buf.size);
    ok = e && e->seq == 5 && e->epoch == 77 && e->body_case == LK__ENVELOPE__BODY_STORE &&
         e->store->n_items == 1 && strcmp(e->store->items[0]->client, "c1") == 0;
    ss_codec_envelope_free(&e);
    s_check("codec: envelope round trip", ok, passed, failed);

    /* a field header announcing more bytes than there are */
    const uint8_t junk[] = {0x0a, 0x7f, 'x'};
    Lk__Deliver *bad = ss_codec_unpack_deliver(junk, sizeof(junk));
    s_check("codec: malformed bytes rejected", bad == NULL, passed, failed);
    ss_codec_deliver_free(&bad);

    if (verbose)
        printf("codec: buffer grew to %zu bytes\n", buf.cap);
    ss_buf_release(&buf);
}
