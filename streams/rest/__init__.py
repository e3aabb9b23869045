"""Async REST clients for exchange metadata and history backfill (Binance Spot, Coinbase Advanced Trade).

    async with BinanceRestClient() as bn:
        markets = await bn.markets()                        # exchangeInfo -> [Market]
        async for k in bn.klines_range("BTCUSDT", "1m", start_ms, end_ms):
            ...                                             # oldest first, k.closed from the response
    async with CoinbaseRestClient() as cb:
        async for c in cb.candles_range("BTC-USD", "ONE_MINUTE", start_s, end_s):
            ...

Rate limits are respected client-side (Binance request weight, Coinbase 10 requests/s), 429s wait
``Retry-After``, 5xx and connection errors back off; failures surface as :mod:`streams.rest.errors`.
"""

from streams.rest.binance import BINANCE_API, BINANCE_DATA_API, WEIGHTS, BinanceRestClient
from streams.rest.coinbase import COINBASE_MARKET_API, CoinbaseRestClient
from streams.rest.errors import BadRequest, Banned, ExchangeUnavailable, RateLimited, RestError, UnexpectedResponse
from streams.rest.http import Backoff
from streams.rest.markets import binance_markets, binance_symbol_map, coinbase_aliases, coinbase_markets
from streams.rest.types import AggTrade, Candle, ExchangeInfo, Granularity, Kline, Product, Ticker24hr

__all__ = [
    "BINANCE_API",
    "BINANCE_DATA_API",
    "COINBASE_MARKET_API",
    "WEIGHTS",
    "AggTrade",
    "Backoff",
    "BadRequest",
    "Banned",
    "BinanceRestClient",
    "Candle",
    "CoinbaseRestClient",
    "ExchangeInfo",
    "ExchangeUnavailable",
    "Granularity",
    "Kline",
    "Product",
    "RateLimited",
    "RestError",
    "Ticker24hr",
    "UnexpectedResponse",
    "binance_markets",
    "binance_symbol_map",
    "coinbase_aliases",
    "coinbase_markets",
]
