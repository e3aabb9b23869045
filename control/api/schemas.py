"""The API's payloads: msgspec Structs (decoded and encoded by Litestar natively, described in OpenAPI).

Fields added later get defaults (STYLE habit 4). Candles, MACD-V points and alerts are the projections'
own types (:class:`projections.candles.Candle`, :class:`projections.alerts.Point` / ``Alert``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from projections.alerts import Alert, Point
from projections.candles import Candle


class ErrorBody(msgspec.Struct, frozen=True):
    """Every error response: a short machine-readable ``error`` and a human ``detail``."""

    error: str
    detail: str


class Connection(msgspec.Struct, frozen=True, kw_only=True):
    """An exchange's row of ``exchange_connections`` (EXC-04), kept by the connection-state projection."""

    state: str
    connected_at: datetime | None = None
    last_heartbeat: datetime | None = None
    last_error: str | None = None
    updated_at: datetime | None = None


class Exchange(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    display_name: str
    adapter_kind: str
    ws_urls: list[str]
    rest_url: str
    api_limits: dict[str, Any]
    supported_timeframes: list[str]
    enabled: bool
    connection: Connection | None = None  # None: no connection-state row yet


class Exchanges(msgspec.Struct, frozen=True):
    exchanges: list[Exchange]


class StartBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    symbols: list[str] = []  # exchange or canonical form; empty: the exchange's default set
    timeframes: list[str] = []  # empty: the default (1m)


class CommandAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """The command is on the control stream; the supervisor answers it there (command:accepted / rejected)."""

    command_id: str
    command: str
    exchange: str
    entry_id: str  # its control-stream entry
    requested_by: str


class Candles(msgspec.Struct, frozen=True, kw_only=True):
    exchange: str
    symbol: str  # canonical BASE-QUOTE
    timeframe: str
    source: str  # which key answered the dual-read: exchange, user:<id> or none
    candles: list[Candle]  # oldest first


class Indicators(msgspec.Struct, frozen=True, kw_only=True):
    exchange: str
    symbol: str
    timeframe: str
    type: str
    source: str
    points: list[Point]  # oldest first


class Alerts(msgspec.Struct, frozen=True):
    alerts: list[Alert]  # oldest first; each names its source_exchange_id


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ok", "unavailable"]
    redis: str
    postgres: str


# ------------------------------------------------------------------------------------ the WebSocket


class Subscription(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One feed: an exchange's candle closes (optionally one symbol and/or timeframe) or its alerts."""

    exchange: str
    kind: Literal["closes", "alerts"]
    symbol: str | None = None
    timeframe: str | None = None


class ClientMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    subscribe: list[Subscription] = []
    unsubscribe: list[Subscription] = []


class Subscribed(msgspec.Struct, frozen=True):
    """Sent once a (un)subscribe request is in effect: every subscription the connection now has."""

    subscribed: list[Subscription]


class FeedMessage(msgspec.Struct, frozen=True):
    """A candle close (``data``: a CandleClosed) or an alert (``data``: an Alert), tagged with its source."""

    exchange: str
    kind: str
    data: msgspec.Raw
