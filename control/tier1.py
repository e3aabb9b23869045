"""Tier 1 refresh (SYM-01) as events: fetch the exchange's REST data, rank it, append the differences.

The universe is the fold of the control stream's ``symbol:added`` / ``symbol:removed`` events
(:func:`read_universe`); :func:`refresh_tier1` appends only the events that change its Tier 1 and sets
``pool:{exchange_id}`` to the new Tier 1 in the same ``MULTI`` as the ``XADD``s, so the pool never
disagrees with the stream. Running it twice on the same data appends nothing the second time. One
writer per exchange is assumed (the refresh schedule), like one consumer per stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from control import universe as uv
from control.commands import now_ns, parse_entry
from projections import tiers
from streams import keys
from streams.adapters.factory import ExchangeRow
from streams.log import translated
from streams.rest import BinanceRestClient, CoinbaseRestClient
from tickfold.errors import TickfoldError

_PAGE = 1000


async def read_universe(client: aioredis.Redis, *, upto: str = "+") -> uv.Universe:
    """The universe: a fresh fold of the control stream's universe events up to ``upto`` (inclusive;
    default: all), other entries ignored."""
    events: list[uv.UniverseEvent] = []
    start = "-"
    while True:
        with translated("reading the control stream"):
            page: Any = await client.xrange(keys.CONTROL_STREAM, min=start, max=upto, count=_PAGE)
        for _entry_id, fields in page:
            if b"event" not in fields:
                continue
            parsed = parse_entry(fields)
            if isinstance(parsed, uv.SymbolAdded | uv.SymbolRemoved):
                events.append(parsed)
        if len(page) < _PAGE:
            return uv.fold(events)
        start = "(" + bytes(page[-1][0]).decode()


RestClient = BinanceRestClient | CoinbaseRestClient


def rest_client(row: ExchangeRow) -> RestClient:
    """The REST client of an ``exchanges`` row (its ``rest_url``); use it as ``async with``."""
    if row.adapter_kind == "binance_spot":
        return BinanceRestClient(row.rest_url) if row.rest_url else BinanceRestClient()
    if row.adapter_kind == "coinbase_advanced_trade":
        return CoinbaseRestClient(row.rest_url) if row.rest_url else CoinbaseRestClient()
    raise TickfoldError(f"exchange {row.id!r}: no REST client for adapter kind {row.adapter_kind!r}")


async def fetch_candidates(rest: RestClient) -> list[tiers.Candidate]:
    """Tier 1 input from REST (rate limits are the clients'): exchangeInfo + ticker/24hr, or products."""
    if isinstance(rest, BinanceRestClient):
        info = await rest.exchange_info()
        return tiers.binance_candidates(info, await rest.ticker_24hr())
    return tiers.coinbase_candidates(await rest.products())


async def apply_tier1(
    client: aioredis.Redis, exchange_id: str, tier1: tiers.Tier1, *, at_ns: int | None = None
) -> list[uv.UniverseEvent]:
    """Append the events that make the universe's Tier 1 equal ``tier1`` and set the pool, atomically."""
    current = await read_universe(client)
    events = tiers.tier1_changes(current, exchange_id, tier1, now_ns() if at_ns is None else at_ns)
    with translated("appending Tier 1 changes"):
        pipe = client.pipeline(transaction=True)
        for event in events:
            payload = uv.encode(event)
            pipe.xadd(keys.CONTROL_STREAM, {"event": payload})
            pipe.publish(keys.CONTROL_CHANNEL, payload)
        pool = keys.pool(exchange_id)
        pipe.delete(pool)
        if tier1.symbols:
            pipe.sadd(pool, *tier1.symbols)
        await pipe.execute()
    return events


async def refresh_tier1(
    client: aioredis.Redis,
    rest: BinanceRestClient | CoinbaseRestClient,
    exchange_id: str,
    n: int,
    *,
    quotes: Iterable[str] | None = None,
    at_ns: int | None = None,
) -> tuple[tiers.Tier1, list[uv.UniverseEvent]]:
    """Fetch, rank the top ``n`` (optionally only ``quotes``), append the differences; returns both."""
    tier1 = tiers.rank(await fetch_candidates(rest), n, quotes)
    return tier1, await apply_tier1(client, exchange_id, tier1, at_ns=at_ns)
