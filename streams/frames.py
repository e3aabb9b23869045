"""msgspec wire types for the exchange frames tickfold folds, and their decoders (built once).

Binance Spot, combined stream (``/stream?streams=...``)::

    {"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1617566591776,"s":"BTCUSDT","k":{"t":1617566580000,
     "T":1617566639999,"s":"BTCUSDT","i":"1m","f":1,"L":2,"o":"1","c":"1","h":"1","l":"1","v":"1","n":71,
     "x":false,"q":"1","V":"1","Q":"1","B":"0"}}}
    {"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1617566591315,"s":"BTCUSDT","a":665076760,
     "p":"58001.03","q":"0.086","f":745522877,"l":745522877,"T":1617566591314,"m":true,"M":true}}

Coinbase Advanced Trade::

    {"channel":"candles","timestamp":"2026-08-09T21:05:51.491081826Z","sequence_num":138,
     "events":[{"type":"update","candles":[{"start":"1786309500","high":"1919.6","low":"1919.27",
     "open":"1919.58","close":"1919.41","volume":"36.36","product_id":"ETH-USD"}]}]}

tickfold's own frames (any exchange's raw stream) carry what tickfold fetched itself, so that a
rebuild or replay from the raw streams contains it too (DESIGN invariant 1). A REST backfill
(:mod:`processors.backfill`) appends one ``rest_candles`` frame per series and fetch to the partition
of the symbol (exchange-native name)::

    {"tickfold":"rest_candles","exchange":"binance","symbol":"BTCUSDT","timeframe":"1m",
     "fetched_ns":1617566700123456789,"source":"/api/v3/klines",
     "candles":[{"start":1617566580000,"open":"1","high":"1","low":"1","close":"1","volume":"1",
                 "quote_volume":"1","trades":71,"taker_buy_volume":"1"}]}

Every candle in it is closed (REST said so, or it is a confirmed empty bucket). The exchange decoders
try this form only where an exchange frame has already failed to match (Binance: no stream, event or
reply id; Coinbase: no Advanced Trade envelope), so the hot path does not pay for it.

Numbers that arrive as strings stay strings (exact decimals); times become integer epoch
milliseconds or nanoseconds. :func:`decode_frame` returns a typed frame, :data:`IGNORED` for frames
that are valid but carry nothing to fold (subscription acks, channels we don't use), or raises
:class:`FrameDecodeError` with the reason.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Final

import msgspec

from tickfold.errors import FrameDecodeError, UnknownExchange

# --------------------------------------------------------------------------------------------- Binance


class BinanceKline(msgspec.Struct, frozen=True):
    open_time: int = msgspec.field(name="t")
    close_time: int = msgspec.field(name="T")
    symbol: str = msgspec.field(name="s")
    interval: str = msgspec.field(name="i")
    first_trade_id: int = msgspec.field(name="f")
    last_trade_id: int = msgspec.field(name="L")
    open: str = msgspec.field(name="o")
    close: str = msgspec.field(name="c")
    high: str = msgspec.field(name="h")
    low: str = msgspec.field(name="l")
    volume: str = msgspec.field(name="v")
    trades: int = msgspec.field(name="n")
    closed: bool = msgspec.field(name="x")
    quote_volume: str = msgspec.field(name="q")
    taker_buy_volume: str = msgspec.field(name="V")
    taker_buy_quote_volume: str = msgspec.field(name="Q")


class BinanceKlineEvent(msgspec.Struct, frozen=True, tag="kline", tag_field="e"):
    event_time: int = msgspec.field(name="E")
    symbol: str = msgspec.field(name="s")
    kline: BinanceKline = msgspec.field(name="k")


class BinanceAggTrade(msgspec.Struct, frozen=True, tag="aggTrade", tag_field="e"):
    event_time: int = msgspec.field(name="E")
    symbol: str = msgspec.field(name="s")
    agg_id: int = msgspec.field(name="a")
    price: str = msgspec.field(name="p")
    qty: str = msgspec.field(name="q")
    first_trade_id: int = msgspec.field(name="f")
    last_trade_id: int = msgspec.field(name="l")
    trade_time: int = msgspec.field(name="T")
    buyer_is_maker: bool = msgspec.field(name="m")


class BinanceTrade(msgspec.Struct, frozen=True, tag="trade", tag_field="e"):
    event_time: int = msgspec.field(name="E")
    symbol: str = msgspec.field(name="s")
    trade_id: int = msgspec.field(name="t")
    price: str = msgspec.field(name="p")
    qty: str = msgspec.field(name="q")
    trade_time: int = msgspec.field(name="T")
    buyer_is_maker: bool = msgspec.field(name="m")


BinanceEvent = BinanceKlineEvent | BinanceAggTrade | BinanceTrade


class _BinanceEnvelope(msgspec.Struct, frozen=True):
    stream: str | None = None
    data: msgspec.Raw = msgspec.Raw()  # empty when absent
    e: str | None = None  # present when a raw /ws/<stream> connection delivers the bare event
    id: int | str | None = None  # replies to SUBSCRIBE & co. carry an id and no stream


class _BinanceCombined(msgspec.Struct, frozen=True):
    """A combined-stream frame of a folded event, decoded in one pass (:func:`decode_binance`'s fast path:
    the envelope's fields as :class:`_BinanceEnvelope` types them, the event as the event decoder does)."""

    stream: str
    data: BinanceEvent
    e: str | None = None
    id: int | str | None = None


class _EventTime(msgspec.Struct, frozen=True):
    event_time: int = msgspec.field(name="E")


class _BinanceTimedTrade(msgspec.Struct, frozen=True):
    """A combined-stream trade frame read for its event time only (every other field skipped)."""

    stream: str
    data: _EventTime


# -------------------------------------------------------------------------------------------- Coinbase


class CoinbaseCandle(msgspec.Struct, frozen=True):
    start: str
    open: str
    high: str
    low: str
    close: str
    volume: str
    product_id: str


class CoinbaseCandlesEvent(msgspec.Struct, frozen=True):
    type: str
    candles: list[CoinbaseCandle]


class CoinbaseTrade(msgspec.Struct, frozen=True):
    product_id: str
    trade_id: str
    price: str
    size: str
    time: str
    side: str  # the MAKER side; the taker side is the opposite


class CoinbaseTradesEvent(msgspec.Struct, frozen=True):
    type: str
    trades: list[CoinbaseTrade]


class CoinbaseTicker(msgspec.Struct, frozen=True):
    product_id: str
    price: str
    volume_24_h: str | None = None
    best_bid: str | None = None
    best_ask: str | None = None


class CoinbaseTickerEvent(msgspec.Struct, frozen=True):
    type: str
    tickers: list[CoinbaseTicker]


class CoinbaseHeartbeatEvent(msgspec.Struct, frozen=True):
    # current_time is Go time.String() output: never parsed. The counter is a string in the
    # docs and an integer on the wire: accept both.
    heartbeat_counter: int | str
    current_time: str = ""


class CoinbaseSubscriptionsEvent(msgspec.Struct, frozen=True):
    subscriptions: dict[str, list[str]]


class _CoinbaseEnvelope(msgspec.Struct, frozen=True):
    channel: str
    timestamp: str
    sequence_num: int
    events: msgspec.Raw
    client_id: str = ""


class _CoinbaseTradesFrame(msgspec.Struct, frozen=True):
    """A ``market_trades`` frame decoded in one pass (:func:`decode_coinbase`'s fast path): the envelope's
    fields as :class:`_CoinbaseEnvelope` types them, the events as the ``market_trades`` decoder does."""

    channel: str
    timestamp: str
    sequence_num: int
    events: list[CoinbaseTradesEvent]
    client_id: str = ""


class CoinbaseFrame(msgspec.Struct, frozen=True):
    """A decoded Advanced Trade frame: the envelope plus its typed events."""

    channel: str
    timestamp_ns: int
    sequence_num: int
    events: (
        list[CoinbaseCandlesEvent]
        | list[CoinbaseTradesEvent]
        | list[CoinbaseTickerEvent]
        | list[CoinbaseHeartbeatEvent]
        | list[CoinbaseSubscriptionsEvent]
    )


# -------------------------------------------------------------------------------------- tickfold's own


class RestCandle(msgspec.Struct, frozen=True, kw_only=True):
    """One closed candle as a REST API answered it (Binance kline row, Coinbase candle), exact strings."""

    start: int  # bucket open time, epoch ms UTC
    open: str
    high: str
    low: str
    close: str
    volume: str
    quote_volume: str | None = None
    trades: int | None = None
    taker_buy_volume: str | None = None


class RestCandlesFrame(msgspec.Struct, frozen=True, kw_only=True, tag="rest_candles", tag_field="tickfold"):
    """Closed candles of one series fetched from the exchange's REST API (see the module docstring).

    ``symbol`` is the exchange's own name (``BTCUSDT``, ``BTC-USD``), as in its WebSocket frames.
    ``fetched_ns`` (wall clock of the fetch) and ``source`` (the endpoint) are provenance only: the
    fold takes each candle's event time from its bucket (``projections.gaps.rest_event_ns``).
    New fields get defaults (STYLE habit 4).
    """

    exchange: str
    symbol: str
    timeframe: str
    fetched_ns: int
    source: str
    candles: list[RestCandle]


TickfoldFrame = RestCandlesFrame  # tagged by "tickfold": a union as more kinds appear

_TICKFOLD_ENCODER = msgspec.json.Encoder()


def encode_tickfold(frame: TickfoldFrame) -> bytes:
    """The raw bytes of a tickfold frame, as appended to a raw stream (``"tickfold"`` comes first)."""
    return _TICKFOLD_ENCODER.encode(frame)


class Ignored(msgspec.Struct, frozen=True):
    """A well-formed frame with nothing to fold (subscription replies, channels we don't use)."""

    what: str


IGNORED_SUBSCRIBE_REPLY: Final = Ignored("subscribe reply")

Frame = BinanceEvent | CoinbaseFrame | TickfoldFrame | Ignored

# ------------------------------------------------------------------------------------------- decoders

_BINANCE_ENVELOPE = msgspec.json.Decoder(_BinanceEnvelope)
_BINANCE_EVENT = msgspec.json.Decoder(BinanceEvent)
_BINANCE_TIMED_TRADE = msgspec.json.Decoder(_BinanceTimedTrade)
_BINANCE_COMBINED = msgspec.json.Decoder(_BinanceCombined)
_COMBINED_HEAD = b'{"stream":"'
_COINBASE_ENVELOPE = msgspec.json.Decoder(_CoinbaseEnvelope)
_COINBASE_TRADES = msgspec.json.Decoder(_CoinbaseTradesFrame)
_TRADES_HEAD = b'{"channel":"market_trades",'
_COINBASE_EVENTS: Final[dict[str, msgspec.json.Decoder[list[msgspec.Struct]]]] = {
    "candles": msgspec.json.Decoder(list[CoinbaseCandlesEvent]),
    "market_trades": msgspec.json.Decoder(list[CoinbaseTradesEvent]),
    "ticker": msgspec.json.Decoder(list[CoinbaseTickerEvent]),
    "heartbeats": msgspec.json.Decoder(list[CoinbaseHeartbeatEvent]),
    "subscriptions": msgspec.json.Decoder(list[CoinbaseSubscriptionsEvent]),
}
_BINANCE_FOLDED = ("kline", "aggTrade", "trade")
_TICKFOLD = msgspec.json.Decoder(TickfoldFrame)
TICKFOLD_KEY: Final = b'"tickfold":'


def _tickfold(exchange_id: str, raw: bytes | str) -> TickfoldFrame | None:
    """A tickfold frame of ``exchange_id``, None if ``raw`` is not one; FrameDecodeError if it is a bad one.

    Called only once the exchange's own forms did not match."""
    if (TICKFOLD_KEY not in raw) if isinstance(raw, bytes) else (TICKFOLD_KEY.decode() not in raw):
        return None
    try:
        frame = _TICKFOLD.decode(raw)
    except msgspec.DecodeError as exc:
        raise FrameDecodeError(f"{exchange_id}: bad tickfold frame: {exc}") from None
    if frame.exchange != exchange_id:
        raise FrameDecodeError(f"{exchange_id}: a tickfold frame of exchange {frame.exchange!r}")
    return frame


def decode_binance(raw: bytes | str) -> BinanceEvent | TickfoldFrame | Ignored:
    if isinstance(raw, bytes) and raw.startswith(_COMBINED_HEAD):
        # One pass for a combined-stream event (what the feed sends): when it decodes and its stream is one
        # we fold, the envelope and then its data would decode to the same event. Anything else (a stream
        # we don't fold, a broken frame) takes the path below, which says what it is.
        try:
            frame = _BINANCE_COMBINED.decode(raw)
        except msgspec.DecodeError:
            pass
        else:
            kind = frame.stream.split("@", 1)[1] if "@" in frame.stream else ""
            if kind.startswith("kline_") or kind in ("aggTrade", "trade"):
                return frame.data
    try:
        env = _BINANCE_ENVELOPE.decode(raw)
    except msgspec.DecodeError as exc:
        raise FrameDecodeError(f"binance: not a frame: {exc}") from None
    if env.data:
        body: bytes | str | msgspec.Raw = env.data
        name = env.stream or ""
        kind = name.split("@", 1)[1] if "@" in name else ""
        if not (kind.startswith("kline_") or kind in ("aggTrade", "trade")):
            return Ignored(f"stream {name or '?'}")
    elif env.e is not None:
        if env.e not in _BINANCE_FOLDED:
            return Ignored(f"event {env.e}")
        body = raw
    elif env.id is not None:
        return IGNORED_SUBSCRIBE_REPLY
    elif (own := _tickfold("binance", raw)) is not None:
        return own
    else:
        raise FrameDecodeError("binance: neither a combined-stream frame, an event nor a reply")
    try:
        event: BinanceEvent = _BINANCE_EVENT.decode(body)
        return event
    except msgspec.DecodeError as exc:
        raise FrameDecodeError(f"binance {env.stream or env.e}: {exc}") from None


def binance_trade_event_time(raw: bytes) -> int | None:
    """The event time (ms) of a combined-stream ``aggTrade`` / ``trade`` frame, decoding nothing else:
    for a fold that needs no trades from it. None when the frame is not one, or is not well-formed
    enough to say (then :func:`decode_binance` decides, and reports what is wrong)."""
    head = raw[:64]
    if b'rade"' not in head or (b'@aggTrade"' not in head and b'@trade"' not in head):
        return None  # (one search tells most other frames: both names end in 'rade"')
    try:
        return _BINANCE_TIMED_TRADE.decode(raw).data.event_time
    except msgspec.DecodeError:
        return None


def event_ms(exchange_id: str, raw: bytes) -> int:
    """A raw frame's exchange event time in ms, as ``event_ns(decode_frame(...)) // 1e6`` gives it (0: none,
    or not decodable), without decoding what the time does not need: a Binance trade's other fields, a
    Coinbase frame's events (a frame whose envelope is sound but whose events are not gets its envelope's
    time here; the fold dead-letters it either way)."""
    try:
        if exchange_id == "binance":
            if (ms := binance_trade_event_time(raw)) is not None:
                return ms
        elif exchange_id == "coinbase":
            try:
                env = _COINBASE_ENVELOPE.decode(raw)
            except msgspec.DecodeError:
                return 0  # a tickfold frame (no event time) or not a frame
            if env.channel not in _COINBASE_EVENTS:
                return 0
            return parse_rfc3339_ns(env.timestamp) // 1_000_000
        frame = decode_frame(exchange_id, raw)
    except (FrameDecodeError, ValueError):
        return 0
    if isinstance(frame, BinanceKlineEvent | BinanceAggTrade | BinanceTrade):
        return frame.event_time
    if isinstance(frame, CoinbaseFrame):
        return frame.timestamp_ns // 1_000_000
    return 0


def decode_coinbase(raw: bytes | str) -> CoinbaseFrame | TickfoldFrame | Ignored:
    if isinstance(raw, bytes) and raw.startswith(_TRADES_HEAD):
        # One pass for a market_trades frame (what the feed sends most): when it decodes, the envelope and
        # then its events would decode to the same values. A frame that does not takes the path below,
        # which says what is wrong with it.
        try:
            trades = _COINBASE_TRADES.decode(raw)
        except msgspec.DecodeError:
            pass
        else:
            if trades.channel == "market_trades":
                try:
                    ts = parse_rfc3339_ns(trades.timestamp)
                except ValueError as exc:
                    raise FrameDecodeError(f"coinbase market_trades: {exc}") from None
                return CoinbaseFrame(trades.channel, ts, trades.sequence_num, trades.events)
    try:
        env = _COINBASE_ENVELOPE.decode(raw)
    except msgspec.DecodeError as exc:
        if (own := _tickfold("coinbase", raw)) is not None:
            return own
        raise FrameDecodeError(f"coinbase: not an Advanced Trade frame: {exc}") from None
    decoder = _COINBASE_EVENTS.get(env.channel)
    if decoder is None:
        return Ignored(f"channel {env.channel}")
    try:
        events = decoder.decode(env.events)
        ts = parse_rfc3339_ns(env.timestamp)
    except (msgspec.DecodeError, ValueError) as exc:
        raise FrameDecodeError(f"coinbase {env.channel}: {exc}") from None
    return CoinbaseFrame(env.channel, ts, env.sequence_num, events)  # type: ignore[arg-type]


DECODERS = {"binance": decode_binance, "coinbase": decode_coinbase}
EXCHANGES: Final = tuple(sorted(DECODERS))  # the exchanges tickfold can decode


def check_exchange(exchange_id: str) -> str:
    """``exchange_id`` if tickfold can decode its frames, else UnknownExchange naming the known ones."""
    if exchange_id not in DECODERS:
        raise UnknownExchange(f"unknown exchange {exchange_id!r}; known exchanges: {', '.join(EXCHANGES)}")
    return exchange_id


def decode_frame(exchange_id: str, raw: bytes | str) -> Frame:
    """Decode one raw frame of ``exchange_id``; raises FrameDecodeError with the reason."""
    try:
        decode = DECODERS[exchange_id]
    except KeyError:
        raise FrameDecodeError(f"no decoder for exchange {exchange_id!r}") from None
    return decode(raw)


@functools.lru_cache(maxsize=8192)
def _utc_second_ns(second: str) -> int:
    """Epoch ns of ``YYYY-MM-DDTHH:MM:SS`` in UTC (a frame's trades and its timestamp share one: cached)."""
    return int(datetime.fromisoformat(second + "+00:00").timestamp()) * 1_000_000_000


_MINUTE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}")
_MINUTES: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM" -> epoch ns, as _utc_second_ns gives it for ":00"
_SECONDS: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" -> epoch ns, as _utc_second_ns gives it
_CACHED: Final = 4096  # entries kept per cache (cleared when full: the times of a stream move forward)


def _second_ns(second: str) -> int:
    """:func:`_utc_second_ns` of a 19-character ``second``, the same value or the same error: the standard
    form (ASCII digits, seconds below 60) is its minute's time plus the seconds, the minute's time
    computed once; any other text goes to :func:`_utc_second_ns` itself."""
    minute = second[:16]
    base = _MINUTES.get(minute)
    if base is None and _MINUTE.fullmatch(minute):
        try:
            base = _utc_second_ns(minute + ":00")
        except (ValueError, OverflowError):
            base = None
        else:
            if len(_MINUTES) >= _CACHED:
                _MINUTES.clear()
            _MINUTES[minute] = base
    ss = second[17:]
    if base is None or second[16] != ":" or not (ss.isascii() and ss.isdigit()) or ss >= "60":
        value = _utc_second_ns(second)
    else:
        value = base + int(ss) * 1_000_000_000
    if len(_SECONDS) >= _CACHED:
        _SECONDS.clear()
    _SECONDS[second] = value
    return value


def parse_rfc3339_ns(text: str) -> int:
    """``2026-08-09T21:05:48.228568804Z`` -> epoch nanoseconds, keeping every fraction digit.

    Python's ``fromisoformat`` keeps only microseconds; exchange timestamps carry nanoseconds and a
    variable number of fraction digits. The exchanges' form (``Z``, 1 to 9 fraction digits) is read
    with each second's time cached (a frame's trades and its timestamp share one); every other text
    takes the general path below, with its own results and errors.
    """
    if len(text) > 21 and text[19] == "." and text[-1] == "Z":  # the exchanges' form: fast, cached per second
        digits = text[20:-1]
        if len(digits) <= 9 and digits.isdigit():
            second = text[:19]
            base = _SECONDS.get(second)
            if base is None:
                base = _second_ns(second)
            return base + int(digits.ljust(9, "0"))
    head, dot, rest = text.partition(".")
    if not dot:
        return int(datetime.fromisoformat(text).timestamp()) * 1_000_000_000
    digits = rest
    tz = ""
    for i, ch in enumerate(rest):
        if not ch.isdigit():
            digits, tz = rest[:i], rest[i:]
            break
    if not digits or len(digits) > 9:
        raise ValueError(f"bad fraction in timestamp {text!r}")
    seconds = datetime.fromisoformat(head + (tz or "Z"))
    if seconds.tzinfo is None:
        raise ValueError(f"timestamp without zone {text!r}")
    return int(seconds.timestamp()) * 1_000_000_000 + int(digits.ljust(9, "0"))
