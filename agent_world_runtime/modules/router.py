"""Routing events and actions to module instances, running the calls, billing them and applying
their effects (docs/module-abi.md, "Routing" and "Billing").

Routing (deterministic: instances in instance id order, subscriptions as declared):

* ``pre_action`` / ``post_action``: ``World.apply_action`` offers every admitted action (by its
  kind, e.g. ``move_agent``) before and after its handler runs; the call's input has ``action``.
  Modules observe actions; they cannot veto them (ABI v1).
* ``post_event``: every event an action produced is offered to each active instance; an instance
  is called once per event if any ``post_event`` subscription matches. Events produced by module
  calls (``module.*`` call events, ``effect.*``, ``governance.policy_decision_recorded``) are never
  routed: no recursion.
* ``tick``: ``World.step_with_modules`` calls each active instance with a ``tick`` subscription
  once per block, with no event.

A subscription matches when its ``kind`` equals the event/action kind or is a prefix ending in
``*``, and every filter ``field: value`` equals ``str(data[field])`` (booleans as
``true``/``false``). An instance's ``install_target`` narrows routing: ``agent:<id>`` sees only
events/actions whose ``agent_id`` is that agent, ``location:<x>,<y>,<z>`` only those whose agent
stands there when routed; ``self_agent`` sees all.

A call's limits are the manifest's capped by the world's ``params.module_limits_max``; ``max_call_rate``
counts calls per instance per block. A block's calls share ``abi.BLOCK_MODULE_GAS_BUDGET``.

Billing (docs/module-abi.md, "Billing"): every call that runs is billed to the artifact's publisher (the
artifact owner) as ``module.runtime_charged``: compute fee (kind ``data``) =
ceil(input_bytes/1024) + ceil(output_bytes/1024) + 2*effect_count + emit_count, electricity fee =
1 + effect_count + emit_count + (1 if the call returned new_state). A call is not started unless the
payer holds the base fee (output, effects and emits zero); a failed call is billed the base fee;
a successful call whose full fee the payer cannot pay becomes ``module.call_failed``
INSUFFICIENT_FUNDS, is billed the base fee, and none of its output is applied.

Effects: each ``EffectIntent`` is checked (cap_ref among the manifest's required_caps, granted to
the instance at install, matching the effect kind, allowed by the world policy) and the decision
is recorded as ``governance.policy_decision_recorded``; an allowed effect is applied and recorded
as ``effect.applied``. Nothing a module does raises out of here.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog

from .. import events as ev
from ..actions import RESOURCE_KINDS
from ..codec import encode
from ..rules import MAX_BALANCE
from ..state import InstanceRecord, WorldState
from . import abi
from .lifecycle import CAPABILITIES, LOCATION_TARGET_RE, entry_point
from .manifest import ModuleLimits, ModuleLimitsMax, Subscription, cap_module_limits
from .sandbox import ModuleValidationError, Sandbox

log = structlog.get_logger(__name__)

EventSpec = tuple[str, dict[str, Any]]
ROUTED_STAGES = ("pre_action", "post_action", "post_event")
# (instance, its subscriptions for the stage, target: None | ("agent", id) | ("location", (x, y, z)))
Route = tuple[InstanceRecord, list[Subscription], Any]


def kind_matches(pattern: str, kind: str) -> bool:
    """Return True if subscription kind ``pattern`` (exact, or a prefix ending in ``*``) selects ``kind``."""
    if pattern.endswith("*"):
        return kind.startswith(pattern[:-1])
    return pattern == kind


def filters_match(filters: dict[str, str], data: dict[str, Any]) -> bool:
    """Return True if every ``field: value`` of ``filters`` equals ``str(data[field])``
    (booleans as ``true``/``false``; other non-str, non-int values never match)."""
    for field, want in filters.items():
        got = data.get(field)
        if isinstance(got, bool):
            got = "true" if got else "false"
        elif isinstance(got, int):
            got = str(got)
        if got != want:
            return False
    return True


def subscription_matches(sub: Subscription, event: ev.Event) -> bool:
    """Return True if subscription ``sub`` selects ``event`` (kind pattern and filters on its data)."""
    return kind_matches(sub.kind, event.kind) and filters_match(sub.filters, event.data)


def compute_fee(input_bytes: int, output_bytes: int, effects: int, emits: int) -> int:
    """Return the compute fee (resource ``data``) of a call: ceil(in/1024) + ceil(out/1024) +
    2*effects + emits (docs/module-abi.md, "Billing")."""
    return -(-input_bytes // 1024) + -(-output_bytes // 1024) + 2 * effects + emits


def electricity_fee(effects: int, emits: int, new_state: bool) -> int:
    """Return the electricity fee of a call: 1 + effects + emits + (1 if it wrote new state)."""
    return 1 + effects + emits + (1 if new_state else 0)


def _parse_target(target: str) -> Any:
    if target.startswith("agent:"):
        return ("agent", target[6:])
    m = LOCATION_TARGET_RE.fullmatch(target)
    if m:
        return ("location", tuple(int(c) for c in m.groups()))
    return None


class ModuleRunner:
    """Runs module calls against a WorldState; keeps the per-block call counts for ``max_call_rate``
    and the block's remaining gas budget."""

    def __init__(self, state: WorldState, sandbox: Sandbox) -> None:
        self.state = state
        self.sandbox = sandbox
        self._calls_this_block: dict[str, int] = {}
        self.gas_left = abi.BLOCK_MODULE_GAS_BUDGET
        self._routes_cache: tuple[int, dict[str, list[Route]], list[InstanceRecord]] | None = None
        self._capped: dict[tuple[ModuleLimits, ModuleLimitsMax], ModuleLimits] = {}

    def new_block(self) -> None:
        """Reset the per-block call counts and gas budget."""
        self._calls_this_block = {}
        self.gas_left = abi.BLOCK_MODULE_GAS_BUDGET

    def _routes(self) -> tuple[dict[str, list[Route]], list[InstanceRecord]]:
        """Return (stage -> active instances with their subscriptions for that stage, active
        instances with a tick subscription), in instance id order; cached until an instance changes."""
        if self._routes_cache is None or self._routes_cache[0] != self.state.instances_version:
            routed: dict[str, list[Route]] = {stage: [] for stage in ROUTED_STAGES}
            tick: list[InstanceRecord] = []
            for iid in sorted(self.state.instances):
                inst = self.state.instances[iid]
                if not inst.active:
                    continue
                subs = self.state.artifacts[inst.wasm_hash].manifest.subscriptions
                target = _parse_target(inst.install_target)
                for stage in ROUTED_STAGES:
                    stage_subs = [s for s in subs if s.stage == stage]
                    if stage_subs:
                        routed[stage].append((inst, stage_subs, target))
                if any(s.stage == "tick" for s in subs):
                    tick.append(inst)
            self._routes_cache = (self.state.instances_version, routed, tick)
        return self._routes_cache[1], self._routes_cache[2]

    def has_action_routes(self) -> bool:
        """Return True if any active instance subscribes to pre_action or post_action."""
        routed = self._routes()[0]
        return bool(routed["pre_action"] or routed["post_action"])

    def _target_ok(self, target: Any, subject: Any) -> bool:
        if target is None:
            return True
        if target[0] == "agent":
            return subject == target[1]
        agent = self.state.agents.get(subject) if isinstance(subject, str) else None
        return agent is not None and tuple(agent.position) == target[1]

    def route_event(self, event: ev.Event) -> list[EventSpec]:
        """Call every subscribed instance for ``event`` (post_event stage) and return the events."""
        if event.kind in ev.MODULE_CALL_EVENT_KINDS:
            return []
        out: list[EventSpec] = []
        subject = event.data.get("agent_id")
        for inst, subs, target in self._routes()[0]["post_event"]:
            if any(subscription_matches(s, event) for s in subs) and self._target_ok(target, subject):
                out.extend(self.call(inst, "post_event", f"{event.height}/{event.seq}/{inst.instance_id}", event=event))
        return out

    def route_action(self, stage: str, kind: str, action: dict[str, Any], trace: str) -> list[EventSpec]:
        """Call every instance subscribed to action ``kind`` at ``stage`` (pre_action or
        post_action) with ``action`` (a plain map with ``agent_id``) and return the events.
        ``trace`` identifies the action (trace ids are ``<trace>/<stage>/<instance_id>``)."""
        out: list[EventSpec] = []
        subject = action.get("agent_id")
        for inst, subs, target in self._routes()[0][stage]:
            if any(kind_matches(s.kind, kind) and filters_match(s.filters, action) for s in subs) \
                    and self._target_ok(target, subject):
                out.extend(self.call(inst, stage, f"{trace}/{stage}/{inst.instance_id}", action=action))
        return out

    def tick(self) -> list[EventSpec]:
        """Call every instance with a tick subscription once and return the events."""
        out: list[EventSpec] = []
        height = self.state.meta.height
        for inst in self._routes()[1]:
            out.extend(self.call(inst, "tick", f"{height}/tick/{inst.instance_id}"))
        return out

    def call(self, inst: InstanceRecord, stage: str, trace_id: str, *, event: ev.Event | None = None,
             action: dict[str, Any] | None = None) -> list[EventSpec]:
        """Run one call of ``inst`` and return its events: module.called, module.runtime_charged,
        the emits, the policy decisions and applied effects; or module.call_failed (preceded by
        module.load_failed when the artifact cannot be loaded, followed by module.runtime_charged
        when the call ran)."""
        state = self.state
        artifact = state.artifacts[inst.wasm_hash]
        manifest = artifact.manifest
        key = (manifest.limits, state.meta.params.module_limits_max)
        limits = self._capped.get(key)
        if limits is None:
            limits = self._capped[key] = cap_module_limits(*key)
        reducer = manifest.kind == "reducer"
        base = {"module_id": inst.module_id, "instance_id": inst.instance_id, "trace_id": trace_id}
        count = self._calls_this_block.get(inst.instance_id, 0)
        if count >= limits.max_call_rate:
            detail = f"already called {count} times in this block; the limit is {limits.max_call_rate}"
            return [self._failed(base, abi.CALL_RATE_EXCEEDED, detail, 0)]
        if self.gas_left < limits.max_gas:
            return [self._failed(base, abi.OUT_OF_GAS, f"the block's module gas budget is used up ({self.gas_left} "
                                 f"of {abi.BLOCK_MODULE_GAS_BUDGET} left, max_gas is {limits.max_gas})", 0)]
        meta = state.meta
        ctx = abi.ModuleContext(
            chain_id=meta.chain_id, height=meta.height, timestamp_ms=meta.timestamp_ms, stage=stage,
            trace_id=trace_id, instance_id=inst.instance_id, module_id=inst.module_id, version=inst.version,
            owner_agent_id=inst.owner_agent_id,
        )
        payload = encode(abi.ModuleCallInput(
            ctx=ctx, event=event, state=state.module_state.get(inst.instance_id) if reducer else None, action=action,
        ))
        payer = artifact.publisher
        in_len = len(payload)
        base_data, base_elec = compute_fee(in_len, 0, 0, 0), electricity_fee(0, 0, False)
        shortfall = self._shortfall(payer, base_data, base_elec)
        if shortfall:
            return [self._failed(base, abi.INSUFFICIENT_FUNDS, f"payer {payer!r} cannot pay the base fee: {shortfall}", 0)]
        try:
            wasm = state.artifact_bytes[inst.wasm_hash]
            compiled = self.sandbox.compile(wasm, inst.wasm_hash)
        except (KeyError, ModuleValidationError) as exc:
            reason = "artifact bytes are missing" if isinstance(exc, KeyError) else str(exc)
            log.warning("module load failed", wasm_hash=inst.wasm_hash, instance_id=inst.instance_id, reason=reason)
            return [(ev.MODULE_LOAD_FAILED, {"wasm_hash": inst.wasm_hash, "instance_id": inst.instance_id,
                                              "reason": reason}),
                    self._failed(base, abi.LOAD_FAILED, f"artifact {inst.wasm_hash} cannot be loaded", 0)]
        self._calls_this_block[inst.instance_id] = count + 1
        try:
            result = self.sandbox.call(compiled, entry_point(manifest.kind), payload, limits)
        except Exception:  # the engine misbehaved, not the guest: record it, never crash the node
            log.exception("sandbox error", module_id=inst.module_id, instance_id=inst.instance_id, trace_id=trace_id)
            self.gas_left -= limits.max_gas
            return [self._failed(base, abi.TRAP, "the host could not run this call", limits.max_gas),
                    self._charge(base, payer, in_len, 0, 0, 0, False, limits.max_gas)]
        self.gas_left -= result.gas_used
        if not result.ok:
            return [self._failed(base, result.code or abi.TRAP, result.detail, result.gas_used),
                    self._charge(base, payer, in_len, 0, 0, 0, False, result.gas_used)]
        try:
            output = abi.decode_module_output(result.output, limits, reducer=reducer)
        except abi.OutputRejected as exc:
            return [self._failed(base, exc.code, exc.detail, result.gas_used),
                    self._charge(base, payer, in_len, 0, 0, 0, False, result.gas_used)]
        out_len, n_eff, n_emit, new_state = len(result.output), len(output.effects), len(output.emits), output.new_state
        shortfall = self._shortfall(payer, compute_fee(in_len, out_len, n_eff, n_emit),
                                    electricity_fee(n_eff, n_emit, new_state is not None))
        if shortfall:
            return [self._failed(base, abi.INSUFFICIENT_FUNDS, f"payer {payer!r} cannot pay for this call: {shortfall}",
                                 result.gas_used),
                    self._charge(base, payer, in_len, 0, 0, 0, False, result.gas_used)]
        events: list[EventSpec] = [
            (ev.MODULE_CALLED, {**base, "gas_used": result.gas_used}),
            self._charge(base, payer, in_len, out_len, n_eff, n_emit, new_state is not None, result.gas_used),
        ]
        if new_state is not None:
            state.put_module_state(inst.instance_id, new_state)
        for emit in output.emits:
            events.append((ev.MODULE_EMITTED, {**base, "kind": emit.kind, "data": emit.data}))
        for index, effect in enumerate(output.effects):
            events.extend(self._effect(inst, manifest.required_caps, base, index, effect))
        return events

    # -- billing ---------------------------------------------------------------------------------
    def _shortfall(self, payer: str, data_fee: int, elec_fee: int) -> str:
        agent = self.state.agents.get(payer)
        if agent is None:
            return "the payer is not a registered agent"
        if agent.data < data_fee:
            return f"compute fee is {data_fee} data, the payer has {agent.data}"
        if agent.electricity < elec_fee:
            return f"electricity fee is {elec_fee}, the payer has {agent.electricity}"
        return ""

    def _charge(self, base: dict[str, Any], payer: str, in_len: int, out_len: int, n_eff: int, n_emit: int,
                new_state: bool, gas_used: int) -> EventSpec:
        """Take the call's fees from ``payer`` (the caller checked it can pay) and return the
        module.runtime_charged event."""
        data_fee = compute_fee(in_len, out_len, n_eff, n_emit)
        elec_fee = electricity_fee(n_eff, n_emit, new_state)
        agent = self.state.agents[payer]
        self.state.put_agent(msgspec.structs.replace(agent, data=agent.data - data_fee,
                                                     electricity=agent.electricity - elec_fee))
        return (ev.MODULE_RUNTIME_CHARGED, {
            "module_id": base["module_id"], "instance_id": base["instance_id"], "trace_id": base["trace_id"],
            "payer_agent_id": payer,
            "compute_fee_kind": "data", "compute_fee_amount": data_fee,
            "electricity_fee_kind": "electricity", "electricity_fee_amount": elec_fee,
            "input_bytes": in_len, "output_bytes": out_len, "effect_count": n_eff, "emit_count": n_emit,
            "gas_used": gas_used,
        })

    # -- effects ---------------------------------------------------------------------------------
    def _effect(self, inst: InstanceRecord, required: list[str], base: dict[str, Any], index: int,
                effect: abi.EffectIntent) -> list[EventSpec]:
        reason = self._policy(inst, required, effect)
        decision = {**base, "effect_index": index, "effect_kind": effect.kind, "cap_ref": effect.cap_ref,
                    "allowed": reason == "", "reason": reason or "allowed"}
        out: list[EventSpec] = [(ev.POLICY_DECISION_RECORDED, decision)]
        if reason:
            return out
        p = effect.params
        src, dst = self.state.agents[inst.owner_agent_id], self.state.agents[p["to"]]
        kind, amount = p["kind"], p["amount"]
        self.state.put_agent(msgspec.structs.replace(src, **{kind: getattr(src, kind) - amount}))
        dst = self.state.agents[p["to"]]  # re-read: the recipient may be the owner itself
        self.state.put_agent(msgspec.structs.replace(dst, **{kind: getattr(dst, kind) + amount}))
        out.append((ev.EFFECT_APPLIED, {**base, "effect_index": index, "effect_kind": effect.kind,
                                         "cap_ref": effect.cap_ref, "from": inst.owner_agent_id, "to": p["to"],
                                         "kind": kind, "amount": amount}))
        return out

    def _policy(self, inst: InstanceRecord, required: list[str], effect: abi.EffectIntent) -> str:
        """Return "" if ``effect`` is allowed, else the reason it is denied."""
        cap = effect.cap_ref
        if cap not in required:
            return f"cap_ref {cap[:60]!r} is not among the manifest's required_caps {list(required)}"
        if cap not in inst.granted_caps:
            return f"capability {cap!r} was not granted to instance {inst.instance_id!r} at install"
        if CAPABILITIES.get(cap) != effect.kind:
            return f"capability {cap!r} allows effect {CAPABILITIES.get(cap)!r}, not {effect.kind[:60]!r}"
        p = effect.params
        to, kind, amount = p.get("to"), p.get("kind"), p.get("amount")
        if not isinstance(to, str) or to not in self.state.agents:
            return f"policy: recipient {str(to)[:60]!r} is not a registered agent"
        if kind not in RESOURCE_KINDS:
            return f"policy: resource kind {str(kind)[:30]!r} is not one of {list(RESOURCE_KINDS)}"
        limit = self.state.meta.params.module_effect_max_amount
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= limit:
            return f"policy: amount must be an integer in [1, {limit}], got {str(amount)[:30]}"
        owner = self.state.agents.get(inst.owner_agent_id)
        if owner is None or getattr(owner, kind) < amount:
            return f"policy: owner {inst.owner_agent_id!r} holds less than {amount} {kind}"
        if to != inst.owner_agent_id and getattr(self.state.agents[to], kind) > MAX_BALANCE - amount:
            return f"policy: the recipient's {kind} balance would overflow"
        return ""

    @staticmethod
    def _failed(base: dict[str, Any], code: str, detail: str, gas_used: int) -> EventSpec:
        log.info("module call failed", module_id=base["module_id"], instance_id=base["instance_id"],
                 trace_id=base["trace_id"], code=code, detail=detail)
        return (ev.MODULE_CALL_FAILED, {**base, "code": code, "detail": detail, "gas_used": gas_used})
