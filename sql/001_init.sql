-- 001_init: the first Latchkey schema. Applied by history-writer at start (lk_pg_migrate:
-- one transaction, recorded in schema_migrations). Forward-only: never edit an applied
-- migration, add 002_... instead. No transaction control statements in migrations.

-- People who use locks, and the locks (devices).
CREATE TABLE users (
    name text PRIMARY KEY,
    created timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE locks (
    lockno text PRIMARY KEY,
    model text,
    created timestamptz NOT NULL DEFAULT now()
);

-- Who may do what with which lock: the lock-arbiter reads these (a role names the topic
-- a member confirms an unlock on, /<lock>/<role>: "m", "f", ...).
CREATE TABLE bindings (
    user_name text NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    lockno text NOT NULL REFERENCES locks (lockno) ON DELETE CASCADE,
    role text NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_name, lockno, role)
);
CREATE INDEX bindings_lockno ON bindings (lockno);

-- Every history event (lk.HistoryEvent), written by history-writer. id is the producer's
-- unique event id: re-sending an event never adds a row (INSERT ... ON CONFLICT DO NOTHING).
-- seq is the order rows arrived in (gaps are normal). lockno is not a foreign key: events
-- about a lock not (yet) registered are kept.
CREATE TABLE events (
    id text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    kind text NOT NULL,
    lockno text,
    actor text,
    time timestamptz NOT NULL,
    details jsonb NOT NULL DEFAULT '{}'::jsonb,
    written timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_lockno_time ON events (lockno, time) WHERE lockno IS NOT NULL;
CREATE INDEX events_kind_time ON events (kind, time);
CREATE INDEX events_seq ON events (seq);

-- The lock history of seed 004 (state changes and decisions of every lock): a view, so
-- one INSERT of history-writer is one transaction however an event is classified.
CREATE VIEW lock_history AS
    SELECT id, seq, lockno, kind AS event, details ->> 'state' AS state, actor, time, details
    FROM events
    WHERE lockno IS NOT NULL;

-- Two-party unlock decisions: kind 'unlock_decision', details {"decision": "unlock" |
-- "timeout" | "denied" | ..., ...} as the lock-arbiter writes them.
CREATE VIEW unlock_decisions AS
    SELECT id, seq, lockno, details ->> 'decision' AS decision, actor, time, details
    FROM events
    WHERE kind = 'unlock_decision';
