"""The in-memory candle fold (processors/memory_fold.py) against the live candle processor on Redis.

The oracle is a live run: ``tickfold process``'s processors folding the same frames on a real Redis
(batches of 500 entries per partition); the memory fold gets other batch sizes. Every candle of every
series and every close event (per series, in order) must be the same.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from processors.candles import from_settings
from processors.memory_fold import MemoryCandles
from projections.candles import CandleClosed
from streams import log, partitions
from streams.symbols import load_symbol_map
from tests.realdata import BINANCE_0404, COINBASE_AT
from tests.support import all_candles, close_events, drain, ingest
from tests.synthetic import synthetic_day
from tickfold.settings import Settings

pytestmark = pytest.mark.redis


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    async with log.connect(redis_url) as c:
        yield c


async def memory_run(client: aioredis.Redis, exchange_id: str, batch: int) -> list[MemoryCandles]:
    """Fold every raw partition of the exchange in memory, ``batch`` entries at a time."""
    settings = Settings()
    symbols = await load_symbol_map(client, exchange_id)
    folds = []
    for p, stream in enumerate(partitions.streams(exchange_id, await log.stored_partitions(client, exchange_id) or 0)):
        fold = MemoryCandles(from_settings(settings, exchange_id, p, symbols, history=settings.candle_history))
        entries = await log.entries(client, stream)
        for i in range(0, len(entries), batch):
            await fold.fold(entries[i : i + batch])
        folds.append(fold)
    return folds


def by_series(events: list[CandleClosed]) -> dict[tuple[str, str], list[CandleClosed]]:
    out: dict[tuple[str, str], list[CandleClosed]] = defaultdict(list)
    for e in events:
        out[(e.candle.symbol, e.candle.timeframe)].append(e)
    return dict(out)


async def check_same_as_live(client: aioredis.Redis, exchange_id: str, batch: int) -> int:
    await drain(client, [exchange_id], batch_size=500)
    live = await all_candles(client, exchange_id)
    folds = await memory_run(client, exchange_id, batch)
    memory = {(c.symbol, c.timeframe, c.start): c for f in folds for series in f.candles().values() for c in series}
    assert memory == live
    assert by_series([e for f in folds for e in f.closes]) == by_series(await close_events(client, exchange_id))
    return len(memory)


@pytest.mark.parametrize("batch", [7, 137, 5000])
async def test_the_synthetic_coinbase_day_folds_in_memory_as_live(client: aioredis.Redis, batch: int) -> None:
    """Trade candles (1m from market_trades, exact decimals, repeated trades once), roll-ups to 1d,
    watermark closes and the quiet hour."""
    day = synthetic_day(every_ms=60_000)
    await log.append_frames(client, "coinbase", [(f, 0) for f in day])
    assert await check_same_as_live(client, "coinbase", batch) > 3_000


@pytest.mark.parametrize(("exchange_id", "path"), [("binance", BINANCE_0404), ("coinbase", COINBASE_AT)])
async def test_recorded_sessions_fold_in_memory_as_live(client: aioredis.Redis, exchange_id: str, path: object) -> None:
    await ingest(client, exchange_id, path)  # type: ignore[arg-type]
    assert await check_same_as_live(client, exchange_id, 250) > 10


@pytest.mark.replay
async def test_an_in_memory_replay_equals_the_live_run(redis_url: str) -> None:
    """The fast path of ``tickfold replay --in-memory``: candles, MACD-V points (bit for bit) and alerts
    (same ids) of sub-ranges equal those of the live run, as the replay through Redis is checked to."""
    from processors.replay import ReplayOptions
    from tests.replay_support import RANGES, SETTINGS, expected, live_run
    from tests.synthetic import DAY_START_MS, PRODUCTS
    from tickfold.replay import replay_into

    day = [f for f in synthetic_day(every_ms=90_000) if any(f'"product_id":"{p}"'.encode() in f for p in PRODUCTS[:4])]
    async with log.connect(redis_url) as client, log.connect(redis_url.rsplit("/", 1)[0] + "/6") as target:
        await target.flushdb()
        await live_run(client, "coinbase", day)
        for lo_h, hi_h, timeframes in RANGES:
            lo, hi = DAY_START_MS + int(lo_h * 3_600_000), DAY_START_MS + int(hi_h * 3_600_000)
            candles, points, alerts = await expected(client, "coinbase", lo, hi, timeframes)
            await target.flushdb()
            options = ReplayOptions(start_ms=lo, end_ms=hi, timeframes=timeframes, in_memory=True)
            result, stats = await replay_into(client, target, SETTINGS, "coinbase", options)
            assert {(c.symbol, c.timeframe, c.start): c for c in result.candles} == candles
            assert result.points == points
            assert sorted(result.alerts, key=lambda a: a.id) == sorted(alerts, key=lambda a: a.id)
            assert stats.batches < 20 and stats.frames > 0  # large batches
        await target.flushdb()
