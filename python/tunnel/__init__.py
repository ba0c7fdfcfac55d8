"""Secure reverse tunnels from Python: reach services on devices behind NAT through a relay.

Thin bindings of the Rust library ``tunnel-core``: every protocol and I/O step runs in Rust
on one shared background runtime; this package adapts it to Python.

Two APIs with separate names, never one call that changes type with the context. Class
names are the Rust ones (``Listener``, ``Dialer``, ``Incoming``, ``DeviceInfo``); the
blocking API adds a ``Blocking`` prefix:

- **asyncio**: :class:`Listener` (device side; ``async with``, ``async for``; the names
  in ``services=`` are offered, and ``forward={"ssh": "127.0.0.1:22"}`` forwards them in
  the background), :func:`connect` → :class:`Dialer` (``serve_local`` →
  :class:`LocalServer`), :func:`open_connection`, :func:`list_devices`. Streams are
  :class:`TunnelReader` / :class:`TunnelWriter` pairs with the methods of
  ``asyncio.StreamReader`` / ``asyncio.StreamWriter``.
- **blocking**: :class:`Agent` (device side), :class:`BlockingDialer` (``serve_local``
  → :class:`BlockingLocalServer`), :func:`create_connection` → :class:`TunnelSocket`.
  Waits release the GIL and answer Ctrl-C.

Where a name differs from Rust, on purpose: :class:`Agent` is not a ``BlockingListener``:
it is Rust's ``Listener`` plus ``tunnel_core::forward`` (what the ``tunnel-agent``
program does) and has no ``accept``. The stream types and the methods that open them
(``open_connection``, ``create_connection``, ``connect``) are named after the asyncio
and socket calls whose shapes they return.

Every entry point takes the same connection keywords, :class:`ClientOptions`: ``relay``,
``pin`` or ``ca_file``, ``token`` (default ``$TUNNEL_TOKEN``), ``server_name``,
``cert_file`` and ``key_file``. Stream limits are announced by the relay, not set here.

Both: :class:`Relay` (in-process relay), :class:`Credential`, :func:`generate_token`,
:func:`give_back_memory` (memory freed by a load goes back to the system).

Errors derive from :class:`TunnelError`; which one a failure raises comes from the status
table of ``tunnel-core`` (``ErrorKind``). Errors of an open stream are the builtin
``OSError`` subclasses a TCP connection raises (``ConnectionResetError``, ...), but for
:class:`WriteBufferFullError`: ``write()`` with more than 16 MiB queued, because the
caller never awaited ``drain()``.

Deprecated names, still working (each use warns with ``DeprecationWarning``):
``Client`` → :class:`Dialer`, ``BlockingClient`` → :class:`BlockingDialer`,
``LocalForward`` → :class:`BlockingLocalServer`; and a ``{name: address}`` mapping as
``services=`` → ``forward=``.

The runtime's threads start on first use. Do not ``fork()`` a process that has used
tunnel (multiprocessing's "fork" start method): the child has no runtime threads; use
the "spawn" or "forkserver" start methods.
"""

from __future__ import annotations

import atexit
import warnings
from typing import TYPE_CHECKING, Any

from . import _native
from ._aio import (
    Connection,
    Dialer,
    Incoming,
    Listener,
    LocalServer,
    connect,
    list_devices,
    open_connection,
)
from ._blocking import (
    Agent,
    BlockingDialer,
    BlockingLocalServer,
    TunnelSocket,
    create_connection,
)
from ._config import ClientOptions, DeviceInfo, State
from ._native import (
    AuthError,
    CertificateError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    DeniedError,
    DeviceOfflineError,
    InternalError,
    ProtocolError,
    RelayError,
    TargetRefusedError,
    TunnelError,
    UnavailableError,
    UnknownServiceError,
    WriteBufferFullError,
)
from ._memory import give_back_memory
from ._relay import Credential, Relay, generate_token
from ._streams import TunnelReader, TunnelWriter

if TYPE_CHECKING:  # the deprecated aliases, for type checkers; at run time see __getattr__
    Client = Dialer
    BlockingClient = BlockingDialer
    LocalForward = BlockingLocalServer

#: Deprecated name → current name. The same class is returned, so ``isinstance`` and
#: existing code keep working; each lookup warns.
_DEPRECATED = {
    "Client": "Dialer",
    "BlockingClient": "BlockingDialer",
    "LocalForward": "BlockingLocalServer",
}


def __getattr__(name: str) -> Any:
    new = _DEPRECATED.get(name)
    if new is None:
        raise AttributeError(f"module 'tunnel' has no attribute {name!r}")
    warnings.warn(
        f"tunnel.{name} is deprecated: use tunnel.{new} (the Rust name)",
        DeprecationWarning,
        stacklevel=2,
    )
    return globals()[new]


# Results of Rust futures reach asyncio from background threads; at exit, stop that
# before the interpreter finalizes (a thread taking the GIL then would abort the process).
atexit.register(_native.at_exit)

__all__ = [
    # asyncio
    "Listener",
    "Connection",
    "Incoming",
    "Dialer",
    "LocalServer",
    "connect",
    "open_connection",
    "list_devices",
    "TunnelReader",
    "TunnelWriter",
    # blocking
    "Agent",
    "BlockingDialer",
    "TunnelSocket",
    "BlockingLocalServer",
    "create_connection",
    # both
    "ClientOptions",
    "Relay",
    "Credential",
    "generate_token",
    "give_back_memory",
    "DeviceInfo",
    "State",
    # errors
    "TunnelError",
    "ConfigError",
    "ConnectError",
    "AuthError",
    "CertificateError",
    "DeniedError",
    "DeviceOfflineError",
    "UnknownServiceError",
    "TargetRefusedError",
    "UnavailableError",
    "ConnectionLostError",
    "ProtocolError",
    "RelayError",
    "InternalError",
    "WriteBufferFullError",
]
# Deprecated aliases, kept working through __getattr__ (each use warns): "Client",
# "BlockingClient", "LocalForward". Left out of __all__ so that `from tunnel import *`
# neither warns nor spreads the old names.
