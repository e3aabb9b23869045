-- SYM-02: Tier 2, the positions users hold. One row per (user, exchange, canonical symbol); a closed
-- position's row is deleted. Each open/close also appends a symbol:added / symbol:removed event (tier2)
-- to the control stream, so the universe stays a fold of the stream (control/positions.py).

CREATE TABLE positions (
    user_id     text NOT NULL CHECK (user_id <> ''),
    exchange_id text NOT NULL REFERENCES exchanges (id),
    symbol      text NOT NULL CHECK (symbol ~ '^[^-]+-[^-]+$'),
    quantity    numeric NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, exchange_id, symbol)
);
