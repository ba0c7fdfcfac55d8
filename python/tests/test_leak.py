"""1000 open/close cycles in one process leave no threads, file descriptors or memory
behind. Each cycle is a full one-shot `open_connection`: a new TLS session with the relay,
a stream to the device, an echo, a close."""

from __future__ import annotations

import asyncio
import os
import time

import tunnel
from conftest import Env, echo_handler, run

CYCLES = 1000
WARMUP = 100
#: Resident memory may grow this much over 1000 cycles (allocator caches, interned
#: strings); a leak of one stream or session per cycle would be several times more.
RSS_SLACK = 24 * 1024 * 1024


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def settle(baseline_threads: int, baseline_fds: int, timeout: float = 15.0) -> tuple[int, int]:
    """Idle blocking-pool threads exit after 2 s and closing sessions release their
    sockets asynchronously: wait (bounded) for both to come back down."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t, f = threads(), fds()
        if t <= baseline_threads and f <= baseline_fds:
            return t, f
        time.sleep(0.1)
    return threads(), fds()


def test_a_thousand_open_close_cycles_leak_nothing(env: Env) -> None:
    async def cycles(lst: tunnel.Listener, n: int) -> None:
        for i in range(n):
            accepted = asyncio.ensure_future(lst.accept())
            reader, writer = await tunnel.open_connection(device="pi-42", service="echo", **env.creds(env.alice))
            conn = await accepted
            assert conn is not None
            device = asyncio.create_task(echo_handler(conn))
            writer.write(b"cycle %d" % i)
            writer.write_eof()
            assert await reader.read() == b"cycle %d" % i
            writer.close()
            await writer.wait_closed()
            await device

    async def main() -> dict[str, int]:
        async with tunnel.Listener(device="pi-42", services=["echo"], **env.creds(env.device)) as lst:
            await cycles(lst, WARMUP)
            t0, f0 = settle(10**6, 10**6, timeout=3.0)
            base = {"threads": t0, "fds": f0, "rss": rss()}
            started = time.monotonic()
            await cycles(lst, CYCLES)
            elapsed = time.monotonic() - started
            t1, f1 = await asyncio.to_thread(settle, base["threads"], base["fds"])
            after = {"threads": t1, "fds": f1, "rss": rss()}
        print(
            f"\nleak test: {CYCLES} cycles in {elapsed:.1f} s; threads {base['threads']} -> {after['threads']}, "
            f"fds {base['fds']} -> {after['fds']}, rss {base['rss'] / 2**20:.1f} -> {after['rss'] / 2**20:.1f} MiB"
        )
        assert after["threads"] <= base["threads"], (base, after)
        assert after["fds"] <= base["fds"], (base, after)
        assert after["rss"] - base["rss"] < RSS_SLACK, (base, after)
        return after

    run(main(), timeout=600)
