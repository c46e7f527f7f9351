"""Clients of a real testnet's node processes and the waits end-to-end tests share."""

from __future__ import annotations

import trio

from agent_world_client.client import ClientError, NodeClient
from agent_world_runtime.actions import SignedAction


class TestnetClients:
    """One ``NodeClient`` per node (``nodes``: TestnetNode, ``procs``: their NodeProcess), in node
    order; every wait checks that no node process died. ``step_s``: the default wait bound."""

    __test__ = False

    def __init__(self, nodes, procs, step_s: float) -> None:
        self.nodes = list(nodes)
        self.procs = list(procs)
        self.step_s = step_s
        self.clients = {n.name: NodeClient(n.rpc_url, timeout_s=10.0) for n in self.nodes}
        self.first = self.clients[self.nodes[0].name]

    def client(self, i: int) -> NodeClient:
        return self.clients[self.nodes[i % len(self.nodes)].name]

    def check_alive(self) -> None:
        for p in self.procs:
            assert not p.failed(), f"{p.name} exited:\n{p.log_tail(40)}"

    async def until(self, predicate, what: str, timeout_s: float | None = None):
        """Await ``predicate()`` (async) every 0.25 s until it is truthy; return its value."""
        timeout_s = self.step_s if timeout_s is None else timeout_s
        with trio.move_on_after(timeout_s):
            while True:
                self.check_alive()
                try:
                    value = await predicate()
                except ClientError:
                    value = None
                if value:
                    return value
                await trio.sleep(0.25)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")

    async def statuses(self) -> dict[str, dict]:
        return {name: await c.status() for name, c in self.clients.items()}

    async def exec_heights(self) -> dict[str, int]:
        return {name: s["execution_height"] for name, s in (await self.statuses()).items()}

    async def wait_exec_height(self, height: int) -> None:
        async def reached():
            return min((await self.exec_heights()).values()) >= height

        await self.until(reached, f"every node to execute height {height}")

    async def submit_all(self, node: int, actions: list[SignedAction]) -> None:
        results = await self.client(node).submit_batch(actions)
        assert [r["status"] for r in results] == ["accepted"] * len(actions), results

    async def aclose(self) -> None:
        for c in self.clients.values():
            await c.aclose()
