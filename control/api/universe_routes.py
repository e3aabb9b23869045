"""The symbol universe over HTTP: what is watched and why, manual adds (SYM-03), market data (SYM-05) and
the cross-exchange ranking (DIFF-03).

    GET    /exchanges/{id}/symbols                  the universe of an exchange (tiers, users, reasons)
    POST   /exchanges/{id}/symbols                  {"symbol", "user", "reason"?}: a manual add (token)
    DELETE /exchanges/{id}/symbols/{symbol}?user=U  remove a manual add (token)
    GET    /exchanges/{id}/markets?top=N            24h volume, last price, market cap, tradable or why not
    GET    /markets/ranking?top=N&exchange=X...     base/quote pairs by combined 24h USD volume

A manual add is checked against the exchange's REST metadata first: an unknown symbol answers 404
``unknown_symbol``, one that does not trade 422 ``not_tradable``, each with the reason; nothing is
written then. Market data comes from the exchanges' REST APIs (their ``rest_url``); an exchange that
does not answer gives 502 ``exchange_unavailable``.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import delete, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from control import manual
from control import markets as mk
from control.api.auth import SECURITY_SCHEME, control_guard, read_guard
from control.api.context import Ctx
from control.exchanges import get_exchange
from control.tier1 import read_universe
from control.universe import SymbolView, view
from projections.ranking import USD_GROUP, MarketRow, PairRank
from projections.tiers import USD_LIKE
from streams import keys

USD_QUOTES = f"every USD-like quote ({', '.join(USD_LIKE)}) counts as {USD_GROUP}"
Top = Annotated[int, QueryParameter(ge=0, le=100_000, description="the first N (0: all)")]


class ManualAddBody(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str  # BTCUSDT / BTC-USDT (Binance), BTC-USD (Coinbase)
    user: str
    reason: str = ""


class ManualAdded(msgspec.Struct, frozen=True, kw_only=True):
    exchange: str
    symbol: str  # canonical
    native: str  # the exchange's own name
    user: str
    added: bool  # false: the user had already added it (nothing appended, the hold refreshed)
    shared: bool  # in Tier 1: the shared keys, no user overflow keys


class ManualRemoved(msgspec.Struct, frozen=True, kw_only=True):
    exchange: str
    symbol: str
    user: str


class Ranking(msgspec.Struct, frozen=True, kw_only=True):
    exchanges: list[str]
    usd_quotes: str  # how quotes are grouped
    pairs: list[PairRank]


def _top(top: int) -> int | None:
    return None if top == 0 else top


def _user(user: str) -> str:
    keys.usercandles(user, "x", "x", "1m")  # the same rules as every key part: no ':' or spaces
    return user


_CONTROL: dict[str, Any] = {"guards": [control_guard], "tags": ["universe"], "security": [{SECURITY_SCHEME: []}]}


@get("/exchanges/{exchange_id:str}/symbols", guards=[read_guard], tags=["universe"], summary="The symbol universe")
async def symbols_list(ctx: Ctx, exchange_id: FromPath[str]) -> list[SymbolView]:
    keys.exchange_part(exchange_id)
    return view(await read_universe(ctx.redis), exchange_id)


@post("/exchanges/{exchange_id:str}/symbols", status_code=201, summary="Add a symbol manually (SYM-03)", **_CONTROL)
async def symbols_add(ctx: Ctx, exchange_id: FromPath[str], data: JSONBody[ManualAddBody]) -> ManualAdded:
    keys.exchange_part(exchange_id)
    user = _user(data.user)
    checked, event = await mk.add_manual(
        ctx.database_url, ctx.redis, exchange_id, data.symbol, user, reason=data.reason
    )
    member = (await read_universe(ctx.redis)).symbols[exchange_id][checked.symbol]
    return ManualAdded(
        exchange=exchange_id,
        symbol=checked.symbol,
        native=checked.native,
        user=user,
        added=event is not None,
        shared=member.shared,
    )


@delete(
    "/exchanges/{exchange_id:str}/symbols/{symbol:str}",
    status_code=200,
    summary="Remove a manual add (SYM-03)",
    **_CONTROL,
)
async def symbols_remove(
    ctx: Ctx,
    exchange_id: FromPath[str],
    symbol: FromPath[str],
    user: Annotated[str, QueryParameter(description="whose manual add")],
) -> ManualRemoved:
    keys.exchange_part(exchange_id)
    await get_exchange(ctx.database_url, exchange_id)  # unknown: 404
    removed = await manual.remove_manual(ctx.redis, exchange_id, symbol, _user(user))
    return ManualRemoved(exchange=exchange_id, symbol=removed.symbol, user=removed.user)


@get(
    "/exchanges/{exchange_id:str}/markets",
    guards=[read_guard],
    tags=["universe"],
    summary="24h volume, last price, market cap and tradability per market (SYM-05)",
)
async def markets(ctx: Ctx, exchange_id: FromPath[str], top: Top = 50) -> list[MarketRow]:
    keys.exchange_part(exchange_id)
    return await mk.market_table(ctx.database_url, exchange_id, _top(top))


@get(
    "/markets/ranking",
    guards=[read_guard],
    tags=["universe"],
    summary="Base/quote pairs by combined 24h USD volume over the exchanges (DIFF-03)",
)
async def ranking(
    ctx: Ctx,
    top: Top = 50,
    exchange: Annotated[list[str] | None, QueryParameter(description="only these exchanges (default all)")] = None,
) -> Ranking:
    for e in exchange or []:
        keys.exchange_part(e)
    used, pairs = await mk.cross_exchange_ranking(ctx.database_url, exchange or None, _top(top))
    return Ranking(exchanges=used, usd_quotes=USD_QUOTES, pairs=pairs)


ROUTES = [symbols_list, symbols_add, symbols_remove, markets, ranking]
