"""Recorded sessions folded on a real Redis give the exchange's own candles.

The oracle is the recording itself, read with plain ``json``: for Binance the last kline frame of
each minute (closed where the exchange sent ``x: true``), for Coinbase the last ``candles`` snapshot
or update of each 5-minute start (closed once a newer start exists for the product).
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis

from projections.candles import CandleClosed
from projections.watermark import bucket_end
from streams.symbols import bundled
from tests.realdata import BINANCE_0404, BINANCE_0814, BINANCE_1012, COINBASE_AT, require
from tests.support import all_candles, close_events, drain, ingest

pytestmark = [pytest.mark.redis, pytest.mark.replay]


def binance_oracle(path: Path) -> dict[tuple[str, int], tuple[tuple[str, ...], bool]]:
    last: dict[tuple[str, int], tuple[str, ...]] = {}
    closed: dict[tuple[str, int], bool] = {}
    for line in require(path).read_text().splitlines():
        msg = json.loads(line)
        if "@kline_" not in msg.get("stream", ""):
            continue
        k = msg["data"]["k"]
        key = (k["s"], k["t"])
        last[key] = (k["o"], k["h"], k["l"], k["c"], k["v"], k["q"], str(k["n"]), k["V"])
        closed[key] = closed.get(key, False) or k["x"]
    return {key: (values, closed[key]) for key, values in last.items()}


@pytest.mark.parametrize("path", [BINANCE_0404, BINANCE_0814, BINANCE_1012], ids=["0404", "0814", "1012"])
async def test_binance_1m_candles_equal_the_last_kline_of_each_minute(redis_url: str, path: Path) -> None:
    oracle = binance_oracle(path)
    symbols = bundled("binance")
    client = aioredis.Redis.from_url(redis_url)
    try:
        await ingest(client, "binance", path)
        await drain(client, ["binance"])
        everything = await all_candles(client, "binance")
        got = {k: c for k, c in everything.items() if k[1] == "1m"}
        assert len(got) == len(oracle) > 0
        for (native, start), (values, closed) in oracle.items():
            c = got[(symbols.canonical(native), "1m", start)]
            assert (
                c.open,
                c.high,
                c.low,
                c.close,
                c.volume,
                c.quote_volume,
                str(c.trades),
                c.taker_buy_volume,
            ) == values
            assert c.closed is closed, (native, start)
        closes = [e for e in await close_events(client, "binance") if e.candle.timeframe == "1m"]
        assert sorted((e.candle.symbol, e.candle.start) for e in closes) == sorted(
            (symbols.canonical(s), t) for (s, t), (_, closed) in oracle.items() if closed
        )
        # every roll-up (5m ... 1d) holds exactly the 1m candles of its bucket: exact sums, first open, last close
        rollups = {k: c for k, c in everything.items() if c.source == "rollup"}
        assert {tf for _, tf, _ in rollups} == {"5m", "15m", "1h", "4h", "1d"}
        for (symbol, tf, start), r in rollups.items():
            end = bucket_end(tf, start)
            base = [got[k] for k in sorted(got) if k[0] == symbol and start <= k[2] < end]
            assert r.open == base[0].open and r.close == base[-1].close
            assert Decimal(r.volume) == sum(Decimal(c.volume) for c in base)
            assert Decimal(r.high) == max(Decimal(c.high) for c in base)
            assert r.trades == sum(c.trades or 0 for c in base)
    finally:
        await client.aclose()


def coinbase_oracle(path: Path) -> dict[tuple[str, int], tuple[tuple[str, ...], bool]]:
    last: dict[tuple[str, int], tuple[str, ...]] = {}
    for line in require(path).read_text().splitlines():
        msg = json.loads(line)
        if msg.get("channel") != "candles":
            continue
        for event in msg["events"]:
            for c in event["candles"]:
                last[(c["product_id"], int(c["start"]) * 1000)] = (
                    c["open"],
                    c["high"],
                    c["low"],
                    c["close"],
                    c["volume"],
                )
    newest: dict[str, int] = {}
    for product, start in last:
        newest[product] = max(newest.get(product, start), start)
    return {key: (values, key[1] < newest[key[0]]) for key, values in last.items()}


async def test_coinbase_5m_candles_equal_the_last_update_per_start(redis_url: str) -> None:
    oracle = coinbase_oracle(COINBASE_AT)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await ingest(client, "coinbase", COINBASE_AT)
        await drain(client, ["coinbase"])
        everything = await all_candles(client, "coinbase")
        got = {k: c for k, c in everything.items() if k[1] == "5m"}
        assert {(s, start) for s, _, start in got} == set(oracle)
        # the 1m candles Coinbase does not stream are built from its market_trades
        assert {c.source for k, c in everything.items() if k[1] == "1m"} == {"trades"}
        for (product, start), (values, closed) in oracle.items():
            c = got[(product, "5m", start)]
            assert (c.open, c.high, c.low, c.close, c.volume) == values
            assert c.closed is closed
        # the updates in the recording really changed the open bucket (the oracle is not just the snapshot)
        assert got[("BTC-USD", "5m", 1786309500_000)].volume == "1.11745494"
        closes = [e for e in await close_events(client, "coinbase") if e.candle.timeframe == "5m"]
        assert len(closes) == sum(1 for _, closed in oracle.values() if closed)
    finally:
        await client.aclose()


async def test_close_events_are_published_on_the_exchange_channel(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        await pubsub.psubscribe("channel:exchange:binance:candle:close:*")
        await pubsub.get_message(timeout=1.0)  # the psubscribe confirmation
        await ingest(client, "binance", BINANCE_0404)
        await drain(client, ["binance"])
        received: list[tuple[str, CandleClosed]] = []
        for _ in range(50):
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg is None:
                if received:
                    break
                await asyncio.sleep(0.05)
                continue
            received.append((msg["channel"].decode(), msgspec.json.decode(msg["data"], type=CandleClosed)))
        received = [r for r in received if r[1].candle.timeframe == "1m"]  # (roll-ups close by watermark later)
        assert sorted(ch for ch, _ in received) == [
            "channel:exchange:binance:candle:close:BTC-USDT:1m",
            "channel:exchange:binance:candle:close:DOT-USDT:1m",
            "channel:exchange:binance:candle:close:ETH-USDT:1m",
        ]
        assert {e.candle.start for _, e in received} == {1617566580000}
        assert [e for _, e in sorted(received, key=lambda r: r[0])] == sorted(
            [e for e in await close_events(client, "binance") if e.candle.timeframe == "1m"],
            key=lambda e: e.candle.symbol,
        )
    finally:
        await pubsub.aclose()
        await client.aclose()
