"""The command line, run as a user runs it (a subprocess), against a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.realdata import BINANCE_0404, COINBASE_AT, binance_last_klines, require

pytestmark = pytest.mark.redis


def tickfold(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickfold.cli", "--redis-url", redis_url, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_unknown_exchange_is_refused_with_a_clear_message(redis_url: str) -> None:
    proc = tickfold(redis_url, "ingest", "kraken", str(require(BINANCE_0404)))
    assert proc.returncode != 0
    assert "unknown exchange 'kraken'" in proc.stderr and "binance" in proc.stderr
    proc = tickfold(redis_url, "ingest", "binance", "/nonexistent/file.jsonl")
    assert proc.returncode != 0 and "no such file" in proc.stderr


def test_unreachable_redis_fails_clearly_without_the_password() -> None:
    proc = tickfold("redis://:hunter2@127.0.0.1:1/0", "candles", "binance", "BTCUSDT", "1m")
    assert proc.returncode == 1
    assert "not reachable" in proc.stderr and "hunter2" not in proc.stderr + proc.stdout


def test_ingest_process_and_read_candles_as_json(redis_url: str) -> None:
    assert tickfold(redis_url, "ingest", "binance", str(require(BINANCE_0404))).returncode == 0
    ingested = tickfold(redis_url, "ingest", "coinbase", str(require(COINBASE_AT)))
    assert "appended 255 frames to the raw streams of coinbase" in ingested.stdout
    proc = tickfold(redis_url, "process", "--until-idle")
    assert proc.returncode == 0, proc.stderr
    assert "binance: 2028 frames folded" in proc.stdout
    # the exchange's own symbol form and the canonical form name the same series
    native = tickfold(redis_url, "candles", "binance", "ETHUSDT", "1m", "--json")
    canonical = tickfold(redis_url, "candles", "binance", "eth-usdt", "1m", "--json")
    assert native.returncode == 0 and native.stdout == canonical.stdout
    rows = json.loads(native.stdout)
    expected = binance_last_klines(BINANCE_0404, "ETHUSDT")
    assert [r["start"] for r in rows] == sorted(expected)  # oldest first
    for r in rows:
        k = expected[r["start"]]
        assert (r["open"], r["high"], r["low"], r["close"], r["volume"], r["closed"]) == (
            k["o"],
            k["h"],
            k["l"],
            k["c"],
            k["v"],
            k["x"],
        )
    limited = json.loads(tickfold(redis_url, "candles", "coinbase", "BTC-USD", "5m", "--json", "--limit", "3").stdout)
    assert len(limited) == 3 and limited[-1]["closed"] is False and limited[0]["start"] < limited[-1]["start"]
    table = tickfold(redis_url, "candles", "binance", "BTCUSDT", "1m")
    assert "binance BTC-USDT 1m" in table.stdout and "58002.38" in table.stdout


def test_unknown_symbol_and_bad_timeframe(redis_url: str, tmp_path: Path) -> None:
    proc = tickfold(redis_url, "candles", "binance", "NOSUCHCOIN", "1m")
    assert proc.returncode == 1 and "NOSUCHCOIN" in proc.stderr
    proc = tickfold(redis_url, "candles", "binance", "BTCUSDT", "1minute")
    assert proc.returncode == 1 and "timeframe" in proc.stderr
