"""Control-stream lifecycle events (CTL-04): msgspec tagged Structs, one JSON ``event`` field per entry.

Every event names its exchange and carries the time it happened (``at_ns``, epoch ns by the clock of
the process that saw it: these are operational events, not market data). Fields added later get
defaults, so old entries keep decoding (STYLE habit 4).
"""

from __future__ import annotations

from typing import Final

import msgspec


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    exchange: str
    at_ns: int
    connection: str = ""  # which connection of the exchange (Binance shards streams across several)


class Connecting(_Event, frozen=True, kw_only=True, tag="exchange:connecting"):
    url: str
    attempt: int = 1


class Connected(_Event, frozen=True, kw_only=True, tag="exchange:connected"):
    url: str
    subscriptions: list[str] = []


class Disconnected(_Event, frozen=True, kw_only=True, tag="exchange:disconnected"):
    reason: str
    retry_in_s: float | None = None  # None: not reconnecting (told to stop)


class Gap(_Event, frozen=True, kw_only=True, tag="exchange:gap"):
    """Frames were lost: a sequence number or trade id jumped."""

    symbol: str = ""
    kind: str  # "sequence" (Coinbase sequence_num) or "trade_id" (Binance aggTrade a)
    expected: int
    got: int


class Stale(_Event, frozen=True, kw_only=True, tag="exchange:stale"):
    silent_s: float


class Heartbeat(_Event, frozen=True, kw_only=True, tag="exchange:heartbeat"):
    """The connection is alive; written at most once per heartbeat interval, never per frame."""

    frames: int = 0  # frames appended since the previous heartbeat


ControlEvent = Connecting | Connected | Disconnected | Gap | Stale | Heartbeat

ENCODER: Final = msgspec.json.Encoder()
DECODER: Final = msgspec.json.Decoder(ControlEvent)


def encode(event: ControlEvent) -> bytes:
    return ENCODER.encode(event)


def decode(raw: bytes) -> ControlEvent:
    event: ControlEvent = DECODER.decode(raw)
    return event
