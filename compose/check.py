"""The checks of ``make compose-test`` against a running compose project (standard library only).

``python compose/check.py --project P --ports P0,P1,P2,P3 --fullnode-port PF --compose "docker-compose"``:
every validator's /ready answers 200; heights advance; all nodes agree on the execution state
root at a common height; the workload's actions are committed; the full node joins by state sync
(its first block is above 1) and agrees; after ``compose kill validator3`` the other three keep
committing and agreeing. Prints what it measured; exits 1 with the reason on the first failure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

STARTED = time.monotonic()


def say(text: str) -> None:
    print(f"[check {time.monotonic() - STARTED:5.1f}s] {text}", flush=True)


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return 0, {}


def until(what: str, timeout_s: float, predicate) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise SystemExit(f"compose check failed: {what} within {timeout_s:.0f} s")


def heights(ports: list[int]) -> list[int]:
    return [get(p, "/v1/status")[1].get("execution_height", -1) for p in ports]


def agree(ports: list[int]) -> tuple[int, str]:
    common = min(heights(ports))
    roots = {get(p, f"/v1/execution/{common}")[1].get("execution_state_root") for p in ports}
    if len(roots) != 1 or None in roots:
        raise SystemExit(f"compose check failed: execution state roots at height {common} differ: {roots}")
    return common, roots.pop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", required=True)
    ap.add_argument("--ports", required=True)
    ap.add_argument("--fullnode-port", type=int, required=True)
    ap.add_argument("--compose", required=True)
    args = ap.parse_args()
    ports = [int(p) for p in args.ports.split(",")]

    until("every validator answers /ready with 200", 240, lambda: all(get(p, "/ready")[0] == 200 for p in ports))
    say(f"4 validators ready on 127.0.0.1:{args.ports}")
    first = heights(ports)
    until("heights advance by 3", 60, lambda: min(heights(ports)) >= max(first) + 3)
    common, root = agree(ports)
    say(f"heights {first} -> {heights(ports)}; all agree at height {common} (root {root[:16]})")
    until("the workload's actions are committed", 120,
          lambda: get(ports[0], "/v1/status")[1].get("actions_committed", 0) >= 10)
    say(f"actions committed: {get(ports[0], '/v1/status')[1].get('actions_committed')}")

    full = args.fullnode_port
    until("the full node joins by state sync and is ready", 240, lambda: get(full, "/ready")[0] == 200)
    status, _ = get(full, "/v1/blocks/1")
    snapshots = get(ports[0], "/v1/snapshots")[1].get("snapshots", [])
    if status != 410:
        raise SystemExit(f"compose check failed: the full node holds block 1 (HTTP {status}); it did not state-sync")
    common, root = agree(ports + [full])
    say(f"full node joined by state sync (validator0 serves snapshots at {[s['height'] for s in snapshots]}); "
        f"all 5 agree at height {common}")

    compose = args.compose.split()
    subprocess.run(compose + ["-p", args.project, "-f", "docker-compose.yml", "kill", "validator3"], check=True,
                   capture_output=True)
    until("validator3 stops answering", 30, lambda: get(ports[3], "/v1/status")[0] == 0)
    rest = ports[:3]
    before = heights(rest)
    until("the 3 other validators commit 5 more heights", 90, lambda: min(heights(rest)) >= max(before) + 5)
    common, root = agree(rest)
    say(f"validator3 killed; the others went from {before} to {heights(rest)} and agree at {common}")


if __name__ == "__main__":
    try:
        main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            print(exc.code, file=sys.stderr, flush=True)
            sys.exit(1)
