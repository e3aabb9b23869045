"""The Coinbase trade fold's fast paths against plain restatements of what they replace.

* :func:`streams.frames.parse_rfc3339_ns` (each second's and minute's time cached) against the parser as it
  was before the caches (kept here): the same nanoseconds, or the same error and message, for the exchanges'
  form, other zones, missing or long fractions, non-ASCII digits, seconds 60, hours 24, bad dates.
* :func:`streams.frames.decode_coinbase` (a ``market_trades`` frame decoded in one pass) against the
  envelope-then-events decode: the same frame, or the same dead-letter reason, for every recorded frame and
  for broken variants of the recorded trade frames.
* :func:`projections.trades.apply_trades` (a run of trades folded into one copy of the bucket, the ids merged
  at the end) against :func:`apply_trade` as it was (a copy and a ``_add_id`` per trade): the same bucket,
  ``Decimal`` for ``Decimal`` down to the exponent and sign (so the same rounding in the default context:
  more than 28 digits, ``1E60``, negative and zero sizes), or the same error.
* :meth:`processors.candles.CandleProcessor.fold` with trades (trades grouped per bucket, trade candles built
  when read) against the rules restated entry by entry, trade by trade: close events, candles, trade
  states and late-trade dead letters.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.candles import CandleProcessor, DeadLetter, Item, Plan
from projections.candles import Candle, CandleBook, CandleClosed
from projections.rollups import SOURCE as ROLLUP
from projections.trades import Trade, TradeBucket, apply_trade, apply_trades, to_candle
from projections.watermark import bucket_end, close_due
from streams import keys
from streams.frames import (
    _COINBASE_ENVELOPE,
    _COINBASE_EVENTS,
    CoinbaseFrame,
    Ignored,
    _tickfold,
    decode_coinbase,
    parse_rfc3339_ns,
)
from streams.symbols import SymbolMap
from tests.realdata import COINBASE_AT, require
from tests.synthetic import synthetic_day
from tickfold.errors import FrameDecodeError

pytestmark = pytest.mark.unit

# ------------------------------------------------------------------------------------- timestamps


def reference_parse(text: str) -> int:
    """parse_rfc3339_ns before its caches (streams/frames.py at 43b88f9), uncached."""
    if len(text) > 21 and text[19] == "." and text[-1] == "Z":
        digits = text[20:-1]
        if len(digits) <= 9 and digits.isdigit():
            second = text[:19]
            return int(datetime.fromisoformat(second + "+00:00").timestamp()) * 1_000_000_000 + int(
                digits.ljust(9, "0")
            )
    head, dot, rest = text.partition(".")
    if not dot:
        return int(datetime.fromisoformat(text).timestamp()) * 1_000_000_000
    digits = rest
    tz = ""
    for i, ch in enumerate(rest):
        if not ch.isdigit():
            digits, tz = rest[:i], rest[i:]
            break
    if not digits or len(digits) > 9:
        raise ValueError(f"bad fraction in timestamp {text!r}")
    seconds = datetime.fromisoformat(head + (tz or "Z"))
    if seconds.tzinfo is None:
        raise ValueError(f"timestamp without zone {text!r}")
    return int(seconds.timestamp()) * 1_000_000_000 + int(digits.ljust(9, "0"))


def outcome(f: Any, *args: Any) -> tuple[str, object]:
    try:
        return ("ok", f(*args))
    except Exception as exc:  # the error itself is what is compared
        return (type(exc).__name__, str(exc))


EDGES = [
    "2026-08-09T21:05:48.228568804Z", "2026-08-09T21:05:48.2Z", "2026-08-09T21:05:48.000000000Z",
    "2026-08-09T21:05:48.1234567890Z", "2026-08-09T21:05:48Z", "2026-08-09T21:05:48.Z", "2026-08-09T21:05:48.5+02:00",
    "2026-08-09T21:05:48.5-00:30", "2026-08-09T21:05:48.5", "2026-08-09T21:05:48", "2026-08-09T21:05:60.5Z",
    "2026-08-09T21:05:59.999999999Z", "2026-08-09T24:00:00.1Z", "2026-08-09T23:60:00.1Z", "2026-02-30T10:00:00.1Z",
    "2026-13-01T10:00:00.1Z", "0000-01-01T00:00:00.1Z", "0001-01-01T00:00:00.1Z", "9999-12-31T23:59:59.9Z",
    "1969-12-31T23:59:59.5Z", "2026-08-09 21:05:48.5Z", "2026-08-09T21:05:4٣.5Z", "2026-08-09T21:05:48.٣Z",
    "2026-08-09T21:05:48.²Z", "2026-08-09T21:0٣:48.5Z", "٢026-08-09T21:05:48.5Z", "2026-W32-1T21:05:48.5Z",
    "20260809T210548.5Z", "2026-08-09T21:05:48.+5Z", "2026-08-09T21:05:48.-5Z", "2026-08-09T21:05:48.5_0Z",
    "2026-08-09T21:05:48. 5Z", "2026-08-09T21:05:48.5 Z", "2026-08-09T21:05:48.5z", "garbage", "", "Z",
    "2026-08-09T21:05:48.123456789ZZ", "2026-08-09T21:05:+8.5Z", "2026-08-09T21:05: 8.5Z", "2026-08-09T21:5:48.5Z",
    "2026-08-09T21:05:48,5Z", "2026-08-09T21:05:48.5Z ", " 2026-08-09T21:05:48.5Z",
]  # fmt: skip


@pytest.mark.parametrize("text", EDGES)
def test_the_cached_parse_gives_what_the_parser_gave(text: str) -> None:
    assert outcome(parse_rfc3339_ns, text) == outcome(reference_parse, text)
    assert outcome(parse_rfc3339_ns, text) == outcome(reference_parse, text)  # again, from the caches


DIGIT = st.sampled_from("0123456789")
CHAR = st.sampled_from("0123456789-:T.Z+ ٣²x")


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    year = draw(st.integers(0, 9999))
    parts = [f"{year:04d}", "-", f"{draw(st.integers(0, 13)):02d}", "-", f"{draw(st.integers(0, 32)):02d}", "T"]
    parts += [f"{draw(st.integers(0, 25)):02d}", ":", f"{draw(st.integers(0, 61)):02d}", ":"]
    parts += [f"{draw(st.integers(0, 61)):02d}"]
    fraction = "".join(draw(st.lists(DIGIT, max_size=11)))
    parts += [
        draw(st.sampled_from([".", ".", ".", ""])),
        fraction,
        draw(st.sampled_from(["Z", "Z", "Z", "+01:00", ""])),
    ]
    text = "".join(parts)
    for _ in range(draw(st.integers(0, 2))):  # now and then a character replaced
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + draw(CHAR) + text[at + 1 :]
    return text


@settings(max_examples=2000, deadline=None)
@given(timestamps())
def test_any_timestamp_parses_as_before(text: str) -> None:
    assert outcome(parse_rfc3339_ns, text) == outcome(reference_parse, text)


def test_the_recorded_and_generated_times_parse_as_before() -> None:
    texts = []
    for raw in [*require(COINBASE_AT).read_text().splitlines(), *(f.decode() for f in synthetic_day()[:3000])]:
        msg = json.loads(raw)
        texts.append(msg["timestamp"])
        texts += [t["time"] for e in msg.get("events", []) for t in e.get("trades", [])]
    assert len(texts) > 3000
    assert [parse_rfc3339_ns(t) for t in texts] == [reference_parse(t) for t in texts]


# ------------------------------------------------------------------------------------------ decoding


def reference_decode(raw: bytes | str) -> object:
    """decode_coinbase before its one-pass path (streams/frames.py at 43b88f9)."""
    try:
        env = _COINBASE_ENVELOPE.decode(raw)
    except msgspec.DecodeError as exc:
        if (own := _tickfold("coinbase", raw)) is not None:
            return own
        raise FrameDecodeError(f"coinbase: not an Advanced Trade frame: {exc}") from None
    decoder = _COINBASE_EVENTS.get(env.channel)
    if decoder is None:
        return Ignored(f"channel {env.channel}")
    try:
        events = decoder.decode(env.events)
        ts = reference_parse(env.timestamp)
    except (msgspec.DecodeError, ValueError) as exc:
        raise FrameDecodeError(f"coinbase {env.channel}: {exc}") from None
    return CoinbaseFrame(env.channel, ts, env.sequence_num, events)  # type: ignore[arg-type]


def broken(frame: bytes) -> list[bytes]:
    """Variants of a recorded market_trades frame: each field of a trade wrong in a different way."""
    out = []
    msg = json.loads(frame)
    for field, bad in [("price", 1.5), ("size", None), ("trade_id", 7), ("time", "yesterday"), ("side", ["BUY"])]:
        m = json.loads(frame)
        m["events"][0]["trades"][0][field] = bad
        out.append(json.dumps(m, separators=(",", ":")).encode())
    m = json.loads(frame)
    del m["events"][0]["trades"][0]["product_id"]
    out.append(json.dumps(m, separators=(",", ":")).encode())
    replaced: list[tuple[str, object]] = [
        ("timestamp", "2026-08-09T21:05:48.1234567890Z"), ("timestamp", 5), ("sequence_num", "1"), ("events", {}),
        ("client_id", 3), ("extra", [1, 2]),
    ]  # fmt: skip
    for key, value in replaced:
        m = {**msg, key: value}
        out.append(json.dumps(m, separators=(",", ":")).encode())
    out.append(frame[:-1])  # cut short
    out.append(frame.replace(b'"market_trades"', b'"market_trades" ', 1))
    out.append(frame + b" ")
    m = dict(msg)
    m["events"] = [*msg["events"], {"type": "update", "trades": [], "more": 1}]
    out.append(json.dumps(m, separators=(",", ":")).encode())
    return out


def test_every_recorded_frame_and_its_broken_variants_decode_as_before() -> None:
    frames = [line.encode() for line in require(COINBASE_AT).read_text().splitlines()]
    trades = [f for f in frames if f.startswith(b'{"channel":"market_trades",')]
    assert len(trades) >= 50
    checked = 0
    for raw in [*frames, *(b for f in trades[:10] for b in broken(f)), *synthetic_day()[:500]]:
        for form in (raw, raw.decode()):
            assert outcome(decode_coinbase, form) == outcome(reference_decode, form)
            checked += 1
    assert checked > 1000


# ------------------------------------------------------------------------------------- the trade fold


def reference_add_id(ranges: list[tuple[int, int]], trade_id: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    lo, hi = trade_id, trade_id
    placed = False
    for a, b in ranges:
        if b < lo - 1:
            out.append((a, b))
        elif a > hi + 1:
            if not placed:
                out.append((lo, hi))
                placed = True
            out.append((a, b))
        else:
            lo, hi = min(lo, a), max(hi, b)
    if not placed:
        out.append((lo, hi))
    return out


def reference_apply_trade(bucket: TradeBucket | None, t: Trade, interval_ms: int) -> TradeBucket:
    """apply_trade as it was (projections/trades.py at 43b88f9): a copy per trade, sums in the default context."""
    start = t.time_ms - t.time_ms % interval_ms
    if bucket is None:
        return TradeBucket(
            start=start, open_id=t.trade_id, open=t.price, close_id=t.trade_id, close=t.price, high=t.price,
            low=t.price, volume=t.qty, quote_volume=t.price * t.qty,
            taker_buy_volume=t.qty if t.taker_buy else Decimal(0), trades=t.trades, last_time_ms=t.time_ms,
            ids=[(t.trade_id, t.trade_id)],
        )  # fmt: skip
    if bucket.start != start:
        raise ValueError(f"trade {t.trade_id} at {t.time_ms} does not belong to bucket {bucket.start}")
    if any(lo <= t.trade_id <= hi for lo, hi in bucket.ids):
        return bucket
    b = msgspec.structs.replace(bucket, ids=reference_add_id(bucket.ids, t.trade_id))
    if t.trade_id < b.open_id:
        b.open_id, b.open = t.trade_id, t.price
    if t.trade_id > b.close_id:
        b.close_id, b.close = t.trade_id, t.price
    b.high = max(b.high, t.price)
    b.low = min(b.low, t.price)
    b.volume += t.qty
    b.quote_volume += t.price * t.qty
    if t.taker_buy:
        b.taker_buy_volume += t.qty
    b.trades += t.trades
    b.last_time_ms = max(b.last_time_ms, t.time_ms)
    return b


def exact(b: TradeBucket) -> bytes:
    """The bucket as the trade state stores it (Decimals as their exact strings: exponent and sign too)."""
    return msgspec.msgpack.encode(b)


DECIMALS = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False),
    st.integers(-(10**40), 10**40).map(lambda n: Decimal(n).scaleb(-12)),  # more than 28 digits
    st.sampled_from(["0", "-0", "0.000", "-0.00", "1E60", "-1E60", "1E-60", "9" * 30, "0." + "9" * 30, "1E+5",
                     "123.4500", "-7.25", "0.1", "99999999999999999999999999.99", "1.0", "1.00"]).map(Decimal),
)  # fmt: skip


@st.composite
def runs(draw: st.DrawFn) -> tuple[TradeBucket | None, list[Trade]]:
    start = 1_786_233_600_000
    first = draw(st.integers(1, 50))
    trades = [
        Trade(
            exchange="coinbase",
            symbol="BTC-USD",
            trade_id=first + draw(st.integers(-6, 12)),
            price=draw(DECIMALS),
            qty=draw(DECIMALS),
            time_ms=start + draw(st.integers(0, 59_999)),
            taker_buy=draw(st.booleans()),
            trades=draw(st.integers(1, 3)),
        )
        for _ in range(draw(st.integers(1, 12)))
    ]
    bucket: TradeBucket | None = None
    if draw(st.booleans()):  # a kept bucket, its ids in one range or several
        for t in draw(st.lists(st.sampled_from(trades), min_size=1, max_size=4)):
            bucket = reference_apply_trade(bucket, t, 60_000)
        if bucket is not None and draw(st.booleans()):
            bucket = msgspec.structs.replace(
                bucket, ids=[(first - 30, first - 28), *bucket.ids, (first + 40, first + 41)]
            )
    return bucket, trades


@settings(max_examples=500, deadline=None)
@given(runs())
def test_a_run_folds_as_its_trades_one_by_one(case: tuple[TradeBucket | None, list[Trade]]) -> None:
    bucket, trades = case
    before = None if bucket is None else exact(bucket)
    want: Any = bucket
    try:
        for t in trades:
            want = reference_apply_trade(want, t, 60_000)
    except ArithmeticError as exc:
        with pytest.raises(type(exc)):
            apply_trades(bucket, trades, 60_000)
        return
    got = apply_trades(bucket, trades, 60_000)
    assert exact(got) == exact(want)
    one: Any = bucket
    for t in trades:
        one = apply_trade(one, t, 60_000)
    assert exact(one) == exact(want)
    if bucket is not None:
        assert exact(bucket) == before  # the kept bucket is never changed


@pytest.mark.parametrize("text", ["NaN", "sNaN", "Infinity", "-Infinity", "1E+999999", "1E-999999"])
def test_special_values_fail_or_fold_as_before(text: str) -> None:
    t0 = Trade(exchange="coinbase", symbol="X-USD", trade_id=1, price=Decimal("1"), qty=Decimal("2"), time_ms=0,
               taker_buy=True)  # fmt: skip
    t1 = msgspec.structs.replace(t0, trade_id=2, price=Decimal(text), qty=Decimal(text))
    want = outcome(lambda: exact(reference_apply_trade(reference_apply_trade(None, t0, 60_000), t1, 60_000)))
    assert outcome(lambda: exact(apply_trades(None, [t0, t1], 60_000))) == want


def test_a_trade_of_another_bucket_fails_as_before() -> None:
    t0 = Trade(exchange="coinbase", symbol="X-USD", trade_id=1, price=Decimal("1"), qty=Decimal("2"), time_ms=0,
               taker_buy=True)  # fmt: skip
    t1 = msgspec.structs.replace(t0, trade_id=2, time_ms=60_000)
    b = reference_apply_trade(None, t0, 60_000)
    assert outcome(apply_trades, b, [t1], 60_000) == outcome(reference_apply_trade, b, t1, 60_000)


# ------------------------------------------------------------------------------- the batch fold, trades

T0 = 1_786_233_600_000
GRACE_MS = 5_000
WINDOW = 3
SYMBOLS = ("BTC-USD", "ETH-USD")


def reference_fold(
    items: list[Item], candles: dict[str, dict[int, Candle]], states: dict[tuple[str, int], TradeBucket | None]
) -> tuple[list[CandleClosed], dict[str, dict[int, Candle]], dict[tuple[str, int], bytes], list[str]]:
    """The rules entry by entry, trade by trade: snapshots, then each trade (set aside when its bucket's state
    is no longer kept but its candle is), each touched bucket's candle rebuilt, then every open candle the
    watermark has passed closed, in (deadline, series, start) order."""
    books = {key: CandleBook(dict(c)) for key, c in candles.items()}
    state = dict(states)
    closes: list[CandleClosed] = []
    dead: list[str] = []
    mark = 0
    for item in items:
        for candle, close_older in item.updates:
            closes.extend(books[keys.candles("coinbase", candle.symbol, "1m")].apply(candle, close_older=close_older))
        touched: dict[tuple[str, int], tuple[str, str]] = {}
        late = False
        for t in item.trades:
            start = t.time_ms - t.time_ms % 60_000
            skey, ckey = keys.trade_state("coinbase", t.symbol, "1m"), keys.candles("coinbase", t.symbol, "1m")
            if state.get((skey, start)) is None and start in books[ckey].candles:
                if not late:
                    dead.append(f"trade {t.trade_id} for 1m bucket {start} is older than the last {WINDOW} buckets")
                late = True
                continue
            state[(skey, start)] = reference_apply_trade(state.get((skey, start)), t, 60_000)
            touched[(skey, start)] = (ckey, t.symbol)
        for (skey, start), (ckey, symbol) in sorted(touched.items()):
            bucket = state[(skey, start)]
            assert bucket is not None
            closes.extend(books[ckey].apply(to_candle(bucket, exchange="coinbase", symbol=symbol, timeframe="1m")))
        mark = max(mark, item.event_ns)
        due = sorted(
            ((bucket_end("1m", start) + GRACE_MS) * 1_000_000, key, start)
            for key, book in books.items()
            for start, c in book.candles.items()
            if not c.closed and c.source != ROLLUP and (bucket_end("1m", start) + GRACE_MS) * 1_000_000 <= mark
        )
        for _, key, start in due:
            for event in close_due([books[key].candles[start]], mark, GRACE_MS):
                books[key].put(event.candle)
                closes.append(event)
    kept = {k: exact(v) for k, v in state.items() if v is not None}
    return closes, {k: b.candles for k, b in books.items()}, kept, dead


TRADE = st.tuples(
    st.integers(0, len(SYMBOLS) - 1),  # symbol
    st.integers(0, 4),  # bucket
    st.integers(0, 59_999),  # time in the bucket
    st.integers(0, 30),  # trade id (repeats and gaps)
    st.sampled_from(["1.5", "2", "2.00", "0.1", "9" * 30, "-1"]),  # price
    st.sampled_from(["0.01", "1", "-0.5", "0", "1E60", "0." + "1" * 29]),  # size
)
SNAP = st.tuples(
    st.integers(0, len(SYMBOLS) - 1), st.integers(0, 4), st.integers(0, 80_000), st.booleans(), st.booleans()
)
ENTRY = st.tuples(st.integers(-20_000, 70_000), st.lists(TRADE, max_size=4), st.lists(SNAP, max_size=1))


@settings(max_examples=400, deadline=None)
@given(
    st.lists(ENTRY, max_size=30),
    st.lists(st.tuples(st.integers(0, len(SYMBOLS) - 1), st.integers(0, 4), st.booleans(), st.booleans()), max_size=4),
)
def test_the_batch_fold_with_trades_follows_the_rules(
    raw: list[tuple[int, list[tuple[int, int, int, int, str, str]], list[tuple[int, int, int, bool, bool]]]],
    stored: list[tuple[int, int, bool, bool]],
) -> None:
    processor = CandleProcessor(
        "coinbase", 0, SymbolMap("coinbase", []), history=100, trade_timeframes=("1m",), close_grace_ms=GRACE_MS,
        state_window=WINDOW,
    )  # fmt: skip
    candles: dict[str, dict[int, Candle]] = {keys.candles("coinbase", s, "1m"): {} for s in SYMBOLS}
    states: dict[tuple[str, int], TradeBucket | None] = {}
    for symbol, bucket, closed, kept in stored:  # stored candles, their trade state kept or not (a late bucket)
        start = T0 + bucket * 60_000
        t = Trade(exchange="coinbase", symbol=SYMBOLS[symbol], trade_id=100, price=Decimal("3"), qty=Decimal("1"),
                  time_ms=start + 10, taker_buy=False)  # fmt: skip
        b = reference_apply_trade(None, t, 60_000)
        c = to_candle(b, exchange="coinbase", symbol=SYMBOLS[symbol], timeframe="1m", closed=closed)
        candles[keys.candles("coinbase", SYMBOLS[symbol], "1m")][start] = c
        states[(keys.trade_state("coinbase", SYMBOLS[symbol], "1m"), start)] = b if kept else None
    items: list[Item] = []
    at = T0
    for n, (step, trades, snaps) in enumerate(raw):
        at += step
        updates = []
        for symbol, bucket, offset, close_older, final in snaps:  # native snapshots of the same series
            start = T0 + bucket * 60_000
            c = Candle(exchange="coinbase", symbol=SYMBOLS[symbol], timeframe="1m", start=start, open="1", high="3",
                       low="1", close="2", volume="1", closed=final, event_ns=(start + offset) * 1_000_000,
                       closed_by="exchange" if final else None)  # fmt: skip
            updates.append((c, close_older))
        made = [
            Trade(
                exchange="coinbase",
                symbol=SYMBOLS[symbol],
                trade_id=tid,
                price=Decimal(price),
                qty=Decimal(size),
                time_ms=T0 + bucket * 60_000 + offset,
                taker_buy=tid % 2 == 0,
            )
            for symbol, bucket, offset, tid, price, size in trades
        ]
        items.append(Item((f"{n + 1}-0".encode(), {}), updates, made, max(at, 0) * 1_000_000))
    books = {key: CandleBook(dict(c)) for key, c in candles.items()}
    watermark = max((i.event_ns for i in items), default=0)
    due = sorted(
        (key, start)
        for key, book in books.items()
        for start, c in book.candles.items()
        if not c.closed and (bucket_end("1m", start) + GRACE_MS) * 1_000_000 <= watermark
    )
    folded = dict(states)
    dead: list[DeadLetter] = []
    closes = processor.fold(Plan(items=items, dead=dead), books, folded, due, 0)
    want_closes, want_candles, want_states, want_dead = reference_fold(items, candles, states)
    assert closes == want_closes
    assert {k: b.candles for k, b in books.items()} == want_candles
    assert {k: exact(v) for k, v in folded.items() if v is not None} == want_states
    assert [d.reason for d in dead] == want_dead
