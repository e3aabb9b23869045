"""``tickfold symbols ...`` and ``tickfold tier1 refresh EXCHANGE [--top N] [--quote Q]``.

* ``symbols EXCHANGE [--json]`` folds the control stream's universe events and shows each watched
  symbol with its tier(s) and why;
* ``symbols add|remove EXCHANGE SYMBOL --user U`` — manual adds (SYM-03, :mod:`control.manual`),
  checked against the exchange's REST metadata; a refused symbol exits 1 with the reason;
* ``symbols market EXCHANGE`` / ``symbols ranking`` — SYM-05 and DIFF-03 (:mod:`tickfold.commands_ranking`);
* ``tier1 refresh`` ranks the exchange's markets from its REST API (the exchanges table's REST URL) and
  appends the Tier 1 differences (:mod:`control.tier1`).
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
from control.universe import SymbolAdded, SymbolView, UniverseEvent, view
from projections.tiers import Tier1
from streams import log
from streams.adapters.factory import ExchangeRow
from tickfold.runtime import servers
from tickfold.settings import Settings

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _say(text: str) -> None:
    err.print(f"[dim]{text}[/dim]")


USAGE = (
    "usage: tickfold symbols EXCHANGE [--json] | add EXCHANGE SYMBOL --user U [--reason R] | "
    "remove EXCHANGE SYMBOL --user U | market EXCHANGE [--top N] [--json] | ranking [--top N] [--json]"
)
_ARITY = {"add": 3, "remove": 3, "market": 2, "ranking": 1}


def symbols(args: argparse.Namespace, settings: Settings) -> int:
    words: list[str] = args.words
    action = words[0] if words[0] in _ARITY else "list"
    wanted = _ARITY.get(action, 1)
    problem = ""
    if len(words) != wanted:
        problem = f"{' '.join(words)!r} is not a symbols command"
    elif action in ("add", "remove") and not args.user:
        problem = f"{action} needs --user (whose manual add it is)"
    if problem:
        err.print(f"tickfold symbols: {problem}\n{USAGE}", markup=False)
        return 2
    if action in ("add", "remove"):
        return _manual(args, settings, action, words[1], words[2])
    if action in ("market", "ranking"):
        from tickfold import commands_ranking

        if action == "market":
            return commands_ranking.market(args, settings, words[1])
        return commands_ranking.ranking(args, settings)
    return _list(args, settings, words[0])


def _manual(args: argparse.Namespace, settings: Settings, action: str, exchange_id: str, symbol: str) -> int:
    with servers(settings, _say, postgres=True) as srv:
        assert srv.database_url is not None
        line = uvloop.run(_manual_change(srv.redis_url, srv.database_url, action, exchange_id, symbol, args))
    out.print(line)
    return 0


async def _manual_change(
    redis_url: str, dsn: str, action: str, exchange_id: str, symbol: str, args: argparse.Namespace
) -> str:
    from control import manual
    from control import markets as mk

    async with log.connect(redis_url) as client:
        if action == "remove":
            removed = await manual.remove_manual(client, exchange_id, symbol, args.user, reason=args.reason or "")
            return f"{exchange_id}: {args.user} removed {removed.symbol} (manual)"
        checked, event = await mk.add_manual(dsn, client, exchange_id, symbol, args.user, reason=args.reason or "")
        member = (await t1.read_universe(client)).symbols[exchange_id][checked.symbol]
    where = "shared: in Tier 1" if member.shared else "outside Tier 1: user overflow keys"
    done = "added" if event is not None else "had already added"
    return f"{exchange_id}: {args.user} {done} {checked.symbol} ({checked.native}; manual, {where})"


def _list(args: argparse.Namespace, settings: Settings, exchange_id: str) -> int:
    with servers(settings, _say) as srv:
        rows = uvloop.run(_symbols(srv.redis_url, exchange_id))
    if args.json:
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return 0
    table = Table("symbol", "tier", "user", "why", title=f"{exchange_id}: {len(rows)} symbols")
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
        tier, events = await refresh_row(client, row, args.top, quotes)
    added = sum(1 for e in events if isinstance(e, SymbolAdded))
    return added, len(events) - added, len(tier.ranked)


async def refresh_row(
    client: aioredis.Redis, row: ExchangeRow, n: int, quotes: list[str] | None
) -> tuple[Tier1, list[UniverseEvent]]:
    """Rank the exchange of ``row`` through its REST API and append the Tier 1 differences."""
    async with t1.rest_client(row) as rest:
        return await t1.refresh_tier1(client, rest, row.id, n, quotes=quotes)
