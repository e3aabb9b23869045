"""REST clients against a local aiohttp server that serves the real recorded responses in ../shared/realdata.

The server mimics the exchanges' paging semantics over the recorded rows (Binance ``startTime``/
``endTime``/``fromId``/``limit``; Coinbase ``start``/``end`` inclusive, newest first, windows of more
than ``limit`` buckets rejected with 400 INVALID_ARGUMENT) and can be scripted to answer 429/418/5xx.
Sleeping and the monotonic clock are injected: tests assert on the waits, nothing really sleeps.
The oracles are the recorded files read with plain ``json``.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import random
import socket
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from streams.rest import (
    BadRequest,
    Banned,
    BinanceRestClient,
    CoinbaseRestClient,
    ExchangeUnavailable,
    RateLimited,
    UnexpectedResponse,
    binance_markets,
    binance_symbol_map,
    coinbase_aliases,
    coinbase_markets,
)
from streams.rest import types as t
from streams.symbols import SymbolMap, bundled
from tests.realdata import REALDATA, require

pytestmark = pytest.mark.unit

BN = REALDATA / "binance"
CB = REALDATA / "coinbase"
EXCHANGE_INFO = BN / "rest_exchangeInfo_2021-10-12_full.json"
EXCHANGE_INFO_ONE = BN / "rest_exchangeInfo_BTCUSDT_2021-10-22.nautilus.json"
KLINES_ETH = BN / "rest_klines_ETHUSDT_1m_2026-10-06.clim.json"
KLINES_BTC = BN / "rest_klines_BTCUSDT_1m_2021-10-22.nautilus.json"
TICKER_BTC = BN / "rest_ticker_24hr_BTCUSDT_2021-10-22.nautilus.json"
AGG_TRADES_BTC = BN / "rest_aggTrades_BTCUSDT_2021-10-22.nautilus.json"
PRODUCTS = CB / "rest_market_products_2026-08-09.json"
CANDLES_ETH = CB / "rest_market_candles_ETH-USD_ONE_MINUTE_2026-10-06.clim.json"
ALGO_PAGES = [CB / f"rest_candles_ALGO-USD_ONE_DAY_page{i}.kmiq.json" for i in (1, 2, 3)]

# Both ETH files were captured at the same instant (SOURCES.md: clim fixtures/now.txt).
CAPTURE_S = 1791282309  # 2026-10-06T10:25:09Z
CAPTURE_DATE = email.utils.formatdate(CAPTURE_S, usegmt=True)

BINANCE_WEIGHTS = {"exchangeInfo": 20, "klines": 2, "aggTrades": 4}


def load(path: Path) -> Any:
    return json.loads(require(path).read_bytes())


# --------------------------------------------------------------------------------------------------
# Test doubles: clock, and the exchange server
# --------------------------------------------------------------------------------------------------


class FakeClock:
    """Injected ``monotonic`` and ``sleep``: sleeping only records the wait and moves the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


Scripted = tuple[int, dict[str, str], bytes]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, *, date: str | None = None, status: int = 200) -> web.Response:
    headers = {"Date": date} if date else None
    return web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json", headers=headers)


def _binance_error(code: int, msg: str, status: int = 400) -> web.Response:
    return _json({"code": code, "msg": msg}, status=status)


class FakeExchange:
    """Binance under ``/binance``, Coinbase under ``/coinbase/api/v3/brokerage/market``, on 127.0.0.1:0."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock  # the weight counter resets each minute of the injected clock, like Binance's
        self.weight_minute = -1
        self.script: dict[str, list[Scripted]] = defaultdict(list)  # path -> answers served first
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.kline_dates: dict[str, str] = {"ETHUSDT": CAPTURE_DATE}  # Date header per symbol
        self.binance_weight = 0
        self.other_weight = 0  # weight "another process on our IP" used this minute
        self.klines = {"ETHUSDT": load(KLINES_ETH), "BTCUSDT": load(KLINES_BTC)}
        self.agg_trades = load(AGG_TRADES_BTC)
        self.ticker = load(TICKER_BTC)
        algo: list[dict[str, str]] = []
        for page in ALGO_PAGES:
            algo.extend(load(page)["candles"])  # each page newest first, page 1 the newest
        self.candles = {("ETH-USD", "ONE_MINUTE"): load(CANDLES_ETH)["candles"], ("ALGO-USD", "ONE_DAY"): algo}
        self.candle_dates = {"ETH-USD": CAPTURE_DATE}
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/binance/api/v3/exchangeInfo", self._file_handler(EXCHANGE_INFO))
        app.router.add_get("/binance/api/v3/klines", self._klines)
        app.router.add_get("/binance/api/v3/ticker/24hr", self._ticker)
        app.router.add_get("/binance/api/v3/aggTrades", self._agg_trades)
        cb = "/coinbase/api/v3/brokerage/market"
        app.router.add_get(f"{cb}/products", self._file_handler(PRODUCTS))
        app.router.add_get(f"{cb}/products/{{product_id}}/candles", self._candles)
        self.runner = web.AppRunner(app)
        self.url = ""

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        await self.runner.cleanup()

    def requests_to(self, suffix: str) -> list[dict[str, str]]:
        return [q for p, q in self.requests if p.endswith(suffix)]

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.query)))
        if request.path.startswith("/binance/"):
            name = request.path.rsplit("/api/v3/", 1)[1]
            weight = 80 if name == "ticker/24hr" and "symbol" not in request.query else BINANCE_WEIGHTS.get(name, 2)
            minute = int(self.clock.now // 60)
            if minute != self.weight_minute:
                self.weight_minute, self.binance_weight = minute, 0
            self.binance_weight += weight
        queue = self.script.get(request.path)
        if queue:
            status, headers, body = queue.pop(0)
            response: web.StreamResponse = web.Response(
                status=status, headers=headers, body=body, content_type="application/json"
            )
        else:
            response = await handler(request)
        if request.path.startswith("/binance/"):
            response.headers["X-MBX-USED-WEIGHT-1M"] = str(self.binance_weight + self.other_weight)
        return response

    @staticmethod
    def _file_handler(path: Path) -> Handler:
        body = require(path).read_bytes()

        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(body=body, content_type="application/json")

        return handler

    async def _klines(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        rows = self.klines.get(q.get("symbol", ""))
        if rows is None:
            return _binance_error(-1121, "Invalid symbol.")
        start, end = int(q.get("startTime", 0)), int(q.get("endTime", 2**62))
        limit = int(q.get("limit", 500))
        if not 1 <= limit <= 1000:
            return _binance_error(-1130, "Data sent for parameter 'limit' is not valid.")
        picked = [r for r in rows if start <= r[0] <= end][:limit]
        return _json(picked, date=self.kline_dates.get(q["symbol"]))

    async def _ticker(self, request: web.Request) -> web.StreamResponse:
        symbol = request.query.get("symbol")
        if symbol is None:
            return _json([self.ticker])  # no real all-symbols capture exists: the recorded object, in an array
        if symbol != self.ticker["symbol"]:
            return _binance_error(-1121, "Invalid symbol.")
        return _json(self.ticker)

    async def _agg_trades(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        if q.get("symbol") != "BTCUSDT":
            return _binance_error(-1121, "Invalid symbol.")
        rows = self.agg_trades
        if "fromId" in q:
            rows = [r for r in rows if r["a"] >= int(q["fromId"])]
        if "startTime" in q:
            rows = [r for r in rows if r["T"] >= int(q["startTime"])]
        if "endTime" in q:
            rows = [r for r in rows if r["T"] <= int(q["endTime"])]
        return _json(rows[: int(q.get("limit", 500))])

    async def _candles(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        rows = self.candles.get((request.match_info["product_id"], q.get("granularity", "")))
        if rows is None:
            return _json({"error": "NOT_FOUND", "message": "product not found"}, status=404)
        step = t.GRANULARITY_SECONDS[q["granularity"]]
        start, end, limit = int(q["start"]), int(q["end"]), int(q.get("limit", 350))
        if limit > 350 or (end - start) // step >= limit:
            msg = f"start and end argument is invalid - number of candles requested should be less than {limit}"
            return _json({"error": "INVALID_ARGUMENT", "error_details": msg, "message": msg}, status=400)
        picked = [r for r in rows if start <= int(r["start"]) <= end]  # stays newest first
        return _json({"candles": picked}, date=self.candle_dates.get(request.match_info["product_id"]))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server(clock: FakeClock) -> AsyncIterator[FakeExchange]:
    ex = FakeExchange(clock)
    await ex.start()
    try:
        yield ex
    finally:
        await ex.stop()


def binance(server: FakeExchange, clock: FakeClock, **kwargs: Any) -> BinanceRestClient:
    return BinanceRestClient(
        server.url + "/binance", sleep=clock.sleep, monotonic=clock.monotonic, rng=random.Random(7), **kwargs
    )


def coinbase(server: FakeExchange, clock: FakeClock, **kwargs: Any) -> CoinbaseRestClient:
    return CoinbaseRestClient(
        server.url + "/coinbase/api/v3/brokerage/market",
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        rng=random.Random(7),
        **kwargs,
    )


# --------------------------------------------------------------------------------------------------
# Decoding every recorded REST response
# --------------------------------------------------------------------------------------------------


def test_decode_every_recorded_binance_response() -> None:
    info = t.EXCHANGE_INFO.decode(require(EXCHANGE_INFO).read_bytes())
    raw = load(EXCHANGE_INFO)
    assert len(info.symbols) == len(raw["symbols"]) == 1695
    assert info.server_time == raw["serverTime"]
    assert [(s.symbol, s.base_asset, s.quote_asset, s.status) for s in info.symbols] == [
        (s["symbol"], s["baseAsset"], s["quoteAsset"], s["status"]) for s in raw["symbols"]
    ]
    assert info.symbols[0].filters == raw["symbols"][0]["filters"]
    weight = [rl for rl in info.rate_limits if rl.rate_limit_type == "REQUEST_WEIGHT"]
    assert [(rl.limit, rl.window_s) for rl in weight] == [(1200, 60)]  # the 2021 value; today 6000

    small = t.EXCHANGE_INFO.decode(require(EXCHANGE_INFO_ONE).read_bytes())
    assert [s.symbol for s in small.symbols] == ["BTCUSDT", "ETHUSDT"]  # SOURCES.md says "1 symbol"; it holds 2

    for path in (KLINES_ETH, KLINES_BTC):
        rows = t.KLINES.decode(require(path).read_bytes())
        assert [[getattr(r, f) for f in r.__struct_fields__] for r in rows] == load(path)  # exact, strings kept

    ticker = t.TICKER_24HR_ONE.decode(require(TICKER_BTC).read_bytes())
    raw_ticker = load(TICKER_BTC)
    assert (ticker.symbol, ticker.last_price, ticker.count, ticker.first_id) == (
        "BTCUSDT",
        raw_ticker["lastPrice"],
        raw_ticker["count"],
        raw_ticker["firstId"],
    )

    trades = t.AGG_TRADES.decode(require(AGG_TRADES_BTC).read_bytes())
    assert [(a.id, a.price, a.qty, a.time, a.buyer_maker) for a in trades] == [
        (r["a"], r["p"], r["q"], r["T"], r["m"]) for r in load(AGG_TRADES_BTC)
    ]


def test_decode_every_recorded_coinbase_response() -> None:
    products = t.PRODUCTS.decode(require(PRODUCTS).read_bytes()).products
    raw = load(PRODUCTS)["products"]
    assert len(products) == len(raw) == 920
    assert [
        (p.product_id, p.base_currency_id, p.quote_currency_id, p.status, p.alias, p.alias_to) for p in products
    ] == [
        (p["product_id"], p["base_currency_id"], p["quote_currency_id"], p["status"], p["alias"], p["alias_to"])
        for p in raw
    ]
    btc = products[0]
    assert (btc.product_id, btc.volume_24h, btc.approximate_quote_24h_volume) == (
        "BTC-USD",
        "2867.54532609",
        "186637571.25",
    )
    # Older / trimmed product captures (fields missing there take their defaults).
    for name in ("rest_products_2026-04-07.nautilus.json", "rest_products_list.kmiq.json"):
        assert t.PRODUCTS.decode(require(CB / name).read_bytes()).products
    for name in ("rest_product_BTC-USD_2026-04-07.nautilus.json", "rest_product.kmiq.json"):
        assert t.PRODUCT.decode(require(CB / name).read_bytes()).product_id == "BTC-USD"

    for name in (
        CANDLES_ETH.name,
        *(p.name for p in ALGO_PAGES),
        "rest_candles_ALGO-USD_ONE_DAY_2023-01.kmiq.json",
        "rest_candles_BTC-USD_ONE_HOUR_2024-04-04.nautilus.json",
    ):
        rows = t.CANDLES.decode(require(CB / name).read_bytes()).candles
        assert [{f: getattr(r, f) for f in r.__struct_fields__} for r in rows] == load(CB / name)["candles"]


# --------------------------------------------------------------------------------------------------
# Binance
# --------------------------------------------------------------------------------------------------


async def test_exchange_info_adopts_the_servers_weight_limit(server: FakeExchange, clock: FakeClock) -> None:
    async with binance(server, clock) as client:
        assert client.budget.limit == 6000
        info = await client.exchange_info()
        assert len(info.symbols) == 1695
        assert client.budget.limit == 1200  # rateLimits REQUEST_WEIGHT of 2021, lower than the default
        assert client.budget.used() == 20
        assert client.used_weight_1m == 20


def test_binance_markets_come_from_base_and_quote_assets() -> None:
    info = t.EXCHANGE_INFO.decode(require(EXCHANGE_INFO).read_bytes())
    markets = {m.native: m for m in binance_markets(info)}
    assert len(markets) == 1695
    assert markets["BTCUSDT"].canonical == "BTC-USDT"
    assert Counter(m.status for m in markets.values()) == {"TRADING": 1262, "BREAK": 433}

    # Suffix-splitting on common quotes ("USD" listed before "TUSD") gets these wrong; the metadata doesn't.
    def naive(symbol: str) -> str:
        quote = next(q for q in ("USDT", "BUSD", "USD", "TUSD", "BTC", "ETH", "BNB") if symbol.endswith(q))
        return f"{symbol[: -len(quote)]}-{quote}"

    assert naive("BTCTUSD") == "BTCT-USD"
    assert markets["BTCTUSD"].canonical == "BTC-TUSD"
    assert naive("USDSTUSD") == "USDST-USD"
    assert markets["USDSTUSD"].canonical == "USDS-TUSD"
    assert (markets["BCHABCTUSD"].canonical, markets["BCHABCTUSD"].status) == ("BCHABC-TUSD", "BREAK")

    symbols = binance_symbol_map(info)
    assert symbols.canonical("BTCTUSD") == "BTC-TUSD"
    assert symbols.native("BTC-TUSD") == "BTCTUSD"
    assert symbols.resolve("ethbtc") == "ETH-BTC"
    # The snapshot tickfold ships was derived from the same response: identical mapping.
    shipped = bundled("binance")
    assert all(shipped.canonical(m.native) == m.canonical for m in markets.values())


async def test_klines_oldest_first_and_the_open_last_row(server: FakeExchange, clock: FakeClock) -> None:
    raw = load(KLINES_ETH)
    async with binance(server, clock) as client:
        klines = await client.klines("ETHUSDT", "1m", limit=20)
    assert [k.open_time for k in klines] == [r[0] for r in raw]
    assert all(b.open_time - a.open_time == 60_000 for a, b in itertools.pairwise(klines))
    assert [(k.open, k.close, k.volume, k.trades, k.taker_buy_quote_volume) for k in klines] == [
        (r[1], r[4], r[5], r[8], r[10]) for r in raw
    ]
    # Served with the capture's Date (10:25:09): the 10:25 minute is still open, every earlier one closed.
    assert [k.closed for k in klines] == [True] * 19 + [False]
    assert klines[-1].open_time == (CAPTURE_S // 60) * 60 * 1000
    assert klines[-1].close_time > CAPTURE_S * 1000


async def test_klines_of_2021_are_all_closed(server: FakeExchange, clock: FakeClock) -> None:
    async with binance(server, clock) as client:
        klines = await client.klines("BTCUSDT", "1m")
    assert len(klines) == 10 and all(k.closed for k in klines)
    assert [k.open_time for k in klines] == sorted(k.open_time for k in klines)


async def test_closed_falls_back_to_the_wall_clock_without_a_usable_date(
    server: FakeExchange, clock: FakeClock
) -> None:
    server.kline_dates["ETHUSDT"] = "not a date"
    async with binance(server, clock, wall_clock=lambda: float(CAPTURE_S)) as client:
        assert [k.closed for k in await client.klines("ETHUSDT", "1m", limit=20)][-2:] == [True, False]
    async with binance(server, clock, wall_clock=lambda: CAPTURE_S + 60.0) as client:
        assert all(k.closed for k in await client.klines("ETHUSDT", "1m", limit=20))


async def test_klines_range_paginates_oldest_first(server: FakeExchange, clock: FakeClock) -> None:
    raw = load(KLINES_ETH)
    async with binance(server, clock) as client:
        got = [k async for k in client.klines_range("ETHUSDT", "1m", raw[0][0], raw[-1][0] + 59_999, page_limit=7)]
        assert [k.open_time for k in got] == [r[0] for r in raw]  # all 20, in order, no repeats
        assert [k.closed for k in got] == [True] * 19 + [False]
        assert [int(q["startTime"]) for q in server.requests_to("/klines")] == [raw[0][0], raw[7][0], raw[14][0]]

        middle = [k async for k in client.klines_range("ETHUSDT", "1m", raw[3][0], raw[9][0], page_limit=1000)]
        assert [k.open_time for k in middle] == [r[0] for r in raw[3:10]]


async def test_ticker_24hr_is_always_a_list_and_weighs_2_or_80(server: FakeExchange, clock: FakeClock) -> None:
    async with binance(server, clock) as client:
        one = await client.ticker_24hr("BTCUSDT")
        assert [x.symbol for x in one] == ["BTCUSDT"] and one[0].count == 1580643
        assert client.budget.used() == 2
        every = await client.ticker_24hr()
        assert [x.symbol for x in every] == ["BTCUSDT"]
        assert client.budget.used() == 82


async def test_agg_trades_paginate_by_from_id(server: FakeExchange, clock: FakeClock) -> None:
    raw = load(AGG_TRADES_BTC)
    ids = [r["a"] for r in raw]
    async with binance(server, clock) as client:
        assert [a.id for a in await client.agg_trades("BTCUSDT")] == ids

        got = [a.id async for a in client.agg_trades_range("BTCUSDT", from_id=ids[0], page_limit=3)]
        assert got == ids
        assert [int(q["fromId"]) for q in server.requests_to("/aggTrades")[1:]] == [ids[0], ids[3], ids[6], ids[9]]

        server.requests.clear()
        by_time = [
            a async for a in client.agg_trades_range("BTCUSDT", start_ms=raw[2]["T"], to_id=ids[7], page_limit=4)
        ]
        assert [a.id for a in by_time] == ids[2:8]
        first, *rest = server.requests_to("/aggTrades")
        assert "startTime" in first and "endTime" in first and "fromId" not in first
        assert all("fromId" in q and "startTime" not in q for q in rest)


async def test_429_waits_exactly_retry_after_then_succeeds(server: FakeExchange, clock: FakeClock) -> None:
    body = b'{"code":-1003,"msg":"Too much request weight used; current limit is 6000 request weight per 1 MINUTE."}'
    server.script["/binance/api/v3/klines"].append((429, {"Retry-After": "7"}, body))
    async with binance(server, clock) as client:
        klines = await client.klines("BTCUSDT", "1m")
    assert len(klines) == 10
    assert clock.sleeps == [7.0]
    assert len(server.requests_to("/klines")) == 2


async def test_429_until_the_retries_run_out(server: FakeExchange, clock: FakeClock) -> None:
    server.script["/binance/api/v3/klines"].extend([(429, {"Retry-After": "3"}, b"{}")] * 3)
    async with binance(server, clock, max_retries=2) as client:
        with pytest.raises(RateLimited) as err:
            await client.klines("BTCUSDT", "1m")
    assert err.value.retry_after == 3.0 and err.value.retryable
    assert clock.sleeps == [3.0, 3.0]


async def test_418_is_a_ban_and_is_not_retried(server: FakeExchange, clock: FakeClock) -> None:
    body = b'{"code":-1003,"msg":"Way too much request weight used; IP banned until 1634944401452."}'
    server.script["/binance/api/v3/klines"].append((418, {"Retry-After": "120"}, body))
    async with binance(server, clock) as client:
        with pytest.raises(Banned) as err:
            await client.klines("BTCUSDT", "1m")
        assert err.value.retry_after == 120.0
        assert "IP banned" in str(err.value)
        assert clock.sleeps == [] and len(server.requests_to("/klines")) == 1
        clock.now += 100  # still banned: fails fast, nothing sent
        with pytest.raises(Banned) as again:
            await client.ticker_24hr("BTCUSDT")
        assert again.value.retry_after == pytest.approx(20.0)
        assert server.requests_to("/ticker/24hr") == []
        clock.now += 20  # ban over
        assert len(await client.ticker_24hr("BTCUSDT")) == 1


async def test_400_carries_the_binance_code_and_msg(server: FakeExchange, clock: FakeClock) -> None:
    async with binance(server, clock) as client:
        with pytest.raises(BadRequest) as err:
            await client.klines("NOPEUSDT", "1m")
    assert (err.value.status, err.value.code, err.value.message) == (400, -1121, "Invalid symbol.")
    assert clock.sleeps == [] and len(server.requests_to("/klines")) == 1


async def test_503_twice_then_success_backs_off_increasingly(server: FakeExchange, clock: FakeClock) -> None:
    server.script["/binance/api/v3/klines"].extend([(503, {}, b"Service Unavailable")] * 2)
    async with binance(server, clock) as client:
        assert len(await client.klines("BTCUSDT", "1m")) == 10
    first, second = clock.sleeps
    assert 0.25 <= first < 0.5 <= second < 1.0  # equal jitter around 0.5 s, then 1 s


async def test_5xx_and_refused_connections_end_as_exchange_unavailable(server: FakeExchange, clock: FakeClock) -> None:
    server.script["/binance/api/v3/klines"].extend([(502, {}, b"Bad Gateway")] * 4)
    async with binance(server, clock, max_retries=3) as client:
        with pytest.raises(ExchangeUnavailable) as err:
            await client.klines("BTCUSDT", "1m")
    assert err.value.status == 502 and err.value.retryable
    assert len(clock.sleeps) == 3 and clock.sleeps == sorted(clock.sleeps)

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    refused = FakeClock()
    async with BinanceRestClient(
        f"http://127.0.0.1:{port}", sleep=refused.sleep, monotonic=refused.monotonic, max_retries=4
    ) as client:
        with pytest.raises(ExchangeUnavailable):
            await client.exchange_info()
    assert len(refused.sleeps) == 4 and refused.sleeps == sorted(refused.sleeps)


async def test_weight_budget_waits_instead_of_exceeding(server: FakeExchange, clock: FakeClock) -> None:
    async with binance(server, clock, weight_limit=10) as client:
        for _ in range(5):  # 5 x weight 2 fill the budget
            await client.klines("BTCUSDT", "1m")
        assert clock.sleeps == []
        await client.klines("BTCUSDT", "1m")
        assert clock.sleeps == [60.0]  # until the first request leaves the one-minute window
        assert client.budget.used() == 2  # the first five left the window; the server's minute rolled over too
        assert client.used_weight_1m == 2


async def test_server_reported_weight_is_respected(server: FakeExchange, clock: FakeClock) -> None:
    server.other_weight = 1190  # someone else on our IP
    async with binance(server, clock, weight_limit=1200) as client:
        for _ in range(5):
            await client.klines("BTCUSDT", "1m")
        assert client.used_weight_1m == 1200 and clock.sleeps == []
        await client.klines("BTCUSDT", "1m")
        assert clock.sleeps == [60.0]


async def test_undecodable_body_is_an_unexpected_response(server: FakeExchange, clock: FakeClock) -> None:
    server.script["/binance/api/v3/klines"].append((200, {}, b"<html>maintenance</html>"))
    async with binance(server, clock) as client:
        with pytest.raises(UnexpectedResponse):
            await client.klines("BTCUSDT", "1m")


# --------------------------------------------------------------------------------------------------
# Coinbase
# --------------------------------------------------------------------------------------------------


async def test_coinbase_products_to_markets_and_aliases(server: FakeExchange, clock: FakeClock) -> None:
    async with coinbase(server, clock) as client:
        products = await client.products()
        markets, aliases = await client.markets_and_aliases()
    assert len(products) == 920
    assert markets == coinbase_markets(products) and aliases == coinbase_aliases(products)
    by_id = {m.native: m for m in markets}
    assert Counter(m.status for m in markets) == {"TRADING": 912, "DELISTED": 8}
    assert by_id["BTC-USD"].canonical == "BTC-USD" and by_id["BTC-USDC"].canonical == "BTC-USDC"
    assert (by_id["DAI-USD"].base, by_id["DAI-USD"].quote, by_id["DAI-USD"].status) == ("DAI", "USD", "DELISTED")
    assert len(aliases) == 400 and aliases["BTC-USDC"] == "BTC-USD"
    assert all(a.endswith("-USDC") and b.endswith("-USD") for a, b in aliases.items())
    assert SymbolMap("coinbase", markets).resolve("btc-usdc") == "BTC-USDC"


async def test_coinbase_candles_oldest_first_without_the_open_bucket(server: FakeExchange, clock: FakeClock) -> None:
    raw = load(CANDLES_ETH)["candles"]
    async with coinbase(server, clock) as client:
        candles = await client.candles("ETH-USD", "ONE_MINUTE", CAPTURE_S - 20 * 60, CAPTURE_S, limit=21)
    assert [c.start for c in candles] == sorted(int(r["start"]) for r in raw)  # the wire is newest first
    assert [(c.open, c.close, c.volume) for c in candles] == [(r["open"], r["close"], r["volume"]) for r in raw[::-1]]
    assert all(c.closed for c in candles)
    # The minute in progress at capture (10:25) is missing; Binance's capture of the same instant has it, open.
    assert candles[-1].start + 60 == (CAPTURE_S // 60) * 60
    binance_minutes = [r[0] // 1000 for r in load(KLINES_ETH)]
    assert [c.start for c in candles] == binance_minutes[:-1]

    # Had the response come half-way through 10:24, that bucket would be the open one.
    newest = int(raw[0]["start"])
    server.candle_dates["ETH-USD"] = email.utils.formatdate(newest + 30, usegmt=True)
    async with coinbase(server, clock) as client:
        candles = await client.candles("ETH-USD", "ONE_MINUTE", CAPTURE_S - 20 * 60, CAPTURE_S, limit=21)
    assert [c.closed for c in candles] == [True] * 18 + [False]


async def test_coinbase_candles_range_walks_the_three_algo_pages(server: FakeExchange, clock: FakeClock) -> None:
    pages = [load(p)["candles"] for p in ALGO_PAGES]
    expected = sorted(int(r["start"]) for page in pages for r in page)
    first, last = expected[0], expected[-1]
    assert (len(expected), first, last) == (781, 1609459200, 1676851200)  # 2021-01-01 .. 2023-02-20
    by_start = {int(r["start"]): r for page in pages for r in page}
    for limit in (350, 300):
        server.requests.clear()
        async with coinbase(server, clock) as client:
            got = [c async for c in client.candles_range("ALGO-USD", "ONE_DAY", first, last, limit=limit)]
        starts = [c.start for c in got]
        assert len(got) == 781 and len(set(starts)) == 781
        assert starts == list(range(first, last + 1, 86400))  # contiguous, oldest first
        assert all(
            (c.open, c.high, c.low, c.close, c.volume)
            == tuple(by_start[c.start][f] for f in ("open", "high", "low", "close", "volume"))
            for c in got
        )
        windows = [(int(q["start"]), int(q["end"])) for q in server.requests_to("/candles")]
        assert len(windows) == 3 and all((e - s) // 86400 < limit for s, e in windows)


async def test_coinbase_errors_and_429(server: FakeExchange, clock: FakeClock) -> None:
    path = "/coinbase/api/v3/brokerage/market/products/ETH-USD/candles"
    server.script[path].append(
        (429, {"Retry-After": "2"}, b'{"error":"RATE_LIMIT_EXCEEDED","message":"Too many requests"}')
    )
    async with coinbase(server, clock) as client:
        # 10:15:09..10:25:09 holds the buckets 10:16..10:24 (10:25, in progress, is absent)
        assert len(await client.candles("ETH-USD", "ONE_MINUTE", CAPTURE_S - 600, CAPTURE_S)) == 9
        assert clock.sleeps == [2.0]
        with pytest.raises(BadRequest) as err:  # a window wider than 350 buckets
            await client.candles("ETH-USD", "ONE_MINUTE", CAPTURE_S - 400 * 60, CAPTURE_S)
        assert (err.value.status, err.value.code) == (400, "INVALID_ARGUMENT")
        assert "less than 350" in err.value.message
        with pytest.raises(ValueError):
            await client.candles("ETH-USD", "ONE_WEEK", 0, 1)  # type: ignore[arg-type]


async def test_coinbase_token_bucket_paces_requests(server: FakeExchange, clock: FakeClock) -> None:
    async with coinbase(server, clock) as client:
        for _ in range(12):
            await client.candles("ETH-USD", "ONE_MINUTE", CAPTURE_S - 600, CAPTURE_S)
    assert clock.sleeps == pytest.approx([0.1, 0.1])  # burst of 10, then 10 per second
