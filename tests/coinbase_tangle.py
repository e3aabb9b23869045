"""A seeded tangle of Coinbase raw frames: everything the trade fold of a ``market_trades`` stream must get right.

:func:`coinbase_tangle` makes one partition's entries: ``market_trades`` frames with several products
(``btc-usd`` is a second spelling of ``BTC-USD``), events and 1m buckets per frame, trades newest first,
ids with gaps and out of order, repeats (in the frame, the next frame, a resubscribe snapshot, much later;
some with other values, some in another bucket), equal prices written with different exponents, sizes
from ``0`` to 18-digit coefficients whose products and sums need more than int64 and more than 28 digits,
values only the ``Decimal`` fold reads (``1e3``, ``+5``, ``1_000``, `` 5``, 19 digits, ``NaN``, Arabic-Indic
digits), broken trades, frames and entries (dead letters), unknown products, frame times with jitter,
steps back, a quiet gap and a jump ahead, trade times late by minutes or hours or far in the future, and
between them heartbeats, ``candles``, ``ticker``, ``subscriptions``, unknown channels and tickfold
``rest_candles`` frames (1m, 5m, 15m). Used by tests/test_coinbase_columns_fold.py.

Calm stretches alternate with the chaos: plain ``market_trades`` frames one after the other (long runs for
a columnar fold), dense buckets (bursts of 30 trades), sizes as Coinbase sends them (8 places) whose sums
stay in int64, few late trades and big numbers. Both kinds have frame times at a bucket's end + grace to
the millisecond (followed by a trade in the bucket's last millisecond), and steps back, some to just before
the deadline of the bucket that just closed (followed now and then by a REST frame, whose event then comes
before or after that close).
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

from streams.frames import RestCandle, RestCandlesFrame, encode_tickfold, parse_rfc3339_ns
from streams.log import Entry

T0 = 1_786_233_600_000  # 2026-08-09 00:00 UTC
SPELLINGS = {"BTC-USD": "BTC-USD", "btc-usd": "BTC-USD", "ETH-USD": "ETH-USD", "SOL-USDC": "SOL-USDC",
             "Doge-Eur": "DOGE-EUR"}  # fmt: skip
PRODUCTS = tuple(SPELLINGS)
UNKNOWN_PRODUCTS = ("BTCUSD", "A-B-C", "-USD")  # not BASE-QUOTE: UnknownSymbol
SCALE = {"BTC-USD": 0, "ETH-USD": 2, "SOL-USDC": 3, "DOGE-EUR": 5}  # fraction digits of each market's price steps
BIG_PRICES = ("999999999.999999999", "123456789012345678", "99999999999999999.9")
BIG_SIZES = ("99999999.9999999999", "999999999999999999", "0.00000000000000001", "98765432109876543.2")
SLOW_PRICES = ("1e3", "1E+2", "+5", "1_000", " 5", "5 ", "\u0661\u0660\u0660", "100.", ".5", "-5",
               "1234567890123456789", "0.0000000000000000001", "0100000000000000000.5")  # fmt: skip
SLOW_SIZES = (
    "NaN",
    "NaN",
    "NaN",
    "-5",
    "+0.5",
    "1E-3",
    "2e2",
    "1_0",
    " 1",
    "12345678901234567890",
    "\u0661",
    "0.0000000000000000001",
)
BAD = {  # a trade field that makes its frame a dead letter
    "time": ("yesterday", "2026-08-09T21:05:61.5Z", "2026-08-09T21:05:48.1234567890Z", ""),
    "trade_id": ("abc", "1_", "", "1.5"),
    "price": ("1.2.3", "", "one"),
    "size": ("--1", "0x10"),
}


def iso(ns: int, zone: str = "Z", digits: int = 0) -> str:
    """RFC 3339 with a fraction of ``digits`` (0: as short as the value allows, 1 to 9 digits)."""
    second, fraction = divmod(ns, 1_000_000_000)
    text = f"{fraction:09d}"
    text = text[:digits] if digits else (text.rstrip("0") or "0")
    stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{text}{zone}"


def plain(coefficient: int, places: int) -> str:
    """``coefficient * 10**-places`` as plain text (``"0.050"`` for 50, 3)."""
    if places == 0:
        return str(coefficient)
    digits = str(coefficient).rjust(places + 1, "0")
    return f"{digits[:-places]}.{digits[-places:]}"


def _compact(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()


class _Tangle:
    def __init__(self, seed: int, frames: int) -> None:
        self.rnd = random.Random(seed)
        self.total = frames
        self.now = T0 + 9 * 3_600_000 + self.rnd.randrange(60_000)  # ms; the feed's clock
        self.seq = 0
        self.ids = {c: 1_000_000 * (n + 1) for n, c in enumerate(SCALE)}
        self.levels = {c: self.rnd.randint(9_000, 11_000) for c in SCALE}  # price in units of 10**-SCALE
        self.history: list[dict[str, str]] = []
        self.previous: list[dict[str, str]] = []
        self.snapshot_next = False
        self.calm = False  # a calm stretch: plain trade frames one after the other (long runs), dense buckets
        self.edge_next = False  # the last frame's time was a bucket's end + grace, to the millisecond
        self.stepped = False  # the last frame's time was behind the feed's clock

    # ------------------------------------------------------------------------------------------ values

    def price(self, canonical: str) -> str:
        rnd = self.rnd
        if rnd.random() < (0.001 if self.calm else 0.02):
            return rnd.choice(BIG_PRICES)
        level = self.levels[canonical] = max(1, self.levels[canonical] + rnd.choice((-2, -1, 0, 0, 0, 1, 2)))
        text = plain(level, SCALE[canonical])
        if "." in text and rnd.random() < 0.5:
            text = text.rstrip("0").rstrip(".")  # the shortest form of the value
        if rnd.random() < 0.4:  # the same value with another exponent ("100", "100.0", "100.00")
            text += ("" if "." in text else ".") + "0" * rnd.randint(1, 3)
        if rnd.random() < 0.03:
            text = "0" + text  # a leading zero: plain, the same Decimal
        return text

    def size(self) -> str:
        rnd = self.rnd
        roll = rnd.random()
        if roll < (0.002 if self.calm else 0.04):
            return rnd.choice(BIG_SIZES)
        if roll < 0.08:
            return rnd.choice(("0", "0.000", "0.00000001", "1", "1.0", "10"))
        if self.calm:  # as Coinbase sends them: up to 8 places, trailing zeros cut now and then
            text = plain(rnd.randint(1, 10 ** rnd.randint(2, 10)), 8)
            return text.rstrip("0").rstrip(".") if rnd.random() < 0.5 else text
        places = rnd.randint(0, 10)
        return plain(rnd.randint(1, 10 ** rnd.randint(1, 9)), places)

    def trade_time(self, ts: int) -> int:
        """A trade's time (ns) for a frame stamped ``ts`` (ms)."""
        rnd = self.rnd
        roll = rnd.random()
        if self.calm:  # mostly recent; late by seconds or at a bucket's edge now and then
            roll = 0.89 + 6 * roll if roll < 0.01 else 0.0
        if roll < 0.80:
            ms = ts - rnd.randint(0, 3_000)
        elif roll < 0.89:
            ms = ts - rnd.randint(20_000, 240_000)  # late: its bucket closed by the watermark already
        elif roll < 0.92:
            ms = ts - rnd.randint(10 * 60_000, 150 * 60_000)  # far older than a small state window
        elif roll < 0.925:
            ms = ts + rnd.randint(60_000, 900_000)  # ahead of the feed
        elif roll < 0.927:
            ms = ts + rnd.randint(3_600_000, 3 * 86_400_000)  # far in the future
        else:
            ms = ts - ts % 60_000 - rnd.choice((0, 1, 60_000, 60_001))  # a bucket's edges
        return ms * 1_000_000 + rnd.randrange(1_000_000)

    def time_text(self, ns: int) -> str:
        rnd = self.rnd
        if rnd.random() < 0.03:  # other forms parse_rfc3339_ns reads (the general path)
            return rnd.choice((iso(ns, "+00:00", 6), iso(ns + 7_200 * 10**9, "+02:00", 3)))
        return iso(ns, "Z", rnd.choice((0, 0, 6, 9)))

    def new_trade(self, ts: int) -> dict[str, str]:
        rnd = self.rnd
        product = rnd.choice(("BTC-USD", "BTC-USD", "btc-usd", "ETH-USD") if self.calm else PRODUCTS)
        canonical = SPELLINGS[product]
        roll = rnd.random()
        if roll < 0.06:
            trade_id = self.ids[canonical] - rnd.randint(1, 40)  # out of order (maybe taken already)
        else:
            self.ids[canonical] += rnd.randint(2, 9) if roll < 0.14 else 1  # a gap now and then
            trade_id = self.ids[canonical]
        return {
            "product_id": product, "trade_id": str(trade_id), "price": self.price(canonical), "size": self.size(),
            "time": self.time_text(self.trade_time(ts)), "side": rnd.choice(("BUY", "SELL", "SELL", "sell")),
        }  # fmt: skip

    def repeat(self, fresh: list[dict[str, str]]) -> dict[str, str]:
        """A trade sent before: in this frame, the last one, or long ago; as it was, or changed."""
        rnd = self.rnd
        pools = (fresh, self.previous) if self.calm else (fresh, self.previous, self.history)
        pool = rnd.choice([p for p in pools if p] or [fresh])
        t = dict(rnd.choice(pool))
        roll = rnd.random()
        canonical = SPELLINGS[t["product_id"]]
        if roll < 0.3:  # the same id at other values (a repeat: it changes nothing)
            t["price"], t["size"] = self.price(canonical), self.size()
        elif roll < 0.4 and not self.calm:  # the same id in another bucket (not a repeat there)
            t["time"] = iso(parse_rfc3339_ns(t["time"]) + rnd.choice((-1, 1, 2)) * 60_000_000_000)
        elif roll < 0.5 and canonical == "BTC-USD":  # the other spelling of the market
            t["product_id"] = "btc-usd" if t["product_id"] == "BTC-USD" else "BTC-USD"
        return t

    # ------------------------------------------------------------------------------------------ frames

    def envelope(self, channel: str, ts: int, events: list[Any]) -> bytes:
        self.seq += 1
        stamp = iso(ts * 1_000_000 + self.rnd.randrange(1_000_000), "Z", self.rnd.choice((0, 9, 9)))
        return _compact({"channel": channel, "timestamp": stamp, "sequence_num": self.seq, "events": events})

    def market_trades(self, ts: int) -> bytes:
        rnd = self.rnd
        events: list[dict[str, Any]] = []
        fresh: list[dict[str, str]] = []
        if self.snapshot_next and self.history:  # after a (re)subscribe: the recent trades again
            self.snapshot_next = False
            recent = [dict(t) for t in self.history[-rnd.randint(5, 30) :]]
            events.append({"type": "snapshot", "trades": sorted(recent, key=_id_key, reverse=True)})
        for _ in range(rnd.choice((1, 1, 1, 2, 3))):
            many = rnd.choice((1, 1, 2, 3, 4, 6, 30) if self.calm else (1, 1, 2, 3, 4, 6))
            trades = [self.new_trade(ts) for _ in range(many)]
            if self.edge_next:  # the last millisecond of the bucket the last frame's time just closed
                self.edge_next = False
                edge = self.new_trade(ts)
                edge["time"] = iso((ts - ts % 60_000 - 1) * 1_000_000 + rnd.randrange(1_000_000))
                trades.append(edge)
            fresh.extend(trades)
            while rnd.random() < 0.18:
                trades.append(self.repeat(fresh))
            if rnd.random() < 0.85:
                trades.sort(key=_id_key, reverse=True)  # Coinbase lists newest first
            else:
                rnd.shuffle(trades)
            events.append({"type": "update", "trades": trades})
        self.history.extend(fresh)
        self.history = self.history[-400:]
        self.previous = fresh
        roll = rnd.random() * (4 if self.calm else 1)
        last = events[-1]["trades"]
        at = rnd.randrange(len(last))
        t = last[at] = dict(last[at])  # (a copy: the history keeps the trade as it was)
        if roll < 0.1:  # a value only the Decimal fold reads (the frame has no trade columns)
            field, values = rnd.choice((("price", SLOW_PRICES), ("size", SLOW_SIZES), ("trade_id", None)))
            if values is None:
                t["trade_id"] = rnd.choice(("+", " ", "0", "")) + t["trade_id"] + rnd.choice(("", " "))
                if rnd.random() < 0.3:
                    t["trade_id"] = t["trade_id"].strip().translate(_ARABIC)
                if rnd.random() < 0.1:
                    t["trade_id"] = "1234567890123456789"
            else:
                t[field] = rnd.choice(values)
        elif roll < 0.12:  # a broken trade: the frame is a dead letter
            field = rnd.choice(list(BAD))
            t[field] = rnd.choice(BAD[field])
        elif roll < 0.135:  # a product that is not BASE-QUOTE, after good trades: the frame is a dead letter
            t = self.new_trade(ts)
            t["product_id"] = rnd.choice(UNKNOWN_PRODUCTS)
            last.append(t)
        return self.envelope("market_trades", ts, events)

    def rest_candles(self, ts: int, one_minute: bool = False) -> bytes:
        rnd = self.rnd
        timeframes = (("1m", 60_000), ("1m", 60_000), ("1m", 60_000), ("5m", 300_000), ("15m", 900_000))
        timeframe, step = timeframes[0] if one_minute else rnd.choice(timeframes)
        product = rnd.choice(PRODUCTS)
        newest = ts - ts % step - rnd.choice((0, 0, 1, 2, 5)) * step
        candles = []
        for start in sorted({newest - rnd.randint(0, 3) * step for _ in range(rnd.randint(1, 3))}):
            level = plain(rnd.randint(9_000, 11_000), 2)
            candles.append(
                RestCandle(
                    start=start, open=level, high=level, low=level, close=level, volume=self.size(),
                    quote_volume=rnd.choice((None, "1.5")), trades=rnd.choice((None, 3)), taker_buy_volume=None,
                )
            )  # fmt: skip
        if rnd.random() < 0.05:  # not a bucket start: a dead letter
            candles.append(RestCandle(start=newest + 7, open="1", high="1", low="1", close="1", volume="1"))
        exchange = "binance" if rnd.random() < 0.03 else "coinbase"  # another exchange's frame: a dead letter
        frame = RestCandlesFrame(
            exchange=exchange, symbol=product, timeframe=timeframe, fetched_ns=ts * 1_000_000, source="/t",
            candles=candles,
        )  # fmt: skip
        return encode_tickfold(frame)

    def native_candles(self, ts: int) -> bytes:
        rnd = self.rnd
        start = (ts - ts % 300_000) // 1000 - rnd.choice((0, 0, 0, 300))
        level = plain(rnd.randint(9_000, 11_000), 2)
        candle = {"start": str(start), "high": level, "low": level, "open": level, "close": level,
                  "volume": self.size(), "product_id": rnd.choice(PRODUCTS)}  # fmt: skip
        return self.envelope("candles", ts, [{"type": rnd.choice(("snapshot", "update")), "candles": [candle]}])

    def other(self, ts: int) -> bytes:
        rnd = self.rnd
        roll = rnd.random()
        if roll < 0.35:
            counter = rnd.choice((self.seq, str(self.seq)))
            return self.envelope(
                "heartbeats", ts, [{"current_time": "2026-08-09 21:05:48 +0000 UTC", "heartbeat_counter": counter}]
            )
        if roll < 0.6:
            ticker = {"type": "ticker", "product_id": rnd.choice(PRODUCTS), "price": "1.5", "volume_24_h": "7"}
            return self.envelope("ticker", ts, [{"type": "update", "tickers": [ticker]}])
        if roll < 0.7:
            self.snapshot_next = True
            return self.envelope("subscriptions", ts, [{"subscriptions": {"market_trades": list(PRODUCTS)}}])
        if roll < 0.8:
            return self.envelope("status", ts, [{"type": "snapshot", "products": []}])  # ignored
        frame = self.market_trades(ts)
        choice = rnd.randrange(6)
        if choice == 0:
            return frame[: rnd.randrange(1, len(frame))]  # cut short
        if choice == 1:
            return b"not json"
        if choice == 2:  # a bad frame timestamp
            return frame.replace(b'"timestamp":"', b'"timestamp":"x', 1)
        if choice == 3:  # an event without trades
            return self.envelope("market_trades", ts, [{"type": "update"}])
        if choice == 4:  # the slow decode path: a space after the channel
            return frame.replace(b'"market_trades"', b'"market_trades" ', 1)
        return self.envelope("market_trades", ts, [])  # no events: a frame with no trades

    def frames(self) -> list[bytes | None]:
        rnd = self.rnd
        out: list[bytes | None] = []
        gap_at, jump_at = self.total // 2, self.total * 9 // 10
        left = 0
        for n in range(self.total):
            if left == 0:
                self.calm = not self.calm
                left = rnd.randint(60, 160) if self.calm else rnd.randint(40, 100)
            left -= 1
            self.now += rnd.choice((0, 100, 200, 500, 1_000) if self.calm else (0, 200, 500, 1_000, 2_000, 4_000))
            if n == gap_at:
                self.now += 3 * 3_600_000 + rnd.randrange(3_600_000)  # a long quiet gap
            ts = self.now
            roll = rnd.random()
            if n == jump_at:
                ts = self.now + 2 * 86_400_000  # one frame far ahead: everything closes; later trades are late
            elif roll < 0.04:  # a bucket's end + grace (5 s, or 1 s), to the millisecond: what closes it
                ts = self.now - self.now % 60_000 + rnd.choice((5_000, 5_000, 1_000))
                self.edge_next = True
            elif roll < 0.12:  # a step back (some to just before the deadline of the bucket that just closed)
                back = (
                    rnd.randint(1, 20_000),
                    rnd.randint(20_000, 90_000),
                    self.now % 60_000 - rnd.randint(3_500, 4_999),
                )
                ts = self.now - rnd.choice(back)
            roll = rnd.random()
            calm = self.calm
            if self.stepped and ts >= self.now and roll < 0.3:  # a close event right after a run that stepped back
                out.append(self.rest_candles(ts, one_minute=True))
            elif roll < (0.97 if calm else 0.6):
                out.append(self.market_trades(ts))
            elif roll < (0.985 if calm else 0.7):
                out.append(self.rest_candles(ts))
            elif roll < (0.99 if calm else 0.77):
                out.append(self.native_candles(ts))
            elif roll < (0.997 if calm else 0.985):
                out.append(self.other(ts))
            else:
                out.append(None)  # an entry without a frame field
            self.stepped = ts < self.now
        return out


_ARABIC = str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669")


def _id_key(t: dict[str, str]) -> int:
    try:
        return int(t["trade_id"])
    except ValueError:
        return 0


def coinbase_tangle(seed: int, frames: int = 1500) -> list[Entry]:
    """One partition's entries (ids rising, two per millisecond): see the module docstring."""
    out: list[Entry] = []
    for n, raw in enumerate(_Tangle(seed, frames).frames()):
        fields = {b"recv_ns": str(n).encode()}
        if raw is not None:
            fields = {b"frame": raw, **fields}
        out.append((f"{T0 + n // 2}-{n % 2}".encode(), fields))
    return out
