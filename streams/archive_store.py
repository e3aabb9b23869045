"""The archive's write side in PostgreSQL: day partitions on demand, blocks + position in one transaction,
retention by dropping whole days, and the per-stream status.

Tables (migrations/006_archive.sql): ``archive_blocks`` (partitioned by day, then by source) and
``archive_positions`` (stream key -> last archived entry id). :func:`write_blocks` locks the stream's
position row, drops the entries at or below it (redeliveries), COPYs the rest as blocks and moves the
position, all in one transaction: an archiver killed between that commit and its XACK archives nothing
twice when the entries come back.
"""

from __future__ import annotations

import contextlib
import re
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from streams.archive_codec import encode_block, raw_size
from streams.log import Entry, parse_id
from tickfold.errors import StoreUnavailable, TickfoldError

TABLE = "archive_blocks"
_COLUMNS = (
    "stream",
    "source",
    "day",
    "first_ms",
    "first_seq",
    "last_ms",
    "last_seq",
    "entries",
    "raw_bytes",
    "payload",
)
_SOURCE = re.compile(r"^[a-z0-9_]+$")
_DAY_TABLE = re.compile(r"^archive_blocks_d(\d{8})$")
_LOCK_KEY = zlib.crc32(b"tickfold archive partitions")
CONNECTION_LOST = (OSError, asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, asyncpg.CannotConnectNowError)


class ArchiveMissing(TickfoldError):
    """The archive tables do not exist: the database was not migrated."""


@contextlib.asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """PostgreSQL transport errors -> StoreUnavailable (retryable); a missing table -> ArchiveMissing."""
    try:
        yield
    except asyncpg.UndefinedTableError as exc:
        raise ArchiveMissing(f"{what}: the archive tables are missing; run `tickfold migrate` ({exc})") from None
    except (*CONNECTION_LOST, asyncpg.InterfaceError) as exc:
        if isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc.__context__, CONNECTION_LOST):
            raise
        raise StoreUnavailable(f"{what}: PostgreSQL: {exc!r}") from exc


async def check_tables(conn: Any) -> None:
    """Raise ArchiveMissing unless the archive tables exist (before anything is read or acknowledged)."""
    async with translated("checking the archive tables"):
        if not await conn.fetchval("SELECT to_regclass('public.archive_positions') IS NOT NULL"):
            raise ArchiveMissing("the archive tables are missing; run `tickfold migrate`")


def source_of(stream: str) -> str:
    """The sub-partition of a stream key: its exchange (``frames:binance:p3`` -> ``binance``), or the key
    itself for a key without one (``control``)."""
    parts = stream.split(":")
    source = parts[1] if len(parts) > 1 else parts[0]
    if not _SOURCE.match(source) or len(source) > 32:  # it names a table: at most 63 bytes in all
        raise ValueError(
            f"cannot archive stream {stream!r}: its source {source!r} must match {_SOURCE.pattern} "
            "with 32 characters at most"
        )
    return source


def day_of(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, UTC).date()


def day_table(day: date) -> str:
    return f"{TABLE}_d{day:%Y%m%d}"


def split_by_day(entries: Sequence[Entry], max_block: int) -> list[tuple[date, list[Entry]]]:
    """Consecutive runs of entries of one UTC day (of their ids), at most ``max_block`` entries each."""
    out: list[tuple[date, list[Entry]]] = []
    for entry in entries:
        day = day_of(parse_id(entry[0])[0])
        if not out or out[-1][0] != day or len(out[-1][1]) >= max_block:
            out.append((day, []))
        out[-1][1].append(entry)
    return out


async def ensure_partitions(conn: Any, wanted: set[tuple[date, str]]) -> None:
    """Create the day and source partitions ``wanted`` that are missing, in their own transaction (under
    an advisory lock, so concurrent archivers don't race), before any data goes in."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        for day, source in sorted(wanted):
            parent = day_table(day)
            nxt = day + timedelta(days=1)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {parent} PARTITION OF {TABLE} "
                f"FOR VALUES FROM ('{day.isoformat()}') TO ('{nxt.isoformat()}') PARTITION BY LIST (source)"
            )
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {parent}_{source} PARTITION OF {parent} FOR VALUES IN ('{source}')"
            )


async def write_blocks(conn: Any, stream: str, entries: Sequence[Entry], *, max_block: int) -> tuple[int, int]:
    """Archive the entries of ``stream`` past its position, and the new position, in one transaction
    (the partitions must exist). Returns (entries archived, entries skipped as already archived)."""
    source = source_of(stream)
    async with conn.transaction():
        await conn.execute("INSERT INTO archive_positions (stream) VALUES ($1) ON CONFLICT DO NOTHING", stream)
        row = await conn.fetchrow(
            "SELECT last_ms, last_seq FROM archive_positions WHERE stream = $1 FOR UPDATE", stream
        )
        position = (int(row["last_ms"]), int(row["last_seq"]))
        fresh = [e for e in entries if parse_id(e[0]) > position]
        if not fresh:
            return 0, len(entries)
        records = []
        for day, block in split_by_day(fresh, max_block):
            first, last = parse_id(block[0][0]), parse_id(block[-1][0])
            payload = encode_block(block, stream=stream)
            records.append((stream, source, day, *first, *last, len(block), raw_size(block), payload))
        await conn.copy_records_to_table(TABLE, records=records, columns=_COLUMNS)
        last = parse_id(fresh[-1][0])
        await conn.execute(
            "UPDATE archive_positions SET last_ms = $2, last_seq = $3, entries = entries + $4, updated_at = now() "
            "WHERE stream = $1",
            stream,
            *last,
            len(fresh),
        )
    return len(fresh), len(entries) - len(fresh)


async def day_partitions(conn: Any) -> list[date]:
    """The days that have a partition, oldest first."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass",
        TABLE,
    )
    days = [datetime.strptime(m[1], "%Y%m%d").date() for r in rows if (m := _DAY_TABLE.match(r["relname"]))]
    return sorted(days)


async def drop_days_before(conn: Any, oldest_kept: date) -> list[date]:
    """Retention: drop the day partitions (every stream's blocks of those days) before ``oldest_kept``."""
    dropped = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        for day in await day_partitions(conn):
            if day < oldest_kept:
                await conn.execute(f"DROP TABLE IF EXISTS {day_table(day)}")
                dropped.append(day)
    return dropped


async def apply_retention(conn: Any, days: int, *, today: date | None = None) -> list[date]:
    """Keep the last ``days`` UTC days (today included; PostgreSQL's clock unless ``today`` is given);
    ``days == 0`` keeps everything."""
    if days <= 0:
        return []
    if today is None:
        today = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    assert today is not None
    return await drop_days_before(conn, today - timedelta(days=days - 1))


@dataclass(frozen=True)
class StreamStatus:
    stream: str
    archived_to: str  # the last archived entry id ("ms-seq"), "" when none
    archived_total: int  # entries ever archived (retention does not lower it)
    entries: int  # entries in the archive now
    blocks: int
    raw_bytes: int  # their field names and values, uncompressed
    stored_bytes: int  # their compressed payloads
    oldest_day: date | None
    newest_day: date | None


async def status(conn: Any) -> tuple[list[StreamStatus], int]:
    """Per stream: how far it is archived, what the archive holds; and the archive's size on disk."""
    rows = await conn.fetch(
        "SELECT p.stream, p.last_ms, p.last_seq, p.entries AS total, b.entries, b.blocks, b.raw, b.stored, "
        "b.oldest, b.newest FROM archive_positions p LEFT JOIN ("
        "  SELECT stream, sum(entries) AS entries, count(*) AS blocks, sum(raw_bytes) AS raw, "
        "  sum(octet_length(payload)) AS stored, min(day) AS oldest, max(day) AS newest "
        f"  FROM {TABLE} GROUP BY stream) b USING (stream) ORDER BY p.stream"
    )
    disk = await conn.fetchval(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_partition_tree($1::regclass) t "
        "JOIN pg_class c ON c.oid = t.relid",
        TABLE,
    )
    out = [
        StreamStatus(
            stream=r["stream"],
            archived_to=f"{r['last_ms']}-{r['last_seq']}" if r["total"] else "",
            archived_total=int(r["total"]),
            entries=int(r["entries"] or 0),
            blocks=int(r["blocks"] or 0),
            raw_bytes=int(r["raw"] or 0),
            stored_bytes=int(r["stored"] or 0),
            oldest_day=r["oldest"],
            newest_day=r["newest"],
        )
        for r in rows
    ]
    return out, int(disk)
