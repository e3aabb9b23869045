"""Partition leases are renewed while a batch is folded, whatever it lasts (processors/lease_keeper.py).

A handler here folds a batch like the real processors do: WATCH the fence, check the token, fold (slowly:
longer than the lease TTL, blocking the event loop as numba compiling does, or awaiting as a slow Redis
does), then MULTI/EXEC the result with the XACK.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from control.exchange_lease import ExchangeLease
from processors.leases import Fence, LeaseLost
from processors.replay_rebuild import leases
from processors.runner import BatchResult, Runner, RunnerConfig, RunStats
from streams import keys, log
from streams.log import Entry, WatchError
from tests.realdata import BINANCE_0404
from tests.support import all_candles, drain, ingest
from tickfold.embedded import start_redis
from tickfold.errors import StoreUnavailable

pytestmark = pytest.mark.redis

GROUP = "slow"
EX = "binance"
TTL_MS = 300


class SlowFold:
    """A fenced handler whose fold of the first batch takes ``stall_s`` (``blocking``: time.sleep, the
    event loop stuck; else asyncio.sleep); it counts entries into ``count:{consumer}``."""

    group = GROUP

    def __init__(self, consumer: str, stall_s: float = 0.0, *, blocking: bool = False) -> None:
        self.stream = keys.frames_stream(EX, 0)
        self.consumer = consumer
        self.stall_s = stall_s
        self.blocking = blocking
        self.attempts = 0  # folds begun (a WatchError or a lease lost makes another)
        self.commits = 0
        self.cancelled = 0
        self.seen = 0

    async def handle(self, client: aioredis.Redis, entries: Sequence[Entry], fence: Fence) -> BatchResult:
        self.seen += len(entries)
        while True:
            try:
                async with client.pipeline(transaction=True) as pipe:
                    await pipe.watch(fence.key)
                    await fence.check(pipe)
                    self.attempts += 1
                    stall, self.stall_s = self.stall_s, 0.0
                    try:
                        if self.blocking:
                            time.sleep(stall)  # noqa: ASYNC251 (the point: the event loop stuck)
                        else:
                            await asyncio.sleep(stall)
                    except asyncio.CancelledError:
                        self.cancelled += 1
                        raise
                    pipe.multi()
                    pipe.incrby(f"count:{self.consumer}", len(entries))
                    pipe.xack(self.stream, GROUP, *[eid for eid, _ in entries])
                    await pipe.execute()
            except WatchError:
                continue
            self.commits += 1
            return BatchResult(processed=len(entries))


def config(consumer: str, *, call_timeout_s: float = 30.0, max_retries: int = 8) -> RunnerConfig:
    return RunnerConfig(
        consumer=consumer,
        batch_size=100,
        block_ms=50,
        lease_ttl_ms=TTL_MS,
        call_timeout_s=call_timeout_s,
        max_retries=max_retries,
    )


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    async with log.connect(redis_url) as c:
        yield c


async def append(client: aioredis.Redis, n: int) -> None:
    for i in range(n):
        await client.xadd(keys.frames_stream(EX, 0), {b"frame": str(i).encode()})


async def until(check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def contender(url: str, handler: SlowFold, stop: threading.Event, out: dict[str, RunStats]) -> threading.Thread:
    """Another instance of the group, in a thread with its own event loop (as another process would be:
    it keeps running while the first instance's loop is stuck)."""

    async def main() -> None:
        async with log.connect(url) as c:
            runner = Runner(c, EX, GROUP, 1, lambda _: handler, config("b"))
            stopping = asyncio.Event()

            async def watch() -> None:
                await asyncio.to_thread(stop.wait)
                stopping.set()

            watcher = asyncio.create_task(watch())
            out["stats"] = await runner.run(stop=stopping)
            await watcher

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="contender")
    thread.start()
    return thread


@pytest.mark.parametrize("blocking", [True, False], ids=["event-loop-stuck", "awaiting"])
async def test_a_batch_longer_than_the_ttl_keeps_its_lease_and_commits_once(
    client: aioredis.Redis, redis_url: str, blocking: bool
) -> None:
    await append(client, 10)
    slow = SlowFold("a", stall_s=4 * TTL_MS / 1000, blocking=blocking)
    first = Runner(client, EX, GROUP, 1, lambda _: slow, config("a"))
    stop = asyncio.Event()
    running = asyncio.create_task(first.run(stop=stop))
    await until(lambda: slow.attempts == 1, "the first batch to begin")
    other, other_stop, other_out = SlowFold("b"), threading.Event(), dict[str, RunStats]()
    thread = contender(redis_url, other, other_stop, other_out)
    await until(lambda: slow.commits == 1, "the first batch to commit")
    await asyncio.sleep(2 * TTL_MS / 1000)  # the contender keeps balancing meanwhile
    other_stop.set()  # (first: once the first instance leaves, the partition is the contender's)
    await asyncio.to_thread(thread.join)
    stop.set()
    stats = await running

    assert (slow.attempts, slow.commits) == (1, 1), "folded once, committed once: no redo"
    assert stats.partitions_lost == 0 and stats.totals.processed == 10
    other_stats = other_out["stats"]
    assert other_stats.partitions_taken == 0 and other.seen == 0, "the other instance never took the partition"
    assert await client.get("count:a") == b"10" and await client.get("count:b") is None
    assert (await client.xpending(keys.frames_stream(EX, 0), GROUP))["pending"] == 0


async def test_renewals_abort_no_commit(client: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """Renewals every 100 ms while the real candle processor folds: none aborts a commit in flight (they
    PEXPIRE lease keys; commits WATCH fence keys), so no batch is folded twice."""
    await ingest(client, EX, BINANCE_0404)
    reference = dict(await drain(client, [EX], batch_size=20))
    candles = await all_candles(client, EX)
    await client.flushall()
    await ingest(client, EX, BINANCE_0404)
    with caplog.at_level(logging.INFO, logger="processors.candles"):
        stats = (await drain(client, [EX], batch_size=20, lease_ttl_ms=300))[EX]
    assert not [r for r in caplog.records if "re-folding" in r.getMessage()]
    assert stats.batches == reference[EX].batches and stats.partitions_lost == 0
    assert await all_candles(client, EX) == candles


async def test_a_lease_taken_meanwhile_stops_the_batch_in_hand(client: aioredis.Redis) -> None:
    await append(client, 10)
    slow = SlowFold("a", stall_s=30.0)
    runner = Runner(client, EX, GROUP, 1, lambda _: slow, config("a"))
    stop = asyncio.Event()
    running = asyncio.create_task(runner.run(stop=stop))
    await until(lambda: slow.attempts == 1, "the batch to begin")
    # another instance takes the partition (as if this one had stalled past its TTL)
    await client.set(keys.lease(GROUP, EX, 0), b"thief", px=60_000)
    await client.set(keys.fence(GROUP, EX, 0), b"thief")
    await until(lambda: slow.cancelled == 1, "the renewal to find the lease gone and stop the batch", within=3)
    assert runner.stats.partitions_lost == 1 and 0 not in runner.membership.held
    stop.set()
    stats = await asyncio.wait_for(running, 5)
    assert slow.commits == 0 and stats.totals.processed == 0
    assert (await client.xpending(keys.frames_stream(EX, 0), GROUP))["pending"] == 10, "left to the new owner"
    assert await client.get(keys.lease(GROUP, EX, 0)) == b"thief", "and its lease untouched"


async def test_renewal_failing_stops_the_runner_with_a_clear_error() -> None:
    server = start_redis(Path(tempfile.mkdtemp(prefix="tickfold-lease-")), appendonly=False)
    try:
        async with log.connect(server.url) as client:
            await append(client, 10)
            slow = SlowFold("a", stall_s=60.0)
            # (the batch loop retries for long: what stops it is the keeper giving up)
            cfg = config("a", call_timeout_s=1.0, max_retries=100)
            runner = Runner(client, EX, GROUP, 1, lambda _: slow, cfg)
            running = asyncio.create_task(runner.run())
            await until(lambda: slow.attempts == 1, "the batch to begin")
            began = time.monotonic()
            server.stop()  # Redis goes away during a batch
            with pytest.raises(StoreUnavailable, match="leases not renewed for"):
                await asyncio.wait_for(running, 10)
            assert time.monotonic() - began < 5
            assert slow.cancelled == 1, "the batch whose lease lapsed was stopped"
    finally:
        server.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("leases ")], "no keeper thread left"


async def test_a_clean_stop_and_a_cancel_give_everything_back(client: aioredis.Redis) -> None:
    await append(client, 10)
    for how in ("stop", "cancel"):
        slow = SlowFold("a", stall_s=2 * TTL_MS / 1000)
        runner = Runner(client, EX, GROUP, 1, lambda _: slow, config("a"))  # noqa: B023 (used in this round)
        stop = asyncio.Event()
        running = asyncio.create_task(runner.run(stop=stop))
        await until(lambda: slow.attempts == 1, "the batch to begin")  # noqa: B023
        if how == "stop":
            stop.set()
            await running
            assert slow.commits == 1, "a stop finishes the batch in hand"
        else:
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            assert slow.cancelled == 1
        assert await client.get(keys.lease(GROUP, EX, 0)) is None
        assert await client.get(keys.fence(GROUP, EX, 0)) is None
        assert await client.zcard(keys.workers(GROUP, EX)) == 0
        assert not [t for t in threading.enumerate() if t.name.startswith("leases ")], "no keeper thread left"
        await client.xgroup_setid(keys.frames_stream(EX, 0), GROUP, "0")


async def test_a_rebuild_holds_its_leases_through_a_stall_and_stops_when_one_is_taken(client: aioredis.Redis) -> None:
    async with leases(client, EX, 2, "candles", TTL_MS) as (fences, indicator_fence):
        time.sleep(3 * TTL_MS / 1000)  # noqa: ASYNC251 (the event loop stuck: a big batch, numba compiling)
        for fence in [*fences.values(), indicator_fence]:
            assert await client.get(fence.key) == fence.token
        assert await client.pttl(keys.lease("candles", EX, 1)) > 0
    assert await client.get(keys.lease("candles", EX, 1)) is None, "given back"
    with pytest.raises(LeaseLost, match="lost during the rebuild"):
        async with leases(client, EX, 2, "candles", TTL_MS):
            await client.set(keys.lease("candles", EX, 1), b"thief")  # (taken: no renewal finds it ours)
            await asyncio.sleep(30)
    assert await client.get(keys.lease("candles", EX, 1)) == b"thief"


async def test_an_exchange_lease_is_renewed_between_the_slots_steps(client: aioredis.Redis) -> None:
    lease = ExchangeLease(client, EX, TTL_MS, "serve-a")
    assert await lease.keep()
    await asyncio.sleep(4 * TTL_MS / 1000)  # a step longer than the TTL (an adapter stopping)
    assert await client.get(keys.exchange_lease(EX)) == lease.token and not lease.lapsed()
    assert await lease.keep()
    await lease.release()
    assert await client.get(keys.exchange_lease(EX)) is None
