"""Prometheus metrics of one node (a registry per node, so tests can run several in one process).

Counters end in ``_total`` (prometheus_client adds it to a ``Counter``'s name) and no ``_created``
series are exposed. Besides the node's own metrics: the process's (``process_*``: CPU, memory,
open files), ``awnode_build_info`` (the versions that decide consensus, as labels), the world's
module calls (``awnode_module_calls_total``, ``awnode_module_call_failures_total``, read from the
executed world at each scrape), and what the blocks this process executed charged
(``awnode_action_fees_total``, ``awnode_module_fuel_total``, ``awnode_module_fees_total{kind}``).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

disable_created_metrics()

#: The packages whose versions ``awnode_build_info`` reports (label name -> distribution).
BUILD_PACKAGES = {"version": "agent-world", "libp2p": "libp2p", "wasmtime": "wasmtime", "msgspec": "msgspec"}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class WorldCollector(Collector):
    """Counters read from the executed world at each scrape: its ``stats()`` (module calls and
    their failures since genesis, or since a state-sync snapshot's journal base)."""

    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._stats()
        except Exception:  # no world yet (the node is starting): nothing to report
            stats = {}
        for name, key, doc in (
            ("awnode_module_calls", "module_calls", "Module calls attempted by the executed world (succeeded + failed)"),
            ("awnode_module_call_failures", "module_call_failures", "Module calls that failed (by the ABI's limits or errors)"),
            ("awnode_actions_rejected", "actions_rejected", "Committed actions the world rules rejected (they paid their fee)"),
            ("awnode_action_fees", "action_fees", "Electricity paid as action fees in the blocks this process executed"),
            ("awnode_module_fuel", "module_fuel", "Fuel burnt by module calls in the blocks this process executed"),
        ):
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))
        fees = CounterMetricFamily("awnode_module_fees", "Module call fees charged in the blocks this process executed, "
                                   "by resource", labels=["kind"])
        fees.add_metric(["data"], stats.get("module_fees_data", 0))
        fees.add_metric(["electricity"], stats.get("module_fees_electricity", 0))
        yield fees


class NodeMetrics:
    """Counters and gauges exposed at ``GET /metrics``."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.height = Gauge("awnode_height", "Last committed height", registry=r)
        self.execution_height = Gauge("awnode_execution_height", "Last executed height", registry=r)
        self.round = Gauge("awnode_round", "Current consensus round", registry=r)
        self.peers = Gauge("awnode_peers", "Connected libp2p peers", registry=r)
        self.mempool_size = Gauge("awnode_mempool_actions", "Actions waiting in the mempool", registry=r)
        self.stream_subscribers = Gauge("awnode_stream_subscribers", "Open GET /v1/stream connections", registry=r)
        self.data_free_bytes = Gauge(
            "awnode_data_free_bytes", "Free bytes on the filesystem of the node's data directory", registry=r)
        self.blocks_committed = Counter("awnode_blocks_committed", "Blocks committed by this node", registry=r)
        self.actions_committed = Counter("awnode_actions_committed", "Actions in committed blocks", registry=r)
        self.actions_admitted = Counter("awnode_actions_admitted", "Actions admitted to the mempool", ["source"], registry=r)
        self.actions_refused = Counter("awnode_actions_refused", "Actions refused at admission", ["code"], registry=r)
        self.actions_regossiped = Counter(
            "awnode_actions_regossiped", "Client actions gossiped again because they stayed pending", registry=r
        )
        self.messages_dropped = Counter("awnode_consensus_messages_dropped", "Consensus messages dropped", ["reason"], registry=r)
        self.blocks_synced = Counter("awnode_blocks_synced", "Blocks fetched by height-keyed sync", registry=r)
        self.proposals_untimely = Counter(
            "awnode_proposals_untimely",
            "Proposals of a new block whose time was not timely on arrival (PBTS), prevoted nil; by why",
            ["reason"], registry=r,
        )
        self.execution_mismatches = Counter(
            "awnode_execution_mismatches", "Peer execution hashes that differ from ours", registry=r
        )
        self.execution_diverged = Gauge(
            "awnode_execution_diverged", "1 when this node's execution root differs from the quorum's", registry=r
        )
        self.peer_penalties = Counter(
            "awnode_peer_penalties", "Misbehaviour offences scored against peers since start, by reason",
            ["reason"], registry=r
        )
        self.peer_bans = Gauge("awnode_peers_banned", "Peers banned for misbehaviour right now", registry=r)
        self.gossip_dropped = Counter(
            "awnode_gossip_dropped", "Gossip messages dropped by the network layer, by reason", ["reason"], registry=r
        )
        self.build_info = Gauge("awnode_build_info", "1, labelled with the versions that decide consensus",
                                list(BUILD_PACKAGES), registry=r)
        self.build_info.labels(*(_version(d) for d in BUILD_PACKAGES.values())).set(1)
        ProcessCollector(registry=r)
        self._seen: dict[tuple[str, str], float] = {}

    def advance(self, counter: Counter, label: str, total: float) -> None:
        """Bring ``counter{reason=label}`` up to ``total``, a running total counted elsewhere (the
        network's statistics); a total that went down (a restarted count) is ignored."""
        key = (counter._name, label)  # noqa: SLF001 - the metric's own name
        delta = total - self._seen.get(key, 0.0)
        if delta > 0:
            counter.labels(label).inc(delta)
            self._seen[key] = total

    def watch_world(self, stats: Callable[[], dict[str, Any]]) -> None:
        """Expose the world counters of ``WorldCollector`` read through ``stats`` (call once)."""
        self.registry.register(WorldCollector(stats))

    def render(self) -> tuple[bytes, str]:
        """Return the Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
