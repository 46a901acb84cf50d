DROP TABLE IF EXISTS _larder_inbox;
DROP TABLE IF EXISTS _larder_outbox_relays;
DROP TABLE IF EXISTS _larder_outbox_partitions;
DROP TABLE IF EXISTS _larder_outbox;
