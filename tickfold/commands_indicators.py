"""``tickfold indicators`` and ``tickfold alerts``: read the indicator projections and the alert streams."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
import uvloop
from rich.console import Console
from rich.table import Table

from processors.indicators import KIND, decode_alert, read_points
from projections.alerts import Alert, Point
from streams import keys, log
from streams.frames import DECODERS
from streams.symbols import bundled
from tickfold.errors import TickfoldError, UnknownExchange
from tickfold.runtime import servers
from tickfold.settings import Settings

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _say(text: str) -> None:
    err.print(f"[dim]{text}[/dim]")


def _exchange(exchange_id: str) -> str:
    if exchange_id not in DECODERS:
        raise UnknownExchange(f"unknown exchange {exchange_id!r}; known exchanges: {', '.join(sorted(DECODERS))}")
    return exchange_id


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def indicators(args: argparse.Namespace, settings: Settings) -> int:
    exchange_id = _exchange(args.exchange)
    symbol = bundled(exchange_id).resolve(args.symbol)
    keys.timeframe_part(args.timeframe)
    if args.type != KIND:
        raise TickfoldError(f"unknown indicator type {args.type!r}; known: {KIND}")

    async def read() -> tuple[str, list[Point]]:
        async with log.connect(srv.redis_url) as client:
            return await read_points(client, exchange_id, symbol, args.timeframe, limit=args.limit, user_id=args.user)

    with servers(settings, _say) as srv:
        source, rows = uvloop.run(read())
    _say(f"answered by: {source}")
    if args.json:
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return 0
    table = Table(title=f"{exchange_id} {symbol} {args.timeframe} MACD-V — {len(rows)} newest closed candles")
    for col in ("start (UTC)", "macdv", "signal", "histogram", "zone"):
        table.add_column(col, justify="left" if col in ("start (UTC)", "zone") else "right", no_wrap=True)
    for p in rows:
        table.add_row(_when(p.start), f"{p.macdv:.2f}", f"{p.signal:.2f}", f"{p.histogram:.2f}", p.zone)
    out.print(table)
    return 0


def alerts(args: argparse.Namespace, settings: Settings) -> int:
    exchanges = [_exchange(e) for e in (args.exchange or sorted(DECODERS))]
    with servers(settings, _say) as srv:
        return uvloop.run(_alerts(srv.redis_url, exchanges, args))


def _print(alert: Alert, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode(alert).decode() + "\n")
        sys.stdout.flush()
    else:
        out.print(
            f"{_when(alert.start)} {alert.exchange:<9} {alert.symbol:<10} {alert.timeframe:<4} {alert.rule:<24} "
            f"macdv {alert.macdv:9.2f}  signal {alert.signal:9.2f}  {alert.previous_zone} → {alert.zone}"
        )


async def _alerts(url: str, exchanges: list[str], args: argparse.Namespace) -> int:
    async with log.connect(url) as client:
        last: dict[str, bytes] = {}
        history: list[tuple[int, Alert]] = []
        for ex in exchanges:
            entries = await log.entries(client, keys.alerts_stream(ex), count=args.limit, newest_first=True)
            for eid, fields in reversed(entries):
                history.append((log.parse_id(eid)[0], decode_alert(fields[b"alert"])))
            last[ex] = entries[0][0] if entries else b"0-0"
        batch = sorted(history, key=lambda h: h[0])
        if args.json and not args.follow:
            sys.stdout.write(msgspec.json.encode([a for _, a in batch]).decode() + "\n")
        else:
            for _, a in batch:
                _print(a, args.json)
        if args.follow:
            await _follow(client, exchanges, last, args.json)
    return 0


async def _follow(client: aioredis.Redis, exchanges: list[str], last: dict[str, bytes], as_json: bool) -> None:
    """New alerts as they are appended (the durable stream, not pub/sub), until Ctrl-C."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    streams: dict[Any, Any] = {keys.alerts_stream(ex): last[ex] for ex in exchanges}
    while not stop.is_set():
        read = asyncio.ensure_future(client.xread(streams, block=1000))
        halt = asyncio.ensure_future(stop.wait())
        await asyncio.wait([read, halt], return_when=asyncio.FIRST_COMPLETED)
        halt.cancel()
        if not read.done():
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await read
            break
        reply: Any = read.result()
        for stream, entries in reply or []:
            for eid, fields in entries:
                streams[stream.decode() if isinstance(stream, bytes) else stream] = eid
                _print(decode_alert(fields[b"alert"]), as_json)
