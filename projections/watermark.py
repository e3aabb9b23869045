"""Timeframe arithmetic and closing candles by event-time watermark: pure, no I/O, no clock.

Buckets are half-open ``[start, end)`` in epoch ms UTC, the way Binance's klines are (its
``closeTime`` is ``end - 1``):

* ``1m`` … ``1d`` and ``3d`` are aligned to the Unix epoch (``start % duration == 0``);
* ``1w`` starts on Monday 00:00 UTC (as Binance's weekly klines do; 1970-01-01 was a Thursday);
* ``1M`` is a calendar month, so its duration depends on the bucket (28–31 days).

A candle closes for one of three reasons, and only the third is decided here:

1. the exchange says so (Binance ``k.x``) — :func:`projections.candles.apply_snapshot`;
2. a newer bucket of the series arrives (Coinbase) — :class:`projections.candles.CandleBook`;
3. event time has moved past its end plus a grace — :func:`close_due`. The watermark is the
   largest exchange event time seen on that exchange's feed, never the clock.

A watermark close keeps the candle's values *and its event_ns* (the event time of the snapshot the
values come from), as ``CandleBook``'s Coinbase close does. Stamping the watermark into ``event_ns``
would make :func:`apply_snapshot` treat a later-arriving snapshot whose event time lies between the
candle's values and the watermark as stale and drop its values; keeping it, that snapshot is folded
in as a correction, so the final values don't depend on which feed's frame moved the watermark first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import msgspec

from projections.candles import BY_WATERMARK, Candle, CandleClosed

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
_MONDAY_OFFSET_MS = 4 * DAY_MS  # 1970-01-05, the first Monday after the epoch
_EPOCH = dt.date(1970, 1, 1)

# Fixed durations; "1M" (a calendar month) has none.
_FIXED_MS: dict[str, int] = {
    "1m": MINUTE_MS, "3m": 3 * MINUTE_MS, "5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS, "30m": 30 * MINUTE_MS,
    "1h": HOUR_MS, "2h": 2 * HOUR_MS, "4h": 4 * HOUR_MS, "6h": 6 * HOUR_MS, "8h": 8 * HOUR_MS,
    "12h": 12 * HOUR_MS, "1d": DAY_MS, "3d": 3 * DAY_MS, "1w": WEEK_MS,
}  # fmt: skip
MONTH = "1M"
TIMEFRAMES: tuple[str, ...] = (*_FIXED_MS, MONTH)


def check_timeframe(timeframe: str) -> str:
    if timeframe not in TIMEFRAMES:
        raise ValueError(f"unsupported timeframe {timeframe!r}; expected one of {' '.join(TIMEFRAMES)}")
    return timeframe


def fixed_duration_ms(timeframe: str) -> int | None:
    """The duration of every bucket of ``timeframe``, or None for ``1M`` (months differ in length)."""
    fixed = _FIXED_MS.get(timeframe)
    if fixed is None:
        check_timeframe(timeframe)
    return fixed


def duration_ms(timeframe: str, start: int | None = None) -> int:
    """The length of a bucket; ``1M`` needs the bucket's ``start`` (any time inside the month will do)."""
    fixed = fixed_duration_ms(timeframe)
    if fixed is not None:
        return fixed
    if start is None:
        raise ValueError("1M buckets differ in length: pass the bucket start")
    first = bucket_start(MONTH, start)
    return bucket_end(MONTH, first) - first


def _date(time_ms: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=time_ms // DAY_MS)


def _ms(day: dt.date) -> int:
    return (day - _EPOCH).days * DAY_MS


def bucket_start(timeframe: str, time_ms: int) -> int:
    """Open time (epoch ms UTC) of the ``timeframe`` bucket holding the event time ``time_ms``."""
    fixed = fixed_duration_ms(timeframe)
    if fixed is None:
        return _ms(_date(time_ms).replace(day=1))
    offset = _MONDAY_OFFSET_MS if timeframe == "1w" else 0
    return time_ms - (time_ms - offset) % fixed


def bucket_end(timeframe: str, start: int) -> int:
    """Exclusive end of the bucket opening at ``start`` (= the next bucket's start; Binance closeTime + 1)."""
    if bucket_start(timeframe, start) != start:
        raise ValueError(f"{start} is not the start of a {timeframe} bucket")
    fixed = _FIXED_MS.get(timeframe)
    if fixed is not None:
        return start + fixed
    d = _date(start)
    return _ms(dt.date(d.year + 1, 1, 1) if d.month == 12 else dt.date(d.year, d.month + 1, 1))


def bucket_starts(timeframe: str, first: int, end: int) -> list[int]:
    """The starts of the ``timeframe`` buckets from the one holding ``first`` up to (excluding) ``end``."""
    out: list[int] = []
    s = bucket_start(timeframe, first)
    while s < end:
        out.append(s)
        s = bucket_end(timeframe, s)
    return out


def candle_end(c: Candle) -> int:
    return bucket_end(c.timeframe, c.start)


def advance(watermark_ns: int | None, event_ns: int) -> int:
    """The watermark after seeing one more event: the largest event time so far (order-insensitive)."""
    return event_ns if watermark_ns is None else max(watermark_ns, event_ns)


def is_due(c: Candle, watermark_ns: int, grace_ms: int) -> bool:
    """Whether event time has passed the candle's end plus the grace: ``end + grace <= watermark``."""
    if grace_ms < 0:
        raise ValueError(f"grace_ms must be >= 0, got {grace_ms}")
    return (candle_end(c) + grace_ms) * 1_000_000 <= watermark_ns


def close_due(candles: Iterable[Candle], watermark_ns: int, grace_ms: int) -> list[CandleClosed]:
    """Close every still-open candle whose ``end + grace <= watermark`` (values and event_ns unchanged;
    ``closed_by`` says the watermark closed it).

    ``candles`` are the open candles of one exchange (any series and timeframe); closed ones are skipped.
    Returns one :class:`CandleClosed` per closed candle, ordered by (symbol, timeframe, start), each
    holding the closed candle to store. Idempotent: the returned candles are never due again.
    """
    out = [
        CandleClosed(candle=msgspec.structs.replace(c, closed=True, closed_by=BY_WATERMARK))
        for c in candles
        if not c.closed and is_due(c, watermark_ns, grace_ms)
    ]
    out.sort(key=lambda e: (e.candle.exchange, e.candle.symbol, e.candle.timeframe, e.candle.start))
    return out
