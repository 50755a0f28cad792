/*  rt_trie: the router's subscription index.

    A subscription is (client, filter) plus its options; `client` is an opaque pointer (the
    router's client record) the trie never dereferences. Filters are kept exactly as the
    client gave them, `$share/<group>/` prefix included. The trie owns its copies of the
    filters and the options; the caller owns the clients and must call
    rt_trie_remove_client() before freeing one.

    Matching a topic walks a trie of filter levels; literal children are found by hash, `+`
    and `#` children are direct links. The match path does not allocate (its stack lives in
    the trie and grows only when a topic is deeper than any seen before), so the trie is not
    reentrant: callbacks must not call back into the same trie. Single-threaded, like the
    router actor that owns it. */
#ifndef RT_TRIE_H_INCLUDED
#define RT_TRIE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _rt_trie_t rt_trie_t;

/* MQTT 5 subscription options; sub_id 0 means none */
typedef struct {
    uint8_t qos; /* 0..2 */
    bool no_local;
    bool retain_as_published;
    uint8_t retain_handling; /* 0..2 */
    uint32_t sub_id;
} rt_sub_opts_t;

/* One matching subscription. filter is the client's full filter string; group is the share
   name for a shared subscription (then this client is the one member chosen for the
   group), NULL otherwise. Pointers are valid only during the call. */
typedef void(rt_match_fn)(void *client, const rt_sub_opts_t *opts, const char *filter,
                          const char *group, void *arg);

/* Whether a shared-subscription member can take a message now (connected, not over its
   quota). */
typedef bool(rt_available_fn)(void *client, void *arg);

rt_trie_t *rt_trie_new(void);
void rt_trie_destroy(rt_trie_t **self_p);

/* true if filter is a valid MQTT topic filter (non-empty, at most 65535 bytes, `+` and `#`
   alone in their level, `#` last; `$share/<group>/<filter>` with a non-empty group free
   of wildcards and a valid filter) */
bool rt_trie_filter_valid(const char *filter);

/* Adds a subscription, or replaces the options of the same client's subscription with the
   same filter string; *is_new (may be NULL) says which. opts is copied. Returns -1 on an
   invalid filter. */
int rt_trie_add(rt_trie_t *self, void *client, const char *filter, const rt_sub_opts_t *opts,
                bool *is_new);

/* Removes one subscription: 0, or -1 if it did not exist. */
int rt_trie_remove(rt_trie_t *self, void *client, const char *filter);

/* Removes every subscription of client; O(its subscriptions). */
void rt_trie_remove_client(rt_trie_t *self, void *client);

/* Options of one subscription, or NULL. Valid until the trie next changes. */
const rt_sub_opts_t *rt_trie_lookup(rt_trie_t *self, void *client, const char *filter);

/* number of subscriptions, and of clients with at least one */
size_t rt_trie_count(rt_trie_t *self);
size_t rt_trie_client_count(rt_trie_t *self);

/* Calls fn once per matching non-shared subscription, and once per matching shared
   (group, filter) with one member chosen round-robin among those `available` accepts (any
   member when none does; available may be NULL). topic need not be NUL-terminated; it
   must not contain wildcards (the caller validates PUBLISH topics); an empty topic matches
   nothing. Topics starting with `$` do not match filters starting with `+` or `#`
   [MQTT-4.7.2-1]. */
void rt_trie_match(rt_trie_t *self, const char *topic, size_t topic_len, rt_match_fn *fn,
                   rt_available_fn *available, void *arg);

/* Calls fn for each subscription of client (group set for shared ones), in no set order. */
void rt_trie_each_client_sub(rt_trie_t *self, void *client, rt_match_fn *fn, void *arg);

/* Calls fn for every subscription, grouped by client. */
void rt_trie_each(rt_trie_t *self, rt_match_fn *fn, void *arg);

int rt_trie_test(bool verbose);

#endif
