"""Candle closes per second through the indicator processor on Redis (MACD-V recomputed from history).

Setup: S series of 1m candles (a seeded random walk), each with ``history`` closed candles stored. A
first close per series is folded unmeasured, seeded from the stored candles as a rebuild of the
indicators is (the processor recomputes each series and keeps its kernel state and its input, the
candles its close events brought); then R rounds of one close per series (round-major, as a live
feed produces them) are measured: each is the next candle of its series, so it is an O(1) step of
the saved state. The recompute figure is one more round, a *correction* of an earlier candle per
series: each is recomputed from its input (the newest ``min(history, 1000)`` closed candles), as a
correction, a late gap fill or an out-of-order close is live. The ceiling is a bare XREADGROUP + XACK
on the stream.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import msgspec
import redis.asyncio as aioredis

from benchmarks.harness import Context, Figure
from processors.indicators import GROUP, IndicatorProcessor
from processors.runner import Runner, RunnerConfig
from projections import store
from projections.candles import Candle, CandleClosed
from streams import keys, log


def _series(symbol: str, n: int, rnd: random.Random) -> list[Candle]:
    out, price = [], 100.0
    for i in range(n):
        o = price
        price = max(1.0, price + rnd.gauss(0, 1))
        hi, lo = max(o, price) + rnd.random(), min(o, price) - rnd.random()
        out.append(
            Candle(
                exchange="binance", symbol=symbol, timeframe="1m", start=i * 60_000, open=f"{o:.4f}",
                high=f"{hi:.4f}", low=f"{lo:.4f}", close=f"{price:.4f}", volume="1", closed=True,
                event_ns=(i + 1) * 60_000_000_000,
            )
        )  # fmt: skip
    return out


async def _setup(url: str, symbols: int, history: int, rounds: int) -> list[list[Candle]]:
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushdb()
        rnd = random.Random(7)
        series = [_series(f"S{i:04d}-USDT", history + rounds + 1, rnd) for i in range(symbols)]
        pipe = client.pipeline(transaction=False)
        for candles in series:  # what has closed so far; the rest close during the run
            key = keys.candles("binance", candles[0].symbol, "1m")
            store.queue_series(pipe, key, candles[:history], history=10_000, stored=())
        await pipe.execute()
        return series
    finally:
        await client.aclose()


async def _closes(url: str, series: list[list[Candle]], indices: range, *, correction: bool = False) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        pipe = client.pipeline(transaction=False)
        for i in indices:
            for candles in series:  # as the candle processor does: the closed candle, then its close event
                key = keys.candles("binance", candles[0].symbol, "1m")
                candle = candles[i]
                if correction:
                    candle = msgspec.structs.replace(candle, close=f"{float(candle.close) * 1.001:.4f}")
                    pipe.zremrangebyscore(key, candle.start, candle.start)
                store.queue_series(pipe, key, [candle], history=10_000, stored=())
                event = CandleClosed(candle=candle, correction=correction)
                pipe.xadd(keys.closes_stream("binance"), {"event": store.encode(event)})
        await pipe.execute()
        return len(series) * len(indices)
    finally:
        await client.aclose()


async def _drain(url: str, n: int, *, seed: bool = False) -> float:
    async with log.connect(url) as client:  # as `tickfold process` connects
        make = lambda p: IndicatorProcessor("binance", seed_from_candles=seed)  # noqa: E731
        runner = Runner(client, "binance", GROUP, 1, make, RunnerConfig(consumer="bench"))
        start = time.perf_counter()
        stats = await runner.run(until_idle=True)
        elapsed = time.perf_counter() - start
        assert stats.totals.processed == n, stats
        return n / elapsed


async def _bare(url: str, n: int) -> float:
    client = aioredis.Redis.from_url(url)
    stream = keys.closes_stream("binance")
    try:
        await client.xgroup_create(stream, "bare", id="0")
        start, done = time.perf_counter(), 0
        while True:
            reply: Any = await client.xreadgroup("bare", "c", {stream: ">"}, count=500)
            if not reply:
                break
            ids = [eid for eid, _ in reply[0][1]]
            await client.xack(stream, "bare", *ids)
            done += len(ids)
        assert done == n
        return n / (time.perf_counter() - start)
    finally:
        await client.aclose()


def run(ctx: Context) -> list[Figure]:
    symbols, history, rounds = (100, 300, 5) if ctx.quick else (1000, 1000, 10)
    steps, recomputes, bare = [], [], []
    for _ in range(ctx.repeats):
        series = asyncio.run(_setup(ctx.url, symbols, history, rounds))
        first = asyncio.run(_closes(ctx.url, series, range(history, history + 1)))
        bare.append(asyncio.run(_bare(ctx.url, first)))
        asyncio.run(_drain(ctx.url, first, seed=True))
        n = asyncio.run(_closes(ctx.url, series, range(history + 1, history + 1 + rounds)))
        steps.append(asyncio.run(_drain(ctx.url, n)))
        late = history + rounds - 2  # an earlier candle of each series, corrected
        n = asyncio.run(_closes(ctx.url, series, range(late, late + 1), correction=True))
        recomputes.append(asyncio.run(_drain(ctx.url, n)))
    ceiling = sorted(bare)[len(bare) // 2]
    return [
        Figure(f"bare XREADGROUP 500 + XACK on closes:{{ex}} ({symbols:,} closes)", "closes/s", bare,
               key="indicator_processor.bare_read_ack"),
        Figure(f"indicator processor, live: {symbols} series x {rounds} closes, O(1) steps", "closes/s", steps,
               "bare XREADGROUP+XACK", ceiling, key="indicator_processor.live"),
        Figure(f"indicator processor, recompute: {symbols} series from {min(history, 1000)} candles each",
               "closes/s", recomputes, "bare XREADGROUP+XACK", ceiling, key="indicator_processor.recompute"),
    ]  # fmt: skip
