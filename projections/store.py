"""The candle read model in Redis: ``candles:{exchange_id}:{symbol}:{timeframe}`` (DATA-01).

Each series is a sorted set scored by bucket start (epoch ms); each member is the candle as JSON, so
any client can read it (``ZRANGE candles:binance:BTC-USDT:1m -inf +inf BYSCORE``). A bucket is
replaced by removing its score and adding the new member, inside the caller's MULTI. Series are
bounded to ``history`` buckets; ``index:candles:{exchange_id}`` lists the series of an exchange.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import msgspec
import redis.asyncio as aioredis

from projections.candles import Candle, CandleClosed
from streams import keys
from streams.log import translated

_ENCODER = msgspec.json.Encoder()
_CANDLE = msgspec.json.Decoder(Candle)
_CLOSED = msgspec.json.Decoder(CandleClosed)


def encode(obj: Candle | CandleClosed) -> bytes:
    return _ENCODER.encode(obj)


def decode_candle(raw: bytes) -> Candle:
    return _CANDLE.decode(raw)


def decode_closed(raw: bytes) -> CandleClosed:
    return _CLOSED.decode(raw)


def queue_load(pipe: Any, wanted: Mapping[str, Iterable[int]]) -> list[str]:
    """Queue, on a caller's pipeline, the reads of each series' newest bucket plus the buckets at the given
    starts; returns what :func:`take_load` needs to sort the replies."""
    plan: list[str] = []
    for key, starts in wanted.items():
        plan.append(key)
        pipe.zrange(key, 0, 0, desc=True)
        for start in sorted(set(starts)):
            plan.append(key)
            pipe.zrange(key, start, start, byscore=True)
    return plan


def take_load(plan: list[str], replies: list[Any]) -> dict[str, dict[int, Candle]]:
    """The series of a :func:`queue_load` from its replies (the first ``len(plan)`` of them)."""
    out: dict[str, dict[int, Candle]] = {key: {} for key in plan}
    for key, members in zip(plan, replies, strict=False):
        for raw in members:
            candle = decode_candle(raw)
            out[key][candle.start] = candle
    return out


def queue_put(pipe: Any, key: str, candle: Candle, *, history: int) -> None:
    """Queue (in a MULTI) the replacement of one bucket and the trim of the series to ``history``."""
    queue_series(pipe, key, [candle], history=history)


def queue_series(
    pipe: Any,
    key: str,
    candles: list[Candle],
    *,
    history: int,
    stored: Collection[int] | None = None,
    index: bool = True,
) -> None:
    """Queue (in a MULTI) the replacement of several buckets of one series, then one trim to ``history``.
    ``stored``: the starts known to exist (only those need removing first); None: any may exist."""
    if not candles:
        return
    for candle in candles:
        if stored is None or candle.start in stored:
            pipe.zremrangebyscore(key, candle.start, candle.start)
    pipe.zadd(key, {encode(c): c.start for c in candles})
    pipe.zremrangebyrank(key, 0, -(history + 1))
    if index:  # (user overflow series are found through their user's index, not the exchange's)
        pipe.sadd(keys.candle_index(candles[0].exchange), key)


async def read_candles(
    client: aioredis.Redis, exchange_id: str, symbol: str, timeframe: str, *, limit: int
) -> list[Candle]:
    """The newest ``limit`` candles of a series, oldest first."""
    key = keys.candles(exchange_id, symbol, timeframe)
    with translated(f"reading {key}"):
        members: Any = await client.zrange(key, 0, limit - 1, desc=True)
    return [decode_candle(m) for m in reversed(members)]


async def list_series(client: aioredis.Redis, exchange_id: str) -> list[str]:
    with translated("reading the candle index"):
        members: Any = await client.smembers(keys.candle_index(exchange_id))
    return sorted(m.decode() for m in members)
