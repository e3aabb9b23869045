"""Roll-ups of real candles against pandas, and their algebra under hypothesis.

Oracles (independent of projections/rollups.py):

* pandas ``resample(...).agg(first/max/min/last/sum/count)`` over the *real* base candles, on integer
  columns scaled by 10**places, so every comparison is **exact** (no float, no tolerance):
  Binance ETHUSDT 1m and Coinbase ETH-USD 1m (2026-10-06, DVB-ANS/clim, read in place), Coinbase
  ETH-USD / BTC-USD 5m from the recorded Advanced Trade session (read in place; BTC-USD has real gaps),
  and Coinbase ALGO-USD 1d (781 days, MIT, copied to tests/data) rolled up to 3d, 1w and 1M.
* A plain-Python decimal fold inside the hypothesis tests.

No real higher-timeframe candle in ../shared/realdata overlaps any base range we have (the only ones are
Coinbase BTC-USD 1h of 2024-04-04 and the ALGO-USD daily pages, whose bases are not recorded), so there
is no exchange-made higher-timeframe oracle here.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

import msgspec
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from projections import rollups
from projections.candles import Candle, CandleClosed, apply_snapshot
from projections.rollups import Rollup, apply_rollup, base_starts, expected_count, nests, plan, rollup
from projections.watermark import DAY_MS, TIMEFRAMES, bucket_end, bucket_start, close_due
from tests.realdata import COINBASE_AT, REALDATA, require

pytestmark = pytest.mark.unit

MS = 1_000_000
DATA = Path(__file__).parent / "data"
BINANCE_1M = REALDATA / "binance" / "rest_klines_ETHUSDT_1m_2026-10-06.clim.json"
COINBASE_1M = REALDATA / "coinbase" / "rest_market_candles_ETH-USD_ONE_MINUTE_2026-10-06.clim.json"
CAPTURED_MS = 1791282309 * 1000  # both clim files were fetched at 2026-10-06T10:25:09Z
ALGO_PAGES = [DATA / f"rest_candles_ALGO-USD_ONE_DAY_page{i}.kmiq.json" for i in (1, 2, 3)]

# ------------------------------------------------------------------------------------------ real inputs


def binance_1m() -> list[Candle]:
    rows = json.loads(require(BINANCE_1M).read_text())
    return [
        Candle(
            exchange="binance",
            symbol="ETH-USDT",
            timeframe="1m",
            start=r[0],
            open=r[1],
            high=r[2],
            low=r[3],
            close=r[4],
            volume=r[5],
            quote_volume=r[7],
            trades=r[8],
            taker_buy_volume=r[9],
            closed=r[6] < CAPTURED_MS,
            event_ns=min(r[6] + 1, CAPTURED_MS) * MS,
        )
        for r in rows
    ]


def coinbase_rest(path: Path, symbol: str, timeframe: str, *, captured_ms: int) -> list[Candle]:
    rows = json.loads(require(path).read_text())["candles"]
    out = []
    for r in rows:
        start = int(r["start"]) * 1000
        end = bucket_end(timeframe, start)
        out.append(
            Candle(
                exchange="coinbase",
                symbol=symbol,
                timeframe=timeframe,
                start=start,
                open=r["open"],
                high=r["high"],
                low=r["low"],
                close=r["close"],
                volume=r["volume"],
                closed=end <= captured_ms,
                event_ns=min(end, captured_ms) * MS,
            )
        )
    return sorted(out, key=lambda c: c.start)


def algo_1d() -> list[Candle]:
    out: list[Candle] = []
    for page in ALGO_PAGES:
        out += coinbase_rest(page, "ALGO-USD", "1d", captured_ms=1 << 60)
    return sorted(out, key=lambda c: c.start)


def coinbase_ws_5m(product: str) -> list[Candle]:
    """The last snapshot/update of each 5m start of ``product`` in the session (closed once a newer start exists)."""
    last: dict[int, tuple[dict[str, str], int]] = {}
    for line in require(COINBASE_AT).read_text().splitlines():
        msg = json.loads(line)
        if msg.get("channel") != "candles":
            continue
        ts = pd.Timestamp(msg["timestamp"])
        event_ns = int((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "ns"))
        for ev in msg["events"]:
            for c in ev["candles"]:
                if c["product_id"] == product:
                    last[int(c["start"]) * 1000] = (c, event_ns)
    newest = max(last)
    return [
        Candle(
            exchange="coinbase",
            symbol=product,
            timeframe="5m",
            start=s,
            open=c["open"],
            high=c["high"],
            low=c["low"],
            close=c["close"],
            volume=c["volume"],
            closed=s < newest,
            event_ns=e,
        )
        for s, (c, e) in sorted(last.items())
    ]


# ---------------------------------------------------------------------------------------- pandas oracle

_RULES: dict[str, tuple[str, dict[str, str]]] = {
    "3m": ("3min", {"origin": "epoch"}), "5m": ("5min", {"origin": "epoch"}), "15m": ("15min", {"origin": "epoch"}),
    "30m": ("30min", {"origin": "epoch"}), "1h": ("1h", {"origin": "epoch"}), "4h": ("4h", {"origin": "epoch"}),
    "1d": ("1D", {"origin": "epoch"}), "3d": ("3D", {"origin": "epoch"}),
    "1w": ("W-MON", {"closed": "left", "label": "left"}), "1M": ("MS", {}),
}  # fmt: skip
_DECIMALS = ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_volume")


def _places(values: Iterable[str]) -> int:
    return max(len(v.partition(".")[2]) for v in values)


def scaled(value: str, places: int) -> int:
    """``value`` * 10**places as an exact int (plain string arithmetic: independent of Decimal rendering)."""
    whole, _, frac = value.partition(".")
    assert len(frac) <= places
    sign = -1 if whole.startswith("-") else 1
    return sign * int(whole.lstrip("-") + frac.ljust(places, "0"))


def pandas_rollup(base: list[Candle], timeframe: str) -> tuple[pd.DataFrame, int]:
    cols = [f for f in _DECIMALS if all(getattr(c, f) is not None for c in base)]
    places = _places(str(getattr(c, f)) for c in base for f in cols)
    frame: dict[str, object] = {f: [scaled(str(getattr(c, f)), places) for c in base] for f in cols}
    if all(c.trades is not None for c in base):
        frame["trades"] = [c.trades for c in base]
    frame["n"] = [1] * len(base)
    df = pd.DataFrame(frame, index=pd.to_datetime([c.start for c in base], unit="ms")).astype("Int64")
    rule, kw = _RULES[timeframe]
    how = {"open": "first", "high": "max", "low": "min", "close": "last", "n": "count"}
    agg = df.resample(rule, **kw).agg({col: how.get(col, "sum") for col in df.columns})  # type: ignore[arg-type]
    return agg[agg["n"] > 0], places


def rollups_by_bucket(base: list[Candle], timeframe: str) -> dict[int, Rollup]:
    buckets: dict[int, list[Candle]] = {}
    for c in base:
        buckets.setdefault(bucket_start(timeframe, c.start), []).append(c)
    return {s: rollup(parts, timeframe) for s, parts in buckets.items()}


def assert_equals_pandas(base: list[Candle], timeframe: str) -> dict[int, Rollup]:
    got = rollups_by_bucket(base, timeframe)
    oracle, places = pandas_rollup(base, timeframe)
    assert len(oracle) == len(got) > 0
    epoch = pd.Timestamp(0)
    for ts, row in oracle.iterrows():
        start = int((pd.Timestamp(str(ts)) - epoch) // pd.Timedelta(1, "ms"))
        r = got[start]
        for f in _DECIMALS:
            value = getattr(r.candle, f)
            if f in oracle.columns:
                assert scaled(value, places) == int(row[f]), (timeframe, start, f, value, row[f])
            else:
                assert value is None
        assert r.candle.trades == (int(row["trades"]) if "trades" in oracle.columns else None)
        assert r.count == int(row["n"])
    return got


# ------------------------------------------------------------------------------------ real data vs pandas


@pytest.mark.parametrize("timeframe", ["3m", "5m", "15m", "30m", "1h"])
def test_binance_1m_rollups_equal_pandas_exactly(timeframe: str) -> None:
    assert_equals_pandas(binance_1m(), timeframe)


@pytest.mark.parametrize("timeframe", ["3m", "5m", "15m", "30m", "1h"])
def test_coinbase_1m_rollups_equal_pandas_exactly(timeframe: str) -> None:
    got = assert_equals_pandas(coinbase_rest(COINBASE_1M, "ETH-USD", "1m", captured_ms=CAPTURED_MS), timeframe)
    assert all(r.candle.quote_volume is None and r.candle.trades is None for r in got.values())


@pytest.mark.parametrize("timeframe", ["15m", "30m", "1h", "4h"])
@pytest.mark.parametrize("product", ["ETH-USD", "BTC-USD"])
def test_coinbase_5m_session_rollups_equal_pandas_and_count_real_gaps(product: str, timeframe: str) -> None:
    base = coinbase_ws_5m(product)
    got = assert_equals_pandas(base, timeframe)
    if product == "BTC-USD":  # illiquid 5-minute buckets are simply absent from Coinbase's candles
        assert any(not r.complete for r in got.values())
    for r in got.values():
        assert r.expected == expected_count("5m", timeframe, r.candle.start)


@pytest.mark.parametrize("timeframe", ["3d", "1w", "1M"])
def test_algo_daily_rollups_to_3d_weeks_and_months_equal_pandas(timeframe: str) -> None:
    base = algo_1d()
    assert len(base) == 781
    got = assert_equals_pandas(base, timeframe)
    starts = sorted(got)
    # Complete everywhere but the first and last bucket (2021-01-01 is a Friday; the data ends 2023-02-20).
    assert all(got[s].complete and got[s].candle.closed for s in starts[1:-1])
    first, last = got[starts[0]], got[starts[-1]]
    if timeframe == "1w":
        assert pd.Timestamp(starts[0], unit="ms").day_name() == "Monday"
        assert (first.count, first.expected, first.candle.closed) == (3, 7, True)  # Fri..Sun of its week
        assert (last.count, last.expected, last.candle.closed) == (1, 7, False)  # Monday 2023-02-20 only
    if timeframe == "1M":
        assert (first.count, first.expected) == (31, 31)
        assert (last.count, last.expected, last.candle.closed) == (20, 28, False)


def test_binance_bucket_states_at_capture_time() -> None:
    base = binance_1m()  # 10:06..10:25, the 10:25 minute still open
    by5 = rollups_by_bucket(base, "5m")
    at = {pd.Timestamp(s, unit="ms").strftime("%H:%M"): r for s, r in by5.items()}
    assert {k: (r.count, r.expected, r.candle.closed) for k, r in at.items()} == {
        "10:05": (4, 5, True),  # 10:06..10:09: incomplete (10:05 is before the window) but its last minute closed
        "10:10": (5, 5, True),
        "10:15": (5, 5, True),
        "10:20": (5, 5, True),
        "10:25": (1, 5, False),  # the open minute
    }
    # Binance renders every decimal with 8 places; sums keep that form.
    for r in by5.values():
        for f in ("volume", "quote_volume", "taker_buy_volume"):
            assert len(str(getattr(r.candle, f)).partition(".")[2]) == 8


@pytest.mark.parametrize(
    ("chain", "direct"),
    [(("5m", "15m"), "15m"), (("5m", "15m", "1h"), "1h"), (("3m", "15m"), "15m"), (("30m",), "1h")],
)
def test_binance_chain_equals_direct(chain: tuple[str, ...], direct: str) -> None:
    level: list[Candle | Rollup] = list(binance_1m())
    for tf in chain:
        buckets: dict[int, list[Candle | Rollup]] = {}
        for p in level:
            c = p.candle if isinstance(p, Rollup) else p
            buckets.setdefault(bucket_start(tf, c.start), []).append(p)
        level = [rollup(parts, tf) for parts in buckets.values()]
    if chain[-1] != direct:
        level = [rollup(level, direct)]
    assert {r.candle.start: r for r in level if isinstance(r, Rollup)} == rollups_by_bucket(binance_1m(), direct)


# ------------------------------------------------------------------------------------------- semantics


def c1m(i: int, *, o: str = "10", h: str = "12", lo: str = "9", c: str = "11", v: str = "1", closed: bool = True,
        event_ns: int | None = None, trades: int | None = 1) -> Candle:  # fmt: skip
    return Candle(
        exchange="binance", symbol="ETH-USDT", timeframe="1m", start=i * 60_000, open=o, high=h, low=lo, close=c,
        volume=v, quote_volume=v, trades=trades, taker_buy_volume=v, closed=closed,
        event_ns=(i + 1) * 60_000 * MS if event_ns is None else event_ns,
    )  # fmt: skip


def test_rollup_closes_with_its_last_base_candle() -> None:
    parts = [c1m(0), c1m(1), c1m(2), c1m(3), c1m(4, closed=False)]
    r, ev = apply_rollup(None, parts, "5m")
    assert not r.candle.closed and ev is None and r.complete
    r2, ev2 = apply_rollup(r.candle, [*parts[:4], c1m(4)], "5m")
    assert r2.candle.closed and ev2 == CandleClosed(candle=r2.candle)
    # The last base candle closed but one in the middle is missing: closed, and visibly incomplete.
    r3 = rollup([c1m(0), c1m(1), c1m(3), c1m(4)], "5m")
    assert r3.candle.closed and (r3.count, r3.expected, r3.complete) == (4, 5, False)
    # The last base candle missing: open until the watermark closes it.
    r4 = rollup([c1m(0), c1m(1)], "5m")
    assert not r4.candle.closed
    [closed] = close_due([r4.candle], 300_000 * MS, grace_ms=0)
    # A changed base candle with the last minute still missing: the watermark close stays (a correction).
    r45, ev45 = apply_rollup(closed.candle, [c1m(0), c1m(1, c="12")], "5m")
    assert r45.candle.closed and r45.candle.close == "12" and ev45 is not None and ev45.correction
    # ...and a late last minute then corrects it, the close staying sticky.
    r5, ev5 = apply_rollup(closed.candle, [c1m(0), c1m(1), c1m(4, c="13", h="13")], "5m")
    assert r5.candle.closed and r5.candle.close == "13" and ev5 is not None and ev5.correction


def test_base_correction_recomputes_and_emits_a_correction_once() -> None:
    parts = [c1m(i) for i in range(5)]
    r, ev = apply_rollup(None, parts, "5m")
    assert ev is not None and not ev.correction
    late, base_ev = apply_snapshot(parts[2], c1m(2, h="20", v="2", event_ns=999 * 60_000 * MS))
    assert base_ev is not None and base_ev.correction
    parts[2] = late
    r2, ev2 = apply_rollup(r.candle, parts, "5m")
    assert ev2 == CandleClosed(candle=r2.candle, correction=True)
    assert r2.candle.high == "20" and r2.candle.volume == "6" and r2.candle.event_ns == 999 * 60_000 * MS
    assert apply_rollup(r2.candle, reversed(parts), "5m") == (r2, None)  # idempotent, order-insensitive
    # A base change that only moves event time is no correction.
    parts[0] = c1m(0, event_ns=1000 * 60_000 * MS)
    r3, ev3 = apply_rollup(r2.candle, parts, "5m")
    assert ev3 is None and r3.candle.same_values(r2.candle)


def test_sums_keep_the_widest_input_precision_and_optional_fields_need_every_part() -> None:
    r = rollup([c1m(0, v="1.5"), c1m(1, v="2.25"), c1m(2, v="3")], "5m")
    assert r.candle.volume == "6.75"
    r = rollup([c1m(0, v="1.25"), c1m(1, v="2.75")], "5m")
    assert r.candle.volume == "4.00"
    r = rollup([c1m(0, v="0.00000001"), c1m(1, v="12345678901234567890.1")], "5m")
    assert r.candle.volume == "12345678901234567890.10000001"  # no rounding at any size
    r = rollup([c1m(0), c1m(1, trades=None)], "5m")
    assert r.candle.trades is None and r.candle.quote_volume == "2"
    r = rollup([c1m(0, h="12.0"), c1m(1, h="12"), c1m(2, h="11.99")], "5m")
    assert r.candle.high == "12.0"  # equal values: the earliest base candle's spelling


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="at least one"):
        rollup([], "5m")
    with pytest.raises(ValueError, match="not in the 5m bucket"):
        rollup([c1m(0), c1m(5)], "5m")
    with pytest.raises(ValueError, match="two different"):
        rollup([c1m(0), c1m(0, c="12")], "5m")
    with pytest.raises(ValueError, match="mixed series"):
        rollup([c1m(0), msgspec.structs.replace(c1m(1), symbol="BTC-USDT")], "5m")
    day = [msgspec.structs.replace(c1m(0), timeframe="3d", start=0)]
    with pytest.raises(ValueError, match="do not nest"):
        rollup(day, "1w")
    with pytest.raises(ValueError, match="do not nest"):
        rollup([msgspec.structs.replace(c1m(0), timeframe="1w", start=4 * DAY_MS)], "1M")
    with pytest.raises(ValueError, match="not the bucket"):
        apply_rollup(c1m(5), [c1m(0)], "5m")


def test_nesting_plan_and_base_starts() -> None:
    assert nests("1d", "1w") and nests("4h", "1w") and nests("1d", "1M") and nests("8h", "1M")
    assert not nests("3d", "1w") and not nests("1w", "1M") and not nests("3d", "1M") and not nests("5m", "3m")
    assert plan("1m", ["5m", "15m", "1h", "4h", "1d", "1w", "1M"]) == {
        "5m": "1m", "15m": "5m", "1h": "15m", "4h": "1h", "1d": "4h", "1w": "1d", "1M": "1d",
    }  # fmt: skip
    assert plan("1m", ["3d", "1w"]) == {"3d": "1m", "1w": "1m"}
    with pytest.raises(ValueError, match="cannot"):
        plan("5m", ["1m"])
    feb = int((pd.Timestamp("2024-02-01") - pd.Timestamp(0)) // pd.Timedelta(1, "ms"))
    assert len(base_starts("1d", "1M", feb)) == expected_count("1d", "1M", feb) == 29
    assert base_starts("1h", "4h", 0) == [0, 3_600_000, 7_200_000, 10_800_000]
    for base in TIMEFRAMES:
        for target in TIMEFRAMES:
            if nests(base, target):
                start = bucket_start(target, 1_791_282_309_000)
                assert base_starts(base, target, start)[0] == start
                assert bucket_end(base, base_starts(base, target, start)[-1]) == bucket_end(target, start)


# ------------------------------------------------------------------------------------ hypothesis algebra

_DECIMAL = st.builds(
    lambda units, places: f"{Decimal(units).scaleb(-places):f}",
    st.integers(0, 10**12),
    st.integers(0, 8),
)


@st.composite
def series(draw: st.DrawFn, base: str, span: str, max_size: int = 40) -> list[Candle]:
    """Some candles of ``base`` inside one ``span`` bucket (gaps allowed), with closed flags and event times."""
    span_start = bucket_start(span, draw(st.integers(0, 4_000_000_000_000)))
    starts = base_starts(base, span, span_start)
    idx = draw(st.lists(st.integers(0, len(starts) - 1), min_size=1, max_size=max_size, unique=True))
    out = []
    for i in sorted(idx):
        prices = sorted(draw(st.lists(_DECIMAL, min_size=4, max_size=4)), key=Decimal)
        o, c = draw(st.permutations(prices[1:3]))
        out.append(
            Candle(
                exchange="binance",
                symbol="ETH-USDT",
                timeframe=base,
                start=starts[i],
                open=o,
                high=prices[3],
                low=prices[0],
                close=c,
                volume=draw(_DECIMAL),
                quote_volume=draw(_DECIMAL),
                trades=draw(st.none() | st.integers(0, 10**6)),
                taker_buy_volume=draw(_DECIMAL),
                closed=draw(st.booleans()),
                event_ns=draw(st.integers(0, 2**62)),
            )
        )
    return out


def python_oracle(base: list[Candle]) -> tuple[Decimal, ...]:
    ordered = sorted(base, key=lambda c: c.start)
    return (
        Decimal(ordered[0].open),
        max(Decimal(c.high) for c in base),
        min(Decimal(c.low) for c in base),
        Decimal(ordered[-1].close),
        sum((Decimal(c.volume) for c in base), Decimal(0)),
        sum((Decimal(str(c.quote_volume)) for c in base), Decimal(0)),
    )


@settings(max_examples=150, deadline=None)
@given(base=series("1m", "1h"), seed=st.integers(0, 2**32))
def test_rollup_is_a_function_of_the_set_of_base_candles(base: list[Candle], seed: int) -> None:
    r = rollup(base, "1h")
    shuffled = list(base)
    random.Random(seed).shuffle(shuffled)
    assert rollup(shuffled, "1h") == r
    assert rollup(shuffled + shuffled[: len(base) // 2], "1h") == r  # repeats count once
    c = r.candle
    got = (Decimal(c.open), Decimal(c.high), Decimal(c.low), Decimal(c.close), Decimal(c.volume),
           Decimal(str(c.quote_volume)))  # fmt: skip
    assert got == python_oracle(base)
    assert r.count == len(base) and r.expected == 60
    assert c.closed == (max(base, key=lambda b: b.start).start == c.start + 59 * 60_000 and base[-1].closed)
    applied, _ = apply_rollup(None, shuffled, "1h")
    assert apply_rollup(applied.candle, base, "1h") == (applied, None)  # idempotent


def _chain(base: list[Candle], chain: Iterable[str]) -> list[Rollup]:
    level: list[Candle | Rollup] = list(base)
    for tf in chain:
        buckets: dict[int, list[Candle | Rollup]] = {}
        for p in level:
            start = (p.candle if isinstance(p, Rollup) else p).start
            buckets.setdefault(bucket_start(tf, start), []).append(p)
        level = [rollup(parts, tf) for _, parts in sorted(buckets.items())]
    return [p for p in level if isinstance(p, Rollup)]


@settings(max_examples=100, deadline=None)
@given(base=series("1m", "1h"))
def test_rollup_of_rollups_equals_direct_rollup_minutes(base: list[Candle]) -> None:
    direct15 = _chain(base, ["15m"])
    assert _chain(base, ["5m", "15m"]) == direct15
    assert _chain(base, ["3m", "15m"]) == direct15
    assert _chain(base, ["5m", "15m", "1h"]) == _chain(base, ["1h"]) == _chain(base, ["30m", "1h"])


@settings(max_examples=60, deadline=None)
@given(base=series("4h", "1M"))
def test_rollup_of_rollups_equals_direct_rollup_calendar(base: list[Candle]) -> None:
    assume(len(base) > 0)
    assert _chain(base, ["1d", "1M"]) == _chain(base, ["12h", "1d", "1M"]) == _chain(base, ["1M"])
    assert _chain(base, ["1d", "1w"]) == _chain(base, ["1w"])
    [month] = _chain(base, ["1M"])
    assert (
        month.expected
        == expected_count("4h", "1M", month.candle.start)
        == 6 * bucket_end("1M", month.candle.start) // DAY_MS - 6 * month.candle.start // DAY_MS
    )


@pytest.mark.unit
@given(
    st.one_of(
        st.decimals(allow_nan=True, allow_infinity=True).map(str),
        st.from_regex(r"\A\s?-?[0-9]{1,4}(\.[0-9]{0,9})?([eE][-+]?[0-9]{1,2})?\s?\Z"),
    )
)
def test_decimal_places_read_off_the_text_are_decimals_own(text: str) -> None:
    exp = Decimal(text).as_tuple().exponent  # the oracle: how many places Decimal sees
    assert rollups._places(text) == (-exp if isinstance(exp, int) and exp < 0 else 0)
