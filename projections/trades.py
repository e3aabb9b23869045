"""Candles folded from trades: pure, by exchange event time, and indifferent to order and duplicates.

A :class:`TradeBucket` is the exact state of one bucket: decimal sums (volume, quote volume, taker-buy
volume), trade count, extremes, and the open/close as the prices of the lowest / highest trade id.
Every part is commutative, and the ids already folded are kept as disjoint ranges (trade ids of one
symbol are consecutive, so this is nearly always a single range), so folding the same trades in any
order, with any repeats, split over any number of partial folds merged afterwards, gives the same
bucket. Binance aggTrades count ``l - f + 1`` trades each, as the kline's ``n`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import msgspec

from projections.candles import Candle

ZERO = Decimal(0)


class Trade(msgspec.Struct, frozen=True, kw_only=True, gc=False):  # (no cycles: scalars only)
    exchange: str
    symbol: str  # canonical BASE-QUOTE
    trade_id: int  # Binance aggTrade id ``a``; Coinbase trade_id
    price: Decimal
    qty: Decimal
    time_ms: int  # exchange trade time
    taker_buy: bool  # Binance: not m (buyer is not the maker); Coinbase: maker side SELL
    trades: int = 1  # Binance aggTrade: l - f + 1


class TradeBucket(msgspec.Struct, kw_only=True):
    start: int
    open_id: int
    open: Decimal
    close_id: int
    close: Decimal
    high: Decimal
    low: Decimal
    volume: Decimal = ZERO
    quote_volume: Decimal = ZERO
    taker_buy_volume: Decimal = ZERO
    trades: int = 0
    last_time_ms: int = 0
    ids: list[tuple[int, int]] = []  # disjoint, sorted, inclusive ranges of folded trade ids

    def has(self, trade_id: int) -> bool:
        return any(lo <= trade_id <= hi for lo, hi in self.ids)


def bucket_start(time_ms: int, interval_ms: int) -> int:
    return time_ms - time_ms % interval_ms


def _add_id(ranges: list[tuple[int, int]], trade_id: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    lo, hi = trade_id, trade_id
    placed = False
    for a, b in ranges:
        if b < lo - 1:
            out.append((a, b))
        elif a > hi + 1:
            if not placed:
                out.append((lo, hi))
                placed = True
            out.append((a, b))
        else:
            lo, hi = min(lo, a), max(hi, b)
    if not placed:
        out.append((lo, hi))
    return out


def _merge_ids(ranges: list[tuple[int, int]], ids: list[int]) -> list[tuple[int, int]]:
    """``ranges`` (at most one range) with ``ids`` (distinct, none in ``ranges``) added: what :func:`_add_id`
    gives adding them one by one (the sorted disjoint ranges of the union, adjacent ones merged)."""
    ids.sort()
    first, last = ids[0], ids[-1]
    if last - first == len(ids) - 1:  # distinct ids: consecutive ones (nearly always)
        if not ranges:
            return [(first, last)]
        lo, hi = ranges[0]
        if first == hi + 1:
            return [(lo, last)]
        if last == lo - 1:
            return [(first, hi)]
    return union_ids(ranges, ids)


def union_ids(ranges: list[tuple[int, int]], ids: list[int]) -> list[tuple[int, int]]:
    """The sorted disjoint ranges, adjacent ones merged, of ``ranges`` (any number) and ``ids``."""
    out: list[tuple[int, int]] = []
    for a, z in sorted([*ranges, *((i, i) for i in ids)]):
        if out and a <= out[-1][1] + 1:
            if z > out[-1][1]:
                out[-1] = (out[-1][0], z)
        else:
            out.append((a, z))
    return out


def apply_trade(bucket: TradeBucket | None, t: Trade, interval_ms: int) -> TradeBucket:
    """Fold one trade into its bucket (``bucket`` must be the one for ``t``'s time, or None)."""
    return apply_trades(bucket, (t,), interval_ms)


def apply_trades(bucket: TradeBucket | None, trades: Sequence[Trade], interval_ms: int) -> TradeBucket:
    """Fold trades of one bucket into it, in order (``bucket`` must be the one for their time, or None).

    The same bucket as :func:`apply_trade` one trade after the other, with the same ``Decimal`` operations
    in the same order (so the same rounding, in the current context), but ``bucket`` is copied once for the
    run, not once per trade. ``bucket`` itself is never changed; it is returned as it is when every trade
    is a repeat.
    """
    it = iter(trades)
    b = bucket
    if b is None:
        t = next(it, None)
        if t is None:
            raise ValueError("no trades to fold into a new bucket")
        b = TradeBucket(
            start=bucket_start(t.time_ms, interval_ms), open_id=t.trade_id, open=t.price, close_id=t.trade_id,
            close=t.price, high=t.price, low=t.price, volume=t.qty, quote_volume=t.price * t.qty,
            taker_buy_volume=t.qty if t.taker_buy else ZERO, trades=t.trades, last_time_ms=t.time_ms,
            ids=[(t.trade_id, t.trade_id)],
        )  # fmt: skip
    start = b.start
    ranges = b.ids
    single = len(ranges) <= 1  # nearly always: trade ids are consecutive, so the bucket's form one range
    lo, hi = ranges[0] if ranges else (0, -1)
    fresh: list[int] = []  # (single) the ids this run adds, merged into the range at the end
    seen: set[int] = set()
    own = b is not bucket  # whether ``b`` is ours to change (a copy is made at the first new trade)
    for t in it:
        if t.time_ms - t.time_ms % interval_ms != start:
            raise ValueError(f"trade {t.trade_id} at {t.time_ms} does not belong to bucket {start}")
        i = t.trade_id
        if single:
            if lo <= i <= hi or i in seen:
                continue  # a repeat
            seen.add(i)
            fresh.append(i)
        else:
            if any(a <= i <= z for a, z in ranges):
                continue  # a repeat
            ranges = _add_id(ranges, i)
        if not own:
            b, own = msgspec.structs.replace(b), True
        price, qty = t.price, t.qty
        if i < b.open_id:
            b.open_id, b.open = i, price
        if i > b.close_id:
            b.close_id, b.close = i, price
        if price > b.high:  # as max(high, price): the first of equal values stays
            b.high = price
        if price < b.low:  # as min(low, price)
            b.low = price
        b.volume += qty
        b.quote_volume += price * qty
        if t.taker_buy:
            b.taker_buy_volume += qty
        b.trades += t.trades
        if t.time_ms > b.last_time_ms:
            b.last_time_ms = t.time_ms
    if fresh:
        b.ids = _merge_ids(b.ids, fresh)
    elif ranges is not b.ids:
        b.ids = ranges
    return b


def fold_trades(trades: list[Trade], interval_ms: int) -> dict[tuple[str, int], TradeBucket]:
    """Fold trades (any order) into buckets keyed by (symbol, bucket start)."""
    out: dict[tuple[str, int], TradeBucket] = {}
    for t in trades:
        key = (t.symbol, bucket_start(t.time_ms, interval_ms))
        out[key] = apply_trade(out.get(key), t, interval_ms)
    return out


def to_candle(
    b: TradeBucket, *, exchange: str, symbol: str, timeframe: str, closed: bool = False, closed_by: str | None = None
) -> Candle:
    """The bucket's candle; closed when ``closed`` or ``closed_by`` (why: one of ``CLOSED_BY``) is given."""
    return Candle(
        exchange=exchange, symbol=symbol, timeframe=timeframe, start=b.start, open=str(b.open), high=str(b.high),
        low=str(b.low), close=str(b.close), volume=str(b.volume), quote_volume=str(b.quote_volume),
        trades=b.trades, taker_buy_volume=str(b.taker_buy_volume), closed=closed or closed_by is not None,
        event_ns=b.last_time_ms * 1_000_000, source="trades", closed_by=closed_by,
    )  # fmt: skip
