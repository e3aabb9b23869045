"""Backfill and warm-up: missing closed candles from the exchanges' REST APIs, or gap markers (invariant 6).

``backfill`` finds the buckets of ``[start_ms, end_ms)`` that a series lacks or may hold cut (no
candle, an open candle, a ``gaps:`` marker, a candle closed by the watermark with values from before
its end, and the ``repair`` buckets the caller names), fetches them (Binance ``/api/v3/klines``, 1000
per request; Coinbase ``/products/{id}/candles``, 350 per request), and commits in one step per series::

    WATCH candles:{ex}:{symbol}:{tf}  gaps:{ex}:{symbol}:{tf}
    re-read the series and the markers; plan the fill (projections/gaps.py, pure)
    MULTI
      XADD frames:{ex}:p{n}           {"tickfold":"rest_candles",...}: the closed REST candles (chunks of 1000)
      ZREM gaps:...                   stale markers (the bucket is stored closed already)
      ZADD gaps:...                   buckets over and not obtainable
    EXEC                              a conflict: re-read and re-plan (REST is not asked again)

**Candles go through the raw stream, never straight into the series.** The frame goes to the
partition of the symbol (``partition_of`` its exchange-native name; the partition count is the
stored one, ``partitions`` only if the exchange has none yet), and the candle processor folds it like
a native snapshot, closed, at the REST event time (:func:`projections.gaps.rest_event_ns`, 1 ns before
the bucket end): it fills a missing bucket, closes an open one, repairs one closed only by the watermark
or a newer bucket (a correction event when values change), and loses against the exchange's own final
(Binance ``x``, sent after the end). Roll-ups, close events and the indicators follow from the fold,
and a rebuild or replay from the raw streams contains the backfill (DESIGN invariant 1). The processor
also removes the markers of the buckets a frame fills, in its commit.

The series is therefore *not* written when :func:`backfill` returns: the fold applies the frame when
the partition's processor reaches it (live: within a batch; ``--until-idle``: on its next run).
:func:`wait_folded` waits for that; tests drain the processor. A backfill that runs again before its
frame is folded appends the same candles once more: folded twice, they change nothing (same event
time, same values).

Gap markers stay direct writes: they are not candles and not a function of the raw streams but a
record of what REST could not give (an error, no row), kept for ``tickfold gaps`` and retried by every
backfill of their range; a replay has no REST to fail.

Racing the live candle processor: they no longer write the same keys (the processor removes markers
only of buckets it stores closed). The WATCH keeps the plan consistent with the series it was made
from; the fold itself orders the frame against live frames by event time, in either arrival order.

Gaps and ``pending``: a bucket is marked in ``gaps:`` only when it is provably over (it ends at or before
the newest exchange time the data shows: a stored candle's start, a REST candle, ``now_ms`` if given)
and REST can't give it (an error after the client's retries, or no row where the exchange must have one).
A bucket not provably over (or open at REST) is left alone as ``pending``, as is a ``repair`` bucket
REST did not return. Markers are retried by every backfill of their range and removed when filled.

Empty buckets:

* Binance answers a bucket without trades with a zero-volume kline (open = high = low = close = the
  previous close, ``n`` 0): the exchange's own confirmed empty candle, stored as it came. A kline
  missing from a Binance answer (before the listing, a halt) is a gap.
* Coinbase leaves buckets without trades out. A bucket missing from an answer whose window covered it
  is a **confirmed empty candle** only if (1) the answer succeeded (the window is known to be complete:
  windows are time-based, at most 350 buckets, each asked one bucket past what it is trusted for, as
  Coinbase's ``end`` may be exclusive), (2) the exchange is provably past it by a whole bucket (a later
  bucket came back, or the horizon is one bucket past its end: the in-progress bucket and one just
  closed may still be missing), and (3) its previous close is known (the bucket before is stored
  closed, came back, or is itself confirmed empty). It is then appended as Binance would send it:
  flat at the previous close, volume ``"0"``. Without (2) it stays pending; without (1) or (3) it is a
  gap, never a made-up price.

``warm_up`` backfills the last ``count`` closed buckets (``Settings.backfill_history``, default 300)
of each symbol and timeframe; the wall clock only chooses that range.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import redis.asyncio as aioredis

from projections import store
from projections.candles import BY_REST, Candle
from projections.gaps import (
    REST_SOURCE,
    FillPlan,
    aligned_starts,
    plan_fill,
    previous_start,
    rest_event_ns,
    runs,
    wants,
)
from projections.watermark import bucket_end, bucket_start, check_timeframe
from streams import keys, log
from streams.frames import RestCandle, RestCandlesFrame, encode_tickfold
from streams.partitions import DEFAULT_PARTITIONS, partition_of
from streams.rest import BinanceRestClient, CoinbaseRestClient, RestError
from streams.rest import types as rt
from streams.symbols import SymbolMap, load_symbol_map
from tickfold.errors import ProjectionConflict

LIVE_PROJECTION: Final = "candles"  # processors/candles.py PROJECTION: its position keys tell what is folded
BINANCE_PAGE: Final = 1000
COINBASE_WINDOW: Final = 350
FRAME_CANDLES: Final = 1000  # candles per rest_candles frame
COINBASE_GRANULARITIES: Final[dict[str, rt.Granularity]] = {
    "1m": "ONE_MINUTE",
    "5m": "FIVE_MINUTE",
    "15m": "FIFTEEN_MINUTE",
    "30m": "THIRTY_MINUTE",
    "1h": "ONE_HOUR",
    "2h": "TWO_HOUR",
    "4h": "FOUR_HOUR",
    "6h": "SIX_HOUR",
    "1d": "ONE_DAY",
}
_MAX_CONFLICT_RETRIES = 20
_MS_NS = 1_000_000

Rest = BinanceRestClient | CoinbaseRestClient


class BackfillResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one backfill did to one series (bucket starts, epoch ms, ascending)."""

    exchange: str
    symbol: str
    timeframe: str
    wanted: int  # buckets of the range that were missing, open, marked or possibly cut
    written: list[int]  # closed REST candles appended for the fold (confirmed empty ones included)
    empty: list[int]  # of those, confirmed empty buckets
    gaps: list[int]  # marked in gaps:... (over and not obtainable)
    unmarked: list[int]  # markers removed (stale ones now; those of written buckets by the fold)
    pending: list[int]  # not over yet, open at REST, or a repair REST did not return: for a later backfill
    requests: int
    errors: list[str]  # REST failures (after the client's own retries)
    attempts: int  # commit attempts (> 1: a concurrent writer made us re-plan)
    repaired: list[int] = []  # of ``written``, buckets stored closed with values that may be cut
    stream: str = ""  # the raw stream the frames went to ("" when none was appended)
    appended: list[bytes] = []  # their entry ids


@dataclass
class _Fetched:
    rows: dict[int, Candle] = field(default_factory=dict)
    covered: set[int] = field(default_factory=set)
    newest_ms: int | None = None  # the newest exchange time the answers prove
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    omits_empty: bool = False  # Coinbase leaves buckets without trades out
    source: str = ""  # the endpoint asked
    fetched_ns: int = 0  # wall time of the last answer (provenance only)

    def saw(self, t_ms: int) -> None:
        self.newest_ms = t_ms if self.newest_ms is None else max(self.newest_ms, t_ms)


def check_rest_timeframe(rest: Rest, timeframe: str) -> str:
    """``timeframe`` if this exchange's REST API serves it; ValueError otherwise."""
    check_timeframe(timeframe)
    if isinstance(rest, CoinbaseRestClient) and timeframe not in COINBASE_GRANULARITIES:
        raise ValueError(f"coinbase REST candles have no {timeframe!r}; one of {', '.join(COINBASE_GRANULARITIES)}")
    return timeframe


async def backfill(
    client: aioredis.Redis,
    rest: Rest,
    exchange_id: str,
    symbol: str,
    timeframe: str,
    start_ms: int,
    end_ms: int,
    *,
    history: int = 5000,
    symbols: SymbolMap | None = None,
    now_ms: int | None = None,
    repair: Iterable[int] = (),
    partitions: int = DEFAULT_PARTITIONS,
) -> BackfillResult:
    """Fetch the missing (or possibly cut) closed buckets of ``[start_ms, end_ms)`` of one series from
    REST and append them to the symbol's raw stream for the fold (module docstring).

    ``symbol`` is canonical (``BTC-USDT``); ``symbols`` maps it to the exchange's name (default: the
    stored market list). ``history``: the series bound (``Settings.candle_history``; the marker reads
    stay within it). ``now_ms``: an exchange-time estimate that proves buckets ending before it are over
    (default: only the data does). ``repair``: buckets to re-fetch although stored closed, if closed by
    the watermark or a newer bucket with values from before their end (the bucket an outage began in).
    ``partitions``: the exchange's partition count if none is stored yet (``Settings.partitions``).
    """
    del history  # the fold bounds the series (its own Settings.candle_history)
    check_rest_timeframe(rest, timeframe)
    series = keys.candles(exchange_id, symbol, timeframe)
    marker_key = keys.gaps(exchange_id, symbol, timeframe)
    smap = symbols if symbols is not None else await load_symbol_map(client, exchange_id)
    native = smap.native(symbol)
    starts = aligned_starts(timeframe, start_ms, end_ms)
    fix = set(repair)
    empty = BackfillResult(
        exchange=exchange_id, symbol=symbol, timeframe=timeframe, wanted=0, written=[], empty=[], gaps=[],
        unmarked=[], pending=[], requests=0, errors=[], attempts=0,
    )  # fmt: skip
    if not starts:
        return empty
    stored, marked, _ = await _read(client, series, marker_key, starts[0], starts[-1])
    wanted = [s for s in starts if wants(stored.get(s), marked=s in marked, repair=s in fix)]
    if not wanted:
        return empty
    if isinstance(rest, BinanceRestClient):
        fetched = await _fetch_binance(rest, exchange_id, symbol, native, timeframe, wanted)
    else:
        fetched = await _fetch_coinbase(rest, exchange_id, symbol, native, timeframe, wanted)
    n = await log.stored_partitions(client, exchange_id) or await log.ensure_partitions(client, exchange_id, partitions)
    stream = keys.frames_stream(exchange_id, partition_of(native, n))
    for attempt in range(1, _MAX_CONFLICT_RETRIES + 1):
        try:
            plan, repaired, ids = await _commit(
                client, series, marker_key, stream, native, exchange_id, symbol, timeframe, wanted, fetched, now_ms,
                fix,
            )  # fmt: skip
        except log.WatchError:
            continue
        return BackfillResult(
            exchange=exchange_id, symbol=symbol, timeframe=timeframe, wanted=len(wanted),
            written=[c.start for c in plan.write], empty=plan.empty, gaps=plan.mark, unmarked=plan.unmark,
            pending=plan.pending, requests=fetched.requests, errors=fetched.errors, attempts=attempt,
            repaired=repaired, stream=stream if ids else "", appended=ids,
        )  # fmt: skip
    raise ProjectionConflict(f"{series} kept changing during {_MAX_CONFLICT_RETRIES} backfill commits")


async def warm_up(
    client: aioredis.Redis,
    rest: Rest,
    exchange_id: str,
    symbols: Iterable[str],
    timeframes: Sequence[str],
    *,
    count: int = 300,
    history: int = 5000,
    symbol_map: SymbolMap | None = None,
    now_ms: int | None = None,
    partitions: int = DEFAULT_PARTITIONS,
) -> list[BackfillResult]:
    """Backfill the last ``count`` closed buckets (``Settings.backfill_history``) of every symbol and timeframe.

    The range ends at the bucket holding ``now_ms`` (default: the wall clock, which only picks the range;
    whether a bucket is closed is REST's answer). One series after the other, so the client's rate
    limiter paces them.
    """
    if count <= 0:
        raise ValueError(f"count must be > 0, got {count}")
    for tf in timeframes:
        check_rest_timeframe(rest, tf)
    now = now_ms if now_ms is not None else time.time_ns() // _MS_NS
    smap = symbol_map if symbol_map is not None else await load_symbol_map(client, exchange_id)
    out: list[BackfillResult] = []
    for symbol in symbols:
        for tf in timeframes:
            end = bucket_start(tf, now)
            start = end
            for _ in range(count):
                start = previous_start(tf, start)
            one = await backfill(
                client, rest, exchange_id, symbol, tf, start, end, history=history, symbols=smap, now_ms=now,
                partitions=partitions,
            )  # fmt: skip
            out.append(one)
    return out


async def wait_folded(
    client: aioredis.Redis, results: Iterable[BackfillResult], *, timeout_s: float = 30.0, poll_s: float = 0.05
) -> None:
    """Wait until the candle processor has folded every frame the ``results`` appended (its partition's
    position reached them); TimeoutError after ``timeout_s`` (no processor running?)."""
    need: dict[str, tuple[int, int]] = {}
    for r in results:
        if r.appended:
            newest = max(log.parse_id(i) for i in r.appended)
            need[r.stream] = max(need.get(r.stream, newest), newest)
    async with asyncio.timeout(timeout_s):
        for stream, newest in need.items():
            exchange_id, partition = _stream_partition(stream)
            key = keys.projection_position(LIVE_PROJECTION, exchange_id, partition)
            while True:
                with log.translated(f"reading {key}"):
                    position: Any = await client.get(key)
                if position is not None and log.parse_id(position) >= newest:
                    break
                await asyncio.sleep(poll_s)


def _stream_partition(stream: str) -> tuple[str, int]:
    """``frames:binance:p3`` -> ("binance", 3)."""
    _, exchange_id, part = stream.split(":")
    return exchange_id, int(part.removeprefix("p"))


# ------------------------------------------------------------------------------------------ Redis


def _decode_all(members: Any) -> dict[int, Candle]:
    out: dict[int, Candle] = {}
    for raw in members:
        c = store.decode_candle(raw)
        out[c.start] = c
    return out


async def _read(
    client: Any, series: str, marker_key: str, first: int, last: int
) -> tuple[dict[int, Candle], set[int], int | None]:
    """(stored candles from the bucket before ``first`` to ``last``, marked starts in range, newest start)."""
    timeframe = series.rsplit(":", 1)[1]
    lo = previous_start(timeframe, first)
    with log.translated(f"reading {series}"):
        stored: Any = await client.zrange(series, lo, last, byscore=True)
        newest: Any = await client.zrange(series, -1, -1, withscores=True)
        marks: Any = await client.zrange(marker_key, first, last, byscore=True)
    return (
        _decode_all(stored),
        {int(m) for m in marks},
        int(newest[0][1]) if newest else None,
    )


def rest_frames(
    exchange_id: str, native: str, timeframe: str, candles: Sequence[Candle], *, fetched_ns: int, source: str
) -> list[bytes]:
    """The ``rest_candles`` frames (raw bytes, at most :data:`FRAME_CANDLES` candles each) of closed candles."""
    out: list[bytes] = []
    for i in range(0, len(candles), FRAME_CANDLES):
        rows = [
            RestCandle(
                start=c.start, open=c.open, high=c.high, low=c.low, close=c.close, volume=c.volume,
                quote_volume=c.quote_volume, trades=c.trades, taker_buy_volume=c.taker_buy_volume,
            )
            for c in candles[i : i + FRAME_CANDLES]
        ]  # fmt: skip
        frame = RestCandlesFrame(
            exchange=exchange_id, symbol=native, timeframe=timeframe, fetched_ns=fetched_ns, source=source,
            candles=rows,
        )  # fmt: skip
        out.append(encode_tickfold(frame))
    return out


async def _commit(
    client: aioredis.Redis,
    series: str,
    marker_key: str,
    stream: str,
    native: str,
    exchange_id: str,
    symbol: str,
    timeframe: str,
    wanted: list[int],
    fetched: _Fetched,
    now_ms: int | None,
    repair: set[int],
) -> tuple[FillPlan, list[int], list[bytes]]:
    with log.translated(f"backfilling {series}"):
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch(series, marker_key)
            stored, marked, newest = await _read(pipe, series, marker_key, wanted[0], wanted[-1])
            evidence = [t for t in (newest, fetched.newest_ms, now_ms) if t is not None]
            plan = plan_fill(
                exchange=exchange_id,
                symbol=symbol,
                timeframe=timeframe,
                wanted=wanted,
                stored=stored,
                marked=marked,
                rest=fetched.rows,
                covered=fetched.covered,
                horizon_ms=max(evidence) if evidence else None,
                omits_empty=fetched.omits_empty,
                repair=repair,
            )
            written = {c.start for c in plan.write}
            repaired = [s for s in sorted(written) if s in stored and stored[s].closed]
            stale = [s for s in plan.unmark if s not in written]
            if not (plan.write or stale or plan.mark):
                return plan, repaired, []
            frames = rest_frames(
                exchange_id, native, timeframe, plan.write, fetched_ns=fetched.fetched_ns, source=fetched.source
            )
            pipe.multi()  # type: ignore[no-untyped-call]
            for raw in frames:
                pipe.xadd(stream, {"frame": raw, "recv_ns": fetched.fetched_ns})
            if stale:
                pipe.zrem(marker_key, *[str(s) for s in stale])
            if plan.mark:
                pipe.zadd(marker_key, {str(s): s for s in plan.mark})
                pipe.sadd(keys.candle_index(exchange_id), series)
            replies: Any = await pipe.execute()
    return plan, repaired, list(replies[: len(frames)])


# ------------------------------------------------------------------------------------------- REST


def _spans(timeframe: str, wanted: list[int], page: int) -> list[tuple[int, int]]:
    """Runs of wanted buckets, merged while one span stays within ``page`` buckets: (first, last)."""
    out: list[tuple[int, int]] = []
    for first, last, _ in runs(wanted, timeframe):
        if out and len(aligned_starts(timeframe, out[-1][0], bucket_end(timeframe, last))) <= page:
            out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


def _rest_candle(
    exchange_id: str, symbol: str, timeframe: str, start: int, values: tuple[str, str, str, str, str], closed: bool
) -> Candle:
    """A REST row as the fold will see it (the frame carries only the values; the fold stamps the rest)."""
    o, h, lo, c, v = values
    return Candle(
        exchange=exchange_id, symbol=symbol, timeframe=timeframe, start=start, open=o, high=h, low=lo, close=c,
        volume=v, closed=closed, event_ns=rest_event_ns(timeframe, start), source=REST_SOURCE,
        closed_by=BY_REST if closed else None,
    )  # fmt: skip


async def _fetch_binance(
    rest: BinanceRestClient, exchange_id: str, symbol: str, native: str, timeframe: str, wanted: list[int]
) -> _Fetched:
    """Klines for every span, paginated from the last open time on; stops at the first failure."""
    got = _Fetched(source=f"{rest.base_url}/api/v3/klines")
    for first, last in _spans(timeframe, wanted, BINANCE_PAGE):
        cursor = first
        while cursor <= last:
            try:
                page = await rest.klines(native, timeframe, start_ms=cursor, end_ms=last, limit=BINANCE_PAGE)
            except RestError as exc:
                got.errors.append(str(exc))
                return got
            got.requests += 1
            got.fetched_ns = time.time_ns()
            for k in page:
                got.saw(k.close_time + 1 if k.closed else k.open_time)
                if cursor <= k.open_time <= last:
                    c = _rest_candle(
                        exchange_id, symbol, timeframe, k.open_time, (k.open, k.high, k.low, k.close, k.volume),
                        k.closed,
                    )  # fmt: skip
                    got.rows[k.open_time] = msgspec.structs.replace(
                        c, quote_volume=k.quote_volume, trades=k.trades, taker_buy_volume=k.taker_buy_base_volume
                    )
            done = len(page) < BINANCE_PAGE or not page[-1].closed or page[-1].open_time >= last
            upto = last if done else page[-1].open_time
            got.covered.update(aligned_starts(timeframe, cursor, upto + 1))
            if done:
                break
            cursor = bucket_end(timeframe, page[-1].open_time)
    return got


async def _fetch_coinbase(
    rest: CoinbaseRestClient, exchange_id: str, symbol: str, native: str, timeframe: str, wanted: list[int]
) -> _Fetched:
    """Candles for every span in time windows of at most 350 buckets; stops at the first failure.

    Each window asks for one bucket more than it is trusted for (Coinbase's ``end`` may be exclusive):
    a window ``[a, b]`` covers ``[a, b)``, and the next window starts at ``b``.
    """
    got = _Fetched(omits_empty=True, source=f"{rest.base_url}/products/{native}/candles")
    granularity = COINBASE_GRANULARITIES[timeframe]
    size_s = (bucket_end(timeframe, wanted[0]) - wanted[0]) // 1000
    for first, last in _spans(timeframe, wanted, COINBASE_WINDOW - 1):
        cursor = first // 1000
        stop = last // 1000 + size_s  # one bucket past the span
        while cursor < stop:
            window_end = min(stop, cursor + (COINBASE_WINDOW - 1) * size_s)
            try:
                page = await rest.candles(native, granularity, cursor, window_end, limit=COINBASE_WINDOW)
            except RestError as exc:
                got.errors.append(str(exc))
                return got
            got.requests += 1
            got.fetched_ns = time.time_ns()
            for row in page:
                start = row.start * 1000
                got.saw(bucket_end(timeframe, start) if row.closed else start)
                got.rows[start] = _rest_candle(  # a row is real even past the trusted part of the window
                    exchange_id, symbol, timeframe, start, (row.open, row.high, row.low, row.close, row.volume),
                    row.closed,
                )  # fmt: skip
            got.covered.update(aligned_starts(timeframe, cursor * 1000, window_end * 1000))
            cursor = window_end
    return got
