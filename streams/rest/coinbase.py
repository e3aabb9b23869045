"""Coinbase Advanced Trade public market-data REST client (``https://api.coinbase.com/api/v3/brokerage/market``).

No authentication. Public endpoints allow 10 requests/s per IP: a token bucket (burst 10) paces every
request; 429s are retried after ``Retry-After`` like on Binance.

Candles: the response is newest first and may lack the in-progress bucket (and any bucket without
trades); the client returns them oldest first. ``Candle.closed`` is ``start + granularity <= server
now``, server now being the response's ``Date`` header (the local wall clock only when it is missing).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Iterable
from typing import Final
from urllib.parse import quote

import aiohttp
import msgspec

from streams.rest import types as t
from streams.rest.errors import UnexpectedResponse
from streams.rest.http import Backoff, Clock, RestClient, Sleep
from streams.rest.limits import TokenBucket
from streams.rest.markets import coinbase_aliases, coinbase_markets
from streams.symbols import Market

COINBASE_MARKET_API: Final = "https://api.coinbase.com/api/v3/brokerage/market"
MAX_CANDLES: Final = 350  # per request (older captures: 300)

log = logging.getLogger(__name__)


class CoinbaseRestClient(RestClient):
    """Async client for the public Coinbase Advanced Trade market endpoints. See the module docstring."""

    exchange = "coinbase"

    def __init__(
        self,
        base_url: str = COINBASE_MARKET_API,
        *,
        requests_per_s: float = 10.0,
        burst: int | None = None,
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
        self.bucket = TokenBucket(requests_per_s, burst, monotonic=monotonic, sleep=sleep)

    # Hooks ---------------------------------------------------------------------------------------

    async def _before_request(self, cost: int) -> None:
        for _ in range(cost):
            await self.bucket.acquire()

    def _error_body(self, body: bytes) -> tuple[int | str | None, str]:
        try:
            err = t.COINBASE_ERROR.decode(body)
        except msgspec.DecodeError:
            return None, body[:500].decode("utf-8", "replace")
        return (err.error if err.error is not None else err.code), err.message or err.error_details

    # Endpoints -----------------------------------------------------------------------------------

    async def products(self, product_type: str | None = None) -> list[t.Product]:
        """``GET /products`` (all products in one response: 920 in the 2026 capture, ``has_next`` false)."""
        params: dict[str, str | int] = {"product_type": product_type} if product_type else {}
        response = await self._get("/products", params)
        decoded = self._decode(t.PRODUCTS, response, "/products")
        if decoded.pagination is not None and decoded.pagination.has_next:
            log.warning(
                "coinbase /products says has_next: the list of %d products is incomplete", len(decoded.products)
            )
        return decoded.products

    async def product(self, product_id: str) -> t.Product:
        """``GET /products/{product_id}``."""
        path = f"/products/{quote(product_id, safe='')}"
        return self._decode(t.PRODUCT, await self._get(path), path)

    async def markets(self) -> list[Market]:
        """All products as :class:`~streams.symbols.Market` (base/quote currency ids; see ``markets.py``)."""
        return coinbase_markets(await self.products())

    async def markets_and_aliases(self) -> tuple[list[Market], dict[str, str]]:
        """Markets plus the alias map (``{"BTC-USDC": "BTC-USD", ...}``) from one products request."""
        products = await self.products()
        return coinbase_markets(products), coinbase_aliases(products)

    async def candles(
        self, product_id: str, granularity: t.Granularity, start_s: int, end_s: int, limit: int = MAX_CANDLES
    ) -> list[t.Candle]:
        """``GET /products/{id}/candles``: buckets in [start_s, end_s] (UNIX seconds), oldest first.

        Coinbase rejects a window of more than ``limit`` buckets (400 INVALID_ARGUMENT); use
        :meth:`candles_range` for longer spans.
        """
        seconds = _granularity_seconds(granularity)
        if not 1 <= limit <= MAX_CANDLES:
            raise ValueError(f"candles limit must be 1..{MAX_CANDLES}, got {limit}")
        path = f"/products/{quote(product_id, safe='')}/candles"
        params: dict[str, str | int] = {"start": start_s, "end": end_s, "granularity": granularity, "limit": limit}
        response = await self._get(path, params)
        rows = self._decode(t.CANDLES, response, path).candles
        try:
            return _oldest_first(rows, seconds, self.server_now_ms(response))
        except ValueError as exc:
            raise UnexpectedResponse(
                f"candle start is not UNIX seconds: {exc}", exchange=self.exchange, path=path
            ) from exc

    async def candles_range(
        self, product_id: str, granularity: t.Granularity, start_s: int, end_s: int, *, limit: int = MAX_CANDLES
    ) -> AsyncIterator[t.Candle]:
        """Every bucket with start in [start_s, end_s], oldest first, walking the span in windows of
        ``limit`` buckets.

        Windows are time-based (buckets without trades are simply absent, so counting rows would drift)
        and each starts at the previous window's last bucket: whether Coinbase treats ``end`` as
        inclusive or not, no bucket falls between two windows; the one-bucket overlap is de-duplicated.
        """
        seconds = _granularity_seconds(granularity)
        if not 2 <= limit <= MAX_CANDLES:
            raise ValueError(f"candles_range limit must be 2..{MAX_CANDLES}, got {limit}")
        cursor = -(-start_s // seconds) * seconds  # first bucket start >= start_s
        last: int | None = None
        while cursor <= end_s:
            window_end = min(end_s, cursor + (limit - 1) * seconds)
            for c in await self.candles(product_id, granularity, cursor, window_end, limit=limit):
                if c.start < start_s or c.start > end_s or (last is not None and c.start <= last):
                    continue
                last = c.start
                yield c
            if window_end >= end_s:
                return
            cursor = window_end


def _granularity_seconds(granularity: str) -> int:
    try:
        return t.GRANULARITY_SECONDS[granularity]
    except KeyError:
        raise ValueError(
            f"unknown Coinbase granularity {granularity!r}; one of {', '.join(t.GRANULARITY_SECONDS)}"
        ) from None


def _oldest_first(rows: Iterable[t.CandleRow], seconds: int, server_ms: int) -> list[t.Candle]:
    out: list[t.Candle] = []
    for row in rows:
        start = int(row.start)
        out.append(t.candle(row, start, closed=(start + seconds) * 1000 <= server_ms))
    out.sort(key=lambda c: c.start)
    return out
