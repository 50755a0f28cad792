/*  fe_server: the MQTT frontend actor (see fe_server.c). */
#ifndef FE_SERVER_H_INCLUDED
#define FE_SERVER_H_INCLUDED

#include "lk_config.h"
#include "lk_loop.h"

typedef struct _fe_server_t fe_server_t;

/* opens the listeners and connects the bus; NULL with a log line on error */
fe_server_t *fe_server_new(lk_config_t *config, lk_loop_t *loop, const char *node);
void fe_server_destroy(fe_server_t **self_p);

#endif
