"""The consumer-group runner: read -> handle (fold, commit projection + position + ack) -> repeat.

On start the runner first re-reads its own pending entries (delivered before a crash, never acked),
then new ones. ``until_idle=True`` drains the stream and returns; otherwise it runs until ``stop`` is
set, and then finishes (commits and acks) the batch in hand before returning. Only transport errors
are retried (with capped backoff); decode errors never reach it (handlers dead-letter them) and real
bugs propagate.

A fold needs per-stream order, so each stream has one active consumer per group (DESIGN invariant 4).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import redis.asyncio as aioredis

from streams.log import Entry, ensure_group, read_group
from tickfold.errors import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class BatchResult:
    processed: int = 0
    skipped: int = 0
    dead: int = 0
    events: int = 0


@dataclass
class RunStats:
    batches: int = 0
    totals: BatchResult = field(default_factory=BatchResult)

    def add(self, r: BatchResult) -> None:
        self.batches += 1
        self.totals.processed += r.processed
        self.totals.skipped += r.skipped
        self.totals.dead += r.dead
        self.totals.events += r.events


class Handler(Protocol):
    group: str
    stream: str

    async def handle(self, client: aioredis.Redis, entries: Sequence[Entry]) -> BatchResult: ...


class Runner:
    def __init__(
        self,
        client: aioredis.Redis,
        handler: Handler,
        *,
        consumer: str,
        batch_size: int = 500,
        block_ms: int = 1000,
        max_retries: int = 8,
    ) -> None:
        self.client = client
        self.handler = handler
        self.consumer = consumer
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.max_retries = max_retries
        self.stats = RunStats()

    async def run(self, *, until_idle: bool = False, stop: asyncio.Event | None = None) -> RunStats:
        stop = stop or asyncio.Event()
        h = self.handler
        await ensure_group(self.client, h.stream, h.group)
        pending = True  # first drain what this consumer was given before and never acked
        while not stop.is_set():
            entries = await self._retrying(
                functools.partial(
                    read_group,
                    self.client,
                    h.stream,
                    h.group,
                    self.consumer,
                    count=self.batch_size,
                    block_ms=None if until_idle else self.block_ms,
                    pending=pending,
                )
            )
            if not entries:
                if pending:
                    pending = False
                    continue
                if until_idle:
                    break
                continue
            result = await self._retrying(functools.partial(h.handle, self.client, entries))
            self.stats.add(result)
            log.debug("%s/%s: %s", h.stream, h.group, result)
        return self.stats

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        delay = 0.1
        for attempt in range(self.max_retries + 1):
            try:
                return await call()
            except StoreUnavailable as exc:
                if attempt == self.max_retries:
                    raise
                log.warning("%s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")
