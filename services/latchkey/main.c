/*  latchkey: the operator CLI of Latchkey.

        latchkey [-c config] <command> [arguments]

    The configuration is the daemons' file (-c, default $LATCHKEY_CONF), read for
    redis_host / redis_port / auth_endpoint and whatever later subcommands need. This file
    only parses the global options and dispatches through s_commands[]; each subcommand
    lives in its own la_<name>.c (see la_cli.h). Exit codes: 0 ok, 1 runtime failure,
    2 usage. */
#include "la_cli.h"
#include "lk_common.h"
#include "lk_config.h"
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int s_cmd_help(la_ctx_t *ctx, int argc, char **argv);

/* The subcommands. Add yours here: one line, its function declared in la_cli.h. */
static const la_command_t s_commands[] = {
    {"passwd", la_cmd_passwd,
     "passwd [-f passwordfile] <user> [password]\n"
     "passwd -d [-f passwordfile] <user>",
     "set a user's password (Redis, or a Mosquitto password file with -f); -d deletes the "
     "user and disconnects its clients"},
    {"acl", la_cmd_acl,
     "acl set <user> <filter> <sub|pub|both|none>\n"
     "acl show <user>",
     "edit or list a user's ACL in Redis (mqtt_acl:<user>; %u and %c allowed in filters)"},
    {"user", la_cmd_users,
     "user superuser <user> on|off\n"
     "user show <user>\n"
     "user add|del <name>...\n"
     "user list",
     "make a Redis user a superuser (or not: its clients are disconnected), or show it; "
     "add, delete or list the users that locks are bound to (PostgreSQL)"},
    {"log", la_cmd_log,
     "log dump [-a] [-t body]... <segment>...\n"
     "log replay -e <endpoint> [-b body] [-n peer-name] [-s speed] <segment>...\n"
     "log replay -D -e <test stack's router endpoint> [-l lock] [-s speed] <arbiter segment>...",
     "print message-log segments (msglog_dir) as JSON lines, or send them again to a "
     "service endpoint at the recorded pace times speed (0: at once)"},
    {"revoke", la_cmd_revoke, "revoke <user>...",
     "end these users' access now: temporary logins deleted, own password invalidated, "
     "every client logged in as them disconnected (through the auth service)"},
    {"lock", la_cmd_lock,
     "lock add [--window seconds] [--quorum n] [--model m] [--device name] [--cert]\n"
     "         [--new-credential] <lock>\n"
     "lock del <lock>\n"
     "lock list\n"
     "lock sync",
     "register, remove or list smart locks (add prints the device's credential once); "
     "sync rebuilds the Redis mirror (arbiter, auth) from PostgreSQL in one transaction"},
    {"bind", la_cmd_bind, "bind <user> <lock> <role>",
     "let a user confirm unlocks of a lock in a role (m, f, ...)"},
    {"unbind", la_cmd_unbind, "unbind <user> <lock> [role]", "remove a user's binding(s)"},
    {"login", la_cmd_login,
     "login [--ttl seconds] <user>\n"
     "login list [user]\n"
     "login refresh [--ttl seconds] <temporary username>\n"
     "login end <temporary username>...",
     "temporary MQTT credentials for a user's locks (asked of the lock-arbiter); list the "
     "active ones, extend one, or end some at once"},
    {"history", la_cmd_history, "history [--from ms] [--to ms] [--limit n] <lock>",
     "a lock's history events as JSON (PostgreSQL)"},
    {"keygen", la_cmd_keygen, "keygen <dir> <node>...",
     "CurveZMQ certificates for the tcp:// bus (<node>.key, <node>.key_secret)"},
    {"apikey", la_cmd_apikey, "apikey add [name]\napikey list\napikey rm <key>",
     "API keys of the api process (HTTP Basic key:secret; the secret is shown once)"},
    {"ota", la_cmd_ota,
     "ota keygen <dir>\n"
     "ota add --model M --version V [--key K] <file>\n"
     "ota list [--model M] [--json]\n"
     "ota rm --model M --version V\n"
     "ota device add <id> --model M [--version V] [--token T] [--protocol tb|lk]\n"
     "ota device rm <id>\n"
     "ota devices [--model M] [--version V] [--json]\n"
     "ota rollout create --image M/V (--target 'model=M,version<V' | --devices FILE)\n"
     "      [--groups 1,10,50,100] [--success 95] [--error-threshold 5%|10] [--start TIME]\n"
     "      [--max-concurrent N] [--max-bytes-per-sec B]\n"
     "ota rollout pause|resume|cancel <id>\n"
     "ota rollout status [<id>] [--json]",
     "firmware images (Ed25519-signed), OTA devices and staged rollouts (docs/ota.md)"},
    {"help", s_cmd_help, "help [command]", "list the commands, or show one's usage"},
};

static const la_command_t *s_find(const char *name)
{
    for (size_t i = 0; i < LK_ARRAY_LEN(s_commands); i++)
        if (strcmp(s_commands[i].name, name) == 0)
            return &s_commands[i];
    return NULL;
}

/* prints each line of a usage text after "usage: latchkey " */
static void s_print_usage(FILE *f, const char *usage)
{
    for (const char *p = usage; *p;) {
        size_t n = strcspn(p, "\n");
        fprintf(f, "%s latchkey %.*s\n", p == usage ? "usage:" : "      ", (int)n, p);
        p += n + (p[n] == '\n');
    }
}

int la_usage(const char *name)
{
    const la_command_t *cmd = s_find(name);
    if (cmd)
        s_print_usage(stderr, cmd->usage);
    else
        fprintf(stderr, "usage: latchkey [-c config] <command> [arguments]; latchkey help\n");
    return LA_EXIT_USAGE;
}

static int s_cmd_help(la_ctx_t *ctx, int argc, char **argv)
{
    if (argc == 2) {
        const la_command_t *cmd = s_find(argv[1]);
        if (!cmd) {
            fprintf(stderr, "latchkey: no command '%s'\n", argv[1]);
            return LA_EXIT_USAGE;
        }
        s_print_usage(stdout, cmd->usage);
        printf("  %s\n", cmd->summary);
        return LA_EXIT_OK;
    }
    printf("usage: latchkey [-c config] <command> [arguments]\n"
           "  -c config   the Latchkey configuration file (default: $LATCHKEY_CONF)\n\n"
           "commands:\n");
    for (size_t i = 0; i < LK_ARRAY_LEN(s_commands); i++)
        printf("  %-8s %s\n", s_commands[i].name, s_commands[i].summary);
    printf("\n`latchkey help <command>` shows a command's usage.\n");
    return LA_EXIT_OK;
}

/* A fresh shell has none of the variables latchkey-up exports: take the stack's defaults
   (supervise/latchkey-up) so that `latchkey -c supervise/latchkey.conf ...` reaches the
   stack `make run` started. The root is where the binary lives (<root>/<build>/bin). */
static void s_stack_defaults(void)
{
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0 && !getenv("LATCHKEY_ROOT")) {
        exe[n] = 0;
        for (int i = 0; i < 3; i++) {
            char *slash = strrchr(exe, '/');
            if (slash)
                *slash = 0;
        }
        if (*exe)
            setenv("LATCHKEY_ROOT", exe, 0);
    }
    const char *root = getenv("LATCHKEY_ROOT");
    if (root && !getenv("RUN_DIR")) {
        char run[4200];
        snprintf(run, sizeof(run), "%s/run", root);
        setenv("RUN_DIR", run, 0);
    }
    setenv("REDIS_PORT", "6380", 0);
    setenv("PG_PORT", "5433", 0);
    setenv("MQTT_PORT", "1883", 0);
}

int main(int argc, char **argv)
{
    la_ctx_t ctx = {0};
    ctx.config_path = getenv("LATCHKEY_CONF");
    if (ctx.config_path && !*ctx.config_path)
        ctx.config_path = NULL;
    int c;
    /* '+': stop at the command name; its options are its own */
    while ((c = getopt(argc, argv, "+c:h")) != -1) {
        switch (c) {
        case 'c':
            ctx.config_path = optarg;
            break;
        case 'h':
            return s_cmd_help(&ctx, 1, argv);
        default:
            return la_usage("");
        }
    }
    if (optind >= argc)
        return la_usage("");
    const la_command_t *cmd = s_find(argv[optind]);
    if (!cmd) {
        fprintf(stderr, "latchkey: no command '%s' (latchkey help lists them)\n", argv[optind]);
        return LA_EXIT_USAGE;
    }
    s_stack_defaults();
    lk_log_init("latchkey", NULL);
    lk_log_set_level(LK_LOG_WARNING);
    ctx.config = lk_config_load(ctx.config_path);
    if (!ctx.config)
        return LA_EXIT_FAIL;
    int rc = cmd->fn(&ctx, argc - optind, argv + optind);
    lk_redis_destroy(&ctx.redis);
    lk_config_destroy(&ctx.config);
    return rc;
}
