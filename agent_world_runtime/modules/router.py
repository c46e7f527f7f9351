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
ceil(input_bytes/1024) + ceil(output_bytes/1024) + 2*effect_count + emit_count, gas fee (kind
``data``) = ceil(gas_used * params.gas_price_per_mfuel / 1_000_000), electricity fee =
1 + effect_count + emit_count + (1 if the call returned new_state); the payer pays compute + gas
fee in data. A call is not started unless the payer holds the base fee (output, effects and emits
zero) plus the gas fee of the call's capped ``max_gas`` (the worst case); if not, the call fails
with INSUFFICIENT_FUNDS, nothing is charged, and the instance is deactivated (``active=False``,
event ``module.deactivated``) so it is routed no more until its owner turns it back on
(``set_module_instance_active``). A failed call is billed the base fee plus the gas fee of its
gas_used; a successful call whose full fee the payer cannot pay becomes ``module.call_failed``
INSUFFICIENT_FUNDS, is billed the same (base + gas, always affordable after the pre-check), none
of its output is applied, and the instance stays active (the call was paid for).

Logs: call failures are logged as ``module_call_failed`` at most MAX_FAILURE_LOGS_PER_BLOCK times
per block; the rest are counted and summarised once as ``module_call_failures_suppressed`` when
the next block begins. Logs are node-local; the journal events are unaffected.

Effects: each ``EffectIntent`` is checked (cap_ref among the manifest's required_caps, granted to
the instance at install, matching the effect kind, allowed by the world policy) and the decision
is recorded as ``governance.policy_decision_recorded``; an allowed effect is applied and recorded
as ``effect.applied``. Nothing a module does raises out of here.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import structlog

from .. import events as ev
from ..actions import RESOURCE_KINDS
from ..codec import encode
from ..rules import MAX_BALANCE
from ..state import InstanceRecord, WorldState
from . import abi
from .billing import compute_fee, electricity_fee, gas_fee
from .lifecycle import CAPABILITIES, LOCATION_TARGET_RE, entry_point
from .manifest import ModuleLimits, ModuleLimitsMax, Subscription, cap_module_limits
from .sandbox import ModuleValidationError, Sandbox

log = structlog.get_logger(__name__)

EventSpec = tuple[str, dict[str, Any]]
ROUTED_STAGES = ("pre_action", "post_action", "post_event")
# (instance, its subscriptions for the stage, target: None | ("agent", id) | ("location", (x, y, z)))
Route = tuple[InstanceRecord, list[Subscription], Any]
#: Call failures logged per block and node; further ones are counted and summarised (node logs only).
MAX_FAILURE_LOGS_PER_BLOCK = 10
MAX_LOGGED_DETAIL_CHARS = 200


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


def _parse_target(target: str) -> Any:
    if target.startswith("agent:"):
        return ("agent", target[6:])
    m = LOCATION_TARGET_RE.fullmatch(target)
    if m:
        return ("location", tuple(int(c) for c in m.groups()))
    return None


class ModuleRunner:
    """Runs module calls against a WorldState; keeps the per-block call counts for ``max_call_rate``,
    the block's remaining gas budget and the node-local failure-log budget."""

    def __init__(self, state: WorldState, sandbox: Sandbox) -> None:
        self.state = state
        self.sandbox = sandbox
        self._calls_this_block: dict[str, int] = {}
        self.gas_left = abi.BLOCK_MODULE_GAS_BUDGET
        self._routes_cache: tuple[int, dict[str, list[Route]], list[InstanceRecord]] | None = None
        self._capped: dict[tuple[ModuleLimits, ModuleLimitsMax], ModuleLimits] = {}
        self._failure_logs_left = MAX_FAILURE_LOGS_PER_BLOCK
        self._suppressed: Counter[str] = Counter()  # failure code -> failures not logged this block
        self._suppressed_height = 0

    def new_block(self) -> None:
        """Reset the per-block call counts, gas budget and failure-log budget; first log a
        ``module_call_failures_suppressed`` summary {height, count, by_code} if failures of the
        previous block went unlogged."""
        if self._suppressed:
            log.info("module_call_failures_suppressed", height=self._suppressed_height,
                     count=sum(self._suppressed.values()), by_code=dict(sorted(self._suppressed.items())))
        self._suppressed = Counter()
        self._failure_logs_left = MAX_FAILURE_LOGS_PER_BLOCK
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

    def _limits(self, limits: ModuleLimits) -> ModuleLimits:
        """Return the manifest ``limits`` capped by the world's ``module_limits_max`` (memoised)."""
        key = (limits, self.state.manifest.params.module_limits_max)
        capped = self._capped.get(key)
        if capped is None:
            capped = self._capped[key] = cap_module_limits(*key)
        return capped

    def call(self, inst: InstanceRecord, stage: str, trace_id: str, *, event: ev.Event | None = None,
             action: dict[str, Any] | None = None) -> list[EventSpec]:
        """Run one call of ``inst`` and return its events: module.called, module.runtime_charged,
        the emits, the policy decisions and applied effects; or module.call_failed (preceded by
        module.load_failed when the artifact cannot be loaded, followed by module.runtime_charged
        when the call ran, or by module.deactivated when the payer cannot pay the pre-call fees)."""
        state = self.state
        artifact = state.artifacts[inst.wasm_hash]
        manifest = artifact.manifest
        limits = self._limits(manifest.limits)
        reducer = manifest.kind == "reducer"
        base = {"module_id": inst.module_id, "instance_id": inst.instance_id, "trace_id": trace_id}
        payer = artifact.publisher
        count = self._calls_this_block.get(inst.instance_id, 0)
        if count >= limits.max_call_rate:
            detail = f"already called {count} times in this block; the limit is {limits.max_call_rate}"
            return self._not_run(inst, base, payer, abi.CALL_RATE_EXCEEDED, detail)
        if self.gas_left < limits.max_gas:
            return self._not_run(inst, base, payer, abi.OUT_OF_GAS, f"the block's module gas budget is used up "
                                 f"({self.gas_left} of {abi.BLOCK_MODULE_GAS_BUDGET} left, max_gas is {limits.max_gas})")
        meta = state.meta
        ctx = abi.ModuleContext(
            chain_id=meta.chain_id, height=meta.height, timestamp_ms=meta.timestamp_ms, stage=stage,
            trace_id=trace_id, instance_id=inst.instance_id, module_id=inst.module_id, version=inst.version,
            owner_agent_id=inst.owner_agent_id,
        )
        payload = encode(abi.ModuleCallInput(
            ctx=ctx, event=event, state=state.module_state.get(inst.instance_id) if reducer else None, action=action,
        ))
        in_len = len(payload)
        bill = _Bill(payer, in_len, limits.max_gas, self.state.manifest.params.gas_price_per_mfuel)
        shortfall = self._shortfall(payer, bill.data(compute_fee(in_len, 0, 0, 0), limits.max_gas),
                                    electricity_fee(0, 0, False))
        if shortfall:
            detail = (f"payer {payer!r} cannot pay the pre-call fees (base fee plus the gas fee of "
                      f"max_gas {limits.max_gas}): {shortfall}")
            return [self._failed(base, abi.INSUFFICIENT_FUNDS, detail, 0), self._deactivate(inst, payer, detail)]
        try:
            wasm = state.artifact_bytes[inst.wasm_hash]
            compiled = self.sandbox.compile(wasm, inst.wasm_hash)
        except (KeyError, ModuleValidationError) as exc:
            reason = "artifact bytes are missing" if isinstance(exc, KeyError) else str(exc)
            return [(ev.MODULE_LOAD_FAILED, {"wasm_hash": inst.wasm_hash, "instance_id": inst.instance_id,
                                              "reason": reason}),
                    *self._not_run(inst, base, payer, abi.LOAD_FAILED, f"artifact {inst.wasm_hash} cannot be loaded")]
        self._calls_this_block[inst.instance_id] = count + 1
        try:
            result = self.sandbox.call(compiled, entry_point(manifest.kind), payload, limits)
        except Exception:  # the engine misbehaved, not the guest: record it, never crash the node
            log.exception("sandbox_error", module_id=inst.module_id, instance_id=inst.instance_id, trace_id=trace_id)
            self.gas_left -= limits.max_gas
            return [self._failed(base, abi.TRAP, "the host could not run this call", limits.max_gas),
                    self._charge(base, bill, 0, 0, 0, False, limits.max_gas)]
        self.gas_left -= result.gas_used
        if not result.ok:
            return [self._failed(base, result.code or abi.TRAP, result.detail, result.gas_used),
                    self._charge(base, bill, 0, 0, 0, False, result.gas_used)]
        try:
            output = abi.decode_module_output(result.output, limits, reducer=reducer)
        except abi.OutputRejected as exc:
            return [self._failed(base, exc.code, exc.detail, result.gas_used),
                    self._charge(base, bill, 0, 0, 0, False, result.gas_used)]
        return self._apply_output(inst, manifest.required_caps, base, bill, result.output, output, result.gas_used)

    def _apply_output(self, inst: InstanceRecord, required_caps: list[str], base: dict[str, Any], bill: "_Bill",
                      raw: bytes, output: abi.ModuleOutput, gas_used: int) -> list[EventSpec]:
        """Bill a successful call in full and apply its output; if the payer cannot pay the full
        fee, fail it with INSUFFICIENT_FUNDS, bill base + gas fee and apply nothing."""
        out_len, n_eff, n_emit, new_state = len(raw), len(output.effects), len(output.emits), output.new_state
        shortfall = self._shortfall(bill.payer, bill.data(compute_fee(bill.in_len, out_len, n_eff, n_emit), gas_used),
                                    electricity_fee(n_eff, n_emit, new_state is not None))
        if shortfall:
            return [self._failed(base, abi.INSUFFICIENT_FUNDS, f"payer {bill.payer!r} cannot pay for this call: "
                                 f"{shortfall}", gas_used),
                    self._charge(base, bill, 0, 0, 0, False, gas_used)]
        events: list[EventSpec] = [
            (ev.MODULE_CALLED, {**base, "gas_used": gas_used}),
            self._charge(base, bill, out_len, n_eff, n_emit, new_state is not None, gas_used),
        ]
        if new_state is not None:
            self.state.put_module_state(inst.instance_id, new_state)
        for emit in output.emits:
            events.append((ev.MODULE_EMITTED, {**base, "kind": emit.kind, "data": emit.data}))
        for index, effect in enumerate(output.effects):
            events.extend(self._effect(inst, required_caps, base, index, effect))
        return events

    # -- billing ---------------------------------------------------------------------------------
    def _not_run(self, inst: InstanceRecord, base: dict[str, Any], payer: str, code: str,
                 detail: str) -> list[EventSpec]:
        """A call refused before it ran (call rate, block gas budget, unloadable artifact): its
        module.call_failed event is billed the base electricity fee with no input
        (``electricity_fee(0, 0, False)``, no data, no gas), so a refused call still costs its
        payer; a payer who cannot pay even that gets the instance deactivated instead."""
        failed = self._failed(base, code, detail, 0)
        shortfall = self._shortfall(payer, 0, electricity_fee(0, 0, False))
        if shortfall:
            return [failed, self._deactivate(inst, payer, f"payer {payer!r} cannot pay for a refused call: {shortfall}")]
        price = self.state.manifest.params.gas_price_per_mfuel
        return [failed, self._charge(base, _Bill(payer, 0, 0, price), 0, 0, 0, False, 0)]

    def _shortfall(self, payer: str, data_fee: int, elec_fee: int) -> str:
        """Return "" if ``payer`` holds ``data_fee`` data and ``elec_fee`` electricity, else what is missing."""
        agent = self.state.agents.get(payer)
        if agent is None:
            return "the payer is not a registered agent"
        if agent.data < data_fee:
            return f"data fee (compute + gas) is {data_fee}, the payer has {agent.data}"
        if agent.electricity < elec_fee:
            return f"electricity fee is {elec_fee}, the payer has {agent.electricity}"
        return ""

    def _charge(self, base: dict[str, Any], bill: "_Bill", out_len: int, n_eff: int, n_emit: int,
                new_state: bool, gas_used: int) -> EventSpec:
        """Take the call's fees from the payer (the caller checked it can pay) and return the
        module.runtime_charged event."""
        data_fee = compute_fee(bill.in_len, out_len, n_eff, n_emit)
        gas = bill.gas_fee(gas_used)
        elec_fee = electricity_fee(n_eff, n_emit, new_state)
        agent = self.state.agents[bill.payer]
        self.state.put_agent(msgspec.structs.replace(agent, data=agent.data - data_fee - gas,
                                                     electricity=agent.electricity - elec_fee))
        return (ev.MODULE_RUNTIME_CHARGED, {
            "module_id": base["module_id"], "instance_id": base["instance_id"], "trace_id": base["trace_id"],
            "payer_agent_id": bill.payer,
            "compute_fee_kind": "data", "compute_fee_amount": data_fee,
            "electricity_fee_kind": "electricity", "electricity_fee_amount": elec_fee,
            "gas_fee_kind": "data", "gas_fee_amount": gas,
            "input_bytes": bill.in_len, "output_bytes": out_len, "effect_count": n_eff, "emit_count": n_emit,
            "gas_used": gas_used,
        })

    def _deactivate(self, inst: InstanceRecord, payer: str, detail: str) -> EventSpec:
        """Write instance ``inst`` with ``active=False`` (it is routed no more) and return the
        module.deactivated event."""
        current = self.state.instances[inst.instance_id]
        self.state.put_instance(msgspec.structs.replace(current, active=False))
        reason = (f"{detail}; the owner can turn it back on with set_module_instance_active once the payer "
                  "holds the fees")
        return (ev.MODULE_DEACTIVATED, {
            "module_id": inst.module_id, "instance_id": inst.instance_id, "owner_agent_id": inst.owner_agent_id,
            "payer_agent_id": payer, "reason": reason, "height": self.state.meta.height,
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
        limit = self.state.manifest.params.module_effect_max_amount
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= limit:
            return f"policy: amount must be an integer in [1, {limit}], got {str(amount)[:30]}"
        owner = self.state.agents.get(inst.owner_agent_id)
        if owner is None or getattr(owner, kind) < amount:
            return f"policy: owner {inst.owner_agent_id!r} holds less than {amount} {kind}"
        if to != inst.owner_agent_id and getattr(self.state.agents[to], kind) > MAX_BALANCE - amount:
            return f"policy: the recipient's {kind} balance would overflow"
        return ""

    # -- failures and their logs ---------------------------------------------------------------
    def _failed(self, base: dict[str, Any], code: str, detail: str, gas_used: int) -> EventSpec:
        """Return the module.call_failed event; log it (``module_call_failed``) within the block's
        failure-log budget, else count it for the next ``new_block`` summary."""
        if self._may_log(code):
            log.info("module_call_failed", module_id=base["module_id"], instance_id=base["instance_id"],
                     code=code, height=self.state.meta.height, trace_id=base["trace_id"],
                     detail=detail[:MAX_LOGGED_DETAIL_CHARS])
        return (ev.MODULE_CALL_FAILED, {**base, "code": code, "detail": detail, "gas_used": gas_used})

    def _may_log(self, code: str) -> bool:
        """Spend one unit of the block's failure-log budget and return True, or count a
        suppressed failure of ``code`` and return False."""
        if self._failure_logs_left > 0:
            self._failure_logs_left -= 1
            return True
        if not self._suppressed:
            self._suppressed_height = self.state.meta.height
        self._suppressed[code] += 1
        return False


class _Bill:
    """Who pays a call and how its gas is priced: ``payer`` (agent id), ``in_len`` (input bytes),
    ``max_gas`` (the capped fuel limit) and ``price`` (data per million fuel)."""

    __slots__ = ("payer", "in_len", "max_gas", "price")

    def __init__(self, payer: str, in_len: int, max_gas: int, price: int) -> None:
        self.payer, self.in_len, self.max_gas, self.price = payer, in_len, max_gas, price

    def gas_fee(self, gas_used: int) -> int:
        """Return the gas fee (data) of ``gas_used`` fuel, never more than that of ``max_gas``: the
        pre-call check covered ``max_gas``, so whatever is billed can be paid."""
        return gas_fee(min(gas_used, self.max_gas), self.price)

    def data(self, compute: int, gas_used: int) -> int:
        """Return the data a call owes: ``compute`` fee plus the gas fee of ``gas_used``."""
        return compute + self.gas_fee(gas_used)
