"""Candles folded from trades: pure, by exchange event time, and indifferent to order and duplicates.

A :class:`TradeBucket` is the exact state of one bucket: decimal sums (volume, quote volume, taker-buy
volume), trade count, extremes, and the open/close as the prices of the lowest / highest trade id.
Every part is commutative, and the ids already folded are kept as disjoint ranges (trade ids of one
symbol are consecutive, so this is nearly always a single range), so folding the same trades in any
order, with any repeats, split over any number of partial folds merged afterwards, gives the same
bucket. Binance aggTrades count ``l - f + 1`` trades each, as the kline's ``n`` does.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from projections.candles import Candle

ZERO = Decimal(0)


class Trade(msgspec.Struct, frozen=True, kw_only=True):
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


def apply_trade(bucket: TradeBucket | None, t: Trade, interval_ms: int) -> TradeBucket:
    """Fold one trade into its bucket (``bucket`` must be the one for ``t``'s time, or None)."""
    start = bucket_start(t.time_ms, interval_ms)
    if bucket is None:
        return TradeBucket(
            start=start, open_id=t.trade_id, open=t.price, close_id=t.trade_id, close=t.price, high=t.price,
            low=t.price, volume=t.qty, quote_volume=t.price * t.qty, taker_buy_volume=t.qty if t.taker_buy else ZERO,
            trades=t.trades, last_time_ms=t.time_ms, ids=[(t.trade_id, t.trade_id)],
        )  # fmt: skip
    if bucket.start != start:
        raise ValueError(f"trade {t.trade_id} at {t.time_ms} does not belong to bucket {bucket.start}")
    if bucket.has(t.trade_id):
        return bucket  # a duplicate
    b = msgspec.structs.replace(bucket, ids=_add_id(bucket.ids, t.trade_id))
    if t.trade_id < b.open_id:
        b.open_id, b.open = t.trade_id, t.price
    if t.trade_id > b.close_id:
        b.close_id, b.close = t.trade_id, t.price
    b.high = max(b.high, t.price)
    b.low = min(b.low, t.price)
    b.volume += t.qty
    b.quote_volume += t.price * t.qty
    if t.taker_buy:
        b.taker_buy_volume += t.qty
    b.trades += t.trades
    b.last_time_ms = max(b.last_time_ms, t.time_ms)
    return b


def fold_trades(trades: list[Trade], interval_ms: int) -> dict[tuple[str, int], TradeBucket]:
    """Fold trades (any order) into buckets keyed by (symbol, bucket start)."""
    out: dict[tuple[str, int], TradeBucket] = {}
    for t in trades:
        key = (t.symbol, bucket_start(t.time_ms, interval_ms))
        out[key] = apply_trade(out.get(key), t, interval_ms)
    return out


def to_candle(b: TradeBucket, *, exchange: str, symbol: str, timeframe: str, closed: bool = False) -> Candle:
    return Candle(
        exchange=exchange, symbol=symbol, timeframe=timeframe, start=b.start, open=str(b.open), high=str(b.high),
        low=str(b.low), close=str(b.close), volume=str(b.volume), quote_volume=str(b.quote_volume),
        trades=b.trades, taker_buy_volume=str(b.taker_buy_volume), closed=closed,
        event_ns=b.last_time_ms * 1_000_000, source="trades",
    )  # fmt: skip
