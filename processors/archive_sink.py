"""Where the archiver's handlers put entries: per-stream buffers written to PostgreSQL as blocks, then
acknowledged.

A block of one entry takes ~2x the room of a block of a thousand per entry (zstd needs company; every
row has its overhead): README, *Archive*. Live streams arrive a few entries per read, so with
``linger_s > 0`` the sink keeps a stream's entries (still pending in Redis, unacknowledged) until it
holds ``max_block`` of them or the oldest has waited ``linger_s``, then writes them as one block. A crash
loses nothing: the entries are pending, and the next owner claims them.

Order is what makes the position rule (skip ids at or below the stored position) safe, so per stream:
one flush at a time (a lock), entries sorted and de-duplicated by id, and a failed write puts its entries
back into the buffer before anything later can be written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from streams import archive_store
from streams.log import Entry, parse_id, translated
from tickfold.errors import StoreUnavailable

log = logging.getLogger(__name__)


@dataclass
class _Buffer:
    entries: dict[bytes, Entry] = field(default_factory=dict)
    since: float = 0.0  # monotonic time its oldest entry came in


@dataclass
class StreamTotals:
    archived: int = 0
    skipped: int = 0  # already archived (redeliveries)
    blocks: int = 0


@dataclass
class ArchiveSink:
    """Shared by the archiver's handlers: the pool, partitions known to exist, buffers, totals."""

    pool: Any
    group: str
    max_block: int
    linger_s: float = 0.0
    known: set[tuple[date, str]] = field(default_factory=set)
    totals: dict[str, StreamTotals] = field(default_factory=dict)
    _buffers: dict[str, _Buffer] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def add(self, client: aioredis.Redis, stream: str, entries: Sequence[Entry]) -> None:
        """Take a batch of ``stream``: written (and acknowledged) now when the buffer is full or there is no
        linger, else when :meth:`flush_due` finds it old enough."""
        buf = self._buffers.setdefault(stream, _Buffer())
        if not buf.entries:
            buf.since = time.monotonic()
        for entry in entries:
            buf.entries.setdefault(entry[0], entry)
        if self.linger_s <= 0 or len(buf.entries) >= self.max_block:
            await self.flush(client, stream)

    async def flush(self, client: aioredis.Redis, stream: str) -> None:
        """Write the buffered entries of ``stream`` in order, then acknowledge them."""
        async with self._locks.setdefault(stream, asyncio.Lock()):
            buf = self._buffers.pop(stream, None)
            if buf is None or not buf.entries:
                return
            entries = sorted(buf.entries.values(), key=lambda e: parse_id(e[0]))
            try:
                archived, skipped = await self.write(stream, entries)
            except BaseException:
                back = self._buffers.setdefault(stream, _Buffer(since=buf.since))
                back.entries = {**buf.entries, **back.entries}
                back.since = min(back.since, buf.since) if back.since else buf.since
                raise
            with translated(f"acknowledging archived entries of {stream}"):
                await client.xack(stream, self.group, *[eid for eid, _ in entries])
            t = self.totals.setdefault(stream, StreamTotals())
            t.archived += archived
            t.skipped += skipped
            t.blocks += 1 if archived else 0

    async def flush_due(self, client: aioredis.Redis, *, everything: bool = False) -> None:
        """Flush every buffer whose oldest entry waited ``linger_s`` (or every buffer)."""
        now = time.monotonic()
        for stream, buf in list(self._buffers.items()):
            if buf.entries and (everything or now - buf.since >= self.linger_s):
                await self.flush(client, stream)

    async def keep_flushing(self, client: aioredis.Redis, stop: asyncio.Event, *, max_retries: int = 8) -> None:
        """Flush what is due, a few times per linger, until ``stop``. A store that can't be reached is
        retried with a capped backoff (the entries wait in the buffer, pending in Redis); after
        ``max_retries`` failures in a row the error ends the archiver."""
        failures = 0
        while not stop.is_set():
            pause = max(self.linger_s / 4, 0.05) if not failures else min(0.1 * 2**failures, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
            try:
                await self.flush_due(client)
                failures = 0
            except StoreUnavailable as exc:
                failures += 1
                if failures > max_retries:
                    raise
                log.warning("%s; retrying the archive flush (%d/%d)", exc, failures, max_retries)

    async def write(self, stream: str, entries: Sequence[Entry]) -> tuple[int, int]:
        """Archive ``entries`` (ids increasing) past the stream's position: (archived, skipped)."""
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
