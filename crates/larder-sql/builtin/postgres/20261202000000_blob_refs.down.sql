DROP TABLE IF EXISTS _larder_blob_refs;
DROP TABLE IF EXISTS _larder_blob_objects;
