"""``/exchanges``: metadata (EXC-01) with connection state (EXC-04), and the control commands (CTL-02).

A control endpoint only appends the command to the control stream (with a new ``command_id``) and
answers 202: the supervisor acts on it and answers on the control stream (``command:accepted`` /
``command:rejected``, then the lifecycle events), which is where a caller looks for the outcome.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar import Request, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import FromPath, JSONBody

from control import commands
from control.api.auth import SECURITY_SCHEME, control_guard, read_guard, requested_by
from control.api.context import Ctx, resolve_symbol
from control.api.schemas import CommandAccepted, Connection, Exchange, Exchanges, StartBody
from control.exchanges import get_exchange, list_exchanges
from streams import keys
from streams.adapters.factory import ExchangeRow
from tickfold.errors import KeyFormatError, StoreUnavailable

_STATES = "SELECT exchange_id, connection_state, connected_at, last_heartbeat, last_error, updated_at FROM {table}"


async def connection_states(dsn: str, exchange_id: str | None = None) -> dict[str, Connection]:
    """Rows of ``exchange_connections``; none (not an error) while the table is empty or not there yet."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"PostgreSQL is not reachable: {exc}") from exc
    try:
        query = _STATES.format(table="exchange_connections")
        rows = await (conn.fetch(query + " WHERE exchange_id = $1", exchange_id) if exchange_id else conn.fetch(query))
    except asyncpg.UndefinedTableError:
        return {}
    finally:
        await conn.close()
    return {
        r["exchange_id"]: Connection(
            state=r["connection_state"],
            connected_at=r["connected_at"],
            last_heartbeat=r["last_heartbeat"],
            last_error=r["last_error"],
            updated_at=r["updated_at"],
        )
        for r in rows
    }


def _exchange(row: ExchangeRow, connection: Connection | None) -> Exchange:
    return Exchange(
        id=row.id,
        display_name=row.display_name,
        adapter_kind=row.adapter_kind,
        ws_urls=row.ws_urls,
        rest_url=row.rest_url,
        api_limits=row.api_limits,
        supported_timeframes=row.supported_timeframes,
        enabled=row.enabled,
        connection=connection,
    )


@get("/exchanges", guards=[read_guard], tags=["exchanges"], summary="Exchanges with their connection state")
async def exchanges_list(ctx: Ctx) -> Exchanges:
    rows = await list_exchanges(ctx.database_url)
    states = await connection_states(ctx.database_url)
    return Exchanges([_exchange(r, states.get(r.id)) for r in rows])


@get("/exchanges/{exchange_id:str}", guards=[read_guard], tags=["exchanges"], summary="One exchange")
async def exchange_one(ctx: Ctx, exchange_id: FromPath[str]) -> Exchange:
    keys.exchange_part(exchange_id)
    row = await get_exchange(ctx.database_url, exchange_id)
    states = await connection_states(ctx.database_url, exchange_id)
    return _exchange(row, states.get(exchange_id))


async def _append(
    ctx: Ctx, request: Request[Any, Any, Any], exchange_id: str, kind: str, body: StartBody | None = None
) -> CommandAccepted:
    keys.exchange_part(exchange_id)
    row = await get_exchange(ctx.database_url, exchange_id)  # unknown: 404
    if kind in ("start", "connect") and not row.enabled:
        raise HTTPException(status_code=409, detail=f"exchange {exchange_id!r} is disabled in the exchanges table")
    body = body or StartBody()
    try:
        timeframes = [keys.timeframe_part(tf) for tf in body.timeframes]
        symbols = [await resolve_symbol(ctx.redis, exchange_id, s) for s in body.symbols]
    except KeyFormatError as exc:  # (an unknown symbol in a body is a bad request, not a missing resource)
        raise ValidationException(detail=f"bad start command: {exc}") from exc
    common: dict[str, Any] = {
        "command_id": commands.new_command_id(),
        "exchange": exchange_id,
        "requested_by": requested_by(request),
        "at_ns": commands.now_ns(),
    }
    command: commands.Command
    if kind == "start":
        command = commands.Start(**common, symbols=symbols, timeframes=timeframes)
    elif kind == "stop":
        command = commands.Stop(**common)
    elif kind == "connect":
        command = commands.Connect(**common)
    else:
        command = commands.Disconnect(**common)
    entry_id = await commands.append_command(ctx.redis, command)
    return CommandAccepted(
        command_id=command.command_id,
        command=kind,
        exchange=exchange_id,
        entry_id=entry_id.decode(),
        requested_by=command.requested_by,
    )


_CONTROL: dict[str, Any] = {
    "guards": [control_guard],
    "status_code": 202,
    "tags": ["control"],
    "security": [{SECURITY_SCHEME: []}],
}


@post("/exchanges/{exchange_id:str}/start", summary="Start an exchange (symbols, timeframes optional)", **_CONTROL)
async def exchange_start(
    ctx: Ctx, request: Request[Any, Any, Any], exchange_id: FromPath[str], data: JSONBody[StartBody | None] = None
) -> CommandAccepted:
    return await _append(ctx, request, exchange_id, "start", data)


@post("/exchanges/{exchange_id:str}/stop", summary="Stop an exchange", **_CONTROL)
async def exchange_stop(ctx: Ctx, request: Request[Any, Any, Any], exchange_id: FromPath[str]) -> CommandAccepted:
    return await _append(ctx, request, exchange_id, "stop")


@post("/exchanges/{exchange_id:str}/connect", summary="Reconnect a running exchange now", **_CONTROL)
async def exchange_connect(ctx: Ctx, request: Request[Any, Any, Any], exchange_id: FromPath[str]) -> CommandAccepted:
    return await _append(ctx, request, exchange_id, "connect")


@post("/exchanges/{exchange_id:str}/disconnect", summary="Drop a running exchange's connections", **_CONTROL)
async def exchange_disconnect(ctx: Ctx, request: Request[Any, Any, Any], exchange_id: FromPath[str]) -> CommandAccepted:
    return await _append(ctx, request, exchange_id, "disconnect")


ROUTES = [exchanges_list, exchange_one, exchange_start, exchange_stop, exchange_connect, exchange_disconnect]
