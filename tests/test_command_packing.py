"""tickfold's connections pack commands with hiredis: the same bytes as redis-py's own packer, the same errors."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio
import redis.asyncio.client
import redis.asyncio.connection as rc
import redis.exceptions

from streams import log

COMMANDS: list[tuple[Any, ...]] = [
    ("XADD", "frames:binance:p1", "*", "frame", b'{"stream":"btcusdt@aggTrade"}', "recv_ns", 1_700_000_000_123_456_789),
    ("ZADD", "candles:binance:BTC-USDT:1m", 1.5, "é€😀", 0.1, b"\x00\xff", -0.0, "x", 1e20, "y"),
    ("CONFIG GET", "maxmemory"),  # a command name with a literal argument: split as redis-py splits it
    ("SET", bytearray(b"key"), memoryview(b"value")),  # hiredis refuses bytearray: redis-py's packer takes it
    ("SET", "big", b"v" * 10_000),  # beyond redis-py's 6,000-byte chunking
    ("EVAL", "return 1", 0, 2**70, -(2**63), float("inf")),
]


def _wire(chunks: list[bytes] | list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(c) for c in chunks)


@pytest.mark.unit
def test_same_bytes_as_redis_py_command_by_command_and_pipelined() -> None:
    plain, fast = rc.Connection(), log._packing(rc.Connection)()
    for cmd in COMMANDS:
        assert _wire(fast.pack_command(*cmd)) == _wire(plain.pack_command(*cmd)), cmd
    assert _wire(fast.pack_commands(COMMANDS)) == _wire(plain.pack_commands(COMMANDS))


@pytest.mark.unit
@pytest.mark.parametrize("bad", [True, None, [1], object()])
def test_refused_arguments_raise_redis_pys_own_error(bad: Any) -> None:
    plain, fast = rc.Connection(), log._packing(rc.Connection)()
    with pytest.raises(redis.exceptions.DataError) as expected:
        plain.pack_command("SET", "k", bad)
    with pytest.raises(redis.exceptions.DataError) as got:
        fast.pack_command("SET", "k", bad)
    assert str(got.value) == str(expected.value)


@pytest.mark.unit
def test_each_kind_of_connection_keeps_its_class() -> None:
    for base in (rc.Connection, rc.SSLConnection, rc.UnixDomainSocketConnection):
        packing = log._packing(base)
        assert issubclass(packing, base) and packing is log._packing(base)


@pytest.mark.redis
async def test_connect_packs_with_hiredis_and_round_trips(redis_url: str) -> None:
    async with log.connect(redis_url) as client:
        assert issubclass(client.connection_pool.connection_class, log._HiredisPacking)
        async with client.pipeline(transaction=True) as pipe:
            pipe.xadd("s", {"frame": "é€😀".encode(), "recv_ns": 123, "price": 0.1})
            pipe.zadd("z", {"m": 1e20})
            pipe.set("k", b"v" * 10_000)
            await pipe.execute()
        entries: Any = await client.xrange("s")
        assert entries[0][1] == {b"frame": "é€😀".encode(), b"recv_ns": b"123", b"price": b"0.1"}
        assert await client.zscore("z", "m") == 1e20
        assert await client.get("k") == b"v" * 10_000
        with pytest.raises(redis.exceptions.DataError):
            await client.set("k", None)  # type: ignore[arg-type]
        assert await client.get("k") == b"v" * 10_000  # the refused command sent nothing


# ------------------------------------------------------------------ pipelines reading their replies in one loop


async def _pipeline_story(client: Any) -> list[Any]:
    """The same pipelines and transactions, with replies, callbacks and errors, as seen by a caller."""
    out: list[Any] = []

    async def attempt(pipe: Any, **kw: Any) -> None:
        try:
            replies = await pipe.execute(**kw)
            out.append([repr(r) if isinstance(r, Exception) else r for r in replies])
        except redis.exceptions.RedisError as exc:
            out.append(("raised", type(exc).__name__, str(exc)))

    await client.delete("t:z", "t:str", "a1", "a2")
    for transaction in (True, False):
        pipe = client.pipeline(transaction=transaction)
        pipe.zadd("t:z", {"a": 1, "b": 2.5})
        pipe.zrange("t:z", 0, -1, withscores=True)  # a response callback: (member, float score) pairs
        pipe.set("t:str", "x")
        pipe.get("t:str")
        pipe.hgetall("t:none")
        pipe.exists("t:z")
        await attempt(pipe)
        pipe = client.pipeline(transaction=transaction)
        pipe.set("a1", 1)
        pipe.incr("t:str")  # fails when it runs (not an integer)
        pipe.get("a1")
        await attempt(pipe)
        pipe = client.pipeline(transaction=transaction)
        pipe.incr("t:str")
        pipe.get("a1")
        await attempt(pipe, raise_on_error=False)
        pipe = client.pipeline(transaction=transaction)
        pipe.execute_command("SET", "only-key")  # refused when queued: a transaction is aborted
        pipe.set("a2", 1)
        await attempt(pipe)
        out.append(await client.exists("a2"))
        await client.delete("a2")
    async with client.pipeline(transaction=True) as pipe:
        await pipe.watch("t:str")
        await client.set("t:str", "changed")
        pipe.multi()
        pipe.set("t:str", "mine")
        await attempt(pipe)
    out.append(await client.get("t:str"))
    await client.delete("t:z", "t:str", "a1", "a2")
    return out


@pytest.mark.redis
async def test_pipelines_read_in_one_loop_give_what_redis_pys_own_pipelines_give(redis_url: str) -> None:
    async with log.connect(redis_url) as client:
        assert isinstance(client.pipeline(), log._LeanPipeline)
        ours = await _pipeline_story(client)
    plain = redis.asyncio.Redis.from_url(redis_url)  # redis-py's own pipeline: the oracle
    try:
        assert type(plain.pipeline()) is redis.asyncio.client.Pipeline
        theirs = await _pipeline_story(plain)
    finally:
        await plain.aclose()
    assert ours == theirs
    assert ("raised", "WatchError", "Watched variable changed.") in ours and b"changed" in ours


@pytest.mark.redis
async def test_a_reply_that_does_not_come_in_time_drops_the_connection_and_the_next_one_works(redis_url: str) -> None:
    async with log.connect(redis_url, reply_timeout=0.2) as client:
        pipe = client.pipeline(transaction=False)
        pipe.set("k", "v")
        pipe.blpop(["t:never"], timeout=2)  # blocks past the reply timeout
        with pytest.raises(redis.exceptions.TimeoutError):
            await pipe.execute()
        pipe = client.pipeline(transaction=False)
        pipe.get("k")
        pipe.rpush("t:list", "x")
        assert await pipe.execute() == [b"v", 1]  # a fresh connection: no stale BLPOP reply read as these
        await client.delete("k", "t:list")


async def _watch_then_story(client: Any) -> list[Any]:
    out: list[Any] = []
    await client.mset({"w:a": "1", "w:b": "2"})
    await client.zadd("w:z", {"m1": 1, "m2": 5})
    for interfere in (False, True):
        async with client.pipeline(transaction=True) as pipe:
            got = await log.watch_then(
                pipe, ["w:a"], ("MGET", "w:a", "w:b", "w:none"), ("ZRANGEBYSCORE", "w:z", "-inf", 3)
            )
            out.append(got)
            if interfere:
                await client.set("w:a", "changed")  # another connection writes a watched key
            pipe.multi()
            pipe.set("w:b", "3")
            try:
                out.append(await pipe.execute())
            except redis.exceptions.WatchError:
                out.append("WatchError")
    async with client.pipeline(transaction=True) as pipe:
        with pytest.raises(redis.exceptions.ResponseError):
            await log.watch_then(pipe, ["w:a"], ("INCR", "w:z"))  # an error reply raises
    out.append(await client.mget("w:a", "w:b"))
    await client.delete("w:a", "w:b", "w:z")
    return out


@pytest.mark.redis
async def test_watch_then_reads_in_the_watch_round_trip_and_the_watch_holds(redis_url: str) -> None:
    async with log.connect(redis_url) as client:
        ours = await _watch_then_story(client)
    plain = redis.asyncio.Redis.from_url(redis_url)  # WATCH then one command at a time: the oracle
    try:
        theirs = await _watch_then_story(plain)
    finally:
        await plain.aclose()
    assert ours == theirs
    assert ours[0] == [[b"1", b"2", None], [b"m1"]] and ours[1] == [True] and ours[3] == "WatchError"
