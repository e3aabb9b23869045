"""Backfill and warm-up: missing closed candles from the exchanges' REST APIs, or gap markers (invariant 6).

``backfill`` finds the buckets of ``[start_ms, end_ms)`` that a series lacks (no candle, an open candle,
or a ``gaps:`` marker), fetches them (Binance ``/api/v3/klines``, 1000 per request; Coinbase
``/products/{id}/candles``, 350 per request), and commits in one step per series::

    WATCH candles:{ex}:{symbol}:{tf}  gaps:{ex}:{symbol}:{tf}  proj:candles:{ex}:p{n}:last_id
    re-read the series and the markers; plan the fill (projections/gaps.py, pure)
    MULTI
      ZREM/ZADD candles:...           closed REST candles, source "rest"
      ZREM gaps:...                   the markers of buckets now filled
      ZADD gaps:...                   buckets over and not obtainable
      SET proj:candles:{ex}:p{n}:last_id  <its own value>   (only when candles are written)
    EXEC                              a conflict: re-read and re-plan (REST is not asked again)

What is never overwritten: a bucket stored closed (by the live feed or an earlier fill). An open stored
bucket is replaced only by a REST candle that is closed (Binance: followed by a later kline, or its
close time before the response's ``Date``; Coinbase: its end before the ``Date``).

Racing the live candle processor: the processor WATCHes only its position (and lease) key, not the
series. So the commit above re-sets the position key of the symbol's partition to the value it has:
a live batch that read the series before this commit fails its EXEC and folds again on top of the
filled series (its snapshots merge by event time: one taken during the bucket is stale against the
REST candle, one sent at or after the close is a correction). Watching the series and that key, a
backfill that read before a live commit fails its EXEC and plans again. Neither loses the other's write.

Gaps and ``pending``: a bucket is marked in ``gaps:`` only when it is provably over (it ends at or before
the newest exchange time the data shows: a stored candle's start, a REST candle, ``now_ms`` if given)
and REST can't give it (an error after the client's retries, or no row where the exchange must have one).
A bucket not provably over (or open at REST) is left alone as ``pending``. Markers are retried by every
backfill of their range and removed in the commit that fills them.

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
  closed, came back, or is itself confirmed empty). It is then stored as Binance would send it:
  flat at the previous close, volume ``"0"``, source ``"rest"``. Without (2) it stays pending; without
  (1) or (3) it is a gap, never a made-up price.

A REST candle's ``event_ns`` is its bucket end (see :func:`projections.gaps.merge_rest`). Backfilled
candles come from outside the raw streams, so a rebuild from the streams alone does not contain them;
run the backfill again after a rebuild. No candle-close events are emitted for backfilled buckets.

``warm_up`` backfills the last ``count`` closed buckets (``Settings.backfill_history``, default 300)
of each symbol and timeframe; the wall clock only chooses that range.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import redis.asyncio as aioredis

from projections import store
from projections.candles import Candle
from projections.gaps import REST_SOURCE, FillPlan, aligned_starts, plan_fill, previous_start, runs
from projections.watermark import bucket_end, bucket_start, check_timeframe
from streams import keys, log
from streams.partitions import partition_of
from streams.rest import BinanceRestClient, CoinbaseRestClient, RestError
from streams.rest import types as rt
from streams.symbols import SymbolMap, load_symbol_map
from tickfold.errors import ProjectionConflict

LIVE_PROJECTION: Final = "candles"  # processors/candles.py PROJECTION: its position keys are the fence
BINANCE_PAGE: Final = 1000
COINBASE_WINDOW: Final = 350
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
    wanted: int  # buckets of the range that were missing, open or marked
    written: list[int]  # closed REST candles stored (confirmed empty ones included)
    empty: list[int]  # of those, confirmed empty buckets
    gaps: list[int]  # marked in gaps:... (over and not obtainable)
    unmarked: list[int]  # markers removed (the bucket is now stored closed)
    pending: list[int]  # not over yet, or open at REST: left for a later backfill
    requests: int
    errors: list[str]  # REST failures (after the client's own retries)
    attempts: int  # commit attempts (> 1: a concurrent writer made us re-plan)


@dataclass
class _Fetched:
    rows: dict[int, Candle] = field(default_factory=dict)
    covered: set[int] = field(default_factory=set)
    newest_ms: int | None = None  # the newest exchange time the answers prove
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    omits_empty: bool = False  # Coinbase leaves buckets without trades out

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
) -> BackfillResult:
    """Fill the missing closed buckets of ``[start_ms, end_ms)`` of one series from REST (module docstring).

    ``symbol`` is canonical (``BTC-USDT``); ``symbols`` maps it to the exchange's name (default: the
    stored market list). ``history``: the series bound (``Settings.candle_history``). ``now_ms``: an
    exchange-time estimate that proves buckets ending before it are over (default: only the data does).
    """
    check_rest_timeframe(rest, timeframe)
    series = keys.candles(exchange_id, symbol, timeframe)
    marker_key = keys.gaps(exchange_id, symbol, timeframe)
    smap = symbols if symbols is not None else await load_symbol_map(client, exchange_id)
    native = smap.native(symbol)
    starts = aligned_starts(timeframe, start_ms, end_ms)
    empty = BackfillResult(
        exchange=exchange_id, symbol=symbol, timeframe=timeframe, wanted=0, written=[], empty=[], gaps=[],
        unmarked=[], pending=[], requests=0, errors=[], attempts=0,
    )  # fmt: skip
    if not starts:
        return empty
    stored, marked, _ = await _read(client, series, marker_key, starts[0], starts[-1])
    wanted = [s for s in starts if s in marked or s not in stored or not stored[s].closed]
    if not wanted:
        return empty
    if isinstance(rest, BinanceRestClient):
        fetched = await _fetch_binance(rest, exchange_id, symbol, native, timeframe, wanted)
    else:
        fetched = await _fetch_coinbase(rest, exchange_id, symbol, native, timeframe, wanted)
    fence = await _fence_key(client, exchange_id, native)
    for attempt in range(1, _MAX_CONFLICT_RETRIES + 1):
        try:
            plan = await _commit(
                client, series, marker_key, fence, exchange_id, symbol, timeframe, wanted, fetched, now_ms, history
            )
        except log.WatchError:
            continue
        return BackfillResult(
            exchange=exchange_id, symbol=symbol, timeframe=timeframe, wanted=len(wanted),
            written=[c.start for c in plan.write], empty=plan.empty, gaps=plan.mark, unmarked=plan.unmark,
            pending=plan.pending, requests=fetched.requests, errors=fetched.errors, attempts=attempt,
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
            out.append(
                await backfill(
                    client, rest, exchange_id, symbol, tf, start, end, history=history, symbols=smap, now_ms=now
                )
            )
    return out


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


async def _fence_key(client: aioredis.Redis, exchange_id: str, native: str) -> str | None:
    """The live processor's position key for the symbol's partition (None: no raw frames, no live fold)."""
    partitions = await log.stored_partitions(client, exchange_id)
    if not partitions:
        return None
    return keys.projection_position(LIVE_PROJECTION, exchange_id, partition_of(native, partitions))


async def _commit(
    client: aioredis.Redis,
    series: str,
    marker_key: str,
    fence: str | None,
    exchange_id: str,
    symbol: str,
    timeframe: str,
    wanted: list[int],
    fetched: _Fetched,
    now_ms: int | None,
    history: int,
) -> FillPlan:
    with log.translated(f"backfilling {series}"):
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch(series, marker_key, *([fence] if fence else []))
            stored, marked, newest = await _read(pipe, series, marker_key, wanted[0], wanted[-1])
            position: Any = await pipe.get(fence) if fence else None
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
            )
            if not (plan.write or plan.unmark or plan.mark):
                return plan
            pipe.multi()  # type: ignore[no-untyped-call]
            for candle in plan.write:
                store.queue_put(pipe, series, candle, history=history)
            if plan.unmark:
                pipe.zrem(marker_key, *[str(s) for s in plan.unmark])
            if plan.mark:
                pipe.zadd(marker_key, {str(s): s for s in plan.mark})
                pipe.sadd(keys.candle_index(exchange_id), series)
            if plan.write and fence:
                pipe.set(fence, position if position is not None else b"0-0")
            await pipe.execute()
    return plan


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
    o, h, lo, c, v = values
    return Candle(
        exchange=exchange_id, symbol=symbol, timeframe=timeframe, start=start, open=o, high=h, low=lo, close=c,
        volume=v, closed=closed, event_ns=bucket_end(timeframe, start) * _MS_NS, source=REST_SOURCE,
    )  # fmt: skip


async def _fetch_binance(
    rest: BinanceRestClient, exchange_id: str, symbol: str, native: str, timeframe: str, wanted: list[int]
) -> _Fetched:
    """Klines for every span, paginated from the last open time on; stops at the first failure."""
    got = _Fetched()
    for first, last in _spans(timeframe, wanted, BINANCE_PAGE):
        cursor = first
        while cursor <= last:
            try:
                page = await rest.klines(native, timeframe, start_ms=cursor, end_ms=last, limit=BINANCE_PAGE)
            except RestError as exc:
                got.errors.append(str(exc))
                return got
            got.requests += 1
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
    got = _Fetched(omits_empty=True)
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
