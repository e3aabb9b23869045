"""Binance kline snapshots that a later snapshot of the same bucket makes moot, found in a batch of columns
without decoding them: the replay's fast path (:mod:`processors.memory_fold`) folds each such frame as a
watermark-only item at its event time, as it folds a run of trade frames.

Binance sends a snapshot of the open 1m kline every ~2 s, so ~30 per bucket, and a fold keeps only the
newest by event time (:func:`projections.candles.apply_snapshot`). A non-final snapshot ``i`` of bucket B
changes what the fold produces only through the state it leaves in B, and that state is read only when
B is read again: by the next snapshot ``j`` of B, by a close of B (the watermark passing B's end plus the
grace, or a final or REST snapshot), and at the end of the batch (the roll-ups, the write). So folding
``i`` as a watermark item (its event time still moves the watermark: the same other closes, in the same
order) gives the same candles, close events and dead letters when:

* ``i`` is a :data:`~streams.archive_columns.KLINE` frame (it decodes, it is not final: no close of its
  own), its symbol is listed (the fold would not dead-letter it) and its bucket can be named;
* the next frame of the batch that touches B is a ``KLINE`` snapshot ``j`` of B (so B is read next by
  ``j``, which the batch folds), with an event time at or after ``i``'s (``j`` wins over ``i``, and over
  whatever ``i`` would have lost to: last writer by event time);
* B was not closed before the batch, and the partition's watermark through ``j`` (the watermark before
  the batch and every event time of the batch up to ``j``, trade frames included) stays below B's close
  deadline: nothing closes B before ``j``, so ``i`` makes no event (a snapshot of an open bucket that is
  not final makes none) and no close reads ``i``'s values;
* no other frame of the batch before ``j`` touches B: a frame that is not a ``KLINE`` touches a bucket only
  if it decodes to a kline (final, or one the columns do not vouch for) or a REST backfill of it, and
  peeks at those shapes name the buckets; once one did, no snapshot of that bucket is dropped for the rest
  of the batch (B may be closed by then).

Everything else is folded as it comes. ``tests/test_memory_fold.py`` folds both recordings and a
generated feed of stale, repeated, final and late snapshots both ways at several batch sizes and compares
candles, close events, dead letters and watermarks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from processors.candles import CandleProcessor
from projections.watermark import bucket_end
from streams import keys
from streams.archive_columns import KLINE
from streams.log import Entry
from tickfold.errors import KeyFormatError


class _Kline(msgspec.Struct, frozen=True):
    t: int  # start
    s: str  # symbol (the fold's: the kline's own)
    i: str  # interval
    x: bool  # final


class _Data(msgspec.Struct, frozen=True):
    E: int  # the event time, as Binance names it
    k: _Kline


class _Frame(msgspec.Struct, frozen=True):
    stream: str
    data: _Data


class _RestStart(msgspec.Struct, frozen=True):
    start: int


class _Rest(msgspec.Struct, frozen=True):
    tickfold: str
    symbol: str
    timeframe: str
    candles: list[_RestStart]


_COMBINED = msgspec.json.Decoder(_Frame)  # a combined-stream kline (what Binance sends, the KLINE frames)
_BARE = msgspec.json.Decoder(_Data)  # a bare /ws/ kline event
_REST = msgspec.json.Decoder(_Rest)  # a REST backfill of a series (streams.frames.RestCandlesFrame)


def _touched(p: CandleProcessor, raw: bytes) -> list[tuple[str, int]]:
    """The buckets a frame that is not a ``KLINE`` may touch: a frame only touches candles when it decodes
    to a kline (either form) or a REST backfill, and then these peeks (subsets of those decoders' fields)
    read it too. A frame none of them reads touches nothing; a bucket the fold could not name (a symbol
    not listed: a dead letter) is left out."""
    out: list[tuple[str, int]] = []
    for peek in (_COMBINED, _BARE):
        try:
            got = peek.decode(raw)
            k = got.data.k if isinstance(got, _Frame) else got.k
            out.append((keys.candles(p.exchange_id, p.symbols.canonical(k.s), k.i), k.t))
        except (msgspec.DecodeError, KeyFormatError, ValueError):
            pass
    try:
        rest = _REST.decode(raw)
        key = keys.candles(p.exchange_id, p.symbols.canonical(rest.symbol), rest.timeframe)
        out.extend((key, c.start) for c in rest.candles)
    except (msgspec.DecodeError, KeyFormatError, ValueError):
        pass
    return out


def superseded(
    p: CandleProcessor,
    others: Sequence[Entry],
    kinds: Sequence[int],
    marks_ms: Sequence[int],
    closed: Callable[[str, int], bool],
) -> set[int]:
    """The indexes in ``others`` (the batch's frames that are not trade frames, in order; ``kinds`` theirs)
    of the snapshots a later one supersedes (module docstring). ``marks_ms[n]``: an upper bound of the
    partition's watermark (ms) once ``others[n]`` is folded; ``closed(key, start)``: whether the bucket was
    closed before the batch."""
    dropped: set[int] = set()
    candidate: dict[tuple[str, int], tuple[int, int]] = {}  # bucket -> (index, event ms) of its last KLINE
    poisoned: set[tuple[str, int]] = set()  # buckets a frame other than a KLINE touched in this batch
    grace = p.close_grace_ms
    for n, (_, fields) in enumerate(others):
        raw = fields.get(b"frame")
        if raw is None:
            continue  # a dead letter: touches nothing
        if kinds[n] != KLINE:
            for bucket in _touched(p, raw):  # a final, a REST backfill, ...: the bucket may close here
                candidate.pop(bucket, None)
                poisoned.add(bucket)
            continue
        try:
            peek = _COMBINED.decode(raw)
            k = peek.data.k
            key = keys.candles(p.exchange_id, p.symbols.canonical(k.s), k.i)
            deadline = bucket_end(k.i, k.t) + grace
        except (msgspec.DecodeError, KeyFormatError, ValueError):
            # a bare event, a symbol not listed (the fold dead-letters it), a bucket it can't place: never
            # dropped, and what it touches is touched
            for bucket in _touched(p, raw):
                candidate.pop(bucket, None)
                poisoned.add(bucket)
            continue
        bucket = (key, k.t)
        previous = candidate.pop(bucket, None)
        if bucket in poisoned:
            continue
        event = peek.data.E
        if previous is not None:
            i, event_i = previous
            if event >= event_i and marks_ms[n] < deadline and not closed(key, k.t):
                dropped.add(i)
        candidate[bucket] = (n, event)
    return dropped
