-- EXC-04, continued: what the connection-state projection (control/connection_state.py) needs beyond 003.
--
-- * exchange_connections gets the time the current state began (state_since: "connected for 5 min") and
--   the time of last_error. All times are the lifecycle events' own times (at_ns), never the writer's clock,
--   so rebuilding the table from the control stream gives the same rows.
-- * exchange_connection_links: the live connections of each exchange (Binance shards its streams over
--   several). A connection's row goes when it disconnects, so the table holds only what is open or opening.
--   An exchange is 'connected' while any of its connections is.
-- * projection_positions: the last stream entry a projection folded, written in the same transaction as
--   the projection's rows; entries at or before it are skipped on redelivery.

ALTER TABLE exchange_connections
    ADD COLUMN state_since   timestamptz,
    ADD COLUMN last_error_at timestamptz;

CREATE TABLE exchange_connection_links (
    exchange_id text NOT NULL REFERENCES exchanges (id),
    connection  text NOT NULL,
    state       text NOT NULL CHECK (state IN ('connecting', 'connected', 'stale')),
    since       timestamptz NOT NULL,
    url         text NOT NULL DEFAULT '',
    PRIMARY KEY (exchange_id, connection)
);

CREATE TABLE projection_positions (
    projection text PRIMARY KEY,
    stream     text NOT NULL,
    last_id    text NOT NULL CHECK (last_id ~ '^[0-9]+-[0-9]+$')
);
