"""Tier 1 (SYM-01) as events: ranking on the recorded REST responses, refresh through the simulator.

The simulator serves the recorded documents verbatim (``rest_documents``): Coinbase's 920 products
(2026-08-09) and Binance's full exchangeInfo (2021-10-12, 1262 TRADING + 433 BREAK symbols). No
all-symbols Binance ``ticker/24hr`` array was ever recorded (see ``../shared/realdata/SOURCES.md``), so
the Binance 24h volumes are INVENTED: ``tests/data/binance_ticker_24hr_INVENTED.json`` gives a few
symbols made-up volumes and every other symbol of the real exchangeInfo gets a zero-volume ticker. What
counts (TRADING vs BREAK) is always the real exchangeInfo's status.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from control import tier1 as t1
from control import universe as uv
from control.commands import Accepted
from control.commands import encode as encode_outcome
from projections import tiers
from streams import keys
from streams.rest import BinanceRestClient, CoinbaseRestClient
from streams.rest import types as t
from streams.simulator import Simulator
from tests.realdata import REALDATA, require
from tickfold import cli

PRODUCTS = require(REALDATA / "coinbase" / "rest_market_products_2026-08-09.json")
EXCHANGE_INFO = require(REALDATA / "binance" / "rest_exchangeInfo_2021-10-12_full.json")
INVENTED_TICKERS = Path(__file__).parent / "data" / "binance_ticker_24hr_INVENTED.json"
COINBASE_TOP5 = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "ZEC-USD"]


def _products_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(PRODUCTS.read_bytes())
    return doc


def _ticker(symbol: str, quote_volume: str, last: str) -> dict[str, Any]:
    return {
        "symbol": symbol, "priceChange": "0", "priceChangePercent": "0", "weightedAvgPrice": last,
        "lastPrice": last, "openPrice": last, "highPrice": last, "lowPrice": last,
        "volume": "0", "quoteVolume": quote_volume, "openTime": 0, "closeTime": 1, "firstId": 1,
        "lastId": 2, "count": 1,
    }  # fmt: skip


def invented_volumes() -> dict[str, tuple[str, str]]:
    """symbol -> (quote volume in the quote asset, last price): INVENTED (see the module docstring)."""
    doc = json.loads(INVENTED_TICKERS.read_bytes())
    assert doc["_note"].startswith("INVENTED")
    return {symbol: (vol, last) for symbol, (vol, last) in doc["volumes"].items()}


def binance_tickers() -> list[dict[str, Any]]:
    """An all-symbols ticker/24hr array over the real exchangeInfo, with the invented volumes (0 elsewhere)."""
    volumes = invented_volumes()
    info = json.loads(EXCHANGE_INFO.read_bytes())
    return [_ticker(s["symbol"], *volumes.get(s["symbol"], ("0", "0"))) for s in info["symbols"]]


def rest_documents(tmp_path: Path) -> tuple[tuple[str, str], ...]:
    """The simulator's ``rest_documents``: the recorded exchangeInfo and products, the invented tickers."""
    tickers = tmp_path / "binance_ticker_24hr.json"
    tickers.write_text(json.dumps(binance_tickers()))
    return (
        ("binance/exchangeInfo", str(EXCHANGE_INFO)),
        ("binance/ticker/24hr", str(tickers)),
        ("coinbase/products", str(PRODUCTS)),
    )


# ----------------------------------------------------------------------------------------------- pure


def _coinbase_products(doc: dict[str, Any] | None = None) -> list[t.Product]:
    return msgspec.json.decode(json.dumps(doc or _products_doc()), type=t.ProductsResponse).products


def test_coinbase_top5_counts_aliases_once_and_skips_delisted() -> None:
    tier = tiers.rank(tiers.coinbase_candidates(_coinbase_products()), 5)
    assert tier.symbols == COINBASE_TOP5
    assert tier.ranked[0].reason.startswith("rank 1 by 24h quote volume (1.866e+08 USD")
    assert tier.excluded["BTC-USDC"] == "alias of BTC-USD (counted once, as BTC-USD)"
    assert tier.excluded["DAI-USD"] == "status delisted"
    assert sum(1 for why in tier.excluded.values() if why.startswith("alias of")) == 396  # + 4 delisted


def test_coinbase_oracle_over_the_whole_list() -> None:
    """An independent plain-json oracle for the USD-like-quoted top 20."""
    doc = _products_doc()
    rows = [
        p for p in doc["products"]
        if p["status"] == "online" and not p["trading_disabled"] and not p["alias"]
        and p["quote_currency_id"] in ("USD", "USDC", "USDT")
    ]  # fmt: skip
    rows.sort(key=lambda p: (-float(p["approximate_quote_24h_volume"] or 0), p["product_id"]))
    expected = [p["product_id"] for p in rows[:20]]
    tier = tiers.rank(tiers.coinbase_candidates(_coinbase_products()), 20, quotes=["USD", "USDC", "USDT"])
    assert tier.symbols == expected


def test_coinbase_non_usd_quotes_are_converted() -> None:
    tier = tiers.rank(tiers.coinbase_candidates(_coinbase_products()), 1000, quotes=["EUR", "BTC"])
    by = {r.symbol: r for r in tier.ranked}
    assert "BTC via BTC-USD" in by["BTC-EUR"].reason  # EUR has no USD pair: through the base
    assert by["BTC-EUR"].usd_volume == pytest.approx(3026562.88 / 56306.27 * 65086.18)
    assert "BTC via BTC-USD" in by["ETH-BTC"].reason  # BTC quote: through the quote's USD price
    assert by["ETH-BTC"].usd_volume == pytest.approx(6.784799 * 65086.18)
    assert tier.excluded["BTC-USD"].startswith("quote USD not in")


def test_binance_only_trading_and_converted() -> None:
    info = msgspec.json.decode(EXCHANGE_INFO.read_bytes(), type=t.ExchangeInfo)
    tickers = msgspec.json.decode(json.dumps(binance_tickers()), type=list[t.Ticker24hr])
    tier = tiers.rank(tiers.binance_candidates(info, tickers), 8)
    assert tier.symbols == [
        "BTC-USDT", "ETH-USDT", "ETH-BTC", "BNB-BUSD", "BTC-BUSD", "SOL-USDT", "XRP-USDT", "BTC-RUB"
    ]  # fmt: skip
    assert tier.excluded["BCC-USDT"] == "status BREAK"  # the largest invented volume, but BREAK in the real data
    assert sum(1 for why in tier.excluded.values() if why == "status BREAK") == 433
    assert tier.ranked[2].usd_volume == pytest.approx(20_000 * 60_000)  # ETH-BTC through BTC-USDT
    assert tier.ranked[7].usd_volume == pytest.approx(1e10 / 4_300_000 * 60_000)  # RUB: through the base
    assert "BTC via BTC-USDT" in tier.ranked[7].reason


def test_binance_oracle_over_the_real_statuses() -> None:
    """A plain-json oracle: TRADING symbols of the real exchangeInfo quoted in USDT/BUSD, by invented volume."""
    info = json.loads(EXCHANGE_INFO.read_bytes())
    volumes = json.loads(INVENTED_TICKERS.read_bytes())["volumes"]
    rows = [
        (float(volumes.get(s["symbol"], ["0"])[0]), f"{s['baseAsset']}-{s['quoteAsset']}")
        for s in info["symbols"]
        if s["status"] == "TRADING" and s["quoteAsset"] in ("USDT", "BUSD")
    ]
    rows.sort(key=lambda r: (-r[0], r[1]))
    decoded = msgspec.json.decode(EXCHANGE_INFO.read_bytes(), type=t.ExchangeInfo)
    tickers = msgspec.json.decode(json.dumps(binance_tickers()), type=list[t.Ticker24hr])
    tier = tiers.rank(tiers.binance_candidates(decoded, tickers), 10, quotes=["USDT", "BUSD"])
    assert tier.symbols == [symbol for _, symbol in rows[:10]]


def test_no_usd_price_is_excluded_with_the_reason() -> None:
    tier = tiers.rank([tiers.Candidate("AAA-BBB", "AAA", "BBB", 1e9, 2.0)], 5)
    assert tier.ranked == []
    assert tier.excluded == {"AAA-BBB": "no USD price for BBB or AAA"}


def test_changes_are_differences_only() -> None:
    old = tiers.rank([tiers.Candidate(s, s[:1], "USD", v, 1.0) for s, v in (("A-USD", 3), ("B-USD", 2))], 2)
    universe = uv.fold(tiers.tier1_changes(uv.Universe(), "x", old, 1))
    assert tiers.tier1_changes(universe, "x", old, 2) == []
    new = tiers.rank([tiers.Candidate(s, s[:1], "USD", v, 1.0) for s, v in (("A-USD", 3), ("C-USD", 5))], 2)
    changes = tiers.tier1_changes(universe, "x", new, 3)
    assert [(type(e).__name__, e.symbol) for e in changes] == [("SymbolRemoved", "B-USD"), ("SymbolAdded", "C-USD")]


# ------------------------------------------------------------------------------------ against a server


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with Simulator(rest_documents=rest_documents(tmp_path)) as simulator:
        yield simulator


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    try:
        yield c
    finally:
        await c.aclose()


async def _universe_events(client: aioredis.Redis) -> list[uv.UniverseEvent]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrange(keys.CONTROL_STREAM)  # type: ignore[assignment]
    return [uv.decode(f[b"event"]) for _, f in entries if b"symbol:" in f.get(b"event", b"")]


async def _pool(client: aioredis.Redis, exchange: str) -> list[str]:
    members: set[bytes] = await client.smembers(keys.pool(exchange))  # type: ignore[assignment]
    return sorted(m.decode() for m in members)


@pytest.mark.redis
async def test_refresh_appends_differences_and_sets_the_pool(client: aioredis.Redis, sim: Simulator) -> None:
    # other control entries (outcomes, commands) are ignored by the fold
    await client.xadd(keys.CONTROL_STREAM, {"event": encode_outcome(
        Accepted(command_id="c1", exchange="coinbase", at_ns=1, command="start"))})  # fmt: skip
    await client.xadd(keys.CONTROL_STREAM, {"command": b"not json"})
    products = _products_doc()
    async with CoinbaseRestClient(sim.urls["coinbase"].rest_url) as cb:
        tier, events = await t1.refresh_tier1(client, cb, "coinbase", 5, at_ns=10)
        assert [e.symbol for e in events] == COINBASE_TOP5
        assert all(isinstance(e, uv.SymbolAdded) and e.tier == "tier1" and e.reason for e in events)
        assert await _pool(client, "coinbase") == sorted(COINBASE_TOP5)
        before = await client.xlen(keys.CONTROL_STREAM)

        _, again = await t1.refresh_tier1(client, cb, "coinbase", 5, at_ns=11)
        assert again == []
        assert await client.xlen(keys.CONTROL_STREAM) == before

        # a ranking change: XRP-USD drops, BICO-USD (6th) moves up; SOL-USD is delisted
        for p in products["products"]:
            if p["product_id"] == "XRP-USD":
                p["approximate_quote_24h_volume"] = "1"
            if p["product_id"] == "SOL-USD":
                p["status"] = "delisted"
        sim.recorded.set("coinbase/products", products)
        _, changed = await t1.refresh_tier1(client, cb, "coinbase", 5, at_ns=12)
    removed = {e.symbol: e.reason for e in changed if isinstance(e, uv.SymbolRemoved)}
    added = [e.symbol for e in changed if isinstance(e, uv.SymbolAdded)]
    assert removed == {"SOL-USD": "status delisted", "XRP-USD": "no longer in the top 5"}
    assert len(added) == 2 and "BICO-USD" in added
    universe = await t1.read_universe(client)
    assert await _pool(client, "coinbase") == universe.pool("coinbase")
    assert len(await _universe_events(client)) == 9

    # a "restart": a fresh fold of the stream is the same universe
    restarted = uv.fold(await _universe_events(client))
    assert restarted == universe == await t1.read_universe(client)
    assert tier.n == 5


@pytest.mark.redis
async def test_refresh_binance_and_a_quote_filter(client: aioredis.Redis, sim: Simulator) -> None:
    async with BinanceRestClient(sim.urls["binance"].rest_url) as bn:
        _, events = await t1.refresh_tier1(client, bn, "binance", 3, quotes=["USDT", "BUSD"], at_ns=1)
        assert [e.symbol for e in events] == ["BTC-USDT", "ETH-USDT", "BNB-BUSD"]
        assert await _pool(client, "binance") == ["BNB-BUSD", "BTC-USDT", "ETH-USDT"]
        _, events = await t1.refresh_tier1(client, bn, "binance", 4, at_ns=2)  # no filter: ETH-BTC (converted)
    assert [(type(e).__name__, e.symbol) for e in events] == [("SymbolAdded", "ETH-BTC")]
    assert "BCC-USDT" not in await _pool(client, "binance")  # BREAK, whatever its volume


@pytest.mark.redis
async def test_symbols_json_shows_tiers_and_reasons(
    client: aioredis.Redis, sim: Simulator, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with CoinbaseRestClient(sim.urls["coinbase"].rest_url) as cb:
        await t1.refresh_tier1(client, cb, "coinbase", 3, at_ns=1)
    held = uv.SymbolAdded(exchange="coinbase", at_ns=2, symbol="BTC-USD", tier="tier2", user="u1", reason="opened")
    await client.xadd(keys.CONTROL_STREAM, {"event": uv.encode(held)})
    capsys.readouterr()
    argv = ["--redis-url", redis_url, "symbols", "coinbase", "--json"]
    assert await asyncio.to_thread(cli.main, argv) == 0  # the CLI runs its own event loop
    rows = json.loads(capsys.readouterr().out)
    by = {r["symbol"]: r for r in rows}
    assert sorted(by) == ["BTC-USD", "ETH-USD", "SOL-USD"]
    assert by["BTC-USD"]["shared"] is True
    assert [(e["tier"], e["user"]) for e in by["BTC-USD"]["tiers"]] == [("tier1", ""), ("tier2", "u1")]
    assert by["BTC-USD"]["tiers"][0]["reason"].startswith("rank 1 by 24h quote volume")
    assert by["BTC-USD"]["tiers"][1]["reason"] == "opened"
    assert by["SOL-USD"]["tiers"][0]["reason"].startswith("rank 3 ")


async def _checkpoint(client: aioredis.Redis) -> bytes:
    raw: Any = await client.get(keys.UNIVERSE_CHECKPOINT)
    return bytes(raw or b"")


@pytest.mark.redis
async def test_the_universe_read_from_its_checkpoint_equals_a_fold_of_the_whole_stream(
    client: aioredis.Redis,
) -> None:
    """``read_universe`` starts from ``checkpoint:universe`` and moves it forward; the oracle is a plain fold
    of every universe event of the stream. Heartbeats (most of a real control stream) are interleaved."""
    import random

    from control import events as ev

    rnd = random.Random(5)
    symbols = [f"S{i}-USD" for i in range(12)]

    async def append(n: int) -> None:
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            if rnd.random() < 0.8:
                beat = ev.Heartbeat(exchange="coinbase", at_ns=i, frames=i)
                pipe.xadd(keys.CONTROL_STREAM, {"event": ev.encode(beat)})
                continue
            kind = uv.SymbolAdded if rnd.random() < 0.6 else uv.SymbolRemoved
            event = kind(exchange="coinbase", at_ns=i, symbol=rnd.choice(symbols), tier=rnd.choice(uv.TIERS),
                         user=rnd.choice(["", "u1", "u2"]), reason=f"r{i}")  # fmt: skip
            pipe.xadd(keys.CONTROL_STREAM, {"event": uv.encode(event)})
        await pipe.execute()

    async def oracle(upto: str = "+") -> uv.Universe:
        entries: Any = await client.xrange(keys.CONTROL_STREAM, max=upto)
        events = [uv.decode(f[b"event"]) for _, f in entries if b"symbol:" in f[b"event"]]
        return uv.fold(events)

    await append(3 * t1.CHECKPOINT_AFTER)
    assert await client.get(keys.UNIVERSE_CHECKPOINT) is None
    assert await t1.read_universe(client) == await oracle()
    saved = uv.decode_checkpoint(await _checkpoint(client))
    assert saved is not None
    newest: Any = await client.xrevrange(keys.CONTROL_STREAM, count=1)
    assert saved[0] == newest[0][0].decode()  # moved to the newest entry read
    await append(t1.CHECKPOINT_AFTER // 2)
    assert await t1.read_universe(client) == await oracle()
    assert uv.decode_checkpoint(await _checkpoint(client)) == saved  # few entries since
    early: Any = await client.xrange(keys.CONTROL_STREAM, count=2 * t1.CHECKPOINT_AFTER)
    middle = early[-1][0].decode()  # before the checkpoint: folded from the start
    assert await t1.read_universe(client, upto=middle) == await oracle(middle)
    # the read starts at the checkpoint: the entries before it deleted (as a trim would) change nothing
    before = await t1.read_universe(client)
    older: Any = await client.xrange(keys.CONTROL_STREAM, max="(" + saved[0])
    await client.xdel(keys.CONTROL_STREAM, *[eid for eid, _ in older])
    assert await oracle() != before
    assert await t1.read_universe(client) == before
    # a stream written again from scratch: its old checkpoint does not apply
    await client.delete(keys.CONTROL_STREAM)
    await append(50)
    assert await t1.read_universe(client) == await oracle()
