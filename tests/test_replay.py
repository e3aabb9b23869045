"""Replay on real servers: the live processors fold generated and recorded frames, then a replay of
sub-ranges must give exactly the candles, MACD-V points (bit for bit) and alerts (same ids) the live run
stored for that range; paced, warm-up and to-the-end replays; the source across a trimmed stream; ranges
that hold nothing refused; the pandas hand-off."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from processors.replay import ReplayNoData, ReplayOptions, horizon_ms
from processors.replay_source import ReplayGapError
from projections import store
from streams import keys, log
from tests.realdata import BINANCE_0404, COINBASE_AT
from tests.replay_support import (
    HOUR,
    RANGES,
    SETTINGS,
    client,
    day,
    expected,
    live_run,
    target,
)
from tests.support import all_candles, drain, ingest
from tests.synthetic import DAY_START_MS
from tickfold.errors import ConfigError
from tickfold.replay import replay_into

pytestmark = [pytest.mark.redis, pytest.mark.replay]
__all__ = ["client", "day", "target"]  # fixtures


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


async def test_replay_equals_a_live_run_that_folded_in_chunks(
    day: list[bytes], client: aioredis.Redis, target: aioredis.Redis
) -> None:
    await live_run(client, "coinbase", day, chunks=8)  # (8 splits batches where the closed_by of 1h roll-ups differ)
    await check_sub_ranges(client, target, day)


async def _close_sequences(client: aioredis.Redis) -> dict[tuple[str, str], list[tuple[int, bool, str]]]:
    """Each series' close events, in stream order: (start, correction, close)."""
    out: dict[tuple[str, str], list[tuple[int, bool, str]]] = {}
    for _, fields in await log.entries(client, keys.closes_stream("coinbase")):
        e = store.decode_closed(fields[b"event"])
        out.setdefault((e.candle.symbol, e.candle.timeframe), []).append((e.candle.start, e.correction, e.candle.close))
    return out


async def test_each_series_closes_in_the_same_order_however_the_frames_were_batched(
    day: list[bytes], client: aioredis.Redis
) -> None:
    """The indicator processor folds a series' closes in stream order, so that order must not depend on the
    batching. Eight chunks put a batch boundary at 21:00, where 20:59 has no trade: the 20:45 15m bucket
    (its last base candle never came) closes by watermark in the batch that also closes 21:00 and later
    from their base; it must still come before them, as it does when one batch holds it all."""
    sequences = []
    for chunks in (1, 8):
        await client.flushdb()
        await live_run(client, "coinbase", day, chunks=chunks)
        sequences.append(await _close_sequences(client))
    assert sequences[0].keys() == sequences[1].keys()
    for series, events in sequences[0].items():
        assert sequences[1][series] == events, series


@pytest.mark.parametrize(
    ("exchange_id", "path", "symbols"),
    [
        ("binance", BINANCE_0404, {"BTC-USDT", "ETH-USDT", "DOT-USDT"}),  # klines (x: true) + aggTrades
        ("coinbase", COINBASE_AT, {"BTC-USD", "ETH-USD"}),  # native 5m candles + market_trades (1m)
    ],
)
async def test_replay_of_recorded_sessions(
    exchange_id: str, path: Path, symbols: set[str], client: aioredis.Redis, target: aioredis.Redis
) -> None:
    await ingest(client, exchange_id, path)
    await drain(client, [exchange_id])
    live = await all_candles(client, exchange_id)
    lo, hi = min(s for _, _, s in live), max(s for _, _, s in live) + 60_000
    result, stats = await replay_into(client, target, SETTINGS, exchange_id, ReplayOptions(start_ms=lo, end_ms=hi))
    assert {(c.symbol, c.timeframe, c.start): c for c in result.candles} == live
    assert {c.symbol for c in result.candles} == symbols
    assert stats.frames == sum([await client.xlen(keys.frames_stream(exchange_id, p)) for p in range(4)])


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


# --------------------------------------------------------------------------------------- pandas hand-off


async def test_replay_frame_hands_a_dataframe_with_macdv_columns(
    day: list[bytes], client: aioredis.Redis, redis_url: str
) -> None:
    import asyncio

    from tickfold.replay import replay_frame

    await live_run(client, "coinbase", day)
    candles, points, _ = await expected(client, "coinbase", DAY_START_MS + 10 * HOUR, DAY_START_MS + 12 * HOUR)
    # the README's example (a synchronous call: run it off the event loop the test runs on)
    df = await asyncio.to_thread(
        replay_frame, "coinbase", "2026-08-09T10:00Z", "2026-08-09T12:00Z", redis_url=redis_url, symbols=["BTC-USD"]
    )
    btc = df[(df.symbol == "BTC-USD") & (df.timeframe == "15m")].set_index("time")
    assert len(btc) == 8 and str(df.time.dt.tz) == "UTC" and btc.index.is_monotonic_increasing
    for t, row in btc.iterrows():
        start = int(t.timestamp() * 1000)  # type: ignore[attr-defined]
        c, p = candles[("BTC-USD", "15m", start)], points[("BTC-USD", "15m", start)]
        assert (row.open, row.high, row.low, row.close, row.volume) == tuple(
            float(v) for v in (c.open, c.high, c.low, c.close, c.volume)
        )
        assert (row.macdv, row.signal, row.histogram) == (p.macdv, p.signal, p.histogram)
    assert set(df.symbol) == {"BTC-USD"} and len(df) == sum(1 for k in candles if k[0] == "BTC-USD")


async def test_the_source_follows_trimming_while_it_reads(client: aioredis.Redis, pg_dsn: str) -> None:
    from migrations.runner import migrate
    from processors.archiver import ArchiverConfig, run_archiver
    from processors.replay_source import batches, plan
    from processors.runner import RunnerConfig

    await migrate(pg_dsn)
    stream = keys.frames_stream("coinbase", 0)
    frames = [(f"frame {i}".encode(), i) for i in range(300)]
    archiver = ArchiverConfig(runner=RunnerConfig(consumer="t", block_ms=50, lease_ttl_ms=1000))
    await log.append_frames(client, "coinbase", frames[:150], partitions=1)
    await run_archiver(client, pg_dsn, ["coinbase"], archiver, until_idle=True)  # 0..149 archived
    await log.append_frames(client, "coinbase", frames[150:], partitions=1)
    ids = [eid for eid, _ in await log.entries(client, stream)]
    await client.xtrim(stream, minid=ids[100].decode(), approximate=False)  # 0..99 only in the archive now
    sources = await plan(client, "coinbase", pg_dsn)
    got: list[log.Entry] = []
    async for chunk in batches(client, sources, sources.parts[0], size=50):
        got.extend(chunk)
        if len(got) == 200:  # while the stream is being read: the archiver goes on and trimming follows it
            await run_archiver(client, pg_dsn, ["coinbase"], archiver, until_idle=True)
            await client.xtrim(stream, minid=ids[280].decode(), approximate=False)
    assert [e[0] for e in got] == ids and [e[1][b"frame"] for e in got] == [f for f, _ in frames]
    # the same without the archive: its oldest entries are gone, so it refuses
    alone = await plan(client, "coinbase", None)
    with pytest.raises(ReplayGapError, match=r"\d+ entries had been trimmed .* no archive is configured: it holds 0"):
        [e async for e in batches(client, alone, alone.parts[0], size=50)]


async def test_speed_paces_the_fold_by_event_time(
    day: list[bytes], client: aioredis.Redis, target: aioredis.Redis
) -> None:
    import time

    await live_run(client, "coinbase", day)
    lo, hi = DAY_START_MS, DAY_START_MS + 20 * 60_000
    fast, _ = await replay_into(client, target, SETTINGS, "coinbase", ReplayOptions(lo, hi, timeframes=("1m",)))
    await target.flushdb()
    began = time.monotonic()
    paced, stats = await replay_into(
        client, target, SETTINGS, "coinbase", ReplayOptions(lo, hi, timeframes=("1m",), speed=1800.0)
    )
    took = time.monotonic() - began
    assert stats.first_event_ms is not None and stats.last_event_ms is not None
    span_s = (stats.last_event_ms - stats.first_event_ms) / 1000  # ~21 minutes of event time, at 1800 x
    assert span_s / 1800 - 0.15 <= took <= span_s / 1800 + 5  # (the last batch may start up to 0.1 s early)
    assert paced.candles == fast.candles and paced.points == fast.points and paced.alerts == fast.alerts


async def test_warmup_starts_later_and_is_approximate(
    day: list[bytes], client: aioredis.Redis, target: aioredis.Redis
) -> None:
    await live_run(client, "coinbase", day)
    lo, hi = DAY_START_MS + 10 * HOUR, DAY_START_MS + 12 * HOUR
    candles, points, _ = await expected(client, "coinbase", lo, hi, ("1m",))
    options = ReplayOptions(lo, hi, timeframes=("1m",), warmup_ms=HOUR)
    result, stats = await replay_into(client, target, SETTINGS, "coinbase", options)
    assert stats.first_event_ms is not None and lo - HOUR <= stats.first_event_ms < lo - HOUR + 90_000
    assert stats.skipped_warmup > 0
    # 1m trade candles need only their own minute: exact; MACD-V seeded an hour before the range: not
    assert {(c.symbol, c.timeframe, c.start): c for c in result.candles} == candles
    assert result.points.keys() <= points.keys() and result.points != points


async def test_to_end_folds_a_late_backfill_of_the_range(
    day: list[bytes], client: aioredis.Redis, target: aioredis.Redis
) -> None:
    from streams.frames import RestCandle, RestCandlesFrame, encode_tickfold

    await live_run(client, "coinbase", day)
    lo, hi = DAY_START_MS + 10 * HOUR, DAY_START_MS + 11 * HOUR
    bucket = lo + 5 * 60_000
    repaired = RestCandle(start=bucket, open="1", high="3", low="0.5", close="2", volume="7")
    late = RestCandlesFrame(exchange="coinbase", symbol="BTC-USD", timeframe="1m", fetched_ns=0, source="test",
                            candles=[repaired])  # fmt: skip
    await log.append_frames(client, "coinbase", [(encode_tickfold(late), 0)])  # hours of event time after the range
    await drain(client, ["coinbase"])
    candles, points, alerts = await expected(client, "coinbase", lo, hi, ("1m",))
    assert candles[("BTC-USD", "1m", bucket)].close == "2"
    settled, _ = await replay_into(client, target, SETTINGS, "coinbase", ReplayOptions(lo, hi, timeframes=("1m",)))
    got = {(c.symbol, c.timeframe, c.start): c for c in settled.candles}
    assert got.get(("BTC-USD", "1m", bucket)) != candles[("BTC-USD", "1m", bucket)]  # folded up to the horizon only
    assert {k: c for k, c in got.items() if k[0] != "BTC-USD"} == {
        k: c for k, c in candles.items() if k[0] != "BTC-USD"
    }
    await target.flushdb()
    options = ReplayOptions(lo, hi, timeframes=("1m",), to_end=True)
    everything, _ = await replay_into(client, target, SETTINGS, "coinbase", options)
    assert {(c.symbol, c.timeframe, c.start): c for c in everything.candles} == candles
    assert everything.points == points
    assert sorted(everything.alerts, key=lambda a: a.id) == sorted(alerts, key=lambda a: a.id)


async def test_an_archive_that_lost_its_head_is_refused(client: aioredis.Redis, pg_dsn: str) -> None:
    """Retention drops the archive's oldest days while the stream still holds later entries the archive also
    has: the read must not start silently at the archive's new head."""
    import asyncpg

    from migrations.runner import migrate
    from processors.archiver import ArchiverConfig, run_archiver
    from processors.replay_source import batches, plan
    from processors.runner import RunnerConfig
    from streams.archive_store import TABLE

    await migrate(pg_dsn)
    stream = keys.frames_stream("coinbase", 0)
    await log.append_frames(client, "coinbase", [(f"frame {i}".encode(), i) for i in range(300)], partitions=1)
    runner = RunnerConfig(consumer="t", block_ms=50, lease_ttl_ms=1000, batch_size=100)
    await run_archiver(client, pg_dsn, ["coinbase"], ArchiverConfig(runner=runner, max_block=100), until_idle=True)
    ids = [eid for eid, _ in await log.entries(client, stream)]
    await client.xtrim(
        stream, minid=ids[100].decode(), approximate=False
    )  # 0..99 only in the archive; 100..299 in both
    sources = await plan(client, "coinbase", pg_dsn)
    assert [
        e[0] for chunk in [c async for c in batches(client, sources, sources.parts[0], size=50)] for e in chunk
    ] == ids
    conn = await asyncpg.connect(pg_dsn)
    try:  # what retention does to the oldest day, done to the oldest block
        await conn.execute(
            f"DELETE FROM {TABLE} WHERE stream = $1 AND (first_ms, first_seq) = "
            f"(SELECT first_ms, first_seq FROM {TABLE} WHERE stream = $1 ORDER BY first_ms, first_seq LIMIT 1)",
            stream,
        )
    finally:
        await conn.close()
    with pytest.raises(ReplayGapError, match=r"100 entries had been trimmed .*, and the archive holds 0 of them"):
        [c async for c in batches(client, sources, sources.parts[0], size=50)]
