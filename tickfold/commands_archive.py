"""``tickfold archive [--until-idle]`` (run the archiver), ``tickfold archive status`` (what it holds),
``tickfold archive upgrade`` (raw frame blocks of earlier formats rewritten in the current one,
:mod:`streams.archive_upgrade`), and how ``serve`` / ``process`` run it when the ``archive`` setting is on."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import asyncpg
import msgspec
import uvloop
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from processors.archiver import GROUP, ArchiverConfig, run_archiver
from processors.runner import RunnerConfig
from streams import archive_store, archive_upgrade, log
from streams.archive_codec import FORMAT
from tickfold.runtime import servers
from tickfold.settings import Settings

if TYPE_CHECKING:
    from tickfold.commands_serve import ServeContext

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _say(text: str) -> None:
    err.print(f"[dim]{text}[/dim]")


READ_AT_MOST = 5000  # entries per stream per read: a catching-up archiver (or one --until-idle) fills a block a read


def archiver_config(settings: Settings) -> ArchiverConfig:
    return ArchiverConfig(
        runner=RunnerConfig(
            consumer=settings.consumer_name(),
            batch_size=min(settings.archive_batch_size, READ_AT_MOST),
            block_ms=settings.block_ms,
            lease_ttl_ms=settings.lease_ttl_ms,
        ),
        partitions=settings.partitions,
        max_block=settings.archive_batch_size,
        linger_s=settings.archive_linger_ms / 1000,
        retention_days=settings.archive_retention_days,
    )


def enabled(settings: Settings) -> ArchiverConfig | None:
    """The archiver's configuration when the ``archive`` setting is on, else None."""
    return archiver_config(settings) if settings.archive else None


def trim_bound(settings: Settings) -> tuple[str, ...]:
    """The groups besides a processor's own that its trimming must wait for: the archive, when it is on."""
    return (GROUP,) if settings.archive else ()


async def serve_task(ctx: ServeContext) -> None:
    """``serve``'s archiver (setting ``archive``): every exchange and the control stream, until stop."""
    from streams.frames import EXCHANGES

    await run_archiver(ctx.redis, ctx.database_url, EXCHANGES, archiver_config(ctx.settings), stop=ctx.stop)


# ------------------------------------------------------------------------------------------ commands


def archive(args: argparse.Namespace, settings: Settings) -> int:
    from streams.frames import EXCHANGES, check_exchange

    with servers(settings, _say, postgres=True) as srv:
        assert srv.database_url is not None
        if args.action == "status":
            rows, disk = uvloop.run(_status(srv.database_url))
            _print_status(rows, disk, as_json=args.json)
            return 0
        exchanges = [check_exchange(e) for e in (args.exchange or EXCHANGES)]
        if args.action == "upgrade":
            return uvloop.run(_upgrade(srv.database_url, exchanges))
        return uvloop.run(_run(srv.redis_url, srv.database_url, settings, exchanges, until_idle=args.until_idle))


async def _run(redis_url: str, dsn: str, settings: Settings, exchanges: Sequence[str], *, until_idle: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with log.connect(redis_url) as client:
        results = await run_archiver(
            client, dsn, exchanges, archiver_config(settings), until_idle=until_idle, stop=stop
        )
    for label, stats in results.items():
        t = stats.totals
        out.print(f"{label}: {t.processed} entries archived in {stats.batches} batches, {t.skipped} already archived")
    return 0


async def _upgrade(dsn: str, exchanges: Sequence[str]) -> int:
    with _upgrade_progress(err.is_terminal) as update:
        stats = await archive_upgrade.upgrade(dsn, exchanges, progress=update)
    which = ", ".join(exchanges)
    if not stats.blocks:
        out.print(f"{which}: every archived raw frame block is in format {FORMAT} already; nothing to upgrade")
        return 0
    out.print(
        f"{which}: {stats.upgraded:,} of {stats.blocks:,} raw frame blocks ({stats.upgraded_entries:,} entries) "
        f"rewritten in format {FORMAT}: {_size(stats.bytes_before)} -> {_size(stats.bytes_after)}"
        + ("" if stats.upgraded == stats.blocks else f"; {stats.blocks - stats.upgraded:,} gone or upgraded meanwhile")
    )
    return 0


@contextlib.contextmanager
def _upgrade_progress(enabled: bool) -> Iterator[Callable[[archive_upgrade.UpgradeStats], None]]:
    """A progress bar over the entries to rewrite on a terminal; a line per 10 % otherwise."""
    if enabled:
        bar = Progress(
            TextColumn("upgrading"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} entries"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True,
        )  # fmt: skip
        task = bar.add_task("upgrade", total=None)
        with bar:
            yield lambda s: bar.update(task, total=s.entries, completed=s.upgraded_entries)
        return
    said = [-1]

    def plain(s: archive_upgrade.UpgradeStats) -> None:
        tenth = 10 * s.upgraded // s.blocks if s.blocks else 10
        if tenth != said[0]:
            said[0] = tenth
            _say(f"upgrading the archive: {s.upgraded:,}/{s.blocks:,} blocks ({s.upgraded_entries:,} entries)")

    yield plain


async def _status(dsn: str) -> tuple[list[archive_store.StreamStatus], int]:
    async with archive_store.translated("reading the archive status"):
        conn = await asyncpg.connect(dsn)
        try:
            return await archive_store.status(conn)
        finally:
            await conn.close()


def _print_status(rows: list[archive_store.StreamStatus], disk: int, *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode({"streams": rows, "disk_bytes": disk}).decode() + "\n")
        return
    table = Table(title="archive")
    for col in (
        "stream",
        "archived up to",
        "entries",
        "blocks",
        "raw",
        "stored",
        "B/entry",
        "oldest day",
        "newest day",
    ):
        table.add_column(col, justify="left" if col in ("stream", "archived up to") else "right", no_wrap=True)
    for r in rows:
        per = f"{r.stored_bytes / r.entries:.1f}" if r.entries else "-"
        table.add_row(
            r.stream, r.archived_to or "-", f"{r.entries:,}", f"{r.blocks:,}", _size(r.raw_bytes),
            _size(r.stored_bytes), per, str(r.oldest_day or "-"), str(r.newest_day or "-"),
        )  # fmt: skip
    out.print(table)
    total = sum(r.entries for r in rows)
    out.print(f"{total:,} entries in the archive; {_size(disk)} on disk (tables and indexes)")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} GiB"
