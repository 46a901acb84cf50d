-- larder outbox (PostgreSQL): messages written in the business transaction, partition
-- leases of the relays, and the consumers' inbox.
--
-- Order without skips: every message records the id of the transaction that enqueued it
-- (`tx`, as larder_events does). The relay reads only messages whose transaction is older
-- than the oldest transaction still running (pg_snapshot_xmin of its snapshot), in
-- (tx, position) order, so a message that commits late with an earlier position is never
-- skipped and never overtaken within its key.
--
-- state: 0 pending, 1 delivered, 2 dead (parks its key's later messages), 3 skipped.
CREATE TABLE _larder_outbox (
    position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    id UUID NOT NULL,
    topic TEXT COLLATE "C" NOT NULL,
    key TEXT COLLATE "C",
    partition INTEGER NOT NULL CHECK (partition >= 0),
    payload BYTEA NOT NULL,
    headers TEXT,
    state SMALLINT NOT NULL DEFAULT 0 CHECK (state BETWEEN 0 AND 3),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    enqueued_at BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    done_at BIGINT,
    CONSTRAINT _larder_outbox_id_key UNIQUE (id)
);

-- The relay's scan: pending messages in log order.
CREATE INDEX _larder_outbox_pending_idx ON _larder_outbox (tx, position) WHERE state = 0;
-- Messages that hold their key back: dead letters and messages backing off.
CREATE INDEX _larder_outbox_blocking_idx ON _larder_outbox (key, tx, position)
    WHERE state = 2 OR (state = 0 AND attempts > 0);
-- Retention.
CREATE INDEX _larder_outbox_done_idx ON _larder_outbox (done_at) WHERE state IN (1, 3);

-- One row per partition (a key's messages all hash to one partition); a relay holds a
-- partition while its lease runs.
CREATE TABLE _larder_outbox_partitions (
    partition INTEGER NOT NULL PRIMARY KEY,
    owner TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0
);
INSERT INTO _larder_outbox_partitions (partition) SELECT generate_series(0, 15);

-- Relays seen recently: they split the partitions evenly.
CREATE TABLE _larder_outbox_relays (
    name TEXT NOT NULL PRIMARY KEY,
    seen_at BIGINT NOT NULL
);

-- Messages a consumer processed (Inbox::process_once).
CREATE TABLE _larder_inbox (
    consumer TEXT COLLATE "C" NOT NULL,
    message_id UUID NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX _larder_inbox_processed_idx ON _larder_inbox (processed_at);
