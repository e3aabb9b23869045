"""What the replay and rebuild tests share: the generated day, a live run to compare with, and readers of
the projections a live run or a replay leaves."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from processors.indicators import decode_alert, decode_point
from projections.alerts import Alert, Point
from projections.candles import Candle
from streams import keys, log
from tests.support import all_candles, drain
from tests.synthetic import PRODUCTS, synthetic_day
from tickfold.settings import Settings

HOUR = 3_600_000
SETTINGS = Settings.load({})


@pytest.fixture(scope="module")
def day() -> list[bytes]:
    """Four products of the generated day, a trade every 90 s: < 1,000 1m candles per series, so MACD-V
    warms up on 1m, 5m and 15m and every value is exact whichever path computed it."""
    frames = synthetic_day(every_ms=90_000)
    return [f for f in frames if any(f'"product_id":"{p}"'.encode() in f for p in PRODUCTS[:4])]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


def _db(url: str, n: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{n}"


@pytest.fixture
async def target(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(_db(redis_url, 5))
    await c.flushdb()
    yield c
    await c.flushdb()
    await c.aclose()


async def live_run(client: aioredis.Redis, exchange_id: str, frames: list[bytes], chunks: int = 1) -> None:
    """Append in chunks and drain after each, as a live feed interleaves arrivals and folds."""
    step = -(-len(frames) // chunks)
    for i in range(0, len(frames), step):
        await log.append_frames(client, exchange_id, [(f, 0) for f in frames[i : i + step]])
        await drain(client, [exchange_id])


async def points_of(client: aioredis.Redis, exchange_id: str) -> dict[tuple[str, str, int], Point]:
    out: dict[tuple[str, str, int], Point] = {}
    async for raw_key in client.scan_iter(match=f"indicator:{exchange_id}:*"):
        _, _, symbol, tf, _ = raw_key.decode().split(":")
        members: Any = await client.zrange(raw_key, 0, -1)
        for raw in members:
            p = decode_point(raw)
            out[(symbol, tf, p.start)] = p
    return out


async def alerts_of(client: aioredis.Redis, exchange_id: str) -> list[Alert]:
    return [decode_alert(f[b"alert"]) for _, f in await log.entries(client, keys.alerts_stream(exchange_id))]


def in_range(start: int, lo: int, hi: int) -> bool:
    return lo <= start < hi


async def expected(
    client: aioredis.Redis, exchange_id: str, lo: int, hi: int, timeframes: tuple[str, ...] | None = None
) -> tuple[dict[tuple[str, str, int], Candle], dict[tuple[str, str, int], Point], list[Alert]]:
    def keep(tf: str, start: int) -> bool:
        return in_range(start, lo, hi) and (timeframes is None or tf in timeframes)

    candles = {k: c for k, c in (await all_candles(client, exchange_id)).items() if keep(k[1], k[2])}
    points = {k: p for k, p in (await points_of(client, exchange_id)).items() if keep(k[1], k[2])}
    alerts = [a for a in await alerts_of(client, exchange_id) if keep(a.timeframe, a.start)]
    return candles, points, alerts


RANGES: list[tuple[float, float, tuple[str, ...] | None]] = [
    (0, 24, None),  # the whole day
    (5, 9, None),  # every timeframe: the fold runs a day past the range (1d candles need it)
    (10, 13, ("1m", "15m")),  # a shorter horizon: the fold stops 15 minutes (+ grace) after the range
    (14.5, 15.25, ("1m",)),
]


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tickfold.cli", "--redis-url", url, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


async def dump(client: aioredis.Redis) -> dict[bytes, Any]:
    """Every key of a database with its serialized value and TTL: equal dumps, equal databases."""
    out: dict[bytes, Any] = {}
    async for key in client.scan_iter(count=1000):
        out[key] = (await client.dump(key), await client.pttl(key))
    return out


async def state(client: aioredis.Redis, exchange_id: str) -> tuple[Any, ...]:
    """The candles, MACD-V points and alerts of an exchange (alerts as a set: the order they were raised in
    follows the batching)."""
    return (
        await all_candles(client, exchange_id),
        await points_of(client, exchange_id),
        sorted(f[b"alert"] for _, f in await log.entries(client, keys.alerts_stream(exchange_id))),
    )
