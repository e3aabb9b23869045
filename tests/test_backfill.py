"""Backfill and warm-up against the simulator's REST endpoints, on a real Redis; and projections/gaps.py.

Oracles: what the simulator streamed (or would stream: its kline/candle payloads for a bucket) and an
independent ``Decimal`` fold of its trade log. The "live" series is either folded by the real candle
processor from streamed frames, or built from the simulator's own kline/candle frames for its trades.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from decimal import Decimal
from typing import Any

import msgspec
import pytest
import redis as sync_redis
import redis.asyncio as aioredis
import websockets

from processors import backfill as bf
from processors.candles import CandleProcessor, snapshots
from processors.leases import Fence
from projections import gaps as g
from projections import store
from projections.candles import Candle
from streams import keys, log
from streams.frames import decode_frame
from streams.partitions import partition_of
from streams.rest import BinanceRestClient, CoinbaseRestClient
from streams.simulator import Simulator
from streams.simulator.markets import Series, Trade
from streams.simulator.refdata import instrument
from streams.symbols import bundled
from tests.support import drain
from tickfold.commands_gaps import find_gaps

MIN = 60_000
FIVE = 5 * MIN
BN = bundled("binance")
CB = bundled("coinbase")


# ----------------------------------------------------------------------------------------- helpers


class FastClock:
    """Simulated wall time running ``speed`` times faster, starting ``lead_s`` before a minute boundary."""

    def __init__(self, speed: float, lead_s: float) -> None:
        now = time.time_ns()
        self.start = (now // 60_000_000_000 + 1) * 60_000_000_000 - int(lead_s * 1e9)
        self.t0 = time.monotonic_ns()
        self.speed = speed

    def __call__(self) -> int:
        return self.start + int((time.monotonic_ns() - self.t0) * self.speed)


def book(series: Series, times_ms: list[int], seed: int, tick: int, step: int, price: int) -> None:
    """Trades at the given times (ids and times increasing), a seeded random walk."""
    rng = random.Random(seed)
    trades: list[Trade] = []
    first = 7_000
    for i, t in enumerate(sorted(set(times_ms))):
        price = max(price + rng.choice((-1, 0, 1)) * tick, tick)
        extra = rng.choice((0, 0, 1))
        trades.append(Trade(1_000 + i, t * 1000 + rng.randrange(1000), price, rng.randint(1, 40) * step,
                            rng.random() < 0.5, first, first + extra))  # fmt: skip
        first += extra + 1
    series.book_many(trades)


def oracle(series: Series, start: int, end: int) -> dict[str, Any]:
    """An independent Decimal fold of the simulator's trade log over [start, end)."""
    ts = [t for t in series.trades if start * 1000 <= t.time_us < end * 1000]
    p = [Decimal(t.price).scaleb(-series.price_scale) for t in ts]
    q = [Decimal(t.qty).scaleb(-series.qty_scale) for t in ts]
    return {
        "open": p[0], "high": max(p), "low": min(p), "close": p[-1], "volume": sum(q, Decimal(0)),
        "quote_volume": sum((a * b for a, b in zip(p, q, strict=True)), Decimal(0)),
        "taker_buy_volume": sum((b for t, b in zip(ts, q, strict=True) if not t.buyer_maker), Decimal(0)),
        "trades": sum(t.last - t.first + 1 for t in ts),
    }  # fmt: skip


def as_decimals(c: Candle, fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: (v if isinstance(v := getattr(c, f), int) else Decimal(v)) for f in fields}


def values(c: Candle) -> tuple[object, ...]:
    return (c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.trades, c.taker_buy_volume, c.closed)


def binance_streamed(sim: Simulator, symbol: str, start: int, event_ms: int, closed: bool = True) -> Candle:
    """The candle the live fold makes of the kline frame the simulator streams for a bucket."""
    series = sim.binance.series[symbol]
    payload = sim.binance.kline_payload(series, "1m", series.fold(start, start + MIN), event_ms, closed)
    frame = f'{{"stream":"{symbol.lower()}@kline_1m","data":{payload}}}'
    ((candle, _),) = snapshots("binance", decode_frame("binance", frame), BN)
    return candle


def binance_frame(sim: Simulator, symbol: str, start: int, event_ms: int, closed: bool) -> bytes:
    series = sim.binance.series[symbol]
    payload = sim.binance.kline_payload(series, "1m", series.fold(start, start + MIN), event_ms, closed)
    return f'{{"stream":"{symbol.lower()}@kline_1m","data":{payload}}}'.encode()


def coinbase_streamed(sim: Simulator, product: str, start: int) -> Candle:
    """The candle the live fold makes of the candles frame the simulator streams for a 5-minute bucket."""
    series = sim.coinbase.series[product]
    obj = sim.coinbase.candle_obj(product, series, series.fold(start, start + FIVE))
    frame = json.dumps({"channel": "candles", "client_id": "", "timestamp": "2026-01-01T00:00:00Z",
                        "sequence_num": 0, "events": [{"type": "update", "candles": [obj]}]})  # fmt: skip
    ((candle, _),) = snapshots("coinbase", decode_frame("coinbase", frame), CB)
    return msgspec.structs.replace(candle, closed=True, event_ns=(start + FIVE) * 1_000_000)


async def put(client: aioredis.Redis, candles: list[Candle]) -> None:
    pipe = client.pipeline(transaction=True)
    for c in candles:
        store.queue_put(pipe, keys.candles(c.exchange, c.symbol, c.timeframe), c, history=5000)
    await pipe.execute()


async def series_of(client: aioredis.Redis, ex: str, symbol: str, tf: str) -> dict[int, Candle]:
    members: Any = await client.zrange(keys.candles(ex, symbol, tf), 0, -1)
    return {c.start: c for c in map(store.decode_candle, members)}


async def markers(client: aioredis.Redis, ex: str, symbol: str, tf: str) -> list[int]:
    members: Any = await client.zrange(keys.gaps(ex, symbol, tf), 0, -1)
    return [int(m) for m in members]


def binance_market(sim: Simulator, minutes_traded: list[int], base: int, seed: int) -> Series:
    inst = instrument("binance", "BTCUSDT")
    series = sim.binance.add(inst)
    rng = random.Random(seed)
    times = [base + m * MIN + rng.randrange(MIN) for m in minutes_traded for _ in range(12)]
    book(series, times, seed, inst.tick, inst.step, inst.start_price)
    return series


# ------------------------------------------------------------------------------------ pure: gaps


@pytest.mark.unit
def test_missing_starts_holes_and_runs() -> None:
    assert g.aligned_starts("1m", 30_000, 3 * MIN) == [MIN, 2 * MIN]
    assert g.missing_starts([0, 2 * MIN], "1m", 0, 4 * MIN) == [MIN, 3 * MIN]
    assert g.holes([0, 3 * MIN, MIN], "1m") == [2 * MIN]
    assert g.holes([MIN], "1m") == []
    assert g.runs([5 * MIN, MIN, 2 * MIN, 3 * MIN], "1m") == [(MIN, 3 * MIN, 3), (5 * MIN, 5 * MIN, 1)]
    jan, feb, mar = 1_704_067_200_000, 1_706_745_600_000, 1_709_251_200_000  # 2024-01-01, -02-01, -03-01
    assert g.missing_starts([jan], "1M", jan, mar + 1) == [feb, mar]
    assert g.previous_start("1M", mar) == feb
    monday = 4 * 86_400_000  # 1970-01-05
    assert g.aligned_starts("1w", 0, monday + 1) == [monday]


def _c(start: int, *, closed: bool = True, close: str = "10", event_ns: int = 0, source: str = "native") -> Candle:
    return Candle(exchange="x", symbol="A-B", timeframe="1m", start=start, open="9", high="11", low="8",
                  close=close, volume="1", closed=closed, event_ns=event_ns, source=source)  # fmt: skip


def _plan(**kw: Any) -> g.FillPlan:
    args: dict[str, Any] = dict(exchange="x", symbol="A-B", timeframe="1m", stored={}, marked=[], rest={},
                                covered=[], horizon_ms=None, omits_empty=False)  # fmt: skip
    args.update(kw)
    return g.plan_fill(**args)


@pytest.mark.unit
def test_plan_never_overwrites_closed_and_replaces_open_only_with_closed() -> None:
    live_closed, live_open = _c(MIN, close="1"), _c(2 * MIN, closed=False, event_ns=10**15)
    rest = {s: _c(s, close="2", event_ns=(s + MIN) * 10**6, source="rest") for s in (MIN, 2 * MIN, 3 * MIN)}
    rest[4 * MIN] = _c(4 * MIN, closed=False, source="rest")
    plan = _plan(wanted=[MIN, 2 * MIN, 3 * MIN, 4 * MIN], stored={MIN: live_closed, 2 * MIN: live_open},
                 marked=[MIN, 3 * MIN], rest=rest, covered=rest, horizon_ms=9 * MIN)  # fmt: skip
    assert [c.start for c in plan.write] == [2 * MIN, 3 * MIN]
    assert all(c.source == "rest" and c.closed for c in plan.write)
    assert plan.write[0].event_ns == 10**15  # not older than the open candle it replaces
    assert plan.unmark == [MIN, 3 * MIN] and plan.pending == [4 * MIN] and plan.mark == []


@pytest.mark.unit
def test_plan_marks_only_what_is_over_and_unobtainable() -> None:
    wanted = [MIN, 2 * MIN, 3 * MIN]
    # Binance answered (covered) without the buckets: over ones are gaps, the rest pending
    plan = _plan(wanted=wanted, covered=wanted, horizon_ms=3 * MIN)
    assert plan.mark == [MIN, 2 * MIN] and plan.pending == [3 * MIN] and plan.write == []
    # nothing proves time has passed: nothing is marked
    assert _plan(wanted=wanted, covered=wanted).pending == wanted
    # a failed fetch (not covered): over buckets are gaps, for Coinbase too
    plan = _plan(wanted=wanted, stored={0: _c(0)}, horizon_ms=10 * MIN, omits_empty=True)
    assert plan.mark == wanted and plan.write == []


@pytest.mark.unit
def test_plan_coinbase_empty_bucket_needs_coverage_a_known_price_and_distance() -> None:
    rest = {4 * MIN: _c(4 * MIN, close="7", source="rest")}
    cover = [MIN, 2 * MIN, 3 * MIN, 4 * MIN]
    plan = _plan(wanted=[MIN, 2 * MIN, 3 * MIN, 4 * MIN], stored={0: _c(0, close="5")}, rest=rest,
                 covered=cover, horizon_ms=5 * MIN, omits_empty=True)  # fmt: skip
    assert plan.empty == [MIN, 2 * MIN, 3 * MIN] and [c.start for c in plan.write] == cover
    flat = plan.write[0]
    assert (flat.open, flat.high, flat.low, flat.close, flat.volume, flat.closed) == ("5", "5", "5", "5", "0", True)
    # no previous close: a gap, not a made-up price
    plan = _plan(wanted=[MIN], rest=rest, covered=cover, horizon_ms=5 * MIN, omits_empty=True)
    assert plan.mark == [MIN] and plan.write == []
    # the newest bucket just over, nothing later came back: maybe not published yet
    plan = _plan(wanted=[MIN], stored={0: _c(0)}, covered=[MIN], horizon_ms=2 * MIN + 1, omits_empty=True)
    assert plan.pending == [MIN]
    plan = _plan(wanted=[MIN], stored={0: _c(0)}, covered=[MIN], horizon_ms=3 * MIN, omits_empty=True)
    assert plan.empty == [MIN]


# ------------------------------------------------------------------------- Binance, streamed outage


@pytest.mark.redis
async def test_binance_outage_is_filled_with_exactly_what_the_simulator_streamed(redis_url: str) -> None:
    clock = FastClock(speed=120, lead_s=1)
    async with Simulator(seed=11, clock=clock, kline_update_interval=0.05) as sim:
        sim.add_synthetic("binance", ["BTCUSDT"], rate=300)
        url = f"{sim.urls['binance'].ws_url}/stream?streams=btcusdt@kline_1m"
        frames: list[tuple[bytes, int]] = []
        async with websockets.connect(url, max_queue=None) as ws:
            async with asyncio.timeout(5):
                await sim.wait_connections("binance")
            b0 = (clock() // 1_000_000 // MIN + 1) * MIN
            last = b0 + 7 * MIN
            async with asyncio.timeout(30):
                while True:
                    text = str(await ws.recv())
                    frames.append((text.encode(), time.time_ns()))
                    k = json.loads(text)["data"]["k"]
                    if k["t"] == last and k["x"]:
                        break
        outage = [b0 + 2 * MIN, b0 + 3 * MIN, b0 + 4 * MIN]
        streamed_close = {}  # bucket -> the closing kline as streamed (the oracle)
        kept: list[tuple[bytes, int]] = []
        for raw, ns in frames:
            k = json.loads(raw)["data"]["k"]
            if k["x"]:
                streamed_close[k["t"]] = k
            if k["t"] not in outage:
                kept.append((raw, ns))
        client = aioredis.Redis.from_url(redis_url)
        try:
            await log.append_frames(client, "binance", kept)
            await drain(client, ["binance"])
            before = await series_of(client, "binance", "BTC-USDT", "1m")
            assert not set(outage) & set(before) and {b0 + MIN, b0 + 5 * MIN} <= set(before)
            async with BinanceRestClient(sim.urls["binance"].rest_url) as rest:
                result = await bf.backfill(client, rest, "binance", "BTC-USDT", "1m", b0, last + MIN)
            after = await series_of(client, "binance", "BTC-USDT", "1m")
        finally:
            await client.aclose()
    assert result.written == outage and result.gaps == [] and result.errors == [] and result.attempts == 1
    assert result.requests == 1
    fields = ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_volume", "trades")
    series = sim.binance.series["BTCUSDT"]
    for b in outage:
        c, k = after[b], streamed_close[b]
        assert c.source == "rest" and c.closed
        streamed = (k["o"], k["h"], k["l"], k["c"], k["v"], k["q"], k["n"], k["V"], True)
        assert values(c) == streamed  # the exact strings the live feed would have folded
        assert as_decimals(c, fields) == oracle(series, b, b + MIN)
    for b, c in before.items():  # live candles untouched
        assert after[b] == c


# ---------------------------------------------------------------- Binance, unrecoverable and empty


@pytest.mark.redis
async def test_binance_errors_mark_gaps_then_a_later_backfill_fills_and_unmarks(redis_url: str) -> None:
    base = (time.time_ns() // 1_000_000 // MIN - 40) * MIN
    async with Simulator(seed=3) as sim:
        binance_market(sim, list(range(12)), base, seed=3)
        outage = [base + 4 * MIN, base + 5 * MIN]
        live = [binance_streamed(sim, "BTCUSDT", base + m * MIN, base + m * MIN + MIN + 50)
                for m in range(12) if base + m * MIN not in outage]  # fmt: skip
        client = aioredis.Redis.from_url(redis_url)
        try:
            await put(client, live)
            await sim.rest_429("binance", times=10, retry_after=0)
            async with BinanceRestClient(sim.urls["binance"].rest_url, max_retries=2) as rest:
                failed = await bf.backfill(client, rest, "binance", "BTC-USDT", "1m", base, base + 12 * MIN)
                assert failed.gaps == outage and failed.written == [] and len(failed.errors) == 1
                assert "429" in failed.errors[0]
                assert await markers(client, "binance", "BTC-USDT", "1m") == outage
                assert set(await series_of(client, "binance", "BTC-USDT", "1m")) == {c.start for c in live}
                listed = await find_gaps(client, "binance")
                assert [(r.kind, r.first, r.last, r.buckets) for r in listed] == [("marked", *outage, 2)]
                sim.binance_rest.fault.times = 0
                # a range before the first trade: the simulator has no data there -> marked, not invented
                early = await bf.backfill(client, rest, "binance", "BTC-USDT", "1m", base - 3 * MIN, base)
                assert early.gaps == [base - 3 * MIN, base - 2 * MIN, base - MIN] and early.written == []
                filled = await bf.backfill(client, rest, "binance", "BTC-USDT", "1m", base, base + 12 * MIN)
            assert filled.written == outage and filled.unmarked == outage and filled.gaps == []
            assert await markers(client, "binance", "BTC-USDT", "1m") == [base - 3 * MIN, base - 2 * MIN, base - MIN]
            after = await series_of(client, "binance", "BTC-USDT", "1m")
        finally:
            await client.aclose()
    for b in outage:
        assert values(after[b]) == values(binance_streamed(sim, "BTCUSDT", b, b + MIN + 50))


@pytest.mark.redis
async def test_binance_zero_volume_klines_become_confirmed_empty_candles(redis_url: str) -> None:
    base = (time.time_ns() // 1_000_000 // MIN - 30) * MIN
    traded = [0, 1, 2, 5, 6, 7]  # a quiet spell: minutes 3 and 4 without trades
    async with Simulator(seed=4) as sim:
        series = binance_market(sim, traded, base, seed=4)
        live = [binance_streamed(sim, "BTCUSDT", base + m * MIN, base + m * MIN + MIN + 10) for m in traded]
        client = aioredis.Redis.from_url(redis_url)
        try:
            await put(client, live)
            async with BinanceRestClient(sim.urls["binance"].rest_url) as rest:
                result = await bf.backfill(client, rest, "binance", "BTC-USDT", "1m", base, base + 8 * MIN)
            after = await series_of(client, "binance", "BTC-USDT", "1m")
        finally:
            await client.aclose()
    quiet = [base + 3 * MIN, base + 4 * MIN]
    assert result.written == quiet and result.gaps == [] and result.pending == []
    last = [t for t in series.trades if t.time_us < quiet[0] * 1000][-1]
    price = f"{Decimal(last.price).scaleb(-series.price_scale):.8f}"
    for b in quiet:
        c = after[b]
        assert (c.open, c.high, c.low, c.close) == (price,) * 4 == (after[base + 2 * MIN].close,) * 4
        assert (c.volume, c.quote_volume, c.trades, c.taker_buy_volume) == ("0.00000000", "0.00000000", 0, "0.00000000")
        assert c.closed and c.source == "rest"


# ------------------------------------------------------------------------------------------ Coinbase


@pytest.mark.redis
async def test_coinbase_outage_filled_quiet_bucket_confirmed_empty_tail_pending(redis_url: str) -> None:
    base = (time.time_ns() // 1_000_000 // FIVE - 30) * FIVE
    traded = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11]  # bucket 4 has no trades
    outage = [base + 7 * FIVE, base + 8 * FIVE]
    async with Simulator(seed=5) as sim:
        inst = instrument("coinbase", "BTC-USD")
        series = sim.coinbase.add(inst)
        rng = random.Random(5)
        times = [base + b * FIVE + rng.randrange(FIVE) for b in traded for _ in range(15)]
        book(series, times, 5, inst.tick, inst.step, inst.start_price)
        live = [coinbase_streamed(sim, "BTC-USD", base + b * FIVE) for b in traded if base + b * FIVE not in outage]
        client = aioredis.Redis.from_url(redis_url)
        try:
            await put(client, live)
            async with CoinbaseRestClient(sim.urls["coinbase"].rest_url) as rest:
                result = await bf.backfill(client, rest, "coinbase", "BTC-USD", "5m", base - FIVE, base + 14 * FIVE)
                after = await series_of(client, "coinbase", "BTC-USD", "5m")
                # with an exchange-time estimate the quiet tail is over by more than a bucket: empty
                now_ms = time.time_ns() // 1_000_000
                tail = await bf.backfill(
                    client, rest, "coinbase", "BTC-USD", "5m", base + 12 * FIVE, base + 14 * FIVE, now_ms=now_ms
                )
        finally:
            await client.aclose()
    quiet = base + 4 * FIVE
    assert result.written == [quiet, *outage] and result.empty == [quiet]
    assert result.gaps == [base - FIVE]  # before the first trade: empty at what price? a gap
    assert result.pending == [base + 12 * FIVE, base + 13 * FIVE]  # nothing shows the exchange is past them
    for b in outage:
        c = after[b]
        assert c.source == "rest" and c.closed
        assert values(c) == values(coinbase_streamed(sim, "BTC-USD", b))
        assert as_decimals(c, ("open", "high", "low", "close", "volume")) == {
            k: v for k, v in oracle(series, b, b + FIVE).items() if k in ("open", "high", "low", "close", "volume")
        }
    flat = after[quiet]
    prev = after[base + 3 * FIVE].close
    assert (flat.open, flat.high, flat.low, flat.close, flat.volume, flat.closed) == (prev, prev, prev, prev, "0", True)
    assert tail.empty == [base + 12 * FIVE, base + 13 * FIVE] and tail.gaps == []


# ------------------------------------------------------------------------------------------ racing


@pytest.mark.redis
async def test_a_live_write_during_the_backfill_commit_makes_it_replan_and_survives(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = (time.time_ns() // 1_000_000 // MIN - 30) * MIN
    async with Simulator(seed=6) as sim:
        binance_market(sim, list(range(10)), base, seed=6)
        outage = [base + 3 * MIN, base + 4 * MIN, base + 5 * MIN]
        live = [binance_streamed(sim, "BTCUSDT", base + m * MIN, base + m * MIN + MIN + 5)
                for m in range(10) if base + m * MIN not in outage]  # fmt: skip
        late_live = binance_streamed(sim, "BTCUSDT", outage[1], outage[1] + MIN + 900)  # the live close arrives
        real_plan = g.plan_fill
        calls = 0

        def racing_plan(**kw: Any) -> g.FillPlan:
            nonlocal calls
            calls += 1
            if calls == 1:  # between the backfill's WATCH + read and its EXEC, another writer commits
                other = sync_redis.Redis.from_url(redis_url)
                pipe = other.pipeline(transaction=True)
                store.queue_put(pipe, keys.candles("binance", "BTC-USDT", "1m"), late_live, history=5000)
                pipe.execute()
                other.close()
            return real_plan(**kw)

        client = aioredis.Redis.from_url(redis_url)
        try:
            await put(client, live)
            monkeypatch.setattr(bf, "plan_fill", racing_plan)
            async with BinanceRestClient(sim.urls["binance"].rest_url) as rest:
                result = await bf.backfill(client, rest, "binance", "BTC-USDT", "1m", base, base + 10 * MIN)
            after = await series_of(client, "binance", "BTC-USDT", "1m")
        finally:
            await client.aclose()
    assert result.attempts == 2 and calls == 2
    assert after[outage[1]] == late_live  # the write that landed in between is not overwritten
    assert result.written == [outage[0], outage[2]]
    for b in (outage[0], outage[2]):
        assert after[b].source == "rest" and values(after[b]) == values(binance_streamed(sim, "BTCUSDT", b, 0))


@pytest.mark.redis
async def test_a_live_batch_that_read_before_a_backfill_commit_refolds_on_top_of_it(redis_url: str) -> None:
    base = (time.time_ns() // 1_000_000 // MIN - 30) * MIN
    async with Simulator(seed=7) as sim:
        binance_market(sim, list(range(10)), base, seed=7)
        outage = [base + 3 * MIN, base + 4 * MIN]
        live = [binance_streamed(sim, "BTCUSDT", base + m * MIN, base + m * MIN + MIN + 5)
                for m in range(9) if base + m * MIN not in outage]  # fmt: skip
        client = aioredis.Redis.from_url(redis_url)
        try:
            await put(client, live)
            partitions = await log.ensure_partitions(client, "binance", 4)
            p = partition_of("BTCUSDT", partitions)
            stream = keys.frames_stream("binance", p)
            # a late, stale open snapshot of an outage bucket (taken during it) and the next bucket, open
            stale = binance_frame(sim, "BTCUSDT", outage[0], outage[0] + 20_000, closed=False)
            newest = binance_frame(sim, "BTCUSDT", base + 9 * MIN, base + 9 * MIN + 30_000, closed=False)
            for raw in (stale, newest):
                await client.xadd(stream, {"frame": raw, "recv_ns": 0})
            entries = await log.entries(client, stream)
            lease = keys.lease("candles", "binance", p)
            await client.set(lease, b"token")
            rest = BinanceRestClient(sim.urls["binance"].rest_url)
            backfills: list[bf.BackfillResult] = []

            class Racing(CandleProcessor):
                async def _load(self, c: aioredis.Redis, plan: Any, due: Any, scope: Any) -> Any:
                    loaded = await super()._load(c, plan, due, scope)
                    if not backfills:  # the backfill commits after this batch read the series
                        backfills.append(
                            await bf.backfill(client, rest, "binance", "BTC-USDT", "1m", base, base + 9 * MIN)
                        )
                    return loaded

            proc = Racing("binance", p, BN, history=5000)
            await proc.handle(client, entries, Fence(lease, b"token"))
            await rest.aclose()
            after = await series_of(client, "binance", "BTC-USDT", "1m")
        finally:
            await client.aclose()
    (filled,) = backfills
    assert filled.written == outage
    for b in outage:  # the backfill's closed candles survived the live batch (its stale snapshot lost)
        assert after[b].source == "rest" and after[b].closed
        assert values(after[b]) == values(binance_streamed(sim, "BTCUSDT", b, 0))
    assert after[base + 9 * MIN].source == "native" and not after[base + 9 * MIN].closed  # the live write too


@pytest.mark.redis
async def test_warm_up_backfills_the_last_n_closed_candles_per_symbol_and_timeframe(redis_url: str) -> None:
    from tickfold.settings import Settings

    settings = Settings.load({"TICKFOLD_BACKFILL_HISTORY": "5"})
    assert Settings.load({}).backfill_history == 300 and settings.backfill_history == 5
    base = (time.time_ns() // 1_000_000 // MIN - 30) * MIN
    async with Simulator(seed=8) as sim:
        binance_market(sim, list(range(14)), base, seed=8)
        client = aioredis.Redis.from_url(redis_url)
        try:
            async with BinanceRestClient(sim.urls["binance"].rest_url) as rest:
                results = await bf.warm_up(
                    client, rest, "binance", ["BTC-USDT"], ["1m", "5m"],
                    count=settings.backfill_history, now_ms=base + 12 * MIN + 30_000,
                )  # fmt: skip
                again = await bf.warm_up(
                    client, rest, "binance", ["BTC-USDT"], ["1m"], count=5, now_ms=base + 12 * MIN + 30_000
                )
            one = await series_of(client, "binance", "BTC-USDT", "1m")
            five = await series_of(client, "binance", "BTC-USDT", "5m")
        finally:
            await client.aclose()
    minute, fives = results
    assert minute.written == [base + m * MIN for m in range(7, 12)] and sorted(one) == minute.written
    assert all(values(one[b]) == values(binance_streamed(sim, "BTCUSDT", b, 0)) for b in one)
    first5 = (base + 12 * MIN) // FIVE * FIVE - 5 * FIVE
    # the 5-minute buckets before the first trade: the exchange has nothing there -> gaps, none invented
    assert sorted(five) == fives.written and set(fives.written) | set(fives.gaps) == {
        first5 + i * FIVE for i in range(5)
    }
    assert all(b + FIVE > base for b in fives.written) and all(b + FIVE <= base for b in fives.gaps)
    assert again[0].wanted == 0 and again[0].requests == 0  # nothing missing: REST is not asked
