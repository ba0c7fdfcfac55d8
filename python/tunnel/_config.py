"""What the asyncio and the blocking API share: the connection keywords every entry point
takes (:class:`ClientOptions`, validated in one place), what a device registers, the
local-port handle, and the value types both return."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, TypedDict, Union

from . import _native

PathLike = Union[str, "os.PathLike[str]"]


class _Relay(TypedDict):
    relay: Union[str, "Iterable[str]"]


class ClientOptions(_Relay, total=False):
    """The connection keywords every entry point takes, written once: :class:`Listener`,
    :func:`connect`, :func:`open_connection`, :func:`list_devices`, :class:`Agent`,
    :class:`BlockingDialer` and :func:`create_connection`. They are the fields of Rust's
    ``ClientConfig``.

    - ``relay`` (required): the relay's ``host:port``; for a cluster, several relays as a
      list (or comma-separated): each connection tries them in turn, starting with the one
      that worked last (a random one at first), and a name that resolves to several
      addresses counts as several.
    - ``pin``: trust the relay by its public-key pin (``sha256:…``, which ``tunnel-relay``
      prints). Give exactly one of ``pin`` and ``ca_file``.
    - ``ca_file``: trust the relay through the CA certificates (PEM) in this file.
    - ``token``: the bearer token; defaults to ``$TUNNEL_TOKEN``, as with the command-line
      tools.
    - ``server_name``: the name sent in SNI and, with ``ca_file``, checked in the relay's
      certificate; defaults to the host part of ``relay``.
    - ``cert_file``, ``key_file``: a TLS client certificate and its key (PEM), both or
      neither.

    Settings both ends must agree on (stream limits, heartbeat) are announced by the relay
    and are not set here. To keep one set of settings, build the dict once::

        opts: tunnel.ClientOptions = {"relay": "relay.example.com:7835", "pin": PIN}
        async with await tunnel.connect(**opts) as dialer: ...
    """

    pin: str | None
    ca_file: PathLike | None
    token: str | None
    server_name: str | None
    cert_file: PathLike | None
    key_file: PathLike | None


_CLIENT_KEYS = ClientOptions.__required_keys__ | ClientOptions.__optional_keys__


def _path(path: PathLike | None) -> str | None:
    return os.fspath(path) if path is not None else None


def client_config(options: ClientOptions) -> _native.ClientConfig:
    """Checks the connection keywords an entry point received (as Python would check a
    signature) and validates the settings once."""
    unknown = sorted(options.keys() - _CLIENT_KEYS)
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
    if "relay" not in options:
        raise TypeError("missing required keyword argument 'relay'")
    token = options.get("token")
    if token is None:
        token = os.environ.get("TUNNEL_TOKEN")
    relay = options["relay"]
    if not isinstance(relay, str):
        relays = [str(r) for r in relay]
        if not relays or any("," in r or not r for r in relays):
            raise ValueError(f"relay: want host:port addresses, got {relays!r}")
        relay = ",".join(relays)
    return _native.ClientConfig(
        relay,
        pin=options.get("pin"),
        ca_file=_path(options.get("ca_file")),
        token=token,
        server_name=options.get("server_name"),
        cert_file=_path(options.get("cert_file")),
        key_file=_path(options.get("key_file")),
    )


@dataclass(frozen=True)
class DeviceSetup:
    """What a device registers with the relay, checked once for both APIs."""

    config: _native.ClientConfig
    device: str
    #: The service names callers may ask for.
    services: list[str]
    #: ``{service: local address}`` to forward in the background, or None to iterate.
    targets: dict[str, str] | None
    #: ``(service, port)`` public ports to ask for.
    public: list[tuple[str, int]]


def device_setup(
    device: str,
    services: Iterable[str] | Mapping[str, str] | None,
    forward: Mapping[str, str] | None,
    public: Mapping[str, int] | None,
    options: ClientOptions,
) -> DeviceSetup:
    """``services`` takes names; ``forward`` the ``{name: address}`` targets (its names are
    the services when ``services`` is not given). A mapping as ``services`` still means
    ``forward``, with a DeprecationWarning pointing at the caller of the constructor."""
    if isinstance(services, str):
        raise TypeError("services must be a list of service names, not a string")
    if isinstance(services, Mapping):
        if forward is not None:
            raise TypeError("give the {name: address} mapping once, as forward=")
        warnings.warn(
            "a {name: address} mapping as services= is deprecated: pass it as forward= "
            "(services= takes names only)",
            DeprecationWarning,
            stacklevel=3,  # device_setup <- the constructor <- its caller
        )
        services, forward = None, services
    if forward is not None and not isinstance(forward, Mapping):
        raise TypeError("forward must map each service name to a local host:port")
    targets = dict(forward) if forward is not None else None
    if services is None:
        if targets is None:
            raise TypeError("give services= (names) or forward= ({name: address})")
        names = list(targets)
    else:
        names = list(services)
        missing = sorted((targets or {}).keys() - set(names))
        if missing:
            raise _native.ConfigError(f"forward= has services missing from services=: {missing}")
    return DeviceSetup(
        client_config(options), device, names, targets, list((public or {}).items())
    )


class LocalPort:
    """A local port whose connections are forwarded to a device service: what both
    APIs' local servers share (the Rust ``serve_local``)."""

    def __init__(self, native: _native.LocalServer) -> None:
        self._native = native

    @property
    def address(self) -> str:
        """The bound ``ip:port``."""
        return self._native.address

    @property
    def port(self) -> int:
        """The bound port."""
        return self._native.port

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address}>"


@dataclass(frozen=True)
class DeviceInfo:
    """A device a credential may reach, as listed by the relay."""

    #: The device ID.
    device: str
    #: Whether it is connected to the relay right now.
    online: bool
    #: The services it declared that this credential may open.
    services: tuple[str, ...] = field(default_factory=tuple)


def device_infos(rows: list[tuple[str, bool, list[str]]]) -> list[DeviceInfo]:
    return [DeviceInfo(device, online, tuple(services)) for device, online, services in rows]


@dataclass(frozen=True)
class State:
    """A device's connection to the relay, as last observed (never ``connected`` for a
    session known to be dead). Rust's ``ListenerState``."""

    #: ``"connected"``, ``"reconnecting"`` or ``"stopped"``.
    kind: str
    #: Why the last session or attempt failed (set while reconnecting).
    last_error: str | None = None
    #: Public ports the relay bound for this device, by service.
    public_ports: dict[str, int] = field(default_factory=dict)
    #: Public ports asked for that the relay left out (busy, reserved for another device,
    #: over the credential's cap), by service: why. The device is registered and
    #: reachable privately either way.
    public_failed: dict[str, str] = field(default_factory=dict)

    @property
    def connected(self) -> bool:
        """Registered with the relay right now."""
        return self.kind == "connected"

    @property
    def reconnecting(self) -> bool:
        """Not connected; retrying with backoff."""
        return self.kind == "reconnecting"

    @property
    def stopped(self) -> bool:
        """Stopped for good (closed)."""
        return self.kind == "stopped"


def state(row: tuple[str, str | None, list[tuple[str, int]], list[tuple[str, str]]]) -> State:
    kind, last_error, public, failed = row
    return State(kind, last_error, dict(public), dict(failed))
