"""Apply the numbered SQL files of this package once each, in order, with asyncpg.

* Files are ``NNN_name.sql``, numbered from 001 without holes.
* Each file runs in its own transaction and is recorded in ``schema_migrations`` (version, name,
  sha256 of its text) in that same transaction: a failing file leaves the database as it was before it.
* A session-level advisory lock (key :data:`LOCK_KEY`) serializes concurrent runs: the second waits,
  then finds everything applied and does nothing.
* An applied file whose text changed since is an error: migrations are append-only history.

Migrations run only from ``tickfold migrate`` (and the demo), never on import or processor start.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from tickfold.errors import MigrationError, StoreUnavailable

LOCK_KEY = 0x7469636B666F6C64  # "tickfold" in ASCII: one 64-bit advisory lock for every migrate run
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def filename(self) -> str:
        return f"{self.version:03d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """The migration files shipped in this package, in order; raises if the numbering has holes."""
    found: list[Migration] = []
    for entry in importlib.resources.files(__package__ or "migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
        elif entry.name.endswith(".sql"):
            raise MigrationError(f"{entry.name}: migration files must be named NNN_name.sql")
    found.sort(key=lambda m: m.version)
    expected = list(range(1, len(found) + 1))
    if [m.version for m in found] != expected:
        raise MigrationError(
            f"migration numbers must run 001..{len(found):03d} without holes: {[m.filename for m in found]}"
        )
    return found


async def _connect(dsn: str) -> Any:
    try:
        return await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"PostgreSQL is not reachable: {exc}") from exc


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


async def migrate(dsn: str, *, progress: Callable[[str], None] | None = None) -> list[Migration]:
    """Apply every pending migration; returns the ones applied by this call (``[]``: already up to date)."""
    say = progress or (lambda _: None)
    conn = await _connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute(_CREATE_TABLE)
            applied = {
                r["version"]: r for r in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
            }
            done: list[Migration] = []
            for m in available():
                row = applied.get(m.version)
                if row is not None:
                    if row["checksum"] != m.checksum:
                        raise MigrationError(
                            f"{m.filename} was changed after it was applied (checksum differs); "
                            "add a new migration instead of editing an applied one"
                        )
                    continue
                say(f"applying migration {m.filename}")
                try:
                    async with conn.transaction():
                        await conn.execute(m.sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                            m.version,
                            m.name,
                            m.checksum,
                        )
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"{m.filename} failed, nothing of it was applied: {_describe(exc)}") from exc
                done.append(m)
            return done
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()


async def status(dsn: str) -> list[tuple[int, str, bool]]:
    """(version, name, applied) for every shipped migration."""
    conn = await _connect(dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL")
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")} if exists else set()
    finally:
        await conn.close()
    return [(m.version, m.name, m.version in applied) for m in available()]


def _describe(exc: asyncpg.PostgresError) -> str:
    parts = [str(exc)]
    for attr in ("detail", "hint"):
        value = getattr(exc, attr, None)
        if value:
            parts.append(f"{attr.upper()}: {value}")
    return "; ".join(parts)
