"""valid(v) checks every action's signature and the block rules (``replica.validity``,
``admission.BlockPlan``), so committed blocks carry only validly signed actions whose signers can
pay their fees, and execution (also when syncing or replaying) need not verify them again."""

from __future__ import annotations

import msgspec

from agent_world_node import config as cfg
from agent_world_node.replica import Replica
from agent_world_node.store import NodeStore
from agent_world_node.types import Block, NodeConsensusAction, compute_consensus_action_root
from agent_world_runtime.actions import HarvestRadiation, MoveAgent, encode_signed_action
from agent_world_runtime.crypto import SigningKey, sha256
from agent_world_runtime.signer import AgentSigner

CHAIN = "validity"
ALICE = AgentSigner.from_seed("alice", b"a" * 32, CHAIN)
BOB = AgentSigner.from_seed("bob", b"b" * 32, CHAIN)
POOR = AgentSigner.from_seed("poor", b"p" * 32, CHAIN)


def _replica(tmp_path) -> Replica:
    key = SigningKey.generate()
    agents = [ALICE.genesis_agent(1000, 1000), BOB.genesis_agent(1000, 1000), POOR.genesis_agent(3, 0)]
    genesis = cfg.Genesis(chain_id=CHAIN, genesis_time_ms=0, validators=[cfg.GenesisValidator("v", key.public_key.hex(), 1)],
                          agents=agents)
    return Replica.open(genesis=genesis, consensus=cfg.ConsensusConfig(), validator_key=key,
                        store=NodeStore(tmp_path / "db.sqlite3"), snapshot_dir=tmp_path / "snap",
                        snapshot_interval=10, node_id="n", now_ms=lambda: 1)


def _put(replica: Replica, signed) -> bytes:
    """Put ``signed`` in the mempool without admission (as a Byzantine proposer's mempool would)."""
    payload = encode_signed_action(signed)
    replica.mempool.add(payload, sha256(payload), signed, 0)
    return sha256(payload)


def _forced_block(replica: Replica, actions: list) -> Block:
    """A block at the next height holding exactly ``actions``, in this order (a Byzantine proposer
    that skips the block rules)."""
    honest = replica._build_block(1, 0)
    acts = []
    for signed in actions:
        payload = encode_signed_action(signed)
        acts.append(NodeConsensusAction(sha256(payload), signed.body.agent_id, payload, sha256(payload)))
    header = msgspec.structs.replace(honest.header, action_root=compute_consensus_action_root(acts),
                                     action_count=len(acts))
    return Block(header, acts)


def test_a_block_with_a_forged_signature_is_invalid_and_a_good_one_is_valid(tmp_path):
    replica = _replica(tmp_path)
    alice = AgentSigner.from_seed("alice", b"a" * 32, CHAIN)
    mallory = SigningKey(b"m" * 32)
    _put(replica, alice.sign(MoveAgent(to=(1, 0, 0))))
    _put(replica, alice.sign(HarvestRadiation()))
    assert replica.validity.problem(replica._build_block(1, 0)) is None

    forged = msgspec.structs.replace(alice.sign(MoveAgent(to=(2, 0, 0))),
                                     signature=mallory.sign(b"x", b"not alice's signature"))
    forged_id = _put(replica, forged)
    problem = replica.validity.problem(replica._build_block(1, 0))
    assert problem is not None and "bad signature" in problem and forged_id.hex()[:16] in problem
    assert forged_id not in replica.admission.verified_signatures


def test_verified_signatures_are_cached_so_validation_does_not_repeat_them(tmp_path, monkeypatch):
    replica = _replica(tmp_path)
    bob = AgentSigner.from_seed("bob", b"b" * 32, CHAIN)
    ids = [_put(replica, bob.sign(HarvestRadiation())), _put(replica, bob.sign(MoveAgent(to=(1, 1, 0))))]
    block = replica._build_block(1, 0)
    assert replica.validity.problem(block) is None
    assert all(i in replica.admission.verified_signatures for i in ids)
    calls = []
    import agent_world_node.replica.validity as validity_module

    monkeypatch.setattr(validity_module, "verify_action_signature", lambda *a: calls.append(a) or True)
    assert replica.validity.problem(block) is None
    assert calls == []


def test_a_validity_check_that_raises_counts_as_invalid(tmp_path, monkeypatch):
    replica = _replica(tmp_path)
    block = replica._build_block(1, 0)
    assert replica._valid(block) is True

    def explode(block):
        raise RuntimeError("boom")

    monkeypatch.setattr(replica.validity, "problem", explode)
    assert replica._valid(block) is False  # a hostile block must not crash the node


def test_a_block_whose_signer_cannot_pay_all_its_fees_is_invalid_and_the_proposer_leaves_it_out(tmp_path):
    replica = _replica(tmp_path)
    poor = AgentSigner.from_seed("poor", b"p" * 32, CHAIN)  # 3 electricity: one fee of 2, not two
    first, second = poor.sign(HarvestRadiation()), poor.sign(MoveAgent(to=(1, 0, 0)))
    for signed in (first, second):
        _put(replica, signed)
    built = replica._build_block(1, 0)
    assert [a.submitter for a in built.actions] == ["poor"]  # the proposer kept what poor can pay
    assert replica.validity.problem(built) is None
    problem = replica.validity.problem(_forced_block(replica, [first, second]))
    assert problem is not None and "insufficient_fee" in problem


def test_a_block_with_a_replayed_or_unordered_nonce_or_an_unknown_signer_is_invalid(tmp_path):
    replica = _replica(tmp_path)
    bob = AgentSigner.from_seed("bob", b"b" * 32, CHAIN)
    a2, a1 = bob.sign(HarvestRadiation(), nonce=2), bob.sign(MoveAgent(to=(1, 0, 0)), nonce=1)
    assert replica.validity.problem(_forced_block(replica, [a1, a2])) is None
    problem = replica.validity.problem(_forced_block(replica, [a2, a1]))
    assert problem is not None and "nonce_replayed" in problem
    problem = replica.validity.problem(_forced_block(replica, [bob.sign(HarvestRadiation(), nonce=0)]))
    assert problem is not None and "nonce_replayed" in problem
    stranger = AgentSigner.from_seed("stranger", b"s" * 32, CHAIN)
    problem = replica.validity.problem(_forced_block(replica, [stranger.sign(HarvestRadiation())]))
    assert problem is not None and "unknown_agent" in problem
