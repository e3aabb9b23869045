"""A bucket's trades summed in exact integers: what :func:`projections.trades.apply_trades` computes, in numba.

:func:`sums` takes trades as columns (:mod:`streams.trade_columns`: each price and size an int64 coefficient
and an exponent, exactly their ``Decimal``) in groups, one group per bucket, each in the order the fold
would apply them, and gives per group what folding them one by one into the bucket leaves:

* which trades are new: not among the bucket's ids before (``ranges``), and the first of their id in the group
  (later ones are repeats, as ``apply_trades`` skips them);
* the rows of the new trades' lowest and highest id (open, close), of their first highest and first lowest
  price (the fold keeps the first of equal values: ``"100.0"`` then ``"100.00"`` keeps ``"100.0"``), and of the
  first new trade (a new bucket starts from it);
* the sums of size, of price * size, and of the taker-buy sizes, each as coefficient and exponent: the exact
  sum, at the smallest exponent of its terms (what ``Decimal`` addition gives when nothing is rounded);
* the number of new trades and of taker-buy ones, the newest time, the lowest and highest new id, and whether
  the new ids are consecutive.

Every value is computed in int64 and kept below ``10**18`` (far below ``Decimal``'s 28 digits), and a group
where a product, a sum or an alignment of exponents would pass that is flagged (``OK`` 0): the caller folds
that bucket with ``Decimal`` instead. All jitted code of the trade fold lives in this module (numba's
``cache=True`` keys a function on its own file).
"""

from __future__ import annotations

from typing import Final

import numba
import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
B = npt.NDArray[np.bool_]

LIMIT: Final = 10**18

# the columns of sums()'s result, one row per group
FRESH, FIRST, OPEN, CLOSE, HIGH, LOW = 0, 1, 2, 3, 4, 5
VOLUME, VOLUME_EXP, QUOTE, QUOTE_EXP, TAKER, TAKER_EXP, TAKERS = 6, 7, 8, 9, 10, 11, 12
NEWEST, MIN_ID, MAX_ID, OK, CONSECUTIVE = 13, 14, 15, 16, 17
WIDTH: Final = 18


@numba.njit(cache=True)
def _scale(c: int, d: int) -> int:
    """``c * 10**d`` (c >= 0, d >= 0), or -1 when it would reach LIMIT."""
    for _ in range(d):
        if c >= LIMIT // 10:
            return -1
        c *= 10
    return c


@numba.njit(cache=True)
def _add(acc: int, acc_exp: int, c: int, e: int) -> tuple[int, int]:
    """The exact sum of ``acc * 10**acc_exp`` and ``c * 10**e`` at the smaller exponent; coefficient -1 when
    it would reach LIMIT."""
    if e < acc_exp:
        acc = _scale(acc, acc_exp - e)
        acc_exp = e
    elif e > acc_exp:
        c = _scale(c, e - acc_exp)
    if acc < 0 or c < 0 or acc >= LIMIT - c:
        return -1, acc_exp
    return acc + c, acc_exp


@numba.njit(cache=True)
def _cmp(c1: int, e1: int, c2: int, e2: int) -> int:
    """-1, 0, 1 as ``c1 * 10**e1`` is below, equal to, above ``c2 * 10**e2``; 2 when it can't tell in int64."""
    if e1 > e2:
        c1 = _scale(c1, e1 - e2)
    elif e2 > e1:
        c2 = _scale(c2, e2 - e1)
    if c1 < 0 or c2 < 0:
        return 2
    return -1 if c1 < c2 else (1 if c1 > c2 else 0)


@numba.njit(cache=True)
def sums(
    order: I64,
    bounds: I64,
    ranges: I64,
    range_bounds: I64,
    trade_id: I64,
    price: I64,
    price_exp: I8,
    size: I64,
    size_exp: I8,
    time_ms: I64,
    taker_buy: B,
    fresh: B,
) -> I64:
    """Group ``g``'s trades are rows ``order[bounds[g]:bounds[g + 1]]`` (in fold order); its bucket's ids before
    are the inclusive ranges ``ranges[2k], ranges[2k + 1]`` for k in ``range_bounds[g]:range_bounds[g + 1]``.
    Sets ``fresh[row]`` for the new trades; returns one row of the columns above per group."""
    groups = len(bounds) - 1
    out = np.zeros((groups, WIDTH), np.int64)
    for g in range(groups):
        rows = order[bounds[g] : bounds[g + 1]]
        n = len(rows)
        ids = trade_id[rows]
        by_id = np.argsort(ids, kind="mergesort")  # stable: among equal ids, the first in fold order first
        for k in range(n):
            row = rows[by_id[k]]
            i = ids[by_id[k]]
            new = k == 0 or ids[by_id[k - 1]] != i
            if new:
                for r in range(range_bounds[g], range_bounds[g + 1]):
                    if ranges[2 * r] <= i <= ranges[2 * r + 1]:
                        new = False
                        break
            fresh[row] = new
        o = out[g]
        ok = True
        count = takers = 0
        for k in range(n):
            row = rows[k]
            if not fresh[row]:
                continue
            p, pe, q, qe, i = price[row], int(price_exp[row]), size[row], int(size_exp[row]), trade_id[row]
            if p < 0 or q < 0 or (p > 0 and q >= LIMIT // p + 1):
                ok = False
                break
            if count == 0:
                o[FIRST] = o[OPEN] = o[CLOSE] = o[HIGH] = o[LOW] = row
                o[MIN_ID] = o[MAX_ID] = i
                o[VOLUME], o[VOLUME_EXP] = q, qe
                o[QUOTE], o[QUOTE_EXP] = p * q, pe + qe
                o[NEWEST] = time_ms[row]
            else:
                if i < o[MIN_ID]:
                    o[MIN_ID], o[OPEN] = i, row
                if i > o[MAX_ID]:
                    o[MAX_ID], o[CLOSE] = i, row
                hi = _cmp(p, pe, price[o[HIGH]], int(price_exp[o[HIGH]]))
                lo = _cmp(p, pe, price[o[LOW]], int(price_exp[o[LOW]]))
                if hi == 2 or lo == 2:
                    ok = False
                    break
                if hi == 1:
                    o[HIGH] = row
                if lo == -1:
                    o[LOW] = row
                o[VOLUME], o[VOLUME_EXP] = _add(o[VOLUME], o[VOLUME_EXP], q, qe)
                o[QUOTE], o[QUOTE_EXP] = _add(o[QUOTE], o[QUOTE_EXP], p * q, pe + qe)
                if o[VOLUME] < 0 or o[QUOTE] < 0:
                    ok = False
                    break
                if time_ms[row] > o[NEWEST]:
                    o[NEWEST] = time_ms[row]
            if taker_buy[row]:
                if takers == 0:
                    o[TAKER], o[TAKER_EXP] = q, qe
                else:
                    o[TAKER], o[TAKER_EXP] = _add(o[TAKER], o[TAKER_EXP], q, qe)
                    if o[TAKER] < 0:
                        ok = False
                        break
                takers += 1
            count += 1
        o[FRESH] = count
        o[TAKERS] = takers
        o[OK] = 1 if ok else 0
        o[CONSECUTIVE] = 1 if count > 0 and o[MAX_ID] - o[MIN_ID] == count - 1 else 0
    return out
