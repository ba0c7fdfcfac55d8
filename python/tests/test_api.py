"""The shape of the public API: names that mirror Rust, the deprecated aliases that still
work, services= (names) versus forward= (targets), and the one set of connection keywords
every entry point takes."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

import tunnel
from conftest import WAIT, EchoServer, Env, closed_port, run

UNUSED_PIN = "sha256:" + "0" * 64


def echo_through(env: Env, service: str = "echo") -> bytes:
    with tunnel.create_connection(device="pi-42", service=service, timeout=WAIT, **env.creds(env.alice)) as s:
        s.sendall(b"ping")
        s.shutdown(socket.SHUT_WR)
        return s.recv(100)


# --- names ---------------------------------------------------------------------------


def test_public_names_mirror_rust_and_all_lists_only_current_names() -> None:
    for name in ("Listener", "Dialer", "Incoming", "DeviceInfo", "BlockingDialer",
                 "LocalServer", "BlockingLocalServer", "ClientOptions"):
        assert name in tunnel.__all__
    for name in tunnel.__all__:
        assert hasattr(tunnel, name), name
    assert not {"Client", "BlockingClient", "LocalForward"} & set(tunnel.__all__)
    with pytest.raises(AttributeError):
        tunnel.NoSuchName  # noqa: B018


def test_client_is_a_deprecated_alias_of_dialer(env: Env) -> None:
    with pytest.warns(DeprecationWarning, match=r"tunnel\.Client is deprecated: use tunnel\.Dialer"):
        from tunnel import Client
    assert Client is tunnel.Dialer

    async def main() -> None:
        dialer = await tunnel.connect(**env.creds(env.alice))
        assert isinstance(dialer, Client) and repr(dialer).startswith("<Dialer ")
        await dialer.close()

    run(main())


def test_blocking_client_is_a_deprecated_alias_of_blocking_dialer(env: Env) -> None:
    with pytest.warns(DeprecationWarning, match=r"use tunnel\.BlockingDialer"):
        cls = tunnel.BlockingClient
    with cls(timeout=WAIT, **env.creds(env.alice)) as dialer:
        assert isinstance(dialer, tunnel.BlockingDialer)
        assert dialer.list_devices() == [tunnel.DeviceInfo("pi-42", False, ())]


def test_local_forward_is_a_deprecated_alias_of_blocking_local_server(env: Env) -> None:
    with pytest.warns(DeprecationWarning, match=r"use tunnel\.BlockingLocalServer"):
        cls = tunnel.LocalForward
    assert cls is tunnel.BlockingLocalServer
    with tunnel.BlockingDialer(timeout=WAIT, **env.creds(env.alice)) as dialer:
        with dialer.serve_local("pi-42", "echo") as server:
            assert isinstance(server, cls) and server.port > 0
            assert repr(server) == f"<BlockingLocalServer {server.address}>"


# --- services= takes names, forward= takes targets -----------------------------------


def test_listener_forward_is_explicit_and_other_services_are_refused(env: Env, echo: EchoServer) -> None:
    async def main() -> None:
        async with tunnel.Listener(device="pi-42", services=["echo", "web"],
                                   forward={"echo": echo.address}, **env.creds(env.device)):
            assert await asyncio.to_thread(echo_through, env) == b"ping"
            # Offered but not forwarded: refused as unknown.
            with pytest.raises(tunnel.UnknownServiceError):
                await tunnel.open_connection(device="pi-42", service="web", **env.creds(env.alice))

    run(main())


def test_a_mapping_as_listener_services_still_forwards_but_warns(env: Env, echo: EchoServer) -> None:
    with pytest.warns(DeprecationWarning, match="pass it as forward=") as caught:
        lst = tunnel.Listener(device="pi-42", services={"echo": echo.address}, **env.creds(env.device))
    assert caught[0].filename == __file__  # points at the caller

    async def main() -> None:
        async with lst:
            assert await asyncio.to_thread(echo_through, env) == b"ping"

    run(main())


def test_a_mapping_as_agent_services_still_forwards_but_warns(env: Env, echo: EchoServer) -> None:
    with pytest.warns(DeprecationWarning, match="pass it as forward="):
        agent = tunnel.Agent(device="pi-42", services={"echo": echo.address}, **env.creds(env.device))
    with agent:
        assert echo_through(env) == b"ping"


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({}, TypeError),  # neither
        ({"services": "echo"}, TypeError),  # a string is not a list of names
        ({"services": {"a": "127.0.0.1:1"}, "forward": {"a": "127.0.0.1:1"}}, TypeError),
        ({"forward": ["a"]}, TypeError),  # forward needs addresses
        ({"services": ["a"], "forward": {"b": "127.0.0.1:1"}}, tunnel.ConfigError),
    ],
)
def test_services_and_forward_are_checked(kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        tunnel.Listener(device="pi-42", relay="127.0.0.1:1", pin=UNUSED_PIN, **kwargs)


def test_an_agent_needs_forward() -> None:
    with pytest.raises(TypeError, match="forward="):
        tunnel.Agent(device="pi-42", services=["ssh"], relay="127.0.0.1:1", pin=UNUSED_PIN)


# --- one set of connection keywords ---------------------------------------------------


def test_every_entry_point_takes_the_same_connection_keywords_and_checks_them() -> None:
    bad: dict[str, Any] = {"relay": "127.0.0.1:1", "pin": UNUSED_PIN, "tokn": "x"}  # a typo
    entry_points = [
        lambda: tunnel.Listener(device="d", services=["s"], **bad),
        lambda: tunnel.Agent(device="d", forward={"s": "127.0.0.1:1"}, **bad),
        lambda: tunnel.BlockingDialer(**bad),
        lambda: tunnel.create_connection(device="d", service="s", **bad),
        lambda: run(tunnel.connect(**bad)),
        lambda: run(tunnel.open_connection(device="d", service="s", **bad)),
        lambda: run(tunnel.list_devices(**bad)),
    ]
    for call in entry_points:
        with pytest.raises(TypeError, match="unexpected keyword argument 'tokn'"):
            call()
    with pytest.raises(TypeError, match="'relay'"):
        tunnel.BlockingDialer(pin=UNUSED_PIN)  # type: ignore[call-arg]


def test_client_options_are_one_reusable_dict_and_the_token_defaults_to_the_environment(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    opts: tunnel.ClientOptions = {"relay": env.relay.address, "pin": env.relay.pin}
    monkeypatch.setenv("TUNNEL_TOKEN", env.alice.token)
    with tunnel.BlockingDialer(timeout=WAIT, **opts) as dialer:
        assert [d.device for d in dialer.list_devices()] == ["pi-42"]
    assert [d.device for d in run(tunnel.list_devices(**opts))] == ["pi-42"]
    # Paths may be os.PathLike.
    with pytest.raises(tunnel.ConfigError):
        tunnel.BlockingDialer(relay=f"127.0.0.1:{closed_port()}", ca_file=Path("/nonexistent.pem"))
