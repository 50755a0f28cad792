/*  au_pwfile: a Mosquitto password file held in memory.

    One "username:hash" a line, as mosquitto_passwd writes it (the hash in any format
    lk_crypto_pw_verify() knows); blank lines and lines starting with '#' are skipped, and
    so is a malformed line (no ':', empty user or hash), with a warning naming its line
    number, as Mosquitto does. The
    auth actor loads it at start and again on SIGHUP; a file that fails to load leaves the
    previous copy in force. */
#ifndef AU_PWFILE_H_INCLUDED
#define AU_PWFILE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

#include "au_test.h"

typedef struct _au_pwfile_t au_pwfile_t;

/* NULL with a log line when unreadable. Caller owns the result. */
au_pwfile_t *au_pwfile_load(const char *path);
au_pwfile_t *au_pwfile_parse(const char *text, const char *origin);
void au_pwfile_destroy(au_pwfile_t **self_p);

/* the stored hash of username, or NULL; valid while the file object lives */
const char *au_pwfile_lookup(au_pwfile_t *self, const char *username);
size_t au_pwfile_size(au_pwfile_t *self);

int au_pwfile_test(au_tally_t *tally);

#endif
