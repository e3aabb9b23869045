"""What the two simulated REST APIs share: JSON replies with the simulator's Date, parameter parsing,
and the injected-429 fault."""

from __future__ import annotations

import email.utils
import json
from dataclasses import dataclass

from aiohttp import web

from streams.simulator.config import Clock


class Reject(Exception):
    """Answer the request with ``status`` and the exchange's own error body."""

    def __init__(self, status: int, body: dict[str, object]) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


@dataclass
class Injected429:
    """``rest_429`` fault: the next ``times`` requests get 429 with ``Retry-After: retry_after``."""

    times: int = 0
    retry_after: int = 1

    def take(self) -> int | None:
        if self.times <= 0:
            return None
        self.times -= 1
        return self.retry_after


def reply(
    clock: Clock, body: object, status: int = 200, headers: dict[str, str] | None = None, *, charset: bool = True
) -> web.Response:
    """A JSON response (``body`` already encoded when bytes) dated by the simulator clock."""
    data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    out = {
        "Content-Type": "application/json;charset=UTF-8" if charset else "application/json",
        "Date": email.utils.formatdate(clock() / 1e9, usegmt=True),
    }
    out.update(headers or {})
    return web.Response(body=data, status=status, headers=out)


def int_param(request: web.Request, name: str, error: dict[str, object]) -> int | None:
    """An optional integer query parameter; ``Reject(400, error)`` when it isn't one."""
    text = request.query.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise Reject(400, error) from None
