"""The live path as a user runs it: `tickfold simulate`, `exchanges set` to point at it, `ingest-live`,
then `process` — candles from frames that crossed a real WebSocket."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tickfold.embedded import free_port

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def tickfold(redis_url: str, dsn: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tickfold.cli", "--redis-url", redis_url, "--database-url", dsn, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_simulate_exchanges_set_ingest_live_and_process(redis_url: str, pg_dsn: str) -> None:
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "tickfold.cli", "simulate", "--port", str(port), "--rate", "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sim.stdout is not None
        lines = [sim.stdout.readline() for _ in range(4)]
        assert any(f"ws://127.0.0.1:{port}/binance/ws" in line for line in lines), lines
        assert tickfold(redis_url, pg_dsn, "migrate").returncode == 0
        ws, rest = f"ws://127.0.0.1:{port}/binance/ws", f"http://127.0.0.1:{port}/binance"
        moved = tickfold(redis_url, pg_dsn, "exchanges", "set", "binance", "--ws-url", ws, "--rest-url", rest)
        assert moved.returncode == 0, moved.stderr
        rows = json.loads(tickfold(redis_url, pg_dsn, "exchanges", "list", "--json").stdout)
        assert next(r for r in rows if r["id"] == "binance")["ws_urls"] == [ws]
        started = time.monotonic()
        live = tickfold(redis_url, pg_dsn, "ingest-live", "binance", "--symbols", "BTCUSDT,ETHUSDT", "--duration", "4")
        assert live.returncode == 0, live.stderr
        assert time.monotonic() - started < 60
        appended = int(live.stdout.split("appended ", 1)[1].split(" ", 1)[0])
        assert appended > 100  # 200 trades/s for 4 s, plus klines
        done = tickfold(redis_url, pg_dsn, "process", "--exchange", "binance", "--until-idle")
        assert done.returncode == 0, done.stderr
        assert f"binance: {appended} frames folded" in done.stdout
        candles = json.loads(tickfold(redis_url, pg_dsn, "candles", "binance", "BTCUSDT", "1m", "--json").stdout)
        assert candles and all(float(c["low"]) <= float(c["close"]) <= float(c["high"]) for c in candles)
        bad = tickfold(redis_url, pg_dsn, "exchanges", "set", "nosuch", "--ws-url", ws)
        assert bad.returncode != 0 and "nosuch" in bad.stderr
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        if sim.stdout is not None:
            sim.stdout.close()
