"""The numba kernels: one O(1) step per indicator, and the batch loops built from those same steps.

Every indicator keeps its whole memory in a flat ``float64`` state array (layouts in ``state.py``):
a two-slot header ``[kind, version]`` and then fixed-offset blocks. ``*_update(state, ...)`` advances
the state by one value and returns the new output; ``*_feed(state, arrays)`` runs the same step over
arrays, so a batch result *is* the sequence of incremental results, bit for bit, and a batch can be
resumed incrementally (or the other way round) from the state it leaves behind.

Arithmetic follows TA-Lib's C code operation by operation (same sums, same order, no FMA), so the
outputs agree with TA-Lib's to the last bits where TA-Lib has the indicator. (Not always *in* the last
bits: the installed TA-Lib 0.8.2 build doesn't keep its source's operation order everywhere. On 1M
random-walk candles the true range is bit-identical, EMA(12) all but 4 points, ATR(26) only ~22 %
of points, all within 2e-15 relative.)

* SMA: running sum, ``out = total / n`` then ``total -= oldest``.
* EMA: ``k = 2 / (n + 1)``, seeded with the sum of the first ``n`` values ``/ n``, then
  ``ema = (x - ema) * k + ema``.
* Wilder RMA: seeded the same way, then ``rma = (rma * (n - 1) + x) / n``.
* True range: undefined (NaN) on the first bar, which has no previous close.
* ATR: the RMA of the true ranges, so its first value (index ``n``) is the mean of ``TR[1..n]``.
* RSI: Wilder's averages of gains and losses; ``100 * gain / (gain + loss)``, 0 when both are 0.
* Leading NaN inputs are skipped (the series starts at the first finite bar), as TA-Lib's Python
  wrapper does; a NaN after that propagates.

One exception to "no FMA", which changes no result: the batch RMA, ATR and MACD-V loops divide the
running total by the period without a division instruction. ``_quotient`` multiplies by a two-part
reciprocal and rounds once (an FMA), which gives the correctly rounded quotient, exactly what ``/``
gives, for every dividend it is used on (the proof is at ``_quotient``; any other dividend takes the
division itself). The results and the states are the same to the bit; only the loop-carried chain
gets shorter (a division's latency is ~4x a multiply's, and the ATR's chain bounded the MACD-V loop).
The ATR and MACD-V loops go one step further (``_rma_quotient``, proof there): the reciprocal's
correction term is computed from the previous ATR and the true range instead of from their total, so
the chain is multiply, add, FMA (10 cycles on Zen 4; 13 with the correction after the total, ~19 with
the division); and a candle with ``high >= low`` takes its true range in three operations
(``_tr_ordered``, the same bits as ``_tr``). After a candle with ``high < low`` (swapped columns, say)
a second loop takes up to ``RUN`` candles with ``_tr`` itself; a total neither may divide (zero, tiny,
inf, NaN, or of a negative true range) takes the step's arithmetic, division included.

All jitted code lives in this one module on purpose: numba's on-disk cache (``cache=True``) keys a
function on its own file only, so a step edited in another module would leave stale cached callers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt
from llvmlite import ir  # type: ignore[import-untyped]
from numba import types
from numba.extending import intrinsic

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Triple = tuple[float, float, float]
_F = TypeVar("_F", bound=Callable[..., Any])


def _njit(fn: _F) -> _F:
    """``numba.njit(cache=True)``, typed so the decorated function keeps its signature for mypy.

    ``error_model="numpy"``: float division by zero gives inf/NaN as in C, not ZeroDivisionError."""
    return cast(_F, numba.njit(cache=True, error_model="numpy")(fn))


def _step(fn: _F) -> _F:
    """A step: inlined into its callers at numba-IR level (LLVM alone leaves the calls in place)."""
    return cast(_F, numba.njit(cache=True, error_model="numpy", inline="always")(fn))


def _fma_typer(typingctx: Any, a: Any, b: Any, c: Any) -> tuple[Any, Callable[..., Any]]:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        d = ir.DoubleType()
        return builder.call(builder.module.declare_intrinsic("llvm.fma", [d], ir.FunctionType(d, [d, d, d])), args)

    return types.float64(types.float64, types.float64, types.float64), codegen


# ``a * b + c`` rounded once: LLVM's fma intrinsic, one instruction on a CPU with FMA (a correctly
# rounded library call on one without). Only ever used where the result is proven exact (below).
_fma = cast(Callable[[float, float, float], float], intrinsic(_fma_typer))

NAN = math.nan
HEADER = 2  # [kind, version]
# Block sizes and offsets inside a block (relative to the block's start).
SMA_N, SMA_CNT, SMA_TOTAL, SMA_HEAD, SMA_RING = 0, 1, 2, 3, 4  # + n ring slots
EMA_N, EMA_K, EMA_CNT, EMA_SUM, EMA_VAL, EMA_SIZE = 0, 1, 2, 3, 4, 5
RMA_N, RMA_CNT, RMA_SUM, RMA_VAL, RMA_SIZE = 0, 1, 2, 3, 4
TR_HAVE, TR_PREV, TR_SIZE = 0, 1, 2
ATR_SIZE = TR_SIZE + RMA_SIZE  # a TR block, then an RMA block
RSI_N, RSI_CNT, RSI_PREV, RSI_GAIN, RSI_LOSS, RSI_SIZE = 0, 1, 2, 3, 4, 5
# Composite layouts (absolute offsets, header included).
MACD_FAST, MACD_SLOW, MACD_SIGNAL = HEADER, HEADER + EMA_SIZE, HEADER + 2 * EMA_SIZE
MACD_LEN = HEADER + 3 * EMA_SIZE
MACDV_FAST, MACDV_SLOW, MACDV_ATR = HEADER, HEADER + EMA_SIZE, HEADER + 2 * EMA_SIZE
MACDV_SIGNAL = MACDV_ATR + ATR_SIZE
MACDV_LEN = MACDV_SIGNAL + EMA_SIZE

# ------------------------------------------------------------------ the arithmetic, shared by all


@_step
def _ema_next(prev: float, k: float, x: float) -> float:
    return ((x - prev) * k) + prev


@_step
def _rma_total(prev: float, n: float, x: float) -> float:
    return prev * (n - 1.0) + x


@_step
def _rma_next(prev: float, n: float, x: float) -> float:
    return _rma_total(prev, n, x) / n


# ``s / n`` for a whole number ``1 <= n <= 2**40`` without the division: ``hi = RN(1/n)`` and
# ``lo = RN(1/n - hi)`` (exactly so: ``1 - n * hi`` is exact in one FMA, and dividing it by ``n``
# rounds once), then ``RN(s * hi + RN(s * lo))`` in one FMA. Why that is ``RN(s / n)`` bit for bit
# when ``2**-900 <= |s| < inf`` (nothing underflows or overflows; any other ``s``, zeros and NaN
# included, and any other ``n`` take the division):
#
# * Error. With ``u = 2**-53``: ``|hi + lo - 1/n| <= u |lo| <= u**2 (1 + u) / n`` and
#   ``|RN(s * lo) - s * lo| <= u**2 (1 + u) |s| / n``, so the FMA's exact sum ``V`` is within
#   ``(2 + 2u) u**2 |Q| < 2**-104 |Q|`` of ``Q = s / n``.
# * Distance. RN changes value only at the midpoints between neighbouring doubles. Near ``Q``
#   (``2**e <= |Q| < 2**(e+1)``) they are ``M * 2**(e-53)``, or ``M * 2**(e-54)`` for the one just
#   below ``2**e``, with ``M`` odd and ``2**53 < M < 2**54``. As ``|s| >= |Q|``, ``s`` is a multiple
#   of ``2**(e-52)``, so ``s - n * m`` is a multiple of ``2**(e-54)``; and it is not 0, since
#   ``s = n * m`` would give ``s`` an odd significand part ``>= M > 2**53``. Hence
#   ``|Q - m| >= 2**(e-54) / n > 2**-55 |Q| / n``.
# * ``2**-104 < 2**-55 / n``: ``V`` and ``Q`` lie strictly between the same two midpoints, and
#   ``RN(V) = RN(Q)``, the quotient the division returns. (tests/test_kernels_quotient.py checks it
#   against ``/`` too, on random bit patterns and on dividends built to sit next to a midpoint.)
RUN = 256  # candles a batch loop takes with the general true range after a malformed candle
QUOTIENT_MIN = 2.0**-900
QUOTIENT_MAX_N = 2.0**40
DOUBLE_MAX = 1.7976931348623157e308  # the largest finite double


@_step
def _reciprocal(n: float) -> tuple[float, float, float]:
    """``(hi, lo, smallest)`` for :func:`_quotient`: ``1 / n`` as a sum of two doubles, and the smallest
    ``|s|`` it may divide (infinite, i.e. never, unless ``n`` is a whole number in ``[1, 2**40]``)."""
    hi = 1.0 / n
    ok = 1.0 <= n <= QUOTIENT_MAX_N and n == math.floor(n)
    return hi, _fma(-hi, n, 1.0) / n, QUOTIENT_MIN if ok else math.inf


@_step
def _quotient_exact(s: float, smallest: float) -> bool:
    """Whether :func:`_quotient` gives ``s / n`` (else divide: zero, tiny, inf, NaN, or any ``s`` when
    ``n`` is not a whole number in range)."""
    return smallest <= abs(s) < math.inf


@_step
def _quotient(s: float, hi: float, lo: float) -> float:
    """``s / n``, bit for bit, where ``hi, lo, smallest = _reciprocal(n)`` and ``_quotient_exact(s, smallest)``."""
    return _fma(s, hi, s * lo)


# The RMA's total without ``s`` in the correction. In the batch loops ``s`` is an RMA's total
# ``RN(RN(p * (n - 1)) + x)`` (``_rma_total``), and ``RN(s * lo)`` above puts a multiply between the
# total and the FMA on the loop-carried chain (``p`` -> mul -> add -> mul -> FMA: 13 cycles on Zen 4).
# When ``p >= 0`` and ``x >= 0`` the correction may be ``c = RN(p * RN((n - 1) * lo) + RN(x * lo))``
# instead (one FMA from ``p`` and ``x``, beside the total's mul and add, not after them), and
# ``RN(s * hi + c)`` is still ``RN(s / n)``, bit for bit, for ``2**-900 <= s < inf``:
#
# * Both sums have non-negative terms, so each of their roundings is a relative error of at most
#   ``u`` of the whole sum: ``s = (A + x)(1 + t)`` and ``c = lo (A + x)(1 + t')`` with ``A = p (n - 1)``,
#   ``|t| <= 2u + u**2`` and ``|t'| <= 3u + 3u**2``, so ``c = s * lo * (1 + d)`` with ``|d| < 6u``.
#   (Underflow in ``A``, ``x * lo`` or the FMA adds at most ``4 * 2**-1075`` in all.)
# * With ``|s * lo| <= u (1 + u) |Q|``, the FMA's exact sum is within ``u**2 (1 + u) |Q| + 6u**2 (1 + u) |Q|
#   < 2**-102 |Q|`` of ``Q = s / n`` (plus ``2**-1072``, far below ``2**-1036 <= 2**-57 |Q| / n``), and
#   ``2**-102 + 2**-57 / n < 2**-55 / n`` for ``n <= 2**40``: the distance bound at ``_quotient``
#   holds, and so does its conclusion. ``lo = 0`` (``n`` a power of two) gives ``c = 0``, as before.
# * The result is then ``RN(s / n) > 0``, so a loop that takes only ``x >= 0`` keeps ``p >= 0``.


@_step
def _reciprocal_carry(n: float, lo: float) -> float:
    """``RN((n - 1) * lo)`` for :func:`_rma_quotient` (``lo`` from ``_reciprocal(n)``)."""
    return (n - 1.0) * lo


@_step
def _rma_quotient_exact(total: float, smallest: float) -> bool:
    """Whether :func:`_rma_quotient` gives ``total / n``, given ``prev >= 0`` (which it keeps) and ``x >= 0``
    or NaN (a NaN total fails). Two compares: the total of non-negative terms needs no ``abs``."""
    return smallest <= total <= DOUBLE_MAX


@_step
def _rma_quotient(prev: float, x: float, total: float, hi: float, lo: float, carry: float) -> float:
    """``_rma_total(prev, n, x) / n``, bit for bit, when ``prev >= 0``, ``x >= 0`` and
    ``_rma_quotient_exact(total, smallest)`` (``total`` is that sum; ``hi, lo, smallest = _reciprocal(n)``,
    ``carry = _reciprocal_carry(n, lo)``)."""
    return _fma(total, hi, _fma(prev, carry, x * lo))


@_step
def _tr(prev_close: float, high: float, low: float) -> float:
    greatest = high - low
    v2 = abs(prev_close - high)
    if v2 > greatest:
        greatest = v2
    v3 = abs(prev_close - low)
    if v3 > greatest:
        greatest = v3
    return greatest


@_step
def _tr_ordered(prev_close: float, high: float, low: float) -> float:
    """:func:`_tr`, bit for bit, when ``high >= low`` (so neither is NaN): ``max(high, prev) - min(low, prev)``,
    three operations instead of seven. With ``prev >= high`` both give ``prev - low`` (a rounded difference
    grows with its first operand and shrinks with its second, so it is the largest of the three), with
    ``prev <= low`` both give ``high - prev`` (``abs(prev - high)``: rounding is symmetric), between them
    ``high - low``; a zero is ``+0`` in both. A NaN ``prev`` gives ``high - low`` in both; infinite
    operands give inf or NaN, which no caller's total passes. The result is ``>= 0`` or NaN."""
    top = prev_close if prev_close > high else high
    bottom = prev_close if prev_close < low else low
    return top - bottom


@_step
def _rsi(gain: float, loss: float) -> float:
    total = gain + loss
    return 0.0 if total == 0.0 else 100.0 * (gain / total)


@_step
def _macdv_ratio(diff: float, atr: float) -> float:
    return (diff / atr) * 100.0


@_step
def _macdv_line(diff: float, atr: float) -> float:
    if atr == 0.0 and not math.isnan(diff):
        return 0.0  # no range at all, so no momentum (and no 0 / 0)
    return _macdv_ratio(diff, atr)  # NaN while either part is warming up


# ------------------------------------------------------------------------------------ the steps


@_step
def _sma_step(s: F64, o: int, x: float) -> float:
    n = s[o + SMA_N]
    cnt = s[o + SMA_CNT]
    if cnt == 0.0 and math.isnan(x):
        return NAN
    head = int(s[o + SMA_HEAD])
    total = s[o + SMA_TOTAL] + x
    s[o + SMA_RING + head] = x
    head += 1
    if head == int(n):
        head = 0
    s[o + SMA_HEAD] = head
    if cnt < n:
        cnt += 1.0
        s[o + SMA_CNT] = cnt
        if cnt < n:
            s[o + SMA_TOTAL] = total
            return NAN
    out: float = total / n
    s[o + SMA_TOTAL] = total - s[o + SMA_RING + head]  # the oldest value leaves the window
    return out


@_step
def _ema_step(s: F64, o: int, x: float) -> float:
    n = s[o + EMA_N]
    cnt = s[o + EMA_CNT]
    if cnt >= n:
        v = _ema_next(s[o + EMA_VAL], s[o + EMA_K], x)
        s[o + EMA_VAL] = v
        return v
    if cnt == 0.0 and math.isnan(x):
        return NAN
    cnt += 1.0
    s[o + EMA_CNT] = cnt
    total = s[o + EMA_SUM] + x
    s[o + EMA_SUM] = total
    if cnt < n:
        return NAN
    seed: float = total / n
    s[o + EMA_VAL] = seed
    return seed


@_step
def _rma_step(s: F64, o: int, x: float) -> float:
    n = s[o + RMA_N]
    cnt = s[o + RMA_CNT]
    if cnt >= n:
        v = _rma_next(s[o + RMA_VAL], n, x)
        s[o + RMA_VAL] = v
        return v
    if cnt == 0.0 and math.isnan(x):
        return NAN
    cnt += 1.0
    s[o + RMA_CNT] = cnt
    total = s[o + RMA_SUM] + x
    s[o + RMA_SUM] = total
    if cnt < n:
        return NAN
    seed: float = total / n
    s[o + RMA_VAL] = seed
    return seed


@_step
def _tr_step(s: F64, o: int, high: float, low: float, close: float) -> float:
    if s[o + TR_HAVE] == 0.0:
        if not (math.isnan(high) or math.isnan(low) or math.isnan(close)):
            s[o + TR_HAVE] = 1.0
            s[o + TR_PREV] = close
        return NAN
    prev = s[o + TR_PREV]
    s[o + TR_PREV] = close
    return _tr(prev, high, low)


@_step
def _atr_step(s: F64, o: int, high: float, low: float, close: float) -> float:
    return _rma_step(s, o + TR_SIZE, _tr_step(s, o, high, low, close))


@_step
def _rsi_step(s: F64, o: int, x: float) -> float:
    n = s[o + RSI_N]
    cnt = s[o + RSI_CNT]
    if cnt == 0.0:
        if not math.isnan(x):
            s[o + RSI_CNT] = 1.0
            s[o + RSI_PREV] = x
        return NAN
    diff = x - s[o + RSI_PREV]
    s[o + RSI_PREV] = x
    gain = s[o + RSI_GAIN]
    loss = s[o + RSI_LOSS]
    warm = cnt > n  # n differences already averaged
    if warm:
        loss *= n - 1.0
        gain *= n - 1.0
    if diff < 0.0:
        loss -= diff
    else:
        gain += diff
    if not warm:
        cnt += 1.0
        s[o + RSI_CNT] = cnt
        if cnt <= n:
            s[o + RSI_GAIN] = gain
            s[o + RSI_LOSS] = loss
            return NAN
    loss /= n
    gain /= n
    s[o + RSI_GAIN] = gain
    s[o + RSI_LOSS] = loss
    return _rsi(gain, loss)


@_step
def _macd_step(s: F64, close: float) -> Triple:
    line = _ema_step(s, MACD_FAST, close) - _ema_step(s, MACD_SLOW, close)
    signal = _ema_step(s, MACD_SIGNAL, line)
    return line, signal, line - signal


@_step
def _macdv_step(s: F64, high: float, low: float, close: float) -> Triple:
    diff = _ema_step(s, MACDV_FAST, close) - _ema_step(s, MACDV_SLOW, close)
    line = _macdv_line(diff, _atr_step(s, MACDV_ATR, high, low, close))
    signal = _ema_step(s, MACDV_SIGNAL, line)
    return line, signal, line - signal


# ------------------------------------------------------------------------------ O(1) public updates


@_njit
def sma_update(state: F64, x: float) -> float:
    return _sma_step(state, HEADER, x)


@_njit
def ema_update(state: F64, x: float) -> float:
    return _ema_step(state, HEADER, x)


@_njit
def rma_update(state: F64, x: float) -> float:
    return _rma_step(state, HEADER, x)


@_njit
def true_range_update(state: F64, high: float, low: float, close: float) -> float:
    return _tr_step(state, HEADER, high, low, close)


@_njit
def atr_update(state: F64, high: float, low: float, close: float) -> float:
    return _atr_step(state, HEADER, high, low, close)


@_njit
def rsi_update(state: F64, x: float) -> float:
    return _rsi_step(state, HEADER, x)


@_njit
def macd_update(state: F64, close: float) -> Triple:
    """``(line, signal, histogram)`` after one more close."""
    return _macd_step(state, close)


@_njit
def macdv_update(state: F64, high: float, low: float, close: float) -> Triple:
    """``(macdv, signal, histogram)`` after one more candle."""
    return _macdv_step(state, high, low, close)


@_njit
def macdv_update_rows(states: F64, rows: I64, high: F64, low: F64, close: F64) -> tuple[F64, F64, F64]:
    """One candle each for many series: ``states[rows[j]]`` takes candle ``j`` (a 2-D stack of states)."""
    m = rows.shape[0]
    line, signal, hist = np.empty(m), np.empty(m), np.empty(m)
    for j in range(m):
        line[j], signal[j], hist[j] = _macdv_step(states[rows[j]], high[j], low[j], close[j])
    return line, signal, hist


# ---------------------------------------------------------------------- batch: steps, then a tight loop
# Each feed runs the step until the state is warmed up, then the warmed-up branch of the same step
# with the state held in locals (the same ``_*_next`` arithmetic), and writes the locals back.
# A feed with three outputs returns the rows of one ``(3, m)`` array: one allocation instead of
# three, and warm pages on the next call. glibc's malloc, once it has freed an mmap-ed block, serves
# blocks of that size from the heap and trims the heap top only beyond twice that size: three
# separate outputs, freed together, leave 3x one block at the top, get trimmed, and the next call
# page-faults all of them in again (~3,900 faults for 1M candles); one block of 3x stays mapped.


@_njit
def sma_feed(state: F64, x: F64) -> F64:
    m = x.shape[0]
    out = np.empty(m)
    o = HEADER
    i = 0
    while i < m and state[o + SMA_CNT] < state[o + SMA_N]:
        out[i] = _sma_step(state, o, x[i])
        i += 1
    n = state[o + SMA_N]
    size = int(n)
    head = int(state[o + SMA_HEAD])
    total = state[o + SMA_TOTAL]
    ring = state[o + SMA_RING : o + SMA_RING + size]
    for j in range(i, m):
        total += x[j]
        ring[head] = x[j]
        head += 1
        if head == size:
            head = 0
        out[j] = total / n
        total -= ring[head]
    state[o + SMA_HEAD] = head
    state[o + SMA_TOTAL] = total
    return out


@_njit
def ema_feed(state: F64, x: F64) -> F64:
    m = x.shape[0]
    out = np.empty(m)
    o = HEADER
    i = 0
    while i < m and state[o + EMA_CNT] < state[o + EMA_N]:
        out[i] = _ema_step(state, o, x[i])
        i += 1
    v, k = state[o + EMA_VAL], state[o + EMA_K]
    for j in range(i, m):
        v = _ema_next(v, k, x[j])
        out[j] = v
    state[o + EMA_VAL] = v
    return out


@_njit
def rma_feed(state: F64, x: F64) -> F64:
    m = x.shape[0]
    out = np.empty(m)
    o = HEADER
    i = 0
    while i < m and state[o + RMA_CNT] < state[o + RMA_N]:
        out[i] = _rma_step(state, o, x[i])
        i += 1
    v, n = state[o + RMA_VAL], state[o + RMA_N]
    hi, lo, smallest = _reciprocal(n)
    while i < m:  # as in macdv_feed: exact reciprocal products while they apply, else one division
        xs, os = x[i:], out[i:]
        done = xs.shape[0]
        for j in range(done):
            total = _rma_total(v, n, xs[j])
            if not _quotient_exact(total, smallest):
                done = j
                break
            v = _quotient(total, hi, lo)
            os[j] = v
        i += done
        if i < m:
            v = _rma_next(v, n, x[i])
            out[i] = v
            i += 1
    state[o + RMA_VAL] = v
    return out


@_njit
def true_range_feed(state: F64, high: F64, low: F64, close: F64) -> F64:
    m = close.shape[0]
    out = np.empty(m)
    o = HEADER
    i = 0
    while i < m and state[o + TR_HAVE] == 0.0:
        out[i] = _tr_step(state, o, high[i], low[i], close[i])
        i += 1
    prev = state[o + TR_PREV]
    for j in range(i, m):
        out[j] = _tr(prev, high[j], low[j])
        prev = close[j]
    state[o + TR_PREV] = prev
    return out


@_njit
def atr_feed(state: F64, high: F64, low: F64, close: F64) -> F64:
    m = close.shape[0]
    out = np.empty(m)
    o = HEADER
    r = o + TR_SIZE
    i = 0
    while i < m and state[r + RMA_CNT] < state[r + RMA_N]:
        out[i] = _atr_step(state, o, high[i], low[i], close[i])
        i += 1
    prev, v, n = state[o + TR_PREV], state[r + RMA_VAL], state[r + RMA_N]
    hi, lo, smallest = _reciprocal(n)
    carry = _reciprocal_carry(n, lo)
    while i < m:  # as in macdv_feed: exact reciprocal products while they apply, else one division
        h, lw, c, os = high[i:], low[i:], close[i:], out[i:]
        done = c.shape[0] if v >= 0.0 else 0
        for j in range(done):
            hj, lj = h[j], lw[j]
            if not hj >= lj:
                done = j
                break
            tr = _tr_ordered(prev, hj, lj)
            total = _rma_total(v, n, tr)
            if not _rma_quotient_exact(total, smallest):
                done = j
                break
            v = _rma_quotient(v, tr, total, hi, lo, carry)
            prev = c[j]
            os[j] = v
        i += done
        if i < m and not high[i] >= low[i]:  # as in macdv_feed: RUN candles with the general true range
            h, lw, c, os = high[i : i + RUN], low[i : i + RUN], close[i : i + RUN], out[i : i + RUN]
            done = c.shape[0] if v >= 0.0 else 0
            for j in range(done):
                tr = _tr(prev, h[j], lw[j])
                total = _rma_total(v, n, tr)
                if not (tr >= 0.0 and _rma_quotient_exact(total, smallest)):
                    done = j
                    break
                v = _rma_quotient(v, tr, total, hi, lo, carry)
                prev = c[j]
                os[j] = v
            i += done
            if done:
                continue
        if i < m:
            v = _rma_next(v, n, _tr(prev, high[i], low[i]))
            prev = close[i]
            out[i] = v
            i += 1
    state[o + TR_PREV] = prev
    state[r + RMA_VAL] = v
    return out


@_njit
def rsi_feed(state: F64, x: F64) -> F64:
    m = x.shape[0]
    out = np.empty(m)
    o = HEADER
    i = 0
    while i < m and state[o + RSI_CNT] <= state[o + RSI_N]:
        out[i] = _rsi_step(state, o, x[i])
        i += 1
    n, prev, gain, loss = state[o + RSI_N], state[o + RSI_PREV], state[o + RSI_GAIN], state[o + RSI_LOSS]
    for j in range(i, m):
        diff = x[j] - prev
        prev = x[j]
        loss *= n - 1.0
        gain *= n - 1.0
        if diff < 0.0:
            loss -= diff
        else:
            gain += diff
        loss /= n
        gain /= n
        out[j] = _rsi(gain, loss)
    state[o + RSI_PREV] = prev
    state[o + RSI_GAIN] = gain
    state[o + RSI_LOSS] = loss
    return out


@_njit
def macd_feed(state: F64, close: F64) -> tuple[F64, F64, F64]:
    m = close.shape[0]
    out = np.empty((3, m))
    line, signal, hist = out[0], out[1], out[2]
    i = 0
    while i < m and state[MACD_SIGNAL + EMA_CNT] < state[MACD_SIGNAL + EMA_N]:
        line[i], signal[i], hist[i] = _macd_step(state, close[i])
        i += 1
    fast, kf = state[MACD_FAST + EMA_VAL], state[MACD_FAST + EMA_K]
    slow, ks = state[MACD_SLOW + EMA_VAL], state[MACD_SLOW + EMA_K]
    sig, kg = state[MACD_SIGNAL + EMA_VAL], state[MACD_SIGNAL + EMA_K]
    for j in range(i, m):
        fast = _ema_next(fast, kf, close[j])
        slow = _ema_next(slow, ks, close[j])
        v = fast - slow
        sig = _ema_next(sig, kg, v)
        line[j], signal[j], hist[j] = v, sig, v - sig
    state[MACD_FAST + EMA_VAL], state[MACD_SLOW + EMA_VAL], state[MACD_SIGNAL + EMA_VAL] = fast, slow, sig
    return line, signal, hist


@_step
def _macdv_tail(fast: float, slow: float, atr: float, sig: float, kg: float) -> tuple[float, float]:
    """``(line, signal)`` once the EMAs and the ATR have taken the candle (``_macdv_step``'s end)."""
    v = _macdv_line(fast - slow, atr)
    return v, _ema_next(sig, kg, v)


@_step
def _macdv_taken(
    atr: float, tr: float, total: float, hi: float, lo: float, carry: float,
    close: float, fast: float, kf: float, slow: float, ks: float, sig: float, kg: float,
) -> tuple[float, float, float, float, float]:  # fmt: skip
    """``(atr, fast, slow, line, signal)`` after a candle whose ATR total ``_rma_quotient`` divides (so
    ``atr > 0`` after it, and the line is the plain ratio): ``_macdv_step``'s arithmetic."""
    atr = _rma_quotient(atr, tr, total, hi, lo, carry)
    fast = _ema_next(fast, kf, close)
    slow = _ema_next(slow, ks, close)
    v = _macdv_ratio(fast - slow, atr)
    return atr, fast, slow, v, _ema_next(sig, kg, v)


@_njit
def macdv_feed(state: F64, high: F64, low: F64, close: F64) -> tuple[F64, F64, F64]:
    m = close.shape[0]
    out = np.empty((3, m))
    line, signal, hist = out[0], out[1], out[2]
    i = 0
    while i < m and state[MACDV_SIGNAL + EMA_CNT] < state[MACDV_SIGNAL + EMA_N]:
        line[i], signal[i], hist[i] = _macdv_step(state, high[i], low[i], close[i])
        i += 1
    a = MACDV_ATR + TR_SIZE
    fast, kf = state[MACDV_FAST + EMA_VAL], state[MACDV_FAST + EMA_K]
    slow, ks = state[MACDV_SLOW + EMA_VAL], state[MACDV_SLOW + EMA_K]
    prev, atr, na = state[MACDV_ATR + TR_PREV], state[a + RMA_VAL], state[a + RMA_N]
    sig, kg = state[MACDV_SIGNAL + EMA_VAL], state[MACDV_SIGNAL + EMA_K]
    hi, lo, smallest = _reciprocal(na)
    carry = _reciprocal_carry(na, lo)
    while i < m:
        # Candles i.. while the ATR's total divides exactly by the reciprocal (all of them, for
        # prices): a loop that leaves on the rare dividend keeps the division out of it (a branch
        # inside would be turned into computing both and selecting). Sliced, so indices count from 0.
        # It takes candles with ``high >= low`` (true range ``>= 0``: ``_tr_ordered``), needs ``atr >= 0``
        # on entry and keeps it (``_rma_quotient``); in it ``atr > 0``, so the line is the plain ratio
        # (``_macdv_line``'s zero case can't arise).
        h, lw, c = high[i:], low[i:], close[i:]
        ol, og, oh = line[i:], signal[i:], hist[i:]
        done = c.shape[0] if atr >= 0.0 else 0
        for j in range(done):
            hj, lj = h[j], lw[j]
            if not hj >= lj:  # a malformed candle (or NaN): the loop below, or the step's arithmetic
                done = j
                break
            tr = _tr_ordered(prev, hj, lj)
            total = _rma_total(atr, na, tr)
            if not _rma_quotient_exact(total, smallest):
                done = j
                break
            prev = c[j]
            atr, fast, slow, v, sig = _macdv_taken(atr, tr, total, hi, lo, carry, prev, fast, kf, slow, ks, sig, kg)
            ol[j], og[j], oh[j] = v, sig, v - sig
        i += done
        if i < m and not high[i] >= low[i]:
            # high < low (swapped columns, say): up to RUN candles with the step's own true range, which
            # is >= 0 unless the previous close is NaN, and still the reciprocal; then the loop above.
            h, lw, c = high[i : i + RUN], low[i : i + RUN], close[i : i + RUN]
            ol, og, oh = line[i : i + RUN], signal[i : i + RUN], hist[i : i + RUN]
            done = c.shape[0] if atr >= 0.0 else 0
            for j in range(done):
                tr = _tr(prev, h[j], lw[j])
                total = _rma_total(atr, na, tr)
                if not (tr >= 0.0 and _rma_quotient_exact(total, smallest)):
                    done = j
                    break
                prev = c[j]
                atr, fast, slow, v, sig = _macdv_taken(atr, tr, total, hi, lo, carry, prev, fast, kf, slow, ks, sig, kg)
                ol[j], og[j], oh[j] = v, sig, v - sig
            i += done
            if done:
                continue
        if i < m:  # a total of zero (a flat market), tiny, inf or NaN: the division itself
            atr = _rma_next(atr, na, _tr(prev, high[i], low[i]))
            prev = close[i]
            fast = _ema_next(fast, kf, prev)
            slow = _ema_next(slow, ks, prev)
            v, sig = _macdv_tail(fast, slow, atr, sig, kg)
            line[i], signal[i], hist[i] = v, sig, v - sig
            i += 1
    state[MACDV_FAST + EMA_VAL], state[MACDV_SLOW + EMA_VAL], state[MACDV_SIGNAL + EMA_VAL] = fast, slow, sig
    state[MACDV_ATR + TR_PREV], state[a + RMA_VAL] = prev, atr
    return line, signal, hist
