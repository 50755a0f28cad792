/*  rt_trie: the router's subscription index (contract in rt_trie.h).

    Owns a tree with one node per filter level (`$share/<group>/` stripped), the
    subscription entries, the shared groups, and two indexes: entries by (client, filter),
    so add and remove never scan a popular filter's subscribers, and clients by pointer,
    each with the list of its entries, so remove_client touches only that client. Nodes
    that hold nothing are pruned at once, so every node leads to at least one subscription
    and the match walk never explores dead branches. */
#include "rt_trie.h"
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_FILTER_MAX 65535

typedef struct s_node s_node_t;
typedef struct s_entry s_entry_t;
typedef struct s_group s_group_t;
typedef struct s_client s_client_t;

struct s_entry {
    void *client;
    rt_sub_opts_t opts;
    s_node_t *node;
    s_group_t *group; /* NULL when not shared */
    s_client_t *owner;
    s_entry_t *prev, *next;   /* node->subs, or group->members */
    s_entry_t *cprev, *cnext; /* owner->entries */
    s_entry_t *hnext;         /* entry index chain */
    uint64_t hashv;
    size_t filter_len;
    char filter[];
};

/* Members of one (group, filter) share: cursor is the next member to try, NULL meaning the
   head, so a member leaving never leaves it dangling. */
struct s_group {
    s_group_t *next;
    s_entry_t *members;
    s_entry_t *cursor;
    size_t name_len;
    char name[];
};

struct s_client {
    void *client;
    s_client_t *hnext;
    s_entry_t *entries;
    size_t count;
};

/* Literal children sit in a chained hash table sized to a power of two; `+` and `#`
   children are direct links so the walk never hashes them. */
struct s_node {
    s_node_t *parent;
    s_node_t *hnext;
    s_node_t **buckets;
    uint32_t nbuckets, nchildren;
    s_node_t *plus, *hash;
    s_entry_t *subs;
    s_group_t *groups;
    uint64_t hashv;
    size_t len;
    char level[];
};

typedef struct {
    s_node_t *node;
    size_t pos; /* start of the next topic level, or S_END */
} s_frame_t;

#define S_END SIZE_MAX

struct _rt_trie_t {
    s_node_t *root;
    s_entry_t **entries;
    size_t entries_nb;
    size_t count;
    s_client_t **clients;
    size_t clients_nb;
    size_t nclients;
    s_frame_t *stack; /* reused by every match */
    size_t stack_cap;
    bool busy; /* inside a callback: the contract forbids changes */
};

static void *s_malloc(size_t n)
{
    void *p = malloc(n);
    if (!p)
        abort();
    return p;
}

static void *s_calloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p)
        abort();
    return p;
}

/* FNV-1a with a final fold, so the low bits used for buckets see the whole hash */
static uint64_t s_hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h ^ (h >> 31);
}

static uint64_t s_hash_ptr(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
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

static inline s_node_t *s_child_find(const s_node_t *n, const char *level, size_t len,
                                     uint64_t hashv)
{
    for (s_node_t *c = n->buckets[hashv & (n->nbuckets - 1)]; c; c = c->hnext)
        if (c->hashv == hashv && c->len == len && memcmp(c->level, level, len) == 0)
            return c;
    return NULL;
}

static void s_children_grow(s_node_t *n)
{
    uint32_t nb = n->nbuckets ? n->nbuckets * 2 : 4;
    s_node_t **buckets = s_calloc(nb, sizeof(s_node_t *));
    for (uint32_t i = 0; i < n->nbuckets; i++) {
        s_node_t *c = n->buckets[i];
        while (c) {
            s_node_t *next = c->hnext;
            c->hnext = buckets[c->hashv & (nb - 1)];
            buckets[c->hashv & (nb - 1)] = c;
            c = next;
        }
    }
    free(n->buckets);
    n->buckets = buckets;
    n->nbuckets = nb;
}

/* the child for one filter level, created when missing */
static s_node_t *s_child_get(s_node_t *n, const char *level, size_t len)
{
    if (len == 1 && (level[0] == '+' || level[0] == '#')) {
        s_node_t **slot = level[0] == '+' ? &n->plus : &n->hash;
        if (!*slot)
            *slot = s_node_new(n, level, len, 0);
        return *slot;
    }
    uint64_t hashv = s_hash_bytes(level, len);
    s_node_t *c = n->nchildren ? s_child_find(n, level, len, hashv) : NULL;
    if (c)
        return c;
    if (n->nchildren >= n->nbuckets)
        s_children_grow(n);
    c = s_node_new(n, level, len, hashv);
    c->hnext = n->buckets[hashv & (n->nbuckets - 1)];
    n->buckets[hashv & (n->nbuckets - 1)] = c;
    n->nchildren++;
    return c;
}

static void s_child_unlink(s_node_t *n, s_node_t *c)
{
    if (c == n->plus)
        n->plus = NULL;
    else if (c == n->hash)
        n->hash = NULL;
    else {
        s_node_t **pp = &n->buckets[c->hashv & (n->nbuckets - 1)];
        while (*pp != c)
            pp = &(*pp)->hnext;
        *pp = c->hnext;
        if (--n->nchildren == 0) {
            free(n->buckets);
            n->buckets = NULL;
            n->nbuckets = 0;
        }
    }
}

static void s_prune(rt_trie_t *self, s_node_t *n)
{
    while (n != self->root && !n->subs && !n->groups && !n->nchildren && !n->plus && !n->hash) {
        s_node_t *parent = n->parent;
        s_child_unlink(parent, n);
        free(n);
        n = parent;
    }
}

static bool s_path_valid(const char *path, size_t len)
{
    if (len == 0)
        return false;
    size_t start = 0;
    while (true) {
        const char *slash = memchr(path + start, '/', len - start);
        size_t end = slash ? (size_t)(slash - path) : len;
        for (size_t i = start; i < end; i++) {
            if (path[i] != '+' && path[i] != '#')
                continue;
            if (end - start != 1 || (path[i] == '#' && end != len))
                return false;
        }
        if (!slash)
            return true;
        start = end + 1;
    }
}

/* Splits a filter into its share group (NULL if none) and the path that goes in the tree. */
static bool s_parse(const char *filter, size_t *filter_len, const char **group, size_t *group_len,
                    const char **path, size_t *path_len)
{
    size_t len = strnlen(filter, S_FILTER_MAX + 1);
    if (len > S_FILTER_MAX)
        return false;
    *filter_len = len;
    *group = NULL;
    *group_len = 0;
    *path = filter;
    *path_len = len;
    if (len >= 7 && memcmp(filter, "$share/", 7) == 0) {
        const char *name = filter + 7;
        const char *slash = memchr(name, '/', len - 7);
        if (!slash || slash == name)
            return false;
        for (const char *q = name; q < slash; q++)
            if (*q == '+' || *q == '#')
                return false;
        *group = name;
        *group_len = (size_t)(slash - name);
        *path = slash + 1;
        *path_len = len - (size_t)(*path - filter);
    }
    return s_path_valid(*path, *path_len);
}

bool rt_trie_filter_valid(const char *filter)
{
    const char *group, *path;
    size_t filter_len, group_len, path_len;
    return filter && s_parse(filter, &filter_len, &group, &group_len, &path, &path_len);
}

rt_trie_t *rt_trie_new(void)
{
    rt_trie_t *self = s_calloc(1, sizeof(rt_trie_t));
    self->root = s_node_new(NULL, "", 0, 0);
    self->entries_nb = 64;
    self->entries = s_calloc(self->entries_nb, sizeof(s_entry_t *));
    self->clients_nb = 64;
    self->clients = s_calloc(self->clients_nb, sizeof(s_client_t *));
    self->stack_cap = 64;
    self->stack = s_malloc(self->stack_cap * sizeof(s_frame_t));
    return self;
}

static s_entry_t *s_entry_find(rt_trie_t *self, void *client, const char *filter, size_t len,
                               uint64_t hashv)
{
    for (s_entry_t *e = self->entries[hashv & (self->entries_nb - 1)]; e; e = e->hnext)
        if (e->hashv == hashv && e->client == client && e->filter_len == len &&
            memcmp(e->filter, filter, len) == 0)
            return e;
    return NULL;
}

static void s_entries_grow(rt_trie_t *self)
{
    size_t nb = self->entries_nb * 2;
    s_entry_t **buckets = s_calloc(nb, sizeof(s_entry_t *));
    for (size_t i = 0; i < self->entries_nb; i++) {
        s_entry_t *e = self->entries[i];
        while (e) {
            s_entry_t *next = e->hnext;
            e->hnext = buckets[e->hashv & (nb - 1)];
            buckets[e->hashv & (nb - 1)] = e;
            e = next;
        }
    }
    free(self->entries);
    self->entries = buckets;
    self->entries_nb = nb;
}

static s_client_t *s_client_find(rt_trie_t *self, void *client)
{
    for (s_client_t *c = self->clients[s_hash_ptr(client) & (self->clients_nb - 1)]; c;
         c = c->hnext)
        if (c->client == client)
            return c;
    return NULL;
}

static s_client_t *s_client_get(rt_trie_t *self, void *client)
{
    s_client_t *c = s_client_find(self, client);
    if (c)
        return c;
    if (self->nclients >= self->clients_nb) {
        size_t nb = self->clients_nb * 2;
        s_client_t **buckets = s_calloc(nb, sizeof(s_client_t *));
        for (size_t i = 0; i < self->clients_nb; i++) {
            s_client_t *x = self->clients[i];
            while (x) {
                s_client_t *next = x->hnext;
                size_t b = s_hash_ptr(x->client) & (nb - 1);
                x->hnext = buckets[b];
                buckets[b] = x;
                x = next;
            }
        }
        free(self->clients);
        self->clients = buckets;
        self->clients_nb = nb;
    }
    c = s_calloc(1, sizeof(s_client_t));
    c->client = client;
    size_t b = s_hash_ptr(client) & (self->clients_nb - 1);
    c->hnext = self->clients[b];
    self->clients[b] = c;
    self->nclients++;
    return c;
}

static void s_client_drop(rt_trie_t *self, s_client_t *c)
{
    s_client_t **pp = &self->clients[s_hash_ptr(c->client) & (self->clients_nb - 1)];
    while (*pp != c)
        pp = &(*pp)->hnext;
    *pp = c->hnext;
    self->nclients--;
    free(c);
}

int rt_trie_add(rt_trie_t *self, void *client, const char *filter, const rt_sub_opts_t *opts,
                bool *is_new)
{
    assert(self && filter && opts && !self->busy);
    const char *group, *path;
    size_t filter_len, group_len, path_len;
    if (!s_parse(filter, &filter_len, &group, &group_len, &path, &path_len))
        return -1;

    uint64_t hashv = s_hash_bytes(filter, filter_len) ^ s_hash_ptr(client);
    s_entry_t *e = s_entry_find(self, client, filter, filter_len, hashv);
    if (e) {
        e->opts = *opts;
        if (is_new)
            *is_new = false;
        return 0;
    }

    s_node_t *n = self->root;
    size_t start = 0;
    while (true) {
        const char *slash = memchr(path + start, '/', path_len - start);
        size_t end = slash ? (size_t)(slash - path) : path_len;
        n = s_child_get(n, path + start, end - start);
        if (!slash)
            break;
        start = end + 1;
    }

    e = s_calloc(1, sizeof(s_entry_t) + filter_len + 1);
    e->client = client;
    e->opts = *opts;
    e->node = n;
    e->hashv = hashv;
    e->filter_len = filter_len;
    memcpy(e->filter, filter, filter_len);

    s_entry_t **head = &n->subs;
    if (group) {
        s_group_t *g = n->groups;
        while (g && (g->name_len != group_len || memcmp(g->name, group, group_len) != 0))
            g = g->next;
        if (!g) {
            g = s_calloc(1, sizeof(s_group_t) + group_len + 1);
            memcpy(g->name, group, group_len);
            g->name_len = group_len;
            g->next = n->groups;
            n->groups = g;
        }
        e->group = g;
        head = &g->members;
    }
    e->next = *head;
    if (*head)
        (*head)->prev = e;
    *head = e;

    if (self->count >= self->entries_nb)
        s_entries_grow(self);
    e->hnext = self->entries[hashv & (self->entries_nb - 1)];
    self->entries[hashv & (self->entries_nb - 1)] = e;

    s_client_t *c = s_client_get(self, client);
    e->owner = c;
    e->cnext = c->entries;
    if (c->entries)
        c->entries->cprev = e;
    c->entries = e;
    c->count++;

    self->count++;
    if (is_new)
        *is_new = true;
    return 0;
}

/* Unlinks and frees one entry, its group and client record when they empty, and the nodes
   left holding nothing. */
static void s_entry_remove(rt_trie_t *self, s_entry_t *e)
{
    s_node_t *n = e->node;
    s_entry_t **head = &n->subs;
    s_group_t *g = e->group;
    if (g) {
        head = &g->members;
        if (g->cursor == e)
            g->cursor = e->next;
    }
    if (e->prev)
        e->prev->next = e->next;
    else
        *head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    if (g && !g->members) {
        s_group_t **pp = &n->groups;
        while (*pp != g)
            pp = &(*pp)->next;
        *pp = g->next;
        free(g);
    }

    s_entry_t **pp = &self->entries[e->hashv & (self->entries_nb - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;

    s_client_t *c = e->owner;
    if (e->cprev)
        e->cprev->cnext = e->cnext;
    else
        c->entries = e->cnext;
    if (e->cnext)
        e->cnext->cprev = e->cprev;
    if (--c->count == 0)
        s_client_drop(self, c);

    self->count--;
    free(e);
    s_prune(self, n);
}

int rt_trie_remove(rt_trie_t *self, void *client, const char *filter)
{
    assert(self && filter && !self->busy);
    size_t len = strnlen(filter, S_FILTER_MAX + 1);
    uint64_t hashv = s_hash_bytes(filter, len) ^ s_hash_ptr(client);
    s_entry_t *e = s_entry_find(self, client, filter, len, hashv);
    if (!e)
        return -1;
    s_entry_remove(self, e);
    return 0;
}

void rt_trie_remove_client(rt_trie_t *self, void *client)
{
    assert(self && !self->busy);
    s_client_t *c = s_client_find(self, client);
    if (!c)
        return;
    /* the last removal frees c, so count first */
    for (size_t n = c->count; n > 0; n--)
        s_entry_remove(self, c->entries);
}

const rt_sub_opts_t *rt_trie_lookup(rt_trie_t *self, void *client, const char *filter)
{
    assert(self && filter);
    size_t len = strnlen(filter, S_FILTER_MAX + 1);
    uint64_t hashv = s_hash_bytes(filter, len) ^ s_hash_ptr(client);
    s_entry_t *e = s_entry_find(self, client, filter, len, hashv);
    return e ? &e->opts : NULL;
}

size_t rt_trie_count(rt_trie_t *self)
{
    return self->count;
}

size_t rt_trie_client_count(rt_trie_t *self)
{
    return self->nclients;
}

void rt_trie_destroy(rt_trie_t **self_p)
{
    assert(self_p);
    rt_trie_t *self = *self_p;
    if (!self)
        return;
    /* removing every client prunes the whole tree without recursion (filters may be 32k
       levels deep) */
    for (size_t i = 0; i < self->clients_nb; i++)
        while (self->clients[i])
            rt_trie_remove_client(self, self->clients[i]->client);
    assert(self->count == 0);
    free(self->root);
    free(self->entries);
    free(self->clients);
    free(self->stack);
    free(self);
    *self_p = NULL;
}

static s_entry_t *s_group_pick(s_group_t *g, rt_available_fn *available, void *arg)
{
    s_entry_t *start = g->cursor ? g->cursor : g->members;
    s_entry_t *chosen = NULL;
    if (available) {
        s_entry_t *e = start;
        do {
            if (available(e->client, arg)) {
                chosen = e;
                break;
            }
            e = e->next ? e->next : g->members;
        } while (e != start);
    }
    if (!chosen)
        chosen = start; /* nobody available: someone must still get it (and queue it) */
    g->cursor = chosen->next;
    return chosen;
}

static void s_emit(s_node_t *n, rt_match_fn *fn, rt_available_fn *available, void *arg)
{
    for (s_entry_t *e = n->subs; e; e = e->next)
        fn(e->client, &e->opts, e->filter, NULL, arg);
    for (s_group_t *g = n->groups; g; g = g->next) {
        s_entry_t *e = s_group_pick(g, available, arg);
        fn(e->client, &e->opts, e->filter, g->name, arg);
    }
}

void rt_trie_match(rt_trie_t *self, const char *topic, size_t topic_len, rt_match_fn *fn,
                   rt_available_fn *available, void *arg)
{
    assert(self && fn && !self->busy);
    if (topic_len == 0)
        return; /* not a topic [MQTT-4.7.3-1] */
    self->busy = true;
    bool dollar = topic_len > 0 && topic[0] == '$';
    s_frame_t *stack = self->stack;
    size_t sp = 0;
    stack[sp++] = (s_frame_t){self->root, 0};
    while (sp > 0) {
        s_frame_t f = stack[--sp];
        s_node_t *n = f.node;
        if (f.pos == S_END) {
            s_emit(n, fn, available, arg);
            if (n->hash) /* `sport/#` also matches `sport` */
                s_emit(n->hash, fn, available, arg);
            continue;
        }
        /* each frame pushes at most two: depth stays within levels + 2, so this grows
           only for a topic deeper than any before */
        if (sp + 2 > self->stack_cap) {
            self->stack_cap *= 2;
            self->stack = realloc(self->stack, self->stack_cap * sizeof(s_frame_t));
            if (!self->stack)
                abort();
            stack = self->stack;
        }
        const char *level = topic + f.pos;
        const char *slash = memchr(level, '/', topic_len - f.pos);
        size_t len = slash ? (size_t)(slash - level) : topic_len - f.pos;
        size_t next = slash ? f.pos + len + 1 : S_END;
        if (!(dollar && n == self->root)) { /* [MQTT-4.7.2-1] */
            if (n->hash)
                s_emit(n->hash, fn, available, arg);
            if (n->plus)
                stack[sp++] = (s_frame_t){n->plus, next};
        }
        if (n->nchildren) {
            s_node_t *c = s_child_find(n, level, len, s_hash_bytes(level, len));
            if (c)
                stack[sp++] = (s_frame_t){c, next};
        }
    }
    self->busy = false;
}

static void s_each_of(s_client_t *c, rt_match_fn *fn, void *arg)
{
    for (s_entry_t *e = c->entries; e; e = e->cnext)
        fn(e->client, &e->opts, e->filter, e->group ? e->group->name : NULL, arg);
}

void rt_trie_each_client_sub(rt_trie_t *self, void *client, rt_match_fn *fn, void *arg)
{
    assert(self && fn && !self->busy);
    s_client_t *c = s_client_find(self, client);
    if (!c)
        return;
    self->busy = true;
    s_each_of(c, fn, arg);
    self->busy = false;
}

void rt_trie_each(rt_trie_t *self, rt_match_fn *fn, void *arg)
{
    assert(self && fn && !self->busy);
    self->busy = true;
    for (size_t i = 0; i < self->clients_nb; i++)
        for (s_client_t *c = self->clients[i]; c; c = c->hnext)
            s_each_of(c, fn, arg);
    self->busy = false;
}

/* ---------------------------------------------------------------------------------------
   Selftest */

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "rt_trie_test: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

#define S_HITS_MAX 4096

typedef struct {
    size_t n;
    void *client[S_HITS_MAX];
    char filter[S_HITS_MAX][64];
    bool shared[S_HITS_MAX];
    rt_sub_opts_t opts[S_HITS_MAX];
} s_hits_t;

static void s_collect(void *client, const rt_sub_opts_t *opts, const char *filter,
                      const char *group, void *arg)
{
    s_hits_t *h = arg;
    if (h->n >= S_HITS_MAX)
        return;
    h->client[h->n] = client;
    snprintf(h->filter[h->n], sizeof h->filter[0], "%s", filter);
    h->shared[h->n] = group != NULL;
    h->opts[h->n] = *opts;
    h->n++;
}

static s_hits_t *s_match(rt_trie_t *trie, s_hits_t *h, const char *topic)
{
    h->n = 0;
    rt_trie_match(trie, topic, strlen(topic), s_collect, NULL, h);
    return h;
}

static bool s_has(const s_hits_t *h, void *client, const char *filter)
{
    for (size_t i = 0; i < h->n; i++)
        if (h->client[i] == client && strcmp(h->filter[i], filter) == 0)
            return true;
    return false;
}

/* The reference: MQTT 4.7 read literally, one level at a time. */
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

static void *s_c(uintptr_t i)
{
    return (void *)(i * 16);
}

static uint32_t s_rand(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(*state >> 33);
}

static const char *s_unavailable_client;

static bool s_available(void *client, void *arg)
{
    return client != (void *)s_unavailable_client;
}

static bool s_none_available(void *client, void *arg)
{
    return false;
}

static void s_count_each(void *client, const rt_sub_opts_t *opts, const char *filter,
                         const char *group, void *arg)
{
    (*(size_t *)arg)++;
}

static void s_count_match(void *client, const rt_sub_opts_t *opts, const char *filter,
                          const char *group, void *arg)
{
    (*(size_t *)arg)++;
}

typedef struct {
    void *client;
    char filter[48];
    bool live;
} s_mirror_t;

static void s_random_filter(uint64_t *rs, char *buf, size_t size)
{
    static const char *levels[] = {"a", "b", "c", "", "+", "$x"};
    size_t off = 0;
    if (s_rand(rs) % 6 == 0)
        off += (size_t)snprintf(buf, size, "$share/g%u/", s_rand(rs) % 2);
    size_t path_start = off;
    int depth = 1 + (int)(s_rand(rs) % 4);
    for (int i = 0; i < depth; i++) {
        const char *l = levels[s_rand(rs) % (i == 0 ? 6 : 5)];
        off += (size_t)snprintf(buf + off, size - off, "%s%s", i ? "/" : "", l);
    }
    if (s_rand(rs) % 4 == 0)
        snprintf(buf + off, size - off, "/#");
    else if (s_rand(rs) % 12 == 0)
        snprintf(buf, size, "#");
    else if (off == path_start)
        snprintf(buf + off, size - off, "/"); /* one empty level is no filter; two are */
}

static void s_random_topic(uint64_t *rs, char *buf, size_t size)
{
    static const char *levels[] = {"a", "b", "c", "", "$x"};
    size_t off = 0;
    int depth = 1 + (int)(s_rand(rs) % 5);
    for (int i = 0; i < depth; i++)
        off += (size_t)snprintf(buf + off, size - off, "%s%s", i ? "/" : "",
                                levels[s_rand(rs) % (i == 0 ? 5 : 4)]);
    if (off == 0)
        snprintf(buf, size, "/"); /* the empty topic is not a topic */
}

static int s_random_check(bool verbose)
{
    int failures = 0;
    enum { N = 1500 };
    static s_mirror_t mirror[N];
    static s_hits_t hits;
    uint64_t rs = 42;
    rt_trie_t *trie = rt_trie_new();
    size_t nm = 0, total_hits = 0;
    for (int round = 0; round < 3; round++) {
        /* add a batch, then remove a third of the live ones by filter or by client */
        for (int i = 0; i < N / 3; i++) {
            char filter[48];
            s_random_filter(&rs, filter, sizeof filter);
            void *client = s_c(1 + s_rand(&rs) % 40);
            bool is_new;
            rt_sub_opts_t opts = {.qos = (uint8_t)(s_rand(&rs) % 3), .sub_id = (uint32_t)i};
            S_CHECK(rt_trie_add(trie, client, filter, &opts, &is_new) == 0);
            size_t k;
            for (k = 0; k < nm; k++)
                if (mirror[k].live && mirror[k].client == client &&
                    strcmp(mirror[k].filter, filter) == 0)
                    break;
            S_CHECK(is_new == (k == nm));
            if (k == nm) {
                mirror[nm].client = client;
                snprintf(mirror[nm].filter, sizeof mirror[nm].filter, "%s", filter);
                mirror[nm].live = true;
                nm++;
            }
        }
        for (size_t k = 0; k < nm; k++) {
            if (!mirror[k].live || s_rand(&rs) % 3 != 0)
                continue;
            S_CHECK(rt_trie_remove(trie, mirror[k].client, mirror[k].filter) == 0);
            S_CHECK(rt_trie_remove(trie, mirror[k].client, mirror[k].filter) == -1);
            mirror[k].live = false;
        }
        void *gone = s_c(1 + s_rand(&rs) % 40);
        rt_trie_remove_client(trie, gone);
        size_t live = 0;
        for (size_t k = 0; k < nm; k++) {
            if (mirror[k].client == gone)
                mirror[k].live = false;
            live += mirror[k].live;
        }
        S_CHECK(rt_trie_count(trie) == live);

        for (int t = 0; t < 2000; t++) {
            char topic[64];
            s_random_topic(&rs, topic, sizeof topic);
            s_match(trie, &hits, topic);
            size_t expect = 0;
            for (size_t k = 0; k < nm; k++) {
                if (!mirror[k].live || !s_brute_match(mirror[k].filter, topic))
                    continue;
                bool shared = strncmp(mirror[k].filter, "$share/", 7) == 0;
                if (!shared) {
                    expect++;
                    S_CHECK(s_has(&hits, mirror[k].client, mirror[k].filter));
                    continue;
                }
                /* one delivery per shared filter: count it at its first live member */
                size_t j;
                for (j = 0; j < k; j++)
                    if (mirror[j].live && strcmp(mirror[j].filter, mirror[k].filter) == 0)
                        break;
                if (j < k)
                    continue;
                expect++;
                size_t got = 0;
                for (size_t i = 0; i < hits.n; i++)
                    got += hits.shared[i] && strcmp(hits.filter[i], mirror[k].filter) == 0;
                S_CHECK(got == 1);
            }
            if (hits.n != expect && verbose)
                fprintf(stderr, "topic '%s': %zu hits, expected %zu\n", topic, hits.n, expect);
            S_CHECK(hits.n == expect);
            total_hits += hits.n;
            /* every hit is a live subscription that matches */
            for (size_t i = 0; i < hits.n; i++) {
                size_t k;
                for (k = 0; k < nm; k++)
                    if (mirror[k].live && mirror[k].client == hits.client[i] &&
                        strcmp(mirror[k].filter, hits.filter[i]) == 0)
                        break;
                S_CHECK(k < nm && s_brute_match(hits.filter[i], topic));
            }
        }
    }
    if (verbose)
        printf("rt_trie: random cross-check, %zu subscriptions made, %zu hits checked\n", nm,
               total_hits);
    rt_trie_destroy(&trie);
    return failures;
}

int rt_trie_test(bool verbose)
{
    int failures = 0;
    static s_hits_t hits;
    rt_sub_opts_t o0 = {0}, o2 = {.qos = 2, .no_local = true, .sub_id = 7};
    bool is_new = false;

    S_CHECK(rt_trie_filter_valid("a/b"));
    S_CHECK(rt_trie_filter_valid("#"));
    S_CHECK(rt_trie_filter_valid("+"));
    S_CHECK(rt_trie_filter_valid("/"));
    S_CHECK(rt_trie_filter_valid("a/+/#"));
    S_CHECK(rt_trie_filter_valid("$share/g/a/#"));
    S_CHECK(rt_trie_filter_valid("$SYS/#"));
    S_CHECK(!rt_trie_filter_valid(""));
    S_CHECK(!rt_trie_filter_valid("a/#/b"));
    S_CHECK(!rt_trie_filter_valid("a#"));
    S_CHECK(!rt_trie_filter_valid("a/b+"));
    S_CHECK(!rt_trie_filter_valid("$share/g"));
    S_CHECK(!rt_trie_filter_valid("$share//a"));
    S_CHECK(!rt_trie_filter_valid("$share/g+/a"));
    S_CHECK(!rt_trie_filter_valid("$share/g/"));
    S_CHECK(!rt_trie_filter_valid(NULL));

    rt_trie_t *trie = rt_trie_new();
    void *c1 = s_c(1), *c2 = s_c(2), *c3 = s_c(3);
    S_CHECK(rt_trie_add(trie, c1, "a/#/b", &o0, &is_new) == -1);
    S_CHECK(rt_trie_count(trie) == 0);

    /* wildcards */
    const char *filters[] = {"sport/tennis/player1",
                             "sport/tennis/player1/#",
                             "sport/#",
                             "#",
                             "sport/+",
                             "+/tennis/#",
                             "+",
                             "/+",
                             "+/+",
                             "sport/+/player1",
                             "a//b",
                             "a/+/b",
                             "/a",
                             "$SYS/#",
                             "$SYS/+",
                             "+/monitor"};
    size_t nf = sizeof filters / sizeof filters[0];
    for (size_t i = 0; i < nf; i++) {
        S_CHECK(rt_trie_add(trie, c1, filters[i], &o0, &is_new) == 0 && is_new);
    }
    S_CHECK(rt_trie_count(trie) == nf);
    S_CHECK(rt_trie_client_count(trie) == 1);

    s_match(trie, &hits, "sport/tennis/player1");
    S_CHECK(hits.n == 6 && s_has(&hits, c1, "sport/+/player1"));
    S_CHECK(s_has(&hits, c1, "sport/tennis/player1"));
    S_CHECK(s_has(&hits, c1, "sport/tennis/player1/#"));
    S_CHECK(s_has(&hits, c1, "sport/#"));
    S_CHECK(s_has(&hits, c1, "#"));
    S_CHECK(s_has(&hits, c1, "+/tennis/#"));

    s_match(trie, &hits, "sport");
    S_CHECK(hits.n == 3); /* sport/#, #, + */
    S_CHECK(s_has(&hits, c1, "sport/#") && s_has(&hits, c1, "+") && s_has(&hits, c1, "#"));

    s_match(trie, &hits, "sport/");
    S_CHECK(hits.n == 4); /* sport/#, #, sport/+, +/+ */
    S_CHECK(s_has(&hits, c1, "sport/+") && s_has(&hits, c1, "+/+"));

    s_match(trie, &hits, "/finance");
    S_CHECK(hits.n == 3); /* #, /+, +/+ */
    S_CHECK(s_has(&hits, c1, "/+") && !s_has(&hits, c1, "+"));

    s_match(trie, &hits, "a//b");
    S_CHECK(hits.n == 3); /* #, a//b, a/+/b */
    S_CHECK(s_has(&hits, c1, "a//b") && s_has(&hits, c1, "a/+/b"));

    s_match(trie, &hits, "/a");
    S_CHECK(hits.n == 4 && s_has(&hits, c1, "/a")); /* #, /+, +/+, /a */

    s_match(trie, &hits, "sport/tennis/player1/ranking/x");
    S_CHECK(hits.n == 4);

    /* $ topics: no first-level wildcard [MQTT-4.7.2-1] */
    s_match(trie, &hits, "$SYS/monitor");
    S_CHECK(hits.n == 2 && s_has(&hits, c1, "$SYS/#") && s_has(&hits, c1, "$SYS/+"));
    s_match(trie, &hits, "$SYS");
    S_CHECK(hits.n == 1 && s_has(&hits, c1, "$SYS/#"));
    s_match(trie, &hits, "x$/monitor");
    S_CHECK(hits.n == 3); /* #, +/+, +/monitor */

    /* replace keeps one entry with the new options */
    S_CHECK(rt_trie_add(trie, c1, "sport/#", &o2, &is_new) == 0 && !is_new);
    S_CHECK(rt_trie_count(trie) == nf);
    S_CHECK(rt_trie_lookup(trie, c1, "sport/#")->qos == 2);
    S_CHECK(rt_trie_lookup(trie, c2, "sport/#") == NULL);
    s_match(trie, &hits, "sport");
    for (size_t i = 0; i < hits.n; i++)
        if (strcmp(hits.filter[i], "sport/#") == 0)
            S_CHECK(hits.opts[i].qos == 2 && hits.opts[i].no_local && hits.opts[i].sub_id == 7);

    /* another client on the same filter, then removals */
    S_CHECK(rt_trie_add(trie, c2, "sport/#", &o0, &is_new) == 0 && is_new);
    s_match(trie, &hits, "sport/x");
    S_CHECK(s_has(&hits, c1, "sport/#") && s_has(&hits, c2, "sport/#"));
    S_CHECK(rt_trie_remove(trie, c1, "sport/#") == 0);
    S_CHECK(rt_trie_remove(trie, c1, "sport/#") == -1);
    S_CHECK(rt_trie_remove(trie, c3, "sport/#") == -1);
    S_CHECK(rt_trie_remove(trie, c1, "no/such") == -1);
    s_match(trie, &hits, "sport/x");
    S_CHECK(!s_has(&hits, c1, "sport/#") && s_has(&hits, c2, "sport/#"));
    S_CHECK(rt_trie_count(trie) == nf);

    size_t n = 0;
    rt_trie_each_client_sub(trie, c1, s_count_each, &n);
    S_CHECK(n == nf - 1);
    n = 0;
    rt_trie_each(trie, s_count_each, &n);
    S_CHECK(n == nf);

    rt_trie_remove_client(trie, c1);
    S_CHECK(rt_trie_count(trie) == 1);
    S_CHECK(rt_trie_client_count(trie) == 1);
    s_match(trie, &hits, "sport/tennis/player1");
    S_CHECK(hits.n == 1 && s_has(&hits, c2, "sport/#"));
    rt_trie_remove_client(trie, c1); /* no-op */
    rt_trie_remove_client(trie, c2);
    S_CHECK(rt_trie_count(trie) == 0 && rt_trie_client_count(trie) == 0);
    /* everything pruned */
    S_CHECK(trie->root->nchildren == 0 && !trie->root->plus && !trie->root->hash);

    /* shared: one member per (group, filter), round robin */
    S_CHECK(rt_trie_add(trie, c1, "$share/g/s/+", &o0, &is_new) == 0 && is_new);
    S_CHECK(rt_trie_add(trie, c2, "$share/g/s/+", &o0, &is_new) == 0 && is_new);
    S_CHECK(rt_trie_add(trie, c3, "$share/g/s/+", &o2, &is_new) == 0 && is_new);
    S_CHECK(rt_trie_add(trie, c1, "$share/h/s/+", &o0, &is_new) == 0 && is_new);
    S_CHECK(rt_trie_add(trie, c2, "$share/g/s/#", &o0, &is_new) == 0 && is_new);
    S_CHECK(rt_trie_add(trie, c3, "s/+", &o0, &is_new) == 0 && is_new);
    S_CHECK(rt_trie_add(trie, c3, "$share/g/s/+", &o0, &is_new) == 0 && !is_new);
    size_t got[4] = {0};
    for (int i = 0; i < 9; i++) {
        s_match(trie, &hits, "s/1");
        S_CHECK(hits.n == 4);
        size_t in_g = 0;
        for (size_t k = 0; k < hits.n; k++) {
            if (strcmp(hits.filter[k], "$share/g/s/+") != 0)
                continue;
            S_CHECK(hits.shared[k]);
            in_g++;
            got[(uintptr_t)hits.client[k] / 16]++;
        }
        S_CHECK(in_g == 1);
        S_CHECK(s_has(&hits, c1, "$share/h/s/+") && s_has(&hits, c2, "$share/g/s/#"));
        S_CHECK(s_has(&hits, c3, "s/+"));
    }
    S_CHECK(got[1] == 3 && got[2] == 3 && got[3] == 3);

    /* availability: c2 is skipped, the others alternate */
    s_unavailable_client = (const char *)c2;
    memset(got, 0, sizeof got);
    for (int i = 0; i < 10; i++) {
        hits.n = 0;
        rt_trie_match(trie, "s/1", 3, s_collect, s_available, &hits);
        for (size_t k = 0; k < hits.n; k++)
            if (strcmp(hits.filter[k], "$share/g/s/+") == 0)
                got[(uintptr_t)hits.client[k] / 16]++;
    }
    S_CHECK(got[1] == 5 && got[2] == 0 && got[3] == 5);
    /* nobody available: still exactly one each */
    hits.n = 0;
    rt_trie_match(trie, "s/1", 3, s_collect, s_none_available, &hits);
    S_CHECK(hits.n == 4);

    /* leaving members, including the one the cursor points at */
    for (int i = 0; i < 4; i++) {
        S_CHECK(rt_trie_remove(trie, c1, "$share/g/s/+") == (i == 0 ? 0 : -1));
        s_match(trie, &hits, "s/2");
        S_CHECK(hits.n == 4 && !s_has(&hits, c1, "$share/g/s/+"));
    }
    rt_trie_remove_client(trie, c3);
    for (int i = 0; i < 3; i++) {
        s_match(trie, &hits, "s/2");
        S_CHECK(hits.n == 3 && s_has(&hits, c2, "$share/g/s/+"));
    }
    s_match(trie, &hits, "s");
    S_CHECK(hits.n == 1 && s_has(&hits, c2, "$share/g/s/#"));
    rt_trie_remove_client(trie, c2);
    rt_trie_remove_client(trie, c1);
    S_CHECK(rt_trie_count(trie) == 0 && trie->root->nchildren == 0);

    /* a topic deeper than the initial match stack, and a long filter */
    {
        size_t depth = 5000;
        char *deep = s_malloc(depth * 2);
        for (size_t i = 0; i < depth; i++) {
            deep[2 * i] = 'x';
            deep[2 * i + 1] = '/';
        }
        deep[depth * 2 - 1] = 0;
        char *deepf = strdup(deep);
        deepf[depth * 2 - 2] = '+';
        S_CHECK(rt_trie_add(trie, c1, deepf, &o0, &is_new) == 0);
        S_CHECK(rt_trie_add(trie, c1, "x/#", &o0, &is_new) == 0);
        S_CHECK(rt_trie_add(trie, c2, "#", &o0, &is_new) == 0);
        s_match(trie, &hits, deep);
        S_CHECK(hits.n == 3);
        /* a filter of all `+`: every frame pushes two */
        for (size_t i = 0; i < depth; i++)
            deepf[2 * i] = '+';
        S_CHECK(rt_trie_add(trie, c3, deepf, &o0, &is_new) == 0);
        s_match(trie, &hits, deep);
        S_CHECK(hits.n == 4);
        free(deep);
        free(deepf);
        rt_trie_destroy(&trie); /* with subscriptions left: no leaks (valgrind / ASan) */
        S_CHECK(trie == NULL);
        rt_trie_destroy(&trie);
    }

    failures += s_random_check(verbose);

    /* many subscriptions, and the timing the router depends on */
    trie = rt_trie_new();
    enum { NSUB = 10000 };
    char filter[64];
    for (uintptr_t i = 0; i < NSUB; i++) {
        snprintf(filter, sizeof filter, "bench/%u/x", (unsigned)i);
        S_CHECK(rt_trie_add(trie, s_c(i + 1), filter, &o0, &is_new) == 0 && is_new);
    }
    S_CHECK(rt_trie_add(trie, s_c(NSUB + 1), "bench/+/x", &o0, &is_new) == 0);
    S_CHECK(rt_trie_count(trie) == NSUB + 1);
    S_CHECK(rt_trie_client_count(trie) == NSUB + 1);
    for (unsigned i = 0; i < NSUB; i += 997) {
        snprintf(filter, sizeof filter, "bench/%u/x", i);
        s_match(trie, &hits, filter);
        S_CHECK(hits.n == 2 && s_has(&hits, s_c(i + 1), filter));
    }
    s_match(trie, &hits, "bench/none/x");
    S_CHECK(hits.n == 1);
    if (verbose) {
        enum { ITER = 2000000 };
        struct timespec t0, t1;
        size_t count = 0;
        char topics[64][32];
        size_t lens[64];
        for (int i = 0; i < 64; i++)
            lens[i] = (size_t)snprintf(topics[i], sizeof topics[i], "bench/%d/x", i * 151);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < ITER; i++)
            rt_trie_match(trie, topics[i & 63], lens[i & 63], s_count_match, NULL, &count);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ns = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec));
        S_CHECK(count == 2 * (size_t)ITER);
        printf("rt_trie: %d subscriptions, %.1f ns per match (2 hits each)\n", NSUB + 1, ns / ITER);
    }
    for (uintptr_t i = 0; i < NSUB; i += 2)
        rt_trie_remove_client(trie, s_c(i + 1));
    S_CHECK(rt_trie_count(trie) == NSUB / 2 + 1);
    rt_trie_destroy(&trie);

    if (verbose && failures)
        fprintf(stderr, "rt_trie_test: %d failures\n", failures);
    return failures ? -1 : 0;
}
