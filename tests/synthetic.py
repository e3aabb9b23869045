"""Generated exchange frames for tests that need more than the recordings hold (a whole day)."""

from __future__ import annotations

import functools
import json
import random
from datetime import UTC, datetime
from decimal import Decimal

DAY_START_MS = 1_786_233_600_000  # 2026-08-09 00:00 UTC
PRODUCTS = [
    f"{base}-USD" for base in ("BTC", "ETH", "SOL", "ADA", "DOT", "LTC", "XRP", "AVAX", "LINK", "UNI", "AAVE", "ATOM")
]
_SIDES = ["BUY", "SELL"]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def synthetic_day(seed: int = 7, every_ms: int = 60_000, hours: float = 24) -> list[bytes]:
    """A day of Coinbase market_trades frames for 12 products: 1-3 trades per frame, prices on a
    seeded random walk, now and then a frame repeating the previous one's trades (as the snapshot
    after a resubscribe does), and a heartbeat-less quiet hour for one product.

    ``hours`` < 24: the frames of the day's first hours only, the same as the whole day's (the frames
    past them are not built, but their random draws are made). Each call returns a new list; the
    frames of a (seed, every_ms, hours) are generated once per process."""
    return list(_generate(seed, every_ms, hours))


@functools.cache
def _generate(seed: int, every_ms: int, hours: float) -> tuple[bytes, ...]:
    rnd = random.Random(seed)
    end = DAY_START_MS + int(hours * 3_600_000)
    frames: list[tuple[int, bytes]] = []
    for n, product in enumerate(PRODUCTS):
        price = Decimal(rnd.randint(1, 60_000))
        trade_id = 1_000_000 * (n + 1)
        previous: list[dict[str, str]] = []
        for t in range(DAY_START_MS + n * 997, DAY_START_MS + 86_400_000, every_ms):
            if product == "ADA-USD" and DAY_START_MS + 3_600_000 <= t < DAY_START_MS + 7_200_000:
                continue
            if t >= end:  # past the hours asked for: the draws only, so the next product's are the day's
                for _ in range(rnd.randint(1, 3)):
                    rnd.randint(-500, 500), rnd.randint(1, 10_000), rnd.choice(_SIDES)
                if previous:
                    rnd.random()
                continue
            trades = []
            for k in range(rnd.randint(1, 3)):
                trade_id += 1
                price = max(Decimal("0.01"), price + Decimal(rnd.randint(-500, 500)) / 100)
                trades.append({
                    "product_id": product, "trade_id": str(trade_id), "price": str(price),
                    "size": str(Decimal(rnd.randint(1, 10_000)) / 1000), "time": _iso(t + k),
                    "side": rnd.choice(_SIDES),
                })  # fmt: skip
            events = [{"type": "update", "trades": list(reversed(trades))}]  # Coinbase lists newest first
            if previous and rnd.random() < 0.05:
                events.append({"type": "update", "trades": previous})
            previous = trades
            frame = {"channel": "market_trades", "timestamp": _iso(t + 5), "sequence_num": 0, "events": events}
            frames.append((t, json.dumps(frame, separators=(",", ":")).encode()))
    frames.sort(key=lambda f: f[0])
    return tuple(f for _, f in frames)
