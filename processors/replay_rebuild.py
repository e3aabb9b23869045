"""Rebuild: throw an exchange's projections away and fold them again from the raw frames (archive + stream).

``candles``  deletes the candle projections (series, user overflow series, positions, watermarks, open
             sets, trade states, the candle index) and ``closes:{exchange_id}``, then re-folds every raw
             frame with the live candle processor; the indicators are left as they are (their group
             starts at the end of the new closes stream, as do the other groups that read it before,
             such as the archiver's: the re-emitted closes re-derive what they had read).
``all``      deletes the indicator projections too (points, user overflow points, kernel states and
             their input) and runs the live indicator processor after every candle batch, as
             ``process`` does.
``indicators`` deletes the indicator projections only and recomputes each series from its stored closed
             candles (all of them: at most ``candle_history``), through the indicator processor's
             recompute path; the candles are not touched.

Kept: the raw streams, dead letters (a re-folded frame that was dead-lettered before is not listed
twice), gap markers (direct writes, not a fold's), markets, pool and holders, and the alerts: an alert
is raised once, ever (``alerts:{exchange_id}:ids``), so a rebuild raises only alerts never raised before
and subscribers are not notified twice.

A rebuild never folds beside a live processor: it takes every partition lease of the groups it
rewrites (``lease:candles:{exchange_id}:p{n}``, ``lease:indicators:{exchange_id}:p0``) for its whole run,
renewed like a processor's, and refuses (:class:`RebuildRefused`) while another instance holds one. A
processor started meanwhile waits for the leases. Each partition is re-folded up to its end when the
rebuild began; the candle group is then moved there, so live processing continues with what came
after, and nothing is folded twice or left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis

from processors.candles import GROUP as CANDLES
from processors.candles import PROJECTION
from processors.indicators import GROUP as INDICATORS
from processors.indicators import KIND, IndicatorProcessor
from processors.lease_keeper import LeaseKeeper
from processors.leases import Fence, LeaseLost, release_leases, take_lease
from processors.replay import Fold, ReplayStats, candle_processor, indicator_processor, run
from processors.replay_source import Sources, id_text, plan
from projections import store
from projections.candles import CandleClosed
from streams import keys, log
from streams.log import ResponseError
from streams.symbols import load_symbol_map
from tickfold.errors import TickfoldError
from tickfold.settings import Settings

What = Literal["candles", "indicators", "all"]


class RebuildRefused(TickfoldError):
    """A live processor holds a lease of the projections to rebuild."""


@dataclass
class RebuildReport:
    exchange_id: str
    what: str
    deleted: int = 0
    frames: int = 0
    closes: int = 0
    series: int = 0
    alerts_raised: int = 0
    dead_letters_repeated: int = 0
    seconds: float = 0.0


def _pattern(key: str, kept: int) -> str:
    """A SCAN pattern from a key made by :mod:`streams.keys`: its first ``kept`` parts, then anything."""
    return ":".join(key.split(":")[:kept]) + ":*"


def _candle_patterns(exchange_id: str) -> list[str]:
    return [
        _pattern(keys.candles(exchange_id, "S", "1m"), 2),
        _pattern(keys.trade_state(exchange_id, "S", "1m"), 2),
        _pattern(keys.projection_position(PROJECTION, exchange_id, 0), 3),  # last_id, watermark, open
        "usercandles:*:" + _pattern(keys.candles(exchange_id, "S", "1m"), 2).split(":", 1)[1],
    ]


def _indicator_patterns(exchange_id: str) -> list[str]:
    return [
        _pattern(keys.indicator(exchange_id, "S", "1m", KIND), 2),
        _pattern(keys.indicator_state(exchange_id, "S", "1m", KIND), 2),
        _pattern(keys.indicator_input(exchange_id, "S", "1m"), 2),
        "userindicator:*:" + _pattern(keys.indicator(exchange_id, "S", "1m", KIND), 2).split(":", 1)[1],
    ]


async def _delete(client: aioredis.Redis, patterns: list[str], extra: list[str]) -> int:
    found: list[Any] = list(extra)
    with log.translated("finding the projection keys to rebuild"):
        for pattern in patterns:
            found += [k async for k in client.scan_iter(match=pattern, count=1000)]
        deleted = 0
        for i in range(0, len(found), 1000):
            deleted += int(await client.delete(*found[i : i + 1000]))
    return deleted


@contextlib.asynccontextmanager
async def leases(client: aioredis.Redis, exchange_id: str, partitions: int, what: What, ttl_ms: int) -> AsyncIterator[
    tuple[dict[int, Fence], Fence]
]:  # fmt: skip
    """Hold the leases a rebuild of ``what`` needs (module docstring), renewed until the block ends by a
    :class:`~processors.lease_keeper.LeaseKeeper` (a thread: a long batch or numba compiling does not
    stop it). Should one be lost anyway (Redis unreachable for a TTL), the block is cancelled and
    LeaseLost raised (a renewal failing for ``call_timeout_s``: StoreUnavailable)."""
    token = f"rebuild/{secrets.token_hex(8)}".encode()
    wanted = [(CANDLES, p) for p in range(partitions)] if what != "indicators" else []
    wanted.append((INDICATORS, 0))
    held: list[tuple[str, str]] = []  # (lease key, fence key)
    try:
        for group, p in wanted:
            lease, fence = keys.lease(group, exchange_id, p), keys.fence(group, exchange_id, p)
            with log.translated(f"taking {lease}"):
                if not await take_lease(client, lease, fence, token, ttl_ms):
                    holder: Any = await client.get(lease)
                    who = holder.decode(errors="replace") if holder else "another instance"
                    raise RebuildRefused(
                        f"{lease} is held by {who}: a processor is running on {exchange_id}; stop it first "
                        "(a rebuild never folds beside a live processor)"
                    )
            held.append((lease, fence))
        body = asyncio.current_task()
        assert body is not None
        why: list[BaseException] = []

        def interrupt(exc: BaseException) -> None:
            if not why:
                why.append(exc)
                body.cancel()

        def lost(lease_keys: list[str]) -> None:
            interrupt(LeaseLost(f"{lease_keys[0]} was lost during the rebuild (not renewed for a TTL, or taken)"))

        keeper = LeaseKeeper(client, token, ttl_ms, lambda: {lease: lease for lease, _ in held}, lost,
                             name=f"rebuild leases {exchange_id}")  # fmt: skip
        async with keeper:

            def failed(task: asyncio.Task[None]) -> None:
                if not task.cancelled() and (exc := task.exception()) is not None:
                    interrupt(exc)

            failing = asyncio.create_task(keeper.failure())
            failing.add_done_callback(failed)
            try:
                pairs = zip(wanted, held, strict=True)
                yield (
                    {p: Fence(fence, token) for (group, p), (_, fence) in pairs if group == CANDLES},
                    Fence(held[-1][1], token),
                )
            except asyncio.CancelledError:
                if why and body.uncancel() == 0:
                    raise why[0] from None
                raise
            finally:
                failing.cancel()
    finally:
        for lease, fence in held:
            with contextlib.suppress(TickfoldError):
                await release_leases(client, token, lease, fence)


async def _dead_letters(client: aioredis.Redis, exchange_id: str) -> tuple[set[tuple[bytes, bytes]], bytes]:
    entries = await log.entries(client, keys.dead_letter_stream(exchange_id))
    seen = {(f.get(b"stream", b""), f.get(b"original_id", b"")) for _, f in entries}
    return seen, entries[-1][0] if entries else b"0-0"


async def _forget_repeats(
    client: aioredis.Redis, exchange_id: str, seen: set[tuple[bytes, bytes]], after: bytes
) -> int:
    """Remove the dead letters the re-fold wrote again for frames already listed before the rebuild."""
    stream = keys.dead_letter_stream(exchange_id)
    with log.translated(f"reading {stream}"):
        fresh: Any = await client.xrange(stream, b"(" + after, "+")
    again = [eid for eid, f in fresh if (f.get(b"stream", b""), f.get(b"original_id", b"")) in seen]
    if again:
        with log.translated(f"cleaning {stream}"):
            await client.xdel(stream, *again)
    return len(again)


async def _groups(client: aioredis.Redis, stream: str) -> set[str]:
    with log.translated(f"inspecting the groups of {stream}"):
        try:
            infos: Any = await client.xinfo_groups(stream)
        except ResponseError:  # no such stream
            return set()
    return {(g["name"].decode() if isinstance(g["name"], bytes) else g["name"]) for g in infos}


async def _move_group(client: aioredis.Redis, stream: str, group: str, position: str) -> None:
    with log.translated(f"moving group {group} of {stream}"):
        try:
            await client.xgroup_setid(stream, group, position)
        except ResponseError:  # no such group (or stream): create it there
            await client.xgroup_create(stream, group, id=position, mkstream=True)


async def rebuild(
    client: aioredis.Redis,
    settings: Settings,
    exchange_id: str,
    what: What,
    *,
    dsn: str | None = None,
    progress: Callable[[ReplayStats], None] | None = None,
) -> RebuildReport:
    """Rebuild ``what`` of ``exchange_id`` in place (module docstring)."""
    report = RebuildReport(exchange_id, what)
    began = time.monotonic()
    sources = await plan(client, exchange_id, dsn)
    partitions = max(sources.partitions, await log.stored_partitions(client, exchange_id) or 0, 1)
    async with leases(client, exchange_id, partitions, what, settings.lease_ttl_ms) as (fences, indicator_fence):
        sources = await plan(client, exchange_id, dsn)  # the ends, now that no processor moves them
        if what == "indicators":
            await _recompute_indicators(client, settings, exchange_id, indicator_fence, report)
        else:
            await _refold(client, settings, exchange_id, what, sources, fences, indicator_fence, report, progress)
    report.seconds = time.monotonic() - began
    return report


async def _refold(
    client: aioredis.Redis,
    settings: Settings,
    exchange_id: str,
    what: What,
    sources: Sources,
    fences: dict[int, Fence],
    indicator_fence: Fence,
    report: RebuildReport,
    progress: Callable[[ReplayStats], None] | None,
) -> None:
    seen, last_dead = await _dead_letters(client, exchange_id)
    readers = await _groups(client, keys.closes_stream(exchange_id))
    extra = [keys.candle_index(exchange_id), keys.closes_stream(exchange_id)]
    patterns = _candle_patterns(exchange_id) + (_indicator_patterns(exchange_id) if what == "all" else [])
    report.deleted = await _delete(client, patterns, extra)
    symbols = await load_symbol_map(client, exchange_id)
    fold = Fold(
        client,
        {p.partition: candle_processor(settings, exchange_id, p.partition, symbols, history=settings.candle_history)
         for p in sources.parts},
        fences,
        indicator_processor(settings, exchange_id, history=settings.indicator_history)
        if what == "all" and settings.indicators
        else None,
        indicator_fence,
        consumer="rebuild",
        batch_size=settings.batch_size,
    )  # fmt: skip
    await fold.prepare()
    stats = await run(
        client, sources, fold, exchange_id=exchange_id, stop_ms=None, start_ms=None, speed=None,
        batch_size=settings.batch_size, progress=progress,
    )  # fmt: skip
    for part in sources.parts:  # live processing resumes after what was re-folded
        await _move_group(client, part.stream, CANDLES, id_text(part.until))
    for group in readers | ({INDICATORS} if what == "candles" else set()):
        if group != INDICATORS or what == "candles":  # (with "all" the indicators read them all already)
            # the kept indicators, and other readers of the closes (the archiver): after the re-emitted
            # closes, which re-derive what they read before
            await _move_group(client, keys.closes_stream(exchange_id), group, "$")
    report.frames, report.closes, report.alerts_raised = stats.frames, stats.closes, stats.alerts
    report.dead_letters_repeated = await _forget_repeats(client, exchange_id, seen, last_dead)


async def _recompute_indicators(
    client: aioredis.Redis, settings: Settings, exchange_id: str, fence: Fence, report: RebuildReport
) -> None:
    """Each series from its stored closed candles: the indicator processor is handed the close of the
    oldest stored candle of each series, so its recompute path computes the whole stored series."""
    closes = keys.closes_stream(exchange_id)
    newest = await log.entries(client, closes, count=1, newest_first=True)
    report.deleted = await _delete(client, _indicator_patterns(exchange_id), [])
    processor = IndicatorProcessor(
        exchange_id,
        window=max(settings.candle_history, settings.indicator_window),
        history=settings.indicator_history,
        seed_from_candles=True,
    )
    entries: list[log.Entry] = []
    for key in await store.list_series(client, exchange_id):
        with log.translated(f"reading {key}"):
            members: Any = await client.zrange(key, 0, -1)
        oldest = next((c for c in map(store.decode_candle, members) if c.closed), None)
        if oldest is not None:
            entries.append((b"0-1", {b"event": store.encode(CandleClosed(candle=oldest))}))
    report.series = len(entries)
    for i in range(0, len(entries), 50):
        result = await processor.handle(client, entries[i : i + 50], fence)
        report.alerts_raised += result.events
    await _move_group(client, closes, INDICATORS, newest[0][0].decode() if newest else "$")
