"""Consumer-group scaling: K processor processes, joining and leaving, killed and restarted, give
exactly the candles one uninterrupted process gives (DESIGN invariants 1, 3 and 4)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.trades import Trade, fold_trades
from streams import keys, log
from streams.partitions import partition_of
from tests.support import all_candles, drain, entries_read, pending
from tests.synthetic import DAY_START_MS, PRODUCTS, synthetic_day

pytestmark = pytest.mark.redis

ENV = {**os.environ, "TICKFOLD_LEASE_TTL_MS": "600", "TICKFOLD_PARTITIONS": "4"}


@pytest.fixture(scope="module")
def day() -> list[bytes]:
    return synthetic_day()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


def _spawn(url: str, *extra: str, capture: bool = False) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "tickfold.cli", "--redis-url", url, "process", "--exchange", "coinbase", *extra]
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(cmd, stdout=out, stderr=out, text=True, env=ENV)


def _folded(out: str) -> int:
    """Frames a process reports it folded (``coinbase: N frames folded ...``)."""
    return int(out.split("coinbase: ", 1)[1].split(" ", 1)[0])


_REFERENCE: dict[int, dict[Any, Any]] = {}


async def _reference(url: str, frames: list[bytes]) -> dict[Any, Any]:
    """The candles of one uninterrupted in-process run over ``frames`` (on database 15; computed once)."""
    if len(frames) in _REFERENCE:
        return _REFERENCE[len(frames)]
    ref = aioredis.Redis.from_url(url.rsplit("/", 1)[0] + "/15")
    try:
        await ref.flushdb()
        await log.append_frames(ref, "coinbase", [(f, 0) for f in frames], partitions=4)
        await drain(ref, ["coinbase"])
        _REFERENCE[len(frames)] = await all_candles(ref, "coinbase")
        return _REFERENCE[len(frames)]
    finally:
        await ref.flushdb()
        await ref.aclose()


@pytest.mark.parametrize("k", [1, 2, 4])
async def test_k_processes_until_idle_give_the_candles_of_one(
    k: int, day: list[bytes], client: aioredis.Redis, redis_url: str
) -> None:
    expected = await _reference(redis_url, day)
    assert {s for s, _, _ in expected} == set(PRODUCTS)  # 1m candles of every product, from its trades
    assert sum(c.closed for c in expected.values()) > len(expected) * 0.99  # closed by the event-time watermark
    await log.append_frames(client, "coinbase", [(f, 0) for f in day], partitions=4)
    procs = [_spawn(redis_url, "--until-idle", capture=True) for _ in range(k)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    # every frame folded exactly once over all processes, nothing left pending, the same candles
    assert sum(_folded(out) for out, _ in outs) == len(day)
    assert await pending(client, "coinbase") == 0
    got = await all_candles(client, "coinbase")
    assert got == expected


async def test_workers_joining_and_leaving_mid_stream(day: list[bytes], client: aioredis.Redis, redis_url: str) -> None:
    expected = await _reference(redis_url, day)
    await log.append_frames(client, "coinbase", [(f, 0) for f in day], partitions=4)
    first = _spawn(redis_url, "--batch-size", "20")
    await _progress(client, len(day) // 10)
    joined = [_spawn(redis_url, "--batch-size", "20") for _ in range(2)]
    await _progress(client, len(day) // 3)
    await _registered(client, 3)  # (a SIGTERM before a process has started is no clean leave)
    joined[0].send_signal(signal.SIGTERM)  # one leaves cleanly
    assert joined[0].wait(timeout=30) == 0
    await _progress(client, len(day) // 2)
    os.kill(joined[1].pid, signal.SIGKILL)  # one dies
    joined[1].wait(timeout=10)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    await drain(client, ["coinbase"], lease_ttl_ms=600)  # a fresh instance finishes, claiming the dead one's entries
    assert await pending(client, "coinbase") == 0
    assert await all_candles(client, "coinbase") == expected


@pytest.mark.parametrize("seed", [1, 2])
async def test_kill_9_at_random_points_then_restart(
    seed: int, day: list[bytes], client: aioredis.Redis, redis_url: str
) -> None:
    expected = await _reference(redis_url, day)
    await log.append_frames(client, "coinbase", [(f, 0) for f in day], partitions=4)
    rnd = random.Random(seed)
    for point in sorted(rnd.sample(range(200, len(day) - 200), 3)):
        procs = [_spawn(redis_url, "--batch-size", str(rnd.choice([1, 7, 50]))) for _ in range(rnd.choice([1, 2]))]
        await _progress(client, point)
        await asyncio.sleep(rnd.random() * 0.05)
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    await drain(client, ["coinbase"], lease_ttl_ms=600)
    assert await pending(client, "coinbase") == 0
    assert await all_candles(client, "coinbase") == expected


async def _progress(client: aioredis.Redis, at_least: int) -> None:
    for _ in range(1500):
        if await entries_read(client, "coinbase") >= at_least:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the processors did not reach {at_least} entries")


async def _registered(client: aioredis.Redis, n: int) -> None:
    """Wait until ``n`` instances of the candle group have joined (each registers in ``workers:...``)."""
    for _ in range(1500):
        if await client.zcard(keys.workers("candles", "coinbase")) >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{n} processors did not join")


@st.composite
def _trades(draw: st.DrawFn) -> list[Trade]:
    symbols = draw(st.lists(st.sampled_from(PRODUCTS), min_size=1, max_size=5, unique=True))
    out = []
    for i in range(draw(st.integers(1, 60))):
        out.append(
            Trade(
                exchange="coinbase", symbol=draw(st.sampled_from(symbols)), trade_id=i,
                price=Decimal(draw(st.integers(1, 10_000))) / 100, qty=Decimal(draw(st.integers(1, 10_000))) / 1000,
                time_ms=DAY_START_MS + draw(st.integers(0, 600_000)), taker_buy=draw(st.booleans()),
            )
        )  # fmt: skip
    return out


@settings(max_examples=200, deadline=None)
@given(trades=_trades(), k=st.integers(1, 8), rnd=st.randoms(use_true_random=False), data=st.data())
def test_any_trades_shuffled_duplicated_and_split_over_k_partitions_fold_alike(
    trades: list[Trade], k: int, rnd: random.Random, data: st.DataObject
) -> None:
    expected = fold_trades(trades, 60_000)
    noisy = trades + data.draw(st.lists(st.sampled_from(trades), max_size=20))  # repeats
    rnd.shuffle(noisy)
    merged: dict[Any, Any] = {}
    for p in range(k):  # each partition's owner folds its symbols' trades, in whatever order they came
        part = fold_trades([t for t in noisy if partition_of(t.symbol, k) == p], 60_000)
        assert not set(part) & set(merged)  # a bucket is never folded by two owners
        merged.update(part)
    assert merged == expected


async def test_an_entry_delivered_too_often_is_dead_lettered_and_gone_consumers_are_removed(
    day: list[bytes], client: aioredis.Redis
) -> None:
    from streams import keys

    await log.append_frames(client, "coinbase", [(f, 0) for f in day[:200]], partitions=1)
    stream = keys.frames_stream("coinbase", 0)
    await log.ensure_group(client, stream, "candles")
    # a consumer that took 5 entries and kept dying on them: every re-read of its history counts a delivery
    taken = await log.read_group(client, stream, "candles", "ghost", count=5, block_ms=None)
    for _ in range(3):
        await log.read_group(client, stream, "candles", "ghost", count=5, block_ms=None, pending=True)
    await asyncio.sleep(0.35)  # longer than the lease TTL below: the ghost is idle, not just slow
    stats = (await drain(client, ["coinbase"], max_deliveries=4, lease_ttl_ms=300))["coinbase"]
    dead = await log.entries(client, keys.dead_letter_stream("coinbase"))
    assert [fields[b"original_id"] for _, fields in dead] == [eid for eid, _ in taken]
    assert all(b"delivered 5 times" in fields[b"reason"] for _, fields in dead)
    assert stats.totals.processed == 195 and stats.totals.dead == 5
    assert await pending(client, "coinbase") == 0
    consumers = [c["name"] for c in await client.xinfo_consumers(stream, "candles")]
    assert b"ghost" not in consumers


async def test_an_owner_whose_lease_ran_out_can_neither_read_nor_commit(
    day: list[bytes], client: aioredis.Redis, redis_url: str
) -> None:
    from processors.candles import GROUP, CandleProcessor
    from processors.runner import Runner, RunnerConfig
    from streams.symbols import bundled

    frames = day[:300]
    expected = await _reference(redis_url, frames)
    await log.append_frames(client, "coinbase", [(f, 0) for f in frames], partitions=4)

    def make(p: int) -> CandleProcessor:
        return CandleProcessor("coinbase", p, bundled("coinbase"), history=5000, trade_timeframes=("1m",))

    stale = Runner(client, "coinbase", GROUP, 4, make, RunnerConfig(consumer="stale", batch_size=10, lease_ttl_ms=300))
    for h in stale.handlers:
        await log.ensure_group(client, h.stream, GROUP)
    gained, _ = await stale.membership.balance()
    assert sorted(gained) == [0, 1, 2, 3]
    taken = await stale._read(sorted(stale.membership.held), block_ms=None)  # read, then stalls past its lease
    assert sum(map(len, taken.values())) == 40
    await asyncio.sleep(0.4)
    successor = Runner(client, "coinbase", GROUP, 4, make, RunnerConfig(consumer="next", lease_ttl_ms=300))
    for p in (await successor.membership.balance())[0]:
        await successor._recover(p)  # claims and folds the 40 entries the stale owner took
    assert successor.stats.claimed == 40
    # the stale owner wakes up between the successor's claim and its next read: it must take nothing,
    # or what it took would sit in its pending list behind the successor's position
    assert await _read_nothing(stale)
    for p, entries in taken.items():
        await stale._handle(p, entries)  # and its commits are fenced off
    assert stale.stats.totals.processed == 0
    await successor.membership.leave()
    await drain(client, ["coinbase"], lease_ttl_ms=300)
    assert await pending(client, "coinbase") == 0
    assert await all_candles(client, "coinbase") == expected


async def _read_nothing(runner: Any) -> bool:
    got = await runner._read([0, 1, 2, 3], block_ms=None)
    return not got and not runner.membership.held
