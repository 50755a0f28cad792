-- 002_ota: ota-distributor's state (see docs/ota.md). Images are stored content-addressed
-- under ota_dir (<sha256[0:2]>/<sha256>); these rows say what they are.

CREATE TABLE ota_images (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model text NOT NULL,
    version text NOT NULL,
    size bigint NOT NULL CHECK (size > 0),
    sha256 text NOT NULL,           -- hex, lower case
    signature text NOT NULL,        -- base64 Ed25519 signature of the 32 raw SHA-256 bytes
    key_id text NOT NULL DEFAULT '',-- hex SHA-256 of the public key, first 16 characters
    created timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model, version)
);
CREATE INDEX ota_images_sha ON ota_images (sha256);

-- A device: its MQTT credential is the access token (Redis mqtt_user:<token>).
-- protocol: 'tb' (ThingsBoard's device OTA, topics mounted under tb/<id>/) or 'lk'.
CREATE TABLE ota_devices (
    id text PRIMARY KEY,
    token text NOT NULL UNIQUE,
    model text NOT NULL,
    version text,                   -- as last reported (or registered)
    protocol text NOT NULL DEFAULT 'tb' CHECK (protocol IN ('tb', 'lk')),
    fw_state text,                  -- last fw_state / state it reported
    reported timestamptz,
    created timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ota_devices_model ON ota_devices (model, version);

-- state: scheduled, running, paused, done, cancelled.
-- groups: cumulative percentages of the fleet ({1,10,50,100}); current_group is the index
-- (0-based) of the last group released. error_pct / error_count: the failure threshold
-- (a share of the devices released so far, or a count). max_bps 0 = no cap.
CREATE TABLE ota_rollouts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    image_id bigint NOT NULL REFERENCES ota_images (id),
    state text NOT NULL DEFAULT 'scheduled',
    groups int[] NOT NULL,
    success_pct numeric NOT NULL,
    error_pct numeric,
    error_count int,
    start_at timestamptz NOT NULL DEFAULT now(),
    max_concurrent int NOT NULL DEFAULT 0,
    max_bps bigint NOT NULL DEFAULT 0,
    current_group int NOT NULL DEFAULT 0,
    reason text NOT NULL DEFAULT '',
    target text NOT NULL DEFAULT '',
    created timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now()
);

-- One device in one rollout. state: waiting (not offered yet), offered (told of the
-- image, holds a download slot), downloading, downloaded (slot freed; installing),
-- updated (reported the new version after its reboot), failed, cancelled.
-- ord: the order devices are offered in; grp: its group's index.
CREATE TABLE ota_rollout_devices (
    rollout_id bigint NOT NULL REFERENCES ota_rollouts (id) ON DELETE CASCADE,
    device_id text NOT NULL REFERENCES ota_devices (id) ON DELETE CASCADE,
    grp int NOT NULL,
    ord int NOT NULL,
    state text NOT NULL DEFAULT 'waiting',
    bytes_offset bigint NOT NULL DEFAULT 0,
    error text NOT NULL DEFAULT '',
    updated timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX ota_rd_device ON ota_rollout_devices (device_id);
CREATE INDEX ota_rd_state ON ota_rollout_devices (rollout_id, state, ord);

-- Every state change is one history event (events, kind ota_device / ota_rollout), made in
-- the same statement as the change: a change that happens once has its event once, whoever
-- (CLI, any ota-distributor replica) made it. Event ids are deterministic:
-- ota:r<rollout>:<device>:<state> (a device reaches a state once per rollout) and
-- ota:r<rollout>:<seq> (seq counts the rollout's changes).
ALTER TABLE ota_rollouts ADD COLUMN seq int NOT NULL DEFAULT 0;
-- failures counted before the last resume do not pause the rollout again
ALTER TABLE ota_rollouts ADD COLUMN fail_base int NOT NULL DEFAULT 0;

CREATE FUNCTION ota_device_set(r bigint, d text, from_states text[], to_state text, err text,
                               off bigint) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    n int;
BEGIN
    UPDATE ota_rollout_devices
       SET state = to_state, error = COALESCE(err, error),
           bytes_offset = GREATEST(bytes_offset, COALESCE(off, 0)), updated = now()
     WHERE rollout_id = r AND device_id = d AND state = ANY (from_states);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        RETURN false;
    END IF;
    INSERT INTO events (id, kind, actor, time, details)
    VALUES ('ota:r' || r || ':' || d || ':' || to_state, 'ota_device', d, now(),
            jsonb_build_object('rollout', r, 'device', d, 'state', to_state,
                               'error', COALESCE(err, '')))
    ON CONFLICT (id) DO NOTHING;
    RETURN true;
END $$;

CREATE FUNCTION ota_rollout_set(r bigint, from_states text[], to_state text, why text,
                                from_group int, to_group int, actor text)
    RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    s int;
    g int;
BEGIN
    UPDATE ota_rollouts
       SET state = to_state, reason = COALESCE(why, reason),
           current_group = COALESCE(to_group, current_group), seq = seq + 1, updated = now(),
           fail_base = CASE WHEN state = 'paused' AND to_state = 'running'
                            THEN (SELECT count(*) FROM ota_rollout_devices
                                   WHERE rollout_id = r AND state = 'failed')
                            ELSE fail_base END
     WHERE id = r AND state = ANY (from_states)
       AND (from_group IS NULL OR current_group = from_group)
    RETURNING seq, current_group INTO s, g;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO events (id, kind, actor, time, details)
    VALUES ('ota:r' || r || ':' || s, 'ota_rollout', actor, now(),
            jsonb_build_object('rollout', r, 'state', to_state, 'group', g,
                               'reason', COALESCE(why, '')))
    ON CONFLICT (id) DO NOTHING;
    RETURN true;
END $$;

-- One step of a rollout (any replica, any time; concurrent calls for one rollout skip):
-- starts it when due, pauses it past the failure threshold, advances its group when the
-- current group reached the success share, ends it when every device is done, and offers
-- the image to the next waiting devices within max_concurrent. Returns the devices just
-- offered.
CREATE FUNCTION ota_rollout_step(r bigint)
    RETURNS TABLE (device_id text, protocol text) LANGUAGE plpgsql AS $$
DECLARE
    ro ota_rollouts%ROWTYPE;
    released int;
    failed int;
    g_total int;
    g_ok int;
    open_n int;
    active int;
    slots int;
    n_groups int;
BEGIN
    SELECT * INTO ro FROM ota_rollouts WHERE id = r FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF ro.state = 'scheduled' AND ro.start_at <= now() THEN
        PERFORM ota_rollout_set(r, '{scheduled}', 'running', '', NULL, NULL, 'ota-distributor');
        ro.state := 'running';
    END IF;
    IF ro.state <> 'running' THEN
        RETURN;
    END IF;
    SELECT count(*), count(*) FILTER (WHERE rd.state = 'failed')
      INTO released, failed
      FROM ota_rollout_devices rd WHERE rd.rollout_id = r AND rd.grp <= ro.current_group;
    failed := failed - ro.fail_base;
    IF failed > 0 AND ((ro.error_count IS NOT NULL AND failed >= ro.error_count)
        OR (ro.error_pct IS NOT NULL AND released > 0
            AND failed * 100.0 >= ro.error_pct * released)) THEN
        PERFORM ota_rollout_set(r, '{running}', 'paused',
            format('failure threshold: %s failed of %s released (threshold %s)', failed,
                   released, COALESCE(ro.error_count::text, ro.error_pct::text || '%')),
            NULL, NULL, 'ota-distributor');
        RETURN;
    END IF;
    n_groups := array_length(ro.groups, 1);
    SELECT count(*), count(*) FILTER (WHERE rd.state = 'updated'),
           count(*) FILTER (WHERE rd.state NOT IN ('updated', 'failed', 'cancelled'))
      INTO g_total, g_ok, open_n
      FROM ota_rollout_devices rd WHERE rd.rollout_id = r AND rd.grp = ro.current_group;
    IF ro.current_group < n_groups - 1
       AND (g_total = 0 OR g_ok * 100.0 >= ro.success_pct * g_total) THEN
        PERFORM ota_rollout_set(r, '{running}', 'running', '', ro.current_group,
                                ro.current_group + 1, 'ota-distributor');
        ro.current_group := ro.current_group + 1;
    ELSIF ro.current_group >= n_groups - 1 AND NOT EXISTS (
            SELECT 1 FROM ota_rollout_devices rd WHERE rd.rollout_id = r
               AND rd.state NOT IN ('updated', 'failed', 'cancelled')) THEN
        PERFORM ota_rollout_set(r, '{running}', 'done', '', NULL, NULL, 'ota-distributor');
        RETURN;
    END IF;
    SELECT count(*) INTO active FROM ota_rollout_devices rd
     WHERE rd.rollout_id = r AND rd.state IN ('offered', 'downloading');
    slots := CASE WHEN ro.max_concurrent > 0 THEN ro.max_concurrent - active ELSE 1000000 END;
    IF slots <= 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH next AS (
        SELECT rd.device_id AS dev FROM ota_rollout_devices rd
         WHERE rd.rollout_id = r AND rd.state = 'waiting' AND rd.grp <= ro.current_group
         ORDER BY rd.ord LIMIT slots)
    SELECT next.dev, d.protocol FROM next JOIN ota_devices d ON d.id = next.dev
     WHERE ota_device_set(r, next.dev, '{waiting}', 'offered', NULL, NULL);
END $$;

-- what a device is being offered now (its one open rollout)
CREATE VIEW ota_offers AS
    SELECT rd.device_id, rd.rollout_id, rd.state, rd.bytes_offset, i.model, i.version,
           i.size, i.sha256, i.signature, i.key_id, d.protocol, d.token
      FROM ota_rollout_devices rd
      JOIN ota_rollouts ro ON ro.id = rd.rollout_id
      JOIN ota_images i ON i.id = ro.image_id
      JOIN ota_devices d ON d.id = rd.device_id
     WHERE rd.state IN ('offered', 'downloading', 'downloaded')
       AND ro.state IN ('running', 'paused');

CREATE VIEW ota_events AS
    SELECT id, seq, kind, (details ->> 'rollout')::bigint AS rollout, details ->> 'device' AS device,
           details ->> 'state' AS state, details ->> 'reason' AS reason, time, details
      FROM events
     WHERE kind IN ('ota_device', 'ota_rollout');

-- A device's report (ThingsBoard telemetry current_fw_version / fw_state / fw_error, or a
-- Latchkey status): records it and moves the device in its open rollout. Success is the
-- target version reported (after the reboot), never "download finished". Returns the
-- device's rollout state after the report ('' when in no open rollout, NULL when the device
-- is unknown).
CREATE FUNCTION ota_device_report(d text, ver text, st text, err text)
    RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r bigint;
    cur text;
    target text;
BEGIN
    st := upper(nullif(st, ''));
    ver := nullif(ver, '');
    UPDATE ota_devices SET version = coalesce(ver, version), fw_state = coalesce(st, fw_state),
           reported = now() WHERE id = d;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT rd.rollout_id, rd.state, i.version INTO r, cur, target
      FROM ota_rollout_devices rd JOIN ota_rollouts ro ON ro.id = rd.rollout_id
      JOIN ota_images i ON i.id = ro.image_id
     WHERE rd.device_id = d AND rd.state IN ('offered', 'downloading', 'downloaded')
       AND ro.state IN ('running', 'paused')
     ORDER BY rd.rollout_id DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN '';
    END IF;
    IF ver IS NOT NULL AND ver = target THEN
        PERFORM ota_device_set(r, d, '{offered,downloading,downloaded}', 'updated', '', NULL);
    ELSIF st = 'FAILED' THEN
        PERFORM ota_device_set(r, d, '{offered,downloading,downloaded}', 'failed',
                               coalesce(nullif(err, ''), 'the device reported FAILED'), NULL);
    ELSIF ver IS NOT NULL AND (st = 'UPDATED' OR (cur = 'downloaded' AND st IS NULL)) THEN
        PERFORM ota_device_set(r, d, '{offered,downloading,downloaded}', 'failed',
                               format('runs %s after the update to %s', ver, target), NULL);
    ELSIF st IN ('DOWNLOADED', 'VERIFIED', 'UPDATING') THEN
        PERFORM ota_device_set(r, d, '{offered,downloading}', 'downloaded', NULL, NULL);
    ELSIF st = 'DOWNLOADING' THEN
        PERFORM ota_device_set(r, d, '{offered}', 'downloading', NULL, NULL);
    END IF;
    SELECT state INTO cur FROM ota_rollout_devices WHERE rollout_id = r AND device_id = d;
    RETURN cur;
END $$;
