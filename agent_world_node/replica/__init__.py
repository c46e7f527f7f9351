"""The sans-IO replica: one node's consensus, mempool, block store and execution, split by what
each part handles (see ``replica.replica``). Drivers import from here."""

from .admission import MAX_BATCH_ACTIONS, ActionDecoder, ActionSource, Admission, AdmissionResult
from .execution_check import Divergence, ExecutionCheck
from .outputs import FetchBlocks, Misbehaviour, Output, Publish, StartBuild, StartCommitWait, StartTimer
from .replica import DIVERGED_META_KEY, MAX_GOSSIP_BYTES, MAX_SYNC_PAYLOAD_BYTES, Replica
from .sync import SyncState
from .validity import BlockValidity
from .wal import WALError

__all__ = [
    "DIVERGED_META_KEY",
    "MAX_BATCH_ACTIONS",
    "MAX_GOSSIP_BYTES",
    "MAX_SYNC_PAYLOAD_BYTES",
    "ActionDecoder",
    "ActionSource",
    "Admission",
    "AdmissionResult",
    "BlockValidity",
    "Divergence",
    "ExecutionCheck",
    "FetchBlocks",
    "Misbehaviour",
    "Output",
    "Publish",
    "Replica",
    "StartBuild",
    "StartCommitWait",
    "StartTimer",
    "SyncState",
    "WALError",
]
