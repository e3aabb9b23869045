"""The batch loops' shorter ATR chain (``kernels._rma_quotient``, ``kernels._tr_ordered``), bit for bit.

``_rma_quotient`` divides an RMA's total by the period with a correction computed from the previous
value and the input rather than from the total; ``_tr_ordered`` is the true range of a candle with
``high >= low`` in three operations. Oracles: IEEE division (numpy's ``/``) and ``_tr`` itself, compared
bit for bit, on random values over a wide range of exponents, on totals built to sit next to a
midpoint between two doubles, and on the edge values; then the batch feeds against the incremental
step on series that send candles down every path (malformed candles, NaN, flat stretches, totals that
overflow, a negative ATR in a state).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from typing import cast

import numba
import numpy as np
import numpy.typing as npt
import pytest

import projections.indicators as ind
from projections.indicators import kernels
from tests.test_kernels_quotient import near_midpoints

pytestmark = pytest.mark.unit

F64 = npt.NDArray[np.float64]
Taken = npt.NDArray[np.bool_]
PERIODS = [*range(1, 40), 64, 99, 127, 128, 255, 257, 1000, 4095, 65535, 99999, 100000, 2**40 - 1, 2**40]


def _rma_divide(prev: F64, x: F64, n: float) -> tuple[F64, Taken]:
    """``_rma_quotient`` where ``_rma_quotient_exact`` admits it, and whether it did (else NaN)."""
    hi, lo, smallest = kernels._reciprocal(n)
    carry = kernels._reciprocal_carry(n, lo)
    out = np.full_like(prev, np.nan)
    taken = np.zeros(prev.shape[0], dtype=np.bool_)
    for i in range(prev.shape[0]):
        total = kernels._rma_total(prev[i], n, x[i])
        if kernels._rma_quotient_exact(total, smallest):
            out[i] = kernels._rma_quotient(prev[i], x[i], total, hi, lo, carry)
            taken[i] = True
    return out, taken


def _totals(prev: F64, x: F64, n: float) -> F64:
    out = np.empty_like(prev)
    for i in range(prev.shape[0]):
        out[i] = kernels._rma_total(prev[i], n, x[i])
    return out


def _tr_both(prev: F64, high: F64, low: F64) -> tuple[F64, F64]:
    a, b = np.empty_like(prev), np.empty_like(prev)
    for i in range(prev.shape[0]):
        a[i] = kernels._tr(prev[i], high[i], low[i])
        b[i] = kernels._tr_ordered(prev[i], high[i], low[i])
    return a, b


rma_divide = cast(Callable[[F64, F64, float], tuple[F64, Taken]], numba.njit(error_model="numpy")(_rma_divide))
totals = cast(Callable[[F64, F64, float], F64], numba.njit(error_model="numpy")(_totals))
tr_both = cast(Callable[[F64, F64, F64], tuple[F64, F64]], numba.njit(error_model="numpy")(_tr_both))


def bits(a: F64) -> npt.NDArray[np.int64]:
    return a.view(np.int64)


def _check(prev: F64, x: F64, n: int) -> int:
    """``_rma_quotient`` equals ``total / n`` wherever it is taken; how many it was taken for."""
    got, taken = rma_divide(prev, x, float(n))
    want = totals(prev, x, float(n)) / float(n)
    assert np.array_equal(bits(got[taken]), bits(want[taken]))
    return int(taken.sum())


@pytest.mark.parametrize("n", PERIODS)
def test_rma_quotient_equals_division(n: int) -> None:
    rng = np.random.default_rng(n)
    size = 100_000
    with np.errstate(over="ignore"):
        prev = np.exp(rng.uniform(-700.0, 700.0, size))  # every scale, totals that overflow included
        x = prev * np.exp(rng.uniform(-40.0, 40.0, size))  # inputs far below and far above the average
        like_prices = np.exp(rng.uniform(-5.0, 12.0, size))
        patterns = rng.integers(0, 2**63, size, dtype=np.int64).view(np.float64)  # subnormals, inf, NaN
        prev_any = rng.integers(0, 2**63, size, dtype=np.int64).view(np.float64)
    zeros = np.zeros(size)
    assert _check(prev, x, n) > size // 2
    assert _check(like_prices, like_prices * rng.uniform(0.0, 3.0, size), n) == size
    assert _check(zeros, like_prices, n) == size  # prev = 0: the correction is x * lo alone
    assert _check(like_prices, zeros, n) == (size if n > 1 else 0)  # n = 1: a zero total, divided
    _check(prev_any, patterns, n)
    edges = np.array([0.0, -0.0, 5e-324, 2.2250738585072014e-308, kernels.QUOTIENT_MIN, kernels.DOUBLE_MAX,
                      math.inf, math.nan, 1.0, float(n)])  # fmt: skip
    a, b = np.meshgrid(edges, edges)
    _check(a.ravel().copy(), b.ravel().copy(), n)


@pytest.mark.parametrize("n", [p for p in PERIODS if p % 2 == 1 and p > 2])
def test_rma_quotient_equals_division_next_to_midpoints(n: int) -> None:
    """Split each hard total ``s`` into ``RN(prev * (n - 1)) + x`` exactly (``x = s - a`` with ``a`` in
    ``[s/2, s]``: Sterbenz), so the correction is computed from parts, not from ``s``."""
    rng = np.random.default_rng(n)
    s = near_midpoints(n, 4000, random.Random(n))[::2]  # the positive one of each pair
    prev = s * rng.uniform(0.5, 1.0, s.size) / (n - 1)
    a = prev * (n - 1.0)
    keep = (a >= s / 2) & (a <= s)
    prev, a, s = prev[keep], a[keep], s[keep]
    x = s - a
    assert np.array_equal(bits(a + x), bits(s))
    assert np.array_equal(bits(totals(prev, x, float(n))), bits(s))
    assert _check(prev, x, n) == s.size > 1000


def test_tr_ordered_equals_tr_when_high_is_not_below_low() -> None:
    rng = np.random.default_rng(5)
    size = 200_000
    pool = np.concatenate([np.exp(rng.uniform(-3.0, 3.0, 50)), -np.exp(rng.uniform(-3.0, 3.0, 10)),
                           [0.0, -0.0, 1.0, 5e-324, math.inf, -math.inf, math.nan]])  # fmt: skip
    a, b = rng.choice(pool, size), rng.choice(pool, size)
    prev = rng.choice(np.concatenate([pool, rng.uniform(-5.0, 5.0, 50)]), size)
    high, low = np.maximum(a, b), np.minimum(a, b)  # NaN where either is: excluded below
    continuous = np.exp(rng.normal(0.0, 0.1, (3, size)))
    prev, high, low = (np.concatenate([u, v]) for u, v in zip((prev, high, low), continuous, strict=True))
    high, low = np.maximum(high, low), np.minimum(high, low)
    ordered = high >= low
    want, got = tr_both(prev, high, low)
    finite = ordered & np.isfinite(prev) & np.isfinite(high) & np.isfinite(low)
    assert np.array_equal(bits(got[finite]), bits(want[finite]))
    nan_prev = ordered & np.isnan(prev) & np.isfinite(high) & np.isfinite(low)
    assert nan_prev.any() and np.array_equal(bits(got[nan_prev]), bits(want[nan_prev]))
    # Infinite operands: either the same value, or NaN / inf, which no total passes.
    rest = ordered & ~finite & ~nan_prev
    same = bits(got[rest]) == bits(want[rest])
    assert (same | ~np.isfinite(got[rest])).all()
    assert (got[ordered & ~np.isnan(got)] >= 0.0).all()


def _series(scale: float, seed: int = 11) -> tuple[F64, F64, F64]:
    """A random walk with every kind of candle the fast loop leaves on: flat stretches (total 0),
    high < low, NaN close, high or low (then NaN from there on in the EMAs or the ATR)."""
    rng = np.random.default_rng(seed)
    n = 600
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-2, n))) * scale
    high, low = close * (1.0 + rng.uniform(0.0, 2e-3, n)), close * (1.0 - rng.uniform(0.0, 2e-3, n))
    high[:40] = low[:40] = close[:40] = 100.0 * scale
    high[100:110] = low[100:110] = close[100:110] = close[99]  # flat: the ATR decays, stays > 0
    high[150], low[150] = low[150], high[150]  # high < low
    high[151:160], low[151:160] = low[151:160].copy(), high[151:160].copy()
    close[250] = math.nan  # the next candle's true range is high - low
    high[252], low[252] = low[252], high[252]  # ... which is < 0 here
    high[400] = math.nan  # NaN ATR from here on
    return high, low, close


def _batch_equals_incremental(h: F64, lo: F64, c: F64, state: F64, cuts: list[int]) -> None:
    inc_state = state.copy()
    incremental = np.array([ind.macdv_update(inc_state, *bar) for bar in zip(h, lo, c, strict=True)]).T.copy()
    fed = state.copy()
    edges = [0, *cuts, h.size]
    parts = [ind.macdv_feed(fed, h[a:b], lo[a:b], c[a:b]) for a, b in itertools.pairwise(edges)]
    batch = np.concatenate([np.stack(p) for p in parts], axis=1)
    assert np.array_equal(bits(batch), bits(incremental))
    assert np.array_equal(bits(fed), bits(inc_state))


@pytest.mark.parametrize("scale", [1.0, 1e-283, 1e300])
@pytest.mark.parametrize("atr_n", [1, 2, 14, 26, 27])
def test_macdv_batch_equals_incremental_on_malformed_candles(scale: float, atr_n: int) -> None:
    h, lo, c = _series(scale)
    _batch_equals_incremental(h, lo, c, ind.macdv_state(12, 26, 9, atr_n), [120, 155, 260, 333])
    _batch_equals_incremental(h, lo, c, ind.macdv_state(12, 26, 9, atr_n), [])


def test_macdv_batch_equals_incremental_with_a_negative_atr_in_the_state() -> None:
    """A state the fast loop can't take (ATR < 0, as only a hand-made state has): the division, every candle."""
    h, lo, c = _series(1.0, seed=3)
    state = ind.macdv_state()
    ind.macdv_feed(state, h[:60], lo[:60], c[:60])
    state[kernels.MACDV_ATR + kernels.TR_SIZE + kernels.RMA_VAL] = -0.5
    _batch_equals_incremental(h[60:], lo[60:], c[60:], state, [100])


@pytest.mark.parametrize("scale", [1.0, 1e-283, 1e300])
@pytest.mark.parametrize("n", [1, 2, 14, 26])
def test_atr_batch_equals_incremental_on_malformed_candles(scale: float, n: int) -> None:
    h, lo, c = _series(scale)
    inc_state, fed = ind.atr_state(n), ind.atr_state(n)
    incremental = np.array([ind.atr_update(inc_state, *bar) for bar in zip(h, lo, c, strict=True)])
    cuts = [0, 120, 155, 260, 600]
    batch = np.concatenate([ind.atr_feed(fed, h[a:b], lo[a:b], c[a:b]) for a, b in itertools.pairwise(cuts)])
    assert np.array_equal(bits(batch), bits(incremental)) and np.array_equal(bits(fed), bits(inc_state))


def test_long_random_series_batch_equals_incremental() -> None:
    """50,000 price-like candles through the fast loop, split at random points, against the step."""
    rng = np.random.default_rng(9)
    n = 50_000
    c = 30_000.0 * np.exp(np.cumsum(rng.normal(0.0, 2e-3, n)))
    o = np.concatenate([c[:1], c[:-1]])
    h = np.maximum(o, c) * (1.0 + np.abs(rng.normal(0.0, 1e-3, n)))
    lo = np.minimum(o, c) * (1.0 - np.abs(rng.normal(0.0, 1e-3, n)))
    cuts = sorted(rng.choice(np.arange(1, n), 7, replace=False).tolist())
    _batch_equals_incremental(h, lo, c, ind.macdv_state(), cuts)


def test_macdv_batch_equals_incremental_with_swapped_columns() -> None:
    """High and low swapped on every candle: the general true range's loop takes them, RUN at a time."""
    h, lo, c = _series(1.0, seed=4)
    _batch_equals_incremental(lo, h, c, ind.macdv_state(), [77, 300])
    _batch_equals_incremental(lo, h, c, ind.macdv_state(), [])


def _trap() -> tuple[float, float]:
    """``(atr, low)``: with a NaN previous close and ``high = 0`` the true range is ``-low``, which cancels
    all but ``2**-k`` of ``RN(atr * 25)``, and the reciprocal's correction from the parts then gives the
    wrong ``total / 26`` (its error bound assumes terms of one sign)."""
    hi, lo, _ = kernels._reciprocal(26.0)
    carry = kernels._reciprocal_carry(26.0, lo)
    rng = np.random.default_rng(1)
    for _ in range(100_000):
        atr = float(rng.uniform(0.1, 10.0))
        low = atr * 25.0 * (1.0 - 2.0 ** -int(rng.integers(30, 53)))
        total = kernels._rma_total(atr, 26.0, -low)
        if total > 0.0 and kernels._rma_quotient(atr, -low, total, hi, lo, carry) != total / 26.0:
            return atr, low
    raise AssertionError("no candle found that the correction from the parts gets wrong")


@pytest.mark.parametrize("feed", ["macdv", "atr"])
def test_negative_true_range_cancelling_the_total_takes_the_division(feed: str) -> None:
    """The loops must not take such a candle (they check ``tr >= 0``); the state is set to the trap's."""
    h, lo, c = (a[100:240].copy() for a in _series(1.0, seed=6))  # no NaN: the line shows the ATR
    warm = tuple(a[:240].copy() for a in _series(1.0, seed=7))
    atr, low = _trap()
    h[0], lo[0] = 0.0, low
    if feed == "macdv":
        state = ind.macdv_state(12, 26, 9, 26)
        ind.macdv_feed(state, *warm)
        state[kernels.MACDV_ATR + kernels.TR_PREV] = math.nan
        state[kernels.MACDV_ATR + kernels.TR_SIZE + kernels.RMA_VAL] = atr
        _batch_equals_incremental(h[:1], lo[:1], c[:1], state, [])  # the states right after it
        _batch_equals_incremental(h, lo, c, state, [50])
    else:
        state = ind.atr_state(26)
        ind.atr_feed(state, *warm)
        state[kernels.HEADER + kernels.TR_PREV] = math.nan
        state[kernels.HEADER + kernels.TR_SIZE + kernels.RMA_VAL] = atr
        inc_state, fed = state.copy(), state.copy()
        incremental = np.array([ind.atr_update(inc_state, *bar) for bar in zip(h, lo, c, strict=True)])
        batch = np.concatenate([ind.atr_feed(fed, h[:50], lo[:50], c[:50]), ind.atr_feed(fed, h[50:], lo[50:], c[50:])])
        assert np.array_equal(bits(batch), bits(incremental)) and np.array_equal(bits(fed), bits(inc_state))
