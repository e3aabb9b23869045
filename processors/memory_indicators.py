"""The indicator processor folded in memory: the replay fast path's MACD-V (``tickfold replay --in-memory``).

:class:`MemoryIndicators` folds batches of close events with the indicator processor's own code
(:meth:`IndicatorProcessor.prepare` and :meth:`~IndicatorProcessor.fold`: the runs, the O(1) steps, the
recomputes, the alert rules) over dicts that stand for what its Redis commands read and write:

* the states (``MGET`` / ``MSET`` of ``indstate:``);
* each series' input (``indinput:``: one bar per start, so a dict by start is the sorted set; ``ZRANGE
  -window -1`` is the newest ``window``; ``whole`` deletes it first, ``replace`` removes the batch's
  starts, the trim keeps the newest ``window``);
* the points (``indicator:...``: one per start; a batch removes its series' points from its earliest close
  on, adds its own, keeps the newest ``history``);
* the alert ids (``alerts:{ex}:ids``, scored by the alert's start: an id already there is not raised
  again; trimmed to ``alert_history`` by score, then id) and the alerts raised, in order.

A replay's closes come to it in the batches the live indicator processor would read them in from the
target (the close stream's order, ``batch_size`` at a time), so the points, states, inputs and alerts are
those of :meth:`IndicatorProcessor.handle` there; :meth:`write` then puts them in the target at once. A
test replays sub-ranges both ways and compares them with the live run. A series seeded from its stored
candles (``seed_from_candles``, or a state written before the input was kept) needs the candle projection:
not folded here (:func:`supported`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from processors.indicators import (
    Bar,
    IndicatorProcessor,
    by_series,
    encode_alert,
    encode_bar,
    encode_points,
    trims,
)
from projections.alerts import Alert, Point
from projections.candles import CandleClosed
from streams import keys, log


def supported(processor: IndicatorProcessor) -> bool:
    """Can :class:`MemoryIndicators` fold for this processor (no series is seeded from stored candles)?"""
    return not processor.seed_from_candles


class MemoryIndicators:
    """One exchange's indicator projection in memory, folded by ``processor``'s own code (module docstring)."""

    def __init__(self, processor: IndicatorProcessor) -> None:
        if not supported(processor):
            raise ValueError("an indicator processor that seeds series from stored candles needs them in Redis")
        self.processor = processor
        self.states: dict[str, bytes] = {}
        self.inputs: dict[str, dict[int, Bar]] = {}
        self.points: dict[str, dict[int, Point]] = {}
        self.ids: dict[str, int] = {}
        self.alerts: list[Alert] = []

    def fold(self, events: Sequence[CandleClosed]) -> int:
        """Fold one batch of close events (in stream order); returns how many alerts it raised."""
        p = self.processor
        changed = by_series(events)
        named = p.state_keys(changed)
        batch = p.prepare(changed, named, [self.states.get(k) for k in named[1]])
        base: dict[tuple[str, str], list[Bar]] = {}
        for symbol, tf in batch.todo:
            if batch.seeded[(symbol, tf)]:  # (a state of an older version: not from this fold)
                raise ValueError(f"{symbol} {tf}: a series seeded from stored candles can't be folded in memory")
            kept = self.inputs.get(keys.indicator_input(p.exchange_id, symbol, tf), {})
            base[(symbol, tf)] = [kept[start] for start in sorted(kept)[-p.window :]]
        folded = p.fold(batch, base)
        raised = [a for a in folded.fresh.values() if a.id not in self.ids]
        for name, since, pts in folded.writes:
            points = self.points.setdefault(name, {})
            for start in [s for s in points if s >= since]:
                del points[start]
            points.update((pt.start, pt) for pt in pts)
            _keep_newest(points, p.history)
        self.states.update(folded.states)
        for input_key, (how, bars) in folded.inputs.items():
            kept = self.inputs.setdefault(input_key, {})
            if how == "whole":
                kept.clear()
            elif how == "replace":
                for b in bars:
                    kept.pop(b.start, None)
            if bars:
                kept.update((b.start, b) for b in bars[-p.window :])
                if how != "whole" and trims(bars):
                    _keep_newest(kept, p.window)
        for alert in raised:
            self.alerts.append(alert)
            self.ids[alert.id] = alert.start
        if raised and len(self.ids) > p.alert_history:
            for _, alert_id in sorted((start, i) for i, start in self.ids.items())[: len(self.ids) - p.alert_history]:
                del self.ids[alert_id]
        return len(raised)

    async def write(self, client: aioredis.Redis) -> None:
        """Put the projection in ``client`` (an empty target): points, states, inputs, alerts and their ids, as
        plain commands packed at once (:func:`streams.log.send_all`)."""
        p = self.processor
        commands: list[tuple[bytes | str | int, ...]] = []
        for key, points in self.points.items():
            if points:
                members = encode_points(points.values())
                commands.append(("ZADD", key, *_pairs(points, members)))
        if self.states:
            commands.append(("MSET", *[v for kv in self.states.items() for v in kv]))
        for key, bars in self.inputs.items():
            if bars:
                commands.append(("ZADD", key, *_pairs(bars, [encode_bar(b) for b in bars.values()])))
        alerts_stream = keys.alerts_stream(p.exchange_id)
        commands.extend(("XADD", alerts_stream, "*", "alert", encode_alert(alert)) for alert in self.alerts)
        if self.ids:
            commands.append(("ZADD", p.ids_key, *[v for id_start in self.ids.items() for v in id_start[::-1]]))
        for i in range(0, len(commands), _SENT):
            await log.send_all(client, commands[i : i + _SENT], "writing the replay's indicators")


_SENT = 20_000  # commands sent at once by :meth:`MemoryIndicators.write`


def _pairs(by_start: dict[int, Any], members: list[bytes]) -> list[bytes | int]:
    """ZADD's score member ... arguments of one member a start (``members``: in ``by_start``'s order)."""
    out: list[bytes | int] = [0, b""] * len(members)
    out[0::2] = list(by_start)
    out[1::2] = members
    return out


def _keep_newest(by_start: dict[int, Any], n: int) -> None:
    """ZREMRANGEBYRANK 0 -(n + 1) of a sorted set scored by start, one member per start."""
    if len(by_start) > n:
        for start in sorted(by_start)[: len(by_start) - n]:
            del by_start[start]
