"""Replay of a recorded session (``*.frames.jsonl`` or ``*.recording.jsonl``), re-timed to now, looping.

Each recorded frame becomes a template: its exact text cut around the fields that move, which are
re-rendered per loop, so the rest stays byte-identical.

* Times shift by ``offset + k·period`` on loop k. With ``align`` (the default) the offset is a whole
  number of the recording's candle buckets (Binance: its longest kline interval; Coinbase: 300 s when
  it has candles, else 1 s), so kline/candle buckets stay aligned and the digits of every fraction are
  kept: the first frame's time is then at most one bucket before now. ``align=False`` puts the first
  frame at now to the ms (Binance) or to the second (Coinbase, so fraction digits stay as recorded).
  Frames go out on the wall clock at the recorded gaps divided by ``speed`` (``speed=0``: as fast as
  the connections take them); frames without an event time (bookTicker) go with the frame before.
* Ids shift by k·(max-min+1) per symbol and id family on loop k (Binance ``a``; trade ids ``f``/``l``/``t``
  and kline ``f``/``L``; bookTicker ``u``; Coinbase ``trade_id`` per product), so they keep increasing;
  aggTrade ``a`` and Coinbase ``trade_id`` stay contiguous across loops.
* Binance: combined frames are sent as recorded to combined connections, their ``data`` to raw ones.
  Coinbase: ``sequence_num`` is re-numbered per connection; ``subscriptions`` and ``heartbeats`` frames
  are dropped (the simulator makes its own), snapshot frames seed the state the simulator's snapshots
  are built from (first loop only) instead of being sent.
* Trades (aggTrade / market_trades) are booked as they are sent, so REST folds agree with the stream
  (a kline or candle whose bucket began before the recording did is of course not reproducible).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.recorded import read_frames
from streams.simulator.binance import Binance
from streams.simulator.coinbase import CANDLE_S, Coinbase
from streams.simulator.config import Clock
from streams.simulator.markets import BINANCE_INTERVALS_MS, Series, Trade
from streams.simulator.refdata import Instrument, instrument
from streams.simulator.wire import decimals, parse_rfc3339_ns, rfc3339_nano, to_units

_BN_NUM = re.compile(r'"([A-Za-z])":(-?\d+)')
_CB_FIELD = re.compile(r'"(timestamp|time|start|trade_id|product_id)":"([^"]*)"|"sequence_num":(\d+)')
_T, _ID, _RFC, _SEC, _SEQ = "T", "I", "R", "S", "Q"
_BN_FIELDS: dict[str | None, dict[str, str]] = {
    "aggTrade": {"E": _T, "T": _T, "a": "a", "f": "t", "l": "t"},
    "trade": {"E": _T, "T": _T, "t": "t"},
    "kline": {"E": _T, "t": _T, "T": _T, "f": "t", "L": "t"},
    "24hrTicker": {"E": _T, "O": _T, "C": _T, "F": "t", "L": "t"},
    "24hrMiniTicker": {"E": _T},
    None: {"u": "u"},  # bookTicker
}
_NS = 1_000_000_000


@dataclass
class _Frame:
    pieces: list[str]
    slots: list[tuple[str, int, str]]  # (kind, recorded value, id family)
    t: int  # schedule time: ms (Binance) / ns (Coinbase)
    key: str = ""  # Binance stream / Coinbase channel
    products: list[str] = field(default_factory=list)
    snapshot: bool = False
    data: Any = None  # parsed recorded object, for booking trades and seeding state


class ReplayFeed:
    def __init__(
        self, venue: Binance | Coinbase, path: Path, *, loop: bool, speed: float, align: bool, clock: Clock
    ) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.venue, self.path, self.loop, self.speed, self.clock = venue, path, loop, speed, clock
        self.binance = isinstance(venue, Binance)
        self.frames: list[_Frame] = [f for raw, _ in read_frames(path) if (f := self._parse(raw.decode())) is not None]
        if not self.frames:
            raise ValueError(f"{path}: no frames to replay")
        # frames without an event time (bookTicker) go with the timed frame before them (or the first one);
        # schedule times never go backwards
        timed = [fr.t for fr in self.frames if fr.t >= 0]
        last_t = timed[0] if timed else 0
        for fr in self.frames:
            fr.t = last_t = max(fr.t, last_t)
        self.unit = 1000 if self.binance else _NS  # schedule units per second
        self.spans = self._spans()
        self.series = self._register()
        self.bucket = self._align_units() if align else (1 if self.binance else _NS)
        first, last = self.frames[0].t, self.frames[-1].t
        self.period = ((last - first) // self.bucket + 1) * self.bucket
        self.offset = 0
        self.retime()
        self.sent = 0  # frames emitted
        self.loops = 0  # loops completed
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def retime(self) -> None:
        """Shift loop 0 so the first frame is now (to within one aligned bucket)."""
        now = self.clock() // 1_000_000 if self.binance else self.clock()
        self.offset = (now - self.frames[0].t) // self.bucket * self.bucket

    # ---------------------------------------------------------------------------------------- parsing

    def _parse(self, line: str) -> _Frame | None:
        obj = json.loads(line)
        return self._parse_binance(line, obj) if self.binance else self._parse_coinbase(line, obj)

    def _parse_binance(self, line: str, obj: Any) -> _Frame | None:
        if not (isinstance(obj, dict) and isinstance(obj.get("data"), dict) and "stream" in obj):
            return None
        stream, data = obj["stream"], obj["data"]
        if not line.startswith(f'{{"stream":"{stream}","data":') or not line.endswith("}"):
            raise ValueError(f"{self.path}: unexpected combined frame layout: {line[:80]}")
        fields = _BN_FIELDS.get(data.get("e"), {})
        sym = data.get("s", "")
        pieces, slots, pos = [], [], 0
        for m in _BN_NUM.finditer(line):
            kind = fields.get(m.group(1))
            if kind is None:
                continue
            pieces.append(line[pos : m.start(2)])
            family = "" if kind == _T else f"{sym}:{kind}"
            slots.append((_T if kind == _T else _ID, int(m.group(2)), family))
            pos = m.end(2)
        pieces.append(line[pos:])
        return _Frame(pieces, slots, int(data.get("E", -1)), key=stream, products=[sym] if sym else [], data=data)

    def _parse_coinbase(self, line: str, obj: Any) -> _Frame | None:
        if not isinstance(obj, dict) or obj.get("channel") in (None, "subscriptions", "heartbeats", "l2_data"):
            return None
        products: dict[str, None] = {}
        for ev in obj.get("events", []):
            for group in ("trades", "candles", "tickers", "products"):
                for item in ev.get(group, []):
                    products[item.get("product_id", item.get("id", ""))] = None
        products.pop("", None)
        pieces, slots, pos, product = [], [], 0, ""
        for m in _CB_FIELD.finditer(line):
            name, value = m.group(1), m.group(2)
            if name == "product_id":
                product = value
                continue
            if name is None:
                slot, start = (_SEQ, int(m.group(3)), ""), m.start(3)
            elif name in ("timestamp", "time"):
                slot, start = (_RFC, parse_rfc3339_ns(value), ""), m.start(2)
            elif name == "start":
                slot, start = (_SEC, int(value), ""), m.start(2)
            else:
                slot, start = (_ID, int(value), f"{product}:trade"), m.start(2)
            pieces.append(line[pos:start])
            slots.append(slot)
            pos = m.end(3) if name is None else m.end(2)
        pieces.append(line[pos:])
        if sum(1 for s in slots if s[0] == _SEQ) != 1:
            raise ValueError(f"{self.path}: frame without one sequence_num: {line[:80]}")
        snapshot = any(ev.get("type") == "snapshot" for ev in obj.get("events", []))
        return _Frame(pieces, slots, parse_rfc3339_ns(obj["timestamp"]), obj["channel"], list(products), snapshot, obj)

    def _spans(self) -> dict[str, int]:
        lo: dict[str, int] = {}
        hi: dict[str, int] = {}
        for fr in self.frames:
            if fr.snapshot:
                continue
            for kind, value, family in fr.slots:
                if kind == _ID and value >= 0:
                    lo[family] = min(lo.get(family, value), value)
                    hi[family] = max(hi.get(family, value), value)
        return {f: hi[f] - lo[f] + 1 for f in lo}

    def _align_units(self) -> int:
        if self.binance:
            sizes = [BINANCE_INTERVALS_MS[fr.key.rpartition("_")[2]] for fr in self.frames if "@kline_" in fr.key]
            return max(sizes, default=1)
        return (CANDLE_S if any(fr.key == "candles" for fr in self.frames) else 1) * _NS

    def _register(self) -> dict[str, Series]:
        price_dp: dict[str, int] = {}
        qty_dp: dict[str, int] = {}
        for fr in self.frames:
            for sym in fr.products:
                price_dp.setdefault(sym, 8 if self.binance else 2)
                qty_dp.setdefault(sym, 8)
            for sym, p, q in self._trade_texts(fr):
                price_dp[sym] = max(price_dp[sym], decimals(p))
                qty_dp[sym] = max(qty_dp[sym], decimals(q))
        out: dict[str, Series] = {}
        for sym in price_dp:
            try:
                inst = instrument(self.venue.exchange, sym)
            except ValueError:
                inst = Instrument(self.venue.exchange, sym, sym, "", price_dp[sym], qty_dp[sym], 1, 1, 1)
            out[sym] = self.venue.add(inst, price_scale=price_dp[sym], qty_scale=qty_dp[sym])
        return out

    def _trade_texts(self, fr: _Frame) -> list[tuple[str, str, str]]:
        if self.binance:
            d = fr.data
            return [(d["s"], d["p"], d["q"])] if d.get("e") == "aggTrade" else []
        if fr.key != "market_trades":
            return []
        return [(t["product_id"], t["price"], t["size"]) for ev in fr.data["events"] for t in ev.get("trades", [])]

    # ------------------------------------------------------------------------------------- rendering

    def render(self, fr: _Frame, k: int) -> str:
        offset = self.offset + k * self.period
        out = [fr.pieces[0]]
        for (kind, value, family), piece in zip(fr.slots, fr.pieces[1:], strict=True):
            if kind == _T:
                out.append(str(value + offset))
            elif kind == _ID:
                out.append(str(value + k * self.spans.get(family, 0) if value >= 0 else value))
            elif kind == _RFC:
                out.append(rfc3339_nano(value + offset))
            elif kind == _SEC:
                out.append(str(value + offset // _NS))
            else:
                out.append("\0")  # the sequence_num split point
            out.append(piece)
        return "".join(out)

    def _trades(self, fr: _Frame, k: int) -> list[tuple[Series, Trade]]:
        offset = self.offset + k * self.period
        out: list[tuple[Series, Trade]] = []
        if self.binance:
            d = fr.data
            series = self.series[d["s"]]
            a, t = self.spans.get(f"{d['s']}:a", 0) * k, self.spans.get(f"{d['s']}:t", 0) * k
            trade = Trade(d["a"] + a, (d["T"] + offset) * 1000, to_units(d["p"], series.price_scale),
                          to_units(d["q"], series.qty_scale), d["m"], d["f"] + t, d["l"] + t)  # fmt: skip
            return [(series, trade)]
        for ev in fr.data["events"]:
            for x in ev.get("trades", []):
                series = self.series[x["product_id"]]
                tid = int(x["trade_id"]) + k * self.spans.get(f"{x['product_id']}:trade", 0)
                time_us = (parse_rfc3339_ns(x["time"]) + offset) // 1000
                price, size = to_units(x["price"], series.price_scale), to_units(x["size"], series.qty_scale)
                out.append((series, Trade(tid, time_us, price, size, x["side"] == "BUY", tid, tid)))
        out.sort(key=lambda st: st[1].id)
        return out

    def emit(self, fr: _Frame, k: int) -> None:
        venue = self.venue
        if isinstance(venue, Binance):
            text = self.render(fr, k)
            payload = text[len(fr.key) + 20 : -1]  # after '{"stream":"<key>","data":'
            if fr.data.get("e") == "aggTrade":
                for series, trade in self._trades(fr, k):
                    series.book(trade)
                venue.publish(fr.key, payload, text, trade_of=fr.data["s"])
            else:
                venue.publish(fr.key, payload, text)
            return
        if fr.snapshot and k > 0:
            return
        if fr.key == "market_trades":
            for series, trade in self._trades(fr, k):
                series.book(trade)
        offset_s = (self.offset + k * self.period) // _NS
        for ev in fr.data["events"]:
            for c in ev.get("candles", []):
                venue.set_candle(c["product_id"], {**c, "start": str(int(c["start"]) + offset_s)})
            for tk in ev.get("tickers", []):
                venue.tickers[tk["product_id"]] = tk
        if not fr.snapshot:
            head, _, tail = self.render(fr, k).partition("\0")
            venue.publish(fr.key, fr.products, (head.encode(), tail.encode()))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.retime()
        start = loop.time()
        first = self.frames[0].t
        k = 0
        while True:
            for i, fr in enumerate(self.frames):
                if self.speed > 0:
                    delay = start + (k * self.period + fr.t - first) / self.unit / self.speed - loop.time()
                    if delay > 0:
                        await self.venue.hub.writable()
                        await asyncio.sleep(delay)
                elif i % 256 == 0:
                    await self.venue.hub.writable()
                    await asyncio.sleep(0)
                self.emit(fr, k)
                self.sent += 1
            k += 1
            self.loops = k
            if not self.loop:
                self.done.set()
                return
