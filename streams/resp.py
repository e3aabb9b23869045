"""A lean pipelined Redis connection for the raw-stream appends: RESP in, RESP out, nothing in between.

redis-py's pipeline costs ~9 µs of Python per XADD (command objects, packing, a reply parser call
and a timer per reply); an adapter appending 100k+ frames/s spends most of its core there. This
connection keeps only what an append loop needs:

* commands are packed into one buffer (:func:`pack_xadd` writes the RESP of
  ``XADD stream * frame <bytes> recv_ns <n>`` directly, the same bytes as ``hiredis.pack_command``)
  and written to the socket at once;
* replies are parsed by ``hiredis.Reader``, in order, into the caller's list as they arrive, so when
  the connection fails mid-batch the caller knows exactly which commands were answered;
* an error reply is returned as :class:`ReplyError` in that list, never dropped: the caller decides.

The connection is opened by the client's own redis-py connection class (TCP, TLS or Unix socket,
AUTH, SELECT, HELLO as the URL says); only the hot path bypasses it. Transport failures and a
server that stays silent past the timeout surface as :class:`StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import hiredis
import redis.asyncio as aioredis
import redis.exceptions

from tickfold.errors import StoreUnavailable

ReplyError = hiredis.ReplyError  # what hiredis.Reader hands back for an error reply (-ERR ...)
READ_CHUNK = 1 << 16


def xadd_prefix(stream: str) -> bytes:
    """The constant head of ``XADD stream * frame ...`` for one stream (see :func:`pack_xadd`)."""
    key = stream.encode()
    return b"*7\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$5\r\nframe\r\n" % (len(key), key)


def pack_xadd(prefix: bytes, frame: bytes, recv_ns: int) -> bytes:
    """RESP of ``XADD stream * frame <frame> recv_ns <recv_ns>``, ``prefix`` from :func:`xadd_prefix`."""
    ns = b"%d" % recv_ns
    return b"%s$%d\r\n%s\r\n$7\r\nrecv_ns\r\n$%d\r\n%s\r\n" % (prefix, len(frame), frame, len(ns), ns)


class RespConnection:
    """One Redis connection used as a raw pipe: :meth:`write` packed commands, then :meth:`read_replies`."""

    def __init__(self, connection: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connection = connection  # the redis-py connection that did the handshake (closed with us)
        self._reader = reader
        self._writer = writer
        self._parser = hiredis.Reader()
        self.closed = False

    @classmethod
    async def open(cls, client: aioredis.Redis, what: str) -> RespConnection:
        """A new connection to ``client``'s server (its URL's transport, credentials and database)."""
        connection = client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.connect()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            with contextlib.suppress(Exception):
                await connection.disconnect()
            raise StoreUnavailable(f"{what}: {exc}") from exc
        reader, writer = getattr(connection, "_reader", None), getattr(connection, "_writer", None)
        if not isinstance(reader, asyncio.StreamReader) or not isinstance(writer, asyncio.StreamWriter):
            await connection.disconnect()  # a redis-py release that keeps its streams elsewhere: fail loudly
            raise TypeError(f"{type(connection).__name__} exposes no asyncio streams to write RESP to")
        return cls(connection, reader, writer)

    def write(self, packed: bytes) -> None:
        """Queue packed commands for sending (the transport sends them as the socket allows)."""
        if self.closed:
            raise StoreUnavailable("the connection is closed")
        self._writer.write(packed)

    async def read_replies(self, n: int, replies: list[Any], what: str, timeout_s: float) -> None:
        """Append the next ``n`` replies to ``replies`` as they arrive (error replies as :class:`ReplyError`).

        Raises StoreUnavailable when the connection fails or ``timeout_s`` passes first; ``replies`` then
        holds the replies that did arrive, in command order, and the connection is closed."""
        parser, gets, want = self._parser, self._parser.gets, len(replies) + n
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    reply = gets()
                    while reply is not False:
                        replies.append(reply)
                        reply = gets()
                    if len(replies) >= want:
                        return
                    data = await self._reader.read(READ_CHUNK)
                    if not data:
                        raise ConnectionResetError("the server closed the connection")
                    parser.feed(data)
        except (OSError, TimeoutError, hiredis.ProtocolError) as exc:
            await self.close()
            raise StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            await self.close()  # cancelled mid-batch: the stream position of the replies is lost with it
            raise

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            await self._connection.disconnect()
