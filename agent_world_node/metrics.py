"""Prometheus metrics of one node (a registry per node, so tests can run several in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class NodeMetrics:
    """Counters and gauges exposed at ``GET /metrics``."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.height = Gauge("awnode_height", "Last committed height", registry=r)
        self.execution_height = Gauge("awnode_execution_height", "Last executed height", registry=r)
        self.round = Gauge("awnode_round", "Current consensus round", registry=r)
        self.peers = Gauge("awnode_peers", "Connected libp2p peers", registry=r)
        self.mempool_size = Gauge("awnode_mempool_actions", "Actions waiting in the mempool", registry=r)
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
        self.peer_penalties = Gauge(
            "awnode_peer_penalties", "Misbehaviour offences scored against peers since start, by reason",
            ["reason"], registry=r
        )
        self.peer_bans = Gauge("awnode_peers_banned", "Peers banned for misbehaviour right now", registry=r)
        self.gossip_dropped = Gauge(
            "awnode_gossip_dropped", "Gossip messages dropped by the network layer, by reason", ["reason"], registry=r
        )

    def render(self) -> tuple[bytes, str]:
        """Return the Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
