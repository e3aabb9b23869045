"""Technical indicators as numba kernels: batch over arrays, and O(1) incremental over a flat state.

Batch (``batch.py``): ``sma ema rma rsi (x, n)``, ``true_range atr (high, low, close[, n])``,
``macd(close, fast, slow, signal)``, ``macdv(high, low, close, fast, slow, signal, atr_period)``.

Incremental (``kernels.py`` / ``state.py``)::

    s = macdv_state(12, 26, 9)                   # a float64 array of 23 slots
    line, signal, hist = macdv_update(s, h, l, c)  # one candle, O(1); NaN until warmed up
    blob = dumps(s); s = loads(blob, Kind.MACDV)   # 184 bytes to store beside the stream position
    line_arr, sig_arr, hist_arr = macdv_feed(s, highs, lows, closes)  # many candles, same steps

A batch call is a fresh state fed the arrays, so batch and incremental results are the same
numbers bit for bit, and a recompute from history leaves a state ready for the next update.
Conventions follow TA-Lib (see ``kernels.py``); deliberate differences are in ``batch.py`` (MACD
seeding) and ``kernels.py`` (MACD-V is 0 where ATR is 0).
"""

from projections.indicators.batch import atr, ema, macd, macdv, rma, rsi, sma, true_range
from projections.indicators.kernels import (
    atr_feed,
    atr_update,
    ema_feed,
    ema_update,
    macd_feed,
    macd_update,
    macdv_feed,
    macdv_update,
    macdv_update_rows,
    rma_feed,
    rma_update,
    rsi_feed,
    rsi_update,
    sma_feed,
    sma_update,
    true_range_feed,
    true_range_update,
)
from projections.indicators.state import (
    VERSION,
    IndicatorStateError,
    Kind,
    atr_state,
    dumps,
    ema_state,
    kind_of,
    loads,
    macd_state,
    macdv_state,
    rma_state,
    rsi_state,
    sma_state,
    true_range_state,
)
from projections.indicators.zones import DEFAULT_THRESHOLDS, Zone, ZoneThresholds, macdv_zone

__all__ = [
    "DEFAULT_THRESHOLDS",
    "VERSION",
    "IndicatorStateError",
    "Kind",
    "Zone",
    "ZoneThresholds",
    "atr",
    "atr_feed",
    "atr_state",
    "atr_update",
    "dumps",
    "ema",
    "ema_feed",
    "ema_state",
    "ema_update",
    "kind_of",
    "loads",
    "macd",
    "macd_feed",
    "macd_state",
    "macd_update",
    "macdv",
    "macdv_feed",
    "macdv_state",
    "macdv_update",
    "macdv_update_rows",
    "macdv_zone",
    "rma",
    "rma_feed",
    "rma_state",
    "rma_update",
    "rsi",
    "rsi_feed",
    "rsi_state",
    "rsi_update",
    "sma",
    "sma_feed",
    "sma_state",
    "sma_update",
    "true_range",
    "true_range_feed",
    "true_range_state",
    "true_range_update",
]
