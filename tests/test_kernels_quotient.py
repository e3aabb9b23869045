"""The batch loops' division by the period without a division instruction (``kernels._quotient``).

Oracle: IEEE division (numpy's ``/``), compared bit for bit, on random bit patterns over every exponent
and sign (zeros, subnormals, inf and NaN among them), on price-like values, and on dividends built so
that the true quotient lies a hair from a midpoint between two doubles (where a one-product estimate
rounds the wrong way); the reciprocal's parts are checked against exact rational arithmetic. Then the
whole batch (MACD-V, ATR, RMA) against the incremental step on series that send candles down both paths.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from fractions import Fraction
from typing import cast

import numba
import numpy as np
import numpy.typing as npt
import pytest

import projections.indicators as ind
from projections.indicators import kernels

pytestmark = pytest.mark.unit

F64 = npt.NDArray[np.float64]
PERIODS = [*range(1, 40), 64, 99, 127, 128, 255, 257, 1000, 4095, 65535, 99999, 100000, 2**40 - 1, 2**40]


def _divide(s: F64, n: float) -> F64:
    hi, lo, smallest = kernels._reciprocal(n)
    out = np.empty_like(s)
    for i in range(s.shape[0]):
        out[i] = kernels._quotient(s[i], hi, lo) if kernels._quotient_exact(s[i], smallest) else s[i] / n
    return out


def _one_product(s: F64, n: float) -> F64:
    hi = kernels._reciprocal(n)[0]
    return s * hi


divide = cast(Callable[[F64, float], F64], numba.njit(error_model="numpy")(_divide))
one_product = cast(Callable[[F64, float], F64], numba.njit(error_model="numpy")(_one_product))


def bits(a: F64) -> npt.NDArray[np.int64]:
    return a.view(np.int64)


def near_midpoints(n: int, count: int, rng: random.Random) -> F64:
    """Dividends ``s = (M * n + 1) * 2**k`` (and ``- 1``), exact doubles, with ``M`` odd and 54 bits wide:
    ``s / n`` is then ``2**k / n`` away from the midpoint ``M * 2**k``. Only for odd ``n``."""
    out: list[float] = []
    while len(out) < count:
        sign = rng.choice((1, -1))
        m0 = rng.randrange(2**53, 2**54) | 1
        t = max((m0 * n).bit_length() - 53, 0) + 1  # M * n + sign must be divisible by 2**t
        m = m0 - m0 % 2**t + (-sign * pow(n, -1, 2**t)) % 2**t
        if not 2**53 < m < 2**54 or m % 2 == 0:
            continue
        big = m * n + sign
        if (big >> ((big & -big).bit_length() - 1)).bit_length() > 53:
            continue
        value = Fraction(big) * Fraction(2) ** rng.randint(-300, 300)
        s = float(value)
        assert Fraction(s) == value  # exactly representable
        out += [s, -s]
    return np.array(out)


@pytest.mark.parametrize("n", PERIODS)
def test_reciprocal_parts_are_exact(n: int) -> None:
    hi, lo, smallest = kernels._reciprocal(float(n))
    assert hi == 1.0 / n
    assert lo == float(Fraction(1, n) - Fraction(hi))  # correctly rounded remainder of the reciprocal
    assert smallest == kernels.QUOTIENT_MIN


@pytest.mark.parametrize("n", [0.0, -3.0, 2.5, 26.000000000000004, 2.0**40 + 1, math.inf, math.nan])
def test_no_reciprocal_outside_the_proven_range(n: float) -> None:
    assert kernels._reciprocal(n)[2] == math.inf
    assert not kernels._quotient_exact(1.0, kernels._reciprocal(n)[2])


@pytest.mark.parametrize("n", PERIODS)
def test_quotient_equals_division_on_any_double(n: int) -> None:
    rng = np.random.default_rng(n)
    patterns = rng.integers(0, 2**63, 100_000, dtype=np.int64).view(np.float64)
    signs = rng.choice([-1.0, 1.0], patterns.size)
    with np.errstate(invalid="ignore"):
        anything = patterns * signs  # every exponent: subnormals, inf and NaN included
    prices = np.exp(rng.uniform(-40.0, 40.0, 100_000)) * signs
    edges = np.array([0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 2.2250738585072014e-308,
                      kernels.QUOTIENT_MIN, np.nextafter(kernels.QUOTIENT_MIN, 0.0), -kernels.QUOTIENT_MIN,
                      1.7976931348623157e308, -1.7976931348623157e308, 1.0, float(n), 3.0 * n])  # fmt: skip
    for s in (anything, prices, edges):
        assert np.array_equal(bits(divide(s, float(n))), bits(s / float(n)))


@pytest.mark.parametrize("n", [p for p in PERIODS if p % 2 == 1 and p > 1])
def test_quotient_equals_division_next_to_midpoints(n: int) -> None:
    s = near_midpoints(n, 2000, random.Random(n))
    want = s / float(n)
    assert np.array_equal(bits(divide(s, float(n))), bits(want))
    # These dividends matter: one product by RN(1/n) rounds some of them the wrong way.
    assert not np.array_equal(bits(one_product(s, float(n))), bits(want))


def _series(scale: float) -> tuple[F64, F64, F64]:
    """60 flat candles (zero true range: the ATR's total is 0), a random walk, and a NaN high at 300
    (NaN from there on). At ``scale`` 1e-283 every total is below the reciprocal's range."""
    rng = np.random.default_rng(11)
    close = np.concatenate([np.full(60, 100.0), 100.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-2, 340)))]) * scale
    high, low = close * (1.0 + rng.uniform(0.0, 2e-3, 400)), close * (1.0 - rng.uniform(0.0, 2e-3, 400))
    high[:60] = low[:60] = close[:60]
    high[300] = math.nan
    return high, low, close


@pytest.mark.parametrize("scale", [1.0, 1e-283])
@pytest.mark.parametrize("atr_n", [1, 14, 26])
def test_batch_equals_incremental_through_every_path(scale: float, atr_n: int) -> None:
    h, lo, c = _series(scale)
    state = ind.macdv_state(12, 26, 9, atr_n)
    incremental = np.array([ind.macdv_update(state, *bar) for bar in zip(h, lo, c, strict=True)]).T.copy()
    fed = ind.macdv_state(12, 26, 9, atr_n)
    parts = [ind.macdv_feed(fed, h[a:b], lo[a:b], c[a:b]) for a, b in ((0, 150), (150, 230), (230, 400))]
    batch = np.concatenate([np.stack(p) for p in parts], axis=1)
    assert np.array_equal(bits(batch), bits(incremental))
    assert np.array_equal(bits(fed), bits(state))
    line = batch[0]
    assert (line[26:60] == 0.0).all() and np.isfinite(line[60:300]).all() and np.isnan(line[300:]).all()
    assert (line[61:300] != 0.0).all()


@pytest.mark.parametrize("scale", [1.0, 1e-283])
@pytest.mark.parametrize("n", [1, 14, 26])
def test_atr_and_rma_batch_equal_incremental_through_every_path(scale: float, n: int) -> None:
    h, lo, c = _series(scale)
    cuts = ((0, 150), (150, 230), (230, 400))
    atr_state, rma_state = ind.atr_state(n), ind.rma_state(n)
    atr_inc = np.array([ind.atr_update(atr_state, *bar) for bar in zip(h, lo, c, strict=True)])
    rma_inc = np.array([ind.rma_update(rma_state, x) for x in h - lo])
    atr_fed, rma_fed = ind.atr_state(n), ind.rma_state(n)
    atr_batch = np.concatenate([ind.atr_feed(atr_fed, h[a:b], lo[a:b], c[a:b]) for a, b in cuts])
    rma_batch = np.concatenate([ind.rma_feed(rma_fed, (h - lo)[a:b]) for a, b in cuts])
    assert np.array_equal(bits(atr_batch), bits(atr_inc)) and np.array_equal(bits(atr_fed), bits(atr_state))
    assert np.array_equal(bits(rma_batch), bits(rma_inc)) and np.array_equal(bits(rma_fed), bits(rma_state))
    assert (atr_batch[n:60] == 0.0).all() and (atr_batch[61:300] > 0.0).all() and np.isnan(atr_batch[300:]).all()
