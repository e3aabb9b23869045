"""Apply the numbered SQL files of this package once each, in order, with asyncpg.

* Files are ``NNN_name.sql``, numbered from 001 without holes.
* Each file runs in its own transaction and is recorded in ``schema_migrations`` (version, name,
  sha256 of its text) in that same transaction: a failing file leaves the database as it was before it.
* A session-level advisory lock (key :data:`LOCK_KEY`) serializes concurrent runs: the second waits,
  then finds everything applied and does nothing.
* An applied file whose text (or name) changed since is an error: migrations are append-only history.
* A statement that cannot run inside a transaction (``CREATE INDEX CONCURRENTLY``, ``VACUUM``) cannot
  go in a migration file.

Migrations run only from ``tickfold migrate`` (and the demo), never on import or processor start.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from tickfold.errors import MigrationError, StoreUnavailable

#: The session-level advisory lock every migrate run takes: "tickfold" in ASCII as a (positive) bigint.
#: Advisory locks are per database, so runs against different databases do not wait for each other.
LOCK_KEY = 0x7469636B666F6C64
#: Errors meaning the connection (not the SQL) failed: retry the whole run, it resumes where it stopped.
_CONNECTION_LOST = (
    OSError,
    asyncpg.PostgresConnectionError,  # includes ConnectionDoesNotExistError
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
)
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


@dataclass(frozen=True)
class AppliedMigration:
    """A migration that one :func:`migrate` call applied and recorded in ``schema_migrations``."""

    version: int
    name: str
    checksum: str

    @property
    def filename(self) -> str:
        return f"{self.version:03d}_{self.name}.sql"


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


async def migrate(dsn: str, *, progress: Callable[[str], None] | None = None) -> list[AppliedMigration]:
    """Apply every pending migration; returns the ones applied by this call (``[]``: already up to date).

    Raises :class:`MigrationError` (naming the file) when a file fails (with Postgres' message, DETAIL
    and HINT; that file is rolled back, earlier ones stay applied) or when an applied file was changed,
    and :class:`StoreUnavailable` when PostgreSQL cannot be reached or the connection drops.
    """
    say = progress or (lambda _: None)
    conn = await _connect(dsn)
    current = "the wait for the migration lock"
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        current = "the read of schema_migrations"
        try:
            await conn.execute(_CREATE_TABLE)
            applied = {
                r["version"]: r for r in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
            }
            done: list[AppliedMigration] = []
            for m in available():
                current = m.filename
                row = applied.get(m.version)
                if row is not None:
                    if row["checksum"] != m.checksum or row["name"] != m.name:
                        raise MigrationError(
                            f"{m.filename} was changed after it was applied (recorded as "
                            f"{row['version']:03d}_{row['name']}.sql, checksum {row['checksum']}); "
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
                except _CONNECTION_LOST:
                    raise
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"{m.filename} failed, nothing of it was applied: {_describe(exc)}") from exc
                done.append(AppliedMigration(m.version, m.name, m.checksum))
            return done
        finally:
            # Closing the connection releases a session lock too, so a failed unlock (the connection is
            # gone) must not hide the error that got us here.
            if not conn.is_closed():
                with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    except (*_CONNECTION_LOST, asyncpg.InterfaceError) as exc:
        # A connection lost inside a transaction surfaces as the transaction's own InterfaceError
        # ("the underlying connection is closed") raised while it tries to roll back.
        if isinstance(exc, asyncpg.InterfaceError):
            if not conn.is_closed():
                raise
            reason: BaseException = exc.__context__ or exc
        else:
            reason = exc
        raise StoreUnavailable(
            f"lost the connection to PostgreSQL during {current}: {reason}; each file is applied whole or "
            "not at all, so run migrate again"
        ) from exc
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
    """Postgres' message with its DETAIL and HINT: asyncpg's ``str()`` carries them; add any that is missing."""
    text = str(exc)
    for attr in ("detail", "hint"):
        value = getattr(exc, attr, None)
        if value and value not in text:
            text += f"\n{attr.upper()}:  {value}"
    return text
