"""What every WebSocket adapter shares: connect with backoff, read, stamp, enqueue; staleness; rotation.

An adapter owns one or more *shards* (connections carrying a fixed set of subscriptions). Each shard
runs :meth:`WsAdapter._shard`:

* connect (``exchange:connecting``), subscribe, read (``exchange:connected``); every frame is stamped
  with its receive time and enqueued for the :class:`FrameSink` unchanged;
* a connection silent for ``stale_after_s`` (neither a frame, heartbeats included, nor a server ping)
  is declared stale, closed and reopened; judged per connection, never per symbol;
* after a drop, reconnect with exponential backoff and jitter, capped; a connection that lived
  ``healthy_after_s`` resets the backoff, one that dies young grows it (no reconnect storms);
* rotation (``rotate_after_s``, or the exchange announcing a shutdown): a second connection is opened
  *before* the first is closed; while both run, frames are de-duplicated by their exact text, and the
  old one is closed once the new one has caught up (it delivered a frame the old one already had);
* only transport errors are retried; a bug in the adapter propagates;
* :meth:`WsAdapter.update_symbols` changes the subscriptions of a running adapter incrementally: only
  the (un)subscribe messages for the difference are sent on the live connections (rate-limited like
  the first subscribe); the shards' lists are updated so a reconnect subscribes the new set.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

from control import events as ev
from streams.adapters.sink import ControlEmitter, FrameSink, now_ns

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 10 * 1024 * 1024  # Coinbase level2 snapshots reach 5 MB; the SDK allows 10 MiB


@dataclass(frozen=True)
class Backoff:
    """``delay(n)`` for the n-th consecutive failure: half of min(cap, base·factor^(n-1)) plus jitter up to
    the other half ("equal jitter": spread out, yet never shorter than half the nominal delay)."""

    base_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 30.0

    def delay(self, failures: int, rng: random.Random) -> float:
        nominal = min(self.cap_s, self.base_s * self.factor ** max(failures - 1, 0))
        return nominal / 2 + rng.uniform(0, nominal / 2)


class TokenBucket:
    """At most ``rate`` messages per second (bursts up to ``burst``): exchanges disconnect clients that send faster."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    async def acquire(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


@dataclass(frozen=True)
class AdapterConfig:
    ws_url: str
    symbols: tuple[str, ...]  # the exchange's own symbols (BTCUSDT, BTC-USD)
    timeframes: tuple[str, ...] = ("1m",)
    stale_after_s: float = 10.0
    heartbeat_every_s: float = 15.0
    healthy_after_s: float = 30.0
    rotate_after_s: float | None = None
    overlap_timeout_s: float = 30.0
    dedupe_grace_s: float = 5.0
    open_timeout_s: float = 10.0
    backoff: Backoff = field(default_factory=Backoff)
    seed: int | None = None


class _Connection(ClientConnection):
    """A client connection that notes when the server last pinged it: Binance pings every 20 s and a
    ping is a sign of life too (PROTOCOLS.md: judge liveness from the last frame and the last ping)."""

    last_ping: float | None = None

    def process_event(self, event: Event) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.last_ping = time.monotonic()
        super().process_event(event)


@dataclass
class Conn:
    """One live WebSocket connection of a shard."""

    id: str
    ws: ClientConnection
    opened: float
    last_frame: float
    frames: int = 0
    reason: str | None = None
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None
    shard: str = ""  # the name of the shard it carries


@dataclass
class Shard:
    name: str
    subscriptions: tuple[str, ...]
    reconnect_now: asyncio.Event = field(default_factory=asyncio.Event)
    reconnect_reason: str = ""
    retired: bool = False  # emptied by update_symbols while other shards still subscribe: its connection closes


class WsAdapter:
    """Base of the exchange adapters; subclasses say how to subscribe and what to look at in a frame."""

    exchange_id: str = ""

    def __init__(self, config: AdapterConfig, sink: FrameSink, control: ControlEmitter) -> None:
        self.config = config
        self.sink = sink
        self.control = control
        self.rng = random.Random(config.seed)
        self.stop = asyncio.Event()
        self._ids = itertools.count(1)
        self._dedupe: set[bytes] | None = None
        self._dedupe_users = 0
        self.frames_since_heartbeat = 0
        self._open: dict[str, Conn] = {}  # connections whose reader runs (for disconnect_now)
        self._backoffs: set[asyncio.Future[None]] = set()  # pending backoff waits (for reconnect_now)
        self._shards: list[Shard] | None = None  # while running
        self._shard_numbers = itertools.count()  # numbers of shards added while running
        self._tg: asyncio.TaskGroup | None = None
        self._subscribing = asyncio.Lock()  # a connection's first subscribe vs update_symbols

    # ---------------------------------------------------------------- what an exchange module provides

    def shards(self) -> list[Shard]:
        raise NotImplementedError

    def url(self, shard: Shard) -> str:
        return self.config.ws_url

    async def subscribe(self, conn: Conn, shard: Shard) -> None:
        raise NotImplementedError

    def inspect(self, conn: Conn, shard: Shard, frame: bytes) -> None:
        """Look at a frame the adapter must understand (sequence numbers, shutdown notices); no I/O."""

    def on_open(self, conn: Conn, shard: Shard) -> None:
        """Reset per-connection tracking state."""

    def subscription_keys(self) -> list[str]:
        """What the shards' subscriptions should be for ``config.symbols`` (for :meth:`update_symbols`)."""
        raise NotImplementedError

    def shard_capacity(self) -> int | None:
        """At most this many subscriptions per shard (None: no limit, one shard)."""
        return None

    async def send_changes(self, conn: Conn, shard: Shard, added: tuple[str, ...], removed: tuple[str, ...]) -> None:
        """Subscribe ``added`` and unsubscribe ``removed`` on a live connection of ``shard``."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ the machinery

    def emit(self, event_type: type[ev.ControlEvent], conn_id: str = "", **fields: Any) -> None:
        self.control.emit(event_type(exchange=self.exchange_id, at_ns=now_ns(), connection=conn_id, **fields))

    async def disconnect_now(self, reason: str) -> int:
        """Drop every open connection now (the ``disconnect`` command); each shard reconnects after its
        usual backoff. Returns how many connections were closed."""
        conns = list(self._open.values())
        for conn in conns:
            conn.reason = conn.reason or reason
        await asyncio.gather(*(conn.ws.close(code=1000, reason=reason[:100]) for conn in conns), return_exceptions=True)
        return len(conns)

    def reconnect_now(self) -> int:
        """Cut every pending backoff short (the ``connect`` command): shards waiting to reconnect try at
        once; connected shards are left alone. Returns how many waits were cut short."""
        waits = [w for w in self._backoffs if not w.done()]
        for w in waits:
            w.set_result(None)
        return len(waits)

    async def update_symbols(self, symbols: Sequence[str]) -> None:
        """Follow a new symbol set (exchange-native) without reconnecting: the difference is unsubscribed
        and subscribed on the live connections; a full shard makes room on a new shard (connection)."""
        wanted_symbols = tuple(dict.fromkeys(symbols))
        async with self._subscribing:
            self.config = replace(self.config, symbols=wanted_symbols)
            shards, tg = self._shards, self._tg
            if shards is None or tg is None or self.stop.is_set():
                return  # not running: shards() builds from the new set
            wanted = list(dict.fromkeys(self.subscription_keys()))
            wanted_set = set(wanted)
            have = {s for shard in shards for s in shard.subscriptions}
            changes: dict[str, tuple[list[str], list[str]]] = {}
            for shard in shards:
                gone = [s for s in shard.subscriptions if s not in wanted_set]
                if gone:
                    shard.subscriptions = tuple(s for s in shard.subscriptions if s in wanted_set)
                    changes[shard.name] = ([], gone)
            new = [s for s in wanted if s not in have]
            cap = self.shard_capacity()
            for shard in shards:
                if not new:
                    break
                room = len(new) if cap is None else max(cap - len(shard.subscriptions), 0)
                take, new = new[:room], new[room:]
                if take:
                    shard.subscriptions = (*shard.subscriptions, *take)
                    changes.setdefault(shard.name, ([], []))[0].extend(take)
            for shard in [s for s in shards if not s.subscriptions] if any(s.subscriptions for s in shards) else []:
                shard.retired = True  # no subscriptions left: close it rather than keep an idle connection
                shards.remove(shard)
                shard.reconnect_now.set()
            for shard in shards:
                added, removed = changes.get(shard.name, ([], []))
                if not added and not removed:
                    continue
                for conn in [c for c in self._open.values() if c.shard == shard.name]:
                    try:
                        await self.send_changes(conn, shard, tuple(added), tuple(removed))
                    except websockets.WebSocketException:
                        pass  # the connection is going away; its reconnect subscribes the shard's new list
            while new:  # every shard is full: more connections
                take, new = new[: cap or len(new)], new[cap or len(new) :]
                shard = Shard(f"{self.exchange_id}-{next(self._shard_numbers)}", tuple(take))
                shards.append(shard)
                tg.create_task(self._shard(shard))

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run every shard until ``stop`` is set; then close, drain the sink, and return."""
        if stop is not None:
            self.stop = stop
        writers = [asyncio.create_task(self.sink.run()), asyncio.create_task(self.control.run())]
        for writer in writers:  # a writer that fails (Redis refused an append) stops the adapter, which raises it
            writer.add_done_callback(self._writer_done)
        try:
            async with asyncio.TaskGroup() as tg:
                self._shards, self._tg = self.shards(), tg
                self._shard_numbers = itertools.count(len(self._shards))  # names of shards added later
                for shard in self._shards:
                    tg.create_task(self._shard(shard))
                tg.create_task(self._heartbeats())
        finally:
            self._shards = self._tg = None
            await self.sink.close()
            await self.control.close()
            await asyncio.gather(*writers)

    def _writer_done(self, writer: asyncio.Task[None]) -> None:
        if not writer.cancelled() and writer.exception() is not None:
            self.stop.set()

    async def _heartbeats(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.config.heartbeat_every_s)
            if self.frames_since_heartbeat:
                self.emit(ev.Heartbeat, frames=self.frames_since_heartbeat)
                self.frames_since_heartbeat = 0

    async def _shard(self, shard: Shard) -> None:
        failures = 0
        current: Conn | None = None
        while not self.stop.is_set() and not shard.retired:
            if current is None:
                current, failures = await self._connect(shard, failures)
                if current is None:
                    return
            why = await self._wait(current, shard)
            if why == "stop":
                break
            if shard.retired:
                await self._close(current, "no subscriptions left (shard retired)", retry_in=None)
                return
            if why == "ended":
                if _failed(current):  # not a transport error: a bug, which propagates (after closing)
                    await self._close(current, "adapter error", retry_in=None)
                lived = time.monotonic() - current.opened
                failures = 1 if lived >= self.config.healthy_after_s else failures + 1
                delay = self.config.backoff.delay(failures, self.rng)
                self._disconnected(current, current.reason or "closed", delay)
                current = None
                await self._sleep(delay)
                continue
            # rotation or an announced shutdown: open the next connection before closing this one
            reason = shard.reconnect_reason or "rotation"
            shard.reconnect_now.clear()
            shard.reconnect_reason = ""
            current = await self._rotate(current, shard, reason)
        if current is not None:  # told to stop (also while connecting or rotating): close what is open
            await self._close(current, "stopped", retry_in=None)

    async def _connect(
        self, shard: Shard, failures: int, caught_up: asyncio.Event | None = None
    ) -> tuple[Conn | None, int]:
        while not self.stop.is_set():
            conn_id = f"{shard.name}#{next(self._ids)}"
            url = self.url(shard)
            self.emit(ev.Connecting, conn_id, url=url, attempt=failures + 1)
            try:
                ws = await websockets.connect(
                    url,
                    max_size=MAX_FRAME_BYTES,
                    open_timeout=self.config.open_timeout_s,
                    ping_interval=None,  # both exchanges keep the connection alive themselves
                    proxy=None,
                    compression=None,
                    create_connection=_Connection,
                )
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                failures += 1
                delay = self.config.backoff.delay(failures, self.rng)
                self.emit(ev.Disconnected, conn_id, reason=f"connect failed: {exc}", retry_in_s=delay)
                await self._sleep(delay)
                continue
            async with self._subscribing:  # the shard's list can't change between this and the subscribe
                now = time.monotonic()
                conn = Conn(
                    conn_id, ws, opened=now, last_frame=now, caught_up=caught_up or asyncio.Event(), shard=shard.name
                )
                self._open[conn_id] = conn
                self.on_open(conn, shard)
                conn.reader = asyncio.create_task(self._read(conn, shard))
                try:
                    await self.subscribe(conn, shard)
                except websockets.WebSocketException as exc:
                    conn.reason = f"subscribe failed: {exc}"
            self.emit(ev.Connected, conn_id, url=url, subscriptions=list(shard.subscriptions))
            return conn, failures
        return None, failures

    async def _read(self, conn: Conn, shard: Shard) -> None:
        ws, sink = conn.ws, self.sink
        recv, inspect, put, queue, batch = ws.recv, self.inspect, sink.put_nowait, sink.queue, sink.batch
        monotonic = time.monotonic
        watchdog = asyncio.create_task(self._watch(conn))
        try:
            while True:
                frame = await recv(decode=False)
                stamp = now_ns()
                conn.last_frame = monotonic()
                conn.frames += 1
                if self._dedupe is not None:
                    if frame in self._dedupe:
                        conn.caught_up.set()
                        continue
                    self._dedupe.add(frame)
                inspect(conn, shard, frame)
                self.frames_since_heartbeat += 1
                if not put(frame, stamp):
                    await sink.put(frame, stamp)
                elif len(queue) >= batch:
                    # recv() returns without yielding while frames are buffered: give the sink its turn
                    # to append a batch, or frames pile up in memory instead of reaching Redis
                    await asyncio.sleep(0)
        except websockets.ConnectionClosed as exc:
            if conn.reason is None:
                conn.reason = _close_reason(exc)
        finally:
            watchdog.cancel()
            self._open.pop(conn.id, None)

    async def _watch(self, conn: Conn) -> None:
        limit = self.config.stale_after_s
        while True:
            last_ping = conn.ws.last_ping if isinstance(conn.ws, _Connection) else None
            silent = time.monotonic() - max(conn.last_frame, last_ping or 0.0)
            if silent >= limit:
                conn.reason = f"stale: no frame for {silent:.1f}s"
                self.emit(ev.Stale, conn.id, silent_s=round(silent, 3))
                await conn.ws.close(code=1000, reason="stale")
                return
            await asyncio.sleep(min(limit - silent, limit / 4) + 0.001)

    async def _wait(self, conn: Conn, shard: Shard) -> str:
        assert conn.reader is not None
        waits: dict[str, asyncio.Future[Any]] = {
            "ended": asyncio.ensure_future(asyncio.shield(conn.reader)),
            "stop": asyncio.ensure_future(self.stop.wait()),
            "rotate": asyncio.ensure_future(shard.reconnect_now.wait()),
        }
        if self.config.rotate_after_s is not None:
            remaining = self.config.rotate_after_s - (time.monotonic() - conn.opened)
            waits["rotate-timer"] = asyncio.ensure_future(asyncio.sleep(max(remaining, 0)))
        done, pending = await asyncio.wait(waits.values(), return_when=asyncio.FIRST_COMPLETED)
        for fut in pending:
            fut.cancel()
        for fut in done:
            if not fut.cancelled():
                fut.exception()  # retrieved here; a failed reader is dealt with by the caller
        for name, fut in waits.items():
            if fut in done:
                return "rotate" if name.startswith("rotate") else name
        raise AssertionError("unreachable")

    async def _rotate(self, old: Conn, shard: Shard, reason: str) -> Conn | None:
        self._dedupe_users += 1
        if self._dedupe is None:
            self._dedupe = set()
        caught_up = old.caught_up = asyncio.Event()  # a duplicate seen on either side: both carry the feed
        try:
            new, _ = await self._connect(shard, 0, caught_up)
            if new is None:
                await self._close(old, "stopped", retry_in=None)
                return None
            assert old.reader is not None
            waits: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(caught_up.wait()),
                asyncio.ensure_future(asyncio.shield(old.reader)),
                asyncio.ensure_future(self.stop.wait()),  # stopping ends the overlap at once
            ]
            await asyncio.wait(waits, timeout=self.config.overlap_timeout_s, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if self.stop.is_set():
                await self._close(old, "stopped", retry_in=None)
            else:
                await self._close(old, reason, retry_in=0.0)
            return new
        finally:
            # the new connection may still deliver frames the old one already had: keep de-duplicating a little
            asyncio.get_running_loop().call_later(self.config.dedupe_grace_s, self._release_dedupe)

    def _release_dedupe(self) -> None:
        self._dedupe_users -= 1
        if self._dedupe_users == 0:
            self._dedupe = None

    async def _close(self, conn: Conn, reason: str, *, retry_in: float | None) -> None:
        conn.reason = conn.reason or reason
        with contextlib.suppress(websockets.WebSocketException, OSError):
            await conn.ws.close(code=1000, reason=reason[:100])
        if conn.reader is not None:
            await asyncio.wait([conn.reader])
            if _failed(conn):
                error = conn.reader.exception()
                assert error is not None
                self._disconnected(conn, f"adapter error: {error!r}", None)
                raise error
        self._disconnected(conn, reason, retry_in)

    def _disconnected(self, conn: Conn, reason: str, retry_in: float | None) -> None:
        self.emit(ev.Disconnected, conn.id, reason=reason, retry_in_s=retry_in)

    async def _sleep(self, seconds: float) -> None:
        """A backoff wait: ends early when told to stop or when :meth:`reconnect_now` cuts it short."""
        cut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._backoffs.add(cut)
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait([cut, stopping], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            self._backoffs.discard(cut)


def _failed(conn: Conn) -> bool:
    """Whether the connection's reader ended with an exception (anything but the connection closing)."""
    reader = conn.reader
    return reader is not None and reader.done() and not reader.cancelled() and reader.exception() is not None


def _close_reason(exc: websockets.ConnectionClosed) -> str:
    rcvd = exc.rcvd
    if rcvd is None:
        return "connection lost"
    return f"closed by server (code {rcvd.code}{', ' + rcvd.reason if rcvd.reason else ''})"


def chunks(items: Sequence[str], size: int) -> list[tuple[str, ...]]:
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)]
