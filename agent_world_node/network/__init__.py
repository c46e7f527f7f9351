"""The libp2p network layer of a node: gossip topics, block sync, peer upkeep.

Public API (used by the daemon)::

    from agent_world_node.network import P2PNetwork, NetworkConfig, InboundMessage, SyncServer, SyncError

See ``p2p.py`` for what runs and why, ``host.py`` for the libp2p settings, ``pubsub_patches.py``
for the py-libp2p functions replaced, ``inbound.py`` for the queues of received gossip,
``sync.py`` for the sync wire protocol and ``liveness.py`` for dead-peer detection.
"""

from .config import InboundMessage, NetworkConfig, NetworkConfigError
from .host import ListenAddressInUseError, peer_id_for_seed
from .p2p import P2PNetwork
from .stats import NetworkStats
from .sync import SYNC_PROTOCOL_ID, SyncError, SyncServer
from .topics import TOPIC_NAMES, topic_id

__all__ = [
    "InboundMessage",
    "ListenAddressInUseError",
    "NetworkConfig",
    "NetworkConfigError",
    "NetworkStats",
    "P2PNetwork",
    "SYNC_PROTOCOL_ID",
    "SyncError",
    "SyncServer",
    "TOPIC_NAMES",
    "peer_id_for_seed",
    "topic_id",
]
