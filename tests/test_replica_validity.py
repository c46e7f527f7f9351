"""valid(v) checks every action's signature (``replica.validity``), so committed blocks carry only
validly signed actions and execution (also when syncing or replaying) need not verify them again."""

from __future__ import annotations

import msgspec

from agent_world_node import config as cfg
from agent_world_node.replica import Replica
from agent_world_node.store import NodeStore
from agent_world_runtime.actions import MoveAgent, encode_signed_action
from agent_world_runtime.crypto import SigningKey, sha256
from agent_world_runtime.signer import AgentSigner

CHAIN = "validity"


def _replica(tmp_path) -> Replica:
    key = SigningKey.generate()
    genesis = cfg.Genesis(chain_id=CHAIN, genesis_time_ms=0, validators=[cfg.GenesisValidator("v", key.public_key.hex(), 1)])
    return Replica.open(genesis=genesis, consensus=cfg.ConsensusConfig(), validator_key=key,
                        store=NodeStore(tmp_path / "db.sqlite3"), snapshot_dir=tmp_path / "snap",
                        snapshot_interval=10, node_id="n", now_ms=lambda: 1)


def _put(replica: Replica, signed) -> bytes:
    """Put ``signed`` in the mempool without admission (as a Byzantine proposer's mempool would)."""
    payload = encode_signed_action(signed)
    replica.mempool.add(payload, sha256(payload), signed)
    return sha256(payload)


def test_a_block_with_a_forged_signature_is_invalid_and_a_good_one_is_valid(tmp_path):
    replica = _replica(tmp_path)
    alice = AgentSigner.from_seed("alice", b"a" * 32, CHAIN)
    mallory = SigningKey(b"m" * 32)
    register = alice.register()
    _put(replica, register)
    # alice's move, registered earlier in the same block: checked against the key registered there
    _put(replica, alice.sign(MoveAgent(to=(1, 0, 0))))
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
    ids = [_put(replica, bob.register()), _put(replica, bob.sign(MoveAgent(to=(1, 1, 0))))]
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
