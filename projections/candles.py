"""The candle fold: pure functions over candle snapshots, no I/O and no clock.

A native exchange candle frame (Binance kline, Coinbase candles) is a *snapshot* of one bucket as of
its event time. Folding snapshots is last-writer-wins by event time, so a stale or repeated snapshot
changes nothing; ``closed`` is sticky (once the exchange said the bucket is final it stays final, and
a later snapshot of it is a *correction*, not a re-open).

Closing rules:

* Binance: a kline is final when the exchange says so (``k.x``), never on the clock alone.
* Coinbase: there is no closed flag; a bucket is final once a newer ``start`` arrives for the same
  product (``close_older=True``). Under that rule only the newest bucket of a series can be open.

``Candle.closed_by`` records which rule closed a bucket (``CLOSED_BY``; None while open, and for
candles stored before the field existed). It does not take part in the fold's decisions (those are
event time and the sticky ``closed``); it tells a backfill which closed buckets may hold values cut
by an outage (closed by the watermark or a newer bucket, not by the exchange's final word).
"""

from __future__ import annotations

from typing import Final

import msgspec

# Why a candle is closed (Candle.closed_by):
BY_EXCHANGE: Final = "exchange"  # the exchange's final flag (Binance ``k.x``)
BY_NEWER: Final = "newer"  # a newer bucket of the series arrived (Coinbase)
BY_WATERMARK: Final = "watermark"  # event time passed its end plus the grace (projections/watermark.py)
BY_REST: Final = "rest"  # a closed REST candle (a backfill's ``rest_candles`` frame)
BY_BASE: Final = "base"  # a roll-up whose last base candle closed (projections/rollups.py)
CLOSED_BY: Final = (BY_EXCHANGE, BY_NEWER, BY_WATERMARK, BY_REST, BY_BASE)


class Candle(msgspec.Struct, frozen=True, kw_only=True):
    """One bucket of one series. Prices and volumes are exact decimal strings as the exchange sent them."""

    exchange: str
    symbol: str  # canonical BASE-QUOTE
    timeframe: str
    start: int  # bucket open time, epoch ms UTC
    open: str
    high: str
    low: str
    close: str
    volume: str
    quote_volume: str | None = None
    trades: int | None = None
    taker_buy_volume: str | None = None
    closed: bool = False
    event_ns: int  # event time (exchange clock) of the snapshot these values come from
    source: str = "native"
    closed_by: str | None = None  # one of CLOSED_BY once closed (None: open, or stored before it existed)

    def same_values(self, other: Candle) -> bool:
        return _values(self) == _values(other)


def _values(c: Candle) -> tuple[object, ...]:
    return (c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.trades, c.taker_buy_volume)


class CandleClosed(msgspec.Struct, frozen=True, kw_only=True):
    """Emitted when a bucket becomes final, and again (``correction=True``) when a final bucket changes."""

    candle: Candle
    correction: bool = False


def apply_snapshot(current: Candle | None, update: Candle) -> tuple[Candle, CandleClosed | None]:
    """Fold one snapshot of a bucket into the bucket's current state (last writer by event time wins)."""
    if current is None:
        return update, (CandleClosed(candle=update) if update.closed else None)
    if update.event_ns < current.event_ns:
        # A stale snapshot: its values lose, but an exchange "final" flag still counts.
        if update.closed and not current.closed:
            new = msgspec.structs.replace(current, closed=True, closed_by=update.closed_by)
            return new, CandleClosed(candle=new)
        return current, None
    closed = current.closed or update.closed
    closed_by = update.closed_by if update.closed else current.closed_by
    if closed == update.closed and closed_by == update.closed_by:
        new = update  # (what the replace would give: the same values)
    else:
        new = msgspec.structs.replace(update, closed=closed, closed_by=closed_by)
    if new == current:
        return current, None
    if current.closed:
        if new.same_values(current):
            return new, None
        return new, CandleClosed(candle=new, correction=True)
    return new, (CandleClosed(candle=new) if new.closed else None)


class CandleBook:
    """The part of one series (exchange, symbol, timeframe) a batch touches, folded in order.

    ``candles`` must hold every bucket the batch updates plus the newest bucket of the series, as
    stored before the batch; :meth:`apply` records which buckets changed in ``dirty``.
    """

    def __init__(self, candles: dict[int, Candle]) -> None:
        self.candles = dict(candles)
        self.stored = set(candles)  # buckets that exist in the store (a put must replace them)
        self.latest = max(candles) if candles else None
        self.dirty: set[int] = set()

    def add_stored(self, candles: dict[int, Candle]) -> None:
        """Buckets read from the store after the book was made (those the batch has not changed)."""
        for start, candle in candles.items():
            self.stored.add(start)
            if start not in self.dirty:
                self.candles[start] = candle
                if self.latest is None or start > self.latest:
                    self.latest = start

    def apply(self, update: Candle, *, close_older: bool = False) -> list[CandleClosed]:
        events: list[CandleClosed] = []
        if close_older:
            if self.latest is not None and self.latest < update.start:
                tail = self.candles.get(self.latest)
                if tail is not None and not tail.closed:
                    closed = msgspec.structs.replace(tail, closed=True, closed_by=BY_NEWER)
                    self._put(closed)
                    events.append(CandleClosed(candle=closed))
            elif self.latest is not None and update.start < self.latest and not update.closed:
                update = msgspec.structs.replace(update, closed=True, closed_by=BY_NEWER)
        current = self.candles.get(update.start)
        new, event = apply_snapshot(current, update)
        if new is not current:
            self._put(new)
        if event is not None:
            events.append(event)
        return events

    def put(self, candle: Candle) -> None:
        """Store a candle decided elsewhere (a watermark close) as changed."""
        self._put(candle)

    def _put(self, candle: Candle) -> None:
        self.candles[candle.start] = candle
        self.dirty.add(candle.start)
        if self.latest is None or candle.start > self.latest:
            self.latest = candle.start
