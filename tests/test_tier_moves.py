"""SYM-04 end to end: a symbol moving between tiers keeps its candles and changes subscriptions
incrementally. A running exchange (supervisor + adapter against the simulator, the processors folding
live) watches BTC-USDT (Tier 1); a user's position adds SOL-USDT (Tier 2: the user's overflow keys); a
ranking change puts SOL-USDT in Tier 1 (shared keys, history carried over, no second subscription), a
second change takes it out again (back to the holder's keys), then the position closes (UNSUBSCRIBE).

Oracles: the requests the simulator received on the one connection (no reconnect), and the candle
starts seen in one place before a move, which must all be in the new place after it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from control import positions
from control import tier1 as t1
from control.commands import Start, append_command, new_command_id
from control.exchanges import set_urls
from control.supervisor import Supervisor, SupervisorConfig
from migrations.runner import migrate
from projections import tiers
from streams import keys, log
from streams.simulator import Simulator
from tickfold.commands import run_processors
from tickfold.settings import Settings

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

SPEED = 120  # simulated seconds per second: a 1m candle closes every 0.5 s


def fast_clock() -> Callable[[], int]:
    start = time.time_ns()
    return lambda: start + (time.time_ns() - start) * SPEED


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


async def starts(client: aioredis.Redis, key: str) -> set[int]:
    members: Any = await client.zrange(key, 0, -1, withscores=True)
    return {int(score) for _, score in members}


def tier1_of(*symbols: str) -> tiers.Tier1:
    return tiers.Tier1([tiers.Ranked(s, i, 1e9 / i, f"rank {i}") for i, s in enumerate(symbols, 1)], n=len(symbols))


def requests(sim: Simulator) -> list[dict[str, Any]]:
    (conn,) = sim.connections("binance")  # the only one: a reconnect would fail here
    return [json.loads(r) for r in conn.requests]


async def test_a_ranking_change_moves_a_symbol_between_tiers_with_its_candles(redis_url: str, pg_dsn: str) -> None:
    shared = keys.candles("binance", "SOL-USDT", "1m")
    mine = keys.usercandles("u1", "binance", "SOL-USDT", "1m")
    async with (
        Simulator(seed=4, clock=fast_clock(), kline_update_interval=0.05, heartbeat_interval=0.1) as sim,
        log.connect(redis_url) as client,
    ):
        sim.add_synthetic("binance", ["BTCUSDT", "SOLUSDT"], rate=60)
        await migrate(pg_dsn)
        urls = sim.urls["binance"]
        await set_urls(pg_dsn, "binance", ws_url=urls.ws_url, rest_url=urls.rest_url)
        await t1.apply_tier1(client, "binance", tier1_of("BTC-USDT"))
        stop = asyncio.Event()
        sup = Supervisor(client, client, pg_dsn, SupervisorConfig("t", lease_ttl_ms=600, block_ms=100), say=print)
        settings = Settings(block_ms=100, lease_ttl_ms=600, rollups="", indicators=False)
        tasks = [
            asyncio.create_task(sup.run(stop)),
            asyncio.create_task(run_processors(client, settings, ["binance"], until_idle=False, stop=stop)),
        ]
        try:
            await append_command(client, Start(command_id=new_command_id(), exchange="binance", symbols=["BTCUSDT"]))
            async with asyncio.timeout(15):
                await sim.wait_connections("binance")

            await positions.open_position(pg_dsn, client, "u1", "binance", "SOLUSDT", Decimal("3"), ttl_ms=120_000)
            await until(lambda: _async(any(r["method"] == "SUBSCRIBE" for r in requests(sim))), "SUBSCRIBE SOL")
            await until(lambda: _more_than(client, mine, 3), "SOL candles in u1's overflow keys")
            assert not await client.exists(shared)

            before = await starts(client, mine)
            await t1.apply_tier1(client, "binance", tier1_of("BTC-USDT", "SOL-USDT"))  # ranking change: in
            await until(lambda: _holds(client, shared, before), "SOL's history in the shared keys")
            await until(lambda: _gone(client, mine), "u1's copy deleted (not stored twice)")
            assert await client.pttl(shared) == -1

            before = await starts(client, shared)
            await t1.apply_tier1(client, "binance", tier1_of("BTC-USDT"))  # ranking change: out, still held
            await until(lambda: _holds(client, mine, before), "SOL's history back in u1's keys")
            await until(lambda: _gone(client, shared), "the shared copy deleted")
            assert 0 < await client.pttl(mine) <= 120_000

            await positions.close_position(pg_dsn, client, "u1", "binance", "SOLUSDT")
            await until(lambda: _async(requests(sim)[-1]["method"] == "UNSUBSCRIBE"), "UNSUBSCRIBE SOL")
        finally:
            stop.set()
            async with asyncio.timeout(20):
                await asyncio.gather(*tasks)
        sol = {"solusdt@kline_1m", "solusdt@aggTrade"}
        sent = [(r["method"], set(r["params"])) for r in requests(sim)]
        assert sent == [("SUBSCRIBE", sol), ("UNSUBSCRIBE", sol)]  # entering and leaving Tier 1 sent nothing
        assert len(sim.connect_times("binance")) == 1  # one connection throughout: no reconnect
        assert not await client.exists(shared) and await client.exists(mine)  # runs out with its TTL


async def _async(value: bool) -> bool:
    return value


async def _more_than(client: aioredis.Redis, key: str, n: int) -> bool:
    return int(await client.zcard(key)) > n


async def _holds(client: aioredis.Redis, key: str, wanted: set[int]) -> bool:
    return wanted <= await starts(client, key)


async def _gone(client: aioredis.Redis, key: str) -> bool:
    return not await client.exists(key)
