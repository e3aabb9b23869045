"""Archived raw frame blocks of earlier formats rewritten in the current one (``tickfold archive upgrade``).

A block keeps the format it was written in (:mod:`streams.archive_codec`), and every format is still read,
but a replay folds old blocks the slow way: formats 1-3 have no trade columns, so a Coinbase frame is
decoded from its JSON (~6x slower a replay), and a format 4 block decompresses every frame's JSON. An
upgrade decodes each raw frame block of an earlier format, encodes its entries again, checks the new block
decodes to exactly the same entries, and replaces the payload in place: the same key, ids, entry count
and raw size, so positions, retention and readers are untouched. One transaction per block (the row
locked, its format checked again inside it): an upgrade can run beside the archiver and replays, be
stopped at any point and run again, and two upgrades at once rewrite each block once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from streams.archive_codec import CURRENT_PREFIX, FORMAT, decode_block, encode_block, is_current
from streams.archive_store import TABLE, translated
from streams.log import parse_id
from tickfold.errors import TickfoldError


class BlockMismatch(TickfoldError, ValueError):
    """An archived block whose payload does not hold what its row says (or would not read back the same in
    the current format): the upgrade stops there and leaves it as it is."""


@dataclass
class UpgradeStats:
    """An upgrade's progress: the blocks (and their entries) of earlier formats it found, how many it
    rewrote, and their payload bytes before and after."""

    blocks: int = 0
    entries: int = 0
    upgraded: int = 0
    upgraded_entries: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


_OLD = "stream LIKE $1 AND source = $2 AND substring(payload FROM 1 FOR 2) <> $3"  # (CURRENT_PREFIX)
_KEY = "stream = $1 AND source = $2 AND day = $3 AND first_ms = $4 AND first_seq = $5"


async def pending(conn: Any, exchanges: Sequence[str]) -> list[asyncpg.Record]:
    """The keys and entry counts of the exchanges' raw frame blocks of an earlier format, oldest first."""
    out: list[asyncpg.Record] = []
    for exchange_id in exchanges:
        out += await conn.fetch(
            f"SELECT stream, source, day, first_ms, first_seq, entries FROM {TABLE} WHERE {_OLD} "
            "ORDER BY day, stream, first_ms, first_seq",
            f"frames:{exchange_id}:%",
            exchange_id,
            CURRENT_PREFIX,
        )
    return out


async def upgrade(
    dsn: str, exchanges: Sequence[str], *, progress: Callable[[UpgradeStats], None] | None = None
) -> UpgradeStats:
    """Rewrite the exchanges' raw frame blocks of an earlier format in format ``FORMAT`` (module docstring).
    ``progress`` is called once the work is known, then after each block."""
    stats = UpgradeStats()
    async with translated("upgrading the archive"):
        conn = await asyncpg.connect(dsn)
        try:
            todo = await pending(conn, exchanges)
            stats.blocks, stats.entries = len(todo), sum(int(r["entries"]) for r in todo)
            if progress is not None:
                progress(stats)
            for key in todo:
                await _upgrade_block(conn, key, stats)
                if progress is not None:
                    progress(stats)
        finally:
            await conn.close()
    return stats


async def _upgrade_block(conn: Any, key: asyncpg.Record, stats: UpgradeStats) -> None:
    where = (key["stream"], key["source"], key["day"], key["first_ms"], key["first_seq"])
    async with conn.transaction():
        row = await conn.fetchrow(
            f"SELECT entries, last_ms, last_seq, payload FROM {TABLE} WHERE {_KEY} FOR UPDATE", *where
        )
        if row is None or is_current(row["payload"]):
            return  # gone (retention dropped its day), or upgraded meanwhile by another upgrade
        payload: bytes = row["payload"]
        entries = decode_block(payload)
        ids = (parse_id(entries[0][0]), parse_id(entries[-1][0])) if entries else None
        said = ((key["first_ms"], key["first_seq"]), (row["last_ms"], row["last_seq"]))
        if len(entries) != row["entries"] or ids != said:
            raise BlockMismatch(f"archive block {key['stream']} at {key['first_ms']}-{key['first_seq']}: its payload "
                             "does not hold the entries its row says; left as it is")  # fmt: skip
        new = encode_block(entries, stream=key["stream"])
        if decode_block(new) != entries:  # never replace a block with one that reads back differently
            raise BlockMismatch(f"archive block {key['stream']} at {key['first_ms']}-{key['first_seq']}: "
                                 f"format {FORMAT} does not read back the same entries; left as it is")  # fmt: skip
        await conn.execute(f"UPDATE {TABLE} SET payload = $6 WHERE {_KEY}", *where, new)
    stats.upgraded += 1
    stats.upgraded_entries += len(entries)
    stats.bytes_before += len(payload)
    stats.bytes_after += len(new)
