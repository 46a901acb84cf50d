-- larder event store (PostgreSQL): the global log, stream versions, snapshots and
-- consumer (projection) checkpoints.
--
-- No gaps, no skips: every event records the id of the transaction that appended it
-- (`tx`, from pg_current_xact_id()). Readers only read events whose transaction is older
-- than the oldest transaction still running (pg_snapshot_xmin of their snapshot), in
-- (tx, position) order, so an event that commits late with an earlier position can never
-- be skipped, and appenders are never serialized.
--
-- Payloads are `json`, not `jsonb`: validated, and returned byte for byte as appended
-- (key order, whitespace), as on SQLite and in memory.

-- `last_tx`: the transaction id of the stream's last appender. Transaction ids are handed
-- out at a transaction's first write, not at commit, so an older transaction could append
-- after a younger one and its events would sort first in (tx, position) order; an append
-- therefore requires last_tx <= its own id (otherwise it fails as retryable), which keeps
-- every stream in version order in the global log.
CREATE TABLE larder_streams (
    stream_id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL CHECK (version >= 0),
    last_tx BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE larder_events (
    position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    stream_id TEXT COLLATE "C" NOT NULL,
    stream_version BIGINT NOT NULL CHECK (stream_version >= 1),
    event_id UUID NOT NULL,
    event_type TEXT COLLATE "C" NOT NULL,
    schema_version INTEGER NOT NULL,
    payload JSON NOT NULL,
    metadata JSON,
    recorded_at BIGINT NOT NULL,
    CONSTRAINT larder_events_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT larder_events_event_id_key UNIQUE (event_id)
);

CREATE INDEX larder_events_log_idx ON larder_events (tx, position);

CREATE TABLE larder_snapshots (
    stream_id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    stream_version BIGINT NOT NULL,
    schema_version INTEGER NOT NULL,
    state JSON NOT NULL,
    taken_at BIGINT NOT NULL
);

CREATE TABLE larder_checkpoints (
    name TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    tx BIGINT NOT NULL,
    position BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
