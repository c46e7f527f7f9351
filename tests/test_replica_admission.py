"""The node's admission answers with the code the world's rule created, for every case of the
runtime's table, whose agent ids contain the words an old text search matched ("nonce",
"signature", "chain id", "unknown agent", "already registered", "agent id"); and the fees an agent
owes for its pending actions count at admission."""

from __future__ import annotations

import pytest

from agent_world_node.mempool import Mempool
from agent_world_node.metrics import NodeMetrics
from agent_world_node.replica import ActionDecoder, ActionSource, Admission
from agent_world_node.replica.intake import IntakeControl
from agent_world_node.schema import AdmissionCode, AdmissionStatus
from agent_world_runtime.actions import MAX_ACTION_PAYLOAD_BYTES, HarvestRadiation, MoveAgent
from agent_world_runtime.admission import RefusalCode

from .test_runtime_admission_codes import CASES, Case, known
from .test_runtime_admission_codes import world as world  # noqa: F401  (the fixture)


def _admission(world, size: int = 100) -> Admission:
    intake = IntakeControl(floor=10**6, target_queue_ms=1000)  # never the limit here
    return Admission(Mempool(size), lambda: world, ActionDecoder(), NodeMetrics(), retry_after_ms=250,
                     intake=intake, now_ms=lambda: 0)


def test_every_world_refusal_has_an_api_code():
    assert {AdmissionCode.from_refusal(c) for c in RefusalCode} <= set(AdmissionCode)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_admission_code_is_the_rules_code(case: Case, world):
    result = _admission(world).admit(case.action(), ActionSource.API)
    assert result.status == AdmissionStatus.REJECTED
    assert result.code == AdmissionCode.from_refusal(case.code), result.reason
    assert all(fragment in result.reason for fragment in case.says)


def test_node_level_codes(world):
    admission = _admission(world, size=1)
    alice = known("nonce-bot").sign(HarvestRadiation())
    assert admission.admit(alice, ActionSource.API).status == AdmissionStatus.ACCEPTED
    assert admission.admit(alice, ActionSource.API).status == AdmissionStatus.DUPLICATE
    busy = admission.admit(known("agent-id").sign(HarvestRadiation()), ActionSource.API)
    assert (busy.status, busy.code, busy.retry_after_ms) == (AdmissionStatus.BUSY, AdmissionCode.MEMPOOL_FULL, 250)
    huge = known("bad-signature").sign(HarvestRadiation())
    too_large = admission.admit(huge, ActionSource.API, payload=b"x" * (MAX_ACTION_PAYLOAD_BYTES + 1))
    assert (too_large.status, too_large.code) == (AdmissionStatus.REJECTED, AdmissionCode.TOO_LARGE)
    assert [p.topic for p in admission.take_gossip_batches(1_000_000)] == ["actions"]  # only alice's, once
    assert admission.take_gossip_batches(1_000_000) == []


def test_pending_fees_count_against_the_balance(world):
    """'fee-ok' holds 2 electricity: one action of fee 2 is admitted, a second one is refused while
    the first is pending (CheckTx against the executed state plus the mempool)."""
    admission = _admission(world)
    fee_ok = known("fee-ok")
    first, second = fee_ok.sign(HarvestRadiation()), fee_ok.sign(MoveAgent(to=(1, 0, 0)))
    assert world.action_fee(first) == world.action_fee(second) == 2
    assert admission.admit(first, ActionSource.API).status == AdmissionStatus.ACCEPTED
    refused = admission.admit(second, ActionSource.API)
    assert (refused.status, refused.code) == (AdmissionStatus.REJECTED, AdmissionCode.INSUFFICIENT_FEE)
    assert "on top of 2 owed for its earlier actions" in refused.reason
    admission.committed([admission.mempool.reap(10, 10**6, lambda a: True)[0].action_id])
    assert admission.mempool.owed("fee-ok") == 0
