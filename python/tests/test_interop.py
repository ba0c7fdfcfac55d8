"""Python and the Rust binaries on one relay: a Python device reached by `tunnel-access`,
a Python access client reaching a `tunnel-agent`, Python clients on a `tunnel-relay`."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
from pathlib import Path
from typing import Callable

import tunnel
from conftest import WAIT, EchoServer, Env, Proc, binary, exchange, make_credentials, run, serve_echo


def token_file(path: Path, credentials: list[tunnel.Credential]) -> Path:
    """A `tunnel-relay` token file (TOML; tokens stored as SHA-256 hashes)."""
    lines = []
    for c in credentials:
        digest = hashlib.sha256(c.token.encode()).hexdigest()
        lines += [
            "[[token]]",
            f'name = "{c.name}"',
            f'hash = "sha256:{digest}"',
            f"devices = {list(c.devices)!r}".replace("'", '"'),
            f"access = {list(c.access)!r}".replace("'", '"'),
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def test_a_python_device_is_reached_by_the_rust_access_binary(env: Env, procs: Callable[..., Proc]) -> None:
    async def main() -> None:
        async with tunnel.Listener(device="pi-42", services=["echo"], **env.creds(env.device)) as lst:
            device = asyncio.create_task(serve_echo(lst))
            access = procs(
                [str(binary("tunnel-access")), "--relay", env.relay.address, "--pin", env.relay.pin,
                 "--device", "pi-42", "--service", "echo", "--listen", "127.0.0.1:0"],
                env={"TUNNEL_TOKEN": env.alice.token},
            )
            addr = (await asyncio.to_thread(access.read_keys, "listening"))["listening"]
            host, port = addr.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"from rust access to a python device")
            writer.write_eof()
            assert await reader.read() == b"from rust access to a python device"
            writer.close()
            device.cancel()

    run(main())


def test_a_python_client_reaches_the_rust_agent(env: Env, echo: EchoServer, procs: Callable[..., Proc]) -> None:
    procs(
        [str(binary("tunnel-agent")), "--relay", env.relay.address, "--pin", env.relay.pin,
         "--device-id", "pi-42", "--expose", f"echo={echo.address}"],
        env={"TUNNEL_TOKEN": env.device.token},
    )

    async def main() -> None:
        while "pi-42" not in env.relay.online_devices():
            await asyncio.sleep(0.05)
        pair = await tunnel.open_connection(device="pi-42", service="echo", **env.creds(env.alice))
        assert await exchange(*pair, b"from python to the rust agent") == b"from python to the rust agent"

    run(main())
    # The blocking API too.
    with tunnel.create_connection(device="pi-42", service="echo", timeout=WAIT, **env.creds(env.alice)) as sock:
        sock.sendall(b"blocking")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b"blocking"


def test_python_device_and_client_on_the_rust_relay(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    device, alice, _ = make_credentials()
    tokens = token_file(tmp_path / "tokens.toml", [device, alice])
    relay = procs(
        [str(binary("tunnel-relay")), "serve", "--listen", "127.0.0.1:0", "--tokens", str(tokens),
         "--state-dir", str(tmp_path / "state"), "--grace-secs", "1"]
    )
    keys = relay.read_keys("listening", "pin")
    creds = {"relay": keys["listening"], "pin": keys["pin"]}
    done = threading.Event()

    async def main() -> None:
        async with tunnel.Listener(device="pi-42", services=["echo"], token=device.token, **creds) as lst:
            task = asyncio.create_task(serve_echo(lst))
            assert await tunnel.list_devices(token=alice.token, **creds) == [
                tunnel.DeviceInfo("pi-42", True, ("echo",))
            ]
            reader, writer = await tunnel.open_connection(device="pi-42", service="echo", token=alice.token, **creds)
            writer.write(b"all python, rust relay")
            writer.write_eof()
            assert await reader.read() == b"all python, rust relay"
            writer.close()
            task.cancel()
            done.set()

    run(main())
    assert done.is_set()
