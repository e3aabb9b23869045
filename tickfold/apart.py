"""The indicator processors of ``tickfold process`` in a process of their own.

A candle close reaches its alert through about seven Redis round trips of the indicator runner (the
wake-up, the fenced read, the commit's reads and its MULTI). On the candle runner's event loop each of
them also waits for whatever candle batch holds the loop then (its decode, fold, roll-ups and packing:
milliseconds per batch at 20k frames/s), so the close -> alert hop took ~20-35 ms at the median there
(benchmarks/e2e_latency.py). In a process of their own the indicator runners wait only for Redis and
a CPU, and the candle fold no longer pays for them.

The child runs the very runners ``tickfold process`` would run in-process
(:func:`tickfold.commands.run_processors`, candles left out): the same group, leases, commits and
acknowledgements, so what it writes is the same. It stops, finishing its batch in hand and giving its
leases back, when the parent stops it (SIGTERM), on SIGINT (a terminal's Ctrl-C reaches both), or when
the parent is gone (checked every ``_WATCH_PARENT_S``: a parent killed with -9 leaves no orphan renewing
the lease). A child that exits on its own is a failure of the command: the parent then stops too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence

import uvloop

from tickfold.settings import Settings

log = logging.getLogger(__name__)

_WATCH_PARENT_S = 0.2
_STOP_TIMEOUT_S = 60.0  # a batch in hand is bounded by the runner's call timeout (30 s by default)


def _child_main(redis_url: str, settings: Settings, exchanges: list[str], parent: int, level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tickfold.cli import tune_gc

    tune_gc()
    uvloop.run(_child(redis_url, settings, exchanges, parent))


async def _child(redis_url: str, settings: Settings, exchanges: list[str], parent: int) -> None:
    from streams import log as stream_log
    from tickfold.commands import run_processors

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def watch_parent() -> None:
        while not stop.is_set():
            if os.getppid() != parent:
                log.warning("the parent process %d is gone; the indicator processor stops", parent)
                stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _WATCH_PARENT_S)

    watcher = asyncio.create_task(watch_parent())
    try:
        async with stream_log.connect(redis_url) as client:
            await run_processors(client, settings, exchanges, until_idle=False, stop=stop, candles=False)
    finally:
        stop.set()
        await watcher


async def run_apart(redis_url: str, settings: Settings, exchanges: Sequence[str], stop: asyncio.Event) -> int:
    """Run the indicator processors of ``exchanges`` in a child process until ``stop`` is set; returns the
    child's exit code (0: it stopped when asked). A child that exits before that sets ``stop`` (the
    caller's other runners then finish their batches) and its code is returned: the caller reports it."""
    context = multiprocessing.get_context("spawn")
    args = (redis_url, settings, list(exchanges), os.getpid(), logging.getLogger().getEffectiveLevel())
    child = context.Process(target=_child_main, args=args, name="tickfold-indicators")
    child.start()
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()
    loop.add_reader(child.sentinel, ended.set)
    try:
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(ended.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if not ended.is_set():  # asked to stop: the child finishes its batch in hand and leaves
            child.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), _STOP_TIMEOUT_S)
        if not ended.is_set():
            log.warning("the indicator processor did not stop within %.0f s; killing it", _STOP_TIMEOUT_S)
            child.kill()
            await ended.wait()
    finally:
        loop.remove_reader(child.sentinel)
        if child.is_alive():  # the parent is failing (or cancelled): the child must not outlive it
            child.kill()
        child.join()
    code = child.exitcode if child.exitcode is not None else -1
    if not stop.is_set():
        log.error("the indicator processor exited with code %d; stopping", code)
        stop.set()
        return code or 1
    return 0 if code == -signal.SIGTERM else code  # (stopped while starting, before its handlers were set)
