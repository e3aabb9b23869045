"""What the API runs on: :class:`ApiDeps` (given by whoever mounts it) and :class:`ApiContext` (one per app).

Handlers get the context by dependency injection (``ctx: ApiContext``); nothing here reads the
environment. A Redis client passed in ``ApiDeps.redis`` is shared and left open; without one the app
opens its own at startup and closes it at shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import SkipValidation

from control.api.tally import ControlTally
from streams import keys
from streams.frames import DECODERS
from streams.symbols import UnknownSymbol, bundled, load_symbol_map
from tickfold.errors import StoreUnavailable, UnknownExchange
from tickfold.settings import Settings

STATE_KEY = "tickfold"


@dataclass(frozen=True)
class ApiDeps:
    settings: Settings  # api_token, api_read_open
    redis_url: str
    database_url: str | None = None  # None: the exchange endpoints answer 503
    redis: aioredis.Redis | None = None  # a client to share (e.g. serve's); None: the app opens its own


class ApiContext:
    def __init__(self, deps: ApiDeps) -> None:
        self.deps = deps
        self.settings = deps.settings
        self._redis = deps.redis
        self._owned = False
        self.tally = ControlTally()

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise StoreUnavailable("the API's Redis client is not open (the app has not started)")
        return self._redis

    @property
    def database_url(self) -> str:
        if not self.deps.database_url:
            raise StoreUnavailable("no PostgreSQL is configured for the API (database_url)")
        return self.deps.database_url

    async def open(self) -> None:
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(self.deps.redis_url, decode_responses=False, socket_timeout=5.0)
            self._owned = True

    async def close(self) -> None:
        if self._owned and self._redis is not None:
            await self._redis.aclose()
            self._redis = None
            self._owned = False


def provide_context(state: State) -> ApiContext:
    """The ``ctx`` dependency of every handler (declared ``ctx: Ctx``)."""
    ctx: Any = state[STATE_KEY]
    assert isinstance(ctx, ApiContext)
    return ctx


def known_exchange(exchange_id: str) -> str:
    """An exchange id tickfold has an adapter for (format errors: KeyFormatError; unknown: UnknownExchange)."""
    keys.exchange_part(exchange_id)
    if exchange_id not in DECODERS:
        raise UnknownExchange(f"unknown exchange {exchange_id!r}; known exchanges: {', '.join(sorted(DECODERS))}")
    return exchange_id


async def resolve_symbol(client: aioredis.Redis, exchange_id: str, text: str) -> str:
    """A symbol in exchange (BTCUSDT) or canonical (BTC-USDT) form -> canonical: the bundled market list
    first, then the one synced into Redis (``tickfold markets sync``)."""
    try:
        return bundled(exchange_id).resolve(text)
    except UnknownSymbol:
        synced = await load_symbol_map(client, exchange_id)
        return synced.resolve(text)


Ctx = NamedDependency[SkipValidation[ApiContext]]
