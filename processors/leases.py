"""One owner per partition: leases with a TTL, fair shares among the live consumers, and fencing.

Each processor instance registers in ``workers:{group}:{exchange_id}`` (a sorted set scored by the
time its registration runs out) and holds leases ``lease:{group}:{exchange_id}:p{n}`` (a random token,
``SET NX PX``), renewed every third of the TTL. Its fair share is ceil(P / live instances): it takes
free partitions up to its share and gives back those above it, so instances that join or leave
rebalance the partitions within about one TTL. Times are Redis's (``TIME``), never a process clock.

A lease alone can't stop an instance that stalled past its TTL from writing after a successor took
over. So every commit is *fenced*: it WATCHes the lease key and checks the token before MULTI, so the
stale writer's EXEC fails (:class:`LeaseLost`) and nothing it folded is written or acknowledged.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from streams import keys
from streams.log import translated
from tickfold.errors import TickfoldError


class LeaseLost(TickfoldError):
    """Another instance owns the partition now; the batch in hand was not committed."""


@dataclass(frozen=True)
class Fence:
    key: str
    token: bytes

    async def check(self, pipe: Any) -> None:
        """Inside ``pipe.watch(self.key, ...)``: raise LeaseLost unless the lease is still ours."""
        self.verify(await pipe.get(self.key))

    def verify(self, held: bytes | None) -> None:
        """``held``: the lease key's value, read after WATCHing it; LeaseLost unless it is our token."""
        if held != self.token:
            raise LeaseLost(f"{self.key} is no longer held by this instance")


# Compare-and-set on a lease key (KEYS[1]) holding a token (ARGV[1]); shared with control/exchange_lease.py.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class Membership:
    """This instance's place in a group of one exchange: its registration and the leases it holds."""

    client: aioredis.Redis
    group: str
    exchange_id: str
    consumer: str
    partitions: int
    ttl_ms: int
    token: bytes = field(default_factory=lambda: secrets.token_hex(8).encode())
    held: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.token = f"{self.consumer}/".encode() + self.token
        self.workers_key = keys.workers(self.group, self.exchange_id)

    def fence(self, partition: int) -> Fence:
        return Fence(keys.lease(self.group, self.exchange_id, partition), self.token)

    async def _now_ms(self) -> int:
        seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def balance(self) -> tuple[list[int], list[int]]:
        """Register, renew held leases, give back the surplus, take free partitions up to the fair
        share. Returns (partitions gained, partitions lost or given back)."""
        gained: list[int] = []
        lost: list[int] = []
        with translated(f"balancing partitions of {self.exchange_id}"):
            now = await self._now_ms()
            pipe = self.client.pipeline(transaction=True)
            pipe.zadd(self.workers_key, {self.token: now + self.ttl_ms})
            pipe.zremrangebyscore(self.workers_key, "-inf", now)
            pipe.zcard(self.workers_key)
            live = int((await pipe.execute())[-1])
            for p in sorted(self.held):
                if not await self.client.eval(RENEW, 1, self.fence(p).key, self.token, self.ttl_ms):
                    self.held.discard(p)
                    lost.append(p)
            share = math.ceil(self.partitions / max(live, 1))
            for p in sorted(self.held, reverse=True)[: max(len(self.held) - share, 0)]:
                await self.release(p)
                lost.append(p)
            if len(self.held) < share:
                start = int.from_bytes(self.token[-4:], "big") % self.partitions  # spread the first picks
                for i in range(self.partitions):
                    p = (start + i) % self.partitions
                    if len(self.held) >= share:
                        break
                    if p in self.held:
                        continue
                    if await self.client.set(self.fence(p).key, self.token, nx=True, px=self.ttl_ms):
                        self.held.add(p)
                        gained.append(p)
        return gained, lost

    async def release(self, partition: int) -> None:
        self.held.discard(partition)
        with translated(f"releasing partition {partition} of {self.exchange_id}"):
            await self.client.eval(RELEASE, 1, self.fence(partition).key, self.token)

    async def leave(self) -> None:
        """Give back every lease and deregister (a clean exit: successors need not wait for the TTL)."""
        for p in sorted(self.held):
            await self.release(p)
        with translated(f"leaving {self.workers_key}"):
            await self.client.zrem(self.workers_key, self.token)
