"""The ``exchanges`` table (EXC-01) as the rest of tickfold sees it: read rows, point one at new URLs."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import msgspec

from streams.adapters.factory import ExchangeRow
from tickfold.errors import StoreUnavailable, UnknownExchange

_COLUMNS = "id, display_name, adapter_kind, ws_urls, rest_url, api_limits, supported_timeframes, enabled"


def _row(record: Any) -> ExchangeRow:
    data = dict(record)
    limits = data.get("api_limits")
    data["api_limits"] = json.loads(limits) if isinstance(limits, str) else (limits or {})
    data["ws_urls"] = list(data.get("ws_urls") or [])
    data["supported_timeframes"] = list(data.get("supported_timeframes") or [])
    return msgspec.convert(data, ExchangeRow)


async def _connect(dsn: str) -> Any:
    try:
        return await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"PostgreSQL is not reachable: {exc}") from exc


async def list_exchanges(dsn: str) -> list[ExchangeRow]:
    conn = await _connect(dsn)
    try:
        return [_row(r) for r in await conn.fetch(f"SELECT {_COLUMNS} FROM exchanges ORDER BY id")]
    finally:
        await conn.close()


async def get_exchange(dsn: str, exchange_id: str) -> ExchangeRow:
    conn = await _connect(dsn)
    try:
        record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM exchanges WHERE id = $1", exchange_id)
        if record is None:
            known = [r["id"] for r in await conn.fetch("SELECT id FROM exchanges ORDER BY id")]
            raise UnknownExchange(f"unknown exchange {exchange_id!r}; known exchanges: {', '.join(known)}")
        return _row(record)
    finally:
        await conn.close()


async def set_urls(dsn: str, exchange_id: str, *, ws_url: str | None, rest_url: str | None) -> ExchangeRow:
    """Point an exchange at other endpoints (the local simulator, a testnet); returns the new row."""
    conn = await _connect(dsn)
    try:
        record = await conn.fetchrow(
            f"""UPDATE exchanges
                   SET ws_urls = CASE WHEN $2::text IS NULL THEN ws_urls ELSE ARRAY[$2::text] END,
                       rest_url = COALESCE($3::text, rest_url),
                       updated_at = now()
                 WHERE id = $1
             RETURNING {_COLUMNS}""",
            exchange_id,
            ws_url,
            rest_url,
        )
    finally:
        await conn.close()
    if record is None:
        raise UnknownExchange(f"unknown exchange {exchange_id!r}")
    return _row(record)
