"""``lease:adapter:{exchange}``: one serve instance runs an exchange's adapter at a time.

SET NX PX takes it, a compare-and-PEXPIRE renews it (every third of the TTL), a compare-and-DEL
releases it; a holder that could not renew for a whole TTL must assume someone else holds it now.
"""

from __future__ import annotations

import secrets
import time

import redis.asyncio as aioredis

from processors.leases import RELEASE, RENEW
from streams import keys
from streams.log import translated


class ExchangeLease:
    """``lease:adapter:{exchange}``: one serve instance runs an exchange's adapter at a time."""

    def __init__(self, client: aioredis.Redis, exchange_id: str, ttl_ms: int, owner: str) -> None:
        self.client = client
        self.key = keys.exchange_lease(exchange_id)
        self.ttl_ms = ttl_ms
        self.token = f"{owner}/{secrets.token_hex(4)}".encode()
        self.held = False
        self.renewed_at = 0.0

    async def keep(self) -> bool:
        """Renew the lease if held, else try to take it; whether it is held now."""
        with translated(f"keeping {self.key}"):
            if self.held:
                ok = await self.client.eval(RENEW, 1, self.key, self.token, self.ttl_ms)
            else:
                ok = await self.client.set(self.key, self.token, nx=True, px=self.ttl_ms)
        self.held = bool(ok)
        if self.held:
            self.renewed_at = time.monotonic()
        return self.held

    def lapsed(self) -> bool:
        """Not renewed for a whole TTL (Redis unreachable): someone else may hold it by now."""
        return time.monotonic() - self.renewed_at >= self.ttl_ms / 1000

    async def release(self) -> None:
        if not self.held:
            return
        self.held = False
        with translated(f"releasing {self.key}"):
            await self.client.eval(RELEASE, 1, self.key, self.token)
