"""The connection-state projection (EXC-04): the control stream's lifecycle events folded into Postgres.

* **The fold** (:func:`apply`, :func:`fold`) is pure: a :class:`Row` per exchange and a lifecycle event
  in, the new row out. Times are the events' ``at_ns`` (truncated to the microseconds a ``timestamptz``
  keeps, so a row read back from Postgres folds on exactly as the one in memory), never a clock.
  Each connection of an exchange (Binance shards its streams over several) is a :class:`Link` while it
  is open or opening; it goes when it disconnects. The exchange is ``connected`` while any link is,
  else ``stale`` while any is, else ``connecting`` while any is, else ``disconnected``. A
  ``Disconnected`` without a connection id drops every link of the exchange (what a supervisor emits
  when it restarts after a crash and its old connections are gone unannounced).
* **Heartbeats are throttled in the fold**: a heartbeat sets ``last_heartbeat`` only when the last
  recorded one is at least ``heartbeat_every_s`` older (event time) or the state changed since it.
  The decision depends on the stored row alone, so any batching, a restart or a rebuild records the
  same heartbeats; heartbeats in between change nothing and are not written at all.
* **The writer** (:class:`ConnectionStateProjection`, a :class:`processors.runner.Handler` on the
  ``control`` stream with one leased owner) folds a batch onto the rows it loads and writes the rows
  that changed *and* the stream position in one Postgres transaction (serialized by an advisory
  lock), then XACKs. Entries at or before the stored position are skipped, so a redelivery changes
  nothing. A batch that changes no row writes nothing, not even the position (folding those entries
  again changes nothing either). Commands, outcomes, gaps, entries that are not control entries at
  all, and events of exchanges missing from the ``exchanges`` table are skipped, never a crash.
* :func:`rebuild` resets the rows and refolds the whole stream, in one transaction under the same
  lock, so it gives the rows the live projection has.

``updated_at`` is the event time of the row's last change (a row no event ever touched keeps the
migration's). ``last_error`` is the reason of the last disconnect that was not planned: a stop
(``retry_in_s`` None, reason ``stopped``) and a handover (``retry_in_s`` 0: rotation or an announced
shutdown, the next connection already open) are not errors. It stays after recovery; ``last_error_at``
says when.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import msgspec
import redis.asyncio as aioredis

from control import events as ev
from control.commands import parse_entry
from processors.leases import Fence
from processors.runner import BatchResult, Runner, RunnerConfig, RunStats
from streams import keys
from streams.log import Entry, parse_id, translated
from tickfold.errors import StoreUnavailable
from tickfold.settings import Settings

log = logging.getLogger(__name__)

GROUP: Final = "connection_state"
PROJECTION: Final = "connection_state"
#: The label the runner's leases carry (``lease:connection_state:control:p0``).
LABEL: Final = "control"
DEFAULT_HEARTBEAT_EVERY_S: Final = 30.0
_LOCK_KEY: Final = zlib.crc32(b"tickfold projection connection_state")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_CONNECTION_LOST = (OSError, asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, asyncpg.CannotConnectNowError)

# ---------------------------------------------------------------------------------------- the fold


class Link(msgspec.Struct, frozen=True, kw_only=True):
    """One open or opening connection of an exchange."""

    state: str  # connecting / connected / stale
    since_us: int
    url: str = ""


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """An exchange's connection state; times in epoch microseconds (event time)."""

    exchange_id: str
    connection_state: str = "disconnected"
    state_since_us: int | None = None
    connected_at_us: int | None = None  # when the exchange last became connected (kept after it drops)
    last_heartbeat_us: int | None = None
    last_error: str | None = None
    last_error_at_us: int | None = None
    updated_at_us: int | None = None  # None: no event has changed it
    links: dict[str, Link] = {}  # connection id -> link; treated as immutable


def _overall(links: Mapping[str, Link]) -> str:
    states = {link.state for link in links.values()}
    for state in ("connected", "stale", "connecting"):
        if state in states:
            return state
    return "disconnected"


def _is_error(event: ev.Disconnected) -> bool:
    stopped = event.retry_in_s is None and event.reason == "stopped"
    return not stopped and event.retry_in_s != 0.0


def apply(row: Row, event: ev.ControlEvent, heartbeat_every_us: int) -> Row:
    """The row after ``event`` (an event of ``row``'s exchange)."""
    at = event.at_ns // 1000
    conn = event.connection
    links = row.links
    error: str | None = None
    match event:
        case ev.Heartbeat():
            last = row.last_heartbeat_us
            if last is None or at - last >= heartbeat_every_us or (row.state_since_us or 0) > last:
                return msgspec.structs.replace(row, last_heartbeat_us=at, updated_at_us=at)
            return row
        case ev.Connecting(url=url):
            links = {**links, conn: Link(state="connecting", since_us=at, url=url)}
        case ev.Connected(url=url):
            links = {**links, conn: Link(state="connected", since_us=at, url=url)}
        case ev.Stale():
            links = {
                c: msgspec.structs.replace(link, state="stale", since_us=at) if c == conn or not conn else link
                for c, link in links.items()
            }
        case ev.Disconnected():
            links = {c: link for c, link in links.items() if conn and c != conn}
            error = event.reason if _is_error(event) else None
        case _:  # a gap changes no connection
            return row
    changes: dict[str, Any] = {}
    state = _overall(links)
    if state != row.connection_state:
        changes.update(connection_state=state, state_since_us=at)
        if state == "connected" and row.connection_state != "stale":
            changes["connected_at_us"] = at
    if error is not None:
        changes.update(last_error=error, last_error_at_us=at)
    if changes:
        changes["updated_at_us"] = at
    return msgspec.structs.replace(row, links=links, **changes)


def fold(rows: Mapping[str, Row], events: Iterable[ev.ControlEvent], heartbeat_every_us: int) -> dict[str, Row]:
    """Every event applied in order, onto ``rows`` (exchanges without a row start disconnected)."""
    out = dict(rows)
    for event in events:
        out[event.exchange] = apply(
            out.get(event.exchange) or Row(exchange_id=event.exchange), event, heartbeat_every_us
        )
    return out


def lifecycle_events(entries: Iterable[Entry]) -> tuple[list[tuple[bytes, ev.ControlEvent]], int]:
    """The lifecycle events among control-stream entries, and how many entries were not control entries
    at all (logged; the supervisor answers malformed commands with a rejection)."""
    events: list[tuple[bytes, ev.ControlEvent]] = []
    garbage = 0
    for entry_id, fields in entries:
        parsed = parse_entry(fields)
        if isinstance(parsed, str):
            garbage += 1
            log.warning("control entry %s skipped: %s", entry_id.decode(), parsed)
        elif isinstance(parsed, ev.ControlEvent):
            events.append((entry_id, parsed))
    return events, garbage


# ---------------------------------------------------------------------------------------- Postgres


def to_datetime(us: int | None) -> datetime | None:
    return None if us is None else _EPOCH + timedelta(microseconds=us)


def to_us(value: datetime | None) -> int | None:
    return None if value is None else (value - _EPOCH) // timedelta(microseconds=1)


_ROW_COLUMNS = (
    "exchange_id, connection_state, state_since, connected_at, last_heartbeat, last_error, last_error_at, updated_at"
)
_UPSERT_ROW = f"""
INSERT INTO exchange_connections ({_ROW_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (exchange_id) DO UPDATE SET
    connection_state = EXCLUDED.connection_state, state_since = EXCLUDED.state_since,
    connected_at = EXCLUDED.connected_at, last_heartbeat = EXCLUDED.last_heartbeat,
    last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at, updated_at = EXCLUDED.updated_at"""
_UPSERT_LINK = """
INSERT INTO exchange_connection_links (exchange_id, connection, state, since, url) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (exchange_id, connection) DO UPDATE SET
    state = EXCLUDED.state, since = EXCLUDED.since, url = EXCLUDED.url"""
_SET_POSITION = """
INSERT INTO projection_positions (projection, stream, last_id) VALUES ($1, $2, $3)
ON CONFLICT (projection) DO UPDATE SET stream = EXCLUDED.stream, last_id = EXCLUDED.last_id"""


async def load_rows(conn: Any, exchange_ids: Sequence[str] | None = None) -> dict[str, Row]:
    """Stored rows (all, or those of ``exchange_ids``) with their links."""
    where, args = (
        ("WHERE exchange_id = ANY($1::text[])", [list(exchange_ids)]) if exchange_ids is not None else ("", [])
    )
    links: dict[str, dict[str, Link]] = {}
    for r in await conn.fetch(f"SELECT * FROM exchange_connection_links {where} ORDER BY 1, 2", *args):
        link = Link(state=r["state"], since_us=to_us(r["since"]) or 0, url=r["url"])
        links.setdefault(r["exchange_id"], {})[r["connection"]] = link
    rows: dict[str, Row] = {}
    for r in await conn.fetch(f"SELECT {_ROW_COLUMNS} FROM exchange_connections {where} ORDER BY 1", *args):
        rows[r["exchange_id"]] = Row(
            exchange_id=r["exchange_id"],
            connection_state=r["connection_state"],
            state_since_us=to_us(r["state_since"]),
            connected_at_us=to_us(r["connected_at"]),
            last_heartbeat_us=to_us(r["last_heartbeat"]),
            last_error=r["last_error"],
            last_error_at_us=to_us(r["last_error_at"]),
            updated_at_us=to_us(r["updated_at"]),
            links=links.get(r["exchange_id"], {}),
        )
    return rows


async def _position(conn: Any) -> tuple[int, int]:
    last = await conn.fetchval("SELECT last_id FROM projection_positions WHERE projection = $1", PROJECTION)
    return parse_id(last) if last is not None else (0, 0)


@dataclasses.dataclass
class Written:
    rows: int = 0
    links: int = 0
    heartbeats: int = 0


async def _write(conn: Any, before: Mapping[str, Row], after: Mapping[str, Row]) -> Written:
    """Write the rows and links of ``after`` that differ from ``before``."""
    out = Written()
    rows, upserts, deletes = [], [], []
    for ex, new in sorted(after.items()):
        old = before.get(ex) or Row(exchange_id=ex)
        if msgspec.structs.replace(new, links={}) != msgspec.structs.replace(old, links={}):
            rows.append(
                (
                    ex,
                    new.connection_state,
                    *map(to_datetime, (new.state_since_us, new.connected_at_us, new.last_heartbeat_us)),
                    new.last_error,
                    to_datetime(new.last_error_at_us),
                    to_datetime(new.updated_at_us),
                )
            )
            out.heartbeats += new.last_heartbeat_us != old.last_heartbeat_us
        deletes += [(ex, c) for c in old.links if c not in new.links]
        for c, link in sorted(new.links.items()):
            if old.links.get(c) != link:
                upserts.append((ex, c, link.state, to_datetime(link.since_us), link.url))
    if rows:
        await conn.executemany(_UPSERT_ROW, rows)
    if deletes:
        await conn.executemany(
            "DELETE FROM exchange_connection_links WHERE exchange_id = $1 AND connection = $2", deletes
        )
    if upserts:
        await conn.executemany(_UPSERT_LINK, upserts)
    out.rows, out.links = len(rows), len(deletes) + len(upserts)
    return out


@dataclasses.dataclass
class ProjectionStats:
    batches: int = 0
    folded: int = 0  # lifecycle events applied
    redelivered: int = 0  # entries at or before the stored position, skipped
    garbage: int = 0  # entries that are not control entries
    unknown_exchange: int = 0  # events of exchanges missing from the exchanges table
    rows_written: int = 0
    links_written: int = 0
    heartbeats_written: int = 0


class ConnectionStateProjection:
    """The runner handler: see the module docstring."""

    group = GROUP
    stream = keys.CONTROL_STREAM

    def __init__(self, pool: Any, *, heartbeat_every_s: float = DEFAULT_HEARTBEAT_EVERY_S) -> None:
        self.pool = pool
        self.heartbeat_every_us = round(heartbeat_every_s * 1_000_000)
        self.stats = ProjectionStats()

    async def handle(self, client: aioredis.Redis, entries: Sequence[Entry], fence: Fence) -> BatchResult:
        result = await self.commit(entries)
        with translated("acknowledging control entries"):
            await client.xack(self.stream, self.group, *[eid for eid, _ in entries])
        return result

    async def commit(self, entries: Sequence[Entry]) -> BatchResult:
        """Fold the entries past the stored position and write the changed rows with the new position."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                return await self._commit(conn, entries)
        except (*_CONNECTION_LOST, asyncpg.InterfaceError) as exc:
            # A connection lost inside the transaction surfaces as its rollback's InterfaceError.
            if isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc.__context__, _CONNECTION_LOST):
                raise
            raise StoreUnavailable(f"writing the connection state to PostgreSQL: {exc!r}") from exc

    async def _commit(self, conn: Any, entries: Sequence[Entry]) -> BatchResult:
        s = self.stats
        s.batches += 1
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        position = await _position(conn)
        fresh = [e for e in entries if parse_id(e[0]) > position]
        s.redelivered += len(entries) - len(fresh)
        events, garbage = lifecycle_events(fresh)
        s.garbage += garbage
        known = {r["id"] for r in await conn.fetch("SELECT id FROM exchanges")}
        kept = [e for _, e in events if e.exchange in known]
        s.unknown_exchange += len(events) - len(kept)
        if not kept:
            return BatchResult(processed=len(fresh), skipped=len(entries) - len(fresh))
        touched = sorted({e.exchange for e in kept})
        before = await load_rows(conn, touched)
        after = fold({ex: before.get(ex) or Row(exchange_id=ex) for ex in touched}, kept, self.heartbeat_every_us)
        written = await _write(conn, before, after)
        if written.rows or written.links:
            await conn.execute(_SET_POSITION, PROJECTION, self.stream, fresh[-1][0].decode())
        s.folded += len(kept)
        s.rows_written += written.rows
        s.links_written += written.links
        s.heartbeats_written += written.heartbeats
        return BatchResult(processed=len(fresh), skipped=len(entries) - len(fresh), events=written.rows)


async def rebuild(
    dsn: str, client: aioredis.Redis, *, heartbeat_every_s: float = DEFAULT_HEARTBEAT_EVERY_S, chunk: int = 1000
) -> tuple[int, dict[str, Row]]:
    """Reset the connection-state tables and refold the whole control stream into them, in one transaction
    under the projection's lock (the live projection waits, then skips what the rebuild covered).
    Returns (entries read, the rows written)."""
    every_us = round(heartbeat_every_s * 1_000_000)
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"PostgreSQL is not reachable: {exc}") from exc
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            known = {r["id"] for r in await conn.fetch("SELECT id FROM exchanges")}
            rows: dict[str, Row] = {}
            read, last, start = 0, b"", "-"
            while True:
                with translated(f"reading {keys.CONTROL_STREAM}"):
                    batch: Any = await client.xrange(keys.CONTROL_STREAM, min=start, count=chunk)
                if not batch:
                    break
                read += len(batch)
                last = batch[-1][0]
                start = "(" + last.decode()
                events, _ = lifecycle_events(batch)
                rows = fold(rows, (e for _, e in events if e.exchange in known), every_us)
            await conn.execute(
                """UPDATE exchange_connections SET connection_state = 'disconnected', state_since = NULL,
                       connected_at = NULL, last_heartbeat = NULL, last_error = NULL, last_error_at = NULL"""
            )
            await conn.execute("DELETE FROM exchange_connection_links")
            await conn.execute("DELETE FROM projection_positions WHERE projection = $1", PROJECTION)
            changed = {ex: row for ex, row in rows.items() if row != Row(exchange_id=ex)}
            await _write(conn, {}, changed)
            if last:
                await conn.execute(_SET_POSITION, PROJECTION, keys.CONTROL_STREAM, last.decode())
    finally:
        await conn.close()
    return read, changed


# ---------------------------------------------------------------------------------------- running it


async def run_connection_state(
    client: aioredis.Redis,
    dsn: str,
    config: RunnerConfig,
    *,
    heartbeat_every_s: float = DEFAULT_HEARTBEAT_EVERY_S,
    until_idle: bool = False,
    stop: asyncio.Event | None = None,
    stats: ProjectionStats | None = None,
) -> RunStats:
    """Run the projection (one leased owner among any number of instances) until ``stop`` is set, or
    with ``until_idle`` until the control stream is drained. Never trims the control stream: it is the
    source of truth other readers fold from the start."""
    try:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"PostgreSQL is not reachable: {exc}") from exc
    try:
        projection = ConnectionStateProjection(pool, heartbeat_every_s=heartbeat_every_s)
        if stats is not None:
            projection.stats = stats
        config = dataclasses.replace(config, trim_every_s=math.inf)
        runner = Runner(client, LABEL, GROUP, 1, lambda _: projection, config)
        return await runner.run(until_idle=until_idle, stop=stop)
    finally:
        await pool.close()


async def _migrated(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"PostgreSQL is not reachable: {exc}") from exc
    try:
        ok = bool(await conn.fetchval("SELECT to_regclass('public.projection_positions') IS NOT NULL"))
    finally:
        await conn.close()
    if not ok:
        log.warning("connection state not projected: its tables are missing; run `tickfold migrate`")
    return ok


@contextlib.asynccontextmanager
async def alongside(
    client: aioredis.Redis,
    dsn: str | None,
    settings: Settings,
    *,
    until_idle: bool,
    stop: asyncio.Event,
) -> AsyncIterator[ProjectionStats | None]:
    """Run the projection in the background for the block when a database is given and the
    ``connection_state`` setting is on (yields its live stats, else None). Leaving the block waits for
    it (it drains with ``until_idle``, else it ends with ``stop``); an error in the block cancels it."""
    if dsn is None or not settings.connection_state or not await _migrated(dsn):
        yield None
        return
    stats = ProjectionStats()
    config = RunnerConfig(
        consumer=settings.consumer_name(),
        batch_size=settings.batch_size,
        block_ms=settings.block_ms,
        lease_ttl_ms=settings.lease_ttl_ms,
        max_deliveries=settings.max_deliveries,
    )
    task = asyncio.create_task(
        run_connection_state(
            client,
            dsn,
            config,
            heartbeat_every_s=settings.heartbeat_write_every_s,
            until_idle=until_idle,
            stop=stop,
            stats=stats,
        ),
        name="connection-state",
    )
    try:
        yield stats
    except BaseException:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise
    await task
