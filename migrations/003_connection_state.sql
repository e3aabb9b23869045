-- EXC-04: connection status per exchange. The connection-state projection folds the control
-- stream's lifecycle events into this table (heartbeats throttled).

CREATE TABLE exchange_connections (
    exchange_id      text PRIMARY KEY REFERENCES exchanges (id),
    connection_state text NOT NULL DEFAULT 'disconnected'
                     CHECK (connection_state IN ('disconnected', 'connecting', 'connected', 'stale')),
    connected_at     timestamptz,
    last_heartbeat   timestamptz,
    last_error       text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

INSERT INTO exchange_connections (exchange_id)
SELECT id FROM exchanges
ON CONFLICT (exchange_id) DO NOTHING;
