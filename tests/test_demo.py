"""The README's first command: ``tickfold demo`` on the embedded default, from nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="tickfold-demo-"))
    root.chmod(0o755)
    yield root / "state"
    shutil.rmtree(root, ignore_errors=True)


def _demo(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKFOLD_")}
    return subprocess.run(
        [sys.executable, "-m", "tickfold.cli", "--data-dir", str(data_dir), "demo"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_demo_runs_on_private_servers_and_stops_them(data_dir: Path) -> None:
    proc = _demo(data_dir)
    assert proc.returncode == 0, proc.stderr
    # it says which servers it uses, migrates, ingests both recordings and prints their candles
    assert "Redis: started private" in proc.stderr and "PostgreSQL: started private" in proc.stderr
    assert "applying migration 001_exchanges.sql" in proc.stderr
    assert "binance: appended 2028 recorded frames" in proc.stderr
    assert "coinbase: appended 255 recorded frames" in proc.stderr
    for title in ("binance BTC-USDT 1m", "binance ETH-USDT 1m", "binance DOT-USDT 1m", "coinbase BTC-USD 5m"):
        assert title in proc.stdout
    assert "57999.99" in proc.stdout  # BTCUSDT's 20:03 close in the recording
    assert "private server stopped" in proc.stderr
    assert not (data_dir / "redis" / "server.json").exists()
    # a second run re-uses the data: nothing appended twice, the same candles
    again = _demo(data_dir)
    assert again.returncode == 0, again.stderr
    assert "was ingested by an earlier demo run" in again.stderr
    assert "database is up to date" in again.stderr
    assert again.stdout == proc.stdout
