"""The connection-state projection (EXC-04): lifecycle events on the control stream -> Postgres rows.

Oracles: hand-written expected rows for synthetic event sequences; the events a real adapter run wrote
(against the simulator) for the live one; a Postgres trigger that counts the writes to the table for the
throttle; and, for rebuild and redelivery, the rows themselves (before/after, live/rebuilt).
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from control import commands as cmd
from control import connection_state as cs
from control import events as ev
from migrations.runner import migrate
from processors.runner import RunnerConfig
from streams import keys, log
from streams.adapters.base import AdapterConfig, Backoff
from streams.adapters.binance import BinanceAdapter, BinanceLimits
from streams.adapters.sink import ControlEmitter, FrameSink
from streams.simulator import Simulator

T0 = 1_700_000_000_000_000_000  # event time origin, epoch ns
S = 1_000_000_000  # one second in ns
US = 1_000_000  # one second in µs


def us(at_ns: int) -> int:
    return at_ns // 1000


def config(batch_size: int = 500) -> RunnerConfig:
    return RunnerConfig(consumer="test", batch_size=batch_size, block_ms=50, lease_ttl_ms=1000)


async def project(
    client: aioredis.Redis, dsn: str, *, every_s: float = 30.0, batch_size: int = 500
) -> cs.ProjectionStats:
    stats = cs.ProjectionStats()
    await cs.run_connection_state(
        client, dsn, config(batch_size), heartbeat_every_s=every_s, until_idle=True, stats=stats
    )
    return stats


async def add(client: aioredis.Redis, *events: ev.ControlEvent) -> None:
    for e in events:
        await client.xadd(keys.CONTROL_STREAM, {"event": ev.encode(e)})


async def fetch(dsn: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def snapshot(dsn: str) -> list[list[Any]]:
    """Every row of the projection's two tables, every column."""
    return [
        await fetch(dsn, "SELECT * FROM exchange_connections ORDER BY exchange_id"),
        await fetch(dsn, "SELECT * FROM exchange_connection_links ORDER BY exchange_id, connection"),
    ]


async def position(dsn: str) -> tuple[int, int]:
    (last,) = await fetch(dsn, "SELECT last_id FROM projection_positions WHERE projection = $1", cs.PROJECTION)
    return log.parse_id(last[0])


async def rows(dsn: str) -> dict[str, cs.Row]:
    conn = await asyncpg.connect(dsn)
    try:
        return await cs.load_rows(conn)
    finally:
        await conn.close()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    async with log.connect(redis_url) as c:
        yield c


@pytest.fixture
async def dsn(pg_dsn: str) -> str:
    await migrate(pg_dsn)
    return pg_dsn


def connecting(ex: str, conn: str, t: int) -> ev.Connecting:
    return ev.Connecting(exchange=ex, connection=conn, at_ns=t, url=f"wss://{ex}/{conn}")


def connected(ex: str, conn: str, t: int) -> ev.Connected:
    return ev.Connected(exchange=ex, connection=conn, at_ns=t, url=f"wss://{ex}/{conn}")


def disconnected(ex: str, conn: str, t: int, reason: str, retry: float | None) -> ev.Disconnected:
    return ev.Disconnected(exchange=ex, connection=conn, at_ns=t, reason=reason, retry_in_s=retry)


def heartbeat(ex: str, t: int) -> ev.Heartbeat:
    return ev.Heartbeat(exchange=ex, at_ns=t, frames=10)


# ------------------------------------------------------------------------------------------ the pure fold


@pytest.mark.unit
def test_a_sharded_exchange_is_connected_while_any_connection_is() -> None:
    a, b = "binance-0#1", "binance-1#2"
    events: list[ev.ControlEvent] = [
        connecting("binance", a, T0),
        connecting("binance", b, T0 + 1 * S),
        connected("binance", a, T0 + 2 * S),
        connected("binance", b, T0 + 3 * S),
        disconnected("binance", a, T0 + 10 * S, "closed 1006", 0.5),  # one shard drops: still connected
        ev.Gap(exchange="binance", at_ns=T0 + 11 * S, kind="trade_id", expected=5, got=9),  # no state
        ev.Stale(exchange="binance", connection=b, at_ns=T0 + 12 * S, silent_s=10.0),
    ]
    row = cs.fold({}, events, 30 * US)["binance"]
    assert row.connection_state == "stale"  # the only connection left went silent
    assert row.connected_at_us == us(T0 + 2 * S) and row.state_since_us == us(T0 + 12 * S)
    assert (row.last_error, row.last_error_at_us) == ("closed 1006", us(T0 + 10 * S))
    assert row.links == {b: cs.Link(state="stale", since_us=us(T0 + 12 * S), url=f"wss://binance/{b}")}
    more: list[ev.ControlEvent] = [
        disconnected("binance", b, T0 + 13 * S, "stale: no frame for 10.0s", 0.7),
        connecting("binance", "binance-1#3", T0 + 14 * S),
    ]
    row = cs.fold({"binance": row}, more, 30 * US)["binance"]
    assert (row.connection_state, row.state_since_us) == ("connecting", us(T0 + 14 * S))
    assert row.last_error == "stale: no frame for 10.0s"
    row = cs.apply(row, connected("binance", "binance-1#3", T0 + 15 * S), 30 * US)
    assert (row.connection_state, row.connected_at_us) == ("connected", us(T0 + 15 * S))
    assert row.updated_at_us == us(T0 + 15 * S)


@pytest.mark.unit
def test_stops_and_handovers_are_not_errors_and_a_bare_disconnect_drops_every_connection() -> None:
    events: list[ev.ControlEvent] = [
        connecting("coinbase", "c#1", T0),
        connected("coinbase", "c#1", T0 + S),
        connecting("coinbase", "c#2", T0 + 2 * S),  # rotation: the next one opens first
        connected("coinbase", "c#2", T0 + 3 * S),
        disconnected("coinbase", "c#1", T0 + 4 * S, "rotation", 0.0),
        disconnected("coinbase", "c#2", T0 + 5 * S, "stopped", None),
    ]
    row = cs.fold({}, events, 30 * US)["coinbase"]
    assert (row.connection_state, row.links, row.last_error) == ("disconnected", {}, None)
    assert row.connected_at_us == us(T0 + S)  # the rotation did not start a new connected spell
    restart: list[ev.ControlEvent] = [
        connecting("coinbase", "c#3", T0 + 6 * S),
        connected("coinbase", "c#3", T0 + 7 * S),
        connecting("coinbase", "c#4", T0 + 8 * S),
        disconnected("coinbase", "", T0 + 9 * S, "supervisor restarted", None),  # no connection id: all gone
    ]
    row = cs.fold({"coinbase": row}, restart, 30 * US)["coinbase"]
    assert (row.connection_state, row.links) == ("disconnected", {})
    assert (row.last_error, row.last_error_at_us) == ("supervisor restarted", us(T0 + 9 * S))


@pytest.mark.unit
def test_heartbeats_are_recorded_at_most_every_interval_unless_the_state_changed() -> None:
    row = cs.Row(exchange_id="binance")
    row = cs.apply(row, connected("binance", "b#1", T0), 30 * US)
    recorded = []
    for i in range(1, 101):
        after = cs.apply(row, heartbeat("binance", T0 + i * S), 30 * US)
        if after != row:
            recorded.append(i)
        row = after
    assert recorded == [1, 31, 61, 91]  # the first since connecting, then every 30 s of event time
    row = cs.apply(row, disconnected("binance", "b#1", T0 + 95 * S, "closed", 1.0), 30 * US)
    row = cs.apply(row, connected("binance", "b#2", T0 + 96 * S), 30 * US)
    assert cs.apply(row, heartbeat("binance", T0 + 97 * S), 30 * US).last_heartbeat_us == us(T0 + 97 * S)


# ---------------------------------------------------------------- a real adapter against the simulator


async def test_a_real_binance_run_with_two_shards_folds_into_its_rows(client: aioredis.Redis, dsn: str) -> None:
    symbols = ("BTCUSDT", "ETHUSDT")  # 2 streams each; 2 per connection: two shards
    async with Simulator(seed=21, kline_update_interval=0.1) as sim:
        sim.add_synthetic("binance", list(symbols), rate=100)
        cfg = AdapterConfig(
            ws_url=sim.urls["binance"].ws_url,
            symbols=symbols,
            backoff=Backoff(base_s=0.05, factor=2.0, cap_s=0.2),
            seed=1,
            heartbeat_every_s=0.1,
        )
        adapter = BinanceAdapter(
            cfg, FrameSink(client, "binance"), ControlEmitter(client), BinanceLimits(max_streams_per_connection=2)
        )
        stop = asyncio.Event()
        task = asyncio.create_task(adapter.run(stop))
        try:
            await wait_for_events(client, lambda es: count(es, ev.Heartbeat) >= 2 and count(es, ev.Connected) >= 2)
            before = await control_events(client)
            await project(client, dsn, every_s=0)  # no throttle: last_heartbeat is the newest heartbeat
            live = (await rows(dsn))["binance"]
            events = await control_events(client)
            open_ids = {c.id for c in sim.connections("binance") if c.open}
            assert len(open_ids) == 2
            await sim.close("binance", code=1001)
            await wait_for_events(client, lambda es: count(es, ev.Connected) >= 4)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    first_connected = next(e for e in events if isinstance(e, ev.Connected))
    assert live.connection_state == "connected" and live.connected_at_us == us(first_connected.at_ns)
    assert {link.state for link in live.links.values()} == {"connected"} and len(live.links) == 2
    assert {link.url for link in live.links.values()} == {
        e.url for e in events if isinstance(e, ev.Connected) and e.connection in live.links
    }
    # the newest heartbeat the projection had read: at least the newest one written before it ran (the
    # adapter kept beating every 0.1 s while it did)
    beats = [us(e.at_ns) for e in events if isinstance(e, ev.Heartbeat)]
    assert live.last_heartbeat_us in beats
    assert live.last_heartbeat_us >= max(us(e.at_ns) for e in before if isinstance(e, ev.Heartbeat))
    assert live.last_error is None

    stats = await project(client, dsn, every_s=0)
    done = (await rows(dsn))["binance"]
    events = await control_events(client)
    drops = [e for e in events if isinstance(e, ev.Disconnected)]
    forced = [e for e in drops if e.retry_in_s not in (None, 0.0)]
    assert forced and all(e.reason == "stopped" for e in drops if e.retry_in_s is None)
    assert (done.connection_state, done.links) == ("disconnected", {})
    assert done.state_since_us == us(drops[-1].at_ns)
    assert (done.last_error, done.last_error_at_us) == (forced[-1].reason, us(forced[-1].at_ns))
    assert stats.garbage == 0 and stats.unknown_exchange == 0
    coinbase = (await rows(dsn))["coinbase"]
    assert coinbase == cs.Row(exchange_id="coinbase", updated_at_us=coinbase.updated_at_us)  # untouched


async def control_events(client: aioredis.Redis) -> list[ev.ControlEvent]:
    out = []
    for _, fields in await log.entries(client, keys.CONTROL_STREAM):
        parsed = cmd.parse_entry(fields)
        if isinstance(parsed, ev.ControlEvent):
            out.append(parsed)
    return out


def count(events: list[ev.ControlEvent], kind: type) -> int:
    return sum(isinstance(e, kind) for e in events)


async def wait_for_events(client: aioredis.Redis, ok: Any, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not ok(await control_events(client)):
        assert loop.time() < deadline, "timed out waiting for lifecycle events"
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------ writes, redelivery, junk

_COUNT_WRITES = """
CREATE TABLE writes (n bigserial PRIMARY KEY, exchange_id text, last_heartbeat timestamptz);
CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO writes (exchange_id, last_heartbeat) VALUES (NEW.exchange_id, NEW.last_heartbeat); RETURN NEW; END $$;
CREATE TRIGGER count_writes AFTER INSERT OR UPDATE ON exchange_connections FOR EACH ROW EXECUTE FUNCTION count_write();
"""


async def test_heartbeats_are_throttled_in_the_table(client: aioredis.Redis, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_COUNT_WRITES)
    finally:
        await conn.close()
    await add(client, connecting("binance", "b#1", T0), connected("binance", "b#1", T0 + S))
    await add(client, *(heartbeat("binance", T0 + (1 + i) * S) for i in range(1, 121)))  # 120 beats, 1 s apart
    stats = await project(client, dsn, every_s=30, batch_size=7)  # many batches: the throttle spans them
    writes = await fetch(dsn, "SELECT exchange_id, last_heartbeat FROM writes ORDER BY n")
    beats = [r[1] for r in writes if r[1] is not None]
    # One write per batch at most (the first batch: connecting, connected and the beat at 2 s), and a
    # heartbeat alone only every 30 s of event time: 120 heartbeats, 4 writes.
    assert len(writes) == 4 and len(beats) == 4
    assert [cs.to_us(b) for b in beats] == [us(T0 + t * S) for t in (2, 32, 62, 92)]
    assert stats.heartbeats_written == 4 and stats.rows_written == 4
    # A state change is written with its batch, and the next heartbeat at once.
    await add(
        client, disconnected("binance", "b#1", T0 + 125 * S, "closed 1006", 1.0), heartbeat("binance", T0 + 126 * S)
    )
    await project(client, dsn, every_s=30)
    row = (await rows(dsn))["binance"]
    assert (row.connection_state, row.last_heartbeat_us) == ("disconnected", us(T0 + 126 * S))
    assert len(await fetch(dsn, "SELECT * FROM writes")) == 5


async def test_redelivery_after_a_crash_between_commit_and_ack_changes_nothing(
    client: aioredis.Redis, dsn: str
) -> None:
    await add(
        client,
        connecting("coinbase", "c#1", T0),
        connected("coinbase", "c#1", T0 + S),
        heartbeat("coinbase", T0 + 2 * S),
        disconnected("coinbase", "c#1", T0 + 3 * S, "closed 1011", 0.5),
    )
    # A consumer reads the entries, commits them to Postgres and dies before its XACK.
    await log.ensure_group(client, keys.CONTROL_STREAM, cs.GROUP)
    entries = await log.read_group(client, keys.CONTROL_STREAM, cs.GROUP, "crashed", count=100, block_ms=None)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        first = await cs.ConnectionStateProjection(pool).commit(entries)
    finally:
        await pool.close()
    assert first.processed == 4 and first.events == 1  # one row written (one upsert per batch)
    before = await snapshot(dsn)
    assert int((await client.xpending(keys.CONTROL_STREAM, cs.GROUP))["pending"]) == 4
    stats = await project(client, dsn)  # takes the lease, claims the dead consumer's pending entries
    assert stats.redelivered == 4 and stats.rows_written == 0 and stats.folded == 0
    assert await snapshot(dsn) == before
    assert int((await client.xpending(keys.CONTROL_STREAM, cs.GROUP))["pending"]) == 0
    row = (await rows(dsn))["coinbase"]
    assert (row.connection_state, row.last_error, row.last_heartbeat_us) == (
        "disconnected",
        "closed 1011",
        us(T0 + 2 * S),
    )


async def test_garbage_commands_and_unknown_exchanges_are_skipped(client: aioredis.Redis, dsn: str) -> None:
    await add(client, connecting("binance", "b#1", T0))
    junk: list[dict[str, bytes]] = [
        {"event": b"{not json"},
        {"event": b'{"type": "exchange:connected"}'},  # fields missing
        {"event": b'{"type": "exchange:exploded", "exchange": "binance", "at_ns": 1}'},
        {"something": b"else"},
        {"command": b'{"type": "start"}'},
        {"command": cmd.encode(cmd.Start(command_id="x", exchange="binance"))},
        {"event": cmd.encode(cmd.Accepted(command_id="x", exchange="binance", at_ns=T0, command="start"))},
    ]
    for fields in junk:
        await client.xadd(keys.CONTROL_STREAM, fields)  # type: ignore[arg-type]
    await add(client, connected("kraken", "k#1", T0 + S), connected("binance", "b#1", T0 + 2 * S))
    stats = await project(client, dsn, batch_size=3)
    assert stats.garbage == 5 and stats.unknown_exchange == 1 and stats.folded == 2  # a command: not garbage
    row = (await rows(dsn))["binance"]
    assert (row.connection_state, row.connected_at_us) == ("connected", us(T0 + 2 * S))
    assert set(await rows(dsn)) == {"binance", "coinbase"}
    assert int((await client.xpending(keys.CONTROL_STREAM, cs.GROUP))["pending"]) == 0  # all acknowledged


# ------------------------------------------------------------------------------------------------ rebuild


def random_events(seed: int, n: int, start: int = T0) -> list[ev.ControlEvent]:
    """Plausible-looking but arbitrary lifecycle events over both exchanges and an unknown one."""
    rng = random.Random(seed)
    out: list[ev.ControlEvent] = []
    t = start
    for _ in range(n):
        t += rng.randrange(0, 20 * S) - (S if rng.random() < 0.05 else 0)  # now and then a step back
        ex = rng.choice(["binance", "binance", "coinbase", "kraken"])
        conn = rng.choice([f"{ex}-0#{rng.randrange(3)}", f"{ex}-1#{rng.randrange(3)}", ""])
        kind = rng.choice(["connecting", "connected", "connected", "disconnected", "stale", "beat", "beat", "gap"])
        if kind == "connecting":
            out.append(connecting(ex, conn, t))
        elif kind == "connected":
            out.append(connected(ex, conn, t))
        elif kind == "disconnected":
            reason, retry = rng.choice([("stopped", None), ("rotation", 0.0), ("closed 1006", 1.5), ("boom", None)])
            out.append(disconnected(ex, conn, t, reason, retry))
        elif kind == "stale":
            out.append(ev.Stale(exchange=ex, connection=conn, at_ns=t, silent_s=12.0))
        elif kind == "beat":
            out.append(heartbeat(ex, t))
        else:
            out.append(ev.Gap(exchange=ex, connection=conn, at_ns=t, kind="sequence", expected=1, got=3))
    return out


async def test_rebuilding_from_the_stream_gives_the_same_rows(client: aioredis.Redis, dsn: str) -> None:
    await add(client, *random_events(7, 400))
    await client.xadd(keys.CONTROL_STREAM, {"event": b"garbage"})
    await project(client, dsn, every_s=30, batch_size=9)
    live = await snapshot(dsn)
    assert {r[0] for r in live[0]} == {"binance", "coinbase"}
    assert {r[1] for r in live[0]} - {"disconnected"}, "the sequence should leave something connected"

    read, rebuilt_rows = await cs.rebuild(dsn, client, heartbeat_every_s=30)
    assert read == 401 and set(rebuilt_rows) == {"binance", "coinbase"}
    assert await snapshot(dsn) == live

    # After a rebuild the live projection goes on from where the rebuild stopped ...
    await add(client, *random_events(8, 150, start=T0 + 10_000 * S))
    await project(client, dsn, every_s=30, batch_size=4)
    after = await snapshot(dsn)
    # ... and its rows are again what a rebuild of the whole stream gives.
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE exchange_connections SET connection_state = 'stale', last_error = 'scribbled'")
        await conn.execute("DELETE FROM exchange_connection_links")
    finally:
        await conn.close()
    live_position = await position(dsn)
    await cs.rebuild(dsn, client, heartbeat_every_s=30)
    assert await snapshot(dsn) == after
    # The live position may lag the stream's end: a batch that changes no row writes nothing, not even it.
    newest = (await log.entries(client, keys.CONTROL_STREAM, count=1, newest_first=True))[0][0]
    assert live_position <= await position(dsn) == log.parse_id(newest)
    # And a redelivery of everything (a new group from 0) skips it all.
    await client.xgroup_setid(keys.CONTROL_STREAM, cs.GROUP, "0")
    stats = await project(client, dsn, every_s=30)
    assert stats.redelivered == 551 and stats.rows_written == 0
    assert await snapshot(dsn) == after


# ------------------------------------------------------------------------------------------ the commands


def tickfold(redis_url: str, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickfold.cli", "--redis-url", redis_url, "--database-url", dsn, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_process_folds_it_status_shows_it_and_rebuild_keeps_it(
    client: aioredis.Redis, redis_url: str, dsn: str
) -> None:
    await add(
        client,
        connecting("binance", "binance-0#1", T0),
        connected("binance", "binance-0#1", T0 + S),
        connecting("binance", "binance-1#2", T0 + S),
        connected("binance", "binance-1#2", T0 + 2 * S),
        heartbeat("binance", T0 + 3 * S),
        connecting("coinbase", "coinbase-0#1", T0),
        disconnected("coinbase", "coinbase-0#1", T0 + S, "connect failed: refused", 0.5),
    )
    proc = await asyncio.to_thread(tickfold, redis_url, dsn, "process", "--until-idle")
    assert proc.returncode == 0, proc.stderr
    assert "connection state: 7 lifecycle events folded" in proc.stdout
    proc = await asyncio.to_thread(tickfold, redis_url, dsn, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    shown = {r["exchange"]: r for r in json.loads(proc.stdout)}
    assert set(shown) == {"binance", "coinbase"}
    b, c = shown["binance"], shown["coinbase"]
    assert (b["state"], b["connected_at"], b["last_heartbeat"]) == (
        "connected",
        "2023-11-14T22:13:21Z",
        "2023-11-14T22:13:23Z",
    )
    assert [(x["id"], x["state"]) for x in b["connections"]] == [
        ("binance-0#1", "connected"),
        ("binance-1#2", "connected"),
    ]
    assert b["last_error"] is None and b["heartbeat_age_s"] > 0
    assert (c["state"], c["state_since"], c["connected_at"], c["connections"]) == (
        "disconnected",
        "2023-11-14T22:13:21Z",
        None,
        [],
    )
    assert (c["last_error"], c["last_error_at"]) == ("connect failed: refused", "2023-11-14T22:13:21Z")
    before = await snapshot(dsn)
    proc = await asyncio.to_thread(tickfold, redis_url, dsn, "rebuild", "connection-state")
    assert proc.returncode == 0, proc.stderr
    assert "rebuilt from 7 control-stream entries" in proc.stdout
    assert await snapshot(dsn) == before
    proc = await asyncio.to_thread(tickfold, redis_url, dsn, "status")
    assert proc.returncode == 0 and "binance" in proc.stdout and "connect failed: refused" in proc.stdout
