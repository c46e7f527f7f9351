"""The consensus state machine: Tendermint, Algorithm 1 of Buchman, Kwon, Milosevic, "The latest
gossip on BFT consensus" (2018), written sans-IO (docs/architecture.md, "Layers").

``ConsensusCore`` holds the state of one validator (or observer) for the current height. The driver
feeds it inputs (``messages.Input``) and performs the effects it returns (``messages.Effect``); the
core does no I/O, reads no clock and never blocks. Given the same inputs in the same order it
returns the same effects (Ed25519 signatures are deterministic).

How the paper maps onto the code:

- Every message is checked before it counts (signature, sender in the validator set, proposer of
  its (height, round), well-formed block); rejected ones are dropped and counted by reason in
  ``rejected``.
- Accepted messages go into the message log of the height: proposals in ``_proposals`` (the first one
  per round; the first different one is equivocation evidence and its block is remembered), votes
  in a ``VoteKeeper`` (which also counts an equivocator's votes for each value it signed, see there).
- ``_transition`` is the paper's set of ``upon`` rules: each branch names its lines. The core
  evaluates them after every input until none fires, so the order in which messages arrived does
  not matter, only the set of messages (as in the paper, where rules are conditions on the log).
- Proposer-based timestamps (CometBFT PBTS, spec/consensus/proposer-based-timestamp/): L22 also
  needs the proposal to have been ``timely`` when it arrived ([PBTS-ALG-UPON-PROP.1]); the driver
  reads its clock and passes the answer in ``ProposalReceived.timely`` (``synchrony.timely``), so
  the core stays clock-free. Timeliness belongs to the proposal of a round, not to the block: valid(v)
  stays cached per block hash, and a block that was untimely in round r can still be prevoted by
  L28 in a later round on a proof-of-lock (PBTS's "Unchanged upon clause of line 28"). Our own
  proposals, also those replayed from the WAL by ``resume``, count as timely.
- valid(v) is an input, as in malachite's driver: the first time a block is seen at a height the
  core emits ``ValidateBlock(block)`` and the driver answers ``BlockValidity(hash, valid)``. Until
  the answer arrives the rules that need valid(v) (L22, L28, L36, L49) do not fire; the core itself
  only checks that a proposal's block has the right shape (``types.block_shape_problem``).
- L49-L54: on a decision the core emits ``Decide`` and stops (step ``COMMIT``); lines L52-L54
  (next height, reset, StartRound(0)) are ``start_height(height + 1)``, which the driver calls once
  it has executed the block and waited the commit timeout.

Deviations from the paper, each safe:

- L21: the propose timeout is scheduled by the proposer too (as CometBFT does), so a driver that
  never answers ``GetValue`` cannot stall its round.
- L36 and L49 need "the PROPOSAL of round r with value v"; the core accepts v from any verified
  proposal of this height whose block hashes to id(v) (a block is identified by its hash). This is
  what malachite's full-proposal keeper and CometBFT's block parts do, and helps a validator that
  missed one round's proposal but saw the value in another.
- L55: only votes are counted for round skipping (not proposals), as in malachite.
- Votes for rounds more than ``max_round_lookahead`` above the current round are dropped, and
  messages for ``height + 1`` are buffered (at most ``future_buffer_per_validator`` per validator)
  and replayed by ``start_height``; older heights are ignored. These bound the memory a Byzantine
  validator can make a node spend. The driver re-gossips ``height_messages()`` (its whole message
  log of the height, as CometBFT gossips votes) so that anything dropped this way or lost on the
  network reaches its peers again: the paper's liveness assumes exactly this gossip property.
- Restarts: ``resume(height, signed)`` starts a height from this validator's write-ahead log (the
  messages it signed at that height before a crash). They enter the message log as received and as
  already signed, the lock and valid value they imply are restored (a non-nil precommit for id(v) in
  round r is always paired with lockedValue, validValue <- v and lockedRound, validRound <- r,
  L38-L43), and the core moves straight to the highest round among them, re-sending what it signed
  there. It never signs a second, different message for a step it signed before, and never signs
  anything in a round below the one it had reached (signing in an earlier round after voting in a
  later one breaks the locking argument of the paper's safety proof). A vote or proposal of this
  validator that arrives through ``handle`` is likewise stored and never contradicted.

Overridable checks (used only by the test-only broken variants in tests/broken_cores.py, which show
that the simulator's property tests catch a core without each of them): ``_lock_allows_prevote``
(L23/L29), ``_proposal_timely`` (PBTS, L22), ``_vote_signature_ok`` and ``_new_vote_keeper`` (the 2f+1 threshold).
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Callable
from typing import Optional

import msgspec
import structlog

from agent_world_node.types import (
    PROPOSAL_SIGN_DOMAIN,
    VOTE_SIGN_DOMAIN,
    Block,
    CommitCertificate,
    Proposal,
    Vote,
    VoteType,
    block_shape_problem,
)
from agent_world_runtime.crypto import SigningKey, verify

from .certificate import build_commit_certificate
from .evidence import DuplicateProposalEvidence, Evidence
from .messages import (
    BlockValidity,
    Broadcast,
    Decide,
    Effect,
    EvidenceFound,
    GetValue,
    Input,
    PersistWAL,
    ProposalReceived,
    ScheduleTimeout,
    TimeoutFired,
    ValidateBlock,
    ValueToPropose,
    VoteReceived,
)
from .privval import DoubleSignCode, DoubleSignRefused, MemorySignState, PrivValidator, SignStep
from .proposer import proposer_for
from .timeouts import TIMEOUT_KINDS, TimeoutConfig, TimeoutKind
from .validators import Validator, ValidatorSet
from .votekeeper import AddVoteStatus, VoteKeeper

log = structlog.get_logger(__name__)

HASH_SIZE = 32
DEFAULT_MAX_ROUND_LOOKAHEAD = 100
DEFAULT_FUTURE_BUFFER_PER_VALIDATOR = 16
DEFAULT_MAX_EVIDENCE = 1024


class Step(enum.IntEnum):
    """The step of the current round (paper L4), plus NEW_HEIGHT (before ``start_height``) and
    COMMIT (the height is decided; waiting for ``start_height(height + 1)``)."""

    NEW_HEIGHT = 0
    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3
    COMMIT = 4


class RejectReason:
    """The reasons counted in ``ConsensusCore.rejected`` (keys are these strings)."""

    STALE_HEIGHT = "stale_height"  # message for a height below the current one
    FUTURE_HEIGHT = "future_height"  # more than one height ahead
    FUTURE_BUFFER_FULL = "future_buffer_full"  # height + 1, but the sender's buffer is full
    HEIGHT_DECIDED = "height_decided"  # current height already decided
    BAD_ROUND = "bad_round"  # negative round
    ROUND_TOO_FAR = "round_too_far"  # round beyond current round + max_round_lookahead
    BAD_POL_ROUND = "bad_pol_round"  # proposal pol_round not in [-1, round - 1]
    BAD_BLOCK_HASH = "bad_block_hash"  # vote block hash not 32 bytes
    BAD_BLOCK = "bad_block"  # proposal block header does not match chain/height/actions
    UNKNOWN_VALIDATOR = "unknown_validator"
    WRONG_PROPOSER = "wrong_proposer"
    BAD_SIGNATURE = "bad_signature"
    DUPLICATE = "duplicate"  # identical copy of a message already counted
    EQUIVOCATION = "equivocation"  # conflicting message; kept as evidence, not counted


class ConsensusCore:
    """Tendermint consensus for one node, sans-IO (see the module docstring).

    ``signing_key`` None makes a non-validator observer that follows the protocol and decides but
    never signs; so does a key whose public key is not in the validator set. Every signature goes
    through a ``PrivValidator`` (its double-sign guard; a bare ``SigningKey`` gets one with its
    state in memory): a refused signature is not made, and the core goes on as if it had no key
    for that step. The paper's
    ``valid(v)`` arrives as an input: the core asks with a ``ValidateBlock`` effect, once per block
    of a height, and the driver answers ``BlockValidity`` (parent hash, signatures, execution root,
    ...). The core itself checks only the block's shape (``types.block_shape_problem``: this chain
    and height, ``action_root``/``action_count`` matching the actions, well-formed unique actions).

    Readable state: ``height``, ``round``, ``step``, ``locked_value``/``locked_round``,
    ``valid_value``/``valid_round``, ``decision``, ``rejected`` (Counter by ``RejectReason``).
    """

    def __init__(
        self,
        chain_id: str,
        validator_set: ValidatorSet,
        signing_key: SigningKey | PrivValidator | None,
        timeouts: TimeoutConfig,
        *,
        max_round_lookahead: int = DEFAULT_MAX_ROUND_LOOKAHEAD,
        future_buffer_per_validator: int = DEFAULT_FUTURE_BUFFER_PER_VALIDATOR,
        max_evidence: int = DEFAULT_MAX_EVIDENCE,
    ) -> None:
        if max_round_lookahead < 1 or future_buffer_per_validator < 0 or max_evidence < 1:
            raise ValueError("max_round_lookahead and max_evidence must be >= 1, future_buffer_per_validator >= 0")
        self.chain_id = chain_id
        self.validator_set = validator_set
        #: the set of height + 1, which judges the messages buffered for it (the driver passes it
        #: with each height; it differs from ``validator_set`` across an epoch boundary)
        self.next_validator_set = validator_set
        #: the set in force at any height, where the driver knows it (None: unknown); judges
        #: messages more than one height ahead. Unset, the current set judges them.
        self.validator_sets: Callable[[int], ValidatorSet | None] | None = None
        self.timeouts = timeouts
        if isinstance(signing_key, SigningKey):
            signing_key = PrivValidator(signing_key, MemorySignState())
        self._key: PrivValidator | None = signing_key
        self.id: Optional[str] = signing_key.public_key.hex() if signing_key is not None else None
        self._max_round_lookahead = max_round_lookahead
        self._future_cap = future_buffer_per_validator
        self._log = log.bind(validator=self.id[:12] if self.id else "observer")

        self.height = 0
        self.round = -1
        self.step = Step.NEW_HEIGHT
        self.locked_round = -1
        self._locked_hash: Optional[bytes] = None
        self.valid_value: Optional[Block] = None
        self.valid_round = -1
        self.decision: Optional[Block] = None
        self._decision_key: tuple[int, bytes] | None = None  # (round, block hash) of the decision

        self._keeper = self._new_vote_keeper(0)
        self._proposals: dict[int, Proposal] = {}
        self._timely: dict[int, bool] = {}  # PBTS: was the stored proposal of a round timely on arrival
        self._blocks: dict[bytes, Block] = {}
        self._validity: dict[bytes, bool] = {}
        self._prevote_timeout_rounds: set[int] = set()  # L34 "for the first time"
        self._polka_value_rounds: set[int] = set()  # L36 "for the first time"
        self._precommit_timeout_rounds: set[int] = set()  # L47 "for the first time"
        self._conflicting_proposals: dict[int, Proposal] = {}
        self._future: dict[str, list[tuple[Proposal | Vote, bool]]] = {}  # (message, timely)
        self._evidence: deque[Evidence] = deque(maxlen=max_evidence)
        self.rejected: Counter[str] = Counter()
        #: (reason, message) of every rejection during the last ``handle`` call, so the driver can
        #: tell the rejection of the message it passed in from those of buffered messages replayed
        #: by the same call.
        self.last_rejections: list[tuple[str, Proposal | Vote]] = []

    def known_block(self, block_hash: bytes) -> Block | None:
        """The block with ``block_hash`` if a proposal of the current height carried it, else None."""
        return self._blocks.get(block_hash)

    def stop_signing(self) -> None:
        """Never sign a proposal or vote again; the core goes on following the protocol and
        deciding as an observer. For a validator whose execution diverged from the quorum's
        (it stops voting rather than sign a wrong state)."""
        self._key = None

    # -- readable state -------------------------------------------------------------------------

    @property
    def is_validator(self) -> bool:
        """True iff this node has a key in the current validator set (it signs and votes)."""
        return self.id is not None and self.id in self.validator_set

    @property
    def locked_value(self) -> Optional[Block]:
        """The block this validator is locked on (paper lockedValue), or None. After a lock was
        restored from a replayed precommit the block may be unknown: see ``locked_hash``."""
        if self._locked_hash is None:
            return None
        return self._blocks.get(self._locked_hash)

    @property
    def locked_hash(self) -> Optional[bytes]:
        """id(lockedValue): the hash of the locked block, or None."""
        return self._locked_hash

    def proposer(self, round: int) -> str:
        """Return the proposer of (current height, ``round``)."""
        return proposer_for(self.validator_set, self.height, round)

    def height_messages(self) -> list[Proposal | Vote]:
        """Return the message log of the current height: stored proposals (and the first conflicting
        one of a round) and every vote held, by round. The driver re-gossips these so that a message
        any correct node has reaches every correct node (the paper's gossip assumption), also after
        drops, and so that both halves of an equivocation reach everyone."""
        messages: list[Proposal | Vote] = []
        for round in sorted(self._proposals):
            messages.append(self._proposals[round])
            if round in self._conflicting_proposals:
                messages.append(self._conflicting_proposals[round])
        messages.extend(self._keeper.all_votes())
        return messages

    def evidence(self) -> list[Evidence]:
        """Return the equivocation evidence found (all heights, the most recent ``max_evidence``)."""
        return list(self._evidence)

    def rejected_counts(self) -> dict[str, int]:
        """Return how many messages were dropped, by ``RejectReason``."""
        return dict(self.rejected)

    # -- entry points ---------------------------------------------------------------------------

    def start_height(self, height: int, validator_set: ValidatorSet | None = None,
                     next_validator_set: ValidatorSet | None = None) -> list[Effect]:
        """Begin ``height`` (paper L10 and L52-L54) with ``validator_set`` (default: keep the current
        one; the driver passes the set in force at each height, which changes at epoch boundaries)
        and ``next_validator_set``, the set of ``height + 1`` that judges messages buffered for it
        (default: ``validator_set``). Resets the round state, starts round 0 and replays buffered
        messages of this height.

        Raises ValueError when ``height`` is not above the current height.
        """
        if height <= self.height:
            raise ValueError(f"cannot start height {height}: already at height {self.height}; heights only grow")
        buffered = self._reset_height(height, validator_set, next_validator_set)
        effects: list[Effect] = []
        self._start_round(0, effects)  # L10 / L54
        self._replay_buffered(buffered, effects)
        self._run_rules(effects)
        return effects

    def resume(
        self, height: int, signed: list[Proposal | Vote], validator_set: ValidatorSet | None = None,
        next_validator_set: ValidatorSet | None = None,
    ) -> list[Effect]:
        """Begin ``height`` after a restart, from ``signed``: the proposals and votes this validator
        signed at ``height`` before it stopped (its WAL entries of the height, in any order).

        The messages enter the height's message log as received (they count for thresholds) and as
        already signed (the core re-sends them, never signs a different one for the same step).
        The lock and valid value they imply are restored: the highest round r with a non-nil own
        precommit for id(v) gives lockedRound = validRound = r and lockedValue = v (L38-L43; the
        block v itself is known once a proposal carrying it is seen). The core then goes to round
        R = the highest round among ``signed`` (0 if ``signed`` is empty, which makes this
        ``start_height``): if it had not voted in R yet, that is StartRound(R) (L11-L21; it re-sends
        its own proposal of R instead of proposing again); if it had, it is in the step after its
        last vote of R (prevote or precommit) and re-sends the votes (and proposal) it signed in R.
        Messages buffered for this height are then replayed as by ``start_height``. No message of a
        round below R is ever signed afterwards.

        Returns the effects to perform. Raises ValueError, changing nothing, when ``height`` is not
        above the current height, or when ``signed`` holds a message that is not this validator's
        well-formed, correctly signed message for ``height`` (another validator, another height or
        chain, bad signature, a proposal for a round it does not propose, a malformed block or
        hash), or two different messages for the same step: such a WAL is corrupt or belongs to
        another node, and a validator must not start from it. Also ValueError when ``signed`` is
        not empty but this core cannot sign (observer, or key outside the validator set).
        """
        if height <= self.height:
            raise ValueError(f"cannot resume height {height}: already at height {self.height}; heights only grow")
        vset = validator_set if validator_set is not None else self.validator_set
        signed = list(signed)
        if signed and (self._key is None or self.id is None or self.id not in vset):
            raise ValueError(
                f"cannot resume height {height} from {len(signed)} signed messages: this node has no "
                "validator key in the validator set of that height, so it cannot have signed them"
            )
        self._check_signed(height, vset, signed)

        buffered = self._reset_height(height, validator_set, next_validator_set)
        effects: list[Effect] = []
        for message in signed:
            if isinstance(message, Proposal):
                self._proposals[message.round] = message
                self._timely[message.round] = True  # our own proposal (PBTS: the proposer's clock is v.time)
                self._note_block(message.block, effects)
            else:
                self._keeper.add_vote(message)
                self._restore_lock(message)

        target = max((m.round for m in signed), default=0)
        prevote = precommit = None
        if signed and self.id is not None:
            prevote = self._keeper.vote_of(self.id, target, VoteType.PREVOTE)
            precommit = self._keeper.vote_of(self.id, target, VoteType.PRECOMMIT)
        if prevote is None and precommit is None:
            self._start_round(target, effects)  # L11-L21, re-sending our proposal of the round if any
        else:
            # StartRound(target) ran before the crash and we had already left its propose step
            # (L24/L30/L59, and L40/L45/L63 if we precommitted): resume in the step after our last
            # vote and re-send what we signed in this round.
            self.round = target
            self.step = Step.PRECOMMIT if precommit is not None else Step.PREVOTE
            own = self._proposals.get(target)
            if own is not None:
                effects.append(Broadcast(own))
            for vote in (prevote, precommit):
                if vote is not None:
                    effects.append(Broadcast(vote))
        self._log.info(
            "height_resumed",
            height=height,
            round=self.round,
            step=self.step.name,
            signed=len(signed),
            locked_round=self.locked_round,
        )
        self._replay_buffered(buffered, effects)
        self._run_rules(effects)
        return effects

    def _reset_height(
        self, height: int, validator_set: ValidatorSet | None, next_validator_set: ValidatorSet | None = None,
    ) -> dict[str, list[tuple[Proposal | Vote, bool]]]:
        """Set up the empty state of ``height`` (L53: reset lockedRound, lockedValue, validRound,
        validValue and the message log); return the messages buffered for it, by sender."""
        if validator_set is not None:
            self.validator_set = validator_set
        self.next_validator_set = next_validator_set if next_validator_set is not None else self.validator_set
        buffered = self._future if height == self.height + 1 else {}
        self._future = {}
        self.height = height
        self.round = -1
        self.step = Step.NEW_HEIGHT
        self.locked_round = -1
        self._locked_hash = None
        self.valid_value = None
        self.valid_round = -1
        self.decision = None
        self._decision_key = None
        self._keeper = self._new_vote_keeper(height)
        self._proposals = {}
        self._timely = {}
        self._blocks = {}
        self._validity = {}
        self._prevote_timeout_rounds = set()
        self._polka_value_rounds = set()
        self._precommit_timeout_rounds = set()
        self._conflicting_proposals = {}
        self._log.debug("height_started", height=height, validators=len(self.validator_set))
        return buffered

    def _replay_buffered(self, buffered: dict[str, list[tuple[Proposal | Vote, bool]]], effects: list[Effect]) -> None:
        for messages in buffered.values():
            for message, timely in messages:
                if isinstance(message, Proposal):
                    self._on_proposal(message, effects, timely)  # timeliness as judged on arrival
                else:
                    self._on_vote(message, effects)

    def _check_signed(self, height: int, vset: ValidatorSet, signed: list[Proposal | Vote]) -> None:
        """Check the WAL messages given to ``resume`` (see there); raise ValueError on the first bad one."""
        me = vset.get(self.id) if self.id is not None else None
        seen: dict[tuple, Proposal | Vote] = {}
        for i, message in enumerate(signed):
            where = f"signed message {i} ({type(message).__name__}, height {getattr(message, 'height', '?')}, " \
                    f"round {getattr(message, 'round', '?')})"
            if not isinstance(message, (Proposal, Vote)):
                raise ValueError(f"{where}: not a Proposal or Vote")
            if message.validator != self.id or me is None:
                raise ValueError(f"{where}: signed by {message.validator[:16]}, not by this validator; wrong WAL")
            if message.height != height:
                raise ValueError(f"{where}: not for height {height}; pass only the WAL entries of that height")
            if message.round < 0:
                raise ValueError(f"{where}: negative round; the WAL is corrupt")
            if isinstance(message, Proposal):
                if not -1 <= message.pol_round < message.round:
                    raise ValueError(f"{where}: pol_round {message.pol_round} not in [-1, round - 1]; the WAL is corrupt")
                if proposer_for(vset, height, message.round) != self.id:
                    raise ValueError(f"{where}: this validator is not the proposer of that round; wrong validator set?")
                if not self._block_fits(message.block, height):
                    raise ValueError(f"{where}: block header does not match chain, height or actions; the WAL is corrupt")
                domain = PROPOSAL_SIGN_DOMAIN
                step_key: tuple = ("proposal", message.round)
            else:
                if message.block_hash is not None and len(message.block_hash) != HASH_SIZE:
                    raise ValueError(f"{where}: block hash is not {HASH_SIZE} bytes; the WAL is corrupt")
                domain = VOTE_SIGN_DOMAIN
                step_key = ("vote", message.round, int(message.vote_type))
            if not verify(me.public_key, domain, message.sign_bytes(self.chain_id), message.signature):
                raise ValueError(f"{where}: bad signature for chain {self.chain_id!r}; the WAL is corrupt or another chain's")
            earlier = seen.get(step_key)
            if earlier is not None and earlier != message:
                raise ValueError(
                    f"{where}: this validator signed two different messages for the same step; refusing "
                    "to start (is the validator key used by another node?)"
                )
            seen[step_key] = message

    def handle(self, inp: Input) -> list[Effect]:
        """Apply one input and return the effects to perform, in order.

        Invalid or stale messages return [] and are counted in ``rejected``. Raises TypeError for an
        object that is not an ``Input`` and ValueError for a ``TimeoutFired`` of unknown kind or a
        ``ValueToPropose`` whose block does not fit (both are driver bugs, not network input).
        """
        effects: list[Effect] = []
        self.last_rejections = []
        if isinstance(inp, VoteReceived):
            self._on_vote(inp.vote, effects)
        elif isinstance(inp, ProposalReceived):
            self._on_proposal(inp.proposal, effects, inp.timely)
        elif isinstance(inp, TimeoutFired):
            self._on_timeout(inp, effects)
        elif isinstance(inp, ValueToPropose):
            self._on_value(inp, effects)
        elif isinstance(inp, BlockValidity):
            self._on_validity(inp)
        else:
            raise TypeError(f"not a consensus input: {type(inp).__name__}")
        self._run_rules(effects)
        return effects

    # -- inputs -----------------------------------------------------------------------------------

    def _reject(self, reason: str, message: Proposal | Vote) -> None:
        self.rejected[reason] += 1
        self.last_rejections.append((reason, message))
        self._log.debug(
            "message_rejected",
            reason=reason,
            kind=type(message).__name__,
            height=message.height,
            round=message.round,
            sender=message.validator[:12],
        )

    def _check_height(self, message: Proposal | Vote, timely: bool = True) -> bool:
        """True iff ``message`` is for the current, undecided height; buffers height + 1 (with the
        ``timely`` of a proposal, judged on its arrival)."""
        if message.height == self.height and self.step != Step.NEW_HEIGHT:
            if self.step == Step.COMMIT:
                self._reject(RejectReason.HEIGHT_DECIDED, message)
                return False
            return True
        if message.height <= self.height:
            self._reject(RejectReason.STALE_HEIGHT, message)
        elif message.height == self.height + 1:
            self._buffer_future(message, timely)
        else:
            # Not kept, but still judged: a forged or unknown-key message far ahead is the sender's
            # fault as much as one for this height, while an honest leading peer's is not.
            self._reject(self._forgery(message) or RejectReason.FUTURE_HEIGHT, message)
        return False

    def _forgery(self, message: Proposal | Vote) -> str | None:
        """For a message more than one height ahead: UNKNOWN_VALIDATOR or BAD_SIGNATURE when it is
        not signed by a validator of the set in force at its height, else None. When that set is
        not known yet (a later epoch's; ``validator_sets`` answers None) nobody is blamed."""
        vset = self.validator_sets(message.height) if self.validator_sets is not None else self.validator_set
        if vset is None:
            return None
        validator = vset.get(message.validator)
        if validator is None:
            return RejectReason.UNKNOWN_VALIDATOR
        if isinstance(message, Proposal):
            ok = verify(validator.public_key, PROPOSAL_SIGN_DOMAIN, message.sign_bytes(self.chain_id), message.signature)
        else:
            ok = self._vote_signature_ok(validator, message)
        return None if ok else RejectReason.BAD_SIGNATURE

    def _buffer_future(self, message: Proposal | Vote, timely: bool) -> None:
        if message.round < 0 or message.round > self._max_round_lookahead:
            self._reject(RejectReason.ROUND_TOO_FAR if message.round >= 0 else RejectReason.BAD_ROUND, message)
            return
        validator = self.next_validator_set.get(message.validator)
        if validator is None:
            self._reject(RejectReason.UNKNOWN_VALIDATOR, message)
            return
        queue = self._future.setdefault(message.validator, [])
        if any(queued == message for queued, _ in queue):
            self.rejected[RejectReason.DUPLICATE] += 1
            return
        if len(queue) >= self._future_cap:
            self._reject(RejectReason.FUTURE_BUFFER_FULL, message)
            return
        if isinstance(message, Proposal):
            signed_ok = verify(validator.public_key, PROPOSAL_SIGN_DOMAIN, message.sign_bytes(self.chain_id),
                               message.signature)
        else:
            signed_ok = self._vote_signature_ok(validator, message)
        if not signed_ok:
            self._reject(RejectReason.BAD_SIGNATURE, message)
            return
        queue.append((message, timely))

    def _check_round(self, message: Proposal | Vote) -> bool:
        if message.round < 0:
            self._reject(RejectReason.BAD_ROUND, message)
            return False
        if message.round > self.round + self._max_round_lookahead:
            self._reject(RejectReason.ROUND_TOO_FAR, message)
            return False
        return True

    def _on_vote(self, vote: Vote, effects: list[Effect]) -> None:
        # A precommit for our decision arriving after it (during the commit wait) is verified and
        # kept for ``decision_certificate``; nothing else happens at a decided height.
        late = (self._decision_key is not None and vote.height == self.height
                and vote.vote_type == VoteType.PRECOMMIT and (vote.round, vote.block_hash) == self._decision_key)
        if not late and (not self._check_height(vote) or not self._check_round(vote)):
            return
        if vote.block_hash is not None and len(vote.block_hash) != HASH_SIZE:
            self._reject(RejectReason.BAD_BLOCK_HASH, vote)
            return
        if self._keeper.vote_of(vote.validator, vote.round, vote.vote_type) == vote:
            # Byte-identical copy of a counted vote (gossip echo): no need to verify it again.
            self.rejected[RejectReason.DUPLICATE] += 1
            return
        validator = self.validator_set.get(vote.validator)
        if validator is None:
            self._reject(RejectReason.UNKNOWN_VALIDATOR, vote)
            return
        if not self._vote_signature_ok(validator, vote):
            self._reject(RejectReason.BAD_SIGNATURE, vote)
            return
        result = self._keeper.add_vote(vote)
        if result.status == AddVoteStatus.DUPLICATE:
            self.rejected[RejectReason.DUPLICATE] += 1
            return
        if result.status == AddVoteStatus.EQUIVOCATION:
            if not result.counted:
                self._reject(RejectReason.EQUIVOCATION, vote)
            if result.evidence is not None:
                self._record_evidence(result.evidence, effects)
            return
        if not late:
            self._restore_lock(vote)

    def _on_proposal(self, proposal: Proposal, effects: list[Effect], timely: bool) -> None:
        if not self._check_height(proposal, timely) or not self._check_round(proposal):
            return
        if not -1 <= proposal.pol_round < proposal.round:
            self._reject(RejectReason.BAD_POL_ROUND, proposal)
            return
        if proposal in (self._proposals.get(proposal.round), self._conflicting_proposals.get(proposal.round)):
            # Byte-identical copy of a stored proposal (gossip echo): no need to verify it again.
            self.rejected[RejectReason.DUPLICATE] += 1
            return
        validator = self.validator_set.get(proposal.validator)
        if validator is None:
            self._reject(RejectReason.UNKNOWN_VALIDATOR, proposal)
            return
        if proposal.validator != self.proposer(proposal.round):
            self._reject(RejectReason.WRONG_PROPOSER, proposal)
            return
        if not self._block_well_formed(proposal.block):
            self._reject(RejectReason.BAD_BLOCK, proposal)
            return
        sign_bytes = proposal.sign_bytes(self.chain_id)
        if not verify(validator.public_key, PROPOSAL_SIGN_DOMAIN, sign_bytes, proposal.signature):
            self._reject(RejectReason.BAD_SIGNATURE, proposal)
            return
        existing = self._proposals.get(proposal.round)
        if existing is not None:
            if existing.sign_bytes(self.chain_id) == sign_bytes:
                self.rejected[RejectReason.DUPLICATE] += 1
                return
            conflicting = self._conflicting_proposals.get(proposal.round)
            if conflicting is not None:
                if conflicting.sign_bytes(self.chain_id) == sign_bytes:
                    self.rejected[RejectReason.DUPLICATE] += 1
                else:
                    self._reject(RejectReason.EQUIVOCATION, proposal)
                return
            # The first conflicting proposal is kept as evidence, and its block is known from now
            # on (both proposals are in the paper's message set): a quorum of precommits for it
            # can then be decided here too.
            self._conflicting_proposals[proposal.round] = proposal
            self._note_block(proposal.block, effects)
            self._record_evidence(DuplicateProposalEvidence(first=existing, second=proposal), effects)
            return
        self._proposals[proposal.round] = proposal
        self._timely[proposal.round] = timely or proposal.validator == self.id  # our own: timely
        self._note_block(proposal.block, effects)

    def _on_timeout(self, timeout: TimeoutFired, effects: list[Effect]) -> None:
        if timeout.kind not in TIMEOUT_KINDS:
            raise ValueError(f"unknown timeout kind {timeout.kind!r}; expected one of {TIMEOUT_KINDS}")
        if timeout.height != self.height or self.step in (Step.NEW_HEIGHT, Step.COMMIT):
            return
        if timeout.round != self.round:
            return
        if timeout.kind == "propose":
            # L57-L60: OnTimeoutPropose(h, r): if h = h_p ∧ r = round_p ∧ step_p = propose.
            if self.step == Step.PROPOSE:
                self._log.debug("timeout_propose", height=self.height, round=self.round)
                self._vote(VoteType.PREVOTE, None, effects)
                self.step = Step.PREVOTE
        elif timeout.kind == "prevote":
            # L61-L64: OnTimeoutPrevote(h, r): if h = h_p ∧ r = round_p ∧ step_p = prevote.
            if self.step == Step.PREVOTE:
                self._log.debug("timeout_prevote", height=self.height, round=self.round)
                self._vote(VoteType.PRECOMMIT, None, effects)
                self.step = Step.PRECOMMIT
        else:
            # L65-L67: OnTimeoutPrecommit(h, r): if h = h_p ∧ r = round_p then StartRound(round_p + 1).
            self._log.debug("timeout_precommit", height=self.height, round=self.round)
            self._start_round(self.round + 1, effects)

    def _on_value(self, value: ValueToPropose, effects: list[Effect]) -> None:
        # L18-L19: proposal <- getValue(); broadcast <PROPOSAL, h_p, round_p, proposal, validRound_p>.
        # A late answer (another round, or we already proposed) is ignored.
        if (value.height, value.round) != (self.height, self.round) or self.step != Step.PROPOSE:
            return
        if not self.is_validator or self.proposer(self.round) != self.id or self.round in self._proposals:
            return
        if not self._block_well_formed(value.block):
            raise ValueError(
                f"ValueToPropose block does not fit height {self.height} of chain {self.chain_id!r} "
                "(header chain_id/height, or action_root/action_count not matching the actions)"
            )
        if self.valid_value is not None:
            # L15-L16: a valid value learnt since GetValue (a restored lock whose block just
            # arrived) takes precedence over a fresh block, with its proof-of-lock round.
            self._propose(self.valid_value, self.valid_round, effects)
        else:
            self._propose(value.block, -1, effects)

    # -- the transition function -----------------------------------------------------------------

    def _run_rules(self, effects: list[Effect]) -> None:
        """Fire upon-rules until none applies (each firing changes state, so this terminates)."""
        while self._transition(effects):
            pass

    def _transition(self, effects: list[Effect]) -> bool:
        """Fire the first enabled upon-rule of Algorithm 1 on the current state and message log.

        Returns True if a rule fired (state changed), False at a fixed point.
        """
        if self.step in (Step.NEW_HEIGHT, Step.COMMIT):
            return False
        keeper = self._keeper
        r = self.round

        # L49-L51: upon <PROPOSAL, h_p, r, v, *> from proposer(h_p, r) AND 2f+1 <PRECOMMIT, h_p, r, id(v)>
        #          while decision_p[h_p] = nil: if valid(v) then decision_p[h_p] = v.
        for decided_round, block_hash in keeper.precommit_quorums():
            block = self._blocks.get(block_hash)
            if block is not None and self._valid(block) is True:
                self._decide(decided_round, block, effects)
                return True

        # L55-L56: upon f+1 <*, h_p, round, *, *> with round > round_p: StartRound(round).
        skip_to = keeper.highest_skip_round()
        if skip_to > r:
            self._log.info("round_skipped", height=self.height, round=r, to_round=skip_to)
            self._start_round(skip_to, effects)
            return True

        proposal = self._proposals.get(r)
        if self.step == Step.PROPOSE and proposal is not None and self._valid(proposal.block) is not None:
            v = proposal.block
            vid = v.hash()
            vr = proposal.pol_round
            # L22-L27: upon <PROPOSAL, h_p, round_p, v, -1> from proposer(h_p, round_p) while step_p = propose:
            #          prevote id(v) if valid(v) ∧ (lockedRound_p = -1 ∨ lockedValue_p = v), else nil.
            #          (Both L22 and L28 wait, above, until the driver has answered valid(v).)
            #          PBTS [PBTS-ALG-UPON-PROP.1] (CometBFT pbts-algorithm.md, "Updated upon clause of
            #          line 22"): prevote id(v) only if also timely(v.time), judged on reception.
            if vr == -1:
                timely = self._proposal_timely(r)
                ok = self._valid(v) is True and timely and self._lock_allows_prevote(vid, vr)
                if not timely:
                    self._log.info("prevote_nil_untimely", height=self.height, round=r, block=vid.hex()[:16],
                                   block_time_ms=v.header.timestamp_ms)
                self._vote(VoteType.PREVOTE, vid if ok else None, effects)
                self.step = Step.PREVOTE
                return True
            # L28-L33: upon <PROPOSAL, h_p, round_p, v, vr> from proposer(h_p, round_p)
            #          AND 2f+1 <PREVOTE, h_p, vr, id(v)> while step_p = propose ∧ (vr >= 0 ∧ vr < round_p):
            #          prevote id(v) if valid(v) ∧ (lockedRound_p <= vr ∨ lockedValue_p = v), else nil.
            #          PBTS leaves this rule unchanged ("Unchanged upon clause of line 28"): v.time was
            #          found timely by the correct validators of the polka of round vr, so a re-proposal
            #          is not checked for timeliness again.
            if 0 <= vr < r and keeper.polka_value(vr) == vid:
                ok = self._valid(v) is True and self._lock_allows_prevote(vid, vr)
                self._vote(VoteType.PREVOTE, vid if ok else None, effects)
                self.step = Step.PREVOTE
                return True

        # L34-L35: upon 2f+1 <PREVOTE, h_p, round_p, *> while step_p = prevote for the first time:
        #          schedule OnTimeoutPrevote(h_p, round_p) after timeoutPrevote(round_p).
        if self.step == Step.PREVOTE and r not in self._prevote_timeout_rounds and keeper.has_polka_any(r):
            self._prevote_timeout_rounds.add(r)
            self._schedule("prevote", effects)
            return True

        # L36-L43: upon <PROPOSAL, h_p, round_p, v, *> from proposer(h_p, round_p)
        #          AND 2f+1 <PREVOTE, h_p, round_p, id(v)> while valid(v) ∧ step_p >= prevote for the first time:
        #          if step_p = prevote: lock on v, precommit id(v), step_p <- precommit; validValue_p <- v.
        if self.step >= Step.PREVOTE and r not in self._polka_value_rounds:
            polka = keeper.polka_value(r)
            block = self._blocks.get(polka) if polka is not None else None
            if polka is not None and block is not None and self._valid(block) is True:
                self._polka_value_rounds.add(r)
                if self.step == Step.PREVOTE:
                    self._locked_hash = polka  # L38
                    self.locked_round = r  # L39
                    self._log.debug("locked", height=self.height, round=r, block=polka.hex()[:16])
                    self._vote(VoteType.PRECOMMIT, polka, effects)  # L40
                    self.step = Step.PRECOMMIT  # L41
                self.valid_value = block  # L42
                self.valid_round = r  # L43
                return True

        # L44-L46: upon 2f+1 <PREVOTE, h_p, round_p, nil> while step_p = prevote: precommit nil.
        if self.step == Step.PREVOTE and keeper.has_polka_nil(r):
            self._vote(VoteType.PRECOMMIT, None, effects)
            self.step = Step.PRECOMMIT
            return True

        # L47-L48: upon 2f+1 <PRECOMMIT, h_p, round_p, *> for the first time:
        #          schedule OnTimeoutPrecommit(h_p, round_p) after timeoutPrecommit(round_p).
        if r not in self._precommit_timeout_rounds and keeper.has_precommit_any(r):
            self._precommit_timeout_rounds.add(r)
            self._schedule("precommit", effects)
            return True

        return False

    # -- actions of the rules ----------------------------------------------------------------------

    def _start_round(self, round: int, effects: list[Effect]) -> None:
        """L11-L21: StartRound(round)."""
        self.round = round  # L12
        self.step = Step.PROPOSE  # L13
        self._log.debug("round_started", height=self.height, round=round)
        self._schedule("propose", effects)  # L21 (for every validator, see the module docstring)
        if self.is_validator and self.proposer(round) == self.id:  # L14
            own = self._proposals.get(round)
            if own is not None:  # already proposed in this round before a restart: re-send it
                effects.append(Broadcast(own))
            elif self.valid_value is not None:  # L15-L16
                self._propose(self.valid_value, self.valid_round, effects)  # L19
            else:  # L17-L18
                effects.append(GetValue(self.height, round))

    def _propose(self, block: Block, pol_round: int, effects: list[Effect]) -> None:
        """L19: broadcast <PROPOSAL, h_p, round_p, block, pol_round>; never twice per round."""
        if self.round in self._proposals or self._key is None:
            return
        unsigned = Proposal(self.height, self.round, pol_round, block, self.id or "", b"")
        signature = self._sign(SignStep.PROPOSAL, PROPOSAL_SIGN_DOMAIN, unsigned.sign_bytes(self.chain_id))
        if signature is None:
            return
        proposal = msgspec.structs.replace(unsigned, signature=signature)
        effects.append(PersistWAL(proposal))
        effects.append(Broadcast(proposal))
        self._proposals[self.round] = proposal
        self._timely[self.round] = True  # PBTS: our own proposal
        self._note_block(block, effects)
        self._log.debug("proposed", height=self.height, round=self.round, pol_round=pol_round,
                       block=block.hash().hex()[:16], actions=len(block.actions))

    def _vote(self, vote_type: VoteType, block_hash: Optional[bytes], effects: list[Effect]) -> None:
        """Sign and broadcast our vote of ``vote_type`` for the current round; observers do nothing.
        If we already signed one for this step (e.g. before a restart) it is re-sent, never a second."""
        if not self.is_validator or self._key is None or self.id is None:
            return
        existing = self._keeper.vote_of(self.id, self.round, vote_type)
        if existing is not None:
            if existing.block_hash != block_hash:
                self._log.warning("double_sign_refused", height=self.height, round=self.round,
                                  vote_type=vote_type.name)
            effects.append(Broadcast(existing))
            return
        unsigned = Vote(vote_type, self.height, self.round, block_hash, self.id, b"")
        step = SignStep.PREVOTE if vote_type == VoteType.PREVOTE else SignStep.PRECOMMIT
        signature = self._sign(step, VOTE_SIGN_DOMAIN, unsigned.sign_bytes(self.chain_id))
        if signature is None:
            return
        vote = msgspec.structs.replace(unsigned, signature=signature)
        effects.append(PersistWAL(vote))
        effects.append(Broadcast(vote))
        self._keeper.add_vote(vote)

    def _sign(self, step: SignStep, domain: bytes, sign_bytes: bytes) -> bytes | None:
        """The signature of the current height and round's ``step``, or None when the guard
        refuses it (``PrivValidator.sign``; logged, at debug while signing is paused)."""
        assert self._key is not None
        try:
            return self._key.sign(self.height, self.round, step, domain, sign_bytes)
        except DoubleSignRefused as exc:
            (self._log.debug if exc.code == DoubleSignCode.PAUSED else self._log.warning)(
                "double_sign_refused", height=self.height, round=self.round, step=step.name.lower(),
                code=exc.code.value, reason=str(exc))
            return None

    def _schedule(self, kind: TimeoutKind, effects: list[Effect]) -> None:
        effects.append(ScheduleTimeout(kind, self.height, self.round, self.timeouts.duration_ms(kind, self.round)))

    def decision_certificate(self) -> CommitCertificate | None:
        """The certificate of this height's decision with every precommit for it received so far:
        the quorum that decided plus those verified after the decision, during the commit wait
        (CometBFT's LastCommit gathers precommits for ``timeout_commit`` for the same reason: the
        next block's last commit records every validator that signed in time). None before a
        decision."""
        if self._decision_key is None:
            return None
        round, block_hash = self._decision_key
        return build_commit_certificate(self.height, round, block_hash,
                                        self._keeper.votes_for(round, VoteType.PRECOMMIT, block_hash))

    def _decide(self, round: int, block: Block, effects: list[Effect]) -> None:
        """L51: decision_p[h_p] = v, with the certificate of the precommits that formed the quorum."""
        block_hash = block.hash()
        precommits = self._keeper.votes_for(round, VoteType.PRECOMMIT, block_hash)
        certificate = build_commit_certificate(self.height, round, block_hash, precommits)
        self.decision = block
        self._decision_key = (round, block_hash)
        self.step = Step.COMMIT
        self._log.debug("decided", height=self.height, round=round, block=block_hash.hex()[:16],
                       signatures=len(certificate.signatures), actions=len(block.actions))
        effects.append(Decide(block, certificate))

    def _record_evidence(self, evidence: Evidence, effects: list[Effect]) -> None:
        self._evidence.append(evidence)
        self._log.warning("equivocation_detected", kind=type(evidence).__name__, height=evidence.height,
                          round=evidence.round, offender=evidence.validator[:12])
        effects.append(EvidenceFound(evidence))

    # -- values -------------------------------------------------------------------------------------

    def _block_well_formed(self, block: Block) -> bool:
        """The block has the shape of a block of this chain at the current height."""
        return self._block_fits(block, self.height)

    def _block_fits(self, block: Block, height: int) -> bool:
        """The block has the shape of a block of this chain at ``height`` (``block_shape_problem``)."""
        return block_shape_problem(block, self.chain_id, height) is None

    def _note_block(self, block: Block, effects: list[Effect]) -> None:
        """Remember ``block`` (from a proposal of this height); the first time, ask the driver for
        valid(v) (``ValidateBlock``). If it is the value of a lock restored from our own precommit
        (``_restore_lock``) that was not known yet, it is also our valid value from the lock's
        round on (L42-L43 always accompany L38-L39)."""
        block_hash = block.hash()
        if block_hash not in self._blocks:
            self._blocks[block_hash] = block
            effects.append(ValidateBlock(block))
        self._adopt_locked_value(block_hash)

    def _adopt_locked_value(self, block_hash: bytes) -> None:
        if block_hash == self._locked_hash and self.valid_round < self.locked_round:
            self.valid_value = self._blocks[block_hash]
            self.valid_round = self.locked_round

    def _restore_lock(self, vote: Vote) -> None:
        """Our own non-nil precommit for id(v) in round r, from before a restart: precommitting it
        was paired with lockedValue, validValue <- v and lockedRound, validRound <- r (L38-L43), so
        restore the lock (if r is above the current one) and, once v is known, the valid value."""
        if vote.validator != self.id or vote.vote_type != VoteType.PRECOMMIT or vote.block_hash is None:
            return
        if vote.round > self.locked_round:
            self.locked_round = vote.round
            self._locked_hash = vote.block_hash
            if vote.block_hash in self._blocks:
                self._adopt_locked_value(vote.block_hash)

    def _on_validity(self, answer: BlockValidity) -> None:
        """Record the driver's valid(v) for a block of this height (the first answer stands)."""
        block = self._blocks.get(answer.block_hash)
        if block is None or answer.block_hash in self._validity:
            return
        self._validity[answer.block_hash] = answer.valid
        if not answer.valid:
            self._log.warning("invalid_block", height=self.height, block=answer.block_hash.hex()[:16],
                              proposer=block.header.proposer[:12])

    # -- checks a test-only broken variant may override (tests/broken_cores.py) ----------------------

    def _lock_allows_prevote(self, value_hash: bytes, pol_round: int) -> bool:
        """The locking condition of L23 (pol_round = -1: lockedRound = -1 ∨ lockedValue = v) and L29
        (pol_round = vr >= 0: lockedRound <= vr ∨ lockedValue = v); with lockedRound = -1 when not
        locked, both read ``locked_round <= pol_round or locked value = v``."""
        return self.locked_round <= pol_round or self._locked_hash == value_hash

    def _proposal_timely(self, round: int) -> bool:
        """PBTS timely(v.time) of the stored proposal of ``round``, as the driver judged it when the
        proposal arrived (``ProposalReceived.timely``; True for our own)."""
        return self._timely.get(round, False)

    def _vote_signature_ok(self, validator: Validator, vote: Vote) -> bool:
        """True iff ``vote`` carries ``validator``'s Ed25519 signature over its sign bytes on this
        chain (every consensus message is checked before it counts)."""
        return verify(validator.public_key, VOTE_SIGN_DOMAIN, vote.sign_bytes(self.chain_id), vote.signature)

    def _new_vote_keeper(self, height: int) -> VoteKeeper:
        """The vote keeper of ``height`` over the current validator set (2f+1 = more than 2/3 of the stake)."""
        return VoteKeeper(height, self.validator_set)

    def _valid(self, block: Block) -> bool | None:
        """The paper's valid(v) as answered by the driver (``BlockValidity``); None until it answers."""
        return self._validity.get(block.hash())
