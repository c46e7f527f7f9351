"""Run several ``P2PNetwork`` instances in one trio process, on loopback: for tests and benchmarks.

Ports: every node listens on ``127.0.0.1`` port 0 (the OS picks a free port); node ``i`` is
configured with the actual addresses of nodes ``0..i-1``, so after the dials every pair is
connected (libp2p connections are two-way). A stopped node can be restarted on the same port with
the same seed (``NetworkHandle.restart``), which gives the same address and peer id.
"""

from __future__ import annotations

import dataclasses
import time

import trio

from .config import NetworkConfig
from .p2p import P2PNetwork
from .sync import SyncHandler
from .topics import TOPIC_NAMES


class NetworkHandle:
    """One ``P2PNetwork`` running as a task of ``nursery``; ``network`` is the current instance.

    Create with ``await NetworkHandle.start(nursery, config, handler)``; ``stop()`` ends the
    network's ``run()`` and waits until it has exited; ``restart()`` starts a new instance with the
    same seed, the port actually bound before, and the same peers.
    """

    def __init__(self, nursery: trio.Nursery, config: NetworkConfig, handler: SyncHandler) -> None:
        self._nursery = nursery
        self.config = config
        self.handler = handler
        self.network = P2PNetwork(config, handler)
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self.address: str | None = None

    @classmethod
    async def start(cls, nursery: trio.Nursery, config: NetworkConfig, handler: SyncHandler) -> "NetworkHandle":
        """Start a network in ``nursery`` and return once it is listening."""
        handle = cls(nursery, config, handler)
        await handle._launch()
        return handle

    async def _launch(self) -> None:
        self._stop = trio.Event()
        self._stopped = trio.Event()
        network, stop, stopped = self.network, self._stop, self._stopped

        async def _run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                async with network.run():
                    task_status.started()
                    await stop.wait()
            finally:
                stopped.set()

        await self._nursery.start(_run)
        self.address = network.listen_addrs()[0]

    async def stop(self) -> None:
        """Stop the network and wait until ``run()`` has exited (idempotent)."""
        self._stop.set()
        await self._stopped.wait()

    async def restart(self) -> None:
        """Stop if running, then start a new ``P2PNetwork`` with the same seed on the same port."""
        await self.stop()
        assert self.address is not None
        port = self.address.split("/tcp/")[1].split("/")[0]
        self.config = dataclasses.replace(self.config, listen_addr=f"/ip4/127.0.0.1/tcp/{port}")
        self.network = P2PNetwork(self.config, self.handler)
        await self._launch()


async def start_local_cluster(
    nursery: trio.Nursery,
    seeds: list[bytes],
    handler: SyncHandler,
    *,
    chain_id: str = "local-test",
    **config_overrides: object,
) -> list[NetworkHandle]:
    """Start one network per seed (node ``i`` dials nodes ``0..i-1``) and return their handles.

    ``config_overrides`` are passed to every ``NetworkConfig`` (e.g. ``dead_peer_timeout_s=1.5``).
    """
    handles: list[NetworkHandle] = []
    for seed in seeds:
        config = NetworkConfig(
            chain_id=chain_id,
            listen_addr="/ip4/127.0.0.1/tcp/0",
            peers=[h.address for h in handles if h.address],
            key_seed=seed,
            **config_overrides,  # type: ignore[arg-type]
        )
        handles.append(await NetworkHandle.start(nursery, config, handler))
    return handles


async def wait_for_full_mesh(networks: list[P2PNetwork], topics: tuple[str, ...] = TOPIC_NAMES) -> float:
    """Wait until every network has every other one in its mesh (or at least ``D_low`` = 2 mesh
    peers when the cluster is larger than the mesh degree) on each of ``topics``; return the
    seconds waited. Bound it with ``trio.fail_after`` in the caller."""
    start = time.monotonic()
    others = len(networks) - 1
    want = others if others <= 3 else 2

    def meshed() -> bool:
        return all(len(n.mesh_peers(t)) >= want for n in networks for t in topics)

    while not meshed():
        await trio.sleep(0.02)
    return time.monotonic() - start
