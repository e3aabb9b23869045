"""Errors of the REST clients, under tickfold's root :class:`~tickfold.errors.TickfoldError`.

    TickfoldError
    └── RestError                 any REST failure (``exchange`` and ``path`` say where)
        ├── RateLimited           HTTP 429 still after the bounded retries; ``retry_after`` seconds
        ├── Banned                HTTP 418 (Binance IP ban, after ignoring 429s); ``retry_after`` seconds
        ├── ExchangeUnavailable   5xx / connection errors / timeouts after the retries (retryable later)
        ├── BadRequest            any other 4xx: ``status``, the exchange's ``code`` and ``message``
        └── UnexpectedResponse    a 2xx whose body is not what the wire spec says

aiohttp's exceptions are translated here (``raise X(...) from exc``); nothing outside
``streams/rest`` sees them.
"""

from __future__ import annotations

from tickfold.errors import TickfoldError


class RestError(TickfoldError):
    retryable: bool = False

    def __init__(self, message: str, *, exchange: str = "", path: str = "") -> None:
        self.exchange = exchange
        self.path = path
        where = f"{exchange} {path}".strip()
        super().__init__(f"{where}: {message}" if where else message)


class RateLimited(RestError):
    """The exchange kept answering 429; wait ``retry_after`` seconds (None: it did not say)."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None, exchange: str = "", path: str = "") -> None:
        self.retry_after = retry_after
        super().__init__(message, exchange=exchange, path=path)


class Banned(RestError):
    """Binance 418: the IP is banned (2 min to 3 days) for ignoring 429s. Do not retry before ``retry_after``."""

    def __init__(self, message: str, *, retry_after: float | None, exchange: str = "", path: str = "") -> None:
        self.retry_after = retry_after
        super().__init__(message, exchange=exchange, path=path)


class ExchangeUnavailable(RestError):
    """5xx, connection failures or timeouts that outlasted the retries; worth trying again later."""

    retryable = True

    def __init__(self, message: str, *, status: int | None = None, exchange: str = "", path: str = "") -> None:
        self.status = status
        super().__init__(message, exchange=exchange, path=path)


class BadRequest(RestError):
    """A 4xx other than 429/418: not retried. ``code``/``message`` are the exchange's own
    (Binance ``{"code":-1121,"msg":"Invalid symbol."}``; Coinbase ``{"error":"INVALID_ARGUMENT","message":…}``)."""

    def __init__(
        self, *, status: int, code: int | str | None, message: str, exchange: str = "", path: str = ""
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"HTTP {status} code={code!r}: {message}", exchange=exchange, path=path)


class UnexpectedResponse(RestError):
    """A successful status with a body that does not decode as the documented response."""
