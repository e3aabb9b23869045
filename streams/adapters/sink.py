"""Where adapters write: raw frames to the exchange's stream, lifecycle events to the control stream.

Both are queues drained by a writer task, so a slow Redis round trip never stalls a socket: the
reader only stamps the receive time and enqueues. The frame writer takes whatever has queued up (up
to ``batch``) and XADDs it in one pipelined write on its own lean connection (:mod:`streams.resp`).
Nothing is dropped: when Redis is unreachable the writer retries with capped backoff and the bounded
queue eventually pushes back on the socket reader.

Exactly once, in order: a batch is written on one connection, so Redis applies its XADDs in order
and, if the connection fails, applies a prefix of them. The replies that arrived say which were
applied; for the rest, the writer reads the partitions back after the last entry it knows it wrote
(its own replies, or the stream's tail when it started) and finds which of them are there by their
exact (frame, recv_ns). Only what is not there is sent again. An error reply is never dropped:
``LOADING`` (a restarting Redis) is retried for the commands it refused, any other error stops the
writer with :class:`AppendRejected`, which the adapter raises.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from control import events as ev
from streams import keys
from streams.log import ensure_partitions, translated
from streams.partitions import DEFAULT_PARTITIONS, router
from streams.resp import ReplyError, RespConnection, pack_xadd, xadd_prefix
from tickfold.errors import StoreUnavailable, TickfoldError

log = logging.getLogger(__name__)

_STOP = object()
REPLY_TIMEOUT_S = 10.0
RETRYABLE_REPLIES = ("LOADING",)  # Redis is loading its data set after a restart: nothing was applied


class AppendRejected(TickfoldError):
    """Redis answered an XADD of a raw frame with an error (not a transport failure): the frame is not
    in the stream and retrying would not put it there."""


async def _retry_forever(what: str, call: Callable[[], Awaitable[None]]) -> None:
    delay = 0.05
    while True:
        try:
            await call()
            return
        except StoreUnavailable as exc:
            log.warning("%s: %s; retrying in %.2fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class FrameSink:
    """Appends (frame, recv_ns) to the exchange's raw streams ``frames:{exchange_id}:p{n}`` (each frame to
    its symbol's partition, see streams/partitions.py) in pipelined batches."""

    def __init__(
        self,
        client: aioredis.Redis,
        exchange_id: str,
        *,
        batch: int = 512,
        max_queue: int = 200_000,
        partitions: int = DEFAULT_PARTITIONS,
    ) -> None:
        self.client = client
        self.exchange_id = exchange_id
        self.partitions = partitions  # replaced by the stored count when run() starts
        self.batch = batch
        self.max_queue = max_queue
        self.queue: collections.deque[tuple[bytes, int]] = collections.deque()  # what waits to be appended
        self.appended = 0
        self.batches = 0  # pipelined writes (appended / batches: the mean batch)
        self._closing = False
        self._wakeup: asyncio.Future[None] | None = None  # the writer, waiting for frames
        self._room: collections.deque[asyncio.Future[None]] = collections.deque()  # readers waiting for room
        self._conn: RespConnection | None = None
        self._last_ids: list[bytes] = []  # per partition: the newest entry known to be before anything in doubt

    def put_nowait(self, frame: bytes, recv_ns: int) -> bool:
        """Enqueue without waiting; False when the queue is full (then ``await put``)."""
        queue = self.queue
        if len(queue) >= self.max_queue:
            return False
        queue.append((frame, recv_ns))
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)
        return True

    async def put(self, frame: bytes, recv_ns: int) -> None:
        while not self.put_nowait(frame, recv_ns):
            room = asyncio.get_running_loop().create_future()
            self._room.append(room)
            await room

    def _wake_writer(self) -> None:
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _make_room(self) -> None:
        while self._room and len(self.queue) < self.max_queue:
            room = self._room.popleft()
            if not room.done():
                room.set_result(None)

    async def run(self) -> None:
        """Drain the queue until :meth:`close`; returns once everything queued before it is in Redis."""
        exchange_id = self.exchange_id

        async def start() -> None:
            self.partitions = await ensure_partitions(self.client, exchange_id, self.partitions)
            with translated(f"reading the tails of the raw streams of {exchange_id}"):
                tails: list[Any] = [
                    await self.client.xrevrange(keys.frames_stream(exchange_id, p), count=1)
                    for p in range(self.partitions)
                ]
            self._last_ids = [tail[0][0] if tail else b"0-0" for tail in tails]

        await _retry_forever(f"frames:{exchange_id}:partitions", start)
        n = self.partitions
        streams = [keys.frames_stream(exchange_id, p) for p in range(n)]
        prefixes = [xadd_prefix(s) for s in streams]
        route = router(exchange_id, n)
        queue, batch = self.queue, self.batch
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not queue:
                    if self._closing:
                        return
                    self._wakeup = loop.create_future()
                    await self._wakeup
                    continue
                frames = [queue.popleft() for _ in range(min(len(queue), batch))]
                if self._room:
                    self._make_room()
                parts = [route(frame) for frame, _ in frames]
                packed = [pack_xadd(prefixes[p], frame, ns) for (frame, ns), p in zip(frames, parts, strict=True)]
                await self._append(frames, parts, packed, streams)
                self.appended += len(frames)
                self.batches += 1
        finally:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    async def _append(
        self, frames: list[tuple[bytes, int]], parts: list[int], packed: list[bytes], streams: list[str]
    ) -> None:
        """XADD ``packed`` (one command per frame, in order), each exactly once, retrying transport failures."""
        what = f"appending to the raw streams of {self.exchange_id}"
        todo: list[int] = list(range(len(frames)))  # indices not (known to be) in Redis, in order
        doubt: list[int] = []  # the tail of todo that was sent unanswered: a prefix of it may be in Redis
        delay = 0.05
        while todo:
            replies: list[Any] = []
            wrote = False
            try:
                if doubt:
                    landed = set(doubt[: await self._applied(frames, parts, doubt, streams)])
                    todo, doubt = [i for i in todo if i not in landed], []
                    continue
                conn = self._conn
                if conn is None:
                    conn = self._conn = await RespConnection.open(self.client, what)
                conn.write(b"".join(packed) if len(todo) == len(packed) else b"".join([packed[i] for i in todo]))
                wrote = True
                await conn.read_replies(len(todo), replies, what, REPLY_TIMEOUT_S)
            except StoreUnavailable as exc:
                self._conn = None
                if wrote:  # the unanswered commands may have been applied (a prefix of them)
                    sent = todo
                    todo = self._settle(sent, replies, parts, streams) + sent[len(replies) :]
                    doubt = sent[len(replies) :]
                log.warning("%s: %s; retrying in %.2fs", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            todo = self._settle(todo, replies, parts, streams)
            if todo:  # refused for now (LOADING): wait a little
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _settle(self, sent: list[int], replies: list[Any], parts: list[int], streams: list[str]) -> list[int]:
        """Account for the replies to the first commands of ``sent``; returns those refused for now.

        A reply that is an entry id moves its partition's last known id. A retryable error reply
        (``LOADING``) leaves its command to be sent again; any other error raises :class:`AppendRejected`."""
        last = self._last_ids
        refused: list[int] = []
        for i, reply in zip(sent, replies, strict=False):
            if type(reply) is bytes:
                last[parts[i]] = reply
            else:
                refused.append(i)
        if not refused:
            return refused
        errors = [reply for reply in replies if type(reply) is not bytes]
        fatal = [e for e in errors if not (isinstance(e, ReplyError) and str(e).startswith(RETRYABLE_REPLIES))]
        if fatal:
            raise AppendRejected(
                f"Redis refused {len(fatal)} XADD(s) to the raw streams of {self.exchange_id}: {fatal[0]}"
            )
        if refused[-1] < sent[len(replies) - 1]:  # a later command was applied: the refused land after it
            how = "sent again after later ones"
        else:
            how = "sending them again"
        log.warning("%s: %d frames refused (%s), %s", self.exchange_id, len(refused), errors[0], how)
        return refused

    async def _applied(
        self, frames: list[tuple[bytes, int]], parts: list[int], doubt: list[int], streams: list[str]
    ) -> int:
        """How many of the commands ``doubt`` (sent in this order, unanswered) are in Redis: Redis applies a
        connection's commands in order, so a prefix. Found by reading each partition after its last known
        entry and matching (frame, recv_ns) in order."""
        wanted: dict[int, list[int]] = {}
        for k, i in enumerate(doubt):
            wanted.setdefault(parts[i], []).append(k)
        applied = 0
        last = list(self._last_ids)
        with translated(f"reading back the raw streams of {self.exchange_id}"):
            for p, positions in wanted.items():
                entries: Any = await self.client.xrange(streams[p], min=b"(" + last[p])
                found = 0
                for eid, fields in entries:
                    if found == len(positions):
                        break
                    frame, recv_ns = frames[doubt[positions[found]]]
                    if fields.get(b"frame") == frame and fields.get(b"recv_ns") == b"%d" % recv_ns:
                        last[p] = eid
                        found += 1
                if found:
                    applied = max(applied, positions[found - 1] + 1)
        self._last_ids = last
        return applied

    async def close(self) -> None:
        self._closing = True
        self._wake_writer()


class ControlEmitter:
    """Appends lifecycle events to the control stream (and publishes them, CTL-04), in order, off the hot path."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.queue: asyncio.Queue[ev.ControlEvent | object] = asyncio.Queue()
        self.emitted: list[ev.ControlEvent] = []

    def emit(self, event: ev.ControlEvent) -> None:
        self.queue.put_nowait(event)

    async def run(self) -> None:
        while True:
            item = await self.queue.get()
            if item is _STOP:
                return
            event: ev.ControlEvent = item  # type: ignore[assignment]
            payload = ev.encode(event)

            async def write(payload: bytes = payload) -> None:
                with translated("appending to the control stream"):
                    pipe = self.client.pipeline(transaction=False)
                    pipe.xadd(keys.CONTROL_STREAM, {"event": payload})
                    pipe.publish(keys.CONTROL_CHANNEL, payload)
                    async with asyncio.timeout(REPLY_TIMEOUT_S):
                        await pipe.execute()

            await _retry_forever(keys.CONTROL_STREAM, write)
            self.emitted.append(event)

    async def close(self) -> None:
        await self.queue.put(_STOP)


def now_ns() -> int:
    """Wall-clock time for receive stamps and lifecycle events (never used inside a fold)."""
    return time.time_ns()
