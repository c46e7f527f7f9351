"""Intake control: client actions are refused as busy once the backlog exceeds what the chain
commits in ``target_queue_ms`` (at least one block's worth), before their signature is checked;
peers' actions and the node's own are not; accepted client actions still pending are gossiped
again after ``action_regossip_ms``."""

from __future__ import annotations

from agent_world_node.mempool import Mempool
from agent_world_node.metrics import NodeMetrics
from agent_world_node.replica import ActionDecoder, ActionSource, Admission
from agent_world_node.replica.intake import MAX_RETRY_MS, MIN_RETRY_MS, IntakeControl
from agent_world_node.schema import AdmissionCode, AdmissionStatus
from agent_world_node.types import GossipActionBatch
from agent_world_runtime.actions import HarvestRadiation, MoveAgent
from agent_world_runtime.codec import decode

from .test_runtime_admission_codes import known
from .test_runtime_admission_codes import world as world  # noqa: F401  (the fixture)


def test_budget_follows_the_measured_commit_rate():
    intake = IntakeControl(floor=100, target_queue_ms=2000, window_ms=10_000)
    assert intake.rate(0) == 0.0 and intake.budget(0) == 100
    for t in range(0, 10_001, 1000):  # 500 actions per second for 10 s
        intake.committed(500, t)
    assert intake.rate(10_000) == 550.0  # 11 blocks inside a 10 s window that started at 0
    assert intake.budget(10_000) == 1100
    assert intake.refusal(1099, 10_000) is None
    retry = intake.refusal(1100 + 549, 10_000)
    assert retry == 1000  # 550 above the budget at 550/s
    # the window forgets: 20 s without commits leaves the floor
    assert intake.rate(30_000) == 0.0 and intake.budget(30_000) == 100
    assert intake.refusal(100, 30_000) == MAX_RETRY_MS


def test_retry_hint_is_bounded_below():
    intake = IntakeControl(floor=10, target_queue_ms=1000)
    intake.committed(10_000, 0)
    intake.committed(10_000, 1000)
    assert intake.refusal(20_000, 1000) == MIN_RETRY_MS


def _admission(world, clock: list[int], floor: int = 2, size: int = 100) -> Admission:
    return Admission(Mempool(size), lambda: world, ActionDecoder(), NodeMetrics(), retry_after_ms=250,
                     intake=IntakeControl(floor=floor, target_queue_ms=1000), now_ms=lambda: clock[0])


def test_clients_are_refused_over_capacity_but_not_peers_or_the_node(world):
    clock = [0]
    admission = _admission(world, clock)
    first = known("nonce-bot").sign(HarvestRadiation())
    second = known("agent-id").sign(HarvestRadiation())
    assert admission.admit(first, ActionSource.API).status == AdmissionStatus.ACCEPTED
    assert admission.admit(second, ActionSource.API).status == AdmissionStatus.ACCEPTED
    third = known("fee-ok").sign(HarvestRadiation())
    busy = admission.admit(third, ActionSource.API)
    assert (busy.status, busy.code) == (AdmissionStatus.BUSY, AdmissionCode.OVER_CAPACITY)
    assert busy.retry_after_ms == MAX_RETRY_MS and "2 actions are pending" in busy.reason
    # refused before the signature check: a forged action gets busy, not bad_signature
    forged = known("bad-signature").sign(MoveAgent(to=(1, 0, 0)))
    assert admission.admit(forged, ActionSource.API).code == AdmissionCode.OVER_CAPACITY
    assert admission.admit(third, ActionSource.GOSSIP).status == AdmissionStatus.ACCEPTED
    assert admission.admit(known("chain-id-agent").sign(HarvestRadiation()), ActionSource.NODE).status == AdmissionStatus.ACCEPTED


def test_pending_client_actions_are_gossiped_again(world):
    clock = [0]
    admission = _admission(world, clock, floor=100)
    a = known("nonce-bot").sign(HarvestRadiation())
    b = known("agent-id").sign(HarvestRadiation())
    peer = known("fee-ok").sign(HarvestRadiation())
    assert admission.admit(a, ActionSource.API).status == AdmissionStatus.ACCEPTED
    clock[0] = 1000
    assert admission.admit(b, ActionSource.API).status == AdmissionStatus.ACCEPTED
    assert admission.admit(peer, ActionSource.GOSSIP).status == AdmissionStatus.ACCEPTED
    assert len(admission.take_gossip_batches(1_000_000)) == 1  # the first gossip of a and b
    assert admission.take_regossip_batches(5000, 1_000_000) == []  # too early
    clock[0] = 5000
    (batch,) = admission.take_regossip_batches(5000, 1_000_000)
    ids = [p for p in decode(batch.data, GossipActionBatch).payloads]
    assert len(ids) == 1  # only a: b was gossiped at 1000, the peer's action is the peer's to re-gossip
    assert admission.take_regossip_batches(5000, 1_000_000) == []
    clock[0] = 6000
    (batch,) = admission.take_regossip_batches(5000, 1_000_000)
    assert len(decode(batch.data, GossipActionBatch).payloads) == 1  # now b
    # committed actions are never gossiped again
    admission.committed([e.action_id for e in admission.mempool.reap(10, 10**6, lambda act: True)])
    clock[0] = 60_000
    assert admission.take_regossip_batches(5000, 1_000_000) == []
