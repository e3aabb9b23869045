"""End to end under load: a frame leaving the simulator -> Binance adapter -> raw stream -> candle
processor -> candle close on pub/sub -> indicator processor -> alert on a pub/sub subscriber.

Processes besides Redis: the simulator (a synthetic Binance market of SYMBOLS symbols at
``TRADES_PER_S`` aggTrades/s, the background load, plus their kline_1m updates; ``--quick``: a smoke run
at ``QUICK_TRADES_PER_S``), the adapter
(``build_adapter`` of a ``binance_spot`` row, as ``tickfold ingest-live`` runs it), one ``tickfold
process`` (candle and indicator processors, default settings but the close grace) and this one, whose
subscriber thread PSUBSCRIBEs to the candle closes and SUBSCRIBEs to the alerts, stamping each
message with ``time.time_ns()`` on arrival. All on one machine, one clock.

Timing from the frames themselves: the simulator's clock runs ``SPEED`` times faster than the wall
clock (``sim_ns = BASE + (wall_ns - t0) x SPEED``), so 1m candles close every 60/SPEED s and MACD-V
warms up in seconds. A frame's event time ``E`` (simulator ms, carried into the candle's ``event_ns``)
then names the wall instant the simulator made the frame to within 1/SPEED ms:
``latency = arrival - (t0 + (event_ns - BASE) / SPEED)``. A 1m close comes from its kline with
``x:true``; the close grace is long in simulator time (``CLOSE_GRACE_MS``) so that no candle closes by
watermark first (closes by another rule are counted and left out); a roll-up closes with its last 1m
candle and carries that frame's event time; an alert is timed from the frame that closed its candle.
Only frames made inside the measuring window count (after the first alert, which ends the warm-up).

Stages, 1m closes: the adapter's receive stamp, the raw entry's id (Redis's clock), the closes:{ex}
entry's id (the candle commit), the close on pub/sub; for the candles that raised an alert, the same and
the alerts:{ex} entry's id (the indicator commit) and the alert on pub/sub. Beside them, what the
machine gives any process while the pipeline runs (a probe child doing nothing else): how late a 1 ms
sleep wakes, a PING round trip, and ``len(HOPS)`` PINGs in a row (the waits of the path, see ``HOPS``,
with no work and no batching); the share of the window some task waited for a CPU (PSI); each
process's share of a core, Redis's from its INFO.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import redis
import uvloop

from benchmarks.adapter_ingest import (
    Conn,
    count_raw_frames,
    cpu_seconds,
    pct,
    raw_streams,
    start_child,
    wait_for,
)
from benchmarks.harness import Context, Figure, Target
from projections import store
from projections.candles import BY_BASE, BY_EXCHANGE
from streams import keys
from streams.adapters.factory import ExchangeRow, build_adapter
from streams.log import connect, parse_id
from streams.simulator import Simulator
from streams.symbols import bundled

EXCHANGE = "binance"
SYMBOLS = 20
TRADES_PER_S = 20_000  # the background load
QUICK_TRADES_PER_S = 5_000  # a smoke run's: it must pass on a busy machine too
SPEED = 1200  # simulator seconds per wall second: a 1m candle closes every 50 ms of wall time
KLINE_TICK_S = 0.02  # the simulator folds and sends klines this often (wall time): ~1,000 kline frames/s
CLOSE_GRACE_MS = 120_000  # simulator ms (100 ms wall): every 1m candle closes by its x:true kline first
# The waits in a row between a closing kline leaving the simulator and its alert reaching a subscriber,
# each a round trip to Redis or a process woken by one (none of them overlaps the one before):
HOPS = (
    "simulator -> adapter (WebSocket)",
    "adapter: XADD",
    "candle runner: fenced read (WATCH + lease MGET)",
    "candle runner: fenced read (MULTI XREADGROUP EXEC)",
    "candle commit: WATCH + position, watermark, due set",
    "candle commit: placement (Scope.load)",
    "candle commit: the series' buckets and roll-up bases",
    "candle commit: MULTI ... EXEC (+ XADD closes, PUBLISH)",
    "indicator runner: woken by XREAD BLOCK on closes",
    "indicator runner: fenced read (WATCH + lease MGET)",
    "indicator runner: fenced read (MULTI XREADGROUP EXEC)",
    "indicator commit: WATCH + lease, states",
    "indicator commit: placement (Scope.load)",
    "indicator commit: alert ids (ZMSCORE)",
    "indicator commit: MULTI ... EXEC (+ XADD alerts, PUBLISH)",
    "subscriber: woken by the PUBLISH",
)


# ----------------------------------------------------------------------------------- child processes


def _simulator_main(conn: Conn, t0: int, base: int, trades_per_s: int) -> None:
    """The simulator on the accelerated clock; sends (URL, symbols), stops on "stop" and sends its trade count."""

    def clock() -> int:
        return base + (time.time_ns() - t0) * SPEED

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Simulator(seed=9, clock=clock, record_sent=False, kline_update_interval=KLINE_TICK_S) as sim:
            feed = sim.add_synthetic(EXCHANGE, SYMBOLS, rate=trades_per_s)
            conn.send((sim.urls[EXCHANGE].ws_url, feed.symbols))
            await loop.run_in_executor(None, conn.recv)
            conn.send(feed.trades)

    uvloop.run(main())


def _adapter_main(conn: Conn, redis_url: str, ws_url: str, symbols: list[str]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        async with connect(redis_url, reply_timeout=None) as client:  # as ingest-live connects
            row = ExchangeRow(id=EXCHANGE, adapter_kind="binance_spot", ws_urls=[ws_url])
            adapter = build_adapter(row, client, symbols=tuple(symbols), timeframes=("1m",))
            task = asyncio.create_task(adapter.run(stop))
            await loop.run_in_executor(None, conn.recv)
            stop.set()
            await task
            conn.send(adapter.sink.appended)

    uvloop.run(main())


def _probe_main(conn: Conn, url: str) -> None:
    """The machine's floor while the pipeline runs, from a process doing nothing else: the oversleep of a
    1 ms sleep (how late the scheduler wakes a ready process) and a PING round trip to Redis (two such
    wake-ups, Redis's and ours). Every hop of the pipeline pays at least this, several times over."""
    client = redis.Redis.from_url(url)
    late: list[float] = []
    rtt: list[float] = []
    while not conn.poll():
        t = time.perf_counter()
        time.sleep(0.001)
        late.append((time.perf_counter() - t - 0.001) * 1e3)
        t = time.perf_counter()
        client.ping()
        rtt.append((time.perf_counter() - t) * 1e3)
    conn.recv()
    client.close()
    conn.send((late, rtt))


def _cpu_pressure_s() -> float:
    """Seconds so far during which some runnable task waited for a CPU (/proc/pressure/cpu; 0 without PSI)."""
    try:
        some = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0]
    except OSError:
        return 0.0
    return int(some.rsplit("total=", 1)[1]) / 1e6


def _tree_cpu_seconds(pid: int | None) -> float:
    """CPU seconds of a process and of its live descendants (``tickfold process`` may run children)."""
    total, todo = 0.0, [] if pid is None else [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_seconds(p)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return total


def _redis_cpu_seconds(client: redis.Redis) -> float:
    info: Any = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Subscriber:
    """A thread on a plain redis-py connection: every close and alert message, stamped on arrival."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub: Any = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self.pubsub.psubscribe(keys.candle_close_pattern(EXCHANGE))
        self.pubsub.subscribe(keys.alerts_channel(EXCHANGE))
        self.messages: list[tuple[bytes, bytes, int]] = []  # (pattern or channel, data, arrival ns)
        self.alerts_seen = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        alerts = keys.alerts_channel(EXCHANGE).encode()
        while not self.done.is_set():
            msg: Any = self.pubsub.get_message(timeout=0.1)
            if msg is not None:
                now = time.time_ns()
                self.messages.append((msg["channel"], msg["data"], now))
                if msg["channel"] == alerts:
                    self.alerts_seen += 1

    def stop(self) -> list[tuple[bytes, bytes, int]]:
        self.done.set()
        self.thread.join()
        self.pubsub.close()
        self.client.close()
        return self.messages


# ------------------------------------------------------------------------------------------- one run


@dataclass
class Run:
    close_ms: list[float]  # sorted
    alert_ms: list[float]  # sorted
    frames_per_s: float  # raw frames appended during the window: the load actually carried
    left_out: int  # closes by another rule than the kline's x:true (or a roll-up's base), and corrections
    unmatched_alerts: int  # alerts whose candle's close message was not seen (pub/sub is at-most-once)
    stages: dict[str, tuple[float, float]]  # (median, p99) ms from the frame's making to each stage (1m closes)
    alert_stages: dict[str, tuple[float, float]]  # the same for the 1m candles that raised an alert, to the alert
    behind_s: float  # how long after the window its last closes arrived (-1: not within the catch-up time)
    cpu: dict[str, float]  # share of one core each process used during the window
    floor: dict[str, tuple[float, float]]  # (median, p99) ms of the probe's 1 ms sleep oversleep and PING
    pressure: float  # share of the window during which some runnable task waited for a CPU


Series = tuple[str, str, int]  # (symbol, timeframe, start)


def _stamps(client: redis.Redis, since_ns: int) -> dict[str, dict[Series, float]]:
    """Where each closing kline was seen on its way, in wall ns: the adapter's receive stamp and the raw
    entry's id (Redis's clock, ms) per 1m series bucket; the closes:{ex} entry id (the candle commit);
    the alerts:{ex} entry id of the first alert on that candle (the indicator commit)."""
    symbols = bundled(EXCHANGE)
    out: dict[str, dict[Series, float]] = {"adapter receive": {}, "raw entry": {}, "candle commit": {}}
    out["close on pub/sub"] = {}  # filled from the subscriber's messages
    out["alert commit"] = {}  # only the candles that raised an alert (from here on)
    out["alert on pub/sub"] = {}
    since = str(since_ns // 1_000_000)  # entries appended from then on (ids are Redis's ms)
    for stream in raw_streams(client, EXCHANGE):
        for eid, fields in _all_entries(client, stream, since):
            raw = fields[b"frame"]
            if b'"x":true' in raw:
                k = _KLINE.decode(raw).data.k
                series = (symbols.canonical(k.s), k.i, k.t)
                out["adapter receive"].setdefault(series, int(fields[b"recv_ns"]))
                out["raw entry"].setdefault(series, parse_id(eid)[0] * 1e6)
    for eid, fields in _all_entries(client, keys.closes_stream(EXCHANGE), since):
        c = store.decode_closed(fields[b"event"]).candle
        out["candle commit"].setdefault((c.symbol, c.timeframe, c.start), parse_id(eid)[0] * 1e6)
    from processors.indicators import decode_alert

    for eid, fields in _all_entries(client, keys.alerts_stream(EXCHANGE), since):
        a = decode_alert(fields[b"alert"])
        out["alert commit"].setdefault((a.symbol, a.timeframe, a.start), parse_id(eid)[0] * 1e6)
    return out


def _all_entries(client: redis.Redis, stream: str, since: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    out: list[tuple[bytes, dict[bytes, bytes]]] = []
    after = since
    while True:
        chunk: Any = client.xrange(stream, min=after, count=10_000)
        out.extend(chunk)
        if len(chunk) < 10_000:
            return out
        after = "(" + chunk[-1][0].decode()


def _stages(
    stamps: dict[str, dict[Series, float]],
    origin: dict[Series, float],
    start: int,
    end: int,
    only: set[Series] | None = None,
) -> dict[str, tuple[float, float]]:
    out = {}
    for stage, seen in stamps.items():
        delays = [
            (seen[s] - made) / 1e6
            for s, made in origin.items()
            if s[1] == "1m" and start <= made < end and s in seen and (only is None or s in only)
        ]
        out[stage] = (statistics.median(delays), _p99(delays)) if delays else (float("nan"), float("nan"))
    return out


def _across(runs: list[Run], stage: str, which: int, alerting: bool = False) -> float:
    """The median over the runs of a stage's median (``which`` 0) or p99 (1)."""
    return statistics.median((r.alert_stages if alerting else r.stages)[stage][which] for r in runs)


def _across_floor(runs: list[Run], what: str, which: int) -> float:
    return statistics.median(r.floor[what][which] for r in runs)


def _chain(rtt: list[float], hops: int, samples: int = 20_000) -> tuple[float, float]:
    """(median, p99) of ``hops`` round trips in a row, each drawn from the probe's PINGs (seeded): what the
    path's waits alone cost on this machine now, with no work done and no batching."""
    if not rtt:
        return float("nan"), float("nan")
    rnd = random.Random(9)
    return _median_p99([sum(rnd.choices(rtt, k=hops)) for _ in range(samples)])


def _median_p99(values: list[float]) -> tuple[float, float]:
    return (statistics.median(values), _p99(values)) if values else (float("nan"), float("nan"))


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class _Kline(msgspec.Struct):
    s: str
    i: str
    t: int


class _KlineData(msgspec.Struct):
    k: _Kline


class _KlineFrame(msgspec.Struct):
    data: _KlineData


_KLINE = msgspec.json.Decoder(_KlineFrame)


def _process(url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TICKFOLD_CLOSE_GRACE_MS": str(CLOSE_GRACE_MS)}
    cmd = [sys.executable, "-m", "tickfold.cli", "--redis-url", url, "process", "--exchange", EXCHANGE]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _newest_close_ns(subscriber: Subscriber) -> int:
    """The event time of the newest candle close the subscriber has received (0: none yet)."""
    alerts = keys.alerts_channel(EXCHANGE).encode()
    for channel, data, _ in reversed(subscriber.messages[-50:]):
        if channel != alerts:
            return store.decode_closed(data).candle.event_ns
    return 0


def _catch_up(subscriber: Subscriber, done: Callable[[], bool], timeout: float) -> float:
    """Wait until the closes of frames made inside the window have arrived (``done``), then a little for
    their alerts; the seconds it took (the pipeline's lag at the window's end), or -1 if it never did."""
    began = time.monotonic()
    while not done():
        if time.monotonic() - began > timeout:
            return -1.0
        time.sleep(0.02)
    lag = time.monotonic() - began
    time.sleep(0.3)
    return lag


def _run_once(url: str, trades_per_s: int, window: float, catch_up: float) -> Run:
    client = redis.Redis.from_url(url)
    client.flushdb()
    t0 = time.time_ns()
    base = t0 // 60_000_000_000 * 60_000_000_000  # a minute boundary of the wall clock

    def wall(event_ns: int) -> float:
        return t0 + (event_ns - base) / SPEED

    subscriber = Subscriber(url)
    process = _process(url)
    ready = [keys.workers("candles", EXCHANGE), keys.workers("indicators", EXCHANGE)]
    wait_for(lambda: client.exists(*ready) == len(ready) or process.poll() is not None, 60, "tickfold process")
    sim = start_child(_simulator_main, t0, base, trades_per_s)
    adapter = None
    try:
        if not sim.conn.poll(60):
            raise RuntimeError("the simulator did not start")
        ws_url, symbols = sim.conn.recv()
        adapter = start_child(_adapter_main, url, ws_url, symbols)
        wait_for(lambda: subscriber.alerts_seen > 0 or process.poll() is not None, 90, "the first alert")
        if process.poll() is not None:
            raise RuntimeError(f"tickfold process exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        time.sleep(0.5)
        pids = {"simulator": sim.process.pid, "adapter": adapter.process.pid, "tickfold process": process.pid}
        probe = start_child(_probe_main, url)
        cpu0 = {name: _tree_cpu_seconds(pid) for name, pid in pids.items()}
        cpu0["redis"], pressure0 = _redis_cpu_seconds(client), _cpu_pressure_s()
        n0, start = count_raw_frames(client, EXCHANGE), time.time_ns()
        time.sleep(window)
        n1, end = count_raw_frames(client, EXCHANGE), time.time_ns()
        seconds = (end - start) / 1e9
        pressure = (_cpu_pressure_s() - pressure0) / seconds
        cpu = {name: (_tree_cpu_seconds(pid) - cpu0[name]) / seconds for name, pid in pids.items()}
        cpu["redis"] = (_redis_cpu_seconds(client) - cpu0["redis"]) / seconds
        late, rtt = probe.stop()
        floor = {"1 ms sleep, late by": _median_p99(late), "PING": _median_p99(rtt)}
        floor[f"{len(HOPS)} PINGs in a row"] = _chain(rtt, len(HOPS))
        behind = _catch_up(subscriber, lambda: wall(_newest_close_ns(subscriber)) >= end, catch_up)
        stamps = _stamps(client, start)
    finally:  # the simulator first: its feed would hold up the adapter's close handshake
        sim.stop()
        if adapter is not None:
            adapter.stop()
        process.terminate()
        process.wait(30)
        messages = subscriber.stop()
        client.flushdb()
        client.close()
    from processors.indicators import decode_alert  # (here: the spawned children need none of numba)

    alerts_channel = keys.alerts_channel(EXCHANGE).encode()
    origin: dict[tuple[str, str, int], float] = {}  # (symbol, timeframe, start) -> wall ns its closing frame was made
    closes, left_out, alert_messages = [], 0, []
    for channel, data, arrival in messages:
        if channel == alerts_channel:
            alert_messages.append((data, arrival))
            continue
        event = store.decode_closed(data)
        c = event.candle
        if event.correction or c.closed_by not in (BY_EXCHANGE, BY_BASE):
            left_out += 1
            continue
        made = wall(c.event_ns)
        origin[(c.symbol, c.timeframe, c.start)] = made
        stamps["close on pub/sub"].setdefault((c.symbol, c.timeframe, c.start), arrival)
        if start <= made < end:
            closes.append((arrival - made) / 1e6)
    for data, arrival in alert_messages:
        a = decode_alert(data)
        stamps["alert on pub/sub"].setdefault((a.symbol, a.timeframe, a.start), arrival)
    alerting = set(stamps["alert commit"])
    stages = _stages({k: v for k, v in stamps.items() if not k.startswith("alert")}, origin, start, end)
    alert_stages = _stages(stamps, origin, start, end, only=alerting)

    alerts, unmatched = [], 0
    for data, arrival in alert_messages:
        alert = decode_alert(data)
        made_at = origin.get((alert.symbol, alert.timeframe, alert.start))
        if made_at is None:
            unmatched += 1
        elif start <= made_at < end:
            alerts.append((arrival - made_at) / 1e6)
    if not closes or not alerts:
        raise RuntimeError(f"no closes ({len(closes)}) or alerts ({len(alerts)}) inside the window")
    load = (n1 - n0) / ((end - start) / 1e9)
    return Run(
        sorted(closes), sorted(alerts), load, left_out, unmatched, stages, alert_stages, behind, cpu, floor, pressure
    )


def run(ctx: Context) -> list[Figure]:
    window, catch_up = (3.0, 5.0) if ctx.quick else (20.0, 60.0)
    trades = QUICK_TRADES_PER_S if ctx.quick else TRADES_PER_S
    runs = [_run_once(ctx.url, trades, window, catch_up) for _ in range(ctx.repeats)]
    closes = sum(len(r.close_ms) for r in runs)
    alerts = sum(len(r.alert_ms) for r in runs)
    load = statistics.median(r.frames_per_s for r in runs)
    note = (
        f"{closes:,} closes and {alerts:,} alerts over {len(runs)} run(s) of {window:g} s; background load "
        f"{load:,.0f} raw frames/s appended ({trades:,} aggTrades/s asked + kline updates), {SYMBOLS} symbols, "
        f"simulator clock x{SPEED} (a 1m close every {60 / SPEED * 1000:.0f} ms per symbol); timed from each frame's "
        f"event time; left out: {sum(r.left_out for r in runs)} closes by another rule or corrections, "
        f"{sum(r.unmatched_alerts for r in runs)} alerts whose close message was missed; 1m closes, median / p99 ms "
        "from the frame's making to: "
        + ", ".join(f"{k} {_across(runs, k, 0):.1f} / {_across(runs, k, 1):.1f}" for k in runs[0].stages)
        + "; the 1m candles that raised an alert: "
        + ", ".join(
            f"{k} {_across(runs, k, 0, True):.1f} / {_across(runs, k, 1, True):.1f}" for k in runs[0].alert_stages
        )
        + "; share of a core used in the window: "
        + ", ".join(f"{k} {statistics.median(r.cpu[k] for r in runs):.0%}" for k in runs[0].cpu)
        + f" (of {os.cpu_count()} cores); some task waited for a CPU "
        + f"{statistics.median(r.pressure for r in runs):.0%} of the time (PSI); the machine's floor, from a probe "
        + "process doing nothing else, median / p99 ms: "
        + ", ".join(f"{k} {_across_floor(runs, k, 0):.2f} / {_across_floor(runs, k, 1):.2f}" for k in runs[0].floor)
        + "; the window's last closes arrived "
        + ", ".join(f"{r.behind_s:.2f} s" if r.behind_s >= 0 else f"not within {catch_up:g} s" for r in runs)
        + " after it ended (seconds there: the pipeline fell behind the load)"
    )
    figures: list[Figure] = []
    for what, label, series in (
        ("close", "frame -> candle close on pub/sub", [r.close_ms for r in runs]),
        ("alert", "frame -> alert on pub/sub", [r.alert_ms for r in runs]),
    ):
        for q, name in ((0.5, "p50"), (0.99, "p99"), (0.999, "p999")):
            figures.append(
                Figure(
                    f"e2e @ {trades // 1000}k frames/s: {label}, {name}",
                    "ms",
                    [pct(s, q) for s in series],
                    note=note if not figures else "",
                    key=f"e2e.{what}.{name}",
                    target=Target(5.0, at_least=False) if (what, name) == ("alert", "p99") else None,
                )
            )
    return figures
