"""Read endpoints: candles and MACD-V through the dual-read (DATA-04), and the alert streams (VIS-01/03).

Symbols are accepted in exchange form (``BTCUSDT``) or canonical form (``BTC-USDT``, ``btc/usdt``) and
answered in canonical form. ``source`` says which key answered: ``exchange``, ``user:<id>`` or ``none``.
"""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.exceptions import ValidationException
from litestar.params import FromPath, QueryParameter

from control.api.auth import read_guard
from control.api.context import Ctx, known_exchange, resolve_symbol
from control.api.schemas import Alerts, Candles, Indicators
from processors.indicators import KIND, decode_alert, read_points
from projections.alerts import Alert
from projections.scope import read_candles
from streams import keys, log
from streams.frames import DECODERS

MAX_LIMIT = 5000
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description=f"newest N (1..{MAX_LIMIT})")]
User = Annotated[str | None, QueryParameter(description="fall back to this user's overflow keys (DATA-03/04)")]


def _user(user: str | None) -> str | None:
    if user is not None:
        keys.usercandles(user, "x", "x", "1m")  # the same rules as every key part: no ':' or spaces
    return user


@get("/candles/{exchange:str}/{symbol:str}/{timeframe:str}", guards=[read_guard], tags=["series"])
async def candles(
    ctx: Ctx,
    exchange: FromPath[str],
    symbol: FromPath[str],
    timeframe: FromPath[str],
    limit: Limit = 100,
    user: User = None,
) -> Candles:
    """The newest candles of a series, oldest first, through the dual-read."""
    known_exchange(exchange)
    keys.timeframe_part(timeframe)
    canonical = await resolve_symbol(ctx.redis, exchange, symbol)
    answer = await read_candles(ctx.redis, exchange, canonical, timeframe, limit=limit, user_id=_user(user))
    return Candles(
        exchange=exchange, symbol=canonical, timeframe=timeframe, source=answer.source, candles=answer.candles
    )


@get("/indicators/{exchange:str}/{symbol:str}/{timeframe:str}", guards=[read_guard], tags=["series"])
async def indicators(
    ctx: Ctx,
    exchange: FromPath[str],
    symbol: FromPath[str],
    timeframe: FromPath[str],
    indicator_type: Annotated[str, QueryParameter(name="type", description=f"indicator type ({KIND})")] = KIND,
    limit: Limit = 100,
    user: User = None,
) -> Indicators:
    """The newest MACD-V points (closed candles past the warm-up), oldest first, through the dual-read."""
    known_exchange(exchange)
    keys.timeframe_part(timeframe)
    if indicator_type != KIND:
        raise ValidationException(detail=f"unknown indicator type {indicator_type!r}; known: {KIND}")
    canonical = await resolve_symbol(ctx.redis, exchange, symbol)
    source, points = await read_points(ctx.redis, exchange, canonical, timeframe, limit=limit, user_id=_user(user))
    return Indicators(exchange=exchange, symbol=canonical, timeframe=timeframe, type=KIND, source=source, points=points)


@get("/alerts", guards=[read_guard], tags=["series"])
async def alerts(
    ctx: Ctx,
    exchange: Annotated[str | None, QueryParameter(description="only this exchange (default: all)")] = None,
    limit: Limit = 100,
) -> Alerts:
    """The newest alerts (from ``alerts:{exchange}``), oldest first, each with its source exchange."""
    exchanges = [known_exchange(exchange)] if exchange is not None else sorted(DECODERS)
    found: list[tuple[tuple[int, int], Alert]] = []
    for ex in exchanges:
        for entry_id, fields in await log.entries(ctx.redis, keys.alerts_stream(ex), count=limit, newest_first=True):
            found.append((log.parse_id(entry_id), decode_alert(fields[b"alert"])))
    found.sort(key=lambda f: f[0])
    return Alerts([a for _, a in found[-limit:]])


ROUTES = [candles, indicators, alerts]
