"""``/healthz`` (Redis and PostgreSQL reachable) and ``/metrics`` (Prometheus text).

Metrics are read from Redis at scrape time, so any number of API processes report the same figures:

* ``tickfold_stream_length{stream,exchange,kind,partition}``: entries held by each stream (raw frame
  partitions, closes, alerts, dead letters, control);
* ``tickfold_stream_entries_added_total{...}``: entries ever appended (Redis ≥ 7; older: the length);
* ``tickfold_frames_appended_total{exchange}``: raw frames appended over all partitions
  (``rate()`` of it is frames/s);
* ``tickfold_group_lag{stream,group,exchange}`` / ``tickfold_group_pending{...}`` /
  ``tickfold_group_consumers{...}``: per consumer group, entries not yet delivered (Redis ≥ 7) and
  delivered but not acknowledged;
* ``tickfold_alerts_total{exchange}``; ``tickfold_reconnects_total{exchange}`` and
  ``tickfold_gaps_total{exchange}`` and ``tickfold_control_events_total{exchange,type}`` (a fold of
  the control stream, :mod:`control.api.tally`).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from litestar import MediaType, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from control.api.auth import read_guard
from control.api.context import Ctx
from control.api.schemas import Health
from processors.candles import GROUP as CANDLES
from processors.indicators import GROUP as INDICATORS
from streams import keys, log
from streams.frames import DECODERS
from tickfold.errors import StoreUnavailable

_EX = ["exchange"]


@dataclass(frozen=True)
class _Stream:
    name: str
    exchange: str
    kind: str
    partition: str = ""
    group: str | None = None


def _streams(partitions: dict[str, int]) -> list[_Stream]:
    out = [_Stream(keys.CONTROL_STREAM, "", "control")]
    for ex, n in sorted(partitions.items()):
        out += [_Stream(keys.frames_stream(ex, p), ex, "frames", str(p), CANDLES) for p in range(n)]
        out += [
            _Stream(keys.closes_stream(ex), ex, "closes", group=INDICATORS),
            _Stream(keys.alerts_stream(ex), ex, "alerts"),
            _Stream(keys.dead_letter_stream(ex), ex, "dead"),
        ]
    return out


def _field(info: dict[Any, Any], name: str) -> Any:
    return info.get(name, info.get(name.encode()))


class _Snapshot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


async def _gather(ctx: Ctx) -> list[Metric]:
    client = ctx.redis
    partitions = {ex: await log.stored_partitions(client, ex) or 0 for ex in sorted(DECODERS)}
    streams = _streams(partitions)
    with log.translated("reading stream figures"):
        pipe = client.pipeline(transaction=False)
        for s in streams:
            pipe.xinfo_stream(s.name)
            if s.group:
                pipe.xinfo_groups(s.name)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    await ctx.tally.catch_up(client)

    labels = ["stream", "exchange", "kind", "partition"]
    length = GaugeMetricFamily("tickfold_stream_length", "Entries held by a stream", labels=labels)
    added = CounterMetricFamily("tickfold_stream_entries_added", "Entries ever appended to a stream", labels=labels)
    frames = CounterMetricFamily("tickfold_frames_appended", "Raw frames appended (all partitions)", labels=_EX)
    alerts = CounterMetricFamily("tickfold_alerts", "Alerts raised", labels=["exchange"])
    glabels = ["stream", "group", "exchange"]
    lag = GaugeMetricFamily("tickfold_group_lag", "Entries not yet delivered to the group", labels=glabels)
    pending = GaugeMetricFamily("tickfold_group_pending", "Entries delivered but not acknowledged", labels=glabels)
    consumers = GaugeMetricFamily("tickfold_group_consumers", "Consumers in the group", labels=glabels)
    frame_totals: dict[str, int] = defaultdict(int)
    alert_totals: dict[str, int] = {ex: 0 for ex in partitions}
    it = iter(replies)
    for s in streams:
        info = next(it)
        groups = next(it) if s.group else []
        if isinstance(info, Exception):  # (the stream does not exist yet)
            continue
        n = int(_field(info, "length"))
        total = _field(info, "entries-added")
        total = n if total is None else int(total)
        values = [s.name, s.exchange, s.kind, s.partition]
        length.add_metric(values, n)
        added.add_metric(values, total)
        if s.kind == "frames":
            frame_totals[s.exchange] += total
        elif s.kind == "alerts":
            alert_totals[s.exchange] = total
        for g in groups if not isinstance(groups, Exception) else []:
            name = _field(g, "name")
            group = name.decode() if isinstance(name, bytes) else str(name)
            glabel = [s.name, group, s.exchange]
            if _field(g, "lag") is not None:
                lag.add_metric(glabel, int(_field(g, "lag")))
            pending.add_metric(glabel, int(_field(g, "pending")))
            consumers.add_metric(glabel, int(_field(g, "consumers")))
    for ex in partitions:
        frames.add_metric([ex], frame_totals.get(ex, 0))
        alerts.add_metric([ex], alert_totals[ex])

    tally = ctx.tally
    reconnects = CounterMetricFamily("tickfold_reconnects", "Disconnections followed by a retry", labels=["exchange"])
    gaps = CounterMetricFamily("tickfold_gaps", "Gap events (lost frames) on the control stream", labels=["exchange"])
    events = CounterMetricFamily("tickfold_control_events", "Control-stream entries by type", labels=[*_EX, "type"])
    for ex in sorted(set(partitions) | set(tally.reconnects) | set(tally.gaps)):
        reconnects.add_metric([ex], tally.reconnects[ex])
        gaps.add_metric([ex], tally.gaps[ex])
    for (ex, kind), n in sorted(tally.events.items()):
        events.add_metric([ex, kind], n)
    return [length, added, frames, lag, pending, consumers, alerts, reconnects, gaps, events]


@get("/metrics", guards=[read_guard], tags=["ops"], media_type=CONTENT_TYPE_LATEST)
async def metrics(ctx: Ctx) -> Response[bytes]:
    """Prometheus text exposition of the stream, group and control figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(await _gather(ctx)))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def _check_redis(ctx: Ctx) -> str:
    try:
        with log.translated("ping"):
            await asyncio.wait_for(ctx.redis.ping(), timeout=5)
    except (StoreUnavailable, TimeoutError) as exc:
        return f"unreachable: {exc}"
    return "ok"


async def _check_postgres(ctx: Ctx) -> str:
    if not ctx.deps.database_url:
        return "not configured"
    try:
        conn = await asyncpg.connect(ctx.deps.database_url, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"unreachable: {exc}"
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    return "ok"


@get("/healthz", tags=["ops"], media_type=MediaType.JSON)
async def healthz(ctx: Ctx) -> Response[Health]:
    """200 when Redis and PostgreSQL answer, else 503 naming the one that does not."""
    redis_state, pg_state = await asyncio.gather(_check_redis(ctx), _check_postgres(ctx))
    ok = redis_state == "ok" and pg_state in ("ok", "not configured")
    body = Health(status="ok" if ok else "unavailable", redis=redis_state, postgres=pg_state)
    return Response(body, status_code=200 if ok else 503)


ROUTES = [metrics, healthz]
