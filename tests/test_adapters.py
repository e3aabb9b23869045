"""The live exchange adapters (issue 3) against the local simulator, with a real Redis.

Oracles are independent of the adapters: what the simulator actually wrote to each socket
(``sim.sent``), its record of connections and handshake attempts, and the exchanges' wire rules
(PROTOCOLS.md). "Exactly once" means: every frame text the simulator wrote is in the raw stream, byte
for byte; a text written on several connections (overlapping rotation: the same market data is the same
text on every connection) is kept once; nothing else is appended. Frames are compared as multisets, since
the raw stream may be partitioned into several streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis

from control import events as ev
from control.exchanges import get_exchange, list_exchanges, set_urls
from migrations.runner import migrate
from streams import keys, log
from streams.adapters.base import AdapterConfig, Backoff, Conn, Shard, WsAdapter
from streams.adapters.binance import BinanceAdapter
from streams.adapters.coinbase import CoinbaseAdapter
from streams.adapters.factory import build_adapter
from streams.adapters.sink import ControlEmitter, FrameSink
from streams.rest import BinanceRestClient, CoinbaseRestClient
from streams.simulator import Simulator
from streams.simulator.hub import SentFrame
from tickfold.errors import UnknownExchange

pytestmark = pytest.mark.redis

E = TypeVar("E", bound=ev.ControlEvent)
FAST = Backoff(base_s=0.05, factor=2.0, cap_s=0.2)
BN_SYMBOLS = ("BTCUSDT", "ETHUSDT")
CB_PRODUCTS = ("BTC-USD", "ETH-USD")


# ---------------------------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[aioredis.Redis]:
    async with log.connect(url) as client:
        yield client


def binance_adapter(client: aioredis.Redis, sim: Simulator, **config: Any) -> BinanceAdapter:
    config.setdefault("backoff", FAST)
    config.setdefault("seed", 1)
    cfg = AdapterConfig(ws_url=sim.urls["binance"].ws_url, symbols=BN_SYMBOLS, timeframes=("1m",), **config)
    return BinanceAdapter(cfg, FrameSink(client, "binance"), ControlEmitter(client))


def coinbase_adapter(client: aioredis.Redis, sim: Simulator, **config: Any) -> CoinbaseAdapter:
    config.setdefault("backoff", FAST)
    config.setdefault("seed", 1)
    cfg = AdapterConfig(ws_url=sim.urls["coinbase"].ws_url, symbols=CB_PRODUCTS, **config)
    return CoinbaseAdapter(cfg, FrameSink(client, "coinbase"), ControlEmitter(client))


@contextlib.asynccontextmanager
async def running(adapter: WsAdapter) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``adapter`` for the block; on the way out stop it and wait until its sinks have drained."""
    stop = asyncio.Event()
    task = asyncio.create_task(adapter.run(stop), name=f"adapter-{adapter.exchange_id}")
    try:
        yield task
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


async def until(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


async def until_async(condition: Callable[[], Awaitable[bool]], what: str, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


def sent_on(sim: Simulator, exchange: str, conn_id: str) -> list[SentFrame]:
    return [f for f in sim.sent(exchange) if f.conn_id == conn_id]


def conn_ids(sim: Simulator, exchange: str) -> list[str]:
    return [c.id for c in sim.connections(exchange)]


async def frames_flowing(sim: Simulator, exchange: str, n_connections: int, frames: int = 20) -> None:
    """Wait until the ``n_connections``-th connection has been written ``frames`` frames."""

    def ok() -> bool:
        ids = conn_ids(sim, exchange)
        return len(ids) >= n_connections and len(sent_on(sim, exchange, ids[n_connections - 1])) >= frames

    await until(ok, f"{frames} frames on {exchange} connection #{n_connections}")


async def raw_frames(client: aioredis.Redis, exchange: str) -> list[bytes]:
    return [fields[b"frame"] for _, fields in await log.raw_entries(client, exchange)]


async def control_events(client: aioredis.Redis) -> list[ev.ControlEvent]:
    return [ev.decode(fields[b"event"]) for _, fields in await log.entries(client, keys.CONTROL_STREAM)]


def of(kind: type[E], events: Iterable[ev.ControlEvent]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def expected_frames(sent: list[SentFrame]) -> Counter[bytes]:
    """What exactly-once delivery appends: per connection every frame written, and a text written on
    several connections once (the union of the per-connection multisets)."""
    out: Counter[bytes] = Counter()
    for _, frames in itertools.groupby(sorted(sent, key=lambda f: f.conn_id), key=lambda f: f.conn_id):
        out |= Counter(f.text.encode() for f in frames)
    return out


def assert_exactly_once(raw: list[bytes], sent: list[SentFrame]) -> None:
    got, want = Counter(raw), expected_frames(sent)
    duplicated = [text for text, n in got.items() if n > want.get(text, 0) > 0]
    missing = want - got
    unknown = [text for text in got if text not in want]
    assert not duplicated, f"{len(duplicated)} frames appended twice, e.g. {duplicated[0][:160]!r}"
    assert not missing, f"{sum(missing.values())} of {sum(want.values())} sent frames not appended, e.g. " + repr(
        next(iter(missing))[:160]
    )
    assert not unknown, f"{len(unknown)} appended frames the simulator never sent, e.g. {unknown[0][:160]!r}"
    assert len(raw) == sum(want.values())


def agg_ids(raw: list[bytes]) -> dict[str, list[int]]:
    """aggTrade ids per symbol, in id order (the raw stream may interleave partitions)."""
    out: dict[str, list[int]] = {}
    for frame in raw:
        try:
            msg = json.loads(frame)
        except ValueError:
            continue
        data = msg.get("data", {})
        if data.get("e") == "aggTrade":
            out.setdefault(data["s"], []).append(data["a"])
    return {s: sorted(ids) for s, ids in out.items()}


def assert_contiguous(ids: dict[str, list[int]], symbols: Iterable[str]) -> None:
    for symbol in symbols:
        got = ids.get(symbol, [])
        assert len(got) > 10, f"too few {symbol} aggTrades to judge: {len(got)}"
        assert got == list(range(got[0], got[0] + len(got))), f"{symbol}: aggTrade ids lost or repeated"


# ---------------------------------------------------------------------- exactly once, byte for byte


async def test_binance_forced_disconnect_and_stall_every_frame_exactly_once(redis_url: str) -> None:
    async with Simulator(seed=11, kline_update_interval=0.1) as sim, redis_client(redis_url) as client:
        sim.add_synthetic("binance", list(BN_SYMBOLS), rate=300)
        adapter = binance_adapter(client, sim, stale_after_s=0.4)
        async with running(adapter):
            await frames_flowing(sim, "binance", 1)
            await sim.close("binance", code=1001)  # a forced disconnect
            await frames_flowing(sim, "binance", 2)
            await sim.stall("binance", 3.0)  # far longer than stale_after_s: only the watchdog ends it
            await frames_flowing(sim, "binance", 3)
        raw = await raw_frames(client, "binance")
        events = await control_events(client)
        infos = sim.connections("binance")
        assert_exactly_once(raw, sim.sent("binance"))
    assert len(raw) >= 60
    assert [c.close_code for c in infos] == [1001, 1000, 1000]  # server close; stale close by us; our stop
    (stale,) = of(ev.Stale, events)
    assert stale.connection == "binance-0#2" and stale.silent_s >= 0.4
    assert all(json.loads(f) for f in raw)  # every frame is the JSON text the exchange sent


async def test_coinbase_forced_disconnect_and_stall_every_frame_exactly_once(redis_url: str) -> None:
    async with (
        Simulator(seed=12, trades_batch_interval=0.05, heartbeat_interval=0.1) as sim,
        redis_client(redis_url) as client,
    ):
        sim.add_synthetic("coinbase", list(CB_PRODUCTS), rate=200)
        adapter = coinbase_adapter(client, sim, stale_after_s=0.4)
        async with running(adapter):
            await frames_flowing(sim, "coinbase", 1)
            await sim.close("coinbase", code=1001)
            await frames_flowing(sim, "coinbase", 2)
            await sim.stall("coinbase", 3.0)
            await frames_flowing(sim, "coinbase", 3)
        raw = await raw_frames(client, "coinbase")
        events = await control_events(client)
        assert_exactly_once(raw, sim.sent("coinbase"))
    assert len(raw) > 60
    assert of(ev.Gap, events) == []  # reconnects restart sequence_num at 0: not a gap
    assert [e.connection for e in of(ev.Stale, events)] == ["coinbase-0#2"]


async def test_binance_server_shutdown_rotates_with_overlap_losing_nothing(redis_url: str) -> None:
    async with (
        Simulator(seed=13, kline_update_interval=0.1, shutdown_grace=1.0) as sim,
        redis_client(redis_url) as client,
    ):
        sim.add_synthetic("binance", list(BN_SYMBOLS), rate=300)
        adapter = binance_adapter(client, sim)
        async with running(adapter):
            await frames_flowing(sim, "binance", 1)
            await sim.server_shutdown("binance")
            await frames_flowing(sim, "binance", 2, frames=100)
            await until(lambda: not sim.connections("binance")[0].open, "the old connection to close")
        raw = await raw_frames(client, "binance")
        events = await control_events(client)
        old, new = sim.connections("binance")
        assert_exactly_once(raw, sim.sent("binance"))
    shutdown = [f for f in raw if b"serverShutdown" in f]
    assert len(shutdown) == 1 and json.loads(shutdown[0])["stream"] == "!serverShutdown"
    assert new.connected_at < (old.closed_at or 0), "the new connection must open before the old one closes"
    assert old.close_code == 1000, "the adapter, not the server's 1001 after the grace, must close the old one"
    assert_contiguous(agg_ids(raw), BN_SYMBOLS)  # no trade lost or repeated across the switch
    assert of(ev.Gap, events) == []
    first = [e for e in of(ev.Disconnected, events) if e.connection == "binance-0#1"]
    assert [(e.reason, e.retry_in_s) for e in first] == [("serverShutdown", 0.0)]


async def test_binance_24h_rotation_overlaps_and_neither_loses_nor_duplicates(redis_url: str) -> None:
    async with Simulator(seed=14, kline_update_interval=0.05) as sim, redis_client(redis_url) as client:
        sim.add_synthetic("binance", list(BN_SYMBOLS), rate=400)
        adapter = binance_adapter(client, sim, rotate_after_s=0.4, dedupe_grace_s=0.3, overlap_timeout_s=2.0)
        async with running(adapter):
            await frames_flowing(sim, "binance", 4, frames=50)  # three rotations
        raw = await raw_frames(client, "binance")
        events = await control_events(client)
        infos = sim.connections("binance")
        sent = sim.sent("binance")
        assert_exactly_once(raw, sent)
    # the rotations really overlapped: each connection opened before its predecessor closed, and the
    # same frames were written to both (which the adapter appended once)
    for old, new in itertools.pairwise(infos):
        assert new.connected_at < (old.closed_at or 0)
    texts_by_conn: dict[str, set[str]] = {}
    for f in sent:
        texts_by_conn.setdefault(f.conn_id, set()).add(f.text)
    assert all(texts_by_conn.get(a.id, set()) & texts_by_conn.get(b.id, set()) for a, b in itertools.pairwise(infos))
    assert len(raw) < len(sent)
    assert_contiguous(agg_ids(raw), BN_SYMBOLS)
    assert of(ev.Gap, events) == []
    rotations = [e for e in of(ev.Disconnected, events) if e.reason == "rotation"]
    assert len(rotations) >= 3 and all(e.retry_in_s == 0.0 for e in rotations)


async def test_stopping_during_a_rotation_closes_both_connections_promptly(redis_url: str) -> None:
    async with Simulator(seed=24, shutdown_grace=30.0) as sim, redis_client(redis_url) as client:
        # no market at all: the new connection never repeats a frame of the old one, so the overlap lasts
        adapter = binance_adapter(client, sim, overlap_timeout_s=20.0, stale_after_s=20.0)
        async with running(adapter) as task:
            async with asyncio.timeout(5):
                await sim.wait_connections("binance")
            await sim.server_shutdown("binance")
            async with asyncio.timeout(5):
                await sim.wait_connections("binance", 2)
        assert task.done()
        await until(lambda: not any(c.open for c in sim.connections("binance")), "every connection to close", 2.0)
        events = await control_events(client)
    assert [c.close_code for c in sim.connections("binance")] == [1000, 1000]
    assert sorted((e.connection, e.retry_in_s) for e in of(ev.Disconnected, events)) == [
        ("binance-0#1", None),
        ("binance-0#2", None),
    ]


async def test_binance_pings_keep_a_quiet_connection_alive_but_a_stall_is_stale(redis_url: str) -> None:
    """PROTOCOLS.md: judge Binance liveness per connection from the last frame *and the last ping*; silence
    on quiet symbols is normal. A stall stops pings too, so it is still detected."""
    stale_after = 0.5
    # pongs count against Binance's 5 incoming messages a second: allow our 10 pongs a second here
    sim_options: dict[str, Any] = {"ping_interval": 0.1, "binance_messages_per_s": 100}
    async with Simulator(seed=25, **sim_options) as sim, redis_client(redis_url) as client:
        adapter = binance_adapter(client, sim, stale_after_s=stale_after)  # no market: no frame at all
        async with running(adapter):
            async with asyncio.timeout(5):
                await sim.wait_connections("binance")
            await asyncio.sleep(3 * stale_after)  # quiet, but pinged every 0.1 s
            stalled_ns = time.time_ns()
            await sim.stall("binance", 5.0)
            await until(lambda: bool(of(ev.Stale, adapter.control.emitted)), "the stalled connection to go stale")
        events = await control_events(client)
    (stale,) = of(ev.Stale, events)
    assert stale.connection == "binance-0#1" and stale.at_ns >= stalled_ns
    assert stale_after <= stale.silent_s < 3 * stale_after  # silent since the last ping, not since connecting


# ------------------------------------------------------------------------------------------------- gaps


async def test_coinbase_sequence_jump_is_a_gap_event_and_resubscribes(redis_url: str) -> None:
    async with (
        Simulator(seed=15, trades_batch_interval=0.05, heartbeat_interval=0.1) as sim,
        redis_client(redis_url) as client,
    ):
        sim.add_synthetic("coinbase", list(CB_PRODUCTS), rate=200)
        adapter = coinbase_adapter(client, sim)
        async with running(adapter):
            await frames_flowing(sim, "coinbase", 1)
            await sim.skip("coinbase", 3)
            await until(lambda: bool(of(ev.Gap, adapter.control.emitted)), "a gap event")

            def acks() -> int:
                return sum(1 for f in sim.sent("coinbase") if f.text.startswith('{"channel":"subscriptions"'))

            await until(lambda: acks() >= 7, "the stateful channels to be re-subscribed")
        raw = await raw_frames(client, "coinbase")
        events = await control_events(client)
        assert_exactly_once(raw, sim.sent("coinbase"))  # the gap loses nothing that was sent
    (gap,) = of(ev.Gap, events)
    assert (gap.exchange, gap.kind, gap.connection) == ("coinbase", "sequence", "coinbase-0#1")
    assert gap.got - gap.expected == 3
    seqs = [json.loads(f)["sequence_num"] for f in raw if b'"sequence_num"' in f]
    assert gap.expected not in seqs and gap.got in seqs and gap.got - 1 not in seqs
    assert acks() == 4 + 3  # four subscribes, then candles, market_trades and ticker again


async def test_binance_trade_id_jump_is_a_gap_event_per_symbol(redis_url: str) -> None:
    async with Simulator(seed=16, kline_update_interval=0.1) as sim, redis_client(redis_url) as client:
        sim.add_synthetic("binance", list(BN_SYMBOLS), rate=300)
        adapter = binance_adapter(client, sim)
        async with running(adapter):
            await frames_flowing(sim, "binance", 1)
            await sim.skip("binance", 5, symbol="BTCUSDT")
            await until(lambda: bool(of(ev.Gap, adapter.control.emitted)), "a gap event")
            await frames_flowing(sim, "binance", 1, frames=len(sim.sent("binance")) + 50)
        raw = await raw_frames(client, "binance")
        events = await control_events(client)
        assert_exactly_once(raw, sim.sent("binance"))
    (gap,) = of(ev.Gap, events)
    assert (gap.symbol, gap.kind, gap.got - gap.expected, gap.connection) == ("BTCUSDT", "trade_id", 5, "binance-0#1")
    ids = agg_ids(raw)
    assert gap.expected - 1 in ids["BTCUSDT"] and gap.got in ids["BTCUSDT"]
    assert not set(range(gap.expected, gap.got)) & set(ids["BTCUSDT"])
    assert_contiguous({"ETHUSDT": ids["ETHUSDT"]}, ["ETHUSDT"])


# -------------------------------------------------------------------------------------------- malformed


@pytest.mark.parametrize("exchange", ["binance", "coinbase"])
async def test_a_malformed_frame_is_kept_unchanged_and_the_adapter_keeps_running(redis_url: str, exchange: str) -> None:
    async with (
        Simulator(seed=17, kline_update_interval=0.1, trades_batch_interval=0.05, heartbeat_interval=0.1) as sim,
        redis_client(redis_url) as client,
    ):
        sim.add_synthetic(exchange, list(BN_SYMBOLS if exchange == "binance" else CB_PRODUCTS), rate=200)
        make = binance_adapter if exchange == "binance" else coinbase_adapter
        adapter = make(client, sim)
        async with running(adapter):
            await frames_flowing(sim, exchange, 1)
            await sim.malformed(exchange)
            bad_at = len(sim.sent(exchange))
            await frames_flowing(sim, exchange, 1, frames=bad_at + 30)  # the same connection carries on
        raw = await raw_frames(client, exchange)
        events = await control_events(client)
        sent = sim.sent(exchange)
        assert_exactly_once(raw, sent)
    malformed = [f for f in sent if not _is_json(f.text)]
    assert len(malformed) == 1 and malformed[0].text.encode() in raw
    assert len(sim.connections(exchange)) == 1
    assert [e.reason for e in of(ev.Disconnected, events)] == ["stopped"]
    assert of(ev.Gap, events) == []  # an unparsable frame is neither a gap nor a reason to drop


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


async def test_a_bug_in_the_adapter_propagates_instead_of_being_retried(redis_url: str) -> None:
    """Only transport errors are retried (base.py): an exception of the adapter's own code ends ``run``,
    after the socket is closed and what was read is in Redis."""

    class Buggy(BinanceAdapter):
        def inspect(self, conn: Conn, shard: Shard, frame: bytes) -> None:
            if frame.endswith(b'"a":'):  # the simulator's malformed frame
                raise RuntimeError("a bug")
            super().inspect(conn, shard, frame)

    async with Simulator(seed=26) as sim, redis_client(redis_url) as client:
        sim.add_synthetic("binance", list(BN_SYMBOLS), rate=200)
        config = AdapterConfig(ws_url=sim.urls["binance"].ws_url, symbols=BN_SYMBOLS, backoff=FAST, seed=1)
        adapter = Buggy(config, FrameSink(client, "binance"), ControlEmitter(client))
        task = asyncio.create_task(adapter.run())
        try:
            await frames_flowing(sim, "binance", 1)
            await sim.malformed("binance")
            with pytest.raises(ExceptionGroup) as err:
                async with asyncio.timeout(5):
                    await task
        finally:
            adapter.stop.set()
            with contextlib.suppress(BaseException):
                await task
        assert err.group_contains(RuntimeError, match="a bug")
        await until(lambda: not sim.connections("binance")[0].open, "the connection to be closed")
        assert len(sim.connections("binance")) == 1  # not reconnected
        raw = await raw_frames(client, "binance")
        events = await control_events(client)
    assert len(raw) >= 20
    assert [e.reason for e in of(ev.Disconnected, events)] == ["adapter error: RuntimeError('a bug')"]


# ----------------------------------------------------------------------------------------------- backoff


@pytest.mark.unit
def test_backoff_is_capped_exponential_with_equal_jitter() -> None:
    backoff = Backoff(base_s=0.5, factor=2.0, cap_s=30.0)
    rng = random.Random(3)
    for failures, nominal in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (50, 30.0)]:
        draws = [backoff.delay(failures, rng) for _ in range(2000)]
        assert all(nominal / 2 <= d <= nominal for d in draws), failures
        # spread over the whole upper half (no synchronized reconnect storms), not pinned to either end
        assert min(draws) < nominal * 0.52 and max(draws) > nominal * 0.98, failures


async def test_refused_reconnects_back_off_exponentially_with_equal_jitter_up_to_the_cap(redis_url: str) -> None:
    backoff = Backoff(base_s=0.1, factor=2.0, cap_s=0.4)
    refusals = 5
    async with Simulator(seed=18) as sim, redis_client(redis_url) as client:
        sim.add_synthetic("binance", list(BN_SYMBOLS), rate=100)
        await sim.refuse_connections("binance", refusals)
        adapter = binance_adapter(client, sim, backoff=backoff, seed=5)
        async with running(adapter):
            await frames_flowing(sim, "binance", 1, frames=5)
        attempts = sim.connect_times("binance")
        events = await control_events(client)
    nominal = [min(backoff.cap_s, backoff.base_s * backoff.factor ** (n - 1)) for n in range(1, refusals + 1)]
    assert nominal == [0.1, 0.2, 0.4, 0.4, 0.4]
    failed = [e for e in of(ev.Disconnected, events) if e.reason.startswith("connect failed")]
    delays = [e.retry_in_s or 0.0 for e in failed]
    assert len(delays) == refusals and all("503" in e.reason for e in failed)
    for d, n in zip(delays, nominal, strict=True):
        assert n / 2 <= d <= n, (d, n)  # equal jitter: at least half the nominal delay, at most all of it
    # the simulator saw the attempts that far apart (never sooner; a little later for the handshake)
    assert len(attempts) == refusals + 1
    for (a, b), d in zip(itertools.pairwise(attempts), delays, strict=True):
        assert d - 0.002 <= b - a <= d + 0.25, (b - a, d)
    connecting = of(ev.Connecting, events)
    assert [e.attempt for e in connecting] == list(range(1, refusals + 2))
    for (before, after), d in zip(itertools.pairwise(connecting), delays, strict=True):
        assert (after.at_ns - before.at_ns) / 1e9 >= d - 0.002


async def test_a_connection_that_dies_young_backs_off_longer_each_time(redis_url: str) -> None:
    backoff = Backoff(base_s=0.1, factor=2.0, cap_s=1.0)
    async with Simulator(seed=19) as sim, redis_client(redis_url) as client:
        sim.add_synthetic("binance", list(BN_SYMBOLS), rate=100)
        adapter = binance_adapter(client, sim, backoff=backoff, healthy_after_s=30.0)
        async with running(adapter):
            for n in range(1, 4):
                await frames_flowing(sim, "binance", n, frames=1)
                await sim.close("binance")
            await frames_flowing(sim, "binance", 4, frames=1)
        attempts = sim.connect_times("binance")
        events = await control_events(client)
    closed = [e for e in of(ev.Disconnected, events) if e.reason.startswith("closed by server (code 1001")]
    delays = [e.retry_in_s or 0.0 for e in closed]
    assert len(delays) == 3
    for d, nominal_s in zip(delays, [0.1, 0.2, 0.4], strict=True):
        assert nominal_s / 2 <= d <= nominal_s, (d, nominal_s)
    assert all(b - a >= d - 0.002 for (a, b), d in zip(itertools.pairwise(attempts), delays, strict=True))


# ------------------------------------------------------------------------------------- lifecycle events


async def test_lifecycle_events_reach_the_control_stream_with_reasons(redis_url: str) -> None:
    async with (
        Simulator(seed=20, trades_batch_interval=0.05, heartbeat_interval=0.1) as sim,
        redis_client(redis_url) as client,
    ):
        sim.add_synthetic("coinbase", list(CB_PRODUCTS), rate=100)
        adapter = coinbase_adapter(client, sim, stale_after_s=0.3)
        async with running(adapter):
            await frames_flowing(sim, "coinbase", 1)
            await sim.stall("coinbase", 2.0)
            await frames_flowing(sim, "coinbase", 2)
            await sim.close("coinbase", code=1001)
            await frames_flowing(sim, "coinbase", 3)
        entries = await log.entries(client, keys.CONTROL_STREAM)
        urls = sim.urls["coinbase"].ws_url
    events = [ev.decode(fields[b"event"]) for _, fields in entries]
    assert all(e.exchange == "coinbase" and e.at_ns > 0 for e in events)
    assert [e.at_ns for e in events] == sorted(e.at_ns for e in events)
    by_conn = {
        cid: [type(e).__name__ for e in group if not isinstance(e, ev.Heartbeat)]
        for cid, group in itertools.groupby(sorted(events, key=lambda e: e.connection), key=lambda e: e.connection)
    }
    by_conn.pop("", None)  # heartbeats of the whole adapter
    assert by_conn == {
        "coinbase-0#1": ["Connecting", "Connected", "Stale", "Disconnected"],
        "coinbase-0#2": ["Connecting", "Connected", "Disconnected"],
        "coinbase-0#3": ["Connecting", "Connected", "Disconnected"],
    }
    connected = of(ev.Connected, events)
    assert all(e.url == urls and e.subscriptions == list(CB_PRODUCTS) for e in connected)
    assert all(e.url == urls and e.attempt >= 1 for e in of(ev.Connecting, events))
    (stale,) = of(ev.Stale, events)
    assert stale.silent_s >= 0.3
    reasons = [(e.connection, e.reason, e.retry_in_s) for e in of(ev.Disconnected, events)]
    assert reasons[0][1].startswith("stale: no frame for") and (reasons[0][2] or 0) > 0
    assert reasons[1][1] == "closed by server (code 1001, closed by the simulator)" and (reasons[1][2] or 0) > 0
    assert reasons[2][1:] == ("stopped", None)
    # each entry is one JSON ``event`` field tagged with its type
    assert all(json.loads(fields[b"event"])["type"].startswith("exchange:") for _, fields in entries)


async def test_heartbeat_events_are_throttled_not_one_per_frame(redis_url: str) -> None:
    interval = 0.25
    async with Simulator(seed=21, kline_update_interval=0.1) as sim, redis_client(redis_url) as client:
        sim.add_synthetic("binance", list(BN_SYMBOLS), rate=500)
        adapter = binance_adapter(client, sim, heartbeat_every_s=interval)
        started = time.monotonic()
        async with running(adapter):
            await until(lambda: len(of(ev.Heartbeat, adapter.control.emitted)) >= 3, "three heartbeats")
            await frames_flowing(sim, "binance", 1, frames=300)
        elapsed = time.monotonic() - started
        raw = await raw_frames(client, "binance")
        events = await control_events(client)
    beats = of(ev.Heartbeat, events)
    assert len(raw) >= 300
    assert 3 <= len(beats) <= elapsed / interval + 2, (len(beats), elapsed)
    assert sum(b.frames for b in beats) == len(raw)  # each frame counted once, in one heartbeat
    assert all(b.frames > 1 for b in beats[:-1])
    # at most one per interval (the last one flushes the count when the adapter stops)
    gaps = [(b.at_ns - a.at_ns) / 1e9 for a, b in itertools.pairwise(beats[:-1])]
    assert all(g >= interval * 0.9 for g in gaps), gaps


# ------------------------------------------------------------------------------------------------ factory


@pytest.mark.postgres
async def test_factory_builds_both_adapters_from_the_migrated_exchange_rows(redis_url: str, pg_dsn: str) -> None:
    await migrate(pg_dsn)
    assert {r.id: r.adapter_kind for r in await list_exchanges(pg_dsn)} == {
        "binance": "binance_spot",
        "coinbase": "coinbase_advanced_trade",
    }
    async with (
        Simulator(seed=22, kline_update_interval=0.1, trades_batch_interval=0.05, heartbeat_interval=0.1) as sim,
        redis_client(redis_url) as client,
    ):
        sim.add_synthetic("binance", ["BTCUSDT"], rate=100)
        sim.add_synthetic("coinbase", ["BTC-USD"], rate=100)
        rows = {}
        for ex in ("binance", "coinbase"):
            rows[ex] = await set_urls(pg_dsn, ex, ws_url=sim.urls[ex].ws_url, rest_url=sim.urls[ex].rest_url)
            assert await get_exchange(pg_dsn, ex) == rows[ex]
        bn = build_adapter(rows["binance"], client, symbols=("BTCUSDT",), timeframes=("1m",), backoff=FAST)
        cb = build_adapter(rows["coinbase"], client, symbols=("BTC-USD",), backoff=FAST)
        assert isinstance(bn, BinanceAdapter) and isinstance(cb, CoinbaseAdapter)
        assert (bn.exchange_id, cb.exchange_id) == ("binance", "coinbase")
        assert bn.config.ws_url == sim.urls["binance"].ws_url and cb.config.ws_url == sim.urls["coinbase"].ws_url
        # limits come from the row's api_limits (under Binance's 5/s and Coinbase's 8/s), with the 24 h rotation
        assert bn.limits.max_streams_per_connection == 1024 and bn.limits.messages_per_s == 4.0
        assert cb.messages_per_s == 6.0 and cb.config.stale_after_s <= 5.0
        assert bn.config.rotate_after_s is not None and bn.config.rotate_after_s < 24 * 3600
        async with running(bn), running(cb):
            await frames_flowing(sim, "binance", 1)
            await frames_flowing(sim, "coinbase", 1)
        for ex in ("binance", "coinbase"):
            raw = await raw_frames(client, ex)
            assert raw and sim.connections(ex)[0].subscriptions
            assert_exactly_once(raw, sim.sent(ex))
        assert sim.connections("binance")[0].path == "/binance/ws/stream?streams=btcusdt@kline_1m/btcusdt@aggTrade"

        with pytest.raises(UnknownExchange, match="kraken_spot"):
            build_adapter(msgspec.structs.replace(rows["binance"], adapter_kind="kraken_spot"), client, symbols=("X",))
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("UPDATE exchanges SET enabled = false WHERE id = 'coinbase'")
        finally:
            await conn.close()
        disabled = await get_exchange(pg_dsn, "coinbase")
        assert disabled.enabled is False
        with pytest.raises(UnknownExchange, match="disabled"):
            build_adapter(disabled, client, symbols=("BTC-USD",))
        with pytest.raises(UnknownExchange):
            await get_exchange(pg_dsn, "kraken")


# --------------------------------------------------------------------------------------------------- REST


class RecordingClock:
    """Injected ``monotonic``/``sleep`` for the REST clients: sleeping records the wait and moves the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.mark.unit
async def test_rest_clients_wait_out_the_simulators_429_retry_after_then_succeed() -> None:
    async with Simulator(seed=23) as sim:
        sim.add_synthetic("binance", ["ETHUSDT"], rate=50)
        sim.add_synthetic("coinbase", ["BTC-USD"], rate=50)
        await sim.rest_429("binance", times=1, retry_after=7)
        await sim.rest_429("coinbase", times=2, retry_after=3)
        bn_clock, cb_clock = RecordingClock(), RecordingClock()
        async with BinanceRestClient(
            sim.urls["binance"].rest_url, sleep=bn_clock.sleep, monotonic=bn_clock.monotonic, rng=random.Random(1)
        ) as bn:
            markets = await bn.markets()
        async with CoinbaseRestClient(
            sim.urls["coinbase"].rest_url, sleep=cb_clock.sleep, monotonic=cb_clock.monotonic, rng=random.Random(1)
        ) as cb:
            products = await cb.products()
        assert (sim.binance_rest.fault.times, sim.coinbase_rest.fault.times) == (0, 0)  # the 429s were served
    assert "ETHUSDT" in {m.native for m in markets}
    assert [p.product_id for p in products] == ["BTC-USD"]
    assert bn_clock.sleeps == [7.0]
    assert cb_clock.sleeps == [3.0, 3.0]
