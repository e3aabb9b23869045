"""Tier 2 (SYM-02): the positions users hold, in PostgreSQL (``positions``, migration 005).

Opening a position (or changing its quantity) upserts the row; closing deletes it. Each open and close
also appends a :class:`~control.universe.SymbolAdded` / :class:`~control.universe.SymbolRemoved` event
(tier ``tier2``, the user, the reason) to the control stream, so the universe stays a fold of that
stream, and registers / releases the user as a holder (:func:`projections.scope.hold` /
:func:`~projections.scope.release`): a held symbol outside Tier 1 (``pool:{exchange}``) goes to the
user's overflow keys with a TTL, one inside it stays shared (never stored twice), and after a close
nothing refreshes the user's keys, so they run out. :func:`refresh_holds` re-registers every open
position and manual add (SYM-03, :mod:`control.manual`); run it well within the TTL while positions are
held (``serve`` does). Closing a position the user also added manually keeps the hold.

The row is written in a transaction that commits only after the event and the hold went to Redis: a
Redis failure leaves no row behind (and a PostgreSQL failure at commit, a stray event that a later
open/close supersedes).
"""

from __future__ import annotations

import time
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis

from control import universe
from control.commands import append_entry
from control.manual import manual_holds, manual_symbols
from control.tier1 import read_universe
from projections import scope
from streams.symbols import SymbolMap, UnknownSymbol, load_symbol_map
from tickfold.errors import StoreUnavailable, TickfoldError, UnknownExchange

TIER = "tier2"


class NoPosition(TickfoldError):
    """Closing a position that is not open."""


class Position(msgspec.Struct, frozen=True, kw_only=True):
    user: str
    exchange: str
    symbol: str  # canonical BASE-QUOTE
    quantity: str  # the exact decimal, as text
    updated_at: str  # ISO 8601


async def _connect(dsn: str) -> Any:
    try:
        return await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"PostgreSQL is not reachable: {exc}") from exc


async def _check_exchange(conn: Any, exchange_id: str) -> None:
    if await conn.fetchval("SELECT 1 FROM exchanges WHERE id = $1", exchange_id) is None:
        known = [r["id"] for r in await conn.fetch("SELECT id FROM exchanges ORDER BY id")]
        raise UnknownExchange(f"unknown exchange {exchange_id!r}; known exchanges: {', '.join(known)}")


def canonical_symbol(symbols: SymbolMap, text: str) -> str:
    """``text`` (native or canonical) as a canonical symbol in the exchange's market list, or UnknownSymbol."""
    ex = symbols.exchange
    if not symbols.markets:
        raise UnknownSymbol(
            f"no market list for {ex} to check {text!r} against; run `tickfold markets sync {ex}` first"
        )
    try:
        canonical = symbols.resolve(text)
    except UnknownSymbol as exc:
        raise UnknownSymbol(f"{ex} has no market {text!r}: {exc}") from exc
    if canonical not in {m.canonical for m in symbols.markets.values()}:
        n = len(symbols.markets)
        raise UnknownSymbol(f"{ex} has no market {text!r} (looked for {canonical} among its {n} markets)")
    return canonical


async def _append_event(client: aioredis.Redis, event: universe.UniverseEvent) -> bytes:
    """Append a universe event to the control stream (field ``event``) and publish it."""
    return await append_entry(client, "event", universe.encode(event))


async def open_position(
    dsn: str,
    client: aioredis.Redis,
    user: str,
    exchange: str,
    symbol: str,
    qty: Decimal,
    *,
    ttl_ms: int = scope.DEFAULT_TTL_MS,
) -> Position:
    """Open a position (or set the quantity of an open one); returns the row. A newly opened position
    appends ``symbol:added`` (tier2, "position opened"); every call (re)registers the user as a holder."""
    if not user:
        raise TickfoldError("a position needs a user")
    if qty == 0:
        raise TickfoldError("a position's quantity cannot be 0 (close it instead)")
    conn = await _connect(dsn)
    try:
        await _check_exchange(conn, exchange)
        canonical = canonical_symbol(await load_symbol_map(client, exchange), symbol)
        async with conn.transaction():
            record = await conn.fetchrow(
                """INSERT INTO positions (user_id, exchange_id, symbol, quantity, updated_at)
                   VALUES ($1, $2, $3, $4, now())
                   ON CONFLICT (user_id, exchange_id, symbol)
                   DO UPDATE SET quantity = EXCLUDED.quantity, updated_at = now()
                   RETURNING user_id, exchange_id, symbol, quantity, updated_at, (xmax = 0) AS inserted""",
                user,
                exchange,
                canonical,
                qty,
            )
            if record["inserted"]:
                event = universe.SymbolAdded(
                    exchange=exchange,
                    at_ns=time.time_ns(),
                    symbol=canonical,
                    tier=TIER,
                    user=user,
                    reason="position opened",
                )
                await _append_event(client, event)
            await scope.hold(client, exchange, canonical, user, ttl_ms)
    finally:
        await conn.close()
    return _position(record)


async def close_position(dsn: str, client: aioredis.Redis, user: str, exchange: str, symbol: str) -> Position:
    """Close an open position: delete the row, append ``symbol:removed`` (tier2, "position closed") and
    release the user, whose overflow keys then run out with their TTL. Returns the deleted row."""
    conn = await _connect(dsn)
    try:
        await _check_exchange(conn, exchange)
        try:
            canonical = canonical_symbol(await load_symbol_map(client, exchange), symbol)
        except UnknownSymbol:
            canonical = symbol.strip().upper()  # a market delisted since: the row still names it
        async with conn.transaction():
            record = await conn.fetchrow(
                """DELETE FROM positions WHERE user_id = $1 AND exchange_id = $2 AND symbol = $3
                   RETURNING user_id, exchange_id, symbol, quantity, updated_at""",
                user,
                exchange,
                canonical,
            )
            if record is None:
                raise NoPosition(f"{user} has no open position in {exchange} {canonical}")
            event = universe.SymbolRemoved(
                exchange=exchange,
                at_ns=time.time_ns(),
                symbol=canonical,
                tier=TIER,
                user=user,
                reason="position closed",
            )
            await _append_event(client, event)
            if canonical not in manual_symbols(await read_universe(client), exchange, user):
                await scope.release(client, exchange, canonical, user)  # (a manual add keeps holding it)
    finally:
        await conn.close()
    return _position(record)


async def list_positions(dsn: str, user: str | None = None) -> list[Position]:
    """The open positions (of one user, or everyone's), by user, exchange, symbol."""
    conn = await _connect(dsn)
    try:
        records = await conn.fetch(
            """SELECT user_id, exchange_id, symbol, quantity, updated_at FROM positions
                WHERE $1::text IS NULL OR user_id = $1
                ORDER BY user_id, exchange_id, symbol""",
            user,
        )
    finally:
        await conn.close()
    return [_position(r) for r in records]


async def refresh_holds(dsn: str, client: aioredis.Redis, ttl_ms: int = scope.DEFAULT_TTL_MS) -> int:
    """Re-register the holder of every open position and every manual add (SYM-03, from the universe),
    extending their overflow keys' TTL; returns how many (user, exchange, symbol) holds."""
    held = {(p.user, p.exchange, p.symbol) for p in await list_positions(dsn)}
    held |= {(user, exchange, symbol) for exchange, symbol, user in manual_holds(await read_universe(client))}
    for user, exchange, symbol in sorted(held):
        await scope.hold(client, exchange, symbol, user, ttl_ms)
    return len(held)


def _position(record: Any) -> Position:
    updated: datetime = record["updated_at"]
    quantity: Decimal = record["quantity"]
    return Position(
        user=record["user_id"],
        exchange=record["exchange_id"],
        symbol=record["symbol"],
        quantity=str(quantity),
        updated_at=updated.isoformat(),
    )
