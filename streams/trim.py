"""Bounded raw streams: trim by count and by age, never past what a consumer group still needs.

A partition stream is trimmed to its newest ``max_len`` entries and to entries younger than
``max_age_ms`` (Redis's clock, from the entry ids), but never beyond the oldest entry the group has
not acknowledged: everything after the oldest pending entry, or after the last delivered one when
nothing is pending, stays.

With archiving on, the ``archive`` group is one more such bound (the processors pass it in
``RunnerConfig.trim_also_behind``): the archiver acknowledges an entry only after PostgreSQL committed
it, so nothing is trimmed unarchived. A bound group that does not exist on the stream yet (the archiver
has not started) holds everything back: it will read the stream from its start.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from streams.log import parse_id, translated


def _next(entry_id: tuple[int, int]) -> tuple[int, int]:
    return entry_id[0], entry_id[1] + 1


async def safe_bound(client: aioredis.Redis, stream: str, groups: tuple[str, ...]) -> tuple[int, int]:
    """The smallest id any of ``groups`` still needs: entries before it may be trimmed."""
    bound: tuple[int, int] | None = None
    with translated(f"inspecting {stream}"):
        infos: Any = await client.xinfo_groups(stream)
        by_name = {(g["name"].decode() if isinstance(g["name"], bytes) else g["name"]): g for g in infos}
        for group in groups:
            info = by_name.get(group)
            if info is None:
                return (0, 0)  # a group that has not started yet needs everything
            need = _next(parse_id(info["last-delivered-id"]))
            if int(info["pending"]):
                summary: Any = await client.xpending(stream, group)
                need = min(need, parse_id(summary["min"]))
            bound = need if bound is None else min(bound, need)
    return bound or (0, 0)


async def trim(client: aioredis.Redis, stream: str, groups: tuple[str, ...], *, max_len: int, max_age_ms: int) -> int:
    """Trim one stream; returns how many entries were removed."""
    with translated(f"trimming {stream}"):
        if not await client.exists(stream):
            return 0
        target = (0, 0)
        excess = int(await client.xlen(stream)) - max_len
        if excess > 0:  # the oldest ``excess`` entries are over the count (read only those: ~ a trim period's)
            oldest: Any = await client.xrange(stream, count=excess)
            target = _next(parse_id(oldest[-1][0]))
        seconds, micros = await client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        target = max(target, (now_ms - max_age_ms, 0))
        target = min(target, await safe_bound(client, stream, groups))
        if target <= (0, 0):
            return 0
        removed: Any = await client.xtrim(stream, minid=f"{target[0]}-{target[1]}", approximate=False)
        return int(removed)
