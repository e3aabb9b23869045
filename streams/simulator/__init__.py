"""A local exchange simulator: Binance Spot and Coinbase Advanced Trade on one loopback port.

WebSocket and REST close enough to the real exchanges that the adapters (``websockets`` clients) and the
REST clients can't tell; replays recorded sessions or runs seeded synthetic markets; injects faults on
command. See :class:`Simulator` (``server.py``) and :func:`serve_forever` (``tickfold simulate``).
"""

from streams.simulator.config import SimConfig
from streams.simulator.hub import ConnectionInfo, SentFrame
from streams.simulator.run import serve_forever
from streams.simulator.server import ExchangeUrls, Simulator

__all__ = ["ConnectionInfo", "ExchangeUrls", "SentFrame", "SimConfig", "Simulator", "serve_forever"]
