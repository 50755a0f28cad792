/*  rt_server: the router actor (see rt_server.c). */
#ifndef RT_SERVER_H_INCLUDED
#define RT_SERVER_H_INCLUDED

#include "lk_config.h"
#include "lk_loop.h"

typedef struct _rt_server_t rt_server_t;

/* binds router_endpoint; NULL with a log line on a configuration or bind error */
rt_server_t *rt_server_new(lk_config_t *config, lk_loop_t *loop, const char *node);
void rt_server_destroy(rt_server_t **self_p);

#endif
