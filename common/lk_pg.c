/*  lk_pg: synchronous libpq wrapper with bounded reconnects, copied results, multi-row
    inserts, COPY, transactions and the migration runner; see lk_pg.h. */
#include "lk_pg.h"
#include "lk_common.h"
#include "lk_msglog.h"
#include <dirent.h>
#include <errno.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_WARN_EVERY_MS 5000
#define S_MAX_PARAMS 65535
#define S_MIGRATION_MAX (16 * 1024 * 1024)
#define S_MIGRATION_LOCK "4c4b4d47" /* "LKMG": the advisory lock key of migrations */

struct _lk_pg_t {
    char *conninfo;
    char *application;
    PGconn *conn;
    int connect_timeout_s;
    int statement_timeout_ms;
    int retry_ms;
    int64_t last_fail_ms; /* 0 once connected: throttles attempts */
    int64_t last_warn_ms; /* throttles the log lines of failed attempts */
    bool was_down;        /* a failure was logged: say so when it works again */
    uint64_t generation;
};

lk_pg_t *lk_pg_new(const char *conninfo, const char *application)
{
    lk_pg_t *self = lk_calloc(1, sizeof(*self));
    self->conninfo = lk_strdup(conninfo ? conninfo : "");
    self->application = lk_strdup(application ? application : "latchkey");
    self->connect_timeout_s = 2;
    self->statement_timeout_ms = 10000;
    self->retry_ms = 1000;
    return self;
}

static void s_drop(lk_pg_t *self)
{
    if (self->conn)
        PQfinish(self->conn);
    self->conn = NULL;
}

void lk_pg_destroy(lk_pg_t **self_p)
{
    lk_pg_t *self = *self_p;
    if (!self)
        return;
    s_drop(self);
    free(self->conninfo);
    free(self->application);
    free(self);
    *self_p = NULL;
}

void lk_pg_set_timing(lk_pg_t *self, int connect_timeout_s, int statement_timeout_ms, int retry_ms)
{
    if (connect_timeout_s > 0)
        self->connect_timeout_s = connect_timeout_s;
    if (statement_timeout_ms > 0)
        self->statement_timeout_ms = statement_timeout_ms;
    if (retry_ms > 0)
        self->retry_ms = retry_ms;
}

/* libpq messages end with a newline and may hold more (a HINT, a second line): a log
   line must be one line */
static void s_trim(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == ' '))
        s[--n] = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\n' || s[i] == '\t')
            s[i] = ' ';
}

static void s_fail_connect(lk_pg_t *self, const char *why)
{
    int64_t now = lk_mono_ms();
    self->last_fail_ms = now ? now : 1;
    if (!self->last_warn_ms || now - self->last_warn_ms >= S_WARN_EVERY_MS) {
        char *msg = lk_strdup(why);
        s_trim(msg);
        lk_warn("postgresql: cannot connect: %s", msg);
        free(msg);
        self->last_warn_ms = now;
    }
    self->was_down = true;
}

/* the server's NOTICEs and WARNINGs ("relation already exists, skipping") go to our log
   instead of libpq's bare stderr lines */
static void s_notice(void *arg, const char *message)
{
    char *m = lk_strdup(message);
    s_trim(m);
    if (strncmp(m, "WARNING", 7) == 0)
        lk_warn("postgresql: %s", m);
    else
        lk_debug("postgresql: %s", m);
    free(m);
}

int lk_pg_connect(lk_pg_t *self)
{
    if (self->conn) {
        if (PQstatus(self->conn) == CONNECTION_OK)
            return 0;
        s_drop(self);
    }
    if (self->last_fail_ms && lk_mono_ms() - self->last_fail_ms < self->retry_ms)
        return -1;
    char ct[16], tut[24];
    snprintf(ct, sizeof(ct), "%d", self->connect_timeout_s);
    /* a server that vanished without closing the socket: give up a little after the
       statement timeout would have fired */
    snprintf(tut, sizeof(tut), "%d", self->statement_timeout_ms + 5000);
    /* ours first: the connection string (expanded in place of dbname) overrides them */
    const char *keys[] = {"connect_timeout",  "application_name",
                          "client_encoding",  "keepalives",
                          "keepalives_idle",  "keepalives_interval",
                          "keepalives_count", "tcp_user_timeout",
                          "dbname",           NULL};
    const char *vals[] = {ct,  self->application, "UTF8", "1", "5", "2", "3",
                          tut, self->conninfo,    NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        s_fail_connect(self, c ? PQerrorMessage(c) : "out of memory");
        if (c)
            PQfinish(c);
        return -1;
    }
    PQsetNoticeProcessor(c, s_notice, NULL);
    char sql[64];
    snprintf(sql, sizeof(sql), "SET statement_timeout = %d", self->statement_timeout_ms);
    PGresult *res = PQexec(c, sql);
    bool ok = res && PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!ok) {
        s_fail_connect(self, PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    self->conn = c;
    self->last_fail_ms = 0;
    self->generation++;
    if (self->was_down || self->generation == 1)
        lk_notice("postgresql: connected (%s:%s, database %s, server %d)", PQhost(c), PQport(c),
                  PQdb(c), PQserverVersion(c));
    self->was_down = false;
    self->last_warn_ms = 0;
    return 0;
}

bool lk_pg_connected(lk_pg_t *self)
{
    return self->conn && PQstatus(self->conn) == CONNECTION_OK;
}

void lk_pg_disconnect(lk_pg_t *self)
{
    s_drop(self);
}

uint64_t lk_pg_generation(lk_pg_t *self)
{
    return self->generation;
}

//  --------------------------------------------------------------------------
//  Results

static lk_pg_result_t *s_link_result(lk_pg_t *self, const char *why)
{
    lk_pg_result_t *r = lk_calloc(1, sizeof(*r));
    r->status = LK_PG_LINK;
    r->message = lk_strdup(why);
    s_trim(r->message);
    return r;
}

/* copies res (may be NULL) into a new result; a failure on a dead link drops it */
static lk_pg_result_t *s_result(lk_pg_t *self, PGresult *res)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_COPY_IN ||
        st == PGRES_EMPTY_QUERY) {
        lk_pg_result_t *r = lk_calloc(1, sizeof(*r));
        r->message = lk_strdup("");
        r->nrows = (size_t)PQntuples(res);
        r->ncols = (size_t)PQnfields(res);
        if (r->nrows && r->ncols) {
            r->values = lk_calloc(r->nrows * r->ncols, sizeof(char *));
            for (size_t i = 0; i < r->nrows; i++)
                for (size_t j = 0; j < r->ncols; j++)
                    if (!PQgetisnull(res, (int)i, (int)j))
                        r->values[i * r->ncols + j] = lk_strndup(PQgetvalue(res, (int)i, (int)j),
                                                                 PQgetlength(res, (int)i, (int)j));
        }
        const char *tuples = PQcmdTuples(res);
        r->affected = tuples && *tuples ? strtoll(tuples, NULL, 10) : 0;
        return r;
    }
    if (!self->conn || PQstatus(self->conn) != CONNECTION_OK) {
        lk_pg_result_t *r =
            s_link_result(self, self->conn ? PQerrorMessage(self->conn) : "not connected");
        s_drop(self);
        return r;
    }
    lk_pg_result_t *r = lk_calloc(1, sizeof(*r));
    r->status = LK_PG_ERROR;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    snprintf(r->sqlstate, sizeof(r->sqlstate), "%s", state ? state : "XX000");
    r->message = lk_strdup(res ? PQresultErrorMessage(res) : PQerrorMessage(self->conn));
    s_trim(r->message);
    return r;
}

void lk_pg_result_free(lk_pg_result_t **result_p)
{
    lk_pg_result_t *r = *result_p;
    if (!r)
        return;
    for (size_t i = 0; i < r->nrows * r->ncols; i++)
        free(r->values[i]);
    free(r->values);
    free(r->message);
    free(r);
    *result_p = NULL;
}

const char *lk_pg_value(const lk_pg_result_t *r, size_t row, size_t col)
{
    if (!r || row >= r->nrows || col >= r->ncols)
        return NULL;
    return r->values[row * r->ncols + col];
}

bool lk_pg_transient(const lk_pg_result_t *r)
{
    if (r->status == LK_PG_LINK)
        return true;
    if (r->status == LK_PG_OK)
        return false;
    const char *s = r->sqlstate;
    /* 08 connection, 40 serialization/deadlock, 53 resources (disk full), 57 operator
       intervention (shutdown, starting up, statement timeout), 58 system (I/O) */
    return strncmp(s, "08", 2) == 0 || strncmp(s, "40", 2) == 0 || strncmp(s, "53", 2) == 0 ||
           strncmp(s, "57", 2) == 0 || strncmp(s, "58", 2) == 0 ||
           strcmp(s, "25006") == 0 /* read-only transaction: a standby */;
}

//  --------------------------------------------------------------------------
//  Statements

lk_pg_result_t *lk_pg_exec(lk_pg_t *self, const char *sql, int nparams, const char *const *params)
{
    if (lk_pg_connect(self) != 0)
        return s_link_result(self, "not connected");
    PGresult *res = nparams > 0
                        ? PQexecParams(self->conn, sql, nparams, NULL, params, NULL, NULL, 0)
                        : PQexec(self->conn, sql);
    lk_pg_result_t *r = s_result(self, res);
    PQclear(res);
    return r;
}

int lk_pg_run(lk_pg_t *self, const char *sql, int nparams, const char *const *params, bool quiet)
{
    lk_pg_result_t *r = lk_pg_exec(self, sql, nparams, params);
    int rc = r->status == LK_PG_OK ? 0 : -1;
    if (rc != 0 && !quiet)
        lk_warn("postgresql: %.60s: %s%s%s", sql, r->sqlstate, *r->sqlstate ? " " : "", r->message);
    lk_pg_result_free(&r);
    return rc;
}

typedef struct {
    char *data;
    size_t len, cap;
} s_buf_t;

static void s_buf_add(s_buf_t *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->data = lk_realloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

static void s_buf_str(s_buf_t *b, const char *s)
{
    s_buf_add(b, s, strlen(s));
}

lk_pg_result_t *lk_pg_exec_rows(lk_pg_t *self, const char *head, const char *tail, int ncols,
                                size_t nrows, const char *const *params)
{
    if (ncols <= 0 || nrows == 0 || nrows * (size_t)ncols > S_MAX_PARAMS) {
        lk_pg_result_t *r = lk_calloc(1, sizeof(*r));
        r->status = LK_PG_ERROR;
        snprintf(r->sqlstate, sizeof(r->sqlstate), "54023"); /* too many arguments */
        r->message = lk_strdup("lk_pg_exec_rows: 1 to 65535 parameters");
        return r;
    }
    s_buf_t sql = {0};
    s_buf_str(&sql, head);
    char num[16];
    int p = 1;
    for (size_t i = 0; i < nrows; i++) {
        s_buf_str(&sql, i ? ",(" : " (");
        for (int j = 0; j < ncols; j++) {
            int n = snprintf(num, sizeof(num), j ? ",$%d" : "$%d", p++);
            s_buf_add(&sql, num, (size_t)n);
        }
        s_buf_str(&sql, ")");
    }
    s_buf_str(&sql, " ");
    s_buf_str(&sql, tail);
    lk_pg_result_t *r = lk_pg_exec(self, sql.data, (int)(nrows * (size_t)ncols), params);
    free(sql.data);
    return r;
}

lk_pg_result_t *lk_pg_copy_in(lk_pg_t *self, const char *copy_sql, const char *data, size_t len)
{
    if (lk_pg_connect(self) != 0)
        return s_link_result(self, "not connected");
    PGresult *res = PQexec(self->conn, copy_sql);
    if (!res || PQresultStatus(res) != PGRES_COPY_IN) {
        lk_pg_result_t *r = s_result(self, res);
        PQclear(res);
        if (r->status == LK_PG_OK) { /* not a COPY FROM STDIN at all */
            r->status = LK_PG_ERROR;
            snprintf(r->sqlstate, sizeof(r->sqlstate), "42601");
        }
        return r;
    }
    PQclear(res);
    if (PQputCopyData(self->conn, data, (int)len) != 1 || PQputCopyEnd(self->conn, NULL) != 1) {
        lk_pg_result_t *r = s_link_result(self, PQerrorMessage(self->conn));
        s_drop(self);
        return r;
    }
    res = PQgetResult(self->conn);
    lk_pg_result_t *r = s_result(self, res);
    PQclear(res);
    /* the protocol ends a COPY with one result, then NULL */
    while (self->conn && (res = PQgetResult(self->conn)))
        PQclear(res);
    return r;
}

static void s_grow(char **buf, size_t *len, size_t *cap, size_t n)
{
    if (*len + n + 1 > *cap) {
        *cap = (*len + n + 1) * 2;
        *buf = lk_realloc(*buf, *cap);
    }
}

void lk_pg_copy_field(char **buf, size_t *len, size_t *cap, const char *value, bool first)
{
    size_t n = value ? strlen(value) : 0;
    s_grow(buf, len, cap, 2 * n + 3);
    char *o = *buf + *len;
    if (!first)
        *o++ = '\t';
    if (!value) {
        *o++ = '\\';
        *o++ = 'N';
    }
    for (size_t i = 0; i < n; i++) {
        char c = value[i];
        char e = c == '\\' ? '\\' : c == '\t' ? 't' : c == '\n' ? 'n' : c == '\r' ? 'r' : 0;
        if (e) {
            *o++ = '\\';
            *o++ = e;
        } else
            *o++ = c;
    }
    *len = (size_t)(o - *buf);
    (*buf)[*len] = 0;
}

void lk_pg_copy_row_end(char **buf, size_t *len, size_t *cap)
{
    s_grow(buf, len, cap, 1);
    (*buf)[(*len)++] = '\n';
    (*buf)[*len] = 0;
}

int lk_pg_begin(lk_pg_t *self)
{
    return lk_pg_run(self, "BEGIN", 0, NULL, false);
}

int lk_pg_commit(lk_pg_t *self)
{
    if (!lk_pg_connected(self)) {
        lk_warn("postgresql: COMMIT: connection lost");
        s_drop(self);
        return -1;
    }
    PGresult *res = PQexec(self->conn, "COMMIT");
    /* COMMIT of a failed transaction "succeeds" with the tag ROLLBACK */
    bool ok =
        res && PQresultStatus(res) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(res), "COMMIT") == 0;
    if (!ok) {
        lk_pg_result_t *r = s_result(self, res);
        lk_warn("postgresql: COMMIT failed: %s", *r->message ? r->message : "rolled back");
        lk_pg_result_free(&r);
    }
    PQclear(res);
    return ok ? 0 : -1;
}

void lk_pg_rollback(lk_pg_t *self)
{
    if (!lk_pg_connected(self))
        return;
    PGresult *res = PQexec(self->conn, "ROLLBACK");
    lk_pg_result_t *r = s_result(self, res);
    PQclear(res);
    lk_pg_result_free(&r);
}

//  --------------------------------------------------------------------------
//  Migrations

typedef struct {
    int version;
    char *name;
} s_migration_t;

static int s_migration_cmp(const void *a, const void *b)
{
    const s_migration_t *x = a, *y = b;
    return x->version < y->version ? -1 : x->version > y->version;
}

/* the migrations of dir in version order; -1 (logged) when dir is unusable */
static int s_migrations_list(const char *dir, s_migration_t **out, size_t *count)
{
    *out = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d) {
        lk_error("migrations: cannot read %s: %s", dir, strerror(errno));
        return -1;
    }
    size_t cap = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        size_t len = strlen(n);
        if (len < 5 || strcmp(n + len - 4, ".sql") != 0 || n[0] < '0' || n[0] > '9')
            continue;
        char *end;
        long v = strtol(n, &end, 10);
        if (*end != '_' && *end != '.') {
            lk_error("migrations: %s/%s: name is not NNN_name.sql", dir, n);
            rc = -1;
            continue;
        }
        if (v <= 0 || v > 1000000) {
            lk_error("migrations: %s/%s: version out of range", dir, n);
            rc = -1;
            continue;
        }
        if (*count == cap) {
            cap = cap ? cap * 2 : 16;
            *out = lk_realloc(*out, cap * sizeof(**out));
        }
        (*out)[*count].version = (int)v;
        (*out)[(*count)++].name = lk_strdup(n);
    }
    closedir(d);
    if (*count)
        qsort(*out, *count, sizeof(**out), s_migration_cmp);
    for (size_t i = 1; i < *count; i++)
        if ((*out)[i].version == (*out)[i - 1].version) {
            lk_error("migrations: %s and %s share version %d", (*out)[i - 1].name, (*out)[i].name,
                     (*out)[i].version);
            rc = -1;
        }
    return rc;
}

static char *s_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        lk_error("migrations: cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    char *data = lk_malloc(S_MIGRATION_MAX + 1);
    size_t n = fread(data, 1, S_MIGRATION_MAX + 1, f);
    bool bad = ferror(f) || n > S_MIGRATION_MAX;
    fclose(f);
    if (bad) {
        lk_error("migrations: cannot read %s (or larger than %d bytes)", path, S_MIGRATION_MAX);
        free(data);
        return NULL;
    }
    data[n] = 0;
    *len = n;
    return data;
}

/* -1 transient, -2 permanent, for a failed step of a migration */
static int s_step_failed(lk_pg_t *self, lk_pg_result_t *r, const char *what)
{
    int rc = lk_pg_transient(r) ? -1 : -2;
    if (rc == -2)
        lk_error("migrations: %s: %s %s", what, r->sqlstate, r->message);
    else
        lk_warn("migrations: %s: %s (will retry)", what, r->message);
    lk_pg_rollback(self);
    return rc;
}

/* one migration in its own transaction; 0 applied or already there, -1/-2 as migrate */
static int s_migrate_one(lk_pg_t *self, const char *dir, const s_migration_t *m, bool *applied)
{
    *applied = false;
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, m->name);
    size_t len;
    char *sql = s_read_file(path, &len);
    if (!sql)
        return -2;
    char version[16], checksum[16];
    snprintf(version, sizeof(version), "%d", m->version);
    snprintf(checksum, sizeof(checksum), "%08x", lk_crc32(sql, len));
    static const char *const setup[] = {
        "BEGIN",
        /* one migrating process at a time: the others wait, then find the work done */
        "SELECT pg_advisory_xact_lock(x'" S_MIGRATION_LOCK "'::bigint)",
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
        "name text NOT NULL, checksum text NOT NULL, "
        "applied timestamptz NOT NULL DEFAULT now())"};
    int rc = 0;
    lk_pg_result_t *r = NULL;
    for (size_t i = 0; i < LK_ARRAY_LEN(setup) && rc == 0; i++) {
        r = lk_pg_exec(self, setup[i], 0, NULL);
        if (r->status != LK_PG_OK)
            rc = s_step_failed(self, r, "schema_migrations");
        lk_pg_result_free(&r);
    }
    if (rc == 0) {
        const char *p[] = {version};
        r = lk_pg_exec(self, "SELECT checksum FROM schema_migrations WHERE version = $1", 1, p);
        if (r->status != LK_PG_OK)
            rc = s_step_failed(self, r, "schema_migrations");
        else if (r->nrows == 1) {
            const char *have = lk_pg_value(r, 0, 0);
            if (have && strcmp(have, checksum) != 0)
                lk_warn("migrations: %s changed since it was applied (checksum %s, now %s); "
                        "migrations are forward-only: add a new one",
                        m->name, have, checksum);
            lk_pg_rollback(self);
            lk_pg_result_free(&r);
            free(sql);
            return 0;
        }
        lk_pg_result_free(&r);
    }
    if (rc == 0) {
        r = lk_pg_exec(self, sql, 0, NULL);
        if (r->status != LK_PG_OK)
            rc = s_step_failed(self, r, m->name);
        lk_pg_result_free(&r);
    }
    if (rc == 0) {
        const char *p[] = {version, m->name, checksum};
        r = lk_pg_exec(self,
                       "INSERT INTO schema_migrations (version, name, checksum) "
                       "VALUES ($1, $2, $3)",
                       3, p);
        if (r->status != LK_PG_OK)
            rc = s_step_failed(self, r, "schema_migrations");
        lk_pg_result_free(&r);
    }
    if (rc == 0 && lk_pg_commit(self) != 0)
        rc = -1; /* a COMMIT of DDL that fails is the link, or it is retried and fails again */
    free(sql);
    if (rc == 0) {
        *applied = true;
        lk_notice("migrations: applied %s", m->name);
    }
    return rc;
}

int lk_pg_migrate(lk_pg_t *self, const char *dir, int *version)
{
    *version = 0;
    s_migration_t *list;
    size_t count;
    if (s_migrations_list(dir, &list, &count) != 0) {
        for (size_t i = 0; i < count; i++)
            free(list[i].name);
        free(list);
        return -2;
    }
    int rc = lk_pg_connect(self) == 0 ? 0 : -1;
    int applied = 0;
    /* replicas of a service migrate one at a time (the others wait, then find it done) */
    bool locked = false;
    if (rc == 0) {
        lk_pg_result_t *l = lk_pg_exec(self, "SELECT pg_advisory_lock(7316070)", 0, NULL);
        locked = l->status == LK_PG_OK;
        if (!locked)
            rc = lk_pg_transient(l) ? -1 : -2;
        lk_pg_result_free(&l);
    }
    for (size_t i = 0; i < count && rc == 0; i++) {
        bool did;
        rc = s_migrate_one(self, dir, &list[i], &did);
        applied += did;
    }
    if (rc == 0) {
        lk_pg_result_t *r =
            lk_pg_exec(self, "SELECT coalesce(max(version), 0) FROM schema_migrations", 0, NULL);
        if (r->status == LK_PG_OK && lk_pg_value(r, 0, 0))
            *version = atoi(lk_pg_value(r, 0, 0));
        else
            rc = lk_pg_transient(r) ? -1 : -2;
        lk_pg_result_free(&r);
        int newest = count ? list[count - 1].version : 0;
        if (rc == 0 && *version > newest)
            lk_warn("migrations: the database is at version %d, newer than %s (%d)", *version, dir,
                    newest);
        if (rc == 0)
            lk_info("migrations: schema at version %d (%d applied now)", *version, applied);
    }
    if (locked) {
        lk_pg_result_t *l = lk_pg_exec(self, "SELECT pg_advisory_unlock(7316070)", 0, NULL);
        lk_pg_result_free(&l);
    }
    for (size_t i = 0; i < count; i++)
        free(list[i].name);
    free(list);
    return rc;
}

//  --------------------------------------------------------------------------
//  Selftest

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "lk_pg: check failed at line %d: %s\n", __LINE__, #cond);              \
            rc = -1;                                                                               \
        }                                                                                          \
    } while (0)

static int s_write_file(const char *dir, const char *name, const char *text)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

static int s_test_live(const char *conninfo, bool verbose)
{
    int rc = 0;
    char schema[64], info[1024], dir[128];
    snprintf(schema, sizeof(schema), "lk_pg_test_%d", (int)getpid());
    snprintf(info, sizeof(info), "%s options='-c search_path=%s'", conninfo, schema);
    lk_pg_t *admin = lk_pg_new(conninfo, "lk_pg_test");
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS %s CASCADE; CREATE SCHEMA %s", schema,
             schema);
    S_CHECK(lk_pg_run(admin, sql, 0, NULL, false) == 0);
    lk_pg_t *pg = lk_pg_new(info, "lk_pg_test");
    S_CHECK(lk_pg_connect(pg) == 0 && lk_pg_connected(pg) && lk_pg_generation(pg) == 1);

    /* multi-row insert with a NULL, then read back */
    S_CHECK(lk_pg_run(pg, "CREATE TABLE t (k text PRIMARY KEY, v text)", 0, NULL, false) == 0);
    const char *rows[] = {"a", "1", "b", NULL, "c", "x'y\"z"};
    lk_pg_result_t *r = lk_pg_exec_rows(pg, "INSERT INTO t (k, v) VALUES",
                                        "ON CONFLICT (k) DO NOTHING", 2, 3, rows);
    S_CHECK(r->status == LK_PG_OK && r->affected == 3);
    lk_pg_result_free(&r);
    r = lk_pg_exec_rows(pg, "INSERT INTO t (k, v) VALUES", "ON CONFLICT (k) DO NOTHING", 2, 3,
                        rows);
    S_CHECK(r->status == LK_PG_OK && r->affected == 0);
    lk_pg_result_free(&r);
    const char *key[] = {"b"};
    r = lk_pg_exec(pg, "SELECT k, v FROM t WHERE k >= $1 ORDER BY k", 1, key);
    S_CHECK(r->status == LK_PG_OK && r->nrows == 2 && r->ncols == 2);
    S_CHECK(lk_pg_value(r, 0, 1) == NULL && strcmp(lk_pg_value(r, 1, 1), "x'y\"z") == 0);
    S_CHECK(lk_pg_value(r, 2, 0) == NULL);
    lk_pg_result_free(&r);

    /* a constraint violation is an error of the statement, not of the link */
    r = lk_pg_exec(pg, "INSERT INTO t (k, v) VALUES ('a', 'again')", 0, NULL);
    S_CHECK(r->status == LK_PG_ERROR && strcmp(r->sqlstate, "23505") == 0 && !lk_pg_transient(r));
    lk_pg_result_free(&r);

    /* COPY text format with every escape */
    char *buf = NULL;
    size_t len = 0, cap = 0;
    lk_pg_copy_field(&buf, &len, &cap, "d", true);
    lk_pg_copy_field(&buf, &len, &cap, "tab\there\\back\nline", false);
    lk_pg_copy_row_end(&buf, &len, &cap);
    lk_pg_copy_field(&buf, &len, &cap, "e", true);
    lk_pg_copy_field(&buf, &len, &cap, NULL, false);
    lk_pg_copy_row_end(&buf, &len, &cap);
    r = lk_pg_copy_in(pg, "COPY t (k, v) FROM STDIN", buf, len);
    S_CHECK(r->status == LK_PG_OK && r->affected == 2);
    lk_pg_result_free(&r);
    free(buf);
    r = lk_pg_exec(pg, "SELECT v FROM t WHERE k = 'd'", 0, NULL);
    S_CHECK(r->nrows == 1 && strcmp(lk_pg_value(r, 0, 0), "tab\there\\back\nline") == 0);
    lk_pg_result_free(&r);

    /* transactions: rollback undoes, a failed transaction does not commit */
    S_CHECK(lk_pg_begin(pg) == 0);
    S_CHECK(lk_pg_run(pg, "DELETE FROM t", 0, NULL, false) == 0);
    lk_pg_rollback(pg);
    S_CHECK(lk_pg_begin(pg) == 0);
    S_CHECK(lk_pg_run(pg, "DELETE FROM t", 0, NULL, false) == 0);
    S_CHECK(lk_pg_run(pg, "SELECT 1/0", 0, NULL, true) != 0);
    S_CHECK(lk_pg_commit(pg) != 0);
    r = lk_pg_exec(pg, "SELECT count(*) FROM t", 0, NULL);
    S_CHECK(r->nrows == 1 && strcmp(lk_pg_value(r, 0, 0), "5") == 0);
    lk_pg_result_free(&r);

    /* statement timeout: transient */
    lk_pg_t *slow = lk_pg_new(info, "lk_pg_test");
    lk_pg_set_timing(slow, 0, 200, 0);
    r = lk_pg_exec(slow, "SELECT pg_sleep(2)", 0, NULL);
    S_CHECK(r->status == LK_PG_ERROR && strcmp(r->sqlstate, "57014") == 0 && lk_pg_transient(r));
    lk_pg_result_free(&r);
    lk_pg_destroy(&slow);

    /* migrations: applied once, in order; a failing one leaves no trace */
    snprintf(dir, sizeof(dir), "/tmp/lk-pg-test-%d", (int)getpid());
    S_CHECK(mkdir(dir, 0755) == 0);
    S_CHECK(s_write_file(dir, "002_more.sql", "ALTER TABLE m ADD COLUMN b int;") == 0);
    S_CHECK(s_write_file(dir, "001_first.sql",
                         "CREATE TABLE m (a int);\n"
                         "INSERT INTO m (a) VALUES (1);") == 0);
    S_CHECK(s_write_file(dir, "README", "not a migration") == 0);
    int version = -1;
    S_CHECK(lk_pg_migrate(pg, dir, &version) == 0 && version == 2);
    S_CHECK(lk_pg_migrate(pg, dir, &version) == 0 && version == 2);
    r = lk_pg_exec(pg, "SELECT count(*) FROM m", 0, NULL);
    S_CHECK(r->nrows == 1 && strcmp(lk_pg_value(r, 0, 0), "1") == 0);
    lk_pg_result_free(&r);
    S_CHECK(s_write_file(dir, "003_bad.sql", "CREATE TABLE n (a int); SELEC broken;") == 0);
    S_CHECK(lk_pg_migrate(pg, dir, &version) == -2);
    r = lk_pg_exec(pg, "SELECT to_regclass('n') IS NULL, max(version) FROM schema_migrations", 0,
                   NULL);
    S_CHECK(r->nrows == 1 && strcmp(lk_pg_value(r, 0, 0), "t") == 0 &&
            strcmp(lk_pg_value(r, 0, 1), "2") == 0);
    lk_pg_result_free(&r);
    S_CHECK(s_write_file(dir, "003_also.sql", "SELECT 1;") == 0);
    S_CHECK(lk_pg_migrate(pg, dir, &version) == -2); /* two files share version 3 */
    const char *names[] = {"001_first.sql", "002_more.sql", "003_bad.sql", "003_also.sql",
                           "README"};
    for (size_t i = 0; i < LK_ARRAY_LEN(names); i++) {
        snprintf(sql, sizeof(sql), "%s/%s", dir, names[i]);
        unlink(sql);
    }
    rmdir(dir);

    /* a connection killed by the server: LINK, then a reconnect */
    r = lk_pg_exec(pg, "SELECT pg_backend_pid()", 0, NULL);
    char pid[32];
    snprintf(pid, sizeof(pid), "%s", lk_pg_value(r, 0, 0) ? lk_pg_value(r, 0, 0) : "0");
    lk_pg_result_free(&r);
    const char *kp[] = {pid};
    S_CHECK(lk_pg_run(admin, "SELECT pg_terminate_backend($1::int)", 1, kp, false) == 0);
    usleep(100 * 1000);
    r = lk_pg_exec(pg, "SELECT 1", 0, NULL);
    S_CHECK(lk_pg_transient(r));
    lk_pg_result_free(&r);
    r = lk_pg_exec(pg, "SELECT 1", 0, NULL);
    S_CHECK(r->status == LK_PG_OK && lk_pg_generation(pg) == 2);
    lk_pg_result_free(&r);

    snprintf(sql, sizeof(sql), "DROP SCHEMA %s CASCADE", schema);
    S_CHECK(lk_pg_run(admin, sql, 0, NULL, false) == 0);
    lk_pg_destroy(&pg);
    lk_pg_destroy(&admin);
    if (verbose)
        printf("lk_pg: live checks against '%s': %s\n", conninfo, rc == 0 ? "ok" : "FAILED");
    return rc;
}

int lk_pg_test(bool verbose)
{
    int rc = 0;
    /* nothing listens on port 1: refused at once, then throttled without an attempt */
    lk_pg_t *pg = lk_pg_new("host=127.0.0.1 port=1 dbname=none user=none", "lk_pg_test");
    lk_pg_set_timing(pg, 1, 0, 60000);
    S_CHECK(lk_pg_connect(pg) == -1 && !lk_pg_connected(pg));
    int64_t t0 = lk_mono_ms();
    lk_pg_result_t *r = lk_pg_exec(pg, "SELECT 1", 0, NULL);
    S_CHECK(r->status == LK_PG_LINK && lk_pg_transient(r) && lk_pg_value(r, 0, 0) == NULL);
    S_CHECK(lk_mono_ms() - t0 < 50);
    lk_pg_result_free(&r);
    int version;
    S_CHECK(lk_pg_migrate(pg, "/nonexistent-lk-sql", &version) == -2);
    lk_pg_destroy(&pg);

    char *buf = NULL;
    size_t len = 0, cap = 0;
    lk_pg_copy_field(&buf, &len, &cap, "a\tb\\c\nd\re", true);
    lk_pg_copy_field(&buf, &len, &cap, NULL, false);
    lk_pg_copy_field(&buf, &len, &cap, "", false);
    lk_pg_copy_row_end(&buf, &len, &cap);
    S_CHECK(len == strlen("a\\tb\\\\c\\nd\\re\t\\N\t\n") &&
            strcmp(buf, "a\\tb\\\\c\\nd\\re\t\\N\t\n") == 0);
    free(buf);

    const char *live = getenv("LATCHKEY_PG_TEST_CONNINFO");
    if (live && *live) {
        if (s_test_live(live, verbose) != 0)
            rc = -1;
    } else if (verbose)
        printf("lk_pg: LATCHKEY_PG_TEST_CONNINFO not set: offline checks only\n");
    return rc;
}
