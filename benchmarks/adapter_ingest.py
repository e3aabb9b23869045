"""One Binance adapter process ingesting from the simulator: full-speed throughput, latency at set rates.

Three processes on the machine besides Redis: the simulator (a synthetic Binance market), the adapter
(``build_adapter`` of a ``binance_spot`` row, as ``tickfold ingest-live`` runs it) and this one, which
orchestrates and reads Redis. Simulator, adapter and bare client each run on their own uvloop event
loop in their own process (spawned), so they never share a core-bound loop.

Throughput: the simulator is asked for far more trades per second than it can make, so it generates
flat out; its feed waits whenever the connection's outbox is full, so whichever side is slower sets
the pace. After a warm-up, the frames appended to Redis over a fixed window (counted with XLEN) give
frames/s. The same simulator feeding a bare ``websockets`` client (``recv`` and count, nothing else)
gives the rate with no adapter: the ceiling on the network side; redis-benchmark's XADD is the ceiling
on the Redis side.

Latency: the simulator runs at a stated rate and records the wall-clock time (``time.time_ns``, after
``transport.write``) of every frame it sends; a reader thread here blocks in XREAD on the raw stream
and stamps each entry's arrival with ``time.time_ns`` (one machine, one clock). Frames are matched by
their exact text (every aggTrade is unique). The entry also carries the adapter's own receive stamp
(``recv_ns``), which splits the latency into the WebSocket hop and the sink (queue + pipelined XADD).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import uvloop
import websockets

from benchmarks.harness import Context, Figure, Target
from streams import keys
from streams.adapters.base import MAX_FRAME_BYTES
from streams.adapters.binance import stream_names
from streams.adapters.factory import ExchangeRow, build_adapter
from streams.log import connect
from streams.simulator import Simulator

EXCHANGE = "binance"
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")
TIMEFRAMES = ("1m",)
FLAT_OUT = 100_000_000.0  # trades/s asked of the simulator: far beyond what it can generate
LATENCY_RATES = (1_000, 10_000)

Conn = multiprocessing.connection.Connection


# ----------------------------------------------------------------------- where the raw frames are
# The one place that knows which Redis streams hold an exchange's raw frames. Found by name, so the
# single ``frames:{id}`` stream and its partitioned successor ``frames:{id}:p{n}`` both count; the
# dead-letter stream is not raw frames. To name the streams through the partition API instead,
# change raw_streams and nothing else.


def raw_streams(client: redis.Redis, exchange_id: str) -> list[str]:
    ex = keys.exchange_part(exchange_id)
    dead = keys.dead_letter_stream(exchange_id)
    found = {k.decode() for k in client.scan_iter(match=f"frames:{ex}*", _type="stream", count=1000)}
    return sorted(n for n in found if n != dead and (n == f"frames:{ex}" or n.startswith(f"frames:{ex}:")))


def count_raw_frames(client: redis.Redis, exchange_id: str) -> int:
    """Raw frame entries of an exchange in Redis (XLEN, summed over its raw streams)."""
    return sum(int(client.xlen(s)) for s in raw_streams(client, exchange_id))


def clear_raw_frames(client: redis.Redis, exchange_id: str) -> None:
    """Delete the raw frames, the partition count if any, and the control stream: every run starts empty."""
    ex = keys.exchange_part(exchange_id)
    stale = [
        k for k in client.scan_iter(match=f"frames:{ex}*", count=1000) if k.decode() != keys.dead_letter_stream(ex)
    ]
    client.delete(*stale, keys.CONTROL_STREAM)


# ----------------------------------------------------------------------------------- child processes


def _simulator_main(conn: Conn, rate: float, record: bool) -> None:
    """The simulator: one synthetic Binance market on SYMBOLS at ``rate`` trades/s, until told to stop.
    Sends its WebSocket URL, then on "stop": (trades generated, [(frame text, sent_ns)] if ``record``)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Simulator(seed=7, record_sent=record) as sim:
            feed = sim.add_synthetic(EXCHANGE, list(SYMBOLS), rate=rate)
            conn.send(sim.urls[EXCHANGE].ws_url)
            await loop.run_in_executor(None, conn.recv)
            sent = [(f.text.encode(), f.sent_ns) for f in sim.sent(EXCHANGE)] if record else []
            conn.send((feed.trades, sent))

    uvloop.run(main())


def _adapter_main(conn: Conn, redis_url: str, ws_url: str) -> None:
    """The Binance adapter as production builds it (factory, FrameSink, ControlEmitter) until "stop";
    then it drains its sink and sends the number of frames it appended."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        async with connect(redis_url) as client:
            row = ExchangeRow(id=EXCHANGE, adapter_kind="binance_spot", ws_urls=[ws_url])
            adapter = build_adapter(row, client, symbols=SYMBOLS, timeframes=TIMEFRAMES)
            task = asyncio.create_task(adapter.run(stop))
            await loop.run_in_executor(None, conn.recv)
            stop.set()
            await task
            conn.send(adapter.sink.appended)

    uvloop.run(main())


def _bare_client_main(conn: Conn, ws_url: str, counter: Any) -> None:
    """A bare websockets client on the adapter's URL and connection options: receive and count, no more."""

    async def main() -> None:
        url = ws_url.rstrip("/") + "/stream?streams=" + "/".join(stream_names(SYMBOLS, TIMEFRAMES))
        done = threading.Event()

        def wait_for_stop() -> None:
            conn.recv()
            done.set()

        threading.Thread(target=wait_for_stop, daemon=True).start()
        n = 0
        async with websockets.connect(
            url, max_size=MAX_FRAME_BYTES, ping_interval=None, proxy=None, compression=None
        ) as ws:
            with contextlib.suppress(websockets.ConnectionClosed):  # the simulator stops first
                while not done.is_set():
                    await ws.recv(decode=False)
                    n += 1
                    if not n & 255:
                        counter.value = n
        done.wait()
        conn.send(n)

    uvloop.run(main())


@dataclass
class Child:
    process: multiprocessing.process.BaseProcess
    conn: Conn

    def stop(self, timeout: float = 30.0) -> Any:
        self.conn.send("stop")
        if not self.conn.poll(timeout):
            self.process.kill()
            raise RuntimeError(f"{self.process.name} did not answer within {timeout:.0f}s")
        reply = self.conn.recv()
        self.process.join(timeout)
        return reply


def start_child(target: Callable[..., None], *args: Any) -> Child:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=target, args=(child, *args), name=target.__name__.strip("_"), daemon=True)
    process.start()
    return Child(process, parent)


def _start_simulator(rate: float, *, record: bool) -> tuple[Child, str]:
    sim = start_child(_simulator_main, rate, record)
    if not sim.conn.poll(60):
        sim.process.kill()
        raise RuntimeError("the simulator did not start")
    return sim, sim.conn.recv()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------ throughput


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Throughput:
    frames_per_s: float  # appended (adapter) or received (bare client) per wall second
    per_cpu_s: float  # per CPU second of the adapter / bare client process
    sim_per_cpu_s: float  # per CPU second of the simulator process: what the feed costs
    share: float  # CPU share (of one core) of the adapter / bare client over the window
    sim_share: float  # the simulator's share


def _window(n0: int, n1: int, t0: float, t1: float, cpu: tuple[float, float], sim: tuple[float, float]) -> Throughput:
    n, wall = n1 - n0, t1 - t0
    used, sim_used = max(cpu[1] - cpu[0], 0.01), max(sim[1] - sim[0], 0.01)
    return Throughput(n / wall, n / used, n / sim_used, used / wall, sim_used / wall)


def _adapter_throughput(url: str, warm: float, window: float) -> Throughput:
    """Frames appended over the window, per wall second and per CPU second of the adapter process (which
    does not depend on how much of the machine the flat-out simulator and others leave the adapter)."""
    client = redis.Redis.from_url(url)
    clear_raw_frames(client, EXCHANGE)
    sim, ws_url = _start_simulator(FLAT_OUT, record=False)
    adapter = start_child(_adapter_main, url, ws_url)
    pids = (adapter.process.pid, sim.process.pid)
    try:
        wait_for(lambda: count_raw_frames(client, EXCHANGE) > 0, 60, "the adapter's first frame")
        time.sleep(warm)
        n0, t0, c0, s0 = count_raw_frames(client, EXCHANGE), time.perf_counter(), *map(cpu_seconds, pids)
        time.sleep(window)
        n1, t1, c1, s1 = count_raw_frames(client, EXCHANGE), time.perf_counter(), *map(cpu_seconds, pids)
    finally:  # the simulator first: a flat-out feed would hold up the adapter's close handshake
        sim.stop()
        adapter.stop()
        clear_raw_frames(client, EXCHANGE)
        client.close()
    return _window(n0, n1, t0, t1, (c0, c1), (s0, s1))


def _bare_client_throughput(warm: float, window: float) -> Throughput:
    ctx = multiprocessing.get_context("spawn")
    counter: Any = ctx.Value("q", 0, lock=False)  # shared memory, written every 256 frames
    sim, ws_url = _start_simulator(FLAT_OUT, record=False)
    bare = start_child(_bare_client_main, ws_url, counter)
    pids = (bare.process.pid, sim.process.pid)
    try:
        wait_for(lambda: counter.value > 0, 60, "the bare client's first frames")
        time.sleep(warm)
        n0, t0, c0, s0 = int(counter.value), time.perf_counter(), *map(cpu_seconds, pids)
        time.sleep(window)
        n1, t1, c1, s1 = int(counter.value), time.perf_counter(), *map(cpu_seconds, pids)
    finally:  # the simulator first: a flat-out feed would hold up the client's close handshake
        sim.stop()
        bare.stop()
    return _window(n0, n1, t0, t1, (c0, c1), (s0, s1))


# --------------------------------------------------------------------------------------------- latency


@dataclass
class Arrival:
    arrival_ns: int  # when XREAD handed the entry to the reader
    recv_ns: int  # the adapter's receive stamp
    id_ms: int  # Redis's clock when it appended the entry (entry id, ms)


class RawReader:
    """A thread that blocks in XREAD on the raw stream(s) and stamps every entry on arrival.

    The streams are looked up again every 0.25 s (every 1 ms until the first exists) and read from the
    start, so none is missed; entries of a stream found late get late stamps, which only matters in the
    first moments of a run (all symbols trade within milliseconds; the warm-up is discarded)."""

    def __init__(self, url: str, exchange_id: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.exchange_id = exchange_id
        self.positions: dict[Any, Any] = {}  # stream -> last id read; the streams were cleared before
        self.arrivals: dict[bytes, Arrival] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _discover(self) -> None:
        for stream in raw_streams(self.client, self.exchange_id):
            self.positions.setdefault(stream.encode(), b"0-0")

    def _read(self, block: int | None) -> int:
        reply: Any = self.client.xread(self.positions, count=10_000, block=block)
        now = time.time_ns()
        n = 0
        for stream, entries in reply or []:
            for eid, fields in entries:
                self.arrivals[fields[b"frame"]] = Arrival(now, int(fields[b"recv_ns"]), int(eid.split(b"-")[0]))
            if entries:
                self.positions[stream] = entries[-1][0]
                n += len(entries)
        return n

    def _loop(self) -> None:
        next_discovery = 0.0
        while not self.done.is_set():
            if time.monotonic() >= next_discovery:
                self._discover()
                next_discovery = time.monotonic() + (0.25 if self.positions else 0.001)
            if self.positions:
                self._read(100)
            else:
                time.sleep(0.001)
        self._discover()
        while self.positions and self._read(None):  # drain what came before the stop
            pass

    def stop(self) -> dict[bytes, Arrival]:
        self.done.set()
        self.thread.join()
        self.client.close()
        return self.arrivals


@dataclass
class LatencyRun:
    total_ms: list[float]  # simulator send -> entry read by XREAD, sorted
    hop_ms: list[float]  # simulator send -> adapter receive stamp, sorted
    id_ms: list[float]  # simulator send -> entry id's ms (Redis's append clock, floored to the ms), sorted
    frames: int
    missing: int


def pct(values: Sequence[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def _latency(url: str, rate: float, warm: float, window: float) -> LatencyRun:
    client = redis.Redis.from_url(url)
    clear_raw_frames(client, EXCHANGE)
    reader = RawReader(url, EXCHANGE)
    sim, ws_url = _start_simulator(rate, record=True)
    adapter = start_child(_adapter_main, url, ws_url)
    try:
        wait_for(lambda: bool(reader.arrivals), 60, "the adapter's first frame")
        time.sleep(warm + window)
        cut_ns = time.time_ns() - 200_000_000  # frames sent later may be cut off by the stop
    finally:
        adapter.stop()
        arrivals = reader.stop()
        _trades, sent = sim.stop()
        clear_raw_frames(client, EXCHANGE)
        client.close()
    first_ns = min(ns for _, ns in sent)
    start_ns = first_ns + int(warm * 1e9)
    total, hop, by_id = [], [], []
    missing = 0
    for text, sent_ns in sent:
        if not start_ns <= sent_ns < cut_ns:
            continue
        got = arrivals.get(text)
        if got is None:
            missing += 1
            continue
        total.append((got.arrival_ns - sent_ns) / 1e6)
        hop.append((got.recv_ns - sent_ns) / 1e6)
        by_id.append(got.id_ms - sent_ns / 1e6)
    if not total:
        raise RuntimeError(f"no frames matched at {rate:g}/s ({len(sent)} sent, {len(arrivals)} read)")
    return LatencyRun(sorted(total), sorted(hop), sorted(by_id), len(total), missing)


# ------------------------------------------------------------------------------------------------ run


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def run(ctx: Context) -> list[Figure]:
    warm, window = (0.5, 1.5) if ctx.quick else (2.0, 5.0)
    lat_warm, lat_window = (0.5, 1.0) if ctx.quick else (1.0, 10.0)
    xadd, xadd_single = ctx.ceilings.xadd_pipelined(), ctx.ceilings.xadd_single()
    bare: list[Throughput] = []
    adapter: list[Throughput] = []
    for _ in range(ctx.repeats):  # interleaved: the bare client and the adapter see the same machine
        bare.append(_bare_client_throughput(warm, window))
        adapter.append(_adapter_throughput(ctx.url, warm, window))
    bare_median = _median([b.frames_per_s for b in bare])

    def shares(runs: list[Throughput]) -> str:
        return (
            f"CPU share of one core over the window: client/adapter {_median([r.share for r in runs]):.2f}, "
            f"simulator {_median([r.sim_share for r in runs]):.2f}"
        )

    figures = [
        Figure(
            "simulator -> bare websockets client, no adapter (frames received)",
            "frames/s",
            [b.frames_per_s for b in bare],
            note=f"simulator flat out ({len(SYMBOLS)} synthetic symbols, aggTrade + kline_1m), one client process "
            f"that only recv()s and counts; {window:g} s window after {warm:g} s warm-up; {shares(bare)}; the "
            f"client receives {_median([b.per_cpu_s for b in bare]):,.0f} frames per CPU second of its own "
            "(websockets' receive path alone), the simulator sends "
            f"{_median([b.sim_per_cpu_s for b in bare]):,.0f} per CPU second of its own: on one whole core no "
            "client of it receives more, and on 2 cores it competes with the client for them",
            key="adapter.bare_client",
        ),
        Figure(
            "adapter ingest: simulator -> Binance adapter -> Redis, 1 process (XLEN)",
            "frames/s",
            [a.frames_per_s for a in adapter],
            "bare client (same simulator)",
            bare_median,
            note=f"frames appended to the raw stream over {window:g} s (XLEN before/after) after {warm:g} s "
            "warm-up; simulator flat out in its own process; the adapter is build_adapter(binance_spot), uvloop; "
            + shares(adapter),
            more_ceilings=[("redis-benchmark XADD", xadd), ("redis-benchmark XADD, 1 client", xadd_single)],
            key="adapter.ingest",
            target=Target(0.4, of="redis-benchmark XADD"),
        ),
        Figure(
            "adapter ingest per CPU second of the adapter process",
            "frames/CPU-s",
            [a.per_cpu_s for a in adapter],
            note="the same window; CPU time (user + system) of the adapter process from /proc: the adapter's "
            "own cost per frame, whatever share of the cores the flat-out simulator and others leave it; "
            f"the simulator spent 1 CPU second per {_median([a.sim_per_cpu_s for a in adapter]):,.0f} of them",
            key="adapter.ingest_cpu",
        ),
    ]
    for rate in LATENCY_RATES:
        runs = [_latency(ctx.url, rate, lat_warm, lat_window) for _ in range(ctx.repeats)]
        frames = sum(r.frames for r in runs)
        missing = sum(r.missing for r in runs)
        if missing:
            raise RuntimeError(f"{missing} frames sent at {rate:,}/s never reached Redis")
        how = (
            f"{frames:,} frames over {len(runs)} run(s) of {lat_window:g} s; simulator send (time_ns after "
            "transport.write) -> entry returned by a blocking XREAD here (time_ns), same clock"
        )
        hop = [pct(r.hop_ms, 0.5) for r in runs]
        by_id = [pct(r.id_ms, 0.5) for r in runs]
        figures += [
            Figure(f"latency @ {rate:,}/s: send -> in Redis (XREAD), p50", "ms", [pct(r.total_ms, 0.5) for r in runs],
                   note=how + f"; of which send -> adapter recv stamp p50 {_median(hop):.3f} ms; "
                   f"by entry-id ms (Redis's clock, floored to 1 ms) p50 {_median(by_id):.3f} ms (+0..1 ms)",
                   key=f"adapter.latency_{rate}.p50"),
            Figure(f"latency @ {rate:,}/s: send -> in Redis (XREAD), p99", "ms", [pct(r.total_ms, 0.99) for r in runs],
                   note=f"send -> adapter recv stamp p99 {_median([pct(r.hop_ms, 0.99) for r in runs]):.3f} ms",
                   key=f"adapter.latency_{rate}.p99"),
            Figure(f"latency @ {rate:,}/s: send -> in Redis (XREAD), max", "ms", [r.total_ms[-1] for r in runs],
                   key=f"adapter.latency_{rate}.max"),
        ]  # fmt: skip
    return figures
