"""Wire types of the REST responses tickfold reads, as msgspec Structs, and their decoders (built once).

Conventions: decimal quantities stay the exact strings the exchange sent; fields the exchange sends as
JSON integers are ``int``; unknown fields are ignored (exchanges add fields), and fields that older or
trimmed responses leave out have defaults. Field names are Pythonic; ``rename`` maps them to the wire.

Binance rows (klines) are JSON arrays and decode through ``array_like`` structs (:class:`KlineRow`);
the clients hand out :class:`Kline` with a ``closed`` flag instead. Coinbase candles carry ``start``
as a string of UNIX seconds (:class:`CandleRow`); the clients hand out :class:`Candle` with an int.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

# --------------------------------------------------------------------------------------------------
# Binance Spot  (GET /api/v3/...)
# --------------------------------------------------------------------------------------------------


class RateLimit(msgspec.Struct, frozen=True, rename="camel"):
    """One entry of ``exchangeInfo.rateLimits``: ``REQUEST_WEIGHT`` / ``ORDERS`` / ``RAW_REQUESTS``."""

    rate_limit_type: str
    interval: str  # SECOND, MINUTE, HOUR, DAY
    interval_num: int
    limit: int

    @property
    def window_s(self) -> float:
        return self.interval_num * _INTERVAL_SECONDS.get(self.interval, 60)


_INTERVAL_SECONDS: Final = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}


class SymbolInfo(msgspec.Struct, frozen=True, rename="camel"):
    """One entry of ``exchangeInfo.symbols``. ``status``: TRADING, END_OF_DAY, HALT, BREAK, CANCEL_ONLY."""

    symbol: str
    status: str
    base_asset: str
    quote_asset: str
    base_asset_precision: int = 8
    quote_asset_precision: int = 8
    order_types: list[str] = msgspec.field(default_factory=list)
    is_spot_trading_allowed: bool = True
    is_margin_trading_allowed: bool = False
    # Filters are a heterogeneous family (PRICE_FILTER, LOT_SIZE, ...) keyed by "filterType"; kept as
    # plain mappings, their decimal values as strings.
    filters: list[dict[str, object]] = msgspec.field(default_factory=list)
    permissions: list[str] = msgspec.field(default_factory=list)


class ExchangeInfo(msgspec.Struct, frozen=True, rename="camel"):
    timezone: str
    server_time: int
    rate_limits: list[RateLimit] = msgspec.field(default_factory=list)
    exchange_filters: list[dict[str, object]] = msgspec.field(default_factory=list)
    symbols: list[SymbolInfo] = msgspec.field(default_factory=list)


class KlineRow(msgspec.Struct, frozen=True, array_like=True):
    """``[openTime,o,h,l,c,v,closeTime,quoteVol,n,takerBuyBase,takerBuyQuote,"0"]`` as sent."""

    open_time: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    close_time: int
    quote_volume: str
    trades: int
    taker_buy_base_volume: str
    taker_buy_quote_volume: str
    ignore: str = "0"


class Kline(msgspec.Struct, frozen=True):
    """A Binance kline; ``closed`` is decided from the response (see ``BinanceRestClient.klines``)."""

    open_time: int  # epoch ms, identifies the kline
    open: str
    high: str
    low: str
    close: str
    volume: str
    close_time: int  # epoch ms, open_time + interval - 1
    quote_volume: str
    trades: int
    taker_buy_base_volume: str
    taker_buy_quote_volume: str
    closed: bool


class Ticker24hr(msgspec.Struct, frozen=True, rename="camel"):
    """``GET /api/v3/ticker/24hr`` (FULL). A symbol without trades has ``firstId``/``lastId`` -1."""

    symbol: str
    price_change: str
    price_change_percent: str
    weighted_avg_price: str
    last_price: str
    open_price: str
    high_price: str
    low_price: str
    volume: str
    quote_volume: str
    open_time: int
    close_time: int
    first_id: int
    last_id: int
    count: int
    prev_close_price: str = ""
    last_qty: str = ""
    bid_price: str = ""
    bid_qty: str = ""
    ask_price: str = ""
    ask_qty: str = ""


class AggTrade(msgspec.Struct, frozen=True):
    """``GET /api/v3/aggTrades`` row. ``buyer_maker`` (``m``) true means the taker sold."""

    id: int = msgspec.field(name="a")
    price: str = msgspec.field(name="p")
    qty: str = msgspec.field(name="q")
    first_trade_id: int = msgspec.field(name="f")
    last_trade_id: int = msgspec.field(name="l")
    time: int = msgspec.field(name="T")
    buyer_maker: bool = msgspec.field(name="m")
    best_match: bool = msgspec.field(name="M", default=True)


class BinanceErrorBody(msgspec.Struct, frozen=True):
    """``{"code":-1121,"msg":"Invalid symbol."}``"""

    code: int | None = None
    msg: str = ""


# --------------------------------------------------------------------------------------------------
# Coinbase Advanced Trade, public market data  (GET /api/v3/brokerage/market/...)
# --------------------------------------------------------------------------------------------------

Granularity = Literal[
    "ONE_MINUTE",
    "FIVE_MINUTE",
    "FIFTEEN_MINUTE",
    "THIRTY_MINUTE",
    "ONE_HOUR",
    "TWO_HOUR",
    "FOUR_HOUR",
    "SIX_HOUR",
    "ONE_DAY",
]

GRANULARITY_SECONDS: Final[dict[str, int]] = {
    "ONE_MINUTE": 60,
    "FIVE_MINUTE": 300,
    "FIFTEEN_MINUTE": 900,
    "THIRTY_MINUTE": 1800,
    "ONE_HOUR": 3600,
    "TWO_HOUR": 7200,
    "FOUR_HOUR": 14400,
    "SIX_HOUR": 21600,
    "ONE_DAY": 86400,
}


class Product(msgspec.Struct, frozen=True):
    """One product of ``GET /products`` (or ``GET /products/{id}``).

    Decimal fields are strings and may be ``""`` (e.g. ``volume_24h`` of a delisted product).
    ``alias``: the product this one mirrors (``BTC-USDC`` → ``"BTC-USD"``); ``alias_to``: the products
    that mirror this one (``BTC-USD`` → ``["BTC-USDC"]``).
    """

    product_id: str
    base_currency_id: str
    quote_currency_id: str
    status: str  # "online", "delisted", ...
    trading_disabled: bool = False
    price: str = ""
    price_percentage_change_24h: str = ""
    volume_24h: str = ""
    volume_percentage_change_24h: str = ""
    approximate_quote_24h_volume: str = ""
    base_increment: str = ""
    quote_increment: str = ""
    price_increment: str = ""
    base_min_size: str = ""
    base_max_size: str = ""
    quote_min_size: str = ""
    quote_max_size: str = ""
    base_name: str = ""
    quote_name: str = ""
    base_display_symbol: str = ""
    quote_display_symbol: str = ""
    display_name: str = ""
    product_type: str = ""
    product_venue: str = ""
    is_disabled: bool = False
    cancel_only: bool = False
    limit_only: bool = False
    post_only: bool = False
    auction_mode: bool = False
    view_only: bool = False
    alias: str = ""
    alias_to: list[str] = msgspec.field(default_factory=list)
    high_24h: str = ""
    low_24h: str = ""
    mid_market_price: str = ""
    new_at: str = ""
    market_cap: str = ""  # sent, but empty for all 920 products of the 2026-08-09 capture


class Pagination(msgspec.Struct, frozen=True):
    prev_cursor: str = ""
    next_cursor: str = ""
    has_next: bool = False
    has_prev: bool = False


class ProductsResponse(msgspec.Struct, frozen=True):
    products: list[Product]
    num_products: int = 0
    pagination: Pagination | None = None


class CandleRow(msgspec.Struct, frozen=True):
    """A candle as sent: ``start`` is UNIX seconds as a string."""

    start: str
    low: str
    high: str
    open: str
    close: str
    volume: str


class CandlesResponse(msgspec.Struct, frozen=True):
    candles: list[CandleRow]  # newest first on the wire


class Candle(msgspec.Struct, frozen=True):
    """A Coinbase candle as handed out: ``start`` in UNIX seconds; ``closed`` decided from the response."""

    start: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    closed: bool


class CoinbaseErrorBody(msgspec.Struct, frozen=True):
    """``{"error":"INVALID_ARGUMENT","error_details":"…","message":"…"}`` (fields vary by endpoint)."""

    error: str | None = None
    code: int | str | None = None
    message: str = ""
    error_details: str = ""


# --------------------------------------------------------------------------------------------------
# Decoders, built once
# --------------------------------------------------------------------------------------------------

EXCHANGE_INFO: Final = msgspec.json.Decoder(ExchangeInfo)
KLINES: Final = msgspec.json.Decoder(list[KlineRow])
TICKER_24HR_ONE: Final = msgspec.json.Decoder(Ticker24hr)
TICKER_24HR_ALL: Final = msgspec.json.Decoder(list[Ticker24hr])
AGG_TRADES: Final = msgspec.json.Decoder(list[AggTrade])
BINANCE_ERROR: Final = msgspec.json.Decoder(BinanceErrorBody)

PRODUCTS: Final = msgspec.json.Decoder(ProductsResponse)
PRODUCT: Final = msgspec.json.Decoder(Product)
CANDLES: Final = msgspec.json.Decoder(CandlesResponse)
COINBASE_ERROR: Final = msgspec.json.Decoder(CoinbaseErrorBody)


def kline(row: KlineRow, *, closed: bool) -> Kline:
    return Kline(
        open_time=row.open_time,
        open=row.open,
        high=row.high,
        low=row.low,
        close=row.close,
        volume=row.volume,
        close_time=row.close_time,
        quote_volume=row.quote_volume,
        trades=row.trades,
        taker_buy_base_volume=row.taker_buy_base_volume,
        taker_buy_quote_volume=row.taker_buy_quote_volume,
        closed=closed,
    )


def candle(row: CandleRow, start: int, *, closed: bool) -> Candle:
    return Candle(
        start=start, open=row.open, high=row.high, low=row.low, close=row.close, volume=row.volume, closed=closed
    )
