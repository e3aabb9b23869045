"""A running exchange follows the symbol universe (issue 7): a ``symbol:added`` / ``symbol:removed`` event
changes the adapter's subscriptions on its live connection — (UN)SUBSCRIBE messages, no reconnect.

The oracle is the simulator's own record of each connection's subscriptions and handshakes, and the
raw frames in Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from control import universe as uv
from control.commands import Start, append_command, new_command_id
from control.exchanges import set_urls
from control.supervisor import Supervisor, SupervisorConfig
from migrations.runner import migrate
from streams import keys, log
from streams.simulator import Simulator


async def until(condition: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


async def append_universe(client: aioredis.Redis, event: uv.UniverseEvent) -> None:
    await client.xadd(keys.CONTROL_STREAM, {"event": uv.encode(event)})


async def frames_mentioning(client: aioredis.Redis, exchange: str, needle: bytes) -> int:
    found = 0
    for key in await client.keys(f"frames:{exchange}:p*"):
        if await client.type(key) != b"stream":
            continue
        entries: Any = await client.xrange(key)
        found += sum(1 for _, fields in entries if any(needle in v for v in fields.values()))
    return found


def subscriptions(sim: Simulator, exchange: str) -> dict[str, tuple[str, ...]]:
    return {c.id: c.subscriptions for c in sim.connections(exchange) if c.open}


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_running_exchange_follows_the_symbol_universe(redis_url: str, pg_dsn: str) -> None:
    async with (
        Simulator(seed=9, kline_update_interval=0.2, heartbeat_interval=0.2, trades_batch_interval=0.05) as sim,
        log.connect(redis_url) as client,
    ):
        sim.add_synthetic("binance", ["BTCUSDT", "ETHUSDT", "SOLUSDT"], rate=30)
        sim.add_synthetic("coinbase", ["BTC-USD", "ETH-USD", "SOL-USD"], rate=30)
        await migrate(pg_dsn)
        for exchange in ("binance", "coinbase"):
            urls = sim.urls[exchange]
            await set_urls(pg_dsn, exchange, ws_url=urls.ws_url, rest_url=urls.rest_url)
        said: list[str] = []
        sup = Supervisor(client, client, pg_dsn, SupervisorConfig("t", lease_ttl_ms=600, block_ms=100), say=said.append)
        stop = asyncio.Event()
        task = asyncio.create_task(sup.run(stop))
        try:
            await append_command(client, Start(command_id=new_command_id(), exchange="binance", symbols=["BTCUSDT"]))
            await append_command(client, Start(command_id=new_command_id(), exchange="coinbase", symbols=["BTC-USD"]))
            async with asyncio.timeout(15):
                await sim.wait_connections("binance")
                await sim.wait_connections("coinbase")
            await until(lambda: len(next(iter(subscriptions(sim, "coinbase").values()))) == 4, "coinbase subscribed")
            [(bconn, bsubs)] = subscriptions(sim, "binance").items()
            assert set(bsubs) == {"btcusdt@kline_1m", "btcusdt@aggTrade"}
            handshakes = {ex: len(sim.connect_times(ex)) for ex in ("binance", "coinbase")}
            [(cconn, _)] = subscriptions(sim, "coinbase").items()
            assert await frames_mentioning(client, "binance", b"SOLUSDT") == 0

            # a user's position: tier2 adds SOL on both exchanges
            for exchange, symbol in (("binance", "SOL-USDT"), ("coinbase", "SOL-USD")):
                await append_universe(
                    client, uv.SymbolAdded(exchange=exchange, at_ns=1, symbol=symbol, tier="tier2", user="u1")
                )
            sol = {"solusdt@kline_1m", "solusdt@aggTrade"}
            await until(lambda: sol <= set(subscriptions(sim, "binance").get(bconn, ())), "binance SUBSCRIBE of SOL")
            cb_sol = {"candles:SOL-USD", "market_trades:SOL-USD", "ticker:SOL-USD"}
            await until(lambda: cb_sol <= set(subscriptions(sim, "coinbase").get(cconn, ())), "coinbase subscribe")
            frames = 0
            for _ in range(200):
                frames = await frames_mentioning(client, "binance", b"SOLUSDT")
                if frames:
                    break
                await asyncio.sleep(0.05)
            assert frames > 0, "SOL frames land in Redis"
            assert {ex: len(sim.connect_times(ex)) for ex in handshakes} == handshakes, "no reconnect"
            assert list(subscriptions(sim, "binance")) == [bconn] and list(subscriptions(sim, "coinbase")) == [cconn]

            # the position closes: UNSUBSCRIBE; the start command's symbols and heartbeats stay
            for exchange, symbol in (("binance", "SOL-USDT"), ("coinbase", "SOL-USD")):
                await append_universe(
                    client, uv.SymbolRemoved(exchange=exchange, at_ns=2, symbol=symbol, tier="tier2", user="u1")
                )
            await until(
                lambda: set(subscriptions(sim, "binance").get(bconn, ())) == {"btcusdt@kline_1m", "btcusdt@aggTrade"},
                "binance UNSUBSCRIBE of SOL",
            )
            await until(
                lambda: (
                    set(subscriptions(sim, "coinbase").get(cconn, ()))
                    == {"heartbeats:heartbeats", "candles:BTC-USD", "market_trades:BTC-USD", "ticker:BTC-USD"}
                ),
                "coinbase unsubscribe",
            )
            assert {ex: len(sim.connect_times(ex)) for ex in handshakes} == handshakes, "no reconnect"
            assert any("now watching" in line for line in said)
        finally:
            stop.set()
            async with asyncio.timeout(20):
                await task


def _binance(client: aioredis.Redis, sim: Simulator, symbols: tuple[str, ...], per_connection: int) -> Any:
    from streams.adapters.base import AdapterConfig, Backoff
    from streams.adapters.binance import BinanceAdapter, BinanceLimits
    from streams.adapters.sink import ControlEmitter, FrameSink

    cfg = AdapterConfig(
        ws_url=sim.urls["binance"].ws_url, symbols=symbols, backoff=Backoff(base_s=0.05, factor=2.0, cap_s=0.2), seed=1
    )
    limits = BinanceLimits(max_streams_per_connection=per_connection, messages_per_s=50.0)
    return BinanceAdapter(cfg, FrameSink(client, "binance"), ControlEmitter(client), limits)


def streams_of(*symbols: str) -> set[str]:
    return {f"{s.lower()}@{kind}" for s in symbols for kind in ("kline_1m", "aggTrade")}


@pytest.mark.redis
async def test_an_emptied_binance_shard_closes_and_new_symbols_open_a_new_one(redis_url: str) -> None:
    """2 symbols (4 streams) per connection: removing the only symbol of the second connection closes it
    (an idle connection would come back with an empty ``streams=`` URL); the first is untouched."""
    async with Simulator(seed=5) as sim, log.connect(redis_url) as client:
        adapter = _binance(client, sim, ("AAAUSDT", "BBBUSDT", "CCCUSDT"), per_connection=4)
        stop = asyncio.Event()
        task = asyncio.create_task(adapter.run(stop))
        try:
            await until(lambda: len(subscriptions(sim, "binance")) == 2, "two connections")
            first, second = (c.id for c in sorted(sim.connections("binance"), key=lambda c: c.connected_at))
            await until(lambda: set(subscriptions(sim, "binance").get(second, ())) == streams_of("CCCUSDT"), "sub")
            await adapter.update_symbols(["AAAUSDT", "BBBUSDT"])
            await until(lambda: second not in subscriptions(sim, "binance"), "the emptied connection closed")
            closed = next(c for c in sim.connections("binance") if c.id == second)
            assert closed.close_code == 1000
            assert set(subscriptions(sim, "binance")[first]) == streams_of("AAAUSDT", "BBBUSDT")

            await adapter.update_symbols(["AAAUSDT", "BBBUSDT", "DDDUSDT", "EEEUSDT"])  # the first is full
            await until(lambda: len(subscriptions(sim, "binance")) == 2, "a new connection for the new symbols")
            (third,) = set(subscriptions(sim, "binance")) - {first}
            await until(lambda: set(subscriptions(sim, "binance")[third]) == streams_of("DDDUSDT", "EEEUSDT"), "sub")
            assert len(sim.connect_times("binance")) == 3  # no reconnect of the first connection
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        entries: Any = await client.xrange(keys.CONTROL_STREAM)
        drops = [uv_event for _, f in entries if b"exchange:disconnected" in (uv_event := f.get(b"event", b""))]
        assert sum(b"no subscriptions left (shard retired)" in d for d in drops) == 1
        connecting = [f[b"event"] for _, f in entries if b"exchange:connecting" in f.get(b"event", b"")]
        assert [c for c in connecting if b"binance-1#" in c] and [
            c for c in connecting if b"binance-2#" in c
        ]  # a fresh name


@pytest.mark.redis
async def test_more_than_1024_streams_spill_onto_a_second_connection(redis_url: str) -> None:
    """Binance's real limit: 511 symbols x 2 streams = 1022 on one connection; growing to 514 symbols
    fills it to exactly 1024 with SUBSCRIBE messages and opens one more for the last 4 streams. The
    simulator refuses a SUBSCRIBE beyond 1024 streams on a connection, so an overflow would show."""
    symbols = tuple(f"S{i:03d}USDT" for i in range(514))
    async with Simulator(seed=6) as sim, log.connect(redis_url) as client:
        adapter = _binance(client, sim, symbols[:511], per_connection=1024)
        stop = asyncio.Event()
        task = asyncio.create_task(adapter.run(stop))
        try:
            await until(lambda: [len(s) for s in subscriptions(sim, "binance").values()] == [1022], "1022", 30)
            (first,) = subscriptions(sim, "binance")
            await adapter.update_symbols(list(symbols))
            await until(lambda: len(subscriptions(sim, "binance")) == 2, "a second connection", 30)
            (second,) = set(subscriptions(sim, "binance")) - {first}
            await until(lambda: len(subscriptions(sim, "binance")[first]) == 1024, "the first filled to 1024", 30)
            await until(lambda: len(subscriptions(sim, "binance")[second]) == 4, "the rest on the second", 30)
            together = set(subscriptions(sim, "binance")[first]) | set(subscriptions(sim, "binance")[second])
            assert together == streams_of(*symbols)
            assert len(sim.connect_times("binance")) == 2
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
