/*  rt_retain: the retained-message index (contract in rt_retain.h).

    Owns a tree with one node per topic level and, on the nodes that hold one, the message
    and a copy of its full topic. Literal children are found by hash; every node also keeps
    its children in a sibling list so `+` and `#` walk them without a scan of the table. An
    empty node (no message, no children) is pruned at once: every node but the root leads
    to a message, which is what lets a walk delete the message it stands on and carry on. */
#include "rt_retain.h"
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_TOPIC_MAX 65535
#define S_END SIZE_MAX

typedef struct s_node s_node_t;

struct s_node {
    s_node_t *parent;
    s_node_t *hnext;       /* parent's bucket chain */
    s_node_t *first;       /* children, in no set order */
    s_node_t *prev, *next; /* siblings */
    s_node_t **buckets;
    uint32_t nbuckets, nchildren;
    void *msg;   /* NULL when none */
    char *topic; /* set with msg */
    uint64_t hashv;
    size_t len;
    char level[];
};

/* A walk frame. With `iter` the frame stands for node and its next siblings (a `+`). */
typedef struct {
    s_node_t *node;
    size_t pos; /* start of the next filter level, or S_END */
    bool iter;
} s_frame_t;

struct _rt_retain_t {
    s_node_t *root;
    rt_retain_free_fn *free_fn;
    size_t count;
    s_frame_t *stack; /* reused by every match */
    size_t stack_cap;
    bool busy;
};

static void *s_calloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p)
        abort();
    return p;
}

static uint64_t s_hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h ^ (h >> 31);
}

static s_node_t *s_node_new(s_node_t *parent, const char *level, size_t len, uint64_t hashv)
{
    s_node_t *n = s_calloc(1, sizeof(s_node_t) + len + 1);
    n->parent = parent;
    n->hashv = hashv;
    n->len = len;
    memcpy(n->level, level, len);
    return n;
}

static s_node_t *s_child_find(const s_node_t *n, const char *level, size_t len)
{
    if (n->nchildren == 0)
        return NULL;
    uint64_t hashv = s_hash_bytes(level, len);
    for (s_node_t *c = n->buckets[hashv & (n->nbuckets - 1)]; c; c = c->hnext)
        if (c->hashv == hashv && c->len == len && memcmp(c->level, level, len) == 0)
            return c;
    return NULL;
}

static s_node_t *s_child_get(s_node_t *n, const char *level, size_t len)
{
    s_node_t *c = s_child_find(n, level, len);
    if (c)
        return c;
    if (n->nchildren >= n->nbuckets) {
        uint32_t nb = n->nbuckets ? n->nbuckets * 2 : 4;
        s_node_t **buckets = s_calloc(nb, sizeof(s_node_t *));
        for (s_node_t *x = n->first; x; x = x->next) {
            x->hnext = buckets[x->hashv & (nb - 1)];
            buckets[x->hashv & (nb - 1)] = x;
        }
        free(n->buckets);
        n->buckets = buckets;
        n->nbuckets = nb;
    }
    uint64_t hashv = s_hash_bytes(level, len);
    c = s_node_new(n, level, len, hashv);
    c->hnext = n->buckets[hashv & (n->nbuckets - 1)];
    n->buckets[hashv & (n->nbuckets - 1)] = c;
    c->next = n->first;
    if (n->first)
        n->first->prev = c;
    n->first = c;
    n->nchildren++;
    return c;
}

static void s_prune(rt_retain_t *self, s_node_t *n)
{
    while (n != self->root && !n->msg && !n->first) {
        s_node_t *p = n->parent;
        s_node_t **pp = &p->buckets[n->hashv & (p->nbuckets - 1)];
        while (*pp != n)
            pp = &(*pp)->hnext;
        *pp = n->hnext;
        if (n->prev)
            n->prev->next = n->next;
        else
            p->first = n->next;
        if (n->next)
            n->next->prev = n->prev;
        if (--p->nchildren == 0) {
            free(p->buckets);
            p->buckets = NULL;
            p->nbuckets = 0;
        }
        free(n);
        n = p;
    }
}

static void s_clear(rt_retain_t *self, s_node_t *n)
{
    if (self->free_fn)
        self->free_fn(n->msg);
    free(n->topic);
    n->msg = NULL;
    n->topic = NULL;
    self->count--;
    s_prune(self, n);
}

rt_retain_t *rt_retain_new(rt_retain_free_fn *free_fn)
{
    rt_retain_t *self = s_calloc(1, sizeof(rt_retain_t));
    self->root = s_node_new(NULL, "", 0, 0);
    self->free_fn = free_fn;
    self->stack_cap = 64;
    self->stack = s_calloc(self->stack_cap, sizeof(s_frame_t));
    return self;
}

void rt_retain_destroy(rt_retain_t **self_p)
{
    assert(self_p);
    rt_retain_t *self = *self_p;
    if (!self)
        return;
    /* post-order without recursion: topics may be 32k levels deep */
    s_node_t *x = self->root;
    while (x) {
        if (x->first) {
            x = x->first;
            continue;
        }
        s_node_t *p = x->parent;
        if (p)
            p->first = x->next;
        if (x->msg && self->free_fn)
            self->free_fn(x->msg);
        free(x->topic);
        free(x->buckets);
        free(x);
        x = p;
    }
    free(self->stack);
    free(self);
    *self_p = NULL;
}

static bool s_topic_valid(const char *topic, size_t *len)
{
    *len = strnlen(topic, S_TOPIC_MAX + 1);
    return *len > 0 && *len <= S_TOPIC_MAX && !strpbrk(topic, "+#");
}

/* the node of a topic, or NULL */
static s_node_t *s_find(rt_retain_t *self, const char *topic, size_t len)
{
    s_node_t *n = self->root;
    size_t start = 0;
    while (n) {
        const char *slash = memchr(topic + start, '/', len - start);
        size_t end = slash ? (size_t)(slash - topic) : len;
        n = s_child_find(n, topic + start, end - start);
        if (!slash)
            break;
        start = end + 1;
    }
    return n;
}

int rt_retain_set(rt_retain_t *self, const char *topic, void *msg)
{
    assert(self && topic && msg && !self->busy);
    size_t len;
    if (!s_topic_valid(topic, &len))
        return -1;
    s_node_t *n = self->root;
    size_t start = 0;
    while (true) {
        const char *slash = memchr(topic + start, '/', len - start);
        size_t end = slash ? (size_t)(slash - topic) : len;
        n = s_child_get(n, topic + start, end - start);
        if (!slash)
            break;
        start = end + 1;
    }
    if (n->msg) {
        if (self->free_fn && n->msg != msg)
            self->free_fn(n->msg);
    } else {
        n->topic = strdup(topic);
        if (!n->topic)
            abort();
        self->count++;
    }
    n->msg = msg;
    return 0;
}

int rt_retain_delete(rt_retain_t *self, const char *topic)
{
    assert(self && topic && !self->busy);
    size_t len;
    if (!s_topic_valid(topic, &len))
        return -1;
    s_node_t *n = s_find(self, topic, len);
    if (!n || !n->msg)
        return -1;
    s_clear(self, n);
    return 0;
}

void *rt_retain_get(rt_retain_t *self, const char *topic)
{
    assert(self && topic);
    size_t len;
    if (!s_topic_valid(topic, &len))
        return NULL;
    s_node_t *n = s_find(self, topic, len);
    return n ? n->msg : NULL;
}

size_t rt_retain_count(rt_retain_t *self)
{
    return self->count;
}

static bool s_is_dollar(const s_node_t *n)
{
    return n->len > 0 && n->level[0] == '$';
}

/* n, or the first sibling after it that a first-level wildcard may match */
static s_node_t *s_skip(s_node_t *n, bool skip_dollar)
{
    while (skip_dollar && n && s_is_dollar(n))
        n = n->next;
    return n;
}

static void s_visit(rt_retain_t *self, s_node_t *n, rt_retain_fn *fn, void *arg)
{
    if (fn(n->topic, n->msg, arg) == RT_RETAIN_DELETE)
        s_clear(self, n);
}

/* Pre-order walk of top's subtree using parent links, no stack. The next node is found
   before the visit, so a visit may delete its node: pruning stops below any node that
   still has a sibling, and the next node is always such a sibling or a child. */
static void s_walk(rt_retain_t *self, s_node_t *top, bool skip_dollar, rt_retain_fn *fn, void *arg)
{
    s_node_t *x = top;
    while (x) {
        s_node_t *next = s_skip(x->first, skip_dollar && x == self->root);
        for (s_node_t *y = x; !next && y != top; y = y->parent)
            next = s_skip(y->next, skip_dollar && y->parent == self->root);
        if (x->msg)
            s_visit(self, x, fn, arg);
        x = next;
    }
}

int rt_retain_match(rt_retain_t *self, const char *filter, rt_retain_fn *fn, void *arg)
{
    assert(self && filter && fn && !self->busy);
    size_t len = strnlen(filter, S_TOPIC_MAX + 1);
    if (len >= 7 && memcmp(filter, "$share/", 7) == 0) {
        const char *slash = memchr(filter + 7, '/', len - 7);
        if (!slash || slash == filter + 7)
            return -1;
        len -= (size_t)(slash + 1 - filter);
        filter = slash + 1;
    }
    if (len == 0 || len > S_TOPIC_MAX)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (filter[i] != '+' && filter[i] != '#')
            continue;
        bool alone = (i == 0 || filter[i - 1] == '/') && (i + 1 == len || filter[i + 1] == '/');
        if (!alone || (filter[i] == '#' && i + 1 != len))
            return -1;
    }
    bool skip_dollar = filter[0] == '+' || filter[0] == '#'; /* [MQTT-4.7.2-1] */

    self->busy = true;
    size_t sp = 0;
    self->stack[sp++] = (s_frame_t){self->root, 0, false};
    while (sp > 0) {
        /* a frame pushes at most two: the depth stays within twice the filter's levels */
        if (sp + 2 > self->stack_cap) {
            self->stack_cap *= 2;
            self->stack = realloc(self->stack, self->stack_cap * sizeof(s_frame_t));
            if (!self->stack)
                abort();
        }
        s_frame_t f = self->stack[--sp];
        s_node_t *n = f.node;
        if (f.iter) {
            /* push the siblings first so this node's subtree is done before them */
            s_node_t *sib = s_skip(n->next, skip_dollar && n->parent == self->root);
            if (sib)
                self->stack[sp++] = (s_frame_t){sib, f.pos, true};
        }
        if (f.pos == S_END) {
            if (n->msg)
                s_visit(self, n, fn, arg);
            continue;
        }
        const char *level = filter + f.pos;
        const char *slash = memchr(level, '/', len - f.pos);
        size_t level_len = slash ? (size_t)(slash - level) : len - f.pos;
        size_t next = slash ? f.pos + level_len + 1 : S_END;
        if (level_len == 1 && level[0] == '#') {
            /* `#` also matches the parent level: `sport/#` matches `sport` */
            s_walk(self, n, skip_dollar && n == self->root, fn, arg);
        } else if (level_len == 1 && level[0] == '+') {
            s_node_t *c = s_skip(n->first, skip_dollar && n == self->root);
            if (c)
                self->stack[sp++] = (s_frame_t){c, next, true};
        } else {
            s_node_t *c = s_child_find(n, level, level_len);
            if (c)
                self->stack[sp++] = (s_frame_t){c, next, false};
        }
    }
    self->busy = false;
    return 0;
}

void rt_retain_each(rt_retain_t *self, rt_retain_fn *fn, void *arg)
{
    assert(self && fn && !self->busy);
    self->busy = true;
    s_walk(self, self->root, false, fn, arg);
    self->busy = false;
}

/* ---------------------------------------------------------------------------------------
   Selftest */

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "rt_retain_test: %s:%d: check failed: %s\n", __FILE__, __LINE__,       \
                    #cond);                                                                        \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static int s_freed;

static void s_free_msg(void *msg)
{
    s_freed++;
    free(msg);
}

static char *s_msg(const char *text)
{
    char *m = strdup(text);
    if (!m)
        abort();
    return m;
}

#define S_SEEN_MAX 4096

typedef struct {
    size_t n;
    char topic[S_SEEN_MAX][64];
    const char *delete_prefix; /* delete the messages whose topic starts with this */
} s_seen_t;

static int s_collect(const char *topic, void *msg, void *arg)
{
    s_seen_t *s = arg;
    if (s->n < S_SEEN_MAX)
        snprintf(s->topic[s->n++], sizeof s->topic[0], "%s", topic);
    /* every message in the test holds its own topic */
    if (strcmp(topic, msg) != 0)
        abort();
    if (s->delete_prefix && strncmp(topic, s->delete_prefix, strlen(s->delete_prefix)) == 0)
        return RT_RETAIN_DELETE;
    return RT_RETAIN_KEEP;
}

static s_seen_t *s_match(rt_retain_t *r, s_seen_t *s, const char *filter)
{
    s->n = 0;
    s->delete_prefix = NULL;
    if (rt_retain_match(r, filter, s_collect, s) != 0)
        s->n = SIZE_MAX;
    return s;
}

static bool s_has(const s_seen_t *s, const char *topic)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->topic[i], topic) == 0)
            return true;
    return false;
}

static int s_count_fn(const char *topic, void *msg, void *arg)
{
    (*(size_t *)arg)++;
    return RT_RETAIN_KEEP;
}

static bool s_brute_match(const char *filter, const char *topic)
{
    if (strncmp(filter, "$share/", 7) == 0)
        filter = strchr(filter + 7, '/') + 1;
    if (topic[0] == '$' && (filter[0] == '+' || filter[0] == '#'))
        return false;
    const char *f = filter, *t = topic;
    while (true) {
        size_t fl = strcspn(f, "/"), tl = strcspn(t, "/");
        if (fl == 1 && f[0] == '#')
            return true;
        if (!(fl == 1 && f[0] == '+') && (fl != tl || memcmp(f, t, fl) != 0))
            return false;
        bool fend = f[fl] == 0, tend = t[tl] == 0;
        if (fend && tend)
            return true;
        if (tend)
            return strcmp(f + fl, "/#") == 0;
        if (fend)
            return false;
        f += fl + 1;
        t += tl + 1;
    }
}

static uint32_t s_rand(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(*state >> 33);
}

static void s_random_levels(uint64_t *rs, char *buf, size_t size, bool wild)
{
    static const char *levels[] = {"a", "b", "c", "", "$x", "+"};
    size_t off = 0;
    if (wild && s_rand(rs) % 8 == 0)
        off += (size_t)snprintf(buf, size, "$share/g/");
    size_t path_start = off;
    int depth = 1 + (int)(s_rand(rs) % 4);
    for (int i = 0; i < depth; i++) {
        size_t choices = i == 0 ? 5 : 4;
        if (wild)
            choices = i == 0 ? 6 : 5;
        const char *l = levels[s_rand(rs) % choices];
        if (wild && choices == 5 && l[0] == '$')
            l = "+"; /* after the first level, index 4 stands for `+` */
        off += (size_t)snprintf(buf + off, size - off, "%s%s", i ? "/" : "", l);
    }
    if (wild && s_rand(rs) % 4 == 0)
        snprintf(buf + off, size - off, "/#");
    else if (wild && s_rand(rs) % 16 == 0)
        snprintf(buf, size, "#");
    else if (off == path_start)
        snprintf(buf + off, size - off, "/"); /* one empty level is no topic; two are */
}

static int s_random_check(bool verbose)
{
    int failures = 0;
    static s_seen_t seen;
    enum { NT = 600 };
    static char topics[NT][64];
    static bool live[NT];
    uint64_t rs = 7;
    rt_retain_t *r = rt_retain_new(s_free_msg);
    for (int i = 0; i < NT; i++) {
        s_random_levels(&rs, topics[i], sizeof topics[i], false);
        live[i] = true;
        S_CHECK(rt_retain_set(r, topics[i], s_msg(topics[i])) == 0);
    }
    /* duplicates in the list collapse to one topic */
    for (int i = 0; i < NT; i++)
        for (int j = 0; j < i; j++)
            if (strcmp(topics[i], topics[j]) == 0)
                live[i] = false;
    for (int i = 0; i < NT; i++)
        if (live[i] && s_rand(&rs) % 4 == 0) {
            S_CHECK(rt_retain_delete(r, topics[i]) == 0);
            live[i] = false;
        }
    size_t nlive = 0;
    for (int i = 0; i < NT; i++)
        nlive += live[i];
    S_CHECK(rt_retain_count(r) == nlive);
    size_t total_hits = 0;
    for (int k = 0; k < 3000; k++) {
        char filter[64];
        s_random_levels(&rs, filter, sizeof filter, true);
        s_match(r, &seen, filter);
        size_t expect = 0;
        for (int i = 0; i < NT; i++)
            if (live[i] && s_brute_match(filter, topics[i])) {
                expect++;
                S_CHECK(s_has(&seen, topics[i]));
            }
        if (seen.n != expect && verbose)
            fprintf(stderr, "filter '%s': %zu seen, expected %zu\n", filter, seen.n, expect);
        S_CHECK(seen.n == expect);
        total_hits += seen.n;
    }
    if (verbose)
        printf("rt_retain: random cross-check, %zu topics, %zu hits checked\n", nlive, total_hits);
    rt_retain_destroy(&r);
    return failures;
}

int rt_retain_test(bool verbose)
{
    int failures = 0;
    static s_seen_t seen;
    s_freed = 0;
    rt_retain_t *r = rt_retain_new(s_free_msg);

    const char *topics[] = {"sport",      "sport/tennis", "sport/tennis/player1",
                            "sport/golf", "a//b",         "/a",
                            "/",          "$SYS/load",    "$SYS",
                            "x/y/z/w",    "a/b"};
    size_t nt = sizeof topics / sizeof topics[0];
    for (size_t i = 0; i < nt; i++)
        S_CHECK(rt_retain_set(r, topics[i], s_msg(topics[i])) == 0);
    S_CHECK(rt_retain_count(r) == nt);
    char *bad = s_msg("x");
    S_CHECK(rt_retain_set(r, "a/+", bad) == -1);
    S_CHECK(rt_retain_set(r, "#", bad) == -1);
    S_CHECK(rt_retain_set(r, "", bad) == -1);
    free(bad);

    /* replace frees the old message */
    S_CHECK(rt_retain_set(r, "sport", s_msg("sport")) == 0);
    S_CHECK(s_freed == 1 && rt_retain_count(r) == nt);
    S_CHECK(strcmp(rt_retain_get(r, "sport/golf"), "sport/golf") == 0);
    S_CHECK(rt_retain_get(r, "sport/none") == NULL);
    S_CHECK(rt_retain_get(r, "x/y") == NULL); /* inner node, no message */

    s_match(r, &seen, "#");
    S_CHECK(seen.n == nt - 2 && !s_has(&seen, "$SYS") && !s_has(&seen, "$SYS/load"));
    s_match(r, &seen, "sport/#");
    S_CHECK(seen.n == 4 && s_has(&seen, "sport") && s_has(&seen, "sport/tennis/player1"));
    s_match(r, &seen, "sport/+");
    S_CHECK(seen.n == 2 && s_has(&seen, "sport/tennis") && s_has(&seen, "sport/golf"));
    s_match(r, &seen, "+");
    S_CHECK(seen.n == 1 && s_has(&seen, "sport"));
    s_match(r, &seen, "+/+");
    S_CHECK(seen.n == 5 && s_has(&seen, "/a") && s_has(&seen, "/") && s_has(&seen, "a/b"));
    S_CHECK(s_has(&seen, "sport/tennis") && !s_has(&seen, "$SYS/load"));
    s_match(r, &seen, "a/+/b");
    S_CHECK(seen.n == 1 && s_has(&seen, "a//b"));
    s_match(r, &seen, "/#");
    S_CHECK(seen.n == 2 && s_has(&seen, "/a") && s_has(&seen, "/"));
    s_match(r, &seen, "+/tennis/#");
    S_CHECK(seen.n == 2);
    s_match(r, &seen, "$SYS/#");
    S_CHECK(seen.n == 2);
    s_match(r, &seen, "$SYS/+");
    S_CHECK(seen.n == 1 && s_has(&seen, "$SYS/load"));
    s_match(r, &seen, "+/load");
    S_CHECK(seen.n == 0);
    s_match(r, &seen, "$share/g/sport/+");
    S_CHECK(seen.n == 2);
    s_match(r, &seen, "x/y/z/w");
    S_CHECK(seen.n == 1);
    s_match(r, &seen, "x/y");
    S_CHECK(seen.n == 0);
    S_CHECK(s_match(r, &seen, "a/#/b")->n == SIZE_MAX);
    S_CHECK(s_match(r, &seen, "a+")->n == SIZE_MAX);
    S_CHECK(s_match(r, &seen, "")->n == SIZE_MAX);
    S_CHECK(s_match(r, &seen, "$share/g")->n == SIZE_MAX);

    size_t n = 0;
    rt_retain_each(r, s_count_fn, &n);
    S_CHECK(n == nt);

    /* delete */
    S_CHECK(rt_retain_delete(r, "sport/tennis") == 0);
    S_CHECK(rt_retain_delete(r, "sport/tennis") == -1);
    S_CHECK(rt_retain_delete(r, "x/y") == -1);
    S_CHECK(rt_retain_count(r) == nt - 1);
    s_match(r, &seen, "sport/#");
    S_CHECK(seen.n == 3 && s_has(&seen, "sport/tennis/player1"));

    /* deleting from inside walks */
    seen.n = 0;
    seen.delete_prefix = "sport";
    S_CHECK(rt_retain_match(r, "sport/#", s_collect, &seen) == 0);
    S_CHECK(seen.n == 3 && rt_retain_count(r) == nt - 4);
    s_match(r, &seen, "#");
    S_CHECK(seen.n == nt - 6);
    seen.n = 0;
    seen.delete_prefix = "";
    S_CHECK(rt_retain_match(r, "+/+", s_collect, &seen) == 0);
    S_CHECK(seen.n == 3 && rt_retain_count(r) == nt - 7);
    seen.n = 0;
    seen.delete_prefix = "";
    rt_retain_each(r, s_collect, &seen);
    S_CHECK(seen.n == nt - 7 && rt_retain_count(r) == 0);
    S_CHECK(r->root->first == NULL && r->root->nchildren == 0);
    S_CHECK(s_freed == (int)nt + 1);

    /* deep topics: longer than the initial stack */
    {
        size_t depth = 4000;
        char *deep = s_calloc(depth * 2 + 1, 1);
        for (size_t i = 0; i < depth; i++)
            memcpy(deep + 2 * i, "x/", 2);
        deep[depth * 2 - 1] = 0;
        S_CHECK(rt_retain_set(r, deep, s_msg(deep)) == 0);
        char *f = strdup(deep);
        for (size_t i = 0; i < depth; i++)
            f[2 * i] = '+';
        n = 0;
        S_CHECK(rt_retain_match(r, f, s_count_fn, &n) == 0 && n == 1);
        f[2 * depth - 2] = '#';
        n = 0;
        S_CHECK(rt_retain_match(r, f, s_count_fn, &n) == 0 && n == 1);
        n = 0;
        S_CHECK(rt_retain_match(r, "x/#", s_count_fn, &n) == 0 && n == 1);
        free(f);
        free(deep);
    }
    rt_retain_destroy(&r); /* with a message left: no leaks */
    S_CHECK(r == NULL);
    rt_retain_destroy(&r);

    failures += s_random_check(verbose);

    /* 100 000 retained topics: a filter with a literal prefix visits only its branch */
    s_freed = 0;
    r = rt_retain_new(s_free_msg);
    enum { NR = 100000 };
    char topic[64];
    for (int i = 0; i < NR; i++) {
        snprintf(topic, sizeof topic, "site%d/dev%d/temp", i % 100, i / 100);
        S_CHECK(rt_retain_set(r, topic, s_msg(topic)) == 0);
    }
    S_CHECK(rt_retain_count(r) == NR);
    n = 0;
    S_CHECK(rt_retain_match(r, "site42/#", s_count_fn, &n) == 0 && n == NR / 100);
    n = 0;
    S_CHECK(rt_retain_match(r, "site42/dev7/+", s_count_fn, &n) == 0 && n == 1);
    n = 0;
    S_CHECK(rt_retain_match(r, "+/dev7/temp", s_count_fn, &n) == 0 && n == 100);
    n = 0;
    S_CHECK(rt_retain_match(r, "#", s_count_fn, &n) == 0 && n == NR);
    if (verbose) {
        struct timespec t0, t1;
        const char *filters[] = {"site42/dev7/temp", "site42/#", "+/dev7/temp", "#"};
        for (size_t k = 0; k < 4; k++) {
            int iter = k == 0 ? 1000000 : k == 3 ? 20 : 2000;
            n = 0;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            for (int i = 0; i < iter; i++)
                rt_retain_match(r, filters[k], s_count_fn, &n);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
            printf("rt_retain: %d topics, filter %-18s %8zu hits, %10.1f ns per match\n", NR,
                   filters[k], n / (size_t)iter, ns / iter);
        }
    }
    rt_retain_destroy(&r);
    S_CHECK(s_freed == NR);

    if (verbose && failures)
        fprintf(stderr, "rt_retain_test: %d failures\n", failures);
    return failures ? -1 : 0;
}
