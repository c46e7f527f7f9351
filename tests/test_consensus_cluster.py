"""Whole clusters of ConsensusCores on the deterministic simulated network (tests/consensus_sim.py).

Properties, for any seed, cluster size 4-7, stakes, delays, drops, duplicates and at most one
equivocating validator with less than 1/3 of the stake:
- agreement: all honest nodes decide the same block at every height; every certificate verifies;
  no honest node signs two different messages for one step;
- termination: once drops stop, every honest node decides heights 1..K.
``test_planted_half_threshold_is_caught`` shows that the agreement check fails when the quorum is
wrongly set to more than 1/2 of the stake.
"""

from __future__ import annotations


from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pytest  # noqa: E402
from .consensus_sim import SimConfig, check_safety, run_cluster  # noqa: E402

from agent_world_node.consensus import DuplicateProposalEvidence, DuplicateVoteEvidence, ValidatorSet  # noqa: E402


@st.composite
def scenarios(draw) -> SimConfig:
    n = draw(st.integers(4, 7))
    stakes = list(draw(st.lists(st.integers(1, 10), min_size=n, max_size=n)))
    byzantine: frozenset[int] = frozenset()
    if draw(st.integers(0, 2)) > 0:  # two runs in three have an equivocator
        i = draw(st.integers(0, n - 1))
        honest_stake = sum(stakes) - stakes[i]
        most = (honest_stake - 1) // 2  # the most stake that is still less than 1/3 of the total
        if draw(st.booleans()):
            stakes[i] = most  # the strongest equivocator the model allows
        if 1 <= stakes[i] <= most:
            byzantine = frozenset({i})
    drop = draw(st.sampled_from([0.0, 0.1, 0.3]))
    return SimConfig(
        stakes=tuple(stakes),
        seed=draw(st.integers(0, 2**32 - 1)),
        heights=3,
        byzantine=byzantine,
        drop_prob=drop,
        dup_prob=draw(st.sampled_from([0.0, 0.2])),
        max_delay_ms=draw(st.sampled_from([5, 100, 400])),
        stabilize_at_ms=4000 if drop else 0,
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=scenarios())
def test_agreement_and_termination(config: SimConfig):
    result = run_cluster(config)
    check_safety(result)
    assert result.terminated, (
        f"honest nodes did not all decide {config.heights} heights by {result.time_ms} ms "
        f"({result.events} events): {[sorted(n.decisions) for n in result.honest]}"
    )
    for node in result.honest:
        assert sorted(node.decisions)[: config.heights] == list(range(1, config.heights + 1))


def test_runs_are_deterministic():
    config = SimConfig(stakes=(3, 1, 4, 1, 5), seed=7, byzantine=frozenset({1}), drop_prob=0.2, dup_prob=0.2,
                       stabilize_at_ms=3000, max_delay_ms=150)
    a, b = run_cluster(config), run_cluster(config)
    assert (a.time_ms, a.events) == (b.time_ms, b.events)
    for na, nb in zip(a.nodes, b.nodes):
        assert {h: d.block.hash() for h, d in na.decisions.items()} == {h: d.block.hash() for h, d in nb.decisions.items()}


def test_equivocator_is_caught_and_garbage_is_rejected():
    config = SimConfig(stakes=(1, 1, 1, 1, 1), seed=2, byzantine=frozenset({0}), heights=3)
    result = run_cluster(config)
    check_safety(result)
    assert result.terminated
    byzantine_id = result.nodes[0].id
    evidence = [e for n in result.honest for e in n.evidence]
    assert evidence and all(e.validator == byzantine_id for e in evidence)
    assert any(isinstance(e, DuplicateVoteEvidence) for e in evidence)
    assert any(isinstance(e, DuplicateProposalEvidence) for e in evidence)
    assert sum(n.core.rejected["bad_signature"] for n in result.honest) > 0


def test_lagging_node_catches_up_by_sync():
    # Heavy loss for a long time: some node misses a decision and must adopt it from a certificate.
    config = SimConfig(stakes=(2, 7, 6, 2, 8, 3, 9), seed=3, drop_prob=0.3, dup_prob=0.2,
                       stabilize_at_ms=5000, max_delay_ms=400, byzantine=frozenset({3}))
    result = run_cluster(config)
    check_safety(result)
    assert result.terminated
    assert any(d.source == "sync" for n in result.honest for d in n.decisions.values())


def test_planted_half_threshold_is_caught(monkeypatch: pytest.MonkeyPatch):
    """With quorum = floor(total/2) + 1 instead of more than 2/3, an equivocating proposer splits
    five validators into two groups that each decide their own block: the agreement check fires."""
    original = ValidatorSet.__init__

    def planted(self, validators):
        original(self, validators)
        self.quorum = self.total_stake // 2 + 1

    monkeypatch.setattr(ValidatorSet, "__init__", planted)
    # Nodes on different chains never finish, so the run is cut short; agreement is checked after.
    config = SimConfig(stakes=(1, 1, 1, 1, 1), seed=22, byzantine=frozenset({0}), max_delay_ms=200,
                       heights=1, max_events=20_000)
    with pytest.raises(AssertionError, match="disagreement at height"):
        check_safety(run_cluster(config))
