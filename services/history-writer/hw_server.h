/*  hw_server: the history-writer actor.

    Serves history_endpoint (ROUTER); producers send HistoryBatch envelopes reliably. The
    events of one loop turn are written at turn end: straight into PostgreSQL (hw_store)
    when it is usable and the spool is empty, else appended to the spool (hw_spool). Every
    envelope is acked only then, so an acked event is in PostgreSQL or in a synced file.
    While the spool holds anything, new events join it behind the old ones, and a drain
    (timer steps, so the loop keeps serving) writes it into PostgreSQL in order; events
    reach PostgreSQL in the order they arrived. When neither is possible (spool full,
    disk failing) events wait in memory unacked and the writing is retried every second.

    Configuration: history_endpoint, pg_conninfo, sql_dir (${LATCHKEY_ROOT}/sql),
    spool_dir (${RUN_DIR}/data/history-spool), spool_max_bytes (1 GiB),
    pg_statement_timeout_ms (5000), stats_interval (10 s; 0 = off). */
#ifndef HW_SERVER_H_INCLUDED
#define HW_SERVER_H_INCLUDED

#include "lk_config.h"
#include "lk_loop.h"

typedef struct _hw_server_t hw_server_t;

/* NULL (logged) on a bad configuration; the config must outlive the server */
hw_server_t *hw_server_new(lk_loop_t *loop, lk_config_t *cfg, const char *node, int ready_fd);
void hw_server_destroy(hw_server_t **self_p);
/* opens the spool, binds, migrates the schema when PostgreSQL answers, then announces
   readiness (also without PostgreSQL: events spool meanwhile). 0; -1 a failure that a
   restart may cure (endpoint, spool folder); -2 a schema that cannot be migrated */
int hw_server_start(hw_server_t *self);

#endif
