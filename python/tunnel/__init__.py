"""Secure reverse tunnels from Python: reach services on devices behind NAT through a relay.

Thin bindings of the Rust library ``tunnel-core``: every protocol and I/O step runs in Rust
on one shared background runtime; this package adapts it to Python.

Two APIs with separate names, never one call that changes type with the context:

- **asyncio**: :class:`Listener` (device side; ``async with``, ``async for``),
  :func:`open_connection`, :func:`connect` → :class:`Client`, :func:`list_devices`. Streams
  are :class:`TunnelReader` / :class:`TunnelWriter` pairs with the methods of
  ``asyncio.StreamReader`` / ``asyncio.StreamWriter``.
- **blocking**: :class:`Agent` (device side), :class:`BlockingClient`,
  :func:`create_connection` → :class:`TunnelSocket`. Waits release the GIL and answer Ctrl-C.

Both: :class:`Relay` (in-process relay), :class:`Credential`, :func:`generate_token`.

Errors derive from :class:`TunnelError`; errors of an open stream are the builtin
``OSError`` subclasses a TCP connection raises (``ConnectionResetError``, ...).

The runtime's threads start on first use. Do not ``fork()`` a process that has used
tunnel (multiprocessing's "fork" start method): the child has no runtime threads; use
the "spawn" or "forkserver" start methods.
"""

from __future__ import annotations

import atexit

from . import _native
from ._aio import (
    Client,
    Connection,
    Incoming,
    Listener,
    LocalServer,
    connect,
    list_devices,
    open_connection,
)
from ._blocking import Agent, BlockingClient, LocalForward, TunnelSocket, create_connection
from ._config import DeviceInfo, State
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
)
from ._relay import Credential, Relay, generate_token
from ._streams import TunnelReader, TunnelWriter

# Results of Rust futures reach asyncio from background threads; at exit, stop that
# before the interpreter finalizes (a thread taking the GIL then would abort the process).
atexit.register(_native.at_exit)

__all__ = [
    # asyncio
    "Listener",
    "Connection",
    "Incoming",
    "Client",
    "LocalServer",
    "connect",
    "open_connection",
    "list_devices",
    "TunnelReader",
    "TunnelWriter",
    # blocking
    "Agent",
    "BlockingClient",
    "TunnelSocket",
    "LocalForward",
    "create_connection",
    # both
    "Relay",
    "Credential",
    "generate_token",
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
]
