"""Agent World runtime: the deterministic world (no network, no clock).

Same inputs give the same events and the same state root on every machine (docs/architecture.md,
"Execution and state roots"). Main entry points::

    from agent_world_runtime import World, Event, BlockOutcome
    world = World.from_genesis("my-chain", WorldParams())
    world.begin_block(1, timestamp_ms)
    world.apply_action(signed_action, action_id)
    world.step_with_modules()
    outcome = world.end_block()          # outcome.state_root, outcome.events_root
"""

from .admission import Refusal, RefusalCode
from .events import Event
from .persistence import SnapshotError
from .state import AgentRecord, ArtifactRecord, InstanceRecord
from .world import BlockOutcome, World, compute_action_id

__all__ = [
    "AgentRecord",
    "ArtifactRecord",
    "BlockOutcome",
    "Event",
    "InstanceRecord",
    "Refusal",
    "RefusalCode",
    "SnapshotError",
    "World",
    "compute_action_id",
]
