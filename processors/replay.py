"""Replay: raw frames of a range through the live fold code, into an isolated target.

The same code as live processing, not a copy of it: each batch of raw entries (archive, then stream;
:mod:`processors.replay_source`) goes to :meth:`CandleProcessor.handle` on the *target* Redis (another
logical database, or a private server), and after every batch that closed candles the
:class:`IndicatorProcessor` folds the new ``closes:{exchange_id}`` entries there, as the live
processors do side by side. Fences are lease keys the replay sets in the target (no live processor
runs there). The source is only read.

Exact, not approximate: a candle in the range needs every frame of its bucket, and MACD-V needs every
earlier candle, so the fold starts at the beginning of the data (archive included) and runs until
each partition's event time has passed the end of the range by the *horizon* (the longest timeframe
reported, plus the close grace, plus a minute for late frames); what is reported is what falls in the
range (candle start in ``[start_ms, end_ms)``). A frame appended later that still changes a bucket
of the range (a REST backfill of it, hours later) is folded only with ``to_end`` (everything up to the
stream's end at the start of the replay). ``warmup_ms`` starts the fold that long before the range
instead: faster, and *not exact* (partial first buckets; EMAs seeded late).

Frames are merged over the partitions by event time, cut by event time (frame by frame, so the
batching never moves the cut), and paced by it with ``speed`` (1 = real time, N = N x; None = as
fast as possible). The target keeps every candle and point of the replay (its histories are raised so
the range is never trimmed away): that changes what is kept, not what is computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from processors import candles, memory_indicators
from processors.candles import GROUP as CANDLES
from processors.candles import NATIVE_TIMEFRAMES, CandleProcessor
from processors.indicators import GROUP as INDICATORS
from processors.indicators import IndicatorProcessor
from processors.leases import Fence
from processors.memory_fold import MemoryCandles
from processors.memory_indicators import MemoryIndicators
from processors.replay_source import Sources, frames
from projections import store
from projections.candles import Candle
from projections.watermark import duration_ms
from streams import keys, log
from streams.archive_columns import Frames
from streams.frames import event_ms
from streams.symbols import SymbolMap
from tickfold.errors import TickfoldError
from tickfold.settings import Settings

SETTLE_MS = 60_000  # late frames (a Binance final after the watermark closed its kline) within this still count
_TARGET_TOKEN = b"replay"


class ReplayNoData(TickfoldError):
    """The range holds nothing to replay."""


@dataclass(frozen=True)
class ReplayOptions:
    start_ms: int  # candles starting at or after this (epoch ms, event time) ...
    end_ms: int  # ... and before this
    symbols: frozenset[str] | None = None  # canonical; None: every symbol
    timeframes: tuple[str, ...] | None = None  # None: every timeframe
    speed: float | None = None  # None: as fast as possible; 1.0 real time; N: N x real time
    to_end: bool = False  # fold up to the stream's end, not only until the range has settled
    warmup_ms: int | None = None  # start folding this long before start_ms (NOT exact)
    in_memory: bool = False  # the fast path: fold in memory, write once at the end (MemoryFold)


@dataclass
class ReplayStats:
    frames: int = 0
    batches: int = 0
    dead: int = 0
    closes: int = 0
    alerts: int = 0
    skipped_warmup: int = 0
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    beyond_ms: int | None = None  # the earliest event time of the frames past the stop (not folded)
    seconds: float = 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def candle_processor(
    settings: Settings, exchange_id: str, partition: int, symbols: SymbolMap, *, history: int
) -> CandleProcessor:
    """A candle processor configured as ``tickfold process`` configures it."""
    return candles.from_settings(settings, exchange_id, partition, symbols, history=history)


def indicator_processor(settings: Settings, exchange_id: str, *, history: int) -> IndicatorProcessor:
    return IndicatorProcessor(exchange_id, window=settings.indicator_window, history=history)


def timeframes_in_play(settings: Settings, exchange_id: str) -> tuple[str, ...]:
    """The timeframes the candle processor writes for an exchange (besides whatever klines the feed carries)."""
    rollups = tuple(t for t, _ in settings.rollup_plan(exchange_id, NATIVE_TIMEFRAMES.get(exchange_id, ())))
    return ("1m", *NATIVE_TIMEFRAMES.get(exchange_id, ()), *settings.trade_timeframes(exchange_id), *rollups)


def horizon_ms(settings: Settings, exchange_id: str, timeframes: tuple[str, ...] | None) -> int:
    """How far past the range's end event time must go before the range's candles have settled."""
    tfs = timeframes or timeframes_in_play(settings, exchange_id)
    return max(duration_ms(tf, 0) for tf in tfs) + settings.close_grace_ms + SETTLE_MS


@dataclass
class Fold:
    """The live processors over one exchange, writing to ``client`` under the given fences."""

    client: aioredis.Redis
    candles: dict[int, CandleProcessor]
    fences: dict[int, Fence]
    indicators: IndicatorProcessor | None
    indicator_fence: Fence | None
    consumer: str = "replay"
    batch_size: int = 500
    stats: ReplayStats = field(default_factory=ReplayStats)

    async def prepare(self) -> None:
        if self.indicators is not None:
            await log.ensure_group(self.client, self.indicators.stream, INDICATORS)

    async def feed(self, partition: int, chunk: list[Frames]) -> None:
        entries = [e for piece in chunk for e in piece.entries()]
        result = await self.candles[partition].handle(self.client, entries, self.fences[partition])
        self.stats.frames += result.processed
        self.stats.batches += 1
        self.stats.dead += result.dead
        self.stats.closes += result.events
        if result.events:
            await self.drain_indicators()

    async def finish(self) -> None:
        """Called once the last batch was fed (the live path has written everything by then)."""

    def written(self) -> dict[str, list[Candle]] | None:
        """The series written to the target, as it keeps them, when the fold holds them (else None: read
        them back)."""
        return None

    def written_indicators(self) -> MemoryIndicators | None:
        """The indicator projection written to the target, when the fold holds it (else None: read it back)."""
        return None

    async def drain_indicators(self) -> None:
        """Fold every close not yet read by the indicators group, as the live indicator processor does."""
        if self.indicators is None or self.indicator_fence is None:
            return
        while True:
            got = await log.read_group(
                self.client, self.indicators.stream, INDICATORS, self.consumer, count=self.batch_size, block_ms=None
            )
            if not got:
                return
            result = await self.indicators.handle(self.client, got, self.indicator_fence)
            self.stats.alerts += result.events


@dataclass
class MemoryFold(Fold):
    """The fast path: each partition folded in memory by the live fold code (:mod:`processors.memory_fold`),
    large batches and no round trips, then written to the target once at the end (:meth:`finish`): the
    candles, the close events, the dead letters; then the indicator processor's fold of those closes, in
    memory too (:mod:`processors.memory_indicators`, in the batches it would read them in from the
    target). The target gets no positions, watermarks or open sets: it is a snapshot to read, not a
    projection to continue."""

    history: int = 5000
    memory: dict[int, MemoryCandles] = field(default_factory=dict)
    series: dict[str, list[Candle]] = field(default_factory=dict)  # what finish wrote
    indicator_memory: MemoryIndicators | None = None  # and its indicators, when folded in memory

    async def feed(self, partition: int, chunk: list[Frames]) -> None:
        fold = self.memory.get(partition)
        if fold is None:
            fold = self.memory[partition] = MemoryCandles(self.candles[partition])
        before, dead = fold.frames, len(fold.dead)
        self.stats.closes += await fold.fold_frames(chunk)
        self.stats.frames += fold.frames - before
        self.stats.dead += len(fold.dead) - dead
        self.stats.batches += 1

    async def finish(self) -> None:
        writes = 0
        pipe: Any = self.client.pipeline(transaction=False)
        for partition, fold in sorted(self.memory.items()):
            for key, series in fold.candles().items():
                store.queue_series(pipe, key, series, history=self.history, stored=())
                self.series[key] = series[-self.history :]  # what the target keeps of it
                writes += 1
            if writes > 1_000 or partition == max(self.memory):
                with log.translated("writing the replay's projections"):
                    await pipe.execute()
                pipe, writes = self.client.pipeline(transaction=False), 0
            closes_stream = keys.closes_stream(fold.processor.exchange_id).encode()
            appends: list[tuple[bytes | str | int, ...]] = [
                (b"XADD", closes_stream, b"*", b"event", store.encode(event)) for event in fold.closes
            ]
            dead_stream = keys.dead_letter_stream(fold.processor.exchange_id).encode()
            source = fold.processor.stream.encode()
            for d in fold.dead:
                why = {b"reason": d.reason.encode(), b"original_id": d.entry_id, b"stream": source}
                appends.append((b"XADD", dead_stream, b"*", *(v for kv in {**d.fields, **why}.items() for v in kv)))
            for i in range(0, len(appends), _APPENDS):
                await log.send_all(self.client, appends[i : i + _APPENDS], "writing the replay's close events")
        if self.indicators is None:
            return
        if not memory_indicators.supported(self.indicators):
            await self.drain_indicators()  # (through the target, as live)
            return
        # the closes as the indicator processor would read them from the target: in the stream's order,
        # ``batch_size`` at a time
        self.indicator_memory = memory = MemoryIndicators(self.indicators)
        events = [e for _, fold in sorted(self.memory.items()) for e in fold.closes]
        for i in range(0, len(events), self.batch_size):
            self.stats.alerts += memory.fold(events[i : i + self.batch_size])
        await memory.write(self.client)

    def written(self) -> dict[str, list[Candle]] | None:
        return self.series

    def written_indicators(self) -> MemoryIndicators | None:
        return self.indicator_memory


_APPENDS = 20_000  # close events and dead letters sent at once by a replay's finish

GC_THRESHOLD = 200_000  # allocations between young collections during an in-memory fold (Python's default: 700)


@contextlib.contextmanager
def few_collections() -> Iterator[None]:
    """Collect cyclic garbage rarely while an in-memory fold runs: it allocates millions of small objects
    that live (the candles it keeps) or die by reference count, and the default thresholds have the
    collector scan them again and again (a fifth of the CPU time of a Binance replay). Restored after."""
    before = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


async def claim_target(client: aioredis.Redis, exchange_id: str, partitions: int) -> tuple[dict[int, Fence], Fence]:
    """Lease keys in a replay target, held by the replay for good (no live processor runs there)."""
    pipe = client.pipeline(transaction=False)
    fences = {p: Fence(keys.lease(CANDLES, exchange_id, p), _TARGET_TOKEN) for p in range(partitions)}
    indicator = Fence(keys.lease(INDICATORS, exchange_id, 0), _TARGET_TOKEN)
    for fence in [*fences.values(), indicator]:
        pipe.set(fence.key, fence.token)
    with log.translated("claiming the replay target"):
        await pipe.execute()
    return fences, indicator


def frame_event_ms(exchange_id: str, fields: dict[bytes, bytes]) -> int:
    """A raw entry's exchange event time (ms); 0 when it has none or can't be decoded (the fold decides)."""
    raw = fields.get(b"frame")
    return 0 if raw is None else event_ms(exchange_id, raw)


PACE_STEP_S = 0.1  # paced replays feed at most this much wall time's worth of event time per batch


@dataclass
class _Lane:
    """One partition's entries, cut and timed: the next chunk to feed, and its first event time."""

    partition: int
    source: AsyncIterator[Frames]
    chunk: list[Frames] = field(default_factory=list)
    buffer: Frames | None = None  # read from the source, not yet in a chunk
    first_ms: int = 0
    last_ms: int = 0
    done: bool = False


async def run(
    source: aioredis.Redis,
    sources: Sources,
    fold: Fold,
    *,
    exchange_id: str,
    stop_ms: int | None,
    start_ms: int | None,
    speed: float | None,
    batch_size: int,
    partitions: set[int] | None = None,
    progress: Callable[[ReplayStats], None] | None = None,
) -> ReplayStats:
    """Feed every partition's entries (up to event time ``stop_ms``; from ``start_ms`` if given) to
    ``fold``, merged by event time, paced by ``speed``. Returns the fold's stats."""
    stats = fold.stats
    began = time.monotonic()
    lanes = [
        _Lane(part.partition, frames(source, sources, part, size=batch_size))
        for part in sources.parts
        if partitions is None or part.partition in partitions
    ]
    step_ms = None if speed is None else max(int(PACE_STEP_S * speed * 1000), 1)
    ready: list[tuple[int, int]] = []
    for i, lane in enumerate(lanes):
        if await _advance(lane, stop_ms, start_ms, stats, size=batch_size, step_ms=step_ms):
            heapq.heappush(ready, (lane.first_ms, i))
    first_event: int | None = None
    paced_from = time.monotonic()
    while ready:
        _, i = heapq.heappop(ready)
        lane = lanes[i]
        if speed is not None and lane.first_ms:
            first_event = lane.first_ms if first_event is None else first_event
            delay = paced_from + (lane.first_ms - first_event) / 1000 / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await fold.feed(lane.partition, lane.chunk)
        if lane.first_ms:
            stats.first_event_ms = min(stats.first_event_ms or lane.first_ms, lane.first_ms)
            stats.last_event_ms = max(stats.last_event_ms or 0, lane.last_ms)
        stats.seconds = time.monotonic() - began
        if progress is not None:
            progress(stats)
        if await _advance(lane, stop_ms, start_ms, stats, size=batch_size, step_ms=step_ms):
            heapq.heappush(ready, (lane.first_ms, i))
    stats.seconds = time.monotonic() - began
    return stats


async def _advance(
    lane: _Lane,
    stop_ms: int | None,
    start_ms: int | None,
    stats: ReplayStats,
    *,
    size: int,
    step_ms: int | None,
) -> bool:
    """Load the lane's next chunk (at most ``size`` entries, spanning at most ``step_ms`` of event time when
    paced): entries up to (not including) the first one past ``stop_ms``, those before ``start_ms`` left
    out. False when the lane is finished. Decided on the event-time column, frame by frame as if one at a
    time (so the batching never moves a cut), without a loop over the frames unless paced."""
    lane.chunk = []
    taken = first = 0
    while taken < size:
        if lane.buffer is None or not len(lane.buffer):
            if lane.done:
                break
            try:
                lane.buffer = await anext(lane.source)
            except StopAsyncIteration:
                lane.done = True
                break
            continue
        buf = lane.buffer
        ms = buf.event_ms
        end, stopped = len(buf), False  # rows [0, end) are consumed by this step
        if stop_ms is not None and (over := np.flatnonzero(ms > stop_ms)).size:
            end, stopped = int(over[0]), True  # the partition's event time is past the range's horizon
        if step_ms is not None:  # paced: the rest waits for its time (the first kept frame's time + step)
            at = first
            for row, t in enumerate(ms[:end].tolist()):
                if at and t > at + step_ms:
                    end, stopped = row, False
                    break
                if not (start_ms is not None and 0 < t < start_ms) and t:
                    at = at or t
        head = ms[:end]
        warmup = (head > 0) & (head < start_ms) if start_ms is not None else np.zeros(end, bool)
        kept = np.flatnonzero(~warmup)
        if kept.size > size - taken:
            end, stopped = int(kept[size - taken]), False
            kept = kept[: size - taken]
        stats.skipped_warmup += end - kept.size
        if kept.size:
            piece = buf.take(slice(0, end)) if kept.size == end else buf.take(kept)
            lane.chunk.append(piece)
            taken += kept.size
            times = piece.event_ms[piece.event_ms != 0]
            if times.size:
                first = first or int(times[0])
                lane.last_ms = max(lane.last_ms, int(times.max()))
        if stopped:
            lane.done = True
            lane.buffer = None
            stats.beyond_ms = min(stats.beyond_ms or int(ms[end]), int(ms[end]))
            break
        lane.buffer = buf.take(slice(end, None))
        if step_ms is not None and end < len(buf):
            break  # paced: the rest waits for its time
    lane.first_ms = first or lane.last_ms
    return bool(lane.chunk)
