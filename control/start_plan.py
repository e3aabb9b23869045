"""Checking a start command before it is accepted, the way the adapter factory will build it.

A ``start`` names an exchange (a row of the exchanges table), symbols (any spelling the exchange's
market list resolves; none: the adapter kind's defaults) and timeframes. :func:`plan_start` resolves
them to exchange-native symbols or raises a TickfoldError with the reason, which the supervisor puts in
its ``Rejected`` answer; ``serve --autostart`` uses it to refuse before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from control import events as ev
from control import exchanges as repo
from control.commands import append_entry
from streams import keys
from streams.adapters.factory import ExchangeRow, build_adapter
from streams.symbols import UnknownSymbol, load_symbol_map
from tickfold.errors import TickfoldError

DEFAULT_SYMBOLS: dict[str, tuple[str, ...]] = {  # a start without symbols, by adapter kind
    "binance_spot": ("BTC-USDT", "ETH-USDT"),
    "coinbase_advanced_trade": ("BTC-USD", "ETH-USD"),
}
DEFAULT_TIMEFRAMES = ("1m",)


@dataclass(frozen=True)
class Plan:
    """A start command checked and resolved: the row, the exchange-native symbols, the timeframes."""

    row: ExchangeRow
    symbols: tuple[str, ...]
    timeframes: tuple[str, ...]


async def exchange_row(dsn: str, exchange_id: str) -> ExchangeRow:
    """The exchange's row; UnknownExchange (naming the known ones) when there is none."""
    keys.exchange_part(exchange_id)
    try:
        return await repo.get_exchange(dsn, exchange_id)
    except asyncpg.PostgresError as exc:
        raise TickfoldError(f"cannot read the exchanges table ({exc}); has `tickfold migrate` run?") from exc


async def plan_start(
    client: aioredis.Redis, dsn: str, exchange_id: str, symbols: tuple[str, ...], timeframes: tuple[str, ...]
) -> Plan:
    """Check a start the way the factory will: raises a TickfoldError with the reason (UnknownExchange for
    an unknown, disabled or unsupported exchange, UnknownSymbol / KeyFormatError for bad symbols or
    timeframes); StoreUnavailable when Redis or PostgreSQL can't be reached (retry, don't reject)."""
    row = await exchange_row(dsn, exchange_id)
    wanted = symbols or DEFAULT_SYMBOLS.get(row.adapter_kind, ())
    if not wanted:
        raise UnknownSymbol(f"no symbols given, and adapter kind {row.adapter_kind!r} has no default set")
    symbol_map = await load_symbol_map(client, exchange_id)
    known = symbol_map.markets
    natives: list[str] = []
    for text in wanted:
        canonical = symbol_map.resolve(text)
        native = symbol_map.native(canonical)
        if known and native not in known:
            raise UnknownSymbol(f"{exchange_id} has no market {text!r} (tickfold markets sync {exchange_id})")
        keys.candles(exchange_id, canonical, "1m")  # a symbol that would break a key is refused here
        natives.append(native)
    tfs = tuple(dict.fromkeys(timeframes or DEFAULT_TIMEFRAMES))
    for tf in tfs:
        keys.timeframe_part(tf)
    plan = Plan(row, tuple(dict.fromkeys(natives)), tfs)
    build_adapter(row, client, symbols=plan.symbols, timeframes=plan.timeframes)  # the factory's own checks
    return plan


async def append_event(client: aioredis.Redis, event: ev.ControlEvent) -> bytes:
    """Append a lifecycle event to the control stream and publish it (as the adapters' emitter does)."""
    return await append_entry(client, "event", ev.encode(event))
