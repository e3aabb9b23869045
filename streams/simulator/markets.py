"""Market state the simulator keeps per symbol: the trades it streamed, and exact folds of them.

Every REST answer (klines, candles, aggTrades, tickers) is computed from :class:`Series`, the trades a
feed actually published, so REST agrees with the stream. Prices and quantities are integers scaled by
10^``price_scale`` / 10^``qty_scale`` (see :mod:`streams.simulator.wire`); times are µs since the epoch.
"""

from __future__ import annotations

import calendar
import datetime as dt
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import NamedTuple

MINUTE_MS = 60_000
_DAY_MS = 86_400_000
_MONDAY_OFFSET_MS = 4 * _DAY_MS  # 1970-01-01 was a Thursday

BINANCE_INTERVALS_MS: dict[str, int] = {
    "1s": 1000, "1m": MINUTE_MS, "3m": 3 * MINUTE_MS, "5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS, "1h": 60 * MINUTE_MS, "2h": 120 * MINUTE_MS, "4h": 240 * MINUTE_MS,
    "6h": 360 * MINUTE_MS, "8h": 480 * MINUTE_MS, "12h": 720 * MINUTE_MS, "1d": _DAY_MS, "3d": 3 * _DAY_MS,
    "1w": 7 * _DAY_MS, "1M": 31 * _DAY_MS,  # 1M: calendar months, see bucket_start/next_start
}  # fmt: skip

COINBASE_GRANULARITY_S: dict[str, int] = {
    "ONE_MINUTE": 60, "FIVE_MINUTE": 300, "FIFTEEN_MINUTE": 900, "THIRTY_MINUTE": 1800, "ONE_HOUR": 3600,
    "TWO_HOUR": 7200, "FOUR_HOUR": 14400, "SIX_HOUR": 21600, "ONE_DAY": 86400,
}  # fmt: skip


class Trade(NamedTuple):
    id: int  # Binance aggregate trade id ``a`` / Coinbase ``trade_id``
    time_us: int
    price: int  # · 10^price_scale
    qty: int  # · 10^qty_scale
    buyer_maker: bool  # Binance ``m``; on Coinbase the maker side is BUY
    first: int  # Binance first trade id ``f`` (Coinbase: = id)
    last: int  # Binance last trade id ``l`` (Coinbase: = id)


_TIME = attrgetter("time_us")
_ID = attrgetter("id")


@dataclass(slots=True)
class Agg:
    """An exact fold of trades (a kline / candle). ``trades`` counts individual trades: Σ(last-first+1)."""

    start_ms: int
    end_ms: int  # exclusive
    open: int = 0
    high: int = 0
    low: int = 0
    close: int = 0
    volume: int = 0
    quote: int = 0
    buy_volume: int = 0  # taker buy (``m`` false)
    buy_quote: int = 0
    trades: int = 0
    first: int = -1  # first / last individual trade id
    last: int = -1
    first_agg: int = -1
    last_agg: int = -1

    @property
    def empty(self) -> bool:
        return self.first_agg < 0

    def add(self, t: Trade) -> None:
        p, q = t.price, t.qty
        if self.first_agg < 0:
            self.open = self.high = self.low = p
            self.first, self.first_agg = t.first, t.id
        elif p > self.high:
            self.high = p
        elif p < self.low:
            self.low = p
        self.close = p
        self.volume += q
        self.quote += p * q
        if not t.buyer_maker:
            self.buy_volume += q
            self.buy_quote += p * q
        self.trades += t.last - t.first + 1
        self.last, self.last_agg = t.last, t.id

    def add_all(self, trades: Iterable[Trade]) -> Agg:
        for t in trades:
            self.add(t)
        return self

    def key(self) -> tuple[int, int, int]:
        """Changes whenever a trade is added (used to send kline/candle updates only on change)."""
        return (self.start_ms, self.last_agg, self.trades)


class Series:
    """The trades of one symbol in id (and time) order, bounded to the newest ``max_trades``."""

    def __init__(self, symbol: str, *, price_scale: int, qty_scale: int, max_trades: int = 500_000) -> None:
        self.symbol = symbol
        self.price_scale = price_scale
        self.qty_scale = qty_scale
        self.max_trades = max_trades
        self.trades: list[Trade] = []

    @property
    def last(self) -> Trade | None:
        return self.trades[-1] if self.trades else None

    def book(self, trade: Trade) -> None:
        self.trades.append(trade)
        if len(self.trades) > self.max_trades * 5 // 4:
            del self.trades[: len(self.trades) - self.max_trades]

    def book_many(self, trades: Iterable[Trade]) -> None:
        self.trades.extend(trades)
        if len(self.trades) > self.max_trades * 5 // 4:
            del self.trades[: len(self.trades) - self.max_trades]

    def window(self, start_ms: int, end_ms: int) -> list[Trade]:
        """Trades with time in [start_ms, end_ms)."""
        lo = bisect_left(self.trades, start_ms * 1000, key=_TIME)
        hi = bisect_left(self.trades, end_ms * 1000, lo=lo, key=_TIME)
        return self.trades[lo:hi]

    def last_before(self, t_ms: int) -> Trade | None:
        i = bisect_left(self.trades, t_ms * 1000, key=_TIME)
        return self.trades[i - 1] if i else None

    def after_id(self, last_id: int) -> list[Trade]:
        """Trades with id > ``last_id``."""
        return self.trades[bisect_left(self.trades, last_id + 1, key=_ID) :]

    def from_id(self, from_id: int, limit: int) -> list[Trade]:
        lo = bisect_left(self.trades, from_id, key=_ID)
        return self.trades[lo : lo + limit]

    def fold(self, start_ms: int, end_ms: int) -> Agg:
        return Agg(start_ms, end_ms).add_all(self.window(start_ms, end_ms))


# ----------------------------------------------------------------------------------------- intervals


def bucket_start(t_ms: int, interval: str) -> int:
    """Open time of the Binance ``interval`` bucket holding ``t_ms`` (UTC; 1w starts on Monday)."""
    if interval == "1M":
        d = dt.datetime.fromtimestamp(t_ms // 1000, dt.UTC)
        return calendar.timegm((d.year, d.month, 1, 0, 0, 0)) * 1000
    size = BINANCE_INTERVALS_MS[interval]
    if interval == "1w":
        return (t_ms - _MONDAY_OFFSET_MS) // size * size + _MONDAY_OFFSET_MS
    return t_ms // size * size


def next_start(start_ms: int, interval: str) -> int:
    if interval == "1M":
        d = dt.datetime.fromtimestamp(start_ms // 1000, dt.UTC)
        year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
        return calendar.timegm((year, month, 1, 0, 0, 0)) * 1000
    return start_ms + BINANCE_INTERVALS_MS[interval]


def prev_start(start_ms: int, interval: str) -> int:
    if interval == "1M":
        return bucket_start(start_ms - 1, "1M")
    return start_ms - BINANCE_INTERVALS_MS[interval]


def buckets(first_ms: int, last_ms: int, interval: str) -> Iterator[tuple[int, int]]:
    """(open, end) of every bucket with open time in [bucket_start(first_ms), last_ms]."""
    start = bucket_start(first_ms, interval)
    while start <= last_ms:
        end = next_start(start, interval)
        yield start, end
        start = end


class Ticker(NamedTuple):
    """Rolling statistics over a window of trades (Binance ticker/24hr, Coinbase ticker / products)."""

    open: int
    high: int
    low: int
    last: int
    last_qty: int
    volume: int
    quote: int
    first_id: int
    last_id: int
    trades: int


def ticker(series: Series, now_ms: int, window_ms: int = _DAY_MS) -> Ticker | None:
    """Statistics of the trades in (now - window, now]; None when there were none."""
    trades = series.window(now_ms - window_ms + 1, now_ms + 1)
    if not trades:
        return None
    agg = Agg(0, 0).add_all(trades)
    return Ticker(
        agg.open, agg.high, agg.low, agg.close, trades[-1].qty, agg.volume, agg.quote, agg.first, agg.last, agg.trades
    )
