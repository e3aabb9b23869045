"""Symbol normalization: exchange-native symbols <-> tickfold's canonical ``BASE-QUOTE``.

* Canonical form is ``BASE-QUOTE`` in upper case; the quote asset is kept as it is (``BTC-USD`` and
  ``BTC-USDT`` are different markets, and Coinbase ``BTC-USDC`` stays ``BTC-USDC``).
* Coinbase product ids already are ``BASE-QUOTE``.
* Binance symbols (``BTCUSDT``) are never split by string: they map through exchangeInfo's
  ``baseAsset``/``quoteAsset``. The package ships a snapshot of that table for offline use.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Iterable
from functools import cache
from typing import Any

import msgspec

from streams import keys
from streams.log import translated
from tickfold.errors import KeyFormatError


class Market(msgspec.Struct, frozen=True):
    exchange: str
    native: str  # the exchange's own symbol: BTCUSDT, BTC-USD
    base: str
    quote: str
    status: str = "TRADING"

    @property
    def canonical(self) -> str:
        return f"{self.base}-{self.quote}"


class UnknownSymbol(KeyFormatError):
    pass


class SymbolMap:
    """Native <-> canonical lookups for the markets of one exchange."""

    def __init__(self, exchange: str, markets: Iterable[Market]) -> None:
        self.exchange = exchange
        self._by_native = {m.native: m for m in markets}
        self._by_canonical = {m.canonical: m for m in self._by_native.values()}

    @property
    def markets(self) -> dict[str, Market]:
        return dict(self._by_native)

    def canonical(self, native: str) -> str:
        """The canonical name of a symbol as it appears in the exchange's frames."""
        if self.exchange == "coinbase":
            return _coinbase_canonical(native)
        market = self._by_native.get(native.upper())
        if market is None:
            raise UnknownSymbol(f"{self.exchange} symbol {native!r} is not in the market list")
        return market.canonical

    def resolve(self, text: str) -> str:
        """A user-typed symbol, native (``BTCUSDT``) or canonical (``BTC-USDT``, ``btc/usdt``) -> canonical."""
        norm = text.strip().upper().replace("/", "-").replace("_", "-")
        if norm in self._by_canonical:
            return norm
        if self.exchange == "coinbase":
            return _coinbase_canonical(norm)
        return self.canonical(norm.replace("-", "") if norm.replace("-", "") in self._by_native else norm)

    def native(self, canonical: str) -> str:
        if self.exchange == "coinbase":
            return canonical
        market = self._by_canonical.get(canonical)
        if market is None:
            raise UnknownSymbol(f"{self.exchange} has no market {canonical!r}")
        return market.native


def _coinbase_canonical(product_id: str) -> str:
    base, sep, quote = product_id.upper().partition("-")
    if not sep or not base or not quote or "-" in quote:
        raise UnknownSymbol(f"coinbase product id {product_id!r} is not BASE-QUOTE")
    return f"{base}-{quote}"


_MARKET_JSON = msgspec.json.Encoder()
_MARKET = msgspec.json.Decoder(Market)


async def store_markets(client: Any, exchange_id: str, markets: Iterable[Market]) -> int:
    """Replace the market list of an exchange in Redis (``markets:{exchange_id}``); returns the count."""
    key = keys.markets(exchange_id)
    mapping = {m.native: _MARKET_JSON.encode(m) for m in markets}
    with translated(f"writing {key}"):
        pipe = client.pipeline(transaction=True)
        pipe.delete(key)
        if mapping:
            pipe.hset(key, mapping=mapping)
        await pipe.execute()
    return len(mapping)


async def load_symbol_map(client: Any, exchange_id: str) -> SymbolMap:
    """The markets synced from the exchange (``tickfold markets sync``), over the bundled snapshot."""
    with translated(f"reading {keys.markets(exchange_id)}"):
        stored: dict[bytes, bytes] = await client.hgetall(keys.markets(exchange_id))
    markets = bundled(exchange_id).markets
    for raw in stored.values():
        m = _MARKET.decode(raw)
        markets[m.native] = m
    return SymbolMap(exchange_id, markets.values())


@cache
def bundled(exchange: str) -> SymbolMap:
    """The market list shipped with tickfold (Binance: an exchangeInfo snapshot; Coinbase: rule-based)."""
    if exchange != "binance":
        return SymbolMap(exchange, [])
    text = importlib.resources.files("tickfold").joinpath("data/binance_markets.json").read_text()
    rows = json.loads(text)["markets"]
    return SymbolMap("binance", [Market("binance", s, b, q, st) for s, b, q, st in rows])
