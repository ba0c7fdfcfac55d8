"""An in-process relay, for tests and small deployments."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable

from . import _native
from ._config import PathLike


def generate_token() -> str:
    """A fresh random token (``tun_`` and 256 bits as hex)."""
    return _native.generate_token()


@dataclass(frozen=True)
class Credential:
    """A token and what it may do. The token never appears in ``repr()``.

    ``devices`` are the device IDs (patterns such as ``pi-*``) it may register as;
    ``access`` the ``device/service`` pairs (``pi-42/ssh``, ``lab-*/*``) it may open;
    ``public`` whether a device with it may ask for public ports.
    """

    #: Identity name: what devices see as the caller, and what logs show.
    name: str
    #: The bearer token; generated when not given.
    token: str = field(default_factory=generate_token, repr=False)
    #: Device IDs (patterns) this credential may register as.
    devices: tuple[str, ...] = ()
    #: ``device/service`` patterns this credential may open.
    access: tuple[str, ...] = ()
    #: Whether a device with this credential may ask for public ports.
    public: bool = False


class Relay:
    """A relay served in-process on the shared runtime, from construction until
    :meth:`stop` / :meth:`aclose`.

    ::

        alice = tunnel.Credential("alice", access=("pi-42/*",))
        with tunnel.Relay([alice], listen="127.0.0.1:0") as relay:
            print(relay.address, relay.pin)

    Without ``cert_file``/``key_file`` it generates a self-signed certificate, and clients
    trust it by its :attr:`pin`; with ``state_dir`` the certificate is kept there (as
    ``tunnel-relay`` does), so the pin survives restarts. ``grace`` is how long running
    streams may go on after shutdown begins; ``heartbeat`` the ping interval it asks of
    clients (seconds); ``public_ports`` an inclusive ``(low, high)`` range it may bind for
    devices whose credential allows public ports.

    With ``admin_listen`` (an ``ip:port``; needs ``state_dir``) it also serves the admin
    HTTP API of ``tunnel-relay``: the credentials live in the state store there (the given
    ones are imported; the store wins for names it has), change live through the API, and
    :attr:`admin_address` / :attr:`admin_token` say where and how to call it.
    """

    def __init__(
        self,
        credentials: Iterable[Credential] = (),
        *,
        listen: str = "127.0.0.1:0",
        token_file: PathLike | None = None,
        cert_file: PathLike | None = None,
        key_file: PathLike | None = None,
        cert_names: Iterable[str] = ("localhost",),
        state_dir: PathLike | None = None,
        grace: float = 10.0,
        heartbeat: float | None = None,
        public_ports: tuple[int, int] | None = None,
        admin_listen: str | None = None,
    ) -> None:
        rows = [
            (c.name, c.token, list(c.devices), list(c.access), c.public) for c in credentials
        ]
        self._native = _native.Relay(
            rows,
            listen=listen,
            token_file=os.fspath(token_file) if token_file is not None else None,
            cert_file=os.fspath(cert_file) if cert_file is not None else None,
            key_file=os.fspath(key_file) if key_file is not None else None,
            cert_names=list(cert_names),
            state_dir=os.fspath(state_dir) if state_dir is not None else None,
            grace=grace,
            heartbeat=heartbeat,
            public_ports=public_ports,
            admin_listen=admin_listen,
        )

    def __repr__(self) -> str:
        return f"<Relay {self.address} pin={self.pin}>"

    @property
    def address(self) -> str:
        """The bound ``ip:port``, which clients pass as ``relay=``."""
        return self._native.address

    @property
    def host(self) -> str:
        """The bound IP address."""
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        return self._native.port

    @property
    def pin(self) -> str:
        """The relay's public-key pin (``sha256:…``), which clients pass as ``pin=``."""
        return self._native.pin

    @property
    def admin_address(self) -> str | None:
        """The admin API's ``ip:port``, when started with ``admin_listen``."""
        return self._native.admin_address

    @property
    def admin_token(self) -> str | None:
        """A bearer token for the admin API, created for this relay (``None`` without
        ``admin_listen``). Treat it as a secret."""
        return self._native.admin_token

    def online_devices(self) -> list[str]:
        """IDs of the devices online right now, sorted."""
        return self._native.online_devices()

    def close(self) -> None:
        """Starts a graceful shutdown: no new sessions or streams; running streams get
        ``grace`` seconds. Never waits."""
        self._native.close()

    def stop(self, timeout: float | None = None) -> None:
        """Shuts down and blocks until the relay has stopped."""
        self._native.close()
        self._native.wait_closed_blocking(timeout)

    async def aclose(self) -> None:
        """Shuts down and waits (asyncio) until the relay has stopped."""
        self._native.close()
        await self._native.wait_closed()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Relay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
