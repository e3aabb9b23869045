"""Raw frames are partitioned by symbol: ``frames:{exchange_id}:p{n}``, n = crc32(symbol) mod P.

A fold needs per-key order (DESIGN invariant 4). A consumer group hands one stream's entries to its
consumers in any order, so each exchange's frames are split over P streams, every frame of a symbol
in the same one, and each stream has one owner at a time (a lease, see :mod:`processors.leases`).
K processor processes then share the P partitions, and each partition is folded in stream order.

The symbol is found in the raw bytes without parsing the JSON (the adapters must stay cheap):

* Binance combined streams start ``{"stream":"btcusdt@aggTrade",...``; raw-stream events carry ``"s":"BTCUSDT"``;
* Coinbase Advanced Trade frames carry ``"product_id":"BTC-USD"`` (the first one decides; the
  adapters subscribe each connection to the symbols of one partition, so a frame never mixes partitions);
* tickfold's own frames (``{"tickfold":...,"symbol":"BTCUSDT",...}``, :mod:`streams.frames`) carry
  ``"symbol"``; looked for only when the exchange's markers are absent, so exchange frames don't pay for it.

Frames with no symbol (heartbeats, subscription acknowledgements) go to the partition of the
connection that received them (``home``), or to partition 0.

P is fixed once an exchange's first frame is written (``frames:{exchange_id}:partitions``): writers and
readers all use the stored value (see :func:`streams.log.ensure_partitions`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from streams import keys

DEFAULT_PARTITIONS = 4
_BINANCE_STREAM = b'"stream":"'
_BINANCE_SYMBOL = b'"s":"'
_COINBASE_PRODUCT = b'"product_id":"'
_TICKFOLD = b'"tickfold":'
_TICKFOLD_SYMBOL = b'"symbol":"'


def partition_of(symbol: str, partitions: int) -> int:
    """The partition of an exchange-native symbol (case-insensitive: Binance stream names are lower case)."""
    return zlib.crc32(symbol.upper().encode()) % partitions


def _value_after(frame: bytes, marker: bytes, end: bytes) -> bytes | None:
    i = frame.find(marker)
    if i < 0:
        return None
    i += len(marker)
    j = frame.find(end, i)
    return frame[i:j] if j > i else None


def _raw_symbol(exchange_id: str, frame: bytes) -> bytes | None:
    """The symbol's bytes as the frame spells them (``btcusdt``, ``BTC-USD``), or None."""
    if exchange_id == "binance":
        raw = _value_after(frame, _BINANCE_STREAM, b"@") or _value_after(frame, _BINANCE_SYMBOL, b'"')
    else:
        raw = _value_after(frame, _COINBASE_PRODUCT, b'"')
    if raw is None and _TICKFOLD in frame:
        raw = _value_after(frame, _TICKFOLD_SYMBOL, b'"')
    return raw


def _symbol_of(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("ascii").upper()
    except UnicodeDecodeError:
        return None


def frame_symbol(exchange_id: str, frame: bytes) -> str | None:
    """The exchange-native symbol a raw frame is about, or None (heartbeats, acknowledgements)."""
    return _symbol_of(_raw_symbol(exchange_id, frame))


def route(exchange_id: str, frame: bytes, partitions: int, home: int = 0) -> int:
    """The partition a raw frame is appended to."""
    if partitions == 1:
        return 0
    symbol = frame_symbol(exchange_id, frame)
    return home if symbol is None else partition_of(symbol, partitions)


ROUTER_CACHE = 65_536  # distinct symbol spellings remembered per router (Binance lists ~3,000 markets)


def router(exchange_id: str, partitions: int, home: int = 0) -> Callable[[bytes], int]:
    """:func:`route` for one exchange and partition count, remembering each symbol spelling's partition:
    the adapters' hot path finds the symbol's bytes and looks them up (no decode, case fold or CRC)."""
    if partitions == 1:
        return lambda frame: 0
    known: dict[bytes, int] = {}

    def route_frame(frame: bytes) -> int:
        raw = _raw_symbol(exchange_id, frame)
        if raw is None:
            return home
        p = known.get(raw)
        if p is None:
            symbol = _symbol_of(raw)
            p = home if symbol is None else partition_of(symbol, partitions)
            if len(known) < ROUTER_CACHE:
                known[raw] = p
        return p

    return route_frame


def streams(exchange_id: str, partitions: int) -> list[str]:
    return [keys.frames_stream(exchange_id, p) for p in range(partitions)]
