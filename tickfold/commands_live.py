"""Commands that touch live feeds: ``exchanges list|set``, ``ingest-live`` and ``simulate``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import msgspec
from rich.console import Console
from rich.table import Table

from control import exchanges as repo
from streams import log
from streams.adapters.factory import ExchangeRow, build_adapter
from streams.symbols import Market, load_symbol_map, store_markets
from tickfold.errors import ConfigError, TickfoldError
from tickfold.runtime import servers
from tickfold.settings import Settings

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _say(text: str) -> None:
    err.print(f"[dim]{text}[/dim]")


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def exchanges(args: argparse.Namespace, settings: Settings) -> int:
    import uvloop

    with servers(settings, _say, postgres=True) as srv:
        assert srv.database_url is not None
        dsn = srv.database_url
        if args.action == "set":
            if args.ws_url is None and args.rest_url is None:
                raise TickfoldError("exchanges set: give --ws-url and/or --rest-url")
            row = uvloop.run(repo.set_urls(dsn, args.exchange, ws_url=args.ws_url, rest_url=args.rest_url))
            out.print(f"{row.id}: ws {', '.join(row.ws_urls)}  rest {row.rest_url}")
            return 0
        rows = uvloop.run(repo.list_exchanges(dsn))
    if getattr(args, "json", False):
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return 0
    table = Table(title="exchanges")
    for col in ("id", "name", "kind", "enabled", "WebSocket", "REST", "timeframes"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.id,
            r.display_name,
            r.adapter_kind,
            "yes" if r.enabled else "no",
            "\n".join(r.ws_urls),
            r.rest_url,
            " ".join(r.supported_timeframes),
        )
    out.print(table)
    return 0


def ingest_live(args: argparse.Namespace, settings: Settings) -> int:
    import uvloop

    with servers(settings, _say, postgres=True) as srv:
        assert srv.database_url is not None
        return uvloop.run(_ingest_live(args, srv.redis_url, srv.database_url))


async def _ingest_live(args: argparse.Namespace, redis_url: str, dsn: str) -> int:
    from streams.rest import RestError

    row = await repo.get_exchange(dsn, args.exchange)
    async with log.connect(redis_url) as client:
        try:
            n = await store_markets(client, row.id, await fetch_markets(row))
            _say(f"{row.id}: {n} markets synced from {row.rest_url}")
        except RestError as exc:
            _say(f"{row.id}: market list not refreshed ({exc}); using the stored one")
        symbol_map = await load_symbol_map(client, row.id)
    symbols = tuple(symbol_map.native(symbol_map.resolve(s)) for s in args.symbols.split(","))
    timeframes = tuple(args.timeframes.split(","))
    stop = asyncio.Event()
    _stop_on_signals(stop)
    async with log.connect(redis_url, reply_timeout=None) as client:  # the sink bounds each round trip
        adapter = build_adapter(row, client, symbols=symbols, timeframes=timeframes)
        _say(f"{row.id}: connecting to {row.ws_urls[0]} for {', '.join(symbols)}; Ctrl-C stops")
        task = asyncio.create_task(adapter.run(stop))
        if args.duration:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.duration)
            stop.set()
        await task
    out.print(f"{row.id}: appended {adapter.sink.appended} frames to frames:{row.id}")
    return 0


def simulate(args: argparse.Namespace, settings: Settings) -> int:
    import uvloop

    return uvloop.run(_simulate(args))


async def _simulate(args: argparse.Namespace) -> int:
    import importlib.resources

    from streams.simulator import serve_forever
    from tickfold.commands import DEMO_RECORDINGS

    stop = asyncio.Event()
    _stop_on_signals(stop)
    data = importlib.resources.files("tickfold").joinpath("data/recordings")
    with contextlib.ExitStack() as files:
        recordings = []
        if args.recorded:
            for ex, name in DEMO_RECORDINGS.items():
                recordings.append((ex, files.enter_context(importlib.resources.as_file(data.joinpath(name)))))
        symbols: int | tuple[str, ...] = args.symbols if args.symbols else ()
        rest_documents = _rest_documents(getattr(args, "rest_doc", None) or [])
        await serve_forever(
            args.port,
            seed=args.seed,
            rate=args.rate,
            binance_symbols=symbols or ("BTCUSDT", "ETHUSDT"),
            coinbase_symbols=symbols or ("BTC-USD", "ETH-USD"),
            recordings=recordings,
            speed=args.speed,
            rest_documents=rest_documents,
            print_line=out.print,
            stop=stop,
        )
    return 0


def _rest_documents(flags: list[str]) -> list[tuple[str, str]]:
    """``--rest-doc ENDPOINT=FILE`` flags, checked (endpoint known, file readable JSON) before serving."""
    from streams.simulator.recorded_rest import RecordedDocs, parse_rest_doc

    try:
        pairs = [parse_rest_doc(flag) for flag in flags]
        RecordedDocs(dict(pairs))
    except ValueError as exc:
        raise ConfigError("--rest-doc", str(exc)) from exc
    return pairs


def markets(args: argparse.Namespace, settings: Settings) -> int:
    import uvloop

    with servers(settings, _say, postgres=True) as srv:
        assert srv.database_url is not None
        n, trading = uvloop.run(_sync_markets(srv.redis_url, srv.database_url, args.exchange))
    out.print(f"{args.exchange}: {n} markets stored ({trading} trading) in markets:{args.exchange}")
    return 0


async def fetch_markets(row: ExchangeRow) -> list[Market]:
    """The exchange's market list from its REST metadata (the row's REST URL, e.g. the simulator's)."""
    from streams.rest import BinanceRestClient, CoinbaseRestClient

    if row.adapter_kind == "binance_spot":
        async with BinanceRestClient(row.rest_url) as bn:
            return await bn.markets()
    if row.adapter_kind == "coinbase_advanced_trade":
        async with CoinbaseRestClient(row.rest_url) as cb:
            return await cb.markets()
    raise TickfoldError(f"no REST client for adapter kind {row.adapter_kind!r}")


async def _sync_markets(redis_url: str, dsn: str, exchange_id: str) -> tuple[int, int]:
    row = await repo.get_exchange(dsn, exchange_id)
    found = await fetch_markets(row)
    async with log.connect(redis_url) as client:
        n = await store_markets(client, row.id, [msgspec.structs.replace(m, exchange=row.id) for m in found])
    return n, sum(1 for m in found if m.status == "TRADING")
