"""Bearer-token guards. Control endpoints always need ``Authorization: Bearer <api_token>``; read
endpoints and ``/ws`` only when ``api_read_open`` is off. An empty ``api_token`` refuses control (403).

The token is compared in constant time and never logged, echoed or put in an error message.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from control.api.context import STATE_KEY, ApiContext

SECURITY_SCHEME = "BearerToken"
DISABLED = "the control endpoints are disabled: set TICKFOLD_API_TOKEN (the api_token setting) to enable them"


READS_DISABLED = "api_read_open is off, so reads need a token, and none is set: set TICKFOLD_API_TOKEN"


def _context(connection: ASGIConnection[Any, Any, Any, Any]) -> ApiContext:
    ctx = connection.app.state[STATE_KEY]
    assert isinstance(ctx, ApiContext)
    return ctx


def _require_token(connection: ASGIConnection[Any, Any, Any, Any], token: str, disabled: str = DISABLED) -> None:
    if not token:
        raise PermissionDeniedException(disabled)
    header = connection.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise NotAuthorizedException("missing bearer token: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise NotAuthorizedException("invalid bearer token")


def control_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    _require_token(connection, _context(connection).settings.api_token)


def read_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    settings = _context(connection).settings
    if not settings.api_read_open:
        _require_token(connection, settings.api_token, READS_DISABLED)


def requested_by(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """``api:<client host>`` (tokens carry no name, and the token itself is never recorded)."""
    client = connection.client
    return f"api:{client.host}" if client is not None and client.host else "api:unknown"
