/*  lk_acl: access-control rules and the checks on them, shared by auth (which builds a
    client's rule list at connect) and the MQTT frontend (which enforces the list it got in
    AuthReply on every PUBLISH and SUBSCRIBE of that connection). Plus the Mosquitto
    `acl_file` parser and %u / %c substitution.

    A rule is a topic filter (MQTT wildcard syntax) and access bits: LK_ACL_SUB (1) lets the
    client subscribe to filters the rule covers and LK_ACL_PUB (2) lets it publish to topics
    the rule matches. LK_ACL_DENY (4) turns the rule around: it forbids its SUB/PUB bits,
    and a deny always wins over any grant, whatever the order of the rules.

    Matching follows MQTT: `+` is one level, `#` the rest (including the parent level:
    `a/#` matches `a`), and a filter whose first level is a wildcard does not match topics
    that start with `$` (so `#` does not cover `$SYS/...`; superusers are told apart by the
    AuthReply's superuser flag, not by rules). A `+` or `#` that is not a whole level is an
    ordinary character here: validate filters with lk_acl_filter_valid() first.

    The rule struct is plain C; the auth service and the frontend convert it to and from
    the protobuf lk.AclRule. */
#ifndef LK_ACL_H_INCLUDED
#define LK_ACL_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LK_ACL_SUB 1u
#define LK_ACL_PUB 2u
#define LK_ACL_BOTH 3u
#define LK_ACL_DENY 4u

typedef struct {
    char *pattern;   /* topic filter */
    uint32_t access; /* LK_ACL_* bits */
} lk_acl_rule_t;

/* A growable list of rules. Zero-initialise it; it owns its patterns. */
typedef struct {
    lk_acl_rule_t *rules;
    size_t count;
    size_t cap;
} lk_acl_list_t;

/* appends a copy of pattern */
void lk_acl_list_add(lk_acl_list_t *list, const char *pattern, uint32_t access);
/* frees every rule and the array; the list is empty and reusable afterwards */
void lk_acl_list_clear(lk_acl_list_t *list);

/* PUBLISH (access = LK_ACL_PUB) or a delivery check (LK_ACL_SUB): true when no deny rule
   with one of those bits matches topic and, for each bit of access, some granting rule with
   that bit matches topic. */
bool lk_acl_topic_allowed(const lk_acl_rule_t *rules, size_t n, const char *topic, uint32_t access);

/* SUBSCRIBE (access = LK_ACL_SUB): true when, for each bit of access, some granting rule
   with that bit COVERS filter (every topic the filter matches, the rule matches too), and
   no deny rule with one of those bits covers it too (everything it could receive is
   denied). A subscription that only overlaps a deny rule (`#` against a deny of
   `test/nosubscribe`) is granted, as in Mosquitto: the frontend then checks each
   delivery with lk_acl_topic_allowed (see lk_acl_has_deny). For `$share/<group>/<f>` the
   check is on <f>; a malformed $share filter is refused. */
bool lk_acl_filter_allowed(const lk_acl_rule_t *rules, size_t n, const char *filter,
                           uint32_t access);

/* true when some deny rule has one of the access bits: deliveries then need a per-message
   lk_acl_topic_allowed check */
bool lk_acl_has_deny(const lk_acl_rule_t *rules, size_t n, uint32_t access);

/* true when topic (no wildcards) matches filter */
bool lk_acl_match(const char *filter, const char *topic);
/* true when every topic matching filter matches rule */
bool lk_acl_covers(const char *rule, const char *filter);
/* true when some topic matches both filters */
bool lk_acl_overlaps(const char *a, const char *b);

/* MQTT validity: a filter is non-empty, `+` and `#` only as whole levels, `#` last; a
   topic name is non-empty without `+` or `#`. */
bool lk_acl_filter_valid(const char *filter);
bool lk_acl_topic_valid(const char *topic);

/* Substitutes %u (username) and %c (client id) into pattern. Returns a new string (caller
   frees), or NULL when the pattern needs a value that is missing, empty, or contains `+`,
   `#` or `/` — a client must not widen its own rule by picking such a name — or when the
   result is not a valid filter. */
char *lk_acl_subst(const char *pattern, const char *username, const char *client);

/* A parsed Mosquitto acl_file:
       user <name>                                  following topic lines are that user's
       topic [read|write|readwrite|deny] <filter>   read = subscribe, write = publish,
                                                    no word = readwrite, deny = neither
       pattern [read|write|readwrite|deny] <filter> every client, %u / %c substituted
   `topic` lines before any `user` line apply to anonymous clients. '#' starts a comment
   line. */
typedef struct _lk_acl_file_t lk_acl_file_t;

/* NULL with a log line (file:line) when unreadable or malformed. Caller owns the result. */
lk_acl_file_t *lk_acl_file_load(const char *path);
lk_acl_file_t *lk_acl_file_parse(const char *text, const char *origin);
void lk_acl_file_destroy(lk_acl_file_t **self_p);

/* Appends the rules for a client to out: the anonymous section's when username is NULL,
   else that user's section; then every pattern that substitutes (see lk_acl_subst).
   Returns the number of rules appended. */
size_t lk_acl_file_rules(lk_acl_file_t *self, const char *username, const char *client,
                         lk_acl_list_t *out);

int lk_acl_test(bool verbose);

#endif
