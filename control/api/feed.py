"""``/ws``: live candle closes and alerts of any exchanges, several at once (VIS-02), from Redis pub/sub.

Protocol (JSON text frames)::

    → {"subscribe": [{"exchange": "binance", "kind": "closes", "symbol": "BTCUSDT", "timeframe": "1m"},
                     {"exchange": "coinbase", "kind": "alerts"}]}
    ← {"subscribed": [... every subscription now in effect ...]}        once Redis confirmed them
    ← {"exchange": "binance", "kind": "closes", "data": {CandleClosed}}
    ← {"exchange": "coinbase", "kind": "alerts", "data": {Alert, with source_exchange_id}}
    → {"unsubscribe": [...]}                                              ← {"subscribed": [...]}
    ← {"error": "bad_request", "detail": "..."}    a bad message; the connection stays open

``symbol`` and ``timeframe`` are optional filters (symbols in exchange or canonical form). Closes come
from PSUBSCRIBE patterns over ``channel:exchange:{ex}:candle:close:{symbol}:{tf}`` (DATA-05), alerts
from ``channel:alerts:{ex}`` (VIS-01). Each message is sent once even when several subscriptions match
it. Pub/sub is at-most-once: a client that must not miss anything reads ``closes:{ex}`` /
``alerts:{ex}`` (or ``GET /alerts``) after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from redis.asyncio.client import PubSub

from control.api.auth import read_guard
from control.api.context import Ctx, known_exchange, resolve_symbol
from control.api.schemas import ClientMessage, ErrorBody, FeedMessage, Subscribed, Subscription
from processors.indicators import decode_alert
from streams import keys
from streams.log import translated
from tickfold.errors import KeyFormatError, StoreUnavailable, TickfoldError

log = logging.getLogger(__name__)

_DECODER = msgspec.json.Decoder(ClientMessage)
_ENCODER = msgspec.json.Encoder()
_CONFIRM_TIMEOUT_S = 10.0
_MAX_SUBSCRIPTIONS = 1000


def pattern(sub: Subscription) -> str:
    if sub.kind == "closes":
        return keys.candle_close_pattern(sub.exchange, sub.symbol, sub.timeframe)
    return keys.alerts_channel(sub.exchange)  # exchange ids hold no glob characters: the channel is its own pattern


def _sort_key(sub: Subscription) -> tuple[str, str, str, str]:
    return (sub.exchange, sub.kind, sub.symbol or "", sub.timeframe or "")


class _Session:
    def __init__(self, ctx: Ctx, socket: WebSocket[Any, Any, Any]) -> None:
        self.ctx = ctx
        self.socket = socket
        self.subs: set[Subscription] = set()
        self.active: set[str] = set()  # patterns Redis confirmed, kept by the pump in the order of messages
        self.pubsub: PubSub = ctx.redis.pubsub()
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.pump: asyncio.Task[None] | None = None
        self.send_lock = asyncio.Lock()

    async def send(self, obj: object) -> None:
        async with self.send_lock:
            await self.socket.send_data(_ENCODER.encode(obj).decode(), mode="text")

    async def normalize(self, sub: Subscription) -> Subscription:
        exchange = known_exchange(sub.exchange)
        symbol = await resolve_symbol(self.ctx.redis, exchange, sub.symbol) if sub.symbol is not None else None
        timeframe = keys.timeframe_part(sub.timeframe) if sub.timeframe is not None else None
        return Subscription(exchange=exchange, kind=sub.kind, symbol=symbol, timeframe=timeframe)

    async def handle(self, raw: str | bytes) -> None:
        try:
            message = _DECODER.decode(raw)
            if not message.subscribe and not message.unsubscribe:
                raise msgspec.ValidationError("expected {'subscribe': [...]} or {'unsubscribe': [...]}")
            add = {await self.normalize(s) for s in message.subscribe}
            drop = {await self.normalize(s) for s in message.unsubscribe}
        except (msgspec.DecodeError, KeyFormatError, TickfoldError) as exc:
            await self.send(ErrorBody("bad_request", f"bad subscription message: {exc}"))
            return
        wanted = (self.subs | add) - drop
        if len(wanted) > _MAX_SUBSCRIPTIONS:
            await self.send(ErrorBody("bad_request", f"at most {_MAX_SUBSCRIPTIONS} subscriptions per connection"))
            return
        before = {pattern(s) for s in self.subs}
        after = {pattern(s) for s in wanted}
        self.subs = wanted  # (routing also requires a pattern to be active: confirmed, in the message order)
        await self._change(sorted(after - before), sorted(before - after))
        await self.send(Subscribed(sorted(self.subs, key=_sort_key)))

    async def _change(self, subscribe: list[str], unsubscribe: list[str]) -> None:
        """(P)SUBSCRIBE / PUNSUBSCRIBE, returning once Redis confirmed each (so nothing published after
        the client's acknowledgement is missed)."""
        loop = asyncio.get_running_loop()
        confirmations = [self.waiting.setdefault(p, loop.create_future()) for p in subscribe + unsubscribe]
        with translated("subscribing to pub/sub channels"):
            if subscribe:
                await self.pubsub.psubscribe(*subscribe)
            if unsubscribe:
                await self.pubsub.punsubscribe(*unsubscribe)
        if self.pump is None and subscribe:
            self.pump = asyncio.create_task(self._pump())
        if confirmations:
            async with asyncio.timeout(_CONFIRM_TIMEOUT_S):
                await asyncio.gather(*confirmations)

    async def _pump(self) -> None:
        while True:
            with translated("reading pub/sub"):
                msg: Any = await self.pubsub.get_message(timeout=1.0)  # (a bounded wait: no socket timeout applies)
            if msg is None:
                continue
            kind = msg["type"]
            if kind in (b"psubscribe", b"punsubscribe", "psubscribe", "punsubscribe"):
                name = msg["channel"].decode()
                if kind in (b"psubscribe", "psubscribe"):
                    self.active.add(name)
                else:
                    self.active.discard(name)
                fut = self.waiting.pop(name, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif kind in (b"pmessage", "pmessage"):
                out = self.route(msg["pattern"].decode(), msg["channel"].decode(), msg["data"])
                if out is not None:
                    await self.send(out)

    def route(self, matched: str, channel: str, data: bytes) -> FeedMessage | None:
        """The message to send for a pub/sub message, or None (not for us, or sent by another pattern)."""
        parts = channel.split(":")
        if len(parts) == 7 and parts[1] == "exchange":  # channel:exchange:{ex}:candle:close:{symbol}:{tf}
            ex, symbol, tf = parts[2], parts[5], parts[6]
            matching = sorted(
                p
                for p in (
                    pattern(s)
                    for s in self.subs
                    if s.kind == "closes"
                    and s.exchange == ex
                    and s.symbol in (None, symbol)
                    and s.timeframe in (None, tf)
                )
                if p in self.active
            )
            if not matching or matching[0] != matched:  # several patterns match: only the first one sends
                return None
            return FeedMessage(ex, "closes", msgspec.Raw(data))
        if len(parts) == 3 and parts[1] == "alerts":  # channel:alerts:{ex}
            ex = parts[2]
            subs = [s for s in self.subs if s.kind == "alerts" and s.exchange == ex]
            if not subs:
                return None
            if all(s.symbol is not None or s.timeframe is not None for s in subs):
                try:
                    alert = decode_alert(data)
                except msgspec.DecodeError:
                    log.warning("not an alert on %s: %r", channel, data[:200])
                    return None
                if not any(s.symbol in (None, alert.symbol) and s.timeframe in (None, alert.timeframe) for s in subs):
                    return None
            return FeedMessage(ex, "alerts", msgspec.Raw(data))
        return None

    async def close(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, TickfoldError):
                await self.pump
        with contextlib.suppress(TickfoldError), translated("closing pub/sub"):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]


@websocket("/ws", guards=[read_guard])
async def feed(socket: WebSocket[Any, Any, Any], ctx: Ctx) -> None:
    await socket.accept()
    session = _Session(ctx, socket)
    receiving: asyncio.Task[Any] | None = None
    try:
        while True:
            receiving = asyncio.ensure_future(socket.receive())
            waits: list[asyncio.Future[Any]] = [receiving]
            if session.pump is not None:
                waits.append(session.pump)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if session.pump is not None and session.pump.done():
                error = session.pump.exception()
                raise error if error is not None else StoreUnavailable("the pub/sub reader stopped")
            event = receiving.result()
            receiving = None
            if event["type"] == "websocket.disconnect":
                return
            await session.handle(event.get("text") or event.get("bytes") or b"")
    except WebSocketDisconnect:
        return
    except (StoreUnavailable, TimeoutError) as exc:
        with contextlib.suppress(Exception):
            await session.send(ErrorBody("unavailable", f"the feed stopped: {exc}"))
            await socket.close(code=1011, reason="feed unavailable")
    finally:
        if receiving is not None:
            receiving.cancel()
        await session.close()
