"""Where adapters write: raw frames to the exchange's stream, lifecycle events to the control stream.

Both are queues drained by a writer task, so a slow Redis round trip never stalls a socket: the
reader only stamps the receive time and enqueues. The frame writer takes whatever has queued up (up
to ``batch``) and XADDs it in one pipeline. Nothing is dropped: when Redis is unreachable the writer
retries with capped backoff and the bounded queue eventually pushes back on the socket reader.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis

from control import events as ev
from streams import keys
from streams.log import ensure_partitions, translated
from streams.partitions import DEFAULT_PARTITIONS, route
from tickfold.errors import StoreUnavailable

log = logging.getLogger(__name__)

_STOP = object()
REPLY_TIMEOUT_S = 10.0


async def _retry_forever(what: str, call: object) -> None:
    delay = 0.05
    while True:
        try:
            await call()  # type: ignore[operator]
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
        self.queue: asyncio.Queue[tuple[bytes, int] | object] = asyncio.Queue(max_queue)
        self.appended = 0

    def put_nowait(self, frame: bytes, recv_ns: int) -> bool:
        """Enqueue without waiting; False when the queue is full (then ``await put``)."""
        try:
            self.queue.put_nowait((frame, recv_ns))
            return True
        except asyncio.QueueFull:
            return False

    async def put(self, frame: bytes, recv_ns: int) -> None:
        if not self.put_nowait(frame, recv_ns):
            await self.queue.put((frame, recv_ns))

    async def run(self) -> None:
        """Drain the queue until :meth:`close`; returns once everything queued before it is in Redis."""
        exchange_id = self.exchange_id

        async def partitions() -> None:
            self.partitions = await ensure_partitions(self.client, exchange_id, self.partitions)

        await _retry_forever(f"frames:{exchange_id}:partitions", partitions)
        n = self.partitions
        streams = [keys.frames_stream(exchange_id, p) for p in range(n)]
        while True:
            item = await self.queue.get()
            items = [item]
            while len(items) < self.batch:
                try:
                    items.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            done = any(i is _STOP for i in items)
            frames: list[tuple[bytes, int]] = [i for i in items if i is not _STOP]  # type: ignore[misc]
            if frames:
                pipe = self.client.pipeline(transaction=False)
                for frame, recv_ns in frames:
                    pipe.xadd(streams[route(exchange_id, frame, n)], {"frame": frame, "recv_ns": recv_ns})

                async def execute(pipe: aioredis.client.Pipeline = pipe) -> None:
                    with translated(f"appending to the raw streams of {exchange_id}"):
                        async with asyncio.timeout(REPLY_TIMEOUT_S):  # the client may have no per-reply timeout
                            await pipe.execute()

                await _retry_forever(f"frames:{exchange_id}", execute)
                self.appended += len(frames)
            if done:
                return

    async def close(self) -> None:
        await self.queue.put(_STOP)


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
