/*  la_passwd: `latchkey passwd` — set or delete a user's password, in Redis or in a
    Mosquitto password file (-f). Redis in the layout auth_backends names first (see
    la_emqx_layout): the seed's mqtt_user:<user> `password`, a $7$ PBKDF2 hash as
    mosquitto_passwd writes, or EMQX 5's mqtt:<user> `password_hash` + `salt` in the
    algorithm of emqx_password_hash / emqx_salt_position. Deleting also drops the user's
    ACL (Redis) and asks the auth service to disconnect the user's clients. A file is
    rewritten through a temporary file and rename(), so auth never reads half a file. */
#include "la_cli.h"
#include "lk_common.h"
#include "lk_crypto.h"
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

/* how long `passwd -d` waits for auth to confirm the revocation */
#define S_REVOKE_WAIT_MS 2000

/* reads the whole file; *text = NULL (and 0) when it does not exist */
static int s_read_file(const char *path, char **text, mode_t *mode)
{
    *text = NULL;
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT)
            return 0;
        fprintf(stderr, "latchkey: cannot read %s: %s\n", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0)
        *mode = st.st_mode & 07777;
    size_t cap = 4096, len = 0, r;
    char *buf = lk_malloc(cap);
    while ((r = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += r;
        if (cap - len < 2) {
            cap *= 2;
            buf = lk_realloc(buf, cap);
        }
    }
    bool bad = ferror(f) != 0;
    fclose(f);
    buf[len] = 0;
    if (bad) {
        fprintf(stderr, "latchkey: cannot read %s\n", path);
        free(buf);
        return -1;
    }
    *text = buf;
    return 0;
}

/* writes text to path atomically (temporary file in the same folder, then rename) */
static int s_write_file(const char *path, const char *text, mode_t mode)
{
    char *copy = lk_strdup(path);
    size_t n = strlen(path) + 16;
    char *tmp = lk_malloc(n);
    snprintf(tmp, n, "%s/.pw-XXXXXX", dirname(copy));
    free(copy);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        fprintf(stderr, "latchkey: cannot write next to %s: %s\n", path, strerror(errno));
        free(tmp);
        return -1;
    }
    size_t len = strlen(text), off = 0;
    bool ok = fchmod(fd, mode) == 0;
    while (ok && off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        ok = w > 0;
        off += w > 0 ? (size_t)w : 0;
    }
    ok = ok && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        fprintf(stderr, "latchkey: cannot write %s: %s\n", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}

/* Sets (hash) or deletes (hash NULL) user's line in the password file. *found tells
   whether the user was there. Every other line is kept as it was. */
static int s_file_update(const char *path, const char *user, const char *hash, bool *found)
{
    char *text;
    mode_t mode = 0600; /* a new file is for the broker's eyes only */
    *found = false;
    if (s_read_file(path, &text, &mode) != 0)
        return -1;
    if (!text && !hash) {
        fprintf(stderr, "latchkey: %s does not exist\n", path);
        return -1;
    }
    size_t ulen = strlen(user), len = 0;
    size_t cap = (text ? strlen(text) : 0) + ulen + (hash ? strlen(hash) : 0) + 8;
    char *out = lk_malloc(cap);
    for (const char *p = text ? text : ""; *p;) {
        const char *eol = strchr(p, '\n');
        size_t n = eol ? (size_t)(eol - p) + 1 : strlen(p);
        bool mine = n > ulen && strncmp(p, user, ulen) == 0 && p[ulen] == ':';
        if (mine && hash && !*found)
            len += (size_t)snprintf(out + len, cap - len, "%s:%s\n", user, hash);
        else if (!mine) {
            memcpy(out + len, p, n);
            len += n;
            if (!eol) /* the last line had no line end: give it one before we append */
                out[len++] = '\n';
        }
        *found |= mine;
        p += n;
    }
    if (hash && !*found)
        len += (size_t)snprintf(out + len, cap - len, "%s:%s\n", user, hash);
    out[len] = 0;
    int rc = s_write_file(path, out, mode);
    free(out);
    free(text);
    return rc;
}

/* EMQX 5 layout: password_hash and salt in the configured algorithm */
static int s_set_emqx(la_ctx_t *ctx, const char *user, const char *password)
{
    lk_crypto_emqx_t alg;
    if (lk_crypto_emqx_parse(&alg, lk_config_get(ctx->config, "emqx_password_hash", "sha256"),
                             lk_config_get(ctx->config, "emqx_salt_position", "prefix")) != 0)
        return LA_EXIT_FAIL;
    char *salt = NULL, *hash = lk_crypto_emqx_hash(&alg, password, strlen(password), &salt);
    if (!hash) {
        fprintf(stderr, "latchkey: cannot hash the password\n");
        return LA_EXIT_FAIL;
    }
    char *key = la_user_key(ctx, user);
    const char *set[] = {"HSET", key, "password_hash", hash, "salt", salt};
    const char *del[] = {"HDEL", key, "password"}; /* EMQX 4.x's field would shadow nothing,
                                                      but must not linger */
    lk_redis_reply_t *r = la_redis_cmd(ctx, 6, set);
    int rc = r ? LA_EXIT_OK : LA_EXIT_FAIL;
    lk_redis_reply_free(&r);
    if (rc == LA_EXIT_OK && !(r = la_redis_cmd(ctx, 3, del)))
        rc = LA_EXIT_FAIL;
    lk_redis_reply_free(&r);
    if (rc == LA_EXIT_OK)
        printf("password set for user '%s' (%s)\n", user, key);
    explicit_bzero(hash, strlen(hash));
    free(hash);
    free(salt);
    free(key);
    return rc;
}

static int s_set(la_ctx_t *ctx, const char *file, const char *user, const char *password)
{
    if (!file && la_emqx_layout(ctx))
        return s_set_emqx(ctx, user, password);
    char *hash = lk_crypto_pw_hash(password, strlen(password), 0);
    if (!hash) {
        fprintf(stderr, "latchkey: cannot hash the password (no randomness)\n");
        return LA_EXIT_FAIL;
    }
    int rc = LA_EXIT_OK;
    if (file) {
        bool found;
        if (s_file_update(file, user, hash, &found) != 0)
            rc = LA_EXIT_FAIL;
        else
            printf("%s user '%s' in %s (auth reads it again on SIGHUP)\n",
                   found ? "updated" : "added", user, file);
    } else {
        char *key = la_user_key(ctx, user);
        const char *set[] = {"HSET", key, "password", hash};
        const char *del[] = {"HDEL", key, "salt"}; /* a sha256 salt means nothing to $7$ */
        lk_redis_reply_t *r = la_redis_cmd(ctx, 4, set);
        if (!r)
            rc = LA_EXIT_FAIL;
        lk_redis_reply_free(&r);
        if (rc == LA_EXIT_OK && !(r = la_redis_cmd(ctx, 3, del)))
            rc = LA_EXIT_FAIL;
        lk_redis_reply_free(&r);
        if (rc == LA_EXIT_OK)
            printf("password set for user '%s'\n", user);
        free(key);
    }
    free(hash);
    return rc;
}

static int s_delete(la_ctx_t *ctx, const char *file, const char *user)
{
    bool found = false;
    if (file) {
        if (s_file_update(file, user, NULL, &found) != 0)
            return LA_EXIT_FAIL;
    } else {
        char *key = la_user_key(ctx, user), *acl = la_acl_key(ctx, user);
        const char *del[] = {"DEL", key, acl};
        lk_redis_reply_t *r = la_redis_cmd(ctx, 3, del);
        free(key);
        free(acl);
        if (!r)
            return LA_EXIT_FAIL;
        found = r->type == LK_REDIS_INT && r->integer > 0;
        lk_redis_reply_free(&r);
    }
    if (found)
        printf("deleted user '%s'%s%s\n", user, file ? " from " : "", file ? file : "");
    else
        fprintf(stderr, "latchkey: no user '%s'%s%s; revoking anyway\n", user, file ? " in " : "",
                file ? file : "");
    /* the store no longer knows the user; now end the sessions that still run */
    char *users[] = {(char *)user};
    if (la_revoke(ctx, users, 1, S_REVOKE_WAIT_MS) == 0)
        printf("auth confirmed: clients of '%s' are being disconnected\n", user);
    return LA_EXIT_OK;
}

int la_cmd_passwd(la_ctx_t *ctx, int argc, char **argv)
{
    const char *file = NULL;
    bool del = false;
    int c;
    optind = 0; /* GNU getopt: start afresh on the subcommand's arguments */
    while ((c = getopt(argc, argv, "+df:h")) != -1) {
        switch (c) {
        case 'd':
            del = true;
            break;
        case 'f':
            file = optarg;
            break;
        default:
            return la_usage(argv[0]);
        }
    }
    int rest = argc - optind;
    if (rest < 1 || rest > (del ? 1 : 2))
        return la_usage(argv[0]);
    const char *user = argv[optind];
    if (!la_username_ok(user, file != NULL))
        return LA_EXIT_USAGE;
    if (del)
        return s_delete(ctx, file, user);
    char *password = rest == 2 ? lk_strdup(argv[optind + 1]) : la_read_password();
    if (!password)
        return LA_EXIT_FAIL;
    if (!*password) {
        fprintf(stderr, "latchkey: empty password refused\n");
        free(password);
        return LA_EXIT_USAGE;
    }
    int rc = s_set(ctx, file, user, password);
    explicit_bzero(password, strlen(password));
    free(password);
    return rc;
}
