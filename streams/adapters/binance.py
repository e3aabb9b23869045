"""Binance Spot adapter: combined streams, ``kline_<tf>`` and ``aggTrade``, sharded, rotated with overlap.

* Streams are lowercase (``btcusdt@kline_1m``); at most 1024 per connection, so symbols are sharded
  across connections. Streams go in the combined URL (``/stream?streams=a/b``) while it stays short;
  the rest are SUBSCRIBEd, at most ``messages_per_s`` messages a second (Binance counts every incoming
  message, pings and pongs too, against 5/s and disconnects above it).
* Binance pings every 20 s; the client library answers each ping with a pong echoing its payload.
* A connection lives at most 24 h: it is rotated before that (``rotate_after_s``) with overlap, and
  ``serverShutdown`` rotates it at once, so nothing is missed.
* A symbol set change (:meth:`WsAdapter.update_symbols`) is SUBSCRIBE / UNSUBSCRIBE requests on the live
  connections, through the same per-connection token bucket; a full connection spills onto a new one.
* aggTrade ids increase by one per symbol: a jump is an ``exchange:gap`` event (backfill: REST
  ``aggTrades?fromId=``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import msgspec

from control import events as ev
from streams.adapters.base import AdapterConfig, Conn, Shard, TokenBucket, WsAdapter, chunks
from streams.adapters.sink import ControlEmitter, FrameSink

MAX_STREAMS_PER_CONNECTION = 1024
MAX_URL_CHARS = 6000
ROTATE_AFTER_S = 23 * 3600.0  # Binance closes connections after 24 h


class _AggData(msgspec.Struct, gc=False):  # untracked: one per aggTrade, never in a cycle
    e: str = ""
    s: str = ""
    a: int = -1


class _Envelope(msgspec.Struct, gc=False):
    data: _AggData | None = None


_ENVELOPE = msgspec.json.Decoder(_Envelope)


@dataclass(frozen=True)
class BinanceLimits:
    max_streams_per_connection: int = MAX_STREAMS_PER_CONNECTION
    messages_per_s: float = 4.0  # under the 5/s the server enforces
    params_per_subscribe: int = 200


def stream_names(symbols: tuple[str, ...], timeframes: tuple[str, ...]) -> list[str]:
    names: list[str] = []
    for symbol in symbols:
        s = symbol.lower()
        names.extend(f"{s}@kline_{tf}" for tf in timeframes)
        names.append(f"{s}@aggTrade")
    return names


class BinanceAdapter(WsAdapter):
    exchange_id = "binance"

    def __init__(
        self,
        config: AdapterConfig,
        sink: FrameSink,
        control: ControlEmitter,
        limits: BinanceLimits | None = None,
    ) -> None:
        super().__init__(config, sink, control)
        self.limits = limits or BinanceLimits()
        self.last_agg_id: dict[str, int] = {}
        self._request_ids = itertools.count(1)
        self._in_url: dict[str, tuple[str, ...]] = {}
        self._buckets: dict[str, TokenBucket] = {}  # per connection: every message counts against 5/s

    def shards(self) -> list[Shard]:
        names = stream_names(self.config.symbols, self.config.timeframes)
        return [
            Shard(f"binance-{i}", chunk)
            for i, chunk in enumerate(chunks(names, self.limits.max_streams_per_connection))
        ]

    def url(self, shard: Shard) -> str:
        base = self.config.ws_url.rstrip("/") + "/stream?streams="
        in_url: list[str] = []
        length = len(base)
        for name in shard.subscriptions:
            if length + len(name) + 1 > MAX_URL_CHARS:
                break
            in_url.append(name)
            length += len(name) + 1
        self._in_url[shard.name] = tuple(in_url)
        return base + "/".join(in_url)

    def subscription_keys(self) -> list[str]:
        return stream_names(self.config.symbols, self.config.timeframes)

    def shard_capacity(self) -> int | None:
        return self.limits.max_streams_per_connection

    def on_open(self, conn: Conn, shard: Shard) -> None:
        self._buckets = {k: v for k, v in self._buckets.items() if k in self._open}  # closed connections' go
        self._buckets[conn.id] = TokenBucket(self.limits.messages_per_s)

    async def subscribe(self, conn: Conn, shard: Shard) -> None:
        # the URL was built before connecting; the shard's list may have changed since (update_symbols)
        in_url = self._in_url.get(shard.name, ())
        url_set, current = set(in_url), set(shard.subscriptions)
        await self.send_changes(
            conn,
            shard,
            tuple(s for s in shard.subscriptions if s not in url_set),
            tuple(s for s in in_url if s not in current),
        )

    async def send_changes(self, conn: Conn, shard: Shard, added: tuple[str, ...], removed: tuple[str, ...]) -> None:
        bucket = self._buckets.setdefault(conn.id, TokenBucket(self.limits.messages_per_s))
        for method, streams in (("UNSUBSCRIBE", removed), ("SUBSCRIBE", added)):
            for chunk in chunks(streams, self.limits.params_per_subscribe):
                await bucket.acquire()
                request = {"method": method, "params": list(chunk), "id": next(self._request_ids)}
                await conn.ws.send(msgspec.json.encode(request).decode())

    def inspect(self, conn: Conn, shard: Shard, frame: bytes) -> None:
        if b"serverShutdown" in frame:
            shard.reconnect_reason = "serverShutdown"
            shard.reconnect_now.set()
            return
        if b'"aggTrade"' not in frame:
            return
        try:
            data = _ENVELOPE.decode(frame).data
        except msgspec.DecodeError:
            return  # kept in the raw stream as received; the processor dead-letters it
        if data is None or data.e != "aggTrade":
            return
        last = self.last_agg_id.get(data.s)
        if last is not None and data.a > last + 1:
            self.emit(ev.Gap, conn.id, symbol=data.s, kind="trade_id", expected=last + 1, got=data.a)
        if last is None or data.a > last:
            self.last_agg_id[data.s] = data.a
