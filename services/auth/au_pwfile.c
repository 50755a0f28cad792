/*  au_pwfile: parses a Mosquitto password file into a username -> hash table (CZMQ
    zhashx, so a 20 000-line file answers in constant time). See au_pwfile.h. */
#include "au_pwfile.h"
#include "lk_common.h"
#include "lk_crypto.h"
#include <czmq.h>
#include <ctype.h>
#include <errno.h>

struct _au_pwfile_t {
    zhashx_t *users; /* username -> hash string (owned) */
};

static void s_str_free(void **item_p)
{
    free(*item_p);
    *item_p = NULL;
}

void au_pwfile_destroy(au_pwfile_t **self_p)
{
    au_pwfile_t *self = *self_p;
    if (!self)
        return;
    zhashx_destroy(&self->users);
    free(self);
    *self_p = NULL;
}

au_pwfile_t *au_pwfile_parse(const char *text, const char *origin)
{
    au_pwfile_t *self = lk_calloc(1, sizeof(*self));
    self->users = zhashx_new();
    zhashx_set_destructor(self->users, s_str_free);
    int lineno = 0;
    for (const char *p = text; *p;) {
        lineno++;
        const char *eol = strchr(p, '\n');
        size_t n = eol ? (size_t)(eol - p) : strlen(p);
        char *line = lk_strndup(p, n);
        p += n + (eol ? 1 : 0);
        /* trailing blanks and a CR are not part of the hash (files edited elsewhere) */
        size_t len = strlen(line);
        while (len && isspace((unsigned char)line[len - 1]))
            line[--len] = 0;
        const char *s = line;
        while (isspace((unsigned char)*s))
            s++;
        if (*s == 0 || *s == '#') {
            free(line);
            continue;
        }
        char *colon = strchr(line, ':');
        if (!colon || colon == line || !colon[1]) {
            /* skipped, as Mosquitto does: one bad line does not lock every user out.
               Never echo the line: it may hold a password typed in clear */
            lk_warn("%s:%d: malformed password line skipped (want user:hash)",
                    origin ? origin : "password file", lineno);
            free(line);
            continue;
        }
        *colon = 0;
        /* the last line for a user wins, as in Mosquitto */
        zhashx_update(self->users, line, lk_strdup(colon + 1));
        free(line);
    }
    return self;
}

au_pwfile_t *au_pwfile_load(const char *path)
{
    size_t len = 0;
    char *buf = lk_file_read_text(path, "password file", &len);
    if (!buf)
        return NULL;
    au_pwfile_t *self = au_pwfile_parse(buf, path);
    /* the buffer held hashes only, but wipe it anyway: cheap, and files get misused */
    memset(buf, 0, len);
    free(buf);
    return self;
}

const char *au_pwfile_lookup(au_pwfile_t *self, const char *username)
{
    return zhashx_lookup(self->users, username);
}

size_t au_pwfile_size(au_pwfile_t *self)
{
    return zhashx_size(self->users);
}

int au_pwfile_test(au_tally_t *t)
{
    int failed = t->failed;
    const char *text = "# users\n"
                       "ann:$7$101$dyCjTi1tguIj1yjv$jO0ld0b8r+r6XUHy4Q9pyjQSYmhnEhOmxM0TammV0Vzx6"
                       "+h/D9ndisK4TCYVhCq5Vc8oP3uEt7eZCm17QHGUZA==\r\n"
                       "\n"
                       "bob:old\n"
                       "bob:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b  \n";
    au_pwfile_t *pf = au_pwfile_parse(text, "test");
    AU_CHECK(t, "pwfile parse", pf && au_pwfile_size(pf) == 2);
    if (pf) {
        const char *h = au_pwfile_lookup(pf, "ann");
        AU_CHECK(t, "pwfile mosquitto_passwd line",
                 h && lk_crypto_pw_verify(h, NULL, "secret", 6) == 1);
        h = au_pwfile_lookup(pf, "bob");
        AU_CHECK(t, "pwfile last line wins, blanks trimmed",
                 h && lk_crypto_pw_verify(h, NULL, "secret", 6) == 1);
        AU_CHECK(t, "pwfile unknown user", au_pwfile_lookup(pf, "eve") == NULL);
        au_pwfile_destroy(&pf);
    }
    pf = au_pwfile_parse("nocolon\nann:\n:nouser\nbob:x\n", "test");
    AU_CHECK(t, "pwfile malformed lines skipped", pf && au_pwfile_size(pf) == 1 &&
                                                      au_pwfile_lookup(pf, "bob") &&
                                                      !au_pwfile_lookup(pf, "ann"));
    au_pwfile_destroy(&pf);
    AU_CHECK(t, "pwfile missing file refused", au_pwfile_load("/nonexistent/pw") == NULL);
    return t->failed == failed ? 0 : -1;
}
