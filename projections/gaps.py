"""Missing candles: which buckets of a series are absent, and how a REST answer fills them. Pure, no clock.

Timeframe arithmetic is :mod:`projections.watermark`'s (``bucket_start`` / ``bucket_end``; ``1w`` starts
on Monday, ``1M`` is a calendar month). A range ``[start_ms, end_ms)`` means the buckets whose *start*
lies in it.

REST candles reach the candle series only through the raw stream: a backfill appends them as one
``rest_candles`` frame (:mod:`streams.frames`) and the candle processor folds them like native
snapshots, closed, ``source="rest"``, ``closed_by="rest"``, at the event time :func:`rest_event_ns`:
**one nanosecond before the bucket's end**. Under the fold's last-writer-wins by event time
(:func:`projections.candles.apply_snapshot`) that means:

* it wins against every snapshot taken *during* the bucket (Binance klines with ``E < end``, Coinbase
  candle updates, trade-built candles, whose event time is their last trade): an open bucket, or one
  closed only by the watermark or by a newer bucket (those closes keep the event time of the values
  they hold), is repaired, and a closed one whose values change gets a correction event;
* it loses against anything the exchange sent at or after the end: Binance's final kline (``x``, event
  time after the end) and any later exchange snapshot. Those already hold every trade of the bucket,
  and Binance klines don't change once final, so a REST answer has nothing to add; in either arrival
  order the exchange's final values stand (REST first: the final arrives later in event time and
  replaces it; REST second: it is stale, and only its ``closed`` counts).

Late trades and snapshots from during the bucket that arrive after a REST candle lose against it too.

:func:`plan_fill` decides, bucket by bucket, what a backfill appends (see ``processors/backfill.py`` for
the I/O and the empty-bucket policy, which is stated there):

* a bucket already stored *closed* is left alone (the live feed, or an earlier fill, said it is
  final) unless :func:`to_repair` says its values may be cut (closed by the watermark, or, for the
  ``repair`` buckets, also by a newer bucket, with values from before its end: a REST candle would
  win); a gap marker on it is stale and is removed;
* a closed REST candle fills an absent bucket, replaces an *open* stored one (REST has it closed:
  its end lies before the response time), or repairs a ``repair`` bucket; an open REST candle changes
  nothing (``pending``);
* a bucket REST did not return is a gap only once it is provably over (``end <= horizon``, the newest
  exchange time the data itself shows); before that it is ``pending``, neither written nor marked;
* ``omits_empty`` (Coinbase): an over bucket REST left out of an answer that covered it is ``pending``
  until it is safely behind the exchange (a later bucket came back, or the horizon is a whole bucket
  past its end); then it is a confirmed empty candle (open = high = low = close = the previous close,
  volume ``"0"``) when the previous close is known (the bucket before is stored closed, came back, or
  is itself confirmed empty), and a gap when it is not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from projections.candles import BY_NEWER, BY_REST, BY_WATERMARK, Candle
from projections.watermark import bucket_end, bucket_start

REST_SOURCE = "rest"
_MS_NS = 1_000_000
CUT_CLOSES = frozenset({BY_WATERMARK})  # closes whose values a backfill re-fetches on its own
OUTAGE_CLOSES = frozenset({BY_WATERMARK, BY_NEWER, None})  # ... and in the bucket an outage began in


def rest_event_ns(timeframe: str, start: int) -> int:
    """The event time of a REST candle of the bucket opening at ``start``: 1 ns before its end (module
    docstring: wins against snapshots from during the bucket, loses against the exchange's final)."""
    return bucket_end(timeframe, start) * _MS_NS - 1


def may_be_cut(c: Candle, closes: frozenset[str | None] = CUT_CLOSES) -> bool:
    """Whether a stored candle is closed by one of ``closes`` (not the exchange's or REST's final word)
    with values from before its end: values an outage may have cut, which a REST candle would repair."""
    return c.closed and c.closed_by in closes and c.event_ns < rest_event_ns(c.timeframe, c.start)


def to_repair(c: Candle | None, *, repair: bool) -> bool:
    """Whether a stored closed candle is re-fetched: closed by the watermark with values from before its
    end, or (``repair``: the bucket an outage began in) also closed by a newer bucket or of unknown close."""
    return c is not None and may_be_cut(c, OUTAGE_CLOSES if repair else CUT_CLOSES)


def wants(c: Candle | None, *, marked: bool, repair: bool) -> bool:
    """Whether a backfill asks REST for a bucket stored as ``c``: absent, open, marked, or to repair."""
    return c is None or marked or not c.closed or to_repair(c, repair=repair)


def aligned_starts(timeframe: str, start_ms: int, end_ms: int) -> list[int]:
    """Starts of the ``timeframe`` buckets with ``start_ms <= start < end_ms``, ascending."""
    out: list[int] = []
    s = bucket_start(timeframe, start_ms)
    if s < start_ms:
        s = bucket_end(timeframe, s)
    while s < end_ms:
        out.append(s)
        s = bucket_end(timeframe, s)
    return out


def previous_start(timeframe: str, start: int) -> int:
    """The start of the bucket before the one opening at ``start``."""
    return bucket_start(timeframe, start - 1)


def missing_starts(known: Iterable[int], timeframe: str, start_ms: int, end_ms: int) -> list[int]:
    """The buckets of ``[start_ms, end_ms)`` whose start is not among ``known``, ascending."""
    have = set(known)
    return [s for s in aligned_starts(timeframe, start_ms, end_ms) if s not in have]


def holes(known: Iterable[int], timeframe: str) -> list[int]:
    """Buckets missing between the oldest and the newest of ``known`` (a stored series' inner holes)."""
    have = sorted(set(known))
    if len(have) < 2:
        return []
    return missing_starts(have, timeframe, have[0], have[-1])


def runs(starts: Iterable[int], timeframe: str) -> list[tuple[int, int, int]]:
    """Consecutive buckets grouped: ``(first start, last start, count)``, ascending."""
    out: list[tuple[int, int, int]] = []
    for s in sorted(set(starts)):
        if out and bucket_end(timeframe, out[-1][1]) == s:
            first, _, n = out[-1]
            out[-1] = (first, s, n + 1)
        else:
            out.append((s, s, 1))
    return out


class FillPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What one backfill commit does to a series (every list ascending)."""

    write: list[Candle]  # closed REST candles to append for the fold (confirmed empty ones included)
    empty: list[int]  # of those, buckets confirmed empty (no trades)
    unmark: list[int]  # gap markers to remove: the bucket is now stored closed
    mark: list[int]  # gap markers to (re)add: over, and REST could not give it
    pending: list[int]  # not over yet (or REST has it open): left alone, decided by a later backfill


def empty_candle(exchange: str, symbol: str, timeframe: str, start: int, previous_close: str) -> Candle:
    """A confirmed empty bucket as Binance sends one: flat at the previous close, no volume."""
    return Candle(
        exchange=exchange,
        symbol=symbol,
        timeframe=timeframe,
        start=start,
        open=previous_close,
        high=previous_close,
        low=previous_close,
        close=previous_close,
        volume="0",
        closed=True,
        event_ns=rest_event_ns(timeframe, start),
        source=REST_SOURCE,
        closed_by=BY_REST,
    )


def plan_fill(
    *,
    exchange: str,
    symbol: str,
    timeframe: str,
    wanted: Iterable[int],
    stored: Mapping[int, Candle],
    marked: Iterable[int],
    rest: Mapping[int, Candle],
    covered: Iterable[int],
    horizon_ms: int | None,
    omits_empty: bool,
    repair: Iterable[int] = (),
) -> FillPlan:
    """Decide the fill of the ``wanted`` buckets (see the module docstring).

    ``stored``: the series as stored now, for every bucket from the one before the first wanted bucket
    to the last wanted one (absent = no candle). ``rest``: what REST returned, by start. ``covered``: the
    buckets a successful REST answer spoke for (returned or left out); a bucket outside it could not be
    fetched. ``horizon_ms``: the newest exchange time the data shows (None: nothing is provably over).
    ``repair``: the buckets an outage began in (:func:`to_repair`). A closed bucket to repair is
    replaced by its closed REST candle; one REST did not return stays as it is, ``pending``.
    """
    want = sorted(set(wanted))
    marks = set(marked)
    cover = set(covered)
    outage = set(repair)
    fix = {s for s in want if to_repair(stored.get(s), repair=s in outage)}
    write: list[Candle] = []
    empty: list[int] = []
    unmark: list[int] = []
    mark: list[int] = []
    pending: list[int] = []
    if not want:
        return FillPlan(write=write, empty=empty, unmark=unmark, mark=mark, pending=pending)
    latest_rest = max(rest, default=None)
    want_set = set(want)
    before = previous_start(timeframe, want[0])
    prev = stored.get(before)
    prev_close: str | None = prev.close if prev is not None and prev.closed else None
    s = want[0]
    while s <= want[-1]:
        end = bucket_end(timeframe, s)
        cur = stored.get(s)
        if s not in want_set:
            prev_close = cur.close if cur is not None and cur.closed else None
            s = end
            continue
        got = rest.get(s)
        over = horizon_ms is not None and end <= horizon_ms
        if cur is not None and cur.closed and s in fix:
            if got is not None and got.closed:
                write.append(got)
                prev_close = got.close
            else:
                pending.append(s)  # REST did not give it (yet): the cut values stay, a later backfill retries
                prev_close = None
            if s in marks:
                unmark.append(s)
        elif cur is not None and cur.closed:
            if s in marks:
                unmark.append(s)
            prev_close = cur.close
        elif got is not None and got.closed:
            write.append(got)
            if s in marks:
                unmark.append(s)
            prev_close = got.close
        elif got is not None or not over:
            pending.append(s)  # REST has it open, or it may still be running
            prev_close = None
        elif s in cover and omits_empty:
            behind = (latest_rest is not None and latest_rest > s) or end + (end - s) <= (horizon_ms or 0)
            if not behind:
                pending.append(s)  # just over: the exchange may not have published it yet
                prev_close = None
            elif prev_close is not None:
                write.append(empty_candle(exchange, symbol, timeframe, s, prev_close))
                empty.append(s)
                if s in marks:
                    unmark.append(s)
            else:
                mark.append(s)  # empty, but at what price? Not invented: a gap
        else:
            mark.append(s)  # could not be fetched, or the exchange has nothing where it must have a candle
            prev_close = None
        s = end
    return FillPlan(write=write, empty=empty, unmark=unmark, mark=mark, pending=pending)
