"""The indicator processor: candle-close events -> MACD-V projections and alerts (DATA-02, VIS-01/03).

It reads ``closes:{exchange_id}`` in its own consumer group (one leased owner, like a one-partition
raw stream). For each series a batch touches it *recomputes* from the candle history rather than
stepping a stored state, so a repeated or out-of-order close, a correction or a backfilled bucket
can't corrupt anything: the values are a function of the closed candles alone.

* Input: the newest ``window`` closed candles of the series (default 1000), *as its close events brought
  them*: the processor keeps them in ``indinput:{exchange_id}:{symbol}:{timeframe}`` (high, low, close
  by start), written in the same MULTI as the points. It does not read the candle projection, which may
  already hold buckets whose close events come later (a gap a REST backfill fills, a later correction,
  or everything, when a replay folds the candles first): so the values and alerts are a function of the
  close events in stream order alone, whatever the batch boundaries and however far the candle
  processor is ahead. (A state written before ``indinput`` existed, and a rebuild from the stored
  candles, seed it from the candle projection once.) EMA(26) and Wilder's ATR(26) forget their seed
  by a factor (25/26)^1000 ≈ 1e-17, below double precision, so the values are those of the whole
  history while the series is longer than the window, and exactly the batch kernels' output over the
  whole series while it is shorter.
* Output: ``indicator:{exchange_id}:{symbol}:{timeframe}:macdv``, a sorted set scored by candle start
  of JSON points ``{start, macdv, signal, histogram, zone}``, bounded to ``history`` points; only
  candles past the warm-up (26 + 9 closes) have a point. A batch rewrites the points from the
  earliest close it carries onwards.
* Runs: a batch's closes of one series are folded in runs cut before each correction and each repeat
  or out-of-order close, each run as if it had come in a batch of its own (a recomputing run sees the
  input with the buckets this batch closed at their value in that run or before). So the alerts of an
  original sequence that a correction later in the same batch replaces are raised as they are when the
  correction comes in a later batch: they do not depend on where batches fall.
* Alerts: the rules of :mod:`projections.alerts` between consecutive points. Each alert has a
  deterministic id; ids already raised (``alerts:{exchange_id}:ids``) are not raised again, so a
  redelivery or a replay never duplicates one. New alerts go to ``alerts:{exchange_id}`` in the same
  MULTI as the points and the XACK, and published on ``channel:alerts:{exchange_id}`` in that MULTI too.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import redis.asyncio as aioredis

from processors.leases import Fence
from processors.runner import BatchResult
from projections import store
from projections.alerts import Alert, Point, alerts, points
from projections.candles import Candle, CandleClosed
from projections.indicators import (
    DEFAULT_THRESHOLDS,
    Kind,
    ZoneThresholds,
    dumps,
    loads,
    macdv_feed,
    macdv_state,
    macdv_update,
)
from projections.scope import Scope
from projections.watermark import bucket_end
from streams import keys
from streams.log import Entry, WatchError, translated, watch_then
from tickfold.errors import ProjectionConflict

log = logging.getLogger(__name__)

GROUP = "indicators"
KIND = "macdv"
_MAX_CONFLICT_RETRIES = 20
# The input is trimmed to the window when a close's start is a multiple of this many minutes (every ~32
# closes of a 1m..15m series), not on every close: reads take the newest ``window`` anyway.
_TRIM_EVERY = 32
_ENCODER = msgspec.json.Encoder()
_POINT = msgspec.json.Decoder(Point)
_ALERT = msgspec.json.Decoder(Alert)


def decode_point(raw: bytes) -> Point:
    return _POINT.decode(raw)


def decode_alert(raw: bytes) -> Alert:
    return _ALERT.decode(raw)


@dataclass(frozen=True)
class MacdvParams:
    fast: int = 12
    slow: int = 26
    signal: int = 9
    atr_period: int = 26


class SeriesState(msgspec.Struct, frozen=True, array_like=True):
    """What an O(1) step of a series needs: the kernel state after the candle at ``start``, that candle's
    MACD-V (None before it is defined) and point (for the alert rules); ``tracked``: the series' input is
    in ``indinput`` (False in states written before it was: then it is seeded from the candles)."""

    start: int
    state: bytes
    macdv: float | None
    point: Point | None
    tracked: bool = False


class Bar(msgspec.Struct, frozen=True, array_like=True):
    """A closed candle as the kernels read it: a member of ``indinput:``, scored by ``start``."""

    start: int
    high: float
    low: float
    close: float

    @classmethod
    def of(cls, candle: Candle) -> Bar:
        return cls(candle.start, float(candle.high), float(candle.low), float(candle.close))


def _closed_bars(run: list[CandleClosed]) -> list[Bar]:
    """A run's closed candles as bars, in its order (parsed once a batch: the steps, the recomputes and the
    input written all read these)."""
    return [Bar(c.start, float(c.high), float(c.low), float(c.close)) for e in run if (c := e.candle).closed]


_STATE = msgspec.msgpack.Encoder()
_STATE_DECODER = msgspec.msgpack.Decoder(SeriesState)
_BAR_DECODER = msgspec.msgpack.Decoder(Bar)


def _decode_state(raw: bytes | None) -> SeriesState | None:
    return None if raw is None else _STATE_DECODER.decode(raw)


def _runs(events: list[CandleClosed]) -> list[list[CandleClosed]]:
    """A series' closes of one batch, in stream order, cut before each correction and each close that is
    not after the one before it: each run is folded as if it had come in a batch of its own."""
    out: list[list[CandleClosed]] = []
    last = 0
    for e in events:
        start = e.candle.start
        if not out or e.correction or start <= last:
            out.append([e])
        else:
            out[-1].append(e)
        last = start
    return out


def _as_of(base: list[Bar], bars: list[list[Bar]], upto: int) -> list[Bar]:
    """The closed candles as run ``upto`` finds them (``bars``: each run's :func:`_closed_bars`): the input
    before the batch, each bucket runs ``0..upto`` closed at its newest value there (a correction later in
    the batch is not seen yet)."""
    if upto == 0 and not base:  # (a run's starts increase: already in order, one bar a start)
        return list(bars[0])
    out = {b.start: b for b in base}
    for run in bars[: upto + 1]:
        out.update([(b.start, b) for b in run])
    return [out[start] for start in sorted(out)]


def _arrays(bars: list[Bar]) -> tuple[Any, Any, Any]:
    high = np.array([b.high for b in bars], dtype=np.float64)
    low = np.array([b.low for b in bars], dtype=np.float64)
    close = np.array([b.close for b in bars], dtype=np.float64)
    return high, low, close


class IndicatorProcessor:
    """Folds ``closes:{exchange_id}`` into MACD-V points and alerts; see the module docstring."""

    group = GROUP

    def __init__(
        self,
        exchange_id: str,
        *,
        window: int = 1000,
        history: int = 1000,
        params: MacdvParams | None = None,
        zones: ZoneThresholds | None = None,
        alert_history: int = 100_000,
        seed_from_candles: bool = False,
    ) -> None:
        """``seed_from_candles``: a series with no state yet starts from its stored candles, not from its
        close events alone (a rebuild of the indicators from the candle projection)."""
        self.exchange_id = exchange_id
        self.seed_from_candles = seed_from_candles
        self.stream = keys.closes_stream(exchange_id)
        self.window = window
        self.history = history
        self.params = params or MacdvParams()
        self.zones = zones or DEFAULT_THRESHOLDS
        self.alert_history = alert_history
        self.ids_key = keys.alert_ids(exchange_id)

    def _recompute(self, candles: list[Bar], since: int) -> tuple[list[Point | None], Point | None, SeriesState | None]:
        """MACD-V of the whole window, and the kernel state it leaves (ready for the next close); points
        from the candle before ``since`` on (the one before is what the alert rules compare with)."""
        p = self.params
        state = macdv_state(p.fast, p.slow, p.signal, p.atr_period)
        high, low, close = _arrays(candles)
        line, signal, hist = macdv_feed(state, high, low, close)
        k = max(next((i for i, c in enumerate(candles) if c.start >= since), len(candles)) - 1, 0)
        before = float(line[k - 1]) if k > 0 else math.nan
        tail = [c.start for c in candles[k:]]
        pts = points(tail, line[k:].tolist(), signal[k:].tolist(), hist[k:].tolist(), self.zones, previous=before)
        after = None
        if candles:
            last = float(line[-1])
            after = SeriesState(candles[-1].start, dumps(state), None if math.isnan(last) else last, pts[-1], True)
        return pts, None, after

    def _seeded(self, saved: SeriesState | None) -> bool:
        """Does the series' input start from its stored candles (see ``seed_from_candles``, and a state
        written before ``indinput`` was)?"""
        return self.seed_from_candles if saved is None else not saved.tracked

    def _step(
        self, saved: SeriesState | None, run: list[CandleClosed], bars: list[Bar]
    ) -> tuple[list[Point | None], Point | None, SeriesState | None] | None:
        """O(1) per close when a run's closes (``bars``: its :func:`_closed_bars`) are exactly the next closed
        candles after the saved state; None otherwise (a correction, a repeat, a gap, no state yet): then the
        series is recomputed. (A run's starts increase: it is in order.)"""
        if saved is None:
            return None
        expected = bucket_end(run[0].candle.timeframe, saved.start)
        for e in run:
            if e.correction or not e.candle.closed or e.candle.start != expected:
                return None
            expected = bucket_end(e.candle.timeframe, e.candle.start)
        state = loads(saved.state, Kind.MACDV)
        prev = math.nan if saved.macdv is None else saved.macdv
        pts: list[Point | None] = []
        for b in bars:  # (every close of the run is closed: one bar each)
            m, sig, h = macdv_update(state, b.high, b.low, b.close)
            pts.append(points([b.start], [m], [sig], [h], self.zones, previous=prev)[0])
            prev = m
        last = bars[-1].start
        return pts, saved.point, SeriesState(last, dumps(state), None if math.isnan(prev) else prev, pts[-1], True)

    def decode(self, entries: Sequence[Entry]) -> tuple[dict[tuple[str, str], list[CandleClosed]], list[Dead]]:
        """A batch's close events by series (:func:`by_series`), and the entries that are not close events."""
        events: list[CandleClosed] = []
        dead: list[Dead] = []
        for entry in entries:
            try:
                events.append(store.decode_closed(entry[1][b"event"]))
            except (KeyError, msgspec.DecodeError) as exc:
                dead.append((entry, f"not a candle-close event: {exc}"))
        return by_series(events), dead

    async def handle(self, client: aioredis.Redis, entries: Sequence[Entry], fence: Fence) -> BatchResult:
        changed, dead = self.decode(entries)
        for _ in range(_MAX_CONFLICT_RETRIES):
            try:
                raised = await self._commit(client, entries, fence, changed, dead)
                break
            except WatchError:
                log.info("%s: alert ids or placement changed under us, recomputing", self.stream)
        else:
            raise ProjectionConflict(f"{self.ids_key} kept changing during {_MAX_CONFLICT_RETRIES} attempts")
        return BatchResult(processed=len(entries), dead=len(dead), events=len(raised))

    def state_keys(self, changed: dict[tuple[str, str], list[CandleClosed]]) -> tuple[list[Series], list[str]]:
        """The batch's series in order, and their state keys."""
        order = sorted(changed)
        return order, [keys.indicator_state(self.exchange_id, symbol, tf, KIND) for symbol, tf in order]

    def prepare(
        self,
        changed: dict[tuple[str, str], list[CandleClosed]],
        series: tuple[list[Series], list[str]],
        saved: Sequence[bytes | None],
    ) -> Prepared:
        """What the batch folds from (``series``: :meth:`state_keys`; ``saved``: the states read, in that
        order): each series' runs, its first run stepped when it can be, and the series whose input must be
        read (``todo``)."""
        order, state_keys = series
        states = {series: _decode_state(raw) for series, raw in zip(order, saved, strict=True)}
        runs = {series: _runs(changed[series]) for series in order}
        bars = {series: [_closed_bars(run) for run in runs[series]] for series in order}
        first = {series: self._step(states[series], runs[series][0], bars[series][0]) for series in order}
        seeded = {series: self._seeded(states[series]) for series in order}
        # series whose input is read: a first run that can't step, several runs, or an input to seed
        todo = [s for s in order if first[s] is None or len(runs[s]) > 1 or seeded[s]]
        return Prepared(changed, order, state_keys, states, runs, bars, first, seeded, todo)

    def fold(self, b: Prepared, base: dict[Series, list[Bar]]) -> Folded:
        """The batch's points (from each series' earliest close on), candidate alerts by id, new states and
        input changes, from what :meth:`prepare` gave and the input read for its ``todo`` series (``base``:
        the newest ``window`` bars, or the stored closed candles of a seeded series). Pure."""
        out = Folded()
        for (symbol, tf), state_key in zip(b.order, b.state_keys, strict=True):
            series = (symbol, tf)
            state = b.states[series]
            runs = b.runs[series]
            bars = b.bars[series]
            since = min(run[0].candle.start for run in runs)  # (a run's starts increase)
            by_start: dict[int, Point] = {}
            written: list[Point] = []
            for i, run in enumerate(runs):
                run_since = run[0].candle.start
                result = b.first[series] if i == 0 else self._step(state, run, bars[i])
                if result is None:  # the candles as this run's closes left them (module docstring)
                    candles = _as_of(base[series], bars, i)[-self.window :]
                    result = self._recompute(candles, run_since)
                pts, before, after = result
                for prev, cur in itertools.pairwise([before, *pts]):
                    if prev is not None and cur is not None and cur.start >= run_since:
                        for alert in alerts(self.exchange_id, symbol, tf, prev, cur):
                            out.fresh.setdefault(alert.id, alert)
                written = [pt for pt in pts if pt is not None and pt.start >= run_since]
                if len(runs) > 1:
                    by_start.update([(pt.start, pt) for pt in written])
                state = after
            if len(runs) > 1:
                written = [by_start[start] for start in sorted(by_start)]
            key = keys.indicator(self.exchange_id, symbol, tf, KIND)
            out.writes.append((key, since, written))  # (one run: its points are in order, one a start)
            if state is not None:
                out.states[state_key] = _STATE.encode(state)
            input_key = keys.indicator_input(self.exchange_id, symbol, tf)
            if b.seeded[series]:  # seeded from the candles: written whole, as the last run left it
                out.inputs[input_key] = ("whole", _as_of(base[series], bars, len(runs) - 1))
            else:  # the buckets this batch closed, at their last value (a recompute may have replaced some)
                how = "replace" if series in base else "append"  # (stepped: only newer buckets)
                if len(runs) == 1:  # in order, one bar a start
                    out.inputs[input_key] = (how, bars[0])
                else:
                    final = {bar.start: bar for run_bars in bars for bar in run_bars}
                    out.inputs[input_key] = (how, [final[start] for start in sorted(final)])
        return out

    async def _commit(
        self,
        client: aioredis.Redis,
        entries: Sequence[Entry],
        fence: Fence,
        changed: dict[tuple[str, str], list[CandleClosed]],
        dead: list[Dead],
    ) -> list[Alert]:
        with translated(f"committing indicators of {self.exchange_id}"):
            async with client.pipeline(transaction=True) as pipe:
                named = self.state_keys(changed)
                order, state_keys = named
                read: Any = await watch_then(  # one round trip: WATCH, the lease, the states
                    pipe,
                    (fence.key, self.ids_key, keys.placement(self.exchange_id)),
                    ("GET", fence.key),
                    *([("MGET", *state_keys)] if state_keys else []),
                )
                fence.verify(read[0])
                scope = await Scope.load(client, self.exchange_id, {symbol for symbol, _ in order})
                batch = self.prepare(changed, named, read[1] if state_keys else [])
                reader = client.pipeline(transaction=False)
                for symbol, tf in batch.todo:
                    if batch.seeded[(symbol, tf)]:
                        series_key = scope.read_key(keys.candles(self.exchange_id, symbol, tf))
                        reader.zrange(series_key, -(self.window + 1), -1)
                    else:
                        reader.zrange(keys.indicator_input(self.exchange_id, symbol, tf), -self.window, -1)
                replies: Any = await reader.execute() if batch.todo else []
                base = {
                    series: (
                        [Bar.of(c) for c in map(store.decode_candle, members) if c.closed]
                        if batch.seeded[series]
                        else [_BAR_DECODER.decode(m) for m in members]
                    )
                    for series, members in zip(batch.todo, replies, strict=True)
                }
                folded = self.fold(batch, base)
                fresh = folded.fresh
                raised: list[Alert] = []
                if fresh:
                    known: Any = await pipe.zmscore(self.ids_key, list(fresh))
                    raised = [a for a, score in zip(fresh.values(), known, strict=True) if score is None]
                pipe.multi()  # type: ignore[no-untyped-call]
                scope.queue_moves(pipe)  # a symbol changing tiers: its history first, then the batch
                for name, since, pts_ in folded.writes:
                    targets, expiry = scope.write_keys(name)  # user overflow keys for overflow symbols
                    for key in targets:
                        pipe.zremrangebyscore(key, since, "+inf")
                        if pts_:
                            pipe.zadd(key, {_ENCODER.encode(p): p.start for p in pts_})
                        pipe.zremrangebyrank(key, 0, -(self.history + 1))
                    scope.queue_expiry(pipe, name, targets, expiry)
                if folded.states:
                    pipe.mset(folded.states)
                for input_key, (how, bars) in folded.inputs.items():
                    if how == "whole":
                        pipe.delete(input_key)
                    elif how == "replace":
                        for b in bars:
                            pipe.zremrangebyscore(input_key, b.start, b.start)
                    if bars:
                        pipe.zadd(input_key, {_STATE.encode(b): b.start for b in bars[-self.window :]})
                        if how != "whole" and trims(bars):
                            pipe.zremrangebyrank(input_key, 0, -(self.window + 1))
                alerts_stream = keys.alerts_stream(self.exchange_id)
                for alert in raised:
                    pipe.xadd(alerts_stream, {"alert": _ENCODER.encode(alert)})
                    pipe.zadd(self.ids_key, {alert.id: alert.start})
                if raised:
                    pipe.zremrangebyrank(self.ids_key, 0, -(self.alert_history + 1))
                dead_stream = keys.dead_letter_stream(self.exchange_id)
                for (eid, fields), reason in dead:
                    why = {b"reason": reason.encode(), b"original_id": eid, b"stream": self.stream.encode()}
                    pipe.xadd(dead_stream, {**fields, **why})  # type: ignore[dict-item]
                pipe.xack(self.stream, self.group, *[e[0] for e in entries])
                for alert in raised:  # published only if the batch commits (pub/sub: at-most-once)
                    pipe.publish(keys.alerts_channel(self.exchange_id), _ENCODER.encode(alert))
                await pipe.execute()
        return raised


def by_series(events: Sequence[CandleClosed]) -> dict[tuple[str, str], list[CandleClosed]]:
    """Close events by series: (symbol, timeframe) -> its closes, in order."""
    changed: dict[tuple[str, str], list[CandleClosed]] = {}
    for event in events:
        c = event.candle
        got = changed.get(key := (c.symbol, c.timeframe))
        if got is None:
            changed[key] = [event]
        else:
            got.append(event)
    return changed


def encode_point(point: Point) -> bytes:
    """A member of ``indicator:...`` (scored by its start)."""
    return _ENCODER.encode(point)


def encode_points(points: Iterable[Point]) -> list[bytes]:
    """:func:`encode_point` of each."""
    encode = _ENCODER.encode
    return [encode(p) for p in points]


def encode_alert(alert: Alert) -> bytes:
    """The ``alert`` field of an ``alerts:{exchange_id}`` entry (and a pub/sub message)."""
    return _ENCODER.encode(alert)


def encode_bar(bar: Bar) -> bytes:
    """A member of ``indinput:...`` (scored by its start)."""
    return _STATE.encode(bar)


def trims(bars: list[Bar]) -> bool:
    """Is the input trimmed to the window after these bars are added (see ``_TRIM_EVERY``)?"""
    return any(b.start // 60_000 % _TRIM_EVERY == 0 for b in bars)


Series = tuple[str, str]  # (symbol, timeframe)
Dead = tuple[Entry, str]  # an entry that is not a close event, and why
Stepped = tuple[list[Point | None], Point | None, SeriesState | None]  # points, the point before, state after


@dataclass
class Prepared:
    """A batch of closes ready to fold (:meth:`IndicatorProcessor.prepare`)."""

    changed: dict[Series, list[CandleClosed]]
    order: list[Series]
    state_keys: list[str]
    states: dict[Series, SeriesState | None]
    runs: dict[Series, list[list[CandleClosed]]]
    bars: dict[Series, list[list[Bar]]]  # each run's closed candles as bars (:func:`_closed_bars`)
    first: dict[Series, Stepped | None]
    seeded: dict[Series, bool]
    todo: list[Series]


@dataclass
class Folded:
    """What a batch writes (:meth:`IndicatorProcessor.fold`)."""

    writes: list[tuple[str, int, list[Point]]] = field(default_factory=list)  # (indicator key, since, points)
    fresh: dict[str, Alert] = field(default_factory=dict)  # by id: a transition seen by two runs is raised once
    states: dict[str, bytes] = field(default_factory=dict)  # state key -> encoded SeriesState
    inputs: dict[str, tuple[str, list[Bar]]] = field(default_factory=dict)  # input key -> (whole/replace/append, bars)


async def read_points(
    client: aioredis.Redis, exchange_id: str, symbol: str, timeframe: str, *, limit: int, user_id: str | None = None
) -> tuple[str, list[Point]]:
    """DATA-04: the newest ``limit`` MACD-V points, oldest first, from the exchange-scoped key or else the
    user's overflow key; and which answered (``exchange``, ``user:<id>`` or ``none``)."""
    places = [("exchange", keys.indicator(exchange_id, symbol, timeframe, KIND))]
    if user_id is not None:
        places.append((f"user:{user_id}", keys.userindicator(user_id, exchange_id, symbol, timeframe, KIND)))
    for source, key in places:
        with translated(f"reading {key}"):
            members: Any = await client.zrange(key, -limit, -1)
        if members:
            return source, [decode_point(m) for m in members]
    return "none", []
