"""``python -m benchmarks.replay_speed [--quick]``: replay frames/s, archive -> candles -> MACD-V, through Redis.

Private servers only: a PostgreSQL (the archive), a Redis holding the raw streams, and a Redis the replay
folds into. Input: the synthetic Coinbase day (``tests.synthetic``) at a ``market_trades`` frame every 5 s
per product (206,633 frames; ``--quick``: every 20 s), archived by the archiver, then trimmed from the
streams but for the newest tenth, so a replay reads the archive and then the stream. Printed, as the
median (min, max) of 3 runs: the archive read alone (``read_archived``), the replay source with the
event-time decode the replay cuts by, and the whole replay (``tickfold.replay.replay_into``) with and
without the indicator processor, through Redis and ``--in-memory``. The README's *Replay* figures come from here.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis

from migrations.runner import migrate
from processors.archiver import GROUP as ARCHIVE
from processors.archiver import ArchiverConfig, run_archiver
from processors.replay import ReplayOptions, frame_event_ms
from processors.replay_source import batches, plan
from processors.runner import RunnerConfig
from streams import archive, keys, log
from streams.trim import trim
from tickfold.embedded import start_postgres, start_redis
from tickfold.replay import replay_into
from tickfold.settings import Settings

DAY_START_MS = 1_786_233_600_000
RUNS = 3


async def _timed(runs: int, work: Callable[[], Awaitable[int]]) -> tuple[float, float, float]:
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        n = await work()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates), min(rates), max(rates)


async def measure(dsn: str, source_url: str, target_url: str, every_ms: int) -> list[str]:
    from tests.synthetic import synthetic_day

    await migrate(dsn)
    frames = synthetic_day(every_ms=every_ms)
    source = aioredis.Redis.from_url(source_url)
    target = aioredis.Redis.from_url(target_url)
    try:
        await log.append_frames(source, "coinbase", [(f, 0) for f in frames], partitions=4)
        archiver = ArchiverConfig(runner=RunnerConfig(consumer="bench", block_ms=50, lease_ttl_ms=1000))
        await run_archiver(source, dsn, ["coinbase"], archiver, until_idle=True)
        kept = 0
        for p in range(4):
            stream = keys.frames_stream("coinbase", p)
            length = int(await source.xlen(stream))
            await trim(source, stream, (ARCHIVE,), max_len=length // 10, max_age_ms=10**13)
            kept += int(await source.xlen(stream))
        lines = [f"{len(frames):,} frames, {len(frames) - kept:,} of them only in the archive, {kept:,} in the streams"]

        async def archive_read() -> int:
            n = 0
            for p in range(4):
                async for chunk in archive.read_archived(dsn, keys.frames_stream("coinbase", p), batch=5000):
                    n += len(chunk)
            return n

        async def source_read() -> int:
            sources = await plan(source, "coinbase", dsn)
            n = 0
            for part in sources.parts:
                async for chunk in batches(source, sources, part, size=500):
                    for _, fields in chunk:
                        frame_event_ms("coinbase", fields)
                    n += len(chunk)
            return n

        def replay(indicators: bool, in_memory: bool = False) -> Callable[[], Awaitable[int]]:
            settings = Settings.load({}, overrides={"indicators": indicators})
            options = ReplayOptions(DAY_START_MS, DAY_START_MS + 86_400_000, to_end=True, in_memory=in_memory)

            async def run() -> int:
                await target.flushdb()
                _, stats = await replay_into(source, target, settings, "coinbase", options, dsn=dsn)
                return stats.frames

            return run

        figures = [
            ("archive read (read_archived, 5,000 a batch)", archive_read),
            ("replay source: archive + stream, event time decoded", source_read),
            ("replay: archive -> candles (1m trades, 15m..1d roll-ups)", replay(False)),
            ("replay: archive -> candles -> MACD-V and alerts", replay(True)),
            ("replay --in-memory: archive -> candles", replay(False, in_memory=True)),
            ("replay --in-memory: archive -> candles -> MACD-V and alerts", replay(True, in_memory=True)),
        ]
        for name, work in figures:
            median, low, high = await _timed(RUNS, work)
            lines.append(f"{name}: {median:,.0f} frames/s (min {low:,.0f}, max {high:,.0f})")
        lines.extend(await _binance(source, target, copies=10 if every_ms > 5_000 else 50))
        return lines
    finally:
        await source.aclose()
        await target.aclose()


async def _binance(source: aioredis.Redis, target: aioredis.Redis, copies: int) -> list[str]:
    """The recorded Binance session repeated (klines + aggTrades, the live mix), from the stream alone."""
    from benchmarks.ingest_fold import frames

    data = frames(copies)
    await log.append_frames(source, "binance", [(f, 0) for f in data], partitions=4)
    lines = [f"Binance: the recorded session x{copies} ({len(data):,} frames, 1m klines + aggTrades), stream only"]
    for in_memory in (False, True):
        settings = Settings.load({}, overrides={"indicators": False})
        options = ReplayOptions(1_617_000_000_000, 1_620_000_000_000, to_end=True, in_memory=in_memory)

        async def run(options: ReplayOptions = options, settings: Settings = settings) -> int:
            await target.flushdb()
            _, stats = await replay_into(source, target, settings, "binance", options)
            return stats.frames

        median, low, high = await _timed(RUNS, run)
        name = "replay --in-memory" if in_memory else "replay through Redis"
        lines.append(f"{name}: stream -> candles: {median:,.0f} frames/s (min {low:,.0f}, max {high:,.0f})")
    return lines


def main() -> int:
    every_ms = 20_000 if "--quick" in sys.argv[1:] else 5_000
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o755)  # as root, PostgreSQL runs as an unprivileged user who must reach it
        pg = start_postgres(Path(tmp) / "pg", fsync=False)
        source = start_redis(Path(tmp) / "source", appendonly=False)
        target = start_redis(Path(tmp) / "target", appendonly=False)
        try:
            for line in asyncio.run(measure(pg.dsn, source.url, target.url, every_ms)):
                print(line)
        finally:
            target.stop()
            source.stop()
            pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
