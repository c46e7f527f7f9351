"""Helpers for tests that run real node processes: a status observer, waiting, agreement checks."""

from __future__ import annotations

import trio

from agent_world_client.client import ClientError
from agent_world_tools.testnet import AgreementChecker


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




class TimedObserver:
    """Polls every node's GET /v1/status concurrently every ``interval_s`` seconds (run ``run()``
    as a task) and records, per node, the latest status and ``(trio time, height,
    execution_height)`` samples. Concurrent polls with a short client timeout keep one paused or
    dead node from delaying the samples of the others. ``clients`` maps node name to NodeClient;
    add or remove entries while it runs (late joiners, nodes stopped on purpose)."""

    def __init__(self, clients: dict, interval_s: float = 0.25):
        self.clients = clients
        self.interval_s = interval_s
        self.status: dict[str, dict] = {}
        self.samples: dict[str, list[tuple[float, int, int]]] = {}

    async def _poll(self, name: str, client) -> None:
        try:
            s = await client.status()
        except ClientError:
            return
        self.status[name] = s
        self.samples.setdefault(name, []).append((trio.current_time(), s["height"], s["execution_height"]))

    async def _loop(self, name: str) -> None:
        while True:
            client = self.clients.get(name)
            if client is not None:
                await self._poll(name, client)
            await trio.sleep(self.interval_s)

    async def run(self):
        """Poll until cancelled: one polling task per node, so a node that does not answer delays
        only its own samples; nodes added to ``clients`` later are picked up."""
        started: set[str] = set()
        async with trio.open_nursery() as nursery:
            while True:
                for name in list(self.clients):
                    if name not in started:
                        started.add(name)
                        nursery.start_soon(self._loop, name)
                await trio.sleep(self.interval_s)

    def height(self, name: str) -> int:
        """Latest committed height seen on ``name`` (-1 before its first answer)."""
        return self.status.get(name, {}).get("height", -1)

    def exec_height(self, name: str) -> int:
        """Latest execution height seen on ``name`` (-1 before its first answer)."""
        return self.status.get(name, {}).get("execution_height", -1)

    def forget(self, name: str) -> None:
        """Drop the latest status of ``name`` (call when stopping it on purpose), keeping its samples."""
        self.status.pop(name, None)

    def samples_between(self, name: str, t0: float, t1: float) -> list[tuple[float, int, int]]:
        """Samples of ``name`` taken in ``[t0, t1]`` (trio time, seconds)."""
        return [s for s in self.samples.get(name, []) if t0 <= s[0] <= t1]


def longest_height_gap(samples: list[tuple[float, int, int]], t0: float, t1: float) -> float:
    """Longest time (seconds) in ``[t0, t1]`` without a committed height increase, from timed
    samples ``(t, height, execution_height)`` sorted by time: the gaps between ``t0``, each sample
    at which the height rose, and ``t1``. Resolution: the sampling interval. Raises ValueError if
    ``t1 < t0``."""
    if t1 < t0:
        raise ValueError(f"interval end {t1} is before its start {t0}")
    marks = [t0]
    last = None
    for t, height, _ in samples:
        if last is not None and height > last and t0 <= t <= t1:
            marks.append(t)
        last = height
    marks.append(t1)
    return max(b - a for a, b in zip(marks, marks[1:], strict=False))


def cluster_height_samples(observer: TimedObserver, names: list[str]) -> list[tuple[float, int, int]]:
    """Merge the samples of ``names`` into one series of the cluster's height: at each sample time,
    the highest height (and execution height) any of them had reported so far."""
    merged = sorted((s for n in names for s in observer.samples.get(n, [])), key=lambda s: s[0])
    out = []
    best_h = best_e = -1
    for t, h, e in merged:
        best_h, best_e = max(best_h, h), max(best_e, e)
        out.append((t, best_h, best_e))
    return out
