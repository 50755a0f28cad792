/*  la_keygen: `latchkey keygen <dir> <node>...` — CurveZMQ certificates for the bus over
    tcp:// (see lk_bus.h). For each node it writes <dir>/<node>.key (the public
    certificate: copy it into the servers' bus_curve_public_dir when the node connects, and
    into the clients' bus_curve_server_dir when it serves) and <dir>/<node>.key_secret (mode
    0600: it stays on that node, named by its bus_curve_secret). An existing certificate is
    never overwritten: remove it first to rotate a key. */
#include "la_cli.h"
#include "lk_common.h"
#include <czmq.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int la_cmd_keygen(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc < 3 || argv[1][0] == '-')
        return la_usage(argv[0]);
    const char *dir = argv[1];
    if (zsys_dir_create("%s", dir) != 0) {
        fprintf(stderr, "latchkey: cannot create %s\n", dir);
        return LA_EXIT_FAIL;
    }
    int rc = LA_EXIT_OK;
    for (int i = 2; i < argc; i++) {
        const char *node = argv[i];
        if (!*node || strchr(node, '/') || node[0] == '.') {
            fprintf(stderr, "latchkey: '%s' is not a node name\n", node);
            rc = LA_EXIT_USAGE;
            continue;
        }
        char pub[1024], sec[1040];
        snprintf(pub, sizeof(pub), "%s/%s.key", dir, node);
        snprintf(sec, sizeof(sec), "%s_secret", pub);
        if (access(pub, F_OK) == 0 || access(sec, F_OK) == 0) {
            fprintf(stderr, "latchkey: %s exists: not overwritten\n", pub);
            rc = LA_EXIT_FAIL;
            continue;
        }
        zcert_t *cert = zcert_new();
        zcert_set_meta(cert, "node", "%s", node);
        /* the secret file is created private: umask first, chmod to be sure */
        mode_t old = umask(077);
        int w = zcert_save(cert, pub);
        umask(old);
        if (w != 0 || chmod(sec, 0600) != 0 || chmod(pub, 0644) != 0) {
            fprintf(stderr, "latchkey: cannot write %s\n", pub);
            rc = LA_EXIT_FAIL;
        } else
            printf("%s: public %s, secret %s\n", node, pub, sec);
        zcert_destroy(&cert);
    }
    return rc;
}
