"""The faster roll-up code against the roll-up code as it was (copied below as the oracle, unchanged):
the same ``Rollup``, the same events, or the same exception (type and message), for any parts.

Generated parts: shuffled, identical repeats and different repeats, equal highs/lows spelled differently
("100" / "100.0" / "1E+2"), exponent forms ("1E-7"), many places, underscores, None quote/taker/trades,
open/closed parts, lower roll-ups (``Rollup`` parts) with matching or mismatching leaves, mixed series,
parts outside the bucket, non-nesting timeframes, month and week buckets, and NaN/garbage text.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections import rollups
from projections.candles import Candle, CandleClosed
from projections.rollups import SOURCE, Rollup, expected_count, nests
from projections.watermark import bucket_end, bucket_start, bucket_starts

pytestmark = pytest.mark.unit

# ------------------------------------------------------- the oracle: projections/rollups.py before the speed-up

_EXACT = rollups._EXACT
_UNROUNDED = rollups._UNROUNDED
_ZERO = rollups._ZERO
_places = rollups._places  # unchanged


def _sum(values: list[str]) -> str:
    if values and not any("_" in v for v in values):
        try:  # no rounding at all: each sum's exponent is its terms' smallest (and 0's), what _places reads
            total = _ZERO
            for v in values:
                total = _UNROUNDED.add(total, Decimal(v))
            if total.is_finite():
                return f"{total:f}"  # it has max(_places(v)) places already, as the quantize below gives it
        except ArithmeticError:
            pass  # rounded (maybe exactly), or worse: the code below decides, as it always did
    total = Decimal(0)
    for v in values:
        total = _EXACT.add(total, Decimal(v))
    places = max(_places(v) for v in values)
    return f"{total.quantize(Decimal(1).scaleb(-places), context=_EXACT):f}"


def _sum_opt(values: list[str | None]) -> str | None:
    present = [v for v in values if v is not None]
    return _sum(present) if len(present) == len(values) else None


def _part(p: Candle | Rollup) -> tuple[Candle, str, int]:
    if isinstance(p, Rollup):
        return p.candle, p.base_timeframe, p.count
    return p, p.timeframe, 1


def oracle_rollup(parts: Iterable[Candle | Rollup], timeframe: str) -> Rollup:
    by_start: dict[int, tuple[Candle, str, int]] = {}
    for p in parts:
        c, leaf, n = _part(p)
        seen = by_start.get(c.start)
        if seen is not None and seen != (c, leaf, n):
            raise ValueError(f"two different {c.timeframe} candles for start {c.start}")
        by_start[c.start] = (c, leaf, n)
    if not by_start:
        raise ValueError("a roll-up needs at least one base candle")
    items = [by_start[s] for s in sorted(by_start)]
    first, leaf, _ = items[0]
    start = bucket_start(timeframe, first.start)
    for c, lf, _ in items:
        key = (c.exchange, c.symbol, c.timeframe, lf)
        if key != (first.exchange, first.symbol, first.timeframe, leaf):
            raise ValueError(f"mixed series in one roll-up: {key} vs {(first.exchange, first.symbol, first.timeframe)}")
        if bucket_start(timeframe, c.start) != start:
            raise ValueError(f"{c.timeframe} candle {c.start} is not in the {timeframe} bucket {start}")
    if not nests(first.timeframe, timeframe) or not nests(leaf, timeframe):
        raise ValueError(f"{first.timeframe} buckets do not nest in {timeframe} buckets")
    candles = [c for c, _, _ in items]
    last = candles[-1]
    high = max(candles, key=lambda c: (Decimal(c.high), -c.start)).high
    low = min(candles, key=lambda c: (Decimal(c.low), c.start)).low
    trades = [c.trades for c in candles]
    end = bucket_end(timeframe, start)
    candle = Candle(
        exchange=first.exchange, symbol=first.symbol, timeframe=timeframe, start=start, open=first.open, high=high,
        low=low, close=last.close, volume=_sum([c.volume for c in candles]),
        quote_volume=_sum_opt([c.quote_volume for c in candles]),
        trades=None if any(t is None for t in trades) else sum(t for t in trades if t is not None),
        taker_buy_volume=_sum_opt([c.taker_buy_volume for c in candles]),
        closed=last.closed and bucket_end(last.timeframe, last.start) == end,
        event_ns=max(c.event_ns for c in candles), source=SOURCE,
    )  # fmt: skip
    return Rollup(
        candle=candle,
        base_timeframe=leaf,
        count=sum(n for _, _, n in items),
        expected=expected_count(leaf, timeframe, start),
    )


def oracle_apply_rollup(
    current: Candle | None, parts: Iterable[Candle | Rollup], timeframe: str
) -> tuple[Rollup, CandleClosed | None]:
    r = oracle_rollup(parts, timeframe)
    new = r.candle
    if current is not None:
        if (current.exchange, current.symbol, current.timeframe, current.start) != (
            new.exchange, new.symbol, new.timeframe, new.start
        ):  # fmt: skip
            raise ValueError("the stored roll-up is not the bucket being recomputed")
        new = msgspec.structs.replace(
            new, closed=new.closed or current.closed, event_ns=max(new.event_ns, current.event_ns)
        )
        r = msgspec.structs.replace(r, candle=new)
    if current is None:
        return r, (CandleClosed(candle=new) if new.closed else None)
    if new == current:
        return r, None
    if current.closed:
        return r, (None if new.same_values(current) else CandleClosed(candle=new, correction=True))
    return r, (CandleClosed(candle=new) if new.closed else None)


# ------------------------------------------------------------------------------------------- generated parts

EQUAL_SPELLINGS = ["100", "100.0", "100.00", "1E+2", "1.00E+2", "0100.0", "99.99", "100.01", "1E-7", "0.0000001"]
TEXT = st.one_of(
    st.sampled_from(EQUAL_SPELLINGS),
    st.from_regex(r"\A[0-9]{1,6}\.[0-9]{1,12}\Z"),  # many places
    st.from_regex(r"\A\s?-?[0-9]{1,4}(_[0-9])?(\.[0-9]{0,9})?([eE][-+]?[0-9]{1,2})?\s?\Z"),
    st.decimals(allow_nan=False, allow_infinity=False, places=8).map(str),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.integers(-(10**70), 10**70).map(str),
)
REALISTIC = st.one_of(st.sampled_from(EQUAL_SPELLINGS), st.from_regex(r"\A[0-9]{1,5}\.[0-9]{1,8}\Z"))
PAIRS = [
    ("1m", "5m"), ("1m", "15m"), ("5m", "15m"), ("15m", "1h"), ("1h", "4h"), ("4h", "1d"), ("1m", "1d"),
    ("1d", "1w"), ("4h", "1w"), ("1d", "1M"), ("4h", "1M"), ("1M", "1M"), ("1m", "1m"), ("3m", "5m"), ("1w", "1M"),
    ("3d", "1w"),
]  # fmt: skip


@st.composite
def candle(draw: st.DrawFn, timeframe: str, start: int, text: st.SearchStrategy[str]) -> Candle:
    return Candle(
        exchange="coinbase",
        symbol="BTC-USD",
        timeframe=timeframe,
        start=start,
        open=draw(text),
        high=draw(text),
        low=draw(text),
        close=draw(text),
        volume=draw(text),
        quote_volume=draw(st.none() | text) if draw(st.booleans()) else draw(text),
        trades=draw(st.none() | st.integers(0, 10**6)) if draw(st.booleans()) else draw(st.integers(0, 10**6)),
        taker_buy_volume=draw(st.none() | text) if draw(st.booleans()) else draw(text),
        closed=draw(st.booleans()),
        event_ns=draw(st.integers(0, 2**62)),
        source=draw(st.sampled_from(["trades", "native", "rest", SOURCE])),
    )


@st.composite
def scenario(draw: st.DrawFn) -> tuple[list[Candle | Rollup], str]:
    """Parts of (mostly) one bucket, then maybe broken in one of the ways ``rollup`` must reject."""
    base, target = draw(st.sampled_from(PAIRS))
    text = draw(st.sampled_from([REALISTIC, TEXT]))
    span = bucket_start(target, draw(st.integers(0, 4_000_000_000_000)))
    starts = bucket_starts(base, span, bucket_end(target, span))[:60]
    chosen = draw(
        st.lists(st.sampled_from(starts), min_size=draw(st.sampled_from([0] + [1] * 9)), max_size=12, unique=True)
    )
    parts: list[Candle | Rollup] = [draw(candle(base, s, text)) for s in chosen]
    wrap: bool = draw(st.booleans())
    if parts and wrap:  # some parts are lower roll-ups (leaf counts)
        leaf = draw(st.sampled_from(["1m", "5m", base]))
        for i in draw(st.lists(st.integers(0, len(parts) - 1), max_size=len(parts))):
            c = parts[i]
            if isinstance(c, Candle):
                n = draw(st.integers(1, 5))
                parts[i] = Rollup(
                    candle=c, base_timeframe=draw(st.sampled_from([leaf, leaf, "1h"])), count=n, expected=n
                )
    if parts:
        for i in draw(st.lists(st.integers(0, len(parts) - 1), max_size=4)):  # identical repeats
            parts.append(parts[i])
    breakage = draw(st.sampled_from(["none"] * 6 + ["different", "series", "outside", "rollup_twin"]))
    if parts and breakage == "different":
        p = draw(st.sampled_from(parts))
        c = p.candle if isinstance(p, Rollup) else p
        parts.append(msgspec.structs.replace(c, volume=c.volume + "1", closed=not c.closed))
    elif parts and breakage == "series":
        p = draw(st.sampled_from(parts))
        c = p.candle if isinstance(p, Rollup) else p
        field = draw(st.sampled_from(["exchange", "symbol", "timeframe"]))
        other = {"exchange": "binance", "symbol": "ETH-USD", "timeframe": draw(st.sampled_from(["1m", "5m", "1h"]))}
        moved = msgspec.structs.replace(c, **{field: other[field]}, start=c.start + draw(st.sampled_from([0, 1])))
        parts.append(moved)
    elif breakage == "outside":
        parts.append(draw(candle(base, bucket_end(target, span), text)))
    elif parts and breakage == "rollup_twin":  # a Candle and a Rollup of one start: equal tuples or not
        p = draw(st.sampled_from(parts))
        c = p.candle if isinstance(p, Rollup) else p
        parts.append(Rollup(candle=c, base_timeframe=c.timeframe, count=1, expected=draw(st.integers(1, 3))))
    random.Random(draw(st.integers(0, 2**32))).shuffle(parts)
    return parts, target


def outcome(f: Callable[..., object], *args: object) -> object:
    try:
        return f(*args)
    except Exception as exc:  # the same exception type and message
        return ("raised", type(exc), str(exc))


@settings(max_examples=120, deadline=None)
@given(scenario())
def test_rollup_equals_the_original(case: tuple[list[Candle | Rollup], str]) -> None:
    parts, timeframe = case
    assert outcome(rollups.rollup, parts, timeframe) == outcome(oracle_rollup, parts, timeframe)
    assert outcome(rollups.rollup, iter(parts), timeframe) == outcome(oracle_rollup, iter(parts), timeframe)


@settings(max_examples=80, deadline=None)
@given(scenario(), st.data())
def test_apply_rollup_equals_the_original(case: tuple[list[Candle | Rollup], str], data: st.DataObject) -> None:
    parts, timeframe = case
    current: Candle | None = None
    expected = outcome(oracle_rollup, parts, timeframe)
    if isinstance(expected, Rollup) and data.draw(st.booleans()):
        c = expected.candle
        current = msgspec.structs.replace(
            c,
            closed=data.draw(st.booleans()),
            event_ns=data.draw(st.sampled_from([c.event_ns, c.event_ns + 1, max(c.event_ns - 1, 0)])),
            volume=data.draw(st.sampled_from([c.volume, c.volume + "0", "7"])),
            source=data.draw(st.sampled_from([c.source, "rest"])),
            start=data.draw(st.sampled_from([c.start] * 5 + [c.start + 1])),
        )
    assert outcome(rollups.apply_rollup, current, parts, timeframe) == outcome(
        oracle_apply_rollup, current, parts, timeframe
    )


@pytest.mark.parametrize(
    "highs, lows",
    [
        (["100.0", "100.00", "1E+2"], ["100.00", "100.0", "1E+2"]),
        (["NaN", "1"], ["1", "2"]),
        (["1", "NaN"], ["1", "2"]),
        (["NaN"], ["sNaN"]),
        (["1", "sNaN"], ["1", "2"]),
        (["1", "x"], ["NaN", "2"]),
        (["Infinity", "1"], ["-Infinity", "-Infinity"]),
        (["1E-7", "0.0000001", "1e-7"], ["0.00000010", "1.0E-7", "1E-7"]),
    ],
)
def test_highs_and_lows_equal_the_original_on_odd_text(highs: list[str], lows: list[str]) -> None:
    parts = [
        Candle(exchange="x", symbol="A-B", timeframe="1m", start=60_000 * i, open="1", high=h, low=lo, close="1",
               volume="1", event_ns=i)
        for i, (h, lo) in enumerate(zip(highs, lows, strict=True))
    ]  # fmt: skip
    for order in (parts, parts[::-1]):
        assert outcome(rollups.rollup, order, "5m") == outcome(oracle_rollup, order, "5m")


def test_month_bucket_at_the_end_of_time_raises_as_before() -> None:
    start = bucket_start("1M", 253_400_000_000_000)  # December 9999: its end is not a date
    last_day = bucket_start("1d", start + 30 * 86_400_000)
    for days in ([start], [start, last_day]):
        parts = [
            Candle(exchange="x", symbol="A-B", timeframe="1d", start=s, open="1", high="1", low="1", close="1",
                   volume="1", event_ns=1)
            for s in days
        ]  # fmt: skip
        assert outcome(rollups.rollup, parts, "1M") == outcome(oracle_rollup, parts, "1M")
        mixed = [*parts, msgspec.structs.replace(parts[0], symbol="C-D", start=parts[0].start + 86_400_000)]
        assert outcome(rollups.rollup, mixed, "1M") == outcome(oracle_rollup, mixed, "1M")
