-- larder blob references (PostgreSQL): the keys of blobs staged in a unit of work and the
-- stored objects they hold (larder_core::blob::Attachments).
--
-- A reference commits and rolls back with the business rows. Taking a reference upserts
-- the object's row, whose row lock is held until commit; the sweep claims (claimed = 1)
-- only a row with no reference, and a claimed row is never referenced again, so an object
-- is never deleted while a committed or committing reference holds it.
CREATE TABLE _larder_blob_objects (
    object TEXT COLLATE "C" PRIMARY KEY,
    refs BIGINT NOT NULL DEFAULT 0 CHECK (refs >= 0),
    claimed SMALLINT NOT NULL DEFAULT 0 CHECK (claimed IN (0, 1)),
    created_at BIGINT NOT NULL
);

CREATE INDEX _larder_blob_objects_unreferenced_idx ON _larder_blob_objects (object)
    WHERE refs = 0;

CREATE TABLE _larder_blob_refs (
    key TEXT COLLATE "C" PRIMARY KEY,
    object TEXT COLLATE "C" NOT NULL,
    size BIGINT NOT NULL CHECK (size >= 0),
    sha256 TEXT NOT NULL,
    content_type TEXT,
    metadata TEXT,
    created_at BIGINT NOT NULL
);
