"""The replay's columnar path on real servers: frames archived with their decoded columns (kind, event time),
the streams trimmed behind the archive, then replayed in memory at several batch sizes and through Redis.

The oracle is the live run of the same frames (``tickfold process``'s processors on Redis): the replay must
store the same candles, the same close events (per series, in order) and the same dead letters. Archives
written before the columns existed (format 1 blocks) must replay the same, alone or mixed with new blocks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from migrations.runner import migrate
from processors.archiver import GROUP as ARCHIVE
from processors.archiver import ArchiverConfig, run_archiver
from processors.replay import Fold, MemoryFold, candle_processor, claim_target, run
from processors.replay_source import plan
from processors.runner import RunnerConfig
from streams import keys, log
from streams.archive_codec import BlockEntries, decode_block, decode_frames, encode_block_v1
from streams.archive_columns import TRADE, EntryList
from streams.archive_store import TABLE
from streams.symbols import load_symbol_map
from streams.trim import trim
from tests.support import all_candles, close_events, drain
from tests.test_memory_fold import binance_mix, by_series, live_dead
from tickfold.settings import Settings

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.replay]
SETTINGS = Settings.load({}, overrides={"indicators": False})


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    async with log.connect(redis_url) as c:
        yield c


@pytest.fixture
async def target(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    async with log.connect(redis_url.rsplit("/", 1)[0] + "/7") as c:
        await c.flushdb()
        yield c
        await c.flushdb()


async def live_archived_trimmed(client: aioredis.Redis, dsn: str, frames: list[bytes]) -> None:
    """The live run, then the archive of every raw partition, then the streams trimmed to their last third."""
    await migrate(dsn)
    await log.append_frames(client, "binance", [(f, i) for i, f in enumerate(frames)], partitions=4)
    await drain(client, ["binance"], batch_size=500)
    runner = RunnerConfig(consumer="t", block_ms=50, lease_ttl_ms=1000, batch_size=300)
    await run_archiver(client, dsn, ["binance"], ArchiverConfig(runner=runner, max_block=300), until_idle=True)
    for p in range(4):
        stream = keys.frames_stream("binance", p)
        length = int(await client.xlen(stream))
        await trim(client, stream, ("candles", ARCHIVE), max_len=length // 3, max_age_ms=10**13)
        assert int(await client.xlen(stream)) < length  # the head is in the archive only


async def replay(client: aioredis.Redis, target: aioredis.Redis, dsn: str, batch: int, in_memory: bool) -> Fold:
    """What ``tickfold replay --to-end`` composes, at a chosen batch size."""
    await target.flushdb()
    sources = await plan(client, "binance", dsn)
    symbols = await load_symbol_map(client, "binance")
    processors = {
        p.partition: candle_processor(SETTINGS, "binance", p.partition, symbols, history=10**6) for p in sources.parts
    }
    fences, indicator_fence = await claim_target(target, "binance", sources.partitions)
    fold: Fold
    if in_memory:
        fold = MemoryFold(target, processors, fences, None, indicator_fence, batch_size=batch, history=10**6)
    else:
        fold = Fold(target, processors, fences, None, indicator_fence, batch_size=batch)
    await fold.prepare()
    await run(client, sources, fold, exchange_id="binance", stop_ms=None, start_ms=None, speed=None, batch_size=batch)
    await fold.finish()
    return fold


async def check_replays_equal_live(
    client: aioredis.Redis, target: aioredis.Redis, dsn: str, runs: list[tuple[int, bool]]
) -> None:
    live = await all_candles(client, "binance")
    closes = by_series(await close_events(client, "binance"))
    dead = sorted(await live_dead(client, "binance"))
    assert live and closes and dead
    frames = sum([int(await client.xlen(keys.frames_stream("binance", p))) for p in range(4)])
    for batch, in_memory in runs:
        fold = await replay(client, target, dsn, batch, in_memory)
        stats = fold.stats
        assert await all_candles(target, "binance") == live
        assert by_series(await close_events(target, "binance")) == closes
        assert sorted(await live_dead(target, "binance")) == dead
        assert stats.frames > frames and stats.dead == len(dead)
        if isinstance(fold, MemoryFold):  # each partition's watermark ends where the live one did
            for p, memory in fold.memory.items():
                mark: Any = await client.get(keys.projection_watermark("candles", "binance", p))
                assert memory.watermark == int(mark)


async def rewrite_blocks(dsn: str, which: Any) -> int:
    """Rewrite the archived raw frame blocks chosen by ``which(n)`` as format 1 (no decoded columns), as an
    archive written before format 2 holds them; returns how many."""
    conn = await asyncpg.connect(dsn)
    n = 0
    try:
        rows = await conn.fetch(
            f"SELECT stream, source, day, first_ms, first_seq, payload FROM {TABLE} "
            "WHERE stream LIKE 'frames:%' ORDER BY stream, first_ms, first_seq"
        )
        for i, r in enumerate(rows):
            if not which(i):
                continue
            entries = decode_block(r["payload"])
            old = encode_block_v1(entries)
            assert decode_block(old) == entries
            stored = decode_frames(r["payload"], r["stream"])
            computed = decode_frames(old, r["stream"])  # the columns, computed frame by frame on read
            assert (stored.kind == computed.kind).all() and (stored.event_ms == computed.event_ms).all()
            assert isinstance(stored.source, BlockEntries) and isinstance(computed.source, EntryList)
            await conn.execute(
                f"UPDATE {TABLE} SET payload = $1 WHERE stream = $2 AND source = $3 AND day = $4 "
                "AND first_ms = $5 AND first_seq = $6",
                old,
                r["stream"],
                r["source"],
                r["day"],
                r["first_ms"],
                r["first_seq"],
            )
            n += 1
    finally:
        await conn.close()
    return n


async def test_archived_columns_replay_as_the_live_run(
    client: aioredis.Redis, target: aioredis.Redis, pg_dsn: str
) -> None:
    frames = binance_mix()
    await live_archived_trimmed(client, pg_dsn, frames)
    conn = await asyncpg.connect(pg_dsn)
    try:  # the archive holds the columns, and they say which frames are trades
        payloads = await conn.fetch(f"SELECT stream, payload FROM {TABLE} WHERE stream LIKE 'frames:%'")
    finally:
        await conn.close()
    blocks = [decode_frames(r["payload"], r["stream"]) for r in payloads]
    trades = sum(int((b.kind == TRADE).sum()) for b in blocks)
    assert trades == sum(b'@aggTrade"' in f[:64] and b'"E":' in f for f in frames)
    await check_replays_equal_live(client, target, pg_dsn, [(1, True), (97, True), (20_000, True), (500, False)])


async def test_old_blocks_without_columns_replay_the_same(
    client: aioredis.Redis, target: aioredis.Redis, pg_dsn: str
) -> None:
    await live_archived_trimmed(client, pg_dsn, binance_mix())
    assert await rewrite_blocks(pg_dsn, lambda i: i % 2 == 0) > 2  # old and new blocks, mixed
    await check_replays_equal_live(client, target, pg_dsn, [(20_000, True), (53, True)])
    assert await rewrite_blocks(pg_dsn, lambda i: i % 2 == 1) > 2  # every block old
    await check_replays_equal_live(client, target, pg_dsn, [(20_000, True), (500, False)])
