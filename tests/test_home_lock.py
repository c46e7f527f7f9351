"""One node per home: a second `awnode start` on a home whose node runs refuses at once with one
line naming the running node's pid, and the lock is free again once that node stops."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from agent_world_node.homelock import HomeInUseError, lock_home

pytestmark = pytest.mark.timeout(120)

AWNODE = [sys.executable, "-m", "agent_world_tools.cli"]


def init_on_free_ports(home) -> None:
    """``awnode init --home HOME``, then free loopback ports instead of the defaults (26656/26657)."""
    from agent_world_tools.testnet.homes import pick_free_ports

    init = subprocess.run([*AWNODE, "init", "--home", str(home)], capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stdout + init.stderr
    p2p, rpc = pick_free_ports(2)
    config = home / "config" / "config.toml"
    text = config.read_text().replace("/tcp/26656", f"/tcp/{p2p}").replace("127.0.0.1:26657", f"127.0.0.1:{rpc}")
    config.write_text(text)


def test_the_lock_is_exclusive_and_names_its_holder(tmp_path):
    held = lock_home(tmp_path / "data")
    try:
        probe = subprocess.run([sys.executable, "-c", (
            "import sys; from pathlib import Path; from agent_world_node.homelock import lock_home, HomeInUseError\n"
            "try:\n    lock_home(Path(sys.argv[1]))\nexcept HomeInUseError as e:\n    print(e); sys.exit(3)\n"),
            str(tmp_path / "data")], capture_output=True, text=True, timeout=60)
        assert probe.returncode == 3 and "in use by a running node" in probe.stdout
        assert f"pid {os.getpid()}" in probe.stdout
    finally:
        held.close()
    lock_home(tmp_path / "data").close()  # free again
    with pytest.raises(HomeInUseError):
        first = lock_home(tmp_path / "data2")
        try:
            # flock locks are per open file description: a second open in this process conflicts too
            lock_home(tmp_path / "data2")
        finally:
            first.close()


def test_a_second_start_on_a_running_home_refuses_in_one_line(tmp_path):
    home = tmp_path / "node"
    init_on_free_ports(home)
    first = subprocess.Popen([*AWNODE, "start", "--home", str(home)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        lock_file = home / "data" / "node.lock"
        deadline = time.monotonic() + 60
        while not (lock_file.exists() and lock_file.read_text().strip() == str(first.pid)):
            assert time.monotonic() < deadline, "the first node never took its home's lock"
            assert first.poll() is None, "the first node exited"
            time.sleep(0.1)
        second = subprocess.run([*AWNODE, "start", "--home", str(home)], capture_output=True, text=True, timeout=60)
        out = second.stdout + second.stderr
        assert second.returncode != 0
        assert f"in use by a running node (pid {first.pid})" in out and "Traceback" not in out, out
        assert first.poll() is None, "the refused start disturbed the running node"
    finally:
        first.terminate()
        first.wait(timeout=30)
    lock_home(home / "data").close()  # released when the node stopped


def test_a_port_in_use_is_one_clear_line(tmp_path):
    import socket

    home = tmp_path / "node"
    init_on_free_ports(home)
    from agent_world_node.config import Home, read_config

    listen = read_config(Home(home).config_file).rpc.listen
    host, port = listen.rsplit(":", 1)
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind((host, int(port)))
        busy.listen()
        started = subprocess.run([*AWNODE, "start", "--home", str(home)], capture_output=True, text=True, timeout=60)
    out = started.stdout + started.stderr
    assert started.returncode != 0 and f"rpc.listen {listen} is in use" in out and "Traceback" not in out, out
    assert len(out.strip().splitlines()) <= 3, out


def test_listen_flags_of_init_and_start(tmp_path):
    import httpx

    from agent_world_node.config import Home, read_config
    from agent_world_tools.testnet.homes import pick_free_ports

    p2p, rpc, rpc2 = pick_free_ports(3)
    home = tmp_path / "node"
    init = subprocess.run([*AWNODE, "init", "--home", str(home), "--p2p-listen", f"/ip4/127.0.0.1/tcp/{p2p}",
                           "--rpc-listen", f"127.0.0.1:{rpc}"], capture_output=True, text=True, timeout=60)
    assert init.returncode == 0 and f"API          http://127.0.0.1:{rpc}" in init.stdout, init.stdout + init.stderr
    config = read_config(Home(home).config_file)
    assert (config.p2p.listen, config.rpc.listen) == (f"/ip4/127.0.0.1/tcp/{p2p}", f"127.0.0.1:{rpc}")
    bad = subprocess.run([*AWNODE, "init", "--home", str(tmp_path / "x"), "--rpc-listen", "nowhere"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--rpc-listen 'nowhere' is not host:port" in bad.stdout + bad.stderr
    node = subprocess.Popen([*AWNODE, "start", "--home", str(home), "--rpc-listen", f"127.0.0.1:{rpc2}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert node.poll() is None, "the node exited"
            try:
                if httpx.get(f"http://127.0.0.1:{rpc2}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the node never answered on the --rpc-listen address"
            time.sleep(0.2)
    finally:
        node.terminate()
        node.wait(timeout=30)
