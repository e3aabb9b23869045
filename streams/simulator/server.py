"""The simulator: one loopback aiohttp server speaking Binance Spot and Coinbase Advanced Trade.

::

    async with Simulator(seed=1) as sim:
        sim.add_synthetic("binance", ["BTCUSDT"], rate=200)
        sim.urls["binance"].ws_url       # ws://127.0.0.1:<port>/binance/ws
        await sim.close("binance")       # a fault: drop every Binance connection

Faults are methods here and also ``POST /_sim/fault`` with ``{"fault": "<method>", "exchange": …,
…keyword arguments}``; ``GET /_sim/connections`` lists the connections. The clock (``clock()`` → ns since
the epoch) dates every event and REST answer; pacing uses the event loop's own clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from streams.simulator.binance import Binance
from streams.simulator.binance_rest import BinanceRest
from streams.simulator.binance_ws import BinanceWs
from streams.simulator.coinbase import Coinbase
from streams.simulator.coinbase_rest import CoinbaseRest
from streams.simulator.coinbase_ws import CoinbaseWs
from streams.simulator.config import Clock, SimConfig, default_clock
from streams.simulator.hub import ConnectionInfo, Hub, SentFrame
from streams.simulator.recorded_rest import RecordedDocs
from streams.simulator.refdata import instrument, pick_symbols
from streams.simulator.replay import ReplayFeed
from streams.simulator.synthetic import SyntheticFeed, periodic

log = logging.getLogger(__name__)
EXCHANGES = ("binance", "coinbase")
REST_PATHS = {"binance": "/binance", "coinbase": "/coinbase/api/v3/brokerage/market"}
Feed = SyntheticFeed | ReplayFeed
_FAULTS = ("close", "stall", "skip", "malformed", "server_shutdown", "rest_429", "refuse_connections")


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("simulator task %s failed", task.get_name(), exc_info=exc)


@dataclass(frozen=True)
class ExchangeUrls:
    ws_url: str  # Binance: the base; combined streams at f"{ws_url}/stream?streams=…"
    rest_url: str


class Simulator:
    def __init__(
        self,
        port: int = 0,
        *,
        seed: int = 42,
        clock: Clock | None = None,
        config: SimConfig | None = None,
        **options: Any,
    ) -> None:
        """``options`` override fields of ``config`` (see :class:`SimConfig`), e.g. ``ping_interval=0.2``."""
        self.config = dataclasses.replace(config or SimConfig(), **options)
        self.clock = clock or default_clock
        self.seed = seed
        self._port = port
        cfg = self.config
        self.hubs = {ex: Hub(ex, record=cfg.record_sent, max_outbox=cfg.max_outbox) for ex in EXCHANGES}
        self.binance = Binance(cfg, self.clock, self.hubs["binance"])
        self.coinbase = Coinbase(cfg, self.clock, self.hubs["coinbase"])
        self.recorded = RecordedDocs(dict(cfg.rest_documents))  # recorded REST bodies (set() to change)
        self.binance_rest = BinanceRest(self.binance, self.recorded)
        self.coinbase_rest = CoinbaseRest(self.coinbase, self.recorded)
        self.feeds: list[Feed] = []
        self.urls: dict[str, ExchangeUrls] = {}
        self._synthetic: dict[str, set[str]] = {ex: set() for ex in EXCHANGES}
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ---------------------------------------------------------------------------------------- life

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.add_routes(self._routes())
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self._port)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        base = f"{self.config.host}:{self._port}"
        self.urls = {
            "binance": ExchangeUrls(f"ws://{base}/binance/ws", f"http://{base}{REST_PATHS['binance']}"),
            "coinbase": ExchangeUrls(f"ws://{base}/coinbase/ws", f"http://{base}{REST_PATHS['coinbase']}"),
        }
        for ex in EXCHANGES:
            self._spawn(periodic(self.venue(ex), functools.partial(self._synthetic.__getitem__, ex)), f"sim-{ex}")
        for feed in self.feeds:
            self._start_feed(feed)

    async def stop(self) -> None:
        tasks = self._tasks + [f.task for f in self.feeds if f.task is not None]
        tasks += [*self.binance.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for feed in self.feeds:
            feed.task = None
        self._tasks.clear()
        await asyncio.gather(*(hub.close_all(1001, "simulator stopped") for hub in self.hubs.values()))
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(_log_failure)
        self._tasks.append(task)
        return task

    def _start_feed(self, feed: Feed) -> None:
        feed.task = asyncio.create_task(feed.run(), name=f"sim-feed-{feed.venue.exchange}")
        feed.task.add_done_callback(_log_failure)

    def venue(self, exchange: str) -> Binance | Coinbase:
        if exchange == "binance":
            return self.binance
        if exchange == "coinbase":
            return self.coinbase
        raise ValueError(f"unknown exchange {exchange!r}; the simulator speaks {', '.join(EXCHANGES)}")

    # --------------------------------------------------------------------------------------- feeds

    def add_synthetic(
        self, exchange: str, symbols: list[str] | int, *, rate: float, seed: int | None = None
    ) -> SyntheticFeed:
        """A seeded random-walk market on ``symbols`` (names, or how many real ones to pick) at ``rate``
        trades per second in total. Binance symbols may be given as ``BASE-QUOTE`` too."""
        venue = self.venue(exchange)
        names = pick_symbols(exchange, symbols) if isinstance(symbols, int) else list(symbols)
        instruments = []
        for name in names:
            if exchange == "binance":
                base, _, quote = name.upper().partition("-")
                instruments.append(instrument(exchange, base + quote, base if quote else "", quote))
            else:
                instruments.append(instrument(exchange, name.upper()))
        feed_seed = self.seed * 1_000_003 + len(self.feeds) if seed is None else seed
        feed = SyntheticFeed(venue, instruments, rate=rate, seed=feed_seed, clock=self.clock)
        self._synthetic[exchange].update(feed.symbols)
        self._add(feed)
        return feed

    def add_recording(
        self, exchange: str, path: str | Path, *, loop: bool = True, speed: float = 1.0, align: bool = True
    ) -> ReplayFeed:
        """Replay a recorded session (see :mod:`streams.simulator.replay`); ``speed=0``: as fast as possible."""
        feed = ReplayFeed(self.venue(exchange), Path(path), loop=loop, speed=speed, align=align, clock=self.clock)
        self._add(feed)
        return feed

    def _add(self, feed: Feed) -> None:
        self.feeds.append(feed)
        if self.running:
            self._start_feed(feed)

    # ----------------------------------------------------------------------------------- inspection

    def sent(self, exchange: str) -> list[SentFrame]:
        return self.hubs[self.venue(exchange).exchange].sent()

    def connections(self, exchange: str) -> list[ConnectionInfo]:
        return self.hubs[self.venue(exchange).exchange].infos()

    def connect_times(self, exchange: str) -> list[float]:
        """``time.monotonic()`` of every WebSocket handshake attempt, refused ones included."""
        return list(self.hubs[self.venue(exchange).exchange].attempts)

    async def wait_connections(self, exchange: str, n: int = 1) -> list[ConnectionInfo]:
        """Wait until ``n`` connections are open with at least one subscription each (wrap it in
        ``asyncio.timeout``)."""
        hub = self.hubs[self.venue(exchange).exchange]
        await hub.wait_for(lambda: sum(1 for c in hub.open.values() if c.subscriptions) >= n)
        return [c.info() for c in hub.open.values() if c.subscriptions]

    def describe(self) -> list[str]:
        """What ``tickfold simulate`` prints: the URLs, how to inject faults, and the feeds."""
        if not self.urls:
            return ["simulator not started"]
        b, c = self.urls["binance"], self.urls["coinbase"]
        lines = [
            f"binance  ws   {b.ws_url}  (combined: {b.ws_url}/stream?streams=btcusdt@aggTrade/btcusdt@kline_1m)",
            f"binance  rest {b.rest_url}  (/api/v3/exchangeInfo, /ticker/24hr, /klines, /aggTrades)",
            f"coinbase ws   {c.ws_url}",
            f"coinbase rest {c.rest_url}  (/products, /products/<id>/candles)",
            f"faults   POST http://{self.config.host}:{self._port}/_sim/fault "
            '{"fault": "close", "exchange": "binance"}  (faults: ' + ", ".join(_FAULTS) + ")",
        ]
        lines += [f"rest     {endpoint}: recorded document" for endpoint in self.recorded.endpoints()]
        for feed in self.feeds:
            if isinstance(feed, SyntheticFeed):
                what = f"synthetic {', '.join(feed.symbols)} at {feed.rate:g} trades/s"
            else:
                what = f"replay {feed.path.name} (loop={feed.loop}, speed={feed.speed:g})"
            lines.append(f"feed     {feed.venue.exchange}: {what}")
        return lines

    # ---------------------------------------------------------------------------------------- faults

    async def close(self, exchange: str, code: int = 1001, *, abrupt: bool = False) -> None:
        """Close every connection of ``exchange`` (a forced disconnect) with ``code``; ``abrupt``: drop the
        TCP connections without a close frame instead (the client sees 1006)."""
        await self.venue(exchange).hub.close_all(code, "closed by the simulator", abrupt=abrupt)

    async def stall(self, exchange: str, seconds: float) -> None:
        """Send nothing at all (heartbeats and pings too) on the current connections for ``seconds``;
        what they should have got is held and follows afterwards; new connections are not affected."""
        self.venue(exchange).hub.stall(seconds)

    async def skip(self, exchange: str, n: int = 1, *, symbol: str | None = None) -> None:
        """Coinbase: skip ``n`` sequence numbers on every connection. Binance: keep the next ``n`` aggTrades
        of ``symbol`` (default: every symbol) off the stream; they still exist for REST backfill."""
        venue = self.venue(exchange)
        if isinstance(venue, Binance):
            venue.skip(n, symbol)
        else:
            venue.skip(n)

    async def malformed(self, exchange: str) -> None:
        """Send one truncated JSON frame to every connection."""
        self.venue(exchange).malformed()

    async def server_shutdown(self, exchange: str = "binance", *, grace: float | None = None) -> None:
        """Binance: the ``serverShutdown`` event on every connection, closed (1001) ``grace`` s later."""
        venue = self.venue(exchange)
        if not isinstance(venue, Binance):
            raise ValueError("server_shutdown is a Binance event")
        venue.server_shutdown(self.config.shutdown_grace if grace is None else grace)

    async def rest_429(self, exchange: str, times: int = 1, retry_after: int = 1) -> None:
        """The next ``times`` REST requests to ``exchange`` get 429 with ``Retry-After: retry_after``."""
        rest = self.binance_rest if self.venue(exchange) is self.binance else self.coinbase_rest
        rest.fault.times += times
        rest.fault.retry_after = retry_after

    async def refuse_connections(self, exchange: str, times: int = 1) -> None:
        """Answer the next ``times`` WebSocket handshakes with HTTP 503."""
        self.venue(exchange).hub.refuse += times

    # ---------------------------------------------------------------------------------------- routes

    def _routes(self) -> list[web.RouteDef]:
        b, c = BinanceWs(self.binance).handle, CoinbaseWs(self.coinbase).handle
        return [
            web.get("/binance/ws", b),
            web.get("/binance/ws/{kind:ws|stream}", b),
            web.get("/binance/ws/{kind:ws}/{streams:.+}", b),
            web.get("/coinbase/ws", c),
            *self.binance_rest.routes(),
            *self.coinbase_rest.routes(),
            web.post("/_sim/fault", self._fault_endpoint),
            web.get("/_sim/connections", self._connections_endpoint),
        ]

    async def _fault_endpoint(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            args = dict(body)
            name = args.pop("fault")
            if name not in _FAULTS:
                raise ValueError(f"unknown fault {name!r}; one of {', '.join(_FAULTS)}")
            method: Callable[..., Awaitable[None]] = getattr(self, name)
            await method(**args)
        except (ValueError, TypeError, KeyError) as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def _connections_endpoint(self, request: web.Request) -> web.Response:
        wanted = request.query.get("exchange")
        out = [dataclasses.asdict(info) for ex in EXCHANGES if wanted in (None, ex) for info in self.connections(ex)]
        return web.Response(text=json.dumps(out), content_type="application/json")
