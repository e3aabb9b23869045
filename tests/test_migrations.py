"""Migrations on a real PostgreSQL (a fresh database per test), and the shape of the migration files."""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import re
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from migrations.runner import LOCK_KEY, AppliedMigration, available, migrate, status
from tickfold.errors import MigrationError, StoreUnavailable

ALL = [
    "001_exchanges.sql",
    "002_user_exchanges.sql",
    "003_connection_state.sql",
    "004_connection_links.sql",
    "005_positions.sql",
    "006_archive.sql",
]


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


async def _columns(dsn: str, table: str) -> set[str]:
    rows = await _fetch(
        dsn,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1",
        table,
    )
    return {r["column_name"] for r in rows}


async def _versions(dsn: str) -> list[int]:
    return [r["version"] for r in await _fetch(dsn, "SELECT version FROM schema_migrations ORDER BY version")]


async def _snapshot(dsn: str) -> list[Any]:
    """Schema (columns and constraints of every table) plus every row of every table."""
    columns = await _fetch(
        dsn,
        """SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns
            WHERE table_schema = 'public' ORDER BY table_name, column_name""",
    )
    constraints = await _fetch(
        dsn,
        """SELECT conrelid::regclass::text AS t, conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
            WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    )
    data = [
        await _fetch(dsn, f"SELECT * FROM {table} ORDER BY 1")
        for table in ("exchanges", "exchange_connections", "user_exchanges", "schema_migrations")
    ]
    return [columns, constraints, data]


@pytest.mark.unit
def test_files_are_numbered_contiguously_from_001() -> None:
    # Read the package directory itself: available() would refuse a bad set before we could look at it.
    names = sorted(e.name for e in importlib.resources.files("migrations").iterdir() if e.name.endswith(".sql"))
    assert names, "no migration files found in the migrations package"
    assert all(re.fullmatch(r"\d{3}_[a-z0-9_]+\.sql", n) for n in names), names
    assert [int(n[:3]) for n in names] == list(range(1, len(names) + 1))
    assert [m.filename for m in available()] == names
    assert names[: len(ALL)] == ALL


@pytest.mark.postgres
async def test_fresh_database_then_twice_is_a_no_op(pg_dsn: str) -> None:
    assert await status(pg_dsn) == [
        (1, "exchanges", False),
        (2, "user_exchanges", False),
        (3, "connection_state", False),
        (4, "connection_links", False),
        (5, "positions", False),
        (6, "archive", False),
    ]
    said: list[str] = []
    applied = await migrate(pg_dsn, progress=said.append)
    assert [m.filename for m in applied] == ALL
    assert all(isinstance(m, AppliedMigration) for m in applied)
    assert said == [f"applying migration {name}" for name in ALL]
    recorded = await _fetch(pg_dsn, "SELECT version, name, checksum FROM schema_migrations ORDER BY version")
    assert [tuple(r) for r in recorded] == [(m.version, m.name, m.checksum) for m in applied]

    rows = {r["id"]: r for r in await _fetch(pg_dsn, "SELECT * FROM exchanges")}
    assert set(rows) == {"binance", "coinbase"}
    coinbase, binance = rows["coinbase"], rows["binance"]
    assert coinbase["ws_urls"] == ["wss://advanced-trade-ws.coinbase.com"]
    assert coinbase["rest_url"] == "https://api.coinbase.com/api/v3/brokerage/market"
    assert binance["ws_urls"] == ["wss://stream.binance.com:9443", "wss://data-stream.binance.vision"]
    assert binance["rest_url"] == "https://api.binance.com"
    assert (coinbase["adapter_kind"], binance["adapter_kind"]) == ("coinbase_advanced_trade", "binance_spot")
    assert (coinbase["maker_fee"], coinbase["taker_fee"]) == (Decimal("0.006"), Decimal("0.012"))
    assert (binance["maker_fee"], binance["taker_fee"]) == (Decimal("0.001"), Decimal("0.001"))
    assert binance["geo_restrictions"] == ["US"]
    assert "1M" in binance["supported_timeframes"] and "1s" in binance["supported_timeframes"]
    assert coinbase["supported_timeframes"] == ["1m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "1d"]
    assert "gdax" in coinbase["aliases"] and "binance.com" in binance["aliases"]
    limits = json.loads(binance["api_limits"])
    assert limits["ws"]["max_streams_per_connection"] == 1024
    assert limits["rest"]["request_weight_per_minute"] == 6000
    assert json.loads(coinbase["api_limits"])["ws"]["native_candle_timeframe"] == "5m"
    assert all(r["enabled"] for r in rows.values())
    connections = await _fetch(pg_dsn, "SELECT exchange_id, connection_state FROM exchange_connections ORDER BY 1")
    assert [tuple(r) for r in connections] == [("binance", "disconnected"), ("coinbase", "disconnected")]
    assert await _columns(pg_dsn, "user_exchanges") == {"id", "user_id", "exchange_id", "label", "created_at"}

    before = await _snapshot(pg_dsn)
    said.clear()
    assert await migrate(pg_dsn, progress=said.append) == []
    assert said == []
    assert await _snapshot(pg_dsn) == before
    assert all(applied for _, _, applied in await status(pg_dsn))


@pytest.mark.postgres
async def test_schema_checks_reject_bad_rows(pg_dsn: str) -> None:
    await migrate(pg_dsn)
    with pytest.raises(asyncpg.CheckViolationError):
        await _execute(
            pg_dsn,
            """INSERT INTO exchanges (id, display_name, adapter_kind, ws_urls, rest_url, maker_fee, taker_fee,
                                     supported_timeframes)
               VALUES ('Kraken', 'Kraken', 'binance_spot', '{wss://x}', 'https://x', 0, 0, '{}')""",
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await _execute(pg_dsn, "UPDATE exchange_connections SET connection_state = 'up' WHERE exchange_id = 'binance'")
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await _execute(pg_dsn, "INSERT INTO user_exchanges (user_id, exchange_id) VALUES ('u1', 'kraken')")


LEGACY = """
CREATE TABLE user_exchanges (id serial PRIMARY KEY, user_id text NOT NULL, exchange text, api_label text);
INSERT INTO user_exchanges (user_id, exchange, api_label) VALUES
  ('u1', 'Coinbase', 'main'), ('u1', ' binance ', 'spot'), ('u2', 'Coinbase Pro', NULL),
  ('u3', 'binance.com', 'x'), ('u4', 'GDAX', 'old'), ('u5', 'Coinbase Advanced Trade', 'new');
"""


@pytest.mark.postgres
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
        (6, "u5", "coinbase", "new"),
    ]
    assert await _columns(pg_dsn, "user_exchanges") == {"id", "user_id", "exchange_id", "api_label"}
    fks = await _fetch(
        pg_dsn,
        """SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint
            WHERE conrelid = 'user_exchanges'::regclass AND contype = 'f'""",
    )
    assert [r["def"] for r in fks] == ["FOREIGN KEY (exchange_id) REFERENCES exchanges(id)"]
    with pytest.raises(asyncpg.NotNullViolationError):
        await _execute(pg_dsn, "INSERT INTO user_exchanges (user_id) VALUES ('u9')")
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await _execute(pg_dsn, "INSERT INTO user_exchanges (user_id, exchange_id) VALUES ('u9', 'kraken')")


@pytest.mark.postgres
async def test_legacy_exchange_name_column_of_another_text_type(pg_dsn: str) -> None:
    await _execute(
        pg_dsn,
        """CREATE TABLE user_exchanges (id bigserial PRIMARY KEY, user_id text, exchange_name character(24));
           INSERT INTO user_exchanges (user_id, exchange_name)
           VALUES ('u1', 'BINANCE SPOT'), ('u2', 'Coinbase Exchange');""",
    )
    await migrate(pg_dsn)
    rows = await _fetch(pg_dsn, "SELECT user_id, exchange_id FROM user_exchanges ORDER BY id")
    assert [tuple(r) for r in rows] == [("u1", "binance"), ("u2", "coinbase")]
    assert await _columns(pg_dsn, "user_exchanges") == {"id", "user_id", "exchange_id"}


@pytest.mark.postgres
async def test_unknown_legacy_names_fail_and_change_nothing(pg_dsn: str) -> None:
    await _execute(
        pg_dsn, LEGACY + "INSERT INTO user_exchanges (user_id, exchange) VALUES ('u7', 'kraken'), ('u8', 'FTX');"
    )
    before = await _fetch(pg_dsn, "SELECT * FROM user_exchanges ORDER BY id")
    with pytest.raises(MigrationError) as info:
        await migrate(pg_dsn)
    message = str(info.value)
    assert "002_user_exchanges.sql" in message
    assert "'kraken'" in message and "'FTX'" in message
    assert "'Coinbase'" not in message  # only the offending values are listed
    assert message.count("HINT:") == 1  # Postgres' HINT travels with the message, once
    # The legacy table is exactly as it was.
    assert await _fetch(pg_dsn, "SELECT * FROM user_exchanges ORDER BY id") == before
    assert await _columns(pg_dsn, "user_exchanges") == {"id", "user_id", "exchange", "api_label"}
    # 001 committed in its own transaction before 002 ran, so it stays; 002 and 003 left no trace.
    assert await _versions(pg_dsn) == [1]
    assert len(await _fetch(pg_dsn, "SELECT id FROM exchanges")) == 2
    assert await _fetch(pg_dsn, "SELECT to_regclass('public.exchange_connections') AS t") == [(None,)]
    assert [applied for _, _, applied in await status(pg_dsn)] == [True] + [False] * (len(ALL) - 1)
    # Fixing the data lets the migration finish, from where it stopped.
    await _execute(pg_dsn, "DELETE FROM user_exchanges WHERE exchange IN ('kraken', 'FTX')")
    assert [m.version for m in await migrate(pg_dsn)] == list(range(2, len(ALL) + 1))
    assert len(await _fetch(pg_dsn, "SELECT * FROM user_exchanges")) == len(before) - 2


@pytest.mark.postgres
async def test_concurrent_runs_apply_each_migration_once(pg_dsn: str) -> None:
    results = await asyncio.gather(*(migrate(pg_dsn) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, len(ALL)]
    versions = await _fetch(pg_dsn, "SELECT version, count(*) AS n FROM schema_migrations GROUP BY version ORDER BY 1")
    assert [(r["version"], r["n"]) for r in versions] == [(v, 1) for v in range(1, len(ALL) + 1)]
    assert len(await _fetch(pg_dsn, "SELECT * FROM exchanges")) == 2
    assert len(await _fetch(pg_dsn, "SELECT * FROM exchange_connections")) == 2


@pytest.mark.postgres
async def test_an_edited_applied_migration_is_refused(pg_dsn: str) -> None:
    await migrate(pg_dsn)
    await _execute(pg_dsn, "UPDATE schema_migrations SET checksum = 'x' WHERE version = 2")
    with pytest.raises(MigrationError, match=r"002_user_exchanges\.sql was changed"):
        await migrate(pg_dsn)


async def _wait_for_blocked(conn: Any, locktype: str) -> int:
    """The pid of the backend of this database waiting for a lock of that type."""
    for _ in range(250):
        pid: int | None = await conn.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = $1 AND NOT granted AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())",
            locktype,
        )
        if pid is not None:
            return pid
        await asyncio.sleep(0.02)
    raise AssertionError(f"migrate() never waited for a {locktype} lock")


@pytest.mark.postgres
async def test_a_connection_lost_waiting_for_the_lock_is_store_unavailable(pg_dsn: str) -> None:
    holder = await asyncpg.connect(pg_dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        run = asyncio.ensure_future(migrate(pg_dsn))
        await holder.execute("SELECT pg_terminate_backend($1)", await _wait_for_blocked(holder, "advisory"))
        with pytest.raises(StoreUnavailable, match="migration lock"):
            await run
    finally:
        await holder.close()  # also releases the advisory lock
    assert [m.filename for m in await migrate(pg_dsn)] == ALL


@pytest.mark.postgres
async def test_a_connection_lost_inside_a_file_is_store_unavailable_and_a_rerun_finishes(pg_dsn: str) -> None:
    await _execute(pg_dsn, LEGACY)
    holder = await asyncpg.connect(pg_dsn)
    try:
        # 002 alters user_exchanges: holding a share lock on it parks the run inside 002's transaction.
        tx = holder.transaction()
        await tx.start()
        await holder.execute("LOCK TABLE user_exchanges IN ACCESS SHARE MODE")
        run = asyncio.ensure_future(migrate(pg_dsn))
        await holder.execute("SELECT pg_terminate_backend($1)", await _wait_for_blocked(holder, "relation"))
        with pytest.raises(StoreUnavailable, match=r"002_user_exchanges\.sql") as info:
            await run
        assert "terminating connection" in str(info.value)  # the server's reason, not asyncpg's rollback error
        await tx.rollback()
    finally:
        await holder.close()
    assert await _versions(pg_dsn) == [1]
    assert await _columns(pg_dsn, "user_exchanges") == {"id", "user_id", "exchange", "api_label"}
    assert [m.version for m in await migrate(pg_dsn)] == list(range(2, len(ALL) + 1))
