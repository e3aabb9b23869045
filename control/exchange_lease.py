"""``lease:adapter:{exchange}``: one serve instance runs an exchange's adapter at a time.

SET NX PX takes it, a compare-and-PEXPIRE renews it, a compare-and-DEL releases it; a holder that could
not renew for a whole TTL must assume someone else holds it now. The slot renews it with each step
(:meth:`ExchangeLease.keep`), and while it is held a task renews it every third of the TTL as well: a
step can last longer than the TTL (stopping an adapter waits up to ``stop_timeout_s``, then a restart
starts the new one), and the lease must not run out under it. Nothing WATCHes this key, so renewals
abort nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import redis.asyncio as aioredis

from processors.leases import RELEASE, RENEW
from streams import keys
from streams.log import translated
from tickfold.errors import StoreUnavailable

log = logging.getLogger(__name__)


class ExchangeLease:
    """``lease:adapter:{exchange}``: one serve instance runs an exchange's adapter at a time."""

    def __init__(self, client: aioredis.Redis, exchange_id: str, ttl_ms: int, owner: str) -> None:
        self.client = client
        self.key = keys.exchange_lease(exchange_id)
        self.ttl_ms = ttl_ms
        self.token = f"{owner}/{secrets.token_hex(4)}".encode()
        self.held = False
        self.renewed_at = 0.0
        self._renewing: asyncio.Task[None] | None = None

    async def keep(self) -> bool:
        """Renew the lease if held, else try to take it; whether it is held now."""
        if self._renewing is not None and self._renewing.done() and not self._renewing.cancelled():
            self._renewing.result()  # (a bug in it surfaces here)
        with translated(f"keeping {self.key}"):
            if self.held:
                ok = await self.client.eval(RENEW, 1, self.key, self.token, self.ttl_ms)
            else:
                ok = await self.client.set(self.key, self.token, nx=True, px=self.ttl_ms)
        self.held = bool(ok)
        if self.held:
            self.renewed_at = time.monotonic()
            if self._renewing is None or self._renewing.done():
                self._renewing = asyncio.create_task(self._renew_meanwhile(), name=f"renewing {self.key}")
        else:
            self._stop_renewing()
        return self.held

    async def _renew_meanwhile(self) -> None:
        """Every third of the TTL while held. A renewal that fails is logged, and the next one tried:
        :meth:`lapsed` tells the slot when the lease may be gone, and its own :meth:`keep` raises."""
        while self.held:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                async with asyncio.timeout(self.ttl_ms / 1000):
                    with translated(f"renewing {self.key}"):
                        ok = await self.client.eval(RENEW, 1, self.key, self.token, self.ttl_ms)
            except (StoreUnavailable, TimeoutError) as exc:
                log.warning("%s: renewal failed (%s)", self.key, exc or "no answer in time")
                continue
            if not ok:
                log.warning("%s: the lease is no longer ours", self.key)
                self.held = False
                return
            self.renewed_at = time.monotonic()

    def _stop_renewing(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            self._renewing = None

    def lapsed(self) -> bool:
        """Not renewed for a whole TTL (Redis unreachable): someone else may hold it by now."""
        return time.monotonic() - self.renewed_at >= self.ttl_ms / 1000

    async def release(self) -> None:
        task, self._renewing = self._renewing, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error  # (a bug in it: surfaces)
        if not self.held:
            return
        self.held = False
        with translated(f"releasing {self.key}"):
            await self.client.eval(RELEASE, 1, self.key, self.token)
