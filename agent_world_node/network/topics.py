"""Gossip topic names of a chain.

Logical names (what the daemon uses) map to libp2p topic ids namespaced by chain id, so nodes of
different chains sharing a host or a peer never exchange messages:
``topic_id("agent-world-1", "vote") == "/agent-world/agent-world-1/vote/1"``. The trailing ``/1`` is
the message-format version of the topic.
"""

from __future__ import annotations

from ..types import Topic

#: Logical topic names, in a fixed order: proposals, votes, commits, batched client actions, status.
TOPIC_NAMES: tuple[str, ...] = tuple(t.value for t in Topic)
TOPIC_VERSION = 1


def topic_id(chain_id: str, name: str) -> str:
    """Return the libp2p topic id of logical topic ``name`` on chain ``chain_id``.

    Raises ValueError when ``name`` is not one of ``TOPIC_NAMES``.
    """
    if name not in TOPIC_NAMES:
        raise ValueError(f"unknown topic {name!r}; use one of {', '.join(TOPIC_NAMES)}")
    return f"/agent-world/{chain_id}/{name}/{TOPIC_VERSION}"


def topic_ids(chain_id: str) -> dict[str, str]:
    """Return ``{logical name: topic id}`` for every topic of chain ``chain_id``."""
    return {name: topic_id(chain_id, name) for name in TOPIC_NAMES}
