"""User overflow keys (DATA-03) and the dual-read (DATA-04) on a real Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from projections import scope, store
from streams import keys
from tests.realdata import COINBASE_AT
from tests.support import drain, ingest

pytestmark = pytest.mark.redis


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


async def series(client: aioredis.Redis, key: str) -> list[Any]:
    members: list[bytes] = await client.zrange(key, 0, -1)  # type: ignore[assignment]
    return [store.decode_candle(m) for m in members]


async def reference(redis_url: str) -> dict[str, list[Any]]:
    """Everything shared: what the overflow keys must hold, on database 14."""
    ref = aioredis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/14")
    try:
        await ref.flushdb()
        await ingest(ref, "coinbase", COINBASE_AT)
        await drain(ref, ["coinbase"])
        return {key: await series(ref, key) for key in await store.list_series(ref, "coinbase")}
    finally:
        await ref.flushdb()
        await ref.aclose()


async def test_overflow_symbols_live_in_each_holders_keys_with_a_ttl(client: aioredis.Redis, redis_url: str) -> None:
    expected = await reference(redis_url)
    await client.sadd(keys.pool("coinbase"), "BTC-USD")  # Tier 1: BTC only
    await scope.hold(client, "coinbase", "ETH-USD", "u1", ttl_ms=60_000)
    await scope.hold(client, "coinbase", "ETH-USD", "u2", ttl_ms=90_000)
    await scope.hold(client, "coinbase", "BTC-USD", "u1", ttl_ms=60_000)  # in the pool: shared, not stored twice
    await ingest(client, "coinbase", COINBASE_AT)
    await drain(client, ["coinbase"])
    shared = await store.list_series(client, "coinbase")
    assert shared and all(":BTC-USD:" in k for k in shared)
    assert [k async for k in client.scan_iter("usercandles:*:coinbase:BTC-USD:*")] == []
    eth = [k for k in expected if ":ETH-USD:" in k]
    assert eth
    for key in eth:
        _, ex, symbol, tf = key.split(":")
        for user, low, high in (("u1", 50_000, 60_000), ("u2", 80_000, 90_000)):
            user_key = keys.usercandles(user, ex, symbol, tf)
            assert await series(client, user_key) == expected[key]
            assert low < await client.pttl(user_key) <= high  # each copy runs out with its holder's registration
    for key in shared:
        assert await series(client, key) == expected[key]
        assert await client.pttl(key) == -1  # shared keys never expire


async def test_holding_refreshes_the_ttl_and_closing_lets_it_run_out(client: aioredis.Redis) -> None:
    await client.sadd(keys.pool("coinbase"), "BTC-USD")
    await scope.hold(client, "coinbase", "ETH-USD", "u1", ttl_ms=1_500)
    await ingest(client, "coinbase", COINBASE_AT)
    await drain(client, ["coinbase"])
    user_key = keys.usercandles("u1", "coinbase", "ETH-USD", "5m")
    assert 0 < await client.pttl(user_key) <= 1_500
    await scope.hold(client, "coinbase", "ETH-USD", "u1", ttl_ms=60_000)  # still held: refreshed
    assert await client.pttl(user_key) > 50_000
    await scope.hold(client, "coinbase", "ETH-USD", "u1", ttl_ms=400)
    await scope.release(client, "coinbase", "ETH-USD", "u1")  # closed: nothing refreshes it any more
    await asyncio.sleep(0.6)
    assert not await client.exists(user_key)
    assert [k async for k in client.scan_iter("usercandles:u1:*")] == []


async def test_dual_read_answers_from_the_exchange_then_the_user(client: aioredis.Redis, redis_url: str) -> None:
    await client.sadd(keys.pool("coinbase"), "BTC-USD")
    await scope.hold(client, "coinbase", "ETH-USD", "u1", ttl_ms=60_000)
    await ingest(client, "coinbase", COINBASE_AT)
    await drain(client, ["coinbase"])
    btc = await scope.read_candles(client, "coinbase", "BTC-USD", "5m", limit=10, user_id="u1")
    eth = await scope.read_candles(client, "coinbase", "ETH-USD", "5m", limit=10, user_id="u1")
    nobody = await scope.read_candles(client, "coinbase", "ETH-USD", "5m", limit=10, user_id="u9")
    assert btc.source == "exchange" and btc.candles
    assert (
        eth.source == "user:u1"
        and eth.candles == (await series(client, keys.usercandles("u1", "coinbase", "ETH-USD", "5m")))[-10:]
    )
    assert nobody.source == "none" and nobody.candles == []
    shown = subprocess.run(  # noqa: ASYNC221
        [sys.executable, "-m", "tickfold.cli", "--redis-url", redis_url, "candles", "coinbase", "ETH-USD", "5m",
         "--user", "u1", "--json"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "answered by: user:u1" in shown.stderr and '"start"' in shown.stdout


async def test_overflow_indicators_and_their_dual_read(client: aioredis.Redis) -> None:
    from processors.indicators import read_points
    from streams import log
    from tests.synthetic import synthetic_day

    await client.sadd(keys.pool("coinbase"), "BTC-USD")
    await scope.hold(client, "coinbase", "SOL-USD", "u1", ttl_ms=60_000)
    day = [f for f in synthetic_day(every_ms=120_000) if b'"BTC-USD"' in f or b'"SOL-USD"' in f]
    await log.append_frames(client, "coinbase", [(f, 0) for f in day])
    await drain(client, ["coinbase"])
    assert not await client.exists(keys.indicator("coinbase", "SOL-USD", "1m", "macdv"))
    user_key = keys.userindicator("u1", "coinbase", "SOL-USD", "1m", "macdv")
    assert await client.zcard(user_key) > 100 and 0 < await client.pttl(user_key) <= 60_000
    source, pts = await read_points(client, "coinbase", "SOL-USD", "1m", limit=5, user_id="u1")
    assert source == "user:u1" and len(pts) == 5
    source, pts = await read_points(client, "coinbase", "BTC-USD", "1m", limit=5, user_id="u1")
    assert source == "exchange" and len(pts) == 5


async def _everything(client: aioredis.Redis, pattern: str) -> dict[str, list[Any]]:
    """Every series matching ``pattern`` -> its members with scores."""
    return {k.decode(): await client.zrange(k, 0, -1, withscores=True) async for k in client.scan_iter(pattern)}


async def _shared_reference(redis_url: str, frames: list[bytes]) -> dict[str, list[Any]]:
    """The SOL-USD candle and indicator series when everything is shared, on database 13."""
    from streams import log

    ref = aioredis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/13")
    try:
        await ref.flushdb()
        await log.append_frames(ref, "coinbase", [(f, 0) for f in frames])
        await drain(ref, ["coinbase"])
        return {**await _everything(ref, "candles:coinbase:SOL-USD:*"), **await _everything(ref, "indicator:*SOL*")}
    finally:
        await ref.flushdb()
        await ref.aclose()


def _as_user(series: dict[str, list[Any]], user: str) -> dict[str, list[Any]]:
    out = {}
    for key, members in series.items():
        kind, ex, symbol, *rest = key.split(":")
        name = (
            keys.usercandles(user, ex, symbol, *rest)
            if kind == "candles"
            else keys.userindicator(user, ex, symbol, *rest)
        )
        out[name] = members
    return out


async def test_a_symbol_changing_tiers_keeps_its_history(client: aioredis.Redis, redis_url: str) -> None:
    """SYM-04: SOL-USD is held by u1 outside Tier 1 (u1's overflow keys), enters Tier 1 (the shared keys,
    u1's copy deleted), leaves it again while u1 and now u2 hold it (both users' keys, shared deleted).
    At each step the series equal an all-shared fold of the same frames: nothing lost, nothing doubled."""
    from streams import log
    from tests.synthetic import synthetic_day

    day = [f for f in synthetic_day(every_ms=120_000) if b'"BTC-USD"' in f or b'"SOL-USD"' in f]
    third = len(day) // 3
    parts = [day[:third], day[third : 2 * third], day[2 * third :]]
    upto_two = await _shared_reference(redis_url, parts[0] + parts[1])
    upto_three = await _shared_reference(redis_url, day)
    assert any(k.startswith("indicator:") for k in upto_three) and any(k.startswith("candles:") for k in upto_three)

    await client.sadd(keys.pool("coinbase"), "BTC-USD")
    await scope.hold(client, "coinbase", "SOL-USD", "u1", ttl_ms=60_000)
    await log.append_frames(client, "coinbase", [(f, 0) for f in parts[0]])
    await drain(client, ["coinbase"])
    assert await _everything(client, "candles:coinbase:SOL-USD:*") == {}
    assert await client.hget(keys.placement("coinbase"), "SOL-USD") == b"u1"

    await client.sadd(keys.pool("coinbase"), "SOL-USD")  # the ranking changed: SOL-USD is Tier 1 now
    await log.append_frames(client, "coinbase", [(f, 0) for f in parts[1]])
    await drain(client, ["coinbase"])
    shared = {**await _everything(client, "candles:coinbase:SOL-USD:*"), **await _everything(client, "indicator:*SOL*")}
    assert shared == upto_two
    assert await _everything(client, "usercandles:u1:*") == {} == await _everything(
        client, "userindicator:u1:*"
    ) and not await client.exists(
        keys.user_keys("u1", "coinbase", "SOL-USD")
    )  # held, but in Tier 1: shared, not stored twice
    assert not await client.hexists(keys.placement("coinbase"), "SOL-USD")

    await client.srem(keys.pool("coinbase"), "SOL-USD")  # out of Tier 1 again, held by u1 and now u2
    await scope.hold(client, "coinbase", "SOL-USD", "u2", ttl_ms=90_000)
    await log.append_frames(client, "coinbase", [(f, 0) for f in parts[2]])
    await drain(client, ["coinbase"])
    assert await _everything(client, "candles:coinbase:SOL-USD:*") == {}
    assert await _everything(client, "indicator:*SOL*") == {}
    for user, high in (("u1", 60_000), ("u2", 90_000)):
        mine = {
            **await _everything(client, f"usercandles:{user}:*"),
            **await _everything(client, f"userindicator:{user}:*"),
        }
        assert mine == _as_user(upto_three, user)
        for key in _as_user(upto_three, user):
            assert 0 < await client.pttl(key) <= high
    assert await client.hget(keys.placement("coinbase"), "SOL-USD") == b"u1,u2"
    index: Any = await client.smembers(keys.candle_index("coinbase"))
    assert b"candles:coinbase:SOL-USD:1m" not in index


async def test_frames_after_a_close_stay_in_the_closing_users_keys_until_they_run_out(
    client: aioredis.Redis, redis_url: str
) -> None:
    """Frames still in flight after a position closes (the unsubscribe is not instant) go on into the
    user's keys without extending their TTL, and never move the series to the shared keys; once the
    copy has run out, the symbol (if frames still come: a start command watches it) is shared again."""
    from streams import log
    from tests.synthetic import synthetic_day

    day = [f for f in synthetic_day(every_ms=120_000) if b'"BTC-USD"' in f or b'"SOL-USD"' in f]
    parts = [day[: len(day) // 3], day[len(day) // 3 : 2 * len(day) // 3], day[2 * len(day) // 3 :]]
    upto_two = await _shared_reference(redis_url, parts[0] + parts[1])
    await client.sadd(keys.pool("coinbase"), "BTC-USD")
    await scope.hold(client, "coinbase", "SOL-USD", "u1", ttl_ms=60_000)
    await log.append_frames(client, "coinbase", [(f, 0) for f in parts[0]])
    await drain(client, ["coinbase"])
    mine = keys.usercandles("u1", "coinbase", "SOL-USD", "1m")
    ttl_before = int(await client.pttl(mine))

    await scope.release(client, "coinbase", "SOL-USD", "u1")
    await log.append_frames(client, "coinbase", [(f, 0) for f in parts[1]])
    await drain(client, ["coinbase"])
    assert await _everything(client, "candles:coinbase:SOL-USD:*") == {}
    mine_now = {
        **await _everything(client, "usercandles:u1:*"),
        **await _everything(client, "userindicator:u1:*"),
    }
    assert mine_now == _as_user(upto_two, "u1")  # the in-flight frames were folded, not lost
    assert 0 < await client.pttl(mine) <= ttl_before  # and did not extend the copy's life

    for key in [*mine_now, keys.user_keys("u1", "coinbase", "SOL-USD")]:
        await client.pexpire(key, 1)
    await asyncio.sleep(0.05)
    await log.append_frames(client, "coinbase", [(f, 0) for f in parts[2]])
    await drain(client, ["coinbase"])
    assert await client.exists(keys.candles("coinbase", "SOL-USD", "1m"))  # watched by nobody's tier: shared
    assert not await client.hexists(keys.placement("coinbase"), "SOL-USD")
    assert await _everything(client, "usercandles:u1:*") == {}
