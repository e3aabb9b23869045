"""Where a series lives: the shared, exchange-scoped keys, or user overflow keys (DATA-03), and the
dual-read that finds it (DATA-04).

* The shared pool of an exchange is the set ``pool:{exchange_id}`` (Tier 1, kept by the symbol tiers).
  While it is empty or absent every symbol is shared.
* A user holding a position in a symbol registers in ``holders:{exchange_id}:{symbol}`` (a sorted set:
  user id -> expiry, epoch ms on Redis's clock) with :func:`hold`, refreshed while the position is held.
* A symbol outside a non-empty pool with live holders is *overflow*: its candles and indicators are
  written to ``usercandles:{user}:{exchange_id}:{symbol}:{tf}`` and
  ``userindicator:{user}:{exchange_id}:{symbol}:{tf}:{type}`` of every holder, each with a TTL that
  runs to the holder's expiry; :func:`hold` refreshes the TTL of the keys already written (listed in
  ``userkeys:{user}:{exchange_id}:{symbol}``). After :func:`release` (position closed) nothing
  refreshes them and they run out. A symbol in the pool is shared even if users hold it: never stored twice.
* A symbol that changes tiers (enters or leaves the pool, gains or loses holders) carries its history
  with it: the first batch that sees the new placement copies its series there and deletes the keys
  it leaves, in the same MULTI (:mod:`projections.placement`).
* :func:`read_candles` / :func:`read_points` look in the exchange-scoped key first, then in the user's,
  and say which answered.

The processors keep folding by the shared key name internally (it names the series); a :class:`Scope`
maps it to the key(s) that actually hold the data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from projections import placement, store
from projections.candles import Candle
from streams import keys
from streams.log import translated

DEFAULT_TTL_MS = 24 * 3_600_000


async def now_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def hold(
    client: aioredis.Redis, exchange_id: str, symbol: str, user_id: str, ttl_ms: int = DEFAULT_TTL_MS
) -> None:
    """Register (or refresh) a user's position in a symbol; extends the TTL of their overflow keys."""
    with translated(f"registering {user_id} as a holder of {exchange_id} {symbol}"):
        expiry = await now_ms(client) + ttl_ms
        await client.zadd(keys.holders(exchange_id, symbol), {user_id: expiry})
        index = keys.user_keys(user_id, exchange_id, symbol)
        written: Any = await client.smembers(index)
        pipe = client.pipeline(transaction=False)
        for key in [*written, index]:
            pipe.pexpireat(key, expiry)
        await pipe.execute()


async def release(client: aioredis.Redis, exchange_id: str, symbol: str, user_id: str) -> None:
    """The position is closed: stop refreshing; the user's overflow keys run out with their TTL."""
    with translated(f"releasing {user_id} from {exchange_id} {symbol}"):
        await client.zrem(keys.holders(exchange_id, symbol), user_id)


@dataclass
class Scope:
    """The placement of a batch's series: shared key -> (key to read, keys to write, expiry ms or None)."""

    exchange_id: str
    overflow: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # symbol -> [(holder, expiry ms)]
    moves: dict[str, placement.Move] = field(default_factory=dict)  # symbols whose series move in this batch

    @classmethod
    async def load(cls, client: aioredis.Redis, exchange_id: str, symbols: Iterable[str]) -> Scope:
        """The placement of ``symbols`` now, and the moves (see :mod:`projections.placement`) it needs.
        Call it after WATCHing ``placement:{exchange_id}`` on the committing connection."""
        symbols = sorted(set(symbols))
        scope = cls(exchange_id)
        if not symbols:
            return scope
        with translated(f"reading the symbol scope of {exchange_id}"):
            pipe = client.pipeline(transaction=False)
            pipe.scard(keys.pool(exchange_id))
            pipe.hmget(keys.placement(exchange_id), symbols)
            pooled, recorded = await pipe.execute()
            placed = {s: placement.decode_users(raw) for s, raw in zip(symbols, recorded, strict=True)}
            if not pooled and not any(placed.values()):
                return scope  # no pool defined and nothing placed with users: everything is shared
            if pooled:
                pipe = client.pipeline(transaction=False)
                pipe.smismember(keys.pool(exchange_id), symbols)
                for s in symbols:
                    pipe.zrange(keys.holders(exchange_id, s), 0, -1, withscores=True)
                replies: Any = await pipe.execute()
                now = await now_ms(client)
                orphans: list[str] = []
                for s, in_pool, holders in zip(symbols, replies[0], replies[1:], strict=True):
                    live = sorted((u.decode(), int(score)) for u, score in holders if score > now)
                    if not in_pool and live:
                        scope.overflow[s] = live
                    elif not in_pool and placed[s]:
                        orphans.append(s)
                if orphans:
                    await scope._keep_orphans(client, orphans, placed, now)
        for s in symbols:
            if (new := tuple(scope.holders(s))) != placed[s]:
                scope.moves[s] = await placement.plan_move(client, exchange_id, s, placed[s], new)
        return scope

    async def _keep_orphans(
        self, client: aioredis.Redis, symbols: list[str], placed: dict[str, tuple[str, ...]], now: int
    ) -> None:
        """Symbols placed with users who no longer hold them (positions closed) and not in the pool: they
        stay in those users' keys, which run out at their current expiry (nothing extends it), so frames
        still in flight after the unsubscribe neither revive the keys nor move the series to the shared
        keys. Once every such copy has run out the symbol is shared again."""
        pipe = client.pipeline(transaction=False)
        order = [(s, u) for s in symbols for u in placed[s]]
        for s, u in order:
            pipe.pttl(keys.user_keys(u, self.exchange_id, s))
        ttls: Any = await pipe.execute()
        for (s, u), ttl in zip(order, ttls, strict=True):
            if int(ttl) > 0:
                self.overflow.setdefault(s, []).append((u, now + int(ttl)))

    def _symbol(self, key: str) -> str:
        return key.split(":")[2]

    def read_key(self, key: str) -> str:
        """Where the series named by the shared ``key`` is read from (during a move: where it was)."""
        symbol = self._symbol(key)
        if (move := self.moves.get(symbol)) is not None:
            if not move.old:
                return key
            kind, exchange_id, symbol, *rest = key.split(":")
            return move.source.get(key) or self._user_key(kind, move.old[0], exchange_id, symbol, rest)
        placed = self.overflow.get(symbol)
        if placed is None:
            return key
        kind, exchange_id, symbol, *rest = key.split(":")
        return self._user_key(kind, placed[0][0], exchange_id, symbol, rest)

    def write_keys(self, key: str) -> tuple[list[str], list[int] | None]:
        """The keys a change to the shared ``key`` series goes to, and each one's expiry (None: shared, no TTL)."""
        placed = self.overflow.get(self._symbol(key))
        if placed is None:
            return [key], None
        kind, exchange_id, symbol, *rest = key.split(":")
        return [self._user_key(kind, u, exchange_id, symbol, rest) for u, _ in placed], [e for _, e in placed]

    def holders(self, symbol: str) -> list[str]:
        return [u for u, _ in self.overflow.get(symbol, [])]

    @staticmethod
    def _user_key(kind: str, user: str, exchange_id: str, symbol: str, rest: list[str]) -> str:
        if kind == "candles":
            return keys.usercandles(user, exchange_id, symbol, rest[0])
        if kind == "indicator":
            return keys.userindicator(user, exchange_id, symbol, rest[0], rest[1])
        raise ValueError(f"no user-scoped form for {kind} keys")

    def queue_expiry(self, pipe: Any, key: str, written: list[str], expiry: list[int] | None) -> None:
        """In the caller's MULTI: each user key just written runs out when its holder's registration does;
        the per-user index lists it so that :func:`hold` can refresh it."""
        if expiry is None:
            return
        symbol = self._symbol(key)
        for user, target, until in zip(self.holders(symbol), written, expiry, strict=True):
            index = keys.user_keys(user, self.exchange_id, symbol)
            pipe.sadd(index, target)
            pipe.pexpireat(target, until)
            pipe.pexpireat(index, until)


    def queue_moves(self, pipe: Any) -> None:
        """In the caller's MULTI, before the batch's own writes: carry each moving symbol's series to its
        new keys, delete the keys it leaves, record the new placement (:mod:`projections.placement`)."""
        for symbol, move in sorted(self.moves.items()):
            for name, members in move.members.items():
                targets, expiry = self.write_keys(name)
                for target in targets:
                    if target == move.source[name]:
                        continue  # a holder that stays: their copy is already there
                    pipe.delete(target)
                    if members:
                        pipe.zadd(target, dict(members))
                if members and expiry is None and name.startswith("candles:"):
                    pipe.sadd(keys.candle_index(self.exchange_id), name)
                self.queue_expiry(pipe, name, targets, expiry)
            if move.stale:
                pipe.delete(*move.stale)
                candles = [k for k in move.stale if k.startswith("candles:")]
                if candles:
                    pipe.srem(keys.candle_index(self.exchange_id), *candles)
            if move.new:
                pipe.hset(keys.placement(self.exchange_id), symbol, placement.encode_users(move.new))
            else:
                pipe.hdel(keys.placement(self.exchange_id), symbol)


@dataclass(frozen=True)
class Answer:
    """What a dual-read found, and where: ``exchange``, ``user:<id>`` or ``none``."""

    source: str
    candles: list[Candle]


async def read_candles(
    client: aioredis.Redis, exchange_id: str, symbol: str, timeframe: str, *, limit: int, user_id: str | None = None
) -> Answer:
    """DATA-04: the exchange-scoped series first, then the user's overflow series."""
    shared = await store.read_candles(client, exchange_id, symbol, timeframe, limit=limit)
    if shared or user_id is None:
        return Answer("exchange" if shared else "none", shared)
    key = keys.usercandles(user_id, exchange_id, symbol, timeframe)
    with translated(f"reading {key}"):
        members: Any = await client.zrange(key, 0, limit - 1, desc=True)
    found = [store.decode_candle(m) for m in reversed(members)]
    return Answer(f"user:{user_id}" if found else "none", found)
