"""The run fold of trade columns (processors/trade_run.py, projections/trade_sums.py) against the Decimal fold.

Each case writes ``market_trades`` frames as text, reads them twice — as trade columns
(:func:`streams.trade_columns.frame_trades`) and as the candle processor reads them (``decode_coinbase`` then
``trades_of``) — and requires :func:`processors.trade_run.fold_buckets` of the columns to leave every bucket
exactly as :func:`projections.trades.apply_trades` of the trades does: every field, and every ``Decimal`` with
its digits and exponent (``str``), since ``Decimal`` equality would take ``7.5`` for ``7.50``.
"""

from __future__ import annotations

import decimal
import json
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import processors.trade_run as trade_run
from processors.trade_run import Buckets, TradeRun, fold_buckets
from projections.snapshots import trades_of
from projections.trades import Trade, TradeBucket, apply_trades
from streams.archive_columns import EntryList, Frames, columns, trade_columns
from streams.frames import decode_coinbase
from streams.symbols import SymbolMap
from streams.trade_columns import TradeColumns, frame_trades, to_decimal

MINUTE = 60_000
T0 = 1_786_233_600_000  # a minute boundary
SYMBOLS = SymbolMap("coinbase", [])


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def frame(trades: list[dict[str, str]], ts_ms: int) -> bytes:
    body = {"channel": "market_trades", "timestamp": _iso(ts_ms), "sequence_num": 0}
    return json.dumps({**body, "events": [{"type": "update", "trades": trades}]}, separators=(",", ":")).encode()


def values(b: TradeBucket | None) -> tuple[object, ...] | None:
    if b is None:
        return None
    decimals = (b.open, b.close, b.high, b.low, b.volume, b.quote_volume, b.taker_buy_volume)
    return (b.start, b.open_id, b.close_id, b.trades, b.last_time_ms, b.ids, *(str(d) for d in decimals))


def run_of(raws: list[bytes]) -> TradeRun:
    rows = [frame_trades(r) for r in raws]
    assert all(r is not None for r in rows)
    columns = TradeColumns.of_rows(rows)
    n = len(raws)
    entries = [(f"{i + 1}-0".encode(), {b"frame": r}) for i, r in enumerate(raws)]
    frames = Frames(
        np.arange(1, n + 1, dtype=np.uint64), np.zeros(n, np.uint64), np.zeros(n, np.uint8),
        np.zeros(n, np.int64), EntryList(entries), np.arange(n, dtype=np.intp), columns,
    )  # fmt: skip
    return TradeRun.of("coinbase", frames, [SYMBOLS.canonical(p) for p in columns.products])


def oracle(raws: list[bytes]) -> list[Trade]:
    return [t for r in raws for t in trades_of("coinbase", decode_coinbase(r), SYMBOLS)]


def fold_both(
    before: list[bytes], raws: list[bytes]
) -> tuple[list[tuple[object, ...] | None], list[tuple[object, ...] | None], Buckets]:
    """(the run fold's buckets, apply_trades' buckets) after ``raws``, from buckets that folded ``before``."""
    states: dict[tuple[str, int], TradeBucket] = {}
    for t in oracle(before):
        key = (t.symbol, t.time_ms - t.time_ms % MINUTE)
        states[key] = apply_trades(states.get(key), [t], MINUTE)
    run = run_of(raws)
    found = run.buckets("1m")
    assert found is not None and not len(found.late(run, 5000, 0))
    befores = [states.get((symbol, start)) for _, symbol, start in found.keys]
    got = fold_buckets(run, found, befores)
    want: list[TradeBucket | None] = []
    trades = oracle(raws)
    for (_, symbol, start), b in zip(found.keys, befores, strict=True):
        mine = [t for t in trades if t.symbol == symbol and t.time_ms - t.time_ms % MINUTE == start]
        want.append(apply_trades(b, mine, MINUTE))
    return [values(b) for b in got], [values(b) for b in want], found


_digits = st.integers(min_value=0, max_value=18)


@st.composite
def number(draw: st.DrawFn) -> str:
    """A plain decimal of up to 18 digits: small, equal values written with more or fewer zeros, huge."""
    kind = draw(st.sampled_from(["small", "zeros", "huge", "tiny"]))
    if kind == "small":
        return f"{draw(st.integers(1, 999))}.{draw(st.integers(0, 99)):02d}"
    if kind == "zeros":
        return "100" + draw(st.sampled_from(["", ".0", ".00", ".000"]))
    if kind == "tiny":
        return "0." + "0" * draw(st.integers(0, 8)) + str(draw(st.integers(0, 9)))
    whole = draw(st.integers(1, 18))
    fraction = draw(st.integers(0, 18 - whole))
    text = "9" * whole
    return text + ("." + "9" * fraction if fraction else "")


@st.composite
def trade(draw: st.DrawFn) -> dict[str, str]:
    return {
        "product_id": draw(st.sampled_from(["BTC-USD", "ETH-USD"])),
        "trade_id": str(draw(st.integers(1, 40))),
        "price": draw(number()),
        "size": draw(number()),
        "time": _iso(T0 + draw(st.integers(0, 3 * MINUTE - 1))),
        "side": draw(st.sampled_from(["BUY", "SELL"])),
    }


@given(
    before=st.lists(st.lists(trade(), min_size=1, max_size=4), max_size=4),
    run=st.lists(st.lists(trade(), min_size=0, max_size=5), min_size=1, max_size=6),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_run_folds_every_bucket_as_apply_trades_does(
    before: list[list[dict[str, str]]], run: list[list[dict[str, str]]]
) -> None:
    got, want, _ = fold_both([frame(f, T0) for f in before], [frame(f, T0) for f in run])
    assert got == want


@pytest.mark.parametrize("prec", [28, 20, 18, 12])
def test_any_context_precision_gives_the_decimal_fold(prec: int) -> None:
    """Sums near 10**18, a state holding 27 digits, a new bucket of 18-digit sizes: in a narrow context the sums
    round, and the run fold must give what apply_trades gives there (it falls back for those buckets)."""
    big = [{"product_id": "BTC-USD", "trade_id": str(i), "price": "999999999", "size": "999999999.123456789",
            "time": _iso(T0 + i), "side": "SELL"} for i in range(1, 4)]  # fmt: skip
    small = [{"product_id": "BTC-USD", "trade_id": str(i), "price": "3.5", "size": "0.000000001",
              "time": _iso(T0 + i), "side": "BUY"} for i in range(4, 9)]  # fmt: skip
    other = [{"product_id": "ETH-USD", "trade_id": str(i), "price": "2", "size": "123456789.123456789",
              "time": _iso(T0 + i), "side": "SELL"} for i in range(1, 5)]  # fmt: skip
    with decimal.localcontext() as ctx:
        ctx.prec = prec
        got, want, _ = fold_both([frame(big, T0)], [frame(small[:2], T0), frame(small[2:] + other, T0)])
    assert got == want


def test_plain_buckets_take_the_integer_path_and_others_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is used (no apply_trades) for plain buckets, and apply_trades for one whose sum would
    round: the test above can't pass by falling back everywhere."""
    called: list[int] = []
    real = apply_trades

    def counting(bucket: TradeBucket | None, trades: list[Trade], interval_ms: int) -> TradeBucket:
        called.append(len(trades))
        return real(bucket, trades, interval_ms)

    monkeypatch.setattr(trade_run, "apply_trades", counting)
    plain = [{"product_id": "BTC-USD", "trade_id": str(i), "price": f"{100 + i}.5", "size": "0.25",
              "time": _iso(T0 + i), "side": "SELL" if i % 2 else "BUY"} for i in range(1, 6)]  # fmt: skip
    got, want, _ = fold_both([frame(plain[:2], T0)], [frame(plain[1:], T0)])
    assert got == want and called == []
    huge = [{"product_id": "ETH-USD", "trade_id": "1", "price": "1", "size": "9" * 18, "time": _iso(T0),
             "side": "SELL"}, {"product_id": "ETH-USD", "trade_id": "2", "price": "1", "size": "0." + "9" * 17,
             "time": _iso(T0 + 1), "side": "SELL"}]  # fmt: skip
    got, want, _ = fold_both([], [frame(huge, T0)])
    assert got == want and called == [2]  # a sum past 10**18: apply_trades, on both trades


def test_a_trade_whose_bucket_was_due_before_its_frame_blocks_the_run_there() -> None:
    """Condition 2: the first frame with a trade whose bucket's end + grace is at or before the watermark
    before the frame (an earlier frame's event time, or the watermark before the run)."""
    t = {"product_id": "BTC-USD", "trade_id": "1", "price": "1", "size": "1", "time": _iso(T0), "side": "BUY"}
    later = dict(t, trade_id="2", time=_iso(T0 + MINUTE + 5))
    raws = [frame([later], T0 + MINUTE + 10), frame([later], T0 + MINUTE + 4_999), frame([t], T0 + 2 * MINUTE)]
    run = run_of(raws)
    found = run.buckets("1m")
    assert found is not None and not len(found.late(run, 5000, 0))  # frame 2's watermark: 1 ms short of T0's deadline
    raws[1] = frame([later], T0 + MINUTE + 5_000)
    run = run_of(raws)
    found = run.buckets("1m")
    assert found is not None and found.late(run, 5000, 0).tolist() == [2]  # now at the deadline: closed before frame 2
    alone = run_of([frame([t], T0), frame([later], T0)])
    deadline_ns = (T0 + MINUTE + 5_000) * 1_000_000
    found = alone.buckets("1m")
    assert found is not None and not len(found.late(alone, 5000, deadline_ns - 1))
    assert found.late(alone, 5000, deadline_ns).tolist() == [0]  # the watermark before the run had closed it


def test_a_repeat_in_the_run_and_of_the_state_is_skipped() -> None:
    t = [{"product_id": "BTC-USD", "trade_id": str(i), "price": p, "size": "1", "time": _iso(T0 + i),
          "side": "BUY"} for i, p in [(5, "10.0"), (6, "10"), (7, "9.99"), (9, "10.00")]]  # fmt: skip
    got, want, _ = fold_both([frame(t[:1], T0)], [frame(t, T0), frame(t[1:], T0), frame(t[::-1], T0)])
    assert got == want
    assert got[0] is not None and got[0][5] == [(5, 7), (9, 9)]  # ids: two ranges
    assert got[0][8] == "10.0"  # high: the first of the equal values
    assert Decimal(str(got[0][6])) == Decimal("10.00")  # open: trade 5's price


@pytest.mark.parametrize(
    ("volume", "sizes"),
    [
        ("9999999999999999999999999990", ["10"]),  # 10**28: 29 digits, only zeros cut (Rounded, not Inexact)
        ("9999999999999999999999999990", ["9"]),  # 28 digits: exact
        ("1000000000000000000000000000", ["0.1"]),  # Inexact
        # one by one each sum rounds down to 28 nines; the total, 10**28, would round only zeros away
        ("9999999999999999999999999999", ["0.3", "0.3", "0.4"]),
    ],
)
def test_a_sum_the_context_would_round_is_folded_by_apply_trades(volume: str, sizes: list[str]) -> None:
    state = TradeBucket(
        start=T0, open_id=1, open=Decimal(1), close_id=1, close=Decimal(1), high=Decimal(1), low=Decimal(1),
        volume=Decimal(volume), quote_volume=Decimal(volume), taker_buy_volume=Decimal(volume), trades=1,
        last_time_ms=T0, ids=[(1, 1)],
    )  # fmt: skip
    raw = frame([{"product_id": "BTC-USD", "trade_id": str(2 + n), "price": "1", "size": size, "time": _iso(T0),
                  "side": "SELL"} for n, size in enumerate(sizes)], T0)  # fmt: skip
    run = run_of([raw])
    found = run.buckets("1m")
    assert found is not None
    got = fold_buckets(run, found, [state])
    want = apply_trades(state, oracle([raw]), MINUTE)
    assert values(got[0]) == values(want)


def test_new_ids_between_two_ranges_join_them() -> None:
    t = [{"product_id": "BTC-USD", "trade_id": str(i), "price": "1", "size": "1", "time": _iso(T0), "side": "BUY"}
         for i in (1, 3, 2, 7, 5)]  # fmt: skip
    got, want, _ = fold_both([frame(t[:2], T0), frame(t[3:], T0)], [frame(t[2:3], T0)])
    assert got == want
    assert got[0] is not None and got[0][5] == [(1, 3), (5, 5), (7, 7)]


def test_coinbase_event_times_from_trade_columns_are_the_decoded_ones() -> None:
    """``columns`` given the trade columns reads a frame that has them no second time: the same kinds and
    event times as decoding every frame, on plain frames, others (heartbeats, broken, no frame field)."""
    t = {"product_id": "BTC-USD", "trade_id": "1", "price": "1", "size": "1", "time": _iso(T0), "side": "BUY"}
    heartbeat = {"channel": "heartbeats", "timestamp": "2026-08-09T00:00:00.5Z", "sequence_num": 1,
                 "events": [{"current_time": "x", "heartbeat_counter": 1}]}  # fmt: skip
    raws = [frame([t], T0 + 7), json.dumps(heartbeat).encode(), b"{broken", frame([dict(t, price="1e3")], T0 + 9)]
    entries: list[tuple[bytes, dict[bytes, bytes]]] = [(f"{i}-0".encode(), {b"frame": r}) for i, r in enumerate(raws)]
    entries.append((b"9-0", {b"other": b"x"}))
    trades = trade_columns("coinbase", entries)
    assert trades is not None and trades.has.tolist() == [True, False, False, False, False]
    kinds, times = columns("coinbase", entries, trades)
    want_kinds, want_times = columns("coinbase", entries)
    assert kinds.tolist() == want_kinds.tolist()
    assert times.tolist() == want_times.tolist() == [T0 + 7, T0 + 500, 0, T0 + 9, 0]


def test_a_product_spelt_two_ways_is_one_bucket() -> None:
    """``btc-usd`` and ``BTC-USD`` are one market: their trades of a minute are one bucket, as live."""
    t = {"product_id": "BTC-USD", "trade_id": "2", "price": "1", "size": "1", "time": _iso(T0), "side": "BUY"}
    u = dict(t, product_id="btc-usd", trade_id="1", size="2")
    got, want, found = fold_both([], [frame([t, u], T0)])
    assert got == want and len(found.keys) == 1
    assert got[0] is not None and got[0][3] == 2 and got[0][5] == [(1, 2)] and got[0][10] == "3"


@given(
    st.one_of(st.integers(0, 10**18 - 1), st.integers(0, 99).map(lambda c: c * 10**12), st.just(0)),
    st.integers(-128, 127),
    st.sampled_from([28, 12, 3]),
)
def test_to_decimal_is_the_text_exactly(coefficient: int, exponent: int, prec: int) -> None:
    """A column's ``Decimal`` is the one its text parses to: value, digits and exponent (``"1.00"`` is not
    ``"1"``), in any current context (a parse is exact whatever the context's precision)."""
    with decimal.localcontext() as ctx:
        ctx.prec = prec
        got = to_decimal(coefficient, exponent)
        want = Decimal(f"{coefficient}E{exponent}")
    assert got.as_tuple() == want.as_tuple()
    assert str(got) == str(want)
