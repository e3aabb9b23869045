"""Tier 2 (SYM-02): positions in PostgreSQL, their universe events, and their overflow keys, on real servers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis

from control import positions, universe
from migrations.runner import migrate
from streams import keys
from streams.symbols import UnknownSymbol
from tests.realdata import BINANCE_0404
from tests.support import drain, ingest

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


@pytest.fixture
async def dsn(pg_dsn: str) -> str:
    await migrate(pg_dsn)
    return pg_dsn


async def universe_events(client: aioredis.Redis) -> list[universe.UniverseEvent]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrange(keys.CONTROL_STREAM)  # type: ignore[assignment]
    return [universe.decode(fields[b"event"]) for _, fields in entries]


async def user_keys(client: aioredis.Redis, pattern: str = "user*") -> list[bytes]:
    return [k async for k in client.scan_iter(pattern)]


async def rows(dsn: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch("SELECT user_id, exchange_id, symbol, quantity FROM positions")]
    finally:
        await conn.close()


async def test_a_position_in_tier1_is_shared_and_not_stored_twice(client: aioredis.Redis, dsn: str) -> None:
    await client.sadd(keys.pool("binance"), "BTC-USDT")
    opened = await positions.open_position(dsn, client, "u1", "binance", "BTCUSDT", Decimal("0.5"))
    assert (opened.symbol, opened.quantity) == ("BTC-USDT", "0.5")
    await ingest(client, "binance", BINANCE_0404)
    await drain(client, ["binance"])
    assert await client.exists(keys.candles("binance", "BTC-USDT", "1m"))
    assert await client.pttl(keys.candles("binance", "BTC-USDT", "1m")) == -1
    assert await user_keys(client) == []  # no usercandles / userindicator / userkeys: no second copy


async def test_a_position_outside_tier1_gets_overflow_keys_until_closed(client: aioredis.Redis, dsn: str) -> None:
    await client.sadd(keys.pool("binance"), "BTC-USDT")
    await positions.open_position(dsn, client, "u1", "binance", "eth/usdt", Decimal("2"), ttl_ms=60_000)
    await ingest(client, "binance", BINANCE_0404)
    await drain(client, ["binance"])
    user_key = keys.usercandles("u1", "binance", "ETH-USDT", "1m")
    assert await client.zcard(user_key) > 0
    assert 0 < await client.pttl(user_key) <= 60_000
    assert not await client.exists(keys.candles("binance", "ETH-USDT", "1m"))

    await client.pexpire(user_key, 1_000)
    assert await positions.refresh_holds(dsn, client, ttl_ms=120_000) == 1  # still held: refreshed
    assert await client.pttl(user_key) > 100_000

    # Same position again with a short TTL (a quantity change: no second "opened" event), then close it.
    await positions.open_position(dsn, client, "u1", "binance", "ETH-USDT", Decimal("1.5"), ttl_ms=400)
    closed = await positions.close_position(dsn, client, "u1", "binance", "ETHUSDT")
    assert closed.quantity == "1.5"
    assert await rows(dsn) == []
    assert await positions.refresh_holds(dsn, client, ttl_ms=120_000) == 0  # nothing held: nothing refreshed
    await asyncio.sleep(0.7)
    assert await user_keys(client, "usercandles:u1:*") == []
    assert await user_keys(client, "userindicator:u1:*") == []

    events = await universe_events(client)
    assert [(type(e).__name__, e.symbol, e.tier, e.user, e.reason) for e in events] == [
        ("SymbolAdded", "ETH-USDT", "tier2", "u1", "position opened"),
        ("SymbolRemoved", "ETH-USDT", "tier2", "u1", "position closed"),
    ]
    assert universe.fold(events).watched("binance") == []
    member = universe.fold(events[:1]).symbols["binance"]["ETH-USDT"]
    assert member.tiers == {"tier2": {"u1": "position opened"}} and not member.shared


async def test_open_positions_fold_into_the_universe(client: aioredis.Redis, dsn: str) -> None:
    await positions.open_position(dsn, client, "u1", "binance", "ETHUSDT", Decimal("1"))
    await positions.open_position(dsn, client, "u2", "binance", "ETH-USDT", Decimal("-3"))
    await positions.open_position(dsn, client, "u2", "binance", "DOTUSDT", Decimal("10"))
    u = universe.fold(await universe_events(client))
    assert u.watched("binance") == ["DOT-USDT", "ETH-USDT"]
    assert u.symbols["binance"]["ETH-USDT"].tiers == {"tier2": {"u1": "position opened", "u2": "position opened"}}
    listed = await positions.list_positions(dsn, "u2")
    assert [(p.symbol, p.quantity) for p in listed] == [("DOT-USDT", "10"), ("ETH-USDT", "-3")]
    assert len(await positions.list_positions(dsn)) == 3


async def test_an_unknown_symbol_is_refused_and_nothing_is_written(client: aioredis.Redis, dsn: str) -> None:
    with pytest.raises(UnknownSymbol, match="binance has no market 'NOPEUSDT'"):
        await positions.open_position(dsn, client, "u1", "binance", "NOPEUSDT", Decimal("1"))
    with pytest.raises(UnknownSymbol, match="no market list for coinbase"):  # nothing to check it against
        await positions.open_position(dsn, client, "u1", "coinbase", "BTC-USD", Decimal("1"))
    with pytest.raises(positions.NoPosition, match="u1 has no open position in binance ETH-USDT"):
        await positions.close_position(dsn, client, "u1", "binance", "ETHUSDT")
    assert await rows(dsn) == []
    assert await client.xlen(keys.CONTROL_STREAM) == 0
    assert await client.keys("holders:*") == []


async def test_the_positions_command(client: aioredis.Redis, dsn: str, redis_url: str) -> None:
    def tickfold(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tickfold.cli", "--redis-url", redis_url, "--database-url", dsn, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    opened = await asyncio.to_thread(tickfold, "positions", "open", "u1", "binance", "ETHUSDT", "0.25")
    assert opened.returncode == 0, opened.stderr
    assert "u1: opened binance ETH-USDT (quantity 0.25)" in opened.stdout
    refused = await asyncio.to_thread(tickfold, "positions", "open", "u1", "binance", "NOPEUSDT", "1")
    assert refused.returncode == 1 and "binance has no market 'NOPEUSDT'" in refused.stderr
    listed = await asyncio.to_thread(tickfold, "positions", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert {k: row[k] for k in ("user", "exchange", "symbol", "quantity")} == {
        "user": "u1",
        "exchange": "binance",
        "symbol": "ETH-USDT",
        "quantity": "0.25",
    }
    assert await client.zscore(keys.holders("binance", "ETH-USDT"), "u1")
    closed = await asyncio.to_thread(tickfold, "positions", "close", "u1", "binance", "ETH-USDT")
    assert closed.returncode == 0, closed.stderr
    assert json.loads((await asyncio.to_thread(tickfold, "positions", "list", "--json")).stdout) == []
    assert len(await universe_events(client)) == 2
