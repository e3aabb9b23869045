"""Migrations on a real PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg
import pytest

from migrations.runner import available, migrate, status
from tickfold.errors import MigrationError

pytestmark = pytest.mark.postgres


async def _fetch(dsn: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _snapshot(dsn: str) -> list[Any]:
    """Schema (every column of every table) plus the rows of the seeded tables."""
    columns = await _fetch(
        dsn,
        """SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns
            WHERE table_schema = 'public' ORDER BY table_name, column_name""",
    )
    data = []
    for table in ("exchanges", "exchange_connections", "schema_migrations"):
        data.append(await _fetch(dsn, f"SELECT * FROM {table} ORDER BY 1"))
    return [columns, data]


def test_files_are_numbered_without_holes() -> None:
    migrations = available()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert all(re.fullmatch(r"\d{3}_[a-z0-9_]+\.sql", m.filename) for m in migrations)


async def test_fresh_database_then_twice_is_a_no_op(pg_dsn: str) -> None:
    applied = await migrate(pg_dsn)
    assert [m.filename for m in applied] == ["001_exchanges.sql", "002_user_exchanges.sql", "003_connection_state.sql"]
    rows = {r["id"]: r for r in await _fetch(pg_dsn, "SELECT * FROM exchanges")}
    assert set(rows) == {"binance", "coinbase"}
    assert rows["coinbase"]["ws_urls"] == ["wss://advanced-trade-ws.coinbase.com"]
    assert "wss://stream.binance.com:9443" in rows["binance"]["ws_urls"]
    assert rows["binance"]["rest_url"] == "https://api.binance.com"
    assert "1M" in rows["binance"]["supported_timeframes"] and "1m" in rows["coinbase"]["supported_timeframes"]
    assert [r["connection_state"] for r in await _fetch(pg_dsn, "SELECT * FROM exchange_connections")] == [
        "disconnected",
        "disconnected",
    ]
    before = await _snapshot(pg_dsn)
    assert await migrate(pg_dsn) == []
    assert await _snapshot(pg_dsn) == before
    assert all(applied for _, _, applied in await status(pg_dsn))


LEGACY = """
CREATE TABLE user_exchanges (id serial PRIMARY KEY, user_id text NOT NULL, exchange text, api_label text);
INSERT INTO user_exchanges (user_id, exchange, api_label) VALUES
  ('u1', 'Coinbase', 'main'), ('u1', ' binance ', 'spot'), ('u2', 'Coinbase Pro', NULL),
  ('u3', 'binance.com', 'x'), ('u4', 'GDAX', 'old');
"""


async def test_legacy_user_exchanges_keep_every_row(pg_dsn: str) -> None:
    await _execute(pg_dsn, LEGACY)
    await migrate(pg_dsn)
    rows = await _fetch(pg_dsn, "SELECT id, user_id, exchange_id, api_label FROM user_exchanges ORDER BY id")
    assert [tuple(r) for r in rows] == [
        (1, "u1", "coinbase", "main"),
        (2, "u1", "binance", "spot"),
        (3, "u2", "coinbase", None),
        (4, "u3", "binance", "x"),
        (5, "u4", "coinbase", "old"),
    ]
    cols = [
        r["column_name"]
        for r in await _fetch(
            pg_dsn, "SELECT column_name FROM information_schema.columns WHERE table_name = 'user_exchanges'"
        )
    ]
    assert "exchange" not in cols
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await _execute(pg_dsn, "INSERT INTO user_exchanges (user_id, exchange_id) VALUES ('u9', 'kraken')")


async def test_unknown_legacy_names_fail_and_change_nothing(pg_dsn: str) -> None:
    await _execute(
        pg_dsn, LEGACY + "INSERT INTO user_exchanges (user_id, exchange) VALUES ('u5', 'kraken'), ('u6', 'FTX');"
    )
    before = await _fetch(pg_dsn, "SELECT * FROM user_exchanges ORDER BY id")
    with pytest.raises(MigrationError) as info:
        await migrate(pg_dsn)
    message = str(info.value)
    assert "002_user_exchanges.sql" in message and "'kraken'" in message and "'FTX'" in message
    assert await _fetch(pg_dsn, "SELECT * FROM user_exchanges ORDER BY id") == before
    cols = {
        r["column_name"]
        for r in await _fetch(
            pg_dsn, "SELECT column_name FROM information_schema.columns WHERE table_name = 'user_exchanges'"
        )
    }
    assert cols == {"id", "user_id", "exchange", "api_label"}
    # 001 committed in its own transaction before; 002 and 003 are not recorded
    assert [r["version"] for r in await _fetch(pg_dsn, "SELECT version FROM schema_migrations")] == [1]
    # fixing the data lets the migration finish
    await _execute(pg_dsn, "DELETE FROM user_exchanges WHERE exchange IN ('kraken', 'FTX')")
    assert [m.version for m in await migrate(pg_dsn)] == [2, 3]


async def test_concurrent_runs_apply_each_migration_once(pg_dsn: str) -> None:
    results = await asyncio.gather(*(migrate(pg_dsn) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, 3]
    versions = await _fetch(pg_dsn, "SELECT version, count(*) AS n FROM schema_migrations GROUP BY version ORDER BY 1")
    assert [(r["version"], r["n"]) for r in versions] == [(1, 1), (2, 1), (3, 1)]
    assert len(await _fetch(pg_dsn, "SELECT * FROM exchanges")) == 2


async def test_an_edited_applied_migration_is_refused(pg_dsn: str) -> None:
    await migrate(pg_dsn)
    await _execute(pg_dsn, "UPDATE schema_migrations SET checksum = 'x' WHERE version = 2")
    with pytest.raises(MigrationError, match=r"002_user_exchanges\.sql was changed"):
        await migrate(pg_dsn)
