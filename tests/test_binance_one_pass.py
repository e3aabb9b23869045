"""The one-pass decode of Binance combined-stream frames (``streams.frames.decode_binance``'s fast path)
against the two-pass decode (the envelope, then its ``data``), which frames given as ``str`` still take.

Every frame of the recorded sessions, and frames broken or bent in ways the one pass must leave to the
two passes (a stream we don't fold, a tag that doesn't match, missing or mistyped fields, a repeated key,
envelope fields of the wrong type), decode to the same event, the same ``Ignored``, or the same error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.frames import Frame, decode_binance
from tests.realdata import BINANCE_0404, BINANCE_0814, BINANCE_1012, require
from tickfold.errors import FrameDecodeError

pytestmark = pytest.mark.unit


def outcome(raw: bytes | str) -> Frame | str:
    try:
        return decode_binance(raw)
    except FrameDecodeError as exc:
        return f"error: {exc}"


def two_passes(raw: bytes) -> Frame | str:
    return outcome(raw.decode())  # a str never takes the one pass


@pytest.mark.parametrize("path", [BINANCE_0404, BINANCE_0814, BINANCE_1012])
def test_recorded_frames_decode_as_in_two_passes(path: Path) -> None:
    lines = require(path).read_bytes().splitlines()
    assert lines
    for line in lines:
        assert outcome(line) == two_passes(line)


Edit = tuple[str, str, object]  # (where: top, data or k; key; new value, None: removed)
KLINE = json.loads(next(f for f in require(BINANCE_0404).read_bytes().splitlines() if b"@kline_" in f))


def _bent(edits: list[Edit]) -> bytes:
    msg = json.loads(json.dumps(KLINE))
    for where, key, value in edits:
        data = msg.get("data")
        target = msg if where == "top" else data if where == "data" else data.get("k") if isinstance(data, dict) else 0
        if not isinstance(target, dict):
            continue  # an earlier edit took it away
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return json.dumps(msg, separators=(",", ":")).encode()


EDITS: st.SearchStrategy[list[Edit]] = st.lists(
    st.tuples(
        st.sampled_from(["top", "data", "k"]),
        st.sampled_from(["stream", "data", "e", "id", "E", "s", "k", "t", "x", "o", "i", "n"]),
        st.one_of(
            st.none(),
            st.sampled_from(["kline", "aggTrade", "trade", "btcusdt@kline_1m", "btcusdt@depth", "btcusdt", "1m"]),
            st.integers(-5, 2**63),
            st.booleans(),
            st.just([]),
        ),
    ),
    max_size=3,
)


@settings(max_examples=400)
@given(EDITS)
def test_bent_frames_decode_as_in_two_passes(edits: list[Edit]) -> None:
    raw = _bent(edits)
    assert outcome(raw) == two_passes(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"stream":"btcusdt@kline_1m","data":{"e":"kline"},"data":' + json.dumps(KLINE["data"]).encode() + b"}",
        b'{"stream":"btcusdt@kline_1m","data":' + json.dumps(KLINE["data"]).encode() + b',"data":{"e":"kline"}}',
        b'{"stream":"btcusdt@kline_1m","data":' + json.dumps(KLINE["data"]).encode() + b',"stream":"x@depth"}',
        b'{"stream":"btcusdt@kline_1m","data":' + json.dumps({**KLINE["data"], "e": None}).encode() + b"}",
        b'{"stream":"btcusdt@kline_1m","data":' + json.dumps(KLINE["data"]).encode() + b"} trailing",
        b'{"stream":null,"data":' + json.dumps(KLINE["data"]).encode() + b"}",
        b'{"stream":"@kline_1m","data":' + json.dumps(KLINE["data"]).encode() + b',"id":1.5}',
        b'{"stream":"btcusdt@aggTrade","data":' + json.dumps(KLINE["data"]).encode() + b"}",
    ],
)
def test_odd_frames_decode_as_in_two_passes(raw: bytes) -> None:
    assert outcome(raw) == two_passes(raw)
