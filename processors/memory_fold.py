"""The candle fold in memory: the live fold code over dicts instead of Redis, for fast replays.

Live processing pays Redis round trips per batch; a replay need not. :class:`MemoryCandles` keeps one
partition's candle projection in plain dicts — the series, the open-candle set, the trade-bucket
states, the position and the watermark — and folds each batch with the *same* functions as the candle
processor (:meth:`CandleProcessor.plan`, :meth:`CandleProcessor.wanted`, :meth:`CandleProcessor.fold`,
:func:`processors.candle_rollups.settle_rollups`); only the reads and the writes around them differ,
each mirroring the Redis command it stands for (what ``store.queue_load`` reads, ``ZRANGEBYSCORE`` order of
the due set, the trade states trimmed to their newest ``state_window`` buckets). Like a replay into a
namespace, nothing is trimmed to ``candle_history`` and everything is shared (no user overflow keys).
The close events come out in the order the live processor appends them to ``closes:{exchange}``.

A replay hands batches over as columns (:class:`~streams.archive_columns.Frames`: kind and event time per
entry, stored in the archive beside the raw frames): :meth:`MemoryCandles.fold_frames` then builds and
decodes only the frames that can change a candle, and folds each run of Binance trade frames (which move
only the watermark when no trade candles are configured) as one item at the run's newest event time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from itertools import pairwise

import numpy as np

from processors import candle_rollups as rollup
from processors.candles import CandleProcessor, DeadLetter, Item, Plan
from processors.superseded import superseded
from processors.trade_run import TradeRun, eligible
from projections.candles import Candle, CandleBook, CandleClosed
from projections.trades import TradeBucket
from projections.watermark import bucket_end, fixed_duration_ms
from streams import keys
from streams.archive_columns import KLINE, TRADE, Frames
from streams.log import Entry, parse_id
from streams.trade_columns import TradeColumns
from tickfold.errors import KeyFormatError


class MemoryCandles:
    """One partition's candle projection in memory, folded by ``processor``'s own code (module docstring)."""

    def __init__(self, processor: CandleProcessor) -> None:
        self.processor = processor
        self.series: dict[str, dict[int, Candle]] = defaultdict(dict)
        self.open: dict[str, int] = {}  # "{series key}|{start}" -> end (ms), as proj:candles:...:open
        self.states: dict[str, dict[int, TradeBucket]] = defaultdict(dict)
        self.position: tuple[int, int] = (0, 0)
        self.watermark = 0
        self.closes: list[CandleClosed] = []
        self.dead: list[DeadLetter] = []
        self.frames = 0
        self.run_frames = 0  # frames planned as runs of trade columns (processors/trade_run.py)
        self._canonical: dict[int, tuple[TradeColumns, list[str | None]]] = {}  # id -> (columns, names)

    async def fold(self, entries: Sequence[Entry]) -> int:
        """Fold one batch (in id order); returns how many close events it made."""
        plan = self.processor.plan(entries, self.position)
        newest = parse_id(entries[-1][0]) if entries else None
        return await self._fold(plan, len(entries), newest)

    async def fold_frames(self, chunk: Sequence[Frames]) -> int:
        """Fold one batch given as columns (consecutive pieces, in id order), as :meth:`fold` folds the same
        entries. Without trade candles, a Binance trade frame (kind ``TRADE``) only moves the watermark, and
        a run of them is folded as one item at the run's newest event time, read from the column: the fold
        closes what comes due at a watermark item, keeping each candle's values, and pops its pending candles
        in deadline order, so one item at the run's maximum closes the same candles, in the same order, as
        the run's items one by one. Only the other frames are built and decoded (``plan``), the batch's at
        once; a run's item carries no entry (nothing reads a watermark item's)."""
        p = self.processor
        pieces: list[Frames] = []
        count = skipped = 0
        newest: tuple[int, int] | None = None
        for frames in chunk:
            n = len(frames)
            if not n:
                continue
            count += n
            newest = frames.position(n - 1)
            skip = frames.count_through(self.position) if frames.position(0) <= self.position else 0
            skipped += skip
            if skip < n:
                pieces.append(frames.take(slice(skip, None)) if skip else frames)
        if p.times_only:
            plan = _plan_columns(p, pieces, self._closed, self.watermark)
        elif p.folds_runs and any(f.trades is not None for f in pieces):
            plan = _plan_runs(p, pieces, self._names)
            self.run_frames += sum(len(i.run.event_ns) for i in plan.items if i.run is not None)
        else:
            plan = Plan()
            for frames in pieces:
                _merge(plan, p.plan(frames.entries(), (0, 0)))
        plan.skipped += skipped
        return await self._fold(plan, count, newest)

    async def _fold(self, plan: Plan, count: int, newest: tuple[int, int] | None) -> int:
        p = self.processor
        watermark = max(self.watermark, plan.event_ns)
        due = self._due(watermark)
        wanted, state_wanted, _rest = p.wanted(plan, due)
        books = {key: CandleBook(self._load(key, starts)) for key, starts in wanted.items()}
        states: dict[tuple[str, int], TradeBucket | None] = {
            (skey, start): self.states[skey].get(start) for skey, start in sorted(state_wanted)
        }
        closes = p.fold(plan, books, states, due, self.watermark)
        if p.rollups:
            await rollup.settle_rollups(
                self._read, p.rollups, p.close_grace_ms, books, closes, watermark, due, plan.rest_rollups
            )
        self._write(books, states, due)
        self.closes.extend(closes)
        self.dead.extend(plan.dead)
        self.frames += count - plan.skipped
        if newest is not None and newest > self.position:
            self.position = newest
        self.watermark = watermark
        return len(closes)

    def _names(self, columns: TradeColumns) -> list[str | None]:
        """The canonical names of ``columns``' products (None: one the processor's symbol map rejects)."""
        found = self._canonical.get(id(columns))
        if found is not None and found[0] is columns:
            return found[1]
        names: list[str | None] = []
        for product in columns.products:
            try:
                names.append(self.processor.symbols.canonical(product))
            except KeyFormatError:
                names.append(None)
        if len(self._canonical) >= 64:
            self._canonical.clear()
        self._canonical[id(columns)] = (columns, names)
        return names

    def candles(self) -> dict[str, list[Candle]]:
        """Every series, oldest bucket first."""
        return {key: [c for _, c in sorted(series.items())] for key, series in self.series.items() if series}

    def _closed(self, key: str, start: int) -> bool:
        candle = self.series.get(key, {}).get(start)
        return candle is not None and candle.closed

    # ------------------------------------------------------------------ what the Redis commands would do

    def _due(self, watermark_ns: int) -> list[tuple[str, int]]:
        """ZRANGEBYSCORE open -inf limit: by score, then member."""
        limit_ms = watermark_ns // 1_000_000 - self.processor.close_grace_ms
        members = sorted((end, member) for member, end in self.open.items() if end <= limit_ms)
        out: list[tuple[str, int]] = []
        for _, member in members:
            key, _, start = member.rpartition("|")
            out.append((key, int(start)))
        return out

    def _load(self, key: str, starts: set[int]) -> dict[int, Candle]:
        """store.queue_load's reads: the series' newest bucket plus the buckets at ``starts``."""
        series = self.series.get(key)
        if not series:
            return {}
        out = {s: series[s] for s in starts if s in series}
        newest = max(series)
        out[newest] = series[newest]
        return out

    async def _read(self, missing: list[tuple[str, str, int]]) -> rollup.Reads:
        out: rollup.Reads = {}
        for src, tgt, start in missing:
            end = bucket_end(keys.parse_candles(tgt)[2], start)
            source_tf = keys.parse_candles(src)[2]
            base = self.series.get(src, {})
            step = fixed_duration_ms(source_tf)
            parts: list[Candle]
            if step is not None:  # the base buckets of [start, end), oldest first (not a scan of the whole series)
                parts = [c for at in range(start, end, step) if (c := base.get(at)) is not None]
            else:
                parts, at = [], start
                while at < end:
                    if (c := base.get(at)) is not None:
                        parts.append(c)
                    at = bucket_end(source_tf, at)
            stored = self.series.get(tgt, {}).get(start)
            out[(src, tgt, start)] = (parts, [stored] if stored is not None else [])
        return out

    def _write(
        self,
        books: dict[str, CandleBook],
        states: dict[tuple[str, int], TradeBucket | None],
        due: list[tuple[str, int]],
    ) -> None:
        """What the processor's MULTI writes (``_queue``), minus the trimming to ``candle_history``."""
        for key, start in due:
            c = books[key].candles.get(start)
            if c is None or c.closed:
                self.open.pop(f"{key}|{start}", None)
        opened: dict[str, int] = {}
        for key, book in books.items():
            series = self.series[key]
            for start in sorted(book.dirty):
                candle = book.candles[start]
                series[start] = candle
                member = f"{key}|{start}"
                if candle.closed:
                    self.open.pop(member, None)
                else:
                    opened[member] = bucket_end(candle.timeframe, candle.start)
        self.open.update(opened)
        window = self.processor.state_window
        touched: set[str] = set()
        for (skey, start), bucket in states.items():
            if bucket is not None:
                self.states[skey][start] = bucket
                touched.add(skey)
        for skey in touched:  # ZREMRANGEBYRANK 0 -(window + 1): the newest ``window`` buckets stay
            kept = self.states[skey]
            if len(kept) > window:
                for start in sorted(kept)[: len(kept) - window]:
                    del kept[start]


def _merge(plan: Plan, part: Plan) -> None:
    """Append the plan of the batch's next entries to ``plan`` (both in stream order)."""
    plan.items.extend(part.items)
    plan.dead.extend(part.dead)
    plan.skipped += part.skipped
    for key, starts in part.filled.items():
        plan.filled.setdefault(key, set()).update(starts)


_RUN: Entry = (b"", {})  # the entry of a trade run's item: none (only a trade candle's dead letter reads one)


def _plan_columns(
    p: CandleProcessor, pieces: list[Frames], closed: Callable[[str, int], bool], watermark_ns: int
) -> Plan:
    """The plan of a batch of Binance frames whose trades only move the watermark (:meth:`MemoryCandles.fold_frames`):
    one plan of the other frames, with an item per run of trade frames at the run's newest event time. A kline
    snapshot a later one of its bucket supersedes (:mod:`processors.superseded`; ``closed``: whether a bucket
    was closed before the batch, ``watermark_ns``: the partition's watermark then) is folded as a trade frame
    is, for its event time only."""
    if not pieces:
        return Plan()
    kind = np.concatenate([f.kind for f in pieces]) if len(pieces) > 1 else pieces[0].kind
    times = np.concatenate([f.event_ms for f in pieces]) if len(pieces) > 1 else pieces[0].event_ms
    others: list[Entry] = []
    for f in pieces:
        rows = np.flatnonzero(f.kind != TRADE)
        if rows.size:
            others.extend(f.entries_at(rows))
    placed = np.flatnonzero(kind != TRADE)  # each other frame's row in the batch
    if (kind[placed] == KLINE).any():
        floor = -(-watermark_ns // 1_000_000)  # (rounded up: an upper bound)
        marks = np.maximum(np.maximum.accumulate(times), floor)[placed]
        dropped = superseded(p, others, kind[placed].tolist(), marks.tolist(), closed)
        if dropped:
            kind = kind.copy()
            kind[placed[sorted(dropped)]] = TRADE
            others = [e for n, e in enumerate(others) if n not in dropped]
    trade = kind == TRADE
    plan = p.plan(others, (0, 0))  # one plan for the batch's other frames, in order
    if not trade.any():
        return plan
    cuts = np.flatnonzero(trade[1:] != trade[:-1]) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [len(trade)]))
    tops = np.maximum.reduceat(times, starts)
    is_run = trade[starts]
    layout: list[Item | int] = [
        Item(_RUN, [], [], top * 1_000_000) if run else b - a
        for a, b, run, top in zip(starts.tolist(), ends.tolist(), is_run.tolist(), tops.tolist(), strict=True)
    ]
    return _interleave(plan, others, layout)


def _interleave(plan: Plan, others: list[Entry], layout: list[Item | int]) -> Plan:
    """``plan`` (of ``others``, the batch's frames folded one by one) with its items placed among the batch's
    own items: ``layout`` holds, in batch order, an item, or how many of ``others`` come next."""
    items = plan.items
    out: list[Item] = []
    aligned = len(items) == len(others)  # no dead letter and no merged item: one item per other frame
    i = at = 0
    for part in layout:
        if isinstance(part, Item):
            out.append(part)
        elif aligned:
            out.extend(items[i : i + part])
            i += part
        else:
            for entry_id, _ in others[at : at + part]:  # its items (a dead letter has none)
                if i < len(items) and items[i].entry[0] == entry_id:
                    out.append(items[i])
                    i += 1
            at += part
    assert i == len(items)
    plan.items = out
    return plan


def _plan_runs(p: CandleProcessor, pieces: list[Frames], names: Callable[[TradeColumns], list[str | None]]) -> Plan:
    """The plan of a batch of Coinbase frames with trade candles (:meth:`MemoryCandles.fold_frames`): each run
    of consecutive frames with trade columns (of known products) as one :class:`~processors.trade_run.TradeRun`
    item, and one plan of the other frames, in order."""
    others: list[Entry] = []
    layout: list[Item | int] = []  # in order: a run's item, or how many of ``others`` come next
    for f in pieces:
        ok = eligible(f, names)
        if not ok.any():
            entries = f.entries()
            others.extend(entries)
            layout.append(len(entries))
            continue
        cuts = np.flatnonzero(ok[1:] != ok[:-1]) + 1
        bounds = [0, *cuts.tolist(), len(ok)]
        for a, b in pairwise(bounds):
            if ok[a]:
                assert f.trades is not None
                canonical = [n if n is not None else "" for n in names(f.trades)]  # (eligible rows: all named)
                run = TradeRun.of(p.exchange_id, f.take(slice(a, b)), canonical)
                layout.append(Item(_RUN, [], [], run.newest_ns, run=run))
            else:
                entries = f.entries(a, b)
                others.extend(entries)
                layout.append(len(entries))
    return _interleave(p.plan(others, (0, 0)), others, layout)  # one plan for the batch's other frames
