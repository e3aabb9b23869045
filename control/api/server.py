"""Serving the app with uvicorn inside an already running event loop (``serve`` and ``tickfold api``).

The caller owns the process and its signals: uvicorn's own signal capture is switched off, and the
server stops when ``stop_event`` is set. The listening socket is bound here first, so a busy port
fails as a :class:`TickfoldError` naming it (uvicorn would ``sys.exit``), and port 0 picks a free one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

import uvicorn
from litestar import Litestar

from tickfold.errors import TickfoldError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8780


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the host process owns SIGINT/SIGTERM and sets stop_event


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise TickfoldError(f"the API cannot listen on {host}:{port}: {exc}") from exc
    sock.setblocking(False)
    return sock


async def run_api(
    app: Litestar,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    stop_event: asyncio.Event | None = None,
    *,
    on_listening: Callable[[str, int], None] | None = None,
    graceful_timeout_s: float = 5.0,
) -> None:
    """Serve ``app`` on ``host:port`` (loopback by default) until ``stop_event`` is set.
    ``on_listening(host, port)`` is called with the bound port once the server accepts connections."""
    stop_event = stop_event or asyncio.Event()
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="on",
        ws="websockets-sansio",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, round(graceful_timeout_s)),
        server_header=False,
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="tickfold-api")
    stopping = asyncio.create_task(stop_event.wait())
    try:
        while not server.started and not serving.done():  # noqa: ASYNC110 (uvicorn has no "started" event)
            await asyncio.sleep(0.02)
        if server.started and on_listening is not None:
            on_listening(host, bound)
        await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not serving.done():
            server.should_exit = True
        try:
            await serving
        except SystemExit as exc:  # uvicorn exits when the app's startup fails
            raise TickfoldError(f"the API on {host}:{bound} failed to start (exit {exc.code}); see the log") from None
        if not stop_event.is_set():
            raise TickfoldError(f"the API on {host}:{bound} stopped on its own; see the log")
    finally:
        stopping.cancel()
        if not serving.done():
            server.should_exit = True
            with contextlib.suppress(BaseException):
                await serving
        sock.close()
