/*  fe_mount: topic mount points (EMQX's `mountpoint`): a client's topics live under a
    prefix it never sees. The prefix comes from the user's auth record (Redis
    mqtt_user:<name> `mountpoint`) or else from the listener's `mountpoint` line; %u and
    %c are the username and client id. It is put in front of every PUBLISH topic, will
    topic, SUBSCRIBE and UNSUBSCRIBE filter (inside $share/<group>/ for shared ones) after
    the ACL check, and taken off every topic delivered to the client. So the ACL is
    written in the client's own view ("v1/devices/me/#"), and two devices publishing
    "v1/devices/me/telemetry" under "tb/%u/" reach different topics. */
#include "fe_internal.h"
#include <stdio.h>

/* a %u/%c value that cannot leave or widen the namespace it names */
static bool s_value_ok(const char *v)
{
    return v && *v && !strpbrk(v, "/+#") && strcmp(v, "..") != 0;
}

int fe_mount_set(fe_conn_t *conn, const char *from_auth)
{
    const char *tpl = from_auth && *from_auth ? from_auth : conn->mount_tpl;
    free(conn->mount);
    conn->mount = NULL;
    conn->mount_len = 0;
    if (!tpl || !*tpl)
        return 0;
    if ((strstr(tpl, "%u") && !s_value_ok(conn->username)) ||
        (strstr(tpl, "%c") && !s_value_ok(conn->client_id))) {
        lk_info("client %s: mountpoint '%s' cannot take its username or client id", conn->client_id,
                tpl);
        return -1;
    }
    char *a = lk_str_subst(tpl, 'u', conn->username ? conn->username : "");
    char *m = lk_str_subst(a, 'c', conn->client_id ? conn->client_id : "");
    free(a);
    if (strpbrk(m, "+#") || m[0] == '$') {
        lk_info("client %s: mountpoint '%s' is not a topic prefix", conn->client_id, m);
        free(m);
        return -1;
    }
    conn->mount = m;
    conn->mount_len = strlen(m);
    if (conn->will && conn->will->topic)
        conn->will->topic = fe_mount_in(conn, conn->will->topic);
    return 0;
}

char *fe_mount_in(fe_conn_t *conn, char *topic)
{
    if (!conn->mount)
        return topic;
    size_t skip = 0;
    if (strncmp(topic, "$share/", 7) == 0) {
        const char *slash = strchr(topic + 7, '/');
        skip = slash ? (size_t)(slash + 1 - topic) : 0;
    }
    size_t n = strlen(topic);
    char *out = lk_malloc(n + conn->mount_len + 1);
    memcpy(out, topic, skip);
    memcpy(out + skip, conn->mount, conn->mount_len);
    memcpy(out + skip + conn->mount_len, topic + skip, n - skip + 1);
    free(topic);
    return out;
}

const char *fe_mount_out(const fe_conn_t *conn, const char *topic)
{
    if (conn->mount && strncmp(topic, conn->mount, conn->mount_len) == 0 && topic[conn->mount_len])
        return topic + conn->mount_len;
    return topic;
}

void fe_mount_free(fe_conn_t *conn)
{
    free(conn->mount);
    free(conn->mount_tpl);
    conn->mount = conn->mount_tpl = NULL;
}

int fe_mount_test(bool verbose)
{
    int fails = 0;
#define S_T(c)                                                                                     \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fails++;                                                                               \
            printf("  FAIL fe_mount: %s\n", #c);                                                   \
        } else if (verbose)                                                                        \
            printf("  ok   fe_mount: %s\n", #c);                                                   \
    } while (0)
    fe_conn_t c = {0};
    c.username = "dev1";
    c.client_id = "c1";
    c.mount_tpl = lk_strdup("site/%u/%c/");
    S_T(fe_mount_set(&c, NULL) == 0 && strcmp(c.mount, "site/dev1/c1/") == 0);
    char *t = fe_mount_in(&c, lk_strdup("a/b"));
    S_T(strcmp(t, "site/dev1/c1/a/b") == 0);
    S_T(strcmp(fe_mount_out(&c, t), "a/b") == 0);
    S_T(strcmp(fe_mount_out(&c, "other/x"), "other/x") == 0);
    free(t);
    t = fe_mount_in(&c, lk_strdup("$share/g/a/#"));
    S_T(strcmp(t, "$share/g/site/dev1/c1/a/#") == 0);
    free(t);
    /* the user's own mount point wins over the listener's */
    S_T(fe_mount_set(&c, "tb/x/") == 0 && strcmp(c.mount, "tb/x/") == 0);
    /* values that would leave or widen the namespace refuse the connection */
    c.username = "a/b";
    S_T(fe_mount_set(&c, NULL) == -1 && c.mount == NULL);
    c.username = "a+";
    S_T(fe_mount_set(&c, "u/%u/") == -1);
    c.username = "dev1";
    S_T(fe_mount_set(&c, "x/#/") == -1);
    S_T(fe_mount_set(&c, "$SYS/") == -1);
    /* none configured: topics pass unchanged */
    free(c.mount_tpl);
    c.mount_tpl = NULL;
    S_T(fe_mount_set(&c, "") == 0 && c.mount == NULL);
    t = fe_mount_in(&c, lk_strdup("a"));
    S_T(strcmp(t, "a") == 0);
    free(t);
    fe_mount_free(&c);
    return fails;
}
