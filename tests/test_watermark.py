"""Timeframe arithmetic and watermark closes.

Oracles: pandas' own calendar arithmetic (``Timestamp.floor`` / ``to_period``) for bucket starts, real
exchange open/close times for bucket bounds, and the recorded Binance sessions (read with plain json)
for the values a watermark-closed candle must end with.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.candles import Candle, CandleClosed, apply_snapshot
from projections.watermark import (
    DAY_MS,
    TIMEFRAMES,
    advance,
    bucket_end,
    bucket_start,
    bucket_starts,
    close_due,
    duration_ms,
    fixed_duration_ms,
    is_due,
)
from tests.realdata import BINANCE_0404, BINANCE_0814, REALDATA, binance_last_klines, require

pytestmark = pytest.mark.unit

MS = 1_000_000  # ns per ms
_PANDAS_FIXED = {
    "1m": "1min", "3m": "3min", "5m": "5min", "15m": "15min", "30m": "30min", "1h": "1h", "2h": "2h",
    "4h": "4h", "6h": "6h", "8h": "8h", "12h": "12h", "1d": "1D", "3d": "3D",
}  # fmt: skip
_EPOCH = pd.Timestamp(0)


def _ms(ts: pd.Timestamp) -> int:
    return int((ts - _EPOCH) // pd.Timedelta(milliseconds=1))


def pandas_bucket_start(timeframe: str, t: int) -> int:
    ts = _EPOCH + pd.Timedelta(milliseconds=t)  # naive = UTC
    if timeframe == "1w":
        return _ms(ts.to_period("W-SUN").start_time)  # weeks Monday..Sunday
    if timeframe == "1M":
        return _ms(ts.to_period("M").start_time)
    return _ms(ts.floor(_PANDAS_FIXED[timeframe]))


def candle(start: int, event_ns: int, *, timeframe: str = "1m", close: str = "1", closed: bool = False) -> Candle:
    return Candle(
        exchange="binance", symbol="ETH-USDT", timeframe=timeframe, start=start, open="1", high="2", low="0",
        close=close, volume="1", closed=closed, event_ns=event_ns,
    )  # fmt: skip


# --------------------------------------------------------------------------------- timeframe arithmetic


@pytest.mark.parametrize(
    ("timeframe", "minutes"),
    [("1m", 1), ("3m", 3), ("5m", 5), ("15m", 15), ("30m", 30), ("1h", 60), ("2h", 120), ("4h", 240),
     ("6h", 360), ("8h", 480), ("12h", 720), ("1d", 1440), ("3d", 4320), ("1w", 10080)],
)  # fmt: skip
def test_fixed_durations(timeframe: str, minutes: int) -> None:
    assert duration_ms(timeframe) == fixed_duration_ms(timeframe) == minutes * 60_000


@pytest.mark.parametrize(
    ("month_start", "days"),
    [("2024-02-01", 29), ("2023-02-01", 28), ("2026-10-01", 31), ("2026-11-01", 30), ("2026-12-01", 31)],
)
def test_month_durations_follow_the_calendar(month_start: str, days: int) -> None:
    start = _ms(pd.Timestamp(month_start))
    assert duration_ms("1M", start) == duration_ms("1M", start + 5 * DAY_MS) == days * DAY_MS
    assert bucket_end("1M", start) == start + days * DAY_MS
    with pytest.raises(ValueError, match="1M"):
        duration_ms("1M")


def test_unknown_timeframes_and_misaligned_starts_raise() -> None:
    for bad in ("1s", "2d", "1y", "60m", ""):
        with pytest.raises(ValueError, match="unsupported timeframe"):
            bucket_start(bad, 0)
    with pytest.raises(ValueError, match="not the start"):
        bucket_end("5m", 60_000)
    with pytest.raises(ValueError, match="not the start"):
        bucket_end("1w", 0)  # 1970-01-01 was a Thursday


def test_weeks_start_on_monday_and_months_on_the_first() -> None:
    t = _ms(pd.Timestamp("2026-10-06 10:25:09"))  # a Tuesday
    assert bucket_start("1w", t) == _ms(pd.Timestamp("2026-10-05"))
    assert bucket_start("1M", t) == _ms(pd.Timestamp("2026-10-01"))
    assert bucket_start("1w", _ms(pd.Timestamp("2026-10-04 23:59:59.999"))) == _ms(pd.Timestamp("2026-09-28"))
    assert bucket_start("1M", _ms(pd.Timestamp("2024-12-31 23:59:59.999"))) == _ms(pd.Timestamp("2024-12-01"))
    assert bucket_end("1M", _ms(pd.Timestamp("2024-12-01"))) == _ms(pd.Timestamp("2025-01-01"))
    assert bucket_starts("1M", _ms(pd.Timestamp("2024-11-15")), _ms(pd.Timestamp("2025-02-01"))) == [
        _ms(pd.Timestamp(d)) for d in ("2024-11-01", "2024-12-01", "2025-01-01")
    ]


@settings(max_examples=400, deadline=None)
@given(
    timeframe=st.sampled_from(TIMEFRAMES),
    t=st.integers(min_value=_ms(pd.Timestamp("1900-01-01")), max_value=_ms(pd.Timestamp("2200-01-01"))),
)
def test_bucket_start_equals_pandas_calendar(timeframe: str, t: int) -> None:
    start = bucket_start(timeframe, t)
    assert start == pandas_bucket_start(timeframe, t)
    end = bucket_end(timeframe, start)
    assert start <= t < end
    assert bucket_start(timeframe, end) == end  # buckets tile the line
    assert bucket_start(timeframe, end - 1) == start


def _real_bounds() -> list[tuple[str, int, int]]:
    """(timeframe, open, closeTime + 1) of real exchange candles, from every recorded REST/WS kline we have."""
    out: list[tuple[str, int, int]] = []
    for name in ("rest_klines_ETHUSDT_1m_2026-10-06.clim.json", "rest_klines_BTCUSDT_1m_2021-10-22.nautilus.json"):
        out += [("1m", row[0], row[6] + 1) for row in json.loads(require(REALDATA / "binance" / name).read_text())]
    for path in (BINANCE_0404, BINANCE_0814):
        for k in binance_last_klines(path, "ETHUSDT" if path == BINANCE_0404 else "FTMUSDT").values():
            out.append((str(k["i"]), int(str(k["t"])), int(str(k["T"])) + 1))
    coinbase = REALDATA / "coinbase"
    for name, tf, secs in (
        ("rest_market_candles_ETH-USD_ONE_MINUTE_2026-10-06.clim.json", "1m", 60),
        ("rest_candles_BTC-USD_ONE_HOUR_2024-04-04.nautilus.json", "1h", 3600),
        ("rest_candles_ALGO-USD_ONE_DAY_page3.kmiq.json", "1d", 86400),
    ):
        for c in json.loads(require(coinbase / name).read_text())["candles"]:
            out.append((tf, int(c["start"]) * 1000, (int(c["start"]) + secs) * 1000))
    return out


def test_real_exchange_candles_are_our_buckets() -> None:
    bounds = _real_bounds()
    assert len(bounds) > 200
    for tf, start, end in bounds:
        assert bucket_start(tf, start) == start
        assert bucket_start(tf, end - 1) == start
        assert bucket_end(tf, start) == end


# -------------------------------------------------------------------------------------- watermark closes


def test_close_due_is_inclusive_at_end_plus_grace_and_keeps_values() -> None:
    c = candle(60_000, 100_500 * MS)  # minute [60s, 120s), last snapshot at 100.5s
    end_ns = 120_000 * MS
    assert close_due([c], end_ns + 1_999 * MS, grace_ms=2_000) == []
    assert not is_due(c, end_ns + 1_999 * MS, 2_000)
    [ev] = close_due([c], end_ns + 2_000 * MS, grace_ms=2_000)
    assert not ev.correction
    assert ev.candle == msgspec.structs.replace(c, closed=True, closed_by="watermark")  # values, event_ns kept
    assert close_due([ev.candle], 10**18, grace_ms=0) == []  # never twice
    with pytest.raises(ValueError, match="grace"):
        close_due([c], end_ns, grace_ms=-1)


def test_close_due_handles_many_timeframes_and_orders_its_events() -> None:
    w = _ms(pd.Timestamp("2026-10-06 10:25:09")) * MS
    at = {name: _ms(pd.Timestamp(text)) for name, text in [
        ("10:00", "2026-10-06 10:00"), ("09:00", "2026-10-06 09:00"), ("10:20", "2026-10-06 10:20"),
        ("10:24", "2026-10-06 10:24"), ("10:25", "2026-10-06 10:25"), ("oct", "2026-10-01"),
        ("sep", "2026-09-01"), ("week", "2026-10-05"),
    ]}  # fmt: skip
    open_ = [
        candle(at["10:00"], 0, timeframe="1h"),  # ends 11:00: not due
        candle(at["10:20"], 0, timeframe="5m"),  # ends 10:25:00: due with a 5 s grace
        candle(at["10:24"], 0),  # ends 10:25:00: due with a 5 s grace
        candle(at["10:25"], 0),  # the open minute: not due
        candle(at["09:00"], 0, timeframe="1h"),  # ends 10:00: due
        candle(at["oct"], 0, timeframe="1M"),  # October: not due
        candle(at["sep"], 0, timeframe="1M"),  # September: due
        candle(at["week"], 0, timeframe="1w"),  # this week: not due
        candle(at["10:24"] - 60_000, 0, closed=True),  # already closed: skipped
    ]
    events = close_due(reversed(open_), w, grace_ms=5_000)
    got = [(e.candle.timeframe, e.candle.start) for e in events]
    assert got == sorted(got)
    assert set(got) == {("5m", at["10:20"]), ("1m", at["10:24"]), ("1h", at["09:00"]), ("1M", at["sep"])}
    assert all(e.candle.closed and not e.correction for e in events)
    # With a grace longer than the 9 s past 10:25:00, the candles ending then stay open.
    assert {(e.candle.timeframe, e.candle.start) for e in close_due(open_, w, grace_ms=9_001)} == {
        ("1h", at["09:00"]),
        ("1M", at["sep"]),
    }


def test_a_late_update_after_a_watermark_close_is_a_correction() -> None:
    c = candle(0, 59_000 * MS, close="1")
    [ev] = close_due([c], 61_000 * MS, grace_ms=1_000)
    closed = ev.candle
    # The exchange's final frame (event time after the watermark) changes the close: a correction.
    late = candle(0, 61_500 * MS, close="2", closed=True)
    new, ev2 = apply_snapshot(closed, late)
    assert new.closed and new.close == "2"
    assert ev2 is not None and ev2.correction
    # The same final frame again, or a stale snapshot, changes nothing.
    assert apply_snapshot(new, late) == (new, None)
    assert apply_snapshot(new, candle(0, 58_000 * MS, close="0")) == (new, None)


def test_a_snapshot_older_than_the_watermark_still_amends_a_watermark_closed_candle() -> None:
    """Why the close keeps event_ns: a snapshot from before the watermark that arrives after the close
    (another symbol's frame moved the watermark first) must not be dropped as stale."""
    closed = close_due([candle(0, 59_000 * MS, close="1")], 62_000 * MS, grace_ms=1_000)[0].candle
    new, ev = apply_snapshot(closed, candle(0, 60_100 * MS, close="2"))  # E 60.1s < watermark 62s
    assert new.close == "2" and new.closed
    assert ev == CandleClosed(candle=new, correction=True)


@settings(max_examples=200, deadline=None)
@given(
    starts=st.lists(st.integers(0, 50), min_size=1, max_size=20, unique=True),
    w1=st.integers(0, 60 * 60_000),
    w2=st.integers(0, 60 * 60_000),
    grace=st.integers(0, 120_000),
)
def test_closing_is_idempotent_and_monotone_in_the_watermark(starts: list[int], w1: int, w2: int, grace: int) -> None:
    book = {s * 60_000: candle(s * 60_000, s * 60_000 * MS) for s in starts}
    lo, hi = sorted((w1, w2))

    def close(b: dict[int, Candle], w: int) -> dict[int, Candle]:
        out = dict(b)
        for e in close_due(b.values(), w * MS, grace):
            out[e.candle.start] = e.candle
        return out

    once = close(book, hi)
    assert close(once, hi) == once
    assert close(close(book, lo), hi) == once  # stepping the watermark up gives the same as one jump
    assert {s for s, c in once.items() if c.closed} == {s for s in book if s + 60_000 + grace <= hi}
    assert advance(advance(None, lo), hi) == advance(advance(None, hi), lo) == hi


# ------------------------------------------------------------------------------- recorded Binance sessions


def replay(path: Path, grace_ms: int) -> tuple[dict[tuple[str, int], Candle], list[tuple[str, CandleClosed]]]:
    """Fold the recorded kline frames with watermark closes after every frame (watermark: max ``E`` of any frame)."""
    book: dict[tuple[str, int], Candle] = {}
    events: list[tuple[str, CandleClosed]] = []
    watermark: int | None = None
    for line in require(path).read_text().splitlines():
        data = json.loads(line)["data"]
        if "E" not in data:
            continue  # bookTicker frames carry no event time
        watermark = advance(watermark, data["E"] * MS)
        if data["e"] == "kline":
            k = data["k"]
            update = Candle(
                exchange="binance", symbol=k["s"], timeframe=k["i"], start=k["t"], open=k["o"], high=k["h"],
                low=k["l"], close=k["c"], volume=k["v"], quote_volume=k["q"], trades=k["n"],
                taker_buy_volume=k["V"], closed=k["x"], event_ns=data["E"] * MS,
            )  # fmt: skip
            new, ev = apply_snapshot(book.get((k["s"], k["t"])), update)
            book[(k["s"], k["t"])] = new
            if ev is not None:
                events.append(("exchange", ev))
        for ev in close_due([c for c in book.values() if not c.closed], watermark, grace_ms):
            book[(ev.candle.symbol, ev.candle.start)] = ev.candle
            events.append(("watermark", ev))
    return book, events


def _values(k: dict[str, object]) -> tuple[object, ...]:
    return (k["o"], k["h"], k["l"], k["c"], k["v"], k["q"], k["n"], k["V"])


def _candle_values(c: Candle) -> tuple[object, ...]:
    return (c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.trades, c.taker_buy_volume)


@pytest.mark.parametrize("grace_ms", [0, 100, 1_000, 5_000, 60_000])
@pytest.mark.parametrize("path", [BINANCE_0404, BINANCE_0814], ids=["0404", "0814"])
def test_recorded_session_ends_with_the_exchange_values_whatever_the_grace(path: Path, grace_ms: int) -> None:
    book, events = replay(path, grace_ms)
    symbols = {s for s, _ in book}
    assert symbols
    for symbol in symbols:
        for start, k in binance_last_klines(path, symbol).items():
            assert _candle_values(book[(symbol, start)]) == _values(k), (symbol, start)
    # Every candle the session finished (end + grace <= last event time) is closed, by exchange or watermark.
    last = max(json.loads(line)["data"].get("E", 0) for line in require(path).read_text().splitlines())
    for c in book.values():
        if (bucket_end(c.timeframe, c.start) + grace_ms) <= last:
            assert c.closed, (c.symbol, c.start)
    # One close per candle; any later event for it is a correction.
    firsts = [e.candle.start for _, e in events if not e.correction]
    assert len(firsts) == len({(e.candle.symbol, e.candle.start) for _, e in events if not e.correction})


def test_0404_minute_boundary_with_a_2s_grace_is_closed_by_the_exchange_not_the_watermark() -> None:
    _, events = replay(BINANCE_0404, grace_ms=2_000)
    closes = [(how, e.candle.symbol) for how, e in events if e.candle.start == 1617566580000]
    assert sorted(closes) == [("exchange", "BTCUSDT"), ("exchange", "DOTUSDT"), ("exchange", "ETHUSDT")]
    assert not any(e.correction for _, e in events)


def test_0814_xmrbtc_late_update_after_a_watermark_close_is_a_correction() -> None:
    """XMRBTC's frame at E=…422309 (2.3 s after its minute ended, x=false, n changed) is a late update."""
    book, events = replay(BINANCE_0814, grace_ms=1_000)
    xmr = [(how, e) for how, e in events if e.candle.symbol == "XMRBTC" and e.candle.start == 1628952360000]
    assert [(how, e.correction) for how, e in xmr] == [("watermark", False), ("exchange", True)]
    assert xmr[0][1].candle.trades != 4 and xmr[1][1].candle.trades == 4
    assert book[("XMRBTC", 1628952360000)].closed
