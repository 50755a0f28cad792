/*  lk_log: one line per event on stderr, "<service>[<node>]: <level>: <text>".
    No timestamps: s6-log adds them (exactly one layer does). */
#ifndef LK_LOG_H_INCLUDED
#define LK_LOG_H_INCLUDED

#include <stdarg.h>

typedef enum {
    LK_LOG_DEBUG = 0,
    LK_LOG_INFO = 1,
    LK_LOG_NOTICE = 2,
    LK_LOG_WARNING = 3,
    LK_LOG_ERROR = 4
} lk_log_level_t;

void lk_log_init(const char *service, const char *node);
/* "debug" "info" "notice" "warning" "error"; returns -1 for an unknown name */
int lk_log_set_level_name(const char *name);
void lk_log_set_level(lk_log_level_t level);
int lk_log_enabled(lk_log_level_t level);
void lk_log(lk_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define lk_debug(...)                                                                              \
    do {                                                                                           \
        if (lk_log_enabled(LK_LOG_DEBUG))                                                          \
            lk_log(LK_LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)
#define lk_info(...) lk_log(LK_LOG_INFO, __VA_ARGS__)
#define lk_notice(...) lk_log(LK_LOG_NOTICE, __VA_ARGS__)
#define lk_warn(...) lk_log(LK_LOG_WARNING, __VA_ARGS__)
#define lk_error(...) lk_log(LK_LOG_ERROR, __VA_ARGS__)

#endif
