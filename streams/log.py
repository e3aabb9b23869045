"""The stream log on Redis: connect, append raw frames (pipelined), consumer groups, dead letters.

Raw frame entries carry two fields: ``frame`` (the WebSocket text exactly as received) and
``recv_ns`` (receive time, epoch ns — for lag metrics only, never used inside a fold).

Redis errors are translated here: a connection problem becomes :class:`StoreUnavailable`; nothing
outside ``streams/`` imports ``redis.exceptions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import hiredis
import redis._parsers.hiredis
import redis.asyncio as aioredis
import redis.asyncio.client
import redis.asyncio.connection
import redis.exceptions

from streams import keys
from streams.partitions import DEFAULT_PARTITIONS, route
from streams.partitions import streams as partition_streams
from tickfold.errors import StoreUnavailable
from tickfold.settings import mask_url

_log = logging.getLogger(__name__)
Entry = tuple[bytes, dict[bytes, bytes]]  # (stream id, fields)
WatchError = redis.exceptions.WatchError
ResponseError = redis.exceptions.ResponseError


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn redis-py transport errors into StoreUnavailable (the retryable error)."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"{what}: {exc}") from exc


class _HiredisPacking:
    """Packs commands with ``hiredis.pack_command`` (C), as redis-py's sync client does; its asyncio
    connection packs in pure Python, ~40 % of the CPU of a pipelined XADD loop. Same bytes on the wire:
    an argument hiredis refuses (bytearray, bool, None, ...) goes through redis-py's own packer, which
    accepts it or raises its usual DataError."""

    __slots__ = ()

    def pack_command(self, *args: Any) -> list[bytes]:
        return [self._pack(args)]

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        return [b"".join([self._pack(tuple(cmd)) for cmd in commands])]

    def _pack(self, args: tuple[Any, ...]) -> bytes:
        first = args[0]
        if isinstance(first, str):  # a command name with literal arguments ("CONFIG GET"), as redis-py splits it
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return hiredis.pack_command(args)  # type: ignore[no-any-return]
        except TypeError:
            python_packer: Any = super().pack_command  # type: ignore[misc]
            return b"".join(python_packer(*args))

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """redis-py's ``send_packed_command``, bounding the write by ``socket_timeout`` with
        ``asyncio.timeout`` instead of ``asyncio.wait_for`` (which makes a task per send on Python 3.11:
        ~10 % of a fold's CPU at small batches). The same errors, and the connection dropped on any."""
        conn: Any = self
        if not conn.socket_timeout:
            return await super().send_packed_command(command, check_health)  # type: ignore[misc,no-any-return]
        if not conn.is_connected:
            await conn.connect_check_health(check_health=False)
        if check_health:
            await conn.check_health()
        try:
            if isinstance(command, str):
                command = command.encode()
            if isinstance(command, bytes):
                command = [command]
            async with asyncio.timeout(conn.socket_timeout):
                conn._writer.writelines(command)
                await conn._writer.drain()
        except TimeoutError:
            await conn.disconnect(nowait=True)
            raise redis.exceptions.TimeoutError("Timeout writing to socket") from None
        except OSError as e:
            await conn.disconnect(nowait=True)
            err_no, errmsg = ("UNKNOWN", e.args[0]) if len(e.args) == 1 else (e.args[0], e.args[1])
            raise redis.exceptions.ConnectionError(f"Error {err_no} while writing to socket. {errmsg}.") from e
        except BaseException:
            await conn.disconnect(nowait=True)
            raise

    async def read_replies(self, count: int) -> list[Any]:
        """The next ``count`` replies, parsed by the connection's hiredis reader in one loop (redis-py reads
        a pipeline's replies one at a time through a chain of coroutines: ~4 µs a reply). Error replies
        come back as exception values, as the reader makes them; a transport error or a timeout (the
        connection's ``socket_timeout``) disconnects the connection, as redis-py's own read does."""
        conn: Any = self
        parser = conn._parser
        out: list[Any] = []
        try:
            async with asyncio.timeout(conn.socket_timeout):
                while len(out) < count:
                    reply = parser._reader.gets()
                    if reply is _NOT_ENOUGH_DATA:
                        await parser.read_from_socket()
                    elif isinstance(reply, redis.exceptions.ConnectionError):
                        raise reply
                    elif _PUSH is None or not isinstance(reply, _PUSH):  # (no client tracking here: none come)
                        out.append(reply)
        except TimeoutError as exc:
            await conn.disconnect(nowait=True)
            raise redis.exceptions.TimeoutError(f"Timeout reading from {conn._host_error()}") from exc
        except OSError as exc:
            await conn.disconnect(nowait=True)
            raise redis.exceptions.ConnectionError(f"Error while reading from {conn._host_error()}: {exc}") from exc
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        return out


_NOT_ENOUGH_DATA: Any = getattr(redis._parsers.hiredis, "NOT_ENOUGH_DATA", False)
_PUSH: Any = getattr(hiredis, "PushNotification", None)
_PACKING: dict[type[Any], type[Any]] = {}


def _lean(commands: Sequence[tuple[tuple[Any, ...], dict[str, Any]]], connection: Any) -> bool:
    """Whether :class:`_LeanPipeline` reads these replies itself: plain commands (no per-command reply
    options, no HIMPORT preparation) on a hiredis-parsed connection that has ``read_replies``."""
    return (
        isinstance(connection, _HiredisPacking)
        and isinstance(getattr(connection, "_parser", None), redis._parsers.hiredis._AsyncHiredisParser)
        and not any(
            options.keys() - {"keys"} or str(args[0]).upper().startswith("HIMPORT") for args, options in commands
        )
    )


class _LeanPipeline(aioredis.client.Pipeline):
    """redis-py's pipeline, reading the replies of a pipeline or a MULTI/EXEC in one loop
    (:meth:`_HiredisPacking.read_replies`) instead of one coroutine chain per reply. The same replies,
    response callbacks, errors (ExecAbort, WatchError, the first error raised) and connection handling;
    anything unusual (reply options, HIMPORT, another parser) goes to redis-py's own code."""

    async def _execute_pipeline(self, connection: Any, commands: Any, raise_on_error: bool) -> list[Any]:
        if not _lean(commands, connection):
            return await super()._execute_pipeline(connection, commands, raise_on_error)  # type: ignore[no-any-return]
        await connection.send_packed_command(connection.pack_commands([args for args, _ in commands]))
        replies = await connection.read_replies(len(commands))
        response = [
            self._callback(args, options, reply) for (args, options), reply in zip(commands, replies, strict=True)
        ]
        for args, _ in commands:
            if args[0] in self.UNWATCH_COMMANDS:
                self.watching = False
            elif args[0] == "WATCH":
                self.watching = True
        if raise_on_error:
            self.raise_first_error(commands, response)
        return response

    async def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: bool) -> list[Any]:
        if not _lean(commands, connection):
            return await super()._execute_transaction(connection, commands, raise_on_error)  # type: ignore[no-any-return]
        wire = [("MULTI",), *(args for args, _ in commands), ("EXEC",)]
        await connection.send_packed_command(connection.pack_commands(wire))
        replies = await connection.read_replies(len(wire))
        errors: list[tuple[int, Exception]] = []
        if isinstance(replies[0], redis.exceptions.ResponseError):
            errors.append((0, replies[0]))
        for i, (command, queued) in enumerate(zip(commands, replies[1:-1], strict=True)):
            if isinstance(queued, redis.exceptions.ResponseError):
                self.annotate_exception(queued, i + 1, command[0])
                errors.append((i, queued))
        response = replies[-1]
        if isinstance(response, redis.exceptions.ExecAbortError):
            if errors:
                raise errors[0][1] from response
            raise response
        if isinstance(response, redis.exceptions.ResponseError):
            raise response
        self.watching = False  # EXEC clears any watched keys
        if response is None:
            raise redis.exceptions.WatchError("Watched variable changed.")
        for i, e in errors:
            response.insert(i, e)
        if len(response) != len(commands):
            await connection.disconnect()
            raise redis.exceptions.ResponseError("Wrong number of response items from pipeline execution")
        if raise_on_error:
            self.raise_first_error(commands, response)
        return [self._callback(args, options, r) for (args, options), r in zip(commands, response, strict=True)]

    async def watch_then(self, watch: Sequence[str], commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """WATCH ``watch``, then run ``commands`` at once (before MULTI): one round trip. See :func:`watch_then`."""
        if self.explicit_transaction:
            raise redis.exceptions.RedisError("Cannot issue a WATCH after a MULTI")
        conn: Any = self.connection
        if conn is None:
            conn = self.connection = await self.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        wire = [("WATCH", *watch), *commands]
        if not _lean([(c, {}) for c in wire], conn):
            await self.watch(*watch)
            return [await self.execute_command(*c) for c in commands]
        try:
            await conn.send_packed_command(conn.pack_commands(wire))
            replies = await conn.read_replies(len(wire))
        except BaseException:
            await self.reset()  # type: ignore[no-untyped-call]  # (the connection was dropped: nothing is watched)
            raise
        self.watching = True
        for reply in replies:
            if isinstance(reply, redis.exceptions.ResponseError):
                raise reply
        return [self._callback(c, {}, r) for c, r in zip(commands, replies[1:], strict=True)]

    def _callback(self, args: tuple[Any, ...], options: dict[str, Any], reply: Any) -> Any:
        if isinstance(reply, Exception) or args[0] not in self.response_callbacks:
            return reply
        options.pop("keys", None)
        return self.response_callbacks[args[0]](reply, **options)


class _Redis(aioredis.Redis):
    """redis-py's asyncio client whose pipelines are :class:`_LeanPipeline`."""

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> aioredis.client.Pipeline:
        return _LeanPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


def _packing(base: type[redis.asyncio.connection.AbstractConnection]) -> type[Any]:
    """``base`` (TCP, TLS or Unix socket connection, as the URL chose) with hiredis packing."""
    if base not in _PACKING:
        _PACKING[base] = type(f"HiredisPacking{base.__name__}", (_HiredisPacking, base), {"__slots__": ()})
    return _PACKING[base]


@contextlib.asynccontextmanager
async def connect(url: str, *, reply_timeout: float | None = 5.0) -> AsyncIterator[aioredis.Redis]:
    """A client for ``url``, checked with PING; raises StoreUnavailable naming the (masked) URL.

    ``reply_timeout=None`` drops redis-py's per-reply socket timeout, which costs a timer per command
    (~30 % of a pipelined hot loop): hot loops then bound each round trip themselves (one
    ``asyncio.timeout`` per pipeline), so a hung server still surfaces as StoreUnavailable.
    Commands are packed by hiredis (:class:`_HiredisPacking`), and pipelines read their replies in one
    loop (:class:`_LeanPipeline`)."""
    client: aioredis.Redis = _Redis.from_url(url, decode_responses=False, socket_timeout=reply_timeout)
    pool = client.connection_pool
    pool.connection_class = _packing(pool.connection_class)  # no connection exists yet: all of them pack in C
    try:
        with translated(f"redis at {mask_url(url)} is not reachable"):
            await client.ping()
        yield client
    finally:
        await client.aclose()


async def watch_then(pipe: Any, watch: Sequence[str], *commands: tuple[Any, ...]) -> list[Any]:
    """On a transaction pipeline: WATCH ``watch`` on its connection, then run ``commands`` right away (the
    reads a MULTI will depend on); returns their replies (response callbacks applied; an error reply
    raises). One round trip on :func:`connect`'s clients; a WATCH, then one command at a time, on others."""
    if isinstance(pipe, _LeanPipeline):
        return await pipe.watch_then(watch, commands)
    await pipe.watch(*watch)
    return [await pipe.execute_command(*c) for c in commands]


@contextlib.asynccontextmanager
async def without_reply_timeout(client: aioredis.Redis) -> AsyncIterator[aioredis.Redis]:
    """A client to ``client``'s server (its URL's transport, credentials, database; its own connections)
    with no per-reply socket timeout: for loops that bound every round trip themselves (the runners'
    ``asyncio.timeout`` per call), sparing a timer per send and per reply (~6 % of a fold's CPU)."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": None}
    hot = _Redis(connection_pool=aioredis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
    try:
        yield hot
    finally:
        await hot.aclose(close_connection_pool=True)


async def send_all(client: aioredis.Redis, commands: Sequence[tuple[bytes | str | int, ...]], what: str) -> None:
    """Run plain commands (bytes, str and int arguments; replies not wanted) at once on one of ``client``'s
    connections: packed by hiredis in one go and their replies read in one loop, none of a pipeline's
    per-command bookkeeping (~2 us a command: a bulk write's XADDs). The first error reply raises; a
    transport error raises StoreUnavailable naming ``what``. A client not made by :func:`connect` runs them in
    a pipeline."""
    if not commands:
        return
    pool = client.connection_pool
    with translated(what):
        if not issubclass(pool.connection_class, _HiredisPacking):
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            await pipe.execute()
            return
        conn: Any = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            pack: Any = hiredis.pack_command
            await conn.send_packed_command([b"".join([pack(command) for command in commands])])
            replies = await conn.read_replies(len(commands))
        finally:
            await pool.release(conn)
    for reply in replies:
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def append_frames(
    client: aioredis.Redis,
    exchange_id: str,
    frames: Iterable[tuple[bytes, int]],
    *,
    batch: int = 1000,
    partitions: int = DEFAULT_PARTITIONS,
) -> int:
    """XADD every (frame, recv_ns) to its partition of ``frames:{exchange_id}`` in pipelined batches;
    returns the count. ``partitions`` applies only if the exchange has none stored yet."""
    count = 0
    n = await ensure_partitions(client, exchange_id, partitions)
    streams = [keys.frames_stream(exchange_id, p) for p in range(n)]
    pipe = client.pipeline(transaction=False)
    pending = 0
    with translated(f"appending to the raw streams of {exchange_id}"):
        for frame, recv_ns in frames:
            pipe.xadd(streams[route(exchange_id, frame, n)], {"frame": frame, "recv_ns": recv_ns})
            pending += 1
            if pending >= batch:
                await pipe.execute()
                count += pending
                pending = 0
        if pending:
            await pipe.execute()
            count += pending
    return count


async def ensure_group(client: aioredis.Redis, stream: str, group: str) -> None:
    """Create the consumer group at the start of the stream (and the stream) if it doesn't exist."""
    with translated(f"creating group {group} on {stream}"):
        try:
            await client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


async def read_group(
    client: aioredis.Redis,
    stream: str,
    group: str,
    consumer: str,
    *,
    count: int,
    block_ms: int | None,
    pending: bool = False,
) -> list[Entry]:
    """Entries for ``consumer``: its own unacknowledged ones (``pending=True``) or new ones."""
    with translated(f"reading {stream}"):
        reply: Any = await client.xreadgroup(
            group, consumer, {stream: "0" if pending else ">"}, count=count, block=None if pending else block_ms
        )
    if not reply:
        return []
    entries: list[Entry] = reply[0][1]
    # A pending entry that was deleted (trimmed) comes back with no fields.
    return [(eid, fields) for eid, fields in entries if fields is not None]


async def entries(
    client: aioredis.Redis, stream: str, *, count: int | None = None, newest_first: bool = False
) -> list[Entry]:
    """Entries of a stream (XRANGE / XREVRANGE), typed."""
    with translated(f"reading {stream}"):
        if newest_first:
            reply: Any = await client.xrevrange(stream, count=count)
        else:
            reply = await client.xrange(stream, count=count)
    return [(eid, fields) for eid, fields in reply]


async def raw_entries(client: aioredis.Redis, exchange_id: str) -> list[Entry]:
    """Every raw frame entry of an exchange (all of its partitions), each partition in order."""
    out: list[Entry] = []
    for stream in partition_streams(exchange_id, await stored_partitions(client, exchange_id) or 0):
        out.extend(await entries(client, stream))
    return out


async def ensure_partitions(client: aioredis.Redis, exchange_id: str, wanted: int = DEFAULT_PARTITIONS) -> int:
    """The exchange's partition count: the stored one, or ``wanted`` stored now (first writer/reader wins)."""
    if wanted < 1:
        raise ValueError(f"partitions must be >= 1, got {wanted}")
    key = keys.frames_partitions(exchange_id)
    with translated(f"reading {key}"):
        await client.set(key, wanted, nx=True)
        stored: Any = await client.get(key)
    count = int(stored)
    if count != wanted:
        _log.warning(
            "%s has %d partitions (fixed when its first frame was written); the configured %d is not applied",
            exchange_id,
            count,
            wanted,
        )
    return count


async def stored_partitions(client: aioredis.Redis, exchange_id: str) -> int | None:
    """The stored partition count, or None while nothing was written for the exchange."""
    with translated(f"reading {keys.frames_partitions(exchange_id)}"):
        stored: Any = await client.get(keys.frames_partitions(exchange_id))
    return int(stored) if stored is not None else None
