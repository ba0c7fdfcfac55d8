"""Shared client settings: relay address, how to trust it, and the credential."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Union

from . import _native

PathLike = Union[str, "os.PathLike[str]"]


def client_config(
    relay: str,
    *,
    pin: str | None = None,
    ca_file: PathLike | None = None,
    token: str | None = None,
    server_name: str | None = None,
    cert_file: PathLike | None = None,
    key_file: PathLike | None = None,
) -> _native.ClientConfig:
    """Validates the settings once. ``token`` defaults to the ``TUNNEL_TOKEN`` environment
    variable, as with the command-line tools."""
    if token is None:
        token = os.environ.get("TUNNEL_TOKEN")
    return _native.ClientConfig(
        relay,
        pin=pin,
        ca_file=os.fspath(ca_file) if ca_file is not None else None,
        token=token,
        server_name=server_name,
        cert_file=os.fspath(cert_file) if cert_file is not None else None,
        key_file=os.fspath(key_file) if key_file is not None else None,
    )


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
    session known to be dead)."""

    #: ``"connected"``, ``"reconnecting"`` or ``"stopped"``.
    kind: str
    #: Why the last session or attempt failed (set while reconnecting).
    last_error: str | None = None
    #: Public ports the relay bound for this device, by service.
    public_ports: dict[str, int] = field(default_factory=dict)

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


def state(row: tuple[str, str | None, list[tuple[str, int]]]) -> State:
    kind, last_error, public = row
    return State(kind, last_error, dict(public))


def services_and_public(
    services: object, public: dict[str, int] | None
) -> tuple[list[str], list[tuple[str, int]]]:
    if isinstance(services, str):
        raise TypeError("services must be a list of names or a {name: address} mapping")
    names = list(services)  # type: ignore[call-overload]
    return names, list((public or {}).items())
