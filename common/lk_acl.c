/*  lk_acl: rule lists, MQTT filter matching / covering / overlap, %u %c substitution and
    the Mosquitto acl_file parser. See lk_acl.h for the semantics. Matching walks both
    strings level by level and never allocates: the frontend runs it on every PUBLISH. */
#include "lk_acl.h"
#include "lk_common.h"
#include <czmq.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>

void lk_acl_list_add(lk_acl_list_t *list, const char *pattern, uint32_t access)
{
    if (list->count == list->cap) {
        list->cap = list->cap ? list->cap * 2 : 8;
        list->rules = lk_realloc(list->rules, list->cap * sizeof(lk_acl_rule_t));
    }
    list->rules[list->count].pattern = lk_strdup(pattern);
    list->rules[list->count].access = access;
    list->count++;
}

void lk_acl_list_clear(lk_acl_list_t *list)
{
    for (size_t i = 0; i < list->count; i++)
        free(list->rules[i].pattern);
    free(list->rules);
    list->rules = NULL;
    list->count = list->cap = 0;
}

/* ---- level walking ----------------------------------------------------------------- */

typedef struct {
    const char *p;
    bool done; /* the last level has been handed out */
} s_walk_t;

/* the next level of the walk into (*s, *n); false when there is none */
static bool s_level(s_walk_t *w, const char **s, size_t *n)
{
    if (w->done)
        return false;
    const char *slash = strchr(w->p, '/');
    *s = w->p;
    if (slash) {
        *n = (size_t)(slash - w->p);
        w->p = slash + 1;
    } else {
        *n = strlen(w->p);
        w->done = true;
    }
    return true;
}

static bool s_is(const char *s, size_t n, char c)
{
    return n == 1 && s[0] == c;
}

/* the first level is a whole `+` or `#` */
static bool s_first_wild(const char *s)
{
    return (s[0] == '+' || s[0] == '#') && (s[1] == 0 || s[1] == '/');
}

bool lk_acl_match(const char *filter, const char *topic)
{
    /* [MQTT-4.7.2-1] wildcards at the first level do not match $-topics */
    if (topic[0] == '$' && s_first_wild(filter))
        return false;
    s_walk_t f = {filter, false}, t = {topic, false};
    for (;;) {
        const char *fs, *ts;
        size_t fn, tn;
        bool hf = s_level(&f, &fs, &fn);
        bool ht = s_level(&t, &ts, &tn);
        if (!hf)
            return !ht;
        if (s_is(fs, fn, '#'))
            return f.done; /* the rest, or nothing (parent level); a `#` not last never matches */
        if (!ht)
            return false;
        if (s_is(fs, fn, '+'))
            continue;
        if (fn != tn || memcmp(fs, ts, fn) != 0)
            return false;
    }
}

bool lk_acl_covers(const char *rule, const char *filter)
{
    /* filter's topics all start with `$`, which a leading rule wildcard never matches */
    if (filter[0] == '$' && s_first_wild(rule))
        return false;
    s_walk_t r = {rule, false}, f = {filter, false};
    for (;;) {
        const char *rs, *fs;
        size_t rn, fnn;
        bool hr = s_level(&r, &rs, &rn);
        bool hf = s_level(&f, &fs, &fnn);
        if (!hr)
            return !hf;
        if (s_is(rs, rn, '#'))
            return r.done;
        if (!hf)
            return false;
        if (s_is(fs, fnn, '#'))
            return false; /* only a rule `#` covers a filter `#` */
        if (s_is(rs, rn, '+'))
            continue; /* covers a literal or a `+` */
        if (s_is(fs, fnn, '+'))
            return false; /* a literal rule level does not cover `+` */
        if (rn != fnn || memcmp(rs, fs, rn) != 0)
            return false;
    }
}

bool lk_acl_overlaps(const char *a, const char *b)
{
    if ((a[0] == '$' && s_first_wild(b)) || (b[0] == '$' && s_first_wild(a)))
        return false;
    s_walk_t wa = {a, false}, wb = {b, false};
    for (;;) {
        const char *as, *bs;
        size_t an, bn;
        bool ha = s_level(&wa, &as, &an);
        bool hb = s_level(&wb, &bs, &bn);
        if (!ha && !hb)
            return true;
        if (ha && s_is(as, an, '#'))
            return wa.done;
        if (hb && s_is(bs, bn, '#'))
            return wb.done;
        if (!ha || !hb)
            return false;
        if (s_is(as, an, '+') || s_is(bs, bn, '+'))
            continue;
        if (an != bn || memcmp(as, bs, an) != 0)
            return false;
    }
}

bool lk_acl_filter_valid(const char *filter)
{
    size_t n = strlen(filter);
    if (n == 0 || n > 65535)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = filter[i];
        if (c != '+' && c != '#')
            continue;
        bool starts = i == 0 || filter[i - 1] == '/';
        bool ends = i + 1 == n || filter[i + 1] == '/';
        if (!starts || !ends || (c == '#' && i + 1 != n))
            return false;
    }
    return true;
}

bool lk_acl_topic_valid(const char *topic)
{
    size_t n = strlen(topic);
    return n > 0 && n <= 65535 && !strpbrk(topic, "+#");
}

/* ---- checks ------------------------------------------------------------------------- */

bool lk_acl_topic_allowed(const lk_acl_rule_t *rules, size_t n, const char *topic, uint32_t access)
{
    access &= LK_ACL_BOTH;
    if (!access)
        return false;
    uint32_t granted = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits = rules[i].access & access;
        if (!bits || !lk_acl_match(rules[i].pattern, topic))
            continue;
        if (rules[i].access & LK_ACL_DENY)
            return false;
        granted |= bits;
    }
    return granted == access;
}

bool lk_acl_filter_allowed(const lk_acl_rule_t *rules, size_t n, const char *filter,
                           uint32_t access)
{
    access &= LK_ACL_BOTH;
    if (!access)
        return false;
    if (strncmp(filter, "$share/", 7) == 0) {
        const char *slash = strchr(filter + 7, '/');
        if (!slash || slash == filter + 7 || !slash[1])
            return false;
        filter = slash + 1;
    }
    uint32_t granted = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits = rules[i].access & access;
        if (!bits)
            continue;
        if (rules[i].access & LK_ACL_DENY) {
            if (lk_acl_covers(rules[i].pattern, filter))
                return false;
        } else if ((bits & ~granted) && lk_acl_covers(rules[i].pattern, filter))
            granted |= bits;
    }
    return granted == access;
}

bool lk_acl_has_deny(const lk_acl_rule_t *rules, size_t n, uint32_t access)
{
    for (size_t i = 0; i < n; i++)
        if ((rules[i].access & LK_ACL_DENY) && (rules[i].access & access))
            return true;
    return false;
}

/* ---- substitution -------------------------------------------------------------------- */

static bool s_safe_value(const char *v)
{
    return v && *v && !strpbrk(v, "+#/");
}

char *lk_acl_subst(const char *pattern, const char *username, const char *client)
{
    size_t cap = strlen(pattern) + 1, len = 0;
    char *out = lk_malloc(cap);
    for (const char *p = pattern; *p; p++) {
        const char *v = NULL;
        if (p[0] == '%' && (p[1] == 'u' || p[1] == 'c')) {
            v = p[1] == 'u' ? username : client;
            if (!s_safe_value(v)) {
                free(out);
                return NULL;
            }
            p++;
        }
        size_t vn = v ? strlen(v) : 1;
        if (len + vn + 1 > cap) {
            cap = (len + vn + 1) * 2;
            out = lk_realloc(out, cap);
        }
        memcpy(out + len, v ? v : p, vn);
        len += vn;
    }
    out[len] = 0;
    if (!lk_acl_filter_valid(out)) {
        free(out);
        return NULL;
    }
    return out;
}

/* ---- acl_file ------------------------------------------------------------------------ */

struct _lk_acl_file_t {
    lk_acl_list_t anon;     /* topic lines before any user line */
    lk_acl_list_t patterns; /* pattern lines, unsubstituted */
    zhashx_t *users;        /* username -> lk_acl_list_t * */
};

static void s_list_free(void **item_p)
{
    lk_acl_list_t *list = *item_p;
    if (list) {
        lk_acl_list_clear(list);
        free(list);
    }
    *item_p = NULL;
}

void lk_acl_file_destroy(lk_acl_file_t **self_p)
{
    lk_acl_file_t *self = *self_p;
    if (!self)
        return;
    lk_acl_list_clear(&self->anon);
    lk_acl_list_clear(&self->patterns);
    zhashx_destroy(&self->users);
    free(self);
    *self_p = NULL;
}

static char *s_trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = 0;
    return s;
}

/* "[read|write|readwrite|deny] <filter>" -> access and filter; -1 when malformed */
static int s_access_topic(char *rest, uint32_t *access, char **topic)
{
    static const struct {
        const char *word;
        uint32_t access;
    } words[] = {{"read", LK_ACL_SUB},
                 {"write", LK_ACL_PUB},
                 {"readwrite", LK_ACL_BOTH},
                 {"deny", LK_ACL_DENY | LK_ACL_BOTH}};
    *access = LK_ACL_BOTH;
    *topic = rest;
    size_t wn = strcspn(rest, " \t");
    for (size_t i = 0; i < LK_ARRAY_LEN(words); i++) {
        if (wn == strlen(words[i].word) && strncmp(rest, words[i].word, wn) == 0) {
            if (!rest[wn])
                return -1; /* an access word and no topic */
            *access = words[i].access;
            *topic = s_trim(rest + wn);
            break;
        }
    }
    return **topic && lk_acl_filter_valid(*topic) ? 0 : -1;
}

lk_acl_file_t *lk_acl_file_parse(const char *text, const char *origin)
{
    lk_acl_file_t *self = lk_calloc(1, sizeof(*self));
    self->users = zhashx_new();
    zhashx_set_destructor(self->users, s_list_free);
    lk_acl_list_t *section = &self->anon;
    int lineno = 0;
    for (const char *p = text; *p;) {
        lineno++;
        const char *eol = strchr(p, '\n');
        size_t n = eol ? (size_t)(eol - p) : strlen(p);
        char *line = lk_strndup(p, n);
        p += n + (eol ? 1 : 0);
        char *s = s_trim(line);
        if (*s == 0 || *s == '#') {
            free(line);
            continue;
        }
        size_t kn = strcspn(s, " \t");
        char *rest = s_trim(s + kn);
        s[kn] = 0;
        uint32_t access;
        char *topic;
        int rc = 0;
        if (strcmp(s, "user") == 0 && *rest) {
            section = zhashx_lookup(self->users, rest);
            if (!section) {
                section = lk_calloc(1, sizeof(*section));
                zhashx_insert(self->users, rest, section);
            }
        } else if (strcmp(s, "topic") == 0 && (rc = s_access_topic(rest, &access, &topic)) == 0)
            lk_acl_list_add(section, topic, access);
        else if (strcmp(s, "pattern") == 0 && (rc = s_access_topic(rest, &access, &topic)) == 0)
            lk_acl_list_add(&self->patterns, topic, access);
        else
            rc = -1;
        free(line);
        if (rc != 0) {
            lk_error("%s:%d: malformed ACL line", origin ? origin : "acl", lineno);
            lk_acl_file_destroy(&self);
            return NULL;
        }
    }
    return self;
}

lk_acl_file_t *lk_acl_file_load(const char *path)
{
    char *buf = lk_file_read_text(path, "ACL file", NULL);
    if (!buf)
        return NULL;
    lk_acl_file_t *self = lk_acl_file_parse(buf, path);
    free(buf);
    return self;
}

size_t lk_acl_file_rules(lk_acl_file_t *self, const char *username, const char *client,
                         lk_acl_list_t *out)
{
    size_t before = out->count;
    lk_acl_list_t *section = username ? zhashx_lookup(self->users, username) : &self->anon;
    for (size_t i = 0; section && i < section->count; i++)
        lk_acl_list_add(out, section->rules[i].pattern, section->rules[i].access);
    for (size_t i = 0; i < self->patterns.count; i++) {
        char *s = lk_acl_subst(self->patterns.rules[i].pattern, username, client);
        if (s) {
            lk_acl_list_add(out, s, self->patterns.rules[i].access);
            free(s);
        }
    }
    return out->count - before;
}

/* ------------------------------------------------------------------------------------ */

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "lk_acl: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);       \
            failed++;                                                                              \
        } else if (verbose)                                                                        \
            fprintf(stderr, "lk_acl: ok: %s\n", #cond);                                            \
    } while (0)

int lk_acl_test(bool verbose)
{
    int failed = 0;

    /* matching */
    S_CHECK(lk_acl_match("a/b", "a/b") && !lk_acl_match("a/b", "a/c"));
    S_CHECK(lk_acl_match("a/+", "a/b") && !lk_acl_match("a/+", "a/b/c") &&
            !lk_acl_match("a/+", "a"));
    S_CHECK(lk_acl_match("a/+", "a/"));
    S_CHECK(lk_acl_match("a/#", "a") && lk_acl_match("a/#", "a/b/c") && !lk_acl_match("a/#", "b"));
    S_CHECK(lk_acl_match("#", "a/b") && lk_acl_match("+/+", "/x") && !lk_acl_match("+", "/x"));
    S_CHECK(!lk_acl_match("#", "$SYS/x") && !lk_acl_match("+/x", "$SYS/x"));
    S_CHECK(lk_acl_match("$SYS/#", "$SYS/x"));
    S_CHECK(!lk_acl_match("a/#/b", "a/x/b") && !lk_acl_match("a", "a/b"));

    /* covering, level by level */
    S_CHECK(lk_acl_covers("#", "a/+/c/#") && lk_acl_covers("a/#", "a") &&
            lk_acl_covers("a/#", "a/#"));
    S_CHECK(!lk_acl_covers("a/+", "a/#") && !lk_acl_covers("a/+/#", "a/#"));
    S_CHECK(lk_acl_covers("a/+/#", "a/+") && lk_acl_covers("a/+", "a/+") &&
            lk_acl_covers("a/+", "a/b"));
    S_CHECK(!lk_acl_covers("a/b", "a/+") && !lk_acl_covers("a/b", "a/b/c") &&
            !lk_acl_covers("a/b/c", "a/b"));
    S_CHECK(!lk_acl_covers("+", "+/+") && lk_acl_covers("+/+", "x/+"));
    S_CHECK(!lk_acl_covers("#", "$SYS/#") && lk_acl_covers("$SYS/#", "$SYS/broker/+"));
    S_CHECK(lk_acl_covers("#", "#") && !lk_acl_covers("+/#", "#"));

    /* overlap */
    S_CHECK(lk_acl_overlaps("a/#", "a") && lk_acl_overlaps("+/b", "a/+") &&
            lk_acl_overlaps("#", "x/y"));
    S_CHECK(!lk_acl_overlaps("a/b", "a/c") && !lk_acl_overlaps("a", "a/+") &&
            !lk_acl_overlaps("#", "$SYS/x"));

    /* validity */
    S_CHECK(lk_acl_filter_valid("a/+/#") && lk_acl_filter_valid("#") && lk_acl_filter_valid("/"));
    S_CHECK(!lk_acl_filter_valid("") && !lk_acl_filter_valid("a#") && !lk_acl_filter_valid("#/a"));
    S_CHECK(!lk_acl_filter_valid("a/b+") && !lk_acl_filter_valid("+a"));
    S_CHECK(lk_acl_topic_valid("a/b") && !lk_acl_topic_valid("a/+") && !lk_acl_topic_valid(""));

    /* rule lists: grants, unions of bits, deny wins */
    lk_acl_list_t l = {0};
    lk_acl_list_add(&l, "lock/1/#", LK_ACL_SUB);
    lk_acl_list_add(&l, "lock/1/m", LK_ACL_PUB);
    lk_acl_list_add(&l, "/unauth", LK_ACL_PUB);
    lk_acl_list_add(&l, "lock/1/secret", LK_ACL_DENY | LK_ACL_BOTH);
    S_CHECK(lk_acl_topic_allowed(l.rules, l.count, "lock/1/m", LK_ACL_PUB));
    S_CHECK(lk_acl_topic_allowed(l.rules, l.count, "lock/1/m", LK_ACL_BOTH));
    S_CHECK(!lk_acl_topic_allowed(l.rules, l.count, "lock/1/f", LK_ACL_PUB));
    S_CHECK(lk_acl_topic_allowed(l.rules, l.count, "lock/1/f", LK_ACL_SUB));
    S_CHECK(!lk_acl_topic_allowed(l.rules, l.count, "lock/1/secret", LK_ACL_SUB));
    S_CHECK(!lk_acl_topic_allowed(l.rules, l.count, "lock/2/m", LK_ACL_PUB));
    S_CHECK(!lk_acl_topic_allowed(l.rules, l.count, "lock/1/m", 0));
    S_CHECK(lk_acl_filter_allowed(l.rules, l.count, "lock/1/statu", LK_ACL_SUB));
    S_CHECK(lk_acl_filter_allowed(l.rules, l.count, "lock/1/+/x", LK_ACL_SUB));
    /* overlapping a deny is granted (deliveries are checked one by one); covered is not */
    S_CHECK(lk_acl_filter_allowed(l.rules, l.count, "lock/1/#", LK_ACL_SUB));
    S_CHECK(!lk_acl_filter_allowed(l.rules, l.count, "lock/1/secret", LK_ACL_SUB));
    S_CHECK(lk_acl_has_deny(l.rules, l.count, LK_ACL_SUB));
    S_CHECK(!lk_acl_topic_allowed(l.rules, l.count, "lock/1/secret", LK_ACL_SUB));
    S_CHECK(lk_acl_filter_allowed(l.rules, l.count, "lock/1/+", LK_ACL_SUB)); /* overlaps */
    S_CHECK(!lk_acl_filter_allowed(l.rules, l.count, "lock/+/statu", LK_ACL_SUB));
    S_CHECK(!lk_acl_filter_allowed(l.rules, l.count, "/unauth", LK_ACL_SUB));
    S_CHECK(lk_acl_filter_allowed(l.rules, l.count, "$share/g/lock/1/statu", LK_ACL_SUB));
    S_CHECK(!lk_acl_filter_allowed(l.rules, l.count, "$share/g/lock/2/statu", LK_ACL_SUB));
    S_CHECK(!lk_acl_filter_allowed(l.rules, l.count, "$share//lock/1/statu", LK_ACL_SUB));
    S_CHECK(!lk_acl_filter_allowed(l.rules, l.count, "$share/g", LK_ACL_SUB));
    lk_acl_list_clear(&l);
    S_CHECK(l.count == 0 && !lk_acl_topic_allowed(l.rules, l.count, "a", LK_ACL_PUB));
    lk_acl_list_add(&l, "#", LK_ACL_BOTH);
    S_CHECK(lk_acl_filter_allowed(l.rules, l.count, "#", LK_ACL_SUB));
    S_CHECK(lk_acl_filter_allowed(l.rules, l.count, "$share/g/#", LK_ACL_SUB));
    S_CHECK(!lk_acl_filter_allowed(l.rules, l.count, "$SYS/#", LK_ACL_SUB));
    lk_acl_list_clear(&l);

    /* substitution */
    char *s = lk_acl_subst("dev/%u/%c/#", "ann", "c1");
    S_CHECK(s && strcmp(s, "dev/ann/c1/#") == 0);
    free(s);
    s = lk_acl_subst("50%/x", NULL, NULL);
    S_CHECK(s && strcmp(s, "50%/x") == 0);
    free(s);
    S_CHECK(lk_acl_subst("dev/%u", "a/b", "c") == NULL);
    S_CHECK(lk_acl_subst("dev/%u", "#", "c") == NULL);
    S_CHECK(lk_acl_subst("dev/%c", "u", "+") == NULL);
    S_CHECK(lk_acl_subst("dev/%u", NULL, "c") == NULL);
    S_CHECK(lk_acl_subst("dev/%u", "", "c") == NULL);

    /* acl_file */
    const char *text = "# comment\n"
                       "topic read public/#\n"
                       "\n"
                       "user ann\n"
                       "  topic readwrite ann/#\n"
                       "topic deny ann/private\n"
                       "topic shared/x\n"
                       "user bob smith\n"
                       "topic write bob/in\r\n"
                       "pattern write sensor/%u/data\n"
                       "pattern read cmd/%c\n"
                       "user ann\n"
                       "topic read extra/+\n";
    lk_acl_file_t *af = lk_acl_file_parse(text, "test");
    S_CHECK(af != NULL);
    if (af) {
        lk_acl_list_t r = {0};
        S_CHECK(lk_acl_file_rules(af, NULL, "c9", &r) == 2); /* public/# + cmd/c9 */
        S_CHECK(lk_acl_filter_allowed(r.rules, r.count, "public/a", LK_ACL_SUB));
        S_CHECK(!lk_acl_topic_allowed(r.rules, r.count, "public/a", LK_ACL_PUB));
        S_CHECK(lk_acl_filter_allowed(r.rules, r.count, "cmd/c9", LK_ACL_SUB));
        lk_acl_list_clear(&r);
        S_CHECK(lk_acl_file_rules(af, "ann", "c1", &r) == 6);
        S_CHECK(lk_acl_topic_allowed(r.rules, r.count, "ann/x", LK_ACL_PUB));
        S_CHECK(!lk_acl_topic_allowed(r.rules, r.count, "ann/private", LK_ACL_PUB));
        S_CHECK(lk_acl_filter_allowed(r.rules, r.count, "ann/#", LK_ACL_SUB));
        S_CHECK(!lk_acl_filter_allowed(r.rules, r.count, "ann/private", LK_ACL_SUB));
        S_CHECK(lk_acl_filter_allowed(r.rules, r.count, "ann/+/y", LK_ACL_SUB));
        S_CHECK(lk_acl_topic_allowed(r.rules, r.count, "shared/x", LK_ACL_BOTH));
        S_CHECK(lk_acl_topic_allowed(r.rules, r.count, "sensor/ann/data", LK_ACL_PUB));
        S_CHECK(!lk_acl_topic_allowed(r.rules, r.count, "sensor/bob/data", LK_ACL_PUB));
        S_CHECK(lk_acl_filter_allowed(r.rules, r.count, "extra/+", LK_ACL_SUB));
        S_CHECK(!lk_acl_topic_allowed(r.rules, r.count, "public/a", LK_ACL_SUB));
        lk_acl_list_clear(&r);
        S_CHECK(lk_acl_file_rules(af, "bob smith", "c2", &r) == 3); /* bob/in, sensor, cmd/c2 */
        S_CHECK(lk_acl_topic_allowed(r.rules, r.count, "bob/in", LK_ACL_PUB));
        lk_acl_list_clear(&r);
        S_CHECK(lk_acl_file_rules(af, "eve", "x/y", &r) == 1); /* sensor/eve/data only */
        lk_acl_list_clear(&r);
        lk_acl_file_destroy(&af);
        S_CHECK(af == NULL);
    }
    S_CHECK(lk_acl_file_parse("topic read\n", "t") == NULL);
    S_CHECK(lk_acl_file_parse("topic\n", "t") == NULL);
    S_CHECK(lk_acl_file_parse("user\n", "t") == NULL);
    S_CHECK(lk_acl_file_parse("topic read a/#/b\n", "t") == NULL);
    S_CHECK(lk_acl_file_parse("bogus x\n", "t") == NULL);
    af = lk_acl_file_parse("", "t");
    S_CHECK(af != NULL);
    lk_acl_file_destroy(&af);
    return failed ? -1 : 0;
}
