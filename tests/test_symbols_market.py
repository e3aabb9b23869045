"""Manual adds (SYM-03), market data (SYM-05) and the cross-exchange ranking (DIFF-03), against the
simulator serving the recorded REST documents, through the CLI and the API on real Redis and PostgreSQL.

The documents are Coinbase's 920 products (2026-08-09) and Binance's full exchangeInfo (2021-10-12,
433 BREAK markets), served verbatim; Binance's 24h volumes are INVENTED (no all-symbols ``ticker/24hr``
was ever recorded: ``tests/data/binance_ticker_24hr_INVENTED.json``, see ``tests/test_tiers.py``). The
oracles are computed here from the raw JSON documents with plain ``json``, not by the code under test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from control import manual, positions
from control import tier1 as t1
from control import universe as uv
from control.api import ApiDeps, create_app, run_api
from control.exchanges import set_urls
from migrations.runner import migrate
from streams import keys
from streams.rest import BinanceRestClient, CoinbaseRestClient
from streams.simulator import Simulator
from streams.symbols import UnknownSymbol
from tests.realdata import COINBASE_AT
from tests.support import drain, ingest
from tests.test_tiers import EXCHANGE_INFO, PRODUCTS, invented_volumes, rest_documents
from tickfold import cli
from tickfold.settings import Settings

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

TOKEN = "tok-symbols-market"
USD_LIKE = ["USD", "USDT", "USDC", "BUSD", "FDUSD", "DAI", "TUSD", "USDP", "PYUSD"]  # the documented order


# ------------------------------------------------------------------------------------------- oracles


def coinbase_markets() -> list[dict[str, Any]]:
    """(symbol, base, quote, quote volume, last price, counted) per product, from the raw products JSON."""
    out = []
    for p in json.loads(PRODUCTS.read_bytes())["products"]:
        trades = p["status"] == "online" and not any(
            p[f] for f in ("trading_disabled", "is_disabled", "cancel_only", "view_only", "auction_mode")
        )
        out.append({
            "symbol": p["product_id"], "base": p["base_currency_id"], "quote": p["quote_currency_id"],
            "volume": float(p["approximate_quote_24h_volume"] or 0), "last": float(p["price"] or 0),
            "counted": trades and not p["alias"],
        })  # fmt: skip
    return out


def binance_markets() -> list[dict[str, Any]]:
    volumes = invented_volumes()
    out = []
    for s in json.loads(EXCHANGE_INFO.read_bytes())["symbols"]:
        volume, last = volumes.get(s["symbol"], ("0", "0"))
        out.append({
            "symbol": f"{s['baseAsset']}-{s['quoteAsset']}", "base": s["baseAsset"], "quote": s["quoteAsset"],
            "volume": float(volume), "last": float(last), "counted": s["status"] == "TRADING",
        })  # fmt: skip
    return out


def usd_volumes(markets: list[dict[str, Any]]) -> dict[str, float]:
    """Counted markets with some volume -> 24h volume in USD: USD-like quotes 1:1, else through the
    quote's USD price, else the base's (a USD price: the last price of a counted ASSET-<USD-like> market,
    USD-like quotes preferred in their documented order)."""
    price: dict[str, tuple[int, float]] = {}
    for m in markets:
        if m["counted"] and m["quote"] in USD_LIKE and m["last"] > 0:
            pref = USD_LIKE.index(m["quote"])
            if m["base"] not in price or pref < price[m["base"]][0]:
                price[m["base"]] = (pref, m["last"])
    out = {}
    for m in markets:
        if not m["counted"] or m["volume"] <= 0:
            continue
        if m["quote"] in USD_LIKE:
            out[m["symbol"]] = m["volume"]
        elif m["quote"] in price:
            out[m["symbol"]] = m["volume"] * price[m["quote"]][1]
        elif m["base"] in price and m["last"] > 0:
            out[m["symbol"]] = m["volume"] / m["last"] * price[m["base"]][1]
    return out


def ranking_oracle(top: int) -> list[tuple[str, float, dict[tuple[str, str], float]]]:
    """(pair, combined USD volume, {(exchange, symbol): USD volume}) of the top pairs."""
    pairs: dict[str, dict[tuple[str, str], float]] = {}
    for exchange, markets in (("binance", binance_markets()), ("coinbase", coinbase_markets())):
        quotes = {m["symbol"]: (m["base"], m["quote"]) for m in markets}
        for symbol, usd in usd_volumes(markets).items():
            base, quote = quotes[symbol]
            pair = f"{base}/{'USD' if quote in USD_LIKE else quote}"
            pairs.setdefault(pair, {})[(exchange, symbol)] = usd
    ranked = sorted(((sum(p.values()), pair, p) for pair, p in pairs.items()), key=lambda r: (-r[0], r[1]))
    return [(pair, total, parts) for total, pair, parts in ranked[:top]]


def assert_ranking(pairs: list[dict[str, Any]], top: int) -> None:
    expected = ranking_oracle(top)
    assert [p["pair"] for p in pairs] == [pair for pair, _, _ in expected]
    for got, (_, total, parts) in zip(pairs, expected, strict=True):
        assert got["usd_volume_24h"] == pytest.approx(total)
        assert {(q["exchange"], q["symbol"]): q["usd_volume_24h"] for q in got["parts"]} == pytest.approx(parts)
        volumes = [q["usd_volume_24h"] for q in got["parts"]]
        assert volumes == sorted(volumes, reverse=True)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with Simulator(rest_documents=rest_documents(tmp_path)) as simulator:
        yield simulator


@pytest.fixture
async def dsn(pg_dsn: str, sim: Simulator) -> str:
    """A migrated database whose exchanges rows point at the simulator's REST."""
    await migrate(pg_dsn)
    for ex in ("binance", "coinbase"):
        await set_urls(pg_dsn, ex, ws_url=None, rest_url=sim.urls[ex].rest_url)
    return pg_dsn


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


async def run_cli(redis_url: str, dsn: str, *argv: str) -> int:
    return await asyncio.to_thread(cli.main, ["--redis-url", redis_url, "--database-url", dsn, *argv])


async def universe_events(client: aioredis.Redis) -> list[uv.UniverseEvent]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrange(keys.CONTROL_STREAM)  # type: ignore[assignment]
    return [uv.decode(f[b"event"]) for _, f in entries if b"symbol:" in f.get(b"event", b"")]


async def user_keys(client: aioredis.Redis, pattern: str) -> list[bytes]:
    return [k async for k in client.scan_iter(pattern)]


# ----------------------------------------------------------------------------------- SYM-03 manual adds


async def test_manual_add_refuses_unknown_break_alias_and_delisted_with_the_reason(
    client: aioredis.Redis, dsn: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = [
        (("binance", "BCCUSDT"), "tickfold: binance BCCUSDT (BCC-USDT) does not trade: status BREAK"),
        (("binance", "hsr-btc"), "tickfold: binance HSRBTC (HSR-BTC) does not trade: status BREAK"),
        (("binance", "NOPEUSDT"), "tickfold: binance has no market 'NOPEUSDT' (not among the 1695 markets"),
        (("coinbase", "DAI-USD"), "tickfold: coinbase DAI-USD does not trade: status delisted"),
        (("coinbase", "BTC-USDC"), "tickfold: coinbase BTC-USDC is an alias of BTC-USD (the same order book): add"),
        (("coinbase", "BTCUSD"), "tickfold: coinbase has no market 'BTCUSD'"),
    ]
    for (exchange, symbol), message in refused:
        capsys.readouterr()
        assert await run_cli(redis_url, dsn, "symbols", "add", exchange, symbol, "--user", "u1") == 1
        assert message in capsys.readouterr().err
    assert await run_cli(redis_url, dsn, "symbols", "add", "binance", "BTCUSDT") == 2  # no --user
    assert "add needs --user" in capsys.readouterr().err
    assert await run_cli(redis_url, dsn, "symbols", "add", "binance") == 2
    assert await universe_events(client) == []  # nothing written for a refused symbol
    assert await user_keys(client, "holders:*") == []


async def test_manual_add_in_tier1_is_shared_outside_it_overflows_and_is_removed(
    client: aioredis.Redis, dsn: str, sim: Simulator, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with CoinbaseRestClient(sim.urls["coinbase"].rest_url) as cb:
        tier, _ = await t1.refresh_tier1(client, cb, "coinbase", 1, at_ns=1)
    assert tier.symbols == ["BTC-USD"]
    capsys.readouterr()
    assert await run_cli(redis_url, dsn, "symbols", "add", "coinbase", "btc-usd", "--user", "u1") == 0
    assert "u1 added BTC-USD (BTC-USD; manual, shared: in Tier 1)" in capsys.readouterr().out
    assert await run_cli(redis_url, dsn, "symbols", "add", "coinbase", "ETH-USD", "--user", "u2", "--reason", "r") == 0
    assert "u2 added ETH-USD (ETH-USD; manual, outside Tier 1: user overflow keys)" in capsys.readouterr().out
    assert await run_cli(redis_url, dsn, "symbols", "add", "coinbase", "ETH-USD", "--user", "u2") == 0
    assert "u2 had already added ETH-USD" in capsys.readouterr().out  # no second event

    events = [e for e in await universe_events(client) if e.tier == "manual"]
    assert [(type(e).__name__, e.symbol, e.user, e.reason) for e in events] == [
        ("SymbolAdded", "BTC-USD", "u1", "added by u1"),
        ("SymbolAdded", "ETH-USD", "u2", "r"),
    ]
    universe = await t1.read_universe(client)
    assert universe.symbols["coinbase"]["BTC-USD"].tiers == {
        "tier1": {"": universe.symbols["coinbase"]["BTC-USD"].tiers["tier1"][""]},
        "manual": {"u1": "added by u1"},
    }
    assert universe.watched("coinbase") == ["BTC-USD", "ETH-USD"] and universe.pool("coinbase") == ["BTC-USD"]

    await ingest(client, "coinbase", COINBASE_AT)  # the real BTC-USD / ETH-USD session
    await drain(client, ["coinbase"])
    assert await client.exists(keys.candles("coinbase", "BTC-USD", "1m"))
    assert await user_keys(client, "user*:u1:*") == []  # in Tier 1: shared keys only, never stored twice
    overflow = keys.usercandles("u2", "coinbase", "ETH-USD", "1m")
    assert await client.zcard(overflow) > 0 and 0 < await client.pttl(overflow)
    assert not await client.exists(keys.candles("coinbase", "ETH-USD", "1m"))

    await client.pexpire(overflow, 1_000)  # manual holds are refreshed with the positions'
    assert await positions.refresh_holds(dsn, client, ttl_ms=120_000) == 2
    assert await client.pttl(overflow) > 100_000

    assert await run_cli(redis_url, dsn, "symbols", "remove", "coinbase", "ETH-USD", "--user", "u2") == 0
    assert await run_cli(redis_url, dsn, "symbols", "remove", "coinbase", "ETH-USD", "--user", "u2") == 1
    assert "u2 has no manual add of coinbase 'ETH-USD' (their manual adds there: none)" in capsys.readouterr().err
    assert await client.zscore(keys.holders("coinbase", "ETH-USD"), "u2") is None  # released: the TTL runs out
    assert await positions.refresh_holds(dsn, client, ttl_ms=120_000) == 1
    assert (await t1.read_universe(client)).watched("coinbase") == ["BTC-USD"]
    assert await run_cli(redis_url, dsn, "symbols", "coinbase", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["symbol"], [e["tier"] for e in r["tiers"]]) for r in rows] == [("BTC-USD", ["manual", "tier1"])]


async def test_binance_manual_add_by_canonical_name_and_the_manual_holds(
    client: aioredis.Redis, sim: Simulator
) -> None:
    async with BinanceRestClient(sim.urls["binance"].rest_url) as bn:
        checked, event = await manual.add_manual(client, bn, "binance", "eth/btc", "u3", ttl_ms=60_000)
    assert (checked.symbol, checked.native) == ("ETH-BTC", "ETHBTC") and event is not None
    assert manual.manual_holds(await t1.read_universe(client)) == [("binance", "ETH-BTC", "u3")]
    assert 0 < (await client.zscore(keys.holders("binance", "ETH-BTC"), "u3") or 0)
    removed = await manual.remove_manual(client, "binance", "ETHBTC", "u3")
    assert removed.symbol == "ETH-BTC" and removed.tier == "manual"


async def test_accepted_markets_are_remembered_for_a_minute_and_refusals_are_asked_again(sim: Simulator) -> None:
    now = [0.0]
    listings = manual.Listings(max_age_s=60.0, clock=lambda: now[0])
    async with BinanceRestClient(sim.urls["binance"].rest_url) as bn:
        asked = 0
        real = bn.exchange_info

        async def counted(symbol: str | None = None) -> Any:
            nonlocal asked
            asked += 1
            return await real(symbol)

        bn.exchange_info = counted  # type: ignore[method-assign]
        first = await manual.check_market(bn, "binance", "ETHUSDT", listings=listings)
        assert await manual.check_market(bn, "binance", "ethusdt", listings=listings) == first
        assert asked == 1  # the second add of a market the listing accepted: no request
        for _ in range(2):  # refusals: the exchange's current answer, every time
            with pytest.raises(UnknownSymbol):
                await manual.check_market(bn, "binance", "NOPEUSDT", listings=listings)
            with pytest.raises(manual.NotTradable):
                await manual.check_market(bn, "binance", "BCCUSDT", listings=listings)
        assert asked == 5
        now[0] = 60.5  # older than a minute: asked again
        assert await manual.check_market(bn, "binance", "ETHUSDT", listings=listings) == first
        assert asked == 6
        await manual.check_market(bn, "binance", "ETHUSDT", listings=None)  # no listings: always asked
        assert asked == 7


async def test_a_manual_add_and_a_position_of_one_user_keep_the_hold_until_both_are_gone(
    client: aioredis.Redis, dsn: str, sim: Simulator
) -> None:
    holders = keys.holders("binance", "ETH-USDT")
    async with BinanceRestClient(sim.urls["binance"].rest_url) as bn:
        await manual.add_manual(client, bn, "binance", "ETHUSDT", "u1")
    await positions.open_position(dsn, client, "u1", "binance", "ETHUSDT", Decimal("1"))
    await positions.close_position(dsn, client, "u1", "binance", "ETHUSDT")
    assert await client.zscore(holders, "u1") is not None  # still added manually: still held
    await positions.open_position(dsn, client, "u1", "binance", "ETHUSDT", Decimal("2"))
    await manual.remove_manual(client, "binance", "ETH-USDT", "u1")
    assert await client.zscore(holders, "u1") is not None  # the position still holds it
    await positions.close_position(dsn, client, "u1", "binance", "ETHUSDT")
    assert await client.zscore(holders, "u1") is None
    assert (await t1.read_universe(client)).watched("binance") == []


# --------------------------------------------------------------------------------- SYM-05 market data


async def test_market_table_shows_volume_price_cap_and_tradability(
    dsn: str, redis_url: str, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert await run_cli(redis_url, dsn, "symbols", "market", "coinbase", "--top", "0", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    raw = {m["symbol"]: m for m in coinbase_markets()}
    assert len(rows) == 920
    by = {r["symbol"]: r for r in rows}
    btc = by["BTC-USD"]
    assert (btc["quote_volume_24h"], btc["usd_volume_24h"], btc["last_price"]) == (186637571.25, 186637571.25, 65086.18)
    assert btc["market_cap"] is None and btc["tradable"] is True and btc["why_not"] == ""
    assert by["BTC-USDC"]["tradable"] is True and by["BTC-USDC"]["why_not"].startswith("alias of BTC-USD")
    assert by["DAI-USD"]["tradable"] is False and by["DAI-USD"]["why_not"] == "status delisted"
    assert all(r["market_cap"] is None for r in rows)  # Coinbase sends market_cap, empty in this capture
    usd_quoted = sorted((m for m in raw.values() if m["quote"] in USD_LIKE), key=lambda m: (-m["volume"], m["symbol"]))
    assert [r["symbol"] for r in rows[:12]] == [m["symbol"] for m in usd_quoted[:12]]
    assert by["ETH-BTC"]["usd_volume_24h"] == pytest.approx(raw["ETH-BTC"]["volume"] * raw["BTC-USD"]["last"])

    doc = json.loads(PRODUCTS.read_bytes())  # a product that does give a market cap shows it
    doc["products"][0]["market_cap"] = "1290000000000"
    sim.recorded.set("coinbase/products", doc)
    assert await run_cli(redis_url, dsn, "symbols", "market", "coinbase", "--top", "1", "--json") == 0
    (first,) = json.loads(capsys.readouterr().out)
    assert (first["symbol"], first["market_cap"]) == ("BTC-USD", "1290000000000")

    assert await run_cli(redis_url, dsn, "symbols", "market", "binance", "--top", "3", "--json") == 0
    top3 = json.loads(capsys.readouterr().out)
    assert [(r["symbol"], r["native"], r["tradable"], r["why_not"]) for r in top3] == [
        ("BCC-USDT", "BCCUSDT", False, "status BREAK"),  # listed with its (invented) volume, but does not trade
        ("BTC-USDT", "BTCUSDT", True, ""),
        ("ETH-USDT", "ETHUSDT", True, ""),
    ]
    assert all(r["market_cap"] is None for r in top3)  # Binance's ticker/24hr has no market cap
    assert await run_cli(redis_url, dsn, "symbols", "market", "binance", "--top", "5") == 0
    table = capsys.readouterr().out
    assert "BCC-USDT (BCCUSDT)" in table and "no: status BREAK" in table


# ----------------------------------------------------------------------------- DIFF-03 the ranking


async def test_cross_exchange_ranking_matches_the_oracle(
    dsn: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert await run_cli(redis_url, dsn, "symbols", "ranking", "--top", "15", "--json") == 0
    pairs = json.loads(capsys.readouterr().out)
    assert_ranking(pairs, 15)
    btc = pairs[0]
    assert btc["pair"] == "BTC/USD"  # Binance BTCUSDT + BTCBUSD, Coinbase BTC-USD + BTC-USDT; BTC-USDC is an alias
    assert {(p["exchange"], p["symbol"]) for p in btc["parts"]} == {
        ("binance", "BTC-USDT"), ("binance", "BTC-BUSD"), ("coinbase", "BTC-USD"), ("coinbase", "BTC-USDT")
    }  # fmt: skip
    assert await run_cli(redis_url, dsn, "symbols", "ranking", "--exchange", "coinbase", "--top", "3", "--json") == 0
    only = json.loads(capsys.readouterr().out)
    assert [p["pair"] for p in only] == ["BTC/USD", "ETH/USD", "SOL/USD"]
    assert {q["exchange"] for p in only for q in p["parts"]} == {"coinbase"}


# ------------------------------------------------------------------------------------------------ API


@pytest.fixture
async def api(redis_url: str, dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    deps = ApiDeps(settings=Settings(api_token=TOKEN), redis_url=redis_url, database_url=dsn)
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_api(create_app(deps), "127.0.0.1", 0, stop, on_listening=lambda _, p: bound.set_result(p))
    )
    await asyncio.wait_for(bound, 10)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bound.result()}", timeout=20) as http:
        yield http
    stop.set()
    await asyncio.wait_for(task, 15)


async def test_api_manual_adds_markets_and_ranking(api: httpx.AsyncClient, client: aioredis.Redis) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = await api.post("/exchanges/binance/symbols", json={"symbol": "BCCUSDT", "user": "u1"}, headers=auth)
    assert r.status_code == 422 and r.json() == {
        "error": "not_tradable", "detail": "binance BCCUSDT (BCC-USDT) does not trade: status BREAK"
    }  # fmt: skip
    r = await api.post("/exchanges/binance/symbols", json={"symbol": "NOPEUSDT", "user": "u1"}, headers=auth)
    assert r.status_code == 404 and r.json()["error"] == "unknown_symbol" and "NOPEUSDT" in r.json()["detail"]
    r = await api.post("/exchanges/binance/symbols", json={"symbol": "SOLUSDT", "user": "u1"})
    assert r.status_code == 401
    r = await api.post("/exchanges/nope/symbols", json={"symbol": "SOLUSDT", "user": "u1"}, headers=auth)
    assert r.status_code == 404 and r.json()["error"] == "unknown_exchange"
    assert await universe_events(client) == []

    r = await api.post("/exchanges/binance/symbols", json={"symbol": "SOLUSDT", "user": "u1"}, headers=auth)
    assert r.status_code == 201, r.text
    assert r.json() == {
        "exchange": "binance", "symbol": "SOL-USDT", "native": "SOLUSDT", "user": "u1", "added": True, "shared": False
    }  # fmt: skip
    r = await api.get("/exchanges/binance/symbols")
    assert [(s["symbol"], s["tiers"][0]["tier"], s["tiers"][0]["user"]) for s in r.json()] == [
        ("SOL-USDT", "manual", "u1")
    ]
    r = await api.delete("/exchanges/binance/symbols/SOLUSDT", params={"user": "u1"}, headers=auth)
    assert r.status_code == 200 and r.json() == {"exchange": "binance", "symbol": "SOL-USDT", "user": "u1"}
    r = await api.delete("/exchanges/binance/symbols/SOLUSDT", params={"user": "u1"}, headers=auth)
    assert r.status_code == 404 and "u1 has no manual add" in r.json()["detail"]

    r = await api.get("/exchanges/coinbase/markets", params={"top": 2})
    assert [(m["symbol"], m["last_price"], m["market_cap"]) for m in r.json()] == [
        ("BTC-USD", 65086.18, None), ("BTC-USDC", 65083.67, None)
    ]  # fmt: skip
    r = await api.get("/markets/ranking", params={"top": 10})
    body = r.json()
    assert body["exchanges"] == ["binance", "coinbase"] and body["usd_quotes"].startswith("every USD-like quote")
    assert_ranking(body["pairs"], 10)
    r = await api.get("/schema/openapi.json")
    assert "/markets/ranking" in r.json()["paths"] and "/exchanges/{exchange_id}/markets" in r.json()["paths"]
