"""``tickfold serve`` (the supervisor + the processors + extra parts such as the API) and the control
commands ``tickfold start`` / ``tickfold stop``, which append a command and wait for its outcome.

``serve`` starts idle (CTL-01): it connects nothing until the control stream says so. ``--autostart X``
(CTL-03) appends a ``start`` for X unless X already runs per the stream; an unknown or disabled X ends serve
with a non-zero exit before anything starts. SIGTERM / Ctrl-C stops the adapters cleanly (exit 0) and
leaves the desired state as it is, so the next serve resumes it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import getpass
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import uvloop
from rich.console import Console

from control import events as ev
from control.commands import Accepted, Command, Rejected, Start, Stop, append_command, new_command_id, now_ns
from control.desired import Desired, classify, fold, read_desired
from control.start_plan import plan_start
from control.supervisor import Supervisor, SupervisorConfig
from streams import keys, log
from tickfold import commands_archive
from tickfold.errors import ConfigError, TickfoldError, UnknownExchange
from tickfold.runtime import servers
from tickfold.settings import Settings

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _say(text: str) -> None:
    err.print(f"[dim]{text}[/dim]")


@dataclass(frozen=True)
class ServeContext:
    """What every part of ``serve`` shares; a part runs until ``stop`` is set, then returns."""

    settings: Settings
    redis_url: str
    database_url: str
    redis: aioredis.Redis  # a client to share (with a per-reply timeout)
    stop: asyncio.Event
    say: Callable[[str], None]


ServeTask = Callable[[ServeContext], Awaitable[Any]]


def extra_tasks(args: argparse.Namespace, settings: Settings) -> list[ServeTask]:
    """The long-running parts of ``serve`` beside the supervisor and the processors: the HTTP/WebSocket
    API (unless ``--no-api``) and the connection-state projection (setting ``connection_state``). A part
    that raises ends serve (non-zero) after the adapters are stopped."""
    tasks: list[ServeTask] = [_connection_state_task, _positions_task]
    if settings.tier1_plan():
        tasks.append(_tier1_task)
    if settings.archive and not getattr(args, "no_processors", False):  # the archiver runs with the processors
        tasks.append(commands_archive.serve_task)
    if not getattr(args, "no_api", False):
        tasks.append(functools.partial(_api_task, host=args.api_host, port=args.api_port))
    return tasks


async def _api_task(ctx: ServeContext, *, host: str, port: int) -> None:
    from control.api import ApiDeps, create_app, run_api

    app = create_app(
        ApiDeps(settings=ctx.settings, redis_url=ctx.redis_url, database_url=ctx.database_url, redis=ctx.redis)
    )
    await run_api(app, host, port, ctx.stop, on_listening=lambda h, p: ctx.say(f"API on http://{h}:{p}"))


async def _positions_task(ctx: ServeContext, every_s: float = 3_600.0) -> None:
    """Tier 2: re-register the holder of every open position well within the overflow TTL (24 h)."""
    import asyncpg

    from control.positions import refresh_holds

    while not ctx.stop.is_set():
        try:
            await refresh_holds(ctx.database_url, ctx.redis)
        except asyncpg.UndefinedTableError:
            ctx.say("positions: the positions table is missing (run `tickfold migrate`); holds not refreshed")
            return
        try:
            await asyncio.wait_for(ctx.stop.wait(), every_s)
        except TimeoutError:
            pass


async def _tier1_task(ctx: ServeContext, every_s: float | None = None) -> None:
    """SYM-01 on a schedule: re-rank each exchange of the ``tier1`` setting every ``tier1_refresh_s`` and
    append the Tier 1 differences. One instance per interval does it (``lock:tier1:{exchange}``); a failed
    refresh (REST down, rate-limited) is reported and tried again next round, it does not stop serve."""
    from control import exchanges as repo
    from tickfold.commands_symbols import refresh_row

    every_s = every_s or ctx.settings.tier1_refresh_s
    plan = ctx.settings.tier1_plan()
    for exchange_id in plan:  # a typo in the setting fails serve at start, naming the key
        try:
            await repo.get_exchange(ctx.database_url, exchange_id)
        except UnknownExchange as exc:
            raise ConfigError("tier1", str(exc)) from None
    while not ctx.stop.is_set():
        for exchange_id, (n, quotes) in plan.items():
            with log.translated(f"taking the Tier 1 refresh of {exchange_id}"):
                mine = await ctx.redis.set(keys.tier1_refresh(exchange_id), "1", nx=True, px=int(every_s * 1000))
            if not mine:
                continue
            try:
                row = await repo.get_exchange(ctx.database_url, exchange_id)
                tier, events = await refresh_row(ctx.redis, row, n, list(quotes) if quotes else None)
            except (TickfoldError, OSError) as exc:
                ctx.say(f"tier1 {exchange_id}: refresh failed, next try in {every_s:g} s: {exc}")
                continue
            ctx.say(f"tier1 {exchange_id}: {len(tier.ranked)} symbols, {len(events)} changes")
        try:
            await asyncio.wait_for(ctx.stop.wait(), every_s)
        except TimeoutError:
            pass


async def _connection_state_task(ctx: ServeContext) -> None:
    from control import connection_state

    async with connection_state.alongside(ctx.redis, ctx.database_url, ctx.settings, until_idle=False, stop=ctx.stop):
        await ctx.stop.wait()


def requested_by() -> str:
    """Who asks: ``user@host``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


# ------------------------------------------------------------------------------------------ serve


def serve(args: argparse.Namespace, settings: Settings) -> int:
    with servers(settings, _say, postgres=True) as srv:
        assert srv.database_url is not None
        return uvloop.run(
            run_serve(
                settings,
                srv.redis_url,
                srv.database_url,
                autostart=tuple(dict.fromkeys(args.autostart or ())),
                processors=not args.no_processors,
                extra=extra_tasks(args, settings),
            )
        )


async def run_serve(
    settings: Settings,
    redis_url: str,
    dsn: str,
    *,
    autostart: Sequence[str] = (),
    processors: bool = True,
    extra: Sequence[ServeTask] = (),
    stop: asyncio.Event | None = None,
) -> int:
    """Check ``autostart`` (before anything starts), append its start commands, then run the supervisor,
    the processors (unless ``processors`` is False) and the ``extra`` parts until ``stop`` (or a signal)."""
    from streams.frames import EXCHANGES
    from tickfold.commands import run_processors

    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    async with (
        log.connect(redis_url) as client,
        log.connect(redis_url, reply_timeout=None) as adapter_client,  # the sinks bound their own round trips
    ):
        for exchange in autostart:  # CTL-03: refuse before anything starts
            try:
                await plan_start(client, dsn, exchange, (), ())
            except UnknownExchange as exc:
                raise UnknownExchange(f"--autostart {exchange}: {exc}") from None
            except TickfoldError as exc:
                raise TickfoldError(f"--autostart {exchange}: {exc}") from None
        if autostart:
            desired = await read_desired(client)
            for exchange in autostart:
                if desired.is_running(exchange):
                    _say(f"--autostart {exchange}: already running per the control stream; left as it is")
                    continue
                command = Start(
                    command_id=new_command_id(), exchange=exchange, requested_by="serve --autostart", at_ns=now_ns()
                )
                await append_command(client, command)
                _say(f"--autostart {exchange}: start command {command.command_id} appended")
        consumer = settings.consumer_name()
        supervisor = Supervisor(
            client,
            adapter_client,
            dsn,
            SupervisorConfig(
                consumer=consumer, lease_ttl_ms=settings.exchange_lease_ttl_ms, block_ms=settings.block_ms
            ),
            say=_say,
        )
        ctx = ServeContext(settings, redis_url, dsn, client, stop, _say)

        async def part(work: Awaitable[Any]) -> None:
            try:
                await work
            except BaseException:
                stop.set()  # one part failing stops the others cleanly (adapters closed and drained)
                raise

        async with asyncio.TaskGroup() as tg:
            tg.create_task(part(supervisor.run(stop)), name="supervisor")
            if processors:
                tg.create_task(part(run_processors(client, settings, EXCHANGES, until_idle=False, stop=stop)))
            for task in extra:
                tg.create_task(part(task(ctx)))
    _say("serve stopped")
    return 0


# ------------------------------------------------------------------------------------ start / stop


def start(args: argparse.Namespace, settings: Settings) -> int:
    command = Start(
        command_id=new_command_id(),
        exchange=args.exchange,
        requested_by=requested_by(),
        at_ns=now_ns(),
        symbols=_split(args.symbols),
        timeframes=_split(args.timeframes),
    )
    return _send(settings, command, args.timeout)


def stop(args: argparse.Namespace, settings: Settings) -> int:
    command = Stop(command_id=new_command_id(), exchange=args.exchange, requested_by=requested_by(), at_ns=now_ns())
    return _send(settings, command, args.timeout)


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _send(settings: Settings, command: Start | Stop, timeout: float) -> int:
    with servers(settings, _say) as srv:
        message = uvloop.run(_send_and_wait(srv.redis_url, command, timeout))
    out.print(message)
    return 0


async def _send_and_wait(redis_url: str, command: Start | Stop, within_s: float) -> str:
    async with log.connect(redis_url) as client:
        entry_id = (await append_command(client, command)).decode()
        before, connected = await _state_at(client, command.exchange, entry_id)
        return await wait_for_outcome(client, command, entry_id, before, connected, within_s)


async def _state_at(client: aioredis.Redis, exchange: str, entry_id: str) -> tuple[Desired, bool]:
    """The desired state up to ``entry_id`` and whether the exchange's latest lifecycle event then said
    it was connected."""
    desired, connected, start = Desired(), False, "0"
    while True:
        with log.translated(f"reading {keys.CONTROL_STREAM}"):
            batch: Any = await client.xrange(keys.CONTROL_STREAM, min=start, max=entry_id, count=1000)
        if not batch:
            return desired, connected
        desired = fold(batch, desired)
        for _, fields in batch:
            item = classify(fields)
            if (
                isinstance(item, ev.Connecting | ev.Connected | ev.Disconnected | ev.Stale)
                and item.exchange == exchange
            ):
                connected = isinstance(item, ev.Connected)
        start = f"({desired.last_id}"


async def wait_for_outcome(
    client: aioredis.Redis, command: Command, entry_id: str, before: Desired, connected: bool, within_s: float
) -> str:
    """Read the control stream after ``entry_id`` until the command is done; returns what to print, or
    raises TickfoldError (rejected, or not done within ``within_s`` seconds).

    Done means: ``start`` — accepted, then ``exchange:connected`` (or accepted when the exchange already
    ran connected with the same symbols and timeframes); ``stop`` — accepted, then
    ``exchange:disconnected`` with no retry (or accepted when it wasn't running)."""
    ex, what = command.exchange, f"{type(command).__struct_config__.tag} {command.exchange}"
    prior = before.exchanges.get(ex)
    if isinstance(command, Start):
        same = prior is not None and prior.running and prior.symbols == tuple(command.symbols)
        done_on_accept = same and connected and prior is not None and prior.timeframes == tuple(command.timeframes)
    else:
        done_on_accept = not before.is_running(ex)
    deadline = time.monotonic() + within_s
    cursor, accepted, last = entry_id, False, ""
    while (remaining := deadline - time.monotonic()) > 0:
        with log.translated(f"reading {keys.CONTROL_STREAM}"):
            reply: Any = await client.xread(
                {keys.CONTROL_STREAM: cursor}, count=200, block=max(1, int(min(remaining, 1.0) * 1000))
            )
        for eid, fields in reply[0][1] if reply else []:
            cursor = eid.decode()
            item = classify(fields)
            if isinstance(item, Rejected) and (item.command_id == command.command_id or item.entry_id == entry_id):
                raise TickfoldError(f"{what}: rejected: {item.reason}")
            if isinstance(item, Accepted) and item.command_id == command.command_id:
                accepted = True
                if done_on_accept:
                    return f"{ex}: {'already running and connected' if isinstance(command, Start) else 'not running'}"
                continue
            if not accepted or not isinstance(item, ev.ControlEvent) or item.exchange != ex:
                continue
            if isinstance(command, Start) and isinstance(item, ev.Connected):
                return f"{ex}: connected to {item.url} ({len(item.subscriptions)} subscriptions)"
            if isinstance(command, Stop) and isinstance(item, ev.Disconnected) and item.retry_in_s is None:
                return f"{ex}: stopped ({item.reason})"
            if isinstance(item, ev.Connecting | ev.Disconnected | ev.Stale):
                last = f"{item.__struct_config__.tag}" + (
                    f" ({item.reason})" if isinstance(item, ev.Disconnected) else ""
                )
    if not accepted:
        raise TickfoldError(f"{what}: no answer within {within_s:g} s (is `tickfold serve` running?)")
    goal = "connected" if isinstance(command, Start) else "disconnected"
    raise TickfoldError(
        f"{what}: accepted, but not {goal} within {within_s:g} s" + (f"; last event: {last}" if last else "")
    )
