"""The archive's block format: consecutive stream entries, encoded column-wise, compressed with zstd.

A block holds entries of one stream in id order. Format 5, written now, is a msgpack array of three parts,
each a zstd frame (level 3) or empty:

* ``head``: msgpack of the block's columns and of the values of its entries that are not kept *apart*
  (below):

  * ``ms`` / ``seq``: the entry ids, as little-endian uint64 arrays (``ms`` as deltas from the previous
    entry's, modulo 2**64);
  * ``schemas``: the distinct lists of field names, in order of first use; ``schema_of``: each entry's
    (uint32 array);
  * ``kinds`` / ``event_ms``: for raw frame streams, the decoded columns of
    :mod:`streams.archive_columns` (uint8; int64 deltas), so a replay needs no JSON for what they tell;
    empty for other streams;
  * ``lengths``: the length of every value (uint32 array), in the order the values are stored: the
    entries that are not apart first, then the apart ones; within each, field by field per schema (all
    ``frame`` values of schema 0, then all its ``recv_ns`` values, ...);
  * ``values``: the first part's values, concatenated;
  * ``apart``: a byte per entry, 1 for an entry kept apart that is not a ``TRADE`` (a Coinbase frame
    that has trade columns); empty when there is none.

* ``apart``: the values of the entries kept apart, concatenated (empty when there are none). Apart are
  the ``TRADE`` entries (Binance trade frames) and the entries the head marks: which ones is known from
  the head alone, so a damaged third part leaves every entry readable.

* ``trade_columns`` (a Coinbase raw frame stream's blocks only, else empty): the entries'
  :class:`~streams.trade_columns.TradeColumns` (:class:`_Trades4`), so a replay folds their trades without
  JSON: the product table, then per entry ``has``, its trade count and event time, and per trade the
  product, ``trade_id`` and ``price`` as deltas from the same product's previous trade, ``time_ms`` from
  the previous trade's, ``size``, the exponents and ``taker_buy``, as ints of the narrowest width that
  holds the column. The zstd frame has a checksum: damage is found, and costs only the columns
  (:func:`decode_frames`). On a synthetic Coinbase day in 5,000-entry blocks they take 10.5 bytes a frame
  (2.1 trades) beside the 44.4 of the rest, and decode in 120-160 ns a frame (~13 us from JSON).

Grouping values by field puts similar bytes together: on the recorded sessions, blocks of 1,000 entries
take 34-78 bytes per entry against 229-618 raw (README, *Archive*). Keeping apart the values a replay
does not read lets it leave them compressed: a Binance replay without trade candles reads the trade
frames only for their event time (the ``event_ms`` column), and they are ~94 % of the frames and of the
bytes; a Coinbase replay folds the frames that have trade columns from the columns alone, so their JSON
(~400 bytes a frame) is not decompressed either (format 4 kept it in the head: on the synthetic day
``decode_frames`` took ~215 ns a frame, ~80 in format 5, for the same bytes). Decoding gives back every
field name and value byte for byte, in the original order.

Formats 1 to 4 are still read (their apart entries: the ``TRADE`` ones). Format 4 is format 5 without
the head's ``apart`` column (only ``TRADE`` entries apart); format 3 is format 4 without its third part
(no trade columns); format 2 is one zstd frame of the same columns with every value in one column-wise
run (no split); format 1 has msgpack integer lists and no decoded columns (computed frame by frame when a
replay asks).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import accumulate

import msgspec
import numpy as np
import numpy.typing as npt
import zstandard

from streams.archive_columns import (
    TRADE,
    U64,
    EntryList,
    Frames,
    Index,
    columns,
    exchange_of,
    split_ids,
    trade_columns,
)
from streams.log import Entry
from streams.trade_columns import TradeColumns

FORMAT = 5
LEVEL = 3


class _Block1(msgspec.Struct, array_like=True, frozen=True, tag=1):
    ids: list[int]  # ms delta, seq, ms delta, seq, ...
    schemas: list[list[bytes]]
    schema_of: list[int]
    lengths: list[int]
    values: bytes


class _Block2(msgspec.Struct, array_like=True, frozen=True, tag=2):
    ms: bytes  # uint64 deltas
    seq: bytes  # uint64
    schemas: list[list[bytes]]
    schema_of: bytes  # uint32
    lengths: bytes  # uint32
    values: bytes
    kinds: bytes = b""  # uint8; empty: no decoded columns
    event_ms: bytes = b""  # int64 deltas (modulo 2**64)


class _Head3(msgspec.Struct, array_like=True, frozen=True):
    ms: bytes  # uint64 deltas
    seq: bytes  # uint64
    schemas: list[list[bytes]]
    schema_of: bytes  # uint32
    kinds: bytes  # uint8; empty: no decoded columns (every entry in the first part)
    event_ms: bytes  # int64 deltas (modulo 2**64)
    lengths: bytes  # uint32: the first part's values', then the trades'
    values: bytes  # the first part's values


class _Block3(msgspec.Struct, array_like=True, frozen=True, tag=3):
    head: bytes  # zstd(msgpack(_Head3))
    trades: bytes  # zstd(the TRADE entries' values); b"" when there are none


class _Block4(msgspec.Struct, array_like=True, frozen=True, tag=4):
    head: bytes  # zstd(msgpack(_Head3))
    trades: bytes  # zstd(the TRADE entries' values); b"" when there are none
    trade_columns: bytes  # zstd with checksum (msgpack(_Trades4)); b"": none (not a Coinbase raw frame stream)


class _Head5(_Head3, frozen=True):
    apart: bytes  # uint8 per entry, 1: apart though not a TRADE (has trade columns); b"": no such entry


class _Block5(msgspec.Struct, array_like=True, frozen=True, tag=5):
    head: bytes  # zstd(msgpack(_Head5))
    apart: bytes  # zstd(the apart entries' values: TRADE, or marked in the head's apart); b"" when none
    trade_columns: bytes  # as format 4's


class _Trades4(msgspec.Struct, array_like=True, frozen=True):
    """A Coinbase block's :class:`~streams.trade_columns.TradeColumns`: the product table, and the columns one
    after another, each a byte giving its width (1, 2, 4 or 8) and its values as unsigned little-endian ints
    of that width, the narrowest that holds them all. Zigzag maps int64 to them (0, -1, 1, -2 -> 0, 1, 2, 3);
    deltas are modulo 2**64::

        has         rows       0 or 1
        counts      rows       trades of the row
        event_ns    has rows   zigzag delta from the previous row that has columns'
          jump      0 or 1     the first one's value, zigzagged (its delta above is 0)
        product     trades     index into products
        trade_id    trades     zigzag delta from the previous trade of the same product (in trade order)
          jumps     products   per product (index order): its first trade_id less the previous product's last
        price       trades     as trade_id
          jumps     products
        price_exp   trades     zigzag
        size        trades
        size_exp    trades     zigzag
        time_ms     trades     zigzag delta from the previous trade's
          jump      0 or 1
        taker_buy   trades     0 or 1
    """

    products: list[str]
    columns: bytes


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Block1 | _Block2)
_OUTER = msgspec.msgpack.Decoder(_Block3 | _Block4 | _Block5)
_HEAD = msgspec.msgpack.Decoder(_Head3)
_HEAD5 = msgspec.msgpack.Decoder(_Head5)
_TRADES = msgspec.msgpack.Decoder(_Trades4)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # a zstd frame's first bytes: formats 1 and 2 are one frame
_COMPRESSOR = zstandard.ZstdCompressor(level=LEVEL)
_CHECKED = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)  # a flipped bit fails, not a wrong price
_DECOMPRESSOR = zstandard.ZstdDecompressor()
_LE = {"u8": "<u8", "i8": "<i8", "u4": "<u4"}
_log = logging.getLogger(__name__)


def raw_size(entries: Sequence[Entry]) -> int:
    """Bytes of the entries' field names and values (what Redis holds, less its own overhead)."""
    return sum(len(k) + len(v) for _, fields in entries for k, v in fields.items())


CURRENT_PREFIX = _ENCODER.encode(_Block5(head=b"", apart=b"", trade_columns=b""))[:2]  # msgpack: array of 4, tag 5


def is_current(payload: bytes) -> bool:
    """Whether a block is of the format :func:`encode_block` writes (its first bytes: ``CURRENT_PREFIX``)."""
    return payload[:2] == CURRENT_PREFIX


def encode_block(entries: Sequence[Entry], *, stream: str | None = None) -> bytes:
    """The compressed block of ``entries`` (ids increasing, as in their stream), format 5. With the ``stream``
    key of a raw frame stream (``frames:binance:p3``) the block carries the decoded columns too, and the
    trade frames' values apart; of a Coinbase one, the entries' trade columns, and the values of the
    entries that have them apart."""
    exchange_id = None if stream is None else exchange_of(stream)
    found = trade_columns(exchange_id, entries)
    head, apart = _head_and_apart(entries, exchange_id, found, 5)
    return _ENCODER.encode(_Block5(head=head, apart=apart, trade_columns=_packed(found)))


def encode_block_v4(entries: Sequence[Entry], *, stream: str | None = None) -> bytes:
    """A format 4 block (only the trade frames apart), as archives written before format 5 hold: for tests."""
    exchange_id = None if stream is None else exchange_of(stream)
    found = trade_columns(exchange_id, entries)
    head, apart = _head_and_apart(entries, exchange_id, found, 4)
    return _ENCODER.encode(_Block4(head=head, trades=apart, trade_columns=_packed(found)))


def encode_block_v3(entries: Sequence[Entry], *, stream: str | None = None) -> bytes:
    """A format 3 block (no trade columns), as archives written before format 4 hold: for tests."""
    head, apart = _head_and_apart(entries, None if stream is None else exchange_of(stream), None, 3)
    return _ENCODER.encode(_Block3(head=head, trades=apart))


def _packed(found: TradeColumns | None) -> bytes:
    return b"" if found is None else _CHECKED.compress(_ENCODER.encode(_pack_trades(found)))


def _head_and_apart(
    entries: Sequence[Entry], exchange_id: str | None, trades: TradeColumns | None, version: int
) -> tuple[bytes, bytes]:
    """The compressed head and apart values of a block of format ``version`` (3 to 5). Apart are the trade
    frames, and in format 5 the entries that have trade columns too (``trades``: the entries' trade
    columns, if made already: their frames are not decoded again for the kind and event time columns)."""
    ms, seq = split_ids(entries)
    kinds, event_ms = b"", b""
    apart_rows = np.zeros(len(entries), np.bool_)
    if exchange_id is not None:
        k, t = columns(exchange_id, entries, trades)
        kinds, event_ms = k.tobytes(), _deltas(t.view(np.uint64)).tobytes()
        apart_rows = k == TRADE
    marked = np.zeros(len(entries), np.bool_)  # apart, though not TRADE (format 5)
    if version >= 5 and trades is not None:
        marked = trades.has & ~apart_rows
        apart_rows = apart_rows | marked
    schemas: dict[tuple[bytes, ...], int] = {}
    schema_of: list[int] = []
    runs: dict[tuple[bool, int, int], list[bytes]] = {}  # (apart?, schema, field) -> values
    for (_, fields), apart in zip(entries, apart_rows.tolist(), strict=True):
        s = schemas.setdefault(tuple(fields), len(schemas))
        schema_of.append(s)
        for j, value in enumerate(fields.values()):
            runs.setdefault((apart, s, j), []).append(value)
    order = sorted(runs)  # the first part's runs (False) before the apart ones
    head = _Head3(
        ms=_deltas(ms).tobytes(),
        seq=seq.astype(_LE["u8"]).tobytes(),
        schemas=[list(names) for names in schemas],
        schema_of=np.array(schema_of, _LE["u4"]).tobytes(),
        kinds=kinds,
        event_ms=event_ms,
        lengths=np.array([len(v) for key in order for v in runs[key]], _LE["u4"]).tobytes(),
        values=b"".join(v for key in order if not key[0] for v in runs[key]),
    )
    if version >= 5:
        head = _Head5(**msgspec.structs.asdict(head), apart=marked.astype(np.uint8).tobytes() if marked.any() else b"")
    apart_values = b"".join(v for key in order if key[0] for v in runs[key])
    return _COMPRESSOR.compress(_ENCODER.encode(head)), _COMPRESSOR.compress(apart_values) if apart_values else b""


def _apart_rows(head: _Head3) -> npt.NDArray[np.bool_] | None:
    """The rows whose values are in the block's second part (None: none): the ``TRADE`` rows, and those a
    format 5 head marks ``apart``."""
    n = len(head.ms) // 8
    rows = np.zeros(n, np.bool_)
    if len(head.kinds) == n:
        rows |= np.frombuffer(head.kinds, np.uint8) == TRADE
    if isinstance(head, _Head5) and head.apart:
        if len(head.apart) != n:
            raise ValueError(f"archive block: an apart column of {len(head.apart)} bytes for {n} entries")
        rows |= np.frombuffer(head.apart, np.uint8) != 0
    return rows if rows.any() else None


def encode_block_v2(entries: Sequence[Entry], *, stream: str | None = None) -> bytes:
    """A format 2 block, as archives written before format 3 hold: for tests."""
    schemas: dict[tuple[bytes, ...], int] = {}
    schema_of: list[int] = []
    columns_of: dict[tuple[int, int], list[bytes]] = {}
    for _, fields in entries:
        s = schemas.setdefault(tuple(fields), len(schemas))
        schema_of.append(s)
        for j, value in enumerate(fields.values()):
            columns_of.setdefault((s, j), []).append(value)
    order = sorted(columns_of)
    ms, seq = split_ids(entries)
    kinds, event_ms = b"", b""
    exchange_id = None if stream is None else exchange_of(stream)
    if exchange_id is not None:
        k, t = columns(exchange_id, entries)
        kinds, event_ms = k.tobytes(), _deltas(t.view(np.uint64)).tobytes()
    block = _Block2(
        ms=_deltas(ms).tobytes(),
        seq=seq.astype(_LE["u8"]).tobytes(),
        schemas=[list(names) for names in schemas],
        schema_of=np.array(schema_of, _LE["u4"]).tobytes(),
        lengths=np.array([len(v) for key in order for v in columns_of[key]], _LE["u4"]).tobytes(),
        values=b"".join(v for key in order for v in columns_of[key]),
        kinds=kinds,
        event_ms=event_ms,
    )
    return _COMPRESSOR.compress(_ENCODER.encode(block))


def _deltas(values: U64) -> U64:
    """uint64 differences from the previous value (the first from 0), little-endian; wraps modulo 2**64."""
    v = values.astype(np.uint64)
    out = np.empty_like(v)
    if len(v):
        out[0] = v[0]
        np.subtract(v[1:], v[:-1], out=out[1:])
    return out.astype(_LE["u8"])


def _undelta(raw: bytes) -> U64:
    return np.cumsum(np.frombuffer(raw, _LE["u8"]), dtype=np.uint64)


# ------------------------------------------------------------------------- format 4: the trade columns

_WIDTHS = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}
_ONE = np.uint64(1)
I64 = npt.NDArray[np.int64]


def _narrow(values: U64) -> bytes:
    """``values`` in the narrowest unsigned width that holds them, after a byte giving the width."""
    top = int(values.max()) if len(values) else 0
    width = next(w for w in (1, 2, 4, 8) if top < 1 << (8 * w))
    return bytes([width]) + values.astype(_WIDTHS[width]).tobytes()


def _zigzag(values: U64) -> U64:
    """Signed (int64 bits) to unsigned, small magnitudes to small values: 0, -1, 1, -2 -> 0, 1, 2, 3."""
    return (values << _ONE) ^ (values.view(np.int64) >> 63).view(np.uint64)


def _unzigzag(values: U64) -> U64:
    return (values >> _ONE) ^ (-(values & _ONE).view(np.int64)).view(np.uint64)


class _Reader:
    """The columns of a :class:`_Trades4`, one after another."""

    def __init__(self, raw: bytes) -> None:
        self.raw, self.at = raw, 0

    def take(self, n: int, what: str) -> U64:
        width = self.raw[self.at] if self.at < len(self.raw) else 0
        end = self.at + 1 + width * n
        if width not in _WIDTHS or end > len(self.raw):
            raise ValueError(f"{what}: {n} values of width {width} at byte {self.at} of {len(self.raw)}")
        out = np.frombuffer(self.raw, _WIDTHS[width], n, self.at + 1).astype(np.uint64)
        self.at = end
        return out

    def flags(self, n: int, what: str) -> npt.NDArray[np.bool_]:
        values = self.take(n, what)
        if int(values.max(initial=0)) > 1:
            raise ValueError(f"{what}: not 0 or 1")
        return values.astype(np.bool_)

    def exponents(self, n: int, what: str) -> npt.NDArray[np.int8]:
        values = _unzigzag(self.take(n, what)).view(np.int64)
        if len(values) and not (-128 <= int(values.min()) and int(values.max()) <= 127):
            raise ValueError(f"{what}: beyond int8")
        return values.astype(np.int8)

    def deltas(self, n: int, order: Index | None, starts: Index, what: str) -> I64:
        """The values of :func:`_deltas_by` (``n`` of them; ``order``, ``starts``: as given to it)."""
        d = _unzigzag(self.take(n, what))
        jumps = _unzigzag(self.take(len(starts), f"{what} jumps"))
        if order is not None:
            d = d[order]
        d[starts] = jumps
        s = np.cumsum(d, dtype=np.uint64)
        if order is not None:
            s[order] = s.copy()
        return s.view(np.int64)


def _deltas_by(values: I64, order: Index | None, starts: Index) -> bytes:
    """``values`` as zigzagged deltas from the previous value in ``order`` (None: as they are), in the
    values' own order; then the deltas at ``starts`` (positions in ``order``), which are 0 in the first."""
    v = values.view(np.uint64)
    s = v if order is None else v[order]
    d = np.empty_like(s)
    d[:1] = s[:1]
    np.subtract(s[1:], s[:-1], out=d[1:])
    jumps = d[starts]
    d[starts] = 0
    z = _zigzag(d)
    if order is not None:
        z[order] = z.copy()
    return _narrow(z) + _narrow(_zigzag(jumps))


def _by_product(product: npt.NDArray[np.int32], products: int) -> tuple[Index, Index]:
    """The trades in product order (stable), and where each product's run starts in it. A stable sort of
    uint8 (up to 256 products) is a radix sort: 15 times as fast as int32's."""
    keys = product.astype(np.uint8 if products <= 256 else np.uint16 if products <= 65536 else np.int32)
    order = np.argsort(keys, kind="stable")
    ordered = product[order]
    if not len(ordered):
        return order, np.zeros(0, np.intp)
    return order, np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))


def _one_group(n: int) -> Index:
    """The group starts of ``n`` values in one group."""
    return np.zeros(min(n, 1), np.intp)


def _pack_trades(tc: TradeColumns) -> _Trades4:
    order, starts = _by_product(tc.product, len(tc.products))
    events = tc.event_ns[tc.has]
    parts = [
        _narrow(tc.has.astype(np.uint64)),
        _narrow(np.diff(tc.offsets).view(np.uint64)),
        _deltas_by(events, None, _one_group(len(events))),
        _narrow(tc.product.astype(np.uint64)),
        _deltas_by(tc.trade_id, order, starts),
        _deltas_by(tc.price, order, starts),
        _narrow(_zigzag(tc.price_exp.astype(np.int64).view(np.uint64))),
        _narrow(tc.size.view(np.uint64)),
        _narrow(_zigzag(tc.size_exp.astype(np.int64).view(np.uint64))),
        _deltas_by(tc.time_ms, None, _one_group(len(tc.time_ms))),
        _narrow(tc.taker_buy.astype(np.uint64)),
    ]
    return _Trades4(products=list(tc.products), columns=b"".join(parts))


def _unpack_trades(raw: bytes, rows: int) -> TradeColumns:
    """The trade columns of a format 4 block of ``rows`` entries; ValueError (naming the column) or a zstd
    or msgpack error when they are not whole."""
    t = _TRADES.decode(_DECOMPRESSOR.decompress(raw))
    r = _Reader(t.columns)
    has = r.flags(rows, "has")
    counts = r.take(rows, "counts")
    if int(counts.max(initial=0)) >= 1 << 32 or counts[~has].any():
        raise ValueError("counts: trades in a row without columns, or 2**32 in one")
    offsets = np.zeros(rows + 1, np.int64)
    np.cumsum(counts.view(np.int64), out=offsets[1:])
    m, k = int(offsets[-1]), int(has.sum())
    event_ns = np.zeros(rows, np.int64)
    event_ns[has] = r.deltas(k, None, _one_group(k), "event_ns")
    wide_product = r.take(m, "product")
    if int(wide_product.max(initial=0)) >= max(len(t.products), 1):
        raise ValueError(f"product: an index past the {len(t.products)} products")
    product = wide_product.astype(np.int32)
    order, starts = _by_product(product, len(t.products))
    trade_id = r.deltas(m, order, starts, "trade_id")
    price = r.deltas(m, order, starts, "price")
    price_exp = r.exponents(m, "price_exp")
    size = r.take(m, "size").view(np.int64)
    size_exp = r.exponents(m, "size_exp")
    time_ms = r.deltas(m, None, _one_group(m), "time_ms")
    taker_buy = r.flags(m, "taker_buy")
    if r.at != len(t.columns):
        raise ValueError(f"columns: {len(t.columns) - r.at} bytes past the last one")
    return TradeColumns(
        t.products, has, event_ns, offsets, product, trade_id, price, price_exp, size, size_exp, time_ms, taker_buy
    )


_Block = _Block1 | _Block2 | tuple[_Block3 | _Block4 | _Block5, _Head3]


def _decode(payload: bytes) -> _Block:
    """A block of any format; formats 3 to 5 as their outer array and decoded head (:class:`_Head5` for
    format 5; the rest still compressed)."""
    try:
        if payload[:4] == _ZSTD_MAGIC:
            block: _Block1 | _Block2 = _DECODER.decode(_DECOMPRESSOR.decompress(payload))
            return block
        outer = _OUTER.decode(payload)
        head = (_HEAD5 if isinstance(outer, _Block5) else _HEAD).decode(_DECOMPRESSOR.decompress(outer.head))
        return outer, head
    except (msgspec.ValidationError, msgspec.DecodeError, zstandard.ZstdError) as exc:
        raise ValueError(f"archive block of an unknown format (this version reads 1 to 5): {exc}") from None


def decode_block(payload: bytes) -> list[Entry]:
    """The entries of a block, exactly as they were encoded."""
    block = _decode(payload)
    if isinstance(block, _Block1):
        ids = [f"{ms}-{seq}".encode() for ms, seq in zip(accumulate(block.ids[::2]), block.ids[1::2], strict=True)]
        return _entries(ids, block.schemas, block.schema_of, block.lengths, block.values)
    return _block_entries(block).build(None)


def decode_frames(payload: bytes, stream: str) -> Frames:
    """A block as :class:`~streams.archive_columns.Frames` of ``stream``: its decoded columns as stored,
    or (a block without them) computed frame by frame. The entries are built when asked for, and the apart
    values of a block of format 3 or later (trade frames; format 5: also the frames that have trade
    columns) decompressed only when an apart row is.

    ``trades`` are the trade columns a format 4 or 5 block of a Coinbase stream stores, None for any other
    block: a block of an earlier format has none, and they are not computed here (JSON, ~13 us a frame,
    about 30 times this decode; the replay folds such a block's raw frames). A block whose trade columns
    are damaged gives None too, with a warning: its entries and other columns are whole."""
    block = _decode(payload)
    exchange_id = exchange_of(stream)
    if isinstance(block, _Block1):
        return _computed(exchange_id, decode_block(payload))
    kinds_raw, times_raw = (
        (block[1].kinds, block[1].event_ms) if isinstance(block, tuple) else (block.kinds, block.event_ms)
    )
    source = _block_entries(block)
    n = len(source.ms)
    if not (len(kinds_raw) == n and len(times_raw) == 8 * n):
        return _computed(exchange_id, source.build(None))
    kinds = np.frombuffer(kinds_raw, np.uint8)
    times = _undelta(times_raw).view(np.int64)
    trades = None
    if isinstance(block, tuple) and isinstance(block[0], _Block4 | _Block5) and block[0].trade_columns:
        try:
            trades = _unpack_trades(block[0].trade_columns, n)
        except (ValueError, msgspec.ValidationError, msgspec.DecodeError, zstandard.ZstdError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            _log.warning("archive block of %s at %d-%d: trade columns unreadable (%s)", stream, *_first(source), why)
    return Frames(source.ms, source.seq, kinds, times, source, np.arange(n, dtype=np.intp), trades)


def _first(source: BlockEntries) -> tuple[int, int]:
    return (int(source.ms[0]), int(source.seq[0])) if len(source.ms) else (0, 0)


def _computed(exchange_id: str | None, entries: list[Entry]) -> Frames:
    """Frames of a block without stored columns: kinds and event times computed frame by frame; no trade
    columns (:func:`decode_frames`)."""
    ms, seq = split_ids(entries)
    kinds, times = columns(exchange_id, entries)
    return Frames(ms, seq, kinds, times, EntryList(entries), np.arange(len(entries), dtype=np.intp))


def _block_entries(block: _Block2 | tuple[_Block3 | _Block4 | _Block5, _Head3]) -> BlockEntries:
    if isinstance(block, _Block2):
        return BlockEntries(block.ms, block.seq, block.schemas, block.schema_of, block.lengths, block.values)
    outer, head = block
    apart, held = _apart_rows(head), outer.apart if isinstance(outer, _Block5) else outer.trades
    if held and apart is None:
        raise ValueError("archive block: apart values, and no apart row")
    return BlockEntries(
        head.ms, head.seq, head.schemas, head.schema_of, head.lengths, head.values, apart=apart, held=held
    )


class BlockEntries:
    """The entries of a block of format 2 or later, built on demand (:class:`~streams.archive_columns.EntrySource`).

    The values are stored by *group*, then field: a group is a schema (format 2), or a schema within the
    entries that are not apart, then within the apart ones (formats 3 to 5: ``apart`` marks their rows:
    the trade frames, and in format 5 the frames that have trade columns too). An entry's value of field
    ``j`` is value number ``first + j * stride``, where ``first`` is the group's base plus the entry's rank
    in its group and ``stride`` the group's size. The apart values (``held``, compressed) follow the
    others' and are decompressed the first time an apart row is built (:attr:`held_back` until then)."""

    def __init__(
        self,
        ms: bytes,
        seq: bytes,
        schemas: list[list[bytes]],
        schema_of: bytes,
        lengths: bytes,
        values: bytes,
        *,
        apart: npt.NDArray[np.bool_] | None = None,
        held: bytes = b"",
    ) -> None:
        self.ms = _undelta(ms)
        self.seq = np.frombuffer(seq, _LE["u8"]).astype(np.uint64)
        self.schemas = schemas
        self.values = values
        self._held = held  # compressed until an apart row is built
        self.apart = apart
        sizes = np.frombuffer(lengths, _LE["u4"]).astype(np.int64)
        self.ends = np.cumsum(sizes)
        self.starts = self.ends - sizes
        n = len(self.ms)
        width = len(schemas)
        if (width <= 1 and apart is None) or not n:
            self.schema_of = np.zeros(n, np.intp)
            self.first = np.arange(n, dtype=np.intp)  # value index of each entry's first field
            self.stride = np.full(n, n, np.intp)  # and the distance between its fields
            return
        self.schema_of = np.frombuffer(schema_of, _LE["u4"]).astype(np.intp)
        group_of = self.schema_of if apart is None else self.schema_of + width * apart
        groups = width if apart is None else 2 * width
        counts = np.bincount(group_of, minlength=groups)
        widths = np.array([len(names) for names in schemas] * (groups // width), np.intp)
        bases = np.concatenate(([0], np.cumsum(counts * widths)[:-1])).astype(np.intp)
        if groups == 2 and apart is not None:  # one schema, trades apart: a row's rank within its part
            ones = np.cumsum(apart, dtype=np.intp)
            rank = np.where(apart, ones - 1, np.arange(n, dtype=np.intp) - ones)
        else:
            order = np.argsort(group_of, kind="stable")
            group_starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.intp)
            rank = np.empty(n, np.intp)
            rank[order] = np.arange(n, dtype=np.intp) - group_starts[group_of[order]]
        self.first = bases[group_of] + rank
        self.stride = counts[group_of].astype(np.intp)

    @property
    def held_back(self) -> bool:
        """Whether the apart values are still compressed (no apart row built yet, and there are some)."""
        return bool(self._held)

    def _values_for(self, rows: Index) -> bytes:
        """The values ``rows`` need: the first part's, or (an apart row among them) all of them."""
        if self._held and self.apart is not None and self.apart[rows].any():
            self.values += _DECOMPRESSOR.decompress(self._held)
            self._held = b""
        return self.values

    def build(self, index: Index | None) -> list[Entry]:
        rows = np.arange(len(self.ms), dtype=np.intp) if index is None else index
        ids = [f"{a}-{b}".encode() for a, b in zip(self.ms[rows].tolist(), self.seq[rows].tolist(), strict=True)]
        values, starts, ends = self._values_for(rows), self.starts, self.ends
        if len(self.schemas) == 1:
            names = self.schemas[0]
            if not names:
                return [(eid, {}) for eid in ids]
            first, stride = self.first[rows], self.stride[rows]
            cuts = [
                [values[a:b] for a, b in zip(starts[at].tolist(), ends[at].tolist(), strict=True)]
                for at in (first + j * stride for j in range(len(names)))
            ]
            if len(names) == 2:  # frame + recv_ns: a literal is twice as fast as dict(zip(...))
                k0, k1 = names
                return [(eid, {k0: a, k1: b}) for eid, a, b in zip(ids, cuts[0], cuts[1], strict=True)]
            return [(eid, dict(zip(names, row, strict=True))) for eid, *row in zip(ids, *cuts, strict=True)]
        out: list[Entry] = []
        for eid, s, first, stride in zip(
            ids, self.schema_of[rows].tolist(), self.first[rows].tolist(), self.stride[rows].tolist(), strict=True
        ):
            names = self.schemas[s]
            at = [first + j * stride for j in range(len(names))]
            out.append((eid, {k: values[int(starts[i]) : int(ends[i])] for k, i in zip(names, at, strict=True)}))
        return out


def _entries(
    ids: list[bytes], schemas: list[list[bytes]], schema_of: list[int], lengths: list[int], values: bytes
) -> list[Entry]:
    """Format 1: the entries from their ids and the values column by column."""
    ends = list(accumulate(lengths))
    starts = [0, *ends[:-1]] if ends else []
    cut = [values[a:b] for a, b in zip(starts, ends, strict=True)]
    if len(schemas) == 1:  # the usual case: every entry has the same fields
        return list(zip(ids, _dicts(schemas[0], cut, len(ids)), strict=True))
    members: list[list[int]] = [[] for _ in schemas]  # entry indexes of each schema
    for i, s in enumerate(schema_of):
        members[s].append(i)
    fields: list[dict[bytes, bytes]] = [{} for _ in ids]
    at = 0
    for names, rows in zip(schemas, members, strict=True):
        size = len(names) * len(rows)
        for i, d in zip(rows, _dicts(names, cut[at : at + size], len(rows)), strict=True):
            fields[i] = d
        at += size
    return list(zip(ids, fields, strict=True))


def encode_block_v1(entries: Sequence[Entry]) -> bytes:
    """A format 1 block (no decoded columns), as archives written before format 2 hold: for tests."""
    ids: list[int] = []
    schemas: dict[tuple[bytes, ...], int] = {}
    schema_of: list[int] = []
    columns_of: dict[tuple[int, int], list[bytes]] = {}
    previous_ms = 0
    for entry_id, fields in entries:
        a, _, b = entry_id.partition(b"-")
        ms = int(a)
        ids += (ms - previous_ms, int(b))
        previous_ms = ms
        s = schemas.setdefault(tuple(fields), len(schemas))
        schema_of.append(s)
        for j, value in enumerate(fields.values()):
            columns_of.setdefault((s, j), []).append(value)
    order = sorted(columns_of)
    block = _Block1(
        ids=ids,
        schemas=[list(names) for names in schemas],
        schema_of=schema_of,
        lengths=[len(v) for key in order for v in columns_of[key]],
        values=b"".join(v for key in order for v in columns_of[key]),
    )
    return _COMPRESSOR.compress(_ENCODER.encode(block))


def _dicts(names: list[bytes], values: list[bytes], n: int) -> list[dict[bytes, bytes]]:
    """The fields of the ``n`` entries of one schema, from its values column by column."""
    if not names:
        return [{} for _ in range(n)]
    columns = [values[j * n : (j + 1) * n] for j in range(len(names))]
    if len(names) == 2:  # frame + recv_ns: a literal is twice as fast as dict(zip(...))
        k0, k1 = names
        return [{k0: a, k1: b} for a, b in zip(columns[0], columns[1], strict=True)]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
