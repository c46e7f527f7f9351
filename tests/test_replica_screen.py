"""The replica's gossip screen: the network asks it, before pubsub forwards or delivers a message,
whether anyone needs the message; votes of decided heights are dropped there, unchecked and
unpenalized, while everything else passes to ``handle_gossip``."""

from __future__ import annotations

from agent_world_node import config as cfg
from agent_world_node.replica import Replica
from agent_world_node.replica.replica import MAX_VOTE_GOSSIP_BYTES
from agent_world_node.store import NodeStore
from agent_world_node.types import GossipStatusMessage, GossipVoteMessage, Topic, Vote, VoteType
from agent_world_runtime.codec import encode
from agent_world_runtime.crypto import SigningKey

CHAIN = "screen"


def _replica(tmp_path) -> Replica:
    key = SigningKey(bytes([7]) * 32)
    genesis = cfg.Genesis(chain_id=CHAIN, genesis_time_ms=1_700_000_000_000,
                          validators=[cfg.GenesisValidator("me", key.public_key.hex(), 1)])
    return Replica.open(genesis=genesis, consensus=cfg.ConsensusConfig(), validator_key=key,
                        store=NodeStore(tmp_path / "db.sqlite3"), snapshot_dir=tmp_path / "snap",
                        snapshot_interval=10, node_id="me", now_ms=lambda: 1_700_000_060_000)


def _vote(height: int) -> bytes:
    return encode(GossipVoteMessage(Vote(VoteType.PRECOMMIT, height, 0, b"\x01" * 32, "ab" * 32, b"\x00" * 64)))


def test_votes_below_the_last_committed_height_are_screened_out(tmp_path):
    replica = _replica(tmp_path)
    replica.height = 10  # the screen reads only the last committed height
    assert replica.screen_gossip(Topic.VOTE.value, _vote(9)) == "stale_vote"
    assert replica.screen_gossip(Topic.VOTE.value, _vote(1)) == "stale_vote"
    # the last committed height (a peer may still be finishing it), the current one and later pass
    for h in (10, 11, 12, 10**9):
        assert replica.screen_gossip(Topic.VOTE.value, _vote(h)) is None
    replica.height = 12
    assert replica.screen_gossip(Topic.VOTE.value, _vote(11)) == "stale_vote"


def test_everything_else_passes_to_the_handler(tmp_path):
    replica = _replica(tmp_path)
    replica.height = 10
    assert replica.screen_gossip(Topic.COMMIT.value, _vote(1)) is None  # only the vote topic is screened
    assert replica.screen_gossip(Topic.VOTE.value, b"\xc1garbage") is None  # handle_gossip reports it
    assert replica.screen_gossip(Topic.VOTE.value, encode(GossipStatusMessage(3, 3, b"\x00" * 32))) is None
    padded = _vote(1) + b"\x00" * MAX_VOTE_GOSSIP_BYTES  # too long to be a vote: not decoded here
    assert replica.screen_gossip(Topic.VOTE.value, padded) is None
