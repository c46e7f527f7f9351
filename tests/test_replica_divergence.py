"""A validator whose execution diverges from the quorum's says so and stops signing (README,
"Execution consistency"), run on real Replicas in the cluster simulator.

Node n3's world is made non-deterministic from height ``DIVERGE_AT`` on (its state root is
altered after every block, as a runtime bug would). The other three validators (3/4 of the stake)
go on committing; n3 notices that the committed block carrying the quorum's root for a height
disagrees with its own, records the divergence in its store, and never signs a proposal or vote
again; a replica reopened on that store stays silent. The others count n3's commit announcements as execution mismatches.
"""

from __future__ import annotations

import msgspec

from agent_world_node.replica import DIVERGED_META_KEY
from agent_world_node.sim import Scenario
from agent_world_node.sim.cluster import SimCluster
from agent_world_node.types import GossipProposalMessage, GossipVoteMessage
from agent_world_runtime.codec import decode
from agent_world_runtime.crypto import sha256

DIVERGE_AT = 5
VICTIM = "n3"


class DivergingCluster(SimCluster):
    """A SimCluster whose node ``VICTIM`` computes wrong state roots from ``DIVERGE_AT`` on, and
    which records the heights of every proposal or vote the victim signs."""

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario, stop_on_violation=False)
        self.victim_signed_heights: list[int] = []
        self.victim_meta: list[str] = []

    def _open(self, node):
        replica = super()._open(node)
        if node.name == VICTIM:
            world = replica.driver.world
            end_block = world.end_block

            def wrong_end_block():
                outcome = end_block()
                if outcome.height < DIVERGE_AT:
                    return outcome
                return msgspec.structs.replace(outcome, state_root=sha256(b"bug" + outcome.state_root))

            world.end_block = wrong_end_block
            set_meta = node.store.set_meta

            def recording_set_meta(key, value):
                self.victim_meta.append(key)
                set_meta(key, value)

            node.store.set_meta = recording_set_meta
        return replica

    def _record_signed(self, node, data):
        if node.name == VICTIM:
            msg = decode(data, GossipProposalMessage | GossipVoteMessage)
            message = msg.proposal if isinstance(msg, GossipProposalMessage) else msg.vote
            if message.validator == node.key.public_key.hex():
                self.victim_signed_heights.append(message.height)
        super()._record_signed(node, data)


def test_diverged_validator_stops_signing_and_the_quorum_goes_on():
    scenario = Scenario(
        seed=7,
        stakes=(1, 1, 1, 1),
        heights=24,
    )
    cluster = DivergingCluster(scenario)
    result = cluster.run()

    victim = cluster.nodes[VICTIM]
    d = victim.replica.divergence
    assert d is not None, "the diverged node did not notice"
    assert d.height == DIVERGE_AT and d.our_root != d.quorum_root
    assert DIVERGED_META_KEY in cluster.victim_meta  # remembered across restarts (next test)
    assert victim.replica.core._key is None  # no signing key: it can no longer sign anything
    # It signed nothing for heights after the one whose commit revealed the divergence.
    assert cluster.victim_signed_heights, "the victim never signed: the scenario did not run"
    assert max(cluster.victim_signed_heights) <= DIVERGE_AT + 1, sorted(set(cluster.victim_signed_heights))

    honest = [n for n in cluster.nodes if n != VICTIM]
    assert all(result.heights[n] >= scenario.heights for n in honest), result.heights
    assert result.heights[VICTIM] >= scenario.heights, result.heights  # it still follows the chain
    assert sum(cluster.nodes[n].replica.execution_mismatches for n in honest) > 0
    assert victim.replica.metrics.execution_diverged._value.get() == 1
    # The only property broken is the one planted: n3's execution roots.
    assert {v.property for v in result.violations} <= {"execution_agreement"}, [str(v) for v in result.violations]
    assert all(VICTIM in v.nodes for v in result.violations)


def test_a_recorded_divergence_keeps_a_reopened_validator_silent(tmp_path):
    from agent_world_node import config as cfg
    from agent_world_node.replica import Replica
    from agent_world_node.store import NodeStore
    from agent_world_runtime.codec import encode
    from agent_world_runtime.crypto import SigningKey

    key = SigningKey.generate()
    genesis = cfg.Genesis(chain_id="div", genesis_time_ms=0, validators=[cfg.GenesisValidator("v", key.public_key.hex(), 1)])

    def open_replica() -> Replica:
        return Replica.open(genesis=genesis, consensus=cfg.ConsensusConfig(), validator_key=key,
                            store=NodeStore(tmp_path / "db.sqlite3"), snapshot_dir=tmp_path / "snap",
                            snapshot_interval=10, node_id="n", now_ms=lambda: 1)

    fresh = open_replica()
    assert fresh.divergence is None and fresh.core._key is not None
    assert fresh.start(), "a sole validator proposes at once"
    fresh.store.set_meta(DIVERGED_META_KEY, encode((3, b"a" * 32, b"b" * 32)))
    fresh.store.close()

    reopened = open_replica()
    assert reopened.divergence is not None and reopened.divergence.height == 3
    assert reopened.divergence.quorum_root == b"b" * 32
    assert reopened.core._key is None
    # As the sole validator it would propose and vote at once; diverged, it signs nothing.
    assert [o for o in reopened.start() if getattr(o, "topic", "") in ("proposal", "vote")] == []


def test_a_diverged_validator_restarts_silently_even_with_signed_messages_in_its_wal(tmp_path):
    """A validator that signed at height h and then learnt it diverged (the divergence is stored
    before the block that revealed it) must restart as a silent follower, not refuse its own WAL."""
    from agent_world_node import config as cfg
    from agent_world_node.consensus import TimeoutFired
    from agent_world_node.replica import Replica
    from agent_world_node.store import NodeStore
    from agent_world_runtime.codec import encode
    from agent_world_runtime.crypto import SigningKey

    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(2)]
    genesis = cfg.Genesis(chain_id="diverged", genesis_time_ms=0,
                          validators=[cfg.GenesisValidator(f"v{i}", k.public_key.hex(), 1) for i, k in enumerate(keys)])

    def open_replica(key: SigningKey) -> Replica:
        return Replica.open(genesis=genesis, consensus=cfg.ConsensusConfig(), validator_key=key,
                            store=NodeStore(tmp_path / "db.sqlite3"), snapshot_dir=tmp_path / "snap",
                            snapshot_interval=10, node_id="n", now_ms=lambda: 1)

    replica = open_replica(keys[0])
    replica.start()
    replica.handle_timeout(TimeoutFired("propose", 1, 0))  # whoever proposes, it has now signed a prevote
    assert replica.store.wal_entries(1), "the validator signed nothing at height 1"
    replica.store.set_meta(DIVERGED_META_KEY, encode((0, b"\x01" * 32, b"\x02" * 32)))
    replica.store.close()

    restarted = open_replica(keys[0])
    assert restarted.divergence is not None
    wal_before = restarted.store.wal_entries(1)
    outputs = restarted.start()  # must not raise WALError
    outputs += restarted.handle_timeout(TimeoutFired("propose", 1, 0))
    assert restarted.core.height == 1
    assert not [o for o in outputs if getattr(o, "topic", None) in ("proposal", "vote")]  # signs nothing
    assert restarted.store.wal_entries(1) == wal_before
    restarted.store.close()
