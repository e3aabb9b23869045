"""Counts of control-stream entries for ``/metrics``: a fold over the ``control`` stream, read on from
where the previous scrape stopped (so a scrape costs only the new entries).

* ``events[(exchange, type)]``: every lifecycle event, command and outcome by its type tag
  (``exchange:gap``, ``start``, ``command:rejected`` ...); entries that decode as none are ``malformed``;
* ``reconnects[exchange]``: ``exchange:disconnected`` events with a retry (the adapter will reconnect);
* ``gaps[exchange]``: ``exchange:gap`` events.

The counts cover the entries the stream still held when first read plus every later one: trimming the
control stream lowers nothing already counted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import redis.asyncio as aioredis

from control import commands
from control import events as ev
from streams import keys
from streams.log import Entry, translated

_PAGE = 10_000


def _tag(obj: object) -> str:
    config: Any = getattr(type(obj), "__struct_config__", None)
    tag = getattr(config, "tag", None)
    return str(tag) if tag else type(obj).__name__


def count(tally: ControlTally, fields: dict[bytes, bytes]) -> None:
    """Fold one control-stream entry into the counts (no I/O)."""
    parsed = commands.parse_entry(fields)
    if isinstance(parsed, str):
        tally.events[("", "malformed")] += 1
        return
    exchange = parsed.exchange
    tally.events[(exchange, _tag(parsed))] += 1
    if isinstance(parsed, ev.Disconnected) and parsed.retry_in_s is not None:
        tally.reconnects[exchange] += 1
    elif isinstance(parsed, ev.Gap):
        tally.gaps[exchange] += 1


class ControlTally:
    def __init__(self) -> None:
        self.events: Counter[tuple[str, str]] = Counter()
        self.reconnects: Counter[str] = Counter()
        self.gaps: Counter[str] = Counter()
        self.last_id = b"0-0"
        self._lock = asyncio.Lock()

    async def catch_up(self, client: aioredis.Redis) -> None:
        """Count the control-stream entries appended since the last call."""
        async with self._lock:
            while True:
                with translated(f"reading {keys.CONTROL_STREAM}"):
                    reply: Any = await client.xrange(keys.CONTROL_STREAM, min=b"(" + self.last_id, count=_PAGE)
                page: list[Entry] = reply
                for entry_id, fields in page:
                    count(self, fields)
                    self.last_id = entry_id
                if len(page) < _PAGE:
                    return
