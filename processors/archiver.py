"""The archiver: moves stream entries into PostgreSQL in bulk, so the streams can be trimmed behind it.

It reads, in its own consumer group ``archive``, every raw partition ``frames:{ex}:p{n}``, the candle
closes ``closes:{ex}``, the alerts ``alerts:{ex}`` and the ``control`` stream, through the partitioned
:class:`~processors.runner.Runner` (leases, fenced reads, XAUTOCLAIM recovery, any number of
instances). Per exchange one runner owns P + 2 slots: the P raw partitions, then the closes and the
alerts; the control stream has a runner of its own (label ``control``: ``lease:archive:control:p0``).

One batch is one step:

    BEGIN                                   (PostgreSQL)
      lock archive_positions[stream]         entries at or below it are redeliveries: skipped
      COPY archive_blocks                    the rest, as zstd blocks of one UTC day each
      UPDATE archive_positions[stream]       the last entry archived
    COMMIT
    XACK stream archive <ids>                only after the commit

An archiver killed between COMMIT and XACK gets the batch back (claimed by the next owner) and skips
it; a stale owner whose lease ran out commits nothing new for the same reason (positions only grow, and
one owner at a time reads a stream in order). Nothing is ever dead-lettered here: an entry is bytes and
can always be archived, so ``max_deliveries`` is effectively unlimited (a dead-lettered entry would be
missing from the archive). The archiver never trims; the processors trim behind the ``archive`` group
when archiving is on (``RunnerConfig.trim_also_behind``, :mod:`streams.trim`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from processors.leases import Fence
from processors.runner import BatchResult, Runner, RunnerConfig, RunStats
from streams import archive_store, keys, log
from streams.log import Entry, parse_id, translated

_log = logging.getLogger(__name__)

GROUP = "archive"
CONTROL_LABEL = "control"  # the runner label of the control stream (its lease and workers keys)
UNLIMITED_DELIVERIES = 2**62
RETENTION_EVERY_S = 3600.0


def exchange_streams(exchange_id: str, partitions: int) -> list[str]:
    """The streams of an exchange the archiver keeps, in runner slot order."""
    raw = [keys.frames_stream(exchange_id, p) for p in range(partitions)]
    return [*raw, keys.closes_stream(exchange_id), keys.alerts_stream(exchange_id)]


@dataclass
class ArchiveSink:
    """What the archiver's handlers share: the pool, the partitions known to exist, the block size."""

    pool: Any
    max_block: int
    known: set[tuple[date, str]] = field(default_factory=set)

    async def write(self, stream: str, entries: Sequence[Entry]) -> tuple[int, int]:
        source = archive_store.source_of(stream)
        wanted = {(archive_store.day_of(parse_id(eid)[0]), source) for eid, _ in entries}
        async with archive_store.translated(f"archiving {stream}"), self.pool.acquire() as conn:
            if wanted - self.known:
                await archive_store.ensure_partitions(conn, wanted - self.known)
                self.known |= wanted
            try:
                return await archive_store.write_blocks(conn, stream, entries, max_block=self.max_block)
            except asyncpg.CheckViolationError:  # "no partition ... found for row": retention dropped the day
                self.known.clear()
                await archive_store.ensure_partitions(conn, wanted)
                self.known |= wanted
                return await archive_store.write_blocks(conn, stream, entries, max_block=self.max_block)


class ArchiveHandler:
    """The runner handler of one stream: archive the batch, then acknowledge it."""

    group = GROUP

    def __init__(self, stream: str, sink: ArchiveSink) -> None:
        self.stream = stream
        self.sink = sink

    async def handle(self, client: aioredis.Redis, entries: Sequence[Entry], fence: Fence) -> BatchResult:
        archived, skipped = await self.sink.write(self.stream, entries)
        with translated(f"acknowledging archived entries of {self.stream}"):
            await client.xack(self.stream, self.group, *[eid for eid, _ in entries])
        return BatchResult(processed=archived, skipped=skipped)


def _handlers(streams: list[str], sink: ArchiveSink) -> Callable[[int], ArchiveHandler]:
    return lambda slot: ArchiveHandler(streams[slot], sink)


@dataclass(frozen=True)
class ArchiverConfig:
    runner: RunnerConfig
    partitions: int = 4  # for an exchange with no raw frames yet (as the processors would fix it)
    max_block: int = 5000  # entries per compressed block at most
    retention_days: int = 0  # 0: keep everything
    retention_every_s: float = RETENTION_EVERY_S


async def run_archiver(
    client: aioredis.Redis,
    dsn: str,
    exchanges: Sequence[str],
    config: ArchiverConfig,
    *,
    until_idle: bool = False,
    stop: asyncio.Event | None = None,
) -> dict[str, RunStats]:
    """Archive the streams of ``exchanges`` and the control stream until ``stop`` (or, with ``until_idle``,
    until every one is drained); applies the retention on start and every ``retention_every_s``.
    Returns the stats per runner label (each exchange, and ``control``)."""
    stop = stop or asyncio.Event()
    runner_config = replace(config.runner, max_deliveries=UNLIMITED_DELIVERIES, trim_every_s=math.inf)
    async with archive_store.translated("connecting to the archive"):
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        sink = ArchiveSink(pool, config.max_block)
        runners: dict[str, Runner] = {}
        for ex in exchanges:
            streams = exchange_streams(ex, await log.ensure_partitions(client, ex, config.partitions))
            runners[ex] = Runner(client, ex, GROUP, len(streams), _handlers(streams, sink), runner_config)
        control = ArchiveHandler(keys.CONTROL_STREAM, sink)
        runners[CONTROL_LABEL] = Runner(client, CONTROL_LABEL, GROUP, 1, lambda _: control, runner_config)
        await _retention(pool, config.retention_days)
        retention = asyncio.create_task(_keep_retention(pool, config, stop)) if not until_idle else None
        try:
            results = await asyncio.gather(*(r.run(until_idle=until_idle, stop=stop) for r in runners.values()))
        finally:
            if retention is not None:
                retention.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retention
        return dict(zip(runners, results, strict=True))
    finally:
        await pool.close()


async def _retention(pool: Any, days: int) -> list[date]:
    if days <= 0:
        return []
    async with archive_store.translated("applying the archive retention"), pool.acquire() as conn:
        dropped = await archive_store.apply_retention(conn, days)
    if dropped:
        _log.info("archive retention (%d days): dropped %s", days, ", ".join(map(str, dropped)))
    return dropped


async def _keep_retention(pool: Any, config: ArchiverConfig, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), config.retention_every_s)
        if not stop.is_set():
            await _retention(pool, config.retention_days)


@contextlib.asynccontextmanager
async def alongside(
    client: aioredis.Redis,
    dsn: str | None,
    exchanges: Sequence[str],
    config: ArchiverConfig | None,
    *,
    until_idle: bool,
    stop: asyncio.Event,
) -> AsyncIterator[dict[str, RunStats]]:
    """Run the archiver for the block when ``config`` is given (archiving is on): in the background until
    ``stop``, or with ``until_idle`` once the block is done (so it archives what the block produced,
    closes and alerts included). Yields the stats, filled when the archiver returns."""
    stats: dict[str, RunStats] = {}
    if config is None:
        yield stats
        return
    if dsn is None:
        raise ValueError("archiving needs a PostgreSQL database")
    if until_idle:
        yield stats
        stats.update(await run_archiver(client, dsn, exchanges, config, until_idle=True, stop=stop))
        return
    task = asyncio.create_task(run_archiver(client, dsn, exchanges, config, stop=stop), name="archiver")
    try:
        yield stats
    except BaseException:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise
    stop.set()
    stats.update(await task)
