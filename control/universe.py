"""The symbol universe as events (SYM-01, SYM-02, SYM-04): which symbols are watched, in which tier, why.

Every change is an event on the control stream (field ``event``, like the lifecycle events):
``symbol:added`` / ``symbol:removed`` with the exchange, the canonical symbol, the tier (``tier1`` —
top N by 24h quote volume; ``tier2`` — a user's held position, with the user; ``manual`` — SYM-03)
and the reason. The current universe is a pure fold of those events (:func:`fold`), so it survives
restarts and can be replayed. A symbol can be in several tiers at once; it is *watched* while it is in
any, and *shared* (exchange-scoped keys) while it is in Tier 1 (SYM-04: never stored twice).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import msgspec

TIERS: Final = ("tier1", "tier2", "manual")


class SymbolAdded(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="symbol:added"):
    exchange: str
    at_ns: int
    symbol: str  # canonical BASE-QUOTE
    tier: str  # tier1, tier2, manual
    user: str = ""  # tier2 / manual: whose
    reason: str = ""  # e.g. "rank 3 by 24h quote volume (1.2e9 USD)", "position opened"


class SymbolRemoved(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="symbol:removed"):
    exchange: str
    at_ns: int
    symbol: str
    tier: str
    user: str = ""
    reason: str = ""


UniverseEvent = SymbolAdded | SymbolRemoved
_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(UniverseEvent)


def encode(event: UniverseEvent) -> bytes:
    return _ENCODER.encode(event)


def decode(raw: bytes) -> UniverseEvent:
    event: UniverseEvent = _DECODER.decode(raw)
    return event


@dataclass
class Membership:
    """Why one symbol of one exchange is watched: its tiers (tier -> users, "" for tier1) and reasons."""

    tiers: dict[str, dict[str, str]] = field(default_factory=dict)  # tier -> {user: reason}

    @property
    def shared(self) -> bool:
        return "tier1" in self.tiers


@dataclass
class Universe:
    symbols: dict[str, dict[str, Membership]] = field(default_factory=dict)  # exchange -> symbol -> why

    def watched(self, exchange: str) -> list[str]:
        return sorted(s for s, m in self.symbols.get(exchange, {}).items() if m.tiers)

    def pool(self, exchange: str) -> list[str]:
        """Tier 1: the shared pool (``pool:{exchange}``)."""
        return sorted(s for s, m in self.symbols.get(exchange, {}).items() if m.shared)


def apply(universe: Universe, event: UniverseEvent) -> Universe:
    member = universe.symbols.setdefault(event.exchange, {}).setdefault(event.symbol, Membership())
    if isinstance(event, SymbolAdded):
        member.tiers.setdefault(event.tier, {})[event.user] = event.reason
    else:
        users = member.tiers.get(event.tier, {})
        users.pop(event.user, None)
        if not users:
            member.tiers.pop(event.tier, None)
        if not member.tiers:
            del universe.symbols[event.exchange][event.symbol]
    return universe


def fold(events: Iterable[UniverseEvent], universe: Universe | None = None) -> Universe:
    universe = universe or Universe()
    for event in events:
        apply(universe, event)
    return universe


CHECKPOINT_VERSION: Final = 1


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """The universe as of control-stream entry ``position`` (the fold of every entry up to it)."""

    version: int = CHECKPOINT_VERSION
    position: str
    symbols: dict[str, dict[str, dict[str, dict[str, str]]]]  # exchange -> symbol -> tier -> {user: reason}


_CHECKPOINT_ENCODER: Final = msgspec.msgpack.Encoder()
_CHECKPOINT_DECODER: Final = msgspec.msgpack.Decoder(Checkpoint)


def encode_checkpoint(universe: Universe, position: str) -> bytes:
    symbols = {ex: {s: m.tiers for s, m in members.items()} for ex, members in universe.symbols.items()}
    return _CHECKPOINT_ENCODER.encode(Checkpoint(position=position, symbols=symbols))


def decode_checkpoint(raw: bytes) -> tuple[str, Universe] | None:
    """(position, universe), or None for a checkpoint this code can't read (another version): refold."""
    try:
        cp = _CHECKPOINT_DECODER.decode(raw)
    except msgspec.DecodeError:
        return None
    if cp.version != CHECKPOINT_VERSION:
        return None
    symbols = {ex: {s: Membership(tiers) for s, tiers in members.items()} for ex, members in cp.symbols.items()}
    return cp.position, Universe(symbols)


class TierEntry(msgspec.Struct, frozen=True, kw_only=True):
    tier: str
    user: str
    reason: str


class SymbolView(msgspec.Struct, frozen=True, kw_only=True):
    exchange: str
    symbol: str
    shared: bool
    tiers: list[TierEntry]


def view(universe: Universe, exchange_id: str) -> list[SymbolView]:
    """The universe of one exchange, one row per symbol (sorted), tiers with their users and reasons."""
    rows = []
    for symbol, member in sorted(universe.symbols.get(exchange_id, {}).items()):
        entries = [
            TierEntry(tier=tier, user=user, reason=reason)
            for tier, users in sorted(member.tiers.items())
            for user, reason in sorted(users.items())
        ]
        rows.append(SymbolView(exchange=exchange_id, symbol=symbol, shared=member.shared, tiers=entries))
    return rows
