"""Indicator kernels against TA-Lib, batch against incremental, and the MACD-V zones.

Oracles: TA-Lib's own functions (``SMA EMA TRANGE ATR RSI MACD``); MACD-V, which TA-Lib lacks, is
composed from them: ``(EMA(fast) - EMA(slow)) / ATR(atr_period) * 100`` and ``EMA(line, signal)``.
Wilder's RMA is ``talib.ATR`` of bars whose true range is the input (``high = x, low = close = 0``).
Parity is 1e-9 relative to each value, or to the series' largest magnitude for values that cross
zero (MACD line, histograms), from the first defined value on, with NaN exactly where TA-Lib has NaN.

Inputs: real candles (Coinbase ALGO-USD 1d, 781 days, in tests/data; Binance ETHUSDT / BTCUSDT and
Coinbase ETH-USD 1m, read in place from ../shared/realdata) and hypothesis-generated ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

import projections.indicators as ind
from projections.indicators import kernels
from tests.realdata import REALDATA, require

pytestmark = pytest.mark.unit

F64 = npt.NDArray[np.float64]
Bars = tuple[F64, F64, F64]
DATA = Path(__file__).parent / "data"
FAST = settings(max_examples=60, deadline=None)

# ------------------------------------------------------------------------------------------ inputs


def _arrays(rows: list[tuple[float, float, float]]) -> Bars:
    a = np.array(rows, dtype=np.float64)
    return a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy()


def algo_daily() -> Bars:
    candles = [
        c
        for i in (1, 2, 3)
        for c in json.loads((DATA / f"rest_candles_ALGO-USD_ONE_DAY_page{i}.kmiq.json").read_text())["candles"]
    ]
    candles.sort(key=lambda c: int(c["start"]))
    return _arrays([(float(c["high"]), float(c["low"]), float(c["close"])) for c in candles])


def binance_1m(name: str) -> Bars:
    rows = json.loads(require(REALDATA / "binance" / name).read_text())
    if "clim" in name:
        rows = rows[:-1]  # the last row is the minute still open at capture
    return _arrays([(float(r[2]), float(r[3]), float(r[4])) for r in rows])


def coinbase_1m() -> Bars:
    path = REALDATA / "coinbase" / "rest_market_candles_ETH-USD_ONE_MINUTE_2026-10-06.clim.json"
    candles = sorted(json.loads(require(path).read_text())["candles"], key=lambda c: int(c["start"]))
    return _arrays([(float(c["high"]), float(c["low"]), float(c["close"])) for c in candles])


REAL = {
    "coinbase ALGO-USD 1d": (algo_daily, (12, 26, 9, 26, 14)),
    "binance ETHUSDT 1m": (lambda: binance_1m("rest_klines_ETHUSDT_1m_2026-10-06.clim.json"), (3, 6, 3, 5, 5)),
    "binance BTCUSDT 1m": (lambda: binance_1m("rest_klines_BTCUSDT_1m_2021-10-22.nautilus.json"), (2, 4, 2, 3, 3)),
    "coinbase ETH-USD 1m": (coinbase_1m, (3, 6, 3, 5, 5)),
}


@st.composite
def bars(draw: st.DrawFn, min_size: int = 1, max_size: int = 120) -> Bars:
    """Valid candles (low <= open, close <= high) at any scale, with flat stretches and zero ranges."""
    n = draw(st.integers(min_size, max_size))
    scale = 10.0 ** draw(st.integers(-6, 6))
    moves = st.floats(-0.2, 0.2) | st.just(0.0)
    steps = np.array(draw(st.lists(moves, min_size=n, max_size=n)))
    wicks = np.array(draw(st.lists(st.floats(0.0, 0.3) | st.just(0.0), min_size=2 * n, max_size=2 * n)))
    close = scale * np.exp(np.cumsum(steps))
    opens = np.concatenate([[close[0]], close[:-1]])
    high = np.maximum(opens, close) * (1.0 + wicks[:n])
    low = np.minimum(opens, close) * (1.0 - wicks[n:] / 2)
    return high, low, close


periods = st.integers(1, 30)

# ------------------------------------------------------------------------------------------ oracles


def assert_parity(ours: F64, oracle: F64, unit: float | F64 = 0.0, rtol: float = 1e-9) -> None:
    """Equal to ``rtol`` relative, or to ``rtol`` times the series' magnitude (its largest value, and at
    least ``unit``: the price for price-like outputs, 100 for RSI) for values near zero. ``unit`` may
    be per value (MACD-V: see ``macdv_unit``)."""
    assert ours.shape == oracle.shape
    nan = np.isnan(oracle)
    np.testing.assert_array_equal(np.isnan(ours), nan, err_msg="NaN where TA-Lib has NaN, and only there")
    if not nan.all():
        scale = np.maximum(float(np.max(np.abs(oracle[~nan]))), unit)
        atol = rtol * (scale[~nan] if isinstance(scale, np.ndarray) else scale)
        err = np.abs(ours[~nan] - oracle[~nan])
        bad = err > atol + rtol * np.abs(oracle[~nan])
        assert not bad.any(), f"{bad.sum()} values off, first at {np.flatnonzero(~nan)[bad][0]}: {err[bad][:3]}"


def macdv_unit(close: F64, atr: F64) -> F64:
    """MACD-V's magnitude for the tolerance: 100 * close / ATR, carried forward as a running maximum.
    The two EMAs agree with TA-Lib's to ulps *of the price* (TA-Lib fuses multiply-adds, we don't),
    and dividing by the ATR scales that by price / ATR (huge when a bar has almost no range); the
    signal EMA carries the largest such error seen so far."""
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = np.where(atr > 0, 100.0 * close / atr, 100.0)
    return np.maximum(np.fmax.accumulate(np.nan_to_num(unit, nan=100.0)), 100.0)


def same(a: F64, b: F64) -> bool:
    return bool(np.array_equal(a, b, equal_nan=True))


def talib_rma(x: F64, n: int) -> F64:
    """Wilder's RMA of ``x >= 0`` from talib.ATR: with close = low = 0 and high = x, TR is exactly x."""
    zeros = np.zeros(len(x) + 1)
    return np.asarray(talib.ATR(np.concatenate([[0.0], x]), zeros, zeros, n))[1:]


def talib_macdv(h: F64, lo: F64, c: F64, fast: int, slow: int, signal: int, atr_n: int) -> Bars:
    diff = talib.EMA(c, fast) - talib.EMA(c, slow)
    atr = talib.ATR(h, lo, c, atr_n)
    with np.errstate(divide="ignore", invalid="ignore"):
        line = np.where((atr == 0.0) & ~np.isnan(diff), 0.0, diff / atr * 100.0)
    sig = talib.EMA(line, signal)
    return line, sig, line - sig


def check_all(h: F64, lo: F64, c: F64, fast: int, slow: int, signal: int, atr_n: int, n: int) -> None:
    assert_parity(ind.sma(c, n), talib.SMA(c, n))
    assert_parity(ind.ema(c, n), talib.EMA(c, n))
    assert_parity(ind.true_range(h, lo, c), talib.TRANGE(h, lo, c))
    assert_parity(ind.atr(h, lo, c, n), talib.ATR(h, lo, c, n))
    assert_parity(ind.rsi(c, max(n, 2)), talib.RSI(c, max(n, 2)), 100.0)
    assert_parity(ind.rma(h - lo, n), talib_rma(h - lo, n))
    price = float(np.max(c))
    line, sig, hist = ind.macd(c, fast, slow, signal)
    diff = talib.EMA(c, fast) - talib.EMA(c, slow)
    assert_parity(line, diff, price)
    assert_parity(sig, talib.EMA(diff, signal), price)
    assert_parity(hist, diff - talib.EMA(diff, signal), price)
    ours = ind.macdv(h, lo, c, fast, slow, signal, atr_n)
    unit = macdv_unit(c, talib.ATR(h, lo, c, atr_n))
    for got, oracle in zip(ours, talib_macdv(h, lo, c, fast, slow, signal, atr_n), strict=True):
        assert_parity(got, oracle, unit)


# --------------------------------------------------------------------------------- TA-Lib parity


@pytest.mark.parametrize("name", list(REAL))
def test_parity_with_talib_on_real_candles(name: str) -> None:
    load, (fast, slow, signal, atr_n, n) = REAL[name]
    h, lo, c = load()
    assert len(c) > slow + signal, "enough candles for every output to be defined somewhere"
    check_all(h, lo, c, fast, slow, signal, atr_n, n)


def test_bit_identical_to_talib_where_the_c_code_is_the_same() -> None:
    """SMA and true range match TA-Lib 0.8 bit for bit. Its EMA is ``fma(x - ema, k, ema)`` and its
    Wilder smoothing (ATR, RSI) ``fma(b, prev, a * x)``; we never fuse (no FMA, no ``fastmath``), so
    results are the same on every CPU and in both the incremental and the batch code path, and
    differ from TA-Lib's in the last bits only."""
    h, lo, c = algo_daily()
    assert same(ind.sma(c, 20), talib.SMA(c, 20))
    assert same(ind.true_range(h, lo, c), talib.TRANGE(h, lo, c))
    for ours, theirs in [
        (ind.ema(c, 12), talib.EMA(c, 12)),
        (ind.atr(h, lo, c, 26), talib.ATR(h, lo, c, 26)),
        (ind.rsi(c, 14), talib.RSI(c, 14)),
    ]:
        assert same(np.isnan(ours), np.isnan(theirs))
        np.testing.assert_allclose(ours, theirs, rtol=1e-14)


@FAST
@given(bars(), st.integers(1, 15), st.integers(1, 25), st.integers(1, 12), periods, periods)
def test_parity_with_talib_on_generated_candles(
    b: Bars, fast: int, extra: int, signal: int, atr_n: int, n: int
) -> None:
    check_all(*b, fast, fast + extra, signal, atr_n, n)


def test_leading_nans_are_skipped_like_talib() -> None:
    h, lo, c = algo_daily()
    c2, h2, l2 = c.copy(), h.copy(), lo.copy()
    c2[:5] = np.nan
    h2[:3] = np.nan
    l2[6] = np.nan
    for ours, oracle in [
        (ind.ema(c2, 10), talib.EMA(c2, 10)),
        (ind.sma(c2, 10), talib.SMA(c2, 10)),
        (ind.rsi(c2, 10), talib.RSI(c2, 10)),
        (ind.atr(h2, l2, c, 10), talib.ATR(h2, l2, c, 10)),
    ]:
        assert_parity(ours, oracle)


def test_warm_up_conventions() -> None:
    """EMA seeded with the SMA of the first n; ATR with the SMA of TR[1..n] (the first bar has no TR)."""
    h, lo, c = algo_daily()
    e = ind.ema(c, 10)
    assert np.isnan(e[:9]).all() and e[9] == c[:10].sum() / 10
    tr = ind.true_range(h, lo, c)
    a = ind.atr(h, lo, c, 14)
    assert np.isnan(tr[0]) and np.isnan(a[:14]).all() and a[14] == tr[1:15].sum() / 14
    line, sig, hist = ind.macdv(h, lo, c)
    assert np.isnan(line[:26]).all() and not np.isnan(line[26])
    assert np.isnan(sig[:34]).all() and not np.isnan(sig[34:]).any() and not np.isnan(hist[34:]).any()


def test_macdv_is_zero_where_atr_is_zero() -> None:
    flat = np.full(60, 3.25)
    line, sig, hist = ind.macdv(flat, flat, flat)
    assert (line[26:] == 0.0).all() and (sig[34:] == 0.0).all() and (hist[34:] == 0.0).all()
    assert (ind.rsi(flat, 14)[14:] == 0.0).all()  # TA-Lib's value when nothing moved (0 / 0)


# ---------------------------------------------------------------------------- MACD vs talib.MACD


def test_macd_differs_from_talib_macd_only_by_the_fast_seed() -> None:
    """talib.MACD seeds the fast EMA at the slow one's first index (with the SMA of closes
    slow-fast..slow-1) and hides the line until the signal exists. Re-seeding our EMA that way
    reproduces talib.MACD; our plain line differs by a seed gap decaying as (1 - k_fast)^t."""
    c = algo_daily()[2]
    fast, slow, signal = 12, 26, 9
    t_line, t_sig, t_hist = talib.MACD(c, fast, slow, signal)
    first = slow + signal - 2
    assert np.isnan(t_line[:first]).all() and not np.isnan(t_line[first])

    reseeded = np.concatenate([np.full(slow - fast, np.nan), ind.ema(c[slow - fast :], fast)]) - ind.ema(c, slow)
    sig = ind.ema(reseeded, signal)
    assert_parity(np.where(np.isnan(t_line), np.nan, reseeded), t_line)
    assert_parity(np.where(np.isnan(t_sig), np.nan, sig), t_sig)
    assert_parity(np.where(np.isnan(t_hist), np.nan, reseeded - sig), t_hist)

    line = ind.macd(c, fast, slow, signal)[0]
    gap = line - reseeded  # = EMA_fast(ours) - EMA_fast(talib), from index slow - 1 on
    k = 2.0 / (fast + 1)
    t = np.arange(len(c) - (slow - 1))
    np.testing.assert_allclose(gap[slow - 1 :], gap[slow - 1] * (1 - k) ** t, rtol=1e-6, atol=1e-15)
    assert abs(line[first] - t_line[first]) > 1e-6 * abs(t_line[first])  # a real difference at the start
    late = slow - 1 + 200
    np.testing.assert_allclose(line[late:], t_line[late:], rtol=1e-9, atol=1e-9 * np.abs(t_line[late:]).max())


# --------------------------------------------------------------------------- batch == incremental


def one_by_one(b: Bars, fast: int, slow: int, signal: int, n: int) -> dict[str, tuple[F64, F64]]:
    """name -> (incremental outputs, final state), every value through ``*_update``."""
    h, lo, c = b
    states = {
        "sma": ind.sma_state(n),
        "ema": ind.ema_state(n),
        "rma": ind.rma_state(n),
        "rsi": ind.rsi_state(n),
        "tr": ind.true_range_state(),
        "atr": ind.atr_state(n),
        "macd": ind.macd_state(fast, slow, signal),
        "macdv": ind.macdv_state(fast, slow, signal, n),
    }
    single = {"sma": ind.sma_update, "ema": ind.ema_update, "rma": ind.rma_update, "rsi": ind.rsi_update}
    out: dict[str, tuple[F64, F64]] = {}
    for name, update in single.items():
        out[name] = (np.array([update(states[name], x) for x in c]), states[name])
    tr = [ind.true_range_update(states["tr"], *bar) for bar in zip(h, lo, c, strict=True)]
    atr = [ind.atr_update(states["atr"], *bar) for bar in zip(h, lo, c, strict=True)]
    out["tr"], out["atr"] = (np.array(tr), states["tr"]), (np.array(atr), states["atr"])
    out["macd"] = (np.array([ind.macd_update(states["macd"], x) for x in c]).reshape(-1, 3).T.copy(), states["macd"])
    macdv = [ind.macdv_update(states["macdv"], *bar) for bar in zip(h, lo, c, strict=True)]
    out["macdv"] = (np.array(macdv).reshape(-1, 3).T.copy(), states["macdv"])
    return out


def batches(b: Bars, fast: int, slow: int, signal: int, n: int, cut: int) -> dict[str, tuple[F64, F64]]:
    """name -> (outputs, final state), fed in two chunks split at ``cut`` (0 = one chunk)."""
    h, lo, c = b

    def two(state: F64, feed: object, *arrays: F64) -> tuple[F64, F64]:
        first = feed(state, *(a[:cut] for a in arrays))  # type: ignore[operator]
        second = feed(state, *(a[cut:] for a in arrays))  # type: ignore[operator]
        return np.concatenate([np.asarray(first), np.asarray(second)], axis=-1), state

    return {
        "sma": two(ind.sma_state(n), ind.sma_feed, c),
        "ema": two(ind.ema_state(n), ind.ema_feed, c),
        "rma": two(ind.rma_state(n), ind.rma_feed, c),
        "rsi": two(ind.rsi_state(n), ind.rsi_feed, c),
        "tr": two(ind.true_range_state(), ind.true_range_feed, h, lo, c),
        "atr": two(ind.atr_state(n), ind.atr_feed, h, lo, c),
        "macd": two(ind.macd_state(fast, slow, signal), ind.macd_feed, c),
        "macdv": two(ind.macdv_state(fast, slow, signal, n), ind.macdv_feed, h, lo, c),
    }


@FAST
@given(bars(), st.integers(1, 10), st.integers(1, 20), st.integers(1, 10), periods, st.data())
def test_incremental_equals_batch_bit_for_bit(
    b: Bars, fast: int, extra: int, signal: int, n: int, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(b[2])), label="cut")
    inc = one_by_one(b, fast, fast + extra, signal, n)
    bat = batches(b, fast, fast + extra, signal, n, cut)
    for name in inc:
        assert same(inc[name][0], bat[name][0]), name
        assert same(inc[name][1], bat[name][1]), f"{name}: the same state after both"


def test_batch_functions_are_a_fresh_state_fed_the_arrays() -> None:
    h, lo, c = algo_daily()
    assert same(ind.rsi(c, 14), ind.rsi_feed(ind.rsi_state(14), c))
    got = ind.macdv(h, lo, c, 8, 21, 5, 14)
    want = ind.macdv_feed(ind.macdv_state(8, 21, 5, 14), h, lo, c)
    assert all(same(a, b) for a, b in zip(got, want, strict=True))
    for outputs in (got, ind.macd(c)):  # rows of one block: still three separate contiguous arrays
        for i, a in enumerate(outputs):
            assert a.shape == c.shape and a.flags.c_contiguous and a.flags.writeable
            assert not any(np.shares_memory(a, b) for b in outputs[i + 1 :])


def test_update_rows_equals_one_state_per_series() -> None:
    h, lo, c = algo_daily()
    k = 5
    states = np.stack([ind.macdv_state() for _ in range(k)])
    singles = [ind.macdv_state() for _ in range(k)]
    rows = np.arange(k, dtype=np.int64)
    for t in range(60):
        shift = 1.0 + rows / 10  # k different series
        line, sig, hist = ind.macdv_update_rows(states, rows, h[t] * shift, lo[t] * shift, c[t] * shift)
        for r in range(k):
            want = ind.macdv_update(singles[r], h[t] * shift[r], lo[t] * shift[r], c[t] * shift[r])
            assert same(np.array([line[r], sig[r], hist[r]]), np.array(want))
    assert all(same(states[r], singles[r]) for r in range(k))


# -------------------------------------------------------------------------------------- persistence


def test_state_round_trips_through_bytes_and_resumes() -> None:
    h, lo, c = algo_daily()
    whole = ind.macdv(h, lo, c)
    s = ind.macdv_state()
    head = ind.macdv_feed(s, h[:300], lo[:300], c[:300])
    blob = ind.dumps(s)
    assert len(blob) == 8 * kernels.MACDV_LEN == 184
    s2 = ind.loads(blob, ind.Kind.MACDV)
    assert s2.flags.writeable and same(s2, s)
    tail = ind.macdv_feed(s2, h[300:], lo[300:], c[300:])
    for i in range(3):
        assert same(np.concatenate([head[i], tail[i]]), whole[i])


@pytest.mark.parametrize(
    "make",
    [lambda: ind.sma_state(7), lambda: ind.ema_state(3), lambda: ind.rma_state(3), ind.true_range_state,
     lambda: ind.atr_state(3), lambda: ind.rsi_state(3), ind.macd_state, ind.macdv_state],
)  # fmt: skip
def test_every_state_kind_loads_back(make: object) -> None:
    s = make()  # type: ignore[operator]
    assert same(ind.loads(ind.dumps(s), ind.kind_of(s)), s)


def test_bad_state_bytes_are_refused() -> None:
    blob = ind.dumps(ind.ema_state(5))
    with pytest.raises(ind.IndicatorStateError, match="expected a MACDV state"):
        ind.loads(blob, ind.Kind.MACDV)
    with pytest.raises(ind.IndicatorStateError, match="whole number"):
        ind.loads(blob[:-3])
    with pytest.raises(ind.IndicatorStateError, match="slots"):
        ind.loads(blob[:-8])
    with pytest.raises(ind.IndicatorStateError, match="version"):
        ind.loads(ind.dumps(np.array([2.0, 99.0, 5, 1 / 3, 0, 0, 0])))
    with pytest.raises(ind.IndicatorStateError, match="not an indicator state"):
        ind.loads(ind.dumps(np.array([42.0, 1.0])))


def test_periods_are_validated() -> None:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            ind.ema_state(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shorter"):
        ind.macdv_state(26, 12)


# --------------------------------------------------------------------------------------- MACD-V zones


@pytest.mark.parametrize(
    ("value", "reference", "zone"),
    [
        (150.01, 0.0, ind.Zone.OVERBOUGHT),
        (150.0, 140.0, ind.Zone.RALLYING),
        (150.0, 160.0, ind.Zone.RETRACING),
        (60.0, 60.0, ind.Zone.RETRACING),  # flat slope
        (50.0, 0.0, ind.Zone.RANGING),
        (-50.0, 0.0, ind.Zone.RANGING),
        (-50.01, -60.0, ind.Zone.REBOUNDING),
        (-150.0, -140.0, ind.Zone.REVERSING),
        (-150.01, 0.0, ind.Zone.OVERSOLD),
        (float("nan"), 0.0, None),
        (100.0, float("nan"), None),  # in a band with no direction yet
        (200.0, float("nan"), ind.Zone.OVERBOUGHT),
    ],
)
def test_macdv_zones(value: float, reference: float, zone: ind.Zone | None) -> None:
    assert ind.macdv_zone(value, reference) is zone


def test_zone_thresholds_are_configurable_and_checked() -> None:
    tight = ind.ZoneThresholds(overbought=100.0, rally=20.0, rebound=-20.0, oversold=-100.0)
    assert ind.macdv_zone(120.0, 0.0, tight) is ind.Zone.OVERBOUGHT
    assert ind.macdv_zone(30.0, 0.0, tight) is ind.Zone.RALLYING
    assert ind.macdv_zone(30.0, 0.0) is ind.Zone.RANGING
    with pytest.raises(ValueError):
        ind.ZoneThresholds(overbought=10.0, rally=50.0)


def test_zones_along_a_real_series() -> None:
    h, lo, c = algo_daily()
    line = ind.macdv(h, lo, c)[0]
    zones = [ind.macdv_zone(v, p) for v, p in zip(line[1:], line[:-1], strict=True)]
    assert zones[:26] == [None] * 26  # warm-up, then the first value has no slope yet
    # ALGO-USD 2021-2023 daily MACD-V spans -136.6..+178.6: every zone but oversold, then all with ±120.
    assert {z for z in zones if z is not None} == set(ind.Zone) - {ind.Zone.OVERSOLD}
    narrow = ind.ZoneThresholds(overbought=120.0, rally=40.0, rebound=-40.0, oversold=-120.0)
    assert {ind.macdv_zone(v, p, narrow) for v, p in zip(line[27:], line[26:-1], strict=True)} == set(ind.Zone)


def test_all_lists_the_public_api() -> None:
    public = {n for n in dir(ind) if not n.startswith("_")} - {"batch", "kernels", "state", "zones", "annotations"}
    assert public == set(ind.__all__)
