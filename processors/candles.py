"""The candle processor: raw frames of one exchange -> candle projections and candle-close events.

One processor folds one partition ``frames:{ex}:p{n}`` (every frame of a symbol is in the same
partition, and the partition has one owner: see processors/runner.py). One batch is one atomic step
(STYLE habit 2)::

    WATCH proj:candles:{ex}:p{n}:last_id fence:candles:{ex}:p{n}
    GET fence... == our token?               else LeaseLost: another instance owns the partition now
    decode -> fold (pure, event time)        entries with id <= last_id are redeliveries: skipped
    MULTI                                    (a change to a watched key makes EXEC fail: nothing written)
      ZREM/ZADD candles:{ex}:{symbol}:{tf}   the changed buckets
      XADD closes:{ex}                       candle-close (and correction) events
      XADD frames:{ex}:dead                  frames that could not be folded, with the reason
      SET proj:candles:{ex}:p{n}:last_id     the position the projection now reflects
      XACK frames:{ex}:p{n} candles <ids>    acknowledged only together with the above
      PUBLISH channel:exchange:{ex}:candle:close:{symbol}:{tf}   (at-most-once; closes:{ex} is durable)
    EXEC

REST backfills arrive the same way, as tickfold ``rest_candles`` frames in the symbol's partition
(:mod:`processors.backfill`): each candle is folded as a closed snapshot (``source`` and ``closed_by``
``"rest"``) at :func:`projections.gaps.rest_event_ns` (1 ns before the bucket end: it repairs what was
taken during the bucket, and the exchange's own final stands; see :mod:`projections.gaps`). So a
repaired bucket emits its close or correction event, its roll-ups follow, a replay of the raw streams
contains it, and the batch removes the ``gaps:`` markers of the buckets it stores. A REST frame does
not move the partition's watermark (it reports the past; the watermark is the live feed's time).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis

from processors import candle_rollups as rollup
from processors.candle_rollups import settle_rollups
from processors.leases import Fence
from processors.runner import BatchResult
from processors.trade_run import TradeRun, fold_buckets
from projections import store
from projections.candles import BY_WATERMARK, Candle, CandleBook, CandleClosed
from projections.gaps import REST_SOURCE
from projections.rollups import SOURCE as ROLLUP
from projections.scope import Scope
from projections.snapshots import COINBASE_CANDLE_TIMEFRAME, event_ns, snapshots, trades_of
from projections.trades import Trade, TradeBucket, apply_trades, to_candle
from projections.watermark import bucket_end, bucket_start, duration_ms, fixed_duration_ms
from streams import keys
from streams.frames import (
    RestCandlesFrame,
    binance_trade_event_time,
    decode_frame,
)
from streams.log import Entry, WatchError, parse_id, translated, watch_then
from streams.symbols import SymbolMap, UnknownSymbol
from tickfold.errors import FrameDecodeError, KeyFormatError, ProjectionConflict
from tickfold.settings import Settings

log = logging.getLogger(__name__)

GROUP = "candles"
PROJECTION = "candles"
NATIVE_TIMEFRAMES = {"coinbase": (COINBASE_CANDLE_TIMEFRAME,)}  # streamed by the exchange: not rolled up
_MAX_CONFLICT_RETRIES = 20


class DeadLetter(msgspec.Struct, frozen=True):
    entry_id: bytes
    fields: dict[bytes, bytes]
    reason: str
    unknown_symbol: bool = False


@dataclass(slots=True)
class Item:
    """One decoded entry (or a run of entries that only move the watermark): what it changes, and its
    event time."""

    entry: Entry
    updates: list[tuple[Candle, bool]]
    trades: list[Trade]
    event_ns: int
    _runs: dict[str, dict[tuple[str, str, int], list[Trade]]] | None = None  # memo of :meth:`runs`
    run: TradeRun | None = None  # a replay's run of trade frames as columns, folded at once (processors/trade_run.py)

    @property
    def watermark_only(self) -> bool:
        return not self.updates and not self.trades and self.run is None

    def runs(self, tf: str) -> dict[tuple[str, str, int], list[Trade]]:
        """The entry's trades by (exchange, symbol, ``tf`` bucket start), each run in the entry's order, the
        runs in the order of their first trade (made once: the batch's reads and its fold both ask). A run
        may be ``trades`` itself: read it, never change it."""
        if self._runs is None:
            self._runs = {}
        found = self._runs.get(tf)
        if found is None:
            found = self._runs[tf] = trade_runs(self.trades, tf)
        return found


def trade_runs(trades: list[Trade], tf: str) -> dict[tuple[str, str, int], list[Trade]]:
    """``trades`` by (exchange, symbol, ``tf`` bucket start): see :meth:`Item.runs`."""
    fixed = fixed_duration_ms(tf)
    if fixed is not None and tf != "1w" and trades:  # most often all of one symbol and bucket: one run
        first = trades[0]
        exchange, symbol, start = first.exchange, first.symbol, first.time_ms - first.time_ms % fixed
        end = start + fixed
        for t in trades:
            if not (start <= t.time_ms < end and t.symbol == symbol and t.exchange == exchange):
                break
        else:
            return {(exchange, symbol, start): trades}
    runs: dict[tuple[str, str, int], list[Trade]] = {}
    for t in trades:
        ms = t.time_ms
        # bucket_start(tf, ms), inlined for the timeframes whose buckets are multiples of their length
        start = ms - ms % fixed if fixed is not None and tf != "1w" else bucket_start(tf, ms)
        run = runs.get((t.exchange, t.symbol, start))
        if run is None:
            runs[(t.exchange, t.symbol, start)] = [t]
        else:
            run.append(t)
    return runs


@dataclass
class Plan:
    """A decoded batch, in stream order."""

    items: list[Item] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    skipped: int = 0
    filled: dict[str, set[int]] = field(default_factory=dict)  # gaps:... key -> buckets REST frames close
    rest_rollups: dict[tuple[str, int], Candle] = field(default_factory=dict)  # REST candles of roll-up series

    @property
    def event_ns(self) -> int:
        return max((i.event_ns for i in self.items), default=0)


_STATE = msgspec.msgpack.Encoder()
_STATE_DECODER = msgspec.msgpack.Decoder(TradeBucket)


class CandleProcessor:
    """Folds one partition ``frames:{exchange_id}:p{n}`` into candle projections; see the module docstring."""

    group = GROUP

    def __init__(
        self,
        exchange_id: str,
        partition: int,
        symbols: SymbolMap,
        *,
        history: int,
        trade_timeframes: tuple[str, ...] = (),
        rollups: tuple[tuple[str, str], ...] = (),
        close_grace_ms: int = 5000,
        state_window: int = 60,
        refresh_symbols: Callable[[], Awaitable[SymbolMap]] | None = None,
        refresh_every_s: float = 30.0,
    ) -> None:
        self.exchange_id = exchange_id
        self.symbols = symbols
        self.refresh_symbols = refresh_symbols
        self.refresh_every_s = refresh_every_s
        self._refreshed = float("-inf")
        self.history = history
        self.trade_timeframes = trade_timeframes
        self.rollups = rollups  # (target, source) timeframes, shortest target first
        self._targets = frozenset(t for t, _ in rollups)
        self.close_grace_ms = close_grace_ms
        self.state_window = state_window
        self.partition = partition
        self.stream = keys.frames_stream(exchange_id, partition)
        self.position_key = keys.projection_position(PROJECTION, exchange_id, partition)
        self.watermark_key = keys.projection_watermark(PROJECTION, exchange_id, partition)
        self.open_key = keys.open_candles(PROJECTION, exchange_id, partition)
        self._committed: tuple[bytes | None, int] = (None, 0)  # (position, watermark) of our last commit
        self._keys: dict[tuple[str, str, str], tuple[str, str]] = {}  # (exchange, symbol, tf) -> trade keys
        self.raw_run_frames = 0  # frames of trade runs folded from their raw bytes instead (processors/trade_run.py)

    @property
    def times_only(self) -> bool:
        """Binance trade frames only move the watermark (Binance candles come from its klines unless trade
        candles are configured): they are read for their event time alone."""
        return self.exchange_id == "binance" and not self.trade_timeframes

    @property
    def folds_runs(self) -> bool:
        """Whether a replay may fold runs of Coinbase trade frames from trade columns at once
        (:mod:`processors.trade_run`): trade candles of fixed-length timeframes only."""
        return bool(self.trade_timeframes) and all(
            fixed_duration_ms(tf) is not None and tf != "1w" for tf in self.trade_timeframes
        )

    def plan(self, entries: Sequence[Entry], last_id: tuple[int, int]) -> Plan:
        """Decode a batch (in id order, as XREADGROUP, XAUTOCLAIM and XRANGE give it); entries at or
        before ``last_id`` were folded already and are skipped: only that prefix needs its ids parsed."""
        out = Plan()
        fresh = 0
        while fresh < len(entries) and parse_id(entries[fresh][0]) <= last_id:
            fresh += 1
        out.skipped = fresh
        times_only = self.times_only
        items = out.items
        for entry_id, fields in entries[fresh:]:
            raw = fields.get(b"frame")
            if times_only and raw is not None and (ms := binance_trade_event_time(raw)) is not None:
                # Consecutive entries that only move the watermark fold as one at their newest time: the
                # same closes, in the same order (close_due keeps a candle's values; the due heap pops in
                # deadline order whichever entry of the run moved the watermark past them).
                if items and items[-1].watermark_only:
                    items[-1].event_ns = max(items[-1].event_ns, ms * 1_000_000)
                else:
                    items.append(Item((entry_id, fields), [], [], ms * 1_000_000))
                continue
            try:
                if raw is None:
                    raise FrameDecodeError("entry has no 'frame' field")
                frame = decode_frame(self.exchange_id, raw)
                updates = snapshots(self.exchange_id, frame, self.symbols)
                trades = trades_of(self.exchange_id, frame, self.symbols) if self.trade_timeframes else []
                if isinstance(frame, RestCandlesFrame) and updates:
                    c = updates[0][0]
                    marks = out.filled.setdefault(keys.gaps(self.exchange_id, c.symbol, c.timeframe), set())
                    marks.update(u.start for u, _ in updates)
            except (FrameDecodeError, KeyFormatError) as exc:
                out.dead.append(DeadLetter(entry_id, fields, str(exc), isinstance(exc, UnknownSymbol)))
                continue
            out.items.append(Item((entry_id, fields), updates, trades, event_ns(frame)))
        return out

    async def handle(self, client: aioredis.Redis, entries: Sequence[Entry], fence: Fence) -> BatchResult:
        for _ in range(_MAX_CONFLICT_RETRIES):
            try:
                return await self._commit(client, entries, fence)
            except WatchError:
                log.info("%s: position or placement changed under us, re-folding the batch", self.position_key)
        raise ProjectionConflict(f"{self.position_key} kept changing during {_MAX_CONFLICT_RETRIES} attempts")

    async def _commit(self, client: aioredis.Redis, entries: Sequence[Entry], fence: Fence) -> BatchResult:
        with translated(f"committing candles of {self.stream}"):
            async with client.pipeline(transaction=True) as pipe:
                # One round trip: WATCH, the lease/position/watermark, and the due set for the watermark this
                # batch moves to, planned on the position and watermark this processor last committed (the
                # partition's owner is the only writer: they match unless the partition changed hands).
                guess_last, guess_mark = self._committed
                plan = self.plan(entries, parse_id(guess_last) if guess_last else (0, 0))
                limit = self._due_limit(max(guess_mark, plan.event_ns))
                state, members = await watch_then(
                    pipe,
                    (self.position_key, fence.key, keys.placement(self.exchange_id)),
                    ("MGET", fence.key, self.position_key, self.watermark_key),
                    ("ZRANGEBYSCORE", self.open_key, "-inf", limit),
                )
                held, raw_last, raw_mark = state
                fence.verify(held)
                last_id = parse_id(raw_last) if raw_last else (0, 0)
                if raw_last != guess_last:
                    plan = self.plan(entries, last_id)
                if any(d.unknown_symbol for d in plan.dead) and await self._refresh():
                    plan = self.plan(entries, last_id)  # a market listed since the last sync
                watermark = max(int(raw_mark or 0), plan.event_ns)
                if self._due_limit(watermark) == limit:
                    due = self._parse_due(members)
                else:
                    due = await self._due(client, watermark)
                scope = await Scope.load(client, self.exchange_id, self._symbols(plan, due))
                books, states, reads = await self._load(client, plan, due, scope)
                stored_states = {k for k, v in states.items() if v is not None}
                closes = self.fold(plan, books, states, due, int(raw_mark or 0))
                if self.rollups:
                    await settle_rollups(
                        rollup.redis_reader(client, scope),
                        self.rollups,
                        self.close_grace_ms,
                        books,
                        closes,
                        watermark,
                        due,
                        plan.rest_rollups,
                        reads,
                    )
                pipe.multi()  # type: ignore[no-untyped-call]
                scope.queue_moves(pipe)  # a symbol changing tiers: its history first, then the batch
                self._queue(
                    pipe, books, states, stored_states, due, closes, plan.dead, entries, raw_last, watermark, scope
                )
                for marker_key, starts in plan.filled.items():  # REST filled them: no longer gaps
                    pipe.zrem(marker_key, *[str(start) for start in sorted(starts)])
                self._queue_publish(pipe, closes)
                await pipe.execute()
        newest = entries[-1][0]
        self._committed = (newest if raw_last is None or parse_id(newest) > last_id else raw_last, watermark)
        return BatchResult(
            processed=len(entries) - plan.skipped, skipped=plan.skipped, dead=len(plan.dead), events=len(closes)
        )

    async def _refresh(self) -> bool:
        """Re-read the market list (at most every ``refresh_every_s``; monotonic clock, not event time)."""
        if self.refresh_symbols is None or time.monotonic() - self._refreshed < self.refresh_every_s:
            return False
        self._refreshed = time.monotonic()
        self.symbols = await self.refresh_symbols()
        return True

    def _due_limit(self, watermark_ns: int) -> int:
        """The newest end (ms) of an open candle that is due at ``watermark_ns``."""
        return watermark_ns // 1_000_000 - self.close_grace_ms

    async def _due(self, client: aioredis.Redis, watermark_ns: int) -> list[tuple[str, int]]:
        """Open candles of this partition whose end + grace is at or before the watermark."""
        members: Any = await client.zrangebyscore(self.open_key, "-inf", self._due_limit(watermark_ns))
        return self._parse_due(members)

    @staticmethod
    def _parse_due(members: list[bytes]) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for m in members:
            key, _, start = m.decode().rpartition("|")
            out.append((key, int(start)))
        return out

    @staticmethod
    def _symbols(plan: Plan, due: list[tuple[str, int]]) -> set[str]:
        out = {c.symbol for i in plan.items for c, _ in i.updates} | {t.symbol for i in plan.items for t in i.trades}
        return out | {keys.parse_candles(key)[1] for key, _ in due}

    def wanted(
        self, plan: Plan, due: list[tuple[str, int]]
    ) -> tuple[dict[str, set[int]], set[tuple[str, int]], dict[tuple[str, int], Candle]]:
        """What a batch reads: series key -> bucket starts, (trade state key, start)s, and the REST candles
        of roll-up timeframes (for the roll-up prefetch). Pure."""
        wanted: dict[str, set[int]] = defaultdict(set)
        rest: dict[tuple[str, int], Candle] = {}
        for candle, _ in (u for i in plan.items if i.updates for u in i.updates):
            key = keys.candles(candle.exchange, candle.symbol, candle.timeframe)
            wanted[key].add(candle.start)
            if candle.source == REST_SOURCE and candle.timeframe in self._targets:
                rest[(key, candle.start)] = candle
        state_wanted: set[tuple[str, int]] = set()
        for tf in self.trade_timeframes:
            for item in plan.items:
                if item.trades or item.run is not None:
                    for exchange, symbol, start in item.run.bucket_keys(tf) if item.run is not None else item.runs(tf):
                        skey, ckey = self._trade_keys(exchange, symbol, tf)
                        wanted[ckey].add(start)
                        state_wanted.add((skey, start))
        for key, start in due:
            wanted[key].add(start)
        return wanted, state_wanted, rest

    async def _load(
        self, client: aioredis.Redis, plan: Plan, due: list[tuple[str, int]], scope: Scope
    ) -> tuple[dict[str, CandleBook], dict[tuple[str, int], TradeBucket | None], rollup.Reads]:
        """One round trip: the buckets the batch touches (and each series' newest), the trade states, and
        what the roll-up levels may read (:func:`processors.candle_rollups.prefetch`)."""
        wanted, state_wanted, rest = self.wanted(plan, due)
        placed = {scope.read_key(key): key for key in wanted}
        pipe = client.pipeline(transaction=False)
        series_plan = store.queue_load(pipe, {scope.read_key(k): v for k, v in wanted.items()})
        order = sorted(state_wanted)
        for key, start in order:
            pipe.zrange(key, start, start, byscore=True)
        ahead = rollup.prefetch(self.rollups, wanted, due, rest) if self.rollups else []
        rollup.queue_reads(pipe, ahead, scope)
        with translated(f"loading the series of {self.stream}"):
            replies: Any = await pipe.execute()
        n, m = len(series_plan), len(order)
        loaded = {placed[k]: v for k, v in store.take_load(series_plan, replies[:n]).items()}
        states: dict[tuple[str, int], TradeBucket | None] = {
            item: (_STATE_DECODER.decode(members[0]) if members else None)
            for item, members in zip(order, replies[n : n + m], strict=True)
        }
        reads = rollup.take_reads(ahead, replies[n + m :])
        return {key: CandleBook(candles) for key, candles in loaded.items()}, states, reads

    def fold(
        self,
        plan: Plan,
        books: dict[str, CandleBook],
        states: dict[tuple[str, int], TradeBucket | None],
        due: list[tuple[str, int]],
        before: int,
    ) -> list[CandleClosed]:
        """Apply the batch entry by entry: its candle snapshots, its trades, then the watermark it moves
        and the open candles that closes. Per entry, so batch boundaries never change the outcome.

        A trade candle is built from its bucket when something reads it, not after every entry: an open
        bucket's candle (or none) takes a new trade candle without an event, and the last of several such
        snapshots leaves the same candle as all of them one by one (event time never goes back in a
        bucket), so the candle is built before its close is checked, before another snapshot of its series
        is applied, and at the end (``deferred``); a bucket whose candle is closed is built at once (it
        makes a correction event, in its place)."""
        closes: list[CandleClosed] = []
        grace_ns = self.close_grace_ms * 1_000_000
        pending: list[tuple[int, str, int]] = []  # (end + grace in ns, series key, start): may close here
        queued: set[tuple[str, int]] = set()  # the buckets in ``pending``, once each (a bucket's deadline is its own)
        deferred: dict[str, dict[int, tuple[str, str, str]]] = {}  # series key -> start -> (state key, symbol, tf)
        for key, start in due:  # roll-ups close at the end of the batch, see processors/candle_rollups.py
            if (c := books[key].candles.get(start)) is not None and not c.closed and c.source != ROLLUP:
                heapq.heappush(pending, (bucket_end(c.timeframe, start) * 1_000_000 + grace_ns, key, start))
                queued.add((key, start))
        mark = before  # the partition's watermark before this batch

        def settle(touched: list[tuple[str, int]], event_ns: int) -> None:
            """Queue an entry's open buckets to close, then move the watermark and close what came due."""
            nonlocal mark
            for bucket in touched:
                if bucket in queued:
                    continue  # queued already: a second entry would pop right after it and find it closed
                key, start = bucket
                c = books[key].candles.get(start)
                if c is not None and not c.closed:
                    heapq.heappush(pending, (bucket_end(c.timeframe, start) * 1_000_000 + grace_ns, key, start))
                    queued.add(bucket)
                elif c is None and key in deferred and start in deferred[key]:  # an open candle once built
                    heapq.heappush(
                        pending, (bucket_end(deferred[key][start][2], start) * 1_000_000 + grace_ns, key, start)
                    )
                    queued.add(bucket)
            if event_ns > mark:
                mark = event_ns
            while pending and pending[0][0] <= mark:  # (its deadline passed: it is due, see close_due)
                _, key, start = heapq.heappop(pending)
                queued.discard((key, start))
                book = books[key]
                if key in deferred and start in deferred[key]:
                    if start not in book.candles:  # built closed: what building it open, then closing it gives
                        self._build(deferred, key, start, books, states, closes, closed_by=BY_WATERMARK)
                        continue
                    self._build(deferred, key, start, books, states, closes)
                c = book.candles.get(start)
                if c is not None and not c.closed:
                    c = msgspec.structs.replace(c, closed=True, closed_by=BY_WATERMARK)
                    book.put(c)
                    closes.append(CandleClosed(candle=c))

        def step(item: Item) -> None:
            touched: list[tuple[str, int]] = []
            for candle, close_older in item.updates:
                key = keys.candles(candle.exchange, candle.symbol, candle.timeframe)
                if candle.source == REST_SOURCE and candle.timeframe in self._targets:
                    plan.rest_rollups[(key, candle.start)] = candle  # settled with the roll-ups (candle_rollups.py)
                    continue
                if key in deferred:  # its trade candles first, as they came
                    self._build(deferred, key, None, books, states, closes)
                closes.extend(books[key].apply(candle, close_older=close_older))
                touched.append((key, candle.start))
            for tf in self.trade_timeframes:
                touched.extend(self._apply_trades(item, tf, books, states, plan.dead, closes, deferred))
            settle(touched, item.event_ns)

        def raw(run: TradeRun) -> None:
            """Fold a run's frames one by one from their raw bytes, as live."""
            for sub in self.plan(run.entries(), (0, 0)).items:
                step(sub)
            self.raw_run_frames += len(run.event_ns)

        for item in plan.items:
            if item.run is None:
                step(item)
                continue
            run = item.run
            done = self._apply_run(run, mark, books, states, deferred)
            if isinstance(done, list):
                settle(done, run.newest_ns)
                continue
            if done is None:  # the fast path can't take the run's trades
                raw(run)
                continue
            # frames ``done`` can't join the run: each from its raw frame, as live, and the frames between them
            # as runs. A frame the run's start lets join still can between them: a bucket closes only by the
            # watermark here (a trade frame closes nothing else), and a trade of a later frame into a bucket
            # due by then is one of ``done`` already (condition 2); kept states are trimmed only after the batch
            at = 0
            for blocked in [*done.tolist(), len(run.event_ns)]:
                if blocked > at:
                    between = run.part(at, blocked)
                    folded = self._apply_run(between, mark, books, states, deferred)
                    if isinstance(folded, list):
                        settle(folded, between.newest_ns)
                    else:  # (not expected, see above; still exact)
                        raw(between)
                if blocked < len(run.event_ns):
                    raw(run.part(blocked, blocked + 1))
                at = blocked + 1
        for key in list(deferred):
            self._build(deferred, key, None, books, states, closes)
        return closes

    def _build(
        self,
        deferred: dict[str, dict[int, tuple[str, str, str]]],
        key: str,
        start: int | None,
        books: dict[str, CandleBook],
        states: dict[tuple[str, int], TradeBucket | None],
        closes: list[CandleClosed],
        *,
        closed_by: str | None = None,
    ) -> None:
        """Apply the deferred trade candle of ``key`` at ``start`` (None: all of ``key``'s) to its book, closed
        when ``closed_by`` is given."""
        waiting = deferred[key]
        for at in list(waiting) if start is None else [start]:
            skey, symbol, tf = waiting.pop(at)
            bucket = states[(skey, at)]
            assert bucket is not None
            candle = to_candle(bucket, exchange=self.exchange_id, symbol=symbol, timeframe=tf, closed_by=closed_by)
            closes.extend(books[key].apply(candle))
        if not waiting:
            del deferred[key]

    def _apply_run(
        self,
        run: TradeRun,
        mark: int,
        books: dict[str, CandleBook],
        states: dict[tuple[str, int], TradeBucket | None],
        deferred: dict[str, dict[int, tuple[str, str, str]]],
    ) -> list[tuple[str, int]] | npt.NDArray[np.intp] | None:
        """Fold a run of trade frames at once (:mod:`processors.trade_run`), at watermark ``mark``: the buckets
        it touched; or (nothing changed) the frames of the run that must be folded on their own, as live (in
        order, once each); None: every frame, the fast path can't take the run's trades."""
        planned = []
        blocked: list[npt.NDArray[np.intp]] = []
        for tf in self.trade_timeframes:
            found = run.buckets(tf)
            if found is None:
                return None
            blocked.append(found.late(run, self.close_grace_ms, mark))
            befores: list[TradeBucket | None] = []
            places: list[tuple[str, str, int]] = []
            stopped: list[int] = []
            for g, (exchange, symbol, start) in enumerate(found.keys):
                skey, ckey = self._trade_keys(exchange, symbol, tf)
                c = books[ckey].candles.get(start)
                state = states.get((skey, start))
                if (c is not None and c.closed) or (state is None and c is not None):
                    stopped.append(g)  # a correction, or a trade older than the kept states: in its place
                befores.append(state)
                places.append((skey, ckey, start))
            if stopped:
                blocked.append(found.frames(run, stopped))
            planned.append((found, befores, places))
        if any(len(b) for b in blocked):
            return np.unique(np.concatenate(blocked))
        touched: dict[tuple[str, int], tuple[str, str, str]] = {}
        for tf, (found, befores, places) in zip(self.trade_timeframes, planned, strict=True):
            after = fold_buckets(run, found, befores)
            for (skey, ckey, start), (_, symbol, _), bucket in zip(places, found.keys, after, strict=True):
                states[(skey, start)] = bucket
                touched[(skey, start)] = (ckey, symbol, tf)
        out: list[tuple[str, int]] = []
        for (skey, start), (ckey, symbol, tf) in sorted(touched.items()):
            deferred.setdefault(ckey, {})[start] = (skey, symbol, tf)
            out.append((ckey, start))
        return out

    def _trade_keys(self, exchange: str, symbol: str, tf: str) -> tuple[str, str]:
        """(trade state key, series key) of a symbol's ``tf`` trade candles (made once per symbol)."""
        found = self._keys.get((exchange, symbol, tf))
        if found is None:
            found = self._keys[(exchange, symbol, tf)] = (
                keys.trade_state(exchange, symbol, tf),
                keys.candles(exchange, symbol, tf),
            )
        return found

    def _apply_trades(
        self,
        item: Item,
        tf: str,
        books: dict[str, CandleBook],
        states: dict[tuple[str, int], TradeBucket | None],
        dead: list[DeadLetter],
        closes: list[CandleClosed],
        deferred: dict[str, dict[int, tuple[str, str, str]]],
    ) -> list[tuple[str, int]]:
        """Fold an entry's trades into their ``tf`` buckets: each bucket's trades as one run, in the entry's
        order (:func:`projections.trades.apply_trades`: as one by one). Whether a bucket takes trades is
        decided by the bucket alone (its kept state, its candle), so folding bucket by bucket decides as
        trade by trade; the dead letter names the entry's first trade set aside."""
        touched: dict[tuple[str, int], tuple[str, str]] = {}
        late = False
        fixed = fixed_duration_ms(tf)
        for (exchange, symbol, start), run in item.runs(tf).items():
            skey, ckey = self._trade_keys(exchange, symbol, tf)
            state = states.get((skey, start))
            if state is None and start in books[ckey].candles:
                # the bucket's exact state (needed to tell a new trade from a repeat) is no longer kept
                if not late:  # the frame's other trades are folded; these are set aside, visibly
                    why = (
                        f"trade {run[0].trade_id} for {tf} bucket {start} is older than the last "
                        f"{self.state_window} buckets"
                    )
                    dead.append(DeadLetter(item.entry[0], item.entry[1], why))
                late = True
                continue
            states[(skey, start)] = apply_trades(state, run, fixed if fixed is not None else duration_ms(tf, start))
            touched[(skey, start)] = (ckey, symbol)
        out: list[tuple[str, int]] = []
        for (skey, start), (ckey, symbol) in sorted(touched.items()) if len(touched) > 1 else touched.items():
            c = books[ckey].candles.get(start)
            if c is not None and c.closed:  # a correction: now, in its place among the events
                bucket = states[(skey, start)]
                assert bucket is not None
                closes.extend(
                    books[ckey].apply(to_candle(bucket, exchange=self.exchange_id, symbol=symbol, timeframe=tf))
                )
            else:  # no event: built when read (see fold)
                deferred.setdefault(ckey, {})[start] = (skey, symbol, tf)
            out.append((ckey, start))
        return out

    def _queue(
        self,
        pipe: Any,
        books: dict[str, CandleBook],
        states: dict[tuple[str, int], TradeBucket | None],
        stored_states: set[tuple[str, int]],
        due: list[tuple[str, int]],
        closes: list[CandleClosed],
        dead: list[DeadLetter],
        entries: Sequence[Entry],
        raw_last: bytes | None,
        watermark: int,
        scope: Scope,
    ) -> None:
        closed_members = [
            f"{key}|{start}" for key, start in due if (c := books[key].candles.get(start)) is None or c.closed
        ]
        opened: dict[str, int] = {}
        for key, book in books.items():
            dirty = [book.candles[start] for start in sorted(book.dirty)]
            targets, expiry = scope.write_keys(key)
            for target in targets:
                known = book.stored if target == scope.read_key(key) else None
                store.queue_series(pipe, target, dirty, history=self.history, stored=known, index=expiry is None)
            if dirty:
                scope.queue_expiry(pipe, key, targets, expiry)
            for candle in dirty:
                member = f"{key}|{candle.start}"
                if candle.closed:
                    closed_members.append(member)
                else:
                    opened[member] = bucket_end(candle.timeframe, candle.start)
        if closed_members:
            pipe.zrem(self.open_key, *closed_members)
        if opened:
            pipe.zadd(self.open_key, opened)
        by_series: dict[str, dict[bytes, int]] = defaultdict(dict)
        for (skey, start), bucket in states.items():
            if bucket is not None:
                by_series[skey][_STATE.encode(bucket)] = start
        for skey, members in by_series.items():
            for start in members.values():
                if (skey, start) in stored_states:
                    pipe.zremrangebyscore(skey, start, start)
            pipe.zadd(skey, members)
            pipe.zremrangebyrank(skey, 0, -(self.state_window + 1))
        closes_stream = keys.closes_stream(self.exchange_id)
        for event in closes:
            pipe.xadd(closes_stream, {"event": store.encode(event)})
        dead_stream = keys.dead_letter_stream(self.exchange_id)
        for d in dead:
            why = {b"reason": d.reason.encode(), b"original_id": d.entry_id, b"stream": self.stream.encode()}
            pipe.xadd(dead_stream, {**d.fields, **why})
        newest = entries[-1][0]  # the batch is in id order
        if raw_last is None or parse_id(newest) > parse_id(raw_last):
            pipe.set(self.position_key, newest)
        pipe.set(self.watermark_key, watermark)
        pipe.xack(self.stream, self.group, *[e[0] for e in entries])

    @staticmethod
    def _queue_publish(pipe: Any, closes: list[CandleClosed]) -> None:
        """PUBLISH each close in the batch's MULTI: sent only if the batch commits, with no extra round trip
        (pub/sub stays at-most-once: a subscriber that is away misses it; ``closes:{ex}`` keeps it)."""
        for event in closes:
            c = event.candle
            pipe.publish(keys.candle_close_channel(c.exchange, c.symbol, c.timeframe), store.encode(event))


def from_settings(
    settings: Settings,
    exchange_id: str,
    partition: int,
    symbols: SymbolMap,
    *,
    history: int,
    refresh_symbols: Callable[[], Awaitable[SymbolMap]] | None = None,
) -> CandleProcessor:
    """The candle processor of a partition as the settings configure it: one place for live processing
    (``tickfold process`` / ``serve``), replays and rebuilds, so they never fold differently."""
    return CandleProcessor(
        exchange_id,
        partition,
        symbols,
        history=history,
        trade_timeframes=settings.trade_timeframes(exchange_id),
        rollups=settings.rollup_plan(exchange_id, NATIVE_TIMEFRAMES.get(exchange_id, ())),
        close_grace_ms=settings.close_grace_ms,
        refresh_symbols=refresh_symbols,
    )
