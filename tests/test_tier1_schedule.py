"""Tier 1 on a schedule (SYM-01): ``serve`` re-ranks each exchange of the ``tier1`` setting every
``tier1_refresh_s``, one instance per round, and a failing REST API is reported, not fatal.

The oracle is the simulator's own 24h statistics (its ``/products`` and ``ticker/24hr`` answers, read here
with plain HTTP) and the control stream's universe events.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import pytest

from control import tier1 as t1
from control import universe as uv
from control.exchanges import set_urls
from migrations.runner import migrate
from streams import keys, log
from streams.simulator import Simulator
from tickfold.commands_serve import ServeContext, _tier1_task
from tickfold.errors import ConfigError
from tickfold.settings import Settings


def test_the_tier1_setting_is_parsed_per_exchange() -> None:
    plan = Settings(tier1="binance:20:usdt|USDC, coinbase:5").tier1_plan()
    assert plan == {"binance": (20, ("USDT", "USDC")), "coinbase": (5, None)}
    assert Settings().tier1_plan() == {}


@pytest.mark.parametrize(
    ("value", "needle"),
    [("binance", "expected exchange:N"), ("binance:0", "expected exchange:N"), ("binance:x", "expected"),
     ("binance:3,binance:4", "listed twice"), ("coinbase:3:|", "empty quote list")],
)  # fmt: skip
def test_a_bad_tier1_setting_names_the_key(value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        Settings(tier1=value)
    assert info.value.key == "tier1"
    with pytest.raises(ConfigError) as too_often:
        Settings(tier1_refresh_s=5)
    assert too_often.value.key == "tier1_refresh_s"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


async def _tier1_events(client: Any, exchange: str) -> list[uv.UniverseEvent]:
    entries: Any = await client.xrange(keys.CONTROL_STREAM)
    found = [uv.decode(f[b"event"]) for _, f in entries if b"event" in f and b'"symbol:' in f[b"event"]]
    return [e for e in found if e.exchange == exchange and e.tier == "tier1"]


@pytest.mark.redis
@pytest.mark.postgres
async def test_serve_refreshes_tier1_on_schedule_once_per_round(redis_url: str, pg_dsn: str) -> None:
    async with Simulator(seed=3) as sim, log.connect(redis_url) as client:
        sim.add_synthetic("coinbase", ["BTC-USD", "ETH-USD", "SOL-USD", "DOGE-USD"], rate=5)
        await migrate(pg_dsn)
        urls = sim.urls["coinbase"]
        await set_urls(pg_dsn, "coinbase", ws_url=urls.ws_url, rest_url=urls.rest_url)
        products = await asyncio.to_thread(_get, urls.rest_url + "/products")
        volumes = {p["product_id"]: float(p["approximate_quote_24h_volume"]) for p in products["products"]}
        simulated = {s: v for s, v in volumes.items() if s in {"BTC-USD", "ETH-USD", "SOL-USD", "DOGE-USD"}}
        top1 = sorted(simulated, key=lambda s: (-simulated[s], s))[:1]

        settings = Settings(tier1="coinbase:1:USD", tier1_refresh_s=60)
        stop = asyncio.Event()
        said: list[str] = []
        ctx = ServeContext(settings, redis_url, pg_dsn, client, stop, said.append)
        tasks = [asyncio.create_task(_tier1_task(ctx, every_s=0.5)) for _ in range(2)]  # two serve instances
        try:
            async with asyncio.timeout(10):
                while True:
                    if await _tier1_events(client, "coinbase"):
                        break
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.3)  # two more rounds
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        events = await _tier1_events(client, "coinbase")
        added = [e for e in events if isinstance(e, uv.SymbolAdded)]
        assert added[0].symbol == top1[0]  # ranked on the simulator's own 24h volumes
        assert all(e.reason.startswith("rank 1 by 24h quote volume") for e in added)
        # volumes move with the simulated trades: a change of leader is one removal + one addition
        assert len(events) == 2 * len(added) - 1
        top1 = [added[-1].symbol]
        universe = await t1.read_universe(client)
        assert universe.pool("coinbase") == top1
        pool: Any = await client.smembers(keys.pool("coinbase"))
        assert {m.decode() for m in pool} == set(top1)
        rounds = [line for line in said if line.startswith("tier1 coinbase: 1 symbols")]
        assert 2 <= len(rounds) <= 4, said  # ~3 rounds of 0.5 s, each taken by one of the two instances


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_failing_refresh_is_reported_and_retried_and_a_typo_fails_at_start(
    redis_url: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.rest import http

    monkeypatch.setattr(http.Backoff, "delay", lambda self, retry, rng: 0.01)  # the client's retries, quickly
    await migrate(pg_dsn)
    await set_urls(pg_dsn, "binance", ws_url=None, rest_url="http://127.0.0.1:9")  # nothing listens there
    async with log.connect(redis_url) as client:
        stop = asyncio.Event()
        said: list[str] = []
        ctx = ServeContext(Settings(tier1="binance:3"), redis_url, pg_dsn, client, stop, said.append)
        task = asyncio.create_task(_tier1_task(ctx, every_s=0.3))
        async with asyncio.timeout(30):  # the REST client gives up after its own retries
            while True:
                if any("refresh failed" in line for line in said):
                    break
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the next round has begun (its lock taken again)
        assert await client.exists(keys.tier1_refresh("binance"))
        assert not task.done()  # still scheduled: REST being down does not end serve
        stop.set()
        await task
        assert "tier1 binance: refresh failed, next try in 0.3 s" in said[0]
        assert await _tier1_events(client, "binance") == []

        typo = ServeContext(Settings(tier1="binanse:3"), redis_url, pg_dsn, client, asyncio.Event(), said.append)
        with pytest.raises(ConfigError, match="tier1: unknown exchange 'binanse'"):
            await _tier1_task(typo, every_s=0.3)
