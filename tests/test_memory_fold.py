"""The in-memory candle fold (processors/memory_fold.py) against the live candle processor on Redis.

The oracle is a live run: ``tickfold process``'s processors folding the same frames on a real Redis
(batches of 500 entries per partition); the memory fold gets other batch sizes. Every candle of every
series and every close event (per series, in order) must be the same, and so must the dead letters.
The columnar fast path (``fold_frames``: Binance trade runs folded as one watermark item read from the
event-time column) is checked the same way, with columns computed from stream entries, stored in archive
blocks, and absent (format 1 blocks: computed on read).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from processors.candles import DeadLetter, from_settings
from processors.memory_fold import MemoryCandles
from projections import store
from projections.candles import CandleClosed
from streams import keys, log, partitions
from streams.archive_codec import decode_frames, encode_block, encode_block_v1
from streams.archive_columns import TRADE, Frames
from streams.symbols import load_symbol_map
from tests.realdata import BINANCE_0404, BINANCE_0814, COINBASE_AT, require
from tests.support import all_candles, close_events, drain, ingest, raw_streams
from tests.synthetic import synthetic_day
from tickfold.settings import Settings

pytestmark = pytest.mark.redis


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    async with log.connect(redis_url) as c:
        yield c


async def memory_run(client: aioredis.Redis, exchange_id: str, batch: int, columns: str = "") -> list[MemoryCandles]:
    """Fold every raw partition of the exchange in memory, ``batch`` entries at a time: entry by entry
    (``fold``), or with ``columns`` as :class:`Frames` (``fold_frames``) computed from the entries
    (``"stream"``), stored in an archive block (``"archive"``) or read from a format 1 block (``"v1"``),
    each batch in two pieces."""
    settings = Settings()
    symbols = await load_symbol_map(client, exchange_id)
    folds = []
    for p, stream in enumerate(partitions.streams(exchange_id, await log.stored_partitions(client, exchange_id) or 0)):
        fold = MemoryCandles(from_settings(settings, exchange_id, p, symbols, history=settings.candle_history))
        entries = await log.entries(client, stream)
        for i in range(0, len(entries), batch):
            part = entries[i : i + batch]
            if not columns:
                await fold.fold(part)
                continue
            half = len(part) // 2
            await fold.fold_frames([as_frames(stream, part[:half], columns), as_frames(stream, part[half:], columns)])
        folds.append(fold)
    return folds


def as_frames(stream: str, entries: list[log.Entry], how: str) -> Frames:
    if how == "stream":
        return Frames.of_entries(stream.split(":")[1], entries)
    payload = encode_block(entries, stream=stream) if how == "archive" else encode_block_v1(entries)
    frames = decode_frames(payload, stream)
    assert frames.entries() == entries  # the raw entries, byte for byte
    return frames


Letter = tuple[bytes, str, list[tuple[bytes, bytes]]]


def dead_of(folds: list[MemoryCandles]) -> list[Letter]:
    return [(d.entry_id, d.reason, sorted(d.fields.items())) for f in folds for d in f.dead]


async def live_dead(client: aioredis.Redis, exchange_id: str) -> list[Letter]:
    out = []
    for _, fields in await log.entries(client, keys.dead_letter_stream(exchange_id)):
        why = {k: fields.pop(k) for k in (b"reason", b"original_id", b"stream")}
        out.append((why[b"original_id"], why[b"reason"].decode(), sorted(fields.items())))
    return out


def by_series(events: list[CandleClosed]) -> dict[tuple[str, str], list[CandleClosed]]:
    out: dict[tuple[str, str], list[CandleClosed]] = defaultdict(list)
    for e in events:
        out[(e.candle.symbol, e.candle.timeframe)].append(e)
    return dict(out)


async def check_same_as_live(client: aioredis.Redis, exchange_id: str, batch: int) -> int:
    await drain(client, [exchange_id], batch_size=500)
    live = await all_candles(client, exchange_id)
    folds = await memory_run(client, exchange_id, batch)
    memory = {(c.symbol, c.timeframe, c.start): c for f in folds for series in f.candles().values() for c in series}
    assert memory == live
    assert by_series([e for f in folds for e in f.closes]) == by_series(await close_events(client, exchange_id))
    assert sorted(dead_of(folds)) == sorted(await live_dead(client, exchange_id))
    return len(memory)


async def check_columns_as_live(client: aioredis.Redis, exchange_id: str, batch: int) -> list[DeadLetter]:
    """The columnar path, all three ways, equals the live run, and the per-entry memory fold partition by
    partition: the same close events in the same order, the same dead letters."""
    await check_same_as_live(client, exchange_id, batch)
    live = await all_candles(client, exchange_id)
    live_closes = by_series(await close_events(client, exchange_id))
    per_entry = await memory_run(client, exchange_id, batch)
    for how in ("stream", "archive", "v1"):
        folds = await memory_run(client, exchange_id, batch, columns=how)
        if exchange_id == "coinbase":  # its trade frames fold in runs from trade columns, but from a v1 block
            assert (sum(f.run_frames for f in folds) > 0) == (how != "v1")
        assert {(c.symbol, c.timeframe, c.start): c for f in folds for s in f.candles().values() for c in s} == live
        assert by_series([e for f in folds for e in f.closes]) == live_closes
        assert sorted(dead_of(folds)) == sorted(await live_dead(client, exchange_id))
        for fast, slow in zip(folds, per_entry, strict=True):
            assert fast.closes == slow.closes and fast.dead == slow.dead
            assert (fast.frames, fast.position, fast.watermark) == (slow.frames, slow.position, slow.watermark)
    return [d for f in per_entry for d in f.dead]


def binance_mix() -> list[bytes]:
    """Two recorded Binance sessions (klines, aggTrades, bookTickers) with, spread through them, frames the
    fast path must leave to the fold: a broken aggTrade (no event time), an aggTrade of an unknown symbol
    (time only, like any), frames that are not JSON, and the first session's trades again (older event
    times: the watermark does not move back)."""
    first = require(BINANCE_0404).read_bytes().splitlines()
    lines = [*first, *require(BINANCE_0814).read_bytes().splitlines()]
    trades = [line for line in first if b"@aggTrade" in line]
    odd = [
        b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","s":"BTCUSDT"}}',
        b'{"stream":"zzzusdt@aggTrade","data":{"e":"aggTrade","E":1617566600000,"s":"ZZZUSDT","a":1,"p":"1",'
        b'"q":"1","f":1,"l":1,"T":1617566600000,"m":true,"M":true}}',
        b"not json",
        b'{"stream":"btcusdt@aggTrade","data":',
    ]
    rnd = random.Random(11)
    for frame in odd * 3:
        lines.insert(rnd.randrange(len(lines)), frame)
    at = rnd.randrange(len(lines))
    return [*lines[:at], *trades[:300], *lines[at:]]


@pytest.mark.parametrize("batch", [1, 29, 400, 5000])
async def test_the_columnar_fast_path_folds_binance_as_live(client: aioredis.Redis, batch: int) -> None:
    frames = binance_mix()
    await log.append_frames(client, "binance", [(f, i) for i, f in enumerate(frames)])
    dead = await check_columns_as_live(client, "binance", batch)
    assert len(dead) >= 9  # the broken frames are dead letters on every path
    entries = [e for s in await raw_streams(client, "binance") for e in await log.entries(client, s)]
    kinds = Frames.of_entries("binance", entries).kind
    assert int((kinds == TRADE).sum()) == sum(b'@aggTrade"' in f[:64] and b'"E":' in f for f in frames)


@pytest.mark.parametrize(("data", "batch"), [("day", 7), ("day", 5000), ("recorded", 31)])
async def test_the_columnar_path_folds_coinbase_as_live(client: aioredis.Redis, data: str, batch: int) -> None:
    """Coinbase has no time-only trades (its trades make 1m candles): every frame goes to the fold."""
    if data == "day":
        await log.append_frames(client, "coinbase", [(f, 0) for f in synthetic_day(every_ms=120_000)])
    else:
        await ingest(client, "coinbase", COINBASE_AT)
    await check_columns_as_live(client, "coinbase", batch)


@pytest.mark.parametrize("batch", [7, 137, 5000])
async def test_the_synthetic_coinbase_day_folds_in_memory_as_live(client: aioredis.Redis, batch: int) -> None:
    """Trade candles (1m from market_trades, exact decimals, repeated trades once), roll-ups to 1d,
    watermark closes and the quiet hour."""
    day = synthetic_day(every_ms=60_000)
    await log.append_frames(client, "coinbase", [(f, 0) for f in day])
    assert await check_same_as_live(client, "coinbase", batch) > 3_000


@pytest.mark.parametrize(("exchange_id", "path"), [("binance", BINANCE_0404), ("coinbase", COINBASE_AT)])
async def test_recorded_sessions_fold_in_memory_as_live(client: aioredis.Redis, exchange_id: str, path: object) -> None:
    await ingest(client, exchange_id, path)  # type: ignore[arg-type]
    assert await check_same_as_live(client, exchange_id, 250) > 10


@pytest.mark.replay
async def test_an_in_memory_replay_equals_the_live_run(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path of ``tickfold replay --in-memory``: candles, MACD-V points (bit for bit) and alerts
    (same ids) of sub-ranges equal those of the live run, as the replay through Redis is checked to; its
    indicators, folded in memory, are what the indicator processor writes to the target itself."""
    from processors.replay import ReplayOptions
    from processors.replay_export import collect
    from tests.replay_support import RANGES, SETTINGS, expected, live_run
    from tests.synthetic import DAY_START_MS, PRODUCTS
    from tickfold.replay import replay_into

    day = [f for f in synthetic_day(every_ms=90_000) if any(f'"product_id":"{p}"'.encode() in f for p in PRODUCTS[:4])]
    async with log.connect(redis_url) as client, log.connect(redis_url.rsplit("/", 1)[0] + "/6") as target:
        await target.flushdb()
        await live_run(client, "coinbase", day)
        for lo_h, hi_h, timeframes in RANGES:
            lo, hi = DAY_START_MS + int(lo_h * 3_600_000), DAY_START_MS + int(hi_h * 3_600_000)
            candles, points, alerts = await expected(client, "coinbase", lo, hi, timeframes)
            await target.flushdb()
            options = ReplayOptions(start_ms=lo, end_ms=hi, timeframes=timeframes, in_memory=True)
            result, stats = await replay_into(client, target, SETTINGS, "coinbase", options)
            # the candles and indicators come from the fold's memory, not read back: the same as the target holds
            held = await collect(target, "coinbase", lo, hi, timeframes=timeframes)
            assert result == held and len(held.candles) > 0
            assert {(c.symbol, c.timeframe, c.start): c for c in result.candles} == candles
            assert result.points == points
            assert sorted(result.alerts, key=lambda a: a.id) == sorted(alerts, key=lambda a: a.id)
            assert stats.batches < 20 and stats.frames > 0  # large batches
            # the indicator processor's own I/O on the target, fed the same closes in the same batches,
            # writes what the memory fold wrote (points, states, inputs, alerts and their ids)
            written = await indicator_keys(target)
            assert any(k.startswith(b"indinput:") for k in written) and any(k.startswith(b"indstate:") for k in written)
            await target.flushdb()
            with monkeypatch.context() as m:
                m.setattr("processors.memory_indicators.supported", lambda _: False)
                again, _ = await replay_into(client, target, SETTINGS, "coinbase", options)
            assert again == result
            assert await indicator_keys(target) == written
        await target.flushdb()


async def indicator_keys(client: aioredis.Redis) -> dict[bytes, object]:
    """Every indicator key of a target (points, states, inputs, alert ids and alerts) with its contents."""
    out: dict[bytes, object] = {}
    for pattern in ("indicator:*", "indstate:*", "indinput:*", "alerts:*"):
        async for key in client.scan_iter(match=pattern):
            kind = await client.type(key)
            if kind == b"zset":
                out[key] = await client.zrange(key, 0, -1, withscores=True)
            elif kind == b"string":
                out[key] = await client.get(key)
            else:
                out[key] = [fields for _, fields in await log.entries(client, key.decode())]
    return out


def _kline(symbol: str, start: int, event: int, close: str, *, final: bool = False, broken: bool = False) -> bytes:
    k = (
        f'"t":{start},"T":{start + 59_999},"s":"{symbol}","i":"1m","f":1,"L":2,"o":"10","c":"{close}",'
        f'"h":"{max(float(close), 10)}","l":"1","v":"3","n":2,"x":{"true" if final else "false"},"q":"30","V":"1"'
    )
    if not broken:
        k += ',"Q":"10"'  # (without it the frame does not decode: a dead letter the columns don't vouch for)
    return (
        f'{{"stream":"{symbol.lower()}@kline_1m","data":{{"e":"kline","E":{event},"s":"{symbol}","k":{{{k}}}}}}}'
    ).encode()


def _agg_trade(symbol: str, event: int) -> bytes:
    return (
        f'{{"stream":"{symbol.lower()}@aggTrade","data":{{"e":"aggTrade","E":{event},"s":"{symbol}","a":1,'
        f'"p":"1","q":"1","f":1,"l":1,"T":{event},"m":true,"M":true}}}}'
    ).encode()


def kline_tangle(seed: int) -> list[bytes]:
    """Kline snapshots in every order a fold must get right: mostly ~2 s apart and rising, then stale ones
    (older event time after a newer), exact repeats, a final and non-final snapshots after it, snapshots
    after the watermark closed the bucket (late: corrections), broken klines, klines of an unlisted symbol,
    bare kline events, ignored frames, REST backfills of buckets in flight, and aggTrades moving the
    watermark in between."""
    from projections.gaps import rest_event_ns  # noqa: F401  (the REST frame's time comes from its bucket)
    from streams.frames import RestCandle, RestCandlesFrame, encode_tickfold

    rnd = random.Random(seed)
    t0 = 1_617_566_400_000
    out: list[bytes] = []
    for minute in range(40):
        start = t0 + minute * 60_000
        for symbol in ("BTCUSDT", "ETHUSDT", "DOTUSDT"):
            event = start
            for _ in range(rnd.randint(3, 30)):
                event += rnd.randint(0, 4000)
                roll = rnd.random()
                close = f"{rnd.randint(5, 50)}.{rnd.randint(0, 99)}"
                if roll < 0.07:  # stale: older than what came before
                    out.append(_kline(symbol, start, event - rnd.randint(1, 6000), close))
                elif roll < 0.12 and out:
                    out.append(out[-1])  # an exact repeat
                elif roll < 0.14:
                    out.append(_kline(symbol, start, event, close, final=True))
                elif roll < 0.17:
                    out.append(_kline(symbol, start, event, close, broken=True))
                elif roll < 0.19:
                    out.append(_kline("ZZZUSDT", start, event, close))
                elif roll < 0.20:  # the bare event (a /ws/ connection's form)
                    out.append(_kline(symbol, start, event, close).split(b'"data":', 1)[1][:-1])
                elif roll < 0.21:
                    out.append(b'{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT"}}')  # ignored
                elif roll < 0.22:
                    rest = RestCandle(start=start, open="1", high="99", low="1", close=close, volume="7")
                    frame = RestCandlesFrame(
                        exchange="binance", symbol=symbol, timeframe="1m", fetched_ns=0, source="t", candles=[rest]
                    )
                    out.append(encode_tickfold(frame))
                else:
                    out.append(_kline(symbol, start, min(event, start + 59_999), close))
                if rnd.random() < 0.5:
                    out.append(_agg_trade(symbol, event + rnd.randint(0, 3000)))
            if rnd.random() < 0.6:
                out.append(_kline(symbol, start, start + 60_000 + rnd.randint(0, 900), close, final=True))
            if rnd.random() < 0.15:  # late: after the watermark passed the bucket's end and grace
                out.append(_agg_trade(symbol, start + 70_000))
                out.append(_kline(symbol, start, start + 50_000, "77.7"))
    return out


@pytest.mark.parametrize(("seed", "batch"), [(1, 1), (2, 13), (3, 200), (4, 5000)])
async def test_superseded_klines_fold_as_live(client: aioredis.Redis, seed: int, batch: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The columnar path folds a kline snapshot that a later one of its bucket supersedes as a watermark
    item (processors/superseded.py): the same candles, close events (in order), dead letters, watermarks
    and positions as the live fold's code folding the same batches frame by frame, and the same candles as
    the live run, whatever the order and kind of the snapshots around it. (Not the live run's close events:
    late corrections here make roll-up corrections, which a batch orders by bucket, README *Known limits*.)"""
    from processors.superseded import superseded as real

    counted = {"kept": 0, "dropped": 0}

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        dropped = real(*args, **kwargs)
        counted["dropped"] += len(dropped)
        counted["kept"] += sum(k == 2 for k in args[2]) - len(dropped)
        return dropped

    monkeypatch.setattr("processors.memory_fold.superseded", counting)
    await log.append_frames(client, "binance", [(f, i) for i, f in enumerate(kline_tangle(seed))])
    await drain(client, ["binance"], batch_size=500)
    live = await all_candles(client, "binance")
    per_entry = await memory_run(client, "binance", batch)  # the live fold's code, frame by frame
    dead = [d for f in per_entry for d in f.dead]
    for how in ("stream", "archive"):
        folds = await memory_run(client, "binance", batch, columns=how)
        assert {(c.symbol, c.timeframe, c.start): c for f in folds for s in f.candles().values() for c in s} == live
        for fast, slow in zip(folds, per_entry, strict=True):
            assert fast.candles() == slow.candles()
            assert fast.closes == slow.closes and fast.dead == slow.dead
            assert (fast.frames, fast.position, fast.watermark) == (slow.frames, slow.position, slow.watermark)
    assert any("ZZZUSDT" in d.reason for d in dead) and len(dead) > 10
    if batch > 1:  # (one frame a batch: no later snapshot in the batch, nothing dropped)
        assert counted["dropped"] > 100 and counted["kept"] > 100
    else:
        assert counted["dropped"] == 0


async def test_a_trade_id_beyond_int64_is_a_dead_letter_live_and_in_memory(client: aioredis.Redis) -> None:
    """A trade id that does not fit int64 can't be kept in a trade bucket's state (msgpack): live, its batch
    used to fail on every attempt. Now its frame is a dead letter, on every path, and the rest folds."""
    day = synthetic_day(every_ms=600_000)[:40]
    huge = day[5].replace(b'"trade_id":"', b'"trade_id":"123456789012345678901234', 1)
    assert huge != day[5]
    await log.append_frames(client, "coinbase", [(f, 0) for f in [*day[:20], huge, *day[20:]]])
    dead = await check_columns_as_live(client, "coinbase", 7)
    assert len(dead) == 1 and dead[0].reason.endswith("': trade id out of range")
    assert dead[0].reason.startswith("market_trades: bad trade '123456789012345678901234")
    assert len(await all_candles(client, "coinbase")) > 20


async def test_an_in_memory_replay_writes_the_close_events_and_dead_letters_a_replay_through_redis_does(
    redis_url: str,
) -> None:
    """The fast path writes its close events and dead letters in bulk at the end (``log.send_all``): the
    target's ``closes:`` and dead letter streams hold the same entries, in the same order, as the replay that
    folds through Redis writes."""
    from processors.replay import ReplayOptions
    from tests.replay_support import SETTINGS
    from tests.synthetic import DAY_START_MS
    from tickfold.replay import replay_into

    day = synthetic_day(every_ms=120_000)[:600]
    broken = [b"not json", b'{"channel":"market_trades","events":[{"trades":[{"price":"1"}]}]}']
    frames = [f for i, frame in enumerate(day) for f in ([frame, broken[i % 2]] if i % 97 == 5 else [frame])]
    base = redis_url.rsplit("/", 1)[0]
    async with log.connect(redis_url) as source, log.connect(f"{base}/7") as fast, log.connect(f"{base}/8") as slow:
        await source.flushdb()
        await log.append_frames(source, "coinbase", [(f, 0) for f in frames])
        written = {}
        for target, in_memory in ((fast, True), (slow, False)):
            await target.flushdb()
            options = ReplayOptions(start_ms=DAY_START_MS, end_ms=DAY_START_MS + 86_400_000, in_memory=in_memory)
            _, stats = await replay_into(source, target, SETTINGS, "coinbase", options)
            assert stats.dead == 7 and stats.closes > 100  # (one broken frame after every 97th)
            written[in_memory] = [
                [fields for _, fields in await log.entries(target, stream)]
                for stream in (keys.closes_stream("coinbase"), keys.dead_letter_stream("coinbase"))
            ]
            await target.flushdb()
        closes, dead = written[True]
        assert len(closes) > 100 and len(dead) == 7
        assert all(set(d) >= {b"reason", b"original_id", b"stream", b"frame"} for d in dead)
        # the same entries; in the same order per partition's series (partitions interleave differently)
        assert raw_by_series(closes) == raw_by_series(written[False][0])  # byte for byte
        assert sorted(map(sorted_items, dead)) == sorted(map(sorted_items, written[False][1]))


def raw_by_series(closes: list[dict[bytes, bytes]]) -> dict[tuple[str, str], list[bytes]]:
    out: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    for fields in closes:
        candle = store.decode_closed(fields[b"event"]).candle
        out[(candle.symbol, candle.timeframe)].append(fields[b"event"])
    return dict(out)


def sorted_items(fields: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return sorted(fields.items())


async def test_send_all_runs_every_command_and_raises_the_first_error(client: aioredis.Redis) -> None:
    await client.delete("send_all:a", "send_all:b")
    await log.send_all(client, [(b"XADD", "send_all:a", b"*", b"n", i) for i in range(2_500)], "testing")
    assert [int(f[b"n"]) for _, f in await log.entries(client, "send_all:a")] == list(range(2_500))
    await client.set("send_all:b", "x")
    with pytest.raises(log.ResponseError, match="WRONGTYPE"):
        appends = [(b"XADD", "send_all:a", b"*", b"n", 1), (b"XADD", "send_all:b", b"*", b"n", 2)]
        await log.send_all(client, appends, "testing")
    assert await client.xlen("send_all:a") == 2_501  # the commands before and after an error still ran
    await client.delete("send_all:a", "send_all:b")
