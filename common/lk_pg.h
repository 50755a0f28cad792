/*  lk_pg: the one door to PostgreSQL (only lk_pg.c includes libpq).

    A synchronous connection that connects lazily and reconnects by itself, within bounds
    that keep an event loop responsive: a connection attempt takes at most connect_timeout
    (2 s), attempts after a failure are throttled (at most one per retry interval, 1 s; a
    call in between fails at once), every statement runs under statement_timeout (10 s) and
    TCP keepalives plus tcp_user_timeout catch a server that vanished. A statement on a
    broken link fails with LK_PG_LINK and drops the connection; the next call reconnects.

    Results are copied into lk_pg_result_t (text values), so no PGresult leaves this file.
    Statements take text parameters ($1, $2, ...; a NULL pointer is SQL NULL); values are
    never interpolated into SQL text.

    Schema: lk_pg_migrate applies the numbered forward-only migrations of a folder
    (NNN_name.sql), each in its own transaction under an advisory lock, and records them in
    schema_migrations; any process may call it, also concurrently. */
#ifndef LK_PG_H_INCLUDED
#define LK_PG_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _lk_pg_t lk_pg_t;

typedef enum {
    LK_PG_OK = 0,
    LK_PG_ERROR, /* the server refused the statement: sqlstate and message say why */
    LK_PG_LINK   /* no connection, or it broke: nothing is known about the statement */
} lk_pg_status_t;

typedef struct {
    lk_pg_status_t status;
    char sqlstate[6]; /* "" unless LK_PG_ERROR */
    char *message;    /* error text; "" when ok */
    size_t nrows, ncols;
    char **values;    /* nrows * ncols, row-major; NULL for SQL NULL */
    int64_t affected; /* rows inserted/updated/deleted/copied; 0 for others */
} lk_pg_result_t;

/* conninfo: a libpq connection string (pg_conninfo); application: application_name.
   Never NULL; no connection is made yet. */
lk_pg_t *lk_pg_new(const char *conninfo, const char *application);
void lk_pg_destroy(lk_pg_t **self_p);
/* bounds (0 keeps the current value): connect_timeout s (2), statement_timeout ms (10000),
   retry ms between failed connection attempts (1000) */
void lk_pg_set_timing(lk_pg_t *self, int connect_timeout_s, int statement_timeout_ms, int retry_ms);

/* connects now unless connected, or a failed attempt was made less than retry ms ago
   (then fails at once); 0 or -1 (logged, at most every 5 s) */
int lk_pg_connect(lk_pg_t *self);
bool lk_pg_connected(lk_pg_t *self);
void lk_pg_disconnect(lk_pg_t *self);
/* bumped at every successful (re)connection: session state (temp tables) is gone */
uint64_t lk_pg_generation(lk_pg_t *self);

/* one statement with text parameters (NULL = SQL NULL); connects first when needed.
   sql with no parameters may hold several statements. Never NULL; caller frees. */
lk_pg_result_t *lk_pg_exec(lk_pg_t *self, const char *sql, int nparams, const char *const *params);
/* exec, then 0 when LK_PG_OK or -1 (the error is logged unless quiet) */
int lk_pg_run(lk_pg_t *self, const char *sql, int nparams, const char *const *params, bool quiet);

/* Multi-row statement: head, then " ($1,...,$ncols),($ncols+1,...)..." for nrows rows,
   then tail; params holds nrows * ncols values row-major. At most 65535 parameters. */
lk_pg_result_t *lk_pg_exec_rows(lk_pg_t *self, const char *head, const char *tail, int ncols,
                                size_t nrows, const char *const *params);

/* COPY ... FROM STDIN: data is COPY text format (lk_pg_copy_field builds it). */
lk_pg_result_t *lk_pg_copy_in(lk_pg_t *self, const char *copy_sql, const char *data, size_t len);
/* appends one field in COPY text format (NULL pointer = \N) to *buf (malloc'ed, grown),
   preceded by a tab unless first; end a row with lk_pg_copy_row_end */
void lk_pg_copy_field(char **buf, size_t *len, size_t *cap, const char *value, bool first);
void lk_pg_copy_row_end(char **buf, size_t *len, size_t *cap);

/* transactions: 0 or -1 (logged). rollback never fails (a broken link has none left). */
int lk_pg_begin(lk_pg_t *self);
int lk_pg_commit(lk_pg_t *self);
void lk_pg_rollback(lk_pg_t *self);

void lk_pg_result_free(lk_pg_result_t **result_p);
/* value at (row, col), NULL for SQL NULL or out of range */
const char *lk_pg_value(const lk_pg_result_t *r, size_t row, size_t col);
/* worth retrying later as is: a broken link, or a server state (shutdown, starting up,
   out of resources, timeout, serialization failure, read-only); false for errors in the
   statement or its data */
bool lk_pg_transient(const lk_pg_result_t *r);

/* Applies every migration of dir not yet recorded in schema_migrations, in number order.
   0: the schema is current (*version = highest applied); -1: PostgreSQL unavailable, try
   later; -2: a migration failed or the folder is unusable (logged; needs a fix). */
int lk_pg_migrate(lk_pg_t *self, const char *dir, int *version);

/* Without LATCHKEY_PG_TEST_CONNINFO only the offline parts run (a refused connection,
   throttling, COPY escaping); with it, a live server is exercised in a scratch schema. */
int lk_pg_test(bool verbose);

#endif
