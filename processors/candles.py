"""The candle processor: raw frames of one exchange -> candle projections and candle-close events.

One processor folds one partition ``frames:{ex}:p{n}`` (every frame of a symbol is in the same
partition, and the partition has one owner: see processors/runner.py). One batch is one atomic step
(STYLE habit 2)::

    WATCH proj:candles:{ex}:p{n}:last_id lease:candles:{ex}:p{n}
    GET lease... == our token?               else LeaseLost: another instance owns the partition now
    decode -> fold (pure, event time)        entries with id <= last_id are redeliveries: skipped
    MULTI                                    (a change to a watched key makes EXEC fail: nothing written)
      ZREM/ZADD candles:{ex}:{symbol}:{tf}   the changed buckets
      XADD closes:{ex}                       candle-close (and correction) events
      XADD frames:{ex}:dead                  frames that could not be folded, with the reason
      SET proj:candles:{ex}:p{n}:last_id     the position the projection now reflects
      XACK frames:{ex}:p{n} candles <ids>    acknowledged only together with the above
    EXEC
    PUBLISH channel:exchange:{ex}:candle:close:{symbol}:{tf}   (pub/sub is at-most-once; closes:{ex} is durable)
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis

from processors.leases import Fence
from processors.runner import BatchResult
from projections import store
from projections.candles import Candle, CandleBook, CandleClosed
from streams import keys
from streams.frames import (
    BinanceKlineEvent,
    CoinbaseCandlesEvent,
    CoinbaseFrame,
    Frame,
    decode_frame,
)
from streams.log import Entry, WatchError, parse_id, translated
from streams.symbols import SymbolMap, UnknownSymbol
from tickfold.errors import FrameDecodeError, KeyFormatError, ProjectionConflict

log = logging.getLogger(__name__)

GROUP = "candles"
PROJECTION = "candles"
COINBASE_CANDLE_TIMEFRAME = "5m"  # the Advanced Trade candles channel only carries 5-minute buckets
_MAX_CONFLICT_RETRIES = 20


def snapshots(exchange_id: str, frame: Frame, symbols: SymbolMap) -> list[tuple[Candle, bool]]:
    """The candle snapshots a decoded frame carries, as (candle, close_older) in frame order. Pure."""
    if isinstance(frame, BinanceKlineEvent):
        k = frame.kline
        candle = Candle(
            exchange=exchange_id,
            symbol=symbols.canonical(k.symbol),
            timeframe=k.interval,
            start=k.open_time,
            open=k.open,
            high=k.high,
            low=k.low,
            close=k.close,
            volume=k.volume,
            quote_volume=k.quote_volume,
            trades=k.trades,
            taker_buy_volume=k.taker_buy_volume,
            closed=k.closed,
            event_ns=frame.event_time * 1_000_000,
        )
        return [(candle, False)]
    if isinstance(frame, CoinbaseFrame) and frame.channel == "candles":
        out: list[tuple[Candle, bool]] = []
        for event in frame.events:
            assert isinstance(event, CoinbaseCandlesEvent)
            for c in sorted(event.candles, key=lambda c: int(c.start)):
                out.append(
                    (
                        Candle(
                            exchange=exchange_id,
                            symbol=symbols.canonical(c.product_id),
                            timeframe=COINBASE_CANDLE_TIMEFRAME,
                            start=int(c.start) * 1000,
                            open=c.open,
                            high=c.high,
                            low=c.low,
                            close=c.close,
                            volume=c.volume,
                            event_ns=frame.timestamp_ns,
                        ),
                        True,
                    )
                )
        return out
    return []


class DeadLetter(msgspec.Struct, frozen=True):
    entry_id: bytes
    fields: dict[bytes, bytes]
    reason: str
    unknown_symbol: bool = False


class CandleProcessor:
    """Folds ``frames:{exchange_id}`` into candle projections; see the module docstring."""

    group = GROUP

    def __init__(
        self,
        exchange_id: str,
        partition: int,
        symbols: SymbolMap,
        *,
        history: int,
        refresh_symbols: Callable[[], Awaitable[SymbolMap]] | None = None,
        refresh_every_s: float = 30.0,
    ) -> None:
        self.exchange_id = exchange_id
        self.symbols = symbols
        self.refresh_symbols = refresh_symbols
        self.refresh_every_s = refresh_every_s
        self._refreshed = float("-inf")
        self.history = history
        self.partition = partition
        self.stream = keys.frames_stream(exchange_id, partition)
        self.position_key = keys.projection_position(PROJECTION, exchange_id, partition)

    def plan(
        self, entries: Sequence[Entry], last_id: tuple[int, int]
    ) -> tuple[list[tuple[Candle, bool]], list[DeadLetter], int]:
        """Decode a batch: (snapshots in stream order, dead letters, entries skipped as already folded)."""
        updates: list[tuple[Candle, bool]] = []
        dead: list[DeadLetter] = []
        skipped = 0
        for entry_id, fields in entries:
            if parse_id(entry_id) <= last_id:
                skipped += 1
                continue
            raw = fields.get(b"frame")
            try:
                if raw is None:
                    raise FrameDecodeError("entry has no 'frame' field")
                updates.extend(snapshots(self.exchange_id, decode_frame(self.exchange_id, raw), self.symbols))
            except (FrameDecodeError, KeyFormatError) as exc:
                dead.append(DeadLetter(entry_id, fields, str(exc), isinstance(exc, UnknownSymbol)))
        return updates, dead, skipped

    async def handle(self, client: aioredis.Redis, entries: Sequence[Entry], fence: Fence) -> BatchResult:
        for _ in range(_MAX_CONFLICT_RETRIES):
            try:
                return await self._commit(client, entries, fence)
            except WatchError:
                log.info("%s: position moved under us, re-folding the batch", self.position_key)
        raise ProjectionConflict(f"{self.position_key} kept changing during {_MAX_CONFLICT_RETRIES} attempts")

    async def _commit(self, client: aioredis.Redis, entries: Sequence[Entry], fence: Fence) -> BatchResult:
        closes: list[CandleClosed] = []
        with translated(f"committing candles of {self.stream}"):
            async with client.pipeline(transaction=True) as pipe:
                await pipe.watch(self.position_key, fence.key)
                await fence.check(pipe)
                raw_last: Any = await pipe.get(self.position_key)
                last_id = parse_id(raw_last) if raw_last else (0, 0)
                updates, dead, skipped = self.plan(entries, last_id)
                if any(d.unknown_symbol for d in dead) and await self._refresh():
                    updates, dead, skipped = self.plan(entries, last_id)  # a market listed since the last sync
                books = await self._books(client, updates)
                for candle, close_older in updates:
                    book = books[keys.candles(candle.exchange, candle.symbol, candle.timeframe)]
                    closes.extend(book.apply(candle, close_older=close_older))
                pipe.multi()  # type: ignore[no-untyped-call]
                self._queue(pipe, books, closes, dead, entries, raw_last)
                await pipe.execute()
            if closes:
                await self._publish(client, closes)
        return BatchResult(processed=len(entries) - skipped, skipped=skipped, dead=len(dead), events=len(closes))

    async def _refresh(self) -> bool:
        """Re-read the market list (at most every ``refresh_every_s``; monotonic clock, not event time)."""
        if self.refresh_symbols is None or time.monotonic() - self._refreshed < self.refresh_every_s:
            return False
        self._refreshed = time.monotonic()
        self.symbols = await self.refresh_symbols()
        return True

    async def _books(self, client: aioredis.Redis, updates: list[tuple[Candle, bool]]) -> dict[str, CandleBook]:
        wanted: dict[str, set[int]] = defaultdict(set)
        for candle, _ in updates:
            wanted[keys.candles(candle.exchange, candle.symbol, candle.timeframe)].add(candle.start)
        loaded = await store.load_series(client, wanted)
        return {key: CandleBook(candles) for key, candles in loaded.items()}

    def _queue(
        self,
        pipe: Any,
        books: dict[str, CandleBook],
        closes: list[CandleClosed],
        dead: list[DeadLetter],
        entries: Sequence[Entry],
        raw_last: bytes | None,
    ) -> None:
        for key, book in books.items():
            for start in sorted(book.dirty):
                store.queue_put(pipe, key, book.candles[start], history=self.history)
        closes_stream = keys.closes_stream(self.exchange_id)
        for event in closes:
            pipe.xadd(closes_stream, {"event": store.encode(event)})
        dead_stream = keys.dead_letter_stream(self.exchange_id)
        for d in dead:
            fields = {
                **d.fields,
                b"reason": d.reason.encode(),
                b"original_id": d.entry_id,
                b"stream": self.stream.encode(),
            }
            pipe.xadd(dead_stream, fields)
        newest = max((e[0] for e in entries), key=parse_id)
        if raw_last is None or parse_id(newest) > parse_id(raw_last):
            pipe.set(self.position_key, newest)
        pipe.xack(self.stream, self.group, *[e[0] for e in entries])

    async def _publish(self, client: aioredis.Redis, closes: list[CandleClosed]) -> None:
        pipe = client.pipeline(transaction=False)
        for event in closes:
            c = event.candle
            pipe.publish(keys.candle_close_channel(c.exchange, c.symbol, c.timeframe), store.encode(event))
        await pipe.execute()
