"""The consumer-group runner: own partitions, recover their pending entries, read -> handle -> repeat.

An exchange's raw frames are split over P partition streams (:mod:`streams.partitions`); a fold needs
per-key order, so each partition has one owner at a time (:mod:`processors.leases`). Any number of
runner instances (processes) of one group share the partitions; each handles the partitions it
holds, in stream order, every commit fenced by its lease.

When an instance takes over a partition it first claims every entry still pending there (XAUTOCLAIM;
they were delivered to an owner that died or stalled past the lease TTL, which is the configurable
claim idle time), dead-letters those delivered more than ``max_deliveries`` times (an entry that keeps
killing its processor must not stop the partition forever), folds the rest, then reads new entries.
Consumers that left nothing pending and have been idle longer than the TTL are removed from the group.

``until_idle=True`` drains and returns once no partition of the exchange has anything undelivered or
pending, whoever holds it, so several instances started together all exit when the work is done.
Otherwise it runs until ``stop`` is set, finishes the batch in hand, gives its leases back and
returns. Only transport errors are retried (capped backoff); real bugs propagate.

The leases are renewed by a keeper thread (:mod:`processors.lease_keeper`), so a batch may last longer
than the TTL (numba compiling, a huge batch, a slow Redis) and keep its partition; taking and giving
back partitions stay in the batch loop, between batches. A lease the keeper finds lost stops its
partition: the batch of it in hand is cancelled (its commit is fenced anyway) and left pending for the
next owner. A keeper that gets no renewal answered for ``call_timeout_s`` stops the runner with
StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis

from processors.leases import Fence, LeaseLost, Membership, Tag
from streams import keys
from streams.log import Entry, WatchError, ensure_group, parse_id, translated, watch_then
from streams.trim import trim
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
    claimed: int = 0
    partitions_taken: int = 0
    partitions_lost: int = 0  # leases found gone (by a renewal, a fenced read or a commit), not given back

    def add(self, r: BatchResult) -> None:
        self.batches += 1
        self.totals.processed += r.processed
        self.totals.skipped += r.skipped
        self.totals.dead += r.dead
        self.totals.events += r.events


_MAX_FENCE_RACES = 50  # fenced reads aborted by lease changes in a row before giving up


# Claim (XAUTOCLAIM, any idle time) a partition's pending entries, only while its lease is ours.
_FENCED_CLAIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
return redis.call('XAUTOCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[4], 'COUNT', ARGV[5])
"""


def _fields(flat: list[bytes]) -> dict[bytes, bytes]:
    """An entry's flat [name, value, ...] as a dict; raw frames have two fields (frame, receive time)."""
    if len(flat) == 4:
        return {flat[0]: flat[1], flat[2]: flat[3]}
    pairs = iter(flat)
    return dict(zip(pairs, pairs, strict=True))


def _entries(reply: Any) -> list[Entry]:
    """One stream's entries from XREADGROUP's reply as Redis sent it: ``{stream: [[id, [name, value, ...]],
    ...]}`` (RESP3, redis-py's default) or ``[[stream, [...]]]`` (RESP2); None when nothing was read."""
    if not reply:
        return []
    raw = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    return [(eid, _fields(flat)) for eid, flat in raw]


class Handler(Protocol):
    """Folds the entries of one partition stream; commits fenced by ``fence``, then XACKs."""

    group: str
    stream: str

    async def handle(self, client: aioredis.Redis, entries: Sequence[Entry], fence: Fence) -> BatchResult: ...


@dataclass(frozen=True)
class RunnerConfig:
    consumer: str
    batch_size: int = 500
    block_ms: int = 1000
    lease_ttl_ms: int = 5000
    max_deliveries: int = 10
    max_retries: int = 8
    stream_max_len: int = 1_000_000  # raw entries kept per partition (never trimming unacknowledged ones)
    stream_max_age_ms: int = 7 * 86_400_000
    trim_every_s: float = 10.0
    trim_also_behind: tuple[str, ...] = ()  # other groups trimming must wait for (e.g. "archive" when archiving)
    call_timeout_s: float = 30.0  # one Redis round trip (or a blocked read, or a batch's commit) at most


class Runner:
    """One instance of a group over the partitions of one exchange."""

    def __init__(
        self,
        client: aioredis.Redis,
        exchange_id: str,
        group: str,
        partitions: int,
        make_handler: Callable[[int], Handler],
        config: RunnerConfig,
    ) -> None:
        self.client = client
        self.exchange_id = exchange_id
        self.group = group
        self.partitions = partitions
        self.config = config
        self.handlers = [make_handler(p) for p in range(partitions)]
        self.membership = Membership(client, group, exchange_id, config.consumer, partitions, config.lease_ttl_ms)
        self.stats = RunStats()
        self._folding: dict[int, asyncio.Task[Any]] = {}  # partition -> the task folding a batch of it
        self._revoked: set[int] = set()  # partitions whose batch _revoke cancelled (until it ends)

    def use(self, client: aioredis.Redis) -> None:
        """Talk to Redis through ``client`` from now on (e.g. one without a per-reply timeout: every call
        here is bounded by ``call_timeout_s`` already)."""
        self.client = client
        self.membership.client = client

    @property
    def consumer(self) -> str:
        return self.config.consumer

    async def run(self, *, until_idle: bool = False, stop: asyncio.Event | None = None) -> RunStats:
        stop = stop or asyncio.Event()
        for h in self.handlers:
            await self._retrying(functools.partial(ensure_group, self.client, h.stream, h.group))
        keeper = self.membership.keeper(self._revoke, give_up_s=self.config.call_timeout_s)
        try:
            async with keeper, asyncio.TaskGroup() as tg:  # the batch loop, and the keeper failing
                work = tg.create_task(self._loop(until_idle, stop))
                failing = tg.create_task(keeper.failure())
                work.add_done_callback(lambda _: failing.cancel())
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        finally:  # (the keeper has stopped: nothing renews what is given back)
            with contextlib.suppress(StoreUnavailable, TimeoutError):
                async with asyncio.timeout(self.config.call_timeout_s):
                    await self.membership.leave()
        return self.stats

    async def _loop(self, until_idle: bool, stop: asyncio.Event) -> None:
        """Balance (between batches only: a partition is given back with no batch of it in hand), read,
        handle, until ``stop`` or idle. The keeper renews the leases meanwhile, whatever a batch lasts."""
        cfg = self.config
        renew_every = cfg.lease_ttl_ms / 3000
        next_balance = 0.0
        next_trim = time.monotonic() + cfg.trim_every_s
        ahead: asyncio.Task[dict[int, list[Entry]]] | None = None  # the next read, overlapping the batch
        try:
            while not stop.is_set():
                if time.monotonic() >= next_balance:
                    gained, given = await self._retrying(self.membership.balance)
                    next_balance = time.monotonic() + renew_every
                    if given:
                        log.info("%s: partitions %s given back to other instances", self.exchange_id, given)
                    for p in gained:
                        self.stats.partitions_taken += 1
                        await self._recover(p)
                held = sorted(self.membership.held)
                if time.monotonic() >= next_trim:
                    next_trim = time.monotonic() + cfg.trim_every_s
                    await self._trim(held)
                block = min(cfg.block_ms, int(renew_every * 1000))
                if ahead is not None:
                    got, ahead = await ahead, None
                else:
                    got = await self._read(held, block_ms=None if until_idle else block) if held else {}
                if not any(got.values()):
                    if until_idle and await self._retrying(self._all_idle):
                        break
                    if until_idle or not held:  # others are still working, or nothing is ours yet
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), min(0.05 if until_idle else renew_every, 1.0))
                    continue
                if held and not stop.is_set() and self._before(next_balance, next_trim):
                    ahead = asyncio.create_task(self._read(held, block_ms=None))
                await self._handle_all(got)
            if ahead is not None:  # stopping: what the last read took is the batch in hand
                got, ahead = await ahead, None
                await self._handle_all(got)
        finally:
            if ahead is not None:  # failing: what it took stays pending (claimed after the lease TTL)
                ahead.cancel()
                ahead.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _revoke(self, lost: list[Tag]) -> None:
        """The keeper found these leases gone (or could not renew them for a TTL): stop their work. A batch
        of one in hand is cancelled (its commit is fenced anyway); its entries stay pending for the next
        owner. Called in this runner's loop."""
        for p, take in lost:
            if not self.membership.drop(p, take):
                continue  # given back or taken again since that renewal was sent
            self.stats.partitions_lost += 1
            log.warning("%s p%d: lease lost (found by its renewal); stopping its work", self.exchange_id, p)
            folding = self._folding.get(p)
            if folding is not None and p not in self._revoked:
                self._revoked.add(p)
                folding.cancel()

    @staticmethod
    def _before(*deadlines: float) -> bool:
        """True while no periodic step (lease balance, trim) is due: the next read may start early."""
        now = time.monotonic()
        return all(now < d for d in deadlines)

    async def _handle_all(self, got: dict[int, list[Entry]]) -> None:
        batches = [(p, entries) for p, entries in got.items() if entries]
        if len(batches) == 1:
            await self._handle(*batches[0])
        elif batches:
            await self._handle_concurrently(batches)

    async def _trim(self, held: list[int]) -> None:
        """Bound the partitions this instance owns (count and age), behind the acknowledgements of the group
        and of ``trim_also_behind`` (a group that does not exist yet there holds everything back)."""
        for p in held:
            removed = await self._retrying(
                functools.partial(
                    trim,
                    self.client,
                    self.handlers[p].stream,
                    (self.group, *self.config.trim_also_behind),
                    max_len=self.config.stream_max_len,
                    max_age_ms=self.config.stream_max_age_ms,
                )
            )
            if removed:
                log.info("%s: trimmed %d acknowledged entries", self.handlers[p].stream, removed)

    async def _read(self, held: list[int], *, block_ms: int | None) -> dict[int, list[Entry]]:
        """New entries of the partitions held, read *fenced*: a partition whose lease is no longer ours is
        not read (and is dropped). Otherwise an owner whose lease ran out could take entries into its
        pending list after the successor claimed the old ones, and those would be stranded behind the
        successor's position. The fence is WATCH on the leases, their tokens checked, then the reads in a
        MULTI (a lease renewed or taken meanwhile aborts it: read again). When nothing is new, wait with a
        plain XREAD from each partition's newest entry, read in the same MULTI (it consumes nothing)."""
        reply = await self._retrying(functools.partial(self._fenced_read, held))
        out: dict[int, list[Entry]] = {}
        newest: dict[str, bytes] = {}
        for p, (read, last) in reply.items():
            if read:
                out[p] = read
            else:
                newest[self.handlers[p].stream] = last[0][0] if last else b"0-0"
        if not out and newest and block_ms:

            async def wait() -> Any:
                with translated(f"waiting on the raw streams of {self.exchange_id}"):
                    return await self.client.xread(newest, count=1, block=block_ms)  # type: ignore[arg-type]

            await self._retrying(wait)
        return out

    async def _fenced_read(self, held: list[int]) -> dict[int, tuple[list[Entry], list[Entry]]]:
        """(new entries, newest entry) of each partition still ours; see :meth:`_read`."""
        leases = [self.membership.fence(p).key for p in held]
        if not leases:
            return {}
        with translated(f"reading the raw streams of {self.exchange_id}"):
            for _ in range(_MAX_FENCE_RACES):
                try:
                    async with self.client.pipeline(transaction=True) as pipe:
                        (tokens,) = await watch_then(pipe, leases, ("MGET", *leases))
                        token = self.membership.token
                        ours = [p for p, held_by in zip(held, tokens, strict=True) if held_by == token]
                        for p in set(held) - set(ours):
                            log.warning("%s p%d: lease lost; no longer reading it", self.exchange_id, p)
                            if self.membership.drop(p):
                                self.stats.partitions_lost += 1
                        mine = [p for p in ours if p in self.membership.held]  # (not revoked meanwhile)
                        if not mine:
                            return {}
                        pipe.multi()  # type: ignore[no-untyped-call]
                        for p in mine:
                            stream = self.handlers[p].stream
                            # as "XREADGROUP GROUP ...": the reply comes back as Redis sent it (no per-entry
                            # Python parsing by redis-py); _entries builds each entry's fields
                            pipe.execute_command(
                                "XREADGROUP GROUP", self.group, self.consumer, "COUNT", self.config.batch_size,
                                "STREAMS", stream, ">",
                            )  # fmt: skip
                            pipe.xrevrange(stream, count=1)
                        replies: Any = await pipe.execute()
                except WatchError:
                    continue  # a lease was renewed (or taken) between WATCH and EXEC
                return {
                    p: (_entries(read), last) for p, read, last in zip(mine, replies[::2], replies[1::2], strict=True)
                }
        raise StoreUnavailable(f"{self.exchange_id}: the leases kept changing during {_MAX_FENCE_RACES} reads")

    async def _handle_concurrently(self, batches: list[tuple[int, list[Entry]]]) -> None:
        """Partitions are independent (own position, watermark, open set, lease): their batches run side by
        side so their Redis round trips overlap. A failure cancels the others (each batch commits whole or
        not at all) and surfaces as itself, not as an ExceptionGroup."""
        try:
            async with asyncio.TaskGroup() as tg:
                for p, entries in batches:
                    tg.create_task(self._handle(p, entries))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None

    async def _handle(self, partition: int, entries: Sequence[Entry]) -> None:
        if partition not in self.membership.held:
            return  # lost since it was read: the entries stay pending, for the next owner to claim
        fence = self.membership.fence(partition)
        task = asyncio.current_task()
        assert task is not None
        self._folding[partition] = task
        try:
            result = await self._retrying(
                functools.partial(self.handlers[partition].handle, self.client, entries, fence)
            )
        except LeaseLost:
            log.warning("%s p%d: lease lost; the batch is left to the new owner", self.exchange_id, partition)
            if self.membership.drop(partition):
                self.stats.partitions_lost += 1
            return
        except asyncio.CancelledError:
            if partition not in self._revoked or task.uncancel() > 0:
                raise  # (not only _revoke's cancel)
            log.warning("%s p%d: the batch in hand is left to the new owner", self.exchange_id, partition)
            return
        finally:
            del self._folding[partition]
            self._revoked.discard(partition)
        self.stats.add(result)

    async def _recover(self, partition: int) -> None:
        """Claim everything pending in a partition just taken over; fold it (poison to dead letters)."""
        h = self.handlers[partition]
        cursor: bytes | str = "0-0"
        while partition in self.membership.held:

            async def claim(cursor: bytes | str = cursor) -> Any:
                fenced = (self.membership.fence(partition).key, h.stream)
                args = (self.membership.token, self.group, self.consumer, cursor, self.config.batch_size)
                with translated(f"claiming pending entries of {h.stream}"):
                    return await self.client.eval(_FENCED_CLAIM, 2, *fenced, *args)

            reply = await self._retrying(claim)
            if reply == b"lost":
                log.warning("%s p%d: lease lost while claiming", self.exchange_id, partition)
                if self.membership.drop(partition):
                    self.stats.partitions_lost += 1
                return
            cursor, claimed = reply[0], [(eid, _fields(f)) for eid, f in reply[1] if f]
            if claimed:
                self.stats.claimed += len(claimed)
                poison = await self._retrying(functools.partial(self._over_delivered, h.stream, claimed))
                if poison:
                    await self._dead_letter(partition, [e for e in claimed if e[0] in poison], poison)
                    claimed = [e for e in claimed if e[0] not in poison]
                if claimed:
                    await self._handle(partition, claimed)
            if parse_id(cursor) == (0, 0):
                break
        await self._retrying(functools.partial(self._forget_gone_consumers, h.stream))

    async def _over_delivered(self, stream: str, claimed: list[Entry]) -> dict[bytes, int]:
        with translated(f"inspecting pending entries of {stream}"):
            rows: Any = await self.client.xpending_range(
                stream, self.group, claimed[0][0], claimed[-1][0], len(claimed), consumername=self.consumer
            )
        return {
            r["message_id"]: int(r["times_delivered"])
            for r in rows
            if int(r["times_delivered"]) > self.config.max_deliveries
        }

    async def _dead_letter(self, partition: int, entries: list[Entry], counts: dict[bytes, int]) -> None:
        h = self.handlers[partition]
        fence = self.membership.fence(partition)
        dead = keys.dead_letter_stream(self.exchange_id)

        async def commit() -> None:
            with translated(f"dead-lettering entries of {h.stream}"):
                async with self.client.pipeline(transaction=True) as pipe:
                    await pipe.watch(fence.key)
                    await fence.check(pipe)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    limit = self.config.max_deliveries
                    for eid, fields in entries:
                        reason = f"delivered {counts[eid]} times without being committed (limit {limit})"
                        why = {b"reason": reason.encode(), b"original_id": eid, b"stream": h.stream.encode()}
                        pipe.xadd(dead, {**fields, **why})  # type: ignore[dict-item]
                    pipe.xack(h.stream, self.group, *[e[0] for e in entries])
                    await pipe.execute()

        try:
            await self._retrying(commit)
        except LeaseLost:
            if self.membership.drop(partition):
                self.stats.partitions_lost += 1
            return
        log.warning("%s: %d entries dead-lettered after too many deliveries", h.stream, len(entries))
        self.stats.totals.dead += len(entries)

    async def _forget_gone_consumers(self, stream: str) -> None:
        with translated(f"inspecting consumers of {stream}"):
            consumers: Any = await self.client.xinfo_consumers(stream, self.group)
            for c in consumers:
                name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                if name != self.consumer and int(c["pending"]) == 0 and int(c["idle"]) > self.config.lease_ttl_ms:
                    await self.client.xgroup_delconsumer(stream, self.group, name)

    async def _all_idle(self) -> bool:
        """True when no partition has entries undelivered to the group or delivered and not acknowledged."""
        pipe = self.client.pipeline(transaction=False)
        for h in self.handlers:
            pipe.xinfo_groups(h.stream)
            pipe.xinfo_stream(h.stream)
        with translated(f"inspecting the raw streams of {self.exchange_id}"):
            replies: Any = await pipe.execute(raise_on_error=False)
        for groups, stream in zip(replies[::2], replies[1::2], strict=True):
            if isinstance(groups, Exception) or isinstance(stream, Exception):
                return False
            info = next((g for g in groups if g["name"] in (self.group, self.group.encode())), None)
            if info is None:
                return False
            if int(info["pending"]) or parse_id(info["last-delivered-id"]) < parse_id(stream["last-generated-id"]):
                return False
        return True

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        delay = 0.1
        for attempt in range(self.config.max_retries + 1):
            try:
                async with asyncio.timeout(self.config.call_timeout_s):
                    return await call()
            except (StoreUnavailable, TimeoutError) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # a cancel the timeout turned into TimeoutError (3.11)
                    raise asyncio.CancelledError from exc
                if attempt == self.config.max_retries:
                    if isinstance(exc, TimeoutError):
                        raise StoreUnavailable(f"{self.exchange_id}: no answer from Redis in time") from exc
                    raise
                log.warning("%s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")
