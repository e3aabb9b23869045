"""One exchange on one serve instance: hold its lease while the desired state says run, run its adapter.

The supervisor (:mod:`control.supervisor`) keeps one slot per exchange it has seen in the control
stream; a slot is level-triggered: each step compares the desired state (and the symbol universe) with
what runs, and starts, restarts, updates the subscriptions of, or stops the adapter accordingly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING

from control import events as ev
from control.commands import Connect, Disconnect, now_ns
from control.desired import Want
from control.exchange_lease import ExchangeLease
from control.start_plan import append_event, plan_start
from streams.adapters.base import WsAdapter
from streams.adapters.factory import build_adapter
from streams.symbols import SymbolMap, UnknownSymbol, load_symbol_map
from tickfold.errors import StoreUnavailable, TickfoldError

if TYPE_CHECKING:
    from control.supervisor import Supervisor

_log = logging.getLogger(__name__)


class ExchangeSlot:
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
                await pause(stop, tick, self.wake)
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


async def pause(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> bool:
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
