"""The Binance Spot WebSocket endpoint (market streams).

URL forms under ``/binance/ws`` (the base an adapter is given):

* ``/binance/ws/stream?streams=a/b`` (combined: ``{"stream":…,"data":…}``), ``/binance/ws/stream``;
* ``/binance/ws/ws/<stream>[/<stream>…]``, ``/binance/ws/ws``, ``/binance/ws`` (raw: the bare event).

Live requests: SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY, answered
``{"result":…,"id":…}``; errors ``{"error":{"code":2,"msg":"Invalid request: …"},"id":…}``. More than
``binance_messages_per_s`` incoming messages (pings and pongs count) in one second closes the connection
(1008); at most ``max_streams`` streams per connection. The server pings every ``ping_interval`` and
closes (1008) a connection whose pong has not echoed the payload within ``pong_timeout``; connections
are closed (1001) after ``binance_max_age``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from streams.simulator.binance import Binance
from streams.simulator.hub import Connection

_INTERVALS = "1s|1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w|1M"
STREAM_RE = re.compile(
    rf"^(?:[a-z0-9]+@(?:aggTrade|trade|kline_(?:{_INTERVALS})|ticker|miniTicker|bookTicker|avgPrice"
    r"|ticker_(?:1h|4h|1d)|depth(?:5|10|20)?(?:@100ms|@1000ms)?)|!miniTicker@arr|!ticker_(?:1h|4h|1d)@arr)$"
)
_METHODS = "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass
class _Session:
    conn: Connection
    received: deque[float] = field(default_factory=deque)
    pings: dict[bytes, float] = field(default_factory=dict)


class BinanceWs:
    def __init__(self, venue: Binance) -> None:
        self.venue = venue

    async def handle(self, request: web.Request) -> web.StreamResponse:
        hub, cfg = self.venue.hub, self.venue.config
        hub.attempts.append(time.monotonic())
        if hub.refuse > 0:
            hub.refuse -= 1
            return web.Response(status=503, text="Service Unavailable")
        kind = request.match_info.get("kind", "")
        combined = kind == "stream"
        names = request.query.get("streams", "") if combined else request.match_info.get("streams", "")
        streams = [s for s in names.split("/") if s]
        bad = [s for s in streams if not STREAM_RE.match(s)]
        if bad or len(streams) > cfg.max_streams:
            why = f"invalid stream {bad[0]!r}" if bad else f"more than {cfg.max_streams} streams"
            return web.json_response({"code": -1100, "msg": why}, status=400)
        ws = web.WebSocketResponse(autoping=False, compress=False, timeout=2.0, max_msg_size=1 << 20)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="Expected a WebSocket upgrade")
        writer = await ws.prepare(request)
        conn = hub.connect(ws, writer, request)
        conn.combined = combined
        for s in dict.fromkeys(streams):
            hub.subscribe(conn, s)
        session = _Session(conn)
        keepalive = asyncio.create_task(self._keepalive(session))
        loop = asyncio.get_running_loop()
        try:
            while True:
                msg = await ws.receive()
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                now = loop.time()
                session.received.append(now)
                while session.received[0] <= now - 1.0:
                    session.received.popleft()
                if len(session.received) > cfg.binance_messages_per_s:
                    await conn.close(1008, "Too many messages")
                    break
                if msg.type is WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type is WSMsgType.PONG:
                    echoed = bytes(msg.data)
                    if echoed in session.pings:  # an echo of our ping; unsolicited pongs don't count
                        for payload in list(session.pings):
                            del session.pings[payload]
                            if payload == echoed:
                                break
                elif msg.type is WSMsgType.TEXT:
                    conn.requests.append(msg.data)
                    conn.push_text(_dumps(self._request(conn, msg.data)))
                else:
                    conn.push_text(_dumps({"error": {"code": 3, "msg": "Invalid JSON: binary frame"}, "id": None}))
        finally:
            await conn.finish(keepalive)
        return ws

    async def _keepalive(self, session: _Session) -> None:
        conn, cfg = session.conn, self.venue.config
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + cfg.ping_interval
        too_old = loop.time() + cfg.binance_max_age
        n = 0
        while conn.open:
            now = loop.time()
            deadline = min(session.pings.values()) + cfg.pong_timeout if session.pings else float("inf")
            if now >= deadline:
                await conn.close(1008, "Pong timeout")
                return
            if now >= too_old:
                await conn.close(1001, "Connection lifetime of 24 h reached")
                return
            if now >= next_ping:
                next_ping += cfg.ping_interval
                if not conn.stalled():
                    n += 1
                    payload = str(n).encode()
                    session.pings[payload] = now
                    try:
                        await conn.ws.ping(payload)
                    except ConnectionError:
                        return
                continue
            await asyncio.sleep(min(next_ping, deadline, too_old) - now)

    def _request(self, conn: Connection, text: str) -> dict[str, Any]:
        try:
            req = json.loads(text)
        except ValueError as exc:
            return {"error": {"code": 3, "msg": f"Invalid JSON: {exc}"}, "id": None}
        if not isinstance(req, dict):
            return {"error": {"code": 3, "msg": "Invalid JSON: expected an object"}, "id": None}
        rid = req.get("id")
        ok_id = rid is None or (isinstance(rid, int) and not isinstance(rid, bool))
        ok_id = ok_id or (isinstance(rid, str) and len(rid) <= 36 and rid.isalnum())
        if not ok_id:
            return _error("request ID must be an unsigned integer", None)
        method, params = req.get("method"), req.get("params", [])
        if method is None:
            return _error("missing field `method`", rid)
        if not isinstance(params, list):
            return _error("params must be an array", rid)
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(p, str) and STREAM_RE.match(p) for p in params):
                return _error("invalid stream", rid)
            if method == "SUBSCRIBE":
                if len(conn.subscriptions.keys() | set(params)) > self.venue.config.max_streams:
                    return _error(f"too many streams; a connection can listen to {self.venue.config.max_streams}", rid)
                for p in params:
                    self.venue.hub.subscribe(conn, p)
            else:
                for p in params:
                    self.venue.hub.unsubscribe(conn, p)
            return {"result": None, "id": rid}
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": list(conn.subscriptions), "id": rid}
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            if not params or params[0] != "combined":
                return {"error": {"code": 0, "msg": "Unknown property"}, "id": rid}
            if method == "GET_PROPERTY":
                return {"result": conn.combined, "id": rid}
            if len(params) != 2 or not isinstance(params[1], bool):
                return {"error": {"code": 1, "msg": "Invalid value type: expected Boolean"}, "id": rid}
            conn.combined = params[1]
            return {"result": None, "id": rid}
        return _error(f"unknown variant `{method}`, expected one of {_METHODS}", rid)


def _error(msg: str, rid: object) -> dict[str, Any]:
    return {"error": {"code": 2, "msg": f"Invalid request: {msg}"}, "id": rid}
