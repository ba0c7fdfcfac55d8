"""Every failure surfaces as a typed exception of the TunnelError hierarchy; panics become
exceptions; secrets never show in repr() or exception text."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

import tunnel
from tunnel import _native
from conftest import WAIT, Env, closed_port, run


def test_the_hierarchy_mirrors_the_rust_errors() -> None:
    for cls in (
        tunnel.ConfigError,
        tunnel.ConnectError,
        tunnel.DeniedError,
        tunnel.DeviceOfflineError,
        tunnel.UnknownServiceError,
        tunnel.TargetRefusedError,
        tunnel.UnavailableError,
        tunnel.ConnectionLostError,
        tunnel.ProtocolError,
        tunnel.RelayError,
        tunnel.InternalError,
        tunnel.WriteBufferFullError,
    ):
        assert issubclass(cls, tunnel.TunnelError) and cls.__module__ == "tunnel"
        assert cls.__doc__
    assert issubclass(tunnel.AuthError, tunnel.ConnectError)
    assert issubclass(tunnel.CertificateError, tunnel.ConnectError)
    assert issubclass(tunnel.TunnelError, Exception)


def test_every_row_of_the_core_status_table_raises_the_exception_it_names() -> None:
    """The one status table (tunnel-core's ErrorKind) names a Python exception per kind;
    the class the bindings raise for that kind must be it."""
    rows = _native.error_table()
    assert rows and len({kind for kind, _, _ in rows}) == len(rows)
    for kind, name, raised in rows:
        if kind == "Io":
            assert name == "OSError" and raised is OSError, (kind, name, raised)
            continue
        exported = getattr(tunnel, name, None)
        assert exported is not None and name in tunnel.__all__, f"{kind}: tunnel.{name} missing"
        assert raised is exported and raised.__name__ == name, (kind, name, raised)
        assert issubclass(raised, tunnel.TunnelError)
    # The other way round: every exported exception is in the table, but for the base
    # class and the three that no wire or connection error produces.
    in_table = {name for _, name, _ in rows}
    exceptions = {n for n in tunnel.__all__ if isinstance(getattr(tunnel, n), type)
                  and issubclass(getattr(tunnel, n), BaseException)}
    assert exceptions - in_table == {"TunnelError", "RelayError", "InternalError",
                                        "WriteBufferFullError"}


def test_a_wrong_token_is_an_auth_error_without_the_token_in_it(env: Env) -> None:
    secret = "tun_" + "ab" * 32
    with pytest.raises(tunnel.AuthError) as e:
        tunnel.BlockingDialer(relay=env.relay.address, pin=env.relay.pin, token=secret, timeout=WAIT)
    assert secret not in str(e.value) and secret not in repr(e.value)
    with pytest.raises(tunnel.AuthError):
        run(tunnel.connect(relay=env.relay.address, pin=env.relay.pin, token=secret))
    # A device with a bad token fails at once instead of retrying forever.
    with pytest.raises(tunnel.AuthError):
        tunnel.Agent(relay=env.relay.address, pin=env.relay.pin, token=secret, device="pi-42",
                     forward={"x": "127.0.0.1:1"}).start(WAIT)


def test_a_wrong_pin_is_a_certificate_error(env: Env) -> None:
    wrong = "sha256:" + "1" * 64
    with pytest.raises(tunnel.CertificateError):
        tunnel.BlockingDialer(relay=env.relay.address, pin=wrong, token=env.alice.token, timeout=WAIT)


def test_an_unreachable_relay_is_a_connect_error() -> None:
    with pytest.raises(tunnel.ConnectError) as e:
        tunnel.BlockingDialer(relay=f"127.0.0.1:{closed_port()}", pin="sha256:" + "0" * 64, token="t", timeout=WAIT)
    assert not isinstance(e.value, (tunnel.AuthError, tunnel.CertificateError))


def test_access_errors_are_typed(env: Env) -> None:
    device = tunnel.Agent(device="pi-42", forward={"web": f"127.0.0.1:{closed_port()}"}, **env.creds(env.device))
    with device, tunnel.BlockingDialer(timeout=WAIT, **env.creds(env.bob)) as bob:
        with pytest.raises(tunnel.DeniedError):
            bob.connect("pi-42", "ssh")  # bob may open only pi-42/web
        with pytest.raises(tunnel.TargetRefusedError):
            bob.connect("pi-42", "web")  # nothing listens behind it
        with tunnel.BlockingDialer(timeout=WAIT, **env.creds(env.alice)) as alice:
            with pytest.raises(tunnel.UnknownServiceError):
                alice.connect("pi-42", "ssh")
            with pytest.raises(tunnel.ConfigError):
                alice.connect("pi 42", "ssh")  # not a valid name
    with tunnel.BlockingDialer(timeout=WAIT, **env.creds(env.alice)) as alice:
        with pytest.raises(tunnel.DeviceOfflineError):
            alice.connect("pi-42", "web")


def test_a_device_id_the_credential_may_not_register_is_denied(env: Env) -> None:
    async def main() -> None:
        with pytest.raises(tunnel.DeniedError):
            await tunnel.Listener(device="pi-99", services=["x"], **env.creds(env.device)).start()

    run(main())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pin": "sha256:nothex"},
        {},  # neither pin nor ca_file
        {"pin": "sha256:" + "0" * 64, "ca_file": "/nonexistent.pem"},
        {"ca_file": "/nonexistent.pem"},
    ],
)
def test_bad_configuration_is_a_config_error(kwargs: dict) -> None:
    with pytest.raises(tunnel.ConfigError):
        tunnel.BlockingDialer(relay="127.0.0.1:1", token="t", **kwargs)


def test_two_credentials_with_one_name_are_refused() -> None:
    # One name is one owner of device IDs: two credentials sharing it would evict each
    # other's sessions and own each other's devices.
    with pytest.raises(tunnel.ConfigError, match="used twice"):
        tunnel.Relay(
            [
                tunnel.Credential("fleet", devices=("pi-*",)),
                tunnel.Credential("fleet", devices=("lab-*",)),
            ]
        )


def test_bad_relay_credentials_are_config_errors() -> None:
    with pytest.raises(tunnel.ConfigError):
        tunnel.Relay([])  # a relay that lets nobody in is a mistake
    with pytest.raises(tunnel.ConfigError):
        tunnel.Relay([tunnel.Credential("x", access=("no-slash",))])


def test_secrets_never_appear_in_repr() -> None:
    cred = tunnel.Credential("alice", access=("pi-42/*",))
    assert cred.token.startswith("tun_") and len(cred.token) == 68
    assert cred.token not in repr(cred) and cred.token not in str(cred)
    config = _native.ClientConfig("relay:1", pin="sha256:" + "0" * 64, token=cred.token)
    assert cred.token not in repr(config) and "redacted" in repr(config)
    with tunnel.Relay([cred], grace=0.1) as relay:
        assert cred.token not in repr(relay)
        dialer = tunnel.BlockingDialer(relay=relay.address, pin=relay.pin, token=cred.token)
        assert cred.token not in repr(dialer)
        dialer.close()


def test_a_rust_panic_is_an_internal_error_not_an_abort() -> None:
    with pytest.raises(tunnel.InternalError, match="deliberate panic"):
        _native._panic_for_test(False)

    async def awaited() -> None:
        with pytest.raises(tunnel.InternalError, match="deliberate panic"):
            await _native._panic_for_test(True)

    run(awaited())
    # The runtime survives: the library still works after a panic.
    assert tunnel.generate_token().startswith("tun_")
    cred = tunnel.Credential("x", access=("pi-42/*",))
    with tunnel.Relay([cred], grace=0.1) as relay:
        with tunnel.BlockingDialer(relay=relay.address, pin=relay.pin, token=cred.token, timeout=WAIT) as c:
            assert [d.device for d in c.list_devices()] == ["pi-42"]


def test_stream_errors_are_builtin_oserrors(env: Env) -> None:
    """A stream cut mid-way raises ConnectionResetError, like a TCP connection would."""

    async def main() -> None:
        async with tunnel.Listener(device="pi-42", services=["x"], **env.creds(env.device)) as lst:
            accepted = asyncio.ensure_future(lst.accept())
            reader, writer = await tunnel.open_connection(device="pi-42", service="x", **env.creds(env.alice))
            conn = await accepted
            assert conn is not None
        # The listener is closed: its streams are cut.
        with pytest.raises(ConnectionResetError):
            while await reader.read(10):
                pass
        with pytest.raises(OSError):
            for _ in range(100):
                writer.write(b"x" * 1000)
                await writer.drain()
                await asyncio.sleep(0.01)

    run(main())


def test_connecting_to_a_plain_tcp_port_fails_cleanly() -> None:
    """Not a relay at all: the TLS handshake fails with a ConnectError."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def close_all() -> None:
        conn, _ = server.accept()
        conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        conn.close()

    t = threading.Thread(target=close_all, daemon=True)
    t.start()
    try:
        with pytest.raises(tunnel.ConnectError):
            tunnel.BlockingDialer(relay=f"127.0.0.1:{port}", pin="sha256:" + "0" * 64, token="t", timeout=WAIT)
    finally:
        t.join(WAIT)
        server.close()
