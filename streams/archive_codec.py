"""The archive's block format: consecutive stream entries, encoded column-wise, compressed with zstd.

A block holds entries of one stream in id order. Encoded (msgpack, then zstd level 3), format 2:

* ``ms`` / ``seq``: the entry ids, as little-endian uint64 arrays (``ms`` as deltas from the previous
  entry's, modulo 2**64);
* ``schemas``: the distinct lists of field names, in order of first use; ``schema_of``: each entry's
  (uint32 array);
* ``lengths`` / ``values``: the field values column by column (all ``frame`` values of schema 0, then all
  its ``recv_ns`` values, ...), concatenated, with their lengths (uint32 array);
* ``kinds`` / ``event_ms``: for raw frame streams, the decoded columns of :mod:`streams.archive_columns`
  (uint8; int64 deltas), so a replay needs no JSON for what they tell; empty for other streams.

Grouping values by field puts similar bytes together: on the recorded sessions, blocks of 1,000 entries
take 34-78 bytes per entry against 229-618 raw (README, *Archive*). Decoding gives back every field
name and value byte for byte, in the original order. Format 1 (the same with msgpack integer lists and
no decoded columns) is still read: its columns are computed frame by frame when a replay asks.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import msgspec
import numpy as np
import zstandard

from streams.archive_columns import U64, Frames, Index, columns, exchange_of, split_ids
from streams.log import Entry

FORMAT = 2
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


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Block1 | _Block2)
_COMPRESSOR = zstandard.ZstdCompressor(level=LEVEL)
_DECOMPRESSOR = zstandard.ZstdDecompressor()
_LE = {"u8": "<u8", "i8": "<i8", "u4": "<u4"}


def raw_size(entries: Sequence[Entry]) -> int:
    """Bytes of the entries' field names and values (what Redis holds, less its own overhead)."""
    return sum(len(k) + len(v) for _, fields in entries for k, v in fields.items())


def encode_block(entries: Sequence[Entry], *, stream: str | None = None) -> bytes:
    """The compressed block of ``entries`` (ids increasing, as in their stream). With the ``stream`` key of
    a raw frame stream (``frames:binance:p3``) the block carries the decoded columns too."""
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


def _decode(payload: bytes) -> _Block1 | _Block2:
    try:
        block: _Block1 | _Block2 = _DECODER.decode(_DECOMPRESSOR.decompress(payload))
    except msgspec.ValidationError as exc:
        raise ValueError(f"archive block of an unknown format (this version reads 1 and 2): {exc}") from None
    return block


def decode_block(payload: bytes) -> list[Entry]:
    """The entries of a block, exactly as they were encoded."""
    block = _decode(payload)
    if isinstance(block, _Block2):
        return BlockEntries(block).build(None)
    ids = [f"{ms}-{seq}".encode() for ms, seq in zip(accumulate(block.ids[::2]), block.ids[1::2], strict=True)]
    return _entries(ids, block.schemas, block.schema_of, block.lengths, block.values)


def decode_frames(payload: bytes, stream: str) -> Frames:
    """A block as :class:`~streams.archive_columns.Frames` of ``stream``: its decoded columns as stored,
    or (a block without them) computed frame by frame."""
    block = _decode(payload)
    if isinstance(block, _Block2):
        ms = _undelta(block.ms)
        seq = np.frombuffer(block.seq, _LE["u8"]).astype(np.uint64)
        n = len(ms)
        if len(block.kinds) == n and len(block.event_ms) == 8 * n:
            kinds = np.frombuffer(block.kinds, np.uint8)
            times = _undelta(block.event_ms).view(np.int64)
            return Frames(ms, seq, kinds, times, BlockEntries(block), np.arange(n, dtype=np.intp))
    return Frames.of_entries(exchange_of(stream), decode_block(payload))


class BlockEntries:
    """The entries of a format 2 block, built on demand (:class:`~streams.archive_columns.EntrySource`)."""

    def __init__(self, block: _Block2) -> None:
        self.ms = _undelta(block.ms)
        self.seq = np.frombuffer(block.seq, _LE["u8"])
        self.schemas = block.schemas
        self.values = block.values
        schema_of = np.frombuffer(block.schema_of, _LE["u4"]).astype(np.intp)
        lengths = np.frombuffer(block.lengths, _LE["u4"]).astype(np.int64)
        self.ends = np.cumsum(lengths)
        self.starts = self.ends - lengths
        n = len(self.ms)
        if len(self.schemas) == 1:
            self.schema_of = np.zeros(n, np.intp)
            self.first = np.arange(n, dtype=np.intp)  # value index of each entry's first field
            self.stride = np.full(n, n, np.intp)  # and the distance between its fields
            return
        self.schema_of = schema_of
        counts = np.bincount(schema_of, minlength=len(self.schemas))
        widths = np.array([len(names) for names in self.schemas], np.intp)
        bases = np.concatenate(([0], np.cumsum(counts * widths)[:-1])).astype(np.intp)
        rank = np.empty(n, np.intp)
        for s in range(len(self.schemas)):
            members = np.flatnonzero(schema_of == s)
            rank[members] = np.arange(len(members))
        self.first = bases[schema_of] + rank
        self.stride = counts[schema_of].astype(np.intp)

    def build(self, index: Index | None) -> list[Entry]:
        rows = np.arange(len(self.ms), dtype=np.intp) if index is None else index
        ids = [f"{a}-{b}".encode() for a, b in zip(self.ms[rows].tolist(), self.seq[rows].tolist(), strict=True)]
        values, starts, ends = self.values, self.starts, self.ends
        if len(self.schemas) == 1:
            names = self.schemas[0]
            if not names:
                return [(eid, {}) for eid in ids]
            n = len(self.ms)
            cuts = [
                [values[a:b] for a, b in zip(starts[rows + j * n].tolist(), ends[rows + j * n].tolist(), strict=True)]
                for j in range(len(names))
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
