"""Coinbase Advanced Trade adapter: one subscribe per channel, heartbeats always, sequence tracking.

* One ``{"type":"subscribe","product_ids":[..],"channel":..}`` per channel, the first within 5 s of
  connecting, throttled under the 8 messages/s Coinbase allows; ``heartbeats`` is always subscribed
  (without it quiet channels are closed after 60–90 s) and keeps the connection from looking stale.
* A symbol set change (:meth:`WsAdapter.update_symbols`) is one unsubscribe / subscribe per channel for
  the difference, through the connection's token bucket; ``heartbeats`` stays subscribed.
* ``sequence_num`` counts every frame of a connection from 0 across all channels. A jump means frames
  were dropped: an ``exchange:gap`` event, then the stateful channels are re-subscribed so their
  snapshots re-seed the state. A lower number than expected is ignored (the frame is still kept).
"""

from __future__ import annotations

import asyncio

import msgspec
import websockets

from control import events as ev
from streams.adapters.base import AdapterConfig, Conn, Shard, TokenBucket, WsAdapter
from streams.adapters.sink import ControlEmitter, FrameSink

CHANNELS = ("heartbeats", "candles", "market_trades", "ticker")
RESUBSCRIBE_ON_GAP = ("candles", "market_trades", "ticker")


class _Seq(msgspec.Struct, gc=False):  # untracked: one per frame, never in a cycle
    sequence_num: int = -1


_SEQ = msgspec.json.Decoder(_Seq)


class CoinbaseAdapter(WsAdapter):
    exchange_id = "coinbase"

    def __init__(
        self,
        config: AdapterConfig,
        sink: FrameSink,
        control: ControlEmitter,
        *,
        channels: tuple[str, ...] = CHANNELS,
        messages_per_s: float = 6.0,
    ) -> None:
        super().__init__(config, sink, control)
        if "heartbeats" not in channels:
            channels = ("heartbeats", *channels)
        self.channels = channels
        self.messages_per_s = messages_per_s
        self.expected_seq: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._resubscribing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def shards(self) -> list[Shard]:
        return [Shard("coinbase-0", tuple(self.config.symbols))]

    def on_open(self, conn: Conn, shard: Shard) -> None:
        self.expected_seq[conn.id] = 0
        # burst + rate bounds what any 1 s window sees: 2 + 6 stays within the 8/s Coinbase allows (a burst
        # of 4 let a subscribe followed by symbol changes reach 10 in a second, and be disconnected)
        self._buckets[conn.id] = TokenBucket(self.messages_per_s, burst=max(1, min(4, int(8 - self.messages_per_s))))

    async def subscribe(self, conn: Conn, shard: Shard) -> None:
        await self._send_subscribes(conn, shard, self.channels)

    def subscription_keys(self) -> list[str]:
        return list(self.config.symbols)

    async def send_changes(self, conn: Conn, shard: Shard, added: tuple[str, ...], removed: tuple[str, ...]) -> None:
        for kind, products in (("unsubscribe", removed), ("subscribe", added)):
            if products:
                await self._send(conn, kind, products, tuple(c for c in self.channels if c != "heartbeats"))

    async def _send_subscribes(self, conn: Conn, shard: Shard, channels: tuple[str, ...]) -> None:
        if not shard.subscriptions:  # no products (all removed): only heartbeats, which need none
            channels = tuple(c for c in channels if c == "heartbeats")
        await self._send(conn, "subscribe", shard.subscriptions, channels)

    async def _send(self, conn: Conn, kind: str, products: tuple[str, ...], channels: tuple[str, ...]) -> None:
        bucket = self._buckets[conn.id]
        for channel in channels:
            await bucket.acquire()
            msg = {"type": kind, "product_ids": list(products), "channel": channel}
            await conn.ws.send(msgspec.json.encode(msg).decode())

    def inspect(self, conn: Conn, shard: Shard, frame: bytes) -> None:
        try:
            seq = _SEQ.decode(frame).sequence_num
        except msgspec.DecodeError:
            return  # kept in the raw stream as received; the processor dead-letters it
        if seq < 0:
            return  # error frames and the like carry no sequence number
        expected = self.expected_seq.get(conn.id, 0)
        if seq > expected:
            self.emit(ev.Gap, conn.id, kind="sequence", expected=expected, got=seq)
            self._resubscribe(conn, shard)
        if seq >= expected:
            self.expected_seq[conn.id] = seq + 1

    def _resubscribe(self, conn: Conn, shard: Shard) -> None:
        if conn.id in self._resubscribing:
            return
        self._resubscribing.add(conn.id)

        async def resubscribe() -> None:
            try:
                await self._send_subscribes(conn, shard, RESUBSCRIBE_ON_GAP)
            except websockets.WebSocketException:
                pass  # the connection is going away; a reconnect subscribes everything anyway
            finally:
                self._resubscribing.discard(conn.id)

        task = asyncio.create_task(resubscribe())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
