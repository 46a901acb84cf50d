-- larder event store (SQLite): the global log, stream versions, snapshots and consumer
-- (projection) checkpoints.
--
-- No gaps, no skips: SQLite has one writer at a time (larder opens write transactions with
-- BEGIN IMMEDIATE), so AUTOINCREMENT positions are allocated in commit order, and
-- AUTOINCREMENT never reuses a committed position.
--
-- No streams table: with one writer, a stream's version is its highest event version
-- (from the (stream_id, stream_version) index), and an append writes one table.

CREATE TABLE larder_events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id TEXT NOT NULL,
    stream_version INTEGER NOT NULL CHECK (stream_version >= 1),
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload TEXT NOT NULL,
    metadata TEXT,
    recorded_at INTEGER NOT NULL,
    UNIQUE (stream_id, stream_version),
    UNIQUE (event_id)
) STRICT;

CREATE TABLE larder_snapshots (
    stream_id TEXT NOT NULL PRIMARY KEY,
    stream_version INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    state TEXT NOT NULL,
    taken_at INTEGER NOT NULL
) STRICT;

CREATE TABLE larder_checkpoints (
    name TEXT NOT NULL PRIMARY KEY,
    tx INTEGER NOT NULL,
    position INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
