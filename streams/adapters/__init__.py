"""Exchange adapters: WebSocket in, raw frames appended to ``frames:{exchange_id}`` unchanged."""
