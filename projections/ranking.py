"""Market tables (SYM-05) and the cross-exchange ranking (DIFF-03). Pure: no I/O.

:func:`market_rows`: every market of one exchange with its 24h volume (in its quote asset and in USD, as
Tier 1 ranks it), last price, market cap where the exchange gives one, and whether it trades (or why
not). Binance's ``ticker/24hr`` has no market cap; Coinbase's products carry a ``market_cap`` field,
empty for every product in the 2026-08-09 capture, so it is shown when filled and ``None`` otherwise.

:func:`cross_exchange` ranks base/quote *pairs* by the USD volume summed over the exchanges, with each
exchange's part. Markets are normalised by their assets, never by splitting names: Binance ``BTCUSDT``
is ``BTC``/``USDT`` through exchangeInfo, Coinbase ``BTC-USD`` is ``BTC``/``USD``. **Every USD-like
quote** (:data:`projections.tiers.USD_LIKE`: USD, USDT, USDC, BUSD, ...) **is one quote, ``USD``**:
Tier 1 already counts them one to one, and the question DIFF-03 answers is where a coin trades against
the dollar, so Binance BTCUSDT + BTCBUSD and Coinbase BTC-USD make one pair ``BTC/USD`` — the parts
keep each market apart (a depeg would show there). Other quotes stay themselves (``ETH/BTC``). Only
markets Tier 1 would count take part: trading, not a Coinbase alias (its target is counted), with a
USD conversion (same rules as Tier 1) and some 24h volume.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from projections.tiers import USD_LIKE, Candidate, usd_prices, usd_volume

USD_GROUP = "USD"


@dataclass(frozen=True)
class MarketRow:
    exchange: str
    symbol: str  # canonical BASE-QUOTE
    native: str  # the exchange's own name
    base: str
    quote: str
    quote_volume_24h: float  # in the quote asset
    usd_volume_24h: float | None  # None: no USD price for the quote or the base
    usd_via: str  # how it was converted ("USDT", "BTC via BTC-USDT", ...)
    last_price: float
    market_cap: str | None  # as the exchange gives it; None where it gives none
    tradable: bool
    why_not: str  # why it does not trade, or how it is counted (a Coinbase alias); "" otherwise


def market_rows(exchange: str, candidates: Iterable[Candidate]) -> list[MarketRow]:
    """One row per market, largest USD volume first (unconvertible ones last), ties by symbol."""
    pool = list(candidates)
    prices = usd_prices(pool)
    rows = []
    for c in pool:
        converted = usd_volume(c, prices)
        rows.append(
            MarketRow(
                exchange=exchange,
                symbol=c.symbol,
                native=c.native or c.symbol,
                base=c.base,
                quote=c.quote,
                quote_volume_24h=c.quote_volume,
                usd_volume_24h=converted[0] if converted else None,
                usd_via=converted[1] if converted else "",
                last_price=c.last_price,
                market_cap=c.market_cap or None,
                tradable=c.tradable,
                why_not=c.excluded,
            )
        )
    rows.sort(key=lambda r: (r.usd_volume_24h is None, -(r.usd_volume_24h or 0.0), r.symbol))
    return rows


def quote_group(quote: str) -> str:
    """The quote a pair is ranked under: ``USD`` for every USD-like quote, else the quote itself."""
    return USD_GROUP if quote in USD_LIKE else quote


@dataclass(frozen=True)
class Part:
    exchange: str
    symbol: str
    usd_volume_24h: float
    quote_volume_24h: float
    usd_via: str


@dataclass(frozen=True)
class PairRank:
    rank: int
    pair: str  # BASE/QUOTE, the quote grouped (BTC/USD)
    base: str
    quote: str
    usd_volume_24h: float  # the sum of the parts
    parts: list[Part] = field(default_factory=list)  # largest first

    @property
    def exchanges(self) -> list[str]:
        return sorted({p.exchange for p in self.parts})


def cross_exchange(by_exchange: Mapping[str, Iterable[Candidate]], n: int | None = None) -> list[PairRank]:
    """Pairs by combined 24h USD volume over the exchanges (the top ``n``, all when None), ties by pair."""
    parts: dict[tuple[str, str], list[Part]] = {}
    for exchange, candidates in by_exchange.items():
        pool = list(candidates)
        prices = usd_prices(pool)
        for c in pool:
            if c.excluded:
                continue
            converted = usd_volume(c, prices)
            if converted is None or converted[0] <= 0:
                continue
            part = Part(exchange, c.symbol, converted[0], c.quote_volume, converted[1])
            parts.setdefault((c.base, quote_group(c.quote)), []).append(part)
    totals = sorted(
        ((sum(p.usd_volume_24h for p in ps), base, quote, ps) for (base, quote), ps in parts.items()),
        key=lambda t: (-t[0], f"{t[1]}/{t[2]}"),
    )
    if n is not None:
        totals = totals[:n]
    return [
        PairRank(
            rank=i,
            pair=f"{base}/{quote}",
            base=base,
            quote=quote,
            usd_volume_24h=total,
            parts=sorted(ps, key=lambda p: (-p.usd_volume_24h, p.exchange, p.symbol)),
        )
        for i, (total, base, quote, ps) in enumerate(totals, start=1)
    ]
