"""Binance Spot market side: symbols and their trades, aggTrade / kline frames, broadcast, faults.

The same event goes out as the identical bytes to every connection of a form (combined connections get
``{"stream":…,"data":…}``, raw ones the bare event). Klines of synthetic markets are folded from the
trades every ``kline_update_interval`` s: an update when the open kline changed, ``x:true`` once its
close time has passed (klines without trades are not sent, as Binance does for idle symbols).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from streams.simulator.config import Clock, SimConfig
from streams.simulator.hub import Hub
from streams.simulator.markets import Agg, Series, Trade, bucket_start, next_start
from streams.simulator.refdata import Instrument
from streams.simulator.wire import fixed, ws_frame

_AGG = '{"e":"aggTrade","E":%d,"s":"%s","a":%d,"p":"%s","q":"%s","f":%d,"l":%d,"T":%d,"m":%s,"M":true}'
_AGG_B = _AGG.encode()
_KLINE = (
    '{"e":"kline","E":%d,"s":"%s","k":{"t":%d,"T":%d,"s":"%s","i":"%s","f":%d,"L":%d,"o":"%s","c":"%s","h":"%s",'
    '"l":"%s","v":"%s","n":%d,"x":%s,"q":"%s","V":"%s","Q":"%s","B":"0"}}'
)


@dataclass
class _Tracker:
    """The open kline of one (symbol, interval) of a synthetic market, folded from its Series."""

    agg: Agg
    seen: int  # last aggregate trade id folded
    sent: tuple[int, int, int] | None = None


class Binance:
    exchange = "binance"

    def __init__(self, config: SimConfig, clock: Clock, hub: Hub) -> None:
        self.config = config
        self.clock = clock
        self.hub = hub
        self.instruments: dict[str, Instrument] = {}
        self.series: dict[str, Series] = {}
        self.withhold: dict[str, int] = {}  # skip fault: aggTrades still to keep off the stream, per symbol
        self._trackers: dict[tuple[str, str], _Tracker] = {}
        self._decimal_text: dict[tuple[int, int], bytes] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.last_tick_ns = 0  # clock at the last kline fold: later trades must not be older

    # ------------------------------------------------------------------------------------ market state

    def add(self, inst: Instrument, *, price_scale: int | None = None, qty_scale: int | None = None) -> Series:
        if inst.symbol in self.series:
            raise ValueError(f"binance symbol {inst.symbol} is already fed by another feed")
        self.instruments[inst.symbol] = inst
        series = Series(
            inst.symbol,
            price_scale=inst.price_scale if price_scale is None else price_scale,
            qty_scale=inst.qty_scale if qty_scale is None else qty_scale,
            max_trades=self.config.max_trades,
        )
        self.series[inst.symbol] = series
        return series

    # ------------------------------------------------------------------------------------- publishing

    def publish(self, stream: str, payload: str, combined: str | None = None, trade_of: str | None = None) -> None:
        """Send one event to every connection on ``stream``: the same bytes to all combined ones, the same
        bytes to all raw ones. ``trade_of``: the symbol of an aggTrade (the skip fault withholds it)."""
        if trade_of is not None and self.withhold.get(trade_of):
            self.withhold[trade_of] -= 1
            return
        subs = self.hub.index.get(stream)
        if not subs:
            return
        wrapped: bytes | None = None
        raw: bytes | None = None
        for conn in subs:
            if conn.combined:
                if wrapped is None:
                    text = combined if combined is not None else f'{{"stream":"{stream}","data":{payload}}}'
                    wrapped = ws_frame(text.encode())
                conn.push(wrapped)
            else:
                if raw is None:
                    raw = ws_frame(payload.encode())
                conn.push(raw)

    def _text(self, scale: int, units: int) -> bytes:
        key = (scale, units)
        text = self._decimal_text.get(key)
        if text is None:
            if len(self._decimal_text) > 100_000:
                self._decimal_text.clear()
            text = self._decimal_text[key] = fixed(units, scale).encode()
        return text

    def publish_trades(self, batch: list[tuple[Series, Trade]], event_ms: int) -> None:
        """Book synthetic trades and stream them as aggTrade events (the hot path of the benchmarks:
        bytes templates, cached decimal texts, one frame shared by all subscribers of a form)."""
        index, withhold, text = self.hub.index, self.withhold, self._text
        for series, t in batch:
            series.book(t)
            sym = series.symbol
            if withhold.get(sym):
                withhold[sym] -= 1
                continue
            stream = f"{sym.lower()}@aggTrade"
            subs = index.get(stream)
            if not subs:
                continue
            payload = _AGG_B % (
                event_ms, sym.encode(), t.id, text(series.price_scale, t.price), text(series.qty_scale, t.qty),
                t.first, t.last, t.time_us // 1000, b"true" if t.buyer_maker else b"false",
            )  # fmt: skip
            wrapped: bytes | None = None
            raw: bytes | None = None
            for conn in subs:
                if conn.combined:
                    if wrapped is None:
                        wrapped = ws_frame(b'{"stream":"%b","data":%b}' % (stream.encode(), payload))
                    conn.push(wrapped)
                else:
                    if raw is None:
                        raw = ws_frame(payload)
                    conn.push(raw)

    def kline_payload(self, series: Series, interval: str, agg: Agg, event_ms: int, closed: bool) -> str:
        ps, qs = series.price_scale, series.qty_scale
        sym = series.symbol
        return _KLINE % (
            event_ms, sym, agg.start_ms, agg.end_ms - 1, sym, interval, agg.first, agg.last,
            fixed(agg.open, ps), fixed(agg.close, ps), fixed(agg.high, ps), fixed(agg.low, ps),
            fixed(agg.volume, qs), agg.trades, "true" if closed else "false", fixed(agg.quote, ps + qs),
            fixed(agg.buy_volume, qs), fixed(agg.buy_quote, ps + qs),
        )  # fmt: skip

    def kline_tick(self, symbols: set[str]) -> None:
        """Klines of synthetic ``symbols`` for every subscribed interval: an update when the open kline
        changed, ``x:true`` once its close time has passed (empty klines are not sent)."""
        self.last_tick_ns = self.clock()
        now_ms = self.last_tick_ns // 1_000_000
        active: set[tuple[str, str]] = set()
        for stream in self.hub.index:
            sym, _, kind = stream.partition("@kline_")
            if kind and sym.upper() in symbols:
                active.add((sym.upper(), kind))
        for key in [k for k in self._trackers if k not in active]:
            del self._trackers[key]
        for sym, interval in sorted(active):
            self._advance(sym, interval, now_ms)

    def _advance(self, sym: str, interval: str, now_ms: int) -> None:
        series = self.series[sym]
        stream = f"{sym.lower()}@kline_{interval}"
        tr = self._trackers.get((sym, interval))
        if tr is None:
            start = bucket_start(now_ms, interval)
            agg = series.fold(start, next_start(start, interval))
            last = series.last
            tr = self._trackers[(sym, interval)] = _Tracker(agg, last.id if last else -1)
            new: list[Trade] = []
        else:
            new = series.after_id(tr.seen)
        for t in new:
            if t.time_us // 1000 >= tr.agg.end_ms:
                self._close_kline(series, interval, stream, tr, t.time_us // 1000, now_ms)
            tr.agg.add(t)
            tr.seen = t.id
        if now_ms >= tr.agg.end_ms:
            self._close_kline(series, interval, stream, tr, now_ms, now_ms)
        if not tr.agg.empty and tr.agg.key() != tr.sent:
            self.publish(stream, self.kline_payload(series, interval, tr.agg, now_ms, False))
            tr.sent = tr.agg.key()

    def _close_kline(self, series: Series, interval: str, stream: str, tr: _Tracker, t_ms: int, now_ms: int) -> None:
        if not tr.agg.empty:
            self.publish(stream, self.kline_payload(series, interval, tr.agg, now_ms, True))
        start = bucket_start(t_ms, interval)
        tr.agg = Agg(start, next_start(start, interval))
        tr.sent = None

    # ----------------------------------------------------------------------------------------- faults

    def skip(self, n: int, symbol: str | None) -> None:
        for sym in [symbol.upper()] if symbol else list(self.series):
            self.withhold[sym] = self.withhold.get(sym, 0) + n

    def malformed(self) -> None:
        for conn in list(self.hub.open.values()):
            stream = next(iter(conn.subscriptions), "btcusdt@aggTrade")
            event = f'{{"e":"aggTrade","E":{self.clock() // 1_000_000},"s":"{stream.split("@")[0].upper()}","a":'
            conn.push_text(f'{{"stream":"{stream}","data":{event}' if conn.combined else event)

    def server_shutdown(self, grace: float) -> None:
        e_ms = self.clock() // 1_000_000
        event = f'{{"e":"serverShutdown","E":{e_ms}}}'
        conns = list(self.hub.open.values())
        for conn in conns:
            conn.push_text(f'{{"stream":"!serverShutdown","data":{event}}}' if conn.combined else event)

        async def close_later() -> None:
            await asyncio.sleep(grace)
            await asyncio.gather(*(c.close(1001, "server shutdown") for c in conns))

        task = asyncio.create_task(close_later())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
