DROP TABLE IF EXISTS larder_checkpoints;
DROP TABLE IF EXISTS larder_snapshots;
DROP TABLE IF EXISTS larder_events;
