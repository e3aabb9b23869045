"""What a decoded raw frame carries for the candle fold: candle snapshots, trades, its event time. Pure.

Native candle frames (Binance klines, Coinbase ``candles``) become snapshots of one bucket each;
backfill ``rest_candles`` frames become closed snapshots stamped just before the bucket end
(:func:`projections.gaps.rest_event_ns`); trade frames become :class:`~projections.trades.Trade` s for
the trade candles. Used by the live candle processor and by replays alike.
"""

from __future__ import annotations

from decimal import Decimal

from projections.candles import BY_EXCHANGE, BY_REST, Candle
from projections.gaps import REST_SOURCE, rest_event_ns
from projections.trades import Trade
from streams.frames import (
    BinanceAggTrade,
    BinanceKlineEvent,
    BinanceTrade,
    CoinbaseCandlesEvent,
    CoinbaseFrame,
    CoinbaseTradesEvent,
    Frame,
    RestCandlesFrame,
    parse_rfc3339_ns,
)
from streams.symbols import SymbolMap
from tickfold.errors import FrameDecodeError

COINBASE_CANDLE_TIMEFRAME = "5m"  # the Advanced Trade candles channel only carries 5-minute buckets


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
            closed_by=BY_EXCHANGE if k.closed else None,
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
    if isinstance(frame, RestCandlesFrame):
        return rest_snapshots(exchange_id, frame, symbols)
    return []


def rest_snapshots(exchange_id: str, frame: RestCandlesFrame, symbols: SymbolMap) -> list[tuple[Candle, bool]]:
    """The closed candles of a backfill's ``rest_candles`` frame, by start (module docstring). Pure."""
    symbol = symbols.canonical(frame.symbol)
    try:
        stamped = [(c, rest_event_ns(frame.timeframe, c.start)) for c in sorted(frame.candles, key=lambda c: c.start)]
    except ValueError as exc:  # an unknown timeframe, a start that is not a bucket start
        raise FrameDecodeError(f"rest_candles {frame.symbol} {frame.timeframe}: {exc}") from None
    return [
        (
            Candle(
                exchange=exchange_id, symbol=symbol, timeframe=frame.timeframe, start=c.start, open=c.open,
                high=c.high, low=c.low, close=c.close, volume=c.volume, quote_volume=c.quote_volume,
                trades=c.trades, taker_buy_volume=c.taker_buy_volume, closed=True, event_ns=event,
                source=REST_SOURCE, closed_by=BY_REST,
            ),
            False,
        )
        for c, event in stamped
    ]  # fmt: skip


_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _fits(*values: int) -> bool:
    return all(_I64_MIN <= v <= _I64_MAX for v in values)


def trades_of(exchange_id: str, frame: Frame, symbols: SymbolMap) -> list[Trade]:
    """The trades a decoded frame carries (Binance aggTrade / trade, Coinbase market_trades). Pure. A trade
    whose id, time or trade count does not fit int64 raises FrameDecodeError (its bucket's state is stored as
    msgpack, which can't hold it: a dead letter, not a batch that can never commit)."""
    if isinstance(frame, BinanceAggTrade):
        count = frame.last_trade_id - frame.first_trade_id + 1
        if not _fits(frame.agg_id, frame.trade_time, count):
            raise FrameDecodeError(f"aggTrade {frame.agg_id}: id, time or trade count out of range")
        return [
            Trade(
                exchange=exchange_id, symbol=symbols.canonical(frame.symbol), trade_id=frame.agg_id,
                price=Decimal(frame.price), qty=Decimal(frame.qty), time_ms=frame.trade_time,
                taker_buy=not frame.buyer_is_maker, trades=count,
            )
        ]  # fmt: skip
    if isinstance(frame, BinanceTrade):
        if not _fits(frame.trade_id, frame.trade_time):
            raise FrameDecodeError(f"trade {frame.trade_id}: id or time out of range")
        return [
            Trade(
                exchange=exchange_id, symbol=symbols.canonical(frame.symbol), trade_id=frame.trade_id,
                price=Decimal(frame.price), qty=Decimal(frame.qty), time_ms=frame.trade_time,
                taker_buy=not frame.buyer_is_maker,
            )
        ]  # fmt: skip
    if isinstance(frame, CoinbaseFrame) and frame.channel == "market_trades":
        out: list[Trade] = []
        names: dict[str, str] = {}  # product_id -> canonical name, asked once per frame (in the same place)
        for event in frame.events:
            assert isinstance(event, CoinbaseTradesEvent)
            for t in event.trades:
                try:
                    trade_id, price, qty = int(t.trade_id), Decimal(t.price), Decimal(t.size)
                    if not _I64_MIN <= trade_id <= _I64_MAX:  # (a trade state is msgpack: int64 at most)
                        raise ValueError("trade id out of range")
                    time_ms = parse_rfc3339_ns(t.time) // 1_000_000  # (years 1-9999: within int64)
                except (ValueError, ArithmeticError) as exc:
                    raise FrameDecodeError(f"market_trades: bad trade {t.trade_id!r}: {exc}") from None
                symbol = names.get(t.product_id)
                if symbol is None:
                    symbol = names[t.product_id] = symbols.canonical(t.product_id)
                out.append(
                    Trade(
                        exchange=exchange_id, symbol=symbol, trade_id=trade_id, price=price, qty=qty,
                        time_ms=time_ms, taker_buy=t.side == "SELL",
                    )
                )  # fmt: skip
        return out
    return []


def event_ns(frame: Frame) -> int:
    """The exchange event time of a frame (ns), 0 when it has none (a REST frame: it reports the past).
    Moves the partition's watermark."""
    if isinstance(frame, (BinanceKlineEvent, BinanceAggTrade, BinanceTrade)):  # (a tuple: faster than a union)
        return frame.event_time * 1_000_000
    if isinstance(frame, CoinbaseFrame):
        return frame.timestamp_ns
    return 0
