"""A seeded random-walk market: trades at a fixed total rate, spread over the feed's symbols.

Trades are generated in batches (one per loop tick, a few ms apart) with times from the simulator clock
spread evenly over the tick, and handed to the exchange (:meth:`Binance.publish_trades` streams them as
aggTrades at once; :meth:`Coinbase.publish_trades` queues them for the next market_trades batch). The
periodic frames (klines, candles, market_trades batches, tickers, heartbeats) come from
:func:`periodic`, which the simulator runs once per exchange. When a connection falls behind, the
generator waits for it (it never queues without bound) and drops the backlog it could not generate.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from streams.simulator.binance import Binance
from streams.simulator.coinbase import Coinbase
from streams.simulator.config import Clock
from streams.simulator.markets import Series, Trade
from streams.simulator.refdata import Instrument

Venue = Binance | Coinbase
MAX_BATCH = 2000  # trades per loop tick at most, so the loop stays responsive


class SyntheticFeed:
    def __init__(self, venue: Venue, instruments: list[Instrument], *, rate: float, seed: int, clock: Clock) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive (messages per second)")
        self.venue = venue
        self.instruments = instruments
        self.series: list[Series] = [venue.add(inst) for inst in instruments]
        self.rate = rate
        self.clock = clock
        self.rng = random.Random(seed)
        rng = self.rng
        self.prices = [inst.start_price for inst in instruments]
        self.next_id = [rng.randrange(100_000_000, 900_000_000) for _ in instruments]
        self.next_tid = [i + rng.randrange(10_000_000, 90_000_000) for i in self.next_id]
        self.qty_tables = [self._qty_table(inst) for inst in instruments]
        self.trades = 0  # generated so far
        self.task: asyncio.Task[None] | None = None

    def _qty_table(self, inst: Instrument) -> list[int]:
        """256 trade sizes (whole steps) drawn from an exponential law with a mean of ~500 quote units."""
        price = inst.start_price / 10**inst.price_scale
        mean = 500 / price * 10**inst.qty_scale if price > 0 else inst.step
        return [max(int(self.rng.expovariate(1.0) * mean) // inst.step, 1) * inst.step for _ in range(256)]

    @property
    def symbols(self) -> list[str]:
        return [inst.symbol for inst in self.instruments]

    def generate(self, n: int, t0_ns: int, t1_ns: int) -> list[tuple[Series, Trade]]:
        rng, random_, bits = self.rng, self.rng.random, self.rng.getrandbits
        new = tuple.__new__
        span = max(t1_ns - t0_ns, 0)
        count = len(self.series)
        multi = isinstance(self.venue, Binance)
        out: list[tuple[Series, Trade]] = []
        for i in range(n):
            k = rng.randrange(count) if count > 1 else 0
            inst = self.instruments[k]
            r = random_()
            price = self.prices[k]
            if r < 0.25:
                price = max(price - inst.tick, inst.tick)
            elif r < 0.5:
                price += inst.tick
            self.prices[k] = price
            qty = self.qty_tables[k][bits(8)]
            trade_id = self.next_id[k]
            self.next_id[k] = trade_id + 1
            if multi:
                first = self.next_tid[k]
                last = first + (1 if r > 0.9 else 0) + (1 if r > 0.97 else 0)
                self.next_tid[k] = last + 1
            else:
                first = last = trade_id
            time_us = (t0_ns + (i + 1) * span // n) // 1000
            out.append((self.series[k], new(Trade, (trade_id, time_us, price, qty, r > 0.5, first, last))))
        self.trades += n
        return out

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        tick = min(0.05, max(0.002, 20.0 / self.rate))
        last = loop.time()
        last_ns = self.clock()
        budget = 0.0
        hub = self.venue.hub
        while True:
            await asyncio.sleep(tick)
            await hub.writable()
            now = loop.time()
            budget = min(budget + self.rate * (now - last), self.rate * 0.25 + 1.0)
            last = now
            n = min(int(budget), MAX_BATCH)
            now_ns = self.clock()
            if n:
                budget -= n
                # never older than a kline/candle fold that already happened: that bucket may be closed
                start_ns = min(max(last_ns, self.venue.last_tick_ns), now_ns)
                self.venue.publish_trades(self.generate(n, start_ns, now_ns), now_ns // 1_000_000)
            last_ns = now_ns


async def _every(seconds: float, action: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        due += seconds
        await asyncio.sleep(max(due - loop.time(), 0.0))
        action()
        if loop.time() > due + seconds:  # fell behind: don't burst to catch up
            due = loop.time()


async def periodic(venue: Venue, synthetic: Callable[[], set[str]]) -> None:
    """The timed frames of one exchange; ``synthetic()`` names the symbols synthetic feeds generate."""
    cfg = venue.config
    async with asyncio.TaskGroup() as tg:
        if isinstance(venue, Binance):
            tg.create_task(_every(cfg.kline_update_interval, lambda: venue.kline_tick(synthetic())))
        else:
            cb = venue
            tg.create_task(_every(cfg.heartbeat_interval, cb.heartbeat))
            tg.create_task(_every(cfg.trades_batch_interval, cb.flush_trades))
            tg.create_task(_every(cfg.candle_update_interval, lambda: cb.candle_tick(synthetic())))
