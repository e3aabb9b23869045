"""The desired state — which exchanges should run, with which symbols — as a pure fold of the control stream.

``fold(entries)`` / ``apply(state, entry_id, item)`` with no I/O; :func:`read_desired` reads the stream
(from ``0``) and folds it. The rules:

* a ``start`` or ``stop`` command counts once the supervisor has *accepted* it (an
  :class:`~control.commands.Accepted` naming its command id): a rejected start (unknown exchange, bad
  symbols) changes nothing, and an unanswered one is *pending* (the supervisor still owes it an answer);
* among the accepted ones, the command latest **in the stream** wins, per exchange — ordered by the
  command's own entry id, not by its answer's, so answers written out of order can't reorder commands;
* ``start`` -> running with the command's symbols and timeframes; ``stop`` -> stopped;
* ``connect`` / ``disconnect`` act on a running exchange's connections only: no change here;
* lifecycle events (what did happen) are not desires and change nothing but the position.

:func:`classify` says what an entry is, for the fold and the supervisor alike: a command, an outcome, a
lifecycle event, :class:`Malformed` (owed a Rejected answer), or ``None`` for an event of a type this
version does not know (written by a newer component; not ours to judge).
"""

from __future__ import annotations

from typing import Any, Final, get_args

import msgspec
import redis.asyncio as aioredis

from control import events as ev
from control.commands import Accepted, Command, Connect, Disconnect, Outcome, Rejected, Start, Stop, parse_entry
from control.universe import SymbolAdded, SymbolRemoved
from streams import keys
from streams.log import Entry, translated


class Malformed(msgspec.Struct, frozen=True, kw_only=True):
    """An entry that is owed a Rejected answer: not a command, not a known event. The command id and
    exchange are salvaged from it when its JSON carries them, so the one who sent it can be told."""

    reason: str
    command_id: str = ""
    exchange: str = ""


Item = Command | Outcome | ev.ControlEvent | Malformed | None


class Want(msgspec.Struct, frozen=True, kw_only=True):
    """What one exchange should be doing, and the accepted command that said so."""

    running: bool
    symbols: tuple[str, ...] = ()  # as given in the command (native or canonical); empty: the default set
    timeframes: tuple[str, ...] = ()  # empty: the default (1m)
    command_id: str
    entry_id: str  # the command's control-stream entry (its position decides which command is latest)
    requested_by: str = ""


class Desired(msgspec.Struct, frozen=True, kw_only=True):
    exchanges: dict[str, Want] = {}
    pending: dict[str, Command | Malformed] = {}  # entry id -> an entry still owed an answer
    last_id: str = "0-0"  # the last entry folded

    def running(self) -> dict[str, Want]:
        """The exchanges that should run, by id."""
        return {ex: w for ex, w in sorted(self.exchanges.items()) if w.running}

    def is_running(self, exchange: str) -> bool:
        want = self.exchanges.get(exchange)
        return want is not None and want.running


_KNOWN_EVENTS: Final = frozenset(cls.__struct_config__.tag for cls in (Accepted, Rejected, *get_args(ev.ControlEvent)))
_JSON: Final = msgspec.json.Decoder()


def position(entry_id: str | bytes) -> tuple[int, int]:
    """A stream entry id as a comparable (ms, seq)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _salvage(raw: bytes) -> dict[str, Any]:
    try:
        data = _JSON.decode(raw)
    except msgspec.DecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def classify(fields: dict[bytes, bytes]) -> Item:
    """What a control-stream entry is (see the module docstring); never raises."""
    parsed = parse_entry(fields)
    if isinstance(parsed, SymbolAdded | SymbolRemoved):
        return None  # the symbol universe's events: not the supervisor's to answer
    if not isinstance(parsed, str):
        return parsed
    if b"command" in fields:
        data = _salvage(fields[b"command"])
        cid, exchange = data.get("command_id"), data.get("exchange")
        return Malformed(
            reason=parsed,
            command_id=cid if isinstance(cid, str) else "",
            exchange=exchange if isinstance(exchange, str) else "",
        )
    if b"event" in fields:
        kind = _salvage(fields[b"event"]).get("type")
        if isinstance(kind, str) and kind not in _KNOWN_EVENTS:
            return None  # an event type from a newer writer: forward compatible, not an error
    return Malformed(reason=parsed)


def apply(state: Desired, entry_id: str, item: Item) -> Desired:
    """The desired state after one more entry."""
    match item:
        case Start() | Stop() | Connect() | Disconnect() | Malformed():
            return msgspec.structs.replace(state, pending={**state.pending, entry_id: item}, last_id=entry_id)
        case Accepted(command_id=cid):
            found = next(
                (
                    (eid, c)
                    for eid, c in state.pending.items()
                    if not isinstance(c, Malformed) and c.command_id == cid and c.exchange == item.exchange
                ),
                None,
            )
            if found is None:
                return msgspec.structs.replace(state, last_id=entry_id)
            eid, command = found
            pending = {k: v for k, v in state.pending.items() if k != eid}
            exchanges = state.exchanges
            if isinstance(command, Start | Stop):
                current = exchanges.get(command.exchange)
                if current is None or position(eid) > position(current.entry_id):
                    exchanges = {**exchanges, command.exchange: _want(command, eid)}
            return msgspec.structs.replace(state, exchanges=exchanges, pending=pending, last_id=entry_id)
        case Rejected():
            if item.entry_id in state.pending:
                gone = item.entry_id
            else:
                gone = next(
                    (k for k, c in state.pending.items() if item.command_id and c.command_id == item.command_id), ""
                )
            pending = {k: v for k, v in state.pending.items() if k != gone}
            return msgspec.structs.replace(state, pending=pending, last_id=entry_id)
        case _:
            return msgspec.structs.replace(state, last_id=entry_id)


def _want(command: Start | Stop, entry_id: str) -> Want:
    if isinstance(command, Start):
        return Want(
            running=True,
            symbols=tuple(command.symbols),
            timeframes=tuple(command.timeframes),
            command_id=command.command_id,
            entry_id=entry_id,
            requested_by=command.requested_by,
        )
    return Want(running=False, command_id=command.command_id, entry_id=entry_id, requested_by=command.requested_by)


def fold(entries: list[Entry], state: Desired | None = None) -> Desired:
    """Fold control-stream entries (in stream order) into the desired state."""
    state = state or Desired()
    for entry_id, fields in entries:
        state = apply(state, entry_id.decode(), classify(fields))
    return state


async def read_desired(
    client: aioredis.Redis, *, upto: str = "+", state: Desired | None = None, page: int = 1000
) -> Desired:
    """Fold the control stream from the start (or on from ``state``) up to ``upto`` (inclusive)."""
    state = state or Desired()
    start = "0" if state.last_id == "0-0" else f"({state.last_id}"
    while True:
        with translated(f"reading {keys.CONTROL_STREAM}"):
            batch: Any = await client.xrange(keys.CONTROL_STREAM, min=start, max=upto, count=page)
        if not batch:
            return state
        state = fold(batch, state)
        start = f"({state.last_id}"
