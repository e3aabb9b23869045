"""Append raw frames (pipelined XADD) and fold them into candles (the candle processor, one process).

Frames are the recorded Binance session, repeated with the kline event times shifted so every copy
is a new minute: the fold does real work (new candles, closes), not only redeliveries.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import redis.asyncio as aioredis

from benchmarks.adapter_ingest import cpu_seconds
from benchmarks.harness import RECORDING, Context, Figure, Target, recorded_frames
from processors.candles import CandleProcessor, from_settings
from processors.runner import Runner, RunnerConfig
from streams import keys, log
from streams.frames import decode_frame
from streams.partitions import streams
from streams.symbols import bundled
from tickfold.cli import tune_gc
from tickfold.settings import Settings

RECORDED_SYMBOLS = ("BTCUSDT", "ETHUSDT", "DOTUSDT")


def frames(copies: int) -> list[bytes]:
    """``copies`` of the recorded session, each two minutes later than the one before and with its three
    symbols renamed to three other listed USDT markets: the frames spread over the partitions as a
    feed of many symbols does (the three recorded symbols alone put 73 % of the frames in one of the 4
    partitions, which would cap 2 processes at 1.37x one)."""
    lines = RECORDING.read_bytes().splitlines()
    markets = [s for s in bundled("binance").markets if s.endswith("USDT")]
    out: list[bytes] = []
    for i in range(copies):
        shift = i * 120_000
        names = {old: markets[(3 * i + j) % len(markets)] for j, old in enumerate(RECORDED_SYMBOLS)}
        renames = [(o.lower().encode(), n.lower().encode()) for o, n in names.items()]
        renames += [(f'"s":"{o}"'.encode(), f'"s":"{n}"'.encode()) for o, n in names.items()]
        for line in lines:
            if b"@kline_" in line:
                msg = json.loads(line)
                k = msg["data"]["k"]
                k["t"] += shift
                k["T"] += shift
                msg["data"]["E"] += shift
                line = json.dumps(msg, separators=(",", ":")).encode()
            for old, new in renames:
                line = line.replace(old, new)
            out.append(line)
    return out


async def _ingest(url: str, data: list[bytes]) -> float:
    async with log.connect(url, reply_timeout=None) as client:  # as the adapters' sink connects
        old = [k async for k in client.scan_iter("frames:binance*")]
        if old:
            await client.delete(*old)
        start = time.perf_counter()
        await log.append_frames(client, "binance", ((f, 0) for f in data), batch=1000)
        return len(data) / (time.perf_counter() - start)


async def _fold(url: str, n: int) -> float:
    async with log.connect(url) as client:  # as `tickfold process` connects
        for key in [k async for k in client.scan_iter("candles:*")]:
            await client.delete(key)
        await client.delete(
            *[k async for k in client.scan_iter("proj:candles:binance:*")], keys.closes_stream("binance")
        )
        partitions = await log.ensure_partitions(client, "binance")
        for stream in streams("binance", partitions):
            if await client.exists(stream):
                await client.xgroup_destroy(stream, "candles")
        symbols = bundled("binance")

        settings = Settings()  # the default configuration, roll-ups included, as `tickfold process` runs it

        def make(p: int) -> CandleProcessor:
            return from_settings(settings, "binance", p, symbols, history=settings.candle_history)

        config = RunnerConfig(consumer="bench", batch_size=settings.batch_size)
        runner = Runner(client, "binance", "candles", partitions, make, config)
        thresholds = gc.get_threshold()
        tune_gc()  # as `tickfold process` runs, and on a client as its runners get (tickfold.commands)
        try:
            async with log.without_reply_timeout(client) as hot:
                runner.use(hot)
                start = time.perf_counter()
                stats = await runner.run(until_idle=True)
                elapsed = time.perf_counter() - start
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()
        assert stats.totals.processed == n, stats
        return n / elapsed


async def _fold_processes(url: str, n: int, k: int) -> tuple[float, list[float]]:
    """Frames/s of K `tickfold process --until-idle` processes sharing the partitions, timed from the
    first entry delivered to the last one acknowledged (process start-up excluded), and the share of a core
    each process, then Redis, used meanwhile."""
    client = aioredis.Redis.from_url(url)
    try:
        for key in [k async for k in client.scan_iter("candles:*")]:
            await client.delete(key)
        stale = [k async for k in client.scan_iter("proj:candles:binance:*")]
        stale += [k async for k in client.scan_iter("lease:candles:binance:*")]
        await client.delete(*stale, keys.closes_stream("binance"), keys.workers("candles", "binance"))
        names = streams("binance", await log.ensure_partitions(client, "binance"))
        for stream in names:
            if await client.exists(stream):
                await client.xgroup_destroy(stream, "candles")
            await client.xgroup_create(stream, "candles", id="0", mkstream=True)
        env = {**os.environ, "TICKFOLD_LEASE_TTL_MS": "600"}
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

        async def read_so_far(*, acked: bool) -> int:
            total = 0
            for stream in names:
                for g in await client.xinfo_groups(stream):
                    total += int(g["entries-read"] or 0) - (int(g["pending"]) if acked else 0)
            return total

        redis_pid = int((await client.info("server"))["process_id"])
        pids = [p.pid for p in procs] + [redis_pid]
        while await read_so_far(acked=False) == 0:  # noqa: ASYNC110 (polling Redis is the point)
            await asyncio.sleep(0.002)
        start, cpu0 = time.perf_counter(), [cpu_seconds(pid) for pid in pids]
        while await read_so_far(acked=True) < n:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        shares = [(cpu_seconds(pid) - c) / elapsed for pid, c in zip(pids, cpu0, strict=True)]
        for p in procs:
            p.wait(timeout=60)
        return n / elapsed, shares
    finally:
        await client.aclose()


def _shares(runs: list[list[float]]) -> str:
    """The median share of a core of each process, then of Redis, over the runs."""
    medians = [statistics.median(col) for col in zip(*runs, strict=True)]
    procs = ", ".join(f"{m:.0%}" for m in medians[:-1])
    return f"share of a core while folding: tickfold process {procs}; Redis {medians[-1]:.0%} (2 cores in all)"


def _decode_rate(data: list[bytes], rounds: int) -> float:
    """Frames/s of tickfold's own decoder (envelope, then the typed event) over recorded frames."""
    start = time.perf_counter()
    for _ in range(rounds):
        for raw in data:
            decode_frame("binance", raw)
    return len(data) * rounds / (time.perf_counter() - start)


def run(ctx: Context) -> list[Figure]:
    data = frames(5 if ctx.quick else 200)  # ~3 s of folding a run: lease balancing at start is a small part
    xadd, bare, bare_decode = ctx.ceilings.xadd_pipelined(), ctx.ceilings.read_ack(), ctx.ceilings.decode()
    recorded = recorded_frames()
    decode, ingest, fold, fold1, fold2 = [], [], [], [], []
    cpu1: list[list[float]] = []
    cpu2: list[list[float]] = []
    for _ in range(ctx.repeats):
        decode.append(_decode_rate(recorded, 2 if ctx.quick else 10))
        ingest.append(asyncio.run(_ingest(ctx.url, data)))
        fold.append(asyncio.run(_fold(ctx.url, len(data))))
        rate, shares = asyncio.run(_fold_processes(ctx.url, len(data), 1))
        fold1.append(rate)
        cpu1.append(shares)
        rate, shares = asyncio.run(_fold_processes(ctx.url, len(data), 2))
        fold2.append(rate)
        cpu2.append(shares)
    read_ack, decode_ceiling = "bare XREADGROUP+XACK", "bare msgspec decode"
    return [
        Figure("decode: tickfold decode_frame, recorded Binance frames", "frames/s", decode, decode_ceiling,
               bare_decode, key="decode.decode_frame"),
        Figure("ingest: append_frames, pipelined XADD x1000", "frames/s", ingest, "redis-benchmark XADD", xadd,
               key="ingest.append_frames"),
        Figure(f"fold: candle processor in-process ({len(data):,} frames)", "frames/s", fold, read_ack, bare,
               more_ceilings=[(decode_ceiling, bare_decode)], key="fold.in_process", target=Target(0.7, of=read_ack)),
        Figure("fold: `tickfold process`, 1 process", "frames/s", fold1, read_ack, bare, key="fold.process_1",
               note=_shares(cpu1),
               target=Target(150_000)),
        Figure("fold: `tickfold process`, 2 processes", "frames/s", fold2, read_ack, bare, key="fold.process_2",
               note=_shares(cpu2),
               more_ceilings=[("1 process", statistics.median(fold1))], target=Target(1.6, of="1 process")),
    ]  # fmt: skip
