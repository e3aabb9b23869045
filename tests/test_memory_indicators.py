"""The indicator processor folded in memory (processors/memory_indicators.py) against the indicator
processor itself on a real Redis: the same batches of close events, with corrections, repeats, closes out
of order and late, more candles than the window, and histories small enough to be trimmed; every key it
writes (points, states, inputs, alerts and their ids) must be the same, member for member and score for
score."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from processors.indicators import IndicatorProcessor
from processors.leases import Fence
from processors.memory_indicators import MemoryIndicators
from projections import store
from projections.candles import BY_WATERMARK, Candle, CandleClosed
from streams import keys, log
from tests.test_memory_fold import indicator_keys

pytestmark = pytest.mark.redis

T0 = 1_786_233_600_000


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    async with log.connect(redis_url) as c:
        await c.flushdb()
        yield c
        await c.flushdb()


def _candle(symbol: str, tf: str, start: int, close: float, rnd: random.Random) -> Candle:
    high, low = close * (1 + rnd.random() / 100), close * (1 - rnd.random() / 100)
    return Candle(
        exchange="coinbase",
        symbol=symbol,
        timeframe=tf,
        start=start,
        open=f"{close:.4f}",
        high=f"{high:.4f}",
        low=f"{low:.4f}",
        close=f"{close:.4f}",
        volume="1",
        closed=True,
        event_ns=(start + 60_000) * 1_000_000,
        closed_by=BY_WATERMARK,
    )


def tangled_closes(seed: int) -> list[CandleClosed]:
    """Close events of 3 series, mostly in order, with corrections of recent buckets, repeats, a bucket
    closed late (out of order) and gaps: random walks that cross their signal lines many times."""
    rnd = random.Random(seed)
    out: list[CandleClosed] = []
    price = {s: 100.0 for s in ("BTC-USD", "ETH-USD", "SOL-USD")}
    held: list[Candle] = []  # buckets skipped, closed later
    for minute in range(420):
        for symbol in price:
            tf = "1m" if symbol != "SOL-USD" else "5m"
            step = 60_000 if tf == "1m" else 300_000
            if tf == "5m" and minute % 5:
                continue
            start = T0 + minute * 60_000
            price[symbol] *= 1 + rnd.gauss(0, 0.004)
            candle = _candle(symbol, tf, start, price[symbol], rnd)
            roll = rnd.random()
            if roll < 0.03:
                held.append(candle)  # closed later, out of order
                continue
            out.append(CandleClosed(candle=candle))
            if roll < 0.08:  # a correction of this or a recent bucket
                back = start - step * rnd.randint(0, 3)
                fixed = _candle(symbol, tf, back, price[symbol] * (1 + rnd.gauss(0, 0.01)), rnd)
                out.append(CandleClosed(candle=fixed, correction=True))
            elif roll < 0.11:
                out.append(out[-1])  # a repeat (a redelivered close)
            if held and rnd.random() < 0.1:
                out.append(CandleClosed(candle=held.pop(0)))
    return out


@pytest.mark.parametrize(("seed", "batch"), [(1, 1), (2, 7), (3, 64), (4, 5000)])
async def test_memory_indicators_write_what_the_processor_writes(client: aioredis.Redis, seed: int, batch: int) -> None:
    events = tangled_closes(seed)
    processor = IndicatorProcessor("coinbase", window=120, history=90, alert_history=25)
    fence = Fence(keys.lease("indicators", "coinbase", 0), b"test")
    await client.set(fence.key, fence.token)
    memory = MemoryIndicators(processor)
    raised = 0
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        entries = [(b"%d-0" % (i + n + 1), {b"event": store.encode(e)}) for n, e in enumerate(chunk)]
        result = await processor.handle(client, entries, fence)
        assert memory.fold(chunk) == result.events
        raised += result.events
    await client.delete(fence.key)
    live = await indicator_keys(client)
    await client.flushdb()
    await memory.write(client)
    assert await indicator_keys(client) == live
    sizes = {k: len(v) for k, v in live.items() if isinstance(v, list)}
    assert raised > 25 and sizes[keys.alert_ids("coinbase").encode()] == 25  # the alert ids were trimmed
    assert any(n == 90 for k, n in sizes.items() if k.startswith(b"indicator:"))  # the points were trimmed
    assert any(n > 100 for k, n in sizes.items() if k.startswith(b"indinput:"))
