"""Alert rules: crossings, zone bands, deterministic ids (pure)."""

from __future__ import annotations

import math

import pytest

from projections.alerts import Point, alert_id, alerts, points, rules

pytestmark = pytest.mark.unit


def pt(start: int, macdv: float, signal: float, zone: str) -> Point:
    return Point(start, macdv, signal, macdv - signal, zone)


def test_signal_crossings() -> None:
    assert rules(pt(1, 10, 12, "ranging"), pt(2, 13, 12, "ranging")) == ["macdv_cross_up"]
    assert rules(pt(1, 13, 12, "ranging"), pt(2, 11, 12, "ranging")) == ["macdv_cross_down"]
    assert rules(pt(1, 13, 12, "ranging"), pt(2, 14, 12, "ranging")) == []
    assert rules(pt(1, 12, 12, "ranging"), pt(2, 13, 12, "ranging")) == ["macdv_cross_up"]  # from touching


def test_zone_rules_fire_on_bands_not_on_slope_flips() -> None:
    assert rules(pt(1, 40, 0, "ranging"), pt(2, 60, 0, "rallying")) == ["zone_leave:ranging", "zone_enter:rallying"]
    assert rules(pt(1, 90, 0, "rallying"), pt(2, 80, 0, "retracing")) == []
    assert rules(pt(1, 140, 0, "rallying"), pt(2, 151, 0, "overbought")) == [
        "zone_leave:rallying",
        "zone_enter:overbought",
    ]
    assert rules(pt(1, -160, 0, "oversold"), pt(2, -140, 0, "rebounding")) == [
        "zone_leave:oversold",
        "zone_enter:rebounding",
    ]
    assert rules(pt(1, 60, 0, ""), pt(2, 40, 0, "ranging")) == []  # the zone before was not known yet


def test_points_start_after_the_warm_up_and_know_their_direction() -> None:
    nan = math.nan
    got = points([1, 2, 3, 4], [nan, 60.0, 70.0, 65.0], [nan, nan, 50.0, 52.0], [nan, nan, 20.0, 13.0])
    assert got[:2] == [None, None]
    assert got[2] == Point(3, 70.0, 50.0, 20.0, "rallying")
    assert got[3] == Point(4, 65.0, 52.0, 13.0, "retracing")


def test_alert_ids_are_deterministic_and_distinct() -> None:
    a = alerts("binance", "BTC-USDT", "1m", pt(1, 10, 12, "ranging"), pt(2, 13, 12, "ranging"))
    b = alerts("binance", "BTC-USDT", "1m", pt(1, 10, 12, "ranging"), pt(2, 13, 12, "ranging"))
    assert a == b and a[0].id == alert_id("binance", "BTC-USDT", "1m", 2, "macdv_cross_up")
    assert alert_id("coinbase", "BTC-USDT", "1m", 2, "macdv_cross_up") != a[0].id
    assert a[0].source_exchange_id == "binance"
