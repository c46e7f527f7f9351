"""The journal's events of one height (binary search over the stored encodings) and
``World.action_events``, which the outcome lookup of ``GET /v1/actions/{id}`` uses."""

from __future__ import annotations

from agent_world_runtime import compute_action_id
from agent_world_runtime.actions import HarvestRadiation, MoveAgent
from agent_world_runtime.events import EventJournal
from agent_world_runtime.signer import AgentSigner

from .worlds import create, genesis_world


def test_events_at_a_height_including_empty_heights_and_a_based_journal():
    journal = EventJournal()
    for height, count in ((1, 2), (2, 0), (3, 3), (5, 1)):
        for i in range(count):
            journal.append(height, "k", {"i": i})
    assert [len(journal.at_height(h)) for h in range(0, 7)] == [0, 2, 0, 3, 0, 1, 0]
    assert [e.data["i"] for e in journal.at_height(3)] == [0, 1, 2]
    based = EventJournal.from_raw(journal.raw(3), base=2, base_head=EventJournal.from_raw(journal.raw(1, 2)).head)
    assert len(based.at_height(1)) == 0 and len(based.at_height(3)) == 3  # events before the base are not held


def test_action_events_are_the_actions_own():
    w = genesis_world("outcomes")
    alice = AgentSigner.from_seed("alice", b"\x05" * 32, "outcomes")
    w.begin_block(1, 1_000)
    create(w, alice, electricity=100)
    move, harvest = alice.sign(MoveAgent(to=(1, 0, 0))), alice.sign(HarvestRadiation())
    far = alice.sign(MoveAgent(to=(5000, 0, 0)))
    for signed in (move, harvest, far):
        w.apply_action(signed, compute_action_id(signed))
    w.end_block()
    assert [e.kind for e in w.action_events(compute_action_id(move), 1)] == ["domain.agent_moved"]
    assert [e.kind for e in w.action_events(compute_action_id(harvest), 1)] == ["domain.radiation_harvested"]
    [rejected] = w.action_events(compute_action_id(far), 1)
    assert rejected.kind == "domain.action_rejected" and "outside the grid" in rejected.data["reason"]
    assert w.action_events(compute_action_id(move), 2) == [] and w.action_events(b"\x00" * 32, 1) == []
