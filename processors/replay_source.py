"""Where a replay reads raw frames: the archive (PostgreSQL) first, then the live stream after it.

One partition stream ``frames:{exchange_id}:p{n}`` at a time, in entry-id order, with no entry twice
and none missing: the archive holds what was trimmed from the stream (:mod:`streams.archive`), the
stream holds the rest. Reading goes archive -> stream -> archive ... as long as the stream shows it
lost entries beyond what has been read (:func:`continues`): trimming behind the archiver during a long
replay is followed, and an entry that is in neither place (trimmed without an archive, or dropped by
the archive's retention) stops the replay with :class:`ReplayGapError` instead of folding a history
with a hole in it: the entries trimmed before the stream's oldest one (``entries-added`` - ``length``
when the replay began) must all come from the archive.

Every partition is read up to the position it had when the replay began (``until``), so a replay
ends even while frames keep arriving, and reads only (XRANGE, XINFO, GET): it never writes to the
source. The archive is optional: without a database (or before anything was archived) the stream
alone is the source, and it must then still hold its first entry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from streams import archive, keys
from streams.archive_columns import Frames
from streams.archive_store import ArchiveMissing
from streams.log import Entry, ResponseError, parse_id, stored_partitions, translated
from tickfold.errors import TickfoldError

Position = tuple[int, int]


class ReplayGapError(TickfoldError):
    """Frames were trimmed from a raw stream and are not in the archive: an exact replay is impossible."""


def id_text(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


@dataclass(frozen=True)
class PartitionSource:
    """One partition of a replay: its stream name and the position it is read up to (inclusive)."""

    partition: int
    stream: str
    until: Position
    archived: Position | None  # how far the archive reaches (None: nothing archived, or no archive)
    first: Position | None = None  # the stream's oldest entry when the replay began (None: empty, or no stream)
    trimmed: int | None = None  # how many entries had been removed before it (None: not reported, Redis < 7)


@dataclass(frozen=True)
class Sources:
    exchange_id: str
    partitions: int
    parts: list[PartitionSource]
    dsn: str | None  # the archive's database; None: the streams alone


async def _stream_info(client: aioredis.Redis, stream: str) -> tuple[Position | None, Position | None, int | None]:
    """(newest entry, oldest entry, entries removed so far) of a stream, read at once; (None, None, 0) when
    there is no such stream."""
    with translated(f"inspecting {stream}"):
        try:
            info: Any = await client.xinfo_stream(stream)
        except ResponseError:  # no such key
            return None, None, 0
    newest, oldest, added = info.get("last-entry"), info.get("first-entry"), info.get("entries-added")
    return (
        parse_id(newest[0]) if newest else None,
        parse_id(oldest[0]) if oldest else None,
        None if added is None else int(added) - int(info["length"]),
    )


async def continues(client: aioredis.Redis, stream: str, cursor: Position, read: int) -> bool:
    """Whether the stream's entries after ``cursor`` are all still there, ``read`` entries having been read
    up to it (archive and stream). Trimming removes the oldest entries: while the stream still holds
    ``cursor`` or older, nothing after it went; otherwise nothing after it went only if every entry ever
    removed (``entries-added`` - ``length``, Redis 7) was among those read. Redis 6.2 reports neither: it is
    taken to continue."""
    with translated(f"inspecting {stream}"):
        try:
            info: Any = await client.xinfo_stream(stream)
        except ResponseError:  # no such key: nothing left in the stream
            return False
    added = info.get("entries-added")
    if added is None:
        return True
    first = info.get("first-entry")
    if first and parse_id(first[0]) <= cursor:
        return True
    return read >= int(added) - int(info["length"])


async def plan(client: aioredis.Redis, exchange_id: str, dsn: str | None) -> Sources:
    """The partitions of an exchange (the stored count, or the archive's streams when the stream keys are
    gone) and the position each is read up to: its newest entry now, or the archive's end."""
    count = await stored_partitions(client, exchange_id) or 0
    prefix = f"{keys.frames_stream(exchange_id, 0)[:-1]}"  # frames:{exchange_id}:p
    if dsn is not None:
        try:
            archived_names = await archive.archived_streams(dsn, prefix)
        except ArchiveMissing:  # a database that never held an archive (not migrated): the streams alone
            dsn, archived_names = None, []
        for name in archived_names:
            suffix = name[len(prefix) :]
            if suffix.isdigit():
                count = max(count, int(suffix) + 1)
    parts: list[PartitionSource] = []
    for p in range(count):
        stream = keys.frames_stream(exchange_id, p)
        archived = await archive.archived_position(dsn, stream) if dsn is not None else None
        last, first, trimmed = await _stream_info(client, stream)
        until = max(last or (0, 0), archived or (0, 0))
        if until > (0, 0):
            parts.append(PartitionSource(p, stream, until, archived, first, trimmed))
    return Sources(exchange_id, count, parts, dsn)


async def frames(
    client: aioredis.Redis, sources: Sources, part: PartitionSource, *, size: int
) -> AsyncIterator[Frames]:
    """The entries of one partition up to ``part.until``, in id order, at most ``size`` at a time (module
    docstring), as columns: archived blocks with the decoded columns the archive stores, stream entries with
    columns computed frame by frame (:mod:`streams.archive_columns`)."""
    pos: Position = (0, 0)
    read = 0
    head = part.first or (part.until[0], part.until[1] + 1)  # entries before it exist only in the archive
    before_head = 0  # how many of those were read
    while pos < part.until:
        round_start = pos
        if sources.dsn is not None:
            async for block in archive.read_frames(sources.dsn, part.stream, after=pos, until=part.until):
                lo, hi = block.count_through(pos), block.count_through(part.until)
                for at in range(lo, hi, size):
                    chunk = (
                        block
                        if (at, min(at + size, hi)) == (0, len(block))
                        else block.take(slice(at, min(at + size, hi)))
                    )
                    if pos < head:
                        before_head += chunk.count_before(head)
                    yield chunk
                    pos, read = chunk.position(len(chunk) - 1), read + len(chunk)
        if round_start == (0, 0) and part.trimmed and before_head < part.trimmed:
            where = "the archive holds" if sources.dsn is not None else "no archive is configured: it holds"
            raise ReplayGapError(
                f"{part.stream}: {part.trimmed:,} entries had been trimmed from the stream before "
                f"{id_text(head)}, and {where} {before_head:,} of them (dropped by its retention, or never "
                "archived): the frames of this partition can't be replayed exactly"
            )
        while pos < part.until:
            with translated(f"reading {part.stream}"):
                reply: Any = await client.xrange(part.stream, f"({id_text(pos)}", id_text(part.until), count=size)
            if not await continues(client, part.stream, pos, read):
                break  # entries after ``pos`` were trimmed (before or while it was read): back to the archive
            if not reply:
                return  # the stream ends before ``until`` (the archive reached further)
            chunk = Frames.of_entries(sources.exchange_id, [(eid, fields) for eid, fields in reply])
            yield chunk
            pos, read = chunk.position(len(chunk) - 1), read + len(chunk)
        if pos < part.until and pos == round_start:
            where = "the archive" if sources.dsn is not None else "an archive (none is configured)"
            what = "its oldest entries" if pos == (0, 0) else f"entries after {id_text(pos)}"
            raise ReplayGapError(
                f"{part.stream}: {what} were trimmed from the stream, and {where} does not hold them: "
                "the frames of this partition can't be replayed exactly"
            )


async def batches(
    client: aioredis.Redis, sources: Sources, part: PartitionSource, *, size: int
) -> AsyncIterator[list[Entry]]:
    """:func:`frames` as lists of entries."""
    async for chunk in frames(client, sources, part, size=size):
        yield chunk.entries()
