"""``tickfold symbols EXCHANGE [--json]`` and ``tickfold tier1 refresh EXCHANGE [--top N] [--quote Q]``.

``symbols`` folds the control stream's universe events and shows each watched symbol with its tier(s)
and why; ``tier1 refresh`` ranks the exchange's markets from its REST API (the exchanges table's REST
URL) and appends the Tier 1 differences (:mod:`control.tier1`).
"""

from __future__ import annotations

import argparse
import sys

import msgspec
import redis.asyncio as aioredis
import uvloop
from rich.console import Console
from rich.table import Table

from control import exchanges as repo
from control import tier1 as t1
from control.universe import SymbolAdded, Universe, UniverseEvent
from projections.tiers import Tier1
from streams import log
from streams.adapters.factory import ExchangeRow
from tickfold.errors import TickfoldError
from tickfold.runtime import servers
from tickfold.settings import Settings

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class TierEntry(msgspec.Struct, frozen=True, kw_only=True):
    tier: str
    user: str
    reason: str


class SymbolView(msgspec.Struct, frozen=True, kw_only=True):
    exchange: str
    symbol: str
    shared: bool
    tiers: list[TierEntry]


def _say(text: str) -> None:
    err.print(f"[dim]{text}[/dim]")


def view(universe: Universe, exchange_id: str) -> list[SymbolView]:
    """The universe of one exchange, one row per symbol (sorted), tiers with their users and reasons."""
    rows = []
    for symbol, member in sorted(universe.symbols.get(exchange_id, {}).items()):
        entries = [
            TierEntry(tier=tier, user=user, reason=reason)
            for tier, users in sorted(member.tiers.items())
            for user, reason in sorted(users.items())
        ]
        rows.append(SymbolView(exchange=exchange_id, symbol=symbol, shared=member.shared, tiers=entries))
    return rows


def symbols(args: argparse.Namespace, settings: Settings) -> int:
    with servers(settings, _say) as srv:
        rows = uvloop.run(_symbols(srv.redis_url, args.exchange))
    if args.json:
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return 0
    table = Table("symbol", "tier", "user", "why", title=f"{args.exchange}: {len(rows)} symbols")
    for row in rows:
        for entry in row.tiers:
            table.add_row(row.symbol, entry.tier, entry.user, entry.reason)
    out.print(table)
    return 0


async def _symbols(redis_url: str, exchange_id: str) -> list[SymbolView]:
    async with log.connect(redis_url) as client:
        return view(await t1.read_universe(client), exchange_id)


def tier1(args: argparse.Namespace, settings: Settings) -> int:
    with servers(settings, _say, postgres=True) as srv:
        assert srv.database_url is not None
        added, removed, size = uvloop.run(_refresh(args, srv.redis_url, srv.database_url))
    out.print(f"{args.exchange}: Tier 1 has {size} symbols ({added} added, {removed} removed)")
    return 0


async def _refresh(args: argparse.Namespace, redis_url: str, dsn: str) -> tuple[int, int, int]:
    row = await repo.get_exchange(dsn, args.exchange)
    quotes = [q.strip().upper() for q in args.quote.split(",")] if args.quote else None
    async with log.connect(redis_url) as client:
        tier, events = await _refresh_row(client, row, args.top, quotes)
    added = sum(1 for e in events if isinstance(e, SymbolAdded))
    return added, len(events) - added, len(tier.ranked)


async def _refresh_row(
    client: aioredis.Redis, row: ExchangeRow, n: int, quotes: list[str] | None
) -> tuple[Tier1, list[UniverseEvent]]:
    from streams.rest import BinanceRestClient, CoinbaseRestClient

    if row.adapter_kind == "binance_spot":
        async with BinanceRestClient(row.rest_url) as bn:
            return await t1.refresh_tier1(client, bn, row.id, n, quotes=quotes)
    if row.adapter_kind == "coinbase_advanced_trade":
        async with CoinbaseRestClient(row.rest_url) as cb:
            return await t1.refresh_tier1(client, cb, row.id, n, quotes=quotes)
    raise TickfoldError(f"no REST client for adapter kind {row.adapter_kind!r}")
