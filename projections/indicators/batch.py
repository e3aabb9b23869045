"""Whole-series indicators: a fresh state fed the arrays (``kernels.*_feed``). NaN before warm-up.

Output ``i`` is defined from these indices on (for finite input starting at index 0):
SMA/EMA/RMA ``n - 1``; true range 1; ATR ``n``; RSI ``n``; MACD line ``slow - 1``, signal and
histogram ``slow + signal - 2``; MACD-V line ``max(slow - 1, atr_period)``, signal and histogram
``signal - 1`` later.

MACD convention (a deliberate difference from ``talib.MACD``): the line is the plain
``EMA(close, fast) - EMA(close, slow)``, each EMA seeded with the SMA of *its own* first ``n``
closes, exactly as ``talib.EMA(close, fast) - talib.EMA(close, slow)``; the line is defined from
index ``slow - 1``. ``talib.MACD`` instead starts the fast EMA at the slow one's first index
(seeding it with the SMA of closes ``slow - fast .. slow - 1``) and hides the line until the signal
is defined. The two lines differ by ``(1 - 2 / (fast + 1)) ** (i - slow + 1)`` times the seed
difference, which decays geometrically (below 1e-9 relative within ~150 bars for 12/26). We take the
plain form because MACD-V is defined on it, so ``macdv == macd.line / atr * 100`` here, and because
an incremental update can't re-seed the fast EMA after the fact without buffering closes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from projections.indicators import kernels as k
from projections.indicators import state as st

F64 = k.F64


def _f64(a: npt.ArrayLike) -> F64:
    return np.ascontiguousarray(a, dtype=np.float64)


def sma(x: npt.ArrayLike, n: int) -> F64:
    return k.sma_feed(st.sma_state(n), _f64(x))


def ema(x: npt.ArrayLike, n: int) -> F64:
    return k.ema_feed(st.ema_state(n), _f64(x))


def rma(x: npt.ArrayLike, n: int) -> F64:
    """Wilder's moving average (alpha = 1 / n), seeded with the SMA of the first ``n`` values."""
    return k.rma_feed(st.rma_state(n), _f64(x))


def true_range(high: npt.ArrayLike, low: npt.ArrayLike, close: npt.ArrayLike) -> F64:
    return k.true_range_feed(st.true_range_state(), _f64(high), _f64(low), _f64(close))


def atr(high: npt.ArrayLike, low: npt.ArrayLike, close: npt.ArrayLike, n: int = 14) -> F64:
    return k.atr_feed(st.atr_state(n), _f64(high), _f64(low), _f64(close))


def rsi(x: npt.ArrayLike, n: int = 14) -> F64:
    return k.rsi_feed(st.rsi_state(n), _f64(x))


def macd(close: npt.ArrayLike, fast: int = 12, slow: int = 26, signal: int = 9) -> tuple[F64, F64, F64]:
    """``(line, signal, histogram)``, the rows of one ``(3, n)`` array."""
    return k.macd_feed(st.macd_state(fast, slow, signal), _f64(close))


def macdv(
    high: npt.ArrayLike,
    low: npt.ArrayLike,
    close: npt.ArrayLike,
    fast: int = 12,
    slow: int = 26,
    signal: int = 9,
    atr_period: int | None = None,
) -> tuple[F64, F64, F64]:
    """``(macdv, signal, histogram)``: ``(EMA(fast) - EMA(slow)) / ATR(atr_period) * 100`` (0 where ATR is 0).

    The three are the rows of one ``(3, n)`` array (one allocation; see ``kernels.macdv_feed``)."""
    state = st.macdv_state(fast, slow, signal, atr_period)
    return k.macdv_feed(state, _f64(high), _f64(low), _f64(close))
