/*  fuzz_config: libFuzzer target for the configuration parser (common/lk_config.c).

    The input is a configuration text (cut at its first NUL, as lk_config_load refuses NUL
    bytes). What parses is queried the way the daemons query it: the key of every line is
    looked up by count, every value, as a number and as a boolean; ${VAR} expansion meets
    a few variables set here, one of them long, and an override variable. Then a key is
    replaced with lk_config_set and the counts must agree.
*/
#include "lk_config.h"
#include "lk_common.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_CHECK(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_config: %s:%d: %s\n", __FILE__, __LINE__, #cond);                \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static char longv[5000];
    memset(longv, 'x', sizeof(longv) - 1);
    setenv("LK_FZ_LONG", longv, 1);
    setenv("LK_FZ", "v", 1);
    setenv("LK_FZ_EMPTY", "", 1);
    /* every malformed line and value is logged as an error: above the highest level, so
       the fuzzer's output stays readable and fast */
    lk_log_set_level((lk_log_level_t)(LK_LOG_ERROR + 1));
    /* an override that expands: read for key "fz_over" */
    setenv("LATCHKEY_FZ_OVER", "${LK_FZ}${LK_FZ_LONG}${", 1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    S_CHECK(text);
    memcpy(text, data, size);
    text[size] = 0;
    lk_config_t *c = lk_config_parse(text, "fuzz");
    if (c) {
        /* every line's first word, as a key */
        const char *p = text;
        int lines = 0;
        while (*p && lines < 64) {
            while (*p && isspace((unsigned char)*p))
                p++;
            const char *k = p;
            while (*p && !isspace((unsigned char)*p))
                p++;
            size_t kl = (size_t)(p - k);
            if (kl && kl < 200 && *k != '#') {
                char key[200];
                memcpy(key, k, kl);
                key[kl] = 0;
                int n = lk_config_count(c, key);
                S_CHECK(n >= 0);
                for (int i = 0; i < n; i++)
                    S_CHECK(lk_config_get_nth(c, key, i) != NULL);
                S_CHECK(lk_config_get_nth(c, key, n) == NULL);
                (void)lk_config_get_int(c, key, 0);
                (void)lk_config_get_bool(c, key, false);
                const char *v = lk_config_get(c, key, NULL);
                S_CHECK(n == 0 || v != NULL);
            }
            while (*p && *p != '\n')
                p++;
            lines++;
        }
        const char *ov = lk_config_get(c, "fz_over", NULL);
        S_CHECK(ov && strncmp(ov, "vxxx", 4) == 0);
        S_CHECK(lk_config_count(c, "fz_over") == 1);
        lk_config_set(c, "listener", "1883 127.0.0.1");
        S_CHECK(lk_config_count(c, "listener") == 1);
        S_CHECK(strcmp(lk_config_get(c, "listener", ""), "1883 127.0.0.1") == 0);
        lk_config_destroy(&c);
        S_CHECK(c == NULL);
    }
    free(text);
    return 0;
}
