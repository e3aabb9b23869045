"""``tickfold positions open|close|list``: Tier 2, the positions users hold (control/positions.py)."""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal, InvalidOperation

import msgspec
from rich.console import Console
from rich.table import Table

from control import positions as repo
from streams import log
from tickfold.errors import TickfoldError
from tickfold.runtime import servers
from tickfold.settings import Settings

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _say(text: str) -> None:
    err.print(f"[dim]{text}[/dim]")


def _quantity(text: str) -> Decimal:
    try:
        qty = Decimal(text)
    except InvalidOperation as exc:
        raise TickfoldError(f"positions open: quantity {text!r} is not a number") from exc
    if not qty.is_finite():
        raise TickfoldError(f"positions open: quantity {text!r} is not a finite number")
    return qty


def positions(args: argparse.Namespace, settings: Settings) -> int:
    import uvloop

    with servers(settings, _say, postgres=True) as srv:
        assert srv.database_url is not None
        dsn = srv.database_url
        if args.action == "list":
            rows = uvloop.run(repo.list_positions(dsn, args.user))
        else:
            row = uvloop.run(_change(args, srv.redis_url, dsn))
            verb = "opened" if args.action == "open" else "closed"
            out.print(f"{row.user}: {verb} {row.exchange} {row.symbol} (quantity {row.quantity})")
            return 0
    if args.json:
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return 0
    table = Table(title="positions")
    for col in ("user", "exchange", "symbol", "quantity", "updated"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.user, r.exchange, r.symbol, r.quantity, r.updated_at)
    out.print(table)
    return 0


async def _change(args: argparse.Namespace, redis_url: str, dsn: str) -> repo.Position:
    async with log.connect(redis_url) as client:
        if args.action == "open":
            qty = _quantity(args.quantity)
            return await repo.open_position(dsn, client, args.user, args.exchange, args.symbol, qty)
        return await repo.close_position(dsn, client, args.user, args.exchange, args.symbol)
