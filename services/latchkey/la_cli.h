/*  la_cli: what the subcommands of the `latchkey` operator CLI share.

    main.c parses the global options (-c config), loads the configuration and calls the
    subcommand named on the command line through its table. A subcommand is one function
    `int la_cmd_<name>(la_ctx_t *ctx, int argc, char **argv)` in its own file, where
    argv[0] is the subcommand's name and the rest its arguments; it returns an exit code:
    LA_EXIT_OK, LA_EXIT_FAIL (runtime failure: Redis down, no such user, ...) or
    LA_EXIT_USAGE (after printing its usage with la_usage()).

    To add one (e.g. `latchkey log dump` in la_log.c): declare it below, implement it in
    its file, and add one line to s_commands[] in main.c. */
#ifndef LA_CLI_H_INCLUDED
#define LA_CLI_H_INCLUDED

#include "lk_config.h"
#include "lk_pg.h"
#include "lk_redis.h"
#include <stdbool.h>

#define LA_EXIT_OK 0
#define LA_EXIT_FAIL 1
#define LA_EXIT_USAGE 2

typedef struct {
    const char *config_path; /* -c or $LATCHKEY_CONF; NULL: defaults and environment */
    lk_config_t *config;
    lk_redis_t *redis; /* opened on first use by la_redis() */
} la_ctx_t;

typedef struct {
    const char *name;
    int (*fn)(la_ctx_t *ctx, int argc, char **argv);
    const char *usage; /* one or more lines "passwd [-f file] <user> [password]" */
    const char *summary;
} la_command_t;

/* ---- subcommands ---- */
int la_cmd_passwd(la_ctx_t *ctx, int argc, char **argv);  /* la_passwd.c */
int la_cmd_acl(la_ctx_t *ctx, int argc, char **argv);     /* la_acl.c */
int la_cmd_user(la_ctx_t *ctx, int argc, char **argv);    /* la_acl.c */
int la_cmd_revoke(la_ctx_t *ctx, int argc, char **argv);  /* la_revoke.c */
int la_cmd_users(la_ctx_t *ctx, int argc, char **argv);   /* la_lock.c: user add|del|list */
int la_cmd_lock(la_ctx_t *ctx, int argc, char **argv);    /* la_lock.c */
int la_cmd_bind(la_ctx_t *ctx, int argc, char **argv);    /* la_lock.c */
int la_cmd_unbind(la_ctx_t *ctx, int argc, char **argv);  /* la_lock.c */
int la_cmd_login(la_ctx_t *ctx, int argc, char **argv);   /* la_login.c */
int la_cmd_history(la_ctx_t *ctx, int argc, char **argv); /* la_login.c */
int la_cmd_log(la_ctx_t *ctx, int argc, char **argv);     /* la_log.c */
int la_cmd_keygen(la_ctx_t *ctx, int argc, char **argv);  /* la_keygen.c */
int la_cmd_apikey(la_ctx_t *ctx, int argc, char **argv);  /* la_apikey.c */
int la_cmd_ota(la_ctx_t *ctx, int argc, char **argv);     /* la_ota.c */

/* ---- shared helpers (la_util.c) ---- */

/* prints "usage: latchkey <usage of name>" on stderr; returns LA_EXIT_USAGE */
int la_usage(const char *name);

/* the Redis connection of redis_host / redis_port, connected; NULL after printing why */
lk_redis_t *la_redis(la_ctx_t *ctx);

/* One Redis command given as strings (binary safe up to NUL); the reply, or NULL after
   printing the error (link failure or an error reply). Caller frees the reply. */
lk_redis_reply_t *la_redis_cmd(la_ctx_t *ctx, int argc, const char **argv);

/* la_redis_cmd when only success matters: 0, or -1 after printing the error */
int la_redis_run(la_ctx_t *ctx, int argc, const char **argv);

/* Redis commands collected, then sent as one MULTI ... EXEC: readers see all or none */
typedef struct {
    int n, cap;
    int *argc;
    char ***argv;
} la_tx_t;

void la_tx_add(la_tx_t *tx, int argc, const char **argv);
void la_tx_free(la_tx_t *tx);
/* runs the collected commands atomically; 0 or -1 (printed). Frees tx. */
int la_tx_run(la_ctx_t *ctx, la_tx_t *tx);

/* false after printing why when user cannot be a username (empty, control characters,
   too long; a ':' too when for_file) */
bool la_username_ok(const char *user, bool for_file);

/* The password to set: prompted twice without echo when stdin is a terminal, else one
   line of stdin. NULL after printing why (mismatch, empty, end of input). Caller frees
   (and should wipe) it. */
char *la_read_password(void);

/* Sends Revoke{users} reliably to the auth service (auth_endpoint) from a DEALER node
   "cli-<pid>" of kind "latchkey" and waits up to timeout_ms for its ack. 0 when acked;
   -1 after printing why (no auth_endpoint, auth not answering). */
int la_revoke(la_ctx_t *ctx, char **users, int n, int timeout_ms);
/* The same round trip with Revoke{acl_changed}: the frontends re-read these users' ACLs
   for their connected clients (and disconnect those whose user is gone). */
int la_acl_changed(la_ctx_t *ctx, char **users, int n, int timeout_ms);

/* Ends every temporary login (lk:arb:logins) of these users: credentials and mapping
   deleted in one transaction, then Revoke to auth (their clients disconnected). 0 or -1
   (printed); prints a count unless quiet. (la_lock.c) */
int la_end_logins(la_ctx_t *ctx, char **users, int n_users, bool quiet);
/* The same for the temporary logins named (not their users): credentials, mapping and
   index entries in one transaction, then Revoke. 0 or -1 (printed). (la_lock.c) */
int la_logins_end(la_ctx_t *ctx, char **names, int n, bool quiet);

/* The Redis layout the CLI edits: the first of `redis` (the seed's: mqtt_user:<name>
   `password`, ACL values 1/2/3) and `emqx` (EMQX 5: mqtt:<name> `password_hash` + `salt`,
   ACL values subscribe/publish/all) named in auth_backends; `redis` when neither is. */
bool la_emqx_layout(la_ctx_t *ctx);
/* the user's hash / ACL hash key in that layout (redis_user_key, redis_acl_key,
   emqx_user_key, emqx_acl_key with %u); caller frees */
char *la_user_key(la_ctx_t *ctx, const char *user);
char *la_acl_key(la_ctx_t *ctx, const char *user);

/* the connection of pg_conninfo with the schema (sql_dir, or $LATCHKEY_ROOT/sql) applied;
   NULL after printing why */
lk_pg_t *la_pg(la_ctx_t *ctx);
/* runs sql; prints the server's message and returns NULL on failure (caller frees) */
lk_pg_result_t *la_pg_exec(lk_pg_t *pg, const char *sql, int n, const char *const *params);

#endif
