"""asyncio reader/writer pair over a tunnel stream, shaped like ``asyncio.open_connection``'s."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Iterable

from . import _native

#: Bytes asked of the tunnel per read when the caller has no size of its own (read(-1),
#: readline): large enough that one Python await moves a whole yamux window's worth.
_CHUNK = 256 * 1024
#: Default line/separator limit, as asyncio's StreamReader.
_LIMIT = 2**16


class TunnelReader:
    """The reading half of a tunnel stream, with the methods of :class:`asyncio.StreamReader`.

    ``read``, ``readexactly``, ``readline``, ``readuntil``, ``at_eof`` and ``async for``
    behave as they do on a TCP connection, so existing asyncio protocol code works
    unchanged. An abrupt end of the stream raises ``ConnectionResetError``; a clean end
    (the far end half-closed) reads as ``b""``.
    """

    def __init__(self, stream: _native.Stream, limit: int = _LIMIT) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._eof = False
        self._limit = limit

    def __repr__(self) -> str:
        return f"<TunnelReader buffered={len(self._buffer)} eof={self._eof}>"

    async def _fill(self, size: int = _CHUNK) -> bool:
        """Appends the next chunk to the buffer; False at end of stream."""
        if self._eof:
            return False
        data = await self._stream.read(max(size, 1))
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (at least one unless at end of stream); all until end of
        stream when ``n`` is negative."""
        if n == 0:
            return b""
        if n < 0:
            chunks = [bytes(self._buffer)]
            self._buffer.clear()
            while not self._eof:
                data = await self._stream.read(_CHUNK)
                if not data:
                    self._eof = True
                else:
                    chunks.append(data)
            return b"".join(chunks)
        if not self._buffer:
            if self._eof:
                return b""
            # Hand the tunnel's bytes straight through: no copy into the buffer.
            data = await self._stream.read(n)
            if not data:
                self._eof = True
            return data
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; :class:`asyncio.IncompleteReadError` if the stream ends first."""
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        while len(self._buffer) < n:
            if not await self._fill(max(n - len(self._buffer), _CHUNK)):
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, n)
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including ``separator``. Raises
        :class:`asyncio.IncompleteReadError` at end of stream and
        :class:`asyncio.LimitOverrunError` past the reader's limit, as asyncio does."""
        if not separator:
            raise ValueError("Separator should be at least one-byte string")
        start = 0
        while True:
            index = self._buffer.find(separator, start)
            if index >= 0:
                end = index + len(separator)
                if end > self._limit:
                    raise asyncio.LimitOverrunError(
                        "Separator is found, but chunk is longer than limit", index
                    )
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                return data
            if len(self._buffer) > self._limit:
                raise asyncio.LimitOverrunError(
                    "Separator is not found, and chunk exceed the limit", len(self._buffer)
                )
            start = max(0, len(self._buffer) - len(separator) + 1)
            if not await self._fill():
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, None)

    async def readline(self) -> bytes:
        """One line including ``b"\\n"``; the rest of the stream if it ends without one."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            return e.partial
        except asyncio.LimitOverrunError as e:
            if self._buffer.startswith(b"\n", e.consumed):
                del self._buffer[: e.consumed + 1]
            else:
                self._buffer.clear()
            raise ValueError(e.args[0]) from None

    def at_eof(self) -> bool:
        """True once the stream has ended and every buffered byte was read."""
        return self._eof and not self._buffer

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


class TunnelWriter:
    """The writing half of a tunnel stream, with the methods of :class:`asyncio.StreamWriter`.

    ``write`` never waits: bytes are queued and leave at once (no ``drain`` needed for them
    to be sent); ``drain`` waits until the queue is small again, which is the flow control.
    ``write_eof`` half-closes (the far end reads end of stream and may still answer);
    ``close`` sends what is queued, then ends the stream; ``abort`` resets it.
    """

    def __init__(self, stream: _native.Stream, extra: dict[str, Any]) -> None:
        self._stream = stream
        self._extra = extra

    def __repr__(self) -> str:
        return f"<TunnelWriter {self._extra.get('device')}/{self._extra.get('service')}>"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queues ``data`` for sending. Raises :class:`~tunnel.WriteBufferFullError` if more
        than 16 MiB are already queued: await :meth:`drain` between writes."""
        self._stream.write(data if isinstance(data, bytes) else bytes(data))

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        """Queues each buffer of ``data`` in order."""
        for chunk in data:
            self.write(chunk)

    def can_write_eof(self) -> bool:
        """Always True: tunnel streams carry half-close end to end."""
        return True

    def write_eof(self) -> None:
        """Half-closes after the queued bytes: the far end reads end of stream."""
        self._stream.write_eof()

    async def drain(self) -> None:
        """Waits until the write queue is small; raises the error that broke the stream."""
        await self._stream.drain()

    def close(self) -> None:
        """Sends what is queued, then ends the stream; reading ends too. Never waits."""
        self._stream.close()

    def abort(self) -> None:
        """Resets the stream at once, dropping queued bytes; the far end reads an error."""
        self._stream.abort()

    def is_closing(self) -> bool:
        """True once ``close`` or ``abort`` was called."""
        return self._stream.is_closing()

    async def wait_closed(self) -> None:
        """Waits until the stream is fully released after ``close``."""
        await self._stream.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``device``, ``service``, ``caller`` (device side) and ``peer`` (public ports);
        ``peername`` is ``(device, service)`` on the access side."""
        return self._extra.get(name, default)

    @property
    def transport(self) -> None:
        """There is no asyncio transport under a tunnel stream."""
        return None


def pair(stream: _native.Stream, extra: dict[str, Any]) -> tuple[TunnelReader, TunnelWriter]:
    """Wraps one native stream as a reader/writer pair."""
    return TunnelReader(stream), TunnelWriter(stream, extra)
