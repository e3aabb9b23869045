"""Carrying a symbol's history along when it moves between tiers (SYM-04).

A symbol's candle and indicator series live either in the shared, exchange-scoped keys or in the
overflow keys of the users who hold it (see :mod:`projections.scope`). Where they live *now* is recorded
in ``placement:{exchange_id}`` (symbol -> users; no field: shared). When the placement a processor
computes for a batch (from the pool and the live holders) differs from the recorded one — the symbol
entered or left Tier 1, a holder came or went — the processor moves the series first, in the same
MULTI as its batch: every series is copied whole to its new keys, the keys it leaves are deleted
(shared keys when the symbol goes to users; a user's keys when it becomes shared: never stored twice),
and the record is updated. Both processors WATCH the record, so a move happens once, and a batch that
computed the old placement is re-folded. A user who stops holding keeps their copy until its TTL
runs out (closing a position lets it run out; frames still in flight go on into that copy without
extending it, see :meth:`projections.scope.Scope.load`); a new holder gets a copy of the history.

Moves happen when a symbol's data flows (a batch touches it); until then the dual-read still finds the
series where the record says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from streams import keys
from streams.log import translated


def encode_users(users: tuple[str, ...]) -> str:
    return ",".join(users)


def decode_users(raw: bytes | None) -> tuple[str, ...]:
    return tuple(raw.decode().split(",")) if raw else ()


@dataclass
class Move:
    """One symbol's move: from ``old`` users (() = shared) to ``new``; its series as they are now."""

    symbol: str
    old: tuple[str, ...]
    new: tuple[str, ...]
    source: dict[str, str] = field(default_factory=dict)  # shared series name -> the key holding it now
    members: dict[str, list[tuple[bytes, float]]] = field(default_factory=dict)  # series -> (member, score)
    stale: list[str] = field(default_factory=list)  # keys to delete after the copy


def _shared_prefix(exchange_id: str, symbol: str) -> str:
    return keys.candles(exchange_id, symbol, "1m").rsplit(":", 1)[0] + ":"


async def plan_move(
    client: aioredis.Redis, exchange_id: str, symbol: str, old: tuple[str, ...], new: tuple[str, ...]
) -> Move:
    """Read the symbol's series where they live now (``old``) and decide what to delete after the copy."""
    move = Move(symbol, old, new)
    with translated(f"reading the series of {exchange_id} {symbol} to move them"):
        if not old:  # shared: the exchange's candle index names them; indicators follow their timeframes
            index: Any = await client.smembers(keys.candle_index(exchange_id))
            prefix = _shared_prefix(exchange_id, symbol)
            for name in sorted(m.decode() for m in index if m.decode().startswith(prefix)):
                move.source[name] = name
                _, _, tf = keys.parse_candles(name)
                for kind in keys.INDICATOR_KINDS:
                    ind = keys.indicator(exchange_id, symbol, tf, kind)
                    move.source[ind] = ind
            if new:
                move.stale = list(move.source)
        else:
            for user in old:  # every old holder's copy is the same: the first one still there serves
                listed: Any = await client.smembers(keys.user_keys(user, exchange_id, symbol))
                if listed:
                    for key in sorted(m.decode() for m in listed):
                        move.source.setdefault(keys.shared_of_user_key(key), key)
                    break
            if not new:  # now shared: the users' copies go (they would otherwise be refreshed while held)
                for user in old:
                    index_key = keys.user_keys(user, exchange_id, symbol)
                    listed = await client.smembers(index_key)
                    move.stale.extend([*sorted(m.decode() for m in listed), index_key])
        if move.source:
            pipe = client.pipeline(transaction=False)
            for key in move.source.values():
                pipe.zrange(key, 0, -1, withscores=True)
            replies: Any = await pipe.execute()
            for name, members in zip(move.source, replies, strict=True):
                move.members[name] = [(m, float(s)) for m, s in members]
    return move
