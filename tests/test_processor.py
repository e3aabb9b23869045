"""The candle processor on a real Redis: redelivery, duplicates, dead letters, crashes and clean stops."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from projections.candles import CandleClosed
from streams import keys, log
from tests.realdata import BINANCE_0404, BINANCE_0814, COINBASE_AT, require
from tests.support import all_candles, close_events, drain, entries_read, ingest, pending, raw_streams

pytestmark = pytest.mark.redis

GROUP = "candles"


def sorted_closes(events: list[CandleClosed]) -> list[CandleClosed]:
    """Close events in a canonical order: partitions interleave differently from run to run."""
    return sorted(events, key=lambda e: (e.candle.symbol, e.candle.timeframe, e.candle.start, e.candle.event_ns))


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


async def test_redelivered_frames_change_nothing(client: aioredis.Redis) -> None:
    n = await ingest(client, "binance", BINANCE_0404)
    await drain(client, ["binance"])
    candles = await all_candles(client, "binance")
    closes = await close_events(client, "binance")
    # every entry delivered again, as after a crash before the ack: the group rewinds to the start
    for stream in await raw_streams(client, "binance"):
        await client.xgroup_setid(stream, GROUP, "0")
    stats = (await drain(client, ["binance"]))["binance"]
    assert stats.totals.skipped == n and stats.totals.processed == 0
    assert await all_candles(client, "binance") == candles
    assert await close_events(client, "binance") == closes
    assert await pending(client, "binance") == 0


async def test_the_same_frame_appended_twice_changes_nothing(client: aioredis.Redis) -> None:
    await ingest(client, "binance", BINANCE_0404)
    await drain(client, ["binance"])
    candles = await all_candles(client, "binance")
    closes = await close_events(client, "binance")
    await ingest(client, "binance", BINANCE_0404)  # every frame a second time, under new ids
    stats = (await drain(client, ["binance"]))["binance"]
    assert stats.totals.processed == 2028
    assert await all_candles(client, "binance") == candles
    assert await close_events(client, "binance") == closes


async def test_entries_delivered_before_a_crash_are_processed_on_restart(client: aioredis.Redis) -> None:
    await ingest(client, "coinbase", COINBASE_AT)
    # a consumer took 100 entries of every partition and died before committing anything
    for stream in await raw_streams(client, "coinbase"):
        await log.ensure_group(client, stream, GROUP)
        await log.read_group(client, stream, GROUP, "dead-worker", count=100, block_ms=None)
    assert await pending(client, "coinbase") > 100
    stats = (await drain(client, ["coinbase"]))["coinbase"]
    assert stats.claimed == 0 or stats.claimed > 100
    assert await pending(client, "coinbase") == 0
    # same result as a run that never crashed
    crashed = await all_candles(client, "coinbase")
    await client.flushdb()
    await ingest(client, "coinbase", COINBASE_AT)
    await drain(client, ["coinbase"])
    assert await all_candles(client, "coinbase") == crashed


async def test_malformed_frames_go_to_the_dead_letter_stream_and_the_rest_is_folded(client: aioredis.Redis) -> None:
    lines = require(BINANCE_0404).read_bytes().splitlines()
    kline = next(line for line in lines if b"btcusdt@kline_1m" in line)
    bad = [
        b"{not json",
        b'{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1617566600000,"s":"BTCUSDT"}}',
        kline.replace(b"btcusdt", b"fooxyz").replace(b"BTCUSDT", b"FOOXYZ"),  # a symbol not in the market list
    ]
    frames = [(lines[0], 1), *[(b, 2) for b in bad], *[(line, 3) for line in lines[1:]]]
    await log.append_frames(client, "binance", frames)
    stats = (await drain(client, ["binance"]))["binance"]
    assert stats.totals.dead == 3
    dead = await log.entries(client, keys.dead_letter_stream("binance"))
    by_frame = {fields[b"frame"]: fields[b"reason"].decode() for _, fields in dead}
    assert sorted(by_frame) == sorted(bad)  # partitions interleave: compare without order
    reasons = [by_frame[b] for b in bad]
    assert "not a frame" in reasons[0]
    assert "missing required field" in reasons[1]
    assert "FOOXYZ" in reasons[2] and "market list" in reasons[2]
    for _, fields in dead:  # each dead letter names the entry it came from
        original = await log.entries(client, fields[b"stream"].decode())
        assert dict(original)[fields[b"original_id"]][b"frame"] == fields[b"frame"]
    # everything after the bad frames was still folded
    clean = await all_candles(client, "binance")
    await client.flushdb()
    await ingest(client, "binance", BINANCE_0404)
    await drain(client, ["binance"])
    assert await all_candles(client, "binance") == clean
    assert await pending(client, "binance") == 0


def _process(redis_url: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tickfold.cli", "--redis-url", redis_url, "process", "--batch-size", "3", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TICKFOLD_LEASE_TTL_MS": "600"},  # a killed owner's partitions free up quickly
    )


async def _wait_for_progress(client: aioredis.Redis, exchange_id: str, at_least: int = 1) -> None:
    for _ in range(500):
        if await entries_read(client, exchange_id) >= at_least:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"processor made no progress on {exchange_id}")


async def test_kill_9_at_any_moment_loses_nothing_and_double_counts_nothing(redis_url: str) -> None:
    crash_url, clean_url = redis_url, redis_url.rsplit("/", 1)[0] + "/1"
    clean = aioredis.Redis.from_url(clean_url)
    crash = aioredis.Redis.from_url(crash_url)
    try:
        await clean.flushdb()
        for c in (clean, crash):
            for path in (BINANCE_0404, BINANCE_0814):
                await ingest(c, "binance", path)
            await ingest(c, "coinbase", COINBASE_AT)
        await drain(clean, ["binance", "coinbase"])
        for progress in (50, 400, 900):
            proc = _process(crash_url)
            await _wait_for_progress(crash, "binance", progress)
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
        await drain(crash, ["binance", "coinbase"], lease_ttl_ms=600)
        for ex in ("binance", "coinbase"):
            assert await all_candles(crash, ex) == await all_candles(clean, ex)
            assert sorted_closes(await close_events(crash, ex)) == sorted_closes(await close_events(clean, ex))
            assert await pending(crash, ex) == 0
    finally:
        await clean.flushdb()
        await clean.aclose()
        await crash.aclose()


async def test_sigterm_commits_the_batch_in_hand_and_exits_0(client: aioredis.Redis, redis_url: str) -> None:
    for _ in range(3):
        await ingest(client, "binance", BINANCE_0404)
    proc = _process(redis_url, "--exchange", "binance")
    await _wait_for_progress(client, "binance", 30)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    # nothing left delivered-but-unacked, and each stored position is the newest acked entry
    assert await pending(client, "binance") == 0
    for p, stream in enumerate(await raw_streams(client, "binance")):
        info = (await client.xinfo_groups(stream))[0]
        if info["last-delivered-id"] != b"0-0":  # (a partition no symbol hashed to has no position)
            assert info["last-delivered-id"] == await client.get(keys.projection_position("candles", "binance", p))
    assert b"frames folded" in out


async def test_a_market_listed_after_the_last_sync_is_folded_once_synced(client: aioredis.Redis) -> None:
    from processors.candles import CandleProcessor
    from processors.runner import Runner, RunnerConfig
    from streams.symbols import Market, load_symbol_map, store_markets

    kline = next(line for line in require(BINANCE_0404).read_bytes().splitlines() if b"btcusdt@kline_1m" in line)
    fresh = kline.replace(b"btcusdt", b"newusdt").replace(b"BTCUSDT", b"NEWUSDT")
    symbols = await load_symbol_map(client, "binance")

    def make(p: int) -> CandleProcessor:
        return CandleProcessor(
            "binance", p, symbols, history=100,
            refresh_symbols=lambda: load_symbol_map(client, "binance"), refresh_every_s=0.0,
        )  # fmt: skip

    await log.append_frames(client, "binance", [(fresh, 1)], partitions=2)
    runner = Runner(client, "binance", GROUP, 2, make, RunnerConfig(consumer="w"))
    assert (await runner.run(until_idle=True)).totals.dead == 1  # not in any market list yet
    await store_markets(client, "binance", [Market("binance", "NEWUSDT", "NEW", "USDT")])
    await log.append_frames(client, "binance", [(fresh, 2)])
    assert (await runner.run(until_idle=True)).totals.dead == 1  # the second one was folded
    folded = (await all_candles(client, "binance"))[("NEW-USDT", "1m", 1617566580000)]
    assert folded.trades == json.loads(fresh)["data"]["k"]["n"]


async def test_trimming_keeps_everything_not_yet_acknowledged(client: aioredis.Redis) -> None:
    from streams.trim import trim

    await ingest(client, "binance", BINANCE_0404)
    stream = (await raw_streams(client, "binance"))[0]
    n = await client.xlen(stream)
    await log.ensure_group(client, stream, GROUP)
    # the group has taken 100 entries and acknowledged the first 60; the next 40 are pending
    taken = await log.read_group(client, stream, GROUP, "w", count=100, block_ms=None)
    await client.xack(stream, GROUP, *[eid for eid, _ in taken[:60]])
    assert await trim(client, stream, (GROUP,), max_len=0, max_age_ms=0) == 60
    left = await log.entries(client, stream)
    assert len(left) == n - 60 and left[0][0] == taken[60][0]  # the oldest pending entry is kept
    # by count: with everything acknowledged, only the newest max_len stay
    await drain(client, ["binance"])
    assert await trim(client, stream, (GROUP,), max_len=25, max_age_ms=10**12) == n - 60 - 25
    assert [e[0] for e in await log.entries(client, stream)] == [e[0] for e in left[-25:]]
    # a group that has not read anything yet keeps the whole stream
    await client.xgroup_create(stream, "late", id="0")
    assert await trim(client, stream, (GROUP, "late"), max_len=0, max_age_ms=0) == 0
