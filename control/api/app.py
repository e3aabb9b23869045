"""The app factory: :func:`create_app` builds the Litestar app that ``tickfold serve`` mounts and
``tickfold api`` serves alone."""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from control.api import exchange_routes, feed, ops_routes, series_routes, universe_routes
from control.api.auth import SECURITY_SCHEME
from control.api.context import STATE_KEY, ApiContext, ApiDeps, provide_context
from control.api.errors import EXCEPTION_HANDLERS

DESCRIPTION = """\
tickfold's HTTP API: exchanges and their connection state, control commands (appended to the control
stream; bearer token), the symbol universe (manual adds, market data, the cross-exchange ranking), candles
and MACD-V through the dual-read, alerts, health and Prometheus metrics.

WebSocket `/ws` (not in this document): send `{"subscribe": [{"exchange": "binance", "kind": "closes"|"alerts",
"symbol"?: ..., "timeframe"?: ...}, ...]}`; receive `{"subscribed": [...]}`, then
`{"exchange": ..., "kind": ..., "data": ...}` per candle close or alert, of any number of exchanges.
Errors everywhere are `{"error": ..., "detail": ...}`.
"""


def _version() -> str:
    try:
        return importlib.metadata.version("tickfold")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def create_app(deps: ApiDeps) -> Litestar:
    """The API over ``deps``; a Redis client it opens itself lives as long as the app's lifespan."""
    ctx = ApiContext(deps)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await ctx.open()
        try:
            yield
        finally:
            await ctx.close()

    return Litestar(
        route_handlers=[
            *exchange_routes.ROUTES,
            *universe_routes.ROUTES,
            *series_routes.ROUTES,
            *ops_routes.ROUTES,
            feed.feed,
        ],
        dependencies={"ctx": Provide(provide_context, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        state=State({STATE_KEY: ctx}),
        lifespan=[lifespan],
        logging_config=None,
        openapi_config=OpenAPIConfig(
            title="tickfold",
            version=_version(),
            description=DESCRIPTION,
            path="/schema",
            render_plugins=[JsonRenderPlugin(), YamlRenderPlugin(), SwaggerRenderPlugin()],
            components=Components(
                security_schemes={
                    SECURITY_SCHEME: SecurityScheme(
                        type="http", scheme="bearer", description="the api_token setting (TICKFOLD_API_TOKEN)"
                    )
                }
            ),
        ),
    )
