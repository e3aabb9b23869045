from __future__ import annotations

import pytest

from streams import keys
from tickfold.errors import KeyFormatError

pytestmark = pytest.mark.unit


def test_requirement_key_formats() -> None:
    assert keys.candles("binance", "BTC-USDT", "1m") == "candles:binance:BTC-USDT:1m"
    assert keys.indicator("coinbase", "BTC-USD", "5m", "macdv") == "indicator:coinbase:BTC-USD:5m:macdv"
    assert keys.usercandles("u42", "binance", "ETH-USDT", "1h") == "usercandles:u42:binance:ETH-USDT:1h"
    assert keys.candle_close_channel("binance", "BTC-USDT", "1m") == "channel:exchange:binance:candle:close:BTC-USDT:1m"
    assert keys.alerts_channel("coinbase") == "channel:alerts:coinbase"
    assert keys.frames_stream("binance", 3) == "frames:binance:p3"
    assert keys.frames_partitions("binance") == "frames:binance:partitions"
    assert keys.projection_position("candles", "binance", 0) == "proj:candles:binance:p0:last_id"
    assert keys.lease("candles", "coinbase", 2) == "lease:candles:coinbase:p2"
    assert keys.dead_letter_stream("binance") == "frames:binance:dead"
    assert keys.closes_stream("coinbase") == "closes:coinbase"
    assert keys.CONTROL_STREAM == "control"


@pytest.mark.parametrize(
    "call",
    [
        lambda: keys.candles("binance", "BTC:USDT", "1m"),
        lambda: keys.candles("binance", "", "1m"),
        lambda: keys.candles("", "BTC-USDT", "1m"),
        lambda: keys.candles("Binance", "BTC-USDT", "1m"),
        lambda: keys.candles("binance", "BTC USDT", "1m"),
        lambda: keys.candles("binance", "BTC-USDT", "1minute"),
        lambda: keys.candles("binance", "BTC-USDT", ""),
        lambda: keys.indicator("binance", "BTC-USDT", "1m", "mac:dv"),
        lambda: keys.usercandles("", "binance", "BTC-USDT", "1m"),
        lambda: keys.usercandles("user:1", "binance", "BTC-USDT", "1m"),
        lambda: keys.candles("binance", "BTC*", "1m"),
        lambda: keys.frames_stream("binance", -1),
        lambda: keys.lease("candles", "binance", -2),
    ],
)
def test_inputs_that_would_break_a_key_are_rejected(call: object) -> None:
    with pytest.raises(KeyFormatError):
        call()  # type: ignore[operator]
