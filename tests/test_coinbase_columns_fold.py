"""The Coinbase fold of columns (``MemoryCandles.fold_frames``) against the fold of entries (``fold``).

A replay hands a Coinbase partition's batches over as :class:`~streams.archive_columns.Frames` carrying
trade columns (:mod:`streams.trade_columns`); whatever ``fold_frames`` does with them (fold runs of
``market_trades`` frames from the int64 columns, or decode every entry), it must leave exactly what
``fold`` leaves for the same batches: every candle (its strings), every close and correction event in
order, every dead letter in order, every trade bucket (``Decimal`` digits and exponents, id ranges, and
the Python types), the open set, the watermark, the position and the frame count.

The stream is :func:`tests.coinbase_tangle.coinbase_tangle` (seeded), folded under the default settings,
with 5m trade candles too, with a 3-bucket state window (late trades become dead letters) and a 1 s grace,
in batches of 1 or 2, 7, 100 and all at once, and in batches that start before the last one ended (a
redelivery: the prefix is skipped). Each batch is one to three pieces (an empty one now and then): slices
of one ``Frames`` of the stream (rows mapped through ``index``), ``Frames`` of their own entries, or slices
of archive blocks read back (format 4, with trade columns; format 3, without; a piece across two blocks
in two). Plain ``==`` and an exact form (every scalar's ``repr``) must agree; a failure names the first
difference. :func:`test_the_tangle_has_every_case` keeps the stream from going vacuous, and each fold
checks that most frames went through the trade-run path (``run_frames``). The trade columns themselves are
checked against :func:`projections.snapshots.trades_of` on every generated frame and on the recorded
Coinbase session, and the archive's columns against the computed ones.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import random
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from processors.candles import NATIVE_TIMEFRAMES, CandleProcessor, from_settings
from processors.memory_fold import MemoryCandles
from projections.snapshots import trades_of
from streams.archive_codec import decode_frames, encode_block, encode_block_v3
from streams.archive_columns import Frames
from streams.frames import decode_coinbase, parse_rfc3339_ns
from streams.log import Entry
from streams.symbols import SymbolMap, UnknownSymbol, bundled
from streams.trade_columns import TradeColumns, frame_trades, to_decimal
from tests.coinbase_tangle import SPELLINGS, coinbase_tangle
from tests.realdata import COINBASE_AT, require
from tickfold.errors import FrameDecodeError
from tickfold.settings import Settings

pytestmark = pytest.mark.unit

FRAMES = 1000
CONFIGS: dict[str, tuple[Settings, int]] = {
    "default": (Settings(), 60),
    "1m+5m": (Settings(trade_candles="coinbase:1m,coinbase:5m"), 60),
    "window3": (Settings(), 3),
    "1m+5m,window3,grace1s": (Settings(trade_candles="coinbase:1m,coinbase:5m", close_grace_ms=1000), 3),
}


@functools.cache
def tangle(seed: int) -> tuple[list[Entry], Frames]:
    entries = coinbase_tangle(seed, FRAMES)
    return entries, Frames.of_entries("coinbase", entries)


def processor(config: str) -> CandleProcessor:
    """The partition's processor as a replay builds it (``from_settings``), with the config's state window."""
    settings, window = CONFIGS[config]
    p = from_settings(settings, "coinbase", 0, bundled("coinbase"), history=settings.candle_history)
    assert p.rollups == settings.rollup_plan("coinbase", NATIVE_TIMEFRAMES["coinbase"])
    if window == p.state_window:
        return p
    return CandleProcessor(
        "coinbase", 0, p.symbols, history=p.history, trade_timeframes=p.trade_timeframes, rollups=p.rollups,
        close_grace_ms=p.close_grace_ms, state_window=window,
    )  # fmt: skip


Batch = list[tuple[int, int]]  # a batch's pieces, (start, stop) rows of the stream, consecutive


def batches(n: int, size: int, seed: int, *, overlap: int = 0) -> list[Batch]:
    """Batches of ``size`` rows (the last one shorter), each cut into one to three pieces (an empty one
    now and then); with ``overlap``, each batch starts up to that many rows before the last one ended."""
    rnd = random.Random(seed)
    out: list[Batch] = []
    at = 0
    while at < n:
        start = max(0, at - rnd.randint(0, overlap)) if overlap else at
        stop = min(n, at + size)
        cuts = sorted(rnd.randint(start, stop) for _ in range(rnd.choice((0, 1, 2))))
        bounds = [start, *cuts, stop]
        out.append(list(itertools.pairwise(bounds)))
        at = stop
    return out


def exact(value: Any) -> Any:
    """``value`` with every scalar as its ``repr`` (a ``Decimal``'s digits and exponent, an ``int`` that is
    not a numpy integer): ``Decimal("1.0") == Decimal("1.00")``, but the fold must keep which one it was."""
    if isinstance(value, dict):
        return {exact(k): exact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [exact(v) for v in value]
    if hasattr(value, "__struct_fields__"):
        return {"": type(value).__name__, **{f: exact(getattr(value, f)) for f in value.__struct_fields__}}
    return repr(value)


def outcome(m: MemoryCandles) -> dict[str, Any]:
    """Everything a fold leaves (the series and state dicts a batch only read are left out: empty)."""
    return {
        "series": {key: dict(series) for key, series in m.series.items() if series},
        "closes": list(m.closes),
        "dead": list(m.dead),
        "states": {key: dict(kept) for key, kept in m.states.items() if kept},
        "open": dict(m.open),
        "watermark": m.watermark,
        "position": m.position,
        "frames": m.frames,
    }


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where two :func:`exact` forms first differ, readably."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=repr):
            if k not in b:
                return f"{path}[{k}]: only in fold: {a[k]}"
            if k not in a:
                return f"{path}[{k}]: only in fold_frames: {b[k]}"
            if (d := first_difference(a[k], b[k], f"{path}[{k}]")) is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if (d := first_difference(x, y, f"{path}[{i}]")) is not None:
                return d
        if len(a) != len(b):
            more = a[len(b)] if len(a) > len(b) else b[len(a)]
            return f"{path}: {len(a)} items in fold, {len(b)} in fold_frames; the first extra: {more}"
        return None
    return None if a == b else f"{path}:\n  fold:        {a}\n  fold_frames: {b}"


STREAM = "frames:coinbase:p0"
BLOCK = 250  # entries per archive block


@functools.cache
def archived(seed: int, version: int) -> list[Frames]:
    """The stream as archive blocks of ``BLOCK`` entries, read back: format 4 carries the trade columns,
    format 3 none."""
    entries, _ = tangle(seed)
    encode = encode_block if version == 4 else encode_block_v3
    return [decode_frames(encode(entries[a : a + BLOCK], stream=STREAM), STREAM) for a in range(0, len(entries), BLOCK)]


def pieces(seed: int, batch: Batch, how: int) -> list[Frames]:
    """A batch's pieces: slices of the stream's ``Frames`` (rows mapped through ``index``), ``Frames`` of
    their own entries, or slices of archive blocks (format 4 or 3; a piece across two blocks in two)."""
    entries, whole = tangle(seed)
    if how in (0, 1):
        return [whole.take(slice(a, b)) for a, b in batch]
    if how == 2:
        return [Frames.of_entries("coinbase", entries[a:b]) for a, b in batch]
    blocks = archived(seed, 4 if how == 3 else 3)
    out = []
    for a, b in batch:
        while a < b:
            k = a // BLOCK
            stop = min(b, (k + 1) * BLOCK)
            out.append(blocks[k].take(slice(a - k * BLOCK, stop - k * BLOCK)))
            a = stop
        if a == b and not out:
            out.append(whole.take(slice(a, b)))  # (an empty piece)
    return out


@functools.cache
def folds(seed: int, config: str, size: int, overlap: int) -> tuple[MemoryCandles, MemoryCandles]:
    """The stream folded by ``fold`` (entries) and by ``fold_frames`` (columns), in the same batches."""
    entries, _ = tangle(seed)
    plan = batches(len(entries), size, seed * 1000 + size, overlap=overlap)
    slow, fast = MemoryCandles(processor(config)), MemoryCandles(processor(config))

    async def run() -> None:
        for n, batch in enumerate(plan):
            await slow.fold(entries[batch[0][0] : batch[-1][1]])
            await fast.fold_frames(pieces(seed, batch, n % 5))

    asyncio.run(run())
    return slow, fast


@functools.cache
def reference(seed: int, config: str, size: int) -> MemoryCandles:
    """The stream folded by ``fold`` alone, in batches of ``size``."""
    entries, _ = tangle(seed)
    m = MemoryCandles(processor(config))

    async def run() -> None:
        for a in range(0, len(entries), size):
            await m.fold(entries[a : a + size])

    asyncio.run(run())
    return m


SMALL = {"default": 1, "1m+5m": 2, "window3": 2, "1m+5m,window3,grace1s": 1}  # (batches of 1 and 2 cost the most)
CASES = [
    ((n + n // 5) % 5 + 1, config, size, overlap)
    for n, (config, size, overlap) in enumerate(
        (c, size, overlap) for c in CONFIGS for size, overlap in ((SMALL[c], 0), (7, 0), (100, 0), (FRAMES, 0), (7, 9))
    )
]


@pytest.mark.parametrize(("seed", "config", "size", "overlap"), CASES)
def test_the_columns_fold_as_the_entries(seed: int, config: str, size: int, overlap: int) -> None:
    slow, fast = folds(seed, config, size, overlap)
    want, got = outcome(slow), outcome(fast)
    # plain == (but a trade bucket's Decimals: 1.0 == 1.00, and NaN != NaN), then exactly (exponents, types)
    same = {k: v for k, v in want.items() if k != "states"} == {k: v for k, v in got.items() if k != "states"}
    diff = first_difference(exact(want), exact(got))
    assert diff is None and same, f"seed {seed}, {config}, batches of {size} (overlap {overlap}): {diff}"
    assert slow.frames == FRAMES and len(slow.closes) > 300
    assert fast.run_frames >= FRAMES // 2  # most frames took the trade-run path


# ------------------------------------------------------------------------------------------ coverage


def market_trades(raw: bytes) -> dict[str, Any] | None:
    try:
        msg = json.loads(raw)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) and msg.get("channel") == "market_trades" else None


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_the_tangle_has_every_case(seed: int) -> None:
    """What the stream must hold for the comparison to mean something, read from the stream and from the
    entries fold."""
    entries, whole = tangle(seed)
    cols = whole.trades
    assert cols is not None
    raws = [fields.get(b"frame") for _, fields in entries]
    trade_frames = [n for n, raw in enumerate(raws) if raw is not None and market_trades(raw) is not None]
    assert int(cols.has.sum()) >= 600  # frames the columns hold
    assert len(trade_frames) - int(cols.has[trade_frames].sum()) >= 30  # market_trades frames they don't
    # the trades of the frames with columns: repeats, ids in two buckets, both spellings, several products
    # and buckets per frame, big coefficients
    seen: Counter[tuple[str, int, int]] = Counter()
    buckets: dict[tuple[str, int], set[int]] = {}
    spellings: dict[tuple[str, int], set[str]] = {}
    multi_bucket = multi_product = overflow = 0
    sizes: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for r in range(cols.rows()):
        row = cols.row(r)
        if row is None:
            continue
        canon = {t.product: SPELLINGS.get(t.product) for t in row.trades}
        good = [t for t in row.trades if canon[t.product] is not None]
        multi_bucket += len({(canon[t.product], t.time_ms // 60_000) for t in good}) > 1
        multi_product += len({canon[t.product] for t in good}) > 1
        for t in good:
            name = canon[t.product]
            assert name is not None
            seen[(name, t.trade_id, t.time_ms // 60_000)] += 1
            buckets.setdefault((name, t.trade_id), set()).add(t.time_ms // 60_000)
            spellings.setdefault((name, t.trade_id), set()).add(t.product)
            overflow += t.price * t.size >= 2**63
            sizes.setdefault((name, t.time_ms // 60_000), []).append((t.size, t.size_exp))
    assert sum(n > 1 for n in seen.values()) >= 100  # repeats in a bucket
    assert sum(len(b) > 1 for b in buckets.values()) >= 10  # one id in two buckets
    assert sum(len(s) > 1 for s in spellings.values()) >= 5  # BTC-USD and btc-usd, one trade
    assert multi_bucket >= 100 and multi_product >= 100 and overflow >= 10
    lowest = {key: min(e for _, e in terms) for key, terms in sizes.items()}
    volumes = [sum(c * 10 ** (e - lowest[key]) for c, e in terms) for key, terms in sizes.items()]
    assert sum(v >= 2**63 for v in volumes) >= 5  # a bucket's volume coefficient beyond int64
    assert any(e == 0 for e in cols.price_exp) and any(e <= -3 for e in cols.price_exp)
    # the fold: corrections, every kind of dead letter, Decimal rounding (more than 28 digits)
    slow = reference(seed, "window3", 7)
    reasons = [d.reason for d in slow.dead]
    assert sum(c.correction for c in slow.closes) >= 50
    for kind in (
        "older than the last",
        "entry has no 'frame' field",
        "coinbase: not an Advanced Trade frame",
        "market_trades: bad trade",
        "coinbase market_trades:",
        "is not BASE-QUOTE",
    ):
        assert sum(kind in r for r in reasons) >= 1, kind
    assert any(d.unknown_symbol for d in slow.dead)
    trade_candles = [c for s in slow.series.values() for c in s.values() if c.source == "trades"]
    assert any(len(Decimal(c.quote_volume or "0").as_tuple().digits) == 28 for c in trade_candles)  # rounded
    nan = [
        e for e in reference(seed, "default", FRAMES).closes if e.candle.source == "trades" and e.candle.volume == "NaN"
    ]
    assert nan  # a NaN size: a trade candle's volume


# -------------------------------------------------------------------------------------- trade columns


def _plain(text: str) -> bool:
    """A number the columns must hold (independent of streams/trade_columns.py): ASCII digits, one optional
    point with digits on both sides, 18 digits at most."""
    whole, dot, fraction = text.partition(".")
    digits = whole + fraction
    return digits.isascii() and digits.isdigit() and bool(whole) and (not dot or bool(fraction)) and len(digits) <= 18


def _simple(msg: dict[str, Any] | None) -> bool:
    """Whether every trade of a ``market_trades`` message has the plain form (ids of 1 to 18 ASCII digits)."""
    try:
        sent = [t for e in msg["events"] for t in e["trades"]] if msg is not None else []
        return all(
            t["trade_id"].isascii() and t["trade_id"].isdigit() and len(t["trade_id"]) <= 18 for t in sent
        ) and all(_plain(t["price"]) and _plain(t["size"]) for t in sent)
    except (KeyError, TypeError, AttributeError):
        return False


def check_frame(raw: bytes, symbols: SymbolMap) -> str:
    """``frame_trades(raw)`` against what the fold decodes from ``raw``; returns which case it was."""
    got = frame_trades(raw)
    msg = market_trades(raw)
    try:
        frame = decode_coinbase(raw)
        trades = trades_of("coinbase", frame, symbols)
    except UnknownSymbol:
        assert (got is not None) == _simple(msg)  # (the product is mapped by the fold, not by the columns)
        return "unknown product"
    except FrameDecodeError:
        assert got is None
        return "dead letter"
    if msg is None or not trades:
        if got is not None:  # a market_trades frame without trades
            assert got.trades == [] and msg is not None and got.event_ns == parse_rfc3339_ns(msg["timestamp"])
            return "no trades"
        return "other"
    sent = [t for e in msg["events"] for t in e["trades"]]
    simple = _simple(msg)
    if got is None:
        assert not simple, f"a plain frame without columns: {raw!r}"
        return "decimal only"
    assert simple
    assert got.event_ns == parse_rfc3339_ns(msg["timestamp"])
    assert len(got.trades) == len(trades) == len(sent)
    for row, t in zip(got.trades, trades, strict=True):
        price, qty = to_decimal(row.price, row.price_exp), to_decimal(row.size, row.size_exp)
        assert (price, str(price), qty, str(qty)) == (t.price, str(t.price), t.qty, str(t.qty))
        assert price.as_tuple() == t.price.as_tuple() and qty.as_tuple() == t.qty.as_tuple()
        assert symbols.canonical(row.product) == t.symbol
        assert (row.trade_id, row.time_ms, row.taker_buy) == (t.trade_id, t.time_ms, t.taker_buy)
        assert type(row.trade_id) is int and type(row.price) is int and type(row.size) is int
    return "columns"


def test_the_trade_columns_read_what_the_fold_decodes() -> None:
    symbols = bundled("coinbase")
    cases: Counter[str] = Counter()
    for seed in (1, 2, 3):
        entries, whole = tangle(seed)
        raws = [fields.get(b"frame") for _, fields in entries]
        for raw in raws:
            if raw is not None:
                cases[check_frame(raw, symbols)] += 1
        # the columns of the stream and of any slice give each row's frame_trades
        cols = whole.trades
        assert cols is not None
        assert [cols.row(r) for r in range(cols.rows())] == [None if r is None else frame_trades(r) for r in raws]
        part = whole.take(slice(101, 333))
        assert part.trades is not None
        assert [part.trades.row(int(i)) for i in part.index] == [cols.row(r) for r in range(101, 333)]
        assert TradeColumns.of_frames(raws[101:333]).row(5) == cols.row(106)
        stored = [b.trades.row(r) for b in archived(seed, 4) if b.trades is not None for r in range(len(b))]
        assert stored == [cols.row(r) for r in range(cols.rows())]  # the archive's columns, as computed
    assert cases["columns"] >= 1500 and cases["decimal only"] >= 60 and cases["unknown product"] >= 10
    assert cases["dead letter"] >= 40 and cases["other"] >= 300


def test_the_trade_columns_of_the_recorded_session() -> None:
    # ../shared/realdata/coinbase/advanced_trade_ws_2026-08-09.frames.jsonl: github bmoscon/cryptofeed, branch v3,
    # commit 57d5f18d6098f7aa294a3947796cc27d94c3a99c, sample_data/COINBASE.jsonl.zst (BTC-USD, ETH-USD,
    # 2026-08-09 21:05:48-21:06:12 UTC; see SOURCES.md)
    lines = require(COINBASE_AT).read_bytes().splitlines()
    symbols = bundled("coinbase")
    cases = Counter(check_frame(raw, symbols) for raw in lines)
    assert cases == {"columns": 59, "other": 196}  # every market_trades frame: 2 snapshots, 57 updates


def fold_both(entries: list[Entry], size: int) -> tuple[MemoryCandles, MemoryCandles]:
    """The entries folded in batches of `size` twice: entry by entry (`fold`) and from the columns of their
    frames (`fold_frames`)."""
    whole = Frames.of_entries("coinbase", entries)
    slow, fast = MemoryCandles(processor("default")), MemoryCandles(processor("default"))

    async def run() -> None:
        for a in range(0, len(entries), size):
            await slow.fold(entries[a : a + size])
            await fast.fold_frames([whole.take(slice(a, a + size))])

    asyncio.run(run())
    return slow, fast


@pytest.mark.parametrize("size", [31, 1000])
def test_the_recorded_session_folds_as_the_entries(size: int) -> None:
    entries: list[Entry] = [
        (f"{1_786_280_000_000 + n}-0".encode(), {b"frame": raw, b"recv_ns": b"0"})
        for n, raw in enumerate(require(COINBASE_AT).read_bytes().splitlines())
    ]
    slow, fast = fold_both(entries, size)
    assert first_difference(exact(outcome(slow)), exact(outcome(fast))) is None
    assert len(slow.series) > 4 and slow.states


def test_a_sparse_feed_folds_around_its_blocked_frames() -> None:
    """A product trading every 20 s, whose repeated snapshots (the previous frame's trades again, as after a
    resubscribe) now and then fall into the previous minute's bucket, closed by then: such a frame can't join
    a run (its trades are a correction), and is folded from its raw bytes in its place. Every other frame
    of the batch still folds in runs, however many such frames a batch holds (a run is split at all of them
    at once), and the result is the entry-by-entry fold's."""
    from tests.synthetic import synthetic_day

    raws = synthetic_day(seed=3, every_ms=20_000)[: 12 * 3 * 60 * 4]  # the first 4 hours of 12 products
    entries: list[Entry] = [
        (f"{1_786_233_600_000 + n}-0".encode(), {b"frame": raw, b"recv_ns": b"0"}) for n, raw in enumerate(raws)
    ]
    slow, fast = fold_both(entries, 5_000)
    assert first_difference(exact(outcome(slow)), exact(outcome(fast))) is None
    raw = fast.processor.raw_run_frames
    repeats = sum(1 for r in raws if r.count(b'"type":"update"') > 1)
    # frames folded from raw bytes: some (the case occurred, more than a batch once allowed before falling
    # back to every later frame), and no more than the frames with repeated trades
    assert 8 < raw <= repeats < len(raws) // 10
    assert fast.run_frames == len(raws) and len(slow.closes) > 12 * 60 * 4
