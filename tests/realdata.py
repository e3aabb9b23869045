"""Where the recorded exchange sessions live: ../shared/realdata beside the checkout (see its SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
BINANCE_0404 = REALDATA / "binance" / "ws_combined_2021-04-04_btcusdt_ethusdt_dotusdt.frames.jsonl"
BINANCE_0814 = REALDATA / "binance" / "ws_combined_2021-08-14_ftmusdt_sxpbtc_badgerbtc_xmrbtc.frames.jsonl"
BINANCE_1012 = REALDATA / "binance" / "ws_combined_2021-10-12_nknusdt_blzeth_lrcbtc_runeeur.frames.jsonl"
COINBASE_AT = REALDATA / "coinbase" / "advanced_trade_ws_2026-08-09.frames.jsonl"
COINBASE_AT_RECORDING = REALDATA / "coinbase" / "advanced_trade_ws_2026-08-09.recording.jsonl"


def require(path: Path) -> Path:
    """The recorded file, or a failure saying where it was expected (never a silent skip)."""
    if not path.is_file():
        raise FileNotFoundError(f"recorded data missing: {path} (tests expect ../shared/realdata beside the checkout)")
    return path


def binance_last_klines(path: Path, symbol: str) -> dict[int, dict[str, object]]:
    """The last kline frame of each minute of ``symbol``, read with plain json (an independent oracle)."""
    import json

    last: dict[int, dict[str, object]] = {}
    closed: dict[int, bool] = {}
    for line in require(path).read_text().splitlines():
        msg = json.loads(line)
        data = msg.get("data", {})
        if data.get("e") == "kline" and data["s"] == symbol:
            k = data["k"]
            last[k["t"]] = k
            closed[k["t"]] = closed.get(k["t"], False) or k["x"]
    return {t: {**k, "x": closed[t]} for t, k in last.items()}
