"""The benchmark suite runs: ``python -m benchmarks --quick --json F`` gives every figure, each positive.

Its numbers are not checked (a shared or busy machine would make that flaky); that it runs end to end
(private Redis, simulator, adapter, processors, subscribers) and reports every figure is."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "ceiling.xadd_pipelined", "ceiling.xadd_single", "ceiling.read_ack", "ceiling.decode",
    "decode.decode_frame", "ingest.append_frames", "fold.in_process", "fold.process_1", "fold.process_2",
    "adapter.bare_client", "adapter.ingest", "adapter.ingest_cpu",
    *(f"adapter.latency_{rate}.{q}" for rate in (1000, 10000) for q in ("p50", "p99", "max")),
    "indicators.talib", "indicators.batch", "indicators.talipp", "indicators.update", "indicators.update_bytes",
    "indicators.update_rows",
    "indicator_processor.bare_read_ack", "indicator_processor.live", "indicator_processor.recompute",
    *(f"e2e.{what}.{q}" for what in ("close", "alert") for q in ("p50", "p99", "p999")),
    "memory.per_series", "memory.per_symbol",
    *(f"replay.{ex}.{kind}" for ex in ("binance", "coinbase") for kind in ("memory_candles", "memory_macdv",
                                                                          "redis_candles")),
    "replay.coinbase_1s.memory_candles", "replay.coinbase_1s.memory_macdv",
    "archive.binance.bytes_per_frame", "archive.coinbase.bytes_per_frame", "archive.coinbase_1s.bytes_per_frame",
    "replay.binance.peak_mb", "replay.coinbase.peak_mb", "replay.coinbase_1s.peak_mb",
}  # fmt: skip
TARGETS = {
    "fold.in_process", "fold.process_1", "fold.process_2", "adapter.ingest", "indicators.batch", "e2e.alert.p99",
    "replay.binance.memory_macdv", "replay.coinbase.memory_macdv", "replay.coinbase_1s.memory_macdv",
}  # fmt: skip


@pytest.mark.redis
@pytest.mark.timeout(240)
def test_quick_run_reports_every_figure_positive(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"cpu", "python", "redis"} <= set(report["machine"])
    figures = {f["key"]: f for f in report["figures"]}
    assert len(figures) == len(report["figures"]), "two figures share a key"
    assert set(figures) == EXPECTED
    for key, f in figures.items():
        assert len(f["runs"]) == 1, key  # --quick: one run each
        assert all(math.isfinite(v) and v > 0 for v in f["runs"]), (key, f["runs"])
        ceilings = ([f["ceiling"]] if f["ceiling_name"] else []) + [value for _, value in f["more_ceilings"]]
        assert all(c is not None and c > 0 for c in ceilings), (key, ceilings)
    assert figures["fold.in_process"]["ceiling_name"] and figures["ingest.append_frames"]["ceiling_name"]
    judged = {key: f["verdict"] for key, f in figures.items() if f["target"]}  # the targets, each judged
    assert set(judged) == TARGETS
    assert all(v == "met" or v.startswith("missed: ") for v in judged.values()), judged
    benchmarks = {
        "ingest_fold",
        "adapter_ingest",
        "indicators",
        "indicator_processor",
        "e2e_latency",
        "memory",
        "replay",
    }
    assert set(report["seconds"]) == benchmarks
