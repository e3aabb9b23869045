"""The pure candle fold: last writer by event time wins, closed is sticky, late changes are corrections."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.candles import Candle, CandleBook, apply_snapshot

pytestmark = pytest.mark.unit


def snap(start: int, close: str, event_ns: int, *, closed: bool = False, volume: str = "1") -> Candle:
    return Candle(
        exchange="binance",
        symbol="BTC-USDT",
        timeframe="1m",
        start=start,
        open="1",
        high="9",
        low="0",
        close=close,
        volume=volume,
        closed=closed,
        event_ns=event_ns,
    )


def test_newer_snapshot_wins_and_older_is_ignored() -> None:
    a = snap(0, "1", 10)
    b = snap(0, "2", 20)
    state, ev = apply_snapshot(None, a)
    assert state == a and ev is None
    state, ev = apply_snapshot(state, b)
    assert state.close == "2" and ev is None
    state2, ev = apply_snapshot(state, a)  # stale: changes nothing
    assert state2 == state and ev is None


def test_final_flag_emits_one_close_and_repeats_are_silent() -> None:
    state, ev = apply_snapshot(snap(0, "1", 10), snap(0, "2", 20, closed=True))
    assert state.closed and ev is not None and not ev.correction
    again, ev2 = apply_snapshot(state, snap(0, "2", 20, closed=True))
    assert again == state and ev2 is None


def test_late_change_to_a_closed_candle_is_a_correction_and_stays_closed() -> None:
    closed, _ = apply_snapshot(None, snap(0, "2", 20, closed=True))
    late, ev = apply_snapshot(closed, snap(0, "3", 30, closed=False, volume="2"))
    assert late.closed and late.close == "3"
    assert ev is not None and ev.correction
    same, ev = apply_snapshot(late, snap(0, "3", 40, closed=False, volume="2"))
    assert ev is None and same.closed


def test_stale_final_flag_still_closes() -> None:
    state, _ = apply_snapshot(None, snap(0, "2", 20))
    state, ev = apply_snapshot(state, snap(0, "1", 10, closed=True))
    assert state.closed and state.close == "2" and ev is not None


def test_coinbase_rule_newer_start_closes_the_previous_bucket() -> None:
    book = CandleBook({})
    assert book.apply(snap(0, "1", 1), close_older=True) == []
    events = book.apply(snap(300_000, "2", 2), close_older=True)
    assert [e.candle.start for e in events] == [0] and book.candles[0].closed
    assert not book.candles[300_000].closed
    # an older bucket arriving late is final at once (a newer one exists)
    events = book.apply(snap(-300_000, "0", 3), close_older=True)
    assert book.candles[-300_000].closed and [e.candle.start for e in events] == [-300_000]
    assert book.dirty == {-300_000, 0, 300_000}


@given(st.permutations(list(range(6))))
def test_order_of_snapshots_of_one_bucket_does_not_matter(order: list[int]) -> None:
    snaps = [snap(0, str(i), 100 + i, closed=(i == 4)) for i in range(6)]
    state: Candle | None = None
    for i in order:
        state, _ = apply_snapshot(state, snaps[i])
    assert state is not None
    assert state.close == "5" and state.event_ns == 105 and state.closed


def test_candle_json_round_trip() -> None:
    c = snap(60_000, "1.50", 5, closed=True)
    assert msgspec.json.decode(msgspec.json.encode(c), type=Candle) == c
