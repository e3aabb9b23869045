"""The HTTP/WebSocket API on real Redis and PostgreSQL, served by uvicorn on a free loopback port:
bearer-token control commands landing on the control stream, dual-read candles and MACD-V with their
source, alerts, 4xx JSON errors, /healthz, /metrics, the OpenAPI document, and a WebSocket client
fed candle closes and alerts of two exchanges at once (VIS-02) by the real processors."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
import websockets
from websockets.asyncio.client import ClientConnection

from control import commands
from control import events as ev
from control.api import ApiDeps, create_app, run_api
from migrations import runner
from processors.indicators import KIND, decode_alert, decode_point
from projections import store
from projections.alerts import Point
from projections.candles import Candle, CandleClosed
from streams import keys, log
from tests.support import drain
from tests.synthetic import synthetic_day
from tickfold.settings import Settings

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

TOKEN = "s3cret-token-for-tests"
TRADE_CANDLES = "coinbase:1m,binance:1m"


@dataclass
class Api:
    url: str
    http: httpx.AsyncClient
    redis: aioredis.Redis


Serve = Callable[..., Awaitable[Api]]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


@pytest.fixture
async def migrated(pg_dsn: str) -> str:
    await runner.migrate(pg_dsn)
    return pg_dsn


@pytest.fixture
async def serve(redis_url: str, migrated: str, client: aioredis.Redis) -> AsyncIterator[Serve]:
    """Start the API on 127.0.0.1:<free port> with the given settings; stopped after the test."""
    running: list[tuple[asyncio.Event, asyncio.Task[None], httpx.AsyncClient]] = []

    async def start(database_url: str | None = migrated, shared: aioredis.Redis | None = None, **settings: Any) -> Api:
        deps = ApiDeps(settings=Settings(**settings), redis_url=redis_url, database_url=database_url, redis=shared)
        stop = asyncio.Event()
        bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            run_api(create_app(deps), "127.0.0.1", 0, stop, on_listening=lambda _, p: bound.set_result(p))
        )
        waits: list[asyncio.Future[Any]] = [bound, task]
        done, _ = await asyncio.wait(waits, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert bound in done, f"the API did not start: {task.exception() if task.done() else 'timeout'}"
        url = f"http://127.0.0.1:{bound.result()}"
        http = httpx.AsyncClient(base_url=url, timeout=10)
        running.append((stop, task, http))
        return Api(url, http, client)

    yield start
    for stop, task, http in running:
        await http.aclose()
        stop.set()
        await asyncio.wait_for(task, 15)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "detail"} and body["detail"], body
    assert TOKEN not in response.text
    return body


def binance_trades(symbols: dict[str, int], minutes: int, start_ms: int = 1_786_233_600_000) -> list[bytes]:
    """Binance aggTrade frames (combined-stream form): a seeded random walk per symbol, a trade every 20 s."""
    rnd = random.Random(11)
    frames: list[tuple[int, bytes]] = []
    for n, (symbol, price0) in enumerate(symbols.items()):
        price = Decimal(price0)
        agg = 1_000_000 * (n + 1)
        for t in range(start_ms + n * 7, start_ms + minutes * 60_000, 20_000):
            agg += 1
            price = max(Decimal(1), price + Decimal(rnd.randint(-300, 300)) / 10)
            data = {
                "e": "aggTrade", "E": t + 1, "s": symbol, "a": agg, "p": str(price),
                "q": str(Decimal(rnd.randint(1, 5000)) / 1000), "f": agg * 3, "l": agg * 3 + 2, "T": t,
                "m": rnd.random() < 0.5, "M": True,
            }  # fmt: skip
            frames.append((t, json.dumps({"stream": f"{symbol.lower()}@aggTrade", "data": data}).encode()))
    frames.sort(key=lambda f: f[0])
    return [f for _, f in frames]


async def fill(client: aioredis.Redis) -> None:
    """Frames of both exchanges appended and folded by the real processors: candles, MACD-V, alerts."""
    coinbase = synthetic_day(every_ms=90_000)
    await log.append_frames(client, "coinbase", [(f, 0) for f in coinbase[: len(coinbase) // 4]])
    await log.append_frames(client, "binance", [(f, 0) for f in binance_trades({"BTCUSDT": 60_000}, 6 * 60)])
    await drain(client, ["binance", "coinbase"], trade_candles=TRADE_CANDLES)


# ------------------------------------------------------------------------------------------ control


async def control_commands(client: aioredis.Redis) -> list[commands.Command]:
    out = []
    for _, fields in await log.entries(client, keys.CONTROL_STREAM):
        parsed = commands.parse_entry(fields)
        assert isinstance(parsed, commands.Start | commands.Stop | commands.Connect | commands.Disconnect)
        out.append(parsed)
    return out


async def test_control_endpoints_need_the_token_and_append_commands(serve: Serve) -> None:
    api = await serve(api_token=TOKEN)
    assert_error(await api.http.post("/exchanges/binance/start"), 401)
    assert_error(await api.http.post("/exchanges/binance/start", headers=bearer("wrong")), 401)
    assert_error(await api.http.post("/exchanges/binance/stop", headers={"Authorization": TOKEN}), 401)
    assert_error(await api.http.post("/exchanges/binance/connect", headers=bearer(TOKEN[:-1])), 401)
    assert await control_commands(api.redis) == []  # nothing refused reached the control stream

    r = await api.http.post(
        "/exchanges/binance/start",
        headers=bearer(TOKEN),
        json={"symbols": ["BTCUSDT", "eth-usdt"], "timeframes": ["1m", "5m"]},
    )
    assert r.status_code == 202, r.text
    started = r.json()
    assert started["command"] == "start" and started["exchange"] == "binance" and started["command_id"]
    assert started["requested_by"] == "api:127.0.0.1"
    assert TOKEN not in r.text
    accepted = [started]
    for action in ("stop", "connect", "disconnect"):
        r = await api.http.post(f"/exchanges/coinbase/{action}", headers=bearer(TOKEN))
        assert r.status_code == 202, r.text
        accepted.append(r.json())
    r = await api.http.post("/exchanges/coinbase/start", headers=bearer(TOKEN))  # no body: the defaults
    assert r.status_code == 202, r.text
    accepted.append(r.json())

    landed = await control_commands(api.redis)
    assert [c.command_id for c in landed] == [a["command_id"] for a in accepted]
    assert len({c.command_id for c in landed}) == len(landed)
    first = landed[0]
    assert isinstance(first, commands.Start)
    assert (first.exchange, first.symbols, first.timeframes) == ("binance", ["BTC-USDT", "ETH-USDT"], ["1m", "5m"])
    assert first.requested_by == "api:127.0.0.1" and first.at_ns > 0
    assert [type(c).__name__ for c in landed] == ["Start", "Stop", "Connect", "Disconnect", "Start"]
    last = landed[-1]
    assert isinstance(last, commands.Start) and last.symbols == [] and last.timeframes == []
    assert [e["entry_id"] for e in accepted] == [e.decode() for e, _ in await log.entries(api.redis, "control")]
    assert all(TOKEN not in f[b"command"].decode() for _, f in await log.entries(api.redis, "control"))

    # bad commands: 4xx JSON, nothing appended
    assert_error(await api.http.post("/exchanges/kraken/start", headers=bearer(TOKEN)), 404)
    assert_error(await api.http.post("/exchanges/Bad:Id/start", headers=bearer(TOKEN)), 400)
    for body in ({"symbols": "BTCUSDT"}, {"timeframes": ["1x"]}, {"symbols": ["NOSUCHCOIN"]}, {"colour": "red"}):
        assert_error(await api.http.post("/exchanges/binance/start", headers=bearer(TOKEN), json=body), 400)
    bad_json = await api.http.post(
        "/exchanges/binance/start", headers={**bearer(TOKEN), "content-type": "application/json"}, content=b"{"
    )
    assert_error(bad_json, 400)
    assert_error(await api.http.get("/exchanges/binance/start"), 405)
    assert len(await control_commands(api.redis)) == len(accepted)


async def test_a_disabled_exchange_cannot_be_started(serve: Serve, migrated: str) -> None:
    conn = await asyncpg.connect(migrated)
    await conn.execute("UPDATE exchanges SET enabled = false WHERE id = 'coinbase'")
    await conn.close()
    api = await serve(api_token=TOKEN)
    assert_error(await api.http.post("/exchanges/coinbase/start", headers=bearer(TOKEN)), 409)
    assert (await api.http.post("/exchanges/coinbase/stop", headers=bearer(TOKEN))).status_code == 202


async def test_without_a_token_setting_control_is_refused(serve: Serve) -> None:
    api = await serve()
    body = assert_error(await api.http.post("/exchanges/binance/start", headers=bearer("anything")), 403)
    assert "TICKFOLD_API_TOKEN" in body["detail"]
    assert (await api.http.get("/exchanges")).status_code == 200  # reads stay open
    assert await log.entries(api.redis, keys.CONTROL_STREAM) == []


async def test_closed_reads_need_the_token(serve: Serve) -> None:
    api = await serve(api_token=TOKEN, api_read_open=False)
    for path in ("/exchanges", "/candles/binance/BTCUSDT/1m", "/alerts", "/metrics"):
        assert_error(await api.http.get(path), 401)
        assert (await api.http.get(path, headers=bearer(TOKEN))).status_code == 200, path
    assert (await api.http.get("/healthz")).status_code == 200  # probes need no token
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(api.url.replace("http", "ws") + "/ws"):
            pass
    async with websockets.connect(api.url.replace("http", "ws") + "/ws", additional_headers=bearer(TOKEN)) as ws:
        await ws.send(json.dumps({"subscribe": [{"exchange": "binance", "kind": "alerts"}]}))
        assert json.loads(await ws.recv())["subscribed"]


# ------------------------------------------------------------------------------------------ reads


async def test_exchanges_with_their_connection_state(serve: Serve, migrated: str) -> None:
    api = await serve()
    listed = (await api.http.get("/exchanges")).json()["exchanges"]
    assert [e["id"] for e in listed] == ["binance", "coinbase"]
    assert all(e["connection"]["state"] == "disconnected" for e in listed)
    assert "1m" in listed[0]["supported_timeframes"] and listed[0]["ws_urls"]
    conn = await asyncpg.connect(migrated)
    await conn.execute(
        "UPDATE exchange_connections SET connection_state = 'connected', connected_at = now(), "
        "last_heartbeat = now() WHERE exchange_id = 'binance'"
    )
    one = (await api.http.get("/exchanges/binance")).json()
    assert one["id"] == "binance" and one["connection"]["state"] == "connected" and one["connection"]["connected_at"]
    await conn.execute("DELETE FROM exchange_connections")
    await conn.close()
    listed = (await api.http.get("/exchanges")).json()["exchanges"]
    assert [(e["id"], e["connection"]) for e in listed] == [("binance", None), ("coinbase", None)]
    assert_error(await api.http.get("/exchanges/kraken"), 404)
    assert_error(await api.http.get("/exchanges/NOT VALID"), 400)


async def test_candles_and_indicators_through_the_dual_read(serve: Serve, client: aioredis.Redis) -> None:
    await fill(client)
    api = await serve()
    for exchange, symbol, canonical in (("coinbase", "btc-usd", "BTC-USD"), ("binance", "BTCUSDT", "BTC-USDT")):
        r = await api.http.get(f"/candles/{exchange}/{symbol}/1m", params={"limit": 5})
        assert r.status_code == 200, r.text
        got = r.json()
        assert (got["exchange"], got["symbol"], got["timeframe"], got["source"]) == (
            exchange,
            canonical,
            "1m",
            "exchange",
        )
        stored = await store.read_candles(client, exchange, canonical, "1m", limit=5)
        assert msgspec.convert(got["candles"], list[Candle]) == stored and len(stored) == 5
        r = await api.http.get(f"/indicators/{exchange}/{symbol}/1m", params={"limit": 7, "type": "macdv"})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["source"] == "exchange" and got["type"] == KIND
        members: list[bytes] = await client.zrange(keys.indicator(exchange, canonical, "1m", KIND), -7, -1)  # type: ignore[assignment]
        assert msgspec.convert(got["points"], list[Point]) == [decode_point(m) for m in members]
    # the same symbol in exchange form (BTCUSDT) and canonical form (btc-usdt): one series
    a = (await api.http.get("/candles/binance/BTCUSDT/1m")).json()
    b = (await api.http.get("/candles/binance/btc-usdt/1m")).json()
    assert a == b and len(a["candles"]) == 100

    # a user's overflow series answers when the exchange-scoped one is empty
    overflow = Candle(
        exchange="binance", symbol="ETH-USDT", timeframe="1m", start=60_000, open="1", high="2", low="1",
        close="2", volume="3", closed=True, event_ns=1,
    )  # fmt: skip
    await client.zadd(keys.usercandles("u7", "binance", "ETH-USDT", "1m"), {store.encode(overflow): 60_000})
    point = Point(start=60_000, macdv=1.5, signal=1.0, histogram=0.5, zone="ranging")
    await client.zadd(keys.userindicator("u7", "binance", "ETH-USDT", "1m", KIND), {msgspec.json.encode(point): 60_000})
    r = (await api.http.get("/candles/binance/ETHUSDT/1m", params={"user": "u7"})).json()
    assert r["source"] == "user:u7" and msgspec.convert(r["candles"], list[Candle]) == [overflow]
    r = (await api.http.get("/indicators/binance/ETH-USDT/1m", params={"user": "u7"})).json()
    assert r["source"] == "user:u7" and msgspec.convert(r["points"], list[Point]) == [point]
    r = (await api.http.get("/candles/binance/ETHUSDT/1m")).json()
    assert r["source"] == "none" and r["candles"] == []
    r = (await api.http.get("/indicators/binance/ETHUSDT/1m", params={"user": "someone-else"})).json()
    assert r["source"] == "none" and r["points"] == []

    # bad requests: 4xx JSON, never 500
    for path, params, status in [
        ("/candles/binance/BTCUSDT/1m", {"limit": "0"}, 400),
        ("/candles/binance/BTCUSDT/1m", {"limit": "many"}, 400),
        ("/candles/binance/BTCUSDT/1m", {"limit": "100000"}, 400),
        ("/candles/binance/BTCUSDT/1minute", {}, 400),
        ("/candles/binance/BTCUSDT/1m", {"user": "a:b"}, 400),
        ("/candles/kraken/BTCUSDT/1m", {}, 404),
        ("/candles/binance/NOSUCHCOIN/1m", {}, 404),
        ("/candles/coinbase/BTCUSD/1m", {}, 404),
        ("/indicators/binance/BTCUSDT/1m", {"type": "rsi"}, 400),
        ("/indicators/binance/BTCUSDT/1m", {"limit": "-1"}, 400),
        ("/alerts", {"exchange": "kraken"}, 404),
        ("/alerts", {"limit": "x"}, 400),
        ("/no/such/route", {}, 404),
    ]:
        assert_error(await api.http.get(path, params=params), status)


async def test_alerts_of_one_or_all_exchanges(serve: Serve, client: aioredis.Redis) -> None:
    await fill(client)
    api = await serve()
    stored = {
        ex: [decode_alert(f[b"alert"]) for _, f in await log.entries(client, keys.alerts_stream(ex))]
        for ex in ("binance", "coinbase")
    }
    assert stored["binance"] and stored["coinbase"], "both exchanges' walks cross their signal lines"
    got = (await api.http.get("/alerts", params={"exchange": "coinbase", "limit": 10})).json()["alerts"]
    assert [a["id"] for a in got] == [a.id for a in stored["coinbase"][-10:]]
    assert all(a["source_exchange_id"] == "coinbase" for a in got)
    both = (await api.http.get("/alerts", params={"limit": 5000})).json()["alerts"]
    assert sorted(a["id"] for a in both) == sorted(a.id for alerts in stored.values() for a in alerts)
    assert {a["source_exchange_id"] for a in both} == {"binance", "coinbase"}


# ------------------------------------------------------------------------------------------ WebSocket


async def next_json(ws: ClientConnection, wait_s: float = 10) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), wait_s))
    return message


async def test_websocket_feeds_closes_and_alerts_of_two_exchanges(serve: Serve, client: aioredis.Redis) -> None:
    api = await serve()
    ws_url = api.url.replace("http://", "ws://") + "/ws"
    async with websockets.connect(ws_url) as ws, websockets.connect(ws_url) as narrow:
        # bad messages get an error, and the connection stays usable
        for bad in ("not json", '{"subscribe": [{"exchange": "kraken", "kind": "closes"}]}',
                    '{"subscribe": [{"exchange": "binance", "kind": "trades"}]}', "{}",
                    '{"subscribe": [{"exchange": "binance", "kind": "closes", "timeframe": "7x"}]}'):  # fmt: skip
            await ws.send(bad)
            reply = await next_json(ws)
            assert reply["error"] == "bad_request" and reply["detail"], reply
        await ws.send(b'{"subscribe": []}')
        assert (await next_json(ws))["error"] == "bad_request"

        wanted = [{"exchange": ex, "kind": kind} for ex in ("binance", "coinbase") for kind in ("closes", "alerts")]
        wanted.append({"exchange": "coinbase", "kind": "closes", "timeframe": "1m"})  # overlaps: still sent once
        await ws.send(json.dumps({"subscribe": wanted}))
        ack = await next_json(ws)
        assert len(ack["subscribed"]) == 5
        await narrow.send(json.dumps({"subscribe": [
            {"exchange": "coinbase", "kind": "closes", "symbol": "btc-usd", "timeframe": "15m"},
            {"exchange": "binance", "kind": "alerts", "symbol": "BTCUSDT", "timeframe": "1m"},
        ]}))  # fmt: skip
        assert [s["symbol"] for s in (await next_json(narrow))["subscribed"]] == ["BTC-USDT", "BTC-USD"]

        await fill(client)
        durable = {
            ("closes", ex): len(await log.entries(client, keys.closes_stream(ex))) for ex in ("binance", "coinbase")
        }
        durable |= {
            ("alerts", ex): len(await log.entries(client, keys.alerts_stream(ex))) for ex in ("binance", "coinbase")
        }
        assert all(durable.values()), durable

        received: dict[tuple[str, str], list[dict[str, Any]]] = {key: [] for key in durable}
        while sum(map(len, received.values())) < sum(durable.values()):
            message = await next_json(ws)
            received[(message["kind"], message["exchange"])].append(message["data"])
        # every close and alert of both exchanges, once each, tagged with the exchange it came from
        assert {key: len(v) for key, v in received.items()} == durable
        for (kind, exchange), items in received.items():
            if kind == "closes":
                assert all(c["candle"]["exchange"] == exchange for c in items)
            else:
                assert all(a["source_exchange_id"] == exchange == a["exchange"] for a in items)
                assert len({a["id"] for a in items}) == len(items)

        narrow_got: list[dict[str, Any]] = []
        with pytest.raises(TimeoutError):
            while True:
                narrow_got.append(await next_json(narrow, wait_s=1.0))
        assert narrow_got and {(m["kind"], m["exchange"]) for m in narrow_got} == {
            ("closes", "coinbase"),
            ("alerts", "binance"),
        }
        for m in narrow_got:
            if m["kind"] == "closes":
                assert (m["data"]["candle"]["symbol"], m["data"]["candle"]["timeframe"]) == ("BTC-USD", "15m")
            else:
                assert (m["data"]["symbol"], m["data"]["timeframe"]) == ("BTC-USDT", "1m")

        # unsubscribing takes effect once acknowledged
        await ws.send(json.dumps({"unsubscribe": wanted[:4]}))
        assert (await next_json(ws))["subscribed"] == [
            {"exchange": "coinbase", "kind": "closes", "symbol": None, "timeframe": "1m"}
        ]
        await client.publish(keys.alerts_channel("binance"), b"{}")
        closed = Candle(
            exchange="coinbase", symbol="BTC-USD", timeframe="1m", start=0, open="1", high="1", low="1", close="1",
            volume="1", closed=True, event_ns=1,
        )  # fmt: skip
        payload = store.encode(CandleClosed(candle=closed))
        await client.publish(keys.candle_close_channel("coinbase", "BTC-USD", "1m"), payload)
        assert await next_json(ws) == {"exchange": "coinbase", "kind": "closes", "data": json.loads(payload)}


async def test_an_idle_feed_outlives_the_clients_socket_timeout(serve: Serve, redis_url: str) -> None:
    async with aioredis.Redis.from_url(redis_url, socket_timeout=0.5) as shared:  # serve shares its client
        api = await serve(shared=shared)
        async with websockets.connect(api.url.replace("http://", "ws://") + "/ws") as ws:
            await ws.send(json.dumps({"subscribe": [{"exchange": "binance", "kind": "alerts"}]}))
            assert (await next_json(ws))["subscribed"]
            await asyncio.sleep(2)  # nothing published for 4 socket timeouts
            await shared.publish(keys.alerts_channel("binance"), b'{"id": "a1"}')
            assert await next_json(ws) == {"exchange": "binance", "kind": "alerts", "data": {"id": "a1"}}
        assert (await api.http.get("/healthz")).status_code == 200  # the shared client is left open


# ------------------------------------------------------------------------------------------ operations


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                return float(value)
    raise AssertionError(f"no {name} {labels} in /metrics")


async def test_metrics_show_streams_groups_and_control_events(serve: Serve, client: aioredis.Redis) -> None:
    await fill(client)
    for event in (
        ev.Gap(exchange="binance", at_ns=1, kind="trade_id", expected=5, got=9, symbol="BTCUSDT"),
        ev.Disconnected(exchange="binance", at_ns=2, reason="reset", retry_in_s=1.5),
        ev.Disconnected(exchange="coinbase", at_ns=3, reason="stopped", retry_in_s=None),
    ):
        await client.xadd(keys.CONTROL_STREAM, {"event": ev.encode(event)})
    api = await serve()
    r = await api.http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    partitions = int(await client.get(keys.frames_partitions("binance")))  # type: ignore[arg-type]
    frames = 0
    for p in range(partitions):
        stream = keys.frames_stream("binance", p)
        n = await client.xlen(stream)
        frames += n
        assert metric(text, "tickfold_stream_length", stream=stream, kind="frames", partition=str(p)) == n
        assert metric(text, "tickfold_group_pending", stream=stream, group="candles") == 0
        assert metric(text, "tickfold_group_lag", stream=stream, group="candles") == 0
    assert metric(text, "tickfold_frames_appended_total", exchange="binance") == frames == 6 * 60 * 3
    assert metric(text, "tickfold_group_pending", stream="closes:coinbase", group="indicators") == 0
    assert metric(text, "tickfold_alerts_total", exchange="coinbase") == await client.xlen("alerts:coinbase")
    assert metric(text, "tickfold_gaps_total", exchange="binance") == 1
    assert metric(text, "tickfold_reconnects_total", exchange="binance") == 1
    assert metric(text, "tickfold_reconnects_total", exchange="coinbase") == 0
    assert metric(text, "tickfold_control_events_total", exchange="coinbase", type="exchange:disconnected") == 1

    # new frames, not yet folded: lag; a later scrape counts only the new control entries, once
    await log.append_frames(client, "coinbase", [(f, 0) for f in synthetic_day(seed=3, every_ms=600_000)[:50]])
    await client.xadd(
        keys.CONTROL_STREAM, {"event": ev.encode(ev.Gap(exchange="binance", at_ns=4, kind="x", expected=1, got=3))}
    )
    text = (await api.http.get("/metrics")).text
    lag = sum(
        metric(text, "tickfold_group_lag", stream=keys.frames_stream("coinbase", p), group="candles")
        for p in range(partitions)
    )
    assert lag == 50
    assert metric(text, "tickfold_gaps_total", exchange="binance") == 2


async def test_healthz(serve: Serve) -> None:
    api = await serve()
    r = await api.http.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "redis": "ok", "postgres": "ok"}
    down = await serve(database_url="postgresql://nobody@127.0.0.1:9/none")
    r = await down.http.get("/healthz")
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable" and r.json()["postgres"].startswith("unreachable")
    assert_error(await down.http.get("/exchanges"), 503)


async def test_the_openapi_document_lists_the_endpoints(serve: Serve) -> None:
    api = await serve()
    r = await api.http.get("/schema/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert set(doc["paths"]) >= {
        "/exchanges", "/exchanges/{exchange_id}", "/exchanges/{exchange_id}/start", "/exchanges/{exchange_id}/stop",
        "/exchanges/{exchange_id}/connect", "/exchanges/{exchange_id}/disconnect",
        "/candles/{exchange}/{symbol}/{timeframe}", "/indicators/{exchange}/{symbol}/{timeframe}",
        "/alerts", "/healthz", "/metrics",
    }  # fmt: skip
    start = doc["paths"]["/exchanges/{exchange_id}/start"]["post"]
    assert start["security"] == [{"BearerToken": []}] and "202" in start["responses"]
    assert doc["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    assert "/ws" in doc["info"]["description"]


def test_close_patterns_come_from_keys() -> None:
    assert keys.candle_close_pattern("binance") == "channel:exchange:binance:candle:close:*:*"
    assert keys.candle_close_pattern("binance", "BTC-USDT", "1m") == keys.candle_close_channel(
        "binance", "BTC-USDT", "1m"
    )
    assert keys.candle_close_pattern("coinbase", timeframe="5m") == "channel:exchange:coinbase:candle:close:*:5m"
    assert keys.candle_close_pattern("x", "A?[b]") == r"channel:exchange:x:candle:close:A\?\[b\]:*"


async def test_the_api_command_serves_until_sigterm(redis_url: str, migrated: str) -> None:
    import re
    import signal
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tickfold.cli", "--redis-url", redis_url, "--database-url", migrated,
        "api", "--port", "0",
        stderr=asyncio.subprocess.PIPE, env={"TICKFOLD_API_TOKEN": TOKEN, "PATH": ""},
    )  # fmt: skip
    assert proc.stderr is not None
    url = ""
    async with asyncio.timeout(30):
        while not url:
            line = (await proc.stderr.readline()).decode()
            assert line, "tickfold api exited before listening"
            found = re.search(r"http://127\.0\.0\.1:\d+", line)
            url = found.group(0) if found else ""
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/healthz")).json()["status"] == "ok"
        assert (await http.post("/exchanges/binance/stop", headers=bearer(TOKEN))).status_code == 202
    proc.send_signal(signal.SIGTERM)
    rest = (await asyncio.wait_for(proc.stderr.read(), 30)).decode()
    assert await proc.wait() == 0, rest
    assert TOKEN not in rest
