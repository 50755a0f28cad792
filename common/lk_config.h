/*  lk_config: one configuration file plus environment overrides.

    The file is Mosquitto-like: one "key value..." per line, '#' starts a comment, a key
    may repeat (listener). An environment variable LATCHKEY_<KEY> (key upper-cased)
    replaces every value of that key from the file. ${VAR} in a value is expanded from the
    environment (empty when unset), so one file serves every run folder. */
#ifndef LK_CONFIG_H_INCLUDED
#define LK_CONFIG_H_INCLUDED

#include "lk_common.h"
#include <stdbool.h>
#include <stdint.h>

typedef struct _lk_config_t lk_config_t;

/* path may be NULL (defaults and environment only). Returns NULL with a log line when the
   file cannot be read or has a malformed line. Caller owns the result. */
lk_config_t *lk_config_load(const char *path);
/* parses text as if it were a file; for tests and fuzzing */
lk_config_t *lk_config_parse(const char *text, const char *origin);
void lk_config_destroy(lk_config_t **self_p);

/* first value of key (after overrides), or def. The returned string lives as long as
   the config. */
const char *lk_config_get(lk_config_t *self, const char *key, const char *def);
/* number of values of a repeated key, and the i-th (0-based) */
int lk_config_count(lk_config_t *self, const char *key);
const char *lk_config_get_nth(lk_config_t *self, const char *key, int i);
/* typed getters; a malformed value logs an error and returns def */
int64_t lk_config_get_int(lk_config_t *self, const char *key, int64_t def);
bool lk_config_get_bool(lk_config_t *self, const char *key, bool def);
/* Calls fn for every (key, value) of the file in file order, repeated keys included, until
   fn returns non-zero (returned). For sectioned keys (a `listener` line and the lines that
   follow it): environment overrides do not apply here, so such keys are file-only. */
typedef int(lk_config_each_fn)(const char *key, const char *value, void *arg);
int lk_config_each(lk_config_t *self, lk_config_each_fn *fn, void *arg);
/* sets (replaces) a value, e.g. from a command-line option */
void lk_config_set(lk_config_t *self, const char *key, const char *value);

/* The start every daemon shares: parses argv (lk_args_parse: -c, -n, -r into *args),
   names the log after service and node, loads the configuration file, applies log_level
   and sched_slice_us (lk_sched_slice). Returns the configuration (the caller destroys
   it), or NULL after a log line: the daemon exits LK_EXIT_CONFIG. strict_level: an
   unknown log_level is that error; otherwise a warning. */
lk_config_t *lk_config_daemon_start(int argc, char **argv, const char *service,
                                    const char *default_node, bool strict_level, lk_args_t *args);

int lk_config_test(bool verbose);

#endif
