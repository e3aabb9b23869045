"""The exchanges' market data through their REST APIs, for the CLI and the API: market tables (SYM-05),
the cross-exchange ranking (DIFF-03) and checked manual adds (SYM-03).

Each exchange is reached at the ``rest_url`` of its ``exchanges`` row (so ``tickfold exchanges set`` can
point it at the simulator); the REST clients keep to the exchanges' rate limits. The ranking and the
tables themselves are pure (:mod:`projections.ranking`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import redis.asyncio as aioredis

from control import manual
from control import universe as uv
from control.exchanges import get_exchange, list_exchanges
from control.tier1 import fetch_candidates, rest_client
from projections import ranking, scope
from projections.tiers import Candidate
from streams.adapters.factory import ExchangeRow
from tickfold.errors import TickfoldError

REST_KINDS = ("binance_spot", "coinbase_advanced_trade")


async def row_candidates(row: ExchangeRow) -> list[Candidate]:
    """Every market of the exchange with its 24h figures (Binance: exchangeInfo + ticker/24hr; Coinbase:
    products)."""
    async with rest_client(row) as rest:
        return await fetch_candidates(rest)


async def market_table(dsn: str, exchange_id: str, top: int | None = None) -> list[ranking.MarketRow]:
    """SYM-05: the exchange's markets by 24h USD volume (the first ``top``; all when None)."""
    row = await get_exchange(dsn, exchange_id)
    rows = ranking.market_rows(exchange_id, await row_candidates(row))
    return rows if top is None else rows[:top]


async def _rows(dsn: str, exchange_ids: Iterable[str] | None) -> list[ExchangeRow]:
    if exchange_ids is None:
        return [r for r in await list_exchanges(dsn) if r.enabled and r.adapter_kind in REST_KINDS]
    return [await get_exchange(dsn, e) for e in dict.fromkeys(exchange_ids)]


async def cross_exchange_ranking(
    dsn: str, exchange_ids: Iterable[str] | None = None, top: int | None = None
) -> tuple[list[str], list[ranking.PairRank]]:
    """DIFF-03 over ``exchange_ids`` (default: every enabled exchange with a REST client); returns the
    exchanges used and the ranking."""
    rows = await _rows(dsn, exchange_ids)
    if not rows:
        raise TickfoldError("no exchange to rank: none is enabled with a REST API in the exchanges table")
    fetched = await asyncio.gather(*(row_candidates(r) for r in rows))
    by_exchange = {row.id: candidates for row, candidates in zip(rows, fetched, strict=True)}
    return [r.id for r in rows], ranking.cross_exchange(by_exchange, top)


async def add_manual(
    dsn: str,
    client: aioredis.Redis,
    exchange_id: str,
    symbol: str,
    user: str,
    *,
    reason: str = "",
    ttl_ms: int = scope.DEFAULT_TTL_MS,
) -> tuple[manual.Checked, uv.SymbolAdded | None]:
    """SYM-03: check ``symbol`` against the exchange's REST metadata and add it for ``user``."""
    row = await get_exchange(dsn, exchange_id)
    async with rest_client(row) as rest:
        return await manual.add_manual(client, rest, row.id, symbol, user, reason=reason, ttl_ms=ttl_ms)
