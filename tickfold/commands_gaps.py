"""``tickfold gaps EXCHANGE [SYMBOL] [TIMEFRAME]``: the missing buckets of the stored candle series.

Two kinds, grouped into runs of consecutive buckets:

* ``marked``: in ``gaps:{ex}:{symbol}:{tf}`` — a backfill found the bucket over and REST could not give
  it (an error after retries, or no data where the exchange must have some);
* ``hole``: absent between the oldest and newest stored candle and not (yet) marked — no backfill has
  looked at it. On Coinbase a hole can be a bucket without trades until a backfill confirms it empty.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
import uvloop
from rich.console import Console
from rich.table import Table

from projections import gaps as g
from projections import store
from streams import keys, log
from streams.frames import check_exchange
from streams.symbols import bundled
from tickfold.runtime import servers
from tickfold.settings import Settings

out = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class GapRun(msgspec.Struct, frozen=True, kw_only=True):
    exchange: str
    symbol: str
    timeframe: str
    kind: str  # "marked" or "hole"
    first: int  # bucket start, epoch ms
    last: int
    buckets: int


def _say(text: str) -> None:
    err.print(f"[dim]{text}[/dim]")


def gaps(args: argparse.Namespace, settings: Settings) -> int:
    exchange_id = check_exchange(args.exchange)
    symbol = bundled(exchange_id).resolve(args.symbol) if args.symbol else None
    timeframe = keys.timeframe_part(args.timeframe) if args.timeframe else None
    with servers(settings, _say) as srv:
        rows = uvloop.run(_collect(srv.redis_url, exchange_id, symbol, timeframe))
    if getattr(args, "json", False):
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return 0
    if not rows:
        out.print(f"{exchange_id}: no missing buckets")
        return 0
    out.print(gap_table(exchange_id, rows))
    return 0


async def _collect(url: str, exchange_id: str, symbol: str | None, timeframe: str | None) -> list[GapRun]:
    async with log.connect(url) as client:
        return await find_gaps(client, exchange_id, symbol, timeframe)


async def find_gaps(
    client: aioredis.Redis, exchange_id: str, symbol: str | None = None, timeframe: str | None = None
) -> list[GapRun]:
    """Marked and unmarked missing buckets of the exchange's series (filtered by symbol / timeframe)."""
    series = set(await store.list_series(client, exchange_id))
    if symbol is not None and timeframe is not None:
        series.add(keys.candles(exchange_id, symbol, timeframe))
    out_rows: list[GapRun] = []
    for key in sorted(series):
        _, _, sym, tf = key.split(":")
        if (symbol is not None and sym != symbol) or (timeframe is not None and tf != timeframe):
            continue
        with log.translated(f"reading {key}"):
            stored: Any = await client.zrange(key, 0, -1, withscores=True)
            raw_marks: Any = await client.zrange(keys.gaps(exchange_id, sym, tf), 0, -1)
        marked = {int(m) for m in raw_marks}
        try:
            holes = set(g.holes((int(score) for _, score in stored), tf)) - marked
        except ValueError:  # a timeframe without bucket arithmetic (e.g. 1s): markers only
            holes = set()
        for kind, starts in (("marked", marked), ("hole", holes)):
            try:
                grouped = g.runs(starts, tf)
            except ValueError:
                grouped = [(s, s, 1) for s in sorted(starts)]
            for first, last, n in grouped:
                out_rows.append(
                    GapRun(exchange=exchange_id, symbol=sym, timeframe=tf, kind=kind, first=first, last=last, buckets=n)
                )
    out_rows.sort(key=lambda r: (r.symbol, r.timeframe, r.first))
    return out_rows


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def gap_table(exchange_id: str, rows: list[GapRun]) -> Table:
    total = sum(r.buckets for r in rows)
    table = Table(
        title=f"{exchange_id} — {total} missing bucket(s) in {len({(r.symbol, r.timeframe) for r in rows})} series"
    )
    for col in ("symbol", "timeframe", "from (UTC)", "to (UTC)", "buckets", "kind"):
        table.add_column(col, justify="right" if col == "buckets" else "left", no_wrap=True)
    for r in rows:
        kind = "marked (REST could not fill)" if r.kind == "marked" else "hole (not backfilled)"
        table.add_row(r.symbol, r.timeframe, _utc(r.first), _utc(r.last), str(r.buckets), kind)
    return table
