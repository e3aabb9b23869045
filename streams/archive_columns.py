"""Raw frames as columns: entry ids, what kind of frame each is, its event time; entries built on demand.

A replay cuts frames by event time and folds them; most frames of a Binance feed are aggTrades, which the
candle fold reads only for their event time when no trade candles are configured (then a run of them moves
the partition's watermark to the run's newest time, and nothing else). :class:`Frames` carries, per entry:

* ``ms`` / ``seq``: the entry id;
* ``kind``: :data:`TRADE` for a Binance combined-stream ``aggTrade`` / ``trade`` frame whose event time
  :func:`streams.frames.binance_trade_event_time` reads (exactly the frames the candle processor's plan
  takes as time only); :data:`KLINE` for a Binance kline frame that decodes and is not final (a replay
  may find it superseded by a later snapshot of its bucket, :mod:`processors.superseded`); :data:`OTHER`
  for every other entry;
* ``event_ms``: :func:`event_ms_of` of the entry (what a replay cuts and paces by).

The archive stores these columns beside the raw frames (:mod:`streams.archive_codec`, formats 2 and 3), so a
replay reads them without parsing JSON; for stream entries and older blocks they are computed here, frame
by frame (:func:`columns`). The entries themselves (``frame``, ``recv_ns``, byte for byte) are built only
when asked for (:meth:`Frames.entries`), from the block's values or from the entries read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from streams.frames import DECODERS, BinanceKlineEvent, binance_trade_event_time, decode_frame, event_ms
from streams.log import Entry
from streams.trade_columns import TradeColumns
from tickfold.errors import FrameDecodeError

OTHER = 0  # decode it
TRADE = 1  # a Binance trade frame: its event time is all a fold without trade candles needs
KLINE = 2  # a Binance kline frame that decodes, not final (decode it, unless a later one supersedes it)

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
Index = npt.NDArray[np.intp]

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def exchange_of(stream: str) -> str | None:
    """The exchange of a raw frame stream (``frames:binance:p3`` -> ``binance``), None for any other stream."""
    parts = stream.split(":")
    if len(parts) == 3 and parts[0] == "frames" and parts[2][:1] == "p" and parts[2][1:].isdigit():
        return parts[1] if parts[1] in DECODERS else None
    return None


def event_ms_of(exchange_id: str, fields: dict[bytes, bytes]) -> int:
    """An entry's exchange event time (ms), as a replay cuts by it; 0 when it has none or can't be decoded."""
    raw = fields.get(b"frame")
    return 0 if raw is None else event_ms(exchange_id, raw)


def classify(exchange_id: str, fields: dict[bytes, bytes]) -> tuple[int, int]:
    """(kind, event ms) of one entry (module docstring). An event time beyond int64 is clamped, and such a
    trade is left to the fold (``OTHER``): the columns are int64."""
    raw = fields.get(b"frame")
    if raw is None:
        return OTHER, 0
    if exchange_id == "binance":
        if (ms := binance_trade_event_time(raw)) is not None:
            if _I64_MIN <= ms <= _I64_MAX:
                return TRADE, ms
            return OTHER, min(max(ms, _I64_MIN), _I64_MAX)
        try:
            frame = decode_frame(exchange_id, raw)
        except (FrameDecodeError, ValueError):
            return OTHER, 0  # (what event_ms gives a frame that does not decode)
        if isinstance(frame, BinanceKlineEvent):  # event_ms's time, from this decode
            ms = frame.event_time
            if not frame.kline.closed and _I64_MIN <= ms <= _I64_MAX:
                return KLINE, ms
            return OTHER, min(max(ms, _I64_MIN), _I64_MAX)
    return OTHER, min(max(event_ms(exchange_id, raw), _I64_MIN), _I64_MAX)


def columns(exchange_id: str | None, entries: Sequence[Entry], trades: TradeColumns | None = None) -> tuple[U8, I64]:
    """The kind and event-time columns of ``entries`` (all ``OTHER`` and 0 when ``exchange_id`` is None).
    ``trades``: the entries' trade columns, if made already (a Coinbase frame that has them is not decoded
    again: it is ``OTHER``, at its timestamp's millisecond, as :func:`classify` gives it)."""
    n = len(entries)
    if exchange_id is None:
        return np.zeros(n, np.uint8), np.zeros(n, np.int64)
    if trades is not None and exchange_id == "coinbase":
        has = trades.has.tolist()
        times = trades.event_ns // 1_000_000
        for r in (r for r, known in enumerate(has) if not known):
            times[r] = classify(exchange_id, entries[r][1])[1]
        return np.zeros(n, np.uint8), times
    pairs = [classify(exchange_id, fields) for _, fields in entries]
    kinds = np.fromiter((k for k, _ in pairs), np.uint8, n)
    times = np.fromiter((t for _, t in pairs), np.int64, n)
    return kinds, times


def trade_columns(exchange_id: str | None, entries: Sequence[Entry]) -> TradeColumns | None:
    """The trade columns of a Coinbase stream's entries (:mod:`streams.trade_columns`), None for any other."""
    if exchange_id != "coinbase":
        return None
    return TradeColumns.of_frames([fields.get(b"frame") for _, fields in entries])


def split_ids(entries: Sequence[Entry]) -> tuple[U64, U64]:
    ms: list[int] = []
    seq: list[int] = []
    for eid, _ in entries:
        a, _, b = eid.partition(b"-")
        ms.append(int(a))
        seq.append(int(b))
    return np.array(ms, np.uint64), np.array(seq, np.uint64)


class EntrySource(Protocol):
    """Where a :class:`Frames` builds its entries from (a decoded block, or a list of entries)."""

    def build(self, index: Index) -> list[Entry]: ...


class EntryList:
    """Entries that exist already (read from a stream)."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.entries = entries

    def build(self, index: Index) -> list[Entry]:
        got = self.entries
        return [got[i] for i in index.tolist()]


class Frames:
    """Consecutive entries of one stream (ids increasing), as columns (module docstring). ``index`` maps
    each row to its entry in ``source``."""

    __slots__ = ("event_ms", "index", "kind", "ms", "seq", "source", "trades")

    def __init__(
        self,
        ms: U64,
        seq: U64,
        kind: U8,
        event_ms: I64,
        source: EntrySource,
        index: Index,
        trades: TradeColumns | None = None,
    ) -> None:
        self.ms = ms
        self.seq = seq
        self.kind = kind
        self.event_ms = event_ms
        self.source = source
        self.index = index
        self.trades = trades  # Coinbase: the trade columns of ``source``'s entries, by entry (index), if known

    @classmethod
    def of_entries(cls, exchange_id: str | None, entries: Sequence[Entry]) -> Frames:
        """Columns computed frame by frame (entries read from a stream, or from a block without columns)."""
        ms, seq = split_ids(entries)
        trades = trade_columns(exchange_id, entries)
        kind, times = columns(exchange_id, entries, trades)
        return cls(ms, seq, kind, times, EntryList(entries), np.arange(len(entries), dtype=np.intp), trades)

    def __len__(self) -> int:
        return len(self.index)

    def take(self, rows: slice | Index) -> Frames:
        """The rows ``rows`` (a slice, or increasing row numbers)."""
        return Frames(
            self.ms[rows],
            self.seq[rows],
            self.kind[rows],
            self.event_ms[rows],
            self.source,
            self.index[rows],
            self.trades,
        )

    def entries(self, start: int = 0, stop: int | None = None) -> list[Entry]:
        """The entries of rows ``[start, stop)``, exactly as they were in the stream."""
        return self.source.build(self.index[start:stop])

    def entries_at(self, rows: Index) -> list[Entry]:
        """The entries of rows ``rows`` (increasing row numbers)."""
        return self.source.build(self.index[rows])

    def entry(self, row: int) -> Entry:
        return self.source.build(self.index[row : row + 1])[0]

    def position(self, row: int) -> tuple[int, int]:
        """The id of row ``row`` as (ms, seq)."""
        return int(self.ms[row]), int(self.seq[row])

    def count_before(self, position: tuple[int, int]) -> int:
        """How many rows have an id lower than ``position``."""
        ms, seq = np.uint64(position[0]), np.uint64(position[1])
        return int(np.count_nonzero((self.ms < ms) | ((self.ms == ms) & (self.seq < seq))))

    def count_through(self, position: tuple[int, int]) -> int:
        """How many rows have an id at or below ``position`` (rows are in id order: a prefix)."""
        ms, seq = np.uint64(position[0]), np.uint64(position[1])
        return int(np.count_nonzero((self.ms < ms) | ((self.ms == ms) & (self.seq <= seq))))
