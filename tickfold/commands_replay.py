"""``tickfold replay`` and ``tickfold rebuild candles|indicators|all``: the command-line side of
:mod:`tickfold.replay` and :mod:`processors.replay_rebuild`."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
import uvloop
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from processors.replay import ReplayOptions, ReplayStats
from processors.replay_export import ReplayResult, check_format, write
from processors.replay_rebuild import RebuildReport
from processors.replay_rebuild import rebuild as rebuild_projections
from streams import log
from streams.frames import EXCHANGES, check_exchange
from streams.log import ResponseError
from streams.symbols import load_symbol_map
from tickfold import commands_status
from tickfold.errors import ConfigError
from tickfold.replay import iso, parse_time, replay_into, scratch_redis
from tickfold.runtime import servers
from tickfold.settings import Settings

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)?$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1}


def _say(text: str) -> None:
    err.print(f"[dim]{text}[/dim]")


def _archive(settings: Settings) -> bool:
    """Read the archive (PostgreSQL) too: when archiving is on or a database is configured."""
    return settings.archive or settings.database_url is not None


def parse_speed(text: str) -> float | None:
    """``max`` -> None (as fast as possible), ``realtime`` -> 1.0, ``N`` -> N (times real time)."""
    if text == "max":
        return None
    if text == "realtime":
        return 1.0
    try:
        speed = float(text)
    except ValueError:
        speed = 0.0
    if not speed > 0:
        raise ConfigError("--speed", f"expected max, realtime or a number > 0, got {text!r}")
    return speed


def parse_duration(text: str, name: str) -> int:
    match = _DURATION.match(text.strip())
    if match is None:
        raise ConfigError(name, f"expected a duration like 90m, 6h, 2d (or milliseconds), got {text!r}")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def database_of(url: str) -> int:
    """The logical database a Redis URL selects (path ``/N`` or ``?db=N``; 0 when it names none)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if "db" in query:
        return int(query["db"])
    path = parts.path.strip("/")
    return int(path) if parts.scheme != "unix" and path.isdigit() else 0


def with_database(url: str, db: int) -> str:
    """``url`` selecting logical database ``db`` instead."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = dict(parse_qsl(parts.query), db=str(db))
        return urlunsplit(parts._replace(query=urlencode(query)))
    return urlunsplit(parts._replace(path=f"/{db}"))


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [p.strip() for p in text.split(",") if p.strip()]


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[tuple[Callable[[ReplayStats], None], Callable[[int, int], None]]]:
    """A rich progress bar over event time (frames/s, ETA) on a terminal; nothing otherwise."""
    if not enabled:
        yield (lambda stats: None), (lambda start, stop: None)
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[fps]:>12,.0f} frames/s"),
        TextColumn("event time {task.fields[at]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    span: dict[str, int] = {}
    task: TaskID = bar.add_task("replay", total=None, fps=0.0, at="-")

    def on_plan(start: int, stop: int) -> None:
        span["stop"] = stop

    def update(stats: ReplayStats) -> None:
        if stats.first_event_ms is None or stats.last_event_ms is None:
            return
        stop = max(span.get("stop", stats.last_event_ms), stats.last_event_ms)
        bar.update(
            task,
            total=max(stop - stats.first_event_ms, 1),
            completed=stats.last_event_ms - stats.first_event_ms,
            fps=stats.frames_per_s,
            at=iso(stats.last_event_ms)[:19],
        )

    with bar:
        yield update, on_plan


@contextlib.asynccontextmanager
async def _target(url: str, namespace: int | None) -> AsyncIterator[aioredis.Redis]:
    """The replay target's client; a database the server does not have is a usage error, not a crash."""
    stack = contextlib.AsyncExitStack()
    try:
        client = await stack.enter_async_context(log.connect(url, reply_timeout=None))
    except ResponseError as exc:
        await stack.aclose()
        raise ConfigError("--namespace", f"Redis refuses database {namespace}: {exc}") from None
    async with stack:
        yield client


def replay(args: argparse.Namespace, settings: Settings) -> int:
    exchange_id = check_exchange(args.exchange)
    if args.namespace is None and args.out is None:
        raise ConfigError("--out", "give --namespace N (a Redis logical database) or --out FILE (or both)")
    path = Path(args.out) if args.out else None
    if path is not None:
        check_format(path)
    options = ReplayOptions(
        start_ms=parse_time(args.start, "--from"),
        end_ms=parse_time(args.end, "--to"),
        timeframes=None if args.timeframes is None else tuple(_csv(args.timeframes) or ()),
        speed=parse_speed(args.speed),
        to_end=args.to_end,
        warmup_ms=None if args.warmup is None else parse_duration(args.warmup, "--warmup"),
        in_memory=args.in_memory,
    )
    if options.in_memory and options.speed is not None:
        raise ConfigError("--in-memory", "the in-memory fold writes once at the end: it can't be paced (--speed)")
    with servers(settings, _say, postgres=_archive(settings)) as srv, contextlib.ExitStack() as stack:
        live_db = database_of(srv.redis_url)
        if args.namespace is not None:
            if args.namespace == live_db:
                raise ConfigError("--namespace", f"{args.namespace} is the live database: pick another (1-15)")
            if args.namespace < 0:
                raise ConfigError("--namespace", f"a Redis database is a number >= 0, got {args.namespace}")
            target_url = with_database(srv.redis_url, args.namespace)
            where = f"namespace {args.namespace} (Redis database {args.namespace})"
        else:
            target_url = stack.enter_context(scratch_redis())
            where = "a private temporary Redis (thrown away)"
        _say(f"replaying {exchange_id} into {where}")

        dsn = srv.database_url if _archive(settings) else None

        async def work() -> tuple[ReplayResult, ReplayStats]:
            async with log.connect(srv.redis_url) as source, _target(target_url, args.namespace) as target:
                if args.clear:
                    await target.flushdb()
                symbols = _csv(args.symbols)
                if symbols is not None:
                    known = await load_symbol_map(source, exchange_id)
                    resolved = frozenset(known.resolve(s) for s in symbols)
                    opts = dataclasses.replace(options, symbols=resolved)
                else:
                    opts = options
                with _progress(err.is_terminal) as (update, on_plan):
                    return await replay_into(
                        source, target, settings, exchange_id, opts, dsn=dsn, progress=update,
                        on_plan=on_plan,
                    )  # fmt: skip

        result, stats = uvloop.run(work())
    written = write(path, result) if path is not None else None
    out.print(
        f"replayed {stats.frames:,} frames of {exchange_id} in {stats.seconds:.1f} s ({stats.frames_per_s:,.0f} "
        f"frames/s): {len(result.candles):,} candles, {len(result.points):,} MACD-V points, {len(result.alerts):,} "
        f"alerts in [{iso(options.start_ms)}, {iso(options.end_ms)})"
        + (f" -> namespace {args.namespace}" if args.namespace is not None else "")
        + (f" -> {written[0]} (alerts: {written[1]})" if written else "")
    )
    if options.warmup_ms is not None:
        out.print(f"note: --warmup started the fold {args.warmup} before --from: the values are approximate")
    return 0


def rebuild(args: argparse.Namespace, settings: Settings) -> int:
    if args.projection == "connection-state":
        return commands_status.rebuild(args, settings)
    exchanges = [check_exchange(args.exchange)] if args.exchange else list(EXCHANGES)
    with servers(settings, _say, postgres=_archive(settings)) as srv:

        async def work() -> list[RebuildReport]:
            reports = []
            async with log.connect(srv.redis_url, reply_timeout=None) as client:
                for ex in exchanges:
                    with _progress(err.is_terminal) as (update, _):
                        reports.append(
                            await rebuild_projections(
                                client,
                                settings,
                                ex,
                                args.projection,
                                dsn=srv.database_url if _archive(settings) else None,
                                progress=update,
                            )
                        )
            return reports

        for r in uvloop.run(work()):
            out.print(
                f"{r.exchange_id}: {r.what} rebuilt in {r.seconds:.1f} s: {r.deleted:,} keys dropped, "
                + (f"{r.series:,} series recomputed" if r.what == "indicators" else f"{r.frames:,} frames re-folded")
                + f", {r.closes:,} candle-close events, {r.alerts_raised:,} alert(s) never raised before"
            )
    return 0
