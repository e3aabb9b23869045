"""Which Redis and PostgreSQL a command talks to: the configured ones, or private embedded ones.

With ``redis_url`` / ``database_url`` set, those servers are used (unreachable -> a clear error
naming the setting). With them unset, tickfold runs private servers with their data under
``data_dir`` (``./.tickfold/`` by default). A private server another tickfold command already runs
on the same data dir is re-used (its address is in ``<data_dir>/<server>/server.json``); one this
command started is stopped when it ends, its data kept for the next command.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tickfold import embedded
from tickfold.settings import Settings, mask_url

Say = Callable[[str], None]


@dataclass(frozen=True)
class Servers:
    redis_url: str
    database_url: str | None


def _alive(pid: int, port: int) -> bool:
    if not embedded.is_alive(pid):
        return False
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _running(state: Path) -> dict[str, object] | None:
    try:
        info = json.loads(state.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(info, dict) and _alive(int(info["pid"]), int(info["port"])):
        return info
    return None


@contextlib.contextmanager
def _embedded_redis(root: Path, say: Say) -> Iterator[str]:
    state = root / "redis" / "server.json"
    info = _running(state)
    if info is not None:
        say(f"Redis: re-using private {info['origin']} at {info['url']} (data in {root / 'redis'})")
        yield str(info["url"])
        return
    server = embedded.start_redis(root / "redis")
    state.write_text(json.dumps({"pid": server.pid, "port": server.port, "url": server.url, "origin": server.origin}))
    say(f"Redis: started private {server.origin} at {server.url} (data in {root / 'redis'})")
    try:
        yield server.url
    finally:
        state.unlink(missing_ok=True)
        server.stop()
        say("Redis: private server stopped (data kept)")


@contextlib.contextmanager
def _embedded_postgres(root: Path, say: Say) -> Iterator[str]:
    state = root / "postgres.json"
    info = _running(state)
    if info is not None:
        say(f"PostgreSQL: re-using private {info['origin']} at {info['url']} (data in {root / 'postgres'})")
        yield str(info["url"])
        return
    server = embedded.start_postgres(root / "postgres")
    state.write_text(json.dumps({"pid": server.pid, "port": server.port, "url": server.dsn, "origin": server.origin}))
    say(f"PostgreSQL: started private {server.origin} at {server.dsn} (data in {server.data_dir})")
    if server.note:
        say(f"PostgreSQL: {server.note}")
    try:
        yield server.dsn
    finally:
        state.unlink(missing_ok=True)
        server.stop()
        say("PostgreSQL: private server stopped (data kept)")


@contextlib.contextmanager
def servers(settings: Settings, say: Say, *, postgres: bool = False) -> Iterator[Servers]:
    """The servers a command uses, announced with ``say`` (passwords masked)."""
    root = Path(settings.data_dir).resolve()
    with contextlib.ExitStack() as stack:
        if settings.redis_url:
            redis_url = settings.redis_url
            say(f"Redis: {mask_url(redis_url)} (from settings)")
        else:
            (root / "redis").mkdir(parents=True, exist_ok=True)
            redis_url = stack.enter_context(_embedded_redis(root, say))
        database_url: str | None = None
        if postgres:
            if settings.database_url:
                database_url = settings.database_url
                say(f"PostgreSQL: {mask_url(database_url)} (from settings)")
            else:
                root.mkdir(parents=True, exist_ok=True)
                database_url = stack.enter_context(_embedded_postgres(root, say))
        yield Servers(redis_url, database_url)
