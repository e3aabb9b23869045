"""Backfill and warm-up against the simulator's REST endpoints, on a real Redis; and projections/gaps.py.

Oracles: what the simulator streamed (or would stream: its kline/candle payloads for a bucket) and an
independent ``Decimal`` fold of its trade log. The "live" series is either folded by the real candle
processor from streamed frames, or built from the simulator's own kline/candle frames for its trades.

A backfill appends ``rest_candles`` frames to the raw streams; the candle processor folds them
(``drain``), so every check of the series comes after a drain.
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
from projections import gaps as g
from projections import store
from projections.candles import Candle, CandleBook, apply_snapshot
from projections.rollups import rollup
from projections.snapshots import snapshots
from streams import keys, log
from streams.frames import RestCandle, RestCandlesFrame, decode_frame
from streams.partitions import partition_of, route
from streams.rest import BinanceRestClient, CoinbaseRestClient
from streams.simulator import Simulator
from streams.simulator.markets import Agg, Series, Trade
from streams.simulator.refdata import instrument
from streams.symbols import bundled
from tests.support import all_candles, close_events, drain
from tickfold.commands_gaps import find_gaps
from tickfold.errors import FrameDecodeError

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


def partial_frame(sim: Simulator, symbol: str, start: int, event_ms: int) -> bytes:
    """An open kline frame as streamed at ``event_ms``: the bucket's trades up to then."""
    series = sim.binance.series[symbol]
    agg = Agg(start, start + MIN).add_all(series.window(start, event_ms))
    payload = sim.binance.kline_payload(series, "1m", agg, event_ms, False)
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


def _c(
    start: int,
    *,
    closed: bool = True,
    close: str = "10",
    event_ns: int = 0,
    source: str = "native",
    closed_by: str | None = None,
) -> Candle:
    return Candle(exchange="x", symbol="A-B", timeframe="1m", start=start, open="9", high="11", low="8",
                  close=close, volume="1", closed=closed, event_ns=event_ns, source=source,
                  closed_by=closed_by)  # fmt: skip


def _plan(**kw: Any) -> g.FillPlan:
    args: dict[str, Any] = dict(exchange="x", symbol="A-B", timeframe="1m", stored={}, marked=[], rest={},
                                covered=[], horizon_ms=None, omits_empty=False)  # fmt: skip
    args.update(kw)
    return g.plan_fill(**args)


@pytest.mark.unit
def test_plan_never_overwrites_final_candles_and_replaces_open_only_with_closed() -> None:
    live_closed, live_open = _c(MIN, close="1"), _c(2 * MIN, closed=False, event_ns=10**15)
    rest = {s: _c(s, close="2", event_ns=g.rest_event_ns("1m", s), source="rest") for s in (MIN, 2 * MIN, 3 * MIN)}
    rest[4 * MIN] = _c(4 * MIN, closed=False, source="rest")
    plan = _plan(wanted=[MIN, 2 * MIN, 3 * MIN, 4 * MIN], stored={MIN: live_closed, 2 * MIN: live_open},
                 marked=[MIN, 3 * MIN], rest=rest, covered=rest, horizon_ms=9 * MIN)  # fmt: skip
    assert plan.write == [rest[2 * MIN], rest[3 * MIN]]  # as REST gave them: the fold decides by event time
    assert all(c.source == "rest" and c.closed for c in plan.write)
    assert plan.unmark == [MIN, 3 * MIN] and plan.pending == [4 * MIN] and plan.mark == []


@pytest.mark.unit
def test_plan_repairs_candles_closed_by_the_watermark_with_values_from_before_their_end() -> None:
    during = (MIN + 30_000) * 10**6  # a snapshot taken during the bucket
    cut = _c(MIN, close="1", event_ns=during)
    stored = {
        MIN: msgspec.structs.replace(cut, closed_by="watermark"),
        2 * MIN: msgspec.structs.replace(cut, start=2 * MIN, closed_by="newer"),  # Coinbase: only on request
        3 * MIN: msgspec.structs.replace(cut, start=3 * MIN, closed_by="exchange"),  # the exchange's final
        4 * MIN: _c(4 * MIN, event_ns=(5 * MIN + 1) * 10**6, closed_by="watermark"),  # values from after the end
    }
    assert [s for s, c in stored.items() if g.wants(c, marked=False, repair=False)] == [MIN]
    assert [s for s, c in stored.items() if g.wants(c, marked=False, repair=True)] == [MIN, 2 * MIN]
    rest = {s: _c(s, close="2", event_ns=g.rest_event_ns("1m", s), source="rest") for s in stored}
    plan = _plan(wanted=list(stored), stored=stored, rest=rest, covered=rest, horizon_ms=9 * MIN, repair=[2 * MIN])
    assert [c.start for c in plan.write] == [MIN, 2 * MIN] and plan.pending == [] and plan.mark == []
    # REST could not give a bucket to repair: its values stay, and a later backfill asks again
    plan = _plan(wanted=[MIN], stored=stored, covered=[MIN], horizon_ms=9 * MIN)
    assert plan.write == [] and plan.pending == [MIN] and plan.mark == []


def _binance(start: int, event_ms: int, close: str, closed: bool) -> Candle:
    return Candle(exchange="binance", symbol="BTC-USDT", timeframe="1m", start=start, open="9", high="11",
                  low="8", close=close, volume="1", closed=closed, event_ns=event_ms * 10**6,
                  closed_by="exchange" if closed else None)  # fmt: skip


@pytest.mark.unit
def test_the_rest_event_time_repairs_what_was_taken_during_the_bucket_and_yields_to_the_exchange_final() -> None:
    row = RestCandle(start=MIN, open="9", high="12", low="8", close="3", volume="2")
    frame = RestCandlesFrame(exchange="binance", symbol="BTCUSDT", timeframe="1m", fetched_ns=1, source="t",
                             candles=[row])  # fmt: skip
    ((rest, close_older),) = snapshots("binance", frame, BN)
    assert not close_older and rest.closed and rest.source == "rest" and rest.closed_by == "rest"
    assert rest.event_ns == 2 * MIN * 10**6 - 1 == g.rest_event_ns("1m", MIN)
    during = _binance(MIN, 2 * MIN - 1, "1", closed=False)  # the last snapshot before a disconnect
    final = _binance(MIN, 2 * MIN, "2", closed=True)  # the exchange's final, at (or after) the end
    watermarked = msgspec.structs.replace(during, closed=True, closed_by="watermark")
    for current in (during, watermarked):  # open, or closed by the watermark: repaired by REST
        new, event = apply_snapshot(current, rest)
        assert new == rest and event is not None and event.correction is current.closed
        # ... and a snapshot from during the bucket arriving later loses against it
        assert apply_snapshot(new, during) == (new, None)
    # the exchange's final wins in either order
    a, _ = apply_snapshot(apply_snapshot(during, rest)[0], final)
    b, _ = apply_snapshot(apply_snapshot(during, final)[0], rest)
    assert a == b == final
    # the Coinbase rule: a bucket closed by a newer one is repaired, and stays closed
    book = CandleBook({})
    book.apply(msgspec.structs.replace(during, closed_by=None), close_older=True)
    book.apply(_binance(2 * MIN, 2 * MIN + 1, "5", closed=False), close_older=True)
    assert book.candles[MIN].closed_by == "newer"
    (event,) = book.apply(rest)
    assert event.correction and book.candles[MIN] == rest


@pytest.mark.unit
def test_rest_candles_frames_decode_on_both_exchanges_and_route_to_the_symbols_partition() -> None:
    frames = bf.rest_frames("coinbase", "BTC-USD", "5m", [_c(FIVE, close="7")], fetched_ns=5, source="x")
    (raw,) = frames
    assert raw.startswith(b'{"tickfold":"rest_candles","exchange":"coinbase","symbol":"BTC-USD"')
    frame = decode_frame("coinbase", raw)
    assert isinstance(frame, RestCandlesFrame) and frame.candles[0].close == "7" and frame.candles[0].trades is None
    assert route("coinbase", raw, 7) == partition_of("BTC-USD", 7)
    ((c, _),) = snapshots("coinbase", frame, CB)
    assert (c.symbol, c.timeframe, c.start, c.close, c.closed) == ("BTC-USD", "5m", FIVE, "7", True)
    (raw,) = bf.rest_frames("binance", "ETHUSDT", "1m", [_c(MIN)], fetched_ns=5, source="x")
    assert isinstance(decode_frame("binance", raw), RestCandlesFrame)
    assert route("binance", raw, 7) == partition_of("ETHUSDT", 7)
    with pytest.raises(FrameDecodeError, match="exchange 'binance'"):
        decode_frame("coinbase", raw)  # a frame of another exchange is not folded
    bad = raw.replace(b'"start":60000', b'"start":60001')
    with pytest.raises(FrameDecodeError, match="not the start"):
        snapshots("binance", decode_frame("binance", bad), BN)
    many = bf.rest_frames("binance", "ETHUSDT", "1m", [_c(i * MIN) for i in range(2500)], fetched_ns=5, source="x")
    assert [len(msgspec.json.decode(f)["candles"]) for f in many] == [1000, 1000, 500]


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
            assert await series_of(client, "binance", "BTC-USDT", "1m") == before  # appended, not yet folded
            (_, frame), *_ = await log.entries(client, result.stream, newest_first=True)
            assert frame[b"frame"].startswith(b'{"tickfold":"rest_candles"') and len(result.appended) == 1
            await drain(client, ["binance"])
            await bf.wait_folded(client, [result], timeout_s=1)
            after = await series_of(client, "binance", "BTC-USDT", "1m")
        finally:
            await client.aclose()
    assert result.written == outage and result.gaps == [] and result.errors == [] and result.attempts == 1
    assert result.requests == 1 and result.repaired == []
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
            early_gaps = [base - 3 * MIN, base - 2 * MIN, base - MIN]
            assert await markers(client, "binance", "BTC-USDT", "1m") == early_gaps + outage  # until folded
            await drain(client, ["binance"])
            assert await markers(client, "binance", "BTC-USDT", "1m") == early_gaps  # the fold removed them
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
            await drain(client, ["binance"])
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
                await drain(client, ["coinbase"])
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
            await drain(client, ["binance"])
            after = await series_of(client, "binance", "BTC-USDT", "1m")
        finally:
            await client.aclose()
    assert result.attempts == 2 and calls == 2
    assert after[outage[1]] == late_live  # the write that landed in between is not overwritten
    assert result.written == [outage[0], outage[2]]
    for b in (outage[0], outage[2]):
        assert after[b].source == "rest" and values(after[b]) == values(binance_streamed(sim, "BTCUSDT", b, 0))


@pytest.mark.redis
@pytest.mark.parametrize("rest_first", [False, True], ids=["live-first", "rest-first"])
async def test_live_frames_and_a_backfill_give_the_same_series_in_either_stream_order(
    redis_url: str, rest_first: bool
) -> None:
    base = (time.time_ns() // 1_000_000 // MIN - 30) * MIN
    async with Simulator(seed=7) as sim:
        binance_market(sim, list(range(10)), base, seed=7)
        outage = [base + 3 * MIN, base + 4 * MIN]
        # the live feed: a snapshot from during each outage bucket (stale against REST), a late exchange
        # final for the second (it wins against REST), and every other bucket's final
        live = [binance_frame(sim, "BTCUSDT", b, b + 20_000, closed=False) for b in outage]
        live.append(binance_frame(sim, "BTCUSDT", outage[1], outage[1] + MIN + 900, closed=True))
        live += [binance_frame(sim, "BTCUSDT", base + m * MIN, base + m * MIN + MIN + 5, closed=True)
                 for m in range(9) if base + m * MIN not in outage]  # fmt: skip
        client = aioredis.Redis.from_url(redis_url)
        try:
            partitions = await log.ensure_partitions(client, "binance", 4)
            stream = keys.frames_stream("binance", partition_of("BTCUSDT", partitions))
            if not rest_first:
                await log.append_frames(client, "binance", [(raw, 0) for raw in live])
            async with BinanceRestClient(sim.urls["binance"].rest_url) as rest:
                # what REST serves for the outage, whatever the series holds now
                result = await bf.backfill(client, rest, "binance", "BTC-USDT", "1m", outage[0], outage[-1] + MIN)
            if rest_first:
                await log.append_frames(client, "binance", [(raw, 0) for raw in live])
            await drain(client, ["binance"])
            after = await series_of(client, "binance", "BTC-USDT", "1m")
            order = [f[b"frame"][:12] for _, f in await log.entries(client, stream)]
        finally:
            await client.aclose()
    assert result.stream == stream and result.written == outage
    assert (order.index(b'{"tickfold":') == 0) is rest_first
    first, second = after[outage[0]], after[outage[1]]
    assert first.source == "rest" and first.closed_by == "rest"  # repaired what was taken during the bucket
    assert values(first) == values(binance_streamed(sim, "BTCUSDT", outage[0], 0))
    assert second == binance_streamed(sim, "BTCUSDT", outage[1], outage[1] + MIN + 900)  # the exchange's final


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
                    client, rest, "binance", ["BTC-USDT"], ["5m", "1m"],  # 5m first: the 1m fill comes after
                    count=settings.backfill_history, now_ms=base + 12 * MIN + 30_000,
                )  # fmt: skip
                await drain(client, ["binance"])
                again = await bf.warm_up(
                    client, rest, "binance", ["BTC-USDT"], ["1m"], count=5, now_ms=base + 12 * MIN + 30_000
                )
            one = await series_of(client, "binance", "BTC-USDT", "1m")
            five = await series_of(client, "binance", "BTC-USDT", "5m")
        finally:
            await client.aclose()
    fives, minute = results
    assert minute.written == [base + m * MIN for m in range(7, 12)] and sorted(one) == minute.written
    assert all(values(one[b]) == values(binance_streamed(sim, "BTCUSDT", b, 0)) for b in one)
    first5 = (base + 12 * MIN) // FIVE * FIVE - 5 * FIVE
    # the 5-minute buckets before the first trade: the exchange has nothing there -> gaps, none invented
    rolled = {b // FIVE * FIVE for b in minute.written} - set(fives.written)  # the 5m bucket in progress
    assert all(five[b].source == "rollup" and not five[b].closed for b in rolled)
    assert sorted(set(five) - rolled) == fives.written and set(fives.written) | set(fives.gaps) == {
        first5 + i * FIVE for i in range(5)
    }
    assert all(b + FIVE > base for b in fives.written) and all(b + FIVE <= base for b in fives.gaps)
    # the 1m fill does not turn a REST 5m candle into a roll-up of the few 1m candles it has (a complete
    # roll-up may replace it: the same values)
    series = sim.binance.series["BTCUSDT"]
    for b, c in five.items():
        if b in rolled:
            continue
        k = json.loads(sim.binance.kline_payload(series, "5m", series.fold(b, b + FIVE), b + FIVE, True))["k"]
        assert c.source in ("rest", "rollup") and c.closed
        assert values(c) == (k["o"], k["h"], k["l"], k["c"], k["v"], k["q"], k["n"], k["V"], True)
    assert "rest" in {c.source for c in five.values()}
    assert again[0].wanted == 0 and again[0].requests == 0  # nothing missing: REST is not asked


# ---------------------------------------------------------------- through the fold: roll-ups, events, replay


async def raw_dump(client: aioredis.Redis, exchange_id: str) -> dict[str, list[log.Entry]]:
    partitions = await log.stored_partitions(client, exchange_id) or 0
    return {s: await log.entries(client, s) for s in (keys.frames_stream(exchange_id, p) for p in range(partitions))}


@pytest.mark.redis
async def test_a_backfilled_outage_repairs_the_cut_bucket_updates_roll_ups_and_indicators_and_replays(
    redis_url: str,
) -> None:
    base = (time.time_ns() // 1_000_000 // FIVE - 12) * FIVE
    minutes = 45
    cut, lost = base + 38 * MIN, [base + m * MIN for m in (39, 40, 41)]  # disconnected at 38:40, back at 42:00
    async with Simulator(seed=9) as sim:
        binance_market(sim, list(range(minutes)), base, seed=9)
        live: list[tuple[bytes, int]] = []
        for b in (base + m * MIN for m in range(minutes)):
            if b in lost:
                continue
            live.append((partial_frame(sim, "BTCUSDT", b, b + 30_000), 0))
            if b != cut:
                live.append((binance_frame(sim, "BTCUSDT", b, b + MIN + 50, closed=True), 0))
        client = aioredis.Redis.from_url(redis_url)
        try:
            await log.append_frames(client, "binance", live, partitions=2)
            await drain(client, ["binance"])
            before = await all_candles(client, "binance")
            events_before = len(await close_events(client, "binance"))
            points_before: list[tuple[bytes, float]] = await client.zrange(  # type: ignore[assignment]
                keys.indicator("binance", "BTC-USDT", "1m", "macdv"), 0, -1, withscores=True
            )
            async with BinanceRestClient(sim.urls["binance"].rest_url) as rest:
                result = await bf.backfill(client, rest, "binance", "BTC-USDT", "1m", base, base + minutes * MIN)
            await drain(client, ["binance"])
            after = await all_candles(client, "binance")
            events = (await close_events(client, "binance"))[events_before:]
            points_after: list[tuple[bytes, float]] = await client.zrange(  # type: ignore[assignment]
                keys.indicator("binance", "BTC-USDT", "1m", "macdv"), 0, -1, withscores=True
            )
            dump = await raw_dump(client, "binance")
            # replay: a fresh Redis, the same raw frames (the rest_candles frame included), folded from scratch
            await client.flushall()
            await log.ensure_partitions(client, "binance", len(dump))
            for stream, entries in dump.items():
                for eid, fields in entries:
                    await client.xadd(stream, fields, id=eid)  # type: ignore[arg-type]
            await drain(client, ["binance"])
            replayed = await all_candles(client, "binance")
        finally:
            await client.aclose()
    one = ("BTC-USDT", "1m")
    cut_before = before[(*one, cut)]
    assert cut_before.closed and cut_before.closed_by == "watermark"  # closed with the values of 38:30
    assert values(cut_before) != values(binance_streamed(sim, "BTCUSDT", cut, cut + MIN + 50))
    assert result.written == [cut, *lost] and result.repaired == [cut] and result.gaps == []
    for b in (cut, *lost):  # exactly what the exchange would have streamed as final
        c = after[(*one, b)]
        assert c.source == "rest" and c.closed_by == "rest"
        assert values(c) == values(binance_streamed(sim, "BTCUSDT", b, b + MIN + 50))
    untouched = {k: c for k, c in before.items() if k[1] == "1m" and k[2] != cut}
    assert {k: c for k, c in after.items() if k[1] == "1m" and k[2] not in (cut, *lost)} == untouched
    # events: a correction for the cut bucket, closes for the lost ones, corrections for their roll-ups
    got = {(e.candle.timeframe, e.candle.start, e.correction) for e in events}
    assert {("1m", cut, True)} | {("1m", b, False) for b in lost} <= got
    assert {("5m", base + 35 * MIN, True), ("5m", base + 40 * MIN, True)} <= got
    series = sim.binance.series["BTCUSDT"]
    for start in (base + 35 * MIN, base + 40 * MIN):
        r = after[("BTC-USDT", "5m", start)]
        k = json.loads(sim.binance.kline_payload(series, "5m", series.fold(start, start + FIVE), start + FIVE, True))[
            "k"
        ]
        assert r.source == "rollup" and r.closed
        assert values(r) == (k["o"], k["h"], k["l"], k["c"], k["v"], k["q"], k["n"], k["V"], True)
        assert values(before[("BTC-USDT", "5m", start)]) != values(r)
        parts = [after[(*one, s)] for s in range(start, start + FIVE, MIN)]
        assert values(r) == values(rollup(parts, "5m").candle)
    # MACD-V follows: the lost buckets have points now, and the later points were recomputed
    starts_before = {int(s) for _, s in points_before}
    starts_after = {int(s) for _, s in points_after}
    assert not set(lost) & starts_before and set(lost) <= starts_after
    # the replay of the raw streams gives the same candles, backfill included (invariant 1)
    assert replayed == after
