"""Dead-peer detection against a real frozen process: a peer node runs in a child process on
127.0.0.1, is SIGSTOPped, must be declared dead and disconnected by the in-process node (libp2p
itself never notices), and must be connected again after SIGCONT. The child is always killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from agent_world_node.network.local_cluster import start_local_cluster

REPO = Path(__file__).resolve().parent.parent
RUN_LIMIT_S = 45
CHILD_SEED = b"\x52" * 32

CHILD = """
import sys, trio, structlog, logging
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
from agent_world_node.network import NetworkConfig, P2PNetwork

async def no_blocks(a, b):
    return []

async def main():
    config = NetworkConfig(chain_id="liveness", listen_addr="/ip4/127.0.0.1/tcp/0", peers=[sys.argv[1]],
                           key_seed=bytes.fromhex(sys.argv[2]), reconnect_interval_s=0.5,
                           dead_peer_timeout_s=1.5)
    net = P2PNetwork(config, no_blocks)
    async with net.run():
        print("READY", net.peer_id, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def no_blocks(from_height: int, to_height: int) -> list[bytes]:
    return []


async def read_ready_line(proc: trio.Process) -> str:
    buffer = b""
    assert proc.stdout is not None
    while b"\n" not in buffer.split(b"READY", 1)[-1] or b"READY" not in buffer:
        chunk = await proc.stdout.receive_some(4096)
        if not chunk:
            raise AssertionError(f"child exited before READY: {buffer!r}")
        buffer += chunk
    return buffer.split(b"READY ", 1)[1].split(b"\n", 1)[0].decode()


def test_frozen_peer_is_declared_dead_disconnected_and_reconnected_after_resume() -> None:
    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            async with trio.open_nursery() as nursery:
                (node,) = await start_local_cluster(
                    nursery, [b"\x51" * 32], no_blocks,
                    chain_id="liveness", dead_peer_timeout_s=1.5, reconnect_interval_s=0.5,
                )
                net = node.network
                proc = await trio.lowlevel.open_process(
                    [sys.executable, "-c", CHILD, node.address, CHILD_SEED.hex()],
                    stdout=subprocess.PIPE,
                    cwd=REPO,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                )
                try:
                    child_id = await read_ready_line(proc)
                    while child_id not in net.connected_peers():
                        await trio.sleep(0.05)
                    # Pings are answered while the child runs.
                    while net.last_seen(child_id) is None:
                        await trio.sleep(0.05)
                    assert net.stats()["dead_peers"] == 0
                    assert child_id in net.stats()["peer_rtt_ms"]

                    os.kill(proc.pid, signal.SIGSTOP)
                    frozen_at = trio.current_time()
                    while net.stats()["dead_peers"] < 1 or child_id in net.connected_peers():
                        await net.publish("status", b"still here")  # never blocks on the frozen peer
                        await trio.sleep(0.05)
                    detected_s = trio.current_time() - frozen_at
                    print(f"measured: frozen peer declared dead and disconnected after {detected_s:.2f} s")

                    os.kill(proc.pid, signal.SIGCONT)
                    while child_id not in net.connected_peers():
                        await trio.sleep(0.05)
                    seen = net.last_seen(child_id)
                    while net.last_seen(child_id) == seen:  # it answers pings again
                        await trio.sleep(0.05)
                finally:
                    with trio.move_on_after(5) as cleanup:
                        cleanup.shield = True
                        try:
                            os.kill(proc.pid, signal.SIGCONT)
                        except ProcessLookupError:
                            pass
                        proc.kill()
                        await proc.wait()
                await node.stop()

    trio.run(main)
