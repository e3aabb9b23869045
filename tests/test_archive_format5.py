"""The archive's format 5: the values of every entry a replay does not build (Binance trade frames, Coinbase
frames that have trade columns) kept apart, in a part decompressed only when such an entry is built.

Oracles: the entries themselves (byte for byte, field order too), and the same entries as a format 4 block
(:func:`~streams.archive_codec.encode_block_v4`): every column of ``decode_frames`` is the same. Which rows
are apart is computed here from those columns (``TRADE``, or ``has``), and the parts are read with plain
msgpack and zstd to check what each holds.
"""

from __future__ import annotations

import random

import msgspec
import numpy as np
import numpy.typing as npt
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import keys
from streams.archive_codec import BlockEntries, decode_block, decode_frames, encode_block, encode_block_v4
from streams.archive_columns import TRADE, Frames
from streams.log import Entry
from tests.realdata import BINANCE_0404, COINBASE_AT, require
from tests.synthetic import synthetic_day

pytestmark = pytest.mark.unit

COINBASE = keys.frames_stream("coinbase", 0)
BINANCE = keys.frames_stream("binance", 0)
T0_MS = 1_786_280_000_000
_TRADES = synthetic_day()[:40]  # market_trades frames: they have trade columns
_BINANCE_TRADE = b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":%d,"s":"BTCUSDT","a":%d,"p":"1.5","q":"2"}}'
_OTHERS = [
    b'{"channel":"heartbeats","client_id":"","timestamp":"2026-08-09T21:05:48.1Z","sequence_num":3,"events":[]}',
    _TRADES[0][:-9],  # broken
    _TRADES[1].replace(b'"price":"', b'"price":"1E', 1),  # a trade not in the plain form: no columns
    b'{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":17,"s":"BTCUSDT","k":{"t":0}}}',
    b"",
    b"\xff not json",
]


def entries_of(raws: list[bytes]) -> list[Entry]:
    return [(f"{T0_MS + i}-0".encode(), {b"frame": raw, b"recv_ns": b"%d" % (i * 7919)}) for i, raw in enumerate(raws)]


def apart_rows(frames: Frames) -> npt.NDArray[np.bool_]:
    """The rows format 5 keeps apart, from a block's columns."""
    rows: npt.NDArray[np.bool_] = frames.kind == TRADE
    return rows if frames.trades is None else rows | frames.trades.has


def parts(payload: bytes) -> tuple[int, list[object], bytes, bytes]:
    """A block's tag, head (msgpack, as a list), apart values (decompressed) and trade columns (as stored)."""
    tag, head, apart, trade_columns = msgspec.msgpack.decode(payload)
    unzstd = zstandard.ZstdDecompressor()
    return (
        tag,
        msgspec.msgpack.decode(unzstd.decompress(head)),
        unzstd.decompress(apart) if apart else b"",
        trade_columns,
    )


def check(entries: list[Entry], stream: str | None, rng: random.Random) -> Frames | None:
    """Format 5 of ``entries`` against the entries and format 4: decoded exactly, the same columns, each part
    holding what it should, and any rows built, the apart part decompressed only for an apart row."""
    payload = encode_block(entries, stream=stream)
    got = decode_block(payload)
    assert got == entries
    assert [list(f) for _, f in got] == [list(f) for _, f in entries]  # field order too
    if stream is None:
        return None
    frames, old = decode_frames(payload, stream), decode_frames(encode_block_v4(entries, stream=stream), stream)
    for name in ("ms", "seq", "kind", "event_ms", "index"):
        a, b = getattr(frames, name), getattr(old, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert (frames.trades is None) == (old.trades is None)
    if frames.trades is not None and old.trades is not None:
        np.testing.assert_array_equal(frames.trades.has, old.trades.has)
        np.testing.assert_array_equal(frames.trades.price, old.trades.price)
    apart = apart_rows(frames)
    tag, head, held, _ = parts(payload)
    assert tag == 5
    marked = apart & (frames.kind != TRADE)
    assert head[8] == (marked.astype(np.uint8).tobytes() if marked.any() else b"")
    assert head[7] == b"".join(stored(entries, ~apart)) and held == b"".join(stored(entries, apart))

    picked = np.array(sorted(rng.sample(range(len(entries)), rng.randint(0, len(entries)))), np.intp)
    fresh = decode_frames(payload, stream)
    source = fresh.source
    if stream not in (COINBASE, BINANCE):  # no stored kinds (decode_frames builds every entry), none apart
        assert not apart.any()
    calm = picked[~apart[picked]]
    assert fresh.entries_at(calm) == [entries[i] for i in calm.tolist()]
    if isinstance(source, BlockEntries):
        assert source.held_back == bool(apart.any())  # no apart row built: still compressed
    assert fresh.entries_at(picked) == [entries[i] for i in picked.tolist()]
    if isinstance(source, BlockEntries):
        assert source.held_back == bool(apart.any() and not apart[picked].any())
    half = len(entries) // 2
    assert decode_frames(payload, stream).take(slice(half, None)).entries() == entries[half:]
    return frames


def stored(entries: list[Entry], rows: npt.NDArray[np.bool_]) -> list[bytes]:
    """The values of ``rows`` in the order a block stores them: by schema (first use), then field, then row."""
    schemas: dict[tuple[bytes, ...], int] = {}
    for _, f in entries:
        schemas.setdefault(tuple(f), len(schemas))
    chosen = [f for (_, f), r in zip(entries, rows.tolist(), strict=True) if r]
    return [f[k] for names in schemas for k in names for f in chosen if tuple(f) == names]


@st.composite
def a_row(draw: st.DrawFn, i: int) -> dict[bytes, bytes]:
    kind = draw(st.sampled_from(["coinbase trades", "other frame", "binance trade", "no frame", "empty", "extra"]))
    recv = b"%d" % draw(st.integers(0, 2**63))
    if kind == "no frame":
        return {b"recv_ns": recv}
    if kind == "empty":
        return {}
    frame = {
        "coinbase trades": draw(st.sampled_from(_TRADES)),
        "other frame": draw(st.sampled_from(_OTHERS)),
        "binance trade": _BINANCE_TRADE % (draw(st.integers(1, 2**40)), i),
    }.get(kind, draw(st.sampled_from(_TRADES + _OTHERS)))
    if kind == "extra":
        return {b"recv_ns": recv, b"frame": frame, b"why": b"a second schema"}
    return {b"frame": frame, b"recv_ns": recv}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 10**6), min_size=0, max_size=50).flatmap(
        lambda ms: st.tuples(st.just(ms), st.tuples(*(a_row(i) for i in range(len(ms)))))
    ),
    st.sampled_from([COINBASE, BINANCE, "control", None]),
    st.randoms(use_true_random=False),
)
def test_any_entries_come_back_exactly_and_only_apart_rows_need_the_apart_part(
    rows: tuple[list[int], tuple[dict[bytes, bytes], ...]], stream: str | None, rng: random.Random
) -> None:
    deltas, fields = rows
    ms = T0_MS
    entries: list[Entry] = []
    for i, (delta, f) in enumerate(zip(deltas, fields, strict=True)):
        ms += delta
        entries.append((f"{ms}-{i}".encode(), f))
    check(entries, stream, rng)


def test_a_coinbase_block_of_trade_frames_keeps_only_ids_and_columns_in_its_head() -> None:
    """All apart: the head has no values; none apart (no frame has columns): no apart part, no marks."""
    rng = random.Random(5)
    entries = entries_of(synthetic_day()[:300])
    frames = check(entries, COINBASE, rng)
    assert frames is not None and frames.trades is not None and frames.trades.has.all()
    _, head, held, _ = parts(encode_block(entries, stream=COINBASE))
    assert head[7] == b"" and head[8] == b"\x01" * 300 and held == b"".join(stored(entries, frames.trades.has))
    calm = entries_of(_OTHERS * 5)
    frames = check(calm, COINBASE, rng)
    assert frames is not None and frames.trades is not None and not frames.trades.has.any()
    _, head, held, _ = parts(encode_block(calm, stream=COINBASE))
    assert head[8] == b"" and held == b""


def test_the_recorded_sessions_as_the_replay_reads_them() -> None:
    """Coinbase: the rows without trade columns (ticker, candles, heartbeats, ...) are built and the
    market_trades frames left compressed; Binance: as format 4, the trade frames."""
    for path, stream, apart in ((COINBASE_AT, COINBASE, 59), (BINANCE_0404, BINANCE, None)):
        entries = entries_of(require(path).read_bytes().splitlines())
        frames = check(entries, stream, random.Random(11))
        assert frames is not None
        rows = apart_rows(frames)
        assert apart is None or int(rows.sum()) == apart
        fresh = decode_frames(encode_block(entries, stream=stream), stream)
        others = np.flatnonzero(~rows)
        assert fresh.entries_at(others) == [entries[i] for i in others.tolist()]
        assert isinstance(fresh.source, BlockEntries) and fresh.source.held_back


def test_a_binance_block_is_format_4_with_an_empty_apart_column() -> None:
    entries = entries_of(require(BINANCE_0404).read_bytes().splitlines()[:1000])
    new, old = parts(encode_block(entries, stream=BINANCE)), parts(encode_block_v4(entries, stream=BINANCE))
    assert (new[0], old[0]) == (5, 4)
    assert new[1] == [*old[1], b""] and new[2:] == old[2:]


def test_a_damaged_apart_part_leaves_the_other_rows_and_the_trade_columns() -> None:
    raws = [raw for pair in zip(synthetic_day()[:100], _OTHERS * 20, strict=False) for raw in pair]
    entries = entries_of(raws)
    outer = msgspec.msgpack.decode(encode_block(entries, stream=COINBASE))
    outer[2] = b"not zstd at all"
    frames = decode_frames(msgspec.msgpack.encode(outer), COINBASE)
    assert frames.trades is not None and int(frames.trades.has.sum()) == 100
    others = np.flatnonzero(~frames.trades.has)
    assert len(others) == 100 and frames.entries_at(others) == [entries[i] for i in others.tolist()]
    with pytest.raises(zstandard.ZstdError):
        frames.entries_at(np.array([0], np.intp))


def test_a_head_whose_apart_column_does_not_fit_is_an_error() -> None:
    entries = entries_of([*synthetic_day()[:10], *_OTHERS])
    outer = msgspec.msgpack.decode(encode_block(entries, stream=COINBASE))
    head = msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(outer[1]))
    for apart, why in ((head[8][:-1], "an apart column of 15 bytes for 16 entries"), (b"", "no apart row")):
        head[8] = apart
        outer[1] = zstandard.ZstdCompressor().compress(msgspec.msgpack.encode(head))
        with pytest.raises(ValueError, match=why):
            decode_block(msgspec.msgpack.encode(outer))
