"""Higher timeframes folded from base candles: pure, exact, and a function of the *set* of base candles.

:func:`rollup` computes one roll-up bucket from the base candles that fall in it, in any order:

* ``open`` = open of the earliest base candle, ``close`` = close of the latest;
* ``high`` / ``low`` = the max / min by decimal value, rendered as that base candle's own string (equal
  values in different spellings: the earliest base candle's spelling wins);
* ``volume``, ``quote_volume``, ``taker_buy_volume`` = exact :class:`~decimal.Decimal` sums, rendered in
  plain notation with the *largest number of fractional digits among the inputs* (Binance's fixed 8
  places stay 8 places; a sum never needs more digits than its widest term, so nothing is rounded).
  ``quote_volume`` / ``taker_buy_volume`` / ``trades`` are None unless every base candle has them;
* ``event_ns`` = the largest base ``event_ns``; ``source = "rollup"``;
* ``closed`` once the base candle whose end is the roll-up's end is closed (so a bucket closes with its
  last base candle). A bucket with missing base candles is still computed and carries ``count <
  expected``: gaps stay visible, nothing is invented. If its last base candle never comes, the bucket
  closes by watermark (:func:`projections.watermark.close_due` works for any timeframe).

Counts are in *leaf* base candles (e.g. 1m), and a :class:`Rollup` can itself be a part, so a chain
``1m → 5m → 15m`` gives exactly the ``1m → 15m`` roll-up, counts included (see :func:`plan`).

:func:`apply_rollup` folds a recomputed bucket into the stored one: ``closed`` stays sticky (a
watermark close is not undone) and a change to a closed bucket is a correction event.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from decimal import Clamped, Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded, Subnormal, Underflow
from typing import cast

import msgspec

from projections.candles import Candle, CandleClosed
from projections.watermark import DAY_MS, TIMEFRAMES, bucket_end, bucket_start, fixed_duration_ms

SOURCE = "rollup"
# Exact arithmetic: any rounding would raise instead of silently changing a sum.
_EXACT = Context(prec=60, traps=[Inexact, InvalidOperation, Overflow])
_UNROUNDED = Context(prec=60, traps=[Clamped, Inexact, InvalidOperation, Overflow, Rounded, Subnormal, Underflow])
_ZERO = Decimal(0)


class Rollup(msgspec.Struct, frozen=True, kw_only=True):
    """One roll-up bucket and how many leaf base candles it holds."""

    candle: Candle
    base_timeframe: str  # the leaf timeframe the counts are in (e.g. "1m" for 1m → 5m → 15m)
    count: int  # leaf base candles folded in
    expected: int  # leaf base buckets the roll-up bucket spans

    @property
    def complete(self) -> bool:
        return self.count == self.expected


@functools.lru_cache(maxsize=256)
def nests(base: str, timeframe: str) -> bool:
    """Whether every ``base`` bucket lies inside one ``timeframe`` bucket (so ``timeframe`` can be rolled up)."""
    b, t = fixed_duration_ms(base), fixed_duration_ms(timeframe)
    if b is None:
        return t is None  # 1M from 1M only
    if t is None:
        return DAY_MS % b == 0  # months start at midnight
    if timeframe == "1w" and base != "1w":
        return DAY_MS % b == 0  # weeks start on Mondays, not on multiples of 3d
    return t % b == 0


def expected_count(base: str, timeframe: str, start: int) -> int:
    """How many ``base`` buckets the ``timeframe`` bucket opening at ``start`` spans."""
    if not nests(base, timeframe):
        raise ValueError(f"{base} buckets do not nest in {timeframe} buckets")
    b = fixed_duration_ms(base)
    if b is None:
        return 1
    return (bucket_end(timeframe, start) - start) // b


def base_starts(base: str, timeframe: str, start: int) -> list[int]:
    """The starts of the ``base`` buckets inside the ``timeframe`` bucket opening at ``start`` (to read them)."""
    if not nests(base, timeframe):
        raise ValueError(f"{base} buckets do not nest in {timeframe} buckets")
    end = bucket_end(timeframe, start)
    out: list[int] = []
    s = start
    while s < end:
        out.append(s)
        s = bucket_end(base, s)
    return out


def plan(base: str, targets: Iterable[str]) -> dict[str, str]:
    """For each target timeframe, the timeframe to fold it from: the largest of ``base`` and the
    other targets that is shorter and nests in it. E.g. ``plan("1m", ["5m", "15m", "1h", "4h", "1d",
    "1w", "1M"])`` chains 5m←1m, 15m←5m, 1h←15m, 4h←1h, 1d←4h, 1w←1d, 1M←1d."""
    order = {tf: i for i, tf in enumerate(TIMEFRAMES)}
    wanted = sorted(set(targets) - {base}, key=order.__getitem__)
    out: dict[str, str] = {}
    for t in wanted:
        sources = [s for s in [base, *wanted] if order[s] < order[t] and nests(s, t) and (s == base or s in out)]
        if not sources or order[base] > order[t]:
            raise ValueError(f"{t} cannot be rolled up from {base}")
        out[t] = max(sources, key=order.__getitem__)
    return out


def _places(s: str) -> int:
    """Digits after the point, as ``Decimal(s)``'s exponent says; read off the text unless it has one."""
    if "e" in s or "E" in s:
        exp = Decimal(s).as_tuple().exponent
        return -exp if isinstance(exp, int) and exp < 0 else 0
    s = s.strip()
    dot = s.find(".")
    return 0 if dot < 0 else len(s) - dot - 1


def _sum(values: list[str]) -> str:
    if values and "_" not in "".join(values):
        try:  # no rounding at all: each sum's exponent is its terms' smallest (and 0's), what _places reads
            total = functools.reduce(_UNROUNDED.add, map(Decimal, values), _ZERO)
            if total.is_finite():  # it has max(_places(v)) places already, as the quantize below gives it
                text = str(total)  # plain notation (f"{total:f}") unless it has an exponent
                return text if "E" not in text else f"{total:f}"
        except ArithmeticError:
            pass  # rounded (maybe exactly), or worse: the code below decides, as it always did
    total = Decimal(0)
    for v in values:
        total = _EXACT.add(total, Decimal(v))
    places = max(_places(v) for v in values)
    return f"{total.quantize(Decimal(1).scaleb(-places), context=_EXACT):f}"


def _sum_opt(values: list[str | None]) -> str | None:
    return None if None in values else _sum(cast(list[str], values))


def _part(p: Candle | Rollup) -> tuple[Candle, str, int]:
    if isinstance(p, Rollup):
        return p.candle, p.base_timeframe, p.count
    return p, p.timeframe, 1


def _distinct(parts: list[Candle | Rollup]) -> tuple[list[Candle], list[str], int]:
    """The parts' candles in start order (repeats of an identical part once), their leaf timeframes and
    how many leaf candles they hold. Plain candles (the common case) skip :func:`_part`'s tuples."""
    plain: dict[int, Candle] = {}
    for p in parts:
        if type(p) is not Candle:  # a lower roll-up among them: compare (candle, leaf, count), as below
            break
        seen = plain.setdefault(p.start, p)
        if seen is not p and seen != p:
            raise ValueError(f"two different {p.timeframe} candles for start {p.start}")
    else:
        candles = [plain[s] for s in sorted(plain)]
        return candles, [c.timeframe for c in candles], len(candles)
    by_start: dict[int, tuple[Candle, str, int]] = {}
    for p in parts:
        c, leaf, n = _part(p)
        seen_part = by_start.get(c.start)
        if seen_part is not None and seen_part != (c, leaf, n):
            raise ValueError(f"two different {c.timeframe} candles for start {c.start}")
        by_start[c.start] = (c, leaf, n)
    items = [by_start[s] for s in sorted(by_start)]
    return [c for c, _, _ in items], [lf for _, lf, _ in items], sum(n for _, _, n in items)


def _highest(candles: list[Candle]) -> str:
    """The largest ``high`` by value, as written; the earliest of equal values (``candles`` in start order)."""
    best = candles[0].high
    top = Decimal(best)
    for c in candles[1:]:
        value = Decimal(c.high)
        if value > top:
            best, top = c.high, value
    return best


def _lowest(candles: list[Candle]) -> str:
    """The smallest ``low`` by value, as written; the earliest of equal values (``candles`` in start order)."""
    best = candles[0].low
    bottom = Decimal(best)
    for c in candles[1:]:
        value = Decimal(c.low)
        if value < bottom:
            best, bottom = c.low, value
    return best


def rollup(parts: Iterable[Candle | Rollup], timeframe: str) -> Rollup:
    """The ``timeframe`` bucket computed from its base candles (or lower roll-ups), in any order.

    All parts must be of one exchange, symbol and timeframe (which nests in ``timeframe``) and fall in one
    ``timeframe`` bucket. Repeats of an identical part count once; two different parts for one bucket
    start raise ``ValueError`` (fold them with :func:`projections.candles.apply_snapshot` first).
    """
    candles, leaves, count = _distinct(list(parts))
    if not candles:
        raise ValueError("a roll-up needs at least one base candle")
    first, leaf = candles[0], leaves[0]
    exchange, symbol, base = first.exchange, first.symbol, first.timeframe
    start = bucket_start(timeframe, first.start)
    span = fixed_duration_ms(timeframe)  # in start order, a part outside the bucket starts at or after its end
    event_ns = first.event_ns
    for c, lf in zip(candles, leaves, strict=True):
        if c.exchange != exchange or c.symbol != symbol or c.timeframe != base or lf != leaf:
            key = (c.exchange, c.symbol, c.timeframe, lf)
            raise ValueError(f"mixed series in one roll-up: {key} vs {(exchange, symbol, base)}")
        if (c.start - start >= span) if span is not None else (bucket_start(timeframe, c.start) != start):
            raise ValueError(f"{c.timeframe} candle {c.start} is not in the {timeframe} bucket {start}")
        if c.event_ns > event_ns:
            event_ns = c.event_ns
    if not nests(base, timeframe) or not nests(leaf, timeframe):
        raise ValueError(f"{base} buckets do not nest in {timeframe} buckets")
    end = bucket_end(timeframe, start)
    last = candles[-1]
    high = _highest(candles)
    low = _lowest(candles)
    trades = [c.trades for c in candles]
    candle = Candle(
        exchange=exchange, symbol=symbol, timeframe=timeframe, start=start, open=first.open, high=high,
        low=low, close=last.close, volume=_sum([c.volume for c in candles]),
        quote_volume=_sum_opt([c.quote_volume for c in candles]),
        trades=None if None in trades else sum(cast(list[int], trades)),
        taker_buy_volume=_sum_opt([c.taker_buy_volume for c in candles]),
        closed=last.closed and bucket_end(last.timeframe, last.start) == end,
        event_ns=event_ns, source=SOURCE,
    )  # fmt: skip
    return Rollup(candle=candle, base_timeframe=leaf, count=count, expected=expected_count(leaf, timeframe, start))


def apply_rollup(
    current: Candle | None, parts: Iterable[Candle | Rollup], timeframe: str
) -> tuple[Rollup, CandleClosed | None]:
    """Recompute a roll-up bucket from *all* its stored base candles and fold it into the stored one.

    The recomputation is authoritative for the values (it is a function of the base set, so it is not
    subject to last-writer-wins); ``closed`` is sticky and ``event_ns`` never goes back. Emits a close
    event when the bucket becomes closed, a correction when a closed bucket's values change, else None.
    Idempotent: applying the same base set again returns the same candle and no event.
    """
    r = rollup(parts, timeframe)
    new = r.candle
    if current is not None:
        if (current.exchange, current.symbol, current.timeframe, current.start) != (
            new.exchange, new.symbol, new.timeframe, new.start
        ):  # fmt: skip
            raise ValueError("the stored roll-up is not the bucket being recomputed")
        new = msgspec.structs.replace(
            new, closed=new.closed or current.closed, event_ns=max(new.event_ns, current.event_ns)
        )
        r = msgspec.structs.replace(r, candle=new)
    if current is None:
        return r, (CandleClosed(candle=new) if new.closed else None)
    if new == current:
        return r, None
    if current.closed:
        return r, (None if new.same_values(current) else CandleClosed(candle=new, correction=True))
    return r, (CandleClosed(candle=new) if new.closed else None)
