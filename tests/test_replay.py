"""Replay and rebuild on real servers: the live processors fold recorded and generated frames, then a
replay of sub-ranges (into another logical database or a private server) must give exactly the candles,
MACD-V points and alerts (same ids) the live run stored for that range, leave the live keys untouched,
and refuse ranges that hold nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from processors.indicators import decode_alert, decode_point
from processors.replay import ReplayNoData, ReplayOptions, horizon_ms
from projections.alerts import Alert, Point
from projections.candles import Candle
from streams import keys, log
from tests.realdata import BINANCE_0404
from tests.support import all_candles, drain, ingest
from tests.synthetic import DAY_START_MS, PRODUCTS, synthetic_day
from tickfold.errors import ConfigError
from tickfold.replay import replay_into
from tickfold.settings import Settings

pytestmark = [pytest.mark.redis, pytest.mark.replay]
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


async def check_sub_ranges(client: aioredis.Redis, target: aioredis.Redis, frames: list[bytes]) -> None:
    for lo_h, hi_h, timeframes in RANGES:
        lo, hi = DAY_START_MS + int(lo_h * HOUR), DAY_START_MS + int(hi_h * HOUR)
        candles, points, alerts = await expected(client, "coinbase", lo, hi, timeframes)
        assert candles and points and alerts  # the range holds closed candles, MACD-V values and alerts
        await target.flushdb()
        options = ReplayOptions(start_ms=lo, end_ms=hi, timeframes=timeframes)
        result, stats = await replay_into(client, target, SETTINGS, "coinbase", options)
        assert {(c.symbol, c.timeframe, c.start): c for c in result.candles} == candles
        assert result.points == points  # bit for bit
        assert sorted(result.alerts, key=lambda a: a.id) == sorted(alerts, key=lambda a: a.id)  # same ids
        assert stats.dead == 0
        stop = hi + horizon_ms(SETTINGS, "coinbase", timeframes)  # folded up to here, not further
        assert stats.last_event_ms is not None and stats.last_event_ms <= stop
        assert (stats.beyond_ms is None) == (stats.frames == len(frames))
        assert stats.beyond_ms is None or stats.beyond_ms > stop
        if timeframes is not None:
            assert stats.frames < len(frames) * 0.7


async def test_replay_of_sub_ranges_equals_the_live_run(
    day: list[bytes], client: aioredis.Redis, target: aioredis.Redis
) -> None:
    await live_run(client, "coinbase", day)
    await check_sub_ranges(client, target, day)


@pytest.mark.xfail(
    strict=True,
    reason="processors/candles.py: a roll-up's closed_by depends on the batching. _rollups closes a *dirty* "
    "roll-up by watermark inside the level loop (the next level then sees its base closed: 'base'), but a "
    "roll-up whose base did not change in the batch closes in the final `due` loop after all levels (the "
    "next level closes by 'watermark'). A live run whose batches split differently from the replay's gives "
    "other closed_by values for some 15m/1h roll-ups.",
)
async def test_replay_equals_a_live_run_that_folded_in_chunks(
    day: list[bytes], client: aioredis.Redis, target: aioredis.Redis
) -> None:
    await live_run(client, "coinbase", day, chunks=8)  # (8 splits batches where the closed_by of 1h roll-ups differ)
    await check_sub_ranges(client, target, day)


async def test_replay_of_recorded_binance_frames(client: aioredis.Redis, target: aioredis.Redis) -> None:
    await ingest(client, "binance", BINANCE_0404)
    await drain(client, ["binance"])
    live = await all_candles(client, "binance")
    lo, hi = min(s for _, _, s in live), max(s for _, _, s in live) + 60_000
    options = ReplayOptions(start_ms=lo, end_ms=hi)
    result, stats = await replay_into(client, target, SETTINGS, "binance", options)
    assert {(c.symbol, c.timeframe, c.start): c for c in result.candles} == live
    assert {c.symbol for c in result.candles} == {"BTC-USDT", "ETH-USDT", "DOT-USDT"}
    assert stats.frames == sum([await client.xlen(keys.frames_stream("binance", p)) for p in range(4)])


async def test_empty_and_future_ranges_are_refused(
    day: list[bytes], client: aioredis.Redis, target: aioredis.Redis
) -> None:
    with pytest.raises(ReplayNoData, match="no raw frames of coinbase"):
        await replay_into(
            client, target, SETTINGS, "coinbase", ReplayOptions(start_ms=DAY_START_MS, end_ms=DAY_START_MS + HOUR)
        )
    await log.append_frames(client, "coinbase", [(f, 0) for f in day[:2000]])
    with pytest.raises(ConfigError, match="in the future"):
        await replay_into(
            client, target, SETTINGS, "coinbase", ReplayOptions(start_ms=4_102_444_800_000, end_ms=4_102_448_400_000)
        )
    with pytest.raises(ConfigError, match="is not after"):
        await replay_into(
            client, target, SETTINGS, "coinbase", ReplayOptions(start_ms=DAY_START_MS, end_ms=DAY_START_MS)
        )
    before = DAY_START_MS - 48 * HOUR
    with pytest.raises(ReplayNoData, match=r"no coinbase candles start in .* the data begins later, at 2026-08-09T"):
        await replay_into(client, target, SETTINGS, "coinbase", ReplayOptions(start_ms=before, end_ms=before + HOUR))
    await target.flushdb()
    after = DAY_START_MS + 72 * HOUR
    with pytest.raises(ReplayNoData, match=r"the frames folded span 2026-08-09T00:00:00.*\.\. 2026-08-09T"):
        await replay_into(client, target, SETTINGS, "coinbase", ReplayOptions(start_ms=after, end_ms=after + HOUR))
