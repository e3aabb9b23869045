"""Exchange metadata -> :class:`streams.symbols.Market` (never by splitting symbol strings).

* Binance: ``exchangeInfo.symbols[]`` -> ``Market("binance", symbol, baseAsset, quoteAsset, status)``;
  ``status`` is Binance's own (TRADING, BREAK, HALT, END_OF_DAY, CANCEL_ONLY).
* Coinbase: ``products[]`` -> ``Market("coinbase", product_id, base_currency_id, quote_currency_id, status)``
  with the status folded onto Binance's vocabulary: ``"TRADING"`` when ``status == "online"`` and trading
  is enabled (``"CANCEL_ONLY"`` when the product only accepts cancels), ``"HALT"`` when online but
  trading is disabled, else Coinbase's status upper-cased (``"DELISTED"``).
  Aliases (``BTC-USDC`` mirrors ``BTC-USD``) are kept apart by :func:`coinbase_aliases`; both products
  stay in the market list under their own ids, since tickfold keeps quotes as they are.
"""

from __future__ import annotations

from collections.abc import Iterable

from streams.rest.types import ExchangeInfo, Product
from streams.symbols import Market, SymbolMap

TRADING = "TRADING"


def binance_markets(info: ExchangeInfo) -> list[Market]:
    return [Market("binance", s.symbol, s.base_asset, s.quote_asset, s.status) for s in info.symbols]


def binance_symbol_map(info: ExchangeInfo) -> SymbolMap:
    return SymbolMap("binance", binance_markets(info))


def coinbase_status(product: Product) -> str:
    if product.status == "online":
        if product.trading_disabled or product.is_disabled:
            return "HALT"
        if product.cancel_only:
            return "CANCEL_ONLY"
        return TRADING
    return product.status.upper() or "UNKNOWN"


def coinbase_markets(products: Iterable[Product]) -> list[Market]:
    return [
        Market("coinbase", p.product_id, p.base_currency_id, p.quote_currency_id, coinbase_status(p)) for p in products
    ]


def coinbase_aliases(products: Iterable[Product]) -> dict[str, str]:
    """Alias product -> the product it mirrors, e.g. ``{"BTC-USDC": "BTC-USD"}`` (from ``alias`` and
    ``alias_to``, whichever side lists the pair)."""
    out: dict[str, str] = {}
    for p in products:
        if p.alias:
            out[p.product_id] = p.alias
        for mirror in p.alias_to:
            out.setdefault(mirror, p.product_id)
    return out
