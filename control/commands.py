"""Control-stream commands (CTL-02) and their outcomes: msgspec tagged Structs.

The ``control`` stream (``streams.keys.CONTROL_STREAM``) holds two kinds of entries:

* commands, in a ``command`` field: ``start`` / ``stop`` change which exchanges should run (the desired
  state is a fold of them); ``connect`` / ``disconnect`` act on a running exchange's connections only
  (``disconnect`` drops them now, and they come back after the usual backoff; ``connect`` reconnects at
  once, skipping a pending backoff);
* events, in an ``event`` field: the adapters' lifecycle events (:mod:`control.events`) and the
  supervisor's answers to commands, :class:`Accepted` / :class:`Rejected` (with the reason), which name
  the command by its ``command_id``.

An entry that is neither (bad JSON, an unknown type, a missing field) is answered with a
:class:`Rejected` event, never a crash: :func:`parse_entry` says which it is.
"""

from __future__ import annotations

import time
import uuid
from typing import Final

import msgspec
import redis.asyncio as aioredis

from control import events as ev
from control.universe import UniverseEvent
from streams import keys
from streams.log import translated


class _Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    command_id: str
    exchange: str
    requested_by: str = ""
    at_ns: int = 0


class Start(_Command, frozen=True, kw_only=True, tag="start"):
    symbols: list[str] = []  # exchange-native or canonical symbols; empty: the exchange's default set
    timeframes: list[str] = []  # empty: the default (1m)


class Stop(_Command, frozen=True, kw_only=True, tag="stop"):
    pass


class Connect(_Command, frozen=True, kw_only=True, tag="connect"):
    pass


class Disconnect(_Command, frozen=True, kw_only=True, tag="disconnect"):
    pass


Command = Start | Stop | Connect | Disconnect


class Accepted(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="command:accepted"):
    command_id: str
    exchange: str
    at_ns: int
    command: str  # its type: start, stop, connect, disconnect


class Rejected(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="command:rejected"):
    command_id: str  # "" when the entry was too broken to carry one
    exchange: str = ""
    at_ns: int
    reason: str
    entry_id: str = ""  # the control-stream entry that was rejected


Outcome = Accepted | Rejected

_COMMAND: Final = msgspec.json.Decoder(Command)
_OUTCOME_OR_EVENT: Final = msgspec.json.Decoder(Accepted | Rejected | ev.ControlEvent | UniverseEvent)
_ENCODER: Final = msgspec.json.Encoder()


def new_command_id() -> str:
    return uuid.uuid4().hex


def encode(obj: Command | Outcome) -> bytes:
    return _ENCODER.encode(obj)


def parse_entry(fields: dict[bytes, bytes]) -> Command | Outcome | ev.ControlEvent | UniverseEvent | str:
    """A control-stream entry decoded: a command, an outcome, a lifecycle event, or (a str) why it is
    none of them."""
    if b"command" in fields:
        try:
            command: Command = _COMMAND.decode(fields[b"command"])
        except msgspec.DecodeError as exc:
            return f"malformed command: {exc}"
        return command
    if b"event" in fields:
        try:
            event: Outcome | ev.ControlEvent | UniverseEvent = _OUTCOME_OR_EVENT.decode(fields[b"event"])
        except msgspec.DecodeError as exc:
            return f"malformed event: {exc}"
        return event
    return f"an entry with neither a 'command' nor an 'event' field (fields: {sorted(f.decode() for f in fields)})"


async def append_entry(client: aioredis.Redis, field: str, payload: bytes) -> bytes:
    """Append one entry (``command`` or ``event`` field) to the control stream and publish it."""
    with translated("appending to the control stream"):
        pipe = client.pipeline(transaction=False)
        pipe.xadd(keys.CONTROL_STREAM, {field: payload})
        pipe.publish(keys.CONTROL_CHANNEL, payload)
        entry_id, _ = await pipe.execute()
    return bytes(entry_id)


async def append_command(client: aioredis.Redis, command: Command) -> bytes:
    """Append a command to the control stream (and publish it); returns its entry id."""
    return await append_entry(client, "command", encode(command))


async def append_outcome(client: aioredis.Redis, outcome: Outcome) -> bytes:
    """Append an Accepted / Rejected event to the control stream (and publish it)."""
    return await append_entry(client, "event", encode(outcome))


def now_ns() -> int:
    """Wall-clock time for command and outcome stamps (operational, never used inside a fold)."""
    return time.time_ns()
