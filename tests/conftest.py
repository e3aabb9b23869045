"""Shared fixtures: private, real Redis and PostgreSQL servers for the whole session.

Each server runs from a temporary directory on a free loopback port, so tests can kill and restart
it. If a server can't start, the fixture fails with the reason; no test is skipped for a missing
server.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from tickfold.embedded import EmbeddedPostgres, EmbeddedRedis, start_postgres, start_redis
from tickfold.errors import ServerStartError


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    try:
        server = start_redis(tmp_path_factory.mktemp("redis"), appendonly=False)
    except ServerStartError as exc:
        pytest.fail(f"the private Redis for the tests could not start: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
async def redis_url(redis_server: EmbeddedRedis) -> str:
    """The session server's URL, emptied for this test."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()
    return redis_server.url


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    # Not under pytest's tmp dir (mode 700): as root, PostgreSQL runs as an unprivileged user who must reach it.
    root = Path(tempfile.mkdtemp(prefix="tickfold-test-pg-"))
    root.chmod(0o755)
    try:
        server = start_postgres(root / "data", fsync=False)
    except ServerStartError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"the private PostgreSQL for the tests could not start: {exc}", pytrace=False)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def pg_dsn(pg_server: EmbeddedPostgres) -> AsyncIterator[str]:
    """A brand-new empty database on the session server, dropped after the test."""
    name = f"t_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield pg_server.dsn_for(name)
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
