"""``python -m benchmarks.archive_size``: bytes per frame of the archive's layouts, in a private PostgreSQL.

For each input (the recorded Binance and Coinbase sessions, a synthetic Coinbase day): the raw field
bytes; one row per frame (``bytea`` + primary key) on disk; and the archiver's zstd blocks of 1, 10,
100, 1,000 and 5,000 frames (``streams.archive_store.write_blocks``, with the decoded columns a replay
reads), as payload and on disk (tables, TOAST and indexes, less the empty tables); and what the columns
cost (the payload of format 1 blocks, which have none) and what keeping the Binance trade frames apart costs
(the payload of format 2 blocks, one zstd frame). The figures in the README's *Archive* section come
from here.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from migrations.runner import migrate
from streams import archive_store, recorded
from streams.archive_codec import encode_block_v1, encode_block_v2, raw_size
from streams.log import Entry
from tickfold.embedded import start_postgres

T0_MS = 1_764_201_600_000  # 2025-11-27 00:00 UTC: every entry in one day
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
INPUTS = {  # name: (exchange, recording)
    "Binance 2021-04-04 recording": (
        "binance",
        REALDATA / "binance/ws_combined_2021-04-04_btcusdt_ethusdt_dotusdt.recording.jsonl",
    ),
    "Coinbase 2026-08-09 recording": ("coinbase", REALDATA / "coinbase/advanced_trade_ws_2026-08-09.recording.jsonl"),
}
BLOCKS = (1, 10, 100, 1000, 5000)


def _entries(frames: list[tuple[bytes, int]]) -> list[Entry]:
    """Stream entries as the adapters write them: ``frame`` and ``recv_ns``, ids three to a millisecond."""
    return [
        (f"{T0_MS + i // 3}-{i % 3}".encode(), {b"frame": f, b"recv_ns": str(recv).encode()})
        for i, (f, recv) in enumerate(frames)
    ]


def _inputs() -> dict[str, tuple[str, list[Entry]]]:
    from tests.synthetic import synthetic_day

    out = {
        name: (exchange, _entries(list(recorded.read_frames(path))))
        for name, (exchange, path) in INPUTS.items()
        if path.is_file()
    }
    day = synthetic_day()
    out["Coinbase synthetic day"] = (
        "coinbase",
        _entries([(f, 1_786_233_600_000_000_000 + i * 7_000_123) for i, f in enumerate(day)]),
    )
    return out


async def _size(conn: Any, table: str) -> int:
    sql = (
        "SELECT coalesce(sum(pg_total_relation_size(relid)), pg_total_relation_size($1::regclass)) "
        "FROM pg_partition_tree($1::regclass)"
    )
    return int(await conn.fetchval(sql, table))


async def measure(dsn: str) -> list[str]:
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    lines = []
    try:
        for name, (exchange, entries) in _inputs().items():
            n = len(entries)
            stream = f"frames:{exchange}:p0"
            raw = raw_size(entries)
            lines.append(f"{name}: {n} frames, {raw / n:.0f} B of fields per frame")
            await conn.execute(
                "DROP TABLE IF EXISTS per_frame; CREATE TABLE per_frame "
                "(stream text, ms bigint, seq bigint, frame bytea, recv_ns bigint, PRIMARY KEY (stream, ms, seq))"
            )
            empty = await _size(conn, "per_frame")
            rows = [(stream, *map(int, e[0].split(b"-")), e[1][b"frame"], int(e[1][b"recv_ns"])) for e in entries]
            await conn.copy_records_to_table("per_frame", records=rows)
            lines.append(f"  one row per frame:  {(await _size(conn, 'per_frame') - empty) / n:7.1f} B/frame on disk")
            for size in BLOCKS:
                await conn.execute("TRUNCATE archive_blocks; DELETE FROM archive_positions")
                await archive_store.ensure_partitions(conn, {(archive_store.day_of(T0_MS), exchange)})
                empty = await _size(conn, archive_store.TABLE)
                start = time.perf_counter()
                for i in range(0, n, size):
                    await archive_store.write_blocks(conn, stream, entries[i : i + size], max_block=size)
                took = time.perf_counter() - start
                disk = await _size(conn, archive_store.TABLE) - empty
                payload = int(await conn.fetchval("SELECT sum(octet_length(payload)) FROM archive_blocks"))
                lines.append(
                    f"  blocks of {size:5}: {payload / n:7.1f} B/frame payload, {disk / n:7.1f} on disk"
                    f"  ({n / took:,.0f} frames/s, one transaction per block)"
                )
            for size in (1000, 5000):
                plain = sum(len(encode_block_v1(entries[i : i + size])) for i in range(0, n, size))
                one = sum(len(encode_block_v2(entries[i : i + size], stream=stream)) for i in range(0, n, size))
                lines.append(
                    f"  blocks of {size:5} without the decoded columns (format 1): {plain / n:7.1f} B/frame payload;"
                    f" with them in one zstd frame (format 2): {one / n:7.1f}"
                )
    finally:
        await conn.close()
    return lines


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o755)  # as root, PostgreSQL runs as an unprivileged user who must reach it
        server = start_postgres(Path(tmp) / "pg", fsync=False)
        try:
            for line in asyncio.run(measure(server.dsn)):
                print(line)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
