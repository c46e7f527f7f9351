"""What a ``Replica`` asks its driver to do: the outputs of every replica call, performed in order.

The replica does no I/O; the trio daemon (``node.py``) and the simulator (``sim/cluster.py``) perform
these, each in its own way, and feed the answers back as replica inputs (named on each output).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_world_runtime.params import Toolchain

from ..consensus import TimeoutKind
from ..types import Offence, Topic


@dataclass(frozen=True, slots=True)
class Publish:
    """Send ``data`` (an encoded ``GossipMessage``) on gossip topic ``topic``."""

    topic: Topic
    data: bytes


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Start the consensus timeout ``kind`` of (``height``, ``round``) for ``duration_ms``; when it
    fires call ``Replica.handle_timeout(TimeoutFired(kind, height, round))``."""

    kind: TimeoutKind
    height: int
    round: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class StartCommitWait:
    """``height`` is committed: wait ``duration_ms`` (the commit timeout, which lets late precommits
    in) and then call ``Replica.handle_commit_wait(height)`` to start the next height."""

    height: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class FetchBlocks:
    """Fetch the committed blocks ``from_height..to_height`` (inclusive) from ``peer`` over the sync
    protocol, giving up after ``timeout_ms``. Answer with ``Replica.handle_synced(payloads, peer)``,
    or ``Replica.handle_fetch_failed(peer, reason)`` when the request fails. The replica asks for at
    most one fetch at a time."""

    peer: str
    from_height: int
    to_height: int
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """``peer`` sent something no correct node sends; the driver scores the ``offence`` (the peer
    filter bans a peer that keeps misbehaving)."""

    peer: str
    offence: Offence


@dataclass(frozen=True, slots=True)
class StartBuild:
    """Build the pending build ``build_id``: the package ``files`` (paths to source text) with the
    chain's ``toolchain``, off the consensus path, hermetic and bounded (``agent_world_node.builds``;
    a validator whose local toolchain differs does not build and logs why). Answer with
    ``Replica.build_finished(build_id, code, wasm, message)``."""

    build_id: str
    files: dict[str, str]
    toolchain: Toolchain


Output = Publish | StartTimer | StartCommitWait | FetchBlocks | Misbehaviour | StartBuild
