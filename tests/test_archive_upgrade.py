"""``tickfold archive upgrade``: raw frame blocks of earlier formats rewritten in the current one.

An archive written by earlier versions (formats 1, 3 and 4, mixed, as a long-lived archive holds them) is
upgraded on a real PostgreSQL: afterwards every raw frame block is of the current format, every stream reads
back exactly the same entries, the in-memory fold of the archive gives exactly the same candles and close
events as before, and now folds the Coinbase frames from their trade columns. A second upgrade finds nothing
to do; a block whose row disagrees with its payload stops the upgrade with its name and is left as it is.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from migrations.runner import migrate
from processors.archiver import ArchiverConfig, run_archiver
from processors.candles import from_settings
from processors.memory_fold import MemoryCandles
from processors.runner import RunnerConfig
from projections.candles import CandleClosed
from streams import archive, keys, log
from streams.archive_codec import (
    FORMAT,
    decode_block,
    encode_block_v1,
    encode_block_v3,
    encode_block_v4,
    is_current,
)
from streams.archive_store import TABLE
from streams.archive_upgrade import BlockMismatch, upgrade
from streams.log import Entry
from streams.symbols import bundled
from tests.synthetic import synthetic_day
from tickfold.settings import Settings


@pytest.fixture
async def client(redis_url: str) -> Any:
    async with log.connect(redis_url) as c:
        await c.flushdb()
        yield c
        await c.flushdb()


def binance_frames() -> list[bytes]:
    from benchmarks.ingest_fold import frames

    return frames(1)


async def archived(client: aioredis.Redis, dsn: str) -> None:
    """Both exchanges' frames in the streams and archived in small blocks, in the current format."""
    await migrate(dsn)
    coinbase = synthetic_day(every_ms=30_000)[:4_000]
    await log.append_frames(client, "coinbase", [(f, 0) for f in coinbase], partitions=2)
    await log.append_frames(client, "binance", [(f, 0) for f in binance_frames()], partitions=2)
    runner = RunnerConfig(consumer="t", block_ms=50, lease_ttl_ms=1000, batch_size=250)
    config = ArchiverConfig(runner=runner, partitions=2, max_block=250)
    await run_archiver(client, dsn, ["coinbase", "binance"], config, until_idle=True)


async def make_old(dsn: str) -> int:
    """Rewrite every raw frame block in an earlier format (1, 3, 4 in turn); returns how many."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            f"SELECT stream, source, day, first_ms, first_seq, payload FROM {TABLE} WHERE stream LIKE 'frames:%' "
            "ORDER BY stream, first_ms, first_seq"
        )
        for i, r in enumerate(rows):
            entries = decode_block(r["payload"])
            old = (
                encode_block_v1(entries),
                *(f(entries, stream=r["stream"]) for f in (encode_block_v3, encode_block_v4)),
            )[i % 3]
            await conn.execute(
                f"UPDATE {TABLE} SET payload = $6 WHERE stream = $1 AND source = $2 AND day = $3 "
                "AND first_ms = $4 AND first_seq = $5",
                r["stream"], r["source"], r["day"], r["first_ms"], r["first_seq"], old,
            )  # fmt: skip
        return len(rows)
    finally:
        await conn.close()


async def frame_payloads(dsn: str) -> list[bytes]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["payload"] for r in await conn.fetch(f"SELECT payload FROM {TABLE} WHERE stream LIKE 'frames:%'")]
    finally:
        await conn.close()


async def read_all(dsn: str) -> dict[str, list[Entry]]:
    out: dict[str, list[Entry]] = {}
    for stream in await archive.archived_streams(dsn, "frames:"):
        out[stream] = [e async for chunk in archive.read_archived(dsn, stream) for e in chunk]
    return out


async def fold_archive(dsn: str) -> tuple[dict[str, list[Any]], list[CandleClosed], int]:
    """The Coinbase archive folded in memory, as a replay folds it: candles, close events, frames in runs."""
    settings = Settings.load({}, overrides={"indicators": False})
    candles: dict[str, list[Any]] = {}
    closes: list[CandleClosed] = []
    runs = 0
    for p in range(2):
        m = MemoryCandles(from_settings(settings, "coinbase", p, bundled("coinbase"), history=10**9))
        async for frames in archive.read_frames(dsn, keys.frames_stream("coinbase", p)):
            await m.fold_frames([frames])
        candles.update(m.candles())
        closes += m.closes
        runs += m.run_frames
    return candles, closes, runs


async def test_an_upgrade_rewrites_old_blocks_and_replays_the_same_faster(client: aioredis.Redis, pg_dsn: str) -> None:
    await archived(client, pg_dsn)
    assert all(is_current(p) for p in await frame_payloads(pg_dsn))
    entries_new = await read_all(pg_dsn)
    candles_new, closes_new, runs_new = await fold_archive(pg_dsn)
    total = await make_old(pg_dsn)
    assert total >= 20 and not any(is_current(p) for p in await frame_payloads(pg_dsn))
    assert await read_all(pg_dsn) == entries_new
    candles_old, closes_old, runs_old = await fold_archive(pg_dsn)
    assert (candles_old, closes_old) == (candles_new, closes_new) and len(closes_old) > 100
    assert 0 < runs_old < runs_new  # only the format 4 blocks' frames fold from trade columns

    seen: list[tuple[int, int]] = []
    stats = await upgrade(pg_dsn, ["coinbase", "binance"], progress=lambda s: seen.append((s.upgraded, s.blocks)))
    assert (stats.blocks, stats.upgraded) == (total, total)
    assert stats.entries == stats.upgraded_entries == sum(len(v) for v in entries_new.values())
    assert seen[0] == (0, total) and seen[-1] == (total, total) and len(seen) == total + 1
    assert stats.bytes_after > 0 and stats.bytes_before > 0
    assert all(is_current(p) for p in await frame_payloads(pg_dsn))
    assert await read_all(pg_dsn) == entries_new
    candles_up, closes_up, runs_up = await fold_archive(pg_dsn)
    assert (candles_up, closes_up, runs_up) == (candles_new, closes_new, runs_new)

    again = await upgrade(pg_dsn, ["coinbase", "binance"])
    assert (again.blocks, again.upgraded) == (0, 0)


async def test_an_upgrade_takes_only_the_exchanges_asked_for(client: aioredis.Redis, pg_dsn: str) -> None:
    await archived(client, pg_dsn)
    total = await make_old(pg_dsn)
    stats = await upgrade(pg_dsn, ["binance"])
    assert 0 < stats.upgraded < total
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(f"SELECT stream, payload FROM {TABLE} WHERE stream LIKE 'frames:%'")
    finally:
        await conn.close()
    assert all(is_current(r["payload"]) == r["stream"].startswith("frames:binance:") for r in rows)


async def test_a_block_whose_row_disagrees_with_its_payload_stops_the_upgrade_and_is_left_as_it_is(
    client: aioredis.Redis, redis_url: str, pg_dsn: str
) -> None:
    await archived(client, pg_dsn)
    await make_old(pg_dsn)
    conn = await asyncpg.connect(pg_dsn)
    try:
        bad = await conn.fetchrow(
            f"SELECT stream, first_ms, first_seq, payload FROM {TABLE} WHERE stream LIKE 'frames:coinbase:%' "
            "ORDER BY day, stream, first_ms, first_seq OFFSET 3 LIMIT 1"
        )
        assert bad is not None
        await conn.execute(
            f"UPDATE {TABLE} SET entries = entries + 1 WHERE stream = $1 AND first_ms = $2 AND first_seq = $3",
            bad["stream"], bad["first_ms"], bad["first_seq"],
        )  # fmt: skip
        with pytest.raises(BlockMismatch, match=f"{bad['stream']} at {bad['first_ms']}-{bad['first_seq']}"):
            await upgrade(pg_dsn, ["coinbase"])
        after = await conn.fetchval(
            f"SELECT payload FROM {TABLE} WHERE stream = $1 AND first_ms = $2 AND first_seq = $3",
            bad["stream"], bad["first_ms"], bad["first_seq"],
        )  # fmt: skip
        assert after == bad["payload"]  # untouched
        argv = ["--redis-url", redis_url, "--database-url", pg_dsn, "archive", "upgrade", "--exchange", "coinbase"]
        cmd = [sys.executable, "-m", "tickfold.cli", *argv]
        cli = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=120)
        assert cli.returncode != 0 and f"{bad['stream']} at {bad['first_ms']}-{bad['first_seq']}" in cli.stderr
        assert "Traceback" not in cli.stderr
        done = await conn.fetchval(
            f"SELECT count(*) FROM {TABLE} WHERE stream LIKE 'frames:coinbase:%' "
            "AND substring(payload FROM 1 FOR 2) = $1",
            b"\x94\x05",
        )
        assert done == 3  # the blocks before it were upgraded, each in its own transaction
    finally:
        await conn.close()


def test_the_command_reports_what_it_rewrote(client: aioredis.Redis, redis_url: str, pg_dsn: str) -> None:
    async def prepare() -> int:
        async with log.connect(redis_url) as c:
            await archived(c, pg_dsn)
        return await make_old(pg_dsn)

    total = asyncio.run(prepare())
    base = [sys.executable, "-m", "tickfold.cli", "--redis-url", redis_url, "--database-url", pg_dsn, "archive"]
    env = {**os.environ, "NO_COLOR": "1"}
    first = subprocess.run([*base, "upgrade"], capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    assert f"{total:,} of {total:,} raw frame blocks" in first.stdout and f"in format {FORMAT}" in first.stdout
    assert "upgrading the archive" in first.stderr  # progress, plainly, off a terminal
    second = subprocess.run([*base, "upgrade"], capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0 and "nothing to upgrade" in second.stdout
    bad = subprocess.run([*base, "upgrade", "--exchange", "kraken"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "kraken" in bad.stderr
