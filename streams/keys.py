"""Every Redis key, stream and channel name tickfold uses — the one place that owns their formats.

Requirement keys (MISSION.md):

    candles:{exchange_id}:{symbol}:{timeframe}                           DATA-01
    indicator:{exchange_id}:{symbol}:{timeframe}:{type}                  DATA-02
    usercandles:{user_id}:{exchange_id}:{symbol}:{timeframe}             DATA-03
    channel:exchange:{exchange_id}:candle:close:{symbol}:{timeframe}     DATA-05
    channel:alerts:{exchange_id}                                         VIS-01

Streams and bookkeeping (DESIGN.md):

    frames:{exchange_id}:p{n}       raw WebSocket frames, exactly as received, partition n (by symbol)
    frames:{exchange_id}:partitions how many partitions the exchange's raw frames have (fixed once written)
    frames:{exchange_id}:dead       frames that could not be folded, with the reason
    closes:{exchange_id}            candle-close events
    alerts:{exchange_id}            alert events
    alerts:{exchange_id}:ids        ids of the alerts raised (sorted set by candle start): no alert twice
    control                         commands + lifecycle events (the source of truth)
    lease:adapter:{exchange_id}     which serve instance runs the exchange's adapter (token, with a TTL)
    proj:{name}:{exchange_id}:p{n}:last_id    the raw-stream position a projection reflects
    proj:{name}:{exchange_id}:p{n}:watermark  the newest event time (ns) seen in that partition
    proj:{name}:{exchange_id}:p{n}:open       open candles of that partition (series|start, scored by end ms)
    tradestate:{exchange_id}:{symbol}:{timeframe}   exact state of trade-built buckets (sorted set by start)
    lease:{group}:{exchange_id}:p{n}          which consumer owns a partition (token, with a TTL)
    fence:{group}:{exchange_id}:p{n}          who took that lease last (token, no TTL): what commits WATCH
    workers:{group}:{exchange_id}             live consumers of a group (sorted set, score = expiry ms)
    markets:{exchange_id}           native symbol -> market (base, quote, status), from exchange metadata
    pool:{exchange_id}              the shared symbol pool (Tier 1); empty: every symbol is shared
    holders:{exchange_id}:{symbol}  users holding a position (sorted set: user -> expiry ms)
    userkeys:{user_id}:{exchange_id}:{symbol}   the user overflow keys written for that symbol
    userindicator:{user_id}:{exchange_id}:{symbol}:{timeframe}:{type}   DATA-03 indicator overflow
    gaps:{exchange_id}:{symbol}:{timeframe}   buckets that could not be fetched (sorted set of starts)

Every part is validated: empty parts and parts containing ``:`` or whitespace would make keys
ambiguous, so they raise :class:`KeyFormatError`.
"""

from __future__ import annotations

import functools
import re

from tickfold.errors import KeyFormatError

CONTROL_STREAM = "control"
CONTROL_CHANNEL = "channel:control"
UNIVERSE_CHECKPOINT = "checkpoint:universe"  # the symbol universe as of a control entry (control.tier1)

_EXCHANGE_RE = re.compile(r"^[a-z0-9_]+$")
_TIMEFRAME_RE = re.compile(r"^[0-9]+[smhdwM]$")


def _part(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise KeyFormatError(f"{name} must be a non-empty string, got {value!r}")
    if ":" in value or any(ch.isspace() for ch in value) or "*" in value:
        raise KeyFormatError(f"{name} {value!r} may not contain ':', '*' or whitespace")
    return value


@functools.lru_cache(maxsize=65_536)
def exchange_part(exchange_id: str) -> str:
    _part("exchange_id", exchange_id)
    if not _EXCHANGE_RE.match(exchange_id):
        raise KeyFormatError(f"exchange_id {exchange_id!r} must match {_EXCHANGE_RE.pattern}")
    return exchange_id


@functools.lru_cache(maxsize=65_536)
def timeframe_part(timeframe: str) -> str:
    _part("timeframe", timeframe)
    if not _TIMEFRAME_RE.match(timeframe):
        raise KeyFormatError(f"timeframe {timeframe!r} must look like 1m, 5m, 1h, 1d, 1w, 1M")
    return timeframe


@functools.lru_cache(maxsize=65_536)
def candles(exchange_id: str, symbol: str, timeframe: str) -> str:
    return f"candles:{exchange_part(exchange_id)}:{_part('symbol', symbol)}:{timeframe_part(timeframe)}"


def parse_candles(key: str) -> tuple[str, str, str]:
    """(exchange_id, symbol, timeframe) of a ``candles:`` key."""
    kind, exchange_id, symbol, timeframe = key.split(":")
    if kind != "candles":
        raise KeyFormatError(f"not a candles key: {key!r}")
    return exchange_id, symbol, timeframe


def indicator(exchange_id: str, symbol: str, timeframe: str, kind: str) -> str:
    return (
        f"indicator:{exchange_part(exchange_id)}:{_part('symbol', symbol)}:"
        f"{timeframe_part(timeframe)}:{_part('type', kind)}"
    )


def usercandles(user_id: str, exchange_id: str, symbol: str, timeframe: str) -> str:
    return (
        f"usercandles:{_part('user_id', user_id)}:{exchange_part(exchange_id)}:"
        f"{_part('symbol', symbol)}:{timeframe_part(timeframe)}"
    )


@functools.lru_cache(maxsize=65_536)
def candle_close_channel(exchange_id: str, symbol: str, timeframe: str) -> str:
    return (
        f"channel:exchange:{exchange_part(exchange_id)}:candle:close:"
        f"{_part('symbol', symbol)}:{timeframe_part(timeframe)}"
    )


def alerts_channel(exchange_id: str) -> str:
    return f"channel:alerts:{exchange_part(exchange_id)}"


def _glob_literal(value: str) -> str:
    """``value`` as a literal inside a Redis glob pattern (``?``, ``[``, ``]`` and ``\\`` escaped)."""
    return re.sub(r"([?\[\]\\])", r"\\\1", value)


def candle_close_pattern(exchange_id: str, symbol: str | None = None, timeframe: str | None = None) -> str:
    """A PSUBSCRIBE pattern over :func:`candle_close_channel`: one exchange's closes, of every symbol
    and timeframe unless they are given."""
    sym = "*" if symbol is None else _glob_literal(_part("symbol", symbol))
    tf = "*" if timeframe is None else timeframe_part(timeframe)
    return f"channel:exchange:{exchange_part(exchange_id)}:candle:close:{sym}:{tf}"


def _partition(partition: int) -> str:
    if not isinstance(partition, int) or partition < 0:
        raise KeyFormatError(f"partition must be an int >= 0, got {partition!r}")
    return f"p{partition}"


def frames_stream(exchange_id: str, partition: int) -> str:
    return f"frames:{exchange_part(exchange_id)}:{_partition(partition)}"


def frames_partitions(exchange_id: str) -> str:
    return f"frames:{exchange_part(exchange_id)}:partitions"


def dead_letter_stream(exchange_id: str) -> str:
    return f"frames:{exchange_part(exchange_id)}:dead"


def closes_stream(exchange_id: str) -> str:
    return f"closes:{exchange_part(exchange_id)}"


def alerts_stream(exchange_id: str) -> str:
    return f"alerts:{exchange_part(exchange_id)}"


def projection_position(projection: str, exchange_id: str, partition: int) -> str:
    return f"proj:{_part('projection', projection)}:{exchange_part(exchange_id)}:{_partition(partition)}:last_id"


def projection_watermark(projection: str, exchange_id: str, partition: int) -> str:
    return f"proj:{_part('projection', projection)}:{exchange_part(exchange_id)}:{_partition(partition)}:watermark"


def lease(group: str, exchange_id: str, partition: int) -> str:
    return f"lease:{_part('group', group)}:{exchange_part(exchange_id)}:{_partition(partition)}"


def fence(group: str, exchange_id: str, partition: int) -> str:
    """``fence:{group}:{exchange_id}:p{n}``: the token of the instance that took the partition's lease last
    (no TTL): commits WATCH it, so only a take changes it, never a renewal (:mod:`processors.leases`)."""
    return f"fence:{_part('group', group)}:{exchange_part(exchange_id)}:{_partition(partition)}"


def workers(group: str, exchange_id: str) -> str:
    return f"workers:{_part('group', group)}:{exchange_part(exchange_id)}"


def markets(exchange_id: str) -> str:
    """A hash: exchange-native symbol -> market JSON (base, quote, status), from the exchange's metadata."""
    return f"markets:{exchange_part(exchange_id)}"


def candle_index(exchange_id: str) -> str:
    """A set of the candle keys of one exchange (so readers need no SCAN)."""
    return f"index:candles:{exchange_part(exchange_id)}"


def gaps(exchange_id: str, symbol: str, timeframe: str) -> str:
    """A sorted set of the bucket starts (epoch ms, as score and member) known missing and not recoverable."""
    return f"gaps:{exchange_part(exchange_id)}:{_part('symbol', symbol)}:{timeframe_part(timeframe)}"


def open_candles(projection: str, exchange_id: str, partition: int) -> str:
    return f"proj:{_part('projection', projection)}:{exchange_part(exchange_id)}:{_partition(partition)}:open"


@functools.lru_cache(maxsize=65_536)
def trade_state(exchange_id: str, symbol: str, timeframe: str) -> str:
    return f"tradestate:{exchange_part(exchange_id)}:{_part('symbol', symbol)}:{timeframe_part(timeframe)}"


def alert_ids(exchange_id: str) -> str:
    return f"alerts:{exchange_part(exchange_id)}:ids"


def userindicator(user_id: str, exchange_id: str, symbol: str, timeframe: str, kind: str) -> str:
    return (
        f"userindicator:{_part('user_id', user_id)}:{exchange_part(exchange_id)}:"
        f"{_part('symbol', symbol)}:{timeframe_part(timeframe)}:{_part('type', kind)}"
    )


def tier1_refresh(exchange_id: str) -> str:
    """``lock:tier1:{exchange_id}``: set (NX, with a TTL of the refresh interval) by the serve instance
    that refreshes the exchange's Tier 1 this round, so several instances rank it once per interval."""
    return f"lock:tier1:{exchange_part(exchange_id)}"


def pool(exchange_id: str) -> str:
    return f"pool:{exchange_part(exchange_id)}"


def holders(exchange_id: str, symbol: str) -> str:
    return f"holders:{exchange_part(exchange_id)}:{_part('symbol', symbol)}"


INDICATOR_KINDS = ("macdv",)  # the ``type`` parts of indicator series


def placement(exchange_id: str) -> str:
    """``placement:{exchange_id}``: a hash, symbol -> the users (comma-separated) whose overflow keys hold
    the symbol's series; a symbol without a field lives in the shared, exchange-scoped keys."""
    return f"placement:{exchange_part(exchange_id)}"


def shared_of_user_key(key: str) -> str:
    """The shared series a user overflow key copies: ``usercandles:{u}:{ex}:{sym}:{tf}`` ->
    ``candles:{ex}:{sym}:{tf}``, ``userindicator:{u}:{ex}:{sym}:{tf}:{type}`` -> ``indicator:...``."""
    kind, _user, *rest = key.split(":")
    if kind == "usercandles" and len(rest) == 3:
        return candles(*rest)
    if kind == "userindicator" and len(rest) == 4:
        return indicator(*rest)
    raise KeyFormatError(f"not a user overflow series key: {key!r}")


def user_keys(user_id: str, exchange_id: str, symbol: str) -> str:
    return f"userkeys:{_part('user_id', user_id)}:{exchange_part(exchange_id)}:{_part('symbol', symbol)}"


def indicator_state(exchange_id: str, symbol: str, timeframe: str, kind: str) -> str:
    """The indicator processor's O(1)-step state of a series (internal; rebuilt from candles when absent)."""
    return (
        f"indstate:{exchange_part(exchange_id)}:{_part('symbol', symbol)}:"
        f"{timeframe_part(timeframe)}:{_part('type', kind)}"
    )


def indicator_input(exchange_id: str, symbol: str, timeframe: str) -> str:
    """The closed candles of a series as the indicator processor's close events brought them (internal): a
    sorted set scored by candle start, the newest ``indicator_window`` kept. A recompute reads these, not
    the candle projection, which may already hold buckets whose close events come later."""
    return f"indinput:{exchange_part(exchange_id)}:{_part('symbol', symbol)}:{timeframe_part(timeframe)}"


# ------------------------------------------------------------------------------ the supervisor (serve)

SUPERVISOR_GROUP = "supervisor"  # the consumer group on CONTROL_STREAM that answers commands


def exchange_lease(exchange_id: str) -> str:
    """``lease:adapter:{exchange_id}``: which ``serve`` instance runs the exchange's adapter (token, with a TTL).

    Distinct from the partition leases ``lease:{group}:{exchange_id}:p{n}``, which end in a partition."""
    return f"lease:adapter:{exchange_part(exchange_id)}"
