"""Helpers the integration tests share: ingest a recorded file, drain the processors, read projections."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aioredis

from processors.runner import RunStats
from projections import store
from projections.candles import Candle, CandleClosed
from streams import keys, log, partitions, recorded
from tickfold.commands import run_processors
from tickfold.settings import Settings


async def ingest(client: aioredis.Redis, exchange_id: str, path: Path) -> int:
    return await log.append_frames(client, exchange_id, recorded.read_frames(path))


async def drain(client: aioredis.Redis, exchanges: Sequence[str], **settings: object) -> dict[str, RunStats]:
    s = Settings.load({}, overrides=settings)
    return await run_processors(client, s, exchanges, until_idle=True)


async def raw_streams(client: aioredis.Redis, exchange_id: str) -> list[str]:
    """The partition streams of an exchange's raw frames."""
    return partitions.streams(exchange_id, await log.stored_partitions(client, exchange_id) or 0)


async def pending(client: aioredis.Redis, exchange_id: str, group: str = "candles") -> int:
    """Entries delivered to ``group`` and not acknowledged, over all partitions of an exchange."""
    total = 0
    for stream in await raw_streams(client, exchange_id):
        total += int((await client.xpending(stream, group))["pending"])
    return total


async def entries_read(client: aioredis.Redis, exchange_id: str, group: str = "candles") -> int:
    """How many entries ``group`` has been given so far, over all partitions."""
    total = 0
    for stream in await raw_streams(client, exchange_id):
        if await client.exists(stream):
            for info in await client.xinfo_groups(stream):
                if info["name"] == group.encode():
                    total += int(info["entries-read"] or 0)
    return total


async def all_candles(client: aioredis.Redis, exchange_id: str) -> dict[tuple[str, str, int], Candle]:
    out: dict[tuple[str, str, int], Candle] = {}
    for key in await store.list_series(client, exchange_id):
        members: list[bytes] = await client.zrange(key, 0, -1)  # type: ignore[assignment]
        for raw in members:
            c = store.decode_candle(raw)
            assert (c.symbol, c.timeframe, c.start) not in out, f"{key} holds bucket {c.start} twice"
            out[(c.symbol, c.timeframe, c.start)] = c
    return out


async def close_events(client: aioredis.Redis, exchange_id: str) -> list[CandleClosed]:
    return [
        store.decode_closed(fields[b"event"])
        for _, fields in await log.entries(client, keys.closes_stream(exchange_id))
    ]
