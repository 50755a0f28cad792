/*  lk_admin: the AdminReply builder (see lk_admin.h). Items live in arrays that grow by
    doubling; every string and item is one allocation recorded in `owned`, freed with the
    reply. */
#include "lk_admin.h"
#include "lk_common.h"
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

struct _lk_admin_out_t {
    Lk__AdminReply reply;
    Lk__AdminNode node;
    void **owned;
    size_t n_owned, cap_owned;
    size_t cap_rows, cap_clients, cap_subs, cap_metrics, cap_bans, cap_retained, cap_retained_at,
        cap_peers;
};

static void *s_own(lk_admin_out_t *self, void *p)
{
    if (self->n_owned == self->cap_owned) {
        self->cap_owned = self->cap_owned ? self->cap_owned * 2 : 32;
        self->owned = lk_realloc(self->owned, self->cap_owned * sizeof(void *));
    }
    self->owned[self->n_owned++] = p;
    return p;
}

lk_admin_out_t *lk_admin_out_new(uint64_t req)
{
    lk_admin_out_t *self = lk_calloc(1, sizeof(*self));
    lk__admin_reply__init(&self->reply);
    lk__admin_node__init(&self->node);
    self->reply.req = req;
    self->reply.ok = true;
    return self;
}

void lk_admin_out_free(lk_admin_out_t **self_p)
{
    lk_admin_out_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->n_owned; i++)
        free(self->owned[i]);
    free(self->owned);
    free(self->reply.clients);
    free(self->reply.subs);
    free(self->reply.metrics);
    free(self->reply.bans);
    free(self->reply.retained);
    free(self->reply.retained_at_ms);
    free(self->reply.json_rows);
    free(self->node.peers);
    free(self);
    *self_p = NULL;
}

Lk__AdminReply *lk_admin_reply(lk_admin_out_t *self)
{
    return &self->reply;
}

char *lk_admin_str(lk_admin_out_t *self, const char *s)
{
    return s_own(self, lk_strdup(s ? s : ""));
}

void lk_admin_error(lk_admin_out_t *self, const char *code, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    self->reply.ok = false;
    self->reply.error = lk_admin_str(self, code);
    self->reply.message = lk_admin_str(self, buf);
}

Lk__AdminNode *lk_admin_node(lk_admin_out_t *self)
{
    self->reply.node = &self->node;
    return &self->node;
}

/* grows *arr (of *n items, capacity *cap) by one slot */
static void s_grow(void **arr, size_t n, size_t *cap, size_t size)
{
    if (n == *cap) {
        *cap = *cap ? *cap * 2 : 16;
        *arr = lk_realloc(*arr, *cap * size);
    }
}

#define S_ADD(self, field, cap, type, init)                                                        \
    do {                                                                                           \
        s_grow((void **)&(self)->reply.field, (self)->reply.n_##field, &(self)->cap,               \
               sizeof(type *));                                                                    \
        type *item = s_own(self, lk_malloc(sizeof(type)));                                         \
        init(item);                                                                                \
        (self)->reply.field[(self)->reply.n_##field++] = item;                                     \
        return item;                                                                               \
    } while (0)

Lk__AdminClient *lk_admin_client_add(lk_admin_out_t *self)
{
    S_ADD(self, clients, cap_clients, Lk__AdminClient, lk__admin_client__init);
}

Lk__AdminSub *lk_admin_sub_add(lk_admin_out_t *self)
{
    S_ADD(self, subs, cap_subs, Lk__AdminSub, lk__admin_sub__init);
}

Lk__AdminBan *lk_admin_ban_add(lk_admin_out_t *self)
{
    S_ADD(self, bans, cap_bans, Lk__AdminBan, lk__admin_ban__init);
}

Lk__AdminPeer *lk_admin_peer_add(lk_admin_out_t *self)
{
    Lk__AdminNode *n = lk_admin_node(self);
    s_grow((void **)&n->peers, n->n_peers, &self->cap_peers, sizeof(Lk__AdminPeer *));
    Lk__AdminPeer *p = s_own(self, lk_malloc(sizeof(*p)));
    lk__admin_peer__init(p);
    n->peers[n->n_peers++] = p;
    return p;
}

void lk_admin_metric(lk_admin_out_t *self, const char *name, const char *labels, double value,
                     bool counter)
{
    s_grow((void **)&self->reply.metrics, self->reply.n_metrics, &self->cap_metrics,
           sizeof(Lk__AdminMetric *));
    Lk__AdminMetric *m = s_own(self, lk_malloc(sizeof(*m)));
    lk__admin_metric__init(m);
    m->name = lk_admin_str(self, name);
    m->labels = lk_admin_str(self, labels);
    m->value = value;
    m->counter = counter;
    self->reply.metrics[self->reply.n_metrics++] = m;
}

void lk_admin_row_add(lk_admin_out_t *self, const char *json)
{
    s_grow((void **)&self->reply.json_rows, self->reply.n_json_rows, &self->cap_rows,
           sizeof(char *));
    self->reply.json_rows[self->reply.n_json_rows++] = lk_admin_str(self, json);
}

Lk__Subscription *lk_admin_subscription(lk_admin_out_t *self)
{
    Lk__Subscription *s = s_own(self, lk_malloc(sizeof(*s)));
    lk__subscription__init(s);
    return s;
}

void lk_admin_retained_add(lk_admin_out_t *self, const Lk__Msg *msg, uint64_t at_ms)
{
    size_t n = self->reply.n_retained;
    s_grow((void **)&self->reply.retained, n, &self->cap_retained, sizeof(Lk__Msg *));
    s_grow((void **)&self->reply.retained_at_ms, n, &self->cap_retained_at, sizeof(uint64_t));
    Lk__Msg *m = s_own(self, lk_malloc(sizeof(*m)));
    lk__msg__init(m);
    m->topic = lk_admin_str(self, msg->topic);
    m->payload.len = msg->payload.len;
    m->payload.data = s_own(self, lk_malloc(msg->payload.len ? msg->payload.len : 1));
    if (msg->payload.len)
        memcpy(m->payload.data, msg->payload.data, msg->payload.len);
    m->qos = msg->qos;
    m->retain = true;
    m->expiry_at_ms = msg->expiry_at_ms;
    m->origin_client = lk_admin_str(self, msg->origin_client);
    m->origin_node = lk_admin_str(self, msg->origin_node);
    m->origin_user = lk_admin_str(self, msg->origin_user);
    self->reply.retained[n] = m;
    self->reply.retained_at_ms[n] = at_ms;
    self->reply.n_retained = n + 1;
    self->reply.n_retained_at_ms = n + 1;
}

void lk_admin_peerhost(const char *peer, char *buf, size_t cap)
{
    const char *p = peer ? peer : "";
    size_t n = strlen(p);
    if (*p == '[') {
        const char *e = strchr(p, ']');
        p++;
        n = e ? (size_t)(e - p) : strlen(p);
    } else {
        const char *c = strrchr(p, ':');
        if (c && strchr(p, ':') == c)
            n = (size_t)(c - p);
    }
    if (n >= cap)
        n = cap - 1;
    memcpy(buf, p, n);
    buf[n] = 0;
}

uint64_t lk_admin_rss(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    unsigned long size = 0, rss = 0;
    int n = fscanf(f, "%lu %lu", &size, &rss);
    fclose(f);
    return n == 2 ? (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

int lk_admin_test(bool verbose)
{
    lk_admin_out_t *o = lk_admin_out_new(7);
    for (int i = 0; i < 100; i++) {
        Lk__AdminClient *c = lk_admin_client_add(o);
        c->client = lk_admin_str(o, "c");
        lk_admin_metric(o, "m", "a=\"b\"", i, false);
    }
    Lk__Msg m = LK__MSG__INIT;
    m.topic = "t";
    for (int i = 0; i < 40; i++)
        lk_admin_retained_add(o, &m, (uint64_t)i);
    lk_admin_peer_add(o)->node = lk_admin_str(o, "p");
    lk_admin_error(o, "NOT_FOUND", "x %d", 1);
    Lk__AdminReply *r = lk_admin_reply(o);
    int fails = 0;
    if (r->n_clients != 100 || r->n_metrics != 100 || r->n_retained != 40 ||
        r->retained_at_ms[39] != 39 || r->ok || strcmp(r->error, "NOT_FOUND") != 0 || !r->node ||
        r->node->n_peers != 1)
        fails++;
    size_t len = lk__admin_reply__get_packed_size(r);
    uint8_t *buf = lk_malloc(len);
    lk__admin_reply__pack(r, buf);
    Lk__AdminReply *back = lk__admin_reply__unpack(NULL, len, buf);
    if (!back || back->n_clients != 100 || back->n_retained != 40)
        fails++;
    lk__admin_reply__free_unpacked(back, NULL);
    free(buf);
    const char *hosts[][2] = {
        {"10.0.0.1:1883", "10.0.0.1"}, {"[::1]:1883", "::1"}, {"::1", "::1"}, {"h", "h"}, {"", ""}};
    for (size_t i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++) {
        char host[64];
        lk_admin_peerhost(hosts[i][0], host, sizeof(host));
        if (strcmp(host, hosts[i][1]) != 0)
            fails++;
    }
    lk_admin_out_free(&o);
    if (verbose || fails)
        printf("%s lk_admin\n", fails ? "FAIL" : "PASS");
    return fails ? -1 : 0;
}
