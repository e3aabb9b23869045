"""Coinbase ``market_trades`` frames as trade columns: what the trade fold reads, with no JSON and no ``Decimal``.

A replay folds most Coinbase frames for their trades alone. :func:`frame_trades` reads one frame the way the
candle processor does (:func:`streams.frames.decode_coinbase`, then what
:func:`projections.snapshots.trades_of` takes from each trade), and keeps it only when every value has a plain
form the columns hold exactly:

* ``trade_id``: 1 to 18 ASCII digits (``int`` of it fits int64);
* ``price`` / ``size``: ASCII digits with an optional fraction, 18 digits at most: ``Decimal(text)`` is then
  ``coefficient * 10**exponent`` with the coefficient an int64 and the exponent ``-len(fraction)``, and
  :func:`to_decimal` of the two gives it back, digits and exponent alike (``"7.50"`` stays ``7.50``);
* ``time``: what :func:`~streams.frames.parse_rfc3339_ns` reads, within int64 milliseconds;
* the frame's ``timestamp`` likewise (its event time, ns).

Any other frame (other channels, a frame that does not decode, an exponent, a sign, a 19th digit, a
``"1_000"`` that ``Decimal`` and ``int`` accept) has no trade columns: it is folded from its raw bytes, as
live. The product is kept as the exchange sent it; the replay maps it to its canonical name.

:class:`TradeColumns` holds the trades of a block or chunk of entries by *row* (an entry's position in
it): row ``r``'s trades are ``offsets[r]:offsets[r + 1]``, in the frame's order (events, then trades).
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from decimal import Decimal
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from streams.frames import CoinbaseFrame, CoinbaseTradesEvent, decode_coinbase, parse_rfc3339_ns
from tickfold.errors import FrameDecodeError

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]
B = npt.NDArray[np.bool_]

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class TradeRow(NamedTuple):
    product: str
    trade_id: int
    price: int  # coefficient
    price_exp: int  # <= 0
    size: int
    size_exp: int
    time_ms: int
    taker_buy: bool


class FrameTrades(NamedTuple):
    event_ns: int  # the frame's timestamp
    trades: list[TradeRow]


def _number(text: str) -> tuple[int, int] | None:
    """(coefficient, exponent) of ``Decimal(text)`` for a plain ``text`` (module docstring), else None."""
    whole, dot, fraction = text.partition(".")
    digits = whole + fraction
    if not whole or (dot and not fraction) or len(digits) > 18 or not (digits.isascii() and digits.isdigit()):
        return None  # (ASCII and isdigit: 0-9 only; an empty string is not isdigit)
    return int(digits), -len(fraction)


def frame_trades(raw: bytes) -> FrameTrades | None:
    """The trades of a Coinbase ``market_trades`` frame in the plain form (module docstring), else None."""
    try:
        frame = decode_coinbase(raw)
    except (FrameDecodeError, ValueError):
        return None
    if not isinstance(frame, CoinbaseFrame) or frame.channel != "market_trades":
        return None
    if not _I64_MIN <= frame.timestamp_ns <= _I64_MAX:
        return None
    rows: list[TradeRow] = []
    for event in frame.events:
        if not isinstance(event, CoinbaseTradesEvent):
            return None
        for t in event.trades:
            price, size = _number(t.price), _number(t.size)
            trade_id = t.trade_id
            if price is None or size is None or len(trade_id) > 18 or not (trade_id.isascii() and trade_id.isdigit()):
                return None
            try:
                time_ms = parse_rfc3339_ns(t.time) // 1_000_000
            except (ValueError, OverflowError):
                return None
            if not _I64_MIN <= time_ms <= _I64_MAX:
                return None
            rows.append(
                TradeRow(t.product_id, int(trade_id), price[0], price[1], size[0], size[1], time_ms, t.side == "SELL")
            )
    return FrameTrades(frame.timestamp_ns, rows)


_SCALE = decimal.Context(prec=40, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[decimal.Inexact])


def to_decimal(coefficient: int, exponent: int) -> Decimal:
    """The ``Decimal`` of a plain number's columns: equal to ``Decimal(text)`` in value, digits and exponent
    (``scaleb`` in a context of more digits than an int64 has only moves the exponent; ~30 % less than
    parsing ``f"{coefficient}E{exponent}"``)."""
    return Decimal(coefficient).scaleb(exponent, _SCALE)


class TradeColumns:
    """The trades of consecutive rows (module docstring); a row without trade columns has none
    (``has[r]`` False)."""

    __slots__ = (
        "event_ns",
        "has",
        "offsets",
        "price",
        "price_exp",
        "product",
        "products",
        "size",
        "size_exp",
        "taker_buy",
        "time_ms",
        "trade_id",
    )

    def __init__(
        self,
        products: list[str],
        has: B,
        event_ns: I64,
        offsets: I64,
        product: I32,
        trade_id: I64,
        price: I64,
        price_exp: I8,
        size: I64,
        size_exp: I8,
        time_ms: I64,
        taker_buy: B,
    ) -> None:
        self.products = products
        self.has = has
        self.event_ns = event_ns
        self.offsets = offsets
        self.product = product
        self.trade_id = trade_id
        self.price = price
        self.price_exp = price_exp
        self.size = size
        self.size_exp = size_exp
        self.time_ms = time_ms
        self.taker_buy = taker_buy

    @classmethod
    def of_rows(cls, rows: Sequence[FrameTrades | None]) -> TradeColumns:
        products: dict[str, int] = {}
        flat = [t for r in rows if r is not None for t in r.trades]
        counts = np.fromiter((0 if r is None else len(r.trades) for r in rows), np.int64, len(rows))
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        n = len(flat)
        for t in flat:
            products.setdefault(t.product, len(products))
        return cls(
            products=list(products),
            has=np.fromiter((r is not None for r in rows), np.bool_, len(rows)),
            event_ns=np.fromiter((0 if r is None else r.event_ns for r in rows), np.int64, len(rows)),
            offsets=offsets,
            product=np.fromiter((products[t.product] for t in flat), np.int32, n),
            trade_id=np.fromiter((t.trade_id for t in flat), np.int64, n),
            price=np.fromiter((t.price for t in flat), np.int64, n),
            price_exp=np.fromiter((t.price_exp for t in flat), np.int8, n),
            size=np.fromiter((t.size for t in flat), np.int64, n),
            size_exp=np.fromiter((t.size_exp for t in flat), np.int8, n),
            time_ms=np.fromiter((t.time_ms for t in flat), np.int64, n),
            taker_buy=np.fromiter((t.taker_buy for t in flat), np.bool_, n),
        )

    @classmethod
    def of_frames(cls, raws: Sequence[bytes | None]) -> TradeColumns:
        """The columns of raw frames (None: an entry without a ``frame`` field)."""
        return cls.of_rows([None if raw is None else frame_trades(raw) for raw in raws])

    def rows(self) -> int:
        return len(self.has)

    def row(self, r: int) -> FrameTrades | None:
        """Row ``r`` as :func:`frame_trades` gave it."""
        if not self.has[r]:
            return None
        a, b = int(self.offsets[r]), int(self.offsets[r + 1])
        names = self.products
        return FrameTrades(
            int(self.event_ns[r]),
            [
                TradeRow(names[p], i, pc, pe, sc, se, ms, tb)
                for p, i, pc, pe, sc, se, ms, tb in zip(
                    self.product[a:b].tolist(),
                    self.trade_id[a:b].tolist(),
                    self.price[a:b].tolist(),
                    self.price_exp[a:b].tolist(),
                    self.size[a:b].tolist(),
                    self.size_exp[a:b].tolist(),
                    self.time_ms[a:b].tolist(),
                    self.taker_buy[a:b].tolist(),
                    strict=True,
                )
            ],
        )
