"""What both REST clients share: one aiohttp session, GET with bounded retries, error mapping.

Retry policy (per request, ``max_retries`` retries after the first attempt):

* 2xx: done.
* 429: wait exactly ``Retry-After`` seconds (backoff if the header is missing), then retry; the pause
  holds for every request of the client, not just this one. Still 429 after the retries:
  :class:`RateLimited` with the last ``retry_after``.
* 418 (Binance IP ban): :class:`Banned` at once, carrying ``Retry-After``; never retried, and until
  ``Retry-After`` has passed the client raises :class:`Banned` without sending anything (bans grow
  when they are ignored).
* 5xx, connection errors, timeouts: exponential backoff with "equal jitter" (half the nominal delay
  plus up to the other half), capped, at least any ``Retry-After``; after the retries:
  :class:`ExchangeUnavailable`.
* any other 4xx: :class:`BadRequest` at once with the exchange's own code and message.

Only GETs of public market data are made, so a retry after a 5xx of unknown outcome is safe.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self, TypeVar

import aiohttp
import msgspec

from streams.rest.errors import BadRequest, Banned, ExchangeUnavailable, RateLimited, UnexpectedResponse

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
Params = Mapping[str, str | int]
T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """``delay(n)`` before the n-th retry (n ≥ 1): half of ``min(cap, base·factor^(n-1))`` plus a random
    share of the other half, so successive delays grow (until the cap) yet never synchronize."""

    base_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 30.0

    def delay(self, retry: int, rng: random.Random) -> float:
        nominal = min(self.cap_s, self.base_s * self.factor ** max(retry - 1, 0))
        return nominal / 2 + rng.random() * nominal / 2


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy)
    body: bytes
    server_ms: int | None  # the server's clock from the Date header (1 s resolution), None if absent


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds (what Binance sends) or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds)


def parse_http_date_ms(value: str | None) -> int | None:
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return int(when.timestamp() * 1000)


class RestClient:
    """Base of the exchange clients: session ownership, ``_get`` with the retry policy above.

    Use as ``async with Client(...) as c:`` or call :meth:`aclose`. A session passed in is used as is
    and left open.
    """

    exchange = ""

    def __init__(
        self,
        base_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: Sleep = asyncio.sleep,
        monotonic: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        max_retries: int = 5,
        backoff: Backoff | None = None,
        timeout_s: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._own_session = session is None
        self._sleep = sleep
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self.max_retries = max_retries
        self.backoff = backoff if backoff is not None else Backoff()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._rng = rng if rng is not None else random.Random()
        self._pause_until = 0.0  # monotonic: every request waits until then (429 Retry-After)
        self._banned_until = 0.0  # monotonic: every request fails fast until then (418 Retry-After)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers={"User-Agent": "tickfold"})
        return self._session

    # Hooks for the exchange clients ----------------------------------------------------------------

    async def _before_request(self, cost: int) -> None:
        """Wait for the rate limiter (``cost``: the request's weight)."""

    def _after_response(self, response: Response) -> None:
        """Learn from the response headers (used weight ...)."""

    def _error_body(self, body: bytes) -> tuple[int | str | None, str]:
        """The exchange's error ``(code, message)`` from a non-2xx body."""
        return None, body[:500].decode("utf-8", "replace")

    # ------------------------------------------------------------------------------------------------

    def _decode(self, decoder: msgspec.json.Decoder[T], response: Response, path: str) -> T:
        try:
            return decoder.decode(response.body)
        except msgspec.DecodeError as exc:
            raise UnexpectedResponse(f"undecodable body: {exc}", exchange=self.exchange, path=path) from exc

    def server_now_ms(self, response: Response) -> int:
        """The exchange's clock at the response (Date header), else our wall clock."""
        if response.server_ms is not None:
            return response.server_ms
        return int(self._wall_clock() * 1000)

    async def _gate(self, path: str) -> None:
        """Honour an earlier 418 (fail fast, sending nothing) or 429 (wait) for every request of this client."""
        now = self._monotonic()
        if now < self._banned_until:
            remaining = self._banned_until - now
            raise Banned(
                f"IP banned (HTTP 418) for another {remaining:.0f} s; request not sent",
                retry_after=remaining,
                exchange=self.exchange,
                path=path,
            )
        if now < self._pause_until:
            await self._sleep(self._pause_until - now)

    async def _get(self, path: str, params: Params | None = None, *, cost: int = 1) -> Response:
        url = self.base_url + path
        query = {k: str(v) for k, v in (params or {}).items()}
        retry = 0
        while True:
            await self._gate(path)
            await self._before_request(cost)
            try:
                async with self._http().get(url, params=query, timeout=self._timeout) as resp:
                    body = await resp.read()
                    response = Response(
                        status=resp.status,
                        headers=resp.headers,
                        body=body,
                        server_ms=parse_http_date_ms(resp.headers.get("Date")),
                    )
            except (aiohttp.ClientError, TimeoutError) as exc:
                if retry >= self.max_retries:
                    raise ExchangeUnavailable(
                        f"{type(exc).__name__}: {exc} (after {retry} retries)", exchange=self.exchange, path=path
                    ) from exc
                retry += 1
                await self._sleep(self.backoff.delay(retry, self._rng))
                continue

            self._after_response(response)
            status = response.status
            if 200 <= status < 300:
                return response
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            code, message = self._error_body(response.body)
            if status == 418:
                if retry_after is not None:
                    self._banned_until = max(self._banned_until, self._monotonic() + retry_after)
                raise Banned(
                    f"HTTP 418 IP banned, retry after {retry_after} s: {message}",
                    retry_after=retry_after,
                    exchange=self.exchange,
                    path=path,
                )
            if status == 429:
                if retry >= self.max_retries:
                    raise RateLimited(
                        f"HTTP 429 after {retry} retries: {message}",
                        retry_after=retry_after,
                        exchange=self.exchange,
                        path=path,
                    )
                retry += 1
                if retry_after is not None:  # the gate waits it out, for every request of this client
                    self._pause_until = max(self._pause_until, self._monotonic() + retry_after)
                else:
                    await self._sleep(self.backoff.delay(retry, self._rng))
                continue
            if status >= 500:
                if retry >= self.max_retries:
                    raise ExchangeUnavailable(
                        f"HTTP {status} after {retry} retries: {message}",
                        status=status,
                        exchange=self.exchange,
                        path=path,
                    )
                retry += 1
                await self._sleep(max(self.backoff.delay(retry, self._rng), retry_after or 0.0))
                continue
            raise BadRequest(status=status, code=code, message=message, exchange=self.exchange, path=path)
