"""``python -m benchmarks.replay_speed [--quick] [--exchange E] [--rounds N] [--replays]``: replay frames/s,
archive -> candles -> MACD-V.

Private servers only: a PostgreSQL (the archive), a Redis holding the raw streams, and a Redis the replay
folds into. Two inputs, each archived by the archiver and then trimmed from the streams but for the newest
tenth, so a replay reads the archive and then the stream:

* Coinbase: the synthetic day (``tests.synthetic``) at a ``market_trades`` frame every 5 s per product
  (206,633 frames; ``--quick``: every 20 s): every frame feeds 1m trade candles.
* Binance: the recorded session (1m klines + aggTrades, 94 % aggTrades) repeated 200 times with the
  klines shifted to new minutes (``benchmarks.ingest_fold.frames``; 405,600 frames; ``--quick``: 20).

Printed, as the median (min, max) of the runs, interleaved (one run of each figure per round): each stage
alone — the archive read as columns (``read_frames``: the stored kind and event-time columns, entries
built only on demand) and as entries (``read_archived``), the replay source (archive + stream, as the
replay reads it), the in-memory fold of the columns alone (``MemoryCandles.fold_frames``, from frames read
beforehand) and, for comparison, of the entries one by one (``MemoryCandles.fold``) — then the whole
replay (``tickfold.replay.replay_into``) through Redis and ``--in-memory``, with and without the
indicator processor. Rates are frames per wall second, per CPU second of this process
(``time.process_time``), and per CPU second of this process and the PostgreSQL and Redis servers together
(``/proc``): the machine's two cores are shared, so the CPU figures are the ones to compare. The README's
*Replay* figures come from here.

The clients and the event loop are the ``tickfold replay`` command's: ``log.connect`` (hiredis packing, pipelines
read in one loop; the target without a per-reply timeout) under uvloop. ``--exchange`` measures one input,
``--rounds`` sets the rounds (default 3), ``--replays`` measures only the whole replays (not each stage).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import redis.asyncio as aioredis
import uvloop

from migrations.runner import migrate
from processors.archiver import GROUP as ARCHIVE
from processors.archiver import run_archiver
from processors.memory_fold import MemoryCandles
from processors.replay import ReplayOptions, candle_processor, few_collections
from processors.replay_source import frames, plan
from streams import archive, keys, log
from streams.archive_columns import Frames
from streams.symbols import load_symbol_map
from streams.trim import trim
from tickfold.commands_archive import archiver_config
from tickfold.embedded import start_postgres, start_redis
from tickfold.replay import MEMORY_BATCH, replay_into
from tickfold.settings import Settings

DAY_START_MS = 1_786_233_600_000
RUNS = 3
Work = Callable[[], Awaitable[int]]


_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """CPU seconds of a server process: its own, its reaped children's, and its live children's (PostgreSQL
    serves each connection in a child)."""

    def fields(stat: str) -> list[str]:
        return stat.rsplit(")", 1)[1].split()  # state, ppid, ... (/proc/PID/stat after the command name)

    try:
        own = fields(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return 0.0
    total = sum(int(v) for v in own[11:15])  # utime, stime, cutime, cstime
    for child in Path("/proc").iterdir():
        if child.name.isdigit():
            try:
                f = fields((child / "stat").read_text())
            except OSError:
                continue
            if f[1] == str(pid):
                total += int(f[11]) + int(f[12])
    return total * _TICK_S


async def _interleaved(rounds: int, figures: list[tuple[str, Work]], servers: list[int]) -> list[str]:
    """Each figure ``rounds`` times, one of each per round (so slow spells of a shared machine hit all).
    Rates per wall second, per CPU second of this process, and per CPU second of this process and the
    servers (``servers``: the PostgreSQL and Redis pids) together."""
    wall: dict[str, list[float]] = {name: [] for name, _ in figures}
    cpu: dict[str, list[float]] = {name: [] for name, _ in figures}
    every: dict[str, list[float]] = {name: [] for name, _ in figures}
    for _ in range(rounds):
        for name, work in figures:
            gc.collect()
            start, start_cpu = time.perf_counter(), time.process_time()
            start_servers = sum(_cpu_s(pid) for pid in servers)
            n = await work()
            spent = max(time.process_time() - start_cpu, 1e-9)
            wall[name].append(n / (time.perf_counter() - start))
            cpu[name].append(n / spent)
            every[name].append(n / max(spent + sum(_cpu_s(pid) for pid in servers) - start_servers, 1e-9))
    return [
        f"{name}: {statistics.median(wall[name]):,.0f} frames/s (min {min(wall[name]):,.0f}, max "
        f"{max(wall[name]):,.0f}); per CPU second: {statistics.median(cpu[name]):,.0f} (this process), "
        f"{statistics.median(every[name]):,.0f} (with the servers)"
        for name, _ in figures
    ]


async def _archive_and_trim(source: aioredis.Redis, dsn: str, exchange_id: str, frames: list[bytes]) -> str:
    await log.append_frames(source, exchange_id, [(f, 0) for f in frames], partitions=4)
    config = archiver_config(Settings.load({}))  # as `tickfold archive --until-idle` archives
    archiver = replace(config, runner=replace(config.runner, consumer="bench", block_ms=50, lease_ttl_ms=1000))
    await run_archiver(source, dsn, [exchange_id], archiver, until_idle=True)
    kept = 0
    for p in range(4):
        stream = keys.frames_stream(exchange_id, p)
        length = int(await source.xlen(stream))
        await trim(source, stream, (ARCHIVE,), max_len=length // 10, max_age_ms=10**13)
        kept += int(await source.xlen(stream))
    return f"{len(frames):,} frames, {len(frames) - kept:,} of them only in the archive, {kept:,} in the streams"


def _stages(source: aioredis.Redis, dsn: str, exchange_id: str) -> list[tuple[str, Work]]:
    streams = [keys.frames_stream(exchange_id, p) for p in range(4)]

    async def read_columns() -> int:
        n = 0
        for stream in streams:
            async for block in archive.read_frames(dsn, stream):
                n += len(block)
        return n

    async def read_entries() -> int:
        n = 0
        for stream in streams:
            async for chunk in archive.read_archived(dsn, stream, batch=5000):
                n += len(chunk)
        return n

    async def source_read() -> int:
        sources = await plan(source, exchange_id, dsn)
        n = 0
        for part in sources.parts:
            async for chunk in frames(source, sources, part, size=MEMORY_BATCH):
                n += len(chunk)
        return n

    read: dict[int, list[Frames]] = {}

    async def fold(columns: bool) -> int:
        if not read:
            sources = await plan(source, exchange_id, dsn)
            for part in sources.parts:
                read[part.partition] = [c async for c in frames(source, sources, part, size=MEMORY_BATCH)]
        settings = Settings.load({}, overrides={"indicators": False})
        symbols = await load_symbol_map(source, exchange_id)
        n = 0
        with few_collections():  # as the replay folds
            for p, chunks in read.items():
                memory = MemoryCandles(candle_processor(settings, exchange_id, p, symbols, history=10**9))
                for batch in _batches(chunks):
                    await (
                        memory.fold_frames(batch) if columns else memory.fold([e for c in batch for e in c.entries()])
                    )
                n += memory.frames
        return n

    async def fold_columns() -> int:
        return await fold(True)

    async def fold_entries() -> int:
        return await fold(False)

    return [
        ("archive read as columns (read_frames, entries not built)", read_columns),
        ("archive read as entries (read_archived, 5,000 a batch)", read_entries),
        ("replay source: archive + stream, as columns", source_read),
        ("memory fold of the columns alone (fold_frames)", fold_columns),
        ("memory fold of the entries one by one (fold)", fold_entries),
    ]


def _batches(chunks: list[Frames]) -> list[list[Frames]]:
    """Consecutive chunks in batches of at most ``MEMORY_BATCH`` entries, as the replay feeds them."""
    out: list[list[Frames]] = []
    size = MEMORY_BATCH
    for chunk in chunks:
        if size + len(chunk) > MEMORY_BATCH:
            out.append([])
            size = 0
        out[-1].append(chunk)
        size += len(chunk)
    return out


def _replays(
    source: aioredis.Redis, target: aioredis.Redis, dsn: str, exchange_id: str, window: tuple[int, int]
) -> list[tuple[str, Work]]:
    def replay(indicators: bool, in_memory: bool) -> Work:
        settings = Settings.load({}, overrides={"indicators": indicators})
        options = ReplayOptions(window[0], window[1], to_end=True, in_memory=in_memory)

        async def run() -> int:
            await target.flushdb()
            _, stats = await replay_into(source, target, settings, exchange_id, options, dsn=dsn)
            return stats.frames

        return run

    return [
        ("replay --in-memory: archive -> candles", replay(False, True)),
        ("replay --in-memory: archive -> candles -> MACD-V and alerts", replay(True, True)),
        ("replay through Redis: archive -> candles", replay(False, False)),
        ("replay through Redis: archive -> candles -> MACD-V and alerts", replay(True, False)),
    ]


async def measure(
    dsn: str,
    source_url: str,
    target_url: str,
    quick: bool,
    servers: list[int],
    *,
    exchanges: tuple[str, ...] = ("binance", "coinbase"),
    rounds: int = RUNS,
    stages: bool = True,
) -> list[str]:
    from benchmarks.ingest_fold import frames as binance_frames
    from tests.synthetic import synthetic_day

    await migrate(dsn)
    lines: list[str] = []
    async with log.connect(source_url) as source, log.connect(target_url, reply_timeout=None) as target:
        copies = 20 if quick else 200
        inputs = [
            ("binance", f"Binance: the recorded session x{copies} (1m klines + aggTrades)", binance_frames),
            ("coinbase", "Coinbase: the synthetic day (market_trades -> 1m trade candles, roll-ups to 1d)",
             lambda _: synthetic_day(every_ms=20_000 if quick else 5_000)),
        ]  # fmt: skip
        windows = {
            "binance": (1_617_000_000_000, 1_620_000_000_000),
            "coinbase": (DAY_START_MS, DAY_START_MS + 86_400_000),
        }
        for exchange_id, name, data in inputs:
            if exchange_id not in exchanges:
                continue
            lines.append(f"{name}: {await _archive_and_trim(source, dsn, exchange_id, data(copies))}")
            figures = [
                *(_stages(source, dsn, exchange_id) if stages else []),
                *_replays(source, target, dsn, exchange_id, windows[exchange_id]),
            ]
            lines.extend(f"  {line}" for line in await _interleaved(rounds, figures, servers))
    return lines


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replay_speed")
    parser.add_argument("--quick", action="store_true", help="a tenth of the data")
    parser.add_argument("--exchange", choices=("binance", "coinbase"), help="measure this input only")
    parser.add_argument("--rounds", type=int, default=RUNS, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--replays", action="store_true", help="only the whole replays, not each stage")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Servers:
    dsn: str  # the archive's PostgreSQL
    source_url: str  # the Redis holding the raw streams
    target_url: str  # the Redis a replay folds into
    pids: list[int]  # the servers' processes (their CPU is counted beside the replay's)


@contextlib.contextmanager
def private_servers() -> Iterator[Servers]:
    """A private PostgreSQL and two private Redis servers (no persistence), stopped and removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o755)  # as root, PostgreSQL runs as an unprivileged user who must reach it
        pg = start_postgres(Path(tmp) / "pg", fsync=False)
        source = start_redis(Path(tmp) / "source", appendonly=False)
        target = start_redis(Path(tmp) / "target", appendonly=False)
        try:
            postmaster = int((Path(tmp) / "pg" / "postmaster.pid").read_text().split()[0])
            yield Servers(pg.dsn, source.url, target.url, [postmaster, source.pid, target.pid])
        finally:
            target.stop()
            source.stop()
            pg.stop()


def main(argv: list[str] | None = None) -> int:
    args = _args(sys.argv[1:] if argv is None else argv)
    exchanges = (args.exchange,) if args.exchange else ("binance", "coinbase")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with private_servers() as at:
        work = measure(
            at.dsn,
            at.source_url,
            at.target_url,
            args.quick,
            at.pids,
            exchanges=exchanges,
            rounds=args.rounds,
            stages=not args.replays,
        )
        for line in uvloop.run(work):  # as `tickfold replay` runs
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
