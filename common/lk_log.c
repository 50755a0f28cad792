/*  lk_log: stderr lines "<service>[<node>]: <level>: <text>"; s6-log adds the time. */
#include "lk_log.h"
#include <stdio.h>
#include <string.h>

static char s_prefix[96] = "latchkey";
static lk_log_level_t s_level = LK_LOG_NOTICE;
static const char *s_names[] = {"debug", "info", "notice", "warning", "error"};

void lk_log_init(const char *service, const char *node)
{
    if (node && *node && strcmp(node, service) != 0)
        snprintf(s_prefix, sizeof(s_prefix), "%s[%s]", service, node);
    else
        snprintf(s_prefix, sizeof(s_prefix), "%s", service);
    setvbuf(stderr, NULL, _IOLBF, 0);
}

int lk_log_set_level_name(const char *name)
{
    for (int i = 0; i <= LK_LOG_ERROR; i++)
        if (strcmp(name, s_names[i]) == 0 || (i == LK_LOG_WARNING && strcmp(name, "warn") == 0)) {
            s_level = (lk_log_level_t)i;
            return 0;
        }
    return -1;
}

void lk_log_set_level(lk_log_level_t level)
{
    s_level = level;
}

int lk_log_enabled(lk_log_level_t level)
{
    return level >= s_level;
}

void lk_log(lk_log_level_t level, const char *fmt, ...)
{
    if (level < s_level)
        return;
    char line[1024];
    int n = snprintf(line, sizeof(line), "%s: %s: ", s_prefix, s_names[level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    /* one write per line, so lines of concurrent writers never interleave */
    fprintf(stderr, "%s\n", line);
}
