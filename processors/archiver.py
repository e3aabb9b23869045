"""The archiver: moves stream entries into PostgreSQL in bulk, so the streams can be trimmed behind it.

It reads, in its own consumer group ``archive``, every raw partition ``frames:{ex}:p{n}``, the candle
closes ``closes:{ex}``, the alerts ``alerts:{ex}`` and the ``control`` stream, through the partitioned
:class:`~processors.runner.Runner` (leases, fenced reads, XAUTOCLAIM recovery, any number of
instances). Per exchange one runner owns P + 2 slots: the P raw partitions, then the closes and the
alerts; the control stream has a runner of its own (label ``control``: ``lease:archive:control:p0``).

A stream's entries are buffered until they fill a block (``max_block``) or the oldest waited
``linger_s`` (:mod:`processors.archive_sink`: live streams come a few entries per read, and a block of
one entry compresses badly); they stay pending in Redis meanwhile. Then one step:

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
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from processors.archive_sink import ArchiveSink
from processors.leases import Fence
from processors.runner import BatchResult, Runner, RunnerConfig, RunStats
from streams import archive_store, keys, log
from streams.log import Entry

_log = logging.getLogger(__name__)

GROUP = "archive"
CONTROL_LABEL = "control"  # the runner label of the control stream (its lease and workers keys)
UNLIMITED_DELIVERIES = 2**62
RETENTION_EVERY_S = 3600.0


def exchange_streams(exchange_id: str, partitions: int) -> list[str]:
    """The streams of an exchange the archiver keeps, in runner slot order."""
    raw = [keys.frames_stream(exchange_id, p) for p in range(partitions)]
    return [*raw, keys.closes_stream(exchange_id), keys.alerts_stream(exchange_id)]


class ArchiveHandler:
    """The runner handler of one stream: hand the batch to the sink (archived, then acknowledged)."""

    group = GROUP

    def __init__(self, stream: str, sink: ArchiveSink) -> None:
        self.stream = stream
        self.sink = sink

    async def handle(self, client: aioredis.Redis, entries: Sequence[Entry], fence: Fence) -> BatchResult:
        await self.sink.add(client, self.stream, entries)
        return BatchResult()  # counted when written: ArchiveSink.totals


def _handlers(streams: list[str], sink: ArchiveSink) -> Callable[[int], ArchiveHandler]:
    return lambda slot: ArchiveHandler(streams[slot], sink)


@dataclass(frozen=True)
class ArchiverConfig:
    runner: RunnerConfig
    partitions: int = 4  # for an exchange with no raw frames yet (as the processors would fix it)
    max_block: int = 5000  # entries per compressed block at most
    linger_s: float = 2.0  # a stream's entries wait at most this long to fill a block (0 with until_idle)
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
    Returns the stats per runner label (each exchange, and ``control``): entries archived (``processed``),
    already archived (``skipped``), blocks written (``batches``), entries claimed from other owners."""
    stop = stop or asyncio.Event()
    runner_config = replace(config.runner, max_deliveries=UNLIMITED_DELIVERIES, trim_every_s=math.inf)
    async with archive_store.translated("connecting to the archive"):
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    try:
        async with pool.acquire() as conn:
            await archive_store.check_tables(conn)
        sink = ArchiveSink(pool, GROUP, config.max_block, 0.0 if until_idle else config.linger_s)
        runners: dict[str, Runner] = {}
        for ex in exchanges:
            streams = exchange_streams(ex, await log.ensure_partitions(client, ex, config.partitions))
            runners[ex] = Runner(client, ex, GROUP, len(streams), _handlers(streams, sink), runner_config)
        control = ArchiveHandler(keys.CONTROL_STREAM, sink)
        runners[CONTROL_LABEL] = Runner(client, CONTROL_LABEL, GROUP, 1, lambda _: control, runner_config)
        await _retention(pool, config.retention_days)
        background: list[asyncio.Task[Any]] = []
        if not until_idle:
            background.append(asyncio.create_task(_keep_retention(pool, config, stop)))
        if sink.linger_s > 0:
            background.append(asyncio.create_task(sink.keep_flushing(client, stop)))
        runs = asyncio.gather(*(r.run(until_idle=until_idle, stop=stop) for r in runners.values()))
        try:
            await _until_done(runs, background)
            results = runs.result()
            await sink.flush_due(client, everything=True)  # what waited for company when stop came
        finally:
            for task in [runs, *background]:
                task.cancel()
            await asyncio.gather(runs, *background, return_exceptions=True)
        out = dict(zip(runners, results, strict=True))
        for label, stats in out.items():
            totals = [sink.totals.get(h.stream) for h in runners[label].handlers]
            stats.totals.processed = sum(t.archived for t in totals if t)
            stats.totals.skipped = sum(t.skipped for t in totals if t)
            stats.batches = sum(t.blocks for t in totals if t)
        return out
    finally:
        await pool.close()


async def _until_done(runs: asyncio.Future[Any], background: list[asyncio.Task[Any]]) -> None:
    """Wait for ``runs``; a background task that fails first ends the wait with its error."""
    waiting: set[asyncio.Future[Any]] = {runs, *background}
    while not runs.done():
        done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not runs and not task.cancelled() and (exc := task.exception()) is not None:
                raise exc


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
    async with archive_store.translated("connecting to the archive"):
        conn = await asyncpg.connect(dsn)
    try:
        await archive_store.check_tables(conn)  # before the block folds anything: fail early
    finally:
        await conn.close()
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
