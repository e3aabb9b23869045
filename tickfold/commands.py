"""What each ``tickfold`` command does, on the servers :mod:`tickfold.runtime` picks."""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import importlib.resources
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis
import uvloop
from rich.console import Console
from rich.table import Table

from processors.candles import GROUP, CandleProcessor, from_settings
from processors.indicators import GROUP as INDICATORS
from processors.indicators import IndicatorProcessor
from processors.runner import Runner, RunnerConfig, RunStats
from projections import scope, store
from projections.candles import Candle
from streams import keys, log, recorded
from streams.frames import EXCHANGES, check_exchange
from streams.symbols import SymbolMap, bundled, load_symbol_map
from tickfold import (
    commands_api,
    commands_archive,
    commands_gaps,
    commands_indicators,
    commands_live,
    commands_positions,
    commands_replay,
    commands_serve,
    commands_status,
    commands_symbols,
)
from tickfold.apart import run_apart
from tickfold.errors import TickfoldError
from tickfold.runtime import Servers, servers
from tickfold.settings import Settings

T = TypeVar("T")
DEMO_RECORDINGS = {
    "binance": "binance_2021-04-04_btcusdt_ethusdt_dotusdt.frames.jsonl",
    "coinbase": "coinbase_2026-08-09_btc-usd_eth-usd.frames.jsonl",
}

out = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _say(text: str) -> None:
    err.print(f"[dim]{text}[/dim]")


def dispatch(command: str, args: argparse.Namespace, settings: Settings) -> int:
    handlers: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "demo": demo,
        "migrate": migrate,
        "ingest": ingest,
        "process": process,
        "candles": candles,
        "dead": dead,
        "exchanges": commands_live.exchanges,
        "ingest-live": commands_live.ingest_live,
        "simulate": commands_live.simulate,
        "gaps": commands_gaps.gaps,
        "indicators": commands_indicators.indicators,
        "alerts": commands_indicators.alerts,
        "markets": commands_live.markets,
        "serve": commands_serve.serve,
        "start": commands_serve.start,
        "stop": commands_serve.stop,
        "api": commands_api.api,
        "status": commands_status.status,
        "rebuild": commands_replay.rebuild,  # (connection-state: commands_status.rebuild)
        "replay": commands_replay.replay,
        "symbols": commands_symbols.symbols,
        "tier1": commands_symbols.tier1,
        "positions": commands_positions.positions,
        "archive": commands_archive.archive,
    }
    return handlers[command](args, settings)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


async def _with_redis(url: str, work: Callable[[aioredis.Redis], Awaitable[int]]) -> int:
    async with log.connect(url) as client:
        return await work(client)


# ------------------------------------------------------------------------------------------ commands


def migrate(args: argparse.Namespace, settings: Settings) -> int:
    from migrations import runner

    with servers(settings, _say, postgres=True) as srv:
        assert srv.database_url is not None
        if args.status:
            rows = _run(runner.status(srv.database_url))
            for version, name, applied in rows:
                out.print(f"{version:03d} {name:<32} {'applied' if applied else 'pending'}")
            return 0
        done = _run(runner.migrate(srv.database_url, progress=_say))
        out.print(f"{len(done)} migration(s) applied" if done else "database is up to date")
    return 0


def ingest(args: argparse.Namespace, settings: Settings) -> int:
    exchange_id = check_exchange(args.exchange)
    path = Path(args.file)
    if not path.is_file():
        raise TickfoldError(f"no such file: {path}")
    with servers(settings, _say) as srv:
        n = _run(_with_redis(srv.redis_url, lambda c: _ingest(c, exchange_id, path, settings.partitions)))
    out.print(f"appended {n} frames to the raw streams of {exchange_id} (frames:{exchange_id}:p*)")
    return 0


async def _ingest(client: aioredis.Redis, exchange_id: str, path: Path, partitions: int) -> int:
    try:
        return await log.append_frames(client, exchange_id, recorded.read_frames(path), partitions=partitions)
    except ValueError as exc:
        raise TickfoldError(str(exc)) from None


def process(args: argparse.Namespace, settings: Settings) -> int:
    exchanges = [check_exchange(e) for e in (args.exchange or EXCHANGES)]
    # backfill: REST URLs from the exchanges table; connection state (EXC-04) when a database is configured
    pg = settings.backfill or (settings.connection_state and settings.database_url is not None)
    pg = pg or settings.archive  # the archiver (setting ``archive``) writes to PostgreSQL
    with servers(settings, _say, postgres=pg) as srv:
        return _run(_process(srv, settings, exchanges, until_idle=args.until_idle))


async def _process(srv: Servers, settings: Settings, exchanges: Sequence[str], *, until_idle: bool) -> int:
    from control import connection_state
    from control import exchanges as exchange_rows
    from processors.archiver import alongside as archiver_alongside
    from processors.gapwatch import GapWatchConfig, GapWatchStats, run_gapwatch

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    rows = []
    if settings.backfill:
        assert srv.database_url is not None
        rows = [r for r in await exchange_rows.list_exchanges(srv.database_url) if r.id in exchanges and r.enabled]
        _say(f"backfill: REST {', '.join(f'{r.id} {r.rest_url}' for r in rows) or 'none (no enabled exchange rows)'}")
    gap_config = GapWatchConfig(
        consumer=settings.consumer_name(),
        block_ms=settings.block_ms,
        history=settings.candle_history,
        backfill_history=settings.backfill_history,
    )
    gap_stats: GapWatchStats | None = None
    # Live, the indicator processors run in a process of their own (tickfold/apart.py: an alert is not held
    # up behind candle batches); draining (--until-idle), in this one, after the candles.
    apart = settings.indicators and not until_idle
    here = msgspec.structs.replace(settings, indicators=False) if apart else settings
    indicators = asyncio.create_task(run_apart(srv.redis_url, settings, exchanges, stop)) if apart else None
    try:
        async with (
            log.connect(srv.redis_url) as client,
            connection_state.alongside(client, srv.database_url, settings, until_idle=until_idle, stop=stop) as cs,
            archiver_alongside(
                client,
                srv.database_url,
                exchanges,
                commands_archive.enabled(settings),
                until_idle=until_idle,
                stop=stop,
            ) as archived,
        ):
            if not rows:
                results = await run_processors(client, here, exchanges, until_idle=until_idle, stop=stop)
            elif until_idle:  # fold first, then the control stream's events once: the same result every run
                results = await run_processors(client, here, exchanges, until_idle=True, stop=stop)
                refold = functools.partial(run_processors, client, here, exchanges, until_idle=True, stop=stop)
                gap_stats = await run_gapwatch(client, rows, gap_config, until_idle=True, stop=stop, fold=refold)
            else:
                results, gap_stats = await asyncio.gather(
                    run_processors(client, here, exchanges, until_idle=False, stop=stop),
                    run_gapwatch(client, rows, gap_config, until_idle=False, stop=stop),
                )
    finally:
        code = 0
        if indicators is not None:  # (this process failing: the child finishes its batch and leaves too)
            stop.set()
            code = await indicators
    if code:
        raise TickfoldError(f"the indicator processor (a process of its own) exited with code {code}")
    for exchange_id, stats in results.items():
        t = stats.totals
        out.print(
            f"{exchange_id}: {t.processed} frames folded in {stats.batches} batches, "
            f"{t.skipped} redelivered skipped, {t.dead} dead-lettered, {t.events} candle-close events"
        )
    for label, stats in archived.items():
        out.print(
            f"archive {label}: {stats.totals.processed} entries archived, {stats.totals.skipped} already archived"
        )
    if cs is not None:
        out.print(f"connection state: {cs.folded} lifecycle events folded, {cs.rows_written} row writes")
    if gap_stats is not None:
        g = gap_stats
        out.print(
            f"backfill: warm-up filled {sum(len(r.written) for r in g.warmed)} candles; {g.triggers} reconnect/gap "
            f"event(s) in {g.rounds} round(s) filled {sum(len(r.written) for r in g.results)} candles; "
            f"{sum(len(r.gaps) for r in [*g.warmed, *g.results])} bucket(s) marked as gaps (tickfold gaps EXCHANGE)"
        )
    return 0


async def run_processors(
    client: aioredis.Redis,
    settings: Settings,
    exchanges: Sequence[str],
    *,
    until_idle: bool,
    stop: asyncio.Event | None = None,
    indicator_stats: dict[str, RunStats] | None = None,
    candles: bool = True,
) -> dict[str, RunStats]:
    """Run the candle processor (unless ``candles`` is False) and, unless ``settings.indicators`` is off,
    the indicator processor of each exchange; returns the candle runners' stats, and fills
    ``indicator_stats`` when given. With ``until_idle`` the candle closes are drained first, then the
    indicators."""
    config = RunnerConfig(
        consumer=settings.consumer_name(),
        batch_size=settings.batch_size,
        block_ms=settings.block_ms,
        lease_ttl_ms=settings.lease_ttl_ms,
        max_deliveries=settings.max_deliveries,
        stream_max_len=settings.stream_max_len,
        stream_max_age_ms=settings.stream_max_age_ms,
        trim_also_behind=commands_archive.trim_bound(settings),
    )
    runners: dict[str, Runner] = {}
    indicator_runners: dict[str, Runner] = {}
    for ex in exchanges:
        symbols = await load_symbol_map(client, ex)
        partitions = await log.ensure_partitions(client, ex, settings.partitions)

        def make(p: int, ex: str = ex, symbols: SymbolMap = symbols) -> CandleProcessor:
            return from_settings(
                settings,
                ex,
                p,
                symbols,
                history=settings.candle_history,
                refresh_symbols=functools.partial(load_symbol_map, client, ex),
            )

        if candles:
            runners[ex] = Runner(client, ex, GROUP, partitions, make, config)
        if settings.indicators:

            def make_indicators(p: int, ex: str = ex) -> IndicatorProcessor:
                return IndicatorProcessor(ex, window=settings.indicator_window, history=settings.indicator_history)

            indicator_runners[ex] = Runner(client, ex, INDICATORS, 1, make_indicators, config)
    async with log.without_reply_timeout(client) as hot:  # every runner call is bounded by call_timeout_s
        for r in [*runners.values(), *indicator_runners.values()]:
            r.use(hot)
        if until_idle:
            done = await asyncio.gather(*(r.run(until_idle=True, stop=stop) for r in runners.values()))
            ind = await asyncio.gather(*(r.run(until_idle=True, stop=stop) for r in indicator_runners.values()))
        else:
            both = await asyncio.gather(
                *(r.run(until_idle=False, stop=stop) for r in [*runners.values(), *indicator_runners.values()])
            )
            done, ind = both[: len(runners)], both[len(runners) :]
    if indicator_stats is not None:
        indicator_stats.update(zip(indicator_runners, ind, strict=True))
    return dict(zip(runners, done, strict=True))


def candles(args: argparse.Namespace, settings: Settings) -> int:
    exchange_id = check_exchange(args.exchange)
    symbol = bundled(exchange_id).resolve(args.symbol)
    keys.timeframe_part(args.timeframe)
    with servers(settings, _say) as srv:
        rows = _run(_read(srv.redis_url, exchange_id, symbol, args.timeframe, args.limit, args.user))
    if args.json:
        sys.stdout.write(msgspec.json.encode([candle_json(c) for c in rows]).decode() + "\n")
    else:
        out.print(candle_table(exchange_id, symbol, args.timeframe, rows))
    return 0


async def _read(
    url: str, exchange_id: str, symbol: str, timeframe: str, limit: int, user_id: str | None
) -> list[Candle]:
    async with log.connect(url) as client:
        answer = await scope.read_candles(client, exchange_id, symbol, timeframe, limit=limit, user_id=user_id)
    _say(f"answered by: {answer.source}")
    return answer.candles


def dead(args: argparse.Namespace, settings: Settings) -> int:
    exchange_id = check_exchange(args.exchange)
    with servers(settings, _say) as srv:
        rows = _run(_dead(srv.redis_url, exchange_id, args.limit))
    for entry_id, fields in rows:
        reason = fields.get(b"reason", b"").decode(errors="replace")
        frame = fields.get(b"frame", b"").decode(errors="replace")
        out.print(f"{entry_id.decode()} (was {fields.get(b'original_id', b'?').decode()}): {reason}")
        out.print(f"    {frame[:160]}")
    out.print(f"{len(rows)} dead letter(s) shown")
    return 0


async def _dead(url: str, exchange_id: str, limit: int) -> list[log.Entry]:
    async with log.connect(url) as client:
        return await log.entries(client, keys.dead_letter_stream(exchange_id), count=limit, newest_first=True)


def demo(args: argparse.Namespace, settings: Settings) -> int:
    from migrations import runner

    with servers(settings, _say, postgres=True) as srv:
        assert srv.database_url is not None
        applied = _run(runner.migrate(srv.database_url, progress=_say))
        _say(f"migrations: {len(applied)} applied" if applied else "migrations: database is up to date")
        return _run(_with_redis(srv.redis_url, lambda c: _demo(c, settings)))


async def _demo(client: aioredis.Redis, settings: Settings) -> int:
    data = importlib.resources.files("tickfold").joinpath("data/recordings")
    for exchange_id, name in DEMO_RECORDINGS.items():
        with importlib.resources.as_file(data.joinpath(name)) as path:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if await client.sismember("demo:ingested", digest):
                _say(f"{exchange_id}: {name} was ingested by an earlier demo run; not appending it twice")
                continue
            n = await log.append_frames(client, exchange_id, recorded.read_frames(path), partitions=settings.partitions)
            await client.sadd("demo:ingested", digest)
            _say(f"{exchange_id}: appended {n} recorded frames from {name}")
    results = await run_processors(client, settings, list(DEMO_RECORDINGS), until_idle=True)
    for exchange_id, stats in results.items():
        t = stats.totals
        _say(f"{exchange_id}: folded {t.processed} frames, {t.dead} dead-lettered, {t.events} candle closes")
        for key in await store.list_series(client, exchange_id):
            _, _, symbol, timeframe = key.split(":")
            rows = await store.read_candles(client, exchange_id, symbol, timeframe, limit=8)
            out.print(candle_table(exchange_id, symbol, timeframe, rows))
    return 0


# ------------------------------------------------------------------------------------------- helpers


def candle_json(c: Candle) -> dict[str, Any]:
    return {
        "start": c.start,
        "open": c.open,
        "high": c.high,
        "low": c.low,
        "close": c.close,
        "volume": c.volume,
        "closed": c.closed,
        "quote_volume": c.quote_volume,
        "trades": c.trades,
        "taker_buy_volume": c.taker_buy_volume,
        "exchange": c.exchange,
        "symbol": c.symbol,
        "timeframe": c.timeframe,
    }


def candle_table(exchange_id: str, symbol: str, timeframe: str, rows: Sequence[Candle]) -> Table:
    table = Table(title=f"{exchange_id} {symbol} {timeframe} — {len(rows)} newest candles")
    for col in ("start (UTC)", "open", "high", "low", "close", "volume", "closed"):
        table.add_column(col, justify="left" if col in ("start (UTC)", "closed") else "right", no_wrap=True)
    for c in rows:
        start = datetime.fromtimestamp(c.start / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(start, c.open, c.high, c.low, c.close, c.volume, "yes" if c.closed else "open")
    return table
