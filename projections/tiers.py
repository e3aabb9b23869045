"""Tier 1 (SYM-01): the top N symbols of an exchange by 24h quote volume, in USD. Pure: no I/O.

Which markets count:

* Binance: ``exchangeInfo`` status ``TRADING`` only (``BREAK``, ``HALT``, ... are skipped); the volume
  is ``ticker/24hr`` ``quoteVolume`` (in the quote asset).
* Coinbase: ``market/products`` with status ``online`` and none of ``trading_disabled``,
  ``is_disabled``, ``cancel_only``, ``view_only``, ``auction_mode`` (``limit_only`` / ``post_only``
  products still trade and count). The volume is ``approximate_quote_24h_volume`` (in the quote
  currency). An alias (``BTC-USDC`` with ``alias == "BTC-USD"``) shares its target's book and volume,
  so it is counted once, as the target.

Making volumes comparable (USD):

* a USD-like quote (:data:`USD_LIKE`) counts as 1:1;
* otherwise the quote volume is converted with the quote asset's USD price (``ETH-BTC`` through
  ``BTC-USD``/``BTCUSDT``), else through the base asset's USD price (base volume = quote volume /
  last price, times the base's USD price: ``BTC-EUR`` through ``BTC-USD``);
* a USD price is the last price of a tradable ``ASSET-<USD-like>`` market of the same exchange
  (preferring the order of :data:`USD_LIKE`); a market with neither is **excluded** and listed in
  :attr:`Tier1.excluded` with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from control.universe import SymbolAdded, SymbolRemoved, Universe, UniverseEvent
from streams.rest.types import ExchangeInfo, Product, Ticker24hr

USD_LIKE: Final = ("USD", "USDT", "USDC", "BUSD", "FDUSD", "DAI", "TUSD", "USDP", "PYUSD")
TIER: Final = "tier1"


@dataclass(frozen=True)
class Candidate:
    """One market with its 24h volume in its quote asset; ``excluded`` says why it is not tradable."""

    symbol: str  # canonical BASE-QUOTE
    base: str
    quote: str
    quote_volume: float
    last_price: float
    excluded: str = ""
    native: str = ""  # the exchange's own name (BTCUSDT); "" when it is the canonical one
    alias_of: str = ""  # Coinbase: the product whose book this one shares (BTC-USDC -> BTC-USD)
    market_cap: str = ""  # as the exchange gives it ("" when it gives none)

    @property
    def tradable(self) -> bool:
        """Open for trading (an alias is: it trades on its target's book, though it is ranked once, as that)."""
        return not self.excluded or (bool(self.alias_of) and self.excluded == alias_reason(self.alias_of))


@dataclass(frozen=True)
class Ranked:
    symbol: str
    rank: int
    usd_volume: float
    reason: str


@dataclass(frozen=True)
class Tier1:
    ranked: list[Ranked]
    excluded: dict[str, str] = field(default_factory=dict)  # symbol -> why it was not ranked
    n: int = 0

    @property
    def symbols(self) -> list[str]:
        return [r.symbol for r in self.ranked]


def _num(text: str) -> float:
    try:
        return float(text) if text else 0.0
    except ValueError:
        return 0.0


def binance_candidates(info: ExchangeInfo, tickers: Iterable[Ticker24hr]) -> list[Candidate]:
    by_symbol = {t.symbol: t for t in tickers}
    out: list[Candidate] = []
    for s in info.symbols:
        tk = by_symbol.get(s.symbol)
        excluded = binance_not_trading(s.status)
        if tk is None and not excluded:
            excluded = "no 24h ticker"
        volume, last = (_num(tk.quote_volume), _num(tk.last_price)) if tk else (0.0, 0.0)
        canonical = f"{s.base_asset}-{s.quote_asset}"
        out.append(Candidate(canonical, s.base_asset, s.quote_asset, volume, last, excluded, native=s.symbol))
    return out


def binance_not_trading(status: str) -> str:
    """Why a Binance symbol of this exchangeInfo ``status`` does not trade ("" when it does)."""
    return "" if status == "TRADING" else f"status {status}"


def coinbase_not_trading(p: Product) -> str:
    """Why a Coinbase product does not trade ("" when it does); ``limit_only`` / ``post_only`` still trade."""
    if p.status != "online":
        return f"status {p.status}"
    for flag in ("trading_disabled", "is_disabled", "cancel_only", "view_only", "auction_mode"):
        if getattr(p, flag):
            return flag
    return ""


def alias_reason(target: str) -> str:
    return f"alias of {target} (counted once, as {target})"


def coinbase_excluded(p: Product) -> str:
    """Why a Coinbase product is not counted ("" when it is): not trading, or an alias."""
    return coinbase_not_trading(p) or (alias_reason(p.alias) if p.alias else "")


def coinbase_candidates(products: Iterable[Product]) -> list[Candidate]:
    return [
        Candidate(
            p.product_id,
            p.base_currency_id,
            p.quote_currency_id,
            _num(p.approximate_quote_24h_volume),
            _num(p.price),
            coinbase_excluded(p),
            alias_of=p.alias,
            market_cap=p.market_cap,
        )
        for p in products
    ]


def usd_prices(candidates: Iterable[Candidate]) -> dict[str, tuple[float, str]]:
    """Asset -> (USD price, the market it comes from), from tradable ``ASSET-<USD-like>`` markets."""
    best: dict[str, tuple[int, float, str]] = {}
    for c in candidates:
        if c.excluded or c.quote not in USD_LIKE or c.last_price <= 0:
            continue
        pref = USD_LIKE.index(c.quote)
        if c.base not in best or pref < best[c.base][0]:
            best[c.base] = (pref, c.last_price, c.symbol)
    return {asset: (price, symbol) for asset, (_, price, symbol) in best.items()}


def usd_volume(c: Candidate, prices: dict[str, tuple[float, str]]) -> tuple[float, str] | None:
    """The candidate's 24h volume in USD and how it was converted; None when it cannot be."""
    if c.quote in USD_LIKE:
        return c.quote_volume, c.quote
    if c.quote in prices:
        price, via = prices[c.quote]
        return c.quote_volume * price, f"{c.quote} via {via}"
    if c.base in prices and c.last_price > 0:
        price, via = prices[c.base]
        return c.quote_volume / c.last_price * price, f"{c.base} via {via}"
    return None


def rank(candidates: Iterable[Candidate], n: int, quotes: Iterable[str] | None = None) -> Tier1:
    """The top ``n`` tradable candidates by USD volume (ties by symbol), only quotes in ``quotes`` if given."""
    pool = list(candidates)
    prices = usd_prices(pool)
    allowed = frozenset(q.upper() for q in quotes) if quotes is not None else None
    excluded: dict[str, str] = {}
    scored: list[tuple[float, str, str]] = []
    for c in pool:
        if c.excluded:
            excluded[c.symbol] = c.excluded
            continue
        if allowed is not None and c.quote not in allowed:
            excluded[c.symbol] = f"quote {c.quote} not in {sorted(allowed)}"
            continue
        converted = usd_volume(c, prices)
        if converted is None:
            excluded[c.symbol] = f"no USD price for {c.quote} or {c.base}"
            continue
        scored.append((converted[0], c.symbol, converted[1]))
    scored.sort(key=lambda s: (-s[0], s[1]))
    ranked = [
        Ranked(symbol, i, vol, f"rank {i} by 24h quote volume ({vol:.4g} USD, {via})")
        for i, (vol, symbol, via) in enumerate(scored[:n], start=1)
    ]
    return Tier1(ranked, excluded, n)


def _why_out(tier1: Tier1, symbol: str) -> str:
    return tier1.excluded.get(symbol) or f"no longer in the top {tier1.n}"


def tier1_changes(universe: Universe, exchange: str, tier1: Tier1, at_ns: int) -> list[UniverseEvent]:
    """The events that turn the universe's Tier 1 of ``exchange`` into ``tier1``: differences only."""
    current = {s for s, m in universe.symbols.get(exchange, {}).items() if TIER in m.tiers}
    wanted = {r.symbol: r for r in tier1.ranked}
    events: list[UniverseEvent] = [
        SymbolRemoved(exchange=exchange, at_ns=at_ns, symbol=s, tier=TIER, reason=_why_out(tier1, s))
        for s in sorted(current - wanted.keys())
    ]
    events.extend(
        SymbolAdded(exchange=exchange, at_ns=at_ns, symbol=r.symbol, tier=TIER, reason=r.reason)
        for r in tier1.ranked
        if r.symbol not in current
    )
    return events
