DROP TABLE inbox_relay;
