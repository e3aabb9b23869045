"""The Coinbase Advanced Trade WebSocket endpoint ``/coinbase/ws``.

One subscribe message per channel (heartbeats, candles, market_trades, ticker, status); each
(un)subscribe is answered by a ``subscriptions`` frame listing everything active, after the snapshots
(candles: the last ``snapshot_candles`` 5-minute candles ascending, empty buckets omitted;
market_trades: the last ``snapshot_trades`` trades newest first; ticker; status). Leaving out
``product_ids`` on unsubscribe drops the whole channel. No subscribe within ``subscribe_timeout`` s, or
more than ``coinbase_messages_per_s`` messages in a second: an error frame and a close (1008). Unknown
channels get an error frame. Error frames carry no ``sequence_num``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from streams.simulator.coinbase import Coinbase
from streams.simulator.hub import Connection
from streams.simulator.wire import plain

CHANNELS = ("heartbeats", "candles", "market_trades", "ticker", "status")


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass
class _Session:
    conn: Connection
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    received: deque[float] = field(default_factory=deque)


class CoinbaseWs:
    def __init__(self, venue: Coinbase) -> None:
        self.venue = venue

    async def handle(self, request: web.Request) -> web.StreamResponse:
        hub, cfg = self.venue.hub, self.venue.config
        hub.attempts.append(time.monotonic())
        if hub.refuse > 0:
            hub.refuse -= 1
            return web.Response(status=503, text="Service Unavailable")
        ws = web.WebSocketResponse(compress=False, timeout=2.0, max_msg_size=1 << 20)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="Expected a WebSocket upgrade")
        writer = await ws.prepare(request)
        session = _Session(hub.connect(ws, writer, request))
        conn = session.conn
        deadline = asyncio.create_task(self._subscribe_deadline(session))
        loop = asyncio.get_running_loop()
        try:
            while True:
                msg = await ws.receive()
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                if msg.type is WSMsgType.TEXT:
                    session.conn.requests.append(msg.data)
                now = loop.time()
                session.received.append(now)
                while session.received[0] <= now - 1.0:
                    session.received.popleft()
                if len(session.received) > cfg.coinbase_messages_per_s:
                    conn.push_text(_dumps({"type": "error", "message": "rate limit exceeded"}))
                    await asyncio.sleep(0.05)  # let the error frame go out first
                    await conn.close(1008, "rate limit exceeded")
                    break
                data = msg.data if isinstance(msg.data, str) else msg.data.decode("utf-8", "replace")
                self._message(session, data)
        finally:
            await conn.finish(deadline)
        return ws

    async def _subscribe_deadline(self, session: _Session) -> None:
        try:
            await asyncio.wait_for(session.subscribed.wait(), self.venue.config.subscribe_timeout)
        except TimeoutError:
            session.conn.push_text(_dumps({"type": "error", "message": "subscribe timeout: no subscription"}))
            await asyncio.sleep(0.05)
            await session.conn.close(1008, "subscribe timeout")

    def _message(self, session: _Session, text: str) -> None:
        conn = session.conn
        try:
            req = json.loads(text)
        except ValueError:
            conn.push_text(_dumps({"type": "error", "message": "failure to parse message"}))
            return
        kind = req.get("type") if isinstance(req, dict) else None
        channel = req.get("channel") if isinstance(req, dict) else None
        if kind not in ("subscribe", "unsubscribe"):
            conn.push_text(_dumps({"type": "error", "message": f"unknown message type {kind!r}"}))
            return
        if channel not in CHANNELS:
            conn.push_text(_dumps({"type": "error", "message": f"Failed to {kind}: unknown channel {channel!r}"}))
            return
        products = req.get("product_ids")
        if channel == "heartbeats":
            products = ["heartbeats"]
        elif products is None and kind == "unsubscribe":
            products = [k.partition(":")[2] for k in conn.subscriptions if k.startswith(f"{channel}:")]
        if not isinstance(products, list) or not products or not all(isinstance(p, str) for p in products):
            conn.push_text(_dumps({"type": "error", "message": f"Failed to {kind}: product_ids required"}))
            return
        if kind == "subscribe":
            new = [p for p in dict.fromkeys(products) if f"{channel}:{p}" not in conn.subscriptions]
            for p in new:
                self.venue.hub.subscribe(conn, f"{channel}:{p}")
            self._snapshots(conn, channel, new)
            session.subscribed.set()
        else:
            for p in products:
                self.venue.hub.unsubscribe(conn, f"{channel}:{p}")
        listing: dict[str, list[str]] = {}
        for key in conn.subscriptions:
            ch, _, product = key.partition(":")
            listing.setdefault(ch, []).append(product)
        events = _dumps([{"subscriptions": dict(sorted(listing.items()))}])
        conn.push(self.venue.parts("subscriptions", events))

    def _snapshots(self, conn: Connection, channel: str, products: list[str]) -> None:
        if channel == "status" and products:
            objs = [self._status(p) for p in products]
            conn.push(self.venue.parts("status", _dumps([{"type": "snapshot", "products": objs}])))
            return
        for product in products:
            series = self.venue.series.get(product)
            if channel == "candles":
                book = self.venue.candles.get(product, {})
                candles = [book[s] for s in sorted(book)[-self.venue.config.snapshot_candles :]]
                events = _dumps([{"type": "snapshot", "candles": candles}])
            elif channel == "market_trades":
                recent = series.trades[-self.venue.config.snapshot_trades :] if series else []
                trades = [self.venue.trade_obj(product, series, t) for t in reversed(recent)] if series else []
                events = _dumps([{"type": "snapshot", "trades": trades}])
            elif channel == "ticker" and product in self.venue.tickers:
                events = _dumps([{"type": "snapshot", "tickers": [self.venue.tickers[product]]}])
            else:
                continue
            conn.push(self.venue.parts(channel, events))

    def _status(self, product: str) -> dict[str, Any]:
        base, _, quote = product.partition("-")
        inst = self.venue.instruments.get(product)
        return {
            "product_type": "SPOT", "id": product, "base_currency": inst.base if inst else base,
            "quote_currency": inst.quote if inst else quote,
            "base_increment": plain(inst.step, inst.qty_scale) if inst else "0.00000001",
            "quote_increment": plain(inst.tick, inst.price_scale) if inst else "0.01",
            "display_name": product.replace("-", "/"), "status": "online", "status_message": "",
            "min_market_funds": "1",
        }  # fmt: skip
