"""A run of Coinbase trade frames folded at once, from trade columns: a replay's fast path for trade candles.

Live, the candle processor folds a ``market_trades`` frame as one item: its trades into their buckets
(:func:`projections.trades.apply_trades`), each bucket it touched queued to close at end + grace, then the
frame's event time moves the watermark and closes what came due (:meth:`CandleProcessor.fold`). A replay
holds the frames as trade columns (:mod:`streams.trade_columns`), and folds a run of consecutive such frames
as one item (:class:`TradeRun`), with the same result as its frames one by one when, for every trade:

1. its bucket's candle is not closed when the run starts (else the trade makes a correction event, in its
   place), and the bucket is not one whose kept state is gone (else a dead letter, in its place);
2. the watermark before its frame (the partition's before the run, or a newer event time of an earlier frame
   of the run) is below its bucket's end + grace: no bucket closes, within the run, before all its trades
   are in.

Then one by one, each bucket takes the run's trades of it in the same order (frames, then each frame's
order), no bucket's candle is built before the run's last trade of it, and the candles that close within the
run close in deadline order either way (the fold pops them from a heap, and every bucket the run queues is
due no earlier than the watermark before its frame). A frame with a trade where either fails is folded on its
own, from its raw bytes, exactly as live, and the frames between such frames as runs
(:meth:`processors.candles.CandleProcessor.fold`).

Each bucket's trades are summed in int64 (:func:`projections.trade_sums.sums`) and merged into the bucket's
``Decimal`` state: the same values, digits and exponents, as ``apply_trades`` one trade after the other when
no addition rounds. The sizes and prices are non-negative and every partial sum is at most the total, so it is
enough that the total fits the context's precision: the merge adds in a copy of the current context that
traps :class:`decimal.Rounded`, and a bucket where it would round (or whose int64 sums overflow, or whose
state is negative or not finite) is folded by ``apply_trades`` itself, from its trades.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from projections import trade_sums as ts
from projections.trades import ZERO, Trade, TradeBucket, _merge_ids, apply_trades, union_ids
from projections.watermark import bucket_start, fixed_duration_ms
from streams.archive_columns import Frames
from streams.log import Entry
from streams.trade_columns import TradeColumns, to_decimal

I64 = npt.NDArray[np.int64]
Index = npt.NDArray[np.intp]


@dataclass
class Buckets:
    """A run's trades by ``tf`` bucket: ``keys[g]`` = (exchange, symbol, start) of group ``g``, whose trades are
    the run's trades ``order[bounds[g]:bounds[g + 1]]`` (in fold order); ``start``: each trade's bucket."""

    keys: list[tuple[str, str, int]]
    order: I64
    bounds: I64
    start: I64
    dur: int  # the timeframe's length (ms)

    def late(self, run: TradeRun, grace_ms: int, mark_ns: int) -> Index:
        """The frames (in order, once each) with a trade whose bucket was due before the frame (condition 2)
        when the watermark before the run is ``mark_ns``."""
        if not len(self.start):
            return np.zeros(0, np.intp)
        # the watermark before each frame (ms, rounded down: ``end + grace > floor(mark / 1e6)`` is
        # ``(end + grace) * 1e6 > mark`` for an integer end), against each trade's bucket end + grace
        before = np.maximum.accumulate(np.concatenate(([mark_ns], run.event_ns[:-1]))) // 1_000_000
        due = self.start + (self.dur + grace_ms) <= before[run.frame_of]
        return np.unique(run.frame_of[due])

    def frames(self, run: TradeRun, groups: list[int]) -> Index:
        """The frames of ``run`` (in order, once each) with a trade of one of ``groups``."""
        picked = np.concatenate([self.order[self.bounds[g] : self.bounds[g + 1]] for g in groups])
        return np.unique(run.frame_of[picked])


@dataclass
class TradeRun:
    """Consecutive frames of one piece of a batch, each with trade columns (module docstring)."""

    exchange: str
    frames: Frames  # the run's rows
    names: list[str]  # the columns' products, canonical
    event_ns: I64  # per frame
    rows: Index  # the run's trades: rows of the columns, in fold order
    frame_of: Index  # per trade: its frame (0-based within the run)
    _by_tf: dict[str, Buckets | None] = field(default_factory=dict)

    @property
    def columns(self) -> TradeColumns:
        assert self.frames.trades is not None
        return self.frames.trades

    def entries(self) -> list[Entry]:
        return self.frames.entries()

    @property
    def newest_ns(self) -> int:
        """The run's newest event time (what its item moves the watermark to)."""
        return int(self.event_ns.max()) if len(self.event_ns) else 0

    @classmethod
    def of(cls, exchange: str, frames: Frames, names: list[str]) -> TradeRun:
        """The run of ``frames`` (every row with trade columns; ``names``: their products' canonical names)."""
        c = frames.trades
        assert c is not None
        src = frames.index
        first = c.offsets[src]
        counts = c.offsets[src + 1] - first
        total = int(counts.sum())
        frame_of = np.repeat(np.arange(len(src), dtype=np.intp), counts)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1])) if len(counts) else counts
        rows = (np.repeat(first - starts, counts) + np.arange(total)).astype(np.intp)
        return cls(exchange, frames, names, c.event_ns[src], rows, frame_of)

    def part(self, start: int, stop: int) -> TradeRun:
        """The run of frames ``[start, stop)``."""
        return TradeRun.of(self.exchange, self.frames.take(slice(start, stop)), self.names)

    def buckets(self, tf: str) -> Buckets | None:
        """The run's ``tf`` buckets; None for a timeframe the fast path does not take (not a fixed length), or
        trade times too far out for int64 arithmetic on them."""
        if tf in self._by_tf:
            return self._by_tf[tf]
        found = None
        dur = fixed_duration_ms(tf)
        c = self.columns
        times = c.time_ms[self.rows]
        if dur is not None and tf != "1w" and not (len(times) and (times.min() < -(2**61) or times.max() > 2**61)):
            start = times - times % dur
            # by canonical name, not as sent: products spelt two ways (``btc-usd``, ``BTC-USD``) are one series
            symbols = sorted(set(self.names))
            number = {name: n for n, name in enumerate(symbols)}
            symbol = np.array([number[name] for name in self.names], np.int64)[c.product[self.rows]]
            order = np.lexsort((start, symbol)).astype(np.int64)  # stable: fold order within a bucket
            key_p, key_s = symbol[order], start[order]
            cut = np.flatnonzero((key_p[1:] != key_p[:-1]) | (key_s[1:] != key_s[:-1])) + 1
            bounds = np.concatenate(([0], cut, [len(order)])).astype(np.int64) if len(order) else np.zeros(1, np.int64)
            heads = bounds[:-1]
            firsts = zip(key_p[heads].tolist(), key_s[heads].tolist(), strict=True)
            keys = [(self.exchange, symbols[p], s) for p, s in firsts]
            found = Buckets(keys, order, bounds, start, dur)
        self._by_tf[tf] = found
        return found

    def bucket_keys(self, tf: str) -> list[tuple[str, str, int]]:
        """The (exchange, symbol, start) of the run's ``tf`` buckets (what a batch reads)."""
        found = self.buckets(tf)
        if found is not None:
            return found.keys
        c = self.columns
        names = self.names
        keys = {
            (self.exchange, names[p], bucket_start(tf, ms))
            for p, ms in zip(c.product[self.rows].tolist(), c.time_ms[self.rows].tolist(), strict=True)
        }
        return sorted(keys)

    def trades(self, rows: npt.NDArray[np.int64]) -> list[Trade]:
        """The trades at columns rows ``rows``, as :func:`projections.snapshots.trades_of` makes them."""
        c = self.columns
        names = self.names
        return [
            Trade(
                exchange=self.exchange, symbol=names[p], trade_id=i, price=to_decimal(pc, pe), qty=to_decimal(sc, se),
                time_ms=ms, taker_buy=tb,
            )
            for p, i, pc, pe, sc, se, ms, tb in zip(
                c.product[rows].tolist(), c.trade_id[rows].tolist(), c.price[rows].tolist(),
                c.price_exp[rows].tolist(), c.size[rows].tolist(), c.size_exp[rows].tolist(),
                c.time_ms[rows].tolist(), c.taker_buy[rows].tolist(), strict=True,
            )
        ]  # fmt: skip


def fold_buckets(run: TradeRun, found: Buckets, states: list[TradeBucket | None]) -> list[TradeBucket | None]:
    """The buckets after the run's trades (``states``: each group's before, None for a new one), each exactly
    as ``apply_trades`` of the group's trades in order gives it (module docstring)."""
    c = run.columns
    groups = len(found.keys)
    flat: list[int] = []
    range_bounds = np.zeros(groups + 1, np.int64)
    for g, state in enumerate(states):
        if state is not None:
            for lo, hi in state.ids:
                flat += (lo, hi)
        range_bounds[g + 1] = len(flat) // 2
    rows = run.rows[found.order]  # columns rows, in group order
    fresh = np.zeros(len(c.trade_id), np.bool_)
    out = ts.sums(
        rows.astype(np.int64), found.bounds, np.array(flat, np.int64), range_bounds, c.trade_id, c.price,
        c.price_exp, c.size, c.size_exp, c.time_ms, c.taker_buy, fresh,
    )  # fmt: skip
    exact = decimal.getcontext().copy()
    exact.traps[decimal.Rounded] = True
    exact.traps[decimal.Inexact] = True
    sums_fit = exact.prec > 18  # an int64 sum below 10**18 is then a Decimal of the context, unrounded
    picked = out[:, _PRICES]  # each group's open, close, high and low rows: their prices, gathered at once
    coefs, exps = c.price[picked].tolist(), c.price_exp[picked].tolist()
    result: list[TradeBucket | None] = []
    bounds = found.bounds.tolist()
    for g, (state, o, pc, pe) in enumerate(zip(states, out.tolist(), coefs, exps, strict=True)):
        merged = None
        if o[ts.OK] and sums_fit:
            fresh_ids = None  # (consecutive new ids are their range)
            if o[ts.FRESH] and not o[ts.CONSECUTIVE]:
                group = rows[bounds[g] : bounds[g + 1]]
                fresh_ids = c.trade_id[group[fresh[group]]].tolist()
            prices = [to_decimal(v, e) for v, e in zip(pc, pe, strict=True)]
            merged = _merge(state, found.keys[g][2], o, prices, exact, fresh_ids)
        if merged is None:  # apply_trades itself, from the group's trades
            merged = apply_trades(state, run.trades(rows[bounds[g] : bounds[g + 1]]), found.dur)
        result.append(merged)
    return result


_PRICES = [ts.OPEN, ts.CLOSE, ts.HIGH, ts.LOW]  # the sums' rows whose prices a merge takes


def _merge(
    state: TradeBucket | None,
    start: int,
    o: list[int],
    prices: list[Decimal],
    exact: decimal.Context,
    fresh_ids: list[int] | None = None,
) -> TradeBucket | None:
    """``state`` (None: a new bucket at ``start``) after a group's trades, from their sums ``o``, the prices
    of its open, close, high and low rows (``prices``) and its new ids (``fresh_ids``, any order; None: they
    are consecutive, ``o``'s lowest to highest); None when a ``Decimal`` addition would round, or the state
    is negative or not finite: the caller folds the group with ``apply_trades`` then."""
    if o[ts.FRESH] == 0:
        return state  # every trade a repeat: apply_trades returns the bucket itself
    opened, closing, high, low = prices
    volume = to_decimal(o[ts.VOLUME], o[ts.VOLUME_EXP])
    quote = to_decimal(o[ts.QUOTE], o[ts.QUOTE_EXP])
    taker = to_decimal(o[ts.TAKER], o[ts.TAKER_EXP]) if o[ts.TAKERS] else None
    first, last = o[ts.MIN_ID], o[ts.MAX_ID]
    if state is None:
        return TradeBucket(
            start=start, open_id=first, open=opened, close_id=last, close=closing, high=high, low=low,
            volume=volume, quote_volume=quote, taker_buy_volume=ZERO if taker is None else taker,
            trades=o[ts.FRESH], last_time_ms=o[ts.NEWEST],
            ids=[(first, last)] if fresh_ids is None else _merge_ids([], fresh_ids),
        )  # fmt: skip
    for d in (state.volume, state.quote_volume, state.taker_buy_volume, state.high, state.low):
        if not d.is_finite():
            return None
    for d in (state.volume, state.quote_volume, state.taker_buy_volume):
        if d.is_signed():
            return None
    try:
        volume = exact.add(state.volume, volume)
        quote = exact.add(state.quote_volume, quote)
        taker_total = state.taker_buy_volume if taker is None else exact.add(state.taker_buy_volume, taker)
    except (decimal.Rounded, decimal.Inexact):
        return None
    opens, closes = first < state.open_id, last > state.close_id
    return TradeBucket(
        start=state.start,
        open_id=first if opens else state.open_id,
        open=opened if opens else state.open,
        close_id=last if closes else state.close_id,
        close=closing if closes else state.close,
        high=high if high > state.high else state.high,
        low=low if low < state.low else state.low,
        volume=volume,
        quote_volume=quote,
        taker_buy_volume=taker_total,
        trades=state.trades + o[ts.FRESH],
        last_time_ms=o[ts.NEWEST] if o[ts.NEWEST] > state.last_time_ms else state.last_time_ms,
        ids=_union(state.ids, list(range(first, last + 1)) if fresh_ids is None else fresh_ids),
    )


def _union(ranges: list[tuple[int, int]], ids: list[int]) -> list[tuple[int, int]]:
    """The ranges ``apply_trades`` keeps for ``ranges`` and ``ids`` (distinct, none in ``ranges``)."""
    return _merge_ids(list(ranges), ids) if len(ranges) <= 1 else union_ids(ranges, ids)  # (_merge_ids: one range)


def eligible(frames: Frames, names: Callable[[TradeColumns], list[str | None]]) -> npt.NDArray[np.bool_]:
    """Per row of ``frames``: whether it has trade columns whose products all have a canonical name."""
    c = frames.trades
    if c is None:
        return np.zeros(len(frames), np.bool_)
    has = c.has[frames.index]
    mapped = names(c)
    if all(n is not None for n in mapped):
        return has
    bad = np.array([n is None for n in mapped], np.bool_)[c.product] if len(c.product) else np.zeros(0, np.bool_)
    out = has.copy()
    for r, src in enumerate(frames.index.tolist()):
        if out[r] and bad[c.offsets[src] : c.offsets[src + 1]].any():
            out[r] = False
    return out
