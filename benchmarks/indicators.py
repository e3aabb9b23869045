"""Indicator kernels: batch MACD-V against TA-Lib in the same run, and incremental updates per second.

* Batch: MACD-V line, signal and histogram over 1,000,000 seeded candles with ``macdv()`` (one fused
  pass), against TA-Lib computing the same parts (``EMA(12)``, ``EMA(26)``, ``ATR(26)``, the division,
  ``EMA(9)`` of the line, the histogram). Both allocate their outputs; the ratio is ours / TA-Lib's
  candles per second (> 1: faster than TA-Lib).
* Incremental: 1,000 symbols, each with its own warmed-up 23-slot state, one new candle per symbol in
  round robin. Three ways: one ``macdv_update`` call per candle (what a processor handling one close
  at a time does); the same with the state loaded from and dumped to bytes around each update (a
  processor keeping the state in Redis); and ``macdv_update_rows`` over the 1,000 stacked states (a
  processor handling a batch of closes in one call).

Needs no Redis (the harness starts one anyway). Compile and cache-load time is excluded (warmed first).
"""

from __future__ import annotations

import time

import numpy as np
import talib

import projections.indicators as ind
from benchmarks.harness import Figure

F64 = ind.kernels.F64
SYMBOLS = 1_000


def candles(n: int, seed: int = 42, symbols: int = 1) -> tuple[F64, F64, F64]:
    """Seeded random-walk candles, shape (n,) or (n, symbols): high >= max(open, close), low <= min."""
    rng = np.random.default_rng(seed)
    shape = (n, symbols) if symbols > 1 else (n,)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, shape), axis=0))
    opens = np.concatenate([close[:1], close[:-1]])
    high = np.maximum(opens, close) * (1.0 + np.abs(rng.normal(0.0, 5e-4, shape)))
    low = np.minimum(opens, close) * (1.0 - np.abs(rng.normal(0.0, 5e-4, shape)))
    return high, low, close


def talib_macdv(high: F64, low: F64, close: F64) -> tuple[F64, F64, F64]:
    line = (talib.EMA(close, 12) - talib.EMA(close, 26)) / talib.ATR(high, low, close, 26) * 100.0
    signal = talib.EMA(line, 9)
    return line, signal, line - signal


def _rate(n: int, fn: object, *args: object) -> float:
    start = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return n / (time.perf_counter() - start)


def _states(warm: tuple[F64, F64, F64]) -> list[F64]:
    h, lo, c = warm
    states = [ind.macdv_state() for _ in range(SYMBOLS)]
    for i, s in enumerate(states):
        ind.macdv_feed(s, h[:, i].copy(), lo[:, i].copy(), c[:, i].copy())
    return states


def _round_robin(states: list[F64], rows: list[tuple[list[float], list[float], list[float]]]) -> None:
    update = ind.macdv_update
    for hr, lr, cr in rows:
        for i, s in enumerate(states):
            update(s, hr[i], lr[i], cr[i])


def _round_robin_bytes(blobs: list[bytes], rows: list[tuple[list[float], list[float], list[float]]]) -> None:
    update, loads, dumps, kind = ind.macdv_update, ind.loads, ind.dumps, ind.Kind.MACDV
    for hr, lr, cr in rows:
        for i in range(SYMBOLS):
            s = loads(blobs[i], kind)
            update(s, hr[i], lr[i], cr[i])
            blobs[i] = dumps(s)


def _stacked(states: F64, rows: list[tuple[F64, F64, F64]]) -> None:
    index = np.arange(SYMBOLS, dtype=np.int64)
    for h, lo, c in rows:
        ind.macdv_update_rows(states, index, h, lo, c)


def run(url: str, port: int, *, quick: bool, repeats: int) -> list[Figure]:
    del url, port  # pure computation: no Redis
    n = 100_000 if quick else 1_000_000
    rounds = 20 if quick else 200
    runs = repeats if quick else max(repeats, 5)
    h, lo, c = candles(n)
    ours, theirs = ind.macdv(h, lo, c), talib_macdv(h, lo, c)  # compile / load the cache; check agreement
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * 100.0)

    batch, oracle = [], []
    for _ in range(runs):  # interleaved, so drift on a shared machine hits both
        oracle.append(_rate(n, talib_macdv, h, lo, c))
        batch.append(_rate(n, ind.macdv, h, lo, c))

    wh, wl, wc = candles(100, seed=7, symbols=SYMBOLS)
    th, tl, tc = candles(rounds, seed=8, symbols=SYMBOLS)
    rows = [(th[r].tolist(), tl[r].tolist(), tc[r].tolist()) for r in range(rounds)]
    arrays = [(th[r].copy(), tl[r].copy(), tc[r].copy()) for r in range(rounds)]
    updates = rounds * SYMBOLS
    calls, via_bytes, stacked = [], [], []
    warm = _states((wh[:40], wl[:40], wc[:40]))  # compile / load the cache of every path first
    _round_robin(warm, rows[:1])
    _round_robin_bytes([ind.dumps(s) for s in warm], rows[:1])
    _stacked(np.stack(warm), arrays[:1])
    for _ in range(runs):
        states = _states((wh, wl, wc))
        blobs = [ind.dumps(s) for s in states]
        stack = np.stack(states)
        calls.append(_rate(updates, _round_robin, states, rows))
        via_bytes.append(_rate(updates, _round_robin_bytes, blobs, rows))
        stacked.append(_rate(updates, _stacked, stack, arrays))
    one_call = sorted(calls)[len(calls) // 2]
    talib_median = sorted(oracle)[len(oracle) // 2]
    label = f"{n:,} candles"
    return [
        Figure(f"TA-Lib EMA12+EMA26+ATR26+EMA9 (MACD-V parts), {label}", "candles/s", oracle),
        Figure(f"batch macdv() line+signal+hist, {label}", "candles/s", batch, "TA-Lib same parts", talib_median),
        Figure(f"incremental macdv_update, {SYMBOLS:,} symbols round robin", "updates/s", calls),
        Figure(
            "incremental, state loads()/dumps() as bytes around each update",
            "updates/s",
            via_bytes,
            "macdv_update alone",
            one_call,
        ),
        Figure(
            f"incremental macdv_update_rows, {SYMBOLS:,} symbols per call",
            "updates/s",
            stacked,
            "macdv_update alone",
            one_call,
            note="one jitted call updates all 1,000 stacked states (a batch of closes from one XREADGROUP)",
        ),
    ]
