"""Shared fixtures: an in-process relay with credentials, real local TCP services, and the
Rust example binaries. Every wait is bounded; every port is picked by the OS."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import pytest

import tunnel

T = TypeVar("T")

#: Bound on every wait in these tests; generous because CI machines may be loaded.
WAIT = 30.0
REPO = Path(__file__).resolve().parents[2]


def run(coro: Awaitable[T], timeout: float = WAIT) -> T:
    """Runs a coroutine on a fresh event loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@dataclass
class Env:
    """A running relay and the credentials it knows."""

    relay: tunnel.Relay
    device: tunnel.Credential  # may register pi-42 and pi-43
    alice: tunnel.Credential  # may open every service of pi-42
    bob: tunnel.Credential  # may open only pi-42/web

    def creds(self, who: tunnel.Credential) -> dict[str, Any]:
        return {"relay": self.relay.address, "pin": self.relay.pin, "token": who.token}


def make_credentials() -> tuple[tunnel.Credential, tunnel.Credential, tunnel.Credential]:
    return (
        tunnel.Credential("pi", devices=("pi-42", "pi-43")),
        tunnel.Credential("alice", access=("pi-42/*",)),
        tunnel.Credential("bob", access=("pi-42/web",)),
    )


@pytest.fixture
def env() -> Iterator[Env]:
    device, alice, bob = make_credentials()
    relay = tunnel.Relay([device, alice, bob], grace=0.5)
    try:
        yield Env(relay, device, alice, bob)
    finally:
        relay.stop(WAIT)


class EchoServer:
    """A real local TCP service on 127.0.0.1:0 that echoes bytes and carries half-close:
    when its client half-closes, it finishes echoing and half-closes back."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        conn.settimeout(WAIT)
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


def closed_port() -> int:
    """A local port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name: str) -> Path:
    """A Rust example binary; scripts/test.sh builds them before the Python tests."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = target / "debug" / name
    if not path.exists():
        pytest.fail(f"{path} missing: run `cargo build -p tunnel-examples --bins` first")
    return path


class Proc:
    """A child process, killed by its own PID when the test ends."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            text=True,
        )

    def read_keys(self, *keys: str, timeout: float = WAIT) -> dict[str, str]:
        """Reads `key value` lines from stdout until every key was seen."""
        found: dict[str, str] = {}
        done = threading.Event()

        def reader() -> None:
            assert self.popen.stdout is not None
            for line in self.popen.stdout:
                key, _, value = line.strip().partition(" ")
                if key in keys:
                    found[key] = value
                if all(k in found for k in keys):
                    break
            done.set()

        threading.Thread(target=reader, daemon=True).start()
        if not done.wait(timeout) or not all(k in found for k in keys):
            raise AssertionError(f"process did not print {keys} (got {found})")
        return found

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(WAIT)


@pytest.fixture
def procs() -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> Proc:
        p = Proc(args, env)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.stop()


async def echo_handler(conn: tunnel.Connection) -> None:
    """Device-side echo over a tunnel Connection, with half-close carried back."""
    reader, writer = conn
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def exchange(reader: Any, writer: Any, data: bytes) -> bytes:
    """Sends ``data``, half-closes, reads until the far end closes, closes: one round trip
    through an echo, over a tunnel pair or a plain asyncio one."""
    writer.write(data)
    writer.write_eof()
    received = await reader.read()
    writer.close()
    await writer.wait_closed()
    return received


async def serve_echo(listener: tunnel.Listener) -> None:
    """Serves every accepted connection of `listener` with `echo_handler`."""
    tasks = set()
    async for conn in listener:
        task = asyncio.create_task(echo_handler(conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
