/*  la_ota: `latchkey ota ...` — the firmware registry, OTA devices and rollouts that
    ota-distributor serves (docs/ota.md).

    PostgreSQL (sql/002_ota.sql) is the record; images are stored under ota_dir by SHA-256
    (<sha[0:2]>/<sha>), written to a temporary file and renamed, so a reader never sees half
    an image. A device's MQTT credential lives in Redis like any user's: mqtt_user:<token>
    with token_auth 1 (the token is the whole credential, as ThingsBoard's access tokens),
    a mountpoint for ThingsBoard-protocol devices (tb/<id>/) and an ACL for its own OTA
    topics only. Rollout state changes go through ota_rollout_set(), which writes their
    history event in the same statement. */
#include "la_cli.h"
#include "lk_common.h"
#include "lk_crypto.h"
#include "lk_ota.h"
#include "lk_pg.h"
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_REVOKE_WAIT_MS 2000

/* runs a query whose one value is a JSON text and prints it (or `empty`) */
static int s_print_json(lk_pg_t *pg, const char *sql, int n, const char *const *p,
                        const char *empty)
{
    lk_pg_result_t *r = la_pg_exec(pg, sql, n, p);
    if (!r)
        return LA_EXIT_FAIL;
    const char *v = lk_pg_value(r, 0, 0);
    printf("%s\n", v ? v : empty);
    lk_pg_result_free(&r);
    return LA_EXIT_OK;
}

/* the options of the image and device subcommands; each accepts those of its optstring */
typedef struct {
    const char *model, *version, *key, *token, *protocol;
    bool json;
} s_opts_t;

/* parses the options of argv that `accepted` ("m:v:j") names into o (left as given for
   those absent); the index of the first operand, or -1 on an option not accepted */
static int s_getopt(int argc, char **argv, const char *accepted, s_opts_t *o)
{
    static const struct option opts[] = {{"model", required_argument, NULL, 'm'},
                                         {"version", required_argument, NULL, 'v'},
                                         {"key", required_argument, NULL, 'k'},
                                         {"token", required_argument, NULL, 't'},
                                         {"protocol", required_argument, NULL, 'p'},
                                         {"json", no_argument, NULL, 'j'},
                                         {NULL, 0, NULL, 0}};
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, accepted, opts, NULL)) != -1) {
        if (c == '?' || c == ':' || !strchr(accepted, c))
            return -1;
        switch (c) {
        case 'm':
            o->model = optarg;
            break;
        case 'v':
            o->version = optarg;
            break;
        case 'k':
            o->key = optarg;
            break;
        case 't':
            o->token = optarg;
            break;
        case 'p':
            o->protocol = optarg;
            break;
        case 'j':
            o->json = true;
            break;
        }
    }
    return optind;
}

/* a listing: the one JSON value of json_sql with --json, else the rows of table_sql under
   heads, each column as wide as widths[i] (negative: left-aligned) */
static int s_print_list(lk_pg_t *pg, bool json, const char *json_sql, const char *table_sql, int n,
                        const char *const *p, int ncols, const char *const *heads,
                        const int *widths)
{
    if (json)
        return s_print_json(pg, json_sql, n, p, "[]");
    lk_pg_result_t *r = la_pg_exec(pg, table_sql, n, p);
    if (!r)
        return LA_EXIT_FAIL;
    for (size_t i = 0; i <= r->nrows; i++)
        for (int k = 0; k < ncols; k++)
            printf("%*s%s", widths[k], i ? lk_pg_value(r, i - 1, k) : heads[k],
                   k + 1 < ncols ? " " : "\n");
    lk_pg_result_free(&r);
    return LA_EXIT_OK;
}

static bool s_name_ok(const char *what, const char *s)
{
    if (!s || !*s || strlen(s) > 128 || strpbrk(s, "/+#:\t\n\r \"\\")) {
        fprintf(stderr,
                "latchkey: '%s' cannot be a %s (empty, too long, or with / + # : \" \\ or "
                "white space)\n",
                s ? s : "", what);
        return false;
    }
    return true;
}

static const char *s_ota_dir(la_ctx_t *ctx)
{
    return lk_config_get(ctx->config, "ota_dir", "/var/lib/latchkey/ota");
}

/* ---- keygen / add / list / rm ---------------------------------------------------- */

static int s_keygen(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc != 2)
        return la_usage("ota");
    if (lk_ota_keygen(argv[1]) != 0)
        return LA_EXIT_FAIL;
    printf("%s/ota.key (private: keep it off the servers), %s/ota.pub (for devices)\n", argv[1],
           argv[1]);
    return LA_EXIT_OK;
}

/* copies src to dst through a temporary file in dst's folder; 0 or -1 (printed) */
static int s_copy_into(const char *src, const char *dst)
{
    char *tmp = lk_malloc(strlen(dst) + 16);
    sprintf(tmp, "%s.tmp-XXXXXX", dst);
    int out = mkstemp(tmp);
    int in = open(src, O_RDONLY | O_CLOEXEC);
    bool ok = out >= 0 && in >= 0;
    char buf[65536];
    while (ok) {
        ssize_t r = read(in, buf, sizeof(buf));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            ok = r == 0;
            break;
        }
        for (ssize_t off = 0; ok && off < r;) {
            ssize_t w = write(out, buf + off, (size_t)(r - off));
            ok = w > 0 || (w < 0 && errno == EINTR);
            off += w > 0 ? w : 0;
        }
    }
    ok = ok && fchmod(out, 0644) == 0 && fsync(out) == 0;
    if (in >= 0)
        close(in);
    if (out >= 0)
        ok = close(out) == 0 && ok;
    if (!ok || rename(tmp, dst) != 0) {
        fprintf(stderr, "latchkey: cannot store %s as %s: %s\n", src, dst, strerror(errno));
        if (out >= 0)
            unlink(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}

static int s_add(la_ctx_t *ctx, int argc, char **argv)
{
    s_opts_t o = {.key = lk_config_get(ctx->config, "ota_key", NULL)};
    int first = s_getopt(argc, argv, "m:v:k:", &o);
    const char *model = o.model, *version = o.version, *key = o.key;
    if (first != argc - 1 || !model || !version)
        return la_usage("ota");
    if (!key || !*key) {
        fprintf(stderr, "latchkey: no signing key: --key <dir>/ota.key or ota_key in the "
                        "configuration (latchkey ota keygen <dir> makes one)\n");
        return LA_EXIT_USAGE;
    }
    if (!s_name_ok("model", model) || !s_name_ok("version", version))
        return LA_EXIT_USAGE;
    const char *file = argv[first];
    char sha[65];
    uint64_t size = 0;
    if (lk_ota_file_sha256(file, sha, &size) != 0) {
        fprintf(stderr, "latchkey: cannot read %s: %s\n", file, strerror(errno));
        return LA_EXIT_FAIL;
    }
    if (size == 0) {
        fprintf(stderr, "latchkey: %s is empty\n", file);
        return LA_EXIT_FAIL;
    }
    uint8_t digest[32];
    lk_ota_hex_decode(sha, digest);
    char key_id[17];
    char *sig = lk_ota_sign(key, digest, key_id);
    if (!sig)
        return LA_EXIT_FAIL;
    lk_pg_t *pg = la_pg(ctx);
    if (!pg) {
        free(sig);
        return LA_EXIT_FAIL;
    }
    int rc = LA_EXIT_FAIL;
    const char *p1[] = {model, version};
    lk_pg_result_t *r =
        la_pg_exec(pg, "SELECT sha256 FROM ota_images WHERE model = $1 AND version = $2", 2, p1);
    if (!r)
        goto out;
    if (r->nrows) {
        bool same = strcmp(lk_pg_value(r, 0, 0), sha) == 0;
        if (same) {
            printf("%s %s is already registered with these bytes (sha256 %s)\n", model, version,
                   sha);
            rc = LA_EXIT_OK;
        } else
            fprintf(stderr,
                    "latchkey: %s %s is already registered with other bytes (sha256 %s); "
                    "an image never changes: use a new version\n",
                    model, version, lk_pg_value(r, 0, 0));
        lk_pg_result_free(&r);
        goto out;
    }
    lk_pg_result_free(&r);
    /* the bytes first: a row never names a file that is not there */
    const char *dir = s_ota_dir(ctx);
    char *path = lk_ota_image_path(dir, sha);
    char *sub = lk_strdup(path);
    *strrchr(sub, '/') = 0;
    mkdir(dir, 0755);
    mkdir(sub, 0755);
    free(sub);
    struct stat st;
    int stored = stat(path, &st) == 0 && (uint64_t)st.st_size == size ? 0 : s_copy_into(file, path);
    free(path);
    if (stored != 0)
        goto out;
    char sz[24];
    snprintf(sz, sizeof(sz), "%" PRIu64, size);
    const char *p2[] = {model, version, sz, sha, sig, key_id};
    r = la_pg_exec(pg,
                   "INSERT INTO ota_images (model, version, size, sha256, signature, key_id) "
                   "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                   6, p2);
    if (r) {
        printf("image %s: %s %s, %" PRIu64 " bytes, sha256 %s, signed by key %s\n",
               lk_pg_value(r, 0, 0), model, version, size, sha, key_id);
        rc = LA_EXIT_OK;
    }
    lk_pg_result_free(&r);
out:
    free(sig);
    lk_pg_destroy(&pg);
    return rc;
}

static int s_list(la_ctx_t *ctx, int argc, char **argv)
{
    s_opts_t o = {0};
    if (s_getopt(argc, argv, "m:j", &o) < 0)
        return la_usage("ota");
    lk_pg_t *pg = la_pg(ctx);
    if (!pg)
        return LA_EXIT_FAIL;
    const char *p[] = {o.model};
    static const char *const heads[] = {"ID", "MODEL", "VERSION", "SIZE", "SHA256"};
    static const int widths[] = {-5, -16, -12, 10, 0};
    int rc = s_print_list(pg, o.json,
                          "SELECT coalesce(json_agg(json_build_object('id', id, 'model', model, "
                          "'version', version, 'size', size, 'sha256', sha256, 'signature', "
                          "signature, 'key_id', key_id) ORDER BY model, id), '[]')::text FROM "
                          "ota_images WHERE $1::text IS NULL OR model = $1",
                          "SELECT id, model, version, size, sha256 FROM ota_images "
                          "WHERE $1::text IS NULL OR model = $1 ORDER BY model, id",
                          1, p, 5, heads, widths);
    lk_pg_destroy(&pg);
    return rc;
}

static int s_rm(la_ctx_t *ctx, int argc, char **argv)
{
    s_opts_t o = {0};
    const char *model, *version;
    if (s_getopt(argc, argv, "m:v:", &o) != argc || !(model = o.model) || !(version = o.version))
        return la_usage("ota");
    lk_pg_t *pg = la_pg(ctx);
    if (!pg)
        return LA_EXIT_FAIL;
    int rc = LA_EXIT_FAIL;
    const char *p[] = {model, version};
    /* one statement: a rollout created meanwhile either sees the image or blocks this */
    lk_pg_result_t *r = la_pg_exec(
        pg,
        "WITH img AS (SELECT id, sha256 FROM ota_images WHERE model = $1 AND version = $2 "
        "FOR UPDATE), busy AS (SELECT string_agg(ro.id::text, ',') AS ids FROM ota_rollouts "
        "ro JOIN img ON ro.image_id = img.id WHERE ro.state IN ('scheduled', 'running', "
        "'paused')), del AS (DELETE FROM ota_images WHERE id IN (SELECT id FROM img) AND (SELECT "
        "ids FROM busy) IS NULL AND NOT EXISTS (SELECT 1 FROM ota_rollouts ro WHERE ro.image_id "
        "IN (SELECT id FROM img)) RETURNING sha256) SELECT (SELECT count(*) FROM img), (SELECT "
        "ids FROM busy), (SELECT sha256 FROM del), (SELECT count(*) FROM ota_rollouts WHERE "
        "image_id IN (SELECT id FROM img))",
        2, p);
    if (!r)
        goto out;
    if (strcmp(lk_pg_value(r, 0, 0), "0") == 0)
        fprintf(stderr, "latchkey: no image %s %s\n", model, version);
    else if (lk_pg_value(r, 0, 1))
        fprintf(stderr, "latchkey: image %s %s is used by rollout(s) %s; cancel them first\n",
                model, version, lk_pg_value(r, 0, 1));
    else if (!lk_pg_value(r, 0, 2))
        fprintf(stderr,
                "latchkey: image %s %s is named by finished rollouts (their history keeps it)\n",
                model, version);
    else {
        const char *sha = lk_pg_value(r, 0, 2);
        const char *ps[] = {sha};
        lk_pg_result_t *o =
            la_pg_exec(pg, "SELECT count(*) FROM ota_images WHERE sha256 = $1", 1, ps);
        if (o && strcmp(lk_pg_value(o, 0, 0), "0") == 0) {
            char *path = lk_ota_image_path(s_ota_dir(ctx), sha);
            unlink(path);
            free(path);
        }
        lk_pg_result_free(&o);
        printf("removed %s %s\n", model, version);
        rc = LA_EXIT_OK;
    }
    lk_pg_result_free(&r);
out:
    lk_pg_destroy(&pg);
    return rc;
}

/* ---- devices ---------------------------------------------------------------------- */

/* the device's credential and ACL in Redis */
static int s_device_credential(la_ctx_t *ctx, const char *id, const char *token, const char *model,
                               const char *protocol)
{
    bool emqx = la_emqx_layout(ctx);
    const char *both = emqx ? "all" : "3", *sub = emqx ? "subscribe" : "1";
    char *ukey = la_user_key(ctx, token), *akey = la_acl_key(ctx, token);
    char mount[300], f1[300], f2[300];
    int rc = 0;
    const char *del[] = {"DEL", ukey, akey};
    rc |= la_redis_run(ctx, 3, del);
    if (strcmp(protocol, "tb") == 0) {
        snprintf(mount, sizeof(mount), "tb/%s/", id);
        const char *u[] = {"HSET", ukey, "token_auth", "1", "mountpoint", mount};
        const char *a[] = {"HSET", akey, "v1/devices/me/#", both, "v2/fw/#", both};
        rc |= la_redis_run(ctx, 6, u) | la_redis_run(ctx, 6, a);
    } else {
        snprintf(f1, sizeof(f1), "lk/ota/%s/#", id);
        snprintf(f2, sizeof(f2), "lk/ota/announce/%s/#", model);
        const char *u[] = {"HSET", ukey, "token_auth", "1"};
        const char *a[] = {"HSET", akey, f1, both, f2, sub};
        rc |= la_redis_run(ctx, 4, u) | la_redis_run(ctx, 6, a);
    }
    free(ukey);
    free(akey);
    return rc;
}

static int s_device_add(la_ctx_t *ctx, int argc, char **argv)
{
    s_opts_t o = {.protocol = "tb"};
    int first = s_getopt(argc, argv, "m:v:t:p:", &o);
    const char *model = o.model, *version = o.version, *token = o.token, *protocol = o.protocol;
    if (first != argc - 1 || !model)
        return la_usage("ota");
    const char *id = argv[first];
    if (strcmp(protocol, "tb") && strcmp(protocol, "lk")) {
        fprintf(stderr, "latchkey: --protocol is tb (ThingsBoard) or lk (Latchkey)\n");
        return LA_EXIT_USAGE;
    }
    if (!s_name_ok("device id", id) || !s_name_ok("model", model) ||
        (version && !s_name_ok("version", version)) || (token && !s_name_ok("token", token)))
        return LA_EXIT_USAGE;
    char *made = token ? NULL : lk_crypto_token(18);
    if (!token)
        token = made;
    lk_pg_t *pg = la_pg(ctx);
    int rc = LA_EXIT_FAIL;
    if (!pg)
        goto out;
    /* the credential first: a device row always has a working token */
    if (s_device_credential(ctx, id, token, model, protocol) != 0)
        goto out;
    const char *p[] = {id, token, model, version, protocol};
    lk_pg_result_t *r = la_pg_exec(
        pg,
        "INSERT INTO ota_devices (id, token, model, version, protocol) VALUES ($1, $2, $3, $4, "
        "$5) ON CONFLICT (id) DO UPDATE SET token = $2, model = $3, version = "
        "coalesce($4, ota_devices.version), protocol = $5 RETURNING (xmax = 0)",
        5, p);
    if (r) {
        printf("device %s (%s, %s protocol)%s token %s\n", id, model, protocol,
               strcmp(lk_pg_value(r, 0, 0), "t") == 0 ? "" : " updated;", token);
        rc = LA_EXIT_OK;
    }
    lk_pg_result_free(&r);
out:
    free(made);
    lk_pg_destroy(&pg);
    return rc;
}

static int s_device_rm(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc != 2)
        return la_usage("ota");
    lk_pg_t *pg = la_pg(ctx);
    if (!pg)
        return LA_EXIT_FAIL;
    const char *p[] = {argv[1]};
    lk_pg_result_t *r =
        la_pg_exec(pg, "DELETE FROM ota_devices WHERE id = $1 RETURNING token", 1, p);
    int rc = LA_EXIT_FAIL;
    if (r && r->nrows == 0)
        fprintf(stderr, "latchkey: no device %s\n", argv[1]);
    else if (r) {
        char *token = lk_strdup(lk_pg_value(r, 0, 0));
        char *ukey = la_user_key(ctx, token), *akey = la_acl_key(ctx, token);
        const char *del[] = {"DEL", ukey, akey};
        rc = la_redis_run(ctx, 3, del) == 0 ? LA_EXIT_OK : LA_EXIT_FAIL;
        if (la_revoke(ctx, &token, 1, S_REVOKE_WAIT_MS) != 0)
            fprintf(stderr, "latchkey: the device's connections were not closed\n");
        free(ukey);
        free(akey);
        free(token);
        if (rc == LA_EXIT_OK)
            printf("removed device %s\n", argv[1]);
    }
    lk_pg_result_free(&r);
    lk_pg_destroy(&pg);
    return rc;
}

static int s_devices(la_ctx_t *ctx, int argc, char **argv)
{
    s_opts_t o = {0};
    if (s_getopt(argc, argv, "m:v:j", &o) < 0)
        return la_usage("ota");
    lk_pg_t *pg = la_pg(ctx);
    if (!pg)
        return LA_EXIT_FAIL;
    const char *p[] = {o.model, o.version};
    static const char *const heads[] = {"ID", "MODEL", "VERSION", "PROT", "STATE", "REPORTED"};
    static const int widths[] = {-20, -16, -12, -4, -12, 0};
    int rc = s_print_list(
        pg, o.json,
        "SELECT coalesce(json_agg(json_build_object('id', id, 'model', model, 'version', "
        "version, 'protocol', protocol, 'fw_state', fw_state, 'reported', reported) ORDER "
        "BY id), '[]')::text FROM ota_devices WHERE ($1::text IS NULL OR model = $1) AND "
        "($2::text IS NULL OR version = $2)",
        "SELECT id, model, coalesce(version, '-'), protocol, coalesce(fw_state, '-'), "
        "coalesce(reported::text, '-') FROM ota_devices WHERE ($1::text IS NULL OR model = $1) "
        "AND ($2::text IS NULL OR version = $2) ORDER BY id",
        2, p, 6, heads, widths);
    lk_pg_destroy(&pg);
    return rc;
}

static int s_device(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc < 2)
        return la_usage("ota");
    if (strcmp(argv[1], "add") == 0)
        return s_device_add(ctx, argc - 1, argv + 1);
    if (strcmp(argv[1], "rm") == 0)
        return s_device_rm(ctx, argc - 1, argv + 1);
    return la_usage("ota");
}

/* ---- rollouts --------------------------------------------------------------------- */

/* "model=M,version<V" (also <=, >, >=, =, !=); the SQL condition on ota_devices d with
   parameters $2.. appended to p; -1 on a bad target */
static int s_target(const char *spec, char *sql, size_t cap, const char **p, int *np,
                    char store[4][256])
{
    char *copy = lk_strdup(spec), *save = NULL;
    size_t len = 0;
    int rc = 0, ns = 0;
    sql[0] = 0;
    for (char *t = strtok_r(copy, ",", &save); t && rc == 0; t = strtok_r(NULL, ",", &save)) {
        size_t k = strcspn(t, "<>=!");
        char op[3] = {0};
        const char *v = t + k;
        while (*v && strchr("<>=!", *v) && strlen(op) < 2)
            op[strlen(op)] = *v++;
        if (ns == 4 || k == 0 || !*op || !*v || strlen(v) >= 256) {
            rc = -1;
            break;
        }
        snprintf(store[ns], 256, "%s", v);
        p[(*np)++] = store[ns++];
        const char *col = strncmp(t, "model", k) == 0 && k == 5     ? "d.model"
                          : strncmp(t, "version", k) == 0 && k == 7 ? "d.version"
                          : strncmp(t, "id", k) == 0 && k == 2      ? "d.id"
                                                                    : NULL;
        if (!col || (strcmp(op, "<") && strcmp(op, "<=") && strcmp(op, ">") && strcmp(op, ">=") &&
                     strcmp(op, "=") && strcmp(op, "!="))) {
            rc = -1;
            break;
        }
        if (strcmp(col, "d.version") == 0 && strcmp(op, "=") && strcmp(op, "!="))
            /* version order: numeric parts as numbers (as lk_ota_version_cmp) */
            len += (size_t)snprintf(sql + len, cap - len,
                                    " AND d.version IS NOT NULL AND "
                                    "string_to_array(regexp_replace(d.version, '[^0-9.]', '', "
                                    "'g'), '.')::int[] %s string_to_array(regexp_replace($%d, "
                                    "'[^0-9.]', '', 'g'), '.')::int[]",
                                    op, *np);
        else
            len += (size_t)snprintf(sql + len, cap - len, " AND %s %s $%d", col, op, *np);
    }
    free(copy);
    return rc;
}

static int s_parse_groups(const char *s, char *out, size_t cap)
{
    int prev = 0, n = 0;
    size_t len = 0;
    len += (size_t)snprintf(out + len, cap - len, "{");
    char *copy = lk_strdup(s), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *end;
        long v = strtol(t, &end, 10);
        if (*end || v <= prev || v > 100 || len + 8 >= cap) {
            free(copy);
            return -1;
        }
        len += (size_t)snprintf(out + len, cap - len, "%s%ld", n++ ? "," : "", v);
        prev = (int)v;
    }
    free(copy);
    if (prev != 100)
        return -1;
    snprintf(out + len, cap - len, "}");
    return 0;
}

static int s_rollout_create(la_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {{"image", required_argument, NULL, 'i'},
                                         {"target", required_argument, NULL, 't'},
                                         {"devices", required_argument, NULL, 'd'},
                                         {"groups", required_argument, NULL, 'g'},
                                         {"success", required_argument, NULL, 's'},
                                         {"error-threshold", required_argument, NULL, 'e'},
                                         {"start", required_argument, NULL, 'S'},
                                         {"max-concurrent", required_argument, NULL, 'c'},
                                         {"max-bytes-per-sec", required_argument, NULL, 'b'},
                                         {NULL, 0, NULL, 0}};
    const char *image = NULL, *target = NULL, *devfile = NULL, *groups = "100", *success = "100";
    const char *threshold = NULL, *start = NULL, *conc = "0", *bps = "0";
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "i:t:d:g:s:e:S:c:b:", opts, NULL)) != -1) {
        switch (c) {
        case 'i':
            image = optarg;
            break;
        case 't':
            target = optarg;
            break;
        case 'd':
            devfile = optarg;
            break;
        case 'g':
            groups = optarg;
            break;
        case 's':
            success = optarg;
            break;
        case 'e':
            threshold = optarg;
            break;
        case 'S':
            start = optarg;
            break;
        case 'c':
            conc = optarg;
            break;
        case 'b':
            bps = optarg;
            break;
        default:
            return la_usage("ota");
        }
    }
    if (optind != argc || !image || (!target == !devfile))
        return la_usage("ota");
    char garr[256];
    if (s_parse_groups(groups, garr, sizeof(garr)) != 0) {
        fprintf(stderr, "latchkey: --groups: increasing percentages ending at 100 (1,10,50,100)\n");
        return LA_EXIT_USAGE;
    }
    char *end;
    double sp = strtod(success, &end);
    if (*end || sp <= 0 || sp > 100) {
        fprintf(stderr, "latchkey: --success: a percentage (0 < s <= 100)\n");
        return LA_EXIT_USAGE;
    }
    char epct[32] = "", ecount[32] = "";
    if (threshold) {
        double v = strtod(threshold, &end);
        bool pct = strcmp(end, "%") == 0;
        if (end == threshold || v <= 0 || (*end && !pct) || (!pct && v != (double)(long)v) ||
            (pct && v > 100)) {
            fprintf(stderr, "latchkey: --error-threshold: a share (5%%) or a count (10)\n");
            return LA_EXIT_USAGE;
        }
        if (pct)
            snprintf(epct, sizeof(epct), "%g", v);
        else
            snprintf(ecount, sizeof(ecount), "%ld", (long)v);
    }
    long lc = strtol(conc, &end, 10);
    if (*end || lc < 0 || lc > 1000000)
        return la_usage("ota");
    long long lb = strtoll(bps, &end, 10);
    if (*end || lb < 0)
        return la_usage("ota");
    /* the image: "<model>/<version>", "<model>:<version>" or its id */
    char img_model[256] = "", img_version[256] = "";
    const char *sep = strpbrk(image, "/:");
    if (sep && (size_t)(sep - image) < sizeof(img_model) && strlen(sep + 1) < sizeof(img_version)) {
        memcpy(img_model, image, (size_t)(sep - image));
        img_model[sep - image] = 0;
        snprintf(img_version, sizeof(img_version), "%s", sep + 1);
    }
    lk_pg_t *pg = la_pg(ctx);
    if (!pg)
        return LA_EXIT_FAIL;
    int rc = LA_EXIT_FAIL;
    bool in_tx = false;
    const char *pi[] = {image, img_model, img_version};
    lk_pg_result_t *r = la_pg_exec(pg,
                                   "SELECT id, model, version FROM ota_images WHERE ($2 <> '' AND "
                                   "model = $2 AND version = $3) OR ($2 = '' AND id::text = $1)",
                                   3, pi);
    if (!r)
        goto out;
    if (r->nrows != 1) {
        fprintf(stderr, "latchkey: no image '%s' (give <model>/<version> or its id)\n", image);
        lk_pg_result_free(&r);
        goto out;
    }
    char img_id[24], model[256];
    snprintf(img_id, sizeof(img_id), "%s", lk_pg_value(r, 0, 0));
    snprintf(model, sizeof(model), "%s", lk_pg_value(r, 0, 1));
    lk_pg_result_free(&r);
    if (lk_pg_begin(pg) != 0)
        goto out;
    in_tx = true;
    char tgt_desc[512];
    snprintf(tgt_desc, sizeof(tgt_desc), "%s%s", target ? target : "devices from ",
             target ? "" : devfile);
    const char *pr[] = {img_id, garr, success, *epct ? epct : NULL, *ecount ? ecount : NULL, start,
                        conc,   bps,  tgt_desc};
    r = la_pg_exec(
        pg,
        "INSERT INTO ota_rollouts (image_id, groups, success_pct, error_pct, error_count, "
        "start_at, max_concurrent, max_bps, target) VALUES ($1, $2, $3, $4, $5, "
        "coalesce($6::timestamptz, now()), $7, $8, $9) RETURNING id",
        9, pr);
    if (!r)
        goto out;
    char rid[24];
    snprintf(rid, sizeof(rid), "%s", lk_pg_value(r, 0, 0));
    lk_pg_result_free(&r);
    /* the devices, in a stable order; a device already in an open rollout is left out */
    char cond[2048];
    const char *pd[8] = {rid, model};
    int np = 2;
    char store[4][256];
    char *ids = NULL;
    if (target) {
        if (s_target(target, cond, sizeof(cond), pd, &np, store) != 0) {
            fprintf(stderr, "latchkey: --target: 'model=M,version<V' (model, version, id with "
                            "= != < <= > >=)\n");
            rc = LA_EXIT_USAGE;
            goto out;
        }
    } else {
        size_t len = 0;
        ids = lk_file_read_text(devfile, "device list", &len);
        if (!ids) {
            fprintf(stderr, "latchkey: cannot read %s\n", devfile);
            goto out;
        }
        for (char *q = ids; *q; q++)
            if (*q == '\n' || *q == '\r' || *q == ' ' || *q == '\t')
                *q = ',';
        pd[np++] = ids;
        snprintf(cond, sizeof(cond), " AND d.id = ANY (string_to_array($3, ','))");
    }
    char sql[4096];
    snprintf(sql, sizeof(sql),
             "WITH fleet AS (SELECT d.id, row_number() OVER (ORDER BY d.id) - 1 AS ord, "
             "count(*) OVER () AS n FROM ota_devices d WHERE d.model = $2%s AND NOT EXISTS "
             "(SELECT 1 FROM ota_rollout_devices rd JOIN ota_rollouts ro ON ro.id = "
             "rd.rollout_id WHERE rd.device_id = d.id AND ro.state IN ('scheduled', 'running', "
             "'paused') AND rd.state NOT IN ('updated', 'failed', 'cancelled'))), "
             "g AS (SELECT (SELECT groups FROM ota_rollouts WHERE id = $1) AS groups) "
             "INSERT INTO ota_rollout_devices (rollout_id, device_id, grp, ord) SELECT $1, "
             "f.id, (SELECT min(i) - 1 FROM generate_subscripts(g.groups, 1) i WHERE "
             "f.ord < greatest(1, ceil(f.n * g.groups[i] / 100.0))), f.ord FROM fleet f, g "
             "RETURNING grp",
             cond);
    r = la_pg_exec(pg, sql, np, pd);
    free(ids);
    if (!r)
        goto out;
    size_t n = r->nrows;
    lk_pg_result_free(&r);
    if (n == 0) {
        fprintf(stderr, "latchkey: no device matches (model %s%s%s)\n", model, target ? ", " : "",
                target ? target : "");
        goto out;
    }
    const char *pe[] = {rid};
    r = la_pg_exec(pg,
                   "INSERT INTO events (id, kind, actor, time, details) SELECT 'ota:r' || id || "
                   "':0', 'ota_rollout', 'latchkey', now(), jsonb_build_object('rollout', id, "
                   "'state', state, 'group', 0, 'reason', 'created', 'target', target, "
                   "'devices', (SELECT count(*) FROM ota_rollout_devices WHERE rollout_id = id)) "
                   "FROM ota_rollouts WHERE id = $1",
                   1, pe);
    if (!r)
        goto out;
    lk_pg_result_free(&r);
    if (lk_pg_commit(pg) != 0)
        goto out;
    in_tx = false;
    printf("rollout %s: %zu devices, groups %s\n", rid, n, groups);
    rc = LA_EXIT_OK;
out:
    if (in_tx)
        lk_pg_rollback(pg);
    lk_pg_destroy(&pg);
    return rc;
}

static int s_rollout_change(la_ctx_t *ctx, const char *id, const char *from, const char *to,
                            const char *why)
{
    lk_pg_t *pg = la_pg(ctx);
    if (!pg)
        return LA_EXIT_FAIL;
    int rc = LA_EXIT_FAIL;
    const char *p[] = {id, from, to, why};
    if (lk_pg_begin(pg) != 0)
        goto out;
    lk_pg_result_t *r = la_pg_exec(pg,
                                   "SELECT ota_rollout_set($1::bigint, $2::text[], $3, $4, NULL, "
                                   "NULL, 'latchkey'), (SELECT state FROM ota_rollouts WHERE id = "
                                   "$1::bigint)",
                                   4, p);
    if (r && strcmp(lk_pg_value(r, 0, 0), "t") == 0) {
        if (strcmp(to, "cancelled") == 0) {
            /* devices not yet done: cancelled, each with its event */
            lk_pg_result_t *c = la_pg_exec(
                pg,
                "SELECT count(*) FILTER (WHERE ota_device_set(rollout_id, device_id, "
                "'{waiting,offered,downloading,downloaded}', 'cancelled', 'rollout cancelled', "
                "NULL)) FROM ota_rollout_devices WHERE rollout_id = $1::bigint",
                1, p);
            lk_pg_result_free(&c);
        }
        if (lk_pg_commit(pg) == 0) {
            printf("rollout %s: %s\n", id, to);
            rc = LA_EXIT_OK;
        }
    } else if (r) {
        lk_pg_rollback(pg);
        if (!lk_pg_value(r, 0, 1))
            fprintf(stderr, "latchkey: no rollout %s\n", id);
        else
            fprintf(stderr, "latchkey: rollout %s is %s\n", id, lk_pg_value(r, 0, 1));
    } else
        lk_pg_rollback(pg);
    lk_pg_result_free(&r);
out:
    lk_pg_destroy(&pg);
    return rc;
}

static const char *s_status_sql =
    "SELECT json_build_object('id', ro.id, 'state', ro.state, 'reason', ro.reason, 'image', "
    "json_build_object('id', i.id, 'model', i.model, 'version', i.version, 'sha256', "
    "i.sha256, 'size', i.size), 'target', ro.target, 'groups', ro.groups, 'current_group', "
    "ro.current_group, 'success_pct', ro.success_pct, 'error_pct', ro.error_pct, "
    "'error_count', ro.error_count, 'max_concurrent', ro.max_concurrent, "
    "'max_bytes_per_sec', ro.max_bps, 'start', ro.start_at, 'updated', ro.updated, "
    "'devices', (SELECT count(*) FROM ota_rollout_devices WHERE rollout_id = ro.id), "
    "'states', (SELECT coalesce(json_object_agg(state, n), '{}') FROM (SELECT state, count(*) "
    "n FROM ota_rollout_devices WHERE rollout_id = ro.id GROUP BY state) s), 'per_group', "
    "(SELECT coalesce(json_agg(json_build_object('group', grp, 'devices', n, 'states', st) "
    "ORDER BY grp), '[]') FROM (SELECT grp, sum(n) n, json_object_agg(state, n) st FROM "
    "(SELECT grp, state, count(*) n FROM ota_rollout_devices WHERE rollout_id = ro.id GROUP "
    "BY grp, state) x GROUP BY grp) y))::text FROM ota_rollouts ro JOIN ota_images i ON i.id "
    "= ro.image_id WHERE ro.id::text = $1";

static int s_rollout_status(la_ctx_t *ctx, int argc, char **argv)
{
    bool json = false;
    const char *id = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else if (!id)
            id = argv[i];
        else
            return la_usage("ota");
    }
    lk_pg_t *pg = la_pg(ctx);
    if (!pg)
        return LA_EXIT_FAIL;
    int rc = LA_EXIT_FAIL;
    if (!id) {
        rc = s_print_json(pg,
                          "SELECT coalesce(json_agg(json_build_object('id', ro.id, 'state', "
                          "ro.state, 'image', i.model || '/' || i.version, 'group', "
                          "ro.current_group, 'reason', ro.reason) ORDER BY ro.id), '[]')::text "
                          "FROM ota_rollouts ro JOIN ota_images i ON i.id = ro.image_id",
                          0, NULL, "[]");
        lk_pg_destroy(&pg);
        return rc;
    }
    const char *p[] = {id};
    lk_pg_result_t *r = la_pg_exec(pg, s_status_sql, 1, p);
    if (r && r->nrows == 0)
        fprintf(stderr, "latchkey: no rollout %s\n", id);
    else if (r && json) {
        printf("%s\n", lk_pg_value(r, 0, 0));
        rc = LA_EXIT_OK;
    } else if (r) {
        lk_pg_result_free(&r);
        r = la_pg_exec(
            pg,
            "SELECT ro.state, ro.reason, i.model || '/' || i.version, ro.current_group + 1, "
            "array_length(ro.groups, 1), ro.groups::text FROM ota_rollouts ro JOIN "
            "ota_images i ON i.id = ro.image_id WHERE ro.id::text = $1",
            1, p);
        if (r) {
            printf("rollout %s: %s%s%s, image %s, group %s of %s %s\n", id, lk_pg_value(r, 0, 0),
                   *lk_pg_value(r, 0, 1) ? " (" : "", lk_pg_value(r, 0, 1), lk_pg_value(r, 0, 2),
                   lk_pg_value(r, 0, 3), lk_pg_value(r, 0, 4), lk_pg_value(r, 0, 5));
            if (*lk_pg_value(r, 0, 1))
                printf("  reason: %s\n", lk_pg_value(r, 0, 1));
            lk_pg_result_free(&r);
            r = la_pg_exec(pg,
                           "SELECT grp + 1, state, count(*) FROM ota_rollout_devices WHERE "
                           "rollout_id::text = $1 GROUP BY grp, state ORDER BY grp, state",
                           1, p);
            for (size_t i = 0; r && i < r->nrows; i++)
                printf("  group %s %-12s %s\n", lk_pg_value(r, i, 0), lk_pg_value(r, i, 1),
                       lk_pg_value(r, i, 2));
            rc = r ? LA_EXIT_OK : LA_EXIT_FAIL;
        }
    }
    lk_pg_result_free(&r);
    lk_pg_destroy(&pg);
    return rc;
}

static int s_rollout(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc < 2)
        return la_usage("ota");
    const char *what = argv[1];
    if (strcmp(what, "create") == 0)
        return s_rollout_create(ctx, argc - 1, argv + 1);
    if (strcmp(what, "status") == 0 || strcmp(what, "list") == 0)
        return s_rollout_status(ctx, argc - 1, argv + 1);
    if (argc != 3)
        return la_usage("ota");
    if (strcmp(what, "pause") == 0)
        return s_rollout_change(ctx, argv[2], "{scheduled,running}", "paused",
                                "paused by operator");
    if (strcmp(what, "resume") == 0)
        return s_rollout_change(ctx, argv[2], "{paused}", "running", "");
    if (strcmp(what, "cancel") == 0)
        return s_rollout_change(ctx, argv[2], "{scheduled,running,paused}", "cancelled",
                                "cancelled by operator");
    return la_usage("ota");
}

int la_cmd_ota(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc < 2)
        return la_usage("ota");
    const char *sub = argv[1];
    argc--;
    argv++;
    if (strcmp(sub, "keygen") == 0)
        return s_keygen(ctx, argc, argv);
    if (strcmp(sub, "add") == 0)
        return s_add(ctx, argc, argv);
    if (strcmp(sub, "list") == 0)
        return s_list(ctx, argc, argv);
    if (strcmp(sub, "rm") == 0)
        return s_rm(ctx, argc, argv);
    if (strcmp(sub, "device") == 0)
        return s_device(ctx, argc, argv);
    if (strcmp(sub, "devices") == 0)
        return s_devices(ctx, argc, argv);
    if (strcmp(sub, "rollout") == 0)
        return s_rollout(ctx, argc, argv);
    return la_usage("ota");
}
