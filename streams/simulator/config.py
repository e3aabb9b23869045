"""Settings of the simulator (all optional; the defaults are the real exchanges' documented values,
except where a test-friendly value is said)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], int]  # wall clock, ns since the epoch (time.time_ns)


def default_clock() -> int:
    return time.time_ns()


@dataclass(frozen=True)
class SimConfig:
    host: str = "127.0.0.1"
    record_sent: bool = True  # keep every frame written (sim.sent); turn off for long benchmarks
    max_outbox: int = 50_000  # frames queued on one connection before the feeds wait for it
    max_trades: int = 500_000  # trades kept per symbol for REST answers
    # recorded REST bodies served instead of computed ones: (endpoint, file) pairs, endpoints in
    # streams.simulator.recorded_rest.ENDPOINTS (binance/exchangeInfo, binance/ticker/24hr, coinbase/products)
    rest_documents: tuple[tuple[str, str], ...] = ()
    # Binance
    ping_interval: float = 20.0
    pong_timeout: float = 60.0
    binance_messages_per_s: int = 5  # incoming messages (pings, pongs, requests); more: disconnected
    max_streams: int = 1024  # per connection
    kline_update_interval: float = 2.0
    shutdown_grace: float = 1.0  # serverShutdown event → close
    binance_max_age: float = 86_400.0  # connections are closed (1001) after 24 h
    binance_weight_limit: int = 6000  # REQUEST_WEIGHT per minute per IP
    # Coinbase
    subscribe_timeout: float = 5.0
    coinbase_messages_per_s: int = 8
    heartbeat_interval: float = 1.0
    candle_update_interval: float = 1.0  # test-friendly: the real feed updates every 10-20 s
    trades_batch_interval: float = 0.25
    coinbase_requests_per_s: int = 10
    snapshot_candles: int = 100
    snapshot_trades: int = 100
