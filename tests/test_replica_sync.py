"""Sync source choice (``replica.sync.SyncState``): a claim is not proof. A peer whose fetch did not
back its claim is distrusted until a verified claim; honest peers are never penalised for it."""

from __future__ import annotations

from agent_world_node.replica.sync import SyncState


def test_a_useless_answer_distrusts_the_peer_until_a_verified_claim():
    sync = SyncState(batch_heights=100, timeout_ms=1000)
    sync.note_peer_height("liar", 10**9)
    sync.note_peer_height("honest", 5)
    fetch = sync.next_fetch(height=1, connected={"liar", "honest"}, now_ms=0)
    assert fetch is not None and fetch.peer == "liar"
    sync.fetch_ended("liar", useful=False)
    assert "liar" in sync.distrusted
    for _ in range(5):  # its status heartbeats keep claiming: ignored
        sync.note_peer_height("liar", 10**9)
    fetch = sync.next_fetch(height=1, connected={"liar", "honest"}, now_ms=1)
    assert fetch is not None and fetch.peer == "honest"
    sync.fetch_ended("honest", useful=True)
    sync.note_peer_height("liar", 7, verified=True)  # a certificate of it we verified
    assert "liar" not in sync.distrusted and sync.peer_heights["liar"] == 7


def test_a_failed_fetch_distrusts_the_peer_until_a_verified_claim():
    """A liar that never answers (refuses, stalls, fails) costs one futile fetch, not one per
    status heartbeat; an honest peer whose answer was lost is believed again at its next verified
    claim."""
    sync = SyncState(batch_heights=100, timeout_ms=1000)
    sync.note_peer_height("flaky", 9)
    assert sync.next_fetch(height=1, connected={"flaky"}, now_ms=0) is not None
    sync.fetch_ended("flaky", useful=False)  # unreachable, refused or timed out
    assert "flaky" in sync.distrusted and "flaky" not in sync.peer_heights
    sync.note_peer_height("flaky", 9)
    assert sync.target(1, {"flaky"}) is None
    assert sync.next_fetch(height=1, connected={"flaky"}, now_ms=5000) is None  # a fetch that timed out
    sync.note_peer_height("flaky", 9, verified=True)
    assert sync.target(1, {"flaky"}) == ("flaky", 9)
    assert sync.next_fetch(height=1, connected={"flaky"}, now_ms=6000) is not None
    assert sync.next_fetch(height=1, connected={"flaky"}, now_ms=7001) is None  # deadline passed: failed
    assert "flaky" in sync.distrusted


def test_a_liar_never_makes_a_node_at_the_tip_look_behind():
    """The height liar made nodes at the tip flap between syncing and ready. Its unverified claim
    costs one probing fetch, during which the node is not syncing (not out of service); after the
    useless answer the claim is not even probed."""
    sync = SyncState(batch_heights=100, timeout_ms=1000)
    sync.note_peer_height("liar", 10**9)
    assert sync.next_fetch(height=50, connected={"liar"}, now_ms=0) is not None and not sync.syncing
    sync.fetch_ended("liar", useful=False)
    sync.note_peer_height("liar", 10**9)
    assert sync.next_fetch(height=50, connected={"liar"}, now_ms=10) is None and not sync.syncing


def test_a_node_really_behind_is_syncing_from_its_first_useful_answer():
    sync = SyncState(batch_heights=10, timeout_ms=1000)
    sync.note_peer_height("honest", 100)
    assert sync.next_fetch(height=1, connected={"honest"}, now_ms=0) is not None and not sync.syncing
    sync.fetch_ended("honest", useful=True)  # heights 2..11 committed: the claim is backed
    assert sync.next_fetch(height=11, connected={"honest"}, now_ms=1) is not None and sync.syncing
    sync.fetch_ended("honest", useful=True)
    assert sync.next_fetch(height=100, connected={"honest"}, now_ms=2) is None and not sync.syncing  # caught up
    # a verified certificate of a block we lack is proof enough, from any peer
    sync.note_peer_height("other", 101)
    sync.certified_next = 101
    assert sync.next_fetch(height=100, connected={"honest", "other"}, now_ms=3) is not None and sync.syncing
    # a vouched peer whose later fetch fails is no longer believed
    sync.fetch_ended("other", useful=False)
    sync.certified_next = 0
    sync.note_peer_height("honest", 500)
    sync.fetch_ended("honest", useful=False)
    assert sync.next_fetch(height=100, connected={"honest", "other"}, now_ms=4) is None and not sync.syncing
