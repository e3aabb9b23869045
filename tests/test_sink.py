"""The adapters' frame sink and what it is built from: the RESP packing of an XADD, the partition
router, and exactly-once appends when the Redis connection is cut in the middle of a batch.

Oracles: ``hiredis.pack_command`` for the packing; the symbol read by a JSON decoder and crc32 for the
routing; for the sink, the list of frames put in, against what XRANGE reads back from each partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import keys, log
from streams.adapters.sink import AppendRejected, FrameSink
from streams.partitions import route, router
from streams.resp import pack_xadd, xadd_prefix

RECORDINGS = Path(__file__).resolve().parents[1] / "tickfold/data/recordings"


# ------------------------------------------------------------------------------------------ packing


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(
    stream=st.text(min_size=1, max_size=40),
    frame=st.binary(max_size=2000),
    recv_ns=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_pack_xadd_is_the_command_hiredis_packs(stream: str, frame: bytes, recv_ns: int) -> None:
    command: tuple[Any, ...] = (b"XADD", stream.encode(), b"*", b"frame", frame, b"recv_ns", recv_ns)
    want = hiredis.pack_command(command)
    assert pack_xadd(xadd_prefix(stream), frame, recv_ns) == want


# ------------------------------------------------------------------------------------------ routing


def _recorded(name: str) -> list[bytes]:
    return [line.rstrip(b"\n") for line in (RECORDINGS / name).read_bytes().splitlines() if line.strip()]


def _first(value: object, key: str) -> str | None:
    """The first string value of ``key`` in document order (json keeps the order of the text)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key and isinstance(v, str):
                return v
            found = _first(v, key)
            if found is not None:
                return found
    elif isinstance(value, list):
        for v in value:
            found = _first(v, key)
            if found is not None:
                return found
    return None


def _decoded_symbol(exchange: str, frame: bytes) -> str | None:
    """The symbol as a JSON decoder reads it (Binance: the stream name's market, else the event's ``s``;
    Coinbase: the first ``product_id``)."""
    msg = json.loads(frame)
    if exchange == "binance":
        stream = msg.get("stream") if isinstance(msg, dict) else None
        symbol = stream.split("@")[0] if isinstance(stream, str) else _first(msg, "s")
    else:
        symbol = _first(msg, "product_id")
    return None if symbol is None else symbol.upper()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("exchange", "recording"),
    [
        ("binance", "binance_2021-04-04_btcusdt_ethusdt_dotusdt.frames.jsonl"),
        ("coinbase", "coinbase_2026-08-09_btc-usd_eth-usd.frames.jsonl"),
    ],
)
def test_the_router_sends_every_recorded_frame_to_its_symbols_partition(exchange: str, recording: str) -> None:
    frames = _recorded(recording)
    for partitions in (1, 2, 3, 4, 7):
        routed = router(exchange, partitions, home=partitions - 1)
        symbols = 0
        for frame in frames:
            symbol = _decoded_symbol(exchange, frame)
            want = partitions - 1 if symbol is None else zlib.crc32(symbol.encode()) % partitions
            if partitions == 1:
                want = 0
            symbols += symbol is not None
            assert routed(frame) == want, frame[:120]
            assert routed(frame) == want  # the remembered answer is the same
        assert symbols > len(frames) // 2  # mostly market data, not only heartbeats


@pytest.mark.unit
@settings(max_examples=400, deadline=None)
@given(
    exchange=st.sampled_from(["binance", "coinbase"]),
    partitions=st.integers(min_value=1, max_value=9),
    parts=st.lists(
        st.sampled_from(
            [b'{"stream":"', b'"s":"', b'"product_id":"', b'"tickfold":', b'"symbol":"', b"@", b'"', b"BTC", b"eth"]
        )
        | st.binary(max_size=6),
        max_size=8,
    ),
)
def test_the_router_agrees_with_route_on_any_bytes(exchange: str, partitions: int, parts: list[bytes]) -> None:
    frame = b"".join(parts)
    routed = router(exchange, partitions, home=0)
    assert routed(frame) == route(exchange, frame, partitions) == routed(frame)


# ------------------------------------------------------------------------------------- exactly once


class CuttingProxy:
    """A TCP proxy in front of Redis that cuts a client's connection after a given number of bytes sent
    to Redis: Redis gets the commands up to that byte (and applies the whole ones), the client gets no
    reply to any of them. Later connections are cut the same way after the next budget in ``cuts``;
    once the list is used up, connections pass through untouched."""

    def __init__(self, host: str, port: int, cuts: list[int]) -> None:
        self.host, self.port = host, port
        self.cuts = list(cuts)
        self.cut_connections = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(self.host, self.port)
        budget = self.cuts.pop(0) if self.cuts else None

        async def upstream() -> None:
            nonlocal budget
            while data := await client_r.read(65536):
                if budget is not None and len(data) >= budget:
                    server_w.write(data[:budget])  # the cut: the rest never reaches Redis
                    await server_w.drain()
                    self.cut_connections += 1
                    client_w.transport.abort()  # and the client hears nothing more
                    await asyncio.sleep(0.05)
                    server_w.close()
                    return
                if budget is not None:
                    budget -= len(data)
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if client_w.transport.is_closing():
                    return
                client_w.write(data)
            client_w.close()

        with contextlib.suppress(OSError):
            await asyncio.gather(upstream(), downstream())

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@contextlib.asynccontextmanager
async def proxy_to(redis_url: str, cuts: list[int]) -> AsyncIterator[CuttingProxy]:
    target = aioredis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    proxy = CuttingProxy(target["host"], target["port"], cuts)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def _frames(n: int) -> list[tuple[bytes, int]]:
    symbols = ["btcusdt", "ethusdt", "solusdt", "bnbusdt", "xrpusdt"]
    out = []
    for i in range(n):
        s = symbols[i % len(symbols) if i % 7 else (i // 7) % len(symbols)]
        frame = b'{"stream":"%s@aggTrade","data":{"e":"aggTrade","s":"%s","a":%d,"p":"1.%d"}}' % (
            s.encode(),
            s.upper().encode(),
            i,
            i % 97,
        )
        out.append((frame, 1_700_000_000_000_000_000 + i))
    return out


async def _appended(client: aioredis.Redis, exchange: str, partitions: int) -> dict[int, list[tuple[bytes, int]]]:
    out = {}
    for p in range(partitions):
        entries = await log.entries(client, keys.frames_stream(exchange, p))
        out[p] = [(fields[b"frame"], int(fields[b"recv_ns"])) for _, fields in entries]
    return out


def _expected(frames: list[tuple[bytes, int]], partitions: int) -> dict[int, list[tuple[bytes, int]]]:
    want: dict[int, list[tuple[bytes, int]]] = {p: [] for p in range(partitions)}
    for frame, ns in frames:
        symbol = json.loads(frame)["data"]["s"]
        want[zlib.crc32(symbol.encode()) % partitions].append((frame, ns))
    return want


@pytest.mark.redis
async def test_the_sink_appends_every_frame_once_in_order_when_connections_are_cut_mid_batch(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    frames = _frames(6000)
    # the first budgets go to the sink's setup connection (redis-py's pool) and its lean connection;
    # odd sizes cut inside a command, so a batch is partly applied and wholly unanswered
    cuts = [10_000_000, 20_011, 33_337, 5_003, 61_001, 17]
    caplog.set_level(logging.WARNING, logger="streams.adapters.sink")
    async with proxy_to(redis_url, cuts) as proxy, log.connect(proxy.url, reply_timeout=None) as client:
        sink = FrameSink(client, "binance", batch=512, partitions=4)
        writer = asyncio.create_task(sink.run())
        for i, (frame, ns) in enumerate(frames):
            await sink.put(frame, ns)
            if i % 200 == 0:
                await asyncio.sleep(0)
        await sink.close()
        async with asyncio.timeout(60):
            await writer
        assert proxy.cut_connections >= 4, "the connections were not cut: nothing was tested"
    async with log.connect(redis_url) as direct:
        got = await _appended(direct, "binance", 4)
    assert got == _expected(frames, 4)
    assert sink.appended == len(frames)
    assert sum("retrying" in r.getMessage() for r in caplog.records) >= 4


@pytest.mark.redis
async def test_an_error_reply_is_not_dropped_it_stops_the_sink(redis_url: str) -> None:
    frames = _frames(100)
    stream = keys.frames_stream("binance", 0)
    async with log.connect(redis_url, reply_timeout=None) as client:
        sink = FrameSink(client, "binance", batch=64, partitions=1)
        writer = asyncio.create_task(sink.run())
        await sink.put(*frames[0])
        for _ in range(1000):  # up to 10 s for the first frame
            if sink.appended:
                break
            await asyncio.sleep(0.01)
        await client.delete(stream)
        await client.set(stream, "not a stream")  # an XADD to it is refused: WRONGTYPE
        for frame, ns in frames[1:]:
            await sink.put(frame, ns)
        await sink.close()
        with pytest.raises(AppendRejected, match="WRONGTYPE"):
            async with asyncio.timeout(10):
                await writer
        assert sink.appended == 1
        assert await client.get(stream) == b"not a stream"
