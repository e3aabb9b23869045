"""The gap watch (processors/gapwatch.py): control events -> REST backfills, on the simulator and a real Redis.

The scenario: the real Binance adapter streams from the simulator (its clock 240x real time, so a minute
takes 0.25 s); the simulator closes the connection in the middle of a bucket; the adapter reconnects after
its backoff, and whatever the simulator broadcast meanwhile is lost (it sends only to open connections).
The real candle processor folds the raw streams, then the gap watch reads the control stream.

Oracles are the simulator's own: the closing kline it streams for a bucket (``kline_payload`` of its
trade log) and an independent ``Decimal`` fold of that log.

Backfills append ``rest_candles`` frames to the raw streams; the tests let the gap watch run the fold
after each round (``fold=``, as ``process --backfill`` serves it) or drain the processors themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from control import events as ev
from control.exchanges import set_urls
from migrations.runner import migrate
from processors import gapwatch as gw
from projections import store
from projections.candles import Candle
from projections.snapshots import snapshots
from streams import keys, log
from streams.adapters import base as adapter_base
from streams.adapters.base import AdapterConfig, Backoff
from streams.adapters.binance import BinanceAdapter
from streams.adapters.sink import ControlEmitter, FrameSink
from streams.frames import decode_frame
from streams.rest import BinanceRestClient
from streams.simulator import Simulator
from streams.simulator.markets import Series, Trade
from streams.simulator.refdata import instrument
from streams.symbols import bundled
from tests.support import drain
from tickfold import cli
from tickfold.commands_gaps import find_gaps
from tickfold.settings import Settings

MIN = 60_000
SPEED = 240.0
BN = bundled("binance")
SERIES = keys.candles("binance", "BTC-USDT", "1m")


# ----------------------------------------------------------------------------------------- helpers


class FastClock:
    """Simulated wall time, ``speed`` times faster than real time, starting just after a minute boundary."""

    def __init__(self, speed: float) -> None:
        self.start = (time.time_ns() // 60_000_000_000 + 1) * 60_000_000_000
        self.t0 = time.monotonic_ns()
        self.speed = speed

    def __call__(self) -> int:
        return self.start + int((time.monotonic_ns() - self.t0) * self.speed)

    def ms(self) -> int:
        return self() // 1_000_000

    async def until(self, t_ms: int) -> None:
        """Sleep (real time) until simulated time reaches ``t_ms``."""
        left = (t_ms - self.ms()) / SPEED / 1000
        if left > 0:
            await asyncio.sleep(left)


def values(c: Candle) -> tuple[object, ...]:
    return (c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.trades, c.taker_buy_volume, c.closed)


def streamed_close(sim: Simulator, start: int) -> Candle:
    """The candle the live fold makes of the closing kline the simulator streams for a bucket."""
    series = sim.binance.series["BTCUSDT"]
    payload = sim.binance.kline_payload(series, "1m", series.fold(start, start + MIN), start + MIN + 5, True)
    ((candle, _),) = snapshots(
        "binance", decode_frame("binance", f'{{"stream":"btcusdt@kline_1m","data":{payload}}}'), BN
    )
    return candle


def decimal_fold(series: Series, start: int) -> dict[str, Any]:
    ts = [t for t in series.trades if start * 1000 <= t.time_us < (start + MIN) * 1000]
    p = [Decimal(t.price).scaleb(-series.price_scale) for t in ts]
    q = [Decimal(t.qty).scaleb(-series.qty_scale) for t in ts]
    return {"open": p[0], "high": max(p), "low": min(p), "close": p[-1], "volume": sum(q, Decimal(0)),
            "trades": sum(t.last - t.first + 1 for t in ts)}  # fmt: skip


def as_decimals(c: Candle) -> dict[str, Any]:
    return {"open": Decimal(c.open), "high": Decimal(c.high), "low": Decimal(c.low), "close": Decimal(c.close),
            "volume": Decimal(c.volume), "trades": c.trades}  # fmt: skip


async def series_of(client: aioredis.Redis) -> dict[int, Candle]:
    members: Any = await client.zrange(SERIES, 0, -1)
    return {c.start: c for c in map(store.decode_candle, members)}


async def control_events(client: aioredis.Redis) -> list[ev.ControlEvent]:
    return [ev.decode(f[b"event"]) for _, f in await log.entries(client, keys.CONTROL_STREAM)]


async def pending(client: aioredis.Redis) -> int:
    return int((await client.xpending(keys.CONTROL_STREAM, gw.GROUP))["pending"])


def folder(client: aioredis.Redis) -> Any:
    """The gap watch's ``fold``: the candle (and indicator) processors, until idle."""
    return lambda: drain(client, ["binance"])


def config(**kw: Any) -> gw.GapWatchConfig:
    kw.setdefault("consumer", "gapwatch-test")
    kw.setdefault("warm_up", False)
    return gw.GapWatchConfig(**kw)


@dataclass
class Outage:
    sim: Simulator
    clock: FastClock
    cut: int  # the bucket the disconnect happened in
    lost: list[int]  # buckets wholly inside the outage
    reconnected: int  # the bucket the adapter reconnected in


@contextlib.asynccontextmanager
async def outage(redis_url: str, monkeypatch: pytest.MonkeyPatch, seed: int) -> AsyncIterator[Outage]:
    """Stream, cut the connection mid-bucket, reconnect, stream on; then fold everything. The simulator
    stays up for the block (its REST API answers the backfill)."""
    clock = FastClock(SPEED)
    # the adapter's lifecycle events carry simulated time, as they would carry the exchange's real time
    monkeypatch.setattr(adapter_base, "now_ns", clock)
    async with Simulator(seed=seed, clock=clock, kline_update_interval=0.02) as sim:
        sim.add_synthetic("binance", ["BTCUSDT"], rate=400)
        client = aioredis.Redis.from_url(redis_url)
        try:
            cfg = AdapterConfig(
                ws_url=sim.urls["binance"].ws_url, symbols=("BTCUSDT",), timeframes=("1m",),
                backoff=Backoff(base_s=1.2, factor=1.0, cap_s=1.2), seed=seed,  # 0.6-1.2 s: 2.4-4.8 sim minutes
            )  # fmt: skip
            adapter = BinanceAdapter(cfg, FrameSink(client, "binance"), ControlEmitter(client))
            stop = asyncio.Event()
            task = asyncio.create_task(adapter.run(stop))
            async with asyncio.timeout(5):
                await sim.wait_connections("binance")
            b0 = (clock.ms() // MIN + 1) * MIN
            cut = b0 + MIN
            await clock.until(cut + MIN // 2)
            await sim.close("binance")
            async with asyncio.timeout(5):
                while len([e for e in adapter.control.emitted if isinstance(e, ev.Connected)]) < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            reconnect = [e for e in adapter.control.emitted if isinstance(e, ev.Connected)][-1]
            reconnected = reconnect.at_ns // 1_000_000 // MIN * MIN
            await clock.until(reconnected + 2 * MIN + 2_000)  # two more buckets closed live
            stop.set()
            async with asyncio.timeout(10):
                await task
            await drain(client, ["binance"])
        finally:
            await client.aclose()
        lost = list(range(cut + MIN, reconnected, MIN))
        assert lost, "the outage must span at least one whole bucket"
        yield Outage(sim, clock, cut, lost, reconnected)


# ------------------------------------------------------------------------------------ pure: triggers


def _ev(kind: type[ev.ControlEvent], at: int, conn: str = "binance-0#1", ex: str = "binance", **kw: Any) -> Any:
    defaults: dict[type[ev.ControlEvent], dict[str, Any]] = {
        ev.Connected: {"url": "ws://x"}, ev.Connecting: {"url": "ws://x"}, ev.Disconnected: {"reason": "closed"},
        ev.Gap: {"kind": "trade_id", "expected": 5, "got": 9}, ev.Heartbeat: {}, ev.Stale: {"silent_s": 1.0},
    }  # fmt: skip
    return kind(exchange=ex, at_ns=at, connection=conn, **{**defaults[kind], **kw})


@pytest.mark.unit
def test_classify_reconnects_gaps_and_what_is_not_a_trigger() -> None:
    first = _ev(ev.Connected, 10, "binance-0#1")
    down = _ev(ev.Disconnected, 20, "binance-0#1")
    failed = _ev(ev.Disconnected, 25, "binance-0#2", reason="connect failed")
    again = _ev(ev.Connected, 30, "binance-0#3")
    history = [failed, _ev(ev.Connecting, 24, "binance-0#2"), _ev(ev.Heartbeat, 22, ""), down, first]  # newest first
    assert gw.classify(again, history) == gw.Trigger(exchange="binance", since_ns=20, until_ns=30)
    assert gw.classify(first, []) is None  # a first connect
    # a rotation: the next connection opens before the previous one closes
    assert gw.classify(_ev(ev.Connected, 40, "binance-0#4"), [_ev(ev.Connecting, 39, "binance-0#4"), again]) is None
    # another shard's or another exchange's disconnect is not this shard's outage
    other = [_ev(ev.Disconnected, 20, "binance-1#1"), _ev(ev.Disconnected, 21, "coinbase-0#1", ex="coinbase"), first]
    assert gw.classify(again, other) is None
    # a disconnect without a previous connect in reach (trimmed): still a reconnect
    assert gw.classify(again, [down]) == gw.Trigger(exchange="binance", since_ns=20, until_ns=30)
    gap = _ev(ev.Gap, 50, symbol="BTCUSDT")
    assert gw.classify(gap, []) == gw.Trigger(
        exchange="binance", since_ns=50, until_ns=50, symbols=frozenset({"BTCUSDT"})
    )
    for quiet in (down, _ev(ev.Heartbeat, 1, ""), _ev(ev.Stale, 1), _ev(ev.Connecting, 1)):
        assert gw.classify(quiet, history) is None


@pytest.mark.unit
def test_merge_coalesces_and_window_starts_at_the_last_closed_candle_before_the_outage() -> None:
    a = gw.Trigger(exchange="binance", since_ns=5 * MIN * 10**6, until_ns=9 * MIN * 10**6, symbols=frozenset({"A"}))
    b = gw.Trigger(exchange="binance", since_ns=7 * MIN * 10**6, until_ns=12 * MIN * 10**6 + 1, symbols=None)
    both = gw.merge(a, b)
    assert (both.since_ns, both.until_ns, both.symbols) == (a.since_ns, b.until_ns, None)
    assert gw.merge(a, a) == a
    with pytest.raises(ValueError):
        gw.merge(a, gw.Trigger(exchange="coinbase", since_ns=0, until_ns=0))
    # up to (not including) the bucket the reconnect happened in: that one is streamed live
    assert gw.window("1m", 4 * MIN, 0, both, cap=100) == (4 * MIN, 12 * MIN)
    assert gw.window("1m", 0, 0, both, cap=5) == (7 * MIN, 12 * MIN)  # never beyond the series bound
    # no closed candle before the outage: from the series' first bucket, or the one the outage began in
    assert gw.window("1m", None, 6 * MIN, both, cap=100) == (5 * MIN, 12 * MIN)
    assert gw.window("1m", None, 2 * MIN, both, cap=100) == (2 * MIN, 12 * MIN)
    assert gw.window("1h", None, 0, both, cap=100) == (0, 0)  # nothing before the hour in progress


# ------------------------------------------------------------------------------ reconnect, redelivery


class Crash(Exception):
    pass


class CrashBeforeAck(gw.GapWatch):
    """Dies after the backfill it triggered is done and before its entries are acknowledged."""

    async def _backfill_exchange(self, trigger: gw.Trigger) -> None:
        await super()._backfill_exchange(trigger)
        raise Crash


@pytest.mark.redis
async def test_reconnect_backfills_the_outage_and_a_redelivered_event_changes_nothing(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with outage(redis_url, monkeypatch, seed=21) as o:
        client = aioredis.Redis.from_url(redis_url)
        try:
            before = await series_of(client)
            events = await control_events(client)
            timeframes = [k.rsplit(":", 1)[1] for k in await store.list_series(client, "binance")]
            async with BinanceRestClient(o.sim.urls["binance"].rest_url) as rest:
                crashed = CrashBeforeAck(client, {"binance": rest}, config())
                with pytest.raises(Crash):
                    await crashed.run(until_idle=True)
                unfolded = await series_of(client)
                await drain(client, ["binance"])  # the frames it appended are in the stream: the fold applies them
                filled = await series_of(client)
                left_pending = await pending(client)
                again = await gw.GapWatch(client, {"binance": rest}, config(), fold=folder(client)).run(until_idle=True)
            after = await series_of(client)
            holes = await find_gaps(client, "binance")
            still_pending = await pending(client)
        finally:
            await client.aclose()
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("Connected") == 2 and "Disconnected" in kinds and "Gap" in kinds  # the aggTrade id jump
    assert not set(o.lost) & set(before) and before[o.cut].closed and before[o.cut].closed_by == "watermark"
    assert unfolded == before  # a backfill appends frames; it writes no candle itself
    # the crashed run filled the outage; its two triggers (reconnect, gap) stayed pending, the rest was acked
    assert left_pending == 2 and crashed.stats.appended >= 1
    assert (SERIES, o.cut) in crashed.stats.suspect  # the cut bucket was asked for again ...
    series = o.sim.binance.series["BTCUSDT"]
    for b in [o.cut, *o.lost]:  # ... and repaired with the lost ones
        c = filled[b]
        assert c.source == "rest" and c.closed and c.closed_by == "rest"
        assert values(c) == values(streamed_close(o.sim, b))  # what the simulator would have streamed
        assert as_decimals(c) == decimal_fold(series, b)
    assert {b: c for b, c in filled.items() if b not in [o.cut, *o.lost]} == {
        b: c for b, c in before.items() if b != o.cut
    }  # live candles untouched
    # redelivered: the same two triggers, coalesced into one round, at most one backfill per stored series (1m
    # and the roll-ups whose window is not empty); nothing missing any more, so REST is not even asked
    assert (again.triggers, again.rounds) == (2, 1)
    done = [r.timeframe for r in again.results]
    assert "1m" in done and len(done) == len(set(done)) and set(done) <= set(timeframes)
    assert all((r.wanted, r.requests, r.written, r.gaps) == (0, 0, [], []) for r in again.results)
    assert after == filled and still_pending == 0 and again.appended == 0 and again.suspect == []
    assert [(r.kind, r.first) for r in holes] == []  # no hole, no marked gap left


@pytest.mark.redis
async def test_the_bucket_the_disconnect_cut_is_repaired_too(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with outage(redis_url, monkeypatch, seed=22) as o:
        client = aioredis.Redis.from_url(redis_url)
        try:
            before = await series_of(client)
            start = len(await log.entries(client, keys.closes_stream("binance")))
            async with BinanceRestClient(o.sim.urls["binance"].rest_url) as rest:
                stats = await gw.GapWatch(client, {"binance": rest}, config(), fold=folder(client)).run(until_idle=True)
            after = await series_of(client)
            events = [
                store.decode_closed(f[b"event"]) for _, f in await log.entries(client, keys.closes_stream("binance"))
            ]
        finally:
            await client.aclose()
    assert before[o.cut].closed_by == "watermark" and values(before[o.cut]) != values(streamed_close(o.sim, o.cut))
    assert values(after[o.cut]) == values(streamed_close(o.sim, o.cut)) and after[o.cut].closed_by == "rest"
    (minute,) = [r for r in stats.results if r.timeframe == "1m"]
    assert minute.repaired == [o.cut] and minute.written == [o.cut, *o.lost]
    fixed = [e for e in events[start:] if e.candle.timeframe == "1m" and e.candle.start == o.cut]
    assert [e.correction for e in fixed] == [True]  # the indicators and roll-ups hear of it


# ------------------------------------------------------------------------------------- unrecoverable


@pytest.mark.redis
async def test_a_gap_rest_cannot_fill_is_marked_and_listed_by_tickfold_gaps(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with outage(redis_url, monkeypatch, seed=23) as o:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await o.sim.rest_429("binance", times=100, retry_after=0)
            async with BinanceRestClient(o.sim.urls["binance"].rest_url, max_retries=1) as rest:
                stats = await gw.GapWatch(client, {"binance": rest}, config()).run(until_idle=True)
            marked: Any = await client.zrange(keys.gaps("binance", "BTC-USDT", "1m"), 0, -1)
            left = await pending(client)
        finally:
            await client.aclose()
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, ["--redis-url", redis_url, "gaps", "binance", "--json"])
    (result,) = [r for r in stats.results if r.timeframe == "1m"]
    assert result.gaps == o.lost and result.written == [] and "429" in result.errors[0]
    assert [int(m) for m in marked] == o.lost and left == 0  # acknowledged: the service went on
    listed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [(r["kind"], r["first"], r["last"], r["buckets"]) for r in listed] == [
        ("marked", o.lost[0], o.lost[-1], len(o.lost))
    ]


# --------------------------------------------------------------------------- warm-up, coalescing, CLI


def book_minutes(sim: Simulator, base: int, minutes: int) -> Series:
    """A Binance market with trades in each of ``minutes`` minutes from ``base`` (ids and times increasing)."""
    inst = instrument("binance", "BTCUSDT")
    series = sim.binance.add(inst)
    trades = [
        Trade(1_000 + i, (base + i * 5_000) * 1000, inst.start_price + (i % 7) * inst.tick, (1 + i % 5) * inst.step,
              i % 2 == 0, 7_000 + i, 7_000 + i)
        for i in range(minutes * 12)
    ]  # fmt: skip
    series.book_many(trades)
    return series


async def put(client: aioredis.Redis, candles: list[Candle]) -> None:
    pipe = client.pipeline(transaction=True)
    for c in candles:
        store.queue_put(pipe, keys.candles(c.exchange, c.symbol, c.timeframe), c, history=5000)
    await pipe.execute()


async def add_events(client: aioredis.Redis, events: list[ev.ControlEvent]) -> None:
    for e in events:
        await client.xadd(keys.CONTROL_STREAM, {"event": ev.encode(e)})


@pytest.mark.redis
async def test_warm_up_on_start_and_a_burst_of_gap_events_is_one_backfill_per_series(redis_url: str) -> None:
    base = (time.time_ns() // 1_000_000 // MIN - 30) * MIN
    async with Simulator(seed=24) as sim:
        book_minutes(sim, base, 20)
        live = [streamed_close(sim, base + m * MIN) for m in range(20) if m not in (8, 9, 10)]
        client = aioredis.Redis.from_url(redis_url)
        try:
            await put(client, live)
            # many gap events of the outage's time (two symbols' names, one unknown to the series)
            at = (base + 11 * MIN + 30_000) * 1_000_000
            await add_events(client, [_ev(ev.Gap, at + i, symbol=s) for i, s in enumerate(["BTCUSDT", "ETHUSDT"] * 5)])
            async with BinanceRestClient(sim.urls["binance"].rest_url) as rest:
                clock = lambda: (base + 20 * MIN + 10_000) * 1_000_000  # noqa: E731
                stats = await gw.GapWatch(
                    client, {"binance": rest}, config(warm_up=True, backfill_history=3), clock=clock,
                    fold=folder(client),
                ).run(until_idle=True)  # fmt: skip
            after = await series_of(client)
        finally:
            await client.aclose()
    (warm,) = stats.warmed  # one stored series; the last 3 closed buckets were already there
    assert warm.wanted == 0 and warm.requests == 0
    assert (stats.triggers, stats.rounds, len(stats.results)) == (10, 1, 1)
    (result,) = stats.results
    assert result.written == [base + m * MIN for m in (8, 9, 10)] and result.requests == 1
    assert all(values(after[b]) == values(streamed_close(sim, b)) for b in result.written)


@pytest.mark.redis
@pytest.mark.postgres
async def test_process_backfill_flag_runs_the_gap_watch_with_the_exchanges_rest_url(
    redis_url: str, pg_dsn: str
) -> None:
    base = (time.time_ns() // 1_000_000 // MIN - 30) * MIN
    async with Simulator(seed=25) as sim:
        book_minutes(sim, base, 12)
        await migrate(pg_dsn)
        await set_urls(pg_dsn, "binance", ws_url=None, rest_url=sim.urls["binance"].rest_url)
        client = aioredis.Redis.from_url(redis_url)
        try:
            await put(client, [streamed_close(sim, base + m * MIN) for m in range(12) if m not in (4, 5)])
            down, up = (base + 4 * MIN - 20_000) * 1_000_000, (base + 6 * MIN + 3_000) * 1_000_000
            second = "binance-0#2"
            await add_events(client, [_ev(ev.Connected, down - 10**12), _ev(ev.Disconnected, down),
                                      _ev(ev.Connecting, up - 1, second), _ev(ev.Connected, up, second)])  # fmt: skip
            env = {**os.environ, "TICKFOLD_BACKFILL_HISTORY": "2"}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tickfold.cli", "--redis-url", redis_url, "--database-url", pg_dsn,
                "process", "--exchange", "binance", "--backfill", "--until-idle",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
            async with asyncio.timeout(60):
                out, err = await proc.communicate()
            # `process --until-idle` folds, runs the gap watch, and folds what the backfill appended
            after = await series_of(client)
            left = await pending(client)
        finally:
            await client.aclose()
    assert proc.returncode == 0, err.decode()
    filled = re.search(r"1 reconnect/gap event\(s\) in 1 round\(s\) filled (\d+) candles", out.decode())
    assert filled and int(filled.group(1)) >= 2, out.decode()
    for b in (base + 4 * MIN, base + 5 * MIN):
        assert after[b].source == "rest" and values(after[b]) == values(streamed_close(sim, b))
    assert left == 0
    assert Settings.load({}).backfill is False and Settings.load({"TICKFOLD_BACKFILL": "1"}).backfill is True


@pytest.mark.redis
async def test_served_live_a_burst_within_the_settle_time_is_one_round_and_a_later_gap_another(redis_url: str) -> None:
    base = (time.time_ns() // 1_000_000 // MIN - 30) * MIN
    async with Simulator(seed=26) as sim:
        book_minutes(sim, base, 12)
        client = aioredis.Redis.from_url(redis_url)
        try:
            await put(client, [streamed_close(sim, base + m * MIN) for m in range(12) if m not in (3, 7)])
            at = (base + 4 * MIN + 1_000) * 1_000_000
            async with BinanceRestClient(sim.urls["binance"].rest_url) as rest:
                watch = gw.GapWatch(client, {"binance": rest}, config(settle_ms=300, block_ms=50))
                stop = asyncio.Event()
                task = asyncio.create_task(watch.run(stop=stop))
                await add_events(client, [_ev(ev.Gap, at + i, symbol="BTCUSDT") for i in range(3)])
                await asyncio.sleep(0.1)
                await add_events(client, [_ev(ev.Gap, at + i, symbol="BTCUSDT") for i in range(3, 6)])
                async with asyncio.timeout(5):
                    while watch.stats.rounds < 1:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
                await add_events(client, [_ev(ev.Gap, (base + 8 * MIN + 5) * 1_000_000, symbol="BTCUSDT")])
                async with asyncio.timeout(5):
                    while watch.stats.rounds < 2:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
                stop.set()
                stats = await task
            left = await pending(client)
        finally:
            await client.aclose()
    assert (stats.triggers, stats.rounds, left) == (7, 2, 0)
    first, second = stats.results
    assert first.written == [base + 3 * MIN] and second.written == [base + 7 * MIN]
