"""Adversarial schedules that make each consensus safety mechanism observable.

Random scenarios find a broken vote threshold or unchecked vote signatures quickly (their commit
certificates do not verify), but losing the *lock* (Tendermint L22-L33) only shows under a precise
schedule. Each attack here is a Byzantine validator with a tailored ``Behaviour`` plus adversarial
drop rules on the network (the partial-synchrony adversary, which controls delivery until the
network stabilises at ``ATTACK_HEAL_MS``). Against the correct core every attack must end with no
violation (safety holds, and liveness returns after the heal); against the matching broken core
(``tests/broken_cores.py``) it ends in an agreement violation.

``no_locking`` (4 validators of stake 1; Byzantine B proposes round 1 of the attack height h):
round 0 of h: the honest proposer's block v gets everyone's prevote and precommit. Honest H1 gets
all precommits and decides v. The other two honest validators (the victims) get no non-nil
precommit of round 0 except each other's, and B sends them a nil precommit instead (a double
vote), so they time out into round 1 without deciding. There B proposes a fresh block v' (pol
round -1) and prevotes and precommits it. A victim that honours its lock on v prevotes nil; one
that ignores it prevotes v', and with B that is a polka and then a decision for v' != v.

``split_brain`` (5 validators of stake 1; Byzantine B proposes round 0 of h): the honest
validators are split into halves A and B that hear nothing of each other at height h; B proposes
v to half A and v' to half B and votes for each half's block there. Each half plus B is 3 of 5:
more than 1/2 but not more than 2/3, so only a core with a halved threshold decides, and then
the halves decide different blocks.

``forged_split``: ``split_brain`` where B also forges unsigned prevotes and precommits from every
other validator for each half's block; only a core that skips vote signatures counts them.
"""

from __future__ import annotations

from typing import Any, Protocol

from agent_world_runtime.codec import DecodeError, decode
from agent_world_runtime.crypto import SigningKey

from ..consensus import ValidatorSet, proposer_for
from ..types import (
    GossipCommitMessage,
    GossipProposalMessage,
    GossipVoteMessage,
    ReplicatedCommitPayload,
    Vote,
    VoteType,
)
from .byzantine import ByzContext, Equivocator, Send, decode_gossip, proposal_data, sign_proposal, sign_vote, vote_data
from .chain import make_genesis
from .network import Delivery, Message, SyncResponse
from .scenario import Scenario, ScenarioError


class AttackedCluster(Protocol):
    """What an attack needs of the cluster it is installed in (``cluster.SimCluster``): the
    scenario, validator keys and set, the nodes (each with ``name`` and ``behaviour``) and the
    network (whose ``rules`` drop messages)."""

    scenario: Scenario
    keys: list[SigningKey]
    validator_set: ValidatorSet
    nodes: dict[str, Any]
    network: Any

ATTACK_HEAL_MS = 4_000
ATTACK_STAKES = {"no_locking": (1, 1, 1, 1), "split_brain": (1, 1, 1, 1, 1), "forged_split": (1, 1, 1, 1, 1)}
ATTACKS = tuple(ATTACK_STAKES)
FIRST_ATTACK_HEIGHT = 2
LAST_ATTACK_HEIGHT = 12


def _attack_point(name: str, validator_set: ValidatorSet, ids: list[str]) -> tuple[int, int]:
    """The (Byzantine validator index, attack height) of ``name``: the lowest height from
    ``FIRST_ATTACK_HEIGHT`` at which some validator has the proposer role the attack needs."""
    for h in range(FIRST_ATTACK_HEIGHT, LAST_ATTACK_HEIGHT + 1):
        if name == "no_locking":
            p0, p1 = proposer_for(validator_set, h, 0), proposer_for(validator_set, h, 1)
            if p1 != p0:
                return ids.index(p1), h
        else:
            return ids.index(proposer_for(validator_set, h, 0)), h
    raise ScenarioError(f"attack {name}: no height in {FIRST_ATTACK_HEIGHT}..{LAST_ATTACK_HEIGHT} fits")


def attack_scenario(name: str, seed: int, heights: int = 8) -> Scenario:
    """The scenario of attack ``name`` with validator keys from ``seed`` (no random faults; the
    adversary's rules hold until ``ATTACK_HEAL_MS``). Raises ScenarioError for an unknown name."""
    if name not in ATTACK_STAKES:
        raise ScenarioError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    stakes = ATTACK_STAKES[name]
    genesis, keys = make_genesis(Scenario(seed=seed, stakes=stakes))
    index, _ = _attack_point(name, ValidatorSet.from_genesis(genesis), [k.public_key.hex() for k in keys])
    label = "forger" if name == "forged_split" else "equivocator"
    return Scenario(seed=seed, stakes=stakes, byzantine=((index, label),), heights=heights,
                    heal_at_ms=ATTACK_HEAL_MS, attack=name)


class LockBreaker(Equivocator):
    """B of the ``no_locking`` attack (see the module docstring)."""

    name = "lock_breaker"

    def __init__(self, ctx: ByzContext, height: int, decider: str, victims: frozenset[str]) -> None:
        super().__init__(ctx)
        self.height = height
        self.decider = decider
        self.victims = victims
        self.round0_block = None
        self.fired = False

    def on_receive(self, topic: str, data: bytes) -> list[Send]:
        msg = decode_gossip(data)
        if isinstance(msg, GossipProposalMessage) and (msg.proposal.height, msg.proposal.round) == (self.height, 0):
            self.round0_block = msg.proposal.block
        return []

    def outgoing(self, topic: str, data: bytes) -> list[Send]:
        msg = decode_gossip(data)
        if not isinstance(msg, GossipVoteMessage):
            return [(None, topic, data)]
        v = msg.vote
        if v.validator != self.ctx.validator_id or v.height != self.height or v.round != 0:
            return [(None, topic, data)]
        if v.vote_type != VoteType.PRECOMMIT or v.block_hash is None or self.round0_block is None:
            return [(None, topic, data)]
        nil = vote_data(sign_vote(self.ctx, VoteType.PRECOMMIT, self.height, 0, None))
        sends: list[Send] = [(p, topic, data if p == self.decider else nil) for p in self.ctx.peers]
        if not self.fired:
            self.fired = True
            fake = sign_proposal(self.ctx, self.height, 0, 0, self.round0_block)
            alt = self._alternative(fake).block  # v': one action fewer, one ms later
            proposal = sign_proposal(self.ctx, self.height, 1, -1, alt)
            messages = [("proposal", proposal_data(proposal))] + [
                ("vote", vote_data(sign_vote(self.ctx, t, self.height, 1, alt.hash())))
                for t in (VoteType.PREVOTE, VoteType.PRECOMMIT)
            ]
            sends += [(p, t, d) for p in sorted(self.victims) for t, d in messages]
        return sends


class SplitEquivocator(Equivocator):
    """B of ``split_brain`` / ``forged_split``: equivocates at one height with fixed halves, and
    optionally forges the other validators' votes for each half's block."""

    name = "split_equivocator"

    def __init__(self, ctx: ByzContext, height: int, half_b: frozenset[str], forge: bool) -> None:
        super().__init__(ctx)
        self.height = height
        self._fixed_half = half_b
        self.forge = forge

    def half_b(self, height: int) -> frozenset[str]:
        return self._fixed_half

    def _forged(self, height: int, round: int, block_hash: bytes) -> list[bytes]:
        out = []
        for t in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            for validator in self.ctx.validator_set.ids():
                if validator != self.ctx.validator_id:
                    out.append(vote_data(Vote(t, height, round, block_hash, validator, b"")))
        return out

    def outgoing(self, topic: str, data: bytes) -> list[Send]:
        msg = decode_gossip(data)
        if isinstance(msg, GossipProposalMessage):
            height = msg.proposal.height
        elif isinstance(msg, GossipVoteMessage):
            height = msg.vote.height
        else:
            return [(None, topic, data)]
        if height != self.height:
            return [(None, topic, data)]
        sends = super().outgoing(topic, data)
        if self.forge and isinstance(msg, GossipProposalMessage) and msg.proposal.validator == self.ctx.validator_id:
            p = msg.proposal
            alt = self._alternative(p)
            for peer in self.ctx.peers:
                block_hash = alt.block.hash() if peer in self._fixed_half else p.block.hash()
                sends += [(peer, "vote", d) for d in self._forged(p.height, p.round, block_hash)]
        return sends


def _message_height_signer(message: Message) -> tuple[list[int], str | None]:
    """Heights a message carries and, for a proposal or vote, its signer."""
    if isinstance(message, SyncResponse):
        heights = []
        for raw in message.payloads:
            try:
                heights.append(decode(raw, ReplicatedCommitPayload).block.header.height)
            except DecodeError:
                continue
        return heights, None
    if not isinstance(message, Delivery):
        return [], None
    msg = decode_gossip(message.data)
    if isinstance(msg, GossipProposalMessage):
        return [msg.proposal.height], msg.proposal.validator
    if isinstance(msg, GossipVoteMessage):
        return [msg.vote.height], msg.vote.validator
    if isinstance(msg, GossipCommitMessage):
        return [msg.header.height], None
    return [], None


def install_attack(name: str, cluster: AttackedCluster) -> None:
    """Give the Byzantine node of ``cluster`` the attack's behaviour and add its drop rules.
    Raises ScenarioError for an unknown attack or a scenario not made by ``attack_scenario``."""
    scenario = cluster.scenario
    if name not in ATTACK_STAKES or len(scenario.byzantine) != 1:
        raise ScenarioError(f"attack {name!r} needs a scenario from attack_scenario(); known: {', '.join(ATTACKS)}")
    ids = [k.public_key.hex() for k in cluster.keys]
    index, height = _attack_point(name, cluster.validator_set, ids)
    if scenario.byzantine[0][0] != index:
        raise ScenarioError(f"attack {name}: validator {index} must be the Byzantine one; use attack_scenario()")
    byz = cluster.nodes[f"n{index}"]
    assert byz.behaviour is not None
    ctx = byz.behaviour.ctx
    node_of = {vid: f"n{i}" for i, vid in enumerate(ids)}
    honest = sorted(n for n in cluster.nodes if n != byz.name)

    if name == "no_locking":
        decider = node_of[proposer_for(cluster.validator_set, height, 0)]
        victims = frozenset(n for n in honest if n != decider)
        byz.behaviour = LockBreaker(ctx, height, decider, victims)
        victim_ids = {ids[int(n[1:])] for n in victims}

        def hide_round0_decision(message: Message, now: int) -> bool:
            if message.dst not in victims:
                return False
            if isinstance(message, Delivery) and message.topic == "vote":
                msg = decode_gossip(message.data)
                v = msg.vote if isinstance(msg, GossipVoteMessage) else None
                return (
                    v is not None and (v.height, v.round, v.vote_type) == (height, 0, VoteType.PRECOMMIT)
                    and v.block_hash is not None and v.validator not in victim_ids
                )
            heights, _ = _message_height_signer(message)
            return height in heights and (isinstance(message, SyncResponse) or message.topic == "commit")

        cluster.network.rules.append(hide_round0_decision)
        return

    half_a, half_b = frozenset(honest[: len(honest) // 2]), frozenset(honest[len(honest) // 2:])
    byz.behaviour = SplitEquivocator(ctx, height, half_b, forge=(name == "forged_split"))

    byz.relays = False  # B forwards nothing between the halves

    def split_halves(message: Message, now: int) -> bool:
        heights, _ = _message_height_signer(message)
        if height not in heights:
            return False
        if isinstance(message, SyncResponse) or (isinstance(message, Delivery) and message.topic == "commit"):
            return True
        src, dst = message.src, message.dst
        return (src in half_a and dst in half_b) or (src in half_b and dst in half_a)

    cluster.network.rules.append(split_halves)
