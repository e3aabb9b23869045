"""Recorded REST documents the simulator serves in place of its computed answers.

``tickfold simulate --rest-doc binance/exchangeInfo=FILE`` (repeatable), or
``Simulator(rest_documents={"coinbase/products": path})``: the endpoint answers with the recorded body,
byte for byte, under the simulator's usual rate limits (Binance request weight, Coinbase requests per
second, the ``rest_429`` fault). The simulated markets keep streaming on the WebSockets; only these
documents change. Endpoints:

* ``binance/exchangeInfo`` — ``GET /api/v3/exchangeInfo``: the whole document; ``?symbol=`` /
  ``?symbols=[...]`` pick entries (an unknown one: 400, code -1121, as Binance answers).
* ``binance/ticker/24hr`` — ``GET /api/v3/ticker/24hr``: the all-symbols array as recorded;
  ``?symbol=`` answers that entry (an object), or 400 -1121.
* ``coinbase/products`` — ``GET .../market/products``: the whole document; ``/products/{id}`` answers
  that product, or 404 as Coinbase does.

:meth:`RecordedDocs.set` replaces a document while the simulator runs (a test changing volumes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

BINANCE_EXCHANGE_INFO: Final = "binance/exchangeInfo"
BINANCE_TICKER_24HR: Final = "binance/ticker/24hr"
COINBASE_PRODUCTS: Final = "coinbase/products"
ENDPOINTS: Final = (BINANCE_EXCHANGE_INFO, BINANCE_TICKER_24HR, COINBASE_PRODUCTS)


def parse_rest_doc(text: str) -> tuple[str, str]:
    """``ENDPOINT=FILE`` (the ``--rest-doc`` flag) -> ``(endpoint, file)``; ValueError naming what is wrong."""
    endpoint, sep, path = text.partition("=")
    if not sep or not path:
        raise ValueError(f"--rest-doc wants ENDPOINT=FILE, got {text!r}; endpoints: {', '.join(ENDPOINTS)}")
    return endpoint.strip(), path.strip()


class RecordedDocs:
    """The recorded bodies by endpoint (bytes, served verbatim) and lookups into them by symbol."""

    def __init__(self, files: Mapping[str, str | Path] | None = None) -> None:
        self._raw: dict[str, bytes] = {}
        self._index: dict[str, dict[str, Any]] = {}
        for endpoint, path in (files or {}).items():
            self._check(endpoint)
            try:
                body = Path(path).read_bytes()
            except OSError as exc:
                raise ValueError(f"recorded REST document for {endpoint}: cannot read {path}: {exc}") from exc
            self.set(endpoint, body)

    @staticmethod
    def _check(endpoint: str) -> None:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown recorded REST endpoint {endpoint!r}; one of {', '.join(ENDPOINTS)}")

    def set(self, endpoint: str, document: bytes | object) -> None:
        """Serve ``document`` (the body as bytes, or a JSON-able object) at ``endpoint`` from now on."""
        self._check(endpoint)
        body = document if isinstance(document, bytes) else json.dumps(document, separators=(",", ":")).encode()
        try:
            parsed = json.loads(body)
        except ValueError as exc:
            raise ValueError(f"recorded REST document for {endpoint} is not JSON: {exc}") from exc
        self._index[endpoint] = _index(endpoint, parsed)
        self._raw[endpoint] = body

    def endpoints(self) -> list[str]:
        return [e for e in ENDPOINTS if e in self._raw]

    def has(self, endpoint: str) -> bool:
        return endpoint in self._raw

    def raw(self, endpoint: str) -> bytes:
        return self._raw[endpoint]

    def entry(self, endpoint: str, key: str) -> dict[str, Any] | None:
        """The entry for ``key`` (a Binance symbol, a Coinbase product id), None when the document has none."""
        return self._index.get(endpoint, {}).get(key)

    def document(self, endpoint: str) -> Any:
        return json.loads(self._raw[endpoint])


def _index(endpoint: str, parsed: Any) -> dict[str, Any]:
    if endpoint == BINANCE_EXCHANGE_INFO:
        rows = parsed.get("symbols") if isinstance(parsed, dict) else None
        key = "symbol"
    elif endpoint == BINANCE_TICKER_24HR:
        rows, key = parsed, "symbol"
    else:
        rows = parsed.get("products") if isinstance(parsed, dict) else None
        key = "product_id"
    if not isinstance(rows, list) or not all(isinstance(r, dict) and key in r for r in rows):
        shape = {BINANCE_EXCHANGE_INFO: '{"symbols": [...]}', BINANCE_TICKER_24HR: "[{...}, ...]"}
        wanted = shape.get(endpoint, '{"products": [...]}')
        raise ValueError(f"recorded REST document for {endpoint} is not {wanted} with {key!r} in every entry")
    return {str(r[key]): r for r in rows}
