"""Candle closes per second through the indicator processor on Redis (MACD-V recomputed from history).

Setup: S series of 1m candles (a seeded random walk), each with ``history`` closed candles stored, and
a closes stream holding R rounds of one close per series (round-major, as a live feed produces them:
every series closes once a minute). The processor drains it (consumer group, batches of 500): each
batch recomputes each series it touches once, from its newest 1000 closed candles. The ceiling is a
bare XREADGROUP + XACK over the same closes stream.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import redis.asyncio as aioredis

from benchmarks.harness import Figure
from processors.indicators import GROUP, IndicatorProcessor
from processors.runner import Runner, RunnerConfig
from projections import store
from projections.candles import Candle, CandleClosed
from streams import keys


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


async def _setup(url: str, symbols: int, history: int, rounds: int) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushdb()
        rnd = random.Random(7)
        series = {f"S{i:04d}-USDT": _series(f"S{i:04d}-USDT", history + rounds, rnd) for i in range(symbols)}
        pipe = client.pipeline(transaction=False)
        for symbol, candles in series.items():
            store.queue_series(pipe, keys.candles("binance", symbol, "1m"), candles, history=10_000, stored=())
        for r in range(rounds):
            for candles in series.values():
                pipe.xadd(
                    keys.closes_stream("binance"), {"event": store.encode(CandleClosed(candle=candles[history + r]))}
                )
        await pipe.execute()
        return symbols * rounds
    finally:
        await client.aclose()


async def _drain(url: str, n: int) -> float:
    client = aioredis.Redis.from_url(url)
    try:
        runner = Runner(
            client, "binance", GROUP, 1, lambda p: IndicatorProcessor("binance"), RunnerConfig(consumer="bench")
        )
        start = time.perf_counter()
        stats = await runner.run(until_idle=True)
        elapsed = time.perf_counter() - start
        assert stats.totals.processed == n, stats
        return n / elapsed
    finally:
        await client.aclose()


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


def run(url: str, port: int, *, quick: bool, repeats: int) -> list[Figure]:
    symbols, history, rounds = (100, 300, 5) if quick else (1000, 1000, 5)
    closes, bare = [], []
    for _ in range(repeats):
        n = asyncio.run(_setup(url, symbols, history, rounds))
        bare.append(asyncio.run(_bare(url, n)))
        closes.append(asyncio.run(_drain(url, n)))
    ceiling = sorted(bare)[len(bare) // 2]
    return [
        Figure(f"bare XREADGROUP 500 + XACK on closes:{{ex}} ({symbols * rounds:,} closes)", "closes/s", bare),
        Figure(
            f"indicator processor: MACD-V + alerts, {symbols} series x {rounds} closes, window 1000",
            "closes/s",
            closes,
            "bare XREADGROUP+XACK",
            ceiling,
            note="each batch recomputes every series it touches once from its newest 1000 closed candles",
        ),
    ]
