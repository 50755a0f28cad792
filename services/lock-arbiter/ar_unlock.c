/*  ar_unlock: the lock state history and the quorum unlock, each one Redis Lua script so
    that a decision is atomic — two confirmations racing through two frontends meet in
    Redis, and exactly one of them sees the quorum complete.

    A round (lk:{arb}:round:<lock>: start, deadline, c:<role> = "user<TAB>ms") opens with the
    first confirmation and lasts the window (lk:{arb}:lockcfg:<lock> window_ms, else lock_window).
    The confirmation that completes the quorum closes it as `granted`: the script deletes
    the round, records the decision in lk:{arb}:unpub and its history event in lk:{arb}:outbox.
    The arbiter then publishes `unlock` to /<lock>/call (QoS 1) and deletes the unpub entry
    once the router acked it; at every start the entries left are published again, so a
    crash between decision and publish still unlocks (a crash after the router's ack and
    before the delete would unlock twice: that window is one Redis round trip).

    Message redelivery (QoS 1, after a crash) and the other replicas' copies never decide
    twice: each applied confirmation or state message leaves lk:{arb}:seen:<lock>:<message
    id> for a day, set in the applying script, and a second sight is ignored. A round past
    its deadline becomes an `expired` decision (cron, or the next confirmation, whichever
    first). A confirmation from a user not bound to the lock in that role
    (lk:{arb}:bind:<lock>: user → roles) — or one filling a second role of the same round —
    is `refused`. */
#include "ar_internal.h"
#include <cjson/cJSON.h>

#define S_EXPIRE_GRACE_MS 1000
#define S_EXPIRE_BATCH 1000

/* What every script shares: the keys lk:{arb}:<what>:<id> (arb_key); a message's seen
   mark (first_sight: true the first time; lk:{arb}:seen:<lock>:<message id>, kept a day);
   event() writes an outbox value (kind, lock, actor, time ms, details (JSON), separated by
   \x1f) and keeps it in `out`, which reply() appends to the script's answer. */
#define S_LUA_EVENT                                                                                \
    "local function arb_key(what, id) return 'lk:{arb}:' .. what .. ':' .. id end\n"               \
    "local function first_sight(lock, id)\n"                                                       \
    "  return redis.call('SET', arb_key('seen', lock) .. ':' .. id, '1', 'NX', 'EX', "            \
    AR_STR(AR_SEEN_TTL_S) ")\n"                                                                      \
    "end\n"                                                                                        \
    "local out = {}\n"                                                                             \
    "local function reply(r)\n"                                                                    \
    "  for _, x in ipairs(out) do table.insert(r, x) end\n"                                        \
    "  return r\n"                                                                                 \
    "end\n"                                                                                        \
    "local function event(kind, lock, actor, now, details)\n"                                      \
    "  local id = ARGV[1] .. '-' .. redis.call('INCR', 'lk:{arb}:evseq')\n"                        \
    "  local v = kind .. '\\31' .. lock .. '\\31' .. actor .. '\\31' .. now .. '\\31' ..\n"        \
    "            cjson.encode(details)\n"                                                          \
    "  redis.call('HSET', 'lk:{arb}:outbox', id, v)\n"                                             \
    "  table.insert(out, id); table.insert(out, v)\n"                                              \
    "  return id\n"                                                                                \
    "end\n"                                                                                        \
    "local function confirmations(key)\n"                                                          \
    "  local list = {}\n"                                                                          \
    "  local h = redis.call('HGETALL', key)\n"                                                     \
    "  for i = 1, #h, 2 do\n"                                                                      \
    "    if string.sub(h[i], 1, 2) == 'c:' then\n"                                                 \
    "      local tab = string.find(h[i + 1], '\\t', 1, true)\n"                                    \
    "      table.insert(list, {role = string.sub(h[i], 3),\n"                                      \
    "                          user = string.sub(h[i + 1], 1, tab - 1),\n"                         \
    "                          time = tonumber(string.sub(h[i + 1], tab + 1))})\n"                 \
    "    end\n"                                                                                    \
    "  end\n"                                                                                      \
    "  table.sort(list, function(a, b) return a.time < b.time end)\n"                              \
    "  return list\n"                                                                              \
    "end\n"                                                                                        \
    "local function expire(lock, key, now)\n"                                                      \
    "  local start = tonumber(redis.call('HGET', key, 'start'))\n"                                 \
    "  local dl = tonumber(redis.call('HGET', key, 'deadline'))\n"                                 \
    "  local c = confirmations(key)\n"                                                             \
    "  redis.call('DEL', key)\n"                                                                   \
    "  redis.call('ZREM', 'lk:{arb}:rounds', lock)\n"                                              \
    "  if #c == 0 then return end\n"                                                               \
    "  event('unlock_decision', lock, '', now, {decision = 'expired', started = start,\n"          \
    "        deadline = dl, confirmations = c})\n"                                                 \
    "end\n"

/* KEYS: lk:{arb}:rounds (s_eval; every key carries the {arb} tag).
   ARGV: node, lock, role, username (MQTT), now ms, default window ms, default quorum,
   message id (ar_msg_id: the same in every replica's session). Returns {status, decision
   id, reason, outbox id, value, ...}. */
static const char s_confirm_lua[] = S_LUA_EVENT
    "local lock, role, login, now = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])\n"
    "if not first_sight(lock, ARGV[8]) then return {'duplicate', '', ''} end\n"
    "local key = arb_key('round', lock)\n"
    "local cfg = arb_key('lockcfg', lock)\n"
    "local window = tonumber(redis.call('HGET', cfg, 'window_ms')) or tonumber(ARGV[6])\n"
    "local quorum = tonumber(redis.call('HGET', cfg, 'quorum')) or tonumber(ARGV[7])\n"
    "local dl = tonumber(redis.call('HGET', key, 'deadline'))\n"
    "if dl and dl < now then expire(lock, key, now); dl = nil end\n"
    "local user = login\n"
    "if login ~= '' then user = redis.call('GET', arb_key('login', login)) or login end\n"
    "local reason = nil\n"
    "if user == '' then reason = 'anonymous'\n"
    "else\n"
    "  local roles = redis.call('HGET', arb_key('bind', lock), user)\n"
    "  if not roles or not string.find(' ' .. roles .. ' ', ' ' .. role .. ' ', 1, true) then\n"
    "    reason = 'not bound in this role'\n"
    "  else\n"
    "    for _, c in ipairs(confirmations(key)) do\n"
    "      if c.user == user and c.role ~= role then reason = 'already confirmed as ' .. c.role "
    "end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if reason then\n"
    "  local id = event('unlock_decision', lock, user, now, {decision = 'refused', role = role,\n"
    "                   user = user, login = login, reason = reason})\n"
    "  return reply({'refused', id, reason})\n"
    "end\n"
    "if not dl then\n"
    "  dl = now + window\n"
    "  redis.call('HSET', key, 'start', now, 'deadline', dl)\n"
    "  redis.call('ZADD', 'lk:{arb}:rounds', dl, lock)\n"
    "end\n"
    "redis.call('HSET', key, 'c:' .. role, user .. '\\t' .. now)\n"
    "redis.call('PEXPIRE', key, dl - now + 600000)\n"
    "local c = confirmations(key)\n"
    "local status, id = 'pending', ''\n"
    "if #c >= quorum then\n"
    "  local start = tonumber(redis.call('HGET', key, 'start'))\n"
    "  id = event('unlock_decision', lock, user, now, {decision = 'granted', started = start,\n"
    "             confirmations = c})\n"
    "  redis.call('HSET', 'lk:{arb}:unpub', id, lock)\n"
    "  redis.call('DEL', key)\n"
    "  redis.call('ZREM', 'lk:{arb}:rounds', lock)\n"
    "  status = 'granted'\n"
    "end\n"
    "return reply({status, id, ''})\n";

/* ARGV: node, now ms, lock... (due rounds of locks this replica owns). Expires those past
   their deadline. Returns {count, outbox id, value, ...}. */
static const char s_expire_lua[] = S_LUA_EVENT
    "local now = tonumber(ARGV[2])\n"
    "local n = 0\n"
    "for k = 3, #ARGV do\n"
    "  local lock = ARGV[k]\n"
    "  local key = arb_key('round', lock)\n"
    "  local dl = tonumber(redis.call('HGET', key, 'deadline'))\n"
    "  if not dl then redis.call('ZREM', 'lk:{arb}:rounds', lock)\n"
    "  elseif dl < now then expire(lock, key, now); n = n + 1\n"
    "  else redis.call('ZADD', 'lk:{arb}:rounds', dl, lock) end\n"
    "end\n"
    "return reply({tostring(n)})\n";

/* ARGV: node, lock, state, now ms, message id, actor. The seed's monitor: a state that
   differs from the last one is history; a message seen before (redelivery, another
   replica's copy) changes nothing. Returns {change or '', outbox id, value}. */
static const char s_statu_lua[] = S_LUA_EVENT
    "local lock, state, now = ARGV[2], ARGV[3], tonumber(ARGV[4])\n"
    "if not first_sight(lock, ARGV[5]) then return {''} end\n"
    "local prev = redis.call('HGET', 'lk:{arb}:lockstate', lock)\n"
    "if prev == state then return {''} end\n"
    "redis.call('HSET', 'lk:{arb}:lockstate', lock, state)\n"
    "local change\n"
    "if prev == '-2' then change = 'online'\n"
    "elseif state == '-2' then change = 'offline'\n"
    "elseif state == '1' then change = 'locked'\n"
    "else change = 'unlocked' end\n"
    "event('lock_state', lock, ARGV[6], now, {state = state, previous = prev or cjson.null,\n"
    "      change = change})\n"
    "return reply({change})\n";

/* EVAL declaring one key of the arbiter's slot (every key a script touches carries the
   {arb} hash tag, so a Redis Cluster runs it on that slot's master); NULL (after a log
   line) when Redis failed or the script erred */
static lk_redis_reply_t *s_eval(self_t *self, const char *script, int argc, const char **args)
{
    const char **argv = lk_calloc((size_t)argc + 4, sizeof(char *));
    size_t *lens = lk_calloc((size_t)argc + 4, sizeof(size_t));
    argv[0] = "EVAL";
    argv[1] = script;
    argv[2] = "1";
    argv[3] = "lk:{arb}:rounds";
    int n = 4;
    for (int i = 0; i < argc; i++)
        argv[n++] = args[i];
    for (int i = 0; i < n; i++)
        lens[i] = strlen(argv[i]);
    lk_redis_reply_t *r = lk_redis_cmdv(self->redis, n, argv, lens);
    free(argv);
    free(lens);
    if (!r || r->type != LK_REDIS_ARRAY || r->count < 1) {
        /* the cron asks every 250 ms: one line per 5 s while Redis is away */
        int64_t now = lk_mono_ms();
        if (r || now - self->redis_warned_ms >= 5000) {
            self->redis_warned_ms = now;
            lk_error("redis script failed: %s", r && r->str ? r->str : "no reply");
        }
        lk_redis_reply_free(&r);
        return NULL;
    }
    return r;
}

/* --- /<lock>/statu ---------------------------------------------------------------- */

void ar_unlock_statu(self_t *self, const char *lock, const Lk__Msg *msg, const char *id)
{
    char state[8];
    size_t n = msg->payload.len;
    if (n == 0 || n >= sizeof(state)) {
        lk_info("lock %s: state payload of %zu bytes ignored", lock, n);
        ar_seen_set(self, lock, id); /* the other replicas parked it */
        return;
    }
    memcpy(state, msg->payload.data, n);
    state[n] = 0;
    if (strcmp(state, "-2") != 0 && strcmp(state, "0") != 0 && strcmp(state, "1") != 0) {
        lk_info("lock %s: unknown state '%s' ignored (want -2, 0 or 1)", lock, state);
        ar_seen_set(self, lock, id);
        return;
    }
    char now[24];
    snprintf(now, sizeof(now), "%" PRId64, lk_wall_ms());
    const char *actor = msg->origin_client ? msg->origin_client : "";
    const char *args[] = {self->node, lock, state, now, id, actor};
    lk_redis_reply_t *r = s_eval(self, s_statu_lua, 6, args);
    if (!r) {
        ar_server_fail(self, "state change not recorded");
        return;
    }
    if (r->items[0].len) {
        self->states++;
        lk_info("lock %s: %s (%s)", lock, r->items[0].str, state);
        ar_history_send_entries(self, r, 1);
    }
    lk_redis_reply_free(&r);
}

/* --- /<lock>/<role> --------------------------------------------------------------- */

/* the MQTT 5 user property decision-id = id, in wire form (0x26, two UTF-8 strings) */
static size_t s_decision_prop(uint8_t *out, size_t cap, const char *id)
{
    static const char name[] = "decision-id";
    size_t nl = sizeof(name) - 1, il = strlen(id);
    if (1 + 2 + nl + 2 + il > cap)
        return 0;
    size_t n = 0;
    out[n++] = 0x26;
    out[n++] = (uint8_t)(nl >> 8);
    out[n++] = (uint8_t)nl;
    memcpy(out + n, name, nl);
    n += nl;
    out[n++] = (uint8_t)(il >> 8);
    out[n++] = (uint8_t)il;
    memcpy(out + n, id, il);
    return n + il;
}

/* The unlock of a granted decision: payload "unlock" as ever, the decision id in an MQTT 5
   user property (MQTT 3.1.1 devices see the payload only) and as the message identity
   (Lk__Msg.once_id) by which a frontend hands a connection one copy however often the
   decision is published: after an arbiter restart (lk:{arb}:unpub still holds it) or a
   router restart (the bus re-sends the unacked publish). */
static void s_publish_unlock(self_t *self, const char *id, const char *lock)
{
    if (zhashx_lookup(self->in_flight, id))
        return;
    char topic[300];
    snprintf(topic, sizeof(topic), "/%s/call", lock);
    uint8_t props[256];
    size_t np = s_decision_prop(props, sizeof(props), id);
    uint64_t seq =
        lk_iclient_publish_once(self->ic, topic, "unlock", 6, 1, np ? props : NULL, np, id);
    zhashx_insert(self->in_flight, id, (void *)1);
    ar_wait_add(ar_wait_for(&self->pub_waits, seq), id);
}

/* The outcome for the confirming app, on /<lock>/<role>/result (QoS 1, readable by the
   lock's bound users and device, whatever the MQTT version): {"lock", "role", "user",
   "decision": pending|granted|refused|expired, "decision_id", "reason"} */
static void s_result(self_t *self, const char *lock, const char *role, const char *user,
                     const char *decision, const char *id, const char *reason)
{
    char topic[300];
    snprintf(topic, sizeof(topic), "/%s/%s/result", lock, role);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "lock", lock);
    cJSON_AddStringToObject(o, "role", role);
    if (user)
        cJSON_AddStringToObject(o, "user", user);
    cJSON_AddStringToObject(o, "decision", decision);
    if (id && *id)
        cJSON_AddStringToObject(o, "decision_id", id);
    if (reason && *reason)
        cJSON_AddStringToObject(o, "reason", reason);
    char *text = cJSON_PrintUnformatted(o);
    lk_iclient_publish(self->ic, topic, text, strlen(text), 1, false, NULL, 0);
    free(text);
    cJSON_Delete(o);
}

/* an `expired` decision among outbox entries (id, value pairs from item from): every role
   that confirmed in that round hears it */
static void s_expired_results(self_t *self, const lk_redis_reply_t *r, size_t from)
{
    for (size_t i = from; i + 1 < r->count; i += 2) {
        const char *v = r->items[i + 1].str;
        if (!v || !strstr(v, "\"expired\""))
            continue;
        char *copy = lk_strdup(v), *f[5];
        if (ar_outbox_split(copy, f) != 0 || strlen(f[1]) >= 256) {
            free(copy);
            continue;
        }
        const char *lock = f[1];
        cJSON *d = cJSON_Parse(f[4]);
        const cJSON *cs = cJSON_GetObjectItemCaseSensitive(d, "confirmations"), *c;
        cJSON_ArrayForEach(c, cs)
        {
            const cJSON *role = cJSON_GetObjectItemCaseSensitive(c, "role");
            const cJSON *user = cJSON_GetObjectItemCaseSensitive(c, "user");
            if (cJSON_IsString(role))
                s_result(self, lock, role->valuestring,
                         cJSON_IsString(user) ? user->valuestring : NULL, "expired", NULL,
                         "the window passed without the quorum");
        }
        cJSON_Delete(d);
        free(copy);
    }
}

/* "a<TAB>b" strings of a hash reply's pairs (caller frees the array and strings) */
static char **s_pairs(const lk_redis_reply_t *r, size_t *n)
{
    *n = 0;
    if (!r || r->type != LK_REDIS_ARRAY || !r->count)
        return NULL;
    char **out = lk_calloc(r->count / 2 + 1, sizeof(char *));
    for (size_t i = 0; i + 1 < r->count; i += 2) {
        size_t len = r->items[i].len + r->items[i + 1].len + 2;
        out[*n] = lk_malloc(len);
        snprintf(out[(*n)++], len, "%s\t%s", r->items[i].str, r->items[i + 1].str);
    }
    return out;
}

/* With a message log: records what the decision on this confirmation depends on (the
   login mapping, the lock's bindings, settings and open round) as a LockSnapshot envelope
   from peer "snapshot", so that a replay can rebuild it (latchkey log replay -D) */
static void s_snapshot(self_t *self, const char *lock, const char *login)
{
    if (!lk_bus_msglog_on(self->bus))
        return;
    lk_redis_reply_t *b = lk_redis_cmd(self->redis, "HGETALL lk:{arb}:bind:%s", lock);
    lk_redis_reply_t *c =
        lk_redis_cmd(self->redis, "HMGET lk:{arb}:lockcfg:%s window_ms quorum", lock);
    lk_redis_reply_t *r = lk_redis_cmd(self->redis, "HGETALL lk:{arb}:round:%s", lock);
    lk_redis_reply_t *u = *login ? lk_redis_cmd(self->redis, "GET lk:{arb}:login:%s", login) : NULL;
    Lk__LockSnapshot snap = LK__LOCK_SNAPSHOT__INIT;
    snap.lock = (char *)lock;
    snap.login = (char *)login;
    snap.user = u && u->type == LK_REDIS_STR ? u->str : "";
    snap.bindings = s_pairs(b, &snap.n_bindings);
    snap.round = s_pairs(r, &snap.n_round);
    bool cfg = c && c->type == LK_REDIS_ARRAY && c->count == 2;
    snap.window_ms = cfg && c->items[0].type == LK_REDIS_STR ? c->items[0].str : "";
    snap.quorum = cfg && c->items[1].type == LK_REDIS_STR ? c->items[1].str : "";
    Lk__Envelope env = LK__ENVELOPE__INIT;
    env.body_case = LK__ENVELOPE__BODY_LOCK_SNAPSHOT;
    env.lock_snapshot = &snap;
    lk_bus_msglog_note(self->bus, "snapshot", &env);
    for (size_t i = 0; i < snap.n_bindings; i++)
        free(snap.bindings[i]);
    for (size_t i = 0; i < snap.n_round; i++)
        free(snap.round[i]);
    free(snap.bindings);
    free(snap.round);
    lk_redis_reply_free(&b);
    lk_redis_reply_free(&c);
    lk_redis_reply_free(&r);
    lk_redis_reply_free(&u);
}

void ar_unlock_confirm(self_t *self, const char *lock, const char *role, const Lk__Msg *msg,
                       const char *id)
{
    if (msg->qos == 0) {
        /* not stored for us: lost if we are away. Refused, never counted, so that an app
           learns at once to confirm at QoS 1 (documented) */
        const char *login = msg->origin_user ? msg->origin_user : "";
        char details[512];
        snprintf(details, sizeof(details),
                 "{\"decision\": \"refused\", \"role\": \"%s\", \"reason\": \"QoS 0 "
                 "confirmation (confirm at QoS 1)\"}",
                 role);
        char *user = ar_real_user(self, login);
        ar_history_event(self, "unlock_decision", lock, user ? user : login, details);
        s_result(self, lock, role, user ? user : login, "refused", NULL,
                 "QoS 0 confirmation (confirm at QoS 1)");
        free(user);
        self->refused++;
        return;
    }
    char now[24], win[24], quorum[16];
    /* the confirmation's time is when the broker accepted it, not when we got to it (a
       restart, a backlog): never later than now */
    int64_t wall = lk_wall_ms();
    if (msg->accepted_at_ms && wall - (int64_t)msg->accepted_at_ms > self->confirm_max_age_ms) {
        /* it waited too long (every arbiter down, a session left from another replica
           count): the people are gone, and past the seen marks it may have counted before.
           Refused once, whichever replica gets there first. */
        if (ar_seen_set(self, lock, id)) {
            const char *login = msg->origin_user ? msg->origin_user : "";
            char reason[96], details[512];
            snprintf(reason, sizeof(reason), "confirmation too old (accepted %" PRId64 " s ago)",
                     (wall - (int64_t)msg->accepted_at_ms) / 1000);
            snprintf(details, sizeof(details),
                     "{\"decision\": \"refused\", \"role\": \"%s\", \"reason\": \"%s\"}", role,
                     reason);
            char *user = ar_real_user(self, login);
            ar_history_event(self, "unlock_decision", lock, user ? user : login, details);
            s_result(self, lock, role, user ? user : login, "refused", NULL, reason);
            lk_notice("lock %s: %s confirmation of %s refused: %s", lock, role,
                      user ? user : login, reason);
            free(user);
            self->refused++;
        }
        return;
    }
    int64_t at = msg->accepted_at_ms && (int64_t)msg->accepted_at_ms < wall
                     ? (int64_t)msg->accepted_at_ms
                     : wall;
    snprintf(now, sizeof(now), "%" PRId64, at);
    snprintf(win, sizeof(win), "%" PRId64, self->window_ms);
    snprintf(quorum, sizeof(quorum), "%d", self->quorum);
    const char *login = msg->origin_user ? msg->origin_user : "";
    s_snapshot(self, lock, login);
    const char *args[] = {self->node, lock, role, login, now, win, quorum, id};
    lk_redis_reply_t *r = s_eval(self, s_confirm_lua, 8, args);
    if (!r || r->count < 3) {
        lk_redis_reply_free(&r);
        ar_server_fail(self, "confirmation not recorded");
        return;
    }
    const char *status = r->items[0].str;
    if (strcmp(status, "duplicate") != 0) {
        char *user = ar_real_user(self, login);
        s_result(self, lock, role, user ? user : login, status, r->items[1].str, r->items[2].str);
        free(user);
    }
    s_expired_results(self, r, 3);
    if (strcmp(status, "granted") == 0) {
        self->granted++;
        lk_info("lock %s: unlock granted (%s by %s)", lock, role, login);
        s_publish_unlock(self, r->items[1].str, lock);
    } else if (strcmp(status, "refused") == 0) {
        self->refused++;
        lk_notice("lock %s: confirmation as %s by '%s' refused: %s", lock, role, login,
                  r->items[2].str);
    } else if (strcmp(status, "duplicate") == 0)
        lk_info("lock %s: confirmation (message %s) seen before, ignored", lock, id);
    else
        lk_debug("lock %s: %s confirmed by %s, waiting for the others", lock, role, login);
    for (size_t i = 3; i + 1 < r->count; i += 2) {
        /* an expired round may come with any status */
        if (strstr(r->items[i + 1].str, "\"expired\""))
            self->expired++;
    }
    ar_history_send_entries(self, r, 3);
    lk_redis_reply_free(&r);
}

/* --- cron, restart, acks ---------------------------------------------------------- */

void ar_unlock_expire(self_t *self)
{
    /* a round closes S_EXPIRE_GRACE_MS after its deadline, so that a confirmation the
       broker accepted in time but that still travels (or waits in our session) counts */
    char now[24];
    snprintf(now, sizeof(now), "%" PRId64, lk_wall_ms() - S_EXPIRE_GRACE_MS);
    lk_redis_reply_t *due = lk_redis_cmd(
        self->redis, "ZRANGEBYSCORE lk:{arb}:rounds -inf %s LIMIT 0 %d", now, S_EXPIRE_BATCH);
    if (!due || due->type != LK_REDIS_ARRAY || !due->count) {
        lk_redis_reply_free(&due);
        return; /* nothing due, or tried again next tick */
    }
    /* only our locks' rounds: a dead owner's close at its taker, after what it parked */
    const char **args = lk_calloc(due->count + 2, sizeof(char *));
    int n_args = 0;
    args[n_args++] = self->node;
    args[n_args++] = now;
    for (size_t i = 0; i < due->count; i++)
        if (due->items[i].str && ar_replica_mine(self, due->items[i].str))
            args[n_args++] = due->items[i].str;
    lk_redis_reply_t *r = n_args > 2 ? s_eval(self, s_expire_lua, n_args, args) : NULL;
    free(args);
    lk_redis_reply_free(&due);
    if (!r)
        return; /* tried again next tick */
    long n = strtol(r->items[0].str ? r->items[0].str : "0", NULL, 10);
    if (n > 0) {
        self->expired += (uint64_t)n;
        lk_info("%ld unlock round(s) expired", n);
        s_expired_results(self, r, 1);
    }
    ar_history_send_entries(self, r, 1);
    lk_redis_reply_free(&r);
}

void ar_unlock_resume(self_t *self)
{
    lk_redis_reply_t *r = lk_redis_cmd(self->redis, "HGETALL lk:{arb}:unpub");
    if (!r || r->type != LK_REDIS_ARRAY) {
        lk_redis_reply_free(&r);
        ar_server_fail(self, "cannot read the decisions to publish");
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i + 1 < r->count; i += 2)
        if (!zhashx_lookup(self->in_flight, r->items[i].str) &&
            ar_replica_resumes(self, r->items[i].str, r->items[i + 1].str)) {
            s_publish_unlock(self, r->items[i].str, r->items[i + 1].str);
            n++;
        }
    if (n)
        lk_notice("publishing %zu granted unlock(s) left from before", n);
    lk_redis_reply_free(&r);
}

void ar_unlock_published(self_t *self, uint64_t seq)
{
    ar_wait_t *w = ar_wait_take(&self->pub_waits, seq);
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++) {
        lk_redis_reply_t *r = lk_redis_cmd(self->redis, "HDEL lk:{arb}:unpub %s", w->ids[i]);
        if (lk_redis_reply_failed(r))
            lk_warn("decision %s published but not marked so: it is published again at the "
                    "next start",
                    w->ids[i]);
        else
            zhashx_delete(self->in_flight, w->ids[i]);
        lk_redis_reply_free(&r);
    }
    ar_wait_free(&w);
}
