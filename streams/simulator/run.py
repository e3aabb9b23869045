"""``tickfold simulate``: run the simulator until cancelled (Ctrl-C) or ``stop`` is set."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from streams.simulator.server import Simulator

DEFAULT_SYMBOLS = {"binance": ("BTCUSDT", "ETHUSDT"), "coinbase": ("BTC-USD", "ETH-USD")}


async def serve_forever(
    port: int = 0,
    *,
    seed: int = 42,
    rate: float = 20.0,
    binance_symbols: Sequence[str] | int = DEFAULT_SYMBOLS["binance"],
    coinbase_symbols: Sequence[str] | int = DEFAULT_SYMBOLS["coinbase"],
    recordings: Sequence[tuple[str, Path]] = (),
    speed: float = 1.0,
    rest_documents: Sequence[tuple[str, str]] = (),
    print_line: Callable[[str], object] = print,
    stop: asyncio.Event | None = None,
    ready: Callable[[Simulator], object] | None = None,
) -> None:
    """Serve on ``127.0.0.1:port`` (0: a free port): a synthetic market per exchange at ``rate`` trades/s,
    unless ``recordings`` (``(exchange, path)`` pairs) are given for it, which then loop at ``speed``.
    ``rest_documents``: ``(endpoint, file)`` pairs of recorded REST bodies to serve (see ``recorded_rest``).
    Prints :meth:`Simulator.describe` through ``print_line`` once listening; ``ready(sim)`` is called then."""
    docs = tuple(rest_documents)
    # runs for long: keep no frame log
    async with Simulator(port, seed=seed, record_sent=False, rest_documents=docs) as sim:
        replayed = set()
        for exchange, path in recordings:
            sim.add_recording(exchange, path, loop=True, speed=speed)
            replayed.add(exchange)
        for exchange, symbols in (("binance", binance_symbols), ("coinbase", coinbase_symbols)):
            if exchange not in replayed and symbols:
                sim.add_synthetic(exchange, symbols if isinstance(symbols, int) else list(symbols), rate=rate)
        for line in sim.describe():
            print_line(line)
        if ready is not None:
            ready(sim)
        await (stop or asyncio.Event()).wait()
