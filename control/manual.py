"""Manual adds (SYM-03): a user adds a symbol to the universe, checked against the exchange's metadata.

:func:`add_manual` looks the symbol up in the exchange's own REST metadata (Binance ``exchangeInfo``,
Coinbase ``market/products``, through the ``exchanges`` row's ``rest_url``): a symbol the exchange does
not list is refused (:class:`~streams.symbols.UnknownSymbol`), so is one that does not trade — Binance
status other than ``TRADING`` (``BREAK``, ``HALT``, ...), a Coinbase product that is not online or is
disabled / cancel-only / view-only / in auction (:class:`NotTradable`), and a Coinbase alias, which
names its target's book (add the target). Nothing is written for a refused symbol.

An accepted market is remembered for ``LISTING_MAX_AGE_S`` (60 s) per exchange REST API, in the
process: further adds of markets that listing accepts (many users adding the same symbols through
the API) cost no request (Binance's exchangeInfo weighs 20 of its 6,000 a minute). Anything the
remembered listing would refuse — an unknown name, a market that does not trade — is asked again,
so a refusal is always the exchange's current answer.

An accepted add appends ``symbol:added`` (tier ``manual``, the user, the reason) to the control stream
and registers the user as a holder exactly as a Tier 2 position does (:func:`projections.scope.hold`):
a symbol in Tier 1 (``pool:{exchange}``) stays in the shared keys only (never stored twice), one
outside it goes to the user's overflow keys with a TTL, refreshed with the positions'
(:func:`control.positions.refresh_holds`). Adding the same symbol again appends nothing (the hold is
refreshed). :func:`remove_manual` appends ``symbol:removed`` and releases the hold unless the user still
holds a position in the symbol.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from control import universe as uv
from control.commands import append_entry, now_ns
from control.tier1 import RestClient, read_universe
from projections import scope, tiers
from streams.rest import BinanceRestClient
from streams.symbols import UnknownSymbol
from tickfold.errors import TickfoldError

TIER = "manual"


class NotTradable(TickfoldError):
    """The exchange lists the symbol, but it does not trade (or is an alias of another product)."""


class NoManualAdd(TickfoldError):
    """Removing a manual add that is not there."""


@dataclass(frozen=True)
class Checked:
    """A symbol the exchange lists and trades: canonical ``BASE-QUOTE``, the exchange's own name."""

    exchange: str
    symbol: str
    native: str


def _norm(text: str) -> str:
    return text.strip().upper().replace("/", "-")


LISTING_MAX_AGE_S = 60.0


@dataclass
class Listings:
    """Markets accepted recently, per (exchange, REST base URL): name -> (when, the answer)."""

    max_age_s: float = LISTING_MAX_AGE_S
    clock: Callable[[], float] = time.monotonic
    accepted: dict[tuple[str, str, str], tuple[float, Checked]] = field(default_factory=dict)

    def get(self, rest: RestClient, exchange_id: str, wanted: str) -> Checked | None:
        hit = self.accepted.get((exchange_id, rest.base_url, wanted))
        return hit[1] if hit is not None and self.clock() - hit[0] <= self.max_age_s else None

    def put(self, rest: RestClient, exchange_id: str, wanted: str, checked: Checked) -> None:
        now = self.clock()
        if len(self.accepted) > 10_000:  # (bounded: drop what is too old to be used)
            self.accepted = {k: v for k, v in self.accepted.items() if now - v[0] <= self.max_age_s}
        self.accepted[(exchange_id, rest.base_url, wanted)] = (now, checked)


LISTINGS = Listings()


async def check_market(
    rest: RestClient, exchange_id: str, text: str, *, listings: Listings | None = LISTINGS
) -> Checked:
    """``text`` (native or canonical) as a tradable market of the exchange, from its REST metadata (an
    accepted market remembered in ``listings`` for its ``max_age_s``; ``None``: always ask)."""
    wanted = _norm(text)
    if not wanted:
        raise UnknownSymbol(f"{exchange_id}: no symbol given")
    if listings is not None and (known := listings.get(rest, exchange_id, wanted)) is not None:
        return known
    checked = await _ask(rest, exchange_id, text, wanted)
    if listings is not None:
        listings.put(rest, exchange_id, wanted, checked)
    return checked


async def _ask(rest: RestClient, exchange_id: str, text: str, wanted: str) -> Checked:
    if isinstance(rest, BinanceRestClient):
        info = await rest.exchange_info()
        for s in info.symbols:
            canonical = f"{s.base_asset}-{s.quote_asset}"
            if wanted in (s.symbol, canonical):
                if why := tiers.binance_not_trading(s.status):
                    raise NotTradable(f"{exchange_id} {s.symbol} ({canonical}) does not trade: {why}")
                return Checked(exchange_id, canonical, s.symbol)
        listed = len(info.symbols)
    else:
        products = await rest.products()
        for p in products:
            if p.product_id == wanted:
                if why := tiers.coinbase_not_trading(p):
                    raise NotTradable(f"{exchange_id} {p.product_id} does not trade: {why}")
                if p.alias:
                    raise NotTradable(
                        f"{exchange_id} {p.product_id} is an alias of {p.alias} (the same order book): "
                        f"add {p.alias} instead"
                    )
                return Checked(exchange_id, p.product_id, p.product_id)
        listed = len(products)
    raise UnknownSymbol(f"{exchange_id} has no market {text!r} (not among the {listed} markets its REST API lists)")


async def _append(client: aioredis.Redis, event: uv.UniverseEvent) -> None:
    await append_entry(client, "event", uv.encode(event))


async def add_manual(
    client: aioredis.Redis,
    rest: RestClient,
    exchange_id: str,
    text: str,
    user: str,
    *,
    reason: str = "",
    ttl_ms: int = scope.DEFAULT_TTL_MS,
) -> tuple[Checked, uv.SymbolAdded | None]:
    """Check, append ``symbol:added`` (manual) unless the user already added it, hold; returns the event."""
    if not user:
        raise TickfoldError("a manual add needs a user")
    checked = await check_market(rest, exchange_id, text)
    member = (await read_universe(client)).symbols.get(exchange_id, {}).get(checked.symbol)
    event: uv.SymbolAdded | None = None
    if member is None or user not in member.tiers.get(TIER, {}):
        event = uv.SymbolAdded(
            exchange=exchange_id,
            at_ns=now_ns(),
            symbol=checked.symbol,
            tier=TIER,
            user=user,
            reason=reason or f"added by {user}",
        )
        await _append(client, event)
    await scope.hold(client, exchange_id, checked.symbol, user, ttl_ms)
    return checked, event


async def remove_manual(
    client: aioredis.Redis, exchange_id: str, text: str, user: str, *, reason: str = ""
) -> uv.SymbolRemoved:
    """Append ``symbol:removed`` (manual) for the user's add of ``text`` and release the hold (unless the
    user also holds a position in it). No REST check: the market may be gone by now."""
    wanted = _norm(text)
    added = manual_symbols(await read_universe(client), exchange_id, user)
    symbol = next((s for s in added if wanted in (s, s.replace("-", ""))), None)
    if symbol is None:
        mine = ", ".join(added) or "none"
        raise NoManualAdd(f"{user} has no manual add of {exchange_id} {text!r} (their manual adds there: {mine})")
    event = uv.SymbolRemoved(
        exchange=exchange_id, at_ns=now_ns(), symbol=symbol, tier=TIER, user=user, reason=reason or f"removed by {user}"
    )
    await _append(client, event)
    member = (await read_universe(client)).symbols.get(exchange_id, {}).get(symbol)
    if member is None or user not in member.tiers.get("tier2", {}):
        await scope.release(client, exchange_id, symbol, user)
    return event


def manual_symbols(universe: uv.Universe, exchange_id: str, user: str) -> list[str]:
    """The symbols ``user`` added manually on ``exchange_id``, sorted."""
    return sorted(s for s, m in universe.symbols.get(exchange_id, {}).items() if user in m.tiers.get(TIER, {}))


def manual_holds(universe: uv.Universe) -> list[tuple[str, str, str]]:
    """Every manual add as ``(exchange, symbol, user)``: the holds to keep refreshed."""
    return sorted(
        (exchange, symbol, user)
        for exchange, members in universe.symbols.items()
        for symbol, member in members.items()
        for user in member.tiers.get(TIER, {})
    )
