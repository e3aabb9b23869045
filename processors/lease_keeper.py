"""Lease renewal that does not wait for the batch in hand: a thread of its own, with a connection of its own.

A processor's event loop can be busy for longer than a lease's TTL without awaiting anything: numba
compiling the indicator kernels on a first batch (3.2 s with a cold cache, measured), a huge replay
batch, a big roll-up. Renewals run in that loop would wait for it; the lease would run out, another
instance would take the partition, and the batch in hand would be thrown away and done again. So the
keeper renews from a thread running an event loop and a Redis connection of its own (it needs the GIL
for a few hundred microseconds a round, which CPython hands over every 5 ms of busy Python): every third
of the TTL, one script heartbeats the registration (Redis time) and PEXPIREs each lease still holding
the token.

Renewals never abort a commit in flight: commits WATCH the *fence* keys, which only a take writes, not
the lease keys a renewal touches (:mod:`processors.leases`).

What the keeper finds goes back to the owner's event loop (``call_soon_threadsafe``):

- a lease no longer holding the token: ``on_lost`` with its tag;
- no renewal answered for a whole TTL (Redis unreachable or stalled): ``on_lost`` with every tag it
  renews, since another instance may hold them by now (the fences keep that safe; this stops the work);
- no renewal answered for ``give_up_s``, or an error that is not a transport error: :meth:`failure`
  raises it (StoreUnavailable for the former), so the owner stops with it instead of working on leases it
  cannot keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis

from streams.log import translated
from tickfold.errors import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

# KEYS: [registration], leases...; ARGV: token, TTL ms, "1" when KEYS[1] is a registration (a sorted set
# scored by expiry ms, Redis time). Returns, for each lease, 1 if it held the token and was renewed, else 0.
RENEW_ALL = """
local first = 1
if ARGV[3] == '1' then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2]), ARGV[1])
  first = 2
end
local out = {}
for i = first, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    out[#out + 1] = redis.call('PEXPIRE', KEYS[i], ARGV[2])
  else
    out[#out + 1] = 0
  end
end
return out
"""


def _sibling(client: aioredis.Redis) -> aioredis.Redis:
    """A client to ``client``'s server (same transport, credentials, database) with its own connections,
    for another thread's event loop."""
    pool = client.connection_pool
    return aioredis.Redis(
        connection_pool=aioredis.ConnectionPool(connection_class=pool.connection_class, **pool.connection_kwargs)
    )


class LeaseKeeper(Generic[T]):
    """Renews leases (and a registration) every third of the TTL from a thread; see the module docstring.

    ``leases`` is called in the keeper's thread and returns the lease keys to renew now, each with a tag
    that ``on_lost`` gets back (called in the owner's loop). Use as ``async with``: the thread runs inside
    the block and is stopped and joined on the way out (cancel-safe)."""

    def __init__(
        self,
        client: aioredis.Redis,
        token: bytes,
        ttl_ms: int,
        leases: Callable[[], Mapping[str, T]],
        on_lost: Callable[[list[T]], None],
        *,
        registration: str | None = None,
        give_up_s: float = 30.0,
        name: str = "lease-keeper",
    ) -> None:
        self.client = client
        self.token = token
        self.ttl_ms = ttl_ms
        self.leases = leases
        self.on_lost = on_lost
        self.registration = registration
        self.give_up_s = give_up_s
        self.name = name
        self.renewals = 0  # answered rounds (read in the owner's loop: for tests and logs)
        self._owner: asyncio.AbstractEventLoop | None = None
        self._failed: asyncio.Future[None] | None = None
        self._ended = asyncio.Event()  # set (in the owner's loop) when the thread is done
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    async def __aenter__(self) -> LeaseKeeper[T]:
        self._owner = asyncio.get_running_loop()
        self._failed = self._owner.create_future()
        loop = self._loop = asyncio.new_event_loop()
        self._task = loop.create_task(self._renewing())  # (not running yet: it starts in the thread)
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        loop, task, thread = self._loop, self._task, self._thread
        if loop is None or task is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # (its loop already closed: the thread has ended)
            loop.call_soon_threadsafe(task.cancel)
        await self._ended.wait()  # within a round trip (closing its connection)
        thread.join()
        if self._failed is not None and self._failed.done() and not self._failed.cancelled():
            self._failed.exception()  # (retrieved: it surfaced through failure(), or the owner is leaving anyway)

    async def failure(self) -> None:
        """Wait until the keeper gives up, and raise why (it never returns otherwise)."""
        assert self._failed is not None, "use the keeper as `async with`"
        await asyncio.shield(self._failed)

    # ------------------------------------------------------------------ in the keeper's thread

    def _main(self) -> None:
        assert self._loop is not None and self._task is not None
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()
            if self._owner is not None:
                with contextlib.suppress(RuntimeError):  # (the owner's loop is closed: nobody waits)
                    self._owner.call_soon_threadsafe(self._ended.set)

    async def _renewing(self) -> None:
        client = _sibling(self.client)
        try:
            answered = time.monotonic()  # when the last answered round was sent: the leases last a TTL from it
            period, ttl_s = self.ttl_ms / 3000, self.ttl_ms / 1000
            while True:
                await asyncio.sleep(period)
                leases = dict(self.leases())
                sent = time.monotonic()
                try:
                    async with asyncio.timeout(min(self.give_up_s, ttl_s)):
                        alive = await self._renew(client, list(leases))
                except (StoreUnavailable, TimeoutError) as exc:
                    silent = time.monotonic() - answered
                    cause = str(exc) or "no answer in time"
                    log.warning("%s: renewal failed (%s); none answered for %.1f s", self.name, cause, silent)
                    if silent >= self.give_up_s:
                        why = f"{self.name}: leases not renewed for {silent:.1f} s (call_timeout_s): {cause}"
                        self._post(self._fail, StoreUnavailable(why))
                        return
                    if silent >= ttl_s and leases:
                        self._post(self.on_lost, list(leases.values()))
                    continue
                except Exception as exc:  # not a transport error: a bug, or a server refusing; the owner raises it
                    self._post(self._fail, exc)
                    return
                answered = sent
                lost = [tag for tag, ok in zip(leases.values(), alive, strict=True) if not ok]
                self._post(self._answered, lost)
        finally:
            await client.aclose(close_connection_pool=True)

    async def _renew(self, client: aioredis.Redis, lease_keys: list[str]) -> list[int]:
        if self.registration is None and not lease_keys:
            return []
        registered = [self.registration] if self.registration is not None else []
        with translated(f"{self.name}: renewing leases"):
            reply: Any = await client.eval(
                RENEW_ALL,
                len(registered) + len(lease_keys),
                *registered,
                *lease_keys,
                self.token,
                self.ttl_ms,
                "1" if registered else "0",
            )
        return [int(ok) for ok in reply]

    def _post(self, call: Callable[..., None], *args: Any) -> None:
        if self._owner is None:
            return
        with contextlib.suppress(RuntimeError):  # the owner's loop is closed: nobody to tell
            self._owner.call_soon_threadsafe(self._deliver, call, args)

    # ------------------------------------------------------------------ in the owner's loop

    def _deliver(self, call: Callable[..., None], args: tuple[Any, ...]) -> None:
        if not self._closed:
            call(*args)

    def _answered(self, lost: list[T]) -> None:
        self.renewals += 1
        if lost:
            self.on_lost(lost)

    def _fail(self, exc: BaseException) -> None:
        if self._failed is not None and not self._failed.done():
            self._failed.set_exception(exc)
