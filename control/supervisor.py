"""The supervisor (CTL-02): answers control commands and runs the adapters the desired state asks for.

Two loops share one fold of the control stream (:mod:`control.desired`):

* **answering** — the consumer group ``supervisor`` on the control stream hands each entry to one serve
  instance, in stream order. A command is judged — unknown exchange, disabled, unknown adapter kind, bad
  symbols or timeframes (the factory's own checks), ``connect``/``disconnect`` of an exchange that is not
  running, an entry that is no command at all — and answered with ``Rejected`` (the reason) or
  ``Accepted``; then XACKed. Only entries the fold still counts as *owed* an answer are answered, so a
  redelivery (a crash between answer and ack; a dead instance's entries claimed with XAUTOCLAIM) is
  never answered twice.
* **acting** — every instance tails the whole stream (XREAD) into the desired state, and one slot per
  exchange makes reality follow it: desired running -> hold the exchange's lease -> run the adapter
  built by the factory with the accepted symbols/timeframes (restarted when they change); desired
  stopped -> stop the adapter (it closes and drains) and release the lease. ``connect``/``disconnect``
  are carried out by the instance running the adapter when their ``Accepted`` arrives.

Acting is level-triggered — reality follows the fold, not the messages — so a crash between the answer
and the act loses nothing, and a (re)start, kill -9 included, folds the stream from ``0`` and brings back
exactly the exchanges whose latest accepted command is ``start``: the stream, not the process, is the truth.

A running exchange watches the start command's symbols plus the symbol universe's watched symbols of
that exchange (:mod:`control.universe`, folded from the same stream); a ``symbol:added`` /
``symbol:removed`` changes the running adapter's subscriptions in place (``update_symbols``), no restart.

The lease ``lease:adapter:{exchange}`` (SET NX PX, renewed every third of the TTL) keeps two serve
instances from both connecting an exchange: the others retry every third of the TTL and take over within
about a TTL of the holder's death; a holder that can't renew stops its adapter at once. (A holder frozen
for longer than the TTL may overlap its successor until its next renewal; what both append is the same
frames, which the candle fold takes once.)

Whenever the supervisor stops an adapter it makes sure the stream ends the story with an
``exchange:disconnected`` with ``retry_in_s = None`` (the adapter writes one per open connection; the
supervisor adds one when none was — an adapter stopped while backing off, or one that had failed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from control import universe as uv
from control.commands import Accepted as AcceptedOutcome
from control.commands import (
    Connect,
    Disconnect,
    Rejected,
    Start,
    Stop,
    append_outcome,
    now_ns,
    parse_entry,
)
from control.desired import Desired, Item, Malformed, apply, classify, position, read_desired
from control.slot import ExchangeSlot, pause
from control.start_plan import exchange_row, plan_start
from control.tier1 import read_universe
from streams import keys, log
from streams.log import translated
from tickfold.errors import StoreUnavailable, TickfoldError

_log = logging.getLogger(__name__)

Say = Callable[[str], None]


@dataclass(frozen=True)
class SupervisorConfig:
    consumer: str  # this instance's name in the consumer group and in its lease tokens
    lease_ttl_ms: int = 5000
    block_ms: int = 1000
    stop_timeout_s: float = 15.0  # an adapter that hasn't closed and drained by then is cancelled
    adapter_options: dict[str, Any] = field(default_factory=dict)  # AdapterConfig fields (tests: short backoffs)


class Supervisor:
    """See the module docstring. ``client`` answers and tails (it needs a reply timeout above
    ``block_ms``); ``adapter_client`` is the adapters' (the sinks bound their own round trips)."""

    def __init__(
        self,
        client: aioredis.Redis,
        adapter_client: aioredis.Redis,
        dsn: str,
        config: SupervisorConfig,
        *,
        say: Say | None = None,
    ) -> None:
        self.client = client
        self.adapter_client = adapter_client
        self.dsn = dsn
        self.config = config
        self.say: Say = say or (lambda text: _log.info("%s", text))
        self.desired = Desired()
        self.universe = uv.Universe()
        self.slots: dict[str, ExchangeSlot] = {}
        self._progress = asyncio.Event()
        self._stop = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Resume the desired state from the stream, then answer and act until ``stop`` is set; on the way
        out every adapter is stopped cleanly and every lease released (the desired state is unchanged)."""
        self._stop = stop
        self.desired = await read_desired(self.client)
        self.universe = await read_universe(self.client, upto=self.desired.last_id)
        await log.ensure_group(self.client, keys.CONTROL_STREAM, keys.SUPERVISOR_GROUP)
        running = self.desired.running()
        if running:
            listed = "; ".join(f"{ex} ({', '.join(w.symbols) or 'default symbols'})" for ex, w in running.items())
            self.say(f"supervisor {self.config.consumer}: ready; resuming from the control stream: {listed}")
        else:
            self.say(f"supervisor {self.config.consumer}: ready; idle, waiting for commands (tickfold start EXCHANGE)")
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for exchange in running:
                self._slot(exchange)
            tg.create_task(self._tail(), name="supervisor-tail")
            tg.create_task(self._answer_loop(), name="supervisor-commands")
        self._tg = None

    def _slot(self, exchange: str) -> ExchangeSlot:
        slot = self.slots.get(exchange)
        if slot is None:
            assert self._tg is not None
            slot = self.slots[exchange] = ExchangeSlot(self, exchange)
            self._tg.create_task(slot.run(), name=f"supervisor-{exchange}")
        return slot

    # ------------------------------------------------------------------------------------- the tail

    async def _tail(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with translated(f"reading {keys.CONTROL_STREAM}"):
                    reply: Any = await self.client.xread(
                        {keys.CONTROL_STREAM: self.desired.last_id}, count=500, block=self.config.block_ms
                    )
                failures = 0
            except StoreUnavailable as exc:
                failures += 1
                _log.warning("supervisor: %s", exc)
                await pause(self._stop, min(0.1 * 2**failures, 2.0))
                continue
            for entry_id, fields in reply[0][1] if reply else []:
                eid = entry_id.decode()
                item = classify(fields)
                if item is None and b"event" in fields:
                    self._universe_event(fields)
                before = self.desired
                self.desired = apply(before, eid, item)
                self._react(item, before)
            self._progress.set()
            self._progress = asyncio.Event()

    def _universe_event(self, fields: dict[bytes, bytes]) -> None:
        parsed = parse_entry(fields)
        if isinstance(parsed, uv.SymbolAdded | uv.SymbolRemoved):
            uv.apply(self.universe, parsed)
            slot = self.slots.get(parsed.exchange)
            if slot is not None:
                slot.wake.set()

    def _react(self, item: Item, before: Desired) -> None:
        if not isinstance(item, AcceptedOutcome):
            return
        if item.command == "start":
            self._slot(item.exchange).wake.set()
        elif item.command == "stop" and item.exchange in self.slots:
            self.slots[item.exchange].wake.set()
        elif item.command in ("connect", "disconnect"):
            command = next(
                (
                    c
                    for c in before.pending.values()
                    if isinstance(c, Connect | Disconnect) and c.command_id == item.command_id
                ),
                None,
            )
            slot = self.slots.get(item.exchange)
            if command is not None and slot is not None:
                slot.actions.append(command)
                slot.wake.set()

    async def _folded(self, entry_id: str) -> bool:
        """Wait until the tail has folded ``entry_id``; False when told to stop first."""
        target = position(entry_id)
        while position(self.desired.last_id) < target:
            if self._stop.is_set():
                return False
            await pause(self._stop, 1.0, self._progress)
        return True

    # -------------------------------------------------------------------------------- the answering

    async def _answer_loop(self) -> None:
        client, group, consumer = self.client, keys.SUPERVISOR_GROUP, self.config.consumer
        stream = keys.CONTROL_STREAM
        claim_idle_ms = 2 * self.config.lease_ttl_ms
        first, claimed_at, failures = True, 0.0, 0
        while not self._stop.is_set():
            try:
                if first:  # our own unacknowledged entries (a restart under the same consumer name)
                    batch = await log.read_group(client, stream, group, consumer, count=16, block_ms=None, pending=True)
                    first = bool(batch)  # until none is left
                elif time.monotonic() - claimed_at >= claim_idle_ms / 1000:  # a dead instance's entries
                    batch = await self._claim(claim_idle_ms)
                    claimed_at = time.monotonic() if not batch else claimed_at
                else:
                    batch = []
                if not batch:
                    batch = await log.read_group(
                        client, stream, group, consumer, count=16, block_ms=self.config.block_ms
                    )
                for entry_id, fields in batch:
                    if not await self._answer(entry_id.decode(), fields):
                        return  # told to stop: left unacknowledged, for whoever comes next
                    with translated(f"acknowledging {stream}"):
                        await client.xack(stream, group, entry_id)
                failures = 0
            except StoreUnavailable as exc:
                failures += 1
                _log.warning("supervisor: %s", exc)
                await pause(self._stop, min(0.1 * 2**failures, 2.0))

    async def _claim(self, min_idle_ms: int) -> list[log.Entry]:
        with translated(f"claiming stale entries of {keys.CONTROL_STREAM}"):
            reply: Any = await self.client.xautoclaim(
                keys.CONTROL_STREAM, keys.SUPERVISOR_GROUP, self.config.consumer, min_idle_ms, "0-0", count=16
            )
        return [(eid, fields) for eid, fields in reply[1] if fields is not None]

    async def _answer(self, entry_id: str, fields: dict[bytes, bytes]) -> bool:
        """Answer one entry if it is owed an answer; False if told to stop before it could be answered."""
        item = classify(fields)
        if not isinstance(item, Start | Stop | Connect | Disconnect | Malformed):
            return True  # an event: nothing to answer
        if not await self._folded(entry_id):
            return False
        if entry_id not in self.desired.pending:
            return True  # answered already (a redelivery)
        if isinstance(item, Malformed):
            outcome: AcceptedOutcome | Rejected = Rejected(
                command_id=item.command_id,
                exchange=item.exchange,
                at_ns=now_ns(),
                reason=item.reason,
                entry_id=entry_id,
            )
        else:
            failures = 0
            while True:
                try:
                    reason = await self._judge(item)
                    break
                except StoreUnavailable as exc:  # not the command's fault: try again, in order
                    failures += 1
                    _log.warning("supervisor: judging %s %s: %s", item.command_id, item.exchange, exc)
                    if await pause(self._stop, min(0.1 * 2**failures, 2.0)):
                        return False
            kind = type(item).__struct_config__.tag
            assert isinstance(kind, str)
            if reason is None:
                outcome = AcceptedOutcome(
                    command_id=item.command_id, exchange=item.exchange, at_ns=now_ns(), command=kind
                )
            else:
                outcome = Rejected(
                    command_id=item.command_id, exchange=item.exchange, at_ns=now_ns(), reason=reason, entry_id=entry_id
                )
        answered = (await append_outcome(self.client, outcome)).decode()
        what = f"{type(item).__struct_config__.tag} {item.exchange}" if not isinstance(item, Malformed) else "entry"
        verdict = "accepted" if isinstance(outcome, AcceptedOutcome) else f"rejected: {outcome.reason}"
        self.say(f"{what} ({entry_id}) {verdict}")
        return await self._folded(answered)  # the next command is judged on a fold that includes this answer

    async def _judge(self, command: Start | Stop | Connect | Disconnect) -> str | None:
        """None to accept, else the reason to reject; StoreUnavailable when it can't be told now."""
        try:
            if isinstance(command, Start):
                await plan_start(
                    self.client, self.dsn, command.exchange, tuple(command.symbols), tuple(command.timeframes)
                )
                return None
            await exchange_row(self.dsn, command.exchange)
        except StoreUnavailable:
            raise
        except TickfoldError as exc:
            return str(exc)
        if isinstance(command, Connect | Disconnect) and not self.desired.is_running(command.exchange):
            kind = type(command).__struct_config__.tag
            return f"{command.exchange} is not running ({kind} acts on a running exchange; start it first)"
        return None
