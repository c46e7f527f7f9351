"""The deterministic world: actions → events → state, block by block (docs/architecture.md,
"Execution and state roots").

A block is ``begin_block(height, timestamp_ms)``, ``collect_fees`` for its actions (the node always
calls it; without it each action pays its fee when it runs), any number of ``apply_action``, at most
one effective ``step_with_modules`` and ``end_block()``, which returns the block's state root and
events root. The same genesis and the same blocks give the same events and roots on every machine:
the world reads no clock, no randomness and no environment.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import msgspec
import structlog

from . import events as ev
from .actions import (
    AGENT_ID_RE,
    AGENT_ID_RULE,
    AttestBuild,
    Bond,
    CompileModuleArtifactFromSource,
    CreateAgent,
    CreateValidator,
    DeployModuleArtifact,
    HarvestRadiation,
    InstallModuleFromArtifact,
    MoveAgent,
    ProposeManifestPatch,
    ProposeManifestUpdate,
    ProposeRollback,
    SetModuleInstanceActive,
    SignedAction,
    TransferResource,
    Unbond,
    Unjail,
    UpgradeModuleFromArtifact,
    VoteProposal,
    action_kind,
    encode_signed_action,
    payload_hash,
)
from .admission import BlockPlan, Refusal, RefusalCode, admission_refusal, fee_refusal, payload_size, signer_key
from .audit import EventFilter, EventPage, audit_events, save_audit_log
from .crypto import PUBLIC_KEY_SIZE
from .events import Event
from .fees import action_fee
from .governance import rules as governance
from .governance.manifest import Manifest
from .governance.records import ManifestVersionRecord, ProposalRecord
from .governance.validate import check_section, check_world_params
from .merkle import merkle_root
from .modules import builds, lifecycle
from .modules.lifecycle import WASM_HASH_RE
from .modules.router import ModuleRunner
from .modules.sandbox import Sandbox, default_sandbox
from .params import GenesisAgent, GovernanceParams, StakingParams, WorldParams
from .persistence import SaveCache, load_state, save_state
from .rules import (
    MAX_BALANCE,
    ActionContext,
    EventSpec,
    Rejected,
    apply_create_agent,
    apply_harvest,
    apply_move,
    apply_transfer,
    check_position,
)
from .snapshots import create_snapshot, restore_snapshot
from .staking import rules as staking
from .staking.records import ValidatorRecord, ValidatorSetRecord
from .staking.sets import active_powers, set_record
from .state import AgentRecord, BuildRecord, InstanceRecord, WorldMeta, WorldState

log = structlog.get_logger(__name__)

MAX_CHAIN_ID_CHARS = 64


class BlockOutcome(msgspec.Struct, frozen=True):
    """What a block did: its ``height``, the 32-byte ``state_root`` after it, the
    ``events_root`` (RFC 6962 Merkle root over the canonical encodings of its events, in order)
    and the ``events`` themselves."""

    height: int
    state_root: bytes
    events_root: bytes
    events: list[Event]


def compute_action_id(signed: SignedAction) -> bytes:
    """Return the action id of ``signed``: sha256 of its canonical payload (as the node computes it)."""
    return payload_hash(encode_signed_action(signed))


def _genesis_agent(state: WorldState, agent: GenesisAgent) -> AgentRecord:
    """The record of genesis agent ``agent``; ValueError naming the agent and the bad field."""
    name = f"genesis agent {str(agent.agent_id)[:64]!r}"
    if not isinstance(agent.agent_id, str) or not AGENT_ID_RE.fullmatch(agent.agent_id):
        raise ValueError(f"{name}: invalid agent id ({AGENT_ID_RULE})")
    if agent.agent_id in state.agents:
        raise ValueError(f"{name}: listed twice")
    try:
        key = bytes.fromhex(agent.public_key)
    except (TypeError, ValueError):
        key = b""
    if len(key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"{name}: public_key must be {2 * PUBLIC_KEY_SIZE} hex characters (an Ed25519 key)")
    for field in ("electricity", "data"):
        value = getattr(agent, field)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_BALANCE:
            raise ValueError(f"{name}: {field} must be an integer in 0..{MAX_BALANCE}, got {value!r}")
    try:
        x, y, z = agent.position
        check_position(state, (x, y, z))
    except Rejected as exc:
        raise ValueError(f"{name}: {exc.reason}") from None
    except (TypeError, ValueError):
        raise ValueError(f"{name}: position must be three integers [x, y, z]") from None
    return AgentRecord(agent_id=agent.agent_id, public_key=key, position=(x, y, z), electricity=agent.electricity,
                       data=agent.data, last_nonce=0, registered_at=0)


class World:
    """The world runtime. Create with ``World.from_genesis`` or ``World.load_from_dir``.

    ``height`` is the last block completed with ``end_block`` (0 at genesis). Not thread-safe:
    drive one World from one thread (or one trio task) at a time.
    """

    def __init__(self, state: WorldState, height: int, *, sandbox: Sandbox | None = None) -> None:
        self._state = state
        self.height = height
        self._sandbox = sandbox or default_sandbox()
        self._runner = ModuleRunner(state, self._sandbox)
        self._in_block = False
        self._ticked = False
        self._block_events: list[Event] = []
        self._prepaid: dict[bytes, int] | None = None  # action id -> fee, once collect_fees ran for the block
        self._save_cache: SaveCache | None = None  # journal segments already on disk (``persistence``)
        self._handlers: dict[type, Callable[[ActionContext, Any], list[EventSpec]]] = {
            CreateAgent: lambda c, a: apply_create_agent(self._state, c, a),
            MoveAgent: lambda c, a: apply_move(self._state, c, a),
            HarvestRadiation: lambda c, a: apply_harvest(self._state, c, a),
            TransferResource: lambda c, a: apply_transfer(self._state, c, a),
            CompileModuleArtifactFromSource: lambda c, a: lifecycle.apply_compile(self._state, self._sandbox, c, a),
            DeployModuleArtifact: lambda c, a: lifecycle.apply_deploy(self._state, self._sandbox, c, a),
            InstallModuleFromArtifact: lambda c, a: lifecycle.apply_install(self._state, c, a),
            UpgradeModuleFromArtifact: lambda c, a: lifecycle.apply_upgrade(self._state, c, a),
            SetModuleInstanceActive: lambda c, a: lifecycle.apply_set_active(self._state, c, a),
            AttestBuild: lambda c, a: builds.apply_attestation(
                self._state, c, a, lambda b, w: lifecycle.publish_build(self._state, self._sandbox, b, w)),
            CreateValidator: lambda c, a: staking.apply_create_validator(self._state, c, a),
            Bond: lambda c, a: staking.apply_bond(self._state, c, a),
            Unbond: lambda c, a: staking.apply_unbond(self._state, c, a),
            Unjail: lambda c, a: staking.apply_unjail(self._state, c, a),
            ProposeManifestUpdate: lambda c, a: governance.apply_propose_update(self._state, self._sandbox, c, a),
            ProposeManifestPatch: lambda c, a: governance.apply_propose_patch(self._state, self._sandbox, c, a),
            ProposeRollback: lambda c, a: governance.apply_propose_rollback(self._state, self._sandbox, c, a),
            VoteProposal: lambda c, a: governance.apply_vote(self._state, c, a),
        }

    @classmethod
    def from_genesis(cls, chain_id: str, params: WorldParams, *, agents: Iterable[GenesisAgent] = (),
                     validators: Mapping[str, int] | None = None, sandbox: Sandbox | None = None,
                     validator_operators: Mapping[str, str] | None = None,
                     validator_names: Mapping[str, str] | None = None, epoch_length: int = 1000,
                     staking_params: StakingParams | None = None,
                     governance_params: GovernanceParams | None = None) -> "World":
        """Return the world at height 0 for ``chain_id`` with rules ``params``, the genesis
        ``agents`` (the only agents nobody paid to create; their first nonce is 1) and the genesis
        ``validators`` (validator id, the hex consensus public key, to stake): the set of epochs
        0 and 1. ``validator_operators`` names the agent that holds each genesis bond (and may
        unbond it, vote and unjail; none: the bond is permanent); ``epoch_length`` is the chain's
        epoch in heights; ``staking_params`` and ``governance_params`` complete the genesis
        manifest (version 1).

        ``params`` may be any struct with WorldParams' fields. Raises ValueError for an empty or
        over-long chain id, a negative/huge parameter, a genesis agent with an invalid or
        repeated id, a public key that is not 64 hex characters, a negative balance or a position
        outside the grid (the message names the agent and the field), a validator whose id is
        not 64 lowercase hex characters or whose stake is not positive, or an operator that is
        not a genesis agent.
        """
        if not isinstance(chain_id, str) or not 0 < len(chain_id) <= MAX_CHAIN_ID_CHARS:
            raise ValueError(f"chain_id must be a non-empty string of at most {MAX_CHAIN_ID_CHARS} characters")
        if not isinstance(epoch_length, int) or epoch_length < 1:
            raise ValueError(f"epoch_length must be a positive integer, got {epoch_length!r}")
        stakes = dict(sorted((validators or {}).items()))
        for vid, stake in stakes.items():
            if not WASM_HASH_RE.fullmatch(vid) or not isinstance(stake, int) or stake <= 0:
                raise ValueError(f"validator {vid[:64]!r}: the id must be a 64-hex public key and the stake positive")
        agents = list(agents)
        clash = next((a.agent_id for a in agents if a.agent_id in stakes), None)
        if clash is not None:
            raise ValueError(f"genesis agent {clash[:16]}...: its id is a validator's id; choose another agent id")
        manifest = Manifest(version=1, params=check_world_params(params),
                            staking=check_section(staking_params or StakingParams(), "staking"),
                            governance=check_section(governance_params or GovernanceParams(), "governance"))
        meta = WorldMeta(chain_id=chain_id, height=0, timestamp_ms=0, epoch_length=epoch_length)
        state = WorldState(meta, manifest)
        for agent in agents:
            state.put_agent(_genesis_agent(state, agent))
        operators = dict(validator_operators or {})
        names = dict(validator_names or {})
        for vid, stake in stakes.items():
            operator = operators.get(vid, "")
            if operator and operator not in state.agents:
                raise ValueError(f"validator {vid[:16]}...: operator {operator[:64]!r} is not a genesis agent")
            state.put_record("validator", vid, ValidatorRecord(
                validator_id=vid, operator=operator, name=str(names.get(vid, ""))[:64], bonded=stake,
                bonds={operator or vid: stake}))
        for epoch in (0, 1):
            state.put_record("valset", str(epoch), ValidatorSetRecord(epoch=epoch, validators=list(stakes.items())))
        state.put_record("manifest_version", "1", ManifestVersionRecord(version=1, manifest=manifest))
        return cls(state, 0, sandbox=sandbox)

    # -- identity ------------------------------------------------------------------------------
    @property
    def chain_id(self) -> str:
        """The chain id actions must be signed for."""
        return self._state.meta.chain_id

    @property
    def params(self) -> WorldParams:
        """The world rules in force (the manifest's ``params``)."""
        return self._state.manifest.params

    @property
    def manifest(self) -> Manifest:
        """The manifest in force (``governance.manifest``)."""
        return self._state.manifest

    @property
    def epoch_length(self) -> int:
        """The chain's epoch in heights."""
        return self._state.meta.epoch_length

    @property
    def in_block(self) -> bool:
        """True between ``begin_block`` and ``end_block``."""
        return self._in_block

    # -- blocks --------------------------------------------------------------------------------
    def begin_block(self, height: int, timestamp_ms: int, *, last_commit_signers: Sequence[str] | None = None,
                    evidence: Sequence[tuple[str, int]] = ()) -> None:
        """Open block ``height`` (must be ``self.height + 1``) with the block's timestamp (Unix ms).

        ``evidence`` lists ``(validator_id, offence_height)`` of the double signs the block
        carries, already verified by the node; ``last_commit_signers`` the validators whose
        precommits make the certificate of ``height - 1`` the block carries (None: none). Both
        feed ``staking.rules.begin_block`` (slashing, jailing, downtime counts).

        Raises ValueError for a wrong height or a negative timestamp, RuntimeError if a block is
        already open.
        """
        if self._in_block:
            raise RuntimeError(f"block {self._state.meta.height} is still open; call end_block first")
        if height != self.height + 1:
            raise ValueError(f"next block must be height {self.height + 1}, got {height}")
        if not isinstance(timestamp_ms, int) or timestamp_ms < 0:
            raise ValueError(f"timestamp_ms must be a non-negative integer, got {timestamp_ms!r}")
        self._state.set_meta(msgspec.structs.replace(self._state.meta, height=height, timestamp_ms=timestamp_ms))
        self._runner.new_block()
        self._in_block = True
        self._ticked = False
        self._block_events = []
        self._prepaid = None
        self._emit(staking.begin_block(self._state, height, last_commit_signers, evidence))

    def action_fee(self, signed: SignedAction, payload_bytes: int | None = None) -> int:
        """Return the fee in electricity of ``signed`` (``fees.action_fee``); ``payload_bytes`` is
        the length of its canonical payload, computed when omitted."""
        if payload_bytes is None:
            payload_bytes = payload_size(signed)
        return action_fee(self._state.manifest.params, signed.body.action, payload_bytes)

    def check_action(self, signed: SignedAction, *, payload_bytes: int | None = None, owed: int = 0,
                     check_signature: bool = True) -> Refusal | None:
        """Return None if ``signed`` would now pass the admission rules (chain id, agent,
        signature unless ``check_signature`` is False, nonce, and a fee its signer can pay on top
        of ``owed``: the fees of its actions already pending; see ``admission``), else the
        ``Refusal`` (its ``code`` names the rule that failed, its ``message`` says what to do).
        Reads state only; does not check whether the action itself would succeed (balances,
        positions)."""
        refusal = admission_refusal(self._state, signed, check_signature=check_signature)
        if refusal is not None or isinstance(signed.body.action, AttestBuild):
            return refusal
        return fee_refusal(self._state, signed, self.action_fee(signed, payload_bytes), owed)

    def block_plan(self) -> BlockPlan:
        """Return a ``BlockPlan`` over the current state: which actions a next block may carry
        (proposers select with it, validators check with it)."""
        return BlockPlan(self._state)

    def collect_fees(self, actions: Sequence[tuple[SignedAction, bytes, int]]) -> None:
        """Take the fees of the open block's actions ``(signed, action_id, payload_bytes)``, in
        block order, before any of them runs: each action the ``BlockPlan`` admits (against the
        balances before the block) pays its fee now; ``apply_action`` then rejects, unpaid, every
        action of the block that did not (a block valid(v) accepts has none), and refunds the fee
        of one whose signature it then finds bad (the node verifies signatures before; this only
        guards direct callers). Raises RuntimeError when no block is open or fees were already
        collected for it."""
        self._require_block()
        if self._prepaid is not None:
            raise RuntimeError("fees were already collected for this block")
        plan = BlockPlan(self._state)  # judged against the balances before the block: plan all, then take
        admitted = [(s, a, n) for s, a, n in actions
                    if plan.admit(s, n) is None and not isinstance(s.body.action, AttestBuild)]  # attestations are free
        self._prepaid = {
            action_id: self._take_fee(signed.body.agent_id, self.action_fee(signed, payload_bytes))
            for signed, action_id, payload_bytes in admitted
        }

    def _take_fee(self, agent_id: str, fee: int) -> int:
        agent = self._state.agents[agent_id]
        self._state.put_agent(msgspec.structs.replace(agent, electricity=agent.electricity - fee))
        return fee

    def _pay(self, signed: SignedAction, action_id: bytes, payload_bytes: int | None) -> int | Refusal:
        """The fee ``signed`` paid (collected at the start of the block, or taken now), or the
        refusal when it did not and cannot pay."""
        if self._prepaid is not None:
            fee = self._prepaid.pop(action_id, None)
            if fee is not None:
                return fee
            return Refusal(RefusalCode.INSUFFICIENT_FEE,
                           "the action's fee was not covered at the start of the block; nothing was charged")
        fee = self.action_fee(signed, payload_bytes)
        refusal = fee_refusal(self._state, signed, fee, 0)
        return refusal if refusal is not None else self._take_fee(signed.body.agent_id, fee)

    def apply_action(self, signed: SignedAction, action_id: bytes, *, signature_checked: bool = False,
                     payload_bytes: int | None = None) -> list[Event]:
        """Apply one signed action inside the open block and return the events it produced.

        Checks admission (signature skipped when ``signature_checked``), takes the fee (or finds
        it collected by ``collect_fees``; ``payload_bytes`` is the payload length, computed when
        omitted), consumes the nonce, then applies the action. Any rejection gives a single
        ``domain.action_rejected`` event {action_id, agent_id, action_kind, reason, fee}; the
        first event of an applied action also carries ``fee``. A refused admission or an unpaid
        fee charges nothing and leaves the nonce unused; once the fee is paid, the nonce stays used
        and the fee is kept even if the world rules then reject the action. A paid action is first
        offered to ``pre_action`` subscribers; every event produced is then routed to
        ``post_event`` subscribers, and the action (with ``outcome``) to ``post_action``
        subscribers; module events follow in that order (``modules.router``). Never raises for bad
        input; raises RuntimeError when no block is open.
        """
        self._require_block()
        body = signed.body
        kind = action_kind(body.action)
        refusal = admission_refusal(self._state, signed, check_signature=not signature_checked)
        fee = 0
        attestation = isinstance(body.action, AttestBuild)
        if refusal is not None and self._prepaid is not None and action_id in self._prepaid:
            refund = self._prepaid.pop(action_id)  # collected for an action that fails admission now
            agent = self._state.agents[body.agent_id]
            self._state.put_agent(msgspec.structs.replace(agent, electricity=agent.electricity + refund))
        if refusal is None and not attestation:
            paid = self._pay(signed, action_id, payload_bytes)
            if isinstance(paid, Refusal):
                refusal = paid
            else:
                fee = paid
        reason = refusal.message if refusal is not None else None
        out: list[Event] = []
        action_map: dict[str, Any] | None = None
        trace = f"{self._state.meta.height}/{action_id.hex()[:16]}"
        if reason is None:
            ctx = ActionContext(action_id=action_id, agent_id=body.agent_id, nonce=body.nonce,
                                height=self._state.meta.height)
            if not attestation:
                agent = self._state.agents[body.agent_id]
                self._state.put_agent(msgspec.structs.replace(agent, last_nonce=body.nonce))
            if self._runner.has_action_routes():
                action_map = msgspec.to_builtins(body.action, builtin_types=(bytes,))
                action_map.update(agent_id=body.agent_id, nonce=body.nonce)
                out.extend(self._emit(self._runner.route_action("pre_action", kind, action_map, trace)))
            try:
                specs = self._handlers[type(body.action)](ctx, body.action)
            except Rejected as exc:
                reason = exc.reason
            except Exception as exc:  # a bug, never the client's fault: keep the node alive
                log.exception("action_handler_failed", action_kind=kind, agent_id=body.agent_id, height=ctx.height)
                reason = f"internal error while applying {kind}: {type(exc).__name__}"
        if reason is not None:
            log.debug("action_rejected", action_kind=kind, agent_id=body.agent_id, reason=reason)
            specs = [(ev.ACTION_REJECTED, {
                "action_id": action_id, "agent_id": body.agent_id, "action_kind": kind, "reason": reason,
            })]
        specs[0][1]["fee"] = fee
        produced = self._emit(specs)
        out.extend(produced)
        for event in produced:
            out.extend(self._emit(self._runner.route_event(event)))
        if action_map is not None:
            action_map["outcome"] = "rejected" if reason is not None else "applied"
            out.extend(self._emit(self._runner.route_action("post_action", kind, action_map, trace)))
        return out

    def step_with_modules(self) -> list[Event]:
        """Run the ``tick`` subscriptions of active instances once for the open block and return
        the events; a second call in the same block does nothing. Raises RuntimeError when no
        block is open."""
        self._require_block()
        if self._ticked:
            return []
        self._ticked = True
        return self._emit(self._runner.tick())

    def end_block(self) -> BlockOutcome:
        """Close the open block and return its BlockOutcome: builds whose deadline is this height
        fail first (``module.build_settled`` with ``BUILD_DEADLINE``). Raises RuntimeError when no
        block is open."""
        self._require_block()
        height = self._state.meta.height
        self._emit(builds.expire_builds(self._state, height))
        self._emit(governance.end_block(self._state, self._sandbox, height))
        self._emit(staking.end_block(self._state, height))
        root = self._state.state_root()
        journal = self._state.journal
        events_root = merkle_root([journal.raw_of(e) for e in self._block_events])
        self.height = self._state.meta.height
        self._in_block = False
        self._prepaid = None
        events, self._block_events = self._block_events, []
        return BlockOutcome(height=self.height, state_root=root, events_root=events_root, events=events)

    def _require_block(self) -> None:
        if not self._in_block:
            raise RuntimeError(f"no block is open; call begin_block({self.height + 1}, timestamp_ms) first")

    def _emit(self, specs: list[EventSpec]) -> list[Event]:
        if not specs:
            return []
        height = self._state.meta.height
        out = [self._state.journal.append(height, kind, data) for kind, data in specs]
        self._state.journal_changed()
        self._block_events.extend(out)
        return out

    # -- reads ---------------------------------------------------------------------------------
    def state_root(self) -> bytes:
        """Return the 32-byte state root of the current state (see ``state`` for the leaves)."""
        return self._state.state_root()

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        """Return the agent's record, or None if no such agent is registered."""
        return self._state.agents.get(agent_id)

    def agents_page(self, after: str | None = None, limit: int = 100) -> list[AgentRecord]:
        """Return up to ``limit`` agents in id order, those with ids after ``after`` (None: from
        the first). Sorts every agent id: O(n log n) per call."""
        ids = sorted(self._state.agents)
        start = 0 if after is None else bisect.bisect_right(ids, after)
        return [self._state.agents[i] for i in ids[start:start + max(0, limit)]]

    def get_build(self, build_id: str) -> BuildRecord | None:
        """Return the build record ``build_id`` (hex action id of its compile action), or None."""
        return self._state.builds.get(build_id)

    def pending_builds(self) -> list[BuildRecord]:
        """Return the builds waiting for validator attestations, in build id order."""
        return builds.pending_builds(self._state)

    def validators(self) -> dict[str, int]:
        """Return the validator set in force at the current height (hex id to voting power); its
        members attest builds."""
        return active_powers(self._state)

    def validator_set(self, epoch: int) -> ValidatorSetRecord | None:
        """Return the validator set of ``epoch``, or None when not known yet (more than one
        epoch ahead of the executed height) or dropped (older than the evidence window)."""
        return set_record(self._state, epoch)

    def validator_record(self, validator_id: str) -> ValidatorRecord | None:
        """Return the staking record of ``validator_id`` (bonds, jail, slashes), or None."""
        return staking.validator(self._state, validator_id)

    def validator_records(self) -> list[ValidatorRecord]:
        """Return every validator candidate, sorted by id."""
        return [r for _, r in sorted(self._state.tables["validator"].items()) if isinstance(r, ValidatorRecord)]

    def evidence_problem(self, validator_id: str, offence_height: int, height: int) -> str | None:
        """Why double-sign evidence against ``validator_id`` at ``offence_height`` cannot be
        executed in block ``height`` (``staking.rules.evidence_problem``), or None."""
        return staking.evidence_problem(self._state, validator_id, offence_height, height)

    def proposals(self) -> list[ProposalRecord]:
        """Return every governance proposal, by id (``governance.rules.proposals``)."""
        return governance.proposals(self._state)

    def proposal(self, proposal_id: int) -> ProposalRecord | None:
        """Return governance proposal ``proposal_id``, or None."""
        return governance.proposal(self._state, proposal_id)

    def manifest_versions(self) -> list[ManifestVersionRecord]:
        """Return every manifest version ever in force, oldest first."""
        return governance.manifest_versions(self._state)

    def records(self, table: str) -> dict[str, Any]:
        """Return a copy of the records of ``table`` (``state.TABLES``) by key. Raises KeyError."""
        return dict(self._state.tables[table])

    def signer_key(self, signed: SignedAction) -> bytes | None:
        """Return the public key ``signed``'s signature must verify against (``admission.signer_key``)."""
        return signer_key(self._state, signed)

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """Return a module instance record, or None."""
        return self._state.instances.get(instance_id)

    def module_state(self, instance_id: str) -> bytes | None:
        """Return a reducer instance's stored state bytes, or None if it has none yet."""
        return self._state.module_state.get(instance_id)

    def events(self, from_seq: int = 0, limit: int = 100, kind_prefix: str | None = None) -> list[Event]:
        """Return up to ``limit`` journal events with ``seq >= from_seq``, oldest first, optionally
        only kinds starting with ``kind_prefix``. Raises ValueError for a negative limit."""
        return self._state.journal.query(from_seq, limit, kind_prefix)

    def audit_events(self, flt: EventFilter, *, limit: int = 100, cursor: int | None = None,
                     newest_first: bool = False) -> EventPage:
        """Return a page of the journal's events that ``flt`` selects (``audit.audit_events``:
        oldest or newest first from ``cursor``, at most ``audit.MAX_SCAN`` events looked at).
        Raises ValueError for a limit below 1."""
        return audit_events(self._state.journal, flt, limit=limit, cursor=cursor, newest_first=newest_first)

    def save_audit_log(self, path: str | Path, flt: EventFilter) -> int:
        """Write the events ``flt`` selects to ``path`` as JSON Lines (``audit.save_audit_log``);
        return how many. Raises OSError."""
        return save_audit_log(self._state.journal, Path(path), flt)

    def events_at(self, height: int) -> list[Event]:
        """Return the journal's events of block ``height``, in order (empty when the journal does
        not hold that height: before a state-sync snapshot, or a block without events)."""
        return self._state.journal.at_height(height)

    def action_events(self, action_id: bytes, height: int) -> list[Event]:
        """Return the events of the action ``action_id`` executed in block ``height`` (those whose
        ``data["action_id"]`` is it), in order: its applied events, or one
        ``domain.action_rejected``. Empty when the journal does not hold that height's events
        (before a state-sync snapshot) or the action is not in that block."""
        return [e for e in self.events_at(height) if e.data.get("action_id") == action_id]

    def journal_raw(self, first_seq: int = 1, last_seq: int | None = None) -> list[bytes]:
        """Return the canonical bytes of journal events ``first_seq..last_seq`` (inclusive)."""
        return self._state.journal.raw(first_seq, last_seq)

    def module_status(self) -> dict[str, Any]:
        """Return ``{"artifacts": [...], "instances": [...]}`` as plain JSON-ready dicts, sorted by
        wasm_hash and instance_id."""
        st = self._state
        artifacts = [{
            "wasm_hash": a.wasm_hash, "module_id": a.module_id, "version": a.version, "publisher": a.publisher,
            "kind": a.manifest.kind, "size": a.size, "published_at": a.published_at, "origin": a.origin,
        } for a in (st.artifacts[h] for h in sorted(st.artifacts))]
        instances = [{
            "instance_id": i.instance_id, "module_id": i.module_id, "version": i.version, "wasm_hash": i.wasm_hash,
            "owner_agent_id": i.owner_agent_id, "install_target": i.install_target, "active": i.active,
            "installed_at": i.installed_at, "granted_caps": list(i.granted_caps),
            "state_bytes": len(st.module_state.get(i.instance_id, b"")),
        } for i in (st.instances[k] for k in sorted(st.instances))]
        return {"artifacts": artifacts, "instances": instances}

    def stats(self) -> dict[str, int]:
        """Return counters: height, agents, events, artifacts, instances, module_calls (calls
        attempted: succeeded + failed), module_call_failures, module_emits, actions_rejected."""
        st = self._state
        counts = st.journal.kind_counts
        return {
            "height": self.height,
            "agents": len(st.agents),
            "events": len(st.journal),
            "artifacts": len(st.artifacts),
            "instances": len(st.instances),
            "module_calls": counts[ev.MODULE_CALLED] + counts[ev.MODULE_CALL_FAILED],
            "module_call_failures": counts[ev.MODULE_CALL_FAILED],
            "module_emits": counts[ev.MODULE_EMITTED],
            "actions_rejected": counts[ev.ACTION_REJECTED],
        }

    # -- persistence ---------------------------------------------------------------------------
    def save_to_dir(self, path: str | Path) -> None:
        """Persist the world (snapshot, journal, module store) into directory ``path`` atomically;
        see ``persistence``. Raises RuntimeError inside a block, OSError on I/O failure."""
        if self._in_block:
            raise RuntimeError("save_to_dir must be called between blocks (after end_block)")
        self._save_cache = save_state(self._state, self.height, Path(path), self._save_cache)

    def create_snapshot(self) -> bytes:
        """Return this world as state-sync snapshot bytes (``snapshots.create_snapshot``: the
        records and the journal's head, not its events). Raises RuntimeError inside a block."""
        if self._in_block:
            raise RuntimeError("create_snapshot must be called between blocks (after end_block)")
        return create_snapshot(self._state, self.height)

    @classmethod
    def restore_snapshot(cls, data: bytes, *, sandbox: Sandbox | None = None) -> "World":
        """Rebuild a world from ``create_snapshot`` bytes, verified (``snapshots.restore_snapshot``);
        raises persistence.SnapshotError. Its journal holds events from the snapshot height on."""
        state, height = restore_snapshot(data)
        return cls(state, height, sandbox=sandbox)

    @classmethod
    def load_from_dir(cls, path: str | Path, *, sandbox: Sandbox | None = None) -> "World":
        """Load a world saved with ``save_to_dir``; raises persistence.SnapshotError when the
        directory holds no valid snapshot (the message names the file and the problem)."""
        loaded = load_state(Path(path))
        world = cls(loaded.state, loaded.height, sandbox=sandbox)
        world._save_cache = loaded.cache
        return world
