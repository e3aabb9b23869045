"""Candles from trades reproduce the exchanges' own candles, whatever the order of the trades."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.trades import Trade, TradeBucket, apply_trade, fold_trades
from streams.frames import parse_rfc3339_ns
from tests.realdata import BINANCE_0404, COINBASE_AT, require

pytestmark = [pytest.mark.unit, pytest.mark.replay]


def binance_trade(d: dict[str, Any]) -> Trade:
    return Trade(
        exchange="binance", symbol=d["s"], trade_id=d["a"], price=Decimal(d["p"]), qty=Decimal(d["q"]),
        time_ms=d["T"], taker_buy=not d["m"], trades=d["l"] - d["f"] + 1,
    )  # fmt: skip


def coinbase_trade(t: dict[str, Any]) -> Trade:
    return Trade(
        exchange="coinbase", symbol=t["product_id"], trade_id=int(t["trade_id"]), price=Decimal(t["price"]),
        qty=Decimal(t["size"]), time_ms=parse_rfc3339_ns(t["time"]) // 1_000_000, taker_buy=t["side"] == "SELL",
    )  # fmt: skip


def values(b: TradeBucket) -> tuple[object, ...]:
    return (b.open, b.high, b.low, b.close, b.volume, b.quote_volume, b.trades, b.taker_buy_volume)


@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT", "DOTUSDT"])
def test_binance_aggtrades_f_to_L_reproduce_the_kline_exactly(symbol: str) -> None:
    events = [json.loads(line)["data"] for line in require(BINANCE_0404).read_text().splitlines()]
    klines = [e["k"] for e in events if e["e"] == "kline" and e["s"] == symbol and e["k"]["t"] == 1617566640000]
    k = klines[-1]  # the last kline frame of the minute
    trades = [binance_trade(e) for e in events if e["e"] == "aggTrade" and e["s"] == symbol
              and e["f"] >= k["f"] and e["l"] <= k["L"]]  # fmt: skip
    buckets = fold_trades(trades, 60_000)
    assert list(buckets) == [(symbol, 1617566640000)]
    expected = (Decimal(k["o"]), Decimal(k["h"]), Decimal(k["l"]), Decimal(k["c"]), Decimal(k["v"]),
                Decimal(k["q"]), k["n"], Decimal(k["V"]))  # fmt: skip
    assert values(buckets[(symbol, 1617566640000)]) == expected


def test_coinbase_market_trades_reproduce_every_candles_update() -> None:
    trades: dict[tuple[str, int], Trade] = {}
    updates: list[dict[str, str]] = []
    for line in require(COINBASE_AT).read_text().splitlines():
        msg = json.loads(line)
        for event in msg.get("events", []):
            if msg["channel"] == "market_trades":
                for t in event["trades"]:
                    trades[(t["product_id"], int(t["trade_id"]))] = coinbase_trade(t)
            elif msg["channel"] == "candles" and event["type"] == "update":
                updates.extend(event["candles"])
    assert len(updates) == 4
    for u in updates:
        start = int(u["start"]) * 1000
        mine = sorted((t for t in trades.values() if t.symbol == u["product_id"] and t.time_ms >= start),
                      key=lambda t: t.trade_id)  # fmt: skip
        want = tuple(Decimal(u[f]) for f in ("open", "high", "low", "close", "volume"))
        # the update reflects every trade of the bucket up to some cut-off id: find it
        bucket: TradeBucket | None = None
        matched = False
        for t in mine:
            bucket = apply_trade(bucket, t, 300_000)
            if (bucket.open, bucket.high, bucket.low, bucket.close, bucket.volume) == want:
                matched = True
                break
        assert matched, u


def _trades(draw: st.DrawFn) -> list[Trade]:
    n = draw(st.integers(1, 40))
    first = draw(st.integers(1, 10_000))
    out = []
    for i in range(n):
        out.append(
            Trade(
                exchange="binance",
                symbol=draw(st.sampled_from(["A-USDT", "B-USDT"])),
                trade_id=first + i,
                price=Decimal(draw(st.integers(1, 10_000))) / 100,
                qty=Decimal(draw(st.integers(1, 10**6))) / 10**4,
                time_ms=draw(st.integers(0, 600_000)),
                taker_buy=draw(st.booleans()),
                trades=draw(st.integers(1, 3)),
            )
        )
    return out


trade_lists = st.composite(_trades)()


@settings(max_examples=200, deadline=None)
@given(trade_lists, st.randoms(use_true_random=False))
def test_shuffled_or_duplicated_trades_fold_to_the_same_candles(trades: list[Trade], rnd: random.Random) -> None:
    reference = fold_trades(sorted(trades, key=lambda t: t.trade_id), 60_000)
    noisy = trades + rnd.sample(trades, len(trades) // 2)  # duplicates
    rnd.shuffle(noisy)
    assert fold_trades(noisy, 60_000) == reference


def _agg(a: int, f: int) -> bytes:
    data = {"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": a, "p": "1", "q": "1", "f": f, "l": 1, "T": 1, "m": True}
    return json.dumps({"stream": "btcusdt@aggTrade", "data": data}).encode()


def _trade(t: int) -> bytes:
    data = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 1, "p": "1", "q": "1", "T": t, "m": True}
    return json.dumps({"stream": "btcusdt@trade", "data": data}).encode()


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        (_agg(2**63, 1), _agg(2**63 - 1, 1)),  # the id
        (_agg(1, -(2**63) + 2), _agg(1, -(2**63) + 3)),  # the trade count, l - f + 1
        (_trade(10**20), _trade(2**63 - 1)),  # the time
    ],
)
def test_binance_trade_integers_beyond_int64_are_refused(raw: bytes, ok: bytes) -> None:
    """A trade bucket's state is msgpack (int64 at most): such a trade is a decode error (a dead letter)."""
    from projections.snapshots import trades_of
    from streams.frames import decode_frame
    from streams.symbols import Market, SymbolMap
    from tickfold.errors import FrameDecodeError

    symbols = SymbolMap("binance", [Market(exchange="binance", native="BTCUSDT", base="BTC", quote="USDT")])
    with pytest.raises(FrameDecodeError, match="out of range"):
        trades_of("binance", decode_frame("binance", raw), symbols)
    assert trades_of("binance", decode_frame("binance", ok), symbols)  # the largest that fit
