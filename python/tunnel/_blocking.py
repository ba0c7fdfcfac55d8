"""The blocking API, for plain scripts and services: Agent, BlockingDialer, TunnelSocket.

Every wait releases the GIL and answers Ctrl-C within a tenth of a second.
"""

from __future__ import annotations

import socket
from types import TracebackType
from typing import TYPE_CHECKING, Iterable, Mapping

from . import _native
from ._config import (
    ClientOptions,
    DeviceInfo,
    LocalPort,
    State,
    client_config,
    device_infos,
    device_setup,
    state,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack


#: How long ``Agent.run`` waits for a clean disconnect after Ctrl-C before re-raising.
_STOP_WAIT = 5.0


class Agent:
    """A device agent for plain scripts: registers ``device`` with the relay and forwards
    each service of ``forward`` to its local address, reconnecting by itself until stopped.

    ::

        agent = tunnel.Agent(relay="relay.example.com:7835", pin=PIN, token=TOKEN,
                             device="pi-42", forward={"ssh": "127.0.0.1:22"})
        agent.run()   # until Ctrl-C or agent.stop() (e.g. from a SIGTERM handler)

    Not named ``BlockingListener`` on purpose: it is Rust's ``Listener`` together with
    ``tunnel_core::forward``, the job of the ``tunnel-agent`` program, and it has no
    ``accept``; a blocking program that answers each stream itself would need a thread
    per stream, which the asyncio :class:`Listener` does better.

    ``forward`` maps each service to its local ``host:port``; ``services`` (names) may
    list more services, which are refused as unknown. A ``{name: address}`` mapping as
    ``services`` is the deprecated spelling of ``forward``. ``public`` asks for public
    ports; the connection keywords are :class:`ClientOptions`.
    """

    def __init__(
        self,
        *,
        device: str,
        forward: Mapping[str, str] | None = None,
        services: Iterable[str] | None = None,
        public: Mapping[str, int] | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._setup = device_setup(device, services, forward, public, options)
        if self._setup.targets is None:
            raise TypeError("an Agent forwards: give forward={name: local host:port}")
        #: The device ID this agent registers as.
        self.device: str = device
        self._native: _native.Listener | None = None

    def __repr__(self) -> str:
        return f"<Agent device={self.device!r} {self.state.kind}>"

    def start(self, timeout: float | None = None) -> None:
        """Connects, registers and starts forwarding, then returns. Raises at once on
        errors retrying cannot fix (bad credential or certificate, forbidden device ID);
        if the relay is just unreachable, it keeps retrying in the background."""
        if self._native is None:
            setup = self._setup
            assert setup.targets is not None  # checked in __init__
            listener = _native.Listener.bind_blocking(
                setup.config, setup.device, setup.services, setup.public, timeout
            )
            listener.forward(setup.targets)
            self._native = listener

    def run(self) -> None:
        """Starts if needed and blocks until :meth:`stop`. On Ctrl-C the agent stops
        cleanly, then ``KeyboardInterrupt`` propagates."""
        self.start()
        assert self._native is not None
        try:
            self._native.wait_stopped_blocking(None)
        except BaseException:
            # Ctrl-C (or another error): disconnect before letting it propagate.
            self.stop()
            self._native.wait_stopped_blocking(_STOP_WAIT)
            raise

    def stop(self) -> None:
        """Disconnects and stops reconnecting (safe from a signal handler). Never waits."""
        if self._native is not None:
            self._native.close()

    def wait_stopped(self, timeout: float | None = None) -> None:
        """Blocks until the agent has stopped; ``TimeoutError`` after ``timeout``."""
        if self._native is not None:
            self._native.wait_stopped_blocking(timeout)

    def wait_connected(self, timeout: float = 10.0) -> dict[str, int]:
        """Blocks until registered; returns the public ports. Raises
        :class:`tunnel.ConnectError` after ``timeout`` seconds."""
        if self._native is None:
            raise RuntimeError("the agent is not started")
        return dict(self._native.wait_connected_blocking(timeout))

    @property
    def state(self) -> State:
        """Connected, reconnecting (with the last error), or stopped."""
        if self._native is None:
            return State("stopped", "not started")
        return state(self._native.state())

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.wait_stopped(10.0)


class TunnelSocket:
    """A stream to a device service with the blocking methods of a connected TCP socket:
    ``sendall``, ``send``, ``recv``, ``shutdown``, ``close``, ``settimeout``, and use as a
    context manager. ``recv`` returns ``b""`` at a clean end of stream and raises
    ``ConnectionResetError`` on an abrupt one; a timeout raises ``TimeoutError``."""

    def __init__(self, stream: _native.Stream, device: str, service: str) -> None:
        self._stream = stream
        self._timeout: float | None = None
        self._read_closed = False
        #: The device and service this socket reaches.
        self.peer: tuple[str, str] = (device, service)

    def __repr__(self) -> str:
        return f"<TunnelSocket {self.peer[0]}/{self.peer[1]}>"

    def settimeout(self, timeout: float | None) -> None:
        """Seconds each call may wait (None: forever), as ``socket.settimeout``."""
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        """The current timeout."""
        return self._timeout

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Sends all of ``data``; returns once it is handed to the tunnel."""
        self._stream.write(data if isinstance(data, bytes) else bytes(data))
        self._stream.flush_blocking(self._timeout)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Sends all of ``data`` and returns its length (never a partial send)."""
        self.sendall(data)
        return len(data)

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes; ``b""`` at end of stream."""
        if self._read_closed or bufsize <= 0:
            return b""
        return self._stream.read_blocking(bufsize, self._timeout)

    def shutdown(self, how: int) -> None:
        """``socket.SHUT_WR`` half-closes (the far end reads end of stream and may still
        answer); ``SHUT_RD`` stops reading; ``SHUT_RDWR`` both."""
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self._stream.write_eof()
            self._stream.flush_blocking(self._timeout)
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self._read_closed = True

    def close(self) -> None:
        """Sends what is queued, then ends the stream. Never waits."""
        self._stream.close()

    def abort(self) -> None:
        """Resets the stream; the far end reads an error."""
        self._stream.abort()

    def __enter__(self) -> TunnelSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockingLocalServer(LocalPort):
    """A local port whose connections are forwarded to a device service, for blocking
    programs, from :meth:`BlockingDialer.serve_local`. ``tunnel.LocalForward`` is its
    deprecated alias."""

    def close(self, timeout: float | None = 10.0) -> None:
        """Stops accepting and waits until the port is released."""
        self._native.close()
        self._native.wait_closed_blocking(timeout)

    def __enter__(self) -> BlockingLocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockingDialer:
    """An access client's session with the relay, for blocking programs: Rust's
    ``Dialer``. Connects in the constructor (connection keywords: :class:`ClientOptions`;
    ``timeout`` bounds the connect); many streams share one TLS connection.
    ``tunnel.BlockingClient`` is its deprecated alias.

    ::

        with tunnel.BlockingDialer(relay=..., pin=PIN, token=TOKEN) as dialer:
            with dialer.connect("pi-42", "web") as sock:
                sock.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
                print(sock.recv(65536))

    :meth:`connect` is named after the socket call whose shape it returns, not after
    Rust's ``dial``.
    """

    def __init__(self, *, timeout: float | None = None, **options: Unpack[ClientOptions]) -> None:
        config = client_config(options)
        self._relay = config.relay
        self._native = _native.Dialer.connect_blocking(config, timeout)

    def __repr__(self) -> str:
        return f"<BlockingDialer relay={self._relay!r}>"

    def connect(self, device: str, service: str, timeout: float | None = None) -> TunnelSocket:
        """Opens a stream to ``service`` on ``device`` as a :class:`TunnelSocket`."""
        stream = self._native.dial_blocking(device, service, timeout)
        return TunnelSocket(stream, device, service)

    def list_devices(self, timeout: float | None = None) -> list[DeviceInfo]:
        """The devices this credential may reach, online or not."""
        return device_infos(self._native.list_blocking(timeout))

    def serve_local(
        self, device: str, service: str, *, host: str = "127.0.0.1", port: int = 0
    ) -> BlockingLocalServer:
        """Serves ``host:port`` in the background: each connection is forwarded to
        ``service`` on ``device``."""
        return BlockingLocalServer(self._native.serve_local(f"{host}:{port}", device, service))

    def close(self, timeout: float | None = 10.0) -> None:
        """Closes the session; open streams are cut."""
        self._native.close_blocking(timeout)

    def __enter__(self) -> BlockingDialer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_connection(
    *, device: str, service: str, timeout: float | None = None, **options: Unpack[ClientOptions]
) -> TunnelSocket:
    """Like :func:`socket.create_connection`, to ``service`` on ``device`` through the
    relay (blocking; connection keywords: :class:`ClientOptions`). The session with the
    relay lives as long as the socket."""
    dialer = BlockingDialer(timeout=timeout, **options)
    sock = dialer.connect(device, service, timeout)
    sock.settimeout(timeout)
    return sock
