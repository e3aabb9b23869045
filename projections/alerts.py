"""Alert rules on closed candles' MACD-V (VIS-01, VIS-03): pure, deterministic, no I/O.

Rules, evaluated for each closed candle against the one before it:

* ``macdv_cross_up`` / ``macdv_cross_down``: MACD-V crosses its signal line (histogram changes sign);
* ``zone_enter:<zone>`` / ``zone_leave:<zone>``: MACD-V moves into or out of a zone.

Zones are :func:`projections.indicators.macdv_zone`'s (thresholds configurable, defaults ±50 / ±150,
direction in the bands by the slope from the previous value). Zone rules fire when MACD-V crosses a
threshold into another band; a slope flip inside a band (rallying <-> retracing) is not an alert. A
point whose zone is not yet known (the first defined value inside a band) takes part in no zone rule.

An alert's id is a hash of (exchange, symbol, timeframe, candle start, rule): the same candle and
rule always give the same id, so a replay or a redelivery can recognise an alert already raised.
"""

from __future__ import annotations

import hashlib
import math

import msgspec

from projections.indicators import DEFAULT_THRESHOLDS, ZoneThresholds, macdv_zone


class Point(msgspec.Struct, frozen=True):
    """MACD-V of one closed candle."""

    start: int
    macdv: float
    signal: float
    histogram: float
    zone: str  # "" while unknown


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    source_exchange_id: str
    exchange: str
    symbol: str
    timeframe: str
    start: int  # the candle's open time, epoch ms
    rule: str
    macdv: float
    signal: float
    histogram: float
    zone: str
    previous_zone: str


# Zone rules fire when MACD-V crosses a threshold, not when the slope flips inside a band (rallying <->
# retracing would fire on most candles); the alert still names the zones on both sides.
_BAND = {
    "overbought": 2, "rallying": 1, "retracing": 1, "ranging": 0, "rebounding": -1, "reversing": -1, "oversold": -2,
}  # fmt: skip


def alert_id(exchange_id: str, symbol: str, timeframe: str, start: int, rule: str) -> str:
    return hashlib.sha256(f"{exchange_id}|{symbol}|{timeframe}|{start}|{rule}".encode()).hexdigest()[:24]


def rules(previous: Point, current: Point) -> list[str]:
    """The rules that fire between two consecutive closed candles."""
    fired: list[str] = []
    if previous.histogram <= 0 < current.histogram:
        fired.append("macdv_cross_up")
    elif previous.histogram >= 0 > current.histogram:
        fired.append("macdv_cross_down")
    if previous.zone and current.zone and _BAND[previous.zone] != _BAND[current.zone]:
        fired.append(f"zone_leave:{previous.zone}")
        fired.append(f"zone_enter:{current.zone}")
    return fired


def alerts(exchange_id: str, symbol: str, timeframe: str, previous: Point, current: Point) -> list[Alert]:
    fired = rules(previous, current)
    if not fired:  # (most candles)
        return []
    return [
        Alert(
            id=alert_id(exchange_id, symbol, timeframe, current.start, rule),
            source_exchange_id=exchange_id,
            exchange=exchange_id,
            symbol=symbol,
            timeframe=timeframe,
            start=current.start,
            rule=rule,
            macdv=current.macdv,
            signal=current.signal,
            histogram=current.histogram,
            zone=current.zone,
            previous_zone=previous.zone,
        )
        for rule in fired
    ]


def points(
    starts: list[int],
    line: list[float],
    signal: list[float],
    hist: list[float],
    thresholds: ZoneThresholds = DEFAULT_THRESHOLDS,
    *,
    previous: float = math.nan,
) -> list[Point | None]:
    """One Point per candle (None before the warm-up is complete: no value is invented); ``previous`` is
    the MACD-V before the first one (its zone's direction)."""
    out: list[Point | None] = []
    prev = previous
    isnan = math.isnan
    for start, m, s, h in zip(starts, line, signal, hist, strict=True):
        if isnan(m) or isnan(s) or isnan(h):
            out.append(None)
        else:
            z = macdv_zone(m, prev, thresholds)
            out.append(Point(start, m, s, h, z._value_ if z is not None else ""))  # (_value_: .value's slot)
        prev = m
    return out
