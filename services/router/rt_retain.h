/*  rt_retain: the router's retained-message index, topic -> message.

    Messages are opaque pointers owned by the index once set: it frees them with the
    free_fn given at construction when they are replaced, deleted, or the index is
    destroyed. Topics are kept in a tree of levels, so a filter with a literal prefix
    (`sensors/+/temp`, `a/b/#`) visits only that branch, never every retained topic.
    Single-threaded; not reentrant except as the callbacks' return value allows. */
#ifndef RT_RETAIN_H_INCLUDED
#define RT_RETAIN_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

typedef struct _rt_retain_t rt_retain_t;

typedef void(rt_retain_free_fn)(void *msg);

/* Callback return values: keep going, or delete this message (the index frees it with
   free_fn after the callback returns; the walk continues safely). Any other change to the
   index from inside a callback is forbidden. */
#define RT_RETAIN_KEEP 0
#define RT_RETAIN_DELETE 1

/* One retained message; topic is valid only during the call. */
typedef int(rt_retain_fn)(const char *topic, void *msg, void *arg);

/* free_fn may be NULL when the caller frees messages itself */
rt_retain_t *rt_retain_new(rt_retain_free_fn *free_fn);
void rt_retain_destroy(rt_retain_t **self_p);

/* Stores msg (not NULL) under topic, freeing the message it replaces. Returns -1 (msg not
   taken) if topic is empty, longer than 65535 bytes, or holds a wildcard. */
int rt_retain_set(rt_retain_t *self, const char *topic, void *msg);

/* Deletes and frees the message under topic: 0, or -1 if there was none. */
int rt_retain_delete(rt_retain_t *self, const char *topic);

/* the message under topic, or NULL; the index still owns it */
void *rt_retain_get(rt_retain_t *self, const char *topic);

size_t rt_retain_count(rt_retain_t *self);

/* Calls fn for every retained topic that filter matches (MQTT wildcards; a topic starting
   with `$` does not match a filter starting with `+` or `#` [MQTT-4.7.2-1]). A
   `$share/<group>/` prefix is stripped; that retained messages are not sent to new shared
   subscriptions is the caller's rule. Returns -1 if the filter is invalid. */
int rt_retain_match(rt_retain_t *self, const char *filter, rt_retain_fn *fn, void *arg);

/* Calls fn for every retained message, `$` topics included. */
void rt_retain_each(rt_retain_t *self, rt_retain_fn *fn, void *arg);

int rt_retain_test(bool verbose);

#endif
