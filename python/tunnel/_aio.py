"""The asyncio API: device-side Listener, access-side Dialer and helpers."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable, Iterator, Mapping

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
from ._streams import TunnelReader, TunnelWriter, pair

if TYPE_CHECKING:
    from typing_extensions import Unpack


class Connection:
    """An accepted stream on the device side: who asked for which service, and the
    reader/writer pair to talk to them. Unpacks as ``reader, writer = connection``."""

    def __init__(self, incoming: _native.Incoming, stream: _native.Stream) -> None:
        #: The service the caller asked for.
        self.service: str = incoming.service
        #: The caller's identity name at the relay (``"public"`` for a public port).
        self.caller: str = incoming.caller
        #: For a public-port connection, the remote ``ip:port`` the relay saw.
        self.peer: str | None = incoming.peer
        extra = {"service": self.service, "caller": self.caller, "peer": self.peer}
        reader, writer = pair(stream, extra)
        #: The reading half (``asyncio.StreamReader`` methods).
        self.reader: TunnelReader = reader
        #: The writing half (``asyncio.StreamWriter`` methods).
        self.writer: TunnelWriter = writer

    def __iter__(self) -> Iterator[Any]:
        return iter((self.reader, self.writer))

    def __repr__(self) -> str:
        return f"<Connection service={self.service!r} caller={self.caller!r}>"

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()
        await self.writer.wait_closed()


class Incoming:
    """A caller asking for a service, not yet answered: ``accept()`` or ``refuse()`` it
    promptly (the relay gives up after 15 s)."""

    def __init__(self, native: _native.Incoming) -> None:
        self._native = native
        #: The service the caller asked for.
        self.service: str = native.service
        #: The caller's identity name at the relay (``"public"`` for a public port).
        self.caller: str = native.caller
        #: For a public-port connection, the remote ``ip:port`` the relay saw.
        self.peer: str | None = native.peer

    def __repr__(self) -> str:
        return f"<Incoming service={self.service!r} caller={self.caller!r}>"

    async def accept(self) -> Connection:
        """Accepts: the caller's open succeeds."""
        return Connection(self._native, await self._native.accept())

    async def refuse(self, reason: str = "denied", message: str = "") -> None:
        """Refuses: the caller's open fails with the matching error. ``reason`` is
        ``"denied"``, ``"unknown_service"``, ``"target_refused"`` or ``"unavailable"``."""
        await self._native.refuse(reason, message)


class Listener:
    """A device's presence on the relay (asyncio), as Rust's ``Listener``. Use it as
    ``async with``; ``async for`` yields each accepted :class:`Connection`.

    ::

        async with tunnel.Listener(relay="relay.example.com:7835", pin=PIN, token=TOKEN,
                                   device="pi-42", services=["echo"]) as listener:
            async for conn in listener:
                asyncio.create_task(handle(conn.reader, conn.writer))

    ``services`` are the names callers may open. To forward streams to local addresses
    in the background instead of iterating, pass ``forward={"ssh": "127.0.0.1:22"}``
    (its names are the services unless ``services`` is given too). A ``{name: address}``
    mapping as ``services`` is the deprecated spelling of ``forward``. ``public`` asks for
    public ports (``{"web": 8080}``); the connection keywords are :class:`ClientOptions`.

    It reconnects by itself after any failure and re-registers; iteration goes on across
    reconnects and ends when the listener is closed.
    """

    def __init__(
        self,
        *,
        device: str,
        services: Iterable[str] | None = None,
        forward: Mapping[str, str] | None = None,
        public: Mapping[str, int] | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._setup = device_setup(device, services, forward, public, options)
        #: The device ID this listener registers as.
        self.device: str = device
        self._native: _native.Listener | None = None

    def __repr__(self) -> str:
        kind = self.state.kind if self._native else "not started"
        return f"<Listener device={self.device!r} {kind}>"

    async def start(self) -> Listener:
        """Connects and registers. Raises at once on errors retrying cannot fix (bad
        credential or certificate, forbidden device ID); otherwise keeps retrying in the
        background. With ``forward``, starts forwarding."""
        if self._native is None:
            setup = self._setup
            native = await _native.Listener.bind(
                setup.config, setup.device, setup.services, setup.public
            )
            if setup.targets is not None:
                native.forward(setup.targets)
            self._native = native
        return self

    def _started(self) -> _native.Listener:
        if self._native is None:
            raise RuntimeError("the listener is not started: use `async with` or `await start()`")
        return self._native

    async def __aenter__(self) -> Listener:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Connection]:
        return self

    async def __anext__(self) -> Connection:
        conn = await self.accept()
        if conn is None:
            raise StopAsyncIteration
        return conn

    async def accept(self) -> Connection | None:
        """The next caller, accepted; ``None`` once the listener is closed. A caller that
        went away before it could be accepted is skipped."""
        while True:
            incoming = await self.next_incoming()
            if incoming is None:
                return None
            try:
                return await incoming.accept()
            except OSError:
                continue

    async def next_incoming(self) -> Incoming | None:
        """The next caller, unanswered (to accept or refuse); ``None`` once closed."""
        native = await self._started().accept()
        return Incoming(native) if native is not None else None

    async def incoming(self) -> AsyncIterator[Incoming]:
        """Yields each caller unanswered, for devices that refuse some of them."""
        while (item := await self.next_incoming()) is not None:
            yield item

    @property
    def state(self) -> State:
        """The connection state: connected, reconnecting (with the last error) or stopped."""
        return state(self._started().state())

    async def wait_connected(self, timeout: float = 10.0) -> dict[str, int]:
        """Waits until registered; returns the public ports. Raises
        :class:`tunnel.ConnectError` after ``timeout`` seconds."""
        return dict(await self._started().wait_connected(timeout))

    def forward(self, targets: Mapping[str, str]) -> None:
        """Forwards each incoming stream to the local address of its service
        (``{"ssh": "127.0.0.1:22"}``) in the background, instead of iterating."""
        self._started().forward(dict(targets))

    async def close(self) -> None:
        """Disconnects and stops reconnecting; accepted streams are cut."""
        if self._native is not None:
            self._native.close()
            await self._native.wait_stopped()


class LocalServer(LocalPort):
    """A local port whose connections are forwarded to a device service (asyncio), from
    :meth:`Dialer.serve_local`; :class:`BlockingLocalServer` is the blocking one."""

    def close(self) -> None:
        """Stops accepting; connections already forwarded run to their end."""
        self._native.close()

    async def wait_closed(self) -> None:
        """Waits until the port is released."""
        await self._native.wait_closed()

    async def __aenter__(self) -> LocalServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


class Dialer:
    """An access client's session with the relay (asyncio), as Rust's ``Dialer``: many
    streams share one TLS connection. Create it with :func:`tunnel.connect`; it reconnects
    on the next call if the session was lost. ``tunnel.Client`` is its deprecated alias.

    Its methods are named after the asyncio calls whose shapes they return
    (:meth:`open_connection` gives a reader/writer pair), not after Rust's ``dial``."""

    def __init__(self, native: _native.Dialer, relay: str) -> None:
        self._native = native
        self._relay = relay

    def __repr__(self) -> str:
        return f"<Dialer relay={self._relay!r}>"

    async def open_connection(
        self, device: str, service: str
    ) -> tuple[TunnelReader, TunnelWriter]:
        """Opens a stream to ``service`` on ``device``. Raises :class:`tunnel.DeniedError`,
        :class:`tunnel.DeviceOfflineError`, :class:`tunnel.UnknownServiceError`,
        :class:`tunnel.TargetRefusedError`, ... on failure."""
        stream = await self._native.dial(device, service)
        return pair(stream, {"device": device, "service": service, "peername": (device, service)})

    async def list_devices(self) -> list[DeviceInfo]:
        """The devices this credential may reach, online or not."""
        return device_infos(await self._native.list())

    async def serve_local(
        self, device: str, service: str, *, host: str = "127.0.0.1", port: int = 0
    ) -> LocalServer:
        """Serves ``host:port`` (port 0: any free port): each connection is forwarded to
        ``service`` on ``device``."""
        return LocalServer(self._native.serve_local(f"{host}:{port}", device, service))

    async def close(self) -> None:
        """Closes the session; open streams are cut."""
        await self._native.close()

    async def __aenter__(self) -> Dialer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect(**options: Unpack[ClientOptions]) -> Dialer:
    """Connects and authenticates to the relay as an access client. The keywords are
    :class:`ClientOptions`: ``relay``, and trust by ``pin`` (``sha256:…``) or ``ca_file``;
    ``token`` defaults to ``$TUNNEL_TOKEN``."""
    config = client_config(options)
    return Dialer(await _native.Dialer.connect(config), config.relay)


async def open_connection(
    *, device: str, service: str, **options: Unpack[ClientOptions]
) -> tuple[TunnelReader, TunnelWriter]:
    """Like :func:`asyncio.open_connection`, to ``service`` on ``device`` through the
    relay (connection keywords: :class:`ClientOptions`). The session with the relay lives
    as long as the stream."""
    dialer = await connect(**options)
    return await dialer.open_connection(device, service)


async def list_devices(**options: Unpack[ClientOptions]) -> list[DeviceInfo]:
    """The devices the credential may reach, online or not (one short session;
    connection keywords: :class:`ClientOptions`)."""
    dialer = await connect(**options)
    try:
        return await dialer.list_devices()
    finally:
        await dialer.close()
