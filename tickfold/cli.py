"""The ``tickfold`` command line: parses flags, builds Settings once, hands off. No logic lives here.

Exit codes: 0 success, 1 a runtime failure (server unreachable, a migration failed), 2 bad usage or
configuration (the message names the key).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from tickfold import commands
from tickfold.errors import ConfigError, TickfoldError
from tickfold.settings import Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tickfold",
        description="Event-sourced market data on Redis Streams: raw exchange frames in, candles out.",
        epilog="Settings also come from TICKFOLD_<NAME> environment variables and a TOML file "
        "(--config or TICKFOLD_CONFIG). Without a Redis/PostgreSQL URL, private servers are started "
        "with their data under --data-dir.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML settings file ([tickfold] table)")
    p.add_argument(
        "--redis-url", metavar="URL", help="Redis URL (redis://, rediss:// or unix://); env TICKFOLD_REDIS_URL"
    )
    p.add_argument("--database-url", metavar="URL", help="PostgreSQL URL; env TICKFOLD_DATABASE_URL")
    p.add_argument("--data-dir", metavar="DIR", help="where private servers keep their data (default .tickfold)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("demo", help="the main job on recorded sessions: servers, migrate, ingest, process, show candles")

    m = sub.add_parser("migrate", help="apply the numbered SQL migrations (once each, in order)")
    m.add_argument("--status", action="store_true", help="only list migrations and whether they are applied")

    i = sub.add_parser("ingest", help="append a recorded .jsonl session to an exchange's raw frame stream")
    i.add_argument("exchange", help="exchange id: binance or coinbase")
    i.add_argument("file", help="*.frames.jsonl (one raw frame per line) or *.recording.jsonl")

    pr = sub.add_parser("process", help="run the candle processor(s); Ctrl-C/SIGTERM stops after the batch in hand")
    pr.add_argument("--exchange", action="append", help="only this exchange (repeatable; default: all)")
    pr.add_argument("--until-idle", action="store_true", help="drain the streams, then exit")
    pr.add_argument("--batch-size", type=int, help="entries per partition per batch at most (default 2000)")
    pr.add_argument(
        "--backfill",
        action="store_true",
        default=None,
        help="also backfill from REST: warm-up on start, then after reconnects and gaps (env TICKFOLD_BACKFILL)",
    )

    c = sub.add_parser("candles", help="show the candles of one series")
    c.add_argument("exchange")
    c.add_argument("symbol", help="BTCUSDT / BTC-USD (exchange form) or BTC-USDT (canonical BASE-QUOTE)")
    c.add_argument("timeframe", help="1m, 5m, 1h, ...")
    c.add_argument("--limit", type=int, default=20, help="newest N candles (default 20)")
    c.add_argument("--json", action="store_true", help="a JSON array, oldest first")
    c.add_argument("--user", help="fall back to this user's overflow keys (DATA-04 dual-read)")

    d = sub.add_parser("dead", help="show the dead-letter stream of an exchange")
    d.add_argument("exchange")
    d.add_argument("--limit", type=int, default=20)

    ex = sub.add_parser("exchanges", help="list exchanges, or point one at other URLs (e.g. the simulator)")
    ex_sub = ex.add_subparsers(dest="action", required=True, metavar="ACTION")
    ex_list = ex_sub.add_parser("list", help="the exchanges table")
    ex_list.add_argument("--json", action="store_true")
    ex_set = ex_sub.add_parser("set", help="change an exchange's WebSocket / REST URL")
    ex_set.add_argument("exchange")
    ex_set.add_argument("--ws-url", metavar="URL")
    ex_set.add_argument("--rest-url", metavar="URL")

    live = sub.add_parser("ingest-live", help="connect one exchange adapter and append its frames until stopped")
    live.add_argument("exchange")
    live.add_argument("--symbols", required=True, help="comma-separated, e.g. BTC-USDT,ETH-USDT or BTCUSDT")
    live.add_argument("--timeframes", default="1m", help="Binance kline intervals, comma-separated (default 1m)")
    live.add_argument("--duration", type=float, help="stop after this many seconds")

    mk = sub.add_parser("markets", help="exchange market lists (symbol -> base/quote/status)")
    mk_sub = mk.add_subparsers(dest="action", required=True, metavar="ACTION")
    mk_sync = mk_sub.add_parser("sync", help="fetch the market list from the exchange's REST API into Redis")
    mk_sync.add_argument("exchange")

    ind = sub.add_parser("indicators", help="MACD-V of a series, newest closed candles")
    ind.add_argument("exchange")
    ind.add_argument("symbol", help="BTCUSDT / BTC-USD or canonical BTC-USDT")
    ind.add_argument("timeframe", help="1m, 5m, 15m, 1h, 4h, 1d")
    ind.add_argument("--type", default="macdv", help="indicator type (default macdv)")
    ind.add_argument("--limit", type=int, default=20)
    ind.add_argument("--user", help="fall back to this user's overflow keys (DATA-04 dual-read)")
    ind.add_argument("--json", action="store_true", help="a JSON array, oldest first: start, macdv, signal, histogram")
    al = sub.add_parser("alerts", help="alerts raised (MACD-V signal crosses and zone changes)")
    al.add_argument("--exchange", action="append", help="only this exchange (repeatable; default: all)")
    al.add_argument("--limit", type=int, default=50, help="how many recent alerts per exchange to show first")
    al.add_argument("--follow", action="store_true", help="then keep printing new alerts until Ctrl-C")
    al.add_argument("--json", action="store_true", help="JSON (an array; with --follow one object per line)")
    st = sub.add_parser("status", help="connection state per exchange (EXC-04), from PostgreSQL")
    st.add_argument("--json", action="store_true", help="a JSON array, one object per exchange")
    rb = sub.add_parser("rebuild", help="drop a projection and refold it from its stream")
    rb.add_argument(
        "projection",
        choices=["connection-state", "candles", "indicators", "all"],
        help="connection-state (PostgreSQL, from the control stream), or candles / indicators / all (Redis, from "
        "the raw frames in the archive and the stream; refused while a processor runs)",
    )
    rb.add_argument("exchange", nargs="?", help="candles/indicators/all: only this exchange (default: every one)")
    rp = sub.add_parser("replay", help="fold a range of raw frames (archive + stream) again, apart from the live keys")
    rp.add_argument("exchange", help="exchange id: binance or coinbase")
    rp.add_argument("--from", dest="start", required=True, metavar="T", help="ISO-8601 (2021-04-04T10:00Z) or epoch ms")
    rp.add_argument("--to", dest="end", required=True, metavar="T", help="end (exclusive), ISO-8601 or epoch ms")
    rp.add_argument("--symbols", help="only these symbols, comma-separated (BTCUSDT or BTC-USDT)")
    rp.add_argument("--timeframes", help="only these timeframes, comma-separated (1m,15m); shortens the fold")
    rp.add_argument("--speed", default="max", help="max (default), realtime, or N for N times real time")
    rp.add_argument("--namespace", type=int, metavar="N", help="write into Redis logical database N (not the live one)")
    rp.add_argument("--clear", action="store_true", help="empty the --namespace database first")
    rp.add_argument("--out", metavar="FILE", help="export candles + MACD-V and alerts: .csv, .parquet or .jsonl")
    rp.add_argument("--to-end", action="store_true", help="fold every frame to the stream's end (late backfills too)")
    rp.add_argument("--warmup", metavar="DURATION", help="start folding this long before --from (6h, 2d): NOT exact")
    rp.add_argument(
        "--in-memory", action="store_true", help="the fast path: fold in memory, write once at the end (exact too)"
    )
    ar = sub.add_parser(
        "archive", help="the streams' archive in PostgreSQL: run the archiver (default), status, or upgrade"
    )
    ar.add_argument(
        "action",
        nargs="?",
        choices=["run", "status", "upgrade"],
        default="run",
        help="run (default), status, or upgrade (rewrite raw frame blocks of earlier formats in the current one)",
    )
    ar.add_argument(
        "--exchange", action="append", help="run, upgrade: only this exchange's streams (repeatable; default: all)"
    )
    ar.add_argument("--until-idle", action="store_true", help="run: archive what the streams hold, then exit")
    ar.add_argument("--json", action="store_true", help="status: one JSON object")
    gp = sub.add_parser("gaps", help="missing candle buckets: marked by a backfill, and holes in the stored series")
    gp.add_argument("exchange", help="exchange id: binance or coinbase")
    gp.add_argument("symbol", nargs="?", help="only this symbol: BTCUSDT / BTC-USD or canonical BTC-USDT")
    gp.add_argument("timeframe", nargs="?", help="only this timeframe: 1m, 5m, 1h, ...")
    gp.add_argument("--json", action="store_true", help="a JSON array of runs of missing buckets")
    api = sub.add_parser("api", help="serve the HTTP/WebSocket API alone (serve mounts the same app)")
    api.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    api.add_argument("--port", type=int, default=8780, help="port (default 8780; 0 picks a free one)")
    sv = sub.add_parser("serve", help="the supervisor (+ processors): starts idle, runs what control commands ask")
    sv.add_argument("--autostart", action="append", metavar="EXCHANGE", help="start this exchange at once (repeatable)")
    sv.add_argument("--no-processors", action="store_true", help="don't run the candle and indicator processors")
    sv.add_argument("--no-api", action="store_true", help="don't serve the HTTP/WebSocket API")
    sv.add_argument("--api-host", default="127.0.0.1", help="API address (default: loopback only)")
    sv.add_argument("--api-port", type=int, default=8780, help="API port (default 8780; 0 picks a free one)")
    for name, text in (("start", "start an exchange on the running serve"), ("stop", "stop an exchange")):
        cmd = sub.add_parser(name, help=f"{text}; waits for the outcome (exit 0 only on success)")
        cmd.add_argument("exchange")
        if name == "start":
            cmd.add_argument("--symbols", help="comma-separated, e.g. BTC-USDT,ETH-USDT (default: the exchange's set)")
            cmd.add_argument("--timeframes", help="comma-separated, e.g. 1m,5m (default 1m)")
        cmd.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the outcome (default 30)")
    po = sub.add_parser("positions", help="Tier 2: the positions users hold (their symbols are watched)")
    po_sub = po.add_subparsers(dest="action", required=True, metavar="ACTION")
    po_open = po_sub.add_parser("open", help="open a position (or set an open one's quantity)")
    po_close = po_sub.add_parser("close", help="close a position; its overflow keys then run out")
    for sp in (po_open, po_close):
        sp.add_argument("user")
        sp.add_argument("exchange")
        sp.add_argument("symbol", help="BTCUSDT / BTC-USD (exchange form) or BTC-USDT (canonical BASE-QUOTE)")
    po_open.add_argument("quantity", help="a decimal, e.g. 0.5")
    po_list = po_sub.add_parser("list", help="the open positions")
    po_list.add_argument("--user", help="only this user's")
    po_list.add_argument("--json", action="store_true", help="a JSON array, one object per position")
    sy = sub.add_parser(
        "symbols",
        help="the symbol universe (each symbol, its tier(s) and why); manual adds; market data; cross-exchange ranking",
    )
    sy.add_argument(
        "words",
        nargs="+",
        metavar="EXCHANGE | add EXCHANGE SYMBOL | remove EXCHANGE SYMBOL | market EXCHANGE | ranking",
        help="EXCHANGE: its universe; add/remove: a manual add (checked against the exchange's REST metadata); "
        "market: 24h volume, last price, market cap, tradable; ranking: pairs by combined USD volume",
    )
    sy.add_argument("--user", help="add/remove: whose manual add")
    sy.add_argument("--reason", help="add/remove: why (shown by `tickfold symbols EXCHANGE`)")
    sy.add_argument("--top", type=int, help="market/ranking: the first N (default 20; 0: all)")
    sy.add_argument("--exchange", action="append", help="ranking: only these exchanges (repeatable; default all)")
    sy.add_argument("--json", action="store_true", help="a JSON array")
    t1 = sub.add_parser("tier1", help="Tier 1: the top N symbols by 24h quote volume")
    t1_sub = t1.add_subparsers(dest="action", required=True, metavar="ACTION")
    t1_refresh = t1_sub.add_parser("refresh", help="rank from the exchange's REST API, append the changes")
    t1_refresh.add_argument("exchange")
    t1_refresh.add_argument("--top", type=int, default=20, help="N (default 20)")
    t1_refresh.add_argument("--quote", help="only these quotes, comma-separated (e.g. USDT,USDC)")
    sim = sub.add_parser("simulate", help="run the local exchange simulator (Binance + Coinbase, WS + REST)")
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--recorded", action="store_true", help="replay the shipped recordings (looping, re-timed to now)")
    sim.add_argument(
        "--symbols", type=int, default=0, help="synthetic symbols per exchange (default: BTC and ETH against USD(T))"
    )
    sim.add_argument("--rate", type=float, default=20.0, help="synthetic trades per second per exchange")
    sim.add_argument("--speed", type=float, default=1.0, help="replay speed of --recorded (2 = twice real time)")
    sim.add_argument("--seed", type=int, default=42, help="seed of the synthetic markets")
    sim.add_argument(
        "--rest-doc",
        action="append",
        default=[],
        metavar="ENDPOINT=FILE",
        help="serve a recorded REST body (repeatable): binance/exchangeInfo, binance/ticker/24hr, coinbase/products",
    )
    return p


GC_THRESHOLDS = (50_000, 20, 100)  # CPython's defaults: (700, 10, 10)


def tune_gc() -> None:
    """Collect cyclic garbage less often. A processor allocates a few containers per frame (entries, their
    fields, decoded events) that reference counting frees; at CPython's default threshold every 700 of
    them start a collection that rescans the young objects, and every 100 of those the whole heap
    (candles, states, modules): measured ~30 % of the fold's CPU. Everything loaded at start-up is
    frozen out of the collector's view (``gc.freeze``): it lives as long as the process."""
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    overrides: dict[str, Any] = {
        "redis_url": args.redis_url,
        "database_url": args.database_url,
        "data_dir": args.data_dir,
        "batch_size": getattr(args, "batch_size", None),
        "backfill": getattr(args, "backfill", None),
    }
    try:
        settings = Settings.load(os.environ, config_file=args.config, overrides=overrides)
        tune_gc()
        return commands.dispatch(args.command, args, settings)
    except ConfigError as exc:
        print(f"tickfold: configuration error: {exc}", file=sys.stderr)
        return 2
    except TickfoldError as exc:
        print(f"tickfold: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tickfold: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
