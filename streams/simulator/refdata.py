"""Reference data for simulated markets: the real exchangeInfo / products responses in ``realdata/``.

The directory is ``$TICKFOLD_REALDATA`` or ``../shared/realdata`` beside the checkout (SOURCES.md there
gives provenance). Without it the simulator still runs: Binance symbols come from the snapshot shipped
in ``tickfold/data/binance_markets.json`` with default filters, Coinbase products from a built-in template.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from streams.simulator.wire import significant_decimals, to_units

EXCHANGE_INFO_FILE = "binance/rest_exchangeInfo_2021-10-12_full.json"
PRODUCTS_FILE = "coinbase/rest_market_products_2026-08-09.json"
_BINANCE_FIRST = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "DOTUSDT", "LTCUSDT")
_QUOTES = ("USDT", "BUSD", "USDC", "TUSD", "BTC", "ETH", "BNB", "EUR", "GBP", "TRY", "USD")
_USD_LIKE = ("USD", "USDT", "USDC", "BUSD", "TUSD")


def realdata_dir() -> Path:
    env = os.environ.get("TICKFOLD_REALDATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "realdata"


@dataclass(frozen=True)
class Instrument:
    """A simulated market: native symbol, assets, and the integer scales prices/quantities use."""

    exchange: str
    symbol: str  # BTCUSDT / BTC-USD
    base: str
    quote: str
    price_scale: int
    qty_scale: int
    tick: int  # price increment, in price units
    step: int  # quantity increment, in quantity units
    start_price: int  # in price units


@cache
def exchange_info() -> dict[str, Any]:
    path = realdata_dir() / EXCHANGE_INFO_FILE
    if path.is_file():
        info: dict[str, Any] = json.loads(path.read_bytes())
        return info
    raw = importlib.resources.files("tickfold").joinpath("data/binance_markets.json").read_bytes()
    rows = json.loads(raw)["markets"]
    return {"timezone": "UTC", "serverTime": 0, "rateLimits": [], "exchangeFilters": [],
            "symbols": [_binance_entry(s, b, q, st) for s, b, q, st in rows]}  # fmt: skip


@cache
def products() -> dict[str, Any]:
    path = realdata_dir() / PRODUCTS_FILE
    if path.is_file():
        doc: dict[str, Any] = json.loads(path.read_bytes())
        return doc
    return {"products": [_coinbase_entry("BTC-USD", "BTC", "USD")], "num_products": 1}


def _binance_entry(symbol: str, base: str, quote: str, status: str = "TRADING") -> dict[str, Any]:
    return {
        "symbol": symbol, "status": status, "baseAsset": base, "baseAssetPrecision": 8, "quoteAsset": quote,
        "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True, "ocoAllowed": True, "quoteOrderQtyMarketAllowed": True,
        "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
             "tickSize": "0.01000000"},
            {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
        ],
        "permissions": ["SPOT"],
    }  # fmt: skip


def _coinbase_entry(product_id: str, base: str, quote: str) -> dict[str, Any]:
    template = next((p for p in products_list() if p["product_id"] == "BTC-USD"), None) if _has_products() else None
    entry: dict[str, Any] = copy.deepcopy(template) if template else {
        "product_id": "", "price": "", "price_percentage_change_24h": "", "volume_24h": "",
        "volume_percentage_change_24h": "", "base_increment": "0.00000001", "quote_increment": "0.01",
        "quote_min_size": "1", "quote_max_size": "150000000", "base_min_size": "0.00000001", "base_max_size": "3400",
        "base_name": base, "quote_name": quote, "watched": False, "is_disabled": False, "new": False,
        "status": "online", "cancel_only": False, "limit_only": False, "post_only": False,
        "trading_disabled": False, "auction_mode": False, "product_type": "SPOT", "quote_currency_id": quote,
        "base_currency_id": base, "fcm_trading_session_details": None, "mid_market_price": "", "alias": "",
        "alias_to": [], "base_display_symbol": base, "quote_display_symbol": quote, "view_only": False,
        "price_increment": "0.01", "display_name": product_id, "product_venue": "CBE",
        "approximate_quote_24h_volume": "", "high_24h": "", "low_24h": "",
    }  # fmt: skip
    entry.update(product_id=product_id, base_currency_id=base, quote_currency_id=quote, base_display_symbol=base,
                 quote_display_symbol=quote, display_name=product_id, base_name=base, status="online",
                 trading_disabled=False, is_disabled=False, alias="", alias_to=[])  # fmt: skip
    return entry


def _has_products() -> bool:
    return (realdata_dir() / PRODUCTS_FILE).is_file()


def products_list() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = products()["products"]
    return found


@cache
def _binance_entries() -> dict[str, dict[str, Any]]:
    return {entry["symbol"]: entry for entry in exchange_info()["symbols"]}


def binance_symbol_entry(symbol: str, base: str = "", quote: str = "") -> dict[str, Any]:
    """The exchangeInfo entry of ``symbol`` (forced TRADING); made up (from ``base``/``quote``, else a
    known quote suffix) for a symbol the snapshot lacks."""
    entry = _binance_entries().get(symbol)
    if entry is not None:
        return {**entry, "status": "TRADING"}
    if base and quote:
        return _binance_entry(symbol, base, quote)
    for suffix in _QUOTES:
        if symbol.endswith(suffix) and len(symbol) > len(suffix):
            return _binance_entry(symbol, symbol[: -len(suffix)], suffix)
    raise ValueError(f"cannot tell base and quote of Binance symbol {symbol!r}; pass it as BASE-QUOTE")


def coinbase_product_entry(product_id: str) -> dict[str, Any]:
    for entry in products_list():
        if entry["product_id"] == product_id:
            return {**entry, "status": "online", "trading_disabled": False, "is_disabled": False}
    base, sep, quote = product_id.partition("-")
    if not sep:
        raise ValueError(f"Coinbase product ids are BASE-QUOTE, got {product_id!r}")
    return _coinbase_entry(product_id, base, quote)


def pick_symbols(exchange: str, n: int) -> list[str]:
    """``n`` real, tradable symbols (well-known ones first), then made-up ``S<i>USDT`` / ``S<i>-USD``."""
    if exchange == "binance":
        listed = [s["symbol"] for s in exchange_info()["symbols"] if s["status"] == "TRADING"]
        ordered = [s for s in _BINANCE_FIRST if s in listed] + [s for s in listed if s not in _BINANCE_FIRST]
        made_up = (f"S{i}USDT" for i in range(n))
    else:
        ordered = [p["product_id"] for p in products_list() if p["status"] == "online" and not p.get("alias")]
        made_up = (f"S{i}-USD" for i in range(n))
    out = ordered[:n]
    out.extend(s for _, s in zip(range(n - len(out)), made_up, strict=False))
    return out


@cache
def _prices() -> dict[str, str]:
    return {p["product_id"]: p.get("price", "") for p in products_list()}


def _price_hint(base: str, quote: str) -> float | None:
    prices = _prices()
    usd = prices.get(f"{base}-USD")
    if quote in _USD_LIKE and usd:
        return float(usd)
    btc = prices.get("BTC-USD")
    if quote == "BTC" and usd and btc:
        return float(usd) / float(btc)
    return None


def instrument(exchange: str, symbol: str, base: str = "", quote: str = "") -> Instrument:
    """The simulated market ``symbol``; ``base``/``quote`` name the assets of a made-up Binance symbol."""
    if exchange == "binance":
        entry = binance_symbol_entry(symbol, base, quote)
        filters = {f["filterType"]: f for f in entry["filters"]}
        tick_text = filters.get("PRICE_FILTER", {}).get("tickSize", "0.01000000")
        step_text = filters.get("LOT_SIZE", {}).get("stepSize", "0.00001000")
        base, quote = entry["baseAsset"], entry["quoteAsset"]
    else:
        entry = coinbase_product_entry(symbol)
        tick_text = entry.get("price_increment") or entry.get("quote_increment") or "0.01"
        step_text = entry.get("base_increment") or "0.00000001"
        base, quote = entry["base_currency_id"], entry["quote_currency_id"]
    price_scale = max(significant_decimals(tick_text), 0)
    qty_scale = max(significant_decimals(step_text), 0)
    tick = max(to_units(tick_text, price_scale), 1)
    step = max(to_units(step_text, qty_scale), 1)
    hint = _price_hint(base, quote)
    if hint is None:
        digest = int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:4], "big")
        hint = 10 ** (digest % 600 / 100 - 2)  # 0.01 .. 10,000, stable per symbol
    ticks = max(int(hint * 10**price_scale) // tick, 2_000)
    return Instrument(exchange, symbol, base, quote, price_scale, qty_scale, tick, step, ticks * tick)
