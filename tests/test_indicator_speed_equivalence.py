"""The indicator fold's shortcuts (bars parsed once a batch, a run kept in order without a dict, an empty input
taken as is) against the plain definitions they replace: the runs, the candles a run finds, the points and
input a batch writes, and the zones named in the points."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from processors.indicators import Bar, IndicatorProcessor, _as_of, _closed_bars, _runs, by_series
from projections.alerts import points
from projections.candles import CandleClosed
from projections.indicators import macdv_zone
from tests.test_memory_indicators import tangled_closes


def _runs_reference(events: list[CandleClosed]) -> list[list[CandleClosed]]:
    out: list[list[CandleClosed]] = []
    for e in events:
        if not out or e.correction or e.candle.start <= out[-1][-1].candle.start:
            out.append([e])
        else:
            out[-1].append(e)
    return out


def _as_of_reference(base: list[Bar], runs: list[list[CandleClosed]], upto: int) -> list[Bar]:
    out = {b.start: b for b in base}
    for run in runs[: upto + 1]:
        for e in run:
            if e.candle.closed:
                out[e.candle.start] = Bar.of(e.candle)
    return [out[start] for start in sorted(out)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_runs_and_the_candles_a_run_finds(seed: int) -> None:
    for events in by_series(tangled_closes(seed)).values():
        runs = _runs(events)
        assert runs == _runs_reference(events)
        assert all(a.candle.start < b.candle.start for run in runs for a, b in itertools.pairwise(run))
        bars = [_closed_bars(run) for run in runs]
        cut = len(events) // 3
        before = {e.candle.start: Bar.of(e.candle) for e in events[:cut] if e.candle.closed}
        base = [before[start] for start in sorted(before)]  # an input before the batch
        for i in range(len(runs)):
            assert _as_of([], bars, i) == _as_of_reference([], runs, i)
            assert _as_of(base, bars, i) == _as_of_reference(base, runs, i)


@pytest.mark.parametrize("seed", [4, 5])
def test_a_batch_writes_the_points_and_input_of_the_plain_fold(seed: int) -> None:
    """A whole series in one batch (one run a series when it has no corrections): its points are those of a
    recompute over all its closes, its input is its closes, in order."""
    events = [e for e in tangled_closes(seed) if not e.correction]
    events = list({(e.candle.symbol, e.candle.timeframe, e.candle.start): e for e in events}.values())
    events.sort(key=lambda e: (e.candle.start, e.candle.symbol))
    p = IndicatorProcessor("coinbase", window=1000, history=10_000)
    changed = by_series(events)
    named = p.state_keys(changed)
    batch = p.prepare(changed, named, [None] * len(named[0]))
    folded = p.fold(batch, {series: [] for series in batch.todo})
    for (symbol, tf), (key, since, pts) in zip(named[0], folded.writes, strict=True):
        closes = changed[(symbol, tf)]
        candles = [Bar.of(e.candle) for e in closes]
        assert since == closes[0].candle.start
        expected, _, _ = p._recompute(candles, since)
        assert pts == [pt for pt in expected if pt is not None]
        assert len(pts) > 30
        how, bars = folded.inputs[key.replace("indicator:", "indinput:").removesuffix(":macdv")]
        assert (how, bars) == ("replace", candles)


def test_points_name_the_zones() -> None:
    rnd = random.Random(9)
    line = [math.nan, *(rnd.uniform(-300, 300) for _ in range(400))]
    got = points(list(range(len(line))), line, line, line)
    assert got[0] is None
    for i, pt in enumerate(got[1:], start=1):
        zone = macdv_zone(line[i], line[i - 1])
        assert pt is not None and pt.zone == ("" if zone is None else zone.value)
    assert {pt.zone for pt in got if pt is not None} >= {"overbought", "ranging", "oversold", "rallying"}
