"""The candle processor's batch fold (``CandleProcessor.fold``: snapshots, then the watermark closing what
is due, from a heap) against a plain restatement of its rules: after each item, scan every open candle and
close those whose end + grace the watermark has passed, in (deadline, series, start) order. Random batches
of Binance kline snapshots, in and out of order, open and final, over a few series and buckets."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.candles import CandleProcessor, Item, Plan
from projections.candles import BY_EXCHANGE, BY_WATERMARK, Candle, CandleBook, CandleClosed
from streams import keys
from streams.symbols import bundled

pytestmark = pytest.mark.unit

T0 = 1_617_566_400_000  # a minute start (ms)
GRACE_MS = 5_000
SYMBOLS = ("BTC-USDT", "ETH-USDT")


def snapshot_rule(current: Candle | None, update: Candle) -> tuple[Candle, CandleClosed | None]:
    """Last writer by event time wins, closed is sticky, a change to a closed bucket is a correction."""
    if current is None:
        return update, (CandleClosed(candle=update) if update.closed else None)
    if update.event_ns < current.event_ns:
        if update.closed and not current.closed:
            new = msgspec.structs.replace(current, closed=True, closed_by=update.closed_by)
            return new, CandleClosed(candle=new)
        return current, None
    new = msgspec.structs.replace(
        update,
        closed=current.closed or update.closed,
        closed_by=update.closed_by if update.closed else current.closed_by,
    )
    if new == current:
        return current, None
    if current.closed:
        return new, (None if new.same_values(current) else CandleClosed(candle=new, correction=True))
    return new, (CandleClosed(candle=new) if new.closed else None)


def reference(items: list[Item]) -> tuple[dict[tuple[str, int], Candle], list[CandleClosed]]:
    state: dict[tuple[str, int], Candle] = {}
    closes: list[CandleClosed] = []
    mark = 0
    for item in items:
        for candle, _ in item.updates:
            bucket = (keys.candles(candle.exchange, candle.symbol, candle.timeframe), candle.start)
            state[bucket], event = snapshot_rule(state.get(bucket), candle)
            if event is not None:
                closes.append(event)
        mark = max(mark, item.event_ns)
        due = sorted(
            ((start + 60_000 + GRACE_MS) * 1_000_000, key, start)
            for (key, start), c in state.items()
            if not c.closed and (start + 60_000 + GRACE_MS) * 1_000_000 <= mark
        )
        for _, key, start in due:
            closed = msgspec.structs.replace(state[(key, start)], closed=True, closed_by=BY_WATERMARK)
            state[(key, start)] = closed
            closes.append(CandleClosed(candle=closed))
    return state, closes


SNAPSHOT = st.tuples(
    st.integers(0, len(SYMBOLS) - 1),  # series
    st.integers(0, 3),  # bucket
    st.integers(0, 80_000),  # event time after the bucket start (ms)
    st.sampled_from(["1", "2", "3"]),  # close
    st.booleans(),  # final
)
ITEM = st.tuples(st.integers(-20_000, 70_000), st.lists(SNAPSHOT, max_size=2))  # (watermark step, snapshots)


@settings(max_examples=300)
@given(st.lists(ITEM, max_size=40))
def test_the_batch_fold_closes_as_the_rules_say(raw: list[tuple[int, list[tuple[int, int, int, str, bool]]]]) -> None:
    processor = CandleProcessor("binance", 0, bundled("binance"), history=100, close_grace_ms=GRACE_MS)
    items: list[Item] = []
    at = T0
    for step, snapshots in raw:
        at += step
        updates = []
        for series, bucket, offset, close, final in snapshots:
            start = T0 + bucket * 60_000
            candle = Candle(
                exchange="binance", symbol=SYMBOLS[series], timeframe="1m", start=start, open="1", high="3",
                low="1", close=close, volume="1", closed=final, event_ns=(start + offset) * 1_000_000,
                closed_by=BY_EXCHANGE if final else None,
            )  # fmt: skip
            updates.append((candle, False))
        items.append(Item((b"0-0", {}), updates, [], max(at, 0) * 1_000_000))
    books = {keys.candles("binance", s, "1m"): CandleBook({}) for s in SYMBOLS}
    closes = processor.fold(Plan(items=items), books, {}, [], 0)
    state, expected = reference(items)
    assert closes == expected
    assert {(key, start): c for key, book in books.items() for start, c in book.candles.items()} == state
