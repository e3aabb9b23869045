"""Connections of one simulated exchange, the broadcast index, and the record of what was sent.

A broadcast item is either a complete WebSocket frame (``bytes``: built once and shared by every
subscriber, so they all get the identical text) or a ``(head, tail)`` pair of payload bytes that the
connection completes with its own ``sequence_num`` when it writes (Coinbase). Each connection has a
sender task that writes everything queued since its last write in one ``transport.write`` and then
waits for the socket to drain; the feeds wait (:meth:`Hub.writable`) when a connection falls behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from streams.simulator.wire import frame_payload, ws_frame

Item = bytes | tuple[bytes, bytes]


@dataclass(frozen=True)
class SentFrame:
    """One text frame written to an open socket: ``text`` exactly as written, ``sent_ns`` wall clock."""

    conn_id: str
    text: str
    sent_ns: int


@dataclass(frozen=True)
class ConnectionInfo:
    """``connected_at`` / ``closed_at``: ``time.monotonic()``; ``connected_ns``: wall clock ns."""

    id: str
    exchange: str
    path: str
    open: bool
    subscriptions: tuple[str, ...]
    connected_at: float
    connected_ns: int
    closed_at: float | None
    close_code: int | None
    requests: tuple[str, ...] = ()  # every text message the client sent, in order (SUBSCRIBE, subscribe, ...)


class Connection:
    def __init__(
        self, hub: Hub, conn_id: str, ws: web.WebSocketResponse, writer: AbstractStreamWriter, request: web.Request
    ) -> None:
        self.hub = hub
        self.id = conn_id
        self.ws = ws
        self.writer = writer
        self.transport = request.transport
        self.path = request.path_qs
        self.connected_at = time.monotonic()
        self.connected_ns = time.time_ns()
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self.combined = True  # Binance: wrap events as {"stream":…,"data":…}
        self.subscriptions: dict[str, None] = {}  # ordered set of broadcast keys
        self.requests: list[str] = []  # the client's text messages, as received
        self.seq = 0  # Coinbase sequence_num of the next frame
        self.stalled_until = 0.0  # loop time
        self.outbox: list[Item] = []
        self._wake = asyncio.Event()
        self._closer: asyncio.Task[object] | None = None
        self._sender = asyncio.create_task(self._send_loop(), name=f"sim-send-{conn_id}")

    @property
    def open(self) -> bool:
        return self.closed_at is None and not self.ws.closed

    def stalled(self) -> bool:
        return self.stalled_until > asyncio.get_running_loop().time()

    def push(self, item: Item) -> None:
        self.outbox.append(item)
        self._wake.set()

    def push_text(self, text: str) -> None:
        self.push(ws_frame(text.encode()))

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.outbox:
                wait = self.stalled_until - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                items, self.outbox = self.outbox, []
                if not self._write(items):
                    return
                try:
                    await self.writer.drain()
                except ConnectionError:
                    return
            self.hub.changed.set()

    def _write(self, items: list[Item]) -> bool:
        transport = self.transport
        if not self.open or transport is None or transport.is_closing():
            return False
        frames: list[bytes] = []
        for item in items:
            if isinstance(item, bytes):
                frames.append(item)
            else:
                frames.append(ws_frame(b"%b%d%b" % (item[0], self.seq, item[1])))
                self.seq += 1
        transport.write(b"".join(frames))
        if self.hub.record:
            now = time.time_ns()
            cid = self.id
            self.hub.sent_log.extend([(cid, f, now) for f in frames])
        return True

    async def close(self, code: int, reason: str = "") -> None:
        self.outbox.clear()
        if not self.ws.closed:
            self._closer = asyncio.current_task()
            self.close_code = code
            with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
                await self.ws.close(code=code, message=reason.encode()[:120])

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (the client sees 1006)."""
        self.outbox.clear()
        if not self.ws.closed and self.transport is not None:
            self.close_code = 1006
            self.transport.abort()

    async def finish(self, *helpers: asyncio.Task[None]) -> None:
        """The handler is done: stop sending (and the handler's ``helpers``), forget the subscriptions."""
        if self.closed_at is None:
            self.closed_at = time.monotonic()
        if self.close_code is None:
            self.close_code = self.ws.close_code
        self.outbox.clear()
        self.hub.forget(self)
        self.hub.changed.set()
        for task in (self._sender, *helpers):
            if task is not self._closer:  # a helper closing the connection finishes its close handshake
                task.cancel()
        await asyncio.gather(self._sender, *helpers, return_exceptions=True)

    def info(self) -> ConnectionInfo:
        return ConnectionInfo(
            id=self.id,
            exchange=self.hub.exchange,
            path=self.path,
            open=self.open,
            subscriptions=tuple(self.subscriptions),
            connected_at=self.connected_at,
            connected_ns=self.connected_ns,
            closed_at=self.closed_at,
            close_code=self.close_code,
            requests=tuple(self.requests),
        )


class Hub:
    def __init__(self, exchange: str, *, record: bool = True, max_outbox: int = 50_000) -> None:
        self.exchange = exchange
        self.record = record
        self.max_outbox = max_outbox
        self.open: dict[str, Connection] = {}
        self.history: list[Connection] = []
        self.index: dict[str, set[Connection]] = {}
        self.sent_log: list[tuple[str, bytes, int]] = []
        self.attempts: list[float] = []  # time.monotonic() of every handshake, refused ones included
        self.refuse = 0  # handshakes still to refuse with 503
        self.changed = asyncio.Event()  # set when a connection drained, closed or (un)subscribed
        self._ids = itertools.count(1)

    def connect(self, ws: web.WebSocketResponse, writer: AbstractStreamWriter, request: web.Request) -> Connection:
        conn = Connection(self, f"{self.exchange}-{next(self._ids)}", ws, writer, request)
        self.open[conn.id] = conn
        self.history.append(conn)
        return conn

    def forget(self, conn: Connection) -> None:
        self.open.pop(conn.id, None)
        for key in conn.subscriptions:
            subs = self.index.get(key)
            if subs is not None:
                subs.discard(conn)
                if not subs:
                    del self.index[key]

    def subscribe(self, conn: Connection, key: str) -> None:
        conn.subscriptions[key] = None
        self.index.setdefault(key, set()).add(conn)
        self.changed.set()

    def unsubscribe(self, conn: Connection, key: str) -> None:
        conn.subscriptions.pop(key, None)
        subs = self.index.get(key)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self.index[key]

    def subscribed(self, key: str) -> bool:
        return key in self.index

    def push(self, key: str, item: Item) -> None:
        for conn in self.index.get(key, ()):
            conn.push(item)

    def push_all(self, conns: Iterable[Connection], item: Item) -> None:
        for conn in conns:
            conn.push(item)

    def _behind(self) -> bool:
        return any(len(c.outbox) > self.max_outbox and not c.stalled() for c in self.open.values())

    async def writable(self) -> None:
        """Wait while an open, unstalled connection has more than ``max_outbox`` frames queued."""
        while self._behind():
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.05)  # also re-checks as stalls begin and end

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, re-checked whenever connections change."""
        while not condition():
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.05)

    async def close_all(self, code: int, reason: str = "", *, abrupt: bool = False) -> None:
        conns = list(self.open.values())
        if abrupt:
            for conn in conns:
                conn.abort()
            return
        await asyncio.gather(*(c.close(code, reason) for c in conns))

    def stall(self, seconds: float) -> None:
        until = asyncio.get_running_loop().time() + seconds
        for conn in self.open.values():
            conn.stalled_until = max(conn.stalled_until, until)

    def sent(self) -> list[SentFrame]:
        return [SentFrame(cid, frame_payload(f).decode(), ns) for cid, f, ns in self.sent_log]

    def infos(self) -> list[ConnectionInfo]:
        return [c.info() for c in self.history]
