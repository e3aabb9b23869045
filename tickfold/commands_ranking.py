"""``tickfold symbols market EXCHANGE`` (SYM-05) and ``tickfold symbols ranking`` (DIFF-03).

``market``: each market of the exchange with its 24h volume (in its quote and in USD, as Tier 1 ranks
it), last price, market cap where the exchange gives one, and whether it trades or why not. ``ranking``:
base/quote pairs by 24h USD volume summed over the exchanges (every USD-like quote counts as USD), with
each exchange's part. Both read the exchanges' REST APIs at the ``rest_url`` of their ``exchanges`` row.
"""

from __future__ import annotations

import argparse
import sys

import msgspec
import uvloop
from rich.console import Console
from rich.table import Table

from control import markets as mk
from projections.ranking import MarketRow, PairRank
from tickfold.runtime import servers
from tickfold.settings import Settings

out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _say(text: str) -> None:
    err.print(f"[dim]{text}[/dim]")


def _top(args: argparse.Namespace) -> int | None:
    top: int | None = args.top
    return None if top == 0 else (20 if top is None else top)


def _usd(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def market(args: argparse.Namespace, settings: Settings, exchange_id: str) -> int:
    with servers(settings, _say, postgres=True) as srv:
        assert srv.database_url is not None
        rows = uvloop.run(mk.market_table(srv.database_url, exchange_id, _top(args)))
    if args.json:
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return 0
    out.print(_market_table(exchange_id, rows))
    return 0


def _market_table(exchange_id: str, rows: list[MarketRow]) -> Table:
    table = Table(title=f"{exchange_id}: {len(rows)} markets by 24h volume (market cap: where the exchange gives one)")
    for col in ("symbol", "24h volume (quote)", "24h volume (USD)", "last price", "market cap", "trades"):
        table.add_column(col, justify="left" if col in ("symbol", "trades") else "right")
    for r in rows:
        trades = "yes" if r.tradable and not r.why_not else ("yes, " if r.tradable else "no: ") + r.why_not
        table.add_row(
            r.symbol if r.native == r.symbol else f"{r.symbol} ({r.native})",
            f"{r.quote_volume_24h:,.2f} {r.quote}",
            _usd(r.usd_volume_24h),
            f"{r.last_price:g}",
            r.market_cap or "-",
            trades,
        )
    return table


def ranking(args: argparse.Namespace, settings: Settings) -> int:
    with servers(settings, _say, postgres=True) as srv:
        assert srv.database_url is not None
        used, ranked = uvloop.run(mk.cross_exchange_ranking(srv.database_url, args.exchange, _top(args)))
    if args.json:
        sys.stdout.write(msgspec.json.encode(ranked).decode() + "\n")
        return 0
    out.print(_ranking_table(used, ranked))
    return 0


def _ranking_table(exchanges: list[str], ranked: list[PairRank]) -> Table:
    table = Table(title=f"pairs by combined 24h USD volume over {', '.join(exchanges)} (USD-like quotes as USD)")
    for col in ("#", "pair", "USD volume", "parts"):
        table.add_column(col, justify="right" if col in ("#", "USD volume") else "left")
    for r in ranked:
        parts = ", ".join(f"{p.exchange} {p.symbol} {_usd(p.usd_volume_24h)}" for p in r.parts)
        table.add_row(str(r.rank), r.pair, _usd(r.usd_volume_24h), parts)
    return table
