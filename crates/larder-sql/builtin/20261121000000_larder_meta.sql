-- larder's own bookkeeping: which larder schema generation this database carries.
-- Later migrations of the built-in `larder` module add the event store, outbox,
-- projection checkpoints and snapshots.
CREATE TABLE IF NOT EXISTS _larder_meta (
    key TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO _larder_meta (key, value) VALUES ('schema', '1')
    ON CONFLICT (key) DO UPDATE SET value = excluded.value;
