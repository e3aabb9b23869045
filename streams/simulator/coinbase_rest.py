"""Coinbase Advanced Trade public market REST under ``/coinbase/api/v3/brokerage/market``.

``/products`` (the simulated products, in the shape of the real response, with price and 24 h figures
computed from the simulated trades), ``/products/{id}``, ``/products/{id}/ticker`` and
``/products/{id}/candles`` (newest first, empty buckets and the in-progress bucket left out, at most
``limit`` ≤ 350 buckets between ``start`` and ``end``). ``coinbase_requests_per_s`` requests per IP in
any second, more → 429 with ``Retry-After: 1``. With a recorded ``coinbase/products`` document
(:mod:`streams.simulator.recorded_rest`), ``/products`` and ``/products/{id}`` answer from it instead.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from streams.simulator.coinbase import Coinbase
from streams.simulator.markets import COINBASE_GRANULARITY_S, Series, ticker
from streams.simulator.recorded_rest import COINBASE_PRODUCTS, RecordedDocs
from streams.simulator.refdata import coinbase_product_entry
from streams.simulator.rest import Injected429, Reject, int_param, reply
from streams.simulator.wire import plain

MAX_CANDLES = 350
_PAGINATION = {"prev_cursor": "", "next_cursor": "", "has_next": False, "has_prev": False}


def _bad(message: str) -> dict[str, object]:
    return {"error": "INVALID_ARGUMENT", "error_details": message, "message": message}


def _not_found() -> Reject:
    return Reject(404, {"error": "NOT_FOUND", "error_details": "ProductID is invalid", "message": "NotFound"})


def _invalid(message: str) -> Reject:
    return Reject(400, _bad(message))


class CoinbaseRest:
    def __init__(self, venue: Coinbase, recorded: RecordedDocs | None = None) -> None:
        self.venue = venue
        self.recorded = recorded or RecordedDocs()
        self.clock = venue.clock
        self.recent: dict[str, deque[float]] = {}  # ip → request times (monotonic) in the last second
        self.fault = Injected429()

    def routes(self) -> list[web.RouteDef]:
        p = "/coinbase/api/v3/brokerage/market/products"
        return [
            web.get(p, self._products_endpoint),
            web.get(p + "/{product_id}", self._product_endpoint),
            web.get(p + "/{product_id}/ticker", self._ticker_endpoint),
            web.get(p + "/{product_id}/candles", self._candles_endpoint),
        ]

    async def _products_endpoint(self, request: web.Request) -> web.Response:
        if self.recorded.has(COINBASE_PRODUCTS):
            return await self._serve(request, lambda: self.recorded.raw(COINBASE_PRODUCTS))
        return await self._serve(request, self._products)

    async def _product_endpoint(self, request: web.Request) -> web.Response:
        if self.recorded.has(COINBASE_PRODUCTS):
            return await self._serve(request, lambda: self._recorded_product(request))
        return await self._serve(request, lambda: self._product(self._series(request)))

    def _recorded_product(self, request: web.Request) -> dict[str, Any]:
        entry = self.recorded.entry(COINBASE_PRODUCTS, request.match_info["product_id"])
        if entry is None:
            raise _not_found()
        return entry

    async def _ticker_endpoint(self, request: web.Request) -> web.Response:
        return await self._serve(request, lambda: self._ticker(request))

    async def _candles_endpoint(self, request: web.Request) -> web.Response:
        return await self._serve(request, lambda: self._candles(request))

    async def _serve(self, request: web.Request, build: Callable[[], object]) -> web.Response:
        ip = request.remote or "?"
        now = time.monotonic()
        recent = self.recent.setdefault(ip, deque())
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        retry = self.fault.take()
        if retry is None and len(recent) >= self.venue.config.coinbase_requests_per_s:
            retry = 1
        if retry is not None:
            body = {
                "error": "RATE_LIMIT_EXCEEDED",
                "error_details": "Too many requests",
                "message": "Too many requests",
            }
            return reply(self.clock, body, 429, {"Retry-After": str(retry)}, charset=False)
        recent.append(now)
        try:
            return reply(self.clock, build(), charset=False)
        except Reject as r:
            return reply(self.clock, r.body, r.status, charset=False)

    def _series(self, request: web.Request) -> Series:
        product = request.match_info["product_id"]
        series = self.venue.series.get(product)
        if series is None:
            raise _not_found()
        return series

    def _products(self) -> dict[str, Any]:
        products = [self._product(s) for s in self.venue.series.values()]
        return {"products": products, "num_products": len(products), "pagination": _PAGINATION}

    def _product(self, series: Series) -> dict[str, Any]:
        entry = coinbase_product_entry(series.symbol)
        ps, qs = series.price_scale, series.qty_scale
        tk = ticker(series, self.clock() // 1_000_000)
        if tk is None:
            last = series.last
            price = plain(last.price, ps) if last else ""
            entry.update(price=price, price_percentage_change_24h="0", volume_24h="0", high_24h=price, low_24h=price,
                         approximate_quote_24h_volume="0", volume_percentage_change_24h="0")  # fmt: skip
            return entry
        change = (tk.last - tk.open) * 100 / tk.open if tk.open else 0.0
        quote = tk.quote // 10 ** max(ps + qs - 2, 0) if ps + qs > 2 else tk.quote * 10 ** (2 - ps - qs)
        entry.update(
            price=plain(tk.last, ps), price_percentage_change_24h=f"{change:.14f}", volume_24h=plain(tk.volume, qs),
            volume_percentage_change_24h="0", approximate_quote_24h_volume=plain(quote, 2),
            high_24h=plain(tk.high, ps), low_24h=plain(tk.low, ps), mid_market_price="",
        )  # fmt: skip
        return entry

    def _ticker(self, request: web.Request) -> dict[str, Any]:
        series = self._series(request)
        limit = min(max(int_param(request, "limit", _bad("limit must be an integer")) or 100, 1), 1000)
        product = series.symbol
        trades = []
        for t in reversed(series.trades[-limit:]):
            obj = self.venue.trade_obj(product, series, t)
            trades.append({"trade_id": obj.pop("trade_id"), **obj, "bid": "", "ask": "", "exchange": "coinbase"})
        last = series.last
        inst = self.venue.instruments.get(product)
        tick = inst.tick if inst else 1
        bid = plain(last.price - tick, series.price_scale) if last else ""
        ask = plain(last.price, series.price_scale) if last else ""
        return {"trades": trades, "best_bid": bid, "best_ask": ask}

    def _candles(self, request: web.Request) -> dict[str, Any]:
        series = self._series(request)
        granularity = request.query.get("granularity", "")
        size = COINBASE_GRANULARITY_S.get(granularity)
        if size is None:
            raise _invalid(f"granularity must be one of {', '.join(COINBASE_GRANULARITY_S)}")
        limit = int_param(request, "limit", _bad("limit must be an integer")) or MAX_CANDLES
        if not 1 <= limit <= MAX_CANDLES:
            raise _invalid(f"limit must be between 1 and {MAX_CANDLES}")
        now_s = self.clock() // 1_000_000_000
        end = int_param(request, "end", _bad("end must be UNIX seconds"))
        end = now_s if end is None else end
        start = int_param(request, "start", _bad("start must be UNIX seconds"))
        start = end - limit * size if start is None else start
        if end < start:
            raise _invalid("start must be before end")
        if (end - start) // size > limit:
            raise _invalid(f"number of candles requested should be less than or equal to {limit}")
        ps, qs = series.price_scale, series.qty_scale
        rows: list[dict[str, str]] = []
        bucket = start // size * size
        while bucket <= end and bucket + size <= now_s:
            agg = series.fold(bucket * 1000, (bucket + size) * 1000)
            if not agg.empty:
                rows.append({"start": str(bucket), "low": plain(agg.low, ps), "high": plain(agg.high, ps),
                             "open": plain(agg.open, ps), "close": plain(agg.close, ps),
                             "volume": plain(agg.volume, qs)})  # fmt: skip
            bucket += size
        rows.reverse()
        return {"candles": rows[:limit]}
