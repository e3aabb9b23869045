"""The archive's trade columns (formats 4 and 5): a Coinbase block stores its entries' trade columns, and
:func:`~streams.archive_codec.decode_frames` gives them back bit for bit.

Oracle: :meth:`TradeColumns.of_frames` of the entries' ``frame`` values (what ``Frames.of_entries`` computes
from a stream), compared column by column, values and dtypes. On the recorded session the columns are also
checked against the frames read with plain ``json`` and ``Decimal``. Older blocks have no trade columns
(``trades`` None), and damaged ones lose only them.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import recorded
from streams.archive_codec import (
    decode_block,
    decode_frames,
    encode_block,
    encode_block_v1,
    encode_block_v2,
    encode_block_v3,
    encode_block_v4,
)
from streams.archive_columns import Frames
from streams.log import Entry
from streams.trade_columns import TradeColumns, frame_trades, to_decimal
from tests.realdata import COINBASE_AT, COINBASE_AT_RECORDING, REALDATA, require
from tests.synthetic import synthetic_day

pytestmark = pytest.mark.unit

Encode = Callable[..., bytes]

STREAM = "frames:coinbase:p0"
T0_MS = 1_786_280_000_000
COLUMNS = (
    "has",
    "event_ns",
    "offsets",
    "product",
    "trade_id",
    "price",
    "price_exp",
    "size",
    "size_exp",
    "time_ms",
    "taker_buy",
)
# the same session as COINBASE_AT, shipped with tickfold for `tickfold demo` (its README: the cryptofeed v3 file)
SHIPPED = Path(__file__).resolve().parents[1] / "tickfold" / "data" / "recordings"
SHIPPED_COINBASE = SHIPPED / "coinbase_2026-08-09_btc-usd_eth-usd.frames.jsonl"
# the legacy Coinbase Exchange feed (no market_trades: every row without columns); see SOURCES.md
COINBASE_LEGACY = REALDATA / "coinbase" / "exchange_ws_feed_2021-04-17.frames.jsonl"


def entries_of(raws: list[bytes | None]) -> list[Entry]:
    """Stream entries as the adapters write them (None: an entry without a ``frame`` field)."""
    return [
        (
            f"{T0_MS + i // 3}-{i % 3}".encode(),
            {b"recv_ns": b"%d" % i} if raw is None else {b"frame": raw, b"recv_ns": b"7"},
        )
        for i, raw in enumerate(raws)
    ]


def assert_same_columns(got: TradeColumns | None, want: TradeColumns) -> None:
    assert got is not None
    assert got.products == want.products
    for name in COLUMNS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def round_trip(entries: list[Entry]) -> Frames:
    """Encode ``entries`` as the archiver does (and as format 4 did), and check the block against them and
    their columns."""
    want = TradeColumns.of_frames([f.get(b"frame") for _, f in entries])
    for payload in (encode_block_v4(entries, stream=STREAM), encode_block(entries, stream=STREAM)):
        assert decode_block(payload) == entries
        frames = decode_frames(payload, STREAM)
        assert frames.entries() == entries
        assert_same_columns(frames.trades, want)
    return frames


def blocks(entries: list[Entry], size: int) -> list[list[Entry]]:
    return [entries[i : i + size] for i in range(0, len(entries), size)]


# ------------------------------------------------------------------------------------------ recorded


def _ms(text: str) -> int:
    """A trade time (up to 6 fraction digits, as recorded) in ms, with datetime alone."""
    return (datetime.fromisoformat(text) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _check_against_json(raws: list[bytes], cols: TradeColumns) -> int:
    """The columns against the frames read with plain json and Decimal; returns the trades seen."""
    seen = 0
    for r, raw in enumerate(raws):
        obj = json.loads(raw)
        if obj.get("channel") != "market_trades":
            assert not cols.has[r]
            continue
        trades = [t for event in obj["events"] for t in event["trades"]]
        a, b = int(cols.offsets[r]), int(cols.offsets[r + 1])
        assert cols.has[r] and b - a == len(trades)
        for i, t in zip(range(a, b), trades, strict=True):
            assert cols.products[int(cols.product[i])] == t["product_id"]
            assert int(cols.trade_id[i]) == int(t["trade_id"])
            for coefficient, exponent, text in (
                (cols.price[i], cols.price_exp[i], t["price"]),
                (cols.size[i], cols.size_exp[i], t["size"]),
            ):
                got = to_decimal(int(coefficient), int(exponent))
                assert got == Decimal(text) and got.as_tuple() == Decimal(text).as_tuple()
            assert int(cols.time_ms[i]) == _ms(t["time"])
            assert bool(cols.taker_buy[i]) == (t["side"] == "SELL")  # side is the maker's
        seen += len(trades)
    return seen


@pytest.mark.parametrize("path", [COINBASE_AT, SHIPPED_COINBASE], ids=["realdata", "shipped"])
@pytest.mark.parametrize("size", [1, 7, 100, 5000])
def test_the_recorded_session_round_trips(path: Path, size: int) -> None:
    # github bmoscon/cryptofeed, branch v3, commit 57d5f18d6098f7aa294a3947796cc27d94c3a99c,
    # sample_data/COINBASE.jsonl.zst (BTC-USD, ETH-USD, 2026-08-09 21:05:48-21:06:12 UTC; SOURCES.md, and
    # tickfold/data/recordings/README.md for the shipped copy)
    raws = require(path).read_bytes().splitlines()
    entries = entries_of(list(raws))
    trades = 0
    for part in blocks(entries, size):
        cols = round_trip(part).trades
        assert cols is not None
        trades += _check_against_json([f[b"frame"] for _, f in part], cols)
    assert trades == 279  # in the 59 market_trades frames


def test_the_recorded_session_with_its_receive_times_and_the_legacy_feed() -> None:
    """The recorder file as the adapter writes it (frames and receive times); the legacy Exchange feed
    (2021-04-17, cryptofeed master ce58c2a0015040aa2271e80bac783d74fa2cdcff, sample_data/COINBASE.ws.28.0),
    whose frames are not Advanced Trade frames: every row without columns."""
    entries = [
        (f"{T0_MS + i}-0".encode(), {b"frame": f, b"recv_ns": b"%d" % recv})
        for i, (f, recv) in enumerate(recorded.read_frames(require(COINBASE_AT_RECORDING)))
    ]
    cols = round_trip(entries).trades
    assert cols is not None and int(cols.has.sum()) == 59 and cols.products == ["BTC-USD", "ETH-USD"]
    legacy = entries_of(list(require(COINBASE_LEGACY).read_bytes().splitlines()))
    cols = round_trip(legacy).trades
    assert cols is not None and len(cols.has) == 217 and not cols.has.any() and cols.products == []


def test_a_synthetic_day_in_archiver_blocks() -> None:
    day = synthetic_day()
    trades = 0
    for part in blocks(entries_of(list(day)), 5000):
        cols = round_trip(part).trades
        assert cols is not None and cols.has.all() and len(cols.products) == 12
        trades += len(cols.trade_id)
    assert len(day) == 17_220 and trades >= 2 * len(day)


# ------------------------------------------------------------------------------------------ generated

PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USDC", "doge-usd", "ÉTH-€"]
FRACTION = st.text("0123456789", min_size=1, max_size=8)
PLAIN_NUMBER = st.builds(
    lambda whole, fraction: whole if fraction is None else f"{whole}.{fraction}",
    st.text("0123456789", min_size=1, max_size=10),
    st.none() | FRACTION,
)
PLAIN_ID = st.text("0123456789", min_size=1, max_size=18)
BAD_NUMBERS = [
    "1E3",
    "1e-3",
    "-1.5",
    "+2",
    "1_000",
    "1" + "0" * 18,
    "1234567890.123456789",
    ".5",
    "5.",
    "NaN",
    " 1",
    "١٢",
]
BAD_IDS = ["1" * 19, "-1", "+1", "1_0", " 1", "", "1.0", "٣", "1e3"]
BAD_TIMES = ["2026-02-30T00:00:00Z", "garbage", "2026-08-09T21:05:38.1234567890Z"]
BAD_TIMESTAMPS = ["2300-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "nope"]  # beyond int64 ns, or unreadable
KINDS = ["plain", "plain", "plain", "bad value", "other channel", "broken", "no frame", "not json", "extra field"]


def iso(seconds: int, fraction: str) -> str:
    return (
        datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"
    )


TIMES = st.builds(iso, st.integers(-(10**10), 253_402_300_799), st.text("0123456789", max_size=9))
TIMESTAMPS = st.builds(iso, st.integers(-(2**33), 2**33), st.text("0123456789", max_size=9))  # 1697 .. 2242


@st.composite
def a_trade(draw: st.DrawFn) -> dict[str, str]:
    return {
        "product_id": draw(st.sampled_from(PRODUCTS)),
        "trade_id": draw(PLAIN_ID),
        "price": draw(PLAIN_NUMBER),
        "size": draw(PLAIN_NUMBER),
        "time": draw(TIMES),
        "side": draw(st.sampled_from(["BUY", "SELL", "UNKNOWN"])),
    }


@st.composite
def a_row(draw: st.DrawFn) -> tuple[str, dict[bytes, bytes]]:
    kind = draw(st.sampled_from(KINDS))
    recv = b"%d" % draw(st.integers(0, 2**63))
    if kind == "no frame":
        return kind, {b"recv_ns": recv}
    if kind == "not json":
        return kind, {b"frame": draw(st.binary(max_size=30)) + b"\xff", b"recv_ns": recv}
    events = draw(st.lists(st.lists(a_trade(), max_size=4), min_size=1, max_size=3))
    frame: dict[str, object] = {
        "channel": "market_trades",
        "client_id": "",
        "timestamp": draw(TIMESTAMPS),
        "sequence_num": draw(st.integers(0, 10**6)),
        "events": [{"type": draw(st.sampled_from(["snapshot", "update"])), "trades": ts} for ts in events],
    }
    if kind == "bad value":
        flat = [t for ts in events for t in ts]
        field = draw(st.sampled_from(["timestamp", *(["trade_id", "price", "size", "time"] if flat else [])]))
        if field == "timestamp":
            frame["timestamp"] = draw(st.sampled_from(BAD_TIMESTAMPS))
        else:
            bad = {"trade_id": BAD_IDS, "price": BAD_NUMBERS, "size": BAD_NUMBERS, "time": BAD_TIMES}[field]
            draw(st.sampled_from(flat))[field] = draw(st.sampled_from(bad))
    if kind == "other channel":
        frame["channel"] = draw(st.sampled_from(["heartbeats", "ticker", "candles", "subscriptions"]))
        if frame["channel"] == "heartbeats":
            frame["events"] = [{"current_time": "2026-08-09 21:05:48.1 +0000 UTC", "heartbeat_counter": 3}]
    raw = json.dumps(frame, separators=(",", ":"), ensure_ascii=draw(st.booleans())).encode()
    if kind == "broken":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    fields = {b"frame": raw, b"recv_ns": recv}
    if kind == "extra field":
        fields = {b"recv_ns": recv, b"frame": raw, b"why": b"a second schema"}
    return kind, fields


@settings(max_examples=150, deadline=None)
@given(st.lists(a_row(), min_size=0, max_size=40), st.randoms(use_true_random=False))
def test_any_mix_of_frames_round_trips(rows: list[tuple[str, dict[bytes, bytes]]], rng: random.Random) -> None:
    entries: list[Entry] = [(f"{T0_MS + i}-0".encode(), fields) for i, (_, fields) in enumerate(rows)]
    frames = round_trip(entries)
    cols = frames.trades
    assert cols is not None
    assert cols.has.tolist() == [kind in ("plain", "extra field") for kind, _ in rows]  # the mix is what it says
    picked = np.array(sorted(rng.sample(range(len(entries)), rng.randint(0, len(entries)))), np.intp)
    part = frames.take(picked)
    assert part.trades is cols and part.index.tolist() == picked.tolist()
    want = [None if b"frame" not in f else frame_trades(f[b"frame"]) for _, f in (entries[i] for i in picked)]
    assert [cols.row(int(i)) for i in part.index] == want


def test_extreme_values_and_many_products() -> None:
    """Deltas that need all 8 bytes (both ways), negative event times, and product tables of every width
    the product order is sorted in (uint8, uint16, int32)."""

    def frame(trades: list[dict[str, str]], timestamp: str = "2026-08-09T21:05:48.228568804Z") -> bytes:
        body = {
            "channel": "market_trades",
            "timestamp": timestamp,
            "sequence_num": 0,
            "events": [{"type": "update", "trades": trades}],
        }
        return json.dumps(body).encode()

    def trade(product: str, trade_id: str, price: str, time: str = "2026-08-09T21:05:48Z") -> dict[str, str]:
        return {
            "product_id": product,
            "trade_id": trade_id,
            "price": price,
            "size": price,
            "time": time,
            "side": "SELL",
        }

    big = "9" * 18
    wild = [
        frame([trade("A", big, big), trade("A", "0", "0." + "0" * 16 + "1"), trade("B", "1", big)]),
        frame([trade("A", big, "1" + "0" * 17, "9999-12-31T23:59:59.999999Z")], "1677-09-21T00:12:43.145224192Z"),
        frame([trade("B", "0", "0", "0001-01-01T00:00:00Z")], "1969-12-31T23:59:59.999999999Z"),
        frame([], "2262-04-11T23:47:16.854775807Z"),
        frame([trade("A", "17", "1.5")], "2262-04-11T23:47:16.854775808Z"),  # one ns past int64: no columns
    ]
    cols = round_trip(entries_of([*wild, None])).trades
    assert cols is not None and cols.has.tolist() == [True, True, True, True, False, False]
    assert int(cols.event_ns[1]) == -(2**63) and int(cols.event_ns[3]) == 2**63 - 1
    for products in (300, 70_000):
        raws: list[bytes | None] = [
            frame([trade(f"P{(k * 100 + j) * 7919 % products}", str(k * 100 + j), f"{j}.{k}") for j in range(100)])
            for k in range(products // 100 + 2)
        ]
        cols = round_trip(entries_of(raws)).trades
        assert cols is not None and len(cols.products) == products


# ------------------------------------------------------------------------------ older blocks, damage


def test_older_formats_and_blocks_without_a_stream_have_no_trade_columns() -> None:
    entries = entries_of([*synthetic_day()[:300], b'{"channel":"heartbeats"}', None])
    new = decode_frames(encode_block(entries, stream=STREAM), STREAM)
    assert new.trades is not None and int(new.trades.has.sum()) == 300
    v4 = decode_frames(encode_block_v4(entries, stream=STREAM), STREAM)
    assert_same_columns(v4.trades, new.trades)
    assert v4.entries() == entries
    for old in (
        encode_block_v3(entries, stream=STREAM),
        encode_block_v2(entries, stream=STREAM),
        encode_block_v1(entries),
        encode_block(entries),  # written without the stream: no columns of any kind
    ):
        assert decode_block(old) == entries
        frames = decode_frames(old, STREAM)
        assert frames.trades is None  # the replay folds their raw frames
        assert frames.entries() == entries
        np.testing.assert_array_equal(frames.kind, new.kind)
        np.testing.assert_array_equal(frames.event_ms, new.event_ms)


def test_other_streams_cost_a_few_bytes_more_than_format_3() -> None:
    binance = require(REALDATA / "binance" / "ws_combined_2021-04-04_btcusdt_ethusdt_dotusdt.frames.jsonl")
    entries = entries_of(list(binance.read_bytes().splitlines()[:1000]))
    for stream in ("frames:binance:p0", "control", "closes:coinbase"):
        v3, v4 = encode_block_v3(entries, stream=stream), encode_block_v4(entries, stream=stream)
        new = encode_block(entries, stream=stream)
        assert len(v4) - len(v3) == 2  # an empty third part
        assert 0 <= len(new) - len(v4) <= 8  # the head's empty apart column (0 here for Binance frames)
        for payload in (v4, new):
            assert decode_frames(payload, stream).trades is None and decode_block(payload) == entries


ENCODERS = pytest.mark.parametrize("encode", [encode_block, encode_block_v4], ids=["format 5", "format 4"])


def _parts(payload: bytes) -> list[object]:
    outer: list[object] = msgspec.msgpack.decode(payload)
    assert outer[0] in (4, 5) and isinstance(outer[3], bytes) and outer[3]
    return outer


def _damaged(caplog: pytest.LogCaptureFixture, encode: Encode, entries: list[Entry], part: bytes, why: str) -> None:
    """A block whose trade columns are ``part``: they are lost, with a warning naming the block and ``why``;
    nothing else is."""
    whole = encode(entries, stream=STREAM)
    outer = _parts(whole)
    outer[3] = part
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streams.archive_codec"):
        frames = decode_frames(msgspec.msgpack.encode(outer), STREAM)
    assert frames.trades is None
    assert frames.entries() == entries
    good = decode_frames(whole, STREAM)
    np.testing.assert_array_equal(frames.kind, good.kind)
    np.testing.assert_array_equal(frames.event_ms, good.event_ms)
    [record] = caplog.records
    assert record.message.startswith(f"archive block of {STREAM} at {T0_MS}-0: trade columns unreadable (")
    assert why in record.message


@ENCODERS
def test_damaged_trade_columns_are_lost_alone(caplog: pytest.LogCaptureFixture, encode: Encode) -> None:
    entries = entries_of(list(synthetic_day()[:200]))
    _damaged(caplog, encode, entries, b"not zstd at all", "(ZstdError: ")
    packed = _parts(encode(entries, stream=STREAM))[3]
    assert isinstance(packed, bytes)
    products, columns = msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(packed))
    assert isinstance(columns, bytes) and columns[0] == 1  # "has": 200 ones, one byte each

    def part(products: object, columns: bytes) -> bytes:
        return zstandard.ZstdCompressor(write_checksum=True).compress(msgspec.msgpack.encode([products, columns]))

    for damaged, why in (
        (columns[:-1], "(ValueError: taker_buy: "),
        (columns + b"\x00", "(ValueError: columns: 1 bytes past the last one)"),
        (b"\x01\x02" + columns[2:], "(ValueError: has: not 0 or 1)"),
        (b"\x03" + columns[1:], f"(ValueError: has: 200 values of width 3 at byte 0 of {len(columns)})"),
        (b"\x01\x00" + columns[2:], "(ValueError: counts: trades in a row without columns"),
    ):
        _damaged(caplog, encode, entries, part(products, damaged), why)
    _damaged(caplog, encode, entries, part(["BTC-USD"], columns), "(ValueError: product: an index past the 1 products)")
    _damaged(caplog, encode, entries, part(12, columns), "(ValidationError: Expected `array`, got `int`")
    _damaged(caplog, encode, entries, part(products, columns)[:-1], "(ZstdError: ")
    wrong = zstandard.ZstdCompressor(write_checksum=True).compress(msgspec.msgpack.encode([products]))
    _damaged(caplog, encode, entries, wrong, "(ValidationError: Expected `array` of at least length 2, got 1)")


@ENCODERS
def test_a_flipped_byte_never_gives_wrong_columns(encode: Encode) -> None:
    """Any one byte of the compressed columns changed: they are exactly right or lost (checksum), never
    silently wrong; the entries are whole either way."""
    entries = entries_of(list(synthetic_day()[:60]))
    want = TradeColumns.of_frames([f[b"frame"] for _, f in entries])
    whole = encode(entries, stream=STREAM)
    outer = _parts(whole)
    packed = outer[3]
    assert isinstance(packed, bytes)
    lost = 0
    logging.getLogger("streams.archive_codec").disabled = True
    try:
        for i in range(len(packed)):
            for flip in (0x01, 0x80, 0xFF):
                outer[3] = packed[:i] + bytes([packed[i] ^ flip]) + packed[i + 1 :]
                got = decode_frames(msgspec.msgpack.encode(outer), STREAM)
                if got.trades is None:
                    lost += 1
                else:
                    assert_same_columns(got.trades, want)
                assert got.entries() == entries
    finally:
        logging.getLogger("streams.archive_codec").disabled = False
    assert lost >= 3 * (len(packed) - 8)  # all but (at most) a few header bits are caught
