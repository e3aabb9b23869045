"""Indicator state records: flat little-endian ``float64`` arrays, made here and persisted as bytes.

Every state is ``[kind, version, block...]``; blocks sit at fixed offsets (``kernels.py``) and carry
their own periods, so a state is self-describing and needs nothing else to resume::

    sma   [1, v, n, count, total, head, ring[0..n-1]]                  4 + n + 2 slots
    ema   [2, v, n, k, count, sum, ema]                                7 slots (k = 2 / (n + 1))
    rma   [3, v, n, count, sum, rma]                                   6 slots
    tr    [4, v, have_prev, prev_close]                                4 slots
    atr   [5, v, have_prev, prev_close, n, count, sum, atr]            8 slots
    rsi   [6, v, n, count, prev, avg_gain, avg_loss]                   7 slots
    macd  [7, v, ema(fast), ema(slow), ema(signal)]                    17 slots (136 bytes)
    macdv [8, v, ema(fast), ema(slow), atr(atr_period), ema(signal)]   23 slots (184 bytes)

``count`` saturates at ``n`` (at ``n + 1`` for RSI, which counts values, not differences), so
"warmed up" is ``count >= n``. ``dumps(state)`` gives the bytes to store beside the stream position;
``loads(data)`` checks the kind, version and length and returns a fresh writable array.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from projections.indicators import kernels as k
from tickfold.errors import TickfoldError

F64 = k.F64
VERSION = 1


class IndicatorStateError(TickfoldError, ValueError):
    """Persisted indicator state that can't be used: wrong kind, unknown version, wrong length."""


class Kind(IntEnum):
    SMA = 1
    EMA = 2
    RMA = 3
    TRUE_RANGE = 4
    ATR = 5
    RSI = 6
    MACD = 7
    MACDV = 8


def _period(name: str, n: int) -> float:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"{name} must be an integer >= 1, not {n!r}")
    return float(n)


def _new(kind: Kind, size: int) -> F64:
    s = np.zeros(k.HEADER + size, dtype=np.float64)
    s[0], s[1] = float(kind), float(VERSION)
    return s


def _ema_block(s: F64, o: int, n: int, name: str) -> None:
    s[o + k.EMA_N] = _period(name, n)
    s[o + k.EMA_K] = 2.0 / float(n + 1)  # TA-Lib's PER_TO_K, the same double


def sma_state(n: int) -> F64:
    s = _new(Kind.SMA, k.SMA_RING + int(_period("n", n)))
    s[k.HEADER + k.SMA_N] = n
    return s


def ema_state(n: int) -> F64:
    s = _new(Kind.EMA, k.EMA_SIZE)
    _ema_block(s, k.HEADER, n, "n")
    return s


def rma_state(n: int) -> F64:
    s = _new(Kind.RMA, k.RMA_SIZE)
    s[k.HEADER + k.RMA_N] = _period("n", n)
    return s


def true_range_state() -> F64:
    return _new(Kind.TRUE_RANGE, k.TR_SIZE)


def atr_state(n: int = 14) -> F64:
    s = _new(Kind.ATR, k.ATR_SIZE)
    s[k.HEADER + k.TR_SIZE + k.RMA_N] = _period("n", n)
    return s


def rsi_state(n: int = 14) -> F64:
    s = _new(Kind.RSI, k.RSI_SIZE)
    s[k.HEADER + k.RSI_N] = _period("n", n)
    return s


def _check_macd(fast: int, slow: int, signal: int) -> None:
    _period("signal", signal)
    if _period("fast", fast) >= _period("slow", slow):
        raise ValueError(f"fast ({fast}) must be shorter than slow ({slow})")


def macd_state(fast: int = 12, slow: int = 26, signal: int = 9) -> F64:
    _check_macd(fast, slow, signal)
    s = _new(Kind.MACD, k.MACD_LEN - k.HEADER)
    _ema_block(s, k.MACD_FAST, fast, "fast")
    _ema_block(s, k.MACD_SLOW, slow, "slow")
    _ema_block(s, k.MACD_SIGNAL, signal, "signal")
    return s


def macdv_state(fast: int = 12, slow: int = 26, signal: int = 9, atr_period: int | None = None) -> F64:
    """MACD-V's state; ``atr_period`` defaults to ``slow`` (Spiroglou's ATR(26) with EMA(26))."""
    _check_macd(fast, slow, signal)
    s = _new(Kind.MACDV, k.MACDV_LEN - k.HEADER)
    _ema_block(s, k.MACDV_FAST, fast, "fast")
    _ema_block(s, k.MACDV_SLOW, slow, "slow")
    s[k.MACDV_ATR + k.TR_SIZE + k.RMA_N] = _period("atr_period", slow if atr_period is None else atr_period)
    _ema_block(s, k.MACDV_SIGNAL, signal, "signal")
    return s


_FIXED_LEN = {
    Kind.EMA: k.HEADER + k.EMA_SIZE,
    Kind.RMA: k.HEADER + k.RMA_SIZE,
    Kind.TRUE_RANGE: k.HEADER + k.TR_SIZE,
    Kind.ATR: k.HEADER + k.ATR_SIZE,
    Kind.RSI: k.HEADER + k.RSI_SIZE,
    Kind.MACD: k.MACD_LEN,
    Kind.MACDV: k.MACDV_LEN,
}


def _expected_len(kind: Kind, s: F64) -> int:
    if kind is Kind.SMA:
        return k.HEADER + k.SMA_RING + int(s[k.HEADER + k.SMA_N]) if len(s) > k.HEADER + k.SMA_N else -1
    return _FIXED_LEN[kind]


def kind_of(state: F64) -> Kind:
    try:
        return Kind(int(state[0]))
    except (IndexError, ValueError) as exc:
        raise IndicatorStateError(f"not an indicator state (kind slot {state[:1]!r})") from exc


def dumps(state: F64) -> bytes:
    """The state as bytes (little-endian float64), to store next to the stream position."""
    return np.ascontiguousarray(state, dtype="<f8").tobytes()


def loads(data: bytes, kind: Kind | None = None) -> F64:
    """A writable state array from ``dumps`` bytes; checks kind (if given), version and length."""
    if len(data) % 8:
        raise IndicatorStateError(f"state bytes must be a whole number of float64s, got {len(data)} bytes")
    s = np.frombuffer(data, dtype="<f8").astype(np.float64)  # a copy: writable, native order
    got = kind_of(s)
    if kind is not None and got is not kind:
        raise IndicatorStateError(f"expected a {kind.name} state, got {got.name}")
    if len(s) < k.HEADER or s[1] != VERSION:
        raise IndicatorStateError(f"unknown {got.name} state version {s[1:2]!r} (this code writes {VERSION})")
    if len(s) != _expected_len(got, s):
        raise IndicatorStateError(f"{got.name} state has {len(s)} slots, expected {_expected_len(got, s)}")
    return s
