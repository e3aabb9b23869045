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
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from control import events as ev
from control import exchanges as repo
from control import universe as uv
from control.commands import Accepted as AcceptedOutcome
from control.commands import (
    Connect,
    Disconnect,
    Rejected,
    Start,
    Stop,
    append_entry,
    append_outcome,
    now_ns,
    parse_entry,
)
from control.desired import Desired, Item, Malformed, Want, apply, classify, position, read_desired
from streams import keys, log
from streams.adapters.base import WsAdapter
from streams.adapters.factory import ExchangeRow, build_adapter
from streams.log import translated
from streams.symbols import SymbolMap, UnknownSymbol, load_symbol_map
from tickfold.errors import StoreUnavailable, TickfoldError

_log = logging.getLogger(__name__)

DEFAULT_SYMBOLS: dict[str, tuple[str, ...]] = {  # a start without symbols, by adapter kind
    "binance_spot": ("BTC-USDT", "ETH-USDT"),
    "coinbase_advanced_trade": ("BTC-USD", "ETH-USD"),
}
DEFAULT_TIMEFRAMES = ("1m",)

Say = Callable[[str], None]


# ------------------------------------------------------------------------------------------ judging


@dataclass(frozen=True)
class Plan:
    """A start command checked and resolved: the row, the exchange-native symbols, the timeframes."""

    row: ExchangeRow
    symbols: tuple[str, ...]
    timeframes: tuple[str, ...]


async def exchange_row(dsn: str, exchange_id: str) -> ExchangeRow:
    """The exchange's row; UnknownExchange (naming the known ones) when there is none."""
    keys.exchange_part(exchange_id)
    try:
        return await repo.get_exchange(dsn, exchange_id)
    except asyncpg.PostgresError as exc:
        raise TickfoldError(f"cannot read the exchanges table ({exc}); has `tickfold migrate` run?") from exc


async def plan_start(
    client: aioredis.Redis, dsn: str, exchange_id: str, symbols: tuple[str, ...], timeframes: tuple[str, ...]
) -> Plan:
    """Check a start the way the factory will: raises a TickfoldError with the reason (UnknownExchange for
    an unknown, disabled or unsupported exchange, UnknownSymbol / KeyFormatError for bad symbols or
    timeframes); StoreUnavailable when Redis or PostgreSQL can't be reached (retry, don't reject)."""
    row = await exchange_row(dsn, exchange_id)
    wanted = symbols or DEFAULT_SYMBOLS.get(row.adapter_kind, ())
    if not wanted:
        raise UnknownSymbol(f"no symbols given, and adapter kind {row.adapter_kind!r} has no default set")
    symbol_map = await load_symbol_map(client, exchange_id)
    known = symbol_map.markets
    natives: list[str] = []
    for text in wanted:
        canonical = symbol_map.resolve(text)
        native = symbol_map.native(canonical)
        if known and native not in known:
            raise UnknownSymbol(f"{exchange_id} has no market {text!r} (tickfold markets sync {exchange_id})")
        keys.candles(exchange_id, canonical, "1m")  # a symbol that would break a key is refused here
        natives.append(native)
    tfs = tuple(dict.fromkeys(timeframes or DEFAULT_TIMEFRAMES))
    for tf in tfs:
        keys.timeframe_part(tf)
    plan = Plan(row, tuple(dict.fromkeys(natives)), tfs)
    build_adapter(row, client, symbols=plan.symbols, timeframes=plan.timeframes)  # the factory's own checks
    return plan


async def append_event(client: aioredis.Redis, event: ev.ControlEvent) -> bytes:
    """Append a lifecycle event to the control stream and publish it (as the adapters' emitter does)."""
    return await append_entry(client, "event", ev.encode(event))


# ------------------------------------------------------------------------------------------- leases

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ExchangeLease:
    """``lease:adapter:{exchange}``: one serve instance runs an exchange's adapter at a time."""

    def __init__(self, client: aioredis.Redis, exchange_id: str, ttl_ms: int, owner: str) -> None:
        self.client = client
        self.key = keys.exchange_lease(exchange_id)
        self.ttl_ms = ttl_ms
        self.token = f"{owner}/{secrets.token_hex(4)}".encode()
        self.held = False
        self.renewed_at = 0.0

    async def keep(self) -> bool:
        """Renew the lease if held, else try to take it; whether it is held now."""
        with translated(f"keeping {self.key}"):
            if self.held:
                ok = await self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms)
            else:
                ok = await self.client.set(self.key, self.token, nx=True, px=self.ttl_ms)
        self.held = bool(ok)
        if self.held:
            self.renewed_at = time.monotonic()
        return self.held

    def lapsed(self) -> bool:
        """Not renewed for a whole TTL (Redis unreachable): someone else may hold it by now."""
        return time.monotonic() - self.renewed_at >= self.ttl_ms / 1000

    async def release(self) -> None:
        if not self.held:
            return
        self.held = False
        with translated(f"releasing {self.key}"):
            await self.client.eval(_RELEASE, 1, self.key, self.token)


# --------------------------------------------------------------------------------------- supervisor


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
        self.slots: dict[str, _Slot] = {}
        self._progress = asyncio.Event()
        self._stop = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Resume the desired state from the stream, then answer and act until ``stop`` is set; on the way
        out every adapter is stopped cleanly and every lease released (the desired state is unchanged)."""
        self._stop = stop
        self.desired = await read_desired(self.client)
        self.universe = await _read_universe(self.client, self.desired.last_id)
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

    def _slot(self, exchange: str) -> _Slot:
        slot = self.slots.get(exchange)
        if slot is None:
            assert self._tg is not None
            slot = self.slots[exchange] = _Slot(self, exchange)
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
                await _pause(self._stop, min(0.1 * 2**failures, 2.0))
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
            await _pause(self._stop, 1.0, self._progress)
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
                await _pause(self._stop, min(0.1 * 2**failures, 2.0))

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
                    if await _pause(self._stop, min(0.1 * 2**failures, 2.0)):
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


class _Slot:
    """One exchange on this instance: holds its lease while it should run, and runs its adapter."""

    def __init__(self, sup: Supervisor, exchange: str) -> None:
        self.sup = sup
        self.exchange = exchange
        self.lease = ExchangeLease(sup.client, exchange, sup.config.lease_ttl_ms, sup.config.consumer)
        self.wake = asyncio.Event()
        self.actions: deque[Connect | Disconnect] = deque()
        self.serving: Want | None = None  # the desire this instance serves (as the lease holder)
        self.adapter: WsAdapter | None = None
        self.task: asyncio.Task[None] | None = None  # None while serving: failed to start, or crashed
        self.stopper = asyncio.Event()
        self.base_symbols: tuple[str, ...] = ()  # the start command's, exchange-native
        self.symbol_map: SymbolMap | None = None
        self.symbols: tuple[str, ...] = ()  # what the adapter is subscribed to
        self.updating: asyncio.Task[None] | None = None  # an update_symbols under way (it is rate-limited)

    def _wanted_symbols(self) -> tuple[str, ...]:
        """The start command's symbols plus the universe's watched ones (native; unknown markets skipped)."""
        natives = list(self.base_symbols)
        symbol_map = self.symbol_map
        if symbol_map is not None:
            known = symbol_map.markets
            for canonical in self.sup.universe.watched(self.exchange):
                try:
                    native = symbol_map.native(canonical)
                except UnknownSymbol:
                    continue
                if not known or native in known:
                    natives.append(native)
        return tuple(dict.fromkeys(natives))

    async def run(self) -> None:
        stop = self.sup._stop
        tick = self.sup.config.lease_ttl_ms / 3000
        try:
            while not stop.is_set():
                self.wake.clear()
                try:
                    await self._step()
                except StoreUnavailable as exc:
                    _log.warning("supervisor %s: %s", self.exchange, exc)
                    if self.serving is not None and self.lease.lapsed():
                        await self._halt("lease lapsed (Redis unreachable)")
                await _pause(stop, tick, self.wake)
        finally:
            await self._halt("serve stopping")
            with contextlib.suppress(StoreUnavailable):
                await self.lease.release()

    async def _step(self) -> None:
        want = self.sup.desired.exchanges.get(self.exchange)
        if want is None or not want.running:
            await self._halt(f"stopped by command {want.command_id}" if want else "not wanted")
            await self.lease.release()
            self.actions.clear()
            return
        if not await self.lease.keep():
            await self._halt("another serve instance holds the exchange")
            self.actions.clear()
            return
        if self.task is not None and self.task.done():
            self._crashed(self.task)
        if self.serving is not None:
            same = (self.serving.symbols, self.serving.timeframes) == (want.symbols, want.timeframes)
            if same and self.task is not None:
                self.serving = want
            elif not same or self.serving.entry_id != want.entry_id:  # new settings, or a new start after a failure
                await self._halt(f"restarting for command {want.command_id}")
        if self.serving is None:
            await self._start(want)
        elif self.adapter is not None and self.task is not None and (self.updating is None or self.updating.done()):
            symbols = self._wanted_symbols()
            if symbols != self.symbols:  # in the background: the lease must be renewed meanwhile
                self.symbols = symbols
                self.updating = asyncio.create_task(
                    self._update(self.adapter, symbols), name=f"adapter-{self.exchange}-symbols"
                )
        while self.actions:
            command = self.actions.popleft()
            if self.adapter is None or self.task is None:
                continue
            if isinstance(command, Disconnect):
                who = command.requested_by or "a command"
                n = await self.adapter.disconnect_now(f"disconnect requested by {who} ({command.command_id})")
                self.sup.say(f"{self.exchange}: disconnected {n} connection(s) on command {command.command_id}")
            else:
                n = self.adapter.reconnect_now()
                self.sup.say(f"{self.exchange}: {n} pending reconnect(s) made now on command {command.command_id}")

    async def _start(self, want: Want) -> None:
        try:
            plan = await plan_start(self.sup.client, self.sup.dsn, self.exchange, want.symbols, want.timeframes)
        except StoreUnavailable:
            raise
        except TickfoldError as exc:  # accepted, but no longer possible (the row changed since)
            self.serving = want
            self.sup.say(f"{self.exchange}: cannot start: {exc}")
            await self._final(f"cannot start: {exc}")
            return
        self.base_symbols = plan.symbols
        self.symbol_map = await load_symbol_map(self.sup.client, self.exchange)
        self.symbols = self._wanted_symbols()
        adapter = build_adapter(
            plan.row,
            self.sup.adapter_client,
            symbols=self.symbols,
            timeframes=plan.timeframes,
            **self.sup.config.adapter_options,
        )
        self.serving, self.adapter, self.stopper = want, adapter, asyncio.Event()
        self.task = asyncio.create_task(adapter.run(self.stopper), name=f"adapter-{self.exchange}")
        self.task.add_done_callback(lambda _: self.wake.set())
        self.sup.say(
            f"{self.exchange}: started ({', '.join(plan.symbols)}; {', '.join(plan.timeframes)}) "
            f"for command {want.command_id}"
        )

    async def _update(self, adapter: WsAdapter, symbols: tuple[str, ...]) -> None:
        try:
            await adapter.update_symbols(symbols)
            self.sup.say(f"{self.exchange}: now watching {', '.join(symbols) or 'nothing'} (symbol universe)")
        finally:
            self.wake.set()  # the universe may have changed again meanwhile

    def _crashed(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        _log.error("supervisor: the %s adapter stopped on its own", self.exchange, exc_info=error)
        self.sup.say(f"{self.exchange}: the adapter stopped on its own ({error!r}); it stays down until the next start")
        self.task = None

    async def _halt(self, reason: str) -> None:
        """Stop serving: stop the adapter (close, drain) and end with a disconnected event (retry None)."""
        if self.serving is None:
            return
        self.serving = None
        task, adapter, self.task, self.adapter = self.task, self.adapter, None, None
        if self.updating is not None:
            self.updating.cancel()
            await asyncio.wait([self.updating])
            self.updating = None
        wrote_final = False
        if task is not None and adapter is not None:
            seen = len(adapter.control.emitted)
            self.stopper.set()
            done, _ = await asyncio.wait([task], timeout=self.sup.config.stop_timeout_s)
            if not done:
                _log.error("supervisor: the %s adapter did not stop in time; cancelled", self.exchange)
                task.cancel()
                await asyncio.wait([task])
            elif not task.cancelled() and task.exception() is not None:
                _log.error("supervisor: the %s adapter failed while stopping", self.exchange, exc_info=task.exception())
            wrote_final = any(
                isinstance(e, ev.Disconnected) and e.retry_in_s is None for e in adapter.control.emitted[seen:]
            )
        if not wrote_final:
            await self._final(reason)
        self.sup.say(f"{self.exchange}: stopped ({reason})")

    async def _final(self, reason: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            await append_event(
                self.sup.client, ev.Disconnected(exchange=self.exchange, at_ns=now_ns(), reason=reason, retry_in_s=None)
            )


async def _read_universe(client: aioredis.Redis, upto: str) -> uv.Universe:
    """The symbol universe: a fold of the control stream's universe events up to ``upto`` (inclusive)."""
    events: list[uv.UniverseEvent] = []
    start = "-"
    while True:
        with translated(f"reading {keys.CONTROL_STREAM}"):
            page: Any = await client.xrange(keys.CONTROL_STREAM, min=start, max=upto, count=1000)
        for _entry_id, fields in page:
            if b"event" in fields and isinstance(parsed := parse_entry(fields), uv.SymbolAdded | uv.SymbolRemoved):
                events.append(parsed)
        if len(page) < 1000:
            return uv.fold(events)
        start = "(" + bytes(page[-1][0]).decode()


async def _pause(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> bool:
    """Sleep up to ``seconds``, ending early on ``stop`` (or ``wake``); whether ``stop`` is set."""
    waits = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waits.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    return stop.is_set()
