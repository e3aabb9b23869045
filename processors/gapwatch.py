"""Gap watch: reconnects and gap events on the ``control`` stream trigger REST backfills (issue 4, item 4).

The trigger side of :mod:`processors.backfill`. One consumer group (``backfill``) reads the control
stream; an entry is acknowledged only after the backfill it triggered has appended its frames, so a
crash (or kill -9) before that leaves it pending and the next run triggers the backfill again; a
backfill is idempotent (what is stored closed and final is not asked again, and a REST candle folded
twice changes nothing), so a repeated one changes nothing.

A backfill writes no candle itself: it appends ``rest_candles`` frames to the raw streams and the candle
processor folds them (:mod:`processors.backfill`). Served live, the processors run beside this service
and fold them within a batch. With ``until_idle`` (``tickfold process --backfill --until-idle``) the
caller runs the fold again afterwards (``fold``: called after every round that appended frames,
before its entries are acknowledged; ``GapWatchStats.appended`` counts the frames).

What triggers, and the window at risk it gives (event times are the adapters' ``at_ns``)::

    exchange:connected  whose shard's previous lifecycle events (looked up backwards in the control
                        stream, down to the shard's previous ``connected``) include a ``disconnected``:
                        a reconnect. At risk: from the first such disconnect to this connect.
    exchange:gap        frames were lost (sequence / trade id jump). At risk: up to the gap event;
                        only the gap's symbol when it names one.

Everything else (connecting, stale, heartbeat, a first connect, a rotation's overlapping connect, an
undecodable entry) is acknowledged at once. Reconnects are recognised from the stream itself, not from
state kept in memory, so a redelivered ``connected`` (or one read by another instance of the group)
is classified the same way.

Triggers of one exchange are coalesced: after the first one, the service keeps reading for
``settle_ms`` and merges what arrives (earliest start, latest end, union of symbols), then runs one
backfill per stored series of the exchange (``index:candles:{ex}``; timeframes its REST API serves) and
acknowledges every merged entry. Per series the window is::

    [start of the newest closed candle ending at or before the risk start,   (none: the series' first
                                                                              bucket, if earlier than it)
     start of the bucket holding the risk end)                               at most candle_history buckets

Why not "from the newest closed candle up to now": this service may run after the live fold has
already stored closed candles from after the reconnect (``tickfold process --until-idle`` folds first),
so "newest closed" must be looked up before the outage; and buckets from the reconnect on are streamed
live (asking REST for them would only duplicate what the exchange sends).
:func:`processors.backfill.backfill` decides which buckets are missing, closed or gaps; this module
only picks ranges.

The bucket the outage cut (open at the disconnect) is usually closed as soon as frames flow again, by
the live fold's watermark (or, on Coinbase, by the newer bucket), with the values of its last snapshot
before the disconnect. It is handed to the backfill as a ``repair`` bucket (``GapWatchStats.suspect``;
the window is widened to hold it): its closed REST candle, folded at the bucket's end, replaces those
values and emits a correction; had the exchange's own final arrived after all, that one stands.

On start the service warms up every stored series (:func:`processors.backfill.warm_up`: the last
``backfill_history`` closed buckets). REST failures don't stop it: the backfill marks what it could not
fetch in ``gaps:`` (``tickfold gaps``). Redis being unreachable is retried with capped backoff (the
entries stay pending); any other error is a bug and propagates.

Time: this is not a fold, and nothing here decides a candle. The wall clock (``clock``) only picks the
warm-up range; the control events' times (the adapters' clocks) pick the at-risk range; whether a bucket
is closed is REST's answer (:mod:`processors.backfill`), never a clock's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis

from control import events as ev
from control.tier1 import rest_client
from processors.backfill import BackfillResult, Rest, backfill, check_rest_timeframe, warm_up
from projections import store
from projections.gaps import previous_start, to_repair
from projections.watermark import bucket_end, bucket_start
from streams import keys
from streams.adapters.factory import ExchangeRow
from streams.log import Entry, ensure_group, parse_id, translated
from streams.symbols import SymbolMap, UnknownSymbol, load_symbol_map
from tickfold.errors import ProjectionConflict, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

GROUP = "backfill"
_MS_NS = 1_000_000
_PAGE = 200  # control entries per backwards page when classifying a connect


# ----------------------------------------------------------------------------------- pure: triggers


class Trigger(msgspec.Struct, frozen=True, kw_only=True):
    """Work for one exchange: the time range at risk (event time, ns) and which symbols (None: all).

    ``symbols`` holds the exchange's own names (``BTCUSDT``) as the events carry them.
    """

    exchange: str
    since_ns: int
    until_ns: int
    symbols: frozenset[str] | None = None


def merge(a: Trigger, b: Trigger) -> Trigger:
    """One trigger covering both (same exchange): earliest start, latest end, union of symbols."""
    if a.exchange != b.exchange:
        raise ValueError(f"cannot merge triggers of {a.exchange!r} and {b.exchange!r}")
    symbols = None if a.symbols is None or b.symbols is None else a.symbols | b.symbols
    return Trigger(
        exchange=a.exchange, since_ns=min(a.since_ns, b.since_ns), until_ns=max(a.until_ns, b.until_ns), symbols=symbols
    )


def shard_of(connection: str) -> str:
    """``binance-0#3`` -> ``binance-0``: connections of one shard follow each other."""
    return connection.partition("#")[0]


def classify(event: ev.ControlEvent, earlier: Sequence[ev.ControlEvent]) -> Trigger | None:
    """The trigger an event gives, or None. Pure.

    ``earlier``: control events before it, newest first (only needed for ``connected``; those of other
    exchanges or shards are skipped). A ``connected`` is a reconnect when a ``disconnected`` of its shard
    comes after the shard's previous ``connected`` (or, the stream's start reached, anywhere before it).
    """
    if isinstance(event, ev.Gap):
        symbols = frozenset([event.symbol]) if event.symbol else None
        return Trigger(exchange=event.exchange, since_ns=event.at_ns, until_ns=event.at_ns, symbols=symbols)
    if not isinstance(event, ev.Connected):
        return None
    shard = shard_of(event.connection)
    since: int | None = None
    for e in earlier:
        if e.exchange != event.exchange or shard_of(e.connection) != shard:
            continue
        if isinstance(e, ev.Connected):
            break  # the previous connection of the shard: only what came after it counts
        if isinstance(e, ev.Disconnected):
            since = e.at_ns if since is None else min(since, e.at_ns)
    if since is None:
        return None  # a first connect, or a rotation (the new connection opened before the old one closed)
    return Trigger(exchange=event.exchange, since_ns=since, until_ns=event.at_ns)


def window(
    timeframe: str, newest_closed: int | None, oldest: int | None, trigger: Trigger, *, cap: int
) -> tuple[int, int]:
    """``[start, end)`` (bucket starts, ms) of one series for a trigger (module docstring). Pure.

    ``newest_closed``: the newest closed stored bucket ending at or before the risk start; without one,
    the series' ``oldest`` stored bucket or the one holding the risk start, whichever is earlier (before
    its first bucket the series was never streamed: that is the warm-up's business, not an outage's).
    ``cap``: buckets never to go back further than (the series bound).
    """
    end = bucket_start(timeframe, trigger.until_ns // _MS_NS)
    floor = end
    for _ in range(cap):
        floor = previous_start(timeframe, floor)
    if newest_closed is not None:
        start = newest_closed
    else:
        start = bucket_start(timeframe, trigger.since_ns // _MS_NS)
        if oldest is not None:
            start = min(start, oldest)
    return max(start, floor), end


# ------------------------------------------------------------------------------------------ service


@dataclass(frozen=True)
class GapWatchConfig:
    consumer: str
    group: str = GROUP
    settle_ms: int = 1000  # after a trigger, keep reading this long and coalesce what arrives
    block_ms: int = 1000
    batch_size: int = 100
    history: int = 5000  # Settings.candle_history: the series bound, and how far back a window may reach
    backfill_history: int = 300  # Settings.backfill_history: closed buckets per series the warm-up fills
    lookback: int = 2000  # control entries searched backwards for a connect's previous events
    warm_up: bool = True
    claim_idle_ms: int = 30_000  # entries pending this long at another consumer (a dead one) are taken over
    max_retries: int = 8  # Redis unreachable: retries with capped backoff, then the error propagates


@dataclass
class GapWatchStats:
    warmed: list[BackfillResult] = field(default_factory=list)
    triggers: int = 0  # entries that triggered work
    rounds: int = 0  # coalesced backfill rounds (one per exchange with work)
    results: list[BackfillResult] = field(default_factory=list)
    acked: int = 0
    suspect: list[tuple[str, int]] = field(default_factory=list)  # (series, start) cut by the outage: repaired
    appended: int = 0  # rest_candles frames appended to the raw streams (for the fold)
    skipped: list[str] = field(default_factory=list)  # "series: why" not backfilled


class GapWatch:
    """Reads ``control`` in group ``backfill`` and runs the backfills its events call for (module docstring).

    ``rests``: a REST client per exchange id (events of other exchanges are acknowledged, nothing done).
    ``clock``: wall time in ns; it only picks ranges. ``fold``: runs the candle processors until idle
    (module docstring); None when they run alongside.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        rests: Mapping[str, Rest],
        config: GapWatchConfig,
        *,
        clock: Callable[[], int] = time.time_ns,
        fold: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.client = client
        self.rests = dict(rests)
        self.config = config
        self.clock = clock
        self.fold = fold
        self.stats = GapWatchStats()
        self._work: dict[str, Trigger] = {}
        self._work_ids: dict[str, list[bytes]] = {}
        self._settled_at: float | None = None  # loop time at which the coalesced work runs

    async def run(self, *, until_idle: bool = False, stop: asyncio.Event | None = None) -> GapWatchStats:
        """Warm up, then serve until ``stop``; ``until_idle``: handle what the stream holds now, then return."""
        stop = stop or asyncio.Event()
        cfg = self.config
        await self._retrying(functools.partial(ensure_group, self.client, keys.CONTROL_STREAM, cfg.group))
        if cfg.warm_up:
            appended = self.stats.appended
            for exchange_id in sorted(self.rests):
                await self._warm_up(exchange_id)
            await self._fold(appended)
        await self._take(await self._retrying(self._pending))  # ours from a previous life, and dead consumers'
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            if until_idle:
                block: int | None = None
            elif self._settled_at is not None:
                block = max(1, int((self._settled_at - loop.time()) * 1000))
            else:
                block = cfg.block_ms
            entries = await self._retrying(functools.partial(self._read, block))
            await self._take(entries)
            due = self._settled_at is not None and loop.time() >= self._settled_at
            if self._work and (due or (until_idle and not entries)):
                await self._run_work()
            if until_idle and not entries and not self._work:
                break
        return self.stats

    # ---------------------------------------------------------------------------------- reading

    async def _read(self, block_ms: int | None) -> list[Entry]:
        with translated("reading the control stream"):
            reply: Any = await self.client.xreadgroup(
                self.config.group,
                self.config.consumer,
                {keys.CONTROL_STREAM: ">"},
                count=self.config.batch_size,
                block=block_ms,
            )
        return [(eid, f) for _, entries in reply or [] for eid, f in entries if f is not None]

    async def _pending(self) -> list[Entry]:
        """This consumer's unacknowledged entries, then those idle too long at other consumers (XAUTOCLAIM)."""
        cfg = self.config
        out: list[Entry] = []
        with translated("reading pending control entries"):
            while True:
                after = out[-1][0] if out else b"0"
                reply: Any = await self.client.xreadgroup(
                    cfg.group, cfg.consumer, {keys.CONTROL_STREAM: after}, count=cfg.batch_size
                )
                got = [(eid, f) for _, entries in reply or [] for eid, f in entries]
                if not got:
                    break
                out.extend(got)
            cursor: Any = b"0-0"
            while True:
                cursor, claimed, *_ = await self.client.xautoclaim(
                    keys.CONTROL_STREAM,
                    cfg.group,
                    cfg.consumer,
                    cfg.claim_idle_ms,
                    start_id=cursor,
                    count=cfg.batch_size,
                )
                out.extend(claimed)
                if parse_id(cursor) == (0, 0):
                    break
        unique = {eid: f for eid, f in out}
        return sorted(unique.items(), key=lambda e: parse_id(e[0]))

    async def _take(self, entries: list[Entry]) -> None:
        """Classify entries: triggers join the coalesced work, the rest (and deleted ones) are acknowledged."""
        done: list[bytes] = []
        for eid, fields in entries:
            trigger = await self._retrying(functools.partial(self._classify, eid, fields))
            if trigger is None or trigger.exchange not in self.rests:
                done.append(eid)
                continue
            self.stats.triggers += 1
            current = self._work.get(trigger.exchange)
            self._work[trigger.exchange] = trigger if current is None else merge(current, trigger)
            self._work_ids.setdefault(trigger.exchange, []).append(eid)
            if self._settled_at is None:
                self._settled_at = asyncio.get_running_loop().time() + self.config.settle_ms / 1000
        if done:
            await self._retrying(functools.partial(self._ack, done))

    async def _classify(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> Trigger | None:
        event = _decode(fields)
        if event is None:
            return None
        earlier: list[ev.ControlEvent] = []
        if isinstance(event, ev.Connected):
            earlier = await self._earlier(entry_id, event)
        return classify(event, earlier)

    async def _earlier(self, entry_id: bytes, event: ev.Connected) -> list[ev.ControlEvent]:
        """Control events before ``entry_id``, newest first, down to the shard's previous connect."""
        shard = shard_of(event.connection)
        out: list[ev.ControlEvent] = []
        upper = b"(" + entry_id
        scanned = 0
        while scanned < self.config.lookback:
            with translated("looking back in the control stream"):
                page: Any = await self.client.xrevrange(keys.CONTROL_STREAM, max=upper, min="-", count=_PAGE)
            if not page:
                break
            scanned += len(page)
            for _eid, fields in page:
                e = _decode(fields)
                if e is None:
                    continue
                out.append(e)
                if isinstance(e, ev.Connected) and e.exchange == event.exchange and shard_of(e.connection) == shard:
                    return out
            upper = b"(" + page[-1][0]
        return out

    async def _ack(self, ids: list[bytes]) -> None:
        with translated("acknowledging control entries"):
            await self.client.xack(keys.CONTROL_STREAM, self.config.group, *ids)
        self.stats.acked += len(ids)

    # ---------------------------------------------------------------------------------- backfilling

    async def _run_work(self) -> None:
        for exchange_id in sorted(self._work):
            trigger = self._work[exchange_id]
            appended = self.stats.appended
            await self._retrying(functools.partial(self._backfill_exchange, trigger))
            await self._fold(appended)
            ids = self._work_ids.pop(exchange_id)
            del self._work[exchange_id]
            await self._retrying(functools.partial(self._ack, ids))
            self.stats.rounds += 1
        self._settled_at = None

    async def _fold(self, appended_before: int) -> None:
        """Let the fold apply what was appended since ``appended_before`` (when this service runs it)."""
        if self.fold is not None and self.stats.appended > appended_before:
            await self.fold()

    async def _series(self, exchange_id: str, symbols: SymbolMap) -> list[tuple[str, str]]:
        """(canonical symbol, timeframe) of the exchange's stored series that its REST API serves."""
        rest = self.rests[exchange_id]
        out: list[tuple[str, str]] = []
        for key in await store.list_series(self.client, exchange_id):
            _, _, symbol, timeframe = key.split(":")
            try:
                check_rest_timeframe(rest, timeframe)
                symbols.native(symbol)
            except (ValueError, UnknownSymbol) as exc:
                self._skip(key, str(exc))
                continue
            out.append((symbol, timeframe))
        return out

    async def _backfill_exchange(self, trigger: Trigger) -> None:
        ex = trigger.exchange
        rest = self.rests[ex]
        smap = await load_symbol_map(self.client, ex)
        wanted: set[str] | None = None
        if trigger.symbols is not None:
            wanted = set()
            for native in trigger.symbols:
                try:
                    wanted.add(smap.canonical(native))
                except UnknownSymbol:
                    wanted = None  # a symbol we can't place: every series
                    break
        since_ms = trigger.since_ns // _MS_NS
        cfg = self.config
        for symbol, timeframe in await self._series(ex, smap):
            if wanted is not None and symbol not in wanted:
                continue
            key = keys.candles(ex, symbol, timeframe)
            newest, oldest, suspect = await self._newest_closed(key, since_ms)
            start, end = window(timeframe, newest, oldest, trigger, cap=cfg.history)
            for s in suspect:
                log.info("%s %d: closed with values from before the disconnect; asking REST for it", key, s)
                self.stats.suspect.append((key, s))
                start, end = (
                    (min(start, s), max(end, bucket_end(timeframe, s)))
                    if start < end
                    else (s, bucket_end(timeframe, s))
                )
            if start >= end:
                continue
            try:
                result = await backfill(
                    self.client, rest, ex, symbol, timeframe, start, end, history=cfg.history, symbols=smap,
                    repair=suspect,
                )  # fmt: skip
            except ProjectionConflict as exc:
                self._skip(key, str(exc))
                continue
            self._report(result)

    async def _newest_closed(self, key: str, since_ms: int) -> tuple[int | None, int | None, list[int]]:
        """(the newest closed bucket ending at or before ``since_ms``, the oldest stored bucket, the bucket
        holding ``since_ms`` if it is stored closed with values that predate its end: closed by the live
        watermark or a newer bucket after the outage cut it, see :func:`projections.gaps.to_repair`)."""
        timeframe = key.rsplit(":", 1)[1]
        suspect: list[int] = []
        with translated(f"reading {key}"):
            first: Any = await self.client.zrange(key, 0, 0, withscores=True)
        oldest = int(first[0][1]) if first else None
        upper: Any = since_ms
        scanned = 0
        while scanned < self.config.history:
            with translated(f"reading {key}"):
                members: Any = await self.client.zrange(key, upper, "-inf", desc=True, byscore=True, offset=0, num=64)
            if not members:
                break
            scanned += len(members)
            for raw in members:
                c = store.decode_candle(raw)
                end = bucket_end(timeframe, c.start)
                if end > since_ms:  # the bucket the outage began in
                    if to_repair(c, repair=True):
                        suspect.append(c.start)
                    continue
                if c.closed:
                    return c.start, oldest, suspect
            upper = f"({store.decode_candle(members[-1]).start}"
        return None, oldest, suspect

    async def _warm_up(self, exchange_id: str) -> None:
        rest = self.rests[exchange_id]
        smap = await self._retrying(functools.partial(load_symbol_map, self.client, exchange_id))
        now_ms = self.clock() // _MS_NS
        for symbol, timeframe in await self._retrying(functools.partial(self._series, exchange_id, smap)):
            call = functools.partial(
                warm_up, self.client, rest, exchange_id, [symbol], [timeframe], count=self.config.backfill_history,
                history=self.config.history, symbol_map=smap, now_ms=now_ms,
            )  # fmt: skip
            try:
                results = await self._retrying(call)
            except ProjectionConflict as exc:
                self._skip(keys.candles(exchange_id, symbol, timeframe), str(exc))
                continue
            for r in results:
                self.stats.warmed.append(r)
                self.stats.appended += len(r.appended)
                self._log(r, "warm-up")

    def _report(self, r: BackfillResult) -> None:
        self.stats.results.append(r)
        self.stats.appended += len(r.appended)
        self._log(r, "backfill")

    @staticmethod
    def _log(r: BackfillResult, what: str) -> None:
        series = keys.candles(r.exchange, r.symbol, r.timeframe)
        if r.errors:
            log.warning("%s %s: %s; %d bucket(s) marked as gaps", what, series, "; ".join(r.errors), len(r.gaps))
        if r.written or r.gaps:
            log.info(
                "%s %s: %d appended for the fold (%d repairs), %d gap(s), %d pending",
                what, series, len(r.written), len(r.repaired), len(r.gaps), len(r.pending),
            )  # fmt: skip

    def _skip(self, key: str, why: str) -> None:
        log.warning("%s not backfilled: %s", key, why)
        self.stats.skipped.append(f"{key}: {why}")

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        delay = 0.1
        for attempt in range(self.config.max_retries + 1):
            try:
                return await call()
            except StoreUnavailable as exc:
                if attempt == self.config.max_retries:
                    raise
                log.warning("%s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")


def _decode(fields: dict[bytes, bytes] | None) -> ev.ControlEvent | None:
    """The lifecycle event of a control entry; None for anything else (commands, a deleted entry)."""
    raw = (fields or {}).get(b"event")
    if raw is None:
        return None
    try:
        return ev.decode(raw)
    except msgspec.DecodeError:
        return None


async def run_gapwatch(
    client: aioredis.Redis,
    rows: Sequence[ExchangeRow],
    config: GapWatchConfig,
    *,
    until_idle: bool,
    stop: asyncio.Event | None = None,
    clock: Callable[[], int] = time.time_ns,
    fold: Callable[[], Awaitable[object]] | None = None,
) -> GapWatchStats:
    """Build a REST client per row (its ``rest_url``), run :class:`GapWatch`, close the clients.

    ``fold``: with ``until_idle``, the candle processors' run until idle, so that what the backfills
    appended is folded before this returns (None: the caller folds, or the processors run alongside)."""
    async with contextlib.AsyncExitStack() as stack:
        rests: dict[str, Rest] = {}
        for row in rows:
            rests[row.id] = await stack.enter_async_context(rest_client(row))
        watch = GapWatch(client, rests, config, clock=clock, fold=fold)
        return await watch.run(until_idle=until_idle, stop=stop)
