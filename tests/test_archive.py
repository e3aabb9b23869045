"""The archive: stream entries moved into PostgreSQL by the archiver, read back byte for byte.

Oracles: the recorded exchange sessions themselves (their lines, read as plain bytes), and the Redis
streams (XRANGE) the archive copies; trimming is checked against the archive position it must not pass.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import numpy as np
import pytest
import redis.asyncio as aioredis
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from control import commands as cmd
from control import events as ev
from migrations.runner import migrate
from processors.archive_sink import ArchiveSink
from processors.archiver import GROUP, ArchiverConfig, run_archiver
from processors.candles import CandleProcessor
from processors.runner import Runner, RunnerConfig
from streams import archive_store, keys, log
from streams.archive import archived_position, archived_streams, read_archived
from streams.archive_codec import (
    decode_block,
    decode_frames,
    encode_block,
    encode_block_v1,
    encode_block_v2,
    encode_block_v3,
    encode_block_v4,
)
from streams.archive_columns import TRADE
from streams.archive_store import ArchiveMissing
from streams.symbols import bundled
from streams.trim import trim
from tests.realdata import BINANCE_0404, COINBASE_AT_RECORDING, require
from tests.support import drain
from tests.synthetic import synthetic_day
from tickfold.errors import ConfigError
from tickfold.settings import Settings

pytestmark = [pytest.mark.redis, pytest.mark.postgres]
BINANCE_0404_RECORDING = BINANCE_0404.with_name(BINANCE_0404.name.replace(".frames.", ".recording."))
DAY_MS = 86_400_000


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


@pytest.fixture
async def dsn(pg_dsn: str) -> str:
    await migrate(pg_dsn)
    return pg_dsn


def config(batch: int = 500, *, retention_days: int = 0, lease_ttl_ms: int = 1000) -> ArchiverConfig:
    runner = RunnerConfig(consumer="test", batch_size=batch, block_ms=50, lease_ttl_ms=lease_ttl_ms)
    return ArchiverConfig(runner=runner, max_block=batch, retention_days=retention_days)


async def archive(client: aioredis.Redis, dsn: str, exchanges: list[str], **kw: Any) -> dict[str, Any]:
    return await run_archiver(client, dsn, exchanges, config(**kw), until_idle=True)


async def archived(dsn: str, stream: str, **kw: Any) -> list[log.Entry]:
    return [e async for batch in read_archived(dsn, stream, **kw) for e in batch]


async def stream_keys(client: aioredis.Redis, exchange_id: str) -> list[str]:
    n = await log.stored_partitions(client, exchange_id) or 0
    return [keys.frames_stream(exchange_id, p) for p in range(n)]


# ------------------------------------------------------------------------------------------- codec


@pytest.mark.unit
def test_block_codec_round_trips_mixed_fields_and_ids() -> None:
    entries: list[log.Entry] = [
        (b"1-0", {b"frame": b'{"e":"kline"}', b"recv_ns": b"17"}),
        (b"1-1", {b"command": "é€".encode()}),
        (b"5-0", {b"frame": b"", b"recv_ns": b"\x00\xff"}),
        (b"18446744073709-18446744073709551615", {b"recv_ns": b"1", b"frame": b"order kept"}),
    ]
    decoded = decode_block(encode_block(entries))
    assert decoded == entries
    assert [list(f) for _, f in decoded] == [list(f) for _, f in entries]  # field order too


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**6),
            st.integers(0, 5),
            st.dictionaries(
                st.sampled_from([b"frame", b"recv_ns", b"event", b"x"]), st.binary(max_size=40), min_size=0
            ),
        ),
        min_size=1,
        max_size=60,
    )
)
@pytest.mark.unit
def test_any_entries_come_back_exactly(rows: list[tuple[int, int, dict[bytes, bytes]]]) -> None:
    ms, entries = 0, []
    for delta, seq, fields in rows:
        ms += delta
        entries.append((f"{ms}-{seq}".encode(), fields))
    assert decode_block(encode_block(entries)) == entries


_TRADE_FRAME = b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":%d,"s":"BTCUSDT","a":%d,"p":"1.5","q":"2"}}'
_KLINE_FRAME = b'{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":%d,"s":"BTCUSDT","k":{"t":0}}}'


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from(["trade", "kline", "broken", "no frame", "extra field"]),
            st.integers(1, 2**40),
        ),
        min_size=1,
        max_size=60,
    ),
    st.randoms(use_true_random=False),
)
@pytest.mark.unit
def test_raw_frame_blocks_keep_trades_apart_and_give_back_every_entry(
    rows: list[tuple[int, str, int]], rng: random.Random
) -> None:
    """Formats 3 to 5: the trade frames' values in a part of their own, every entry (any rows of it) exactly."""
    ms, entries = 10**12, []
    for i, (delta, kind, t) in enumerate(rows):
        ms += delta
        frame = {"trade": _TRADE_FRAME % (t, i), "kline": _KLINE_FRAME % t, "broken": b'{"stream":"x@aggTrade"'}.get(
            kind, b"{}"
        )
        fields = {b"recv_ns": b"%d" % t} if kind == "no frame" else {b"frame": frame, b"recv_ns": b"%d" % t}
        if kind == "extra field":
            fields[b"why"] = b"a second schema"
        entries.append((f"{ms}-{i}".encode(), fields))
    picked = np.array(sorted(rng.sample(range(len(entries)), rng.randint(0, len(entries)))), np.intp)
    for encode in (encode_block, encode_block_v4, encode_block_v3):
        payload = encode(entries, stream="frames:binance:p1")
        assert decode_block(payload) == entries
        frames = decode_frames(payload, "frames:binance:p1")
        assert frames.entries() == entries
        assert [k == TRADE for k in frames.kind.tolist()] == [kind == "trade" for _, kind, _ in rows]
        fresh = decode_frames(payload, "frames:binance:p1")
        assert fresh.entries_at(picked) == [entries[i] for i in picked.tolist()]


@pytest.mark.unit
@pytest.mark.parametrize(("encode", "tag"), [(encode_block, 5), (encode_block_v4, 4)])
def test_a_replay_without_trade_candles_leaves_the_trade_frames_compressed(encode: Any, tag: int) -> None:
    """The other frames are built without the trades' part: broken there, they still come back, and only a
    trade row needs it."""
    entries: list[log.Entry] = []
    for i in range(200):
        frame = _KLINE_FRAME % (1000 + i) if i % 10 == 0 else _TRADE_FRAME % (1000 + i, i)
        entries.append((f"{5000 + i}-0".encode(), {b"frame": frame, b"recv_ns": b"1"}))
    outer = msgspec.msgpack.decode(encode(entries, stream="frames:binance:p0"))
    assert outer[0] == tag and len(outer[2]) > 0 and outer[3] == b""  # tag, head, trades, no trade columns
    outer[2] = b"not zstd at all"
    broken = msgspec.msgpack.encode(outer)
    frames = decode_frames(broken, "frames:binance:p0")
    others = np.flatnonzero(frames.kind != TRADE)
    assert others.tolist() == list(range(0, 200, 10))
    assert frames.entries_at(others) == entries[::10]
    with pytest.raises(zstandard.ZstdError):
        frames.entries_at(np.array([1], np.intp))


@pytest.mark.unit
def test_blocks_of_the_earlier_formats_are_still_read() -> None:
    entries: list[log.Entry] = [
        (
            b"%d-0" % (7000 + i),
            {b"frame": _TRADE_FRAME % (7000 + i, i) if i % 3 else _KLINE_FRAME % i, b"recv_ns": b"9"},
        )
        for i in range(50)
    ] + [(b"8000-0", {b"frame": b"{}", b"recv_ns": b"9", b"extra": b"x"})]
    new = decode_frames(encode_block(entries, stream="frames:binance:p2"), "frames:binance:p2")
    for old in (
        encode_block_v4(entries, stream="frames:binance:p2"),
        encode_block_v3(entries, stream="frames:binance:p2"),
        encode_block_v2(entries, stream="frames:binance:p2"),
        encode_block_v1(entries),
    ):
        assert decode_block(old) == entries
        frames = decode_frames(old, "frames:binance:p2")
        assert frames.entries() == entries
        assert (frames.kind == new.kind).all() and (frames.event_ms == new.event_ms).all()
    with pytest.raises(ValueError, match="unknown format"):
        decode_block(msgspec.msgpack.encode([9, b"", b""]))


# ------------------------------------------------------------------------------ archive == stream


async def test_recorded_frames_and_control_events_are_archived_byte_for_byte(client: aioredis.Redis, dsn: str) -> None:
    await log.append_frames(client, "binance", _recorded(BINANCE_0404_RECORDING), partitions=4)
    await log.append_frames(client, "coinbase", _recorded(COINBASE_AT_RECORDING), partitions=2)
    start = cmd.Start(command_id="c1", exchange="binance", requested_by="test", at_ns=1, symbols=["BTCUSDT"])
    await cmd.append_command(client, start)
    await cmd.append_outcome(client, cmd.Accepted(command_id="c1", exchange="binance", at_ns=2, command="start"))
    await client.xadd(
        keys.CONTROL_STREAM, {"event": ev.encode(ev.Connected(exchange="binance", at_ns=3, url="ws://x"))}
    )
    await drain(client, ["binance", "coinbase"])  # candle closes (and whatever alerts) to archive too
    stats = await archive(client, dsn, ["binance", "coinbase"], batch=300)
    assert stats["binance"].totals.skipped == 0

    every = [*await stream_keys(client, "binance"), *await stream_keys(client, "coinbase")]
    every += [keys.CONTROL_STREAM, keys.closes_stream("binance"), keys.closes_stream("coinbase")]
    filled: list[str] = []
    for stream in every:
        in_redis = await log.entries(client, stream)
        assert await archived(dsn, stream, batch=97) == in_redis, stream
        if in_redis:  # (a partition no symbol hashes to stays empty)
            assert await archived_position(dsn, stream) == log.parse_id(in_redis[-1][0])
            filled.append(stream)
    assert {keys.CONTROL_STREAM, "closes:binance", "closes:coinbase"} < set(filled) and len(filled) >= 7
    # independent oracle: the recording's frames, each once, each partition in file order
    for exchange_id, path in (("binance", BINANCE_0404_RECORDING), ("coinbase", COINBASE_AT_RECORDING)):
        recorded = _recorded(path)
        parts = [
            [(f[b"frame"], int(f[b"recv_ns"])) for _, f in await archived(dsn, s)]
            for s in await stream_keys(client, exchange_id)
        ]
        assert sorted(x for part in parts for x in part) == sorted(recorded)
        for part in parts:
            rest = iter(recorded)
            assert all(any(x == y for y in rest) for x in part)  # a subsequence of the file
    assert await archived_streams(dsn, "frames:binance:") == [s for s in filled if s.startswith("frames:binance:")]
    assert await archived_streams(dsn, "control") == ["control"]
    assert await archived_position(dsn, "frames:kraken:p0") is None
    with pytest.raises(ValueError, match="must match"):
        await archived(dsn, "frames:Bad-Name:p0")  # its source would name a table
    assert await archived(dsn, "frames:kraken:p0") == []


def _recorded(path: Path) -> list[tuple[bytes, int]]:
    """(frame, receive ns) of a recorder file, read with plain json (not the code under test)."""
    out = []
    for line in require(path).read_bytes().splitlines():
        obj = json.loads(line)
        if obj.get("t") == "recv":
            out.append((obj["data"].encode(), int(float(obj["ts"]) * 1e9)))
        elif "recv_ts" in obj:
            out.append((obj["frame"].encode(), int(float(obj["recv_ts"]) * 1e9)))
    assert out, path
    return out


async def test_ranges_and_batches_cut_inside_blocks(client: aioredis.Redis, dsn: str) -> None:
    day = synthetic_day()[:3000]
    await log.append_frames(client, "coinbase", [(f, i) for i, f in enumerate(day)], partitions=1)
    await archive(client, dsn, ["coinbase"], batch=250)
    stream = keys.frames_stream("coinbase", 0)
    whole = await log.entries(client, stream)
    ids = [log.parse_id(eid) for eid, _ in whole]
    rnd = random.Random(3)
    for _ in range(12):
        a, b = sorted(rnd.sample(range(len(ids)), 2))
        after, until = ids[a], ids[b]
        size = rnd.choice([1, 7, 250, 10_000])
        batches = [b async for b in read_archived(dsn, stream, after=after, until=until, batch=size)]
        assert all(0 < len(b) <= size for b in batches)
        assert [e for b in batches for e in b] == whole[a + 1 : b + 1]
    assert await archived(dsn, stream, after=ids[-1]) == []
    assert await archived(dsn, stream, after=ids[10], until=ids[10]) == []
    assert await archived(dsn, stream, until=(ids[0][0], ids[0][1])) == whole[:1]


async def test_an_unmigrated_database_is_a_clear_error(client: aioredis.Redis, pg_dsn: str) -> None:
    with pytest.raises(ArchiveMissing, match="tickfold migrate"):
        await archived(pg_dsn, "control")
    with pytest.raises(ArchiveMissing, match="tickfold migrate"):
        await run_archiver(client, pg_dsn, ["binance"], config(), until_idle=True)
    assert not await client.exists(keys.CONTROL_STREAM)  # no group made, nothing read before the check


# --------------------------------------------------------------------------------- exactly once


async def test_a_batch_committed_but_not_acknowledged_is_skipped_when_it_comes_back(
    client: aioredis.Redis, dsn: str
) -> None:
    day = synthetic_day()[:400]
    await log.append_frames(client, "coinbase", [(f, 0) for f in day], partitions=1)
    stream = keys.frames_stream("coinbase", 0)
    await log.ensure_group(client, stream, GROUP)
    # an archiver that committed 120 entries to PostgreSQL and died before its XACK
    taken = await log.read_group(client, stream, GROUP, "dead-one", count=120, block_ms=None)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        assert await ArchiveSink(pool, GROUP, 50).write(stream, taken) == (120, 0)
    finally:
        await pool.close()
    await asyncio.sleep(0.35)
    stats = await archive(client, dsn, ["coinbase"], lease_ttl_ms=300)
    assert stats["coinbase"].claimed == 120
    assert stats["coinbase"].totals.skipped == 120
    assert stats["coinbase"].totals.processed == 280
    assert await archived(dsn, stream) == await log.entries(client, stream)
    assert int((await client.xpending(stream, GROUP))["pending"]) == 0


async def test_kill_9_mid_run_then_restart_archives_every_entry_exactly_once(
    client: aioredis.Redis, dsn: str, redis_url: str
) -> None:
    day = synthetic_day()[:6000]
    await log.append_frames(client, "coinbase", [(f, i) for i, f in enumerate(day)], partitions=4)
    env = {**os.environ, "TICKFOLD_LEASE_TTL_MS": "600", "TICKFOLD_PARTITIONS": "4"}
    rnd = random.Random(11)
    for point in sorted(rnd.sample(range(300, len(day) - 300), 3)):
        procs = [
            _spawn_archiver(
                redis_url,
                dsn,
                {
                    **env,
                    "TICKFOLD_ARCHIVE_BATCH_SIZE": str(rnd.choice([1, 7, 50])),
                    "TICKFOLD_ARCHIVE_LINGER_MS": str(rnd.choice([0, 200])),  # buffered entries die pending
                },
            )
            for _ in range(rnd.choice([1, 2]))
        ]
        await _progress(client, point)
        await asyncio.sleep(rnd.random() * 0.05)
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    last = _spawn_archiver(redis_url, dsn, env, "--until-idle")
    assert last.wait(timeout=120) == 0
    total = 0
    for stream in await stream_keys(client, "coinbase"):
        in_redis = await log.entries(client, stream)
        assert await archived(dsn, stream) == in_redis  # each once, in order: no loss, no duplicate
        assert int((await client.xpending(stream, GROUP))["pending"]) == 0
        total += len(in_redis)
    assert total == len(day)
    conn = await asyncpg.connect(dsn)
    try:
        rows, _ = await archive_store.status(conn)
    finally:
        await conn.close()
    frames = [r for r in rows if r.stream.startswith("frames:")]
    assert sum(r.entries for r in frames) == sum(r.archived_total for r in frames) == len(day)


def _spawn_archiver(redis_url: str, dsn: str, env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    argv = ["--redis-url", redis_url, "--database-url", dsn, "archive", "--exchange", "coinbase", *extra]
    cmd_ = [sys.executable, "-m", "tickfold.cli", *argv]
    return subprocess.Popen(cmd_, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


async def _progress(client: aioredis.Redis, at_least: int) -> None:
    for _ in range(1500):
        done = 0
        for stream in await stream_keys(client, "coinbase"):
            for info in await client.xinfo_groups(stream):
                if info["name"] == GROUP.encode():
                    done += int(info["entries-read"] or 0)
        if done >= at_least:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the archivers did not reach {at_least} entries")


async def test_a_live_archiver_gathers_small_reads_into_blocks_and_flushes_on_stop(
    client: aioredis.Redis, dsn: str
) -> None:
    day = synthetic_day()[:400]
    stop = asyncio.Event()
    live = ArchiverConfig(runner=config().runner, max_block=1000, linger_s=0.4)
    task = asyncio.create_task(run_archiver(client, dsn, ["coinbase"], live, stop=stop))
    for i in range(0, 300, 3):  # a trickle: 3 frames every 10 ms
        await log.append_frames(client, "coinbase", [(f, 0) for f in day[i : i + 3]], partitions=1)
        await asyncio.sleep(0.01)
    stream = keys.frames_stream("coinbase", 0)
    for _ in range(200):
        if len(await archived(dsn, stream)) == 300:
            break
        await asyncio.sleep(0.05)
    await log.append_frames(client, "coinbase", [(f, 0) for f in day[300:]], partitions=1)
    await asyncio.sleep(0.1)
    stop.set()  # the last 100 are still waiting for company: written on the way out
    stats = (await task)["coinbase"]
    assert await archived(dsn, stream) == await log.entries(client, stream)
    assert stats.totals.processed == 400
    assert stats.batches <= 25  # ~100 reads of 3 frames (one block each without the linger), in a few blocks
    assert int((await client.xpending(stream, GROUP))["pending"]) == 0


class _FlakyPool:
    """A pool whose first ``failures`` acquisitions fail as a dropped connection would."""

    def __init__(self, pool: Any, failures: int) -> None:
        self.pool, self.failures = pool, failures

    def acquire(self) -> Any:
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError("PostgreSQL went away")
        return self.pool.acquire()


async def test_a_flush_that_fails_keeps_its_entries_and_is_retried(client: aioredis.Redis, dsn: str) -> None:
    from tickfold.errors import StoreUnavailable

    day = synthetic_day()[:50]
    await log.append_frames(client, "coinbase", [(f, 0) for f in day], partitions=1)
    stream = keys.frames_stream("coinbase", 0)
    await log.ensure_group(client, stream, GROUP)
    taken = await log.read_group(client, stream, GROUP, "w", count=50, block_ms=None)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        flaky = _FlakyPool(pool, failures=2)
        sink = ArchiveSink(flaky, GROUP, 1000, linger_s=0.05)
        await sink.add(client, stream, taken[:20])
        await sink.add(client, stream, taken[20:])  # buffered: a block waits for company
        stop = asyncio.Event()
        flusher = asyncio.create_task(sink.keep_flushing(client, stop))
        for _ in range(100):
            if int((await client.xpending(stream, GROUP))["pending"]) == 0:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await flusher
        assert flaky.failures == 0 and sink.totals[stream].blocks == 1
        assert await archived(dsn, stream) == taken
        # a store that stays away: the error surfaces, and the entries stay in the buffer and pending
        more = await log.append_frames(client, "coinbase", [(b"{}", 0)], partitions=1)
        extra = await log.read_group(client, stream, GROUP, "w", count=more, block_ms=None)
        flaky.failures = 10**6
        await sink.add(client, stream, extra)
        with pytest.raises(StoreUnavailable, match="went away"):
            await sink.keep_flushing(client, asyncio.Event(), max_retries=2)
        assert int((await client.xpending(stream, GROUP))["pending"]) == 1
        flaky.failures = 0
        await sink.flush_due(client, everything=True)
        assert await archived(dsn, stream) == [*taken, *extra]
    finally:
        await pool.close()


# ------------------------------------------------------------------------------------------ trimming


async def test_trimming_never_passes_the_archive(client: aioredis.Redis, dsn: str) -> None:
    day = synthetic_day()[:1000]
    stream = keys.frames_stream("coinbase", 0)
    await log.append_frames(client, "coinbase", [(f, 0) for f in day[:600]], partitions=1)
    await drain(client, ["coinbase"])  # the candle processor has read and acknowledged everything
    bound = ("candles", GROUP)
    # the archiver never ran: its group is missing, nothing may go
    assert await trim(client, stream, bound, max_len=10, max_age_ms=1) == 0
    assert await client.xlen(stream) == 600
    await archive(client, dsn, ["coinbase"])
    position = await archived_position(dsn, stream)
    await log.append_frames(client, "coinbase", [(f, 0) for f in day[600:]], partitions=1)
    await drain(client, ["coinbase"])
    # the archiver is stopped: trimming stops at what it archived, although the candles read it all
    removed = await trim(client, stream, bound, max_len=10, max_age_ms=1)
    assert removed == 600
    left = await log.entries(client, stream)
    assert len(left) == 400 and log.parse_id(left[0][0]) > position  # type: ignore[operator]
    assert left == (await log.entries(client, stream))[-400:]
    # after it runs, the rest may go; and every trimmed entry is in the archive
    await archive(client, dsn, ["coinbase"])
    assert await trim(client, stream, bound, max_len=10, max_age_ms=DAY_MS) == 390
    assert await client.xlen(stream) == 10
    assert [e[1][b"frame"] for e in await archived(dsn, stream)] == day


async def test_the_candle_runner_trims_behind_the_archive_group(client: aioredis.Redis, dsn: str) -> None:
    day = synthetic_day()[:500]
    stream = keys.frames_stream("coinbase", 0)
    await log.append_frames(client, "coinbase", [(f, 0) for f in day[:300]], partitions=1)
    await archive(client, dsn, ["coinbase"])
    await log.append_frames(client, "coinbase", [(f, 0) for f in day[300:]], partitions=1)
    position = await archived_position(dsn, stream)
    assert position is not None

    def make(p: int) -> CandleProcessor:
        return CandleProcessor("coinbase", p, bundled("coinbase"), history=5000, trade_timeframes=("1m",))

    cfg = RunnerConfig(consumer="t", stream_max_len=1, trim_every_s=0.0, trim_also_behind=(GROUP,))
    await Runner(client, "coinbase", "candles", 1, make, cfg).run(until_idle=True)
    await Runner(client, "coinbase", "candles", 1, make, cfg).run(until_idle=True)  # trims on start
    left = await log.entries(client, stream)
    assert len(left) == 200 and log.parse_id(left[0][0]) > position
    assert Settings.load({"TICKFOLD_ARCHIVE": "1"}).archive
    from tickfold.commands_archive import trim_bound

    assert trim_bound(Settings.load({"TICKFOLD_ARCHIVE": "1"})) == (GROUP,)
    assert trim_bound(Settings.load({})) == ()


# ------------------------------------------------------------------------------------------ retention


async def test_retention_drops_old_days_only(client: aioredis.Redis, dsn: str) -> None:
    today = datetime.now(UTC).date()
    ms = [_ms(today - timedelta(days=d)) + 1000 * i for d, i in ((12, 0), (12, 1), (6, 0), (2, 0), (0, 0))]
    for i, at in enumerate(ms):
        await client.xadd(keys.CONTROL_STREAM, {"event": f"e{i}".encode()}, id=f"{at}-0")
    await archive(client, dsn, [])
    assert len(await archived(dsn, "control")) == 5
    conn = await asyncpg.connect(dsn)
    try:
        days = await archive_store.day_partitions(conn)
        assert days == [today - timedelta(days=d) for d in (12, 6, 2, 0)]
        # a 7-day retention at "today" keeps today and the 6 days before it
        assert await archive_store.apply_retention(conn, 7, today=today) == [today - timedelta(days=12)]
        assert await archive_store.apply_retention(conn, 0, today=today) == []  # 0 keeps everything
    finally:
        await conn.close()
    assert [f[b"event"] for _, f in await archived(dsn, "control")] == [b"e2", b"e3", b"e4"]
    assert await archived_position(dsn, "control") == (ms[-1], 0)  # the position outlives retention
    # the archiver applies the setting itself (on start), with PostgreSQL's clock
    await client.xadd(keys.CONTROL_STREAM, {"event": b"e5"})
    await archive(client, dsn, [], retention_days=2)
    await archive(client, dsn, [], retention_days=2)
    assert [f[b"event"] for _, f in await archived(dsn, "control")] == [b"e4", b"e5"]
    # a day dropped under a running archiver's feet is re-created when an entry of it comes
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        sink = ArchiveSink(pool, GROUP, 10)
        await sink.write("alerts:binance", [(f"{_ms(today)}-0".encode(), {b"alert": b"a"})])
        async with pool.acquire() as conn:
            await archive_store.drop_days_before(conn, today + timedelta(days=1))
        assert await sink.write("alerts:binance", [(f"{_ms(today) + 1}-0".encode(), {b"alert": b"b"})]) == (1, 0)
    finally:
        await pool.close()
    assert await archived(dsn, "alerts:binance") == [(f"{_ms(today) + 1}-0".encode(), {b"alert": b"b"})]


def _ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


# ----------------------------------------------------------------------------------- settings, CLI


@pytest.mark.unit
@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"TICKFOLD_ARCHIVE_RETENTION_DAYS": "-1"}, "TICKFOLD_ARCHIVE_RETENTION_DAYS"),
        ({"TICKFOLD_ARCHIVE_RETENTION_DAYS": "a week"}, "TICKFOLD_ARCHIVE_RETENTION_DAYS"),
        ({"TICKFOLD_ARCHIVE_BATCH_SIZE": "0"}, "TICKFOLD_ARCHIVE_BATCH_SIZE"),
        ({"TICKFOLD_ARCHIVE": "maybe"}, "TICKFOLD_ARCHIVE"),
        ({"TICKFOLD_ARCHIVE_LINGER_MS": "-5"}, "TICKFOLD_ARCHIVE_LINGER_MS"),
    ],
)
def test_bad_archive_settings_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")


def test_the_cli_refuses_a_bad_retention_naming_the_key(redis_url: str) -> None:
    env = {**os.environ, "TICKFOLD_ARCHIVE_RETENTION_DAYS": "-3"}
    done = subprocess.run(
        [sys.executable, "-m", "tickfold.cli", "--redis-url", redis_url, "archive", "--until-idle"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert "TICKFOLD_ARCHIVE_RETENTION_DAYS" in done.stderr and ">= 0" in done.stderr


async def test_process_with_archiving_on_archives_frames_closes_and_control_then_status_shows_it(
    client: aioredis.Redis, dsn: str, redis_url: str
) -> None:
    day = synthetic_day()[:2000]
    await log.append_frames(client, "coinbase", [(f, 0) for f in day], partitions=2)
    start = cmd.Start(command_id="c9", exchange="coinbase", requested_by="test", at_ns=1)
    await cmd.append_command(client, start)
    env = {**os.environ, "TICKFOLD_ARCHIVE": "1", "TICKFOLD_CONNECTION_STATE": "0"}
    base = [sys.executable, "-m", "tickfold.cli", "--redis-url", redis_url, "--database-url", dsn]
    done = await asyncio.to_thread(
        subprocess.run,
        [*base, "process", "--exchange", "coinbase", "--until-idle"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "archive coinbase: " in done.stdout
    closes = await log.entries(client, keys.closes_stream("coinbase"))
    assert closes and await archived(dsn, keys.closes_stream("coinbase")) == closes
    assert await archived(dsn, keys.CONTROL_STREAM) == await log.entries(client, keys.CONTROL_STREAM)
    for stream in await stream_keys(client, "coinbase"):
        assert await archived(dsn, stream) == await log.entries(client, stream)
    status = await asyncio.to_thread(
        subprocess.run, [*base, "archive", "status", "--json"], capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stderr
    shown = {s["stream"]: s for s in json.loads(status.stdout)["streams"]}
    assert sum(shown[s]["entries"] for s in await stream_keys(client, "coinbase")) == len(day)
    assert shown["closes:coinbase"]["archived_to"] == closes[-1][0].decode()
    assert all(s["stored_bytes"] < s["raw_bytes"] for s in shown.values() if s["entries"] > 100)


@pytest.mark.unit
def test_serve_runs_the_archiver_with_the_processors_when_archiving_is_on() -> None:
    import argparse

    from tickfold import commands_archive
    from tickfold.commands_serve import extra_tasks

    def tasks(no_processors: bool, env: dict[str, str]) -> list[Any]:
        args = argparse.Namespace(no_api=True, no_processors=no_processors)
        return extra_tasks(args, Settings.load(env))

    assert commands_archive.serve_task in tasks(False, {"TICKFOLD_ARCHIVE": "1"})
    assert commands_archive.serve_task not in tasks(True, {"TICKFOLD_ARCHIVE": "1"})
    assert commands_archive.serve_task not in tasks(False, {})
