"""``tickfold rebuild candles|indicators|all``: the state after equals the state before, live processing
goes on after it, it refuses to run beside a processor; and replay and rebuild across the archive and a
trimmed stream."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from processors.replay import ReplayOptions
from processors.replay_rebuild import RebuildRefused, What, rebuild
from processors.replay_source import ReplayGapError
from streams import keys, log
from tests.replay_support import (
    HOUR,
    RANGES,
    SETTINGS,
    cli,
    client,
    day,
    expected,
    live_run,
    state,
    target,
)
from tests.support import drain
from tests.synthetic import DAY_START_MS
from tickfold.replay import replay_into

pytestmark = [pytest.mark.redis, pytest.mark.replay]
__all__ = ["client", "day", "target"]  # fixtures


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
    with pytest.raises(
        ReplayGapError, match=r"coinbase:p\d: [\d,]+ entries had been trimmed .*no archive is configured"
    ):
        await replay_into(client, target, SETTINGS, "coinbase", ReplayOptions(start_ms=lo, end_ms=hi))
    before = await state(client, "coinbase")
    report = await rebuild(client, SETTINGS, "coinbase", "all", dsn=pg_dsn)
    assert report.frames == len(day) and await state(client, "coinbase") == before
    closes = keys.closes_stream("coinbase")
    groups = {g["name"].decode(): g for g in await client.xinfo_groups(closes)}
    end = (await client.xinfo_stream(closes))["last-generated-id"]
    assert groups[ARCHIVE]["last-delivered-id"] == end  # the re-emitted closes are not archived a second time
    assert groups["indicators"]["last-delivered-id"] == end and groups["indicators"]["pending"] == 0


async def test_frames_appended_during_a_rebuild_are_left_to_live_processing(
    day: list[bytes], client: aioredis.Redis
) -> None:
    import asyncio

    half = len(day) // 2
    await live_run(client, "coinbase", day)  # the reference: everything folded live
    reference = await state(client, "coinbase")
    await client.flushdb()
    await live_run(client, "coinbase", day[:half])
    rebuilding = asyncio.create_task(rebuild(client, SETTINGS, "coinbase", "all"))
    for _ in range(10_000):  # the rebuild has taken its snapshot once it dropped the projections
        if not await client.exists(keys.candle_index("coinbase")):
            break
        await asyncio.sleep(0.001)
    else:
        pytest.fail("the rebuild did not drop the candle projections")
    for i in range(half, len(day), 100):  # the feed goes on while the rebuild runs
        await log.append_frames(client, "coinbase", [(f, 0) for f in day[i : i + 100]])
    report = await rebuilding
    assert report.frames == half  # it folded what was there when it began, not what came after
    stats = await drain(client, ["coinbase"])
    assert stats["coinbase"].totals.processed == len(day) - report.frames  # the rest, each frame once
    assert await state(client, "coinbase") == reference
