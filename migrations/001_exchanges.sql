-- EXC-01: exchange metadata. One row per exchange tickfold can connect to.
-- URLs and limits: ../shared/PROTOCOLS.md (Coinbase Advanced Trade and Binance Spot public docs).
-- Fees are the public base-tier spot fees (fractions): Coinbase Advanced Trade 0.60 % maker /
-- 1.20 % taker at the lowest volume tier, Binance spot 0.10 % / 0.10 %.
-- geo_restrictions: ISO 3166 country codes whose residents the exchange does not serve (the exchanges'
-- public terms; Binance.com does not serve the United States, which has Binance.US instead).

CREATE TABLE exchanges (
    id                   text PRIMARY KEY CHECK (id ~ '^[a-z0-9_]+$'),
    display_name         text NOT NULL,
    adapter_kind         text NOT NULL CHECK (adapter_kind IN ('coinbase_advanced_trade', 'binance_spot')),
    ws_urls              text[] NOT NULL CHECK (cardinality(ws_urls) > 0),
    rest_url             text NOT NULL,
    api_limits           jsonb NOT NULL DEFAULT '{}'::jsonb,
    maker_fee            numeric(8, 6) NOT NULL CHECK (maker_fee >= 0),
    taker_fee            numeric(8, 6) NOT NULL CHECK (taker_fee >= 0),
    geo_restrictions     text[] NOT NULL DEFAULT '{}',
    supported_timeframes text[] NOT NULL,
    aliases              text[] NOT NULL DEFAULT '{}',
    enabled              boolean NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

INSERT INTO exchanges (id, display_name, adapter_kind, ws_urls, rest_url, api_limits, maker_fee, taker_fee,
                       geo_restrictions, supported_timeframes, aliases)
VALUES
(
    'coinbase', 'Coinbase Advanced Trade', 'coinbase_advanced_trade',
    ARRAY['wss://advanced-trade-ws.coinbase.com'],
    'https://api.coinbase.com/api/v3/brokerage/market',
    '{
       "ws": {"connections_per_second": 8, "unauthenticated_messages_per_second": 8,
              "subscribe_within_seconds": 5, "heartbeat_interval_seconds": 1, "max_frame_bytes": 10485760,
              "native_candle_timeframe": "5m"},
       "rest": {"public_requests_per_second": 10, "private_requests_per_second": 30,
                "candles_max_per_request": 350}
     }'::jsonb,
    0.006, 0.012,
    '{}',
    ARRAY['1m', '5m', '15m', '30m', '1h', '2h', '4h', '6h', '1d'],
    ARRAY['coinbase', 'coinbase advanced trade', 'coinbase pro', 'coinbase exchange', 'gdax']
),
(
    'binance', 'Binance', 'binance_spot',
    ARRAY['wss://stream.binance.com:9443', 'wss://data-stream.binance.vision'],
    'https://api.binance.com',
    '{
       "ws": {"incoming_messages_per_second": 5, "max_streams_per_connection": 1024,
              "connection_attempts_per_5_minutes": 300, "max_connection_hours": 24, "server_ping_seconds": 20},
       "rest": {"request_weight_per_minute": 6000, "klines_max_per_request": 1000,
                "weights": {"exchangeInfo": 20, "ticker/24hr": 2, "ticker/24hr(all)": 80, "klines": 2,
                            "aggTrades": 4}},
       "rest_fallback_urls": ["https://data-api.binance.vision"]
     }'::jsonb,
    0.001, 0.001,
    ARRAY['US'],
    ARRAY['1s', '1m', '3m', '5m', '15m', '30m', '1h', '2h', '4h', '6h', '8h', '12h', '1d', '3d', '1w', '1M'],
    ARRAY['binance', 'binance.com', 'binance spot']
)
ON CONFLICT (id) DO NOTHING;
