"""The adapter factory (EXC-03): an ``exchanges`` row in, the right adapter out.

Adding an exchange means one adapter module and one line in :data:`ADAPTERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import msgspec
import redis.asyncio as aioredis

from streams.adapters.base import AdapterConfig, WsAdapter
from streams.adapters.binance import BinanceAdapter, BinanceLimits
from streams.adapters.coinbase import CoinbaseAdapter
from streams.adapters.sink import ControlEmitter, FrameSink
from tickfold.errors import UnknownExchange


class ExchangeRow(msgspec.Struct, frozen=True, kw_only=True):
    """The part of an ``exchanges`` row (EXC-01) that adapters need."""

    id: str
    display_name: str = ""
    adapter_kind: str
    ws_urls: list[str]
    rest_url: str = ""
    api_limits: dict[str, Any] = {}
    supported_timeframes: list[str] = []
    enabled: bool = True


def _binance(row: ExchangeRow, config: AdapterConfig, sink: FrameSink, control: ControlEmitter) -> WsAdapter:
    limits = row.api_limits.get("ws", row.api_limits)
    return BinanceAdapter(
        replace(config, rotate_after_s=config.rotate_after_s or 23 * 3600.0),
        sink,
        control,
        BinanceLimits(
            max_streams_per_connection=int(limits.get("max_streams_per_connection", 1024)),
            messages_per_s=min(4.0, float(limits.get("incoming_messages_per_second", 5)) - 1),
        ),
    )


def _coinbase(row: ExchangeRow, config: AdapterConfig, sink: FrameSink, control: ControlEmitter) -> WsAdapter:
    limits = row.api_limits.get("ws", row.api_limits)
    per_s = float(limits.get("unauthenticated_messages_per_second", 8))
    return CoinbaseAdapter(
        replace(config, stale_after_s=min(config.stale_after_s, 5.0)), sink, control, messages_per_s=max(1.0, per_s - 2)
    )


ADAPTERS: dict[str, Callable[[ExchangeRow, AdapterConfig, FrameSink, ControlEmitter], WsAdapter]] = {
    "binance_spot": _binance,
    "coinbase_advanced_trade": _coinbase,
}


def build_adapter(
    row: ExchangeRow,
    client: aioredis.Redis,
    *,
    symbols: tuple[str, ...],
    timeframes: tuple[str, ...] = ("1m",),
    **config: Any,
) -> WsAdapter:
    """Build the adapter for ``row``; an unknown kind or a disabled exchange is an UnknownExchange error."""
    if not row.enabled:
        raise UnknownExchange(f"exchange {row.id!r} is disabled (exchanges.enabled = false)")
    make = ADAPTERS.get(row.adapter_kind)
    if make is None:
        raise UnknownExchange(
            f"exchange {row.id!r} has adapter kind {row.adapter_kind!r}; known kinds: {', '.join(sorted(ADAPTERS))}"
        )
    if not row.ws_urls:
        raise UnknownExchange(f"exchange {row.id!r} has no WebSocket URL")
    unsupported = [tf for tf in timeframes if row.supported_timeframes and tf not in row.supported_timeframes]
    if unsupported and row.adapter_kind == "binance_spot":
        raise UnknownExchange(f"exchange {row.id!r} does not support timeframe(s) {', '.join(unsupported)}")
    cfg = AdapterConfig(ws_url=row.ws_urls[0], symbols=symbols, timeframes=timeframes, **config)
    adapter = make(row, cfg, FrameSink(client, row.id), ControlEmitter(client))
    adapter.exchange_id = row.id
    return adapter
