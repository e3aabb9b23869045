"""Errors as JSON: ``{"error": ..., "detail": ...}`` with the status the failure deserves.

    bad input (query, body, key format) ......... 400 bad_request
    missing / wrong bearer token ................ 401 unauthorized
    control disabled (no api_token) ............. 403 forbidden
    unknown exchange / symbol / route ........... 404 not_found
    a symbol that does not trade (manual add) ... 422 not_tradable
    an exchange's REST API failing .............. 502 exchange_unavailable
    Redis / PostgreSQL unreachable, not migrated  503 unavailable
    a bug ........................................ 500 internal (logged; the detail names no internals)

Nothing here echoes request headers, so a token sent in ``Authorization`` never comes back.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from control.api.schemas import ErrorBody
from control.manual import NoManualAdd, NotTradable
from streams.rest.errors import RestError
from streams.symbols import UnknownSymbol
from tickfold.errors import KeyFormatError, StoreUnavailable, TickfoldError, UnknownExchange

log = logging.getLogger(__name__)

_NAMES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> Response[ErrorBody]:
    return Response(ErrorBody(error, detail), status_code=status, headers=headers)


def _validation_detail(exc: ValidationException) -> str:
    extra: Any = exc.extra
    parts = []
    for item in extra if isinstance(extra, list) else [extra] if extra else []:
        if isinstance(item, dict):
            where = ".".join(str(item[k]) for k in ("source", "key") if item.get(k))
            parts.append(f"{where}: {item.get('message', '')}".strip(": "))
        else:
            parts.append(str(item))
    return "; ".join([str(exc.detail), *parts]) if parts else str(exc.detail)


def on_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    status = exc.status_code
    detail = _validation_detail(exc) if isinstance(exc, ValidationException) else str(exc.detail)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return error_response(status, _NAMES.get(status, "http_error"), detail, headers)


def on_tickfold_error(_: Request[Any, Any, Any], exc: TickfoldError) -> Response[ErrorBody]:
    if isinstance(exc, UnknownExchange):
        return error_response(404, "unknown_exchange", str(exc))
    if isinstance(exc, UnknownSymbol):
        return error_response(404, "unknown_symbol", str(exc))
    if isinstance(exc, NoManualAdd):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, NotTradable):
        return error_response(422, "not_tradable", str(exc))
    if isinstance(exc, RestError):
        return error_response(502, "exchange_unavailable", str(exc))
    if isinstance(exc, KeyFormatError):
        return error_response(400, "bad_request", str(exc))
    if isinstance(exc, StoreUnavailable):
        return error_response(503, "unavailable", str(exc))
    return error_response(400, "bad_request", str(exc))


def on_postgres_error(_: Request[Any, Any, Any], exc: asyncpg.PostgresError) -> Response[ErrorBody]:
    if isinstance(exc, asyncpg.UndefinedTableError):
        return error_response(503, "unavailable", f"the database is not migrated (run `tickfold migrate`): {exc}")
    return error_response(503, "unavailable", f"PostgreSQL: {exc}")


def on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.exception("API: %s %s failed", request.method, request.url.path)
    return error_response(500, "internal", f"{type(exc).__name__} (see the server log)")


EXCEPTION_HANDLERS: Any = {
    HTTPException: on_http_exception,
    TickfoldError: on_tickfold_error,
    asyncpg.PostgresError: on_postgres_error,
    Exception: on_unexpected,
}
