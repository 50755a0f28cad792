-- Per-lock settings (issue 13): the unlock window and quorum live with the lock, and the
-- lock's device credential (an MQTT username: password in Redis, or a client
-- certificate's CN) is recorded here, so `latchkey lock sync` rebuilds all of them.
ALTER TABLE locks ADD COLUMN window_ms bigint CHECK (window_ms IS NULL OR window_ms > 0),
                  ADD COLUMN quorum integer CHECK (quorum IS NULL OR quorum BETWEEN 1 AND 8),
                  ADD COLUMN device text UNIQUE;
