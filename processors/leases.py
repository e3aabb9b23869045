"""One owner per partition: leases with a TTL, fair shares among the live consumers, and fencing.

Each processor instance registers in ``workers:{group}:{exchange_id}`` (a sorted set scored by the
time its registration runs out) and holds leases ``lease:{group}:{exchange_id}:p{n}`` (a random token,
``SET NX PX``). Its fair share is ceil(P / live instances): it takes free partitions up to its share
and gives back those above it, so instances that join or leave rebalance the partitions within about
one TTL. Times are Redis's (``TIME``), never a process clock. The registration and the leases are
renewed every third of the TTL by a :class:`~processors.lease_keeper.LeaseKeeper` (a thread of its own),
so a batch longer than the TTL keeps its partition; taking and giving back stay between batches.

A lease alone can't stop an instance that stalled past its TTL from writing after a successor took
over. So every commit is *fenced*: it WATCHes the partition's fence key ``fence:{group}:{exchange_id}:p{n}``
and checks the token before MULTI, so the stale writer's EXEC fails (:class:`LeaseLost`) and nothing it
folded is written or acknowledged. Taking a lease writes the fence in the same script (:data:`TAKE`);
renewing one does not touch it. (Renewals PEXPIRE the lease key; were the lease key the one WATCHed,
every renewal during a batch would abort that batch's commit, and a batch longer than a third of the
TTL would never commit.) A holder whose lease ran out while nobody took it may still commit: it is
still the only writer.
"""

from __future__ import annotations

import itertools
import math
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from processors.lease_keeper import LeaseKeeper
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
        """``held``: the fence key's value, read after WATCHing it; LeaseLost unless it is our token."""
        if held != self.token:
            raise LeaseLost(f"{self.key} is no longer held by this instance")


# Compare-and-set on a lease key (KEYS[1]) holding a token (ARGV[1]); shared with control/exchange_lease.py.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# Delete each of KEYS that holds the token ARGV[1] (a lease, and its fence); how many were deleted.
RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then n = n + redis.call('DEL', key) end
end
return n
"""
# Take a lease (KEYS[1]) that is free or already ours, for ARGV[2] ms, and write the token to its fence
# (KEYS[2]) at once.
TAKE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) or redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


async def take_lease(client: aioredis.Redis, lease: str, fence: str, token: bytes, ttl_ms: int) -> bool:
    """Take ``lease`` if free or ours (and fence off whoever took it before); whether it is ours now."""
    return bool(await client.eval(TAKE, 2, lease, fence, token, ttl_ms))


async def release_leases(client: aioredis.Redis, token: bytes, *held_keys: str) -> None:
    """Give back leases (and their fences) if they hold ``token``."""
    await client.eval(RELEASE, len(held_keys), *held_keys, token)


Tag = tuple[int, int]  # (partition, take number): what a renewal reports lost


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
    held: dict[int, int] = field(default_factory=dict)  # partition -> its take number (changed under _lock)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _takes: itertools.count[int] = field(default_factory=itertools.count, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.token = f"{self.consumer}/".encode() + self.token
        self.workers_key = keys.workers(self.group, self.exchange_id)

    def fence(self, partition: int) -> Fence:
        return Fence(keys.fence(self.group, self.exchange_id, partition), self.token)

    def lease_key(self, partition: int) -> str:
        return keys.lease(self.group, self.exchange_id, partition)

    def drop(self, partition: int, take: int | None = None) -> bool:
        """Forget a lease found lost (only that take of it, when given); whether it was held."""
        with self._lock:
            if partition not in self.held or take not in (None, self.held[partition]):
                return False
            del self.held[partition]
            return True

    def renewals(self) -> dict[str, Tag]:
        """The lease keys held now, each with its tag (called from the keeper's thread)."""
        with self._lock:
            return {self.lease_key(p): (p, n) for p, n in self.held.items()}

    def keeper(self, on_lost: Callable[[list[Tag]], None], *, give_up_s: float) -> LeaseKeeper[Tag]:
        """Renews this registration and the leases held, from a thread (see :mod:`processors.lease_keeper`)."""
        return LeaseKeeper(
            self.client,
            self.token,
            self.ttl_ms,
            self.renewals,
            on_lost,
            registration=self.workers_key,
            give_up_s=give_up_s,
            name=f"leases {self.group}/{self.exchange_id} {self.consumer}",
        )

    async def _now_ms(self) -> int:
        seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def balance(self) -> tuple[list[int], list[int]]:
        """Register, give back the surplus, take free partitions up to the fair share. Returns (partitions
        taken, partitions given back). Renewal is the keeper's (:meth:`keeper`); call between batches."""
        gained: list[int] = []
        given: list[int] = []
        with translated(f"balancing partitions of {self.exchange_id}"):
            now = await self._now_ms()
            pipe = self.client.pipeline(transaction=True)
            pipe.zadd(self.workers_key, {self.token: now + self.ttl_ms})
            pipe.zremrangebyscore(self.workers_key, "-inf", now)
            pipe.zcard(self.workers_key)
            live = int((await pipe.execute())[-1])
            share = math.ceil(self.partitions / max(live, 1))
            for p in sorted(self.held, reverse=True)[: max(len(self.held) - share, 0)]:
                await self.release(p)
                given.append(p)
            if len(self.held) < share:
                start = int.from_bytes(self.token[-4:], "big") % self.partitions  # spread the first picks
                for i in range(self.partitions):
                    p = (start + i) % self.partitions
                    if len(self.held) >= share:
                        break
                    if p in self.held:
                        continue
                    if await take_lease(self.client, self.lease_key(p), self.fence(p).key, self.token, self.ttl_ms):
                        with self._lock:
                            self.held[p] = next(self._takes)
                        gained.append(p)
        return gained, given

    async def release(self, partition: int) -> None:
        self.drop(partition)
        with translated(f"releasing partition {partition} of {self.exchange_id}"):
            await release_leases(self.client, self.token, self.lease_key(partition), self.fence(partition).key)

    async def leave(self) -> None:
        """Give back every lease and deregister (a clean exit: successors need not wait for the TTL)."""
        for p in sorted(self.held):
            await self.release(p)
        with translated(f"leaving {self.workers_key}"):
            await self.client.zrem(self.workers_key, self.token)
