"""python/examples/device.py, run as a real script: exposes a service, stops on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import tunnel
from conftest import REPO, WAIT, EchoServer, Env


def test_the_device_example_exposes_a_service_and_stops_on_sigterm(env: Env, echo: EchoServer) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "python/examples/device.py"), "--relay", env.relay.address,
         "--pin", env.relay.pin, "--device-id", "pi-42", "--expose", f"echo={echo.address}"],
        env={"TUNNEL_TOKEN": env.device.token, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        text=True,
    )
    pool = ThreadPoolExecutor(1)
    try:
        assert proc.stdout is not None
        line = pool.submit(proc.stdout.readline).result(WAIT)  # a bounded readline
        assert line.strip() == "pi-42: connected"
        with tunnel.create_connection(device="pi-42", service="echo", timeout=WAIT, **env.creds(env.alice)) as s:
            s.sendall(b"example")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b"example"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT)
        assert out.strip().endswith("pi-42: stopped") and proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        pool.shutdown(wait=False)
