"""Reading the archive: the entries of a Redis stream that the archiver moved into PostgreSQL.

Entries come back exactly as they were in the stream: the same ids and the same fields, byte for byte
and in the same order (``frame``, ``recv_ns`` for raw frames; ``event``, ``alert``, the control
events' fields). The write side is :mod:`streams.archive_store`, the block format
:mod:`streams.archive_codec`, the processor that fills it :mod:`processors.archiver`.

A replay reads a stream's archive up to :func:`archived_position`, then the live stream after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg

from streams.archive_codec import decode_block, decode_frames
from streams.archive_columns import Frames
from streams.archive_store import TABLE, day_of, source_of, translated
from streams.log import Entry, parse_id

__all__ = ["Entry", "Frames", "archived_position", "archived_streams", "read_archived", "read_frames"]


async def _connect(dsn: str) -> asyncpg.Connection:
    async with translated("connecting to the archive"):
        return await asyncpg.connect(dsn)


def _query(stream: str, after: tuple[int, int], until: tuple[int, int] | None) -> tuple[str, list[object]]:
    query = (
        f"SELECT first_ms, first_seq, last_ms, last_seq, payload FROM {TABLE} "
        "WHERE stream = $1 AND source = $2 AND day >= $3 AND (last_ms, last_seq) > ($4, $5)"
    )
    args: list[object] = [stream, source_of(stream), day_of(after[0]), after[0], after[1]]
    if until is not None:
        query += " AND day <= $6 AND (first_ms, first_seq) <= ($7, $8)"
        args += [day_of(until[0]), until[0], until[1]]
    return query + " ORDER BY day, first_ms, first_seq", args


async def read_frames(
    dsn: str, stream: str, *, after: tuple[int, int] = (0, 0), until: tuple[int, int] | None = None
) -> AsyncIterator[Frames]:
    """The archived entries of a raw frame stream strictly after ``after`` and up to and including ``until``,
    in id order, one block at a time as :class:`~streams.archive_columns.Frames`: the decoded columns as the
    archive stores them (computed frame by frame for blocks written without them), entries built on demand."""
    if until is not None and until <= after:
        return
    query, args = _query(stream, after, until)
    conn = await _connect(dsn)
    try:
        async with translated(f"reading the archive of {stream}"), conn.transaction(readonly=True):
            async for row in conn.cursor(query, *args, prefetch=8):
                frames = decode_frames(row["payload"], stream)
                lo = frames.count_through(after) if (row["first_ms"], row["first_seq"]) <= after else 0
                hi = len(frames)
                if until is not None and (row["last_ms"], row["last_seq"]) > until:
                    hi = frames.count_through(until)
                if lo < hi:
                    yield frames if (lo, hi) == (0, len(frames)) else frames.take(slice(lo, hi))
    finally:
        await conn.close()


async def read_archived(
    dsn: str,
    stream: str,
    *,
    after: tuple[int, int] = (0, 0),
    until: tuple[int, int] | None = None,
    batch: int = 10_000,
) -> AsyncIterator[list[Entry]]:
    """The archived entries of one stream key (``frames:binance:p3``, ``control``, ``alerts:binance``),
    strictly after ``after`` and up to and including ``until``, in id order, in lists of at most ``batch``."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if until is not None and until <= after:
        return
    query, args = _query(stream, after, until)
    conn = await _connect(dsn)
    try:
        out: list[Entry] = []
        async with translated(f"reading the archive of {stream}"), conn.transaction(readonly=True):
            async for row in conn.cursor(query, *args, prefetch=8):
                entries = decode_block(row["payload"])
                if (row["first_ms"], row["first_seq"]) <= after:
                    entries = [e for e in entries if parse_id(e[0]) > after]
                if until is not None and (row["last_ms"], row["last_seq"]) > until:
                    entries = [e for e in entries if parse_id(e[0]) <= until]
                out.extend(entries)
                while len(out) >= batch:
                    yield out[:batch]
                    out = out[batch:]
        if out:
            yield out
    finally:
        await conn.close()


async def archived_position(dsn: str, stream: str) -> tuple[int, int] | None:
    """The newest entry id of ``stream`` ever archived (it stays after retention drops the rows), or None."""
    conn = await _connect(dsn)
    try:
        async with translated(f"reading the archive position of {stream}"):
            row = await conn.fetchrow(
                "SELECT last_ms, last_seq, entries FROM archive_positions WHERE stream = $1", stream
            )
    finally:
        await conn.close()
    if row is None or not row["entries"]:
        return None
    return int(row["last_ms"]), int(row["last_seq"])


async def archived_streams(dsn: str, prefix: str = "") -> list[str]:
    """The stream keys starting with ``prefix`` that have archived entries (still kept), sorted."""
    conn = await _connect(dsn)
    try:
        async with translated("listing the archived streams"):
            rows = await conn.fetch(
                "SELECT stream FROM archive_positions p WHERE starts_with(stream, $1) "
                f"AND EXISTS (SELECT 1 FROM {TABLE} b WHERE b.stream = p.stream) ORDER BY stream",
                prefix,
            )
    finally:
        await conn.close()
    return [r["stream"] for r in rows]
