"""MACD-V zones (Spiroglou): where a MACD-V value sits, and which way it is heading in the two bands.

With the default thresholds::

    value > +150              OVERBOUGHT
    +50 < value <= +150       RALLYING if value > reference, else RETRACING
    -50 <= value <= +50       RANGING
    -150 <= value < -50       REBOUNDING if value > reference, else REVERSING
    value < -150              OVERSOLD

``reference`` is the previous MACD-V (direction by slope); passing the signal line instead gives
the histogram-based reading. A flat slope (``value == reference``) counts as retracing / reversing.
The result is ``None`` when ``value`` is NaN (warm-up), or when it is in a band and ``reference``
is NaN (the first defined value: no direction yet).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class Zone(Enum):
    OVERBOUGHT = "overbought"
    RALLYING = "rallying"
    RETRACING = "retracing"
    RANGING = "ranging"
    REBOUNDING = "rebounding"
    REVERSING = "reversing"
    OVERSOLD = "oversold"


@dataclass(frozen=True)
class ZoneThresholds:
    overbought: float = 150.0
    rally: float = 50.0
    rebound: float = -50.0
    oversold: float = -150.0

    def __post_init__(self) -> None:
        if not self.oversold < self.rebound <= self.rally < self.overbought:
            raise ValueError(f"zone thresholds must satisfy oversold < rebound <= rally < overbought: {self}")


DEFAULT_THRESHOLDS = ZoneThresholds()


def macdv_zone(value: float, reference: float, thresholds: ZoneThresholds = DEFAULT_THRESHOLDS) -> Zone | None:
    if math.isnan(value):
        return None
    if value > thresholds.overbought:
        return Zone.OVERBOUGHT
    if value < thresholds.oversold:
        return Zone.OVERSOLD
    if thresholds.rebound <= value <= thresholds.rally:
        return Zone.RANGING
    if math.isnan(reference):
        return None
    rising = value > reference
    if value > thresholds.rally:
        return Zone.RALLYING if rising else Zone.RETRACING
    return Zone.REBOUNDING if rising else Zone.REVERSING
