"""The blocking API: Agent (device side), TunnelSocket / BlockingDialer (access side),
Ctrl-C, state and reconnection, GIL release."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import tunnel
from conftest import WAIT, EchoServer, Env, make_credentials


def agent(env: Env, echo: EchoServer, **kw) -> tunnel.Agent:
    return tunnel.Agent(device="pi-42", forward={"echo": echo.address}, **env.creds(env.device), **kw)


def wait_until(predicate, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_agent_exposes_services_and_a_socket_like_client_reaches_them(env: Env, echo: EchoServer) -> None:
    with agent(env, echo) as a:
        assert a.state.connected
        assert env.relay.online_devices() == ["pi-42"]
        with tunnel.create_connection(device="pi-42", service="echo", timeout=WAIT, **env.creds(env.alice)) as sock:
            sock.sendall(b"hello ")
            assert sock.send(bytearray(b"world")) == 5
            sock.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := sock.recv(4):
                received += chunk
            assert received == b"hello world"
    assert a.state.stopped


def test_blocking_dialer_lists_devices_and_serves_a_local_port(env: Env, echo: EchoServer) -> None:
    with agent(env, echo), tunnel.BlockingDialer(timeout=WAIT, **env.creds(env.alice)) as dialer:
        assert dialer.list_devices() == [tunnel.DeviceInfo("pi-42", True, ("echo",))]
        with dialer.serve_local("pi-42", "echo") as fwd:
            assert isinstance(fwd, tunnel.BlockingLocalServer)
            with socket.create_connection(("127.0.0.1", fwd.port), timeout=WAIT) as s:
                s.sendall(b"via local port")
                s.shutdown(socket.SHUT_WR)
                assert s.recv(100) == b"via local port"
        for i in range(3):  # one session, several streams
            with dialer.connect("pi-42", "echo") as sock:
                sock.sendall(b"%d" % i)
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(10) == b"%d" % i


def test_recv_times_out_with_timeout_error(env: Env, echo: EchoServer) -> None:
    with agent(env, echo):
        sock = tunnel.create_connection(device="pi-42", service="echo", **env.creds(env.alice))
        sock.settimeout(0.3)
        assert sock.gettimeout() == 0.3
        with pytest.raises(TimeoutError):
            sock.recv(10)
        sock.sendall(b"still usable")  # a timed-out recv lost nothing
        assert sock.recv(100) == b"still usable"
        sock.close()


def test_the_gil_is_released_while_a_call_blocks(env: Env, echo: EchoServer) -> None:
    with agent(env, echo):
        sock = tunnel.create_connection(device="pi-42", service="echo", **env.creds(env.alice))
        sock.settimeout(3)
        events: list[str] = []

        def blocked() -> None:
            try:
                sock.recv(10)  # nothing arrives: blocks for its whole timeout
            except TimeoutError:
                events.append("recv timed out")

        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(0.2)
        # Pure-Python work on this thread runs while the other one waits in Rust.
        total = sum(range(200_000))
        events.append("python ran")
        t.join(WAIT)
        assert total > 0 and events == ["python ran", "recv timed out"]
        sock.close()


def test_agent_state_reports_reconnecting_with_the_error_and_reconnects_by_itself(
    tmp_path: Path, echo: EchoServer
) -> None:
    device, alice, bob = make_credentials()
    state_dir = tmp_path / "relay-state"  # same certificate (and pin) across restarts
    relay = tunnel.Relay([device, alice], state_dir=state_dir, grace=0.2)
    address, pin = relay.address, relay.pin
    creds = {"relay": address, "pin": pin}
    a = tunnel.Agent(device="pi-42", forward={"echo": echo.address}, token=device.token, **creds)
    a.start()
    try:
        assert a.state.connected
        relay.stop(WAIT)
        wait_until(lambda: a.state.reconnecting)
        assert a.state.last_error  # says why
        relay = tunnel.Relay([device, alice], listen=address, state_dir=state_dir, grace=0.2)
        assert relay.pin == pin
        a.wait_connected(WAIT)  # backoff starts at 0.5 s
        with tunnel.create_connection(device="pi-42", service="echo", token=alice.token, timeout=WAIT, **creds) as s:
            s.sendall(b"back")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(10) == b"back"
    finally:
        a.stop()
        a.wait_stopped(WAIT)
        relay.stop(WAIT)
    assert a.state.stopped


def test_agent_stop_from_another_thread_ends_run(env: Env, echo: EchoServer) -> None:
    a = agent(env, echo)
    threading.Timer(0.3, a.stop).start()
    a.run()  # returns once stopped
    assert a.state.stopped


SCRIPT = textwrap.dedent(
    """
    import sys, tunnel
    relay, pin, token, target, mode = sys.argv[1:]
    if mode == "agent":
        agent = tunnel.Agent(relay=relay, pin=pin, token=token, device="pi-42",
                             forward={"echo": target})
        agent.start()
        print("ready", flush=True)
        try:
            agent.run()
        except KeyboardInterrupt:
            print("interrupted", agent.state.kind, flush=True)
    else:
        sock = tunnel.create_connection(relay=relay, pin=pin, token=token,
                                        device="pi-42", service="echo")
        print("ready", flush=True)
        try:
            sock.recv(10)  # nothing ever arrives
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """
)


@pytest.mark.parametrize("mode", ["agent", "recv"])
def test_ctrl_c_stops_a_blocking_call_at_once(env: Env, echo: EchoServer, tmp_path: Path, mode: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    with agent(env, echo) if mode == "recv" else _nothing():
        token = (env.device if mode == "agent" else env.alice).token
        proc = subprocess.Popen(
            [sys.executable, str(script), env.relay.address, env.relay.pin, token, echo.address, mode],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=WAIT)
            expected = "interrupted stopped" if mode == "agent" else "interrupted"
            assert out.strip() == expected
            assert proc.returncode == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(WAIT)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
