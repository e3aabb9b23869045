"""``tickfold serve`` and the control commands (issue 6, CTL-01..03), run as a user runs them: serve as a
subprocess against real Redis and PostgreSQL, exchanges pointed at the local simulator, ``tickfold start``
/ ``stop`` as subprocesses. The oracles are independent of serve: the simulator's own record of the
WebSocket connections it accepted, the exit codes and messages, and the control stream's entries.

Plus the pure desired-state fold (control/desired.py) and the adapters' ``disconnect_now`` /
``reconnect_now`` against the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from control import events as ev
from control.commands import (
    Accepted,
    Connect,
    Disconnect,
    Rejected,
    Start,
    Stop,
    append_command,
    append_outcome,
    encode,
    new_command_id,
)
from control.desired import Desired, Malformed, apply, classify, fold
from control.exchanges import set_urls
from control.supervisor import Supervisor, SupervisorConfig
from migrations.runner import migrate
from streams import keys, log
from streams.adapters.base import AdapterConfig, Backoff
from streams.adapters.binance import BinanceAdapter
from streams.adapters.sink import ControlEmitter, FrameSink
from streams.simulator import Simulator

LEASE_TTL_MS = 900
FAST_ENV = {
    "TICKFOLD_EXCHANGE_LEASE_TTL_MS": str(LEASE_TTL_MS),
    "TICKFOLD_LEASE_TTL_MS": "900",
    "TICKFOLD_BLOCK_MS": "200",
}


# ---------------------------------------------------------------------------------------------- helpers


async def until(condition: Callable[[], bool], what: str, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


class Serve:
    """A ``tickfold serve`` subprocess, its stderr collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.lines.append(line.decode(errors="replace").rstrip())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def ready(self) -> None:
        def up() -> bool:
            if self.proc.returncode is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.text}")
            return any("supervisor" in line and "ready" in line for line in self.lines)

        await until(up, "serve to be ready", within=20)

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.wait()

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait()

    async def wait(self) -> int:
        rc = await asyncio.wait_for(self.proc.wait(), 20)
        await self._reader
        return rc


@dataclass
class World:
    sim: Simulator
    client: aioredis.Redis
    redis_url: str
    dsn: str
    serves: list[Serve] = field(default_factory=list)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "tickfold.cli", "--redis-url", self.redis_url, "--database-url", self.dsn, *args]

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **FAST_ENV, **extra}

    async def serve(self, *args: str, consumer: str = "") -> Serve:
        proc = await asyncio.create_subprocess_exec(
            *self.argv("serve", "--api-port", "0", *args),  # (several serves at once: each its own port)
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env(**({"TICKFOLD_CONSUMER": consumer} if consumer else {})),
        )
        serve = Serve(proc)
        self.serves.append(serve)
        return serve

    async def tickfold(self, *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env()
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, stdout.decode(), stderr.decode()

    def open_connections(self, exchange: str) -> int:
        return sum(1 for c in self.sim.connections(exchange) if c.open)

    def attempts(self, exchange: str) -> int:
        return len(self.sim.connect_times(exchange))

    async def control(self) -> list[tuple[str, Any]]:
        entries = await log.entries(self.client, keys.CONTROL_STREAM)
        return [(eid.decode(), classify(fields)) for eid, fields in entries]


@pytest.fixture
async def world(redis_url: str, pg_dsn: str) -> AsyncIterator[World]:
    async with (
        Simulator(seed=6, kline_update_interval=0.2, heartbeat_interval=0.2, trades_batch_interval=0.05) as sim,
        log.connect(redis_url) as client,
    ):
        sim.add_synthetic("binance", ["BTCUSDT", "ETHUSDT"], rate=20)
        sim.add_synthetic("coinbase", ["BTC-USD", "ETH-USD"], rate=20)
        await migrate(pg_dsn)
        for exchange in ("binance", "coinbase"):
            urls = sim.urls[exchange]
            await set_urls(pg_dsn, exchange, ws_url=urls.ws_url, rest_url=urls.rest_url)
        w = World(sim, client, redis_url, pg_dsn)
        try:
            yield w
        finally:
            for serve in w.serves:
                await serve.kill()


async def lease_holder(client: aioredis.Redis, exchange: str) -> bytes:
    value: Any = await client.get(keys.exchange_lease(exchange))
    return bytes(value or b"")


def lifecycle(entries: list[tuple[str, Any]], exchange: str, after: str = "0-0") -> list[Any]:
    from control.desired import position

    return [
        item
        for eid, item in entries
        if position(eid) > position(after) and isinstance(item, ev.ControlEvent) and item.exchange == exchange
    ]


# ------------------------------------------------------------------------------------------- end to end


@pytest.mark.redis
@pytest.mark.postgres
async def test_idle_start_stop_and_resume_after_kill(world: World) -> None:
    serve = await world.serve()  # with the processors, as a user runs it
    await serve.ready()
    await asyncio.sleep(1.0)
    assert world.attempts("binance") == world.attempts("coinbase") == 0, "CTL-01: serve must start idle"
    assert "idle, waiting for commands" in serve.text

    rc, stdout, stderr = await world.tickfold("start", "binance", "--timeout", "20")
    assert rc == 0, stderr
    assert "binance: connected" in stdout
    assert world.open_connections("binance") == 1
    entries = await world.control()
    start_id = next(eid for eid, item in entries if isinstance(item, Start) and item.exchange == "binance")
    answers = [item for _, item in entries if isinstance(item, Accepted | Rejected)]
    assert [type(a) for a in answers] == [Accepted]
    assert isinstance(answers[0], Accepted) and answers[0].command == "start"
    kinds = [type(e) for e in lifecycle(entries, "binance", after=start_id)]
    assert kinds[:2] == [ev.Connecting, ev.Connected], kinds
    accepted_at = next(i for i, (_, item) in enumerate(entries) if isinstance(item, Accepted))
    connecting_at = next(i for i, (_, item) in enumerate(entries) if isinstance(item, ev.Connecting))
    assert accepted_at < connecting_at, "the command is accepted before the adapter connects"

    rc, stdout, stderr = await world.tickfold("start", "coinbase", "--symbols", "BTC-USD", "--timeout", "20")
    assert rc == 0, stderr
    await until(lambda: world.open_connections("coinbase") == 1, "a coinbase connection")
    assert world.sim.connections("coinbase")[-1].subscriptions, "subscribed"

    rc, stdout, stderr = await world.tickfold("stop", "binance", "--timeout", "20")
    assert rc == 0, stderr
    assert "binance: stopped" in stdout
    assert world.open_connections("binance") == 0
    stopped = [e for e in lifecycle(await world.control(), "binance") if isinstance(e, ev.Disconnected)]
    assert stopped[-1].retry_in_s is None

    # kill -9, then a new serve: the stream, not the process, is the truth
    binance_attempts = world.attempts("binance")
    await serve.kill()
    await until(lambda: world.open_connections("coinbase") == 0, "the killed serve's connection to drop")
    coinbase_attempts = world.attempts("coinbase")
    again = await world.serve("--no-processors")
    await again.ready()
    assert "resuming from the control stream: coinbase (BTC-USD)" in again.text
    await until(lambda: world.open_connections("coinbase") == 1, "coinbase to come back", within=15)
    assert world.attempts("coinbase") > coinbase_attempts
    await until(
        lambda: any("BTC-USD" in s for s in world.sim.connections("coinbase")[-1].subscriptions),
        "the resumed subscription",
    )
    subs = world.sim.connections("coinbase")[-1].subscriptions
    assert any("BTC-USD" in s for s in subs) and not any("ETH-USD" in s for s in subs), subs
    await asyncio.sleep(0.5)
    assert world.attempts("binance") == binance_attempts, "a stopped exchange stays stopped"

    # stopping a stopped exchange is fine at once; SIGTERM stops the adapters cleanly and exits 0
    rc, stdout, stderr = await world.tickfold("stop", "binance", "--timeout", "10")
    assert rc == 0 and "binance: not running" in stdout, stderr
    assert await again.terminate() == 0, again.text
    assert world.open_connections("coinbase") == 0
    last = lifecycle(await world.control(), "coinbase")[-1]
    assert isinstance(last, ev.Disconnected) and last.retry_in_s is None


@pytest.mark.redis
@pytest.mark.postgres
async def test_autostart_refusals_and_malformed_commands(world: World) -> None:
    # CTL-03: an unknown or disabled exchange ends serve before anything starts
    refused = await world.serve("--autostart", "binance", "--autostart", "nosuch", "--no-processors")
    assert await refused.wait() == 1
    assert "--autostart nosuch: unknown exchange 'nosuch'" in refused.text and "binance" in refused.text
    assert world.attempts("binance") == 0 and await world.control() == [], "nothing started, nothing appended"

    pg = await asyncpg.connect(world.dsn)
    try:
        await pg.execute("UPDATE exchanges SET enabled = false WHERE id = 'coinbase'")
        disabled = await world.serve("--autostart", "coinbase", "--no-processors")
        assert await disabled.wait() == 1
        assert "--autostart coinbase" in disabled.text and "disabled" in disabled.text
        assert world.attempts("coinbase") == 0

        serve = await world.serve("--autostart", "binance", "--no-processors")
        await serve.ready()
        await until(lambda: world.open_connections("binance") == 1, "autostart to connect binance", within=10)

        # garbage on the control stream: answered with Rejected, serve keeps running
        await world.client.xadd(keys.CONTROL_STREAM, {"hello": "world"})
        await world.client.xadd(keys.CONTROL_STREAM, {"command": b"{not json"})
        await world.client.xadd(
            keys.CONTROL_STREAM, {"command": b'{"type": "start", "command_id": "c-bad", "exchange": 7}'}
        )
        await world.client.xadd(
            keys.CONTROL_STREAM, {"command": b'{"type": "explode", "command_id": "c-x", "exchange": "binance"}'}
        )
        await world.client.xadd(keys.CONTROL_STREAM, {"event": b'{"type": "exchange:future-kind", "x": 1}'})
        await world.client.xadd(keys.CONTROL_STREAM, {"event": b"[1, 2"})

        def rejected() -> list[Rejected]:
            return [item for _, item in entries if isinstance(item, Rejected)]

        entries: list[tuple[str, Any]] = []

        async def refresh() -> None:
            nonlocal entries
            entries = await world.control()

        for _ in range(200):
            await refresh()
            if len(rejected()) >= 5:
                break
            await asyncio.sleep(0.05)
        reasons = {r.command_id or r.entry_id: r.reason for r in rejected()}
        assert len(rejected()) == 5, reasons  # the future event type is not ours to judge
        assert any("neither a 'command' nor an 'event'" in r for r in reasons.values())
        assert "malformed command" in reasons["c-bad"] and "malformed command" in reasons["c-x"]
        assert all(r.entry_id for r in rejected())

        rc, _, stderr = await world.tickfold("start", "nosuch", "--timeout", "10")
        assert rc == 1 and "start nosuch: rejected: unknown exchange 'nosuch'" in stderr, stderr
        rc, _, stderr = await world.tickfold("start", "coinbase", "--timeout", "10")
        assert rc == 1 and "rejected" in stderr and "disabled" in stderr, stderr
        rc, _, stderr = await world.tickfold("start", "binance", "--symbols", "NOPE-XYZ", "--timeout", "10")
        assert rc == 1 and "rejected" in stderr and "NOPE" in stderr, stderr
        rc, _, stderr = await world.tickfold("start", "binance", "--timeframes", "7x", "--timeout", "10")
        assert rc == 1 and "rejected" in stderr and "7x" in stderr, stderr
        rc, _, stderr = await world.tickfold("stop", "kraken", "--timeout", "10")
        assert rc == 1 and "unknown exchange 'kraken'" in stderr, stderr
        assert serve.proc.returncode is None, serve.text
        assert world.open_connections("binance") == 1 and world.attempts("binance") == 1, "binance undisturbed"
        # a start with the same settings as the running one: nothing to do
        rc, stdout, stderr = await world.tickfold("start", "binance", "--timeout", "10")
        assert rc == 0 and "already running and connected" in stdout, stderr
        assert world.attempts("binance") == 1

        # disconnect drops the connection (it comes back after the backoff); connect on a stopped exchange: rejected
        first = world.sim.connections("binance")[0].id
        await append_command(
            world.client, Disconnect(command_id=new_command_id(), exchange="binance", requested_by="test")
        )
        await until(lambda: world.open_connections("binance") == 1 and world.attempts("binance") == 2, "reconnect")
        assert next(c for c in world.sim.connections("binance") if c.id == first).close_code == 1000
        reasons_by_cmd: dict[str, str] = {}
        cid = new_command_id()
        await append_command(world.client, Connect(command_id=cid, exchange="coinbase"))
        await until_async_rejected(world, cid, reasons_by_cmd)
        assert "coinbase is not running" in reasons_by_cmd[cid]
        disconnected = [e for e in lifecycle(await world.control(), "binance") if isinstance(e, ev.Disconnected)]
        assert any("disconnect requested by test" in e.reason for e in disconnected), disconnected

        # a start with other settings restarts the adapter with them
        rc, stdout, stderr = await world.tickfold("start", "binance", "--symbols", "ETHUSDT", "--timeout", "10")
        assert rc == 0 and "binance: connected" in stdout, stderr
        assert world.open_connections("binance") == 1
        newest = world.sim.connections("binance")[-1]
        assert newest.open and "ethusdt@aggTrade" in newest.path and "btcusdt" not in newest.path
        assert await serve.terminate() == 0
    finally:
        await pg.close()


async def until_async_rejected(world: World, command_id: str, reasons: dict[str, str]) -> None:
    for _ in range(200):
        for _, item in await world.control():
            if isinstance(item, Rejected) and item.command_id == command_id:
                reasons[command_id] = item.reason
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no Rejected for {command_id}")


@pytest.mark.redis
@pytest.mark.postgres
async def test_serve_mounts_the_api_and_projects_connection_state(world: World) -> None:
    """One serve: its API answers, and the connection-state projection shows the exchange it started."""
    import httpx

    serve = await world.serve()
    await serve.ready()
    await until(lambda: any("API on http://" in line for line in serve.lines), "the API to listen", within=20)
    base = next(line for line in serve.lines if "API on http://" in line).split("API on ", 1)[1].strip()
    rc, out, err = await world.tickfold("start", "binance")
    assert rc == 0, err
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
        for _ in range(200):  # the projection folds the lifecycle events into Postgres
            row = (await http.get("/exchanges/binance")).json()
            if (row.get("connection") or {}).get("state") == "connected":
                break
            await asyncio.sleep(0.05)
        assert row["connection"]["state"] == "connected", row
        refused = await http.post("/exchanges/binance/stop")  # no token configured: control is refused
        assert refused.status_code in (401, 403)
    rc, out, err = await world.tickfold("status", "--json")
    assert rc == 0, err
    assert next(r for r in json.loads(out) if r["exchange"] == "binance")["state"] == "connected"
    assert await serve.terminate() == 0


async def test_two_serves_one_connection_and_takeover(world: World) -> None:
    a = await world.serve("--no-processors", consumer="serve-a")
    await a.ready()
    rc, _, stderr = await world.tickfold("start", "binance", "--timeout", "20")
    assert rc == 0, stderr
    b = await world.serve("--no-processors", consumer="serve-b")  # joins while a runs binance
    await b.ready()
    assert "resuming from the control stream: binance" in b.text
    await asyncio.sleep(3 * LEASE_TTL_MS / 1000)
    assert world.attempts("binance") == 1 and world.open_connections("binance") == 1, "one connection only"
    assert (await lease_holder(world.client, "binance")).startswith(b"serve-a/")

    await a.kill()  # kill -9 of the holder: b takes over within about a TTL
    await until(lambda: world.attempts("binance") == 2, "serve-b to take over", within=10)
    await until(lambda: world.open_connections("binance") == 1, "one open connection")
    assert (await lease_holder(world.client, "binance")).startswith(b"serve-b/")
    await asyncio.sleep(2 * LEASE_TTL_MS / 1000)
    assert world.attempts("binance") == 2 and world.open_connections("binance") == 1
    assert await b.terminate() == 0
    assert await lease_holder(world.client, "binance") == b"", "a clean exit gives the lease back"


@pytest.mark.redis
@pytest.mark.postgres
async def test_redelivered_commands_are_answered_once(redis_url: str, pg_dsn: str) -> None:
    """A serve instance died holding two commands unacknowledged: one it had answered, one it had not. Its
    heir claims both; the owed one gets its answer, the answered one no second answer."""
    await migrate(pg_dsn)
    async with log.connect(redis_url) as client:
        await append_command(client, Stop(command_id="answered", exchange="binance"))
        await append_command(client, Stop(command_id="owed", exchange="coinbase"))
        await log.ensure_group(client, keys.CONTROL_STREAM, keys.SUPERVISOR_GROUP)
        got = await log.read_group(client, keys.CONTROL_STREAM, keys.SUPERVISOR_GROUP, "ghost", count=10, block_ms=None)
        assert len(got) == 2
        await append_outcome(client, Accepted(command_id="answered", exchange="binance", at_ns=1, command="stop"))
        heir = Supervisor(client, client, pg_dsn, SupervisorConfig("heir", lease_ttl_ms=300, block_ms=100))
        stop = asyncio.Event()
        task = asyncio.create_task(heir.run(stop))
        try:

            async def owed() -> list[Accepted | Rejected]:
                entries = await log.entries(client, keys.CONTROL_STREAM)
                return [i for _, f in entries if isinstance(i := classify(f), Accepted | Rejected)]

            for _ in range(200):
                if (
                    len(await owed()) >= 2
                    and (await client.xpending(keys.CONTROL_STREAM, keys.SUPERVISOR_GROUP))["pending"] == 0
                ):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            async with asyncio.timeout(10):
                await task
        answers = sorted((a.command_id, type(a).__name__) for a in await owed())
        assert answers == [("answered", "Accepted"), ("owed", "Accepted")]
        assert heir.desired.running() == {} and heir.desired.pending == {}


# ---------------------------------------------------------------------------------- the fold (pure)


def _entry(n: int) -> str:
    return f"{n}-0"


@pytest.mark.unit
def test_desired_state_is_a_fold_of_accepted_commands() -> None:
    start = Start(command_id="a", exchange="binance", symbols=["BTC-USDT"])
    stop = Stop(command_id="b", exchange="binance")
    later = Start(command_id="c", exchange="binance", timeframes=["1m", "5m"])
    unknown = Start(command_id="d", exchange="kraken")
    items: list[tuple[str, Any]] = [
        (_entry(1), start),
        (_entry(2), unknown),
        (_entry(3), Accepted(command_id="a", exchange="binance", at_ns=0, command="start")),
        (_entry(4), Rejected(command_id="d", exchange="kraken", at_ns=0, reason="unknown", entry_id=_entry(2))),
        (_entry(5), ev.Connected(exchange="binance", at_ns=0, url="ws://x")),
    ]
    state = Desired()
    for eid, item in items:
        state = apply(state, eid, item)
    assert state.running() == {"binance": state.exchanges["binance"]}
    assert state.exchanges["binance"].symbols == ("BTC-USDT",) and state.pending == {}
    assert "kraken" not in state.exchanges and state.last_id == _entry(5)

    # stop then start; the answers come out of order: the command's position decides, not the answer's
    state = apply(state, _entry(6), stop)
    state = apply(state, _entry(7), later)
    assert state.is_running("binance") and set(state.pending) == {_entry(6), _entry(7)}, "pending: no change yet"
    state = apply(state, _entry(8), Accepted(command_id="c", exchange="binance", at_ns=0, command="start"))
    state = apply(state, _entry(9), Accepted(command_id="b", exchange="binance", at_ns=0, command="stop"))
    assert state.is_running("binance") and state.exchanges["binance"].timeframes == ("1m", "5m")
    assert state.pending == {}
    state = apply(state, _entry(10), Stop(command_id="e", exchange="binance"))
    state = apply(state, _entry(11), Accepted(command_id="e", exchange="binance", at_ns=0, command="stop"))
    assert not state.is_running("binance") and state.running() == {}

    # connect/disconnect change nothing; a malformed entry is pending until its Rejected
    state = apply(state, _entry(12), Disconnect(command_id="f", exchange="binance"))
    state = apply(state, _entry(13), Accepted(command_id="f", exchange="binance", at_ns=0, command="disconnect"))
    assert not state.is_running("binance")
    state = apply(state, _entry(14), Malformed(reason="junk"))
    assert _entry(14) in state.pending
    state = apply(state, _entry(15), Rejected(command_id="", at_ns=0, reason="junk", entry_id=_entry(14)))
    assert state.pending == {}


@pytest.mark.unit
def test_classify_entries() -> None:
    start = Start(command_id="a", exchange="binance")
    assert classify({b"command": encode(start)}) == start
    assert classify({b"event": ev.encode(ev.Stale(exchange="binance", at_ns=1, silent_s=2.0))}) is not None
    bad = classify({b"command": b'{"type": "start", "command_id": "x", "exchange": "binance", "symbols": 1}'})
    assert isinstance(bad, Malformed) and bad.command_id == "x" and bad.exchange == "binance"
    assert isinstance(classify({b"command": b"]"}), Malformed)
    assert isinstance(classify({b"other": b"1"}), Malformed)
    assert classify({b"event": b'{"type": "exchange:newer-thing"}'}) is None  # not ours to judge
    assert isinstance(classify({b"event": b'{"type": "exchange:connected"}'}), Malformed)  # known type, bad fields
    entries = [(b"1-0", {b"command": encode(start)})]
    entries.append((b"2-0", {b"event": encode(Accepted(command_id="a", exchange="binance", at_ns=0, command="start"))}))
    assert fold(entries).is_running("binance")


# ----------------------------------------------------------------- the adapter methods the supervisor uses


@pytest.mark.redis
async def test_adapter_disconnect_now_and_reconnect_now(redis_url: str) -> None:
    async with Simulator(seed=7, kline_update_interval=0.1) as sim, log.connect(redis_url) as client:
        sim.add_synthetic("binance", ["BTCUSDT"], rate=50)
        slow = Backoff(base_s=20.0, factor=1.0, cap_s=20.0)  # a backoff of 10-20 s
        cfg = AdapterConfig(ws_url=sim.urls["binance"].ws_url, symbols=("BTCUSDT",), backoff=slow, seed=1)
        adapter = BinanceAdapter(cfg, FrameSink(client, "binance"), ControlEmitter(client))
        adapter.exchange_id = "binance"
        stop = asyncio.Event()
        task = asyncio.create_task(adapter.run(stop))
        try:
            connected = lambda: sum(isinstance(e, ev.Connected) for e in adapter.control.emitted)  # noqa: E731
            await until(lambda: connected() == 1, "the adapter to connect")
            assert adapter.reconnect_now() == 0, "nothing is backing off"
            assert await adapter.disconnect_now("disconnect requested by test") == 1
            await until(lambda: not sim.connections("binance")[0].open, "the connection to close")
            assert sim.connections("binance")[0].close_code == 1000
            await until(lambda: bool(adapter._backoffs), "the adapter to back off")
            await asyncio.sleep(0.2)
            assert len(sim.connect_times("binance")) == 1, "still backing off"
            assert adapter.reconnect_now() == 1
            await until(lambda: connected() == 2, "reconnect at once", within=3)
            assert len(sim.connect_times("binance")) == 2
        finally:
            stop.set()
            async with asyncio.timeout(10):
                await task
        drops = [e for e in adapter.control.emitted if isinstance(e, ev.Disconnected)]
        assert drops[0].reason == "disconnect requested by test" and drops[0].retry_in_s is not None
        assert drops[-1].retry_in_s is None
