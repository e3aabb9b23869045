"""``tickfold status [--json]`` and ``tickfold rebuild connection-state``: the connection state (EXC-04).

``status`` reads the rows the connection-state projection (:mod:`control.connection_state`) wrote to
Postgres: per exchange its state and since when, when it last became connected, its last recorded
heartbeat (recorded at most every ``heartbeat_write_every_s``), its last error, and its open
connections. "Ago" columns are measured against this machine's clock, at display time only.
``rebuild`` resets those tables and refolds the whole control stream into them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec
import uvloop
from rich.console import Console
from rich.table import Table

from control import connection_state as cs
from streams import log
from tickfold.errors import StoreUnavailable, TickfoldError
from tickfold.runtime import servers
from tickfold.settings import Settings

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _say(text: str) -> None:
    err.print(f"[dim]{text}[/dim]")


class ConnectionJson(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    state: str
    since: str
    url: str


class StatusJson(msgspec.Struct, frozen=True, kw_only=True):
    exchange: str
    state: str
    state_since: str | None
    connected_at: str | None
    last_heartbeat: str | None
    last_error: str | None
    last_error_at: str | None
    updated_at: str | None
    connections: list[ConnectionJson]
    heartbeat_age_s: float | None  # seconds since last_heartbeat, by this machine's clock


def _iso(us: int | None) -> str | None:
    value = cs.to_datetime(us)
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _age_s(us: int | None, now_us: int) -> float | None:
    return None if us is None else round((now_us - us) / 1e6, 3)


def _ago(us: int | None, now_us: int) -> str:
    if us is None:
        return "-"
    s = (now_us - us) / 1e6
    if s < 0:
        return "in the future"
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit} ago"
    return f"{s:.1f}s ago"


def as_json(rows: Sequence[cs.Row], now_us: int) -> list[StatusJson]:
    return [
        StatusJson(
            exchange=r.exchange_id,
            state=r.connection_state,
            state_since=_iso(r.state_since_us),
            connected_at=_iso(r.connected_at_us),
            last_heartbeat=_iso(r.last_heartbeat_us),
            last_error=r.last_error,
            last_error_at=_iso(r.last_error_at_us),
            updated_at=_iso(r.updated_at_us),
            connections=[
                ConnectionJson(id=c, state=link.state, since=_iso(link.since_us) or "", url=link.url)
                for c, link in sorted(r.links.items())
            ],
            heartbeat_age_s=_age_s(r.last_heartbeat_us, now_us),
        )
        for r in rows
    ]


def table(rows: Sequence[cs.Row], now_us: int) -> Table:
    t = Table(title="connection state (EXC-04)")
    for col in ("exchange", "state", "since", "connected at (UTC)", "last heartbeat", "connections", "last error"):
        t.add_column(col, no_wrap=col != "last error")
    colour = {"connected": "green", "stale": "yellow", "connecting": "cyan", "disconnected": "red"}
    for r in rows:
        connected_at = cs.to_datetime(r.connected_at_us)
        open_ = sum(link.state == "connected" for link in r.links.values())
        error = f"{r.last_error} ({_ago(r.last_error_at_us, now_us)})" if r.last_error else "-"
        t.add_row(
            r.exchange_id,
            f"[{colour.get(r.connection_state, 'white')}]{r.connection_state}[/]",
            _ago(r.state_since_us, now_us),
            connected_at.strftime("%Y-%m-%d %H:%M:%S") if connected_at else "-",
            _ago(r.last_heartbeat_us, now_us),
            f"{open_}/{len(r.links)} connected" if r.links else "-",
            error,
        )
    return t


async def read_rows(dsn: str) -> list[cs.Row]:
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"PostgreSQL is not reachable: {exc}") from exc
    try:
        return list((await cs.load_rows(conn)).values())
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
        raise TickfoldError(f"the connection-state tables are missing or old ({exc}); run `tickfold migrate`") from exc
    finally:
        await conn.close()


def status(args: argparse.Namespace, settings: Settings) -> int:
    with servers(settings, _say, postgres=True) as srv:
        assert srv.database_url is not None
        rows = uvloop.run(read_rows(srv.database_url))
    now_us = time.time_ns() // 1000
    if args.json:
        sys.stdout.write(msgspec.json.encode(as_json(rows, now_us)).decode() + "\n")
    else:
        out.print(table(rows, now_us))
    return 0


async def _rebuild(redis_url: str, dsn: str, heartbeat_every_s: float) -> tuple[int, dict[str, Any]]:
    async with log.connect(redis_url) as client:
        read, rows = await cs.rebuild(dsn, client, heartbeat_every_s=heartbeat_every_s)
    return read, rows


def rebuild(args: argparse.Namespace, settings: Settings) -> int:
    with servers(settings, _say, postgres=True) as srv:
        assert srv.database_url is not None
        read, rows = uvloop.run(_rebuild(srv.redis_url, srv.database_url, settings.heartbeat_write_every_s))
    out.print(f"connection state rebuilt from {read} control-stream entries: {len(rows)} exchange row(s) written")
    return 0
