"""Replay a range of an exchange's raw frames, from Python: the backtest hand-off.

    from tickfold.replay import replay_frame
    df = replay_frame("binance", "2021-04-04T10:00Z", "2021-04-04T11:00Z", redis_url="redis://127.0.0.1:6379/0")
    btc = df[(df.symbol == "BTC-USDT") & (df.timeframe == "1m")].set_index("time")
    print(btc[["open", "high", "low", "close", "volume", "macdv", "signal", "histogram"]].tail())

:func:`replay_frame` folds into a private, temporary redis-server (thrown away afterwards), reading the
configured Redis (and the archive in PostgreSQL when ``database_url`` is given) without writing to
them. :func:`replay_into` is the engine under it and under ``tickfold replay``: it folds into any target
client (a logical database of the live server, say) and returns what fell in the range. See
:mod:`processors.replay` for what "exact" means here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
import uvloop

from processors import replay_source
from processors.replay import (
    Fold,
    MemoryFold,
    ReplayNoData,
    ReplayOptions,
    ReplayStats,
    candle_processor,
    claim_target,
    few_collections,
    frame_event_ms,
    horizon_ms,
    indicator_processor,
    run,
)
from processors.replay_export import ReplayResult, collect, dataframe
from projections.watermark import duration_ms
from streams import keys, log
from streams.partitions import partition_of
from streams.symbols import load_symbol_map
from tickfold.embedded import start_redis
from tickfold.errors import ConfigError, TickfoldError
from tickfold.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

_UNBOUNDED = 2**31 - 1


def parse_time(value: str | int | datetime, name: str = "time") -> int:
    """Epoch ms from epoch ms (an int, or digits) or ISO-8601 (``2021-04-04T10:00Z``; no zone means UTC)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int) or value.strip().lstrip("-").isdigit():
        return int(value)
    else:
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ConfigError(name, f"{value!r} is neither ISO-8601 (2021-04-04T10:00Z) nor epoch ms") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def check_range(options: ReplayOptions, now_ms: int) -> None:
    """Refuse a range that can't hold data: empty, or starting in the future (the clock is fine here:
    this is the command line, not a fold)."""
    if options.end_ms <= options.start_ms:
        raise ConfigError("--to", f"{iso(options.end_ms)} is not after --from {iso(options.start_ms)}")
    if options.start_ms > now_ms:
        raise ConfigError(
            "--from", f"{iso(options.start_ms)} is in the future (now is {iso(now_ms)}): nothing to replay"
        )
    for tf in options.timeframes or ():
        try:
            keys.timeframe_part(tf)
            duration_ms(tf, 0)
        except ValueError as exc:
            raise ConfigError("--timeframes", str(exc)) from None


MEMORY_BATCH = 20_000  # entries per batch of the in-memory fold (a batch costs no round trip there)


async def replay_into(
    source: aioredis.Redis,
    target: aioredis.Redis,
    settings: Settings,
    exchange_id: str,
    options: ReplayOptions,
    *,
    dsn: str | None = None,
    progress: Callable[[ReplayStats], None] | None = None,
    on_plan: Callable[[int, int], None] | None = None,
) -> tuple[ReplayResult, ReplayStats]:
    """Fold ``exchange_id``'s frames (archive at ``dsn``, then ``source``'s streams) into ``target`` and
    return what fell in the range. ``target`` must hold nothing of the exchange yet. ``on_plan`` is told
    the event-time span the fold will cover (first frame's, stop), for a progress bar."""
    check_range(options, int(time.time() * 1000))
    with log.translated("inspecting the replay target"):
        used: Any = await target.exists(keys.candle_index(exchange_id), keys.closes_stream(exchange_id))
    if used:
        raise TickfoldError(f"the replay target already holds {exchange_id} projections: replay into an empty one")
    sources = await replay_source.plan(source, exchange_id, dsn)
    if not sources.parts:
        raise ReplayNoData(f"no raw frames of {exchange_id}: frames:{exchange_id}:p* is empty and nothing is archived")
    symbols = await load_symbol_map(source, exchange_id)
    wanted_parts: set[int] | None = None
    if options.symbols is not None:
        wanted_parts = {partition_of(symbols.native(s), sources.partitions) for s in options.symbols}
    stop_ms = None if options.to_end else options.end_ms + horizon_ms(settings, exchange_id, options.timeframes)
    start_ms = None if options.warmup_ms is None else options.start_ms - options.warmup_ms
    if stop_ms is not None:
        history = settings.candle_history + (stop_ms - (start_ms or options.start_ms)) // 60_000 + 1
        points = settings.indicator_history + (stop_ms - (start_ms or options.start_ms)) // 60_000 + 1
    else:
        history = points = _UNBOUNDED
    fences, indicator_fence = await claim_target(target, exchange_id, sources.partitions)
    processors = {
        p.partition: candle_processor(settings, exchange_id, p.partition, symbols, history=history)
        for p in sources.parts
    }
    indicators = indicator_processor(settings, exchange_id, history=points) if settings.indicators else None
    batch_size = settings.batch_size
    fold: Fold
    if options.in_memory:  # large batches, no round trips; written once at the end
        batch_size = max(batch_size, MEMORY_BATCH)
        fold = MemoryFold(
            target, processors, fences, indicators, indicator_fence, batch_size=batch_size, history=history
        )
    else:
        fold = Fold(target, processors, fences, indicators, indicator_fence, batch_size=batch_size)
    await fold.prepare()
    if on_plan is not None:
        newest = await _newest_event_ms(source, exchange_id, sources)
        end = stop_ms or max(newest, options.end_ms)
        on_plan(start_ms or 0, min(end, newest) if newest else end)
    with few_collections() if options.in_memory else contextlib.nullcontext():  # (the result too: it holds them)
        stats = await run(
            source,
            sources,
            fold,
            exchange_id=exchange_id,
            stop_ms=stop_ms,
            start_ms=start_ms,
            speed=options.speed,
            batch_size=batch_size,
            partitions=wanted_parts,
            progress=progress,
        )
        await fold.finish()
        with log.translated("releasing the replay target"):  # a namespace is left as a plain snapshot
            await target.delete(*[f.key for f in (*fences.values(), indicator_fence)])
        result = await collect(
            target,
            exchange_id,
            options.start_ms,
            options.end_ms,
            symbols=options.symbols,
            timeframes=options.timeframes,
            candles=fold.written(),  # the fast path holds them: not read back
            indicators=indicators is not None,
            held=fold.written_indicators(),
        )
    if not result.candles:
        if stats.first_event_ms is not None and stats.last_event_ms is not None:
            covered = f"the frames folded span {iso(stats.first_event_ms)} .. {iso(stats.last_event_ms)}"
        elif stats.beyond_ms is not None:
            covered = f"the data begins later, at {iso(stats.beyond_ms)}"
        else:
            covered = "no frame folded carries an event time"
        raise ReplayNoData(
            f"no {exchange_id} candles{_filters(options)} start in [{iso(options.start_ms)}, {iso(options.end_ms)}): "
            f"{covered}"
        )
    return result, stats


async def _newest_event_ms(source: aioredis.Redis, exchange_id: str, sources: replay_source.Sources) -> int:
    """The newest event time among the last entries the replay will read (for the progress bar; 0: unknown)."""
    newest = 0
    for part in sources.parts:
        with log.translated(f"reading the end of {part.stream}"):
            last: Any = await source.xrevrange(part.stream, replay_source.id_text(part.until), "-", count=1)
        if last:
            newest = max(newest, frame_event_ms(exchange_id, last[0][1]))
    return newest


def _filters(options: ReplayOptions) -> str:
    parts = [", ".join(sorted(options.symbols))] if options.symbols else []
    if options.timeframes:
        parts.append(", ".join(options.timeframes))
    return f" ({'; '.join(parts)})" if parts else ""


@contextlib.contextmanager
def scratch_redis() -> Iterator[str]:
    """A private redis-server in a temporary directory, without persistence, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="tickfold-replay-") as root:
        server = start_redis(Path(root), appendonly=False)
        try:
            yield server.url
        finally:
            server.stop()


async def replay_result(
    source_url: str,
    target_url: str,
    settings: Settings,
    exchange_id: str,
    options: ReplayOptions,
    *,
    dsn: str | None = None,
    symbols: Iterable[str] | None = None,
) -> tuple[ReplayResult, ReplayStats]:
    """:func:`replay_into` between two Redis URLs; ``symbols`` as a user types them (native or canonical)."""
    async with log.connect(source_url) as source, log.connect(target_url, reply_timeout=None) as target:
        if symbols is not None:
            known = await load_symbol_map(source, exchange_id)
            options = dataclasses.replace(options, symbols=frozenset(known.resolve(s) for s in symbols))
        return await replay_into(source, target, settings, exchange_id, options, dsn=dsn)


def replay_frame(
    exchange_id: str,
    start: str | int | datetime,
    end: str | int | datetime,
    *,
    redis_url: str,
    database_url: str | None = None,
    symbols: Iterable[str] | None = None,
    timeframes: Iterable[str] | None = None,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """The candles of ``[start, end)`` with their MACD-V columns, replayed from the raw frames (module docstring).

    Symbols may be given as the exchange writes them (``BTCUSDT``) or canonical (``BTC-USDT``)."""
    settings = settings or Settings.load({})
    options = ReplayOptions(
        start_ms=parse_time(start, "start"),
        end_ms=parse_time(end, "end"),
        timeframes=None if timeframes is None else tuple(timeframes),
    )
    with scratch_redis() as target_url:
        run = replay_result(redis_url, target_url, settings, exchange_id, options, dsn=database_url, symbols=symbols)
        result, _ = uvloop.run(run)
    return dataframe(result)
