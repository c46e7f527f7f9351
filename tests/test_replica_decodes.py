"""Each action is decoded at most once per node: the node's ``ActionDecoder`` keeps the decoded
forms (from admission, gossip and valid(v)) for execution, and a late gossip copy of a committed
action is dropped by its id. Checked on simulated clusters of real replicas with client traffic."""

from __future__ import annotations

from collections import Counter

import pytest

from agent_world_node.replica import ActionDecoder
from agent_world_node.sim.cluster import SimCluster
from agent_world_node.sim.scenario import Scenario


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_node_decodes_an_action_twice(seed: int, monkeypatch: pytest.MonkeyPatch):
    decoded: dict[int, Counter[bytes]] = {}
    decode = ActionDecoder.decode

    def recording(self: ActionDecoder, action_id: bytes, payload: bytes):
        before = self.count
        signed = decode(self, action_id, payload)
        if self.count > before:  # decoded now, not handed back from the decoder's keep
            decoded.setdefault(id(self), Counter())[action_id] += 1
        return signed

    monkeypatch.setattr(ActionDecoder, "decode", recording)
    result = SimCluster(Scenario(seed=seed, stakes=(1, 1, 1, 1), heights=30)).run()
    assert result.ok, result.verdict()
    assert result.stats["actions_committed"] > 0
    assert len(decoded) == 4  # one decoder per node (no crash in this scenario)
    for counts in decoded.values():
        assert counts and max(counts.values()) == 1, counts.most_common(3)


def test_a_re_encoded_action_is_refused_as_malformed():
    """The same signed action re-encoded (a wider integer form) would get another action id under
    the same signature; only the canonical payload is accepted."""
    import msgspec as _msgspec

    from agent_world_node.replica import ActionDecoder
    from agent_world_runtime.actions import HarvestRadiation, encode_signed_action
    from agent_world_runtime.codec import DecodeError
    from agent_world_runtime.crypto import sha256
    from agent_world_runtime.signer import AgentSigner

    signed = AgentSigner.from_seed("alice", b"\x01" * 32, "c").sign(HarvestRadiation())
    canonical = encode_signed_action(signed)
    body = _msgspec.msgpack.decode(canonical)
    wider = bytearray(canonical)
    nonce_at = wider.index(b"\xa5nonce") + 6
    assert wider[nonce_at] == 0x01  # positive fixint 1
    wider[nonce_at:nonce_at + 1] = b"\xcd\x00\x01"  # uint16 1: the same value, another encoding
    assert _msgspec.msgpack.decode(bytes(wider)) == body
    decoder = ActionDecoder()
    assert decoder.decode(sha256(canonical), canonical) == signed
    try:
        decoder.decode(sha256(bytes(wider)), bytes(wider))
    except DecodeError as exc:
        assert "canonical" in str(exc)
    else:
        raise AssertionError("a non-canonical payload was accepted")


def test_a_message_on_another_topic_is_dropped_and_blamed(tmp_path):
    """Every gossip message belongs on its own topic: a status message published on the vote topic
    is malformed."""
    from agent_world_node import config as cfg
    from agent_world_node.replica import Misbehaviour, Replica
    from agent_world_node.store import NodeStore
    from agent_world_node.types import GossipStatusMessage, Offence, Topic
    from agent_world_runtime.codec import encode
    from agent_world_runtime.crypto import SigningKey

    key = SigningKey(b"\x02" * 32)
    genesis = cfg.Genesis(chain_id="topics", genesis_time_ms=0, validators=[cfg.GenesisValidator("v", key.public_key.hex(), 1)])
    replica = Replica.open(genesis=genesis, consensus=cfg.ConsensusConfig(), validator_key=key,
                           store=NodeStore(tmp_path / "db.sqlite3"), snapshot_dir=tmp_path / "snap",
                           snapshot_interval=10, node_id="n", now_ms=lambda: 1)
    status = encode(GossipStatusMessage(height=5, execution_height=5, execution_state_root=b"\x00" * 32))
    assert replica.handle_gossip(status, "peer", Topic.VOTE) == [Misbehaviour("peer", Offence.MALFORMED)]
    assert "peer" not in replica.sync.peer_heights
    assert replica.handle_gossip(status, "peer", Topic.STATUS) == []
    assert replica.sync.peer_heights["peer"] == 5


def test_a_forged_vote_far_ahead_is_still_blamed_and_an_honest_one_is_not(tmp_path):
    """Votes more than one height ahead are not kept, but a forged one (unknown key, bad signature)
    is the sender's fault; a validly signed one from a leading peer is not."""
    import msgspec as _msgspec

    from agent_world_node import config as cfg
    from agent_world_node.replica import Misbehaviour, Replica
    from agent_world_node.store import NodeStore
    from agent_world_node.types import VOTE_SIGN_DOMAIN, GossipVoteMessage, Offence, Topic, Vote, VoteType
    from agent_world_runtime.codec import encode
    from agent_world_runtime.crypto import SigningKey

    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    genesis = cfg.Genesis(chain_id="far", genesis_time_ms=0,
                          validators=[cfg.GenesisValidator(f"v{i}", k.public_key.hex(), 1) for i, k in enumerate(keys)])
    replica = Replica.open(genesis=genesis, consensus=cfg.ConsensusConfig(), validator_key=keys[0],
                           store=NodeStore(tmp_path / "db.sqlite3"), snapshot_dir=tmp_path / "snap",
                           snapshot_interval=10, node_id="n", now_ms=lambda: 1)
    replica.start()

    def vote(key: SigningKey, height: int) -> bytes:
        unsigned = Vote(VoteType.PREVOTE, height, 0, b"\x01" * 32, key.public_key.hex(), b"")
        signed = _msgspec.structs.replace(unsigned, signature=key.sign(VOTE_SIGN_DOMAIN, unsigned.sign_bytes("far")))
        return encode(GossipVoteMessage(signed))

    assert replica.handle_gossip(vote(keys[1], 50), "leader", Topic.VOTE) == []
    stranger = SigningKey(b"\x77" * 32)
    assert replica.handle_gossip(vote(stranger, 50), "forger", Topic.VOTE) == [
        Misbehaviour("forger", Offence.UNKNOWN_VALIDATOR)]
    forged_vote = _msgspec.structs.replace(
        _msgspec.msgpack.decode(vote(keys[2], 50), type=GossipVoteMessage).vote, signature=b"\x00" * 64)
    assert replica.handle_gossip(encode(GossipVoteMessage(forged_vote)), "forger2", Topic.VOTE) == [
        Misbehaviour("forger2", Offence.BAD_SIGNATURE)]


def test_consensus_silence_is_measured_on_the_tick_clock(tmp_path):
    """/ready turns 503 when peers send no vote, proposal or commit for a while
    (``Node.readiness``); the replica measures that silence on its own tick clock."""
    from agent_world_node import config as cfg
    from agent_world_node.replica import Replica
    from agent_world_node.store import NodeStore
    from agent_world_node.types import GossipStatusMessage, Topic
    from agent_world_runtime.codec import encode
    from agent_world_runtime.crypto import SigningKey

    key = SigningKey(b"\x02" * 32)
    genesis = cfg.Genesis(chain_id="silence", genesis_time_ms=0, validators=[cfg.GenesisValidator("v", key.public_key.hex(), 1)])
    replica = Replica.open(genesis=genesis, consensus=cfg.ConsensusConfig(), validator_key=key,
                           store=NodeStore(tmp_path / "db.sqlite3"), snapshot_dir=tmp_path / "snap",
                           snapshot_interval=10, node_id="n", now_ms=lambda: 1)
    assert replica.consensus_silence_ms() == 0
    replica.tick(1_000, [])
    replica.tick(13_000, [])
    assert replica.consensus_silence_ms() == 12_000  # nothing since the first tick
    status = encode(GossipStatusMessage(height=1, execution_height=1, execution_state_root=b"\x00" * 32))
    replica.handle_gossip(status, "peer", Topic.STATUS)
    assert replica.consensus_silence_ms() == 12_000  # a status heartbeat is not consensus traffic
