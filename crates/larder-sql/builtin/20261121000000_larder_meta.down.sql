DROP TABLE IF EXISTS _larder_meta;
