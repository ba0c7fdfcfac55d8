"""Type stubs of the Rust extension module (tunnel-ffi). Use the public API in ``tunnel``.

Methods without suffix that wait return asyncio awaitables and need a running loop;
``*_blocking`` variants wait on the calling thread with the GIL released, answer Ctrl-C,
and raise the builtin ``TimeoutError`` after ``timeout`` seconds.
"""

import builtins
from typing import Awaitable

#: ``(device, online, services)``, as ``Dialer.list`` returns them.
_DeviceRow = tuple[str, bool, builtins.list[str]]

class TunnelError(Exception):
    """Base class of every error raised by tunnel."""

class ConfigError(TunnelError):
    """An invalid configuration: bad pin, address, name, certificate or file."""

class ConnectError(TunnelError):
    """No session with the relay: unreachable, TLS failed, refused, or timed out."""

class AuthError(ConnectError):
    """The relay rejected the credential (unknown or wrong token)."""

class CertificateError(ConnectError):
    """The relay's certificate does not match the pin or CA, or the relay rejected ours."""

class DeniedError(TunnelError):
    """The credential may not do this: open this service, register this device ID or port."""

class DeviceOfflineError(TunnelError):
    """The device is not connected to the relay."""

class UnknownServiceError(TunnelError):
    """The device does not offer this service."""

class TargetRefusedError(TunnelError):
    """The device could not reach the service's local address."""

class UnavailableError(TunnelError):
    """A limit was hit or the peer did not answer in time; retrying later may work."""

class ConnectionLostError(TunnelError):
    """The session with the relay was lost while the request was in flight."""

class ProtocolError(TunnelError):
    """The peer broke the tunnel protocol."""

class RelayError(TunnelError):
    """The in-process relay could not start or stopped with an error."""

class InternalError(TunnelError):
    """A bug inside tunnel (a Rust panic); the process is still sound."""

class WriteBufferFullError(TunnelError):
    """A stream's write queue is over its hard limit: await drain() between writes."""

def generate_token() -> str:
    """A fresh random token (``tun_`` and 256 bits as hex)."""

def give_back_memory() -> bool:
    """Starts the thread that gives memory freed by a load back to the system, once."""

def error_table() -> list[tuple[str, str, type[BaseException]]]:
    """``(kind, exception name, class raised)`` for every row of tunnel-core's status table
    (``ErrorKind``): the name the core gives and the class this module raises for it
    (the builtin ``OSError`` for ``Io``)."""

def at_exit() -> None:
    """Registered with ``atexit``: stops handing results to Python before finalization."""

def _panic_for_test(awaited: bool) -> Awaitable[None] | None:
    """Test hook: panics in Rust (raises ``InternalError``)."""

class ClientConfig:
    """Relay address, trust (pin or CA file) and credential; the token is never shown."""

    def __init__(
        self,
        relay: str,
        *,
        pin: str | None = None,
        ca_file: str | None = None,
        token: str | None = None,
        server_name: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None: ...
    @property
    def relay(self) -> str:
        """The relay address as given."""

class Stream:
    """One tunnelled byte stream; writes are queued for a writer task."""

    def read(self, n: int) -> Awaitable[bytes]:
        """Up to ``n`` bytes; ``b""`` at end of stream or after ``close()``."""
    def read_blocking(self, n: int, timeout: float | None = None) -> bytes:
        """Blocking ``read``."""
    def write(self, data: bytes) -> None:
        """Queues ``data``; never waits. Raises ``WriteBufferFullError`` once more than
        16 MiB are queued (await ``drain()`` between writes)."""
    def write_eof(self) -> None:
        """Queues a half-close."""
    def pending(self) -> int:
        """Bytes queued and not yet handed to the tunnel."""
    def drain(self) -> Awaitable[None]:
        """Waits until the write queue is small."""
    def flush_blocking(self, timeout: float | None = None) -> None:
        """Waits until every queued byte is handed to the tunnel."""
    def close(self) -> None:
        """Graceful close: queued bytes, then end of stream."""
    def abort(self) -> None:
        """Resets the stream at once."""
    def is_closing(self) -> bool:
        """Whether ``close()`` or ``abort()`` was called."""
    def wait_closed(self) -> Awaitable[None]:
        """Completes once the stream is released."""
    def wait_closed_blocking(self, timeout: float | None = None) -> None:
        """Blocking ``wait_closed``."""

class LocalServer:
    """A local port forwarded to a device service (``tunnel.LocalServer`` and
    ``tunnel.BlockingLocalServer`` wrap it)."""

    @property
    def address(self) -> str:
        """The bound ``ip:port``."""
    @property
    def port(self) -> int:
        """The bound port."""
    def close(self) -> None:
        """Stops accepting."""
    def wait_closed(self) -> Awaitable[None]:
        """Completes once the port is released."""
    def wait_closed_blocking(self, timeout: float | None = None) -> None:
        """Blocking ``wait_closed``."""

class Dialer:
    """An access client's session with the relay."""

    @staticmethod
    def connect(config: ClientConfig) -> Awaitable[Dialer]:
        """Connects and authenticates."""
    @staticmethod
    def connect_blocking(config: ClientConfig, timeout: float | None = None) -> Dialer:
        """Blocking ``connect``."""
    def dial(self, device: str, service: str) -> Awaitable[Stream]:
        """Opens a stream to ``service`` on ``device``."""
    def dial_blocking(self, device: str, service: str, timeout: float | None = None) -> Stream:
        """Blocking ``dial``."""
    def list(self) -> Awaitable[builtins.list[_DeviceRow]]:
        """``(device, online, services)`` for each reachable device."""
    def list_blocking(self, timeout: float | None = None) -> builtins.list[_DeviceRow]:
        """Blocking ``list``."""
    def serve_local(self, listen: str, device: str, service: str) -> LocalServer:
        """Forwards a local port to a device service; binds at once."""
    def close(self) -> Awaitable[None]:
        """Closes the session."""
    def close_blocking(self, timeout: float | None = None) -> None:
        """Blocking ``close``."""

class Incoming:
    """A caller asking for a service, to accept or refuse."""

    service: str
    caller: str
    peer: str | None
    def accept(self) -> Awaitable[Stream]:
        """Accepts."""
    def accept_blocking(self, timeout: float | None = None) -> Stream:
        """Blocking ``accept``."""
    def refuse(self, reason: str = "denied", message: str = "") -> Awaitable[None]:
        """Refuses with ``denied``, ``unknown_service``, ``target_refused`` or ``unavailable``."""
    def refuse_blocking(self, reason: str = "denied", message: str = "", timeout: float | None = None) -> None:
        """Blocking ``refuse``."""

class Listener:
    """A device registered with the relay."""

    @staticmethod
    def bind(
        config: ClientConfig, device: str, services: list[str], public: list[tuple[str, int]] = ...
    ) -> Awaitable[Listener]:
        """Connects and registers."""
    @staticmethod
    def bind_blocking(
        config: ClientConfig,
        device: str,
        services: list[str],
        public: list[tuple[str, int]] = ...,
        timeout: float | None = None,
    ) -> Listener:
        """Blocking ``bind``."""
    def accept(self) -> Awaitable[Incoming | None]:
        """The next caller, or ``None`` once closed."""
    def accept_blocking(self, timeout: float | None = None) -> Incoming | None:
        """Blocking ``accept``."""
    def state(self) -> tuple[str, str | None, list[tuple[str, int]], list[tuple[str, str]]]:
        """``(kind, last_error, public_ports, public_failed)``."""
    def wait_connected(self, timeout: float) -> Awaitable[list[tuple[str, int]]]:
        """Waits until connected."""
    def wait_connected_blocking(self, timeout: float) -> list[tuple[str, int]]:
        """Blocking ``wait_connected``."""
    def forward(self, targets: dict[str, str]) -> None:
        """Forwards incoming streams to local addresses in the background."""
    def close(self) -> None:
        """Disconnects and stops reconnecting."""
    def wait_stopped(self) -> Awaitable[None]:
        """Completes once stopped."""
    def wait_stopped_blocking(self, timeout: float | None = None) -> None:
        """Blocking ``wait_stopped``."""

class Relay:
    """A relay served in-process."""

    def __init__(
        self,
        credentials: list[tuple[str, str, list[str], list[str], bool]],
        *,
        listen: str = "127.0.0.1:0",
        token_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        cert_names: list[str] = ...,
        state_dir: str | None = None,
        grace: float = 10.0,
        heartbeat: float | None = None,
        public_ports: tuple[int, int] | None = None,
        admin_listen: str | None = None,
    ) -> None: ...
    @property
    def address(self) -> str:
        """The bound ``ip:port``."""
    @property
    def port(self) -> int:
        """The bound port."""
    @property
    def pin(self) -> str:
        """The relay's public-key pin."""
    @property
    def admin_address(self) -> str | None:
        """The admin API's ``ip:port``, with ``admin_listen``."""
    @property
    def admin_token(self) -> str | None:
        """A bearer token for the admin API, with ``admin_listen``."""
    def online_devices(self) -> list[str]:
        """IDs of the devices online now."""
    def close(self) -> None:
        """Starts a graceful shutdown."""
    def is_closed(self) -> bool:
        """Whether serving has ended."""
    def wait_closed(self) -> Awaitable[None]:
        """Completes once stopped."""
    def wait_closed_blocking(self, timeout: float | None = None) -> None:
        """Blocking ``wait_closed``."""
