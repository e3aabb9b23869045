"""Binance Spot public market-data REST client (``https://api.binance.com`` or ``https://data-api.binance.vision``).

Request weights (PROTOCOLS.md, rest-api.md): exchangeInfo 20, ticker/24hr 2 for one symbol and 80 for
all, klines 2, aggTrades 4. They are booked against a :class:`~streams.rest.limits.WeightBudget`
(default 6000 per minute) before each request; the server's ``X-MBX-USED-WEIGHT-1M`` is folded in after
each response; fetching exchangeInfo lowers the budget to the server's REQUEST_WEIGHT limit when that
is lower (the 2021 captures say 1200/min; today's docs 6000).

Closed klines: the last row of a klines response may be the still-open interval. ``Kline.closed`` is
decided from the response itself: a row followed by a later row is closed, and the last row is closed
when ``close_time < server now``, where server now is the response's ``Date`` header (1 s resolution,
truncated, so the test errs towards "open"). Only when the header is missing or unparsable does the
local wall clock stand in. A REST "closed" kline can still be revised for a moment after its close
time (PROTOCOLS.md: late updates with ``E > T``); folds should upsert by open time.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Final, TypeVar

import aiohttp
import msgspec

from streams.rest import types as t
from streams.rest.http import Backoff, Clock, Params, Response, RestClient, Sleep
from streams.rest.limits import WeightBudget
from streams.rest.markets import binance_markets
from streams.symbols import Market

BINANCE_API: Final = "https://api.binance.com"
BINANCE_DATA_API: Final = "https://data-api.binance.vision"

WEIGHTS: Final[dict[str, int]] = {
    "exchangeInfo": 20,
    "ticker/24hr": 2,
    "ticker/24hr(all)": 80,
    "klines": 2,
    "aggTrades": 4,
}
KLINE_INTERVALS: Final = (
    "1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M",
)  # fmt: skip
MAX_LIMIT: Final = 1000  # klines and aggTrades
USED_WEIGHT_HEADER: Final = "X-MBX-USED-WEIGHT-1M"
_HOUR_MS: Final = 3_600_000

T = TypeVar("T")


class BinanceRestClient(RestClient):
    """Async client for the public Binance Spot endpoints tickfold needs. See the module docstring."""

    exchange = "binance"

    def __init__(
        self,
        base_url: str = BINANCE_API,
        *,
        weight_limit: int = 6000,
        weight_window_s: float = 60.0,
        session: aiohttp.ClientSession | None = None,
        sleep: Sleep = asyncio.sleep,
        monotonic: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        max_retries: int = 5,
        backoff: Backoff | None = None,
        timeout_s: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            base_url,
            session=session,
            sleep=sleep,
            monotonic=monotonic,
            wall_clock=wall_clock,
            max_retries=max_retries,
            backoff=backoff,
            timeout_s=timeout_s,
            rng=rng,
        )
        self.configured_weight_limit = weight_limit
        self.budget = WeightBudget(weight_limit, weight_window_s, monotonic=self._monotonic, sleep=self._sleep)

    @property
    def used_weight_1m(self) -> int | None:
        """The server's last reported weight used in the current minute."""
        return self.budget.server_used

    # Hooks ---------------------------------------------------------------------------------------

    async def _before_request(self, cost: int) -> None:
        await self.budget.acquire(cost)

    def _after_response(self, response: Response) -> None:
        used = response.headers.get(USED_WEIGHT_HEADER)
        if used is not None and used.strip().isdigit():
            self.budget.observe(int(used))

    def _error_body(self, body: bytes) -> tuple[int | str | None, str]:
        try:
            err = t.BINANCE_ERROR.decode(body)
        except msgspec.DecodeError:
            return None, body[:500].decode("utf-8", "replace")
        return err.code, err.msg

    async def _call(self, path: str, params: Params, weight: int, decoder: msgspec.json.Decoder[T]) -> T:
        response = await self._get(path, params, cost=weight)
        return self._decode(decoder, response, path)

    # Endpoints -----------------------------------------------------------------------------------

    async def exchange_info(self, symbol: str | None = None) -> t.ExchangeInfo:
        """``GET /api/v3/exchangeInfo`` (weight 20). Also adopts the server's REQUEST_WEIGHT limit when it is
        lower than the configured one."""
        params: dict[str, str | int] = {"symbol": symbol} if symbol else {}
        info = await self._call("/api/v3/exchangeInfo", params, WEIGHTS["exchangeInfo"], t.EXCHANGE_INFO)
        for rl in info.rate_limits:
            if rl.rate_limit_type == "REQUEST_WEIGHT":
                self.budget.set_limit(min(self.configured_weight_limit, rl.limit), rl.window_s)
                break
        return info

    async def markets(self) -> list[Market]:
        """All symbols as :class:`~streams.symbols.Market` (through baseAsset/quoteAsset, with status)."""
        return binance_markets(await self.exchange_info())

    async def ticker_24hr(self, symbol: str | None = None) -> list[t.Ticker24hr]:
        """``GET /api/v3/ticker/24hr``: weight 2 for one symbol (an object on the wire), 80 for all (an array).
        Always a list."""
        if symbol:
            one = await self._call("/api/v3/ticker/24hr", {"symbol": symbol}, WEIGHTS["ticker/24hr"], t.TICKER_24HR_ONE)
            return [one]
        return await self._call("/api/v3/ticker/24hr", {}, WEIGHTS["ticker/24hr(all)"], t.TICKER_24HR_ALL)

    async def klines(
        self,
        symbol: str,
        interval: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 500,
    ) -> list[t.Kline]:
        """``GET /api/v3/klines`` (weight 2): at most ``limit`` (≤ 1000) klines with open time in
        [start_ms, end_ms], oldest first. ``closed`` per the module docstring."""
        if interval not in KLINE_INTERVALS:
            raise ValueError(f"unknown Binance kline interval {interval!r}")
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"klines limit must be 1..{MAX_LIMIT}, got {limit}")
        params: dict[str, str | int] = {"symbol": symbol, "interval": interval, "limit": limit}
        if start_ms is not None:
            params["startTime"] = start_ms
        if end_ms is not None:
            params["endTime"] = end_ms
        path = "/api/v3/klines"
        response = await self._get(path, params, cost=WEIGHTS["klines"])
        rows = self._decode(t.KLINES, response, path)
        now = self.server_now_ms(response)
        last = len(rows) - 1
        return [t.kline(row, closed=i < last or row.close_time < now) for i, row in enumerate(rows)]

    async def klines_range(
        self, symbol: str, interval: str, start_ms: int, end_ms: int, *, page_limit: int = MAX_LIMIT
    ) -> AsyncIterator[t.Kline]:
        """Every kline with open time in [start_ms, end_ms], oldest first, ``page_limit`` (≤ 1000) per request.

        Pages continue from the last close time + 1 (the next open time) until a short page, an open
        kline, or ``end_ms``; rows at or before the last one yielded are skipped, so nothing repeats.
        """
        cursor = start_ms
        last_open: int | None = None
        while cursor <= end_ms:
            page = await self.klines(symbol, interval, start_ms=cursor, end_ms=end_ms, limit=page_limit)
            for k in page:
                if k.open_time > end_ms:
                    return
                if k.open_time < start_ms or (last_open is not None and k.open_time <= last_open):
                    continue
                last_open = k.open_time
                yield k
            if len(page) < page_limit or not page[-1].closed:
                return
            cursor = page[-1].close_time + 1  # the next interval's open time

    async def agg_trades(
        self,
        symbol: str,
        from_id: int | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 500,
    ) -> list[t.AggTrade]:
        """``GET /api/v3/aggTrades`` (weight 4), ascending ids. Binance wants either ``from_id`` or a time
        window (at most one hour when both ends are given), not both; without any, the latest trades."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"aggTrades limit must be 1..{MAX_LIMIT}, got {limit}")
        params: dict[str, str | int] = {"symbol": symbol, "limit": limit}
        if from_id is not None:
            params["fromId"] = from_id
        if start_ms is not None:
            params["startTime"] = start_ms
        if end_ms is not None:
            params["endTime"] = end_ms
        return await self._call("/api/v3/aggTrades", params, WEIGHTS["aggTrades"], t.AGG_TRADES)

    async def agg_trades_range(
        self,
        symbol: str,
        *,
        from_id: int | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        to_id: int | None = None,
        page_limit: int = MAX_LIMIT,
    ) -> AsyncIterator[t.AggTrade]:
        """Aggregate trades from ``from_id`` (or from ``start_ms``) on, paginating by ``fromId``.

        Stops at ``to_id`` / ``end_ms`` (inclusive) or when a page comes back short (caught up). Starting
        from a time, the first trade is located with one-hour ``startTime``/``endTime`` windows; from there
        on only ``fromId`` is sent, so ids are contiguous (a gap in ``a`` would mean the exchange lost it).
        """
        if from_id is None and start_ms is None:
            raise ValueError("agg_trades_range needs from_id or start_ms")
        if not 1 <= page_limit <= MAX_LIMIT:
            raise ValueError(f"aggTrades limit must be 1..{MAX_LIMIT}, got {page_limit}")
        next_id = from_id
        window = start_ms
        while True:
            if next_id is not None:
                page = await self.agg_trades(symbol, from_id=next_id, limit=page_limit)
            elif window is not None:
                if end_ms is not None and window > end_ms:
                    return
                window_end = window + _HOUR_MS - 1
                if end_ms is not None:
                    window_end = min(window_end, end_ms)
                response = await self._get(
                    "/api/v3/aggTrades",
                    {"symbol": symbol, "startTime": window, "endTime": window_end, "limit": page_limit},
                    cost=WEIGHTS["aggTrades"],
                )
                page = self._decode(t.AGG_TRADES, response, "/api/v3/aggTrades")
                if not page:
                    if window_end >= self.server_now_ms(response):
                        return  # nothing traded from start_ms up to now
                    window = window_end + 1
                    continue
            else:  # unreachable: checked above
                return
            for trade in page:
                if (to_id is not None and trade.id > to_id) or (end_ms is not None and trade.time > end_ms):
                    return
                if start_ms is not None and trade.time < start_ms:
                    continue
                yield trade
            if len(page) < page_limit and next_id is not None:
                return
            next_id = page[-1].id + 1
