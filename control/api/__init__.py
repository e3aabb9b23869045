"""tickfold's HTTP/WebSocket API (Litestar, served by uvicorn; msgspec payloads).

``tickfold serve`` mounts it; ``tickfold api`` serves it alone::

    app = create_app(ApiDeps(settings=settings, redis_url=url, database_url=dsn, redis=client))
    await run_api(app, "127.0.0.1", 8780, stop_event)
"""

from control.api.app import create_app
from control.api.context import ApiDeps
from control.api.server import DEFAULT_HOST, DEFAULT_PORT, run_api

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ApiDeps", "create_app", "run_api"]
