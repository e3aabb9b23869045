"""Shared benchmark machinery: a private Redis, the machine description, figures, and the ceilings.

The ceilings are the limits of what tickfold is built on, measured in the same run as the figures
that are divided by them (machines are noisy: a ceiling from another day says little):

* redis-benchmark's XADD, 50 clients with pipelines of 128 (Redis's own append limit) and 1 client
  without a pipeline (one round trip per append);
* a bare redis-py XREADGROUP COUNT 1000 + XACK loop (what any consumer pays before doing anything);
* a bare msgspec decode loop of recorded Binance frames (the needed fields, one tagged union).

Each is measured once per run, on first use, ``repeats`` times, and reported as a figure of its own.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis

from tickfold.embedded import EmbeddedRedis, find_redis_server, start_redis

VALUE_322 = "x" * 322  # the size of a typical Binance aggTrade frame
RECORDING = (
    Path(__file__).resolve().parents[1]
    / "tickfold/data/recordings/binance_2021-04-04_btcusdt_ethusdt_dotusdt.frames.jsonl"
)


@dataclass(frozen=True)
class Target:
    """The issue's target: the median (``of`` empty) or its ratio to the ceiling named ``of``, at least
    (``at_least``) or at most ``value``."""

    value: float
    at_least: bool = True
    of: str = ""

    def __str__(self) -> str:
        return f"{'>=' if self.at_least else '<='} {fmt(self.value)}" + (f" x {self.of}" if self.of else "")


@dataclass
class Figure:
    name: str
    unit: str
    runs: list[float]
    ceiling_name: str = ""
    ceiling: float | None = None
    note: str = ""
    more_ceilings: list[tuple[str, float]] = field(default_factory=list)  # further (name, value) to compare with
    key: str = ""  # a stable id (JSON consumers, the smoke test); the name may carry sizes
    target: Target | None = None  # the target for this figure, if it has one
    verdict: str = ""  # filled by judge(): "met" or by how much it is missed

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def judge(self) -> str:
        """Set and return :attr:`verdict` against :attr:`target` ("" without one)."""
        t = self.target
        if t is None:
            return ""
        value = self.median if not t.of else dict(self.ratios()).get(t.of)
        if value is None:
            self.verdict = f"no {t.of} to compare with"
        elif (value >= t.value) if t.at_least else (value <= t.value):
            self.verdict = "met"
        elif t.at_least:
            self.verdict = f"missed: {fmt(value)}, {value / t.value:.2f} of the target"
        else:
            self.verdict = f"missed: {fmt(value)}, {value / t.value:,.3g}x the limit"
        return self.verdict

    @property
    def ratio(self) -> float | None:
        return self.median / self.ceiling if self.ceiling else None

    def ratios(self) -> list[tuple[str, float]]:
        """(ceiling name, median / ceiling) for the main ceiling and every further one."""
        pairs = ([(self.ceiling_name, self.ceiling)] if self.ceiling else []) + self.more_ceilings
        return [(name, self.median / value) for name, value in pairs if value]


@dataclass
class Report:
    machine: dict[str, str]
    figures: list[Figure] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each benchmark


def machine() -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    redis_version = subprocess.run(
        [find_redis_server()[0], "--version"], capture_output=True, text=True
    ).stdout.split()[2:3]
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{mem_kb / 1024 / 1024:.0f} GiB",
        "python": platform.python_version(),
        "redis": redis_version[0] if redis_version else "?",
        "kernel": platform.release(),
        "load": "1-min load average at start " + Path("/proc/loadavg").read_text().split()[0],  # others' work skews it
    }


@contextmanager
def private_redis() -> Iterator[EmbeddedRedis]:
    """A fresh redis-server with no persistence (like the machine's own), on a free port."""
    root = Path(tempfile.mkdtemp(prefix="tickfold-bench-"))
    server = start_redis(root / "redis", appendonly=False)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def redis_benchmark_xadd(port: int, *, requests: int, clients: int = 50, pipeline: int = 128) -> float:
    """XADD requests/s that Redis itself sustains (redis-benchmark, 322-byte value)."""
    binary = shutil.which("redis-benchmark", path="/usr/bin:/usr/local/bin") or shutil.which("redis-benchmark")
    if binary is None:
        raise RuntimeError("redis-benchmark not found: apt-get install redis-tools (comes with redis-server)")
    out = subprocess.run(
        [binary, "-p", str(port), "-n", str(requests), "-c", str(clients), "-P", str(pipeline), "-q",
         "XADD", "bench:ceiling", "*", "f", VALUE_322],
        capture_output=True, text=True, timeout=300,
    ).stdout  # fmt: skip
    found = re.findall(r"([\d.]+) requests per second", out)
    if not found:
        raise RuntimeError(f"could not read redis-benchmark's output: {out[-300:]}")
    subprocess.run([binary.replace("redis-benchmark", "redis-cli"), "-p", str(port), "DEL", "bench:ceiling"],
                   capture_output=True)  # fmt: skip
    return float(found[-1])


# ------------------------------------------------------------------------------------ bare read + ack

READ_ACK_STREAM = "bench:ceiling:read"


async def bare_read_ack(url: str, n: int) -> float:
    """Entries/s of XREADGROUP COUNT 1000 + XACK and nothing else, plain redis-py asyncio, over ``n``
    entries shaped like raw frames (a 322-byte ``frame`` and a ``recv_ns``)."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.delete(READ_ACK_STREAM)
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd(READ_ACK_STREAM, {"frame": VALUE_322, "recv_ns": i})
            if len(pipe) >= 1000:
                await pipe.execute()
        await pipe.execute()
        await client.xgroup_create(READ_ACK_STREAM, "bare", id="0")
        start, done = time.perf_counter(), 0
        while True:
            reply: Any = await client.xreadgroup("bare", "c", {READ_ACK_STREAM: ">"}, count=1000)
            if not reply:
                break
            ids = [eid for eid, _ in reply[0][1]]
            await client.xack(READ_ACK_STREAM, "bare", *ids)
            done += len(ids)
        elapsed = time.perf_counter() - start
        if done != n:
            raise RuntimeError(f"the bare read loop saw {done} of {n} entries")
        return n / elapsed
    finally:
        await client.delete(READ_ACK_STREAM)
        await client.aclose()


# ----------------------------------------------------------------------------------------- bare decode


class _Kline(msgspec.Struct):
    t: int
    T: int
    i: str
    o: str
    c: str
    h: str
    l: str  # noqa: E741 (Binance's field name)
    v: str
    x: bool


class _KlineEvent(msgspec.Struct, tag="kline", tag_field="e"):
    E: int
    s: str
    k: _Kline


class _AggTradeEvent(msgspec.Struct, tag="aggTrade", tag_field="e"):
    E: int
    s: str
    a: int
    p: str
    q: str
    T: int
    m: bool


class _Combined(msgspec.Struct):
    stream: str
    data: _KlineEvent | _AggTradeEvent


def recorded_frames() -> list[bytes]:
    return RECORDING.read_bytes().splitlines()


def bare_decode(frames: list[bytes], rounds: int) -> float:
    """Frames/s of one msgspec decoder (the needed fields of kline and aggTrade events) over ``frames``."""
    decode = msgspec.json.Decoder(_Combined).decode
    start = time.perf_counter()
    for _ in range(rounds):
        for raw in frames:
            decode(raw)
    return len(frames) * rounds / (time.perf_counter() - start)


# -------------------------------------------------------------------------------------------- ceilings


class Ceilings:
    """The ceilings of one run, measured on first use (see the module docstring) and kept as figures."""

    def __init__(self, url: str, port: int, *, quick: bool, repeats: int) -> None:
        self.url, self.port, self.quick, self.repeats = url, port, quick, repeats
        self.figures: list[Figure] = []
        self._medians: dict[str, float] = {}

    def _measure(self, key: str, name: str, unit: str, once: Callable[[], float], note: str = "") -> float:
        if key not in self._medians:
            runs = [once() for _ in range(self.repeats)]
            self.figures.append(Figure(name, unit, runs, note=note, key=key))
            self._medians[key] = statistics.median(runs)
        return self._medians[key]

    def xadd_pipelined(self) -> float:
        n = 200_000 if self.quick else 1_000_000
        return self._measure(
            "ceiling.xadd_pipelined",
            "ceiling: redis-benchmark XADD, 50 clients, pipeline 128",
            "req/s",
            lambda: redis_benchmark_xadd(self.port, requests=n),
            note=f"{n:,} XADDs of a 322-byte value per run",
        )

    def xadd_single(self) -> float:
        n = 20_000 if self.quick else 100_000
        return self._measure(
            "ceiling.xadd_single",
            "ceiling: redis-benchmark XADD, 1 client, no pipeline",
            "req/s",
            lambda: redis_benchmark_xadd(self.port, requests=n, clients=1, pipeline=1),
            note="one round trip per append: the floor a pipelining client rises above",
        )

    def read_ack(self) -> float:
        n = 20_000 if self.quick else 200_000
        return self._measure(
            "ceiling.read_ack",
            "ceiling: bare XREADGROUP COUNT 1000 + XACK (redis-py asyncio)",
            "entries/s",
            lambda: asyncio.run(bare_read_ack(self.url, n)),
            note=f"{n:,} entries of a 322-byte frame + recv_ns, one stream, plain redis-py (no tickfold code)",
        )

    def decode(self) -> float:
        frames = recorded_frames()
        rounds = 2 if self.quick else 10
        return self._measure(
            "ceiling.decode",
            "ceiling: bare msgspec decode of recorded Binance frames",
            "frames/s",
            lambda: bare_decode(frames, rounds),
            note=f"{len(frames):,} recorded frames x {rounds}, one msgspec decoder (kline | aggTrade union, "
            "needed fields), one core",
        )


@dataclass
class Context:
    """What every benchmark's ``run`` gets: the private Redis, the mode, and the run's ceilings."""

    url: str
    port: int
    quick: bool
    repeats: int
    ceilings: Ceilings


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"
