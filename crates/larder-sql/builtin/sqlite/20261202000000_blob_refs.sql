-- larder blob references (SQLite): the keys of blobs staged in a unit of work and the
-- stored objects they hold (larder_core::blob::Attachments).
--
-- A reference commits and rolls back with the business rows; SQLite's one writer orders
-- the references taken and the sweep's claims (claimed = 1, only on a row with no
-- reference; a claimed row is never referenced again), so an object is never deleted
-- while a committed reference holds it. Keys compare by bytes (BINARY collation).
CREATE TABLE _larder_blob_objects (
    object TEXT PRIMARY KEY,
    refs INTEGER NOT NULL DEFAULT 0 CHECK (refs >= 0),
    claimed INTEGER NOT NULL DEFAULT 0 CHECK (claimed IN (0, 1)),
    created_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX _larder_blob_objects_unreferenced_idx ON _larder_blob_objects (object)
    WHERE refs = 0;

CREATE TABLE _larder_blob_refs (
    key TEXT PRIMARY KEY,
    object TEXT NOT NULL,
    size INTEGER NOT NULL CHECK (size >= 0),
    sha256 TEXT NOT NULL,
    content_type TEXT,
    metadata TEXT,
    created_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
