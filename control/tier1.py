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
from control.desired import position
from projections import tiers
from streams import keys
from streams.adapters.factory import ExchangeRow
from streams.log import WatchError, translated
from streams.rest import BinanceRestClient, CoinbaseRestClient
from tickfold.errors import TickfoldError

_PAGE = 1000


CHECKPOINT_AFTER = 500  # control entries folded past the checkpoint before it is moved forward


async def read_universe(client: aioredis.Redis, *, upto: str = "+") -> uv.Universe:
    """The universe: the fold of the control stream's universe events up to ``upto`` (inclusive; default:
    all), other entries ignored. It starts from the checkpoint ``checkpoint:universe`` (the fold up to an
    entry that is still in the stream) and moves it forward once ``CHECKPOINT_AFTER`` more entries were
    folded, so a read costs the entries since the checkpoint, not the whole stream (heartbeats alone add
    ~5,800 entries a day per exchange)."""
    with translated("reading the universe checkpoint"):
        raw: Any = await client.get(keys.UNIVERSE_CHECKPOINT)
    saved = uv.decode_checkpoint(raw) if raw is not None else None
    universe, start = uv.Universe(), "-"
    if saved is not None and (upto == "+" or position(saved[0]) <= position(upto)):
        with translated("reading the control stream"):
            there: Any = await client.xrange(keys.CONTROL_STREAM, min=saved[0], max=saved[0], count=1)
        if there:  # (a stream deleted and written again since: its checkpoint does not apply)
            universe, start = saved[1], "(" + saved[0]
    folded, last = 0, None
    while True:
        with translated("reading the control stream"):
            page: Any = await client.xrange(keys.CONTROL_STREAM, min=start, max=upto, count=_PAGE)
        for _entry_id, fields in page:
            raw_event = fields.get(b"event")
            if raw_event is None or b'"symbol:' not in raw_event:  # (most entries: skipped undecoded)
                continue
            parsed = parse_entry(fields)
            if isinstance(parsed, uv.SymbolAdded | uv.SymbolRemoved):
                uv.apply(universe, parsed)
        folded += len(page)
        if page:
            last = bytes(page[-1][0]).decode()
        if len(page) < _PAGE:
            break
        start = "(" + bytes(page[-1][0]).decode()
    if folded >= CHECKPOINT_AFTER and last is not None:
        await _move_checkpoint(client, universe, last)
    return universe


async def _move_checkpoint(client: aioredis.Redis, universe: uv.Universe, at: str) -> None:
    """Store the universe as of ``at`` unless a checkpoint at or after it is there (readers race)."""
    with translated("moving the universe checkpoint"):
        async with client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(keys.UNIVERSE_CHECKPOINT)
                raw: Any = await pipe.get(keys.UNIVERSE_CHECKPOINT)
                saved = uv.decode_checkpoint(raw) if raw is not None else None
                if saved is not None and position(saved[0]) >= position(at):
                    return
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set(keys.UNIVERSE_CHECKPOINT, uv.encode_checkpoint(universe, at))
                await pipe.execute()
            except WatchError:
                return  # another reader moved it meanwhile: theirs stands


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
