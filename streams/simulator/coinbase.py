"""Coinbase Advanced Trade market side: products, their trades, candles and tickers, frames, faults.

Frames are built as ``(head, tail)`` around ``sequence_num``, which each connection fills in when it
writes (per connection, from 0, across all channels). Synthetic markets: market_trades batches every
``trades_batch_interval`` s (newest first, ``side`` the maker side), a ticker update per batch, the open
5-minute candle every ``candle_update_interval`` s when it changed, and heartbeats every second.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from streams.simulator.config import Clock, SimConfig
from streams.simulator.hub import Connection, Hub
from streams.simulator.markets import Agg, Series, Trade
from streams.simulator.refdata import Instrument
from streams.simulator.wire import go_time_string, plain, rfc3339_nano

CANDLE_S = 300


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass
class _Tracker:
    agg: Agg
    seen: int
    sent: tuple[int, int, int] | None = None


class Coinbase:
    exchange = "coinbase"

    def __init__(self, config: SimConfig, clock: Clock, hub: Hub) -> None:
        self.config = config
        self.clock = clock
        self.hub = hub
        self.instruments: dict[str, Instrument] = {}
        self.series: dict[str, Series] = {}
        self.candles: dict[str, dict[int, dict[str, str]]] = {}  # product → start → candle as sent
        self.tickers: dict[str, dict[str, str]] = {}  # product → last ticker event as sent
        self.pending: dict[str, list[Trade]] = {}  # synthetic trades waiting for the next batch
        self.stats: dict[str, Agg] = {}  # synthetic: running totals for the ticker
        self._trackers: dict[str, _Tracker] = {}
        self._started_ns = time.monotonic_ns()
        self.last_tick_ns = 0  # clock at the last candle fold: later trades must not be older

    def add(self, inst: Instrument, *, price_scale: int | None = None, qty_scale: int | None = None) -> Series:
        if inst.symbol in self.series:
            raise ValueError(f"coinbase product {inst.symbol} is already fed by another feed")
        self.instruments[inst.symbol] = inst
        series = Series(
            inst.symbol,
            price_scale=inst.price_scale if price_scale is None else price_scale,
            qty_scale=inst.qty_scale if qty_scale is None else qty_scale,
            max_trades=self.config.max_trades,
        )
        self.series[inst.symbol] = series
        self.candles[inst.symbol] = {}
        return series

    # ------------------------------------------------------------------------------------- framing

    def parts(self, channel: str, events: str, ts_ns: int | None = None) -> tuple[bytes, bytes]:
        ts = rfc3339_nano(self.clock() if ts_ns is None else ts_ns)
        head = f'{{"channel":"{channel}","client_id":"","timestamp":"{ts}","sequence_num":'
        return head.encode(), f',"events":{events}}}'.encode()

    def publish(self, channel: str, products: list[str], item: tuple[bytes, bytes]) -> None:
        if len(products) == 1:
            self.hub.push(f"{channel}:{products[0]}", item)
            return
        conns: set[Connection] = set()
        for p in products:
            conns.update(self.hub.index.get(f"{channel}:{p}", ()))
        self.hub.push_all(conns, item)

    def trade_obj(self, product: str, series: Series, t: Trade) -> dict[str, str]:
        return {
            "product_id": product, "trade_id": str(t.id), "price": plain(t.price, series.price_scale),
            "size": plain(t.qty, series.qty_scale), "time": rfc3339_nano(t.time_us * 1000),
            "side": "BUY" if t.buyer_maker else "SELL",
        }  # fmt: skip

    def candle_obj(self, product: str, series: Series, agg: Agg) -> dict[str, str]:
        ps = series.price_scale
        return {
            "start": str(agg.start_ms // 1000), "high": plain(agg.high, ps), "low": plain(agg.low, ps),
            "open": plain(agg.open, ps), "close": plain(agg.close, ps), "volume": plain(agg.volume, series.qty_scale),
            "product_id": product,
        }  # fmt: skip

    def set_candle(self, product: str, candle: dict[str, str]) -> None:
        book = self.candles.setdefault(product, {})
        book[int(candle["start"])] = candle
        if len(book) > 2 * self.config.snapshot_candles:
            for start in sorted(book)[: len(book) - self.config.snapshot_candles]:
                del book[start]

    # ------------------------------------------------------------------------------ synthetic market

    def publish_trades(self, batch: list[tuple[Series, Trade]], event_ms: int) -> None:
        """Book synthetic trades; they go out in the next market_trades batch."""
        for series, t in batch:
            series.book(t)
            self.pending.setdefault(series.symbol, []).append(t)
            stats = self.stats.get(series.symbol)
            if stats is None:
                stats = self.stats[series.symbol] = Agg(0, 0)
            stats.add(t)

    def flush_trades(self) -> None:
        """One market_trades update (newest first) and one ticker update per product that traded."""
        pending, self.pending = self.pending, {}
        for product, trades in pending.items():
            series = self.series[product]
            if self.hub.subscribed(f"market_trades:{product}"):
                objs = [self.trade_obj(product, series, t) for t in reversed(trades)]
                self.publish("market_trades", [product], self.parts("market_trades", _dumps(
                    [{"type": "update", "trades": objs}])))  # fmt: skip
            ticker = self._ticker(product, series)
            self.tickers[product] = ticker
            if self.hub.subscribed(f"ticker:{product}"):
                events = _dumps([{"type": "update", "tickers": [ticker]}])
                self.publish("ticker", [product], self.parts("ticker", events))

    def _ticker(self, product: str, series: Series) -> dict[str, str]:
        s = self.stats[product]
        inst = self.instruments[product]
        ps, qs = series.price_scale, series.qty_scale
        change = (s.close - s.open) * 100 / s.open if s.open else 0.0
        bid_q, ask_q = (s.volume // max(s.trades, 1)) + inst.step, (s.volume // max(s.trades, 1)) * 2 + inst.step
        return {
            "type": "ticker", "product_id": product, "price": plain(s.close, ps), "volume_24_h": plain(s.volume, qs),
            "low_24_h": plain(s.low, ps), "high_24_h": plain(s.high, ps),
            "low_52_w": plain(inst.start_price * 6 // 10, ps), "high_52_w": plain(inst.start_price * 14 // 10, ps),
            "price_percent_chg_24_h": f"{change:.14f}", "best_bid": plain(s.close - inst.tick, ps),
            "best_ask": plain(s.close, ps), "best_bid_quantity": plain(bid_q, qs),
            "best_ask_quantity": plain(ask_q, qs),
        }  # fmt: skip

    def candle_tick(self, products: set[str]) -> None:
        """Candle updates of synthetic ``products``: the open 5-minute bucket when it changed."""
        self.last_tick_ns = self.clock()
        now_ms = self.last_tick_ns // 1_000_000
        for product in sorted(products):
            series = self.series[product]
            tr = self._trackers.get(product)
            if tr is None:
                start = now_ms // 1000 // CANDLE_S * CANDLE_S * 1000
                last = series.last
                tr = self._trackers[product] = _Tracker(Agg(start, start + CANDLE_S * 1000), last.id if last else -1)
                new = series.window(start, start + CANDLE_S * 1000)
            else:
                new = series.after_id(tr.seen)
            for t in new:
                t_ms = t.time_us // 1000
                if t_ms >= tr.agg.end_ms:
                    start = t_ms // 1000 // CANDLE_S * CANDLE_S * 1000
                    tr.agg, tr.sent = Agg(start, start + CANDLE_S * 1000), None
                tr.agg.add(t)
                tr.seen = t.id
            if tr.agg.empty or tr.agg.key() == tr.sent:
                continue
            tr.sent = tr.agg.key()
            candle = self.candle_obj(product, series, tr.agg)
            self.set_candle(product, candle)
            if self.hub.subscribed(f"candles:{product}"):
                events = _dumps([{"type": "update", "candles": [candle]}])
                self.publish("candles", [product], self.parts("candles", events))

    def heartbeat(self) -> None:
        if not self.hub.subscribed("heartbeats:heartbeats"):
            return
        uptime = time.monotonic_ns() - self._started_ns
        now = self.clock()
        events = _dumps([{"current_time": go_time_string(now, uptime), "heartbeat_counter": uptime // 1_000_000_000}])
        self.hub.push("heartbeats:heartbeats", self.parts("heartbeats", events, now))

    # --------------------------------------------------------------------------------------- faults

    def skip(self, n: int) -> None:
        for conn in self.hub.open.values():
            conn.seq += n

    def malformed(self) -> None:
        ts = rfc3339_nano(self.clock())
        for conn in list(self.hub.open.values()):
            conn.push_text(f'{{"channel":"market_trades","client_id":"","timestamp":"{ts}","seq')
