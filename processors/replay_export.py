"""What a replay produced in a range, read back from its target, and written out for a backtest.

:func:`collect` reads the candles (``candles:{ex}:{symbol}:{tf}``, start in the range), their MACD-V
points (``indicator:...:macdv``) and the alerts (``alerts:{ex}``, candle start in the range) of a
replay target. The outputs:

* :func:`write`: by the file's extension, ``.csv``, ``.parquet`` or ``.jsonl`` / ``.ndjson``: one row
  per candle with its MACD-V columns (empty before the indicator's warm-up) in ``FILE``, and the alerts
  in ``FILE`` with ``.alerts`` before the extension (``out.csv`` -> ``out.alerts.csv``). CSV and JSON
  lines keep prices and volumes as the exact decimal strings the exchange sent; Parquet stores them as
  float64, like :func:`dataframe`.
* :func:`dataframe`: a pandas DataFrame of the same rows (prices as float64, ``time`` as a UTC
  timestamp), sorted by symbol, timeframe and time: the backtest hand-off.
"""

from __future__ import annotations

import csv
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import redis.asyncio as aioredis

from processors.indicators import KIND, decode_alert, decode_point
from processors.memory_indicators import MemoryIndicators
from projections import store
from projections.alerts import Alert, Point
from projections.candles import Candle
from streams import keys, log
from tickfold.errors import TickfoldError

if TYPE_CHECKING:
    import pandas as pd

FORMATS = (".csv", ".parquet", ".jsonl", ".ndjson")
CANDLE_COLUMNS = (
    "exchange", "symbol", "timeframe", "start", "open", "high", "low", "close", "volume", "quote_volume", "trades",
    "taker_buy_volume", "closed", "closed_by", "source", "macdv", "signal", "histogram", "zone",
)  # fmt: skip
ALERT_COLUMNS = (
    "id", "source_exchange_id", "exchange", "symbol", "timeframe", "start", "rule", "macdv", "signal", "histogram",
    "zone", "previous_zone",
)  # fmt: skip
_DECIMALS = ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_volume")


class ExportFormatError(TickfoldError):
    """An output file whose extension names no format tickfold writes."""


@dataclass
class ReplayResult:
    exchange_id: str
    start_ms: int
    end_ms: int
    candles: list[Candle] = field(default_factory=list)  # by symbol, timeframe, start
    points: dict[tuple[str, str, int], Point] = field(default_factory=dict)  # (symbol, tf, start) -> MACD-V
    alerts: list[Alert] = field(default_factory=list)  # in the order they were raised

    def rows(self) -> list[dict[str, Any]]:
        """One dict per candle (CANDLE_COLUMNS), decimals as the exact strings."""
        out: list[dict[str, Any]] = []
        for c in self.candles:
            p = self.points.get((c.symbol, c.timeframe, c.start))
            row = {name: getattr(c, name) for name in CANDLE_COLUMNS[:15]}
            row.update(
                macdv=None if p is None else p.macdv,
                signal=None if p is None else p.signal,
                histogram=None if p is None else p.histogram,
                zone=None if p is None else p.zone,
            )
            out.append(row)
        return out

    def alert_rows(self) -> list[dict[str, Any]]:
        return [msgspec.structs.asdict(a) for a in self.alerts]


async def collect(
    client: aioredis.Redis,
    exchange_id: str,
    start_ms: int,
    end_ms: int,
    *,
    symbols: frozenset[str] | None = None,
    timeframes: tuple[str, ...] | None = None,
    candles: Mapping[str, Sequence[Candle]] | None = None,
    indicators: bool = True,
    held: MemoryIndicators | None = None,
) -> ReplayResult:
    """The candles, MACD-V points and alerts of a target in ``[start_ms, end_ms)`` (module docstring).

    ``candles``: the series the target was just written from (``candles:`` key -> candles, oldest
    first, as the target keeps them), taken instead of read back; ``indicators=False``: no indicator
    processor ran, so there are no points or alerts to read; ``held``: the indicator projection the
    target was just written from, taken instead of read back."""
    result = ReplayResult(exchange_id, start_ms, end_ms)

    def wanted(symbol: str, timeframe: str) -> bool:
        return (symbols is None or symbol in symbols) and (timeframes is None or timeframe in timeframes)

    names = await store.list_series(client, exchange_id) if candles is None else list(candles)
    named = {keys.parse_candles(k): k for k in names}
    series = sorted((s for s in named if wanted(s[1], s[2])), key=lambda s: (s[1], s[2]))
    read_points = indicators and held is None
    pipe = client.pipeline(transaction=False)
    for _, symbol, tf in series:
        if candles is None:
            pipe.zrange(keys.candles(exchange_id, symbol, tf), start_ms, end_ms - 1, byscore=True)
        if read_points:
            pipe.zrange(keys.indicator(exchange_id, symbol, tf, KIND), start_ms, end_ms - 1, byscore=True)
    with log.translated(f"reading the replayed projections of {exchange_id}"):
        replies: Any = await pipe.execute() if series and (candles is None or read_points) else []
    at = 0
    for name in series:
        _, symbol, tf = name
        if candles is None:
            result.candles.extend(store.decode_candle(raw) for raw in replies[at])
            at += 1
        else:
            kept = candles[named[name]]
            starts = [c.start for c in kept]
            result.candles.extend(kept[bisect_left(starts, start_ms) : bisect_left(starts, end_ms)])
        if read_points:
            for raw in replies[at]:
                point = decode_point(raw)
                result.points[(symbol, tf, point.start)] = point
            at += 1
        elif held is not None:
            pts = held.points.get(keys.indicator(exchange_id, symbol, tf, KIND), {})
            result.points.update(((symbol, tf, t), pts[t]) for t in sorted(pts) if start_ms <= t < end_ms)
    if not indicators:
        return result
    if held is not None:
        raised = held.alerts
    else:
        raised = [decode_alert(f[b"alert"]) for _, f in await log.entries(client, keys.alerts_stream(exchange_id))]
    result.alerts.extend(a for a in raised if start_ms <= a.start < end_ms and wanted(a.symbol, a.timeframe))
    return result


def alerts_path(path: Path) -> Path:
    """Where the alerts of an export to ``path`` go: ``out.csv`` -> ``out.alerts.csv``."""
    return path.with_name(f"{path.stem}.alerts{path.suffix}")


def check_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ExportFormatError(f"can't tell the format of {path}: give it one of the extensions {', '.join(FORMATS)}")
    return suffix


def write(path: Path, result: ReplayResult) -> tuple[Path, Path]:
    """Write the candles to ``path`` and the alerts beside it (module docstring); returns both paths."""
    suffix = check_format(path)
    rows, alerts = result.rows(), result.alert_rows()
    second = alerts_path(path)
    if suffix == ".csv":
        _csv(path, CANDLE_COLUMNS, rows)
        _csv(second, ALERT_COLUMNS, alerts)
    elif suffix == ".parquet":
        _parquet(path, CANDLE_COLUMNS, rows, numeric=True)
        _parquet(second, ALERT_COLUMNS, alerts, numeric=False)
    else:
        encoder = msgspec.json.Encoder()
        for target, items in ((path, rows), (second, alerts)):
            with target.open("wb") as fh:
                for item in items:
                    fh.write(encoder.encode(item) + b"\n")
    return path, second


def _csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        out = csv.DictWriter(fh, fieldnames=columns)
        out.writeheader()
        out.writerows(rows)


def _parquet(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]], *, numeric: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data: dict[str, list[Any]] = {name: [r[name] for r in rows] for name in columns}
    if numeric:
        for name in _DECIMALS:
            data[name] = [None if v is None else float(v) for v in data[name]]
    types = {"start": pa.int64(), "trades": pa.int64(), "closed": pa.bool_()}
    for name in ("macdv", "signal", "histogram", *(_DECIMALS if numeric else ())):
        types[name] = pa.float64()
    schema = pa.schema([(name, types.get(name, pa.string())) for name in columns])
    pq.write_table(pa.Table.from_pydict(data, schema=schema), path)


def dataframe(result: ReplayResult) -> pd.DataFrame:
    """The candles with their MACD-V columns as a pandas DataFrame (module docstring)."""
    import pandas as pd

    frame = pd.DataFrame(result.rows(), columns=list(CANDLE_COLUMNS))
    for name in _DECIMALS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    for name in ("macdv", "signal", "histogram"):
        frame[name] = frame[name].astype("float64")
    frame.insert(3, "time", pd.to_datetime(frame["start"], unit="ms", utc=True))
    return frame.sort_values(["symbol", "timeframe", "start"], ignore_index=True)


def alerts_dataframe(result: ReplayResult) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame(result.alert_rows(), columns=list(ALERT_COLUMNS))
    frame.insert(6, "time", pd.to_datetime(frame["start"], unit="ms", utc=True))
    return frame
