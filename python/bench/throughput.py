#!/usr/bin/env python3
"""One 256 MiB transfer, device → client, through a real relay and device agent:
read in Python through asyncio (`tunnel.open_connection`), versus the same transfer read
through the Rust `tunnel-access` binary (a plain socket drains its local port).

The relay (`tunnel-relay`) and the device (`tunnel-agent`, exposing a local service that
sends the bytes) are the Rust release binaries in both runs, so the ratio isolates the
access side: Python bindings + asyncio versus the native client.

    cargo build --release -p tunnel-examples --bins
    python3 python/bench/throughput.py [--mib 256] [--target-dir target]

A/B of two builds of the bindings (say, before and after a change to tunnel-ffi): install
each in its own virtualenv (`maturin build --release` + `pip install` the wheel, or
`maturin develop --release`), then

    python3 python/bench/throughput.py --ab VENV_A/bin/python VENV_B/bin/python [--pairs 5]

runs the Python side only, under A then B, pair after pair (interleaved, so drift on a
shared machine hits both alike), each run with a fresh relay and agent, and prints
min/median/max MiB/s of each and the ratio of the medians B / A.

Not a test: it prints figures and asserts only that every byte arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import tunnel

REPO = Path(__file__).resolve().parents[2]
CHUNK = 1 << 20


class Source:
    """A local service that sends `size` bytes to each connection, then closes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.block = memoryview(os.urandom(CHUNK))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._send, args=(conn,), daemon=True).start()

    def _send(self, conn: socket.socket) -> None:
        with conn:
            left = self.size
            while left > 0:
                n = min(left, CHUNK)
                conn.sendall(self.block[:n])
                left -= n
            conn.shutdown(socket.SHUT_WR)


def read_key(proc: subprocess.Popen, key: str, timeout: float = 60) -> str:
    found: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(key + " "):
                found.append(line.split(" ", 1)[1].strip())
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    if not found:
        raise RuntimeError(f"{proc.args[0]} did not print {key!r}")
    return found[0]


def via_rust_access(access_addr: str, size: int) -> float:
    host, port = access_addr.rsplit(":", 1)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with socket.create_connection((host, int(port)), timeout=120) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        got = 0
        while n := s.recv_into(view):
            got += n
        elapsed = time.perf_counter() - started
    assert got == size, (got, size)
    return elapsed


async def via_python_asyncio(creds: dict, size: int) -> float:
    reader, writer = await tunnel.open_connection(device="bench", service="source", **creds)
    started = time.perf_counter()
    got = 0
    while data := await reader.read(CHUNK):
        got += len(data)
    elapsed = time.perf_counter() - started
    writer.close()
    await writer.wait_closed()
    assert got == size, (got, size)
    return elapsed


def ab(args: argparse.Namespace) -> int:
    """Runs `--python-only` under each interpreter in turn and summarises."""
    runs: dict[str, list[float]] = {"A": [], "B": []}
    for i in range(args.pairs):
        for label, python in zip("AB", args.ab):
            out = subprocess.run(
                [python, __file__, "--python-only", "--mib", str(args.mib), "--target-dir", args.target_dir],
                check=True, capture_output=True, text=True, timeout=600,
            ).stdout
            mib_s = float(next(l for l in out.splitlines() if l.startswith("python_mib_s ")).split()[1])
            runs[label].append(mib_s)
            print(f"pair {i + 1} {label}: {mib_s:8.1f} MiB/s", flush=True)
    print(f"{args.mib} MiB device -> client, Python asyncio reader, {args.pairs} interleaved pairs:")
    for label, python in zip("AB", args.ab):
        r = runs[label]
        print(f"  {label} ({python}): min {min(r):.1f}  median {statistics.median(r):.1f}  max {max(r):.1f} MiB/s")
    print(f"  ratio of medians B / A: {statistics.median(runs['B']) / statistics.median(runs['A']):.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--target-dir", default=str(REPO / "target"))
    parser.add_argument("--python-only", action="store_true", help="skip the Rust tunnel-access run")
    parser.add_argument("--ab", nargs=2, metavar=("PYTHON_A", "PYTHON_B"),
                        help="compare two interpreters (virtualenvs with different builds)")
    parser.add_argument("--pairs", type=int, default=5, help="A/B pairs with --ab")
    args = parser.parse_args()
    if args.ab:
        return ab(args)
    size = args.mib << 20
    bins = Path(args.target_dir) / "release"
    for name in ("tunnel-relay", "tunnel-agent", "tunnel-access"):
        if not (bins / name).exists():
            print(f"{bins / name} missing: cargo build --release -p tunnel-examples --bins", file=sys.stderr)
            return 1

    device = tunnel.Credential("bench-device", devices=("bench",))
    client = tunnel.Credential("bench-client", access=("bench/*",))
    source = Source(size)
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens.toml"
        tokens.write_text(
            "".join(
                f'[[token]]\nname = "{c.name}"\nhash = "sha256:{hashlib.sha256(c.token.encode()).hexdigest()}"\n'
                f"devices = {list(c.devices)!r}\naccess = {list(c.access)!r}\n\n".replace("'", '"')
                for c in (device, client)
            )
        )
        quiet = {**os.environ, "RUST_LOG": "warn"}
        try:
            relay = subprocess.Popen(
                [str(bins / "tunnel-relay"), "serve", "--listen", "127.0.0.1:0", "--tokens", str(tokens),
                 "--state-dir", str(Path(tmp) / "state")],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=quiet,
            )
            procs.append(relay)
            relay_addr, pin = read_key(relay, "listening"), read_key(relay, "pin")
            common = ["--relay", relay_addr, "--pin", pin]
            procs.append(subprocess.Popen(
                [str(bins / "tunnel-agent"), *common, "--device-id", "bench", "--expose", f"source={source.address}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**quiet, "TUNNEL_TOKEN": device.token},
            ))
            access = subprocess.Popen(
                [str(bins / "tunnel-access"), *common, "--device", "bench", "--service", "source",
                 "--listen", "127.0.0.1:0"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                env={**quiet, "TUNNEL_TOKEN": client.token},
            )
            procs.append(access)
            access_addr = read_key(access, "listening")
            creds = {"relay": relay_addr, "pin": pin, "token": client.token}

            async def wait_online() -> None:
                for _ in range(600):
                    if any(d.online for d in await tunnel.list_devices(**creds)):
                        return
                    await asyncio.sleep(0.05)
                raise RuntimeError("the agent did not come online")

            asyncio.run(wait_online())
            rust = None if args.python_only else via_rust_access(access_addr, size)
            python = asyncio.run(via_python_asyncio(creds, size))
        finally:
            for p in procs:
                p.terminate()
                p.wait(30)
    mib = size / 2**20
    if rust is None:
        print(f"python_mib_s {mib / python:.1f}")
        return 0
    print(f"{args.mib} MiB device -> client through tunnel-relay + tunnel-agent (release):")
    print(f"  Rust tunnel-access     : {rust:6.2f} s  {mib / rust:8.1f} MiB/s")
    print(f"  Python asyncio (tunnel): {python:6.2f} s  {mib / python:8.1f} MiB/s")
    print(f"  ratio Python / Rust    : {rust / python:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
