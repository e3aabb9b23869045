"""Replay in the suite: archive -> candles (-> MACD-V and alerts), frames per CPU second, and archive bytes
per frame.

The inputs and the setup are :mod:`benchmarks.replay_speed`'s (which also times each stage): a private
PostgreSQL holding the archive and a private Redis holding the raw streams, filled by the archiver as
``tickfold archive --until-idle`` fills them and trimmed but for the newest tenth, and a private Redis the
replay folds into.

* Binance: the recorded session (1m klines + aggTrades, 94 % aggTrades) repeated 200 times with the klines
  shifted to new minutes (405,600 frames; ``--quick``: 20 times).
* Coinbase: the synthetic day, a ``market_trades`` frame every 5 s per product (206,633 frames; ``--quick``:
  every 20 s), every frame feeding 1m trade candles: 12 frames per product and minute.
* Coinbase at 1 s (``coinbase_1s``, in memory only): the first 6 hours of the synthetic day at a frame every
  second per product (258,300 frames; ``--quick``: the first 30 minutes), 60 frames per product and minute,
  nearer the recorded session's ~74 (59 ``market_trades`` frames of BTC-USD and ETH-USD in 24 s). A replay
  spends per frame and per candle; this input shows the first, the one above the second.

Each figure is the whole ``tickfold replay --to-end`` (``tickfold.replay.replay_into``: plan, archive then
stream, fold, write the target, the range's result) in frames per CPU second of this process: the issue's
"on one core" (the servers' CPU, on the other core, is in the note with the wall rate). The ceiling is
the bare msgspec decode loop (``ceiling.decode``): decoding every frame's needed fields, nothing else. The
issue's target, 1,000,000 frames/s into candles and MACD-V, is set on the ``--in-memory`` replays with
MACD-V of both inputs. Archive bytes per frame: the payload of the blocks the archiver wrote for the input.
Peak memory: the most memory an ``--in-memory`` replay with MACD-V had allocated at once (tracemalloc's
peak: Python objects and numpy arrays, the process's fixed footprint of code and imports not counted), in a
process of its own, and that over the candles of the range it returned: a replay holds the candles, points
and alerts of its whole range until it writes them, so this is what a longer range costs.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import asyncpg
import uvloop

from benchmarks.harness import Context, Figure, Target
from benchmarks.replay_speed import DAY_START_MS, _archive_and_trim, _cpu_s, private_servers
from migrations.runner import migrate
from processors.replay import ReplayOptions
from streams import log
from tickfold.replay import replay_into
from tickfold.settings import Settings

WINDOWS = {"binance": (1_617_000_000_000, 1_620_000_000_000), "coinbase": (DAY_START_MS, DAY_START_MS + 86_400_000)}
KINDS = (  # (key, how, in memory, MACD-V)
    ("memory_candles", "--in-memory -> candles", True, False),
    ("memory_macdv", "--in-memory -> candles -> MACD-V and alerts", True, True),
    ("redis_candles", "through Redis (the live fold code) -> candles", False, False),
)
INPUTS = {"binance": "binance", "coinbase": "coinbase", "coinbase_1s": "coinbase"}  # input -> its exchange
IN_MEMORY_ONLY = {"coinbase_1s"}
Runs = dict[str, list[tuple[float, float, float]]]


def _kinds(name: str) -> tuple[tuple[str, str, bool, bool], ...]:
    return tuple(k for k in KINDS if k[2] or name not in IN_MEMORY_ONLY)


async def _peak(dsn: str, source_url: str, target_url: str, exchange_id: str) -> tuple[float, int]:
    """An ``--in-memory`` replay with MACD-V of ``exchange_id``'s input into an emptied target, under
    tracemalloc: (the peak of the memory it allocated, MB; candles it returned)."""
    settings = Settings.load({}, overrides={"indicators": True})
    options = ReplayOptions(*WINDOWS[exchange_id], to_end=True, in_memory=True)
    async with log.connect(source_url) as source, log.connect(target_url, reply_timeout=None) as target:
        await target.flushdb()
        tracemalloc.start()
        try:
            result, _ = await replay_into(source, target, settings, exchange_id, options, dsn=dsn)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        await target.flushdb()
    return peak / 2**20, len(result.candles)


def peak_main(argv: list[str]) -> None:
    """``python -c 'from benchmarks.replay import peak_main; peak_main([DSN, SOURCE, TARGET, EXCHANGE])'``:
    :func:`_peak` in a process of its own, printed as JSON."""
    print(json.dumps(uvloop.run(_peak(*argv))))


def _peak_in_child(dsn: str, source_url: str, target_url: str, exchange_id: str) -> tuple[float, int]:
    code = "import sys; from benchmarks.replay import peak_main; peak_main(sys.argv[1:])"
    args = [sys.executable, "-c", code, dsn, source_url, target_url, exchange_id]
    done = subprocess.run(args, capture_output=True, text=True, check=False, cwd=Path(__file__).parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"the peak-memory replay of {exchange_id} failed: {done.stderr.strip()[-2000:]}")
    rise, candles = json.loads(done.stdout.strip().splitlines()[-1])
    return float(rise), int(candles)


async def _measure(
    ctx: Context, dsn: str, source_url: str, target_url: str, servers: list[int]
) -> tuple[Runs, dict[str, tuple[int, float]], dict[str, list[tuple[float, int]]]]:
    """(figure key -> per run (frames per CPU s, per wall s, per CPU s with the servers)), per input (frames,
    archive payload bytes per frame), and per input the in-memory MACD-V runs' (peak RSS rise in MB,
    candles returned)."""
    from benchmarks.ingest_fold import frames as binance_frames
    from tests.synthetic import synthetic_day

    await migrate(dsn)
    runs: Runs = {}
    sizes: dict[str, tuple[int, float]] = {}
    peaks: dict[str, list[tuple[float, int]]] = {}
    inputs: dict[str, Callable[[], list[bytes]]] = {
        "binance": lambda: binance_frames(20 if ctx.quick else 200),
        "coinbase": lambda: synthetic_day(every_ms=20_000 if ctx.quick else 5_000),
        "coinbase_1s": lambda: synthetic_day(every_ms=1_000, hours=0.5 if ctx.quick else 6),
    }
    async with log.connect(source_url) as source, log.connect(target_url, reply_timeout=None) as target:
        for name, data in inputs.items():
            exchange_id = INPUTS[name]
            frames = data()
            await _archive_and_trim(source, dsn, exchange_id, frames)
            conn = await asyncpg.connect(dsn)
            try:
                payload = await conn.fetchval(
                    "SELECT sum(octet_length(payload)) FROM archive_blocks WHERE stream LIKE $1",
                    f"frames:{exchange_id}:%",
                )
                archived = await conn.fetchval(
                    "SELECT sum(entries) FROM archive_blocks WHERE stream LIKE $1", f"frames:{exchange_id}:%"
                )
            finally:
                await conn.close()
            sizes[name] = (len(frames), int(payload) / int(archived))
            warm = Settings.load({}, overrides={"indicators": True})  # numba's kernels loaded before timing
            await target.flushdb()
            options = ReplayOptions(*WINDOWS[exchange_id], to_end=True, in_memory=True)
            await replay_into(source, target, warm, exchange_id, options, dsn=dsn)
            for _ in range(ctx.repeats):  # interleaved: a slow spell of a shared machine hits every kind
                for key, _, in_memory, macdv in _kinds(name):
                    settings = Settings.load({}, overrides={"indicators": macdv})
                    options = ReplayOptions(*WINDOWS[exchange_id], to_end=True, in_memory=in_memory)
                    await target.flushdb()
                    servers_before = sum(_cpu_s(pid) for pid in servers)
                    wall, cpu = time.perf_counter(), time.process_time()
                    _, stats = await replay_into(source, target, settings, exchange_id, options, dsn=dsn)
                    spent = max(time.process_time() - cpu, 1e-9)
                    took = time.perf_counter() - wall
                    others = sum(_cpu_s(pid) for pid in servers) - servers_before
                    runs.setdefault(f"{name}.{key}", []).append(
                        (stats.frames / spent, stats.frames / took, stats.frames / (spent + others))
                    )
            peaks[name] = [
                await asyncio.to_thread(_peak_in_child, dsn, source_url, target_url, exchange_id)
                for _ in range(ctx.repeats)
            ]
            await source.flushdb()
            await target.flushdb()
            conn = await asyncpg.connect(dsn)
            try:  # the next input starts from an empty archive (two inputs of one exchange would mix)
                await conn.execute("TRUNCATE archive_blocks, archive_positions")
            finally:
                await conn.close()
    return runs, sizes, peaks


def run(ctx: Context) -> list[Figure]:
    decode = ctx.ceilings.decode()
    with private_servers() as at:
        work = _measure(ctx, at.dsn, at.source_url, at.target_url, at.pids)
        runs, sizes, peaks = uvloop.run(work)  # as `tickfold replay` runs
    figures: list[Figure] = []
    for name, (frames, per_frame) in sizes.items():
        for key, how, in_memory, macdv in _kinds(name):
            got = runs[f"{name}.{key}"]
            wall = statistics.median(r[1] for r in got)
            every = statistics.median(r[2] for r in got)
            figures.append(
                Figure(
                    f"replay {name} {how} ({frames:,} frames)",
                    "frames/CPU s",
                    [r[0] for r in got],
                    "bare decode",
                    decode,
                    note=f"{wall:,.0f} frames per wall second; {every:,.0f} per CPU second of the replay and the "
                    "PostgreSQL and Redis servers together",
                    key=f"replay.{name}.{key}",
                    target=Target(1_000_000) if in_memory and macdv else None,
                )
            )
        rises = [mb for mb, _ in peaks[name]]
        candles = peaks[name][0][1]
        figures.append(
            Figure(
                f"replay {name} --in-memory -> MACD-V: peak memory allocated (tracemalloc)",
                "MB",
                rises,
                note=f"{candles:,} candles of all timeframes returned: what the fold holds; the rest is a batch's "
                "working set (frames, their columns, what they fold into)",
                key=f"replay.{name}.peak_mb",
            )
        )
        figures.append(
            Figure(
                f"archive bytes per frame, {name} (blocks as tickfold archive --until-idle writes them)",
                "B/frame",
                [per_frame],
                key=f"archive.{name}.bytes_per_frame",
            )
        )
    return figures
