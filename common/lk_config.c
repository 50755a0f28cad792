/*  lk_config: Mosquitto-like "key value" file, ${VAR} expansion, LATCHKEY_<KEY> overrides.
    Entries keep file order; a key may repeat. Overrides are applied when a key is read,
    so a value set in the environment always wins. */
#include "lk_config.h"
#include "lk_common.h"
#include <ctype.h>
#include <errno.h>
#include <stdio.h>

typedef struct {
    char *key;
    char *value;
} s_entry_t;

struct _lk_config_t {
    s_entry_t *entries;
    int count;
    int cap;
    char **owned; /* other strings handed out */
    int owned_count;
};

/* expands ${VAR}; unset variables expand to "" */
static char *s_expand(const char *in)
{
    size_t cap = strlen(in) + 64, len = 0;
    char *out = lk_malloc(cap);
    for (const char *p = in; *p;) {
        const char *end;
        if (p[0] == '$' && p[1] == '{' && (end = strchr(p + 2, '}')) != NULL) {
            char name[128];
            size_t n = (size_t)(end - p - 2);
            if (n >= sizeof(name))
                n = sizeof(name) - 1;
            memcpy(name, p + 2, n);
            name[n] = 0;
            const char *v = getenv(name);
            size_t vl = v ? strlen(v) : 0;
            if (len + vl + 1 > cap) {
                cap = (len + vl + 1) * 2;
                out = lk_realloc(out, cap);
            }
            if (vl)
                memcpy(out + len, v, vl);
            len += vl;
            p = end + 1;
        } else {
            if (len + 2 > cap) {
                cap *= 2;
                out = lk_realloc(out, cap);
            }
            out[len++] = *p++;
        }
    }
    out[len] = 0;
    return out;
}

static void s_add(lk_config_t *self, const char *key, size_t klen, const char *value)
{
    if (self->count == self->cap) {
        self->cap = self->cap ? self->cap * 2 : 32;
        self->entries = lk_realloc(self->entries, (size_t)self->cap * sizeof(s_entry_t));
    }
    self->entries[self->count].key = lk_strndup(key, klen);
    self->entries[self->count].value = s_expand(value);
    self->count++;
}

lk_config_t *lk_config_parse(const char *text, const char *origin)
{
    lk_config_t *self = lk_calloc(1, sizeof(*self));
    int lineno = 0;
    const char *p = text;
    while (*p) {
        lineno++;
        const char *eol = strchr(p, '\n');
        size_t n = eol ? (size_t)(eol - p) : strlen(p);
        char *line = lk_strndup(p, n);
        p += n + (eol ? 1 : 0);
        char *s = line;
        while (isspace((unsigned char)*s))
            s++;
        char *e = s + strlen(s);
        while (e > s && isspace((unsigned char)e[-1]))
            *--e = 0;
        if (*s == 0 || *s == '#') {
            free(line);
            continue;
        }
        char *k = s;
        while (*s && !isspace((unsigned char)*s))
            s++;
        size_t klen = (size_t)(s - k);
        bool ok = klen > 0;
        for (size_t i = 0; i < klen; i++)
            if (!(isalnum((unsigned char)k[i]) || k[i] == '_' || k[i] == '-' || k[i] == '.'))
                ok = false;
        if (!ok) {
            lk_error("%s:%d: malformed line", origin ? origin : "config", lineno);
            free(line);
            lk_config_destroy(&self);
            return NULL;
        }
        while (isspace((unsigned char)*s))
            s++;
        s_add(self, k, klen, s);
        free(line);
    }
    return self;
}

lk_config_t *lk_config_load(const char *path)
{
    if (!path)
        return lk_config_parse("", "defaults");
    char *buf = lk_file_read_text(path, "configuration", NULL);
    if (!buf)
        return NULL;
    lk_config_t *self = lk_config_parse(buf, path);
    free(buf);
    return self;
}

void lk_config_destroy(lk_config_t **self_p)
{
    lk_config_t *self = *self_p;
    if (!self)
        return;
    for (int i = 0; i < self->count; i++) {
        free(self->entries[i].key);
        free(self->entries[i].value);
    }
    free(self->entries);
    for (int i = 0; i < self->owned_count; i++)
        free(self->owned[i]);
    free(self->owned);
    free(self);
    *self_p = NULL;
}

/* the LATCHKEY_<KEY> override of key, expanded, or NULL */
static const char *s_override(lk_config_t *self, const char *key)
{
    char name[160] = "LATCHKEY_";
    size_t n = strlen(name);
    for (const char *k = key; *k && n < sizeof(name) - 1; k++)
        name[n++] = (*k == '-' || *k == '.') ? '_' : (char)toupper((unsigned char)*k);
    name[n] = 0;
    const char *v = getenv(name);
    if (!v)
        return NULL;
    char *x = s_expand(v);
    self->owned = lk_realloc(self->owned, (size_t)(self->owned_count + 1) * sizeof(char *));
    self->owned[self->owned_count++] = x;
    return x;
}

const char *lk_config_get(lk_config_t *self, const char *key, const char *def)
{
    return lk_config_get_nth(self, key, 0) ? lk_config_get_nth(self, key, 0) : def;
}

int lk_config_count(lk_config_t *self, const char *key)
{
    if (s_override(self, key))
        return 1;
    int n = 0;
    for (int i = 0; i < self->count; i++)
        if (strcmp(self->entries[i].key, key) == 0)
            n++;
    return n;
}

const char *lk_config_get_nth(lk_config_t *self, const char *key, int idx)
{
    const char *ov = s_override(self, key);
    if (ov)
        return idx == 0 ? ov : NULL;
    int n = 0;
    for (int i = 0; i < self->count; i++)
        if (strcmp(self->entries[i].key, key) == 0 && n++ == idx)
            return self->entries[i].value;
    return NULL;
}

int64_t lk_config_get_int(lk_config_t *self, const char *key, int64_t def)
{
    const char *v = lk_config_get(self, key, NULL);
    if (!v || !*v)
        return def;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || *end) {
        lk_error("configuration: %s: '%s' is not a number", key, v);
        return def;
    }
    return x;
}

bool lk_config_get_bool(lk_config_t *self, const char *key, bool def)
{
    const char *v = lk_config_get(self, key, NULL);
    if (!v || !*v)
        return def;
    if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes") || !strcmp(v, "on"))
        return true;
    if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no") || !strcmp(v, "off"))
        return false;
    lk_error("configuration: %s: '%s' is not true/false", key, v);
    return def;
}

int lk_config_each(lk_config_t *self, lk_config_each_fn *fn, void *arg)
{
    for (int i = 0; i < self->count; i++) {
        int rc = fn(self->entries[i].key, self->entries[i].value, arg);
        if (rc)
            return rc;
    }
    return 0;
}

void lk_config_set(lk_config_t *self, const char *key, const char *value)
{
    int w = 0;
    for (int i = 0; i < self->count; i++) {
        if (strcmp(self->entries[i].key, key) == 0) {
            free(self->entries[i].key);
            free(self->entries[i].value);
        } else
            self->entries[w++] = self->entries[i];
    }
    self->count = w;
    s_add(self, key, strlen(key), value);
}

static int s_each_test(const char *key, const char *value, void *arg)
{
    char *acc = arg;
    size_t n = strlen(acc);
    snprintf(acc + n, 256 - n, "%s=%s;", key, value);
    return strcmp(key, "stop") == 0 ? 7 : 0;
}

lk_config_t *lk_config_daemon_start(int argc, char **argv, const char *service,
                                    const char *default_node, bool strict_level, lk_args_t *args)
{
    if (lk_args_parse(argc, argv, service, default_node, args) != 0)
        return NULL;
    lk_log_init(service, args->node);
    lk_config_t *config = lk_config_load(args->config_path);
    if (!config)
        return NULL;
    const char *level = lk_config_get(config, "log_level", "notice");
    if (lk_log_set_level_name(level) != 0) {
        if (strict_level) {
            lk_error("configuration: unknown log_level '%s'", level);
            lk_config_destroy(&config);
            return NULL;
        }
        lk_warn("unknown log_level '%s'", level);
    }
    lk_sched_slice(lk_config_get_int(config, "sched_slice_us", 100));
    return config;
}

int lk_config_test(bool verbose)
{
    setenv("LK_TEST_DIR", "/tmp/x", 1);
    setenv("LATCHKEY_MAX_INFLIGHT_MESSAGES", "7", 1);
    lk_config_t *c = lk_config_parse("# comment\n"
                                     "listener 1883 127.0.0.1\n"
                                     "listener 1884\n"
                                     "  router_endpoint ipc://${LK_TEST_DIR}/r.ipc  \n"
                                     "max_inflight_messages 20\n"
                                     "allow_anonymous true\n",
                                     "test");
    int rc = 0;
    if (!c)
        return -1;
    if (lk_config_count(c, "listener") != 2 ||
        strcmp(lk_config_get_nth(c, "listener", 1), "1884") != 0)
        rc = -1;
    if (strcmp(lk_config_get(c, "router_endpoint", ""), "ipc:///tmp/x/r.ipc") != 0)
        rc = -1;
    if (lk_config_get_int(c, "max_inflight_messages", 0) != 7)
        rc = -1;
    if (!lk_config_get_bool(c, "allow_anonymous", false) || lk_config_get_bool(c, "nope", false))
        rc = -1;
    char acc[256] = "";
    if (lk_config_each(c, s_each_test, acc) != 0 ||
        strncmp(acc,
                "listener=1883 127.0.0.1;listener=1884;router_endpoint=ipc:///tmp/x/r.ipc;"
                "max_inflight_messages=20;",
                98) != 0)
        rc = -1;
    lk_config_set(c, "listener", "2000");
    if (lk_config_count(c, "listener") != 1)
        rc = -1;
    lk_config_destroy(&c);
    lk_config_t *st = lk_config_parse("a 1\nstop 2\nb 3\n", "test");
    acc[0] = 0;
    if (!st || lk_config_each(st, s_each_test, acc) != 7 || strcmp(acc, "a=1;stop=2;") != 0)
        rc = -1;
    lk_config_destroy(&st);
    lk_config_t *bad = lk_config_parse("ok 1\n!bad value\n", "test");
    if (bad)
        rc = -1;
    unsetenv("LATCHKEY_MAX_INFLIGHT_MESSAGES");
    if (verbose)
        printf("lk_config: %s\n", rc ? "FAIL" : "ok");
    return rc;
}
