"""The in-process relay's admin API: the same control plane as ``tunnel-relay``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import tunnel
from conftest import WAIT


def call(relay: tunnel.Relay, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://{relay.admin_address}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {relay.admin_token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_the_admin_api_manages_the_relays_credentials_live(tmp_path: Path) -> None:
    pi = tunnel.Credential("pi", devices=("pi",))
    with tunnel.Relay([pi], state_dir=tmp_path, admin_listen="127.0.0.1:0") as relay:
        assert relay.admin_address and relay.admin_token
        assert relay.admin_token not in repr(relay)
        status, page = call(relay, "GET", "/api/v1/credentials")
        assert status == 200 and [c["name"] for c in page["items"]] == ["pi"]
        status, created = call(relay, "POST", "/api/v1/credentials", {"name": "ops", "grants": {"access": ["pi/*"]}})
        assert status == 201 and created["token"].startswith("tun_")
        # The new credential works at once, and stops at once when revoked.
        with tunnel.BlockingDialer(relay=relay.address, pin=relay.pin, token=created["token"]) as dialer:
            assert dialer.list_devices() is not None
        status, revoked = call(relay, "DELETE", "/api/v1/credentials/ops")
        assert status == 200 and revoked["status"] == "revoked"
        with pytest.raises(tunnel.AuthError, match="Revoked"):
            tunnel.BlockingDialer(relay=relay.address, pin=relay.pin, token=created["token"]).list_devices()


def test_admin_listen_without_a_state_dir_is_a_config_error() -> None:
    with pytest.raises(tunnel.ConfigError, match="state_dir"):
        tunnel.Relay([tunnel.Credential("x", devices=("x",))], admin_listen="127.0.0.1:0")
