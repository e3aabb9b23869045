"""Binance Spot public REST under ``/binance``: exchangeInfo, ticker/24hr, klines, aggTrades, ping, time.

Every answer is computed from the trades the simulator streamed. Request weight per IP and calendar
minute (wall clock), sent back in ``X-MBX-USED-WEIGHT-1M``: exchangeInfo 20, ticker/24hr 2 (one symbol)
or 80 (all), klines 2, aggTrades 4, ping/time 1; over ``binance_weight_limit`` → 429 with Retry-After
(seconds to the next minute). exchangeInfo is the real 2021 response with the simulated symbols set to
TRADING (made-up symbols appended) and REQUEST_WEIGHT set to the simulator's limit. With recorded
documents (:mod:`streams.simulator.recorded_rest`), exchangeInfo and ticker/24hr answer those instead,
at the same weights.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from aiohttp import web

from streams.simulator.binance import Binance
from streams.simulator.markets import BINANCE_INTERVALS_MS, Agg, Series, bucket_start, next_start, prev_start, ticker
from streams.simulator.recorded_rest import BINANCE_EXCHANGE_INFO, BINANCE_TICKER_24HR, RecordedDocs
from streams.simulator.refdata import binance_symbol_entry, exchange_info
from streams.simulator.rest import Injected429, Reject, int_param, reply
from streams.simulator.wire import fixed

_HOUR_MS = 3_600_000
_BAD_SYMBOL = {"code": -1121, "msg": "Invalid symbol."}


def _missing(name: str) -> Reject:
    return Reject(
        400, {"code": -1102, "msg": f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."}
    )


def _illegal(name: str) -> dict[str, object]:
    return {"code": -1100, "msg": f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."}


class BinanceRest:
    def __init__(self, venue: Binance, recorded: RecordedDocs | None = None) -> None:
        self.venue = venue
        self.recorded = recorded or RecordedDocs()
        self.clock = venue.clock
        self.used: dict[str, tuple[int, int]] = {}  # ip → (minute, weight)
        self.fault = Injected429()
        self._info: tuple[tuple[str, ...], bytes] | None = None

    def routes(self) -> list[web.RouteDef]:
        p = "/binance/api/v3"
        return [
            web.get(f"{p}/ping", self._ping),
            web.get(f"{p}/time", self._time),
            web.get(f"{p}/exchangeInfo", self._exchange_info_endpoint),
            web.get(f"{p}/ticker/24hr", self._ticker_24hr),
            web.get(f"{p}/klines", self._klines_endpoint),
            web.get(f"{p}/aggTrades", self._agg_trades_endpoint),
        ]

    async def _ping(self, request: web.Request) -> web.Response:
        return await self._serve(request, 1, dict)

    async def _time(self, request: web.Request) -> web.Response:
        return await self._serve(request, 1, lambda: {"serverTime": self.clock() // 1_000_000})

    async def _exchange_info_endpoint(self, request: web.Request) -> web.Response:
        return await self._serve(request, 20, lambda: self._exchange_info(request))

    async def _klines_endpoint(self, request: web.Request) -> web.Response:
        return await self._serve(request, 2, lambda: self._klines(request))

    async def _agg_trades_endpoint(self, request: web.Request) -> web.Response:
        return await self._serve(request, 4, lambda: self._agg_trades(request))

    async def _serve(self, request: web.Request, weight: int, build: Callable[[], object]) -> web.Response:
        ip = request.remote or "?"
        now = time.time()
        minute = int(now // 60)
        seen, used = self.used.get(ip, (minute, 0))
        used = used if seen == minute else 0
        retry = self.fault.take()
        if retry is None and used + weight > self.venue.config.binance_weight_limit:
            retry = max(math.ceil(60 - now % 60), 1)
        if retry is not None:
            body = {"code": -1003, "msg": f"Too many requests; current limit of IP({ip}) is "
                    f"{self.venue.config.binance_weight_limit} requests per minute."}  # fmt: skip
            return reply(self.clock, body, 429, {"Retry-After": str(retry), "X-MBX-USED-WEIGHT-1M": str(used)})
        used += weight
        self.used[ip] = (minute, used)
        headers = {"X-MBX-USED-WEIGHT-1M": str(used)}
        try:
            return reply(self.clock, build(), 200, headers)
        except Reject as r:
            return reply(self.clock, r.body, r.status, headers)

    # ---------------------------------------------------------------------------------- endpoints

    def _series(self, request: web.Request) -> Series:
        symbol = request.query.get("symbol")
        if not symbol:
            raise _missing("symbol")
        series = self.venue.series.get(symbol)
        if series is None:
            raise Reject(400, _BAD_SYMBOL)
        return series

    def _wanted_symbols(self, request: web.Request) -> list[str] | None:
        wanted = [request.query["symbol"]] if "symbol" in request.query else None
        if "symbols" in request.query:
            try:
                wanted = [str(s) for s in json.loads(request.query["symbols"])]
            except ValueError:
                raise Reject(400, _illegal("symbols")) from None
        return wanted

    def _recorded_info(self, request: web.Request) -> bytes | dict[str, Any]:
        wanted = self._wanted_symbols(request)
        if wanted is None:
            return self.recorded.raw(BINANCE_EXCHANGE_INFO)
        entries = [self.recorded.entry(BINANCE_EXCHANGE_INFO, s) for s in wanted]
        if any(e is None for e in entries):
            raise Reject(400, _BAD_SYMBOL)
        return {**self.recorded.document(BINANCE_EXCHANGE_INFO), "symbols": entries}

    def _exchange_info(self, request: web.Request) -> bytes | dict[str, Any]:
        if self.recorded.has(BINANCE_EXCHANGE_INFO):
            return self._recorded_info(request)
        now_ms = self.clock() // 1_000_000
        info = exchange_info()
        limit = self.venue.config.binance_weight_limit
        rate_limits = [
            {**rl, "limit": limit} if rl["rateLimitType"] == "REQUEST_WEIGHT" else rl for rl in info["rateLimits"]
        ] or [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": limit}]
        wanted = self._wanted_symbols(request)
        simulated = tuple(sorted(self.venue.instruments))
        head = {"timezone": "UTC", "serverTime": now_ms, "rateLimits": rate_limits, "exchangeFilters": []}
        if wanted is not None:
            known = {s["symbol"] for s in info["symbols"]} | set(simulated)
            if any(s not in known for s in wanted):
                raise Reject(400, _BAD_SYMBOL)
            by_name = {s["symbol"]: s for s in info["symbols"]}
            entries = [self._entry(s) if s in simulated else by_name[s] for s in wanted]
            return {**head, "symbols": entries}
        if self._info is None or self._info[0] != simulated:
            listed = {s["symbol"] for s in info["symbols"]}
            entries = [self._entry(s["symbol"]) if s["symbol"] in simulated else s for s in info["symbols"]]
            entries += [self._entry(s) for s in simulated if s not in listed]
            self._info = (simulated, json.dumps(entries, separators=(",", ":")).encode())
        prefix = json.dumps(head, separators=(",", ":"))[:-1]
        return prefix.encode() + b',"symbols":' + self._info[1] + b"}"

    def _entry(self, symbol: str) -> dict[str, Any]:
        inst = self.venue.instruments[symbol]
        try:
            return binance_symbol_entry(symbol, inst.base, inst.quote)
        except ValueError:  # a recorded symbol of unknown assets
            return binance_symbol_entry(symbol, symbol, "?")

    async def _ticker_24hr(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol")
        if self.recorded.has(BINANCE_TICKER_24HR):
            if symbol is None:
                return await self._serve(request, 80, lambda: self.recorded.raw(BINANCE_TICKER_24HR))
            return await self._serve(request, 2, lambda: self._recorded_ticker(symbol))
        if symbol is None:
            return await self._serve(request, 80, lambda: [self._ticker(s) for s in sorted(self.venue.series)])
        return await self._serve(request, 2, lambda: self._ticker(self._series(request).symbol))

    def _recorded_ticker(self, symbol: str) -> dict[str, Any]:
        entry = self.recorded.entry(BINANCE_TICKER_24HR, symbol)
        if entry is None:
            raise Reject(400, _BAD_SYMBOL)
        return entry

    def _ticker(self, symbol: str) -> dict[str, Any]:
        now_ms = self.clock() // 1_000_000
        series = self.venue.series[symbol]
        ps, qs = series.price_scale, series.qty_scale
        tk = ticker(series, now_ms)
        z = fixed(0, 0)
        out: dict[str, Any] = {"symbol": symbol}
        if tk is None:
            out.update(priceChange=z, priceChangePercent="0.000", weightedAvgPrice=z, prevClosePrice=z, lastPrice=z,
                       lastQty=z, bidPrice=z, bidQty=z, askPrice=z, askQty=z, openPrice=z, highPrice=z, lowPrice=z,
                       volume=z, quoteVolume=z, openTime=now_ms - 86_400_000, closeTime=now_ms, firstId=-1,
                       lastId=-1, count=0)  # fmt: skip
            return out
        wavg = (Decimal(tk.quote).scaleb(-(ps + qs)) / Decimal(tk.volume).scaleb(-qs)) if tk.volume else Decimal(0)
        tick = self.venue.instruments[symbol].tick if symbol in self.venue.instruments else 1
        out.update(
            priceChange=fixed(tk.last - tk.open, ps), priceChangePercent=f"{(tk.last - tk.open) * 100 / tk.open:.3f}",
            weightedAvgPrice=f"{wavg:.8f}", prevClosePrice=fixed(tk.open, ps), lastPrice=fixed(tk.last, ps),
            lastQty=fixed(tk.last_qty, qs), bidPrice=fixed(tk.last - tick, ps), bidQty=fixed(tk.last_qty, qs),
            askPrice=fixed(tk.last, ps), askQty=fixed(tk.last_qty, qs), openPrice=fixed(tk.open, ps),
            highPrice=fixed(tk.high, ps), lowPrice=fixed(tk.low, ps), volume=fixed(tk.volume, qs),
            quoteVolume=fixed(tk.quote, ps + qs), openTime=now_ms - 86_400_000, closeTime=now_ms,
            firstId=tk.first_id, lastId=tk.last_id, count=tk.trades,
        )  # fmt: skip
        return out

    def _klines(self, request: web.Request) -> list[list[Any]]:
        series = self._series(request)
        interval = request.query.get("interval")
        if not interval:
            raise _missing("interval")
        if interval not in BINANCE_INTERVALS_MS:
            raise Reject(400, {"code": -1120, "msg": "Invalid interval."})
        start = int_param(request, "startTime", _illegal("startTime"))
        end = int_param(request, "endTime", _illegal("endTime"))
        limit = min(max(int_param(request, "limit", _illegal("limit")) or 500, 1), 1000)
        if not series.trades:
            return []
        now_ms = self.clock() // 1_000_000
        first_open = bucket_start(series.trades[0].time_us // 1000, interval)
        last_open = bucket_start(now_ms if end is None else min(end, now_ms), interval)
        opens: list[int] = []
        if start is not None:
            t = bucket_start(start, interval)
            t = max(t if t >= start else next_start(t, interval), first_open)
            while t <= last_open and len(opens) < limit:
                opens.append(t)
                t = next_start(t, interval)
        else:
            t = last_open
            while t >= first_open and len(opens) < limit:
                opens.append(t)
                t = prev_start(t, interval)
            opens.reverse()
        if not opens:
            return []
        before = series.last_before(opens[0])
        prev_close = before.price if before else series.trades[0].price
        rows: list[list[Any]] = []
        ps, qs = series.price_scale, series.qty_scale
        for t in opens:
            agg = series.fold(t, next_start(t, interval))
            if agg.empty:
                agg = Agg(t, agg.end_ms, prev_close, prev_close, prev_close, prev_close)
            prev_close = agg.close
            rows.append([
                t, fixed(agg.open, ps), fixed(agg.high, ps), fixed(agg.low, ps), fixed(agg.close, ps),
                fixed(agg.volume, qs), agg.end_ms - 1, fixed(agg.quote, ps + qs), agg.trades,
                fixed(agg.buy_volume, qs), fixed(agg.buy_quote, ps + qs), "0",
            ])  # fmt: skip
        return rows

    def _agg_trades(self, request: web.Request) -> list[dict[str, Any]]:
        series = self._series(request)
        from_id = int_param(request, "fromId", _illegal("fromId"))
        start = int_param(request, "startTime", _illegal("startTime"))
        end = int_param(request, "endTime", _illegal("endTime"))
        limit = min(max(int_param(request, "limit", _illegal("limit")) or 500, 1), 1000)
        if from_id is not None and (start is not None or end is not None):
            raise Reject(400, {"code": -1128, "msg": "Combination of optional parameters invalid."})
        if start is not None and end is not None and end - start > _HOUR_MS:
            raise Reject(400, {"code": -1127, "msg": "More than 1 hours between startTime and endTime."})
        if from_id is not None:
            trades = series.from_id(from_id, limit)
        elif start is not None:
            trades = series.window(start, (end if end is not None else start + _HOUR_MS) + 1)[:limit]
        elif end is not None:
            trades = series.window(end - _HOUR_MS, end + 1)[:limit]
        else:
            trades = series.trades[-limit:]
        ps, qs = series.price_scale, series.qty_scale
        return [
            {"a": t.id, "p": fixed(t.price, ps), "q": fixed(t.qty, qs), "f": t.first, "l": t.last,
             "T": t.time_us // 1000, "m": t.buyer_maker, "M": True}
            for t in trades
        ]  # fmt: skip
