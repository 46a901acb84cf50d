-- larder outbox (SQLite): messages written in the business transaction, the relay's
-- partition lease, and the consumers' inbox.
--
-- Order without skips: SQLite has one writer at a time, so AUTOINCREMENT positions are
-- allocated in commit order (`tx` is always 0; the column keeps the statements the same
-- as PostgreSQL's). One partition: one relay is active at a time, by lease.
--
-- state: 0 pending, 1 delivered, 2 dead (parks its key's later messages), 3 skipped.
CREATE TABLE _larder_outbox (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    tx INTEGER NOT NULL DEFAULT 0,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    key TEXT,
    partition INTEGER NOT NULL CHECK (partition >= 0),
    payload BLOB NOT NULL,
    headers TEXT,
    state INTEGER NOT NULL DEFAULT 0 CHECK (state BETWEEN 0 AND 3),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    enqueued_at INTEGER NOT NULL,
    due_at INTEGER NOT NULL,
    done_at INTEGER
) STRICT;

CREATE INDEX _larder_outbox_pending_idx ON _larder_outbox (tx, position) WHERE state = 0;
CREATE INDEX _larder_outbox_blocking_idx ON _larder_outbox (key, tx, position)
    WHERE state = 2 OR (state = 0 AND attempts > 0);
CREATE INDEX _larder_outbox_done_idx ON _larder_outbox (done_at) WHERE state IN (1, 3);

CREATE TABLE _larder_outbox_partitions (
    partition INTEGER NOT NULL PRIMARY KEY,
    owner TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO _larder_outbox_partitions (partition) VALUES (0);

CREATE TABLE _larder_outbox_relays (
    name TEXT NOT NULL PRIMARY KEY,
    seen_at INTEGER NOT NULL
) STRICT;

CREATE TABLE _larder_inbox (
    consumer TEXT NOT NULL,
    message_id TEXT NOT NULL,
    processed_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
) STRICT;
CREATE INDEX _larder_inbox_processed_idx ON _larder_inbox (processed_at);
