"""Replay and rebuild on real servers: the live processors fold recorded and generated frames, then a
replay of sub-ranges (into another logical database or a private server) must give exactly the candles,
MACD-V points and alerts (same ids) the live run stored for that range, leave the live keys untouched,
and refuse ranges that hold nothing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from processors.indicators import decode_alert, decode_point
from processors.replay import ReplayNoData, ReplayOptions, horizon_ms
from processors.replay_rebuild import RebuildRefused, What, rebuild
from processors.replay_source import ReplayGapError
from projections.alerts import Alert, Point
from projections.candles import Candle
from streams import keys, log
from tests.realdata import BINANCE_0404
from tests.support import all_candles, drain, ingest
from tests.synthetic import DAY_START_MS, PRODUCTS, synthetic_day
from tickfold.errors import ConfigError
from tickfold.replay import replay_into
from tickfold.settings import Settings

pytestmark = [pytest.mark.redis, pytest.mark.replay]
HOUR = 3_600_000
SETTINGS = Settings.load({})


@pytest.fixture(scope="module")
def day() -> list[bytes]:
    """Four products of the generated day, a trade every 90 s: < 1,000 1m candles per series, so MACD-V
    warms up on 1m, 5m and 15m and every value is exact whichever path computed it."""
    frames = synthetic_day(every_ms=90_000)
    return [f for f in frames if any(f'"product_id":"{p}"'.encode() in f for p in PRODUCTS[:4])]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


def _db(url: str, n: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{n}"


@pytest.fixture
async def target(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(_db(redis_url, 5))
    await c.flushdb()
    yield c
    await c.flushdb()
    await c.aclose()


async def live_run(client: aioredis.Redis, exchange_id: str, frames: list[bytes], chunks: int = 1) -> None:
    """Append in chunks and drain after each, as a live feed interleaves arrivals and folds."""
    step = -(-len(frames) // chunks)
    for i in range(0, len(frames), step):
        await log.append_frames(client, exchange_id, [(f, 0) for f in frames[i : i + step]])
        await drain(client, [exchange_id])


async def points_of(client: aioredis.Redis, exchange_id: str) -> dict[tuple[str, str, int], Point]:
    out: dict[tuple[str, str, int], Point] = {}
    async for raw_key in client.scan_iter(match=f"indicator:{exchange_id}:*"):
        _, _, symbol, tf, _ = raw_key.decode().split(":")
        members: Any = await client.zrange(raw_key, 0, -1)
        for raw in members:
            p = decode_point(raw)
            out[(symbol, tf, p.start)] = p
    return out


async def alerts_of(client: aioredis.Redis, exchange_id: str) -> list[Alert]:
    return [decode_alert(f[b"alert"]) for _, f in await log.entries(client, keys.alerts_stream(exchange_id))]


def in_range(start: int, lo: int, hi: int) -> bool:
    return lo <= start < hi


async def expected(
    client: aioredis.Redis, exchange_id: str, lo: int, hi: int, timeframes: tuple[str, ...] | None = None
) -> tuple[dict[tuple[str, str, int], Candle], dict[tuple[str, str, int], Point], list[Alert]]:
    def keep(tf: str, start: int) -> bool:
        return in_range(start, lo, hi) and (timeframes is None or tf in timeframes)

    candles = {k: c for k, c in (await all_candles(client, exchange_id)).items() if keep(k[1], k[2])}
    points = {k: p for k, p in (await points_of(client, exchange_id)).items() if keep(k[1], k[2])}
    alerts = [a for a in await alerts_of(client, exchange_id) if keep(a.timeframe, a.start)]
    return candles, points, alerts


RANGES: list[tuple[float, float, tuple[str, ...] | None]] = [
    (0, 24, None),  # the whole day
    (5, 9, None),  # every timeframe: the fold runs a day past the range (1d candles need it)
    (10, 13, ("1m", "15m")),  # a shorter horizon: the fold stops 15 minutes (+ grace) after the range
    (14.5, 15.25, ("1m",)),
]


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


async def test_replay_of_recorded_binance_frames(client: aioredis.Redis, target: aioredis.Redis) -> None:
    await ingest(client, "binance", BINANCE_0404)
    await drain(client, ["binance"])
    live = await all_candles(client, "binance")
    lo, hi = min(s for _, _, s in live), max(s for _, _, s in live) + 60_000
    options = ReplayOptions(start_ms=lo, end_ms=hi)
    result, stats = await replay_into(client, target, SETTINGS, "binance", options)
    assert {(c.symbol, c.timeframe, c.start): c for c in result.candles} == live
    assert {c.symbol for c in result.candles} == {"BTC-USDT", "ETH-USDT", "DOT-USDT"}
    assert stats.frames == sum([await client.xlen(keys.frames_stream("binance", p)) for p in range(4)])


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


# ------------------------------------------------------------------------------------ the command line


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tickfold.cli", "--redis-url", url, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


async def dump(client: aioredis.Redis) -> dict[bytes, Any]:
    """Every key of a database with its serialized value and TTL: equal dumps, equal databases."""
    out: dict[bytes, Any] = {}
    async for key in client.scan_iter(count=1000):
        out[key] = (await client.dump(key), await client.pttl(key))
    return out


async def test_replay_into_a_namespace_leaves_the_live_keys_untouched(
    day: list[bytes], client: aioredis.Redis, target: aioredis.Redis, redis_url: str
) -> None:
    await live_run(client, "coinbase", day)
    before = await dump(client)
    lo, hi = DAY_START_MS + 10 * HOUR, DAY_START_MS + 12 * HOUR
    done = cli(redis_url, "replay", "coinbase", "--from", "2026-08-09T10:00Z", "--to", str(hi), "--namespace", "5",
               "--timeframes", "1m,15m", "--symbols", "BTC-USD,eth-usd")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert await dump(client) == before  # not one live key written, moved or expired
    candles, _, _ = await expected(client, "coinbase", lo, hi, ("1m", "15m"))
    wanted = {k: c for k, c in candles.items() if k[0] in ("BTC-USD", "ETH-USD")}
    assert f"{len(wanted):,} candles" in done.stdout and "-> namespace 5" in done.stdout
    replayed = {k: c for k, c in (await all_candles(target, "coinbase")).items() if k in wanted}
    assert replayed == wanted  # the namespace holds the projections, under the live key names
    # the same namespace again: refused while it holds them, unless --clear
    again = cli(redis_url, "replay", "coinbase", "--from", str(lo), "--to", str(hi), "--namespace", "5")
    assert again.returncode == 1 and "already holds coinbase projections" in again.stderr
    assert cli(redis_url, "replay", "coinbase", "--from", str(lo), "--to", str(hi), "--namespace", "5",
               "--timeframes", "1m", "--clear").returncode == 0  # fmt: skip
    live = cli(redis_url, "replay", "coinbase", "--from", str(lo), "--to", str(hi), "--namespace", "0")
    assert live.returncode == 2 and "--namespace: 0 is the live database" in live.stderr
    assert await dump(client) == before


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
async def test_export_to_a_file_through_a_private_server(
    suffix: str, day: list[bytes], client: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    import pandas as pd

    await live_run(client, "coinbase", day)
    before = await dump(client)
    lo, hi = DAY_START_MS + 6 * HOUR, DAY_START_MS + 8 * HOUR
    path = tmp_path / f"out{suffix}"
    done = cli(redis_url, "replay", "coinbase", "--from", str(lo), "--to", str(hi), "--timeframes", "1m,5m,15m",
               "--out", str(path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert await dump(client) == before
    candles, points, alerts = await expected(client, "coinbase", lo, hi, ("1m", "5m", "15m"))
    if suffix == ".csv":
        rows = pd.read_csv(path, dtype={"open": str, "high": str, "low": str, "close": str, "volume": str})
        got_alerts = pd.read_csv(tmp_path / "out.alerts.csv")
    elif suffix == ".parquet":
        rows = pd.read_parquet(path)
        got_alerts = pd.read_parquet(tmp_path / "out.alerts.parquet")
    else:
        rows = pd.read_json(
            path, lines=True, precise_float=True, dtype={"open": str, "high": str, "low": str, "close": str}
        )
        got_alerts = pd.read_json(tmp_path / "out.alerts.jsonl", lines=True)
    assert len(rows) == len(candles)
    for r in rows.to_dict("records"):
        c = candles[(str(r["symbol"]), str(r["timeframe"]), int(r["start"]))]
        if suffix == ".parquet":  # numbers there; the exact strings in CSV and JSON lines
            assert (r["open"], r["close"], r["volume"]) == (float(c.open), float(c.close), float(c.volume))
        else:
            assert (r["open"], r["high"], r["low"], r["close"]) == (c.open, c.high, c.low, c.close)
        p = points.get((c.symbol, c.timeframe, c.start))
        if p is None:
            assert pd.isna(r["macdv"]) and pd.isna(r["signal"])
        else:
            assert (r["macdv"], r["signal"], r["histogram"]) == (p.macdv, p.signal, p.histogram)
            assert r["zone"] == p.zone or (p.zone == "" and pd.isna(r["zone"]))
    assert sorted(got_alerts["id"]) == sorted(a.id for a in alerts) and len(alerts) > 0


async def test_bad_commands_exit_non_zero_with_the_reason(
    day: list[bytes], client: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    await log.append_frames(client, "coinbase", [(f, 0) for f in day[:500]])
    future = cli(redis_url, "replay", "coinbase", "--from", "2099-01-01T00:00Z", "--to", "2099-01-02", "--out",
                 str(tmp_path / "x.csv"))  # fmt: skip
    assert future.returncode == 2 and "--from: 2099-01-01T00:00:00.000Z is in the future" in future.stderr
    empty = cli(redis_url, "replay", "coinbase", "--from", "2026-08-01T00:00Z", "--to", "2026-08-01T01:00Z", "--out",
                str(tmp_path / "x.csv"))  # fmt: skip
    assert empty.returncode == 1 and "no coinbase candles start in [2026-08-01T00:00:00.000Z" in empty.stderr
    assert not (tmp_path / "x.csv").exists()
    for args, message in [
        ((), "give --namespace N"),
        (("--out", str(tmp_path / "x.xlsx")), "give it one of the extensions .csv, .parquet"),
        (("--out", "x.csv", "--speed", "fast"), "--speed: expected max, realtime or a number"),
        (("--out", "x.csv", "--warmup", "a while"), "--warmup: expected a duration"),
    ]:
        done = cli(redis_url, "replay", "coinbase", "--from", "2026-08-09T00:00Z", "--to", "2026-08-09T01:00Z", *args)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)


# ---------------------------------------------------------------------------------------------- rebuild


async def state(client: aioredis.Redis, exchange_id: str) -> tuple[Any, ...]:
    return (
        await all_candles(client, exchange_id),
        await points_of(client, exchange_id),
        [f[b"alert"] for _, f in await log.entries(client, keys.alerts_stream(exchange_id))],
    )


async def test_rebuild_gives_the_state_before_and_live_processing_goes_on(
    day: list[bytes], client: aioredis.Redis, redis_url: str
) -> None:
    half = len(day) // 2
    await live_run(client, "coinbase", day[:half])
    before = await state(client, "coinbase")
    raised = await log.entries(client, keys.alerts_stream("coinbase"))
    assert before[0] and before[1] and before[2]
    whats: list[What] = ["all", "candles", "indicators"]
    for what in whats:
        report = await rebuild(client, SETTINGS, "coinbase", what)
        assert await state(client, "coinbase") == before, what
        assert await log.entries(client, keys.alerts_stream("coinbase")) == raised  # none raised twice
        assert report.deleted > 0 and report.alerts_raised == 0
        assert report.frames == (0 if what == "indicators" else half)
    # the groups were moved past what was re-folded: live processing continues with the rest only
    await log.append_frames(client, "coinbase", [(f, 0) for f in day[half:]])
    stats = await drain(client, ["coinbase"])
    assert stats["coinbase"].totals.processed == len(day) - half
    everything = await state(client, "coinbase")
    await client.flushdb()
    await live_run(client, "coinbase", day[:half])
    await log.append_frames(client, "coinbase", [(f, 0) for f in day[half:]])
    await drain(client, ["coinbase"])
    assert await state(client, "coinbase") == everything
    # the CLI, and a rebuild refused while a processor holds a lease
    done = cli(redis_url, "rebuild", "candles", "coinbase")
    assert done.returncode == 0 and f"{len(day):,} frames re-folded" in done.stdout, done.stderr
    await client.set(keys.lease("candles", "coinbase", 2), b"host-1/abc", px=60_000)
    with pytest.raises(RebuildRefused, match=r"lease:candles:coinbase:p2 is held by host-1/abc"):
        await rebuild(client, SETTINGS, "coinbase", "all")
    assert await client.get(keys.lease("candles", "coinbase", 0)) is None  # what it took, it gave back
    refused = cli(redis_url, "rebuild", "all", "coinbase")
    assert refused.returncode == 1 and "a processor is running on coinbase" in refused.stderr
    assert await state(client, "coinbase") == everything


# ------------------------------------------------------------------------------ archive + trimmed stream


async def test_replay_and_rebuild_across_the_archive_and_a_trimmed_stream(
    day: list[bytes], client: aioredis.Redis, target: aioredis.Redis, pg_dsn: str
) -> None:
    from migrations.runner import migrate
    from processors.archiver import GROUP as ARCHIVE
    from processors.archiver import ArchiverConfig, run_archiver
    from processors.runner import RunnerConfig
    from streams.trim import trim

    await migrate(pg_dsn)
    half = len(day) // 2
    await live_run(client, "coinbase", day[:half])
    archiver = ArchiverConfig(runner=RunnerConfig(consumer="t", block_ms=50, lease_ttl_ms=1000))
    await run_archiver(client, pg_dsn, ["coinbase"], archiver, until_idle=True)
    trimmed = 0
    for p in range(4):  # the archived half leaves the streams (trimming waits for both groups)
        trimmed += await trim(client, keys.frames_stream("coinbase", p), ("candles", ARCHIVE), max_len=5,
                              max_age_ms=10**12)  # fmt: skip
    await log.append_frames(client, "coinbase", [(f, 0) for f in day[half:]])
    await drain(client, ["coinbase"])
    assert trimmed > half * 0.9
    folded: list[int] = []
    for lo_h, hi_h, timeframes in RANGES[:3]:
        lo, hi = DAY_START_MS + int(lo_h * HOUR), DAY_START_MS + int(hi_h * HOUR)
        candles, points, alerts = await expected(client, "coinbase", lo, hi, timeframes)
        await target.flushdb()
        options = ReplayOptions(start_ms=lo, end_ms=hi, timeframes=timeframes)
        result, stats = await replay_into(client, target, SETTINGS, "coinbase", options, dsn=pg_dsn)
        assert {(c.symbol, c.timeframe, c.start): c for c in result.candles} == candles
        assert result.points == points
        assert sorted(result.alerts, key=lambda a: a.id) == sorted(alerts, key=lambda a: a.id)
        folded.append(stats.frames)
    assert folded[0] == len(day) and half < folded[-1] < len(day)  # 10-13h: across the boundary, then stops
    # without the archive the head of the streams is gone: refused, not replayed with a hole
    await target.flushdb()
    with pytest.raises(ReplayGapError, match=r"coinbase:p\d: its oldest entries were trimmed .*none is configured"):
        await replay_into(client, target, SETTINGS, "coinbase", ReplayOptions(start_ms=lo, end_ms=hi))
    before = await state(client, "coinbase")
    report = await rebuild(client, SETTINGS, "coinbase", "all", dsn=pg_dsn)
    assert report.frames == len(day) and await state(client, "coinbase") == before
    closes = keys.closes_stream("coinbase")
    groups = {g["name"].decode(): g for g in await client.xinfo_groups(closes)}
    end = (await client.xinfo_stream(closes))["last-generated-id"]
    assert groups[ARCHIVE]["last-delivered-id"] == end  # the re-emitted closes are not archived a second time
    assert groups["indicators"]["last-delivered-id"] == end and groups["indicators"]["pending"] == 0


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
    await client.xtrim(stream, minid=ids[100].decode())  # 0..99 only in the archive now
    sources = await plan(client, "coinbase", pg_dsn)
    got: list[log.Entry] = []
    async for chunk in batches(client, sources, sources.parts[0], size=50):
        got.extend(chunk)
        if len(got) == 200:  # while the stream is being read: the archiver goes on and trimming follows it
            await run_archiver(client, pg_dsn, ["coinbase"], archiver, until_idle=True)
            await client.xtrim(stream, minid=ids[280].decode())
    assert [e[0] for e in got] == ids and [e[1][b"frame"] for e in got] == [f for f, _ in frames]
    # the same without the archive: its oldest entries are gone, so it refuses
    with pytest.raises(ReplayGapError, match="its oldest entries were trimmed"):
        [e async for e in batches(client, await plan(client, "coinbase", None), sources.parts[0], size=50)]


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
