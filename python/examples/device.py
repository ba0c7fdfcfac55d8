#!/usr/bin/env python3
"""A device script (Raspberry Pi, gateway): expose local services through a tunnel relay.

    TUNNEL_TOKEN=tun_… python3 device.py --relay relay.example.com:7835 --pin sha256:… \\
        --device-id pi-42 --expose ssh=127.0.0.1:22 --expose web=192.168.1.2:3000

It reconnects by itself after any failure, prints each state change, and stops cleanly
on Ctrl-C or SIGTERM (so it runs as a systemd service as is). The token comes from
TUNNEL_TOKEN or --token-file, never from the command line (``ps`` would show it).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import tunnel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--relay", required=True, help="relay HOST:PORT")
    trust = parser.add_mutually_exclusive_group(required=True)
    trust.add_argument("--pin", help="the relay's pin, sha256:…")
    trust.add_argument("--ca-file", help="CA certificates (PEM) to verify the relay")
    parser.add_argument("--token-file", help="read the token here instead of $TUNNEL_TOKEN")
    parser.add_argument("--device-id", required=True)
    parser.add_argument("--expose", action="append", required=True, metavar="NAME=HOST:PORT")
    args = parser.parse_args()

    targets = dict(pair.split("=", 1) for pair in args.expose)
    token = open(args.token_file).read().strip() if args.token_file else os.environ.get("TUNNEL_TOKEN")
    agent = tunnel.Agent(relay=args.relay, pin=args.pin, ca_file=args.ca_file, token=token,
                         device=args.device_id, forward=targets)
    try:
        agent.start(timeout=30)
    except tunnel.TunnelError as e:  # bad token, wrong pin, forbidden device ID…
        print(f"cannot start: {e}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())

    def report() -> None:  # print state changes until stopped
        last = None
        while not agent.state.stopped:
            state = agent.state
            if state != last:
                detail = f" ({state.last_error})" if state.last_error else ""
                print(f"{args.device_id}: {state.kind}{detail}", flush=True)
                last = state
            threading.Event().wait(1.0)

    threading.Thread(target=report, daemon=True).start()
    try:
        agent.run()
    except KeyboardInterrupt:
        pass
    print(f"{args.device_id}: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
