"""The exchange simulator, seen from the outside: real ``websockets`` / ``aiohttp`` clients on loopback.

Oracles are independent of the implementation: recorded files read with plain ``json``/``re``, folds
of the frames the client actually received computed here with ``Decimal``, and the exchanges' wire
rules from PROTOCOLS.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import re
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as WsConnect

from streams.rest import BinanceRestClient, CoinbaseRestClient
from streams.rest.errors import UnexpectedResponse
from streams.simulator import Simulator, serve_forever
from tests.realdata import BINANCE_0404, COINBASE_AT, REALDATA, require

pytestmark = pytest.mark.unit

RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
GO_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,9})? \+0000 UTC m=\+\d+\.\d{9}$")
ENVELOPE = ["channel", "client_id", "timestamp", "sequence_num", "events"]


# ---------------------------------------------------------------------------------------------- helpers


async def recv_until(ws: ClientConnection, pred: Callable[[str], bool], within: float = 5.0) -> list[str]:
    """Frames up to and including the first one ``pred`` accepts."""
    out: list[str] = []
    async with asyncio.timeout(within):
        while True:
            text = str(await ws.recv())
            out.append(text)
            if pred(text):
                return out


async def collect(ws: ClientConnection, seconds: float) -> list[tuple[float, str]]:
    """(monotonic arrival time, text) of every frame for ``seconds``."""
    out: list[tuple[float, str]] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        try:
            text = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            break
        out.append((time.monotonic(), str(text)))
    return out


async def closed_code(ws: ClientConnection, within: float = 5.0) -> int | None:
    """Read until the server closes; the close code it sent."""
    try:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    raise AssertionError("unreachable")


def connect(url: str) -> WsConnect:
    """A client that buffers without limit: one that stops reading mid-test can still close at once (with a
    full queue the websockets client stops reading the socket, so it would not see the close frame)."""
    return websockets.connect(url, max_queue=None)


def subscribe(channel: str, products: list[str], kind: str = "subscribe") -> str:
    return json.dumps({"type": kind, "product_ids": products, "channel": channel})


class FastClock:
    """Simulated wall time running ``speed`` times faster, starting ``lead_s`` before a minute boundary."""

    def __init__(self, speed: float, lead_s: float) -> None:
        now = time.time_ns()
        self.start = (now // 60_000_000_000 + 1) * 60_000_000_000 - int(lead_s * 1e9)
        self.t0 = time.monotonic_ns()
        self.speed = speed

    def __call__(self) -> int:
        return self.start + int((time.monotonic_ns() - self.t0) * self.speed)


def fold(trades: list[dict[str, Any]]) -> dict[str, Any]:
    """Binance kline fields from aggTrade events (PROTOCOLS.md: V = Σq where m is false)."""
    p = [Decimal(t["p"]) for t in trades]
    q = [Decimal(t["q"]) for t in trades]
    return {
        "o": p[0], "h": max(p), "l": min(p), "c": p[-1], "v": sum(q, Decimal(0)),
        "q": sum((a * b for a, b in zip(p, q, strict=True)), Decimal(0)),
        "V": sum((b for t, b in zip(trades, q, strict=True) if not t["m"]), Decimal(0)),
        "n": sum(t["l"] - t["f"] + 1 for t in trades), "f": trades[0]["f"], "L": trades[-1]["l"],
    }  # fmt: skip


def kline_fields(k: dict[str, Any]) -> dict[str, Any]:
    return {
        "o": Decimal(k["o"]), "h": Decimal(k["h"]), "l": Decimal(k["l"]), "c": Decimal(k["c"]), "v": Decimal(k["v"]),
        "q": Decimal(k["q"]), "V": Decimal(k["V"]), "n": k["n"], "f": k["f"], "L": k["L"],
    }  # fmt: skip


# ---------------------------------------------------------------------------------------- Binance WS


async def test_binance_combined_frames_are_wrapped_raw_are_not_and_identical_for_all() -> None:
    async with Simulator(seed=1, kline_update_interval=0.2) as sim:
        sim.add_synthetic("binance", ["BTCUSDT", "ETHUSDT"], rate=400)
        base = sim.urls["binance"].ws_url
        combined = f"{base}/stream?streams=btcusdt@aggTrade/btcusdt@kline_1m"
        async with (
            connect(combined) as a,
            connect(combined) as b,
            connect(f"{base}/ws/ethusdt@aggTrade") as raw,
        ):
            got_a = await recv_until(a, lambda t: '"btcusdt@kline_1m"' in t)
            got_b = await recv_until(b, lambda t: '"btcusdt@kline_1m"' in t)
            event = json.loads(await raw.recv())
    for text in got_a:
        msg = json.loads(text)
        assert list(msg) == ["stream", "data"]
        assert msg["stream"] in ("btcusdt@aggTrade", "btcusdt@kline_1m")
        assert msg["data"]["s"] == "BTCUSDT"
        assert text == f'{{"stream":"{msg["stream"]}","data":{text[len(msg["stream"]) + 20 : -1]}}}'
    assert event["e"] == "aggTrade" and event["s"] == "ETHUSDT" and "stream" not in event
    # the same event is the same text on every connection (adapters dedupe overlapping connections by text)
    by_id = {json.loads(t)["data"]["a"]: t for t in got_a if "aggTrade" in t}
    common = [t for t in got_b if "aggTrade" in t and json.loads(t)["data"]["a"] in by_id]
    assert common and all(by_id[json.loads(t)["data"]["a"]] == t for t in common)
    assert {f.text for f in sim.sent("binance")} >= set(got_a)


async def test_binance_live_requests_are_answered_like_binance() -> None:
    async with Simulator(seed=2) as sim:
        sim.add_synthetic("binance", ["BTCUSDT"], rate=200)
        async with connect(sim.urls["binance"].ws_url) as ws:
            await ws.send('{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":1}')
            assert await ws.recv() == '{"result":null,"id":1}'
            event = json.loads(await ws.recv())  # raw endpoint: bare events
            assert event["e"] == "aggTrade" and event["s"] == "BTCUSDT"
            await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":2}')
            got = await recv_until(ws, lambda t: '"id":2' in t)
            assert got[-1] == '{"result":["btcusdt@aggTrade"],"id":2}'
            await ws.send('{"method":"SUBSCRIBE","params":["BTCUSDT@aggTrade"],"id":3}')
            got = await recv_until(ws, lambda t: '"id":3' in t)
            assert json.loads(got[-1]) == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 3}
            await ws.send('{"method":"UNSUBSCRIBE","params":["btcusdt@aggTrade"],"id":4}')
            await recv_until(ws, lambda t: t == '{"result":null,"id":4}')
            assert await collect(ws, 0.2) == []
        async with connect(f"{sim.urls['binance'].ws_url}/stream") as ws:
            too_many = [f"s{i}usdt@aggTrade" for i in range(1025)]
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": too_many, "id": 9}))
            reply = json.loads(await ws.recv())
            assert reply["id"] == 9 and reply["error"]["code"] == 2
            await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":10}')
            assert await ws.recv() == '{"result":[],"id":10}'


async def test_binance_closes_a_connection_sending_more_than_5_messages_a_second() -> None:
    async with Simulator() as sim, connect(sim.urls["binance"].ws_url) as ws:
        for i in range(6):
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        assert await closed_code(ws) == 1008
        assert sim.connections("binance")[0].close_code == 1008


async def test_binance_pings_and_closes_a_client_that_does_not_pong() -> None:
    async with Simulator(ping_interval=0.3, pong_timeout=0.6) as sim:
        url = f"{sim.urls['binance'].ws_url}/stream?streams=btcusdt@aggTrade"
        async with connect(url) as ponging, aiohttp.ClientSession() as session:
            async with session.ws_connect(url, autoping=False) as silent:
                first = await silent.receive(timeout=2)
                assert first.type is aiohttp.WSMsgType.PING
                async with asyncio.timeout(2):
                    while (msg := await silent.receive()).type is aiohttp.WSMsgType.PING:
                        pass
                assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008
            assert await collect(ponging, 0.7) == []  # no frames, and still open after several pings
            await ponging.ping()  # an unsolicited ping of ours gets a pong; the connection is fine
    assert {c.close_code for c in sim.connections("binance")} == {1000, 1008}  # we closed; it closed the silent one


async def test_binance_recording_replays_byte_identical_except_retimed_fields_and_loops() -> None:
    lines = require(BINANCE_0404).read_text().splitlines()
    streams = sorted({json.loads(line)["stream"] for line in lines})
    async with Simulator() as sim:
        async with connect(f"{sim.urls['binance'].ws_url}/stream?streams={'/'.join(streams)}") as ws:
            async with asyncio.timeout(5):
                await sim.wait_connections("binance")
            feed = sim.add_recording("binance", BINANCE_0404, loop=True, speed=0)
            async with asyncio.timeout(10):
                got = [str(await ws.recv()) for _ in range(2 * len(lines))]
        now_ms = time.time_ns() // 1_000_000
    first = json.loads(lines[0])["data"]["E"]
    offset = json.loads(got[0])["data"]["E"] - first
    assert offset % 60_000 == 0  # whole minutes: kline buckets stay aligned
    assert 0 <= now_ms - (first + offset) < 60_000 + 10_000

    def retimed(line: str, shift: int) -> str:
        keys = "E|T|t" if '"e":"kline"' in line else "E|T"
        return re.sub(rf'"({keys})":(\d+)', lambda m: f'"{m[1]}":{int(m[2]) + shift}', line)

    assert got[: len(lines)] == [retimed(line, offset) for line in lines]
    second = [json.loads(t)["data"] for t in got[len(lines) :]]
    assert second[0]["E"] == json.loads(lines[0])["data"]["E"] + offset + feed.period
    ids = [json.loads(t)["data"]["a"] for t in got if '"btcusdt@aggTrade"' in t]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # contiguous across the loop


# --------------------------------------------------------------------------------------- Coinbase WS


async def test_coinbase_subscribe_snapshots_sequence_and_heartbeats() -> None:
    async with Simulator(seed=3, trades_batch_interval=0.1) as sim:
        sim.add_synthetic("coinbase", ["BTC-USD", "ETH-USD"], rate=200)
        await asyncio.sleep(0.4)  # some trades and candles to snapshot
        products = ["BTC-USD", "ETH-USD"]
        async with connect(sim.urls["coinbase"].ws_url) as ws:
            for channel in ("market_trades", "candles", "ticker", "heartbeats"):
                await ws.send(subscribe(channel, products))
            frames = [(t, json.loads(text)) for t, text in await collect(ws, 2.3)]
        async with connect(sim.urls["coinbase"].ws_url) as ws2:
            await ws2.send(subscribe("heartbeats", []))
            again = json.loads(await ws2.recv())
    msgs = [m for _, m in frames]
    assert [m["sequence_num"] for m in msgs] == list(range(len(msgs)))
    assert again["sequence_num"] == 0 and again["channel"] == "subscriptions"
    assert all(list(m) == ENVELOPE and m["client_id"] == "" and RFC3339_NANO.match(m["timestamp"]) for m in msgs)
    head = [(m["channel"], m["events"][0].get("type")) for m in msgs[:10]]
    assert head[:3] == [("market_trades", "snapshot"), ("market_trades", "snapshot"), ("subscriptions", None)]
    assert msgs[2]["events"] == [{"subscriptions": {"market_trades": products}}]
    final = [m for m in msgs if m["channel"] == "subscriptions"][-1]["events"][0]["subscriptions"]
    assert final == {"candles": products, "heartbeats": ["heartbeats"], "market_trades": products, "ticker": products}
    trades = msgs[0]["events"][0]["trades"]
    assert 0 < len(trades) <= 100 and {t["product_id"] for t in trades} == {"BTC-USD"}
    ids = [int(t["trade_id"]) for t in trades]
    assert ids == sorted(ids, reverse=True) and all(t["side"] in ("BUY", "SELL") for t in trades)
    candles = next(m for m in msgs if m["channel"] == "candles")["events"][0]
    starts = [int(c["start"]) for c in candles["candles"]]
    assert candles["type"] == "snapshot" and starts == sorted(starts) and all(s % 300 == 0 for s in starts)
    assert any(m["channel"] == "ticker" and m["events"][0]["type"] == "snapshot" for m in msgs)
    updates = [m for m in msgs if m["channel"] == "market_trades" and m["events"][0]["type"] == "update"]
    assert updates and all(
        [int(t["trade_id"]) for t in u["events"][0]["trades"]]
        == sorted((int(t["trade_id"]) for t in u["events"][0]["trades"]), reverse=True)
        for u in updates
    )
    beats = [(t, m) for t, m in frames if m["channel"] == "heartbeats"]
    assert len(beats) >= 2
    counters = [m["events"][0]["heartbeat_counter"] for _, m in beats]
    assert all(isinstance(c, int) for c in counters) and counters == list(range(counters[0], counters[0] + len(beats)))
    assert all(GO_TIME.match(m["events"][0]["current_time"]) for _, m in beats)
    stamps = [dt.datetime.fromisoformat(m["timestamp"]).timestamp() for _, m in beats]
    assert all(0.9 < b - a < 1.1 for a, b in itertools.pairwise(stamps))  # sent once a second
    assert all(0.5 < b[0] - a[0] < 1.5 for a, b in itertools.pairwise(beats))  # and so they arrive


async def test_coinbase_rejects_unknown_channels_silence_and_floods() -> None:
    async with Simulator(subscribe_timeout=0.3) as sim:
        url = sim.urls["coinbase"].ws_url
        async with connect(url) as ws:
            await ws.send(subscribe("level3", ["BTC-USD"]))
            error = json.loads(await ws.recv())
            assert error["type"] == "error" and "level3" in error["message"]
            assert "sequence_num" not in error
            assert await closed_code(ws) == 1008  # no (successful) subscribe within the deadline
        async with connect(url) as ws:
            await ws.send(subscribe("heartbeats", []))
            for _ in range(8):
                await ws.send(subscribe("status", ["BTC-USD"]))
            frames = await recv_until(ws, lambda t: '"error"' in t)
            assert json.loads(frames[-1])["type"] == "error"
            assert await closed_code(ws) == 1008


async def test_coinbase_recording_replays_retimed_and_resequenced() -> None:
    lines = require(COINBASE_AT).read_text().splitlines()
    recorded = [json.loads(line) for line in lines]
    wanted = [
        line
        for line, m in zip(lines, recorded, strict=True)
        if m["channel"] in ("market_trades", "candles", "ticker") and m["events"][0]["type"] == "update"
    ]
    products = ["BTC-USD", "ETH-USD"]
    async with Simulator() as sim:
        async with connect(sim.urls["coinbase"].ws_url) as ws:
            for channel in ("market_trades", "candles", "ticker"):
                await ws.send(subscribe(channel, products))
            head = await recv_until(ws, lambda t: '"ticker":["BTC-USD","ETH-USD"]' in t)
            feed = sim.add_recording("coinbase", COINBASE_AT, loop=False, speed=0)
            async with asyncio.timeout(5):
                got = [str(await ws.recv()) for _ in range(len(wanted))]
                await feed.done.wait()
        async with connect(sim.urls["coinbase"].ws_url) as ws:
            await ws.send(subscribe("market_trades", ["BTC-USD"]))
            snapshot = json.loads(await ws.recv())
    seqs = [json.loads(t)["sequence_num"] for t in head + got]
    assert seqs == list(range(len(seqs)))

    def seconds(ts: str) -> int:
        return int(dt.datetime.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp())

    shift = seconds(json.loads(got[0])["timestamp"]) - seconds(recorded[0]["timestamp"])
    assert shift % 300 == 0  # whole candle buckets

    def retimed(line: str) -> str:
        def stamp(m: re.Match[str]) -> str:
            moved = dt.datetime.fromtimestamp(seconds(m[2]) + shift, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
            return f'"{m[1]}":"{moved}{m[2][19:]}"'

        line = re.sub(r'"(timestamp|time)":"([^"]+)"', stamp, line)
        return re.sub(r'"start":"(\d+)"', lambda m: f'"start":"{int(m[1]) + shift}"', line)

    def unsequenced(line: str) -> str:
        return re.sub(r'"sequence_num":\d+', '"sequence_num":_', line)

    assert [unsequenced(t) for t in got] == [unsequenced(retimed(line)) for line in wanted]
    # the recorded trades now seed the snapshots a new subscriber gets, newest first
    newest = max(
        int(t["trade_id"])
        for m in recorded
        if m["channel"] == "market_trades"
        for ev in m["events"]
        for t in ev["trades"]
        if t["product_id"] == "BTC-USD"
    )
    trades = snapshot["events"][0]["trades"]
    assert snapshot["events"][0]["type"] == "snapshot" and int(trades[0]["trade_id"]) == newest and len(trades) == 100


# -------------------------------------------------------------------------------------------- faults


async def test_fault_close_and_refused_handshakes() -> None:
    async with Simulator() as sim:
        url = f"{sim.urls['binance'].ws_url}/stream?streams=btcusdt@aggTrade"
        async with connect(url) as ws:
            await sim.close("binance", code=1001)
            assert await closed_code(ws) == 1001
        await sim.refuse_connections("binance", 2)
        for _ in range(2):
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(url)
            assert refused.value.response.status_code == 503
        async with connect(url) as ws:
            async with asyncio.timeout(5):
                await sim.wait_connections("binance")
            await sim.close("binance", abrupt=True)  # TCP dropped, no close frame
            assert await closed_code(ws) is None
        times = sim.connect_times("binance")
        assert len(times) == 4 and times == sorted(times)
        assert [(c.open, c.close_code) for c in sim.connections("binance")] == [(False, 1001), (False, 1006)]


async def test_fault_stall_holds_everything_then_resumes() -> None:
    async with Simulator(seed=4) as sim:
        sim.add_synthetic("binance", ["BTCUSDT"], rate=300)
        async with connect(f"{sim.urls['binance'].ws_url}/stream?streams=btcusdt@aggTrade") as ws:
            await recv_until(ws, lambda t: True)
            await sim.stall("binance", 0.6)
            frames = await collect(ws, 1.2)
    arrivals = [t for t, _ in frames]
    assert max(b - a for a, b in itertools.pairwise(arrivals)) >= 0.5
    ids = [json.loads(text)["data"]["a"] for _, text in frames]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # held, not lost


async def test_fault_skip_jumps_sequence_and_trade_ids_and_rest_backfills() -> None:
    async with Simulator(seed=5, trades_batch_interval=0.05) as sim:
        sim.add_synthetic("binance", ["BTCUSDT"], rate=300)
        sim.add_synthetic("coinbase", ["BTC-USD"], rate=100)
        async with (
            connect(f"{sim.urls['binance'].ws_url}/stream?streams=btcusdt@aggTrade") as bn,
            connect(sim.urls["coinbase"].ws_url) as cb,
        ):
            await cb.send(subscribe("market_trades", ["BTC-USD"]))
            before_cb = await recv_until(cb, lambda t: '"update"' in t)
            before_bn = await recv_until(bn, lambda t: True)
            await sim.skip("coinbase", 3)
            await sim.skip("binance", 5, symbol="BTCUSDT")
            seqs = [json.loads(t)["sequence_num"] for t in before_cb[-1:] + [t for _, t in await collect(cb, 0.4)]]
            ids = [json.loads(t)["data"]["a"] for t in before_bn[-1:] + [t for _, t in await collect(bn, 0.4)]]
        jumps = [b - a for a, b in itertools.pairwise(seqs)]
        assert sorted(jumps)[-1] == 4 and jumps.count(4) == 1 and set(jumps) == {1, 4}
        id_jumps = [b - a for a, b in itertools.pairwise(ids)]
        assert 6 in id_jumps and set(id_jumps) <= {1, 6}
        missing = ids[id_jumps.index(6)] + 1
        async with aiohttp.ClientSession() as http:
            params: dict[str, str | int] = {"symbol": "BTCUSDT", "fromId": missing, "limit": 5}
            async with http.get(f"{sim.urls['binance'].rest_url}/api/v3/aggTrades", params=params) as r:
                backfill = await r.json()
    assert [t["a"] for t in backfill] == list(range(missing, missing + 5))


async def test_fault_malformed_frames_are_not_json() -> None:
    async with Simulator() as sim:
        async with (
            connect(f"{sim.urls['binance'].ws_url}/stream?streams=btcusdt@aggTrade") as bn,
            connect(sim.urls["coinbase"].ws_url) as cb,
        ):
            await cb.send(subscribe("heartbeats", []))
            await cb.recv()
            async with asyncio.timeout(5):
                await sim.wait_connections("binance")
            await sim.malformed("binance")
            await sim.malformed("coinbase")
            for ws in (bn, cb):
                text = str(await ws.recv())
                with pytest.raises(json.JSONDecodeError):
                    json.loads(text)


async def test_fault_server_shutdown_event_then_close() -> None:
    async with Simulator(shutdown_grace=0.2) as sim:
        base = sim.urls["binance"].ws_url
        async with (
            connect(f"{base}/stream?streams=btcusdt@aggTrade") as combined,
            connect(f"{base}/ws/btcusdt@aggTrade") as raw,
        ):
            async with asyncio.timeout(5):
                await sim.wait_connections("binance", 2)
            started = time.monotonic()
            await sim.server_shutdown("binance")
            wrapped, bare = json.loads(await combined.recv()), json.loads(await raw.recv())
            assert list(wrapped) == ["stream", "data"] and wrapped["stream"] == "!serverShutdown"
            assert list(wrapped["data"]) == ["e", "E"] and wrapped["data"]["e"] == "serverShutdown"
            assert bare == {"e": "serverShutdown", "E": bare["E"]}
            assert abs(bare["E"] - time.time() * 1000) < 5000
            assert await closed_code(combined) == 1001 and await closed_code(raw) == 1001
            assert time.monotonic() - started >= 0.15


async def test_fault_rest_429_then_200_and_the_http_fault_endpoint() -> None:
    async with Simulator() as sim, aiohttp.ClientSession() as http:
        sim.add_synthetic("coinbase", ["BTC-USD"], rate=10)
        b_url = f"{sim.urls['binance'].rest_url}/api/v3/exchangeInfo"
        c_url = f"{sim.urls['coinbase'].rest_url}/products"
        await sim.rest_429("binance", times=1, retry_after=2)
        await sim.rest_429("coinbase", times=2)
        async with http.get(b_url) as r:
            assert r.status == 429 and r.headers["Retry-After"] == "2" and "X-MBX-USED-WEIGHT-1M" in r.headers
            assert (await r.json())["code"] == -1003
        async with http.get(b_url) as r:
            assert r.status == 200 and r.headers["X-MBX-USED-WEIGHT-1M"] == "20"
        for expected in (429, 429, 200):
            async with http.get(c_url) as r:
                assert r.status == expected
                if expected == 429:
                    assert r.headers["Retry-After"] == "1"
        fault = f"http://127.0.0.1:{sim.port}/_sim/fault"
        async with http.post(fault, json={"fault": "rest_429", "exchange": "coinbase", "times": 1}) as r:
            assert r.status == 200 and await r.json() == {"ok": True}
        async with http.get(c_url) as r:
            assert r.status == 429
        async with http.post(fault, json={"fault": "explode", "exchange": "coinbase"}) as r:
            assert r.status == 400


async def test_rest_weight_limit_answers_429_with_retry_after() -> None:
    async with Simulator(binance_weight_limit=45) as sim, aiohttp.ClientSession() as http:
        url = f"{sim.urls['binance'].rest_url}/api/v3/exchangeInfo"
        answers: list[tuple[int, int, str | None]] = []
        while len(answers) < 6 and (not answers or answers[-1][0] == 200):
            async with http.get(url) as r:
                answers.append((r.status, int(r.headers["X-MBX-USED-WEIGHT-1M"]), r.headers.get("Retry-After")))
        # 20, 40, then 429 (a new minute in between starts the count again)
        assert answers[-1][0] == 429 and answers[-1][1] == 40 and 1 <= int(answers[-1][2] or 0) <= 60
        assert [used for _, used, _ in answers[-3:-1]] == [20, 40]


# ---------------------------------------------------------------------------------------------- REST


async def test_binance_klines_agree_with_the_streamed_aggtrades_of_a_closed_minute() -> None:
    clock = FastClock(speed=60, lead_s=3)  # a simulated minute per second, the next one starts soon
    async with Simulator(seed=6, clock=clock, kline_update_interval=0.1) as sim:
        sim.add_synthetic("binance", ["BTCUSDT"], rate=300)
        url = f"{sim.urls['binance'].ws_url}/stream?streams=btcusdt@aggTrade/btcusdt@kline_1m"
        async with connect(url) as ws:
            async with asyncio.timeout(5):
                await sim.wait_connections("binance")
            bucket = (clock() // 60_000_000_000 + 1) * 60_000  # starts after we subscribed: fully streamed
            closing = f'"t":{bucket},"T":{bucket + 59_999}'
            frames = [json.loads(t)["data"] for t in await recv_until(ws, lambda t: closing in t and '"x":true' in t)]
        async with aiohttp.ClientSession() as http:
            params: dict[str, str | int] = {"symbol": "BTCUSDT", "interval": "1m", "startTime": bucket, "limit": 1}
            async with http.get(f"{sim.urls['binance'].rest_url}/api/v3/klines", params=params) as r:
                assert r.headers["X-MBX-USED-WEIGHT-1M"] == "2"
                (row,) = await r.json()
    trades = [f for f in frames if f["e"] == "aggTrade" and bucket <= f["T"] < bucket + 60_000]
    expected = fold(trades)
    closed = frames[-1]["k"]
    assert closed["x"] is True and kline_fields(closed) == expected
    assert row[0] == bucket and row[6] == bucket + 59_999 and row[11] == "0"
    rest = {"o": row[1], "h": row[2], "l": row[3], "c": row[4], "v": row[5], "q": row[7], "V": row[9]}
    assert {k: Decimal(v) for k, v in rest.items()} == {k: expected[k] for k in rest}
    assert row[8] == expected["n"]
    assert all(re.fullmatch(r"\d+\.\d{8}", v) for v in rest.values())


async def test_coinbase_candles_agree_with_the_streamed_market_trades() -> None:
    clock = FastClock(speed=60, lead_s=2)
    async with Simulator(seed=7, clock=clock, trades_batch_interval=0.05) as sim:
        sim.add_synthetic("coinbase", ["BTC-USD"], rate=200)
        async with connect(sim.urls["coinbase"].ws_url) as ws:
            await ws.send(subscribe("market_trades", ["BTC-USD"]))
            await recv_until(ws, lambda t: '"subscriptions"' in t)
            bucket = clock() // 60_000_000_000 * 60 + 60
            streamed: list[dict[str, str]] = []

            def past_bucket(text: str) -> bool:
                for ev in json.loads(text)["events"]:
                    streamed.extend(ev.get("trades", []))
                return any(dt.datetime.fromisoformat(t["time"]).timestamp() >= bucket + 60 for t in streamed)

            await recv_until(ws, past_bucket)
        async with aiohttp.ClientSession() as http:
            params: dict[str, str | int] = {"start": bucket, "end": bucket, "granularity": "ONE_MINUTE"}
            url = f"{sim.urls['coinbase'].rest_url}/products/BTC-USD/candles"
            async with http.get(url, params=params) as r:
                (candle,) = (await r.json())["candles"]
    inside = sorted(
        (t for t in streamed if bucket <= dt.datetime.fromisoformat(t["time"]).timestamp() < bucket + 60),
        key=lambda t: int(t["trade_id"]),
    )
    prices = [Decimal(t["price"]) for t in inside]
    assert list(candle) == ["start", "low", "high", "open", "close", "volume"]
    assert candle["start"] == str(bucket)
    assert Decimal(candle["open"]) == prices[0] and Decimal(candle["close"]) == prices[-1]
    assert Decimal(candle["high"]) == max(prices) and Decimal(candle["low"]) == min(prices)
    assert Decimal(candle["volume"]) == sum((Decimal(t["size"]) for t in inside), Decimal(0))


async def test_exchange_info_products_and_tickers_describe_the_simulated_markets() -> None:
    async with Simulator(seed=8) as sim, aiohttp.ClientSession() as http:
        sim.add_synthetic("binance", ["BTCUSDT", "FOO-USDT"], rate=100)
        sim.add_synthetic("coinbase", ["ETH-USD"], rate=50)
        await asyncio.sleep(0.2)
        rest = sim.urls["binance"].rest_url
        async with http.get(f"{rest}/api/v3/exchangeInfo") as r:
            info = await r.json()
        symbols = {s["symbol"]: s for s in info["symbols"]}
        for sym, base, quote in (("BTCUSDT", "BTC", "USDT"), ("FOOUSDT", "FOO", "USDT")):
            assert (symbols[sym]["status"], symbols[sym]["baseAsset"], symbols[sym]["quoteAsset"]) == (
                "TRADING", base, quote
            )  # fmt: skip
        assert {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000} in info[
            "rateLimits"
        ]
        async with http.get(f"{rest}/api/v3/ticker/24hr", params={"symbol": "BTCUSDT"}) as r:
            one = await r.json()
            used = int(r.headers["X-MBX-USED-WEIGHT-1M"])
            assert used in (22, 2)  # 2 if a new minute began since exchangeInfo
        async with http.get(f"{rest}/api/v3/ticker/24hr") as r:
            every = await r.json()
            assert int(r.headers["X-MBX-USED-WEIGHT-1M"]) in (used + 80, 80)
        assert isinstance(one, dict) and one["symbol"] == "BTCUSDT" and one["count"] > 0
        assert isinstance(every, list) and {t["symbol"] for t in every} == {"BTCUSDT", "FOOUSDT"}
        async with http.get(f"{sim.urls['coinbase'].rest_url}/products") as r:
            (product,) = (await r.json())["products"]
        assert product["product_id"] == "ETH-USD" and product["status"] == "online"
        assert (product["base_currency_id"], product["quote_currency_id"]) == ("ETH", "USD")
        assert product["trading_disabled"] is False and Decimal(product["volume_24h"]) > 0


async def test_the_project_rest_clients_read_the_simulator() -> None:
    async with Simulator(seed=9) as sim:
        sim.add_synthetic("binance", ["ETHUSDT"], rate=100)
        sim.add_synthetic("coinbase", ["BTC-USD"], rate=100)
        await asyncio.sleep(0.3)
        async with BinanceRestClient(sim.urls["binance"].rest_url) as bn:
            markets = {m.native: m for m in await bn.markets()}
            assert markets["ETHUSDT"].status == "TRADING" and markets["ETHUSDT"].canonical == "ETH-USDT"
            klines = await bn.klines("ETHUSDT", "1m", limit=5)
            trades = await bn.agg_trades("ETHUSDT", limit=10)
        assert klines and klines[-1].trades > 0 and len(trades) == 10
        async with CoinbaseRestClient(sim.urls["coinbase"].rest_url) as cb:
            (product,) = await cb.products()
            now = int(time.time())
            candles = await cb.candles("BTC-USD", "ONE_MINUTE", now - 3600, now)
        assert product.product_id == "BTC-USD" and product.base_currency_id == "BTC"
        assert all(c.closed for c in candles)  # the in-progress minute is left out


EXCHANGE_INFO_2021 = REALDATA / "binance" / "rest_exchangeInfo_2021-10-12_full.json"
PRODUCTS_2026 = REALDATA / "coinbase" / "rest_market_products_2026-08-09.json"


async def test_recorded_rest_documents_are_served_verbatim_within_the_rate_limits(tmp_path: Path) -> None:
    info_bytes = require(EXCHANGE_INFO_2021).read_bytes()
    products_bytes = require(PRODUCTS_2026).read_bytes()
    tickers = [{"symbol": "BTCUSDT", "quoteVolume": "1"}, {"symbol": "BCCUSDT", "quoteVolume": "2"}]
    ticker_file = tmp_path / "tickers.json"
    ticker_file.write_text(json.dumps(tickers))
    docs = (
        ("binance/exchangeInfo", str(EXCHANGE_INFO_2021)),
        ("binance/ticker/24hr", str(ticker_file)),
        ("coinbase/products", str(PRODUCTS_2026)),
    )
    async with Simulator(rest_documents=docs, binance_weight_limit=250) as sim, aiohttp.ClientSession() as http:
        sim.add_synthetic("binance", ["BTCUSDT"], rate=50)  # the WebSocket markets don't change the documents
        b, c = sim.urls["binance"].rest_url, sim.urls["coinbase"].rest_url
        async with http.get(f"{b}/api/v3/exchangeInfo") as r:
            assert r.status == 200 and await r.read() == info_bytes
            assert int(r.headers["X-MBX-USED-WEIGHT-1M"]) % 20 == 0
        async with http.get(f"{b}/api/v3/exchangeInfo", params={"symbol": "BCCUSDT"}) as r:
            (entry,) = (await r.json())["symbols"]
            assert entry["status"] == "BREAK"  # recorded as it was, not forced to TRADING
        async with http.get(f"{b}/api/v3/exchangeInfo", params={"symbol": "NOPEUSDT"}) as r:
            assert r.status == 400 and await r.json() == {"code": -1121, "msg": "Invalid symbol."}
        async with http.get(f"{b}/api/v3/ticker/24hr") as r:
            assert await r.json() == tickers
        async with http.get(f"{b}/api/v3/ticker/24hr", params={"symbol": "BCCUSDT"}) as r:
            assert await r.json() == tickers[1]
        async with http.get(f"{b}/api/v3/ticker/24hr", params={"symbol": "ETHUSDT"}) as r:
            assert r.status == 400  # not in the recorded array
        statuses = []
        for _ in range(4):  # 144 used so far (less after a new minute), + 80 each: over 250 -> 429, Retry-After
            async with http.get(f"{b}/api/v3/ticker/24hr") as r:
                statuses.append((r.status, r.headers.get("Retry-After")))
        assert statuses[-1][0] == 429 and 1 <= int(statuses[-1][1] or 0) <= 60

        async with http.get(f"{c}/products") as r:
            assert r.status == 200 and await r.read() == products_bytes
        async with http.get(f"{c}/products/BTC-USDC") as r:
            assert (await r.json())["alias"] == "BTC-USD"
        async with http.get(f"{c}/products/NOPE-USD") as r:
            assert r.status == 404 and (await r.json())["error"] == "NOT_FOUND"
        await sim.rest_429("coinbase", times=1)
        async with http.get(f"{c}/products") as r:
            assert r.status == 429 and r.headers["Retry-After"] == "1"

        sim.recorded.set("coinbase/products", {"products": [{"product_id": "X-USD"}]})  # changed while running
        async with CoinbaseRestClient(c) as cb:
            with pytest.raises(UnexpectedResponse):  # the project client still checks the wire shape
                await cb.products()
        assert "rest     coinbase/products: recorded document" in sim.describe()

    with pytest.raises(ValueError, match="unknown recorded REST endpoint 'binance/klines'"):
        Simulator(rest_documents=(("binance/klines", str(ticker_file)),))
    with pytest.raises(ValueError, match=re.escape("not [{...}, ...] with 'symbol' in every entry")):
        Simulator(rest_documents=(("binance/ticker/24hr", str(EXCHANGE_INFO_2021)),))


async def test_serve_forever_prints_the_urls_and_serves_until_stopped() -> None:
    stop, ready = asyncio.Event(), asyncio.Event()
    lines: list[str] = []
    started: list[Simulator] = []

    def on_ready(sim: Simulator) -> None:
        started.append(sim)
        ready.set()

    server = asyncio.create_task(serve_forever(0, rate=50, print_line=lines.append, stop=stop, ready=on_ready))
    try:
        async with asyncio.timeout(5):
            await ready.wait()
        (sim,) = started
        assert any(sim.urls["binance"].ws_url in line for line in lines)
        assert any(sim.urls["coinbase"].rest_url in line for line in lines)
        async with connect(f"{sim.urls['binance'].ws_url}/stream?streams=btcusdt@aggTrade") as ws:
            assert json.loads(await ws.recv())["data"]["s"] == "BTCUSDT"
    finally:
        stop.set()
        await server
    assert not sim.running
