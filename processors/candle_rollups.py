"""Roll-ups inside a candle batch: higher timeframes settled from their base candles (projections/rollups.py).

Part of the candle processor's batch (:mod:`processors.candles`): after the batch's base candles are
folded, every roll-up bucket they changed is recomputed from its whole base set, level by level, and
closed once the watermark has passed it. Reads go through the batch's :class:`~projections.scope.Scope`
(shared or user overflow keys); writes are left to the processor's MULTI (the books carry them).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis

from projections import store
from projections.candles import BY_BASE, BY_WATERMARK, Candle, CandleBook, CandleClosed
from projections.gaps import REST_SOURCE, previous_start
from projections.rollups import SOURCE as ROLLUP
from projections.rollups import apply_rollup
from projections.scope import Scope
from projections.watermark import bucket_end, bucket_start, close_due
from streams import keys

Reads = dict[tuple[str, str, int], tuple[list[Candle], list[Candle]]]  # (source, target, start) -> base, stored
ReadMissing = Callable[[list[tuple[str, str, int]]], Awaitable[Reads]]


def prefetch(
    rollups: tuple[tuple[str, str], ...],
    base: dict[str, set[int]],
    due: list[tuple[str, int]],
    rest: dict[tuple[str, int], Candle],
) -> list[tuple[str, str, int]]:
    """Every (source key, target key, target start) the roll-up levels of a batch may read, known before
    the fold: the buckets over what the batch may touch (``base``: series key -> starts), level by
    level, plus the due roll-ups and REST roll-up candles. A superset: reading it with the batch's other
    reads saves a round trip per level; :func:`settle_rollups` reads anything missing itself."""
    touched: dict[str, set[int]] = {k: set(v) for k, v in base.items()}
    for key, start in due:
        touched.setdefault(key, set()).add(start)
    for key, start in rest:
        touched.setdefault(key, set()).add(start)
    out: list[tuple[str, str, int]] = []
    for target, source in rollups:
        for key, starts in list(touched.items()):
            exchange_id, symbol, tf = keys.parse_candles(key)
            if tf != source or not starts:
                continue
            tgt = keys.candles(exchange_id, symbol, target)
            parents = {bucket_start(target, s) for s in starts}
            touched.setdefault(tgt, set()).update(parents)
            out.extend((key, tgt, start) for start in sorted(parents))
        for key, start in rest:  # REST candles of this level read their base set too
            exchange_id, symbol, tf = keys.parse_candles(key)
            if tf == target:
                out.append((keys.candles(exchange_id, symbol, source), key, start))
    return sorted(set(out))


def queue_reads(pipe: Any, wanted: list[tuple[str, str, int]], scope: Scope) -> None:
    """Queue the reads of ``wanted`` (a :func:`prefetch`) on a pipeline: the base set and the stored bucket."""
    for src, tgt, start in wanted:
        end = bucket_end(keys.parse_candles(tgt)[2], start)
        pipe.zrange(scope.read_key(src), start, end - 1, byscore=True)
        pipe.zrange(scope.read_key(tgt), start, start, byscore=True)


def take_reads(wanted: list[tuple[str, str, int]], replies: list[Any]) -> Reads:
    """The candles of :func:`queue_reads`' replies, decoded."""
    decode = store.decode_candle
    return {
        item: ([decode(m) for m in replies[2 * i]], [decode(m) for m in replies[2 * i + 1]])
        for i, item in enumerate(wanted)
    }


def redis_reader(client: aioredis.Redis, scope: Scope) -> ReadMissing:
    """Reads of roll-up buckets not prefetched, from Redis (one pipeline)."""

    async def read(missing: list[tuple[str, str, int]]) -> Reads:
        pipe = client.pipeline(transaction=False)
        queue_reads(pipe, missing, scope)
        return take_reads(missing, await pipe.execute())

    return read


async def settle_rollups(
    read_missing: ReadMissing,
    rollups: tuple[tuple[str, str], ...],
    close_grace_ms: int,
    books: dict[str, CandleBook],
    closes: list[CandleClosed],
    watermark: int,
    due: list[tuple[str, int]],
    rest: dict[tuple[str, int], Candle],
    reads: Reads | None = None,
) -> None:
    """Recompute every roll-up bucket whose base candles this batch changed, level by level (1m → 5m →
    15m ...), each from the whole set of its base candles, and close the level's open roll-ups the
    watermark has passed before the next level: a roll-up closed by the watermark is then part of its
    parent's base set in the same step whether or not its own base changed in this batch, so
    ``closed_by`` does not depend on the batching.

    Roll-ups are settled once per batch, after the batch's base candles: a roll-up then never
    closes on a partial set of base candles that the same batch completes, whatever the batching.
    A closed REST candle of a roll-up timeframe (a backfill, e.g. warm-up history beyond the base
    series) is settled here too, not by event time: the bucket holds the roll-up once its base set is
    complete, else the REST candle (the exchange's own aggregate), never a roll-up of part of it.
    Decided from the base set and the REST candles, so any batching gives the same bucket.

    A level's events are emitted in bucket order: a bucket the watermark closes (its last base candle
    never came) precedes the newer buckets of its series that this batch closed from their base, as it
    does when the watermark passes it in an earlier batch. So each series' close events come in the same
    order whatever the batching, and the indicator processor (which folds them in that order) with them."""
    for target, source in rollups:
        level: list[CandleClosed] = []
        ordered: dict[str, list[int]] = {}  # source key -> its book's starts, sorted (source books don't change here)
        wanted: dict[tuple[str, str], set[int]] = defaultdict(set)  # (source key, target key) -> starts
        for key, book in books.items():
            exchange_id, symbol, tf = keys.parse_candles(key)
            if tf == source and book.dirty:
                pair = (key, keys.candles(exchange_id, symbol, target))
                wanted[pair].update(bucket_start(target, s) for s in book.dirty)
        for key, start in rest:
            exchange_id, symbol, tf = keys.parse_candles(key)
            if tf == target:
                wanted[(keys.candles(exchange_id, symbol, source), key)].add(start)
        if wanted:
            plan = sorted((pair, start) for pair, starts in wanted.items() for start in starts)
            known = reads or {}
            missing = [(src, tgt, start) for (src, tgt), start in plan if (src, tgt, start) not in known]
            if missing:  # not prefetched with the batch's reads (see prefetch)
                known = {**known, **await read_missing(missing)}
            for (src, tgt), start in plan:
                base_set, stored_set = known[(src, tgt, start)]
                parts = {c.start: c for c in base_set}
                end = bucket_end(target, start)
                if src in books:  # the book's buckets in [start, end), found in its sorted starts (made once)
                    have = books[src].candles
                    starts = ordered.get(src)
                    if starts is None:
                        starts = ordered[src] = sorted(have)
                    parts.update({s: have[s] for s in starts[bisect_left(starts, start) : bisect_left(starts, end)]})
                stored = {c.start: c for c in stored_set}
                if tgt in books:
                    books[tgt].add_stored(stored)
                else:
                    books[tgt] = CandleBook(stored)
                book = books[tgt]
                current = book.candles.get(start)
                r, event = apply_rollup(current, parts.values(), target) if parts else (None, None)
                if r is None or not r.complete:  # the exchange's own aggregate beats a roll-up of part of it
                    kept = rest.get((tgt, start))
                    if kept is None and current is not None and current.closed and current.source == REST_SOURCE:
                        continue
                    if kept is not None:
                        if kept != current:
                            book.put(kept)
                            if current is None or not current.closed:
                                level.append(CandleClosed(candle=kept))
                            elif not kept.same_values(current):
                                level.append(CandleClosed(candle=kept, correction=True))
                        continue
                assert r is not None
                candle = r.candle
                if candle.closed:  # closed_by from the base set, not the batching: the same in a replay
                    last = parts.get(previous_start(source, end))
                    by = BY_BASE if last is not None and last.closed else BY_WATERMARK
                    if candle.closed_by != by:
                        candle = msgspec.structs.replace(candle, closed_by=by)
                        event = None if event is None else CandleClosed(candle=candle, correction=event.correction)
                else:
                    for closing in close_due([candle], watermark, close_grace_ms):
                        candle, event = closing.candle, closing
                if candle != current:
                    book.put(candle)
                if event is not None:
                    level.append(event)
        for key, start in due:  # this level's open roll-ups the watermark has passed, base unchanged
            c = books[key].candles.get(start)
            if c is None or c.source != ROLLUP or c.closed or c.timeframe != target:
                continue
            for event in close_due([c], watermark, close_grace_ms):
                books[key].put(event.candle)  # dirty: the next level sees its base closed, as in any batching
                level.append(event)
        closes.extend(sorted(level, key=lambda e: e.candle.start))  # (stable: a series' events stay in order)
