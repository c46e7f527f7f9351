"""Helpers for tests that run real node processes: a status observer, waiting, agreement checks."""

from __future__ import annotations

import trio

from agent_world_node.client import ClientError
from agent_world_node.testnet import AgreementChecker


class Observer:
    """Polls every node's status every 0.25 s (run ``run()`` as a task); records each node's
    latest status and its execution_height series. A node that does not answer keeps its last
    status; pop ``status[name]`` when you stop a node on purpose."""

    def __init__(self, nodes, clients):
        self.nodes = nodes
        self.clients = clients
        self.status: dict[str, dict] = {}
        self.exec_series: dict[str, list[int]] = {n.name: [] for n in nodes}

    async def run(self):
        while True:
            for node in self.nodes:
                try:
                    s = await self.clients[node.name].status()
                except ClientError:
                    continue
                self.status[node.name] = s
                self.exec_series[node.name].append(s["execution_height"])
            await trio.sleep(0.25)

    def height(self, name: str) -> int:
        return self.status.get(name, {}).get("height", -1)

    def exec_height(self, name: str) -> int:
        return self.status.get(name, {}).get("execution_height", -1)


async def wait_for(predicate, timeout_s: float, what: str, detail=lambda: ""):
    """Poll ``predicate()`` every 0.25 s; raise AssertionError naming ``what`` (and ``detail()``)
    if it is still false after ``timeout_s`` seconds."""
    with trio.move_on_after(timeout_s):
        while not predicate():
            await trio.sleep(0.25)
        return
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{detail()}")


async def agree_on_all_common_heights(nodes, clients) -> int:
    """Assert that ``nodes`` have equal execution state roots on every height all of them executed;
    return that common height."""
    statuses = [await clients[n.name].status() for n in nodes]
    common = min(s["execution_height"] for s in statuses)
    checker = AgreementChecker({n.name: clients[n.name] for n in nodes})
    assert await checker.check_up_to(common), f"roots differ: {checker.mismatch}"
    assert checker.checked_up_to == common, checker.last_error
    return common


