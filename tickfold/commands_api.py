"""``tickfold api``: serve the HTTP/WebSocket API alone (``serve`` mounts the same app beside the
supervisor and the processors). Ctrl-C / SIGTERM stops it."""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from rich.console import Console

from control.api import ApiDeps, create_app, run_api
from streams import log
from tickfold.runtime import servers
from tickfold.settings import Settings

err = Console(stderr=True, highlight=False, soft_wrap=True)


def _say(text: str) -> None:
    err.print(f"[dim]{text}[/dim]")


def api(args: argparse.Namespace, settings: Settings) -> int:
    with servers(settings, _say, postgres=True) as srv:
        uvloop.run(_serve(settings, srv.redis_url, srv.database_url, args.host, args.port))
    return 0


async def _serve(settings: Settings, redis_url: str, database_url: str | None, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with log.connect(redis_url) as client:  # (checked with PING: an unreachable Redis fails here)
        app = create_app(ApiDeps(settings=settings, redis_url=redis_url, database_url=database_url, redis=client))

        def listening(h: str, p: int) -> None:
            where = f"[{h}]" if ":" in h else h
            err.print(f"tickfold API on http://{where}:{p}  (OpenAPI: /schema, WebSocket: /ws; Ctrl-C stops)")
            if not settings.api_token:
                _say("control endpoints are disabled: set TICKFOLD_API_TOKEN to enable them")

        await run_api(app, host, port, stop, on_listening=listening)
    _say("API stopped")
