"""Redis memory per tracked symbol: the projections of N symbols at their steady-state size.

Each symbol-timeframe (1m and the default roll-ups) holds what `tickfold process` keeps for it with
the default settings: ``candle_history`` closed candles in ``candles:{ex}:{symbol}:{tf}``,
``indicator_history`` MACD-V points in ``indicator:{ex}:{symbol}:{tf}:macdv``, the indicator state
``indicator_state`` (kernel state and last point) and the indicator's input ``indicator_input`` (the
newest ``indicator_window`` closed candles as its close events brought them). Candles are written by
the projection's own writer (:func:`projections.store.queue_series`), shaped like Binance klines
(8-decimal strings); points and
states by the indicator processor itself: one close per series 1,000 candles back (seeded from the
stored candles, as a rebuild of the indicators is: its recompute writes every point and the whole
input from there), then the last 35 candles close one by one (O(1) steps), so each
series ends with its full ``indicator_history`` of points, as after a long live run.

Measured: INFO ``used_memory`` before and after, with the exchange-wide streams the run also wrote
(closes, alerts, alert ids) deleted first, divided by the N x timeframes series; and ``MEMORY USAGE``
(``SAMPLES 0``: every element counted) of each key kind, the split given in the note.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import redis.asyncio as aioredis

from benchmarks.harness import Context, Figure
from processors.indicators import GROUP, KIND, IndicatorProcessor
from processors.runner import Runner, RunnerConfig
from projections import store
from projections.candles import BY_BASE, BY_EXCHANGE, Candle, CandleClosed
from projections.rollups import SOURCE as ROLLUP
from projections.watermark import bucket_end
from streams import keys, log
from tickfold.settings import Settings

EXCHANGE = "binance"
STEPS = 35  # closes after the recompute: the points the warm-up of a 1000-candle window leaves out


def _series(symbol: str, timeframe: str, n: int, rnd: random.Random) -> list[Candle]:
    start = 1_000_000 * 86_400_000  # a day boundary (2001-09-09), so every timeframe's buckets line up
    price, out = 30_000.0, []
    for _ in range(n):
        end = bucket_end(timeframe, start)
        o = price
        price = max(1.0, price * (1 + rnd.gauss(0, 0.002)))
        hi, lo = max(o, price) * (1 + rnd.random() / 1000), min(o, price) * (1 - rnd.random() / 1000)
        vol = rnd.random() * 100
        out.append(
            Candle(
                exchange=EXCHANGE, symbol=symbol, timeframe=timeframe, start=start, open=f"{o:.8f}",
                high=f"{hi:.8f}", low=f"{lo:.8f}", close=f"{price:.8f}", volume=f"{vol:.8f}",
                quote_volume=f"{vol * price:.8f}", trades=rnd.randrange(1, 5000),
                taker_buy_volume=f"{vol / 2:.8f}", closed=True, event_ns=end * 1_000_000 + 123_000_000,
                source="native" if timeframe == "1m" else ROLLUP,
                closed_by=BY_EXCHANGE if timeframe == "1m" else BY_BASE,
            )
        )  # fmt: skip
        start = end
    return out


async def _drain(client: aioredis.Redis, settings: Settings) -> None:
    def make(p: int) -> IndicatorProcessor:
        return IndicatorProcessor(
            EXCHANGE, window=settings.indicator_window, history=settings.indicator_history, seed_from_candles=True
        )

    runner = Runner(client, EXCHANGE, GROUP, 1, make, RunnerConfig(consumer="bench"))
    await runner.run(until_idle=True)


async def _write(client: aioredis.Redis, series: list[list[Candle]], upto: int | None, history: int) -> None:
    pipe = client.pipeline(transaction=False)
    for candles in series:
        c = candles[0]
        store.queue_series(pipe, keys.candles(EXCHANGE, c.symbol, c.timeframe), candles[:upto], history=history)
        await pipe.execute()


async def _close(client: aioredis.Redis, events: list[Candle]) -> None:
    pipe = client.pipeline(transaction=False)
    for c in events:
        pipe.xadd(keys.closes_stream(EXCHANGE), {"event": store.encode(CandleClosed(candle=c))})
    await pipe.execute()


async def _used(client: aioredis.Redis) -> int:
    info: Any = await client.info("memory")
    return int(info["used_memory"])


async def _measure(url: str, symbols: int) -> tuple[float, dict[str, float], int]:
    """(bytes per symbol-timeframe, mean MEMORY USAGE per key kind, timeframes per symbol)."""
    settings = Settings()
    timeframes = ["1m", *filter(None, (t.strip() for t in settings.rollups.split(",")))]
    history = settings.candle_history
    async with log.connect(url) as client:
        await client.flushdb()
        before = await _used(client)
        rnd = random.Random(11)
        series = [_series(f"S{i:03d}-USDT", tf, history, rnd) for i in range(symbols) for tf in timeframes]
        await _write(client, series, -STEPS, history)
        await _close(client, [candles[-settings.indicator_window - STEPS] for candles in series])
        await _drain(client, settings)
        for i in range(STEPS, 0, -1):  # the last candles close one at a time: O(1) steps
            await _write(client, [candles[-i:][:1] for candles in series], None, history)
            await _close(client, [candles[-i] for candles in series])
        await _drain(client, settings)
        wide = [keys.closes_stream(EXCHANGE), keys.alerts_stream(EXCHANGE), keys.alert_ids(EXCHANGE)]
        await client.delete(*wide, *[k async for k in client.scan_iter("lease:*")])
        await client.delete(keys.workers(GROUP, EXCHANGE))
        await client.memory_purge()
        after = await _used(client)
        kinds: dict[str, list[int]] = {"candles": [], "indicator": [], "state": [], "input": []}
        for candles in series:
            c = candles[0]
            named = {
                "candles": keys.candles(EXCHANGE, c.symbol, c.timeframe),
                "indicator": keys.indicator(EXCHANGE, c.symbol, c.timeframe, KIND),
                "state": keys.indicator_state(EXCHANGE, c.symbol, c.timeframe, KIND),
                "input": keys.indicator_input(EXCHANGE, c.symbol, c.timeframe),
            }
            for kind, key in named.items():
                size: Any = await client.memory_usage(key, samples=0)
                if not size:
                    raise RuntimeError(f"{key} was not written")
                kinds[kind].append(int(size))
            points: Any = await client.zcard(named["indicator"])
            if points != settings.indicator_history:
                raise RuntimeError(f"{named['indicator']} holds {points} points, not {settings.indicator_history}")
        await client.flushdb()
    per_key = {kind: sum(sizes) / len(sizes) for kind, sizes in kinds.items()}
    return (after - before) / len(series), per_key, len(timeframes)


def run(ctx: Context) -> list[Figure]:
    symbols = 2 if ctx.quick else 20
    settings = Settings()
    per_series, per_symbol = [], []
    split: dict[str, float] = {}
    tfs = 0
    for _ in range(ctx.repeats):
        value, split, tfs = asyncio.run(_measure(ctx.url, symbols))
        per_series.append(value)
        per_symbol.append(value * tfs)
    note = (
        f"{symbols} symbols x {tfs} timeframes (1m + rollups {settings.rollups}), each with "
        f"{settings.candle_history:,} candles, {settings.indicator_history:,} MACD-V points, its state and input; "
        f"MEMORY USAGE per key: candles {split['candles']:,.0f} B ({split['candles'] / settings.candle_history:.0f} "
        f"B/candle), MACD-V points {split['indicator']:,.0f} B "
        f"({split['indicator'] / settings.indicator_history:.0f} B/point), state {split['state']:,.0f} B, "
        f"input {split['input']:,.0f} B ({split['input'] / settings.indicator_window:.0f} B/candle)"
    )
    return [
        Figure("memory per symbol-timeframe (INFO used_memory delta)", "bytes", per_series, note=note,
               key="memory.per_series"),
        Figure(f"memory per tracked symbol ({tfs} timeframes)", "bytes", per_symbol, key="memory.per_symbol"),
    ]  # fmt: skip
