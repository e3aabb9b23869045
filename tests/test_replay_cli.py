"""``tickfold replay`` on the command line: into a namespace (the live keys untouched, compared as a DUMP
of every key before and after), into CSV / Parquet / JSON lines through a private server, and the
errors it exits with."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from streams import log
from tests.replay_support import (
    HOUR,
    cli,
    client,
    day,
    dump,
    expected,
    live_run,
    target,
)
from tests.support import all_candles
from tests.synthetic import DAY_START_MS

pytestmark = [pytest.mark.redis, pytest.mark.replay]
__all__ = ["client", "day", "target"]  # fixtures


async def test_replay_into_a_namespace_leaves_the_live_keys_untouched(
    day: list[bytes], client: aioredis.Redis, target: aioredis.Redis, redis_url: str
) -> None:
    await live_run(client, "coinbase", day)
    before = await dump(client)
    lo, hi = DAY_START_MS + 10 * HOUR, DAY_START_MS + 12 * HOUR
    done = cli(redis_url, "replay", "coinbase", "--from", "2026-08-09T10:00Z", "--to", str(hi), "--namespace", "5",
               "--timeframes", "1m,15m", "--symbols", "BTC-USD,eth-usd")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert await dump(client) == before  # not one live key written, moved or expired
    candles, _, _ = await expected(client, "coinbase", lo, hi, ("1m", "15m"))
    wanted = {k: c for k, c in candles.items() if k[0] in ("BTC-USD", "ETH-USD")}
    assert f"{len(wanted):,} candles" in done.stdout and "-> namespace 5" in done.stdout
    replayed = {k: c for k, c in (await all_candles(target, "coinbase")).items() if k in wanted}
    assert replayed == wanted  # the namespace holds the projections, under the live key names
    assert [k async for k in target.scan_iter(match="lease:*")] == []  # and no lease: a plain snapshot
    # the same namespace again: refused while it holds them, unless --clear
    again = cli(redis_url, "replay", "coinbase", "--from", str(lo), "--to", str(hi), "--namespace", "5")
    assert again.returncode == 1 and "already holds coinbase projections" in again.stderr
    assert cli(redis_url, "replay", "coinbase", "--from", str(lo), "--to", str(hi), "--namespace", "5",
               "--timeframes", "1m", "--clear").returncode == 0  # fmt: skip
    live = cli(redis_url, "replay", "coinbase", "--from", str(lo), "--to", str(hi), "--namespace", "0")
    assert live.returncode == 2 and "--namespace: 0 is the live database" in live.stderr
    assert await dump(client) == before


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
async def test_export_to_a_file_through_a_private_server(
    suffix: str, day: list[bytes], client: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    import pandas as pd

    await live_run(client, "coinbase", day)
    before = await dump(client)
    lo, hi = DAY_START_MS + 6 * HOUR, DAY_START_MS + 8 * HOUR
    path = tmp_path / f"out{suffix}"
    done = cli(redis_url, "replay", "coinbase", "--from", str(lo), "--to", str(hi), "--timeframes", "1m,5m,15m",
               "--out", str(path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert await dump(client) == before
    candles, points, alerts = await expected(client, "coinbase", lo, hi, ("1m", "5m", "15m"))
    if suffix == ".csv":
        rows = pd.read_csv(path, dtype={"open": str, "high": str, "low": str, "close": str, "volume": str})
        got_alerts = pd.read_csv(tmp_path / "out.alerts.csv")
    elif suffix == ".parquet":
        rows = pd.read_parquet(path)
        got_alerts = pd.read_parquet(tmp_path / "out.alerts.parquet")
    else:
        rows = pd.read_json(
            path, lines=True, precise_float=True, dtype={"open": str, "high": str, "low": str, "close": str}
        )
        got_alerts = pd.read_json(tmp_path / "out.alerts.jsonl", lines=True)
    assert len(rows) == len(candles)
    for r in rows.to_dict("records"):
        c = candles[(str(r["symbol"]), str(r["timeframe"]), int(r["start"]))]
        if suffix == ".parquet":  # numbers there; the exact strings in CSV and JSON lines
            assert (r["open"], r["close"], r["volume"]) == (float(c.open), float(c.close), float(c.volume))
        else:
            assert (r["open"], r["high"], r["low"], r["close"]) == (c.open, c.high, c.low, c.close)
        p = points.get((c.symbol, c.timeframe, c.start))
        if p is None:
            assert pd.isna(r["macdv"]) and pd.isna(r["signal"])
        else:
            assert (r["macdv"], r["signal"], r["histogram"]) == (p.macdv, p.signal, p.histogram)
            assert r["zone"] == p.zone or (p.zone == "" and pd.isna(r["zone"]))
    assert sorted(got_alerts["id"]) == sorted(a.id for a in alerts) and len(alerts) > 0


async def test_bad_commands_exit_non_zero_with_the_reason(
    day: list[bytes], client: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    await log.append_frames(client, "coinbase", [(f, 0) for f in day[:500]])
    future = cli(redis_url, "replay", "coinbase", "--from", "2099-01-01T00:00Z", "--to", "2099-01-02", "--out",
                 str(tmp_path / "x.csv"))  # fmt: skip
    assert future.returncode == 2 and "--from: 2099-01-01T00:00:00.000Z is in the future" in future.stderr
    empty = cli(redis_url, "replay", "coinbase", "--from", "2026-08-01T00:00Z", "--to", "2026-08-01T01:00Z", "--out",
                str(tmp_path / "x.csv"))  # fmt: skip
    assert empty.returncode == 1 and "no coinbase candles start in [2026-08-01T00:00:00.000Z" in empty.stderr
    assert not (tmp_path / "x.csv").exists()
    for args, message in [
        ((), "give --namespace N"),
        (("--out", str(tmp_path / "x.xlsx")), "give it one of the extensions .csv, .parquet"),
        (("--out", "x.csv", "--speed", "fast"), "--speed: expected max, realtime or a number"),
        (("--out", "x.csv", "--warmup", "a while"), "--warmup: expected a duration"),
        (("--namespace", "99"), "--namespace: Redis refuses database 99"),
        (("--namespace", "-2"), "--namespace: a Redis database is a number >= 0"),
    ]:
        done = cli(redis_url, "replay", "coinbase", "--from", "2026-08-09T00:00Z", "--to", "2026-08-09T01:00Z", *args)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)
