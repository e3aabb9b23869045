"""The indicator processor on a real Redis: frames -> candles -> MACD-V points and alerts, checked
against TA-Lib composed over the stored candles; redelivery, out-of-order closes and pub/sub."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import numpy as np
import pytest
import redis.asyncio as aioredis
import talib

from processors.indicators import KIND, decode_alert, decode_point
from projections.candles import Candle
from streams import keys, log
from tests.realdata import BINANCE_0404
from tests.support import all_candles, drain, ingest
from tests.synthetic import PRODUCTS, synthetic_day

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def day() -> list[bytes]:
    return synthetic_day(every_ms=90_000)  # ~1,000 1m candles per product: MACD-V warms up on 1m and 15m


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


def talib_macdv(candles: list[Candle]) -> tuple[Any, Any, Any]:
    """The oracle: (EMA12 − EMA26) / ATR26 × 100, signal EMA9 of it, from TA-Lib's own EMA and ATR."""
    high = np.array([float(c.high) for c in candles])
    low = np.array([float(c.low) for c in candles])
    close = np.array([float(c.close) for c in candles])
    line = (talib.EMA(close, 12) - talib.EMA(close, 26)) / talib.ATR(high, low, close, 26) * 100
    first = int(np.argmax(~np.isnan(line)))
    signal = np.full_like(line, np.nan)
    signal[first:] = talib.EMA(line[first:], 9)
    return line, signal, line - signal


async def points(client: aioredis.Redis, symbol: str, tf: str) -> dict[int, Any]:
    members: list[bytes] = await client.zrange(keys.indicator("coinbase", symbol, tf, KIND), 0, -1)  # type: ignore[assignment]
    return {p.start: p for p in map(decode_point, members)}


async def alert_list(client: aioredis.Redis) -> list[Any]:
    return [decode_alert(f[b"alert"]) for _, f in await log.entries(client, keys.alerts_stream("coinbase"))]


async def test_frames_to_candles_to_macdv_and_alerts_match_talib(day: list[bytes], client: aioredis.Redis) -> None:
    await log.append_frames(client, "coinbase", [(f, 0) for f in day])
    await drain(client, ["coinbase"])
    candles = await all_candles(client, "coinbase")
    raised = await alert_list(client)
    assert raised, "a day of random walk crosses its signal line"
    checked = 0
    for symbol in PRODUCTS[:4]:
        for tf in ("1m", "15m"):  # (Coinbase 5m is native: the synthetic day has no candles channel)
            series = sorted((c for (s, t, _), c in candles.items() if s == symbol and t == tf and c.closed),
                            key=lambda c: c.start)  # fmt: skip
            line, signal, hist = talib_macdv(series)
            got = await points(client, symbol, tf)
            defined = [i for i in range(len(series)) if not np.isnan(hist[i])]
            assert defined and set(got) == {series[i].start for i in defined}  # nothing before the warm-up
            for i in defined:
                p = got[series[i].start]
                assert p.macdv == pytest.approx(line[i], rel=1e-9, abs=1e-9)
                assert p.signal == pytest.approx(signal[i], rel=1e-9, abs=1e-9)
                assert p.histogram == pytest.approx(hist[i], rel=1e-9, abs=1e-9)
                checked += 1
            # the crossings TA-Lib's numbers show are exactly the cross alerts raised
            crosses = {
                (series[i].start, "macdv_cross_up" if hist[i] > 0 else "macdv_cross_down")
                for i in defined[1:]
                if (hist[i - 1] <= 0 < hist[i]) or (hist[i - 1] >= 0 > hist[i])
            }
            mine = {(a.start, a.rule) for a in raised if a.symbol == symbol and a.timeframe == tf and "cross" in a.rule}
            assert mine == crosses
    assert checked > 3500
    assert len({a.id for a in raised}) == len(raised)
    assert all(a.source_exchange_id == "coinbase" == a.exchange for a in raised)


async def test_redelivered_and_reordered_closes_change_nothing(day: list[bytes], client: aioredis.Redis) -> None:
    await log.append_frames(client, "coinbase", [(f, 0) for f in day[: len(day) // 3]])
    await drain(client, ["coinbase"])
    before = {s: await points(client, s, "1m") for s in PRODUCTS}
    raised = await alert_list(client)
    # every close delivered again (a crash before the ack): same points, no alert twice
    await client.xgroup_setid(keys.closes_stream("coinbase"), "indicators", "0")
    await drain(client, ["coinbase"])
    assert {s: await points(client, s, "1m") for s in PRODUCTS} == before
    assert await alert_list(client) == raised
    # the same closes again, shuffled, as new entries: still the same
    events = [f[b"event"] for _, f in await log.entries(client, keys.closes_stream("coinbase"))]
    random.Random(3).shuffle(events)
    await client.delete(*[k async for k in client.scan_iter("indicator:*")])
    pipe = client.pipeline(transaction=False)
    for e in events:
        pipe.xadd(keys.closes_stream("coinbase"), {"event": e})
    await pipe.execute()
    await drain(client, ["coinbase"])
    assert {s: await points(client, s, "1m") for s in PRODUCTS} == before
    assert await alert_list(client) == raised


async def test_no_indicator_before_the_warm_up(client: aioredis.Redis) -> None:
    await ingest(client, "binance", BINANCE_0404)  # a few recorded minutes: far fewer than 26 + 9 closes
    await drain(client, ["binance"])
    assert [k async for k in client.scan_iter("indicator:*")] == []
    assert await client.xlen(keys.closes_stream("binance")) > 0
    assert not await client.exists(keys.alerts_stream("binance"))


async def test_alerts_are_published_with_their_source_exchange(day: list[bytes], client: aioredis.Redis) -> None:
    pubsub = client.pubsub()
    await pubsub.subscribe(keys.alerts_channel("coinbase"))
    await pubsub.get_message(timeout=1.0)
    await log.append_frames(client, "coinbase", [(f, 0) for f in day[: len(day) // 4]])
    await drain(client, ["coinbase"])
    received: list[dict[str, Any]] = []
    for _ in range(100_000):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if msg is None:
            if received:
                break
            await asyncio.sleep(0.01)
            continue
        received.append(msgspec.json.decode(msg["data"]))
    await pubsub.aclose()
    durable = await alert_list(client)
    assert received and len(received) == len(durable)
    assert {r["id"] for r in received} == {a.id for a in durable}
    assert all(r["source_exchange_id"] == "coinbase" for r in received)


async def test_indicators_and_alerts_cli(day: list[bytes], client: aioredis.Redis, redis_url: str) -> None:
    import json
    import subprocess
    import sys

    await log.append_frames(client, "coinbase", [(f, 0) for f in day[: len(day) // 4]])
    await drain(client, ["coinbase"])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "tickfold.cli", "--redis-url", redis_url, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    shown = cli("indicators", "coinbase", "BTC-USD", "1m", "--limit", "5", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    stored = sorted((await points(client, "BTC-USD", "1m")).values(), key=lambda p: p.start)[-5:]
    assert [r["start"] for r in rows] == [p.start for p in stored]  # oldest first
    assert [(r["macdv"], r["signal"], r["histogram"]) for r in rows] == [
        (p.macdv, p.signal, p.histogram) for p in stored
    ]
    listed = cli("alerts", "--exchange", "coinbase", "--limit", "100000", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [a["id"] for a in json.loads(listed.stdout)] == [a.id for a in await alert_list(client)]
    assert cli("indicators", "coinbase", "BTC-USD", "1m", "--type", "rsi").returncode != 0


async def _indicators_again(client: aioredis.Redis, batch_size: int) -> tuple[dict[str, Any], set[str]]:
    """Throw the MACD-V projection and the alerts away and fold the whole closes stream again in batches of
    ``batch_size``: the points of every 1m series and the alert ids it raises."""
    stale = [k async for k in client.scan_iter("indicator:coinbase:*")]
    stale += [k async for k in client.scan_iter("indstate:coinbase:*")]
    stale += [k async for k in client.scan_iter("indinput:coinbase:*")]
    await client.delete(*stale, keys.alerts_stream("coinbase"), keys.alert_ids("coinbase"))
    await client.xgroup_setid(keys.closes_stream("coinbase"), "indicators", "0")
    await drain(client, ["coinbase"], batch_size=batch_size)
    return {s: await points(client, s, "1m") for s in PRODUCTS}, {a.id for a in await alert_list(client)}


async def test_alerts_around_a_late_correction_do_not_depend_on_the_batches(
    day: list[bytes], client: aioredis.Redis
) -> None:
    from streams.frames import RestCandle, RestCandlesFrame, encode_tickfold

    await log.append_frames(client, "coinbase", [(f, 0) for f in day[: len(day) // 2]])
    await drain(client, ["coinbase"])
    live_before = {a.id for a in await alert_list(client)}
    candles = [c for (s, tf, _), c in sorted((await all_candles(client, "coinbase")).items()) if s == PRODUCTS[0]]
    one_min = [c for c in candles if c.timeframe == "1m" and c.closed]
    bucket = one_min[len(one_min) // 2]  # a closed candle well past the warm-up, repaired much later (REST)
    repaired = RestCandle(
        start=bucket.start,
        open=bucket.open,
        high=str(float(bucket.high) * 1.5),
        low=str(float(bucket.low) * 0.5),
        close=str(float(bucket.close) * 1.2),
        volume=bucket.volume,
    )
    late = RestCandlesFrame(
        exchange="coinbase", symbol=PRODUCTS[0], timeframe="1m", fetched_ns=0, source="test", candles=[repaired]
    )
    await log.append_frames(client, "coinbase", [(encode_tickfold(late), 0)])
    await drain(client, ["coinbase"])  # the correction comes in a batch of its own, as it did live
    live_points = {s: await points(client, s, "1m") for s in PRODUCTS}
    live_alerts = {a.id for a in await alert_list(client)}
    assert live_before < live_alerts  # the correction changed MACD-V after the bucket: new transitions
    # every close again, one per batch, then all in one batch (the original closes and their correction
    # together): the points and the alerts of the live run, those of the original sequence included
    for batch_size in (1, 100_000):
        got_points, got_alerts = await _indicators_again(client, batch_size)
        assert got_points == live_points
        assert got_alerts == live_alerts, batch_size


async def test_alerts_around_a_late_gap_fill_do_not_depend_on_the_batches(
    day: list[bytes], client: aioredis.Redis
) -> None:
    """A missing bucket filled much later (REST): live, the closes after the gap were folded without it.
    Folding the closes again, one per batch or all in one, with the candle projection already holding
    the fill, must give the live run's points and alerts: the indicator processor reads the candles as
    its close events brought them, not as they are stored now."""
    from streams.frames import RestCandle, RestCandlesFrame, encode_tickfold

    await log.append_frames(client, "coinbase", [(f, 0) for f in day[: len(day) // 2]])
    await drain(client, ["coinbase"])
    live_before = {a.id for a in await alert_list(client)}
    stored = {
        c.start: c
        for (s, tf, _), c in (await all_candles(client, "coinbase")).items()
        if s == PRODUCTS[0] and tf == "1m"
    }
    starts = sorted(stored)
    middle = starts[len(starts) // 2 :]  # well past the warm-up
    missing = next(s for s in range(middle[0], middle[-1], 60_000) if s not in stored)  # a trade every 90 s: gaps
    before = stored[max(s for s in starts if s < missing)]
    filled = RestCandle(
        start=missing,
        open=before.close,
        high=str(float(before.close) * 1.3),
        low=str(float(before.close) * 0.6),
        close=str(float(before.close) * 1.2),
        volume="1",
    )
    late = RestCandlesFrame(
        exchange="coinbase", symbol=PRODUCTS[0], timeframe="1m", fetched_ns=0, source="test", candles=[filled]
    )
    await log.append_frames(client, "coinbase", [(encode_tickfold(late), 0)])
    await drain(client, ["coinbase"])  # the fill comes in a batch of its own, after the closes around it
    live_points = {s: await points(client, s, "1m") for s in PRODUCTS}
    live_alerts = {a.id for a in await alert_list(client)}
    assert missing in live_points[PRODUCTS[0]]  # the fill closed the bucket: a point of its own
    assert live_before < live_alerts  # and it changed MACD-V after it: new transitions
    for batch_size in (1, 7, 100_000):
        got_points, got_alerts = await _indicators_again(client, batch_size)
        assert got_points == live_points, batch_size
        assert got_alerts == live_alerts, batch_size


async def test_states_written_before_the_input_was_kept_are_seeded_from_the_candles(
    day: list[bytes], client: aioredis.Redis
) -> None:
    """An upgrade: kernel states without ``indinput`` (and not marked as tracked) seed the input from the
    stored candles once, so the points after it equal those of a run that kept the input all along."""
    from processors.indicators import _STATE_DECODER

    first, second = day[: len(day) // 3], day[len(day) // 3 : len(day) // 2]
    await log.append_frames(client, "coinbase", [(f, 0) for f in first])
    await drain(client, ["coinbase"])
    await log.append_frames(client, "coinbase", [(f, 0) for f in second])
    await drain(client, ["coinbase"])
    kept = {s: await points(client, s, "1m") for s in PRODUCTS}
    await client.flushdb()

    await log.append_frames(client, "coinbase", [(f, 0) for f in first])
    await drain(client, ["coinbase"])
    inputs = [k async for k in client.scan_iter("indinput:coinbase:*")]
    assert inputs
    await client.delete(*inputs)
    async for key in client.scan_iter("indstate:coinbase:*"):
        raw: Any = await client.get(key)
        state = _STATE_DECODER.decode(raw)
        assert state.tracked
        await client.set(key, msgspec.msgpack.encode(list(msgspec.structs.astuple(state))[:4]))  # the old layout
    await log.append_frames(client, "coinbase", [(f, 0) for f in second])
    await drain(client, ["coinbase"])
    assert {s: await points(client, s, "1m") for s in PRODUCTS} == kept
    assert await client.exists(*inputs) == len(inputs)
