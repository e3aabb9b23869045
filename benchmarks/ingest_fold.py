"""Append raw frames (pipelined XADD) and fold them into candles (the candle processor, one process).

Frames are the recorded Binance session, repeated with the kline event times shifted so every copy
is a new minute: the fold does real work (new candles, closes), not only redeliveries.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from benchmarks.harness import Figure, redis_benchmark_xadd
from processors.candles import CandleProcessor
from processors.runner import Runner, RunnerConfig
from streams import keys, log
from streams.partitions import streams
from streams.symbols import bundled

RECORDING = (
    Path(__file__).resolve().parents[1]
    / "tickfold/data/recordings/binance_2021-04-04_btcusdt_ethusdt_dotusdt.frames.jsonl"
)


def frames(copies: int) -> list[bytes]:
    lines = RECORDING.read_bytes().splitlines()
    out: list[bytes] = []
    for i in range(copies):
        shift = i * 120_000
        for line in lines:
            if b"@kline_" in line:
                msg = json.loads(line)
                k = msg["data"]["k"]
                k["t"] += shift
                k["T"] += shift
                msg["data"]["E"] += shift
                out.append(json.dumps(msg, separators=(",", ":")).encode())
            else:
                out.append(line)
    return out


async def _ingest(url: str, data: list[bytes]) -> float:
    client = aioredis.Redis.from_url(url)
    try:
        old = [k async for k in client.scan_iter("frames:binance*")]
        if old:
            await client.delete(*old)
        start = time.perf_counter()
        await log.append_frames(client, "binance", ((f, 0) for f in data), batch=1000)
        return len(data) / (time.perf_counter() - start)
    finally:
        await client.aclose()


async def _fold(url: str, n: int) -> float:
    client = aioredis.Redis.from_url(url)
    try:
        for key in [k async for k in client.scan_iter("candles:*")]:
            await client.delete(key)
        await client.delete(
            *[k async for k in client.scan_iter("proj:candles:binance:*")], keys.closes_stream("binance")
        )
        partitions = await log.ensure_partitions(client, "binance")
        for stream in streams("binance", partitions):
            await client.xgroup_destroy(stream, "candles")
        symbols = bundled("binance")

        def make(p: int) -> CandleProcessor:
            return CandleProcessor("binance", p, symbols, history=5000)

        runner = Runner(client, "binance", "candles", partitions, make, RunnerConfig(consumer="bench", batch_size=1000))
        start = time.perf_counter()
        stats = await runner.run(until_idle=True)
        elapsed = time.perf_counter() - start
        assert stats.totals.processed == n, stats
        return n / elapsed
    finally:
        await client.aclose()


async def _fold_processes(url: str, n: int, k: int) -> float:
    """Frames/s of K `tickfold process --until-idle` processes sharing the partitions, timed from the
    first entry read to the last one acknowledged (process start-up excluded)."""
    client = aioredis.Redis.from_url(url)
    try:
        for key in [k async for k in client.scan_iter("candles:*")]:
            await client.delete(key)
        stale = [k async for k in client.scan_iter("proj:candles:binance:*")]
        stale += [k async for k in client.scan_iter("lease:candles:binance:*")]
        await client.delete(*stale, keys.closes_stream("binance"), keys.workers("candles", "binance"))
        names = streams("binance", await log.ensure_partitions(client, "binance"))
        for stream in names:
            await client.xgroup_destroy(stream, "candles")
            await client.xgroup_create(stream, "candles", id="0")
        env = {**os.environ, "TICKFOLD_LEASE_TTL_MS": "600", "TICKFOLD_BATCH_SIZE": "1000"}
        cmd = [
            sys.executable,
            "-m",
            "tickfold.cli",
            "--redis-url",
            url,
            "process",
            "--exchange",
            "binance",
            "--until-idle",
        ]
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(k)]  # noqa: ASYNC220

        async def read_so_far() -> int:
            total = 0
            for stream in names:
                for g in await client.xinfo_groups(stream):
                    total += int(g["entries-read"] or 0) - int(g["pending"])
            return total

        while await read_so_far() == 0:  # noqa: ASYNC110 (polling Redis is the point)
            await asyncio.sleep(0.002)
        start = time.perf_counter()
        while await read_so_far() < n:  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - start
        for p in procs:
            p.wait(timeout=60)
        return n / elapsed
    finally:
        await client.aclose()


async def _bare_read_ack(url: str, n: int) -> float:
    """The ceiling of the fold: XREADGROUP COUNT 1000 + XACK and nothing else."""
    client = aioredis.Redis.from_url(url)
    names = streams("binance", await log.ensure_partitions(client, "binance"))
    try:
        for stream in names:
            await client.xgroup_create(stream, "bare", id="0", mkstream=True)
        start = time.perf_counter()
        done = 0
        while True:
            reply: Any = await client.xreadgroup("bare", "c", dict.fromkeys(names, ">"), count=1000)
            if not reply:
                break
            for stream, entries in reply:
                ids = [eid for eid, _ in entries]
                await client.xack(stream, "bare", *ids)
                done += len(ids)
        assert done == n
        return n / (time.perf_counter() - start)
    finally:
        for stream in names:
            await client.xgroup_destroy(stream, "bare")
        await client.aclose()


def run(url: str, port: int, *, quick: bool, repeats: int) -> list[Figure]:
    data = frames(5 if quick else 50)
    ceiling = [redis_benchmark_xadd(port, requests=100_000 if quick else 1_000_000) for _ in range(repeats)]
    ingest, fold, bare, fold1, fold2 = [], [], [], [], []
    for _ in range(repeats):
        ingest.append(asyncio.run(_ingest(url, data)))
        bare.append(asyncio.run(_bare_read_ack(url, len(data))))
        fold.append(asyncio.run(_fold(url, len(data))))
        fold1.append(asyncio.run(_fold_processes(url, len(data), 1)))
        fold2.append(asyncio.run(_fold_processes(url, len(data), 2)))
    xadd = sorted(ceiling)[len(ceiling) // 2]
    bare_median = sorted(bare)[len(bare) // 2]
    return [
        Figure("redis-benchmark XADD (50 clients, pipeline 128)", "req/s", ceiling),
        Figure("ingest: append_frames, pipelined XADD x1000", "frames/s", ingest, "redis-benchmark XADD", xadd),
        Figure("bare XREADGROUP 1000 + XACK (redis-py)", "entries/s", bare),
        Figure(
            f"fold: candle processor, 1 process ({len(data):,} frames)",
            "frames/s",
            fold,
            "bare XREADGROUP+XACK",
            bare_median,
        ),
        Figure("fold: `tickfold process`, 1 process", "frames/s", fold1, "bare XREADGROUP+XACK", bare_median),
        Figure("fold: `tickfold process`, 2 processes", "frames/s", fold2, "bare XREADGROUP+XACK", bare_median),
    ]
