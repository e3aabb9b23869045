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
