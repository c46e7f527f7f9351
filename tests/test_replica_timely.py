"""The replica's half of proposer-based timestamps (CometBFT PBTS): it reads its clock when a
proposal arrives, judges it ``timely`` ([PBTS-RECEPTION-STEP.1]:
``block_time - precision <= received <= block_time + message_delay + precision``, with the genesis
``synchrony`` parameters) and hands the verdict to the core; an untimely new proposal is prevoted
nil, logged as ``proposal_untimely`` and counted. The block time it proposes is its clock, but
strictly after the previous block's, which valid(v) requires."""

from __future__ import annotations

import msgspec
import pytest
import structlog

from agent_world_node import config as cfg
from agent_world_node.consensus import ValidatorSet, proposer_for, timely, untimely_reason
from agent_world_node.replica import Publish, Replica
from agent_world_node.store import NodeStore
from agent_world_node.types import (
    PROPOSAL_SIGN_DOMAIN,
    Block,
    GossipProposalMessage,
    GossipVoteMessage,
    Proposal,
    Topic,
    Vote,
    VoteType,
)
from agent_world_runtime.codec import decode, encode
from agent_world_runtime.crypto import SigningKey

CHAIN = "timely"
GENESIS_MS = 1_700_000_000_000
SYNC = cfg.SynchronyParams(precision_ms=500, message_delay_ms=15_000)


def _keys() -> tuple[SigningKey, SigningKey, cfg.Genesis]:
    """(our key, the key of the proposer of height 1 round 0, genesis) for two validators."""
    for i in range(100):
        me, other = SigningKey(bytes([i + 1]) * 32), SigningKey(bytes([i + 101]) * 32)
        genesis = cfg.Genesis(chain_id=CHAIN, genesis_time_ms=GENESIS_MS, synchrony=SYNC, validators=[
            cfg.GenesisValidator("me", me.public_key.hex(), 1), cfg.GenesisValidator("other", other.public_key.hex(), 1)])
        if proposer_for(ValidatorSet.from_genesis(genesis), 1, 0) == other.public_key.hex():
            return me, other, genesis
    raise AssertionError("no key pair where the other validator proposes first")


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def _replica(tmp_path, clock: Clock) -> tuple[Replica, SigningKey]:
    me, other, genesis = _keys()
    replica = Replica.open(genesis=genesis, consensus=cfg.ConsensusConfig(), validator_key=me,
                           store=NodeStore(tmp_path / "db.sqlite3"), snapshot_dir=tmp_path / "snap",
                           snapshot_interval=10, node_id="me", now_ms=clock)
    replica.start()
    return replica, other


def _proposal(replica: Replica, key: SigningKey, block_time_ms: int, round: int = 0, pol_round: int = -1) -> bytes:
    """Gossip bytes of ``key``'s proposal at height 1 of a block valid for ``replica`` stamped ``block_time_ms``."""
    honest = replica._build_block(1, round)
    header = msgspec.structs.replace(honest.header, proposer=key.public_key.hex(), timestamp_ms=block_time_ms)
    unsigned = Proposal(1, round, pol_round, Block(header, honest.actions), key.public_key.hex(), b"")
    signed = msgspec.structs.replace(unsigned, signature=key.sign(PROPOSAL_SIGN_DOMAIN, unsigned.sign_bytes(CHAIN)))
    return encode(GossipProposalMessage(signed))


def _prevotes(outputs) -> list[Vote]:
    votes = [decode(o.data, GossipVoteMessage).vote for o in outputs if isinstance(o, Publish) and o.topic == Topic.VOTE]
    return [v for v in votes if v.vote_type == VoteType.PREVOTE]


def _untimely_count(replica: Replica, reason: str) -> float:
    return replica.metrics.proposals_untimely.labels(reason)._value.get()


def test_the_timely_predicate_and_its_bounds():
    t = GENESIS_MS
    assert timely(t, t, SYNC)
    assert timely(t, t - 500, SYNC) and not timely(t, t - 501, SYNC)  # proposer's clock ahead by > precision
    assert timely(t, t + 15_500, SYNC) and not timely(t, t + 15_501, SYNC)  # older than delay + precision
    assert untimely_reason(t, t - 501, SYNC) == "from_the_future"
    assert untimely_reason(t, t + 15_501, SYNC) == "too_old"
    assert untimely_reason(t, t + 100, SYNC) is None


@pytest.mark.parametrize(("offset_ms", "reason"), [
    (0, None), (500, None), (-15_500, None),  # block time minus our clock: inside the window
    (501, "from_the_future"), (3_600_000, "from_the_future"), (-15_501, "too_old"), (-3_600_000, "too_old"),
])
def test_a_proposal_is_prevoted_only_if_timely_on_arrival(tmp_path, offset_ms, reason):
    clock = Clock(GENESIS_MS + 60_000)
    replica, other = _replica(tmp_path, clock)
    data = _proposal(replica, other, clock.now + offset_ms)
    with structlog.testing.capture_logs() as logs:
        outputs = replica.handle_gossip(data, "peer-other", Topic.PROPOSAL)
    [prevote] = _prevotes(outputs)
    untimely = [entry for entry in logs if entry["event"] == "proposal_untimely"]
    assert not [o for o in outputs if type(o).__name__ == "Misbehaviour"]  # a skewed clock is no offence
    if reason is None:
        assert prevote.block_hash is not None
        assert untimely == []
        return
    assert prevote.block_hash is None
    [entry] = untimely
    assert entry["log_level"] == "warning"
    assert (entry["height"], entry["round"], entry["reason"]) == (1, 0, reason)
    assert entry["proposer"] == other.public_key.hex()[:16]
    assert (entry["block_time_ms"], entry["local_time_ms"]) == (clock.now + offset_ms, clock.now)
    assert _untimely_count(replica, reason) == 1
    # a re-gossiped copy is neither logged nor counted again
    with structlog.testing.capture_logs() as logs:
        replica.handle_gossip(data, "peer-other", Topic.PROPOSAL)
    assert not [entry for entry in logs if entry["event"] == "proposal_untimely"]
    assert _untimely_count(replica, reason) == 1


def test_the_clock_is_read_on_arrival_not_later(tmp_path):
    clock = Clock(GENESIS_MS + 60_000)
    replica, other = _replica(tmp_path, clock)
    data = _proposal(replica, other, clock.now + 400)
    [prevote] = _prevotes(replica.handle_gossip(data, "peer-other", Topic.PROPOSAL))
    assert prevote.block_hash is not None
    clock.now += 3_600_000  # much later: the verdict on arrival stands
    assert replica.handle_gossip(data, "peer-other", Topic.PROPOSAL) == []


def test_a_reproposal_with_a_proof_of_lock_round_is_not_judged_for_timeliness(tmp_path):
    clock = Clock(GENESIS_MS + 60_000)
    replica, other = _replica(tmp_path, clock)
    data = _proposal(replica, other, clock.now + 3_600_000, round=1, pol_round=0)
    with structlog.testing.capture_logs() as logs:
        replica.handle_gossip(data, "peer-other", Topic.PROPOSAL)
    assert not [entry for entry in logs if entry["event"] == "proposal_untimely"]


def test_proposed_block_time_is_the_clock_but_after_the_previous_block(tmp_path):
    clock = Clock(GENESIS_MS + 60_000)
    replica, _ = _replica(tmp_path, clock)
    assert replica._build_block(1, 0).header.timestamp_ms == clock.now
    clock.now = GENESIS_MS - 3_600_000  # a clock behind the chain's time
    assert replica._build_block(1, 0).header.timestamp_ms == GENESIS_MS + 1


def test_valid_v_requires_a_block_time_after_the_previous_block(tmp_path):
    clock = Clock(GENESIS_MS + 60_000)
    replica, other = _replica(tmp_path, clock)
    block = replica._build_block(1, 0)
    for t, ok in ((GENESIS_MS - 1, False), (GENESIS_MS, False), (GENESIS_MS + 1, True)):
        stamped = Block(msgspec.structs.replace(block.header, timestamp_ms=t), block.actions)
        problem = replica.validity.problem(stamped)
        assert (problem is None) == ok, problem
        if not ok:
            assert problem == "timestamp not after the previous block's"
