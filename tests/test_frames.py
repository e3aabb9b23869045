"""Decoding the recorded frames of ../shared/realdata with the wire types."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.frames import (
    BinanceAggTrade,
    BinanceKlineEvent,
    BinanceTrade,
    CoinbaseFrame,
    CoinbaseHeartbeatEvent,
    Ignored,
    decode_frame,
    parse_rfc3339_ns,
)
from streams.recorded import read_frames
from tests.realdata import BINANCE_0404, BINANCE_0814, COINBASE_AT, COINBASE_AT_RECORDING, REALDATA, require
from tickfold.errors import FrameDecodeError

pytestmark = pytest.mark.unit


def _kinds(exchange: str, path: Path) -> Counter[str]:
    out: Counter[str] = Counter()
    for line in require(path).read_bytes().splitlines():
        frame = decode_frame(exchange, line)
        out[frame.what.split(" ")[0] if isinstance(frame, Ignored) else type(frame).__name__] += 1
    return out


def test_binance_recording_decodes_completely() -> None:
    assert _kinds("binance", BINANCE_0404) == {"BinanceAggTrade": 1910, "BinanceKlineEvent": 118}
    # bookTicker frames are valid but not folded: ignored, not dead-lettered
    assert _kinds("binance", BINANCE_0814) == {"BinanceAggTrade": 28, "BinanceKlineEvent": 17, "stream": 412}


def test_coinbase_recording_decodes_completely() -> None:
    kinds = Counter(
        decode_frame("coinbase", line).channel  # type: ignore[union-attr]
        for line in require(COINBASE_AT).read_bytes().splitlines()
    )
    assert kinds == {"subscriptions": 5, "market_trades": 59, "candles": 6, "ticker": 160, "heartbeats": 25}


def test_kline_fields_are_exact_strings() -> None:
    line = next(line for line in require(BINANCE_0404).read_bytes().splitlines() if b"kline" in line)
    raw = json.loads(line)["data"]
    frame = decode_frame("binance", line)
    assert isinstance(frame, BinanceKlineEvent)
    k = frame.kline
    assert (k.open, k.high, k.low, k.close, k.volume) == tuple(raw["k"][f] for f in "ohlcv")
    assert (k.open_time, k.closed, frame.event_time) == (raw["k"]["t"], raw["k"]["x"], raw["E"])


def test_single_frames_from_other_sources() -> None:
    trade = decode_frame(
        "binance", require(REALDATA / "binance" / "ws_trade_ETHUSDT_2021-12-12.nautilus.json").read_bytes()
    )
    assert isinstance(trade, BinanceTrade) and trade.trade_id == 705291099
    docs = json.loads(require(REALDATA / "binance" / "docs_examples_ws_streams.json").read_text())
    assert isinstance(docs, (dict, list))
    bare = (
        b'{"e":"aggTrade","E":1,"s":"BNBBTC","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1,"m":true,"M":true}'
    )
    assert isinstance(decode_frame("binance", bare), BinanceAggTrade)
    assert decode_frame("binance", b'{"result":null,"id":1}') == Ignored("subscribe reply")


def test_heartbeat_counter_as_string_or_int() -> None:
    for counter in ("41691", 41691):
        text = json.dumps(
            {
                "channel": "heartbeats",
                "client_id": "",
                "timestamp": "2023-06-23T20:31:26.122969572Z",
                "sequence_num": 0,
                "events": [
                    {
                        "current_time": "2023-06-23 20:31:56.121961769 +0000 UTC m=+91717.525857105",
                        "heartbeat_counter": counter,
                    }
                ],
            }
        )
        frame = decode_frame("coinbase", text)
        assert isinstance(frame, CoinbaseFrame)
        assert isinstance(frame.events[0], CoinbaseHeartbeatEvent)


@pytest.mark.parametrize(
    ("exchange", "raw", "reason"),
    [
        ("binance", b"not json at all", "not a frame"),
        ("binance", b'{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1}}', "missing required field"),
        ("binance", b"{}", "neither"),
        ("coinbase", b'{"channel":"candles"}', "missing required field"),
        ("coinbase", b'{"channel":"candles","timestamp":"yesterday","sequence_num":1,"events":[]}', "coinbase candles"),
        (
            "coinbase",
            b'{"channel":"candles","timestamp":"2026-08-09T21:05:48Z","sequence_num":1,"events":[{"type":"update","candles":[{"start":1}]}]}',
            "coinbase candles",
        ),
        ("kraken", b"{}", "no decoder"),
    ],
)
def test_malformed_frames_raise_with_reason(exchange: str, raw: bytes, reason: str) -> None:
    with pytest.raises(FrameDecodeError, match=reason):
        decode_frame(exchange, raw)


def test_rfc3339_keeps_nanoseconds() -> None:
    assert parse_rfc3339_ns("2026-08-09T21:05:48.228568804Z") == 1786309548_228568804
    assert parse_rfc3339_ns("2026-08-09T21:05:48.5Z") == 1786309548_500000000
    assert parse_rfc3339_ns("2026-08-09T21:05:48Z") == 1786309548_000000000
    assert parse_rfc3339_ns("2026-08-09T23:05:48.1+02:00") == 1786309548_100000000


def test_recording_and_frames_files_hold_the_same_frames() -> None:
    frames = [f for f, _ in read_frames(require(COINBASE_AT))]
    recorded = list(read_frames(require(COINBASE_AT_RECORDING)))
    assert frames == [f for f, _ in recorded]
    assert abs(recorded[0][1] - 1786309548629007872) < 1000  # the recorder's receive time, not ingest time


@pytest.mark.parametrize("path", [BINANCE_0404, BINANCE_0814])
def test_the_event_time_only_read_of_binance_trades_agrees_with_the_full_decode(path: Path) -> None:
    """The candle fold reads only ``E`` of an aggTrade when it builds no Binance trade candles."""
    from streams.frames import BinanceAggTrade, BinanceTrade, binance_trade_event_time, decode_binance

    seen = 0
    for line in require(path).read_bytes().splitlines():
        full = decode_binance(line)
        quick = binance_trade_event_time(line)
        if isinstance(full, BinanceAggTrade | BinanceTrade):
            assert quick == full.event_time
            seen += 1
        else:
            assert quick is None
    assert seen >= 20  # 1,910 and 28 trade frames in the two recordings
    broken = b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":"soon"}}'
    assert binance_trade_event_time(broken) is None  # left to the full decode, which reports it
    with pytest.raises(FrameDecodeError):
        decode_binance(broken)


@given(
    st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 12, 31)),
    st.integers(0, 999_999_999),
    st.integers(1, 9),
)
def test_rfc3339_agrees_with_numpy_to_the_nanosecond(when: dt.datetime, fraction: int, digits: int) -> None:
    """The exchanges' ``...SS.fffffffffZ`` form (parsed without fromisoformat) against numpy's datetime64."""
    import numpy as np

    text = when.strftime("%Y-%m-%dT%H:%M:%S") + "." + str(fraction).zfill(9)[:digits] + "Z"
    assert parse_rfc3339_ns(text) == int(np.datetime64(text[:-1], "ns").astype(np.int64))


def test_rfc3339_refuses_impossible_times() -> None:
    for bad in ("2026-02-30T00:00:00.1Z", "2026-08-09T24:00:00.1Z", "2026-08-09T21:60:00.1Z", "2026-08-09T21:05:48.Z"):
        with pytest.raises(ValueError):
            parse_rfc3339_ns(bad)


@pytest.mark.parametrize(
    ("exchange_id", "path"), [("binance", BINANCE_0404), ("binance", BINANCE_0814), ("coinbase", COINBASE_AT)]
)
def test_event_ms_reads_what_the_full_decode_gives(exchange_id: str, path: Path) -> None:
    """The replay cuts by event time read without decoding what it does not need: the same ms as the fold's."""
    from projections.snapshots import event_ns
    from streams.frames import event_ms
    from tests.synthetic import synthetic_day

    lines = require(path).read_bytes().splitlines()
    if exchange_id == "coinbase":
        lines += synthetic_day(every_ms=3_600_000)
    lines += [b"{}", b"not json", b'{"tickfold":"rest_candles"}']
    for raw in lines:
        try:
            full = event_ns(decode_frame(exchange_id, raw)) // 1_000_000
        except FrameDecodeError:
            full = 0
        assert event_ms(exchange_id, raw) == full, raw[:120]
