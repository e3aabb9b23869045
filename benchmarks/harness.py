"""Shared benchmark machinery: a private Redis, the machine description, Redis's own ceiling, tables."""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tickfold.embedded import EmbeddedRedis, find_redis_server, start_redis

VALUE_322 = "x" * 322  # the size of a typical Binance aggTrade frame


@dataclass
class Figure:
    name: str
    unit: str
    runs: list[float]
    ceiling_name: str = ""
    ceiling: float | None = None
    note: str = ""
    more_ceilings: list[tuple[str, float]] = field(default_factory=list)  # further (name, value) to compare with

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

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


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"
