"""Routing events to module instances and running the calls (DESIGN.md, "WASM modules").

* ``post_event``: every event an action produced is offered to each active instance, in instance
  id order; an instance is called once per event if any of its ``post_event`` subscriptions
  matches (``kind`` exact, or a prefix ending in ``*``; every filter ``field: value`` must equal
  ``str(data[field])``, with booleans as ``true``/``false``). Events produced by module calls
  (``module.called``, ``module.call_failed``, ``module.emitted``, ``effect.denied``) are never
  routed: no recursion.
* ``tick``: ``World.step_with_modules`` calls each active instance with a ``tick`` subscription
  once per block, in instance id order, with no event.

A call's limits are the manifest's, capped by ``abi.WORLD_MODULE_LIMITS_MAX``; ``max_call_rate``
counts calls per instance per block. A block's calls share ``abi.BLOCK_MODULE_GAS_BUDGET``: a call is
only started if the budget still holds its whole ``max_gas`` (it is charged the fuel it used, or
``max_gas`` on a trap); otherwise it fails with OUT_OF_GAS without running. The outcome becomes events: ``module.called`` then the emits
as ``module.emitted`` and each effect as ``effect.denied`` (no effect capabilities exist yet), or a
single ``module.call_failed`` whose output is discarded. A reducer's ``new_state`` replaces the
instance's state. Nothing a module does raises out of here.
"""

from __future__ import annotations

from typing import Any

import structlog

from .. import events as ev
from ..codec import encode
from ..state import InstanceRecord, WorldState
from . import abi
from .lifecycle import entry_point
from .manifest import Subscription
from .sandbox import Sandbox

log = structlog.get_logger(__name__)

EventSpec = tuple[str, dict[str, Any]]


def subscription_matches(sub: Subscription, event: ev.Event) -> bool:
    """Return True if post_event subscription ``sub`` selects ``event`` (rules in the module docstring)."""
    if sub.kind.endswith("*"):
        if not event.kind.startswith(sub.kind[:-1]):
            return False
    elif sub.kind != event.kind:
        return False
    for field, want in sub.filters.items():
        got = event.data.get(field)
        if isinstance(got, bool):
            got = "true" if got else "false"
        elif isinstance(got, int):
            got = str(got)
        if got != want:
            return False
    return True


class ModuleRunner:
    """Runs module calls against a WorldState; keeps the per-block call counts for ``max_call_rate``."""

    def __init__(self, state: WorldState, sandbox: Sandbox) -> None:
        self.state = state
        self.sandbox = sandbox
        self._calls_this_block: dict[str, int] = {}
        self.gas_left = abi.BLOCK_MODULE_GAS_BUDGET
        self._routes_cache: tuple[int, list, list] | None = None

    def new_block(self) -> None:
        """Reset the per-block call counts and gas budget."""
        self._calls_this_block = {}
        self.gas_left = abi.BLOCK_MODULE_GAS_BUDGET

    def _routes(self) -> tuple[list[tuple[InstanceRecord, list[Subscription]]], list[InstanceRecord]]:
        """Return (active instances with their post_event subscriptions, active instances with a
        tick subscription), both in instance id order; cached until an instance changes."""
        if self._routes_cache is None or self._routes_cache[0] != self.state.instances_version:
            post: list[tuple[InstanceRecord, list[Subscription]]] = []
            tick: list[InstanceRecord] = []
            for iid in sorted(self.state.instances):
                inst = self.state.instances[iid]
                if not inst.active:
                    continue
                subs = self.state.artifacts[inst.wasm_hash].manifest.subscriptions
                post_subs = [s for s in subs if s.stage == "post_event"]
                if post_subs:
                    post.append((inst, post_subs))
                if any(s.stage == "tick" for s in subs):
                    tick.append(inst)
            self._routes_cache = (self.state.instances_version, post, tick)
        return self._routes_cache[1], self._routes_cache[2]

    def route_event(self, event: ev.Event) -> list[EventSpec]:
        """Call every subscribed instance for ``event`` (post_event stage) and return the events."""
        if event.kind in ev.MODULE_CALL_EVENT_KINDS:
            return []
        out: list[EventSpec] = []
        for inst, subs in self._routes()[0]:
            if any(subscription_matches(s, event) for s in subs):
                out.extend(self.call(inst, "post_event", f"{event.height}/{event.seq}/{inst.instance_id}", event))
        return out

    def tick(self) -> list[EventSpec]:
        """Call every instance with a tick subscription once and return the events."""
        out: list[EventSpec] = []
        height = self.state.meta.height
        for inst in self._routes()[1]:
            out.extend(self.call(inst, "tick", f"{height}/tick/{inst.instance_id}", None))
        return out

    def call(self, inst: InstanceRecord, stage: str, trace_id: str, event: ev.Event | None) -> list[EventSpec]:
        """Run one call of ``inst`` and return its events (module.called + emits, or module.call_failed)."""
        artifact = self.state.artifacts[inst.wasm_hash]
        manifest = artifact.manifest
        limits = abi.effective_limits(manifest.limits)
        reducer = manifest.kind == "reducer"
        base = {"module_id": inst.module_id, "instance_id": inst.instance_id, "trace_id": trace_id}
        count = self._calls_this_block.get(inst.instance_id, 0)
        if count >= limits.max_call_rate:
            detail = f"already called {count} times in this block; the limit is {limits.max_call_rate}"
            return [self._failed(base, abi.CALL_RATE_EXCEEDED, detail, 0)]
        if self.gas_left < limits.max_gas:
            return [self._failed(base, abi.OUT_OF_GAS, f"the block's module gas budget is used up ({self.gas_left} "
                                 f"of {abi.BLOCK_MODULE_GAS_BUDGET} left, max_gas is {limits.max_gas})", 0)]
        self._calls_this_block[inst.instance_id] = count + 1
        meta = self.state.meta
        ctx = abi.ModuleContext(
            chain_id=meta.chain_id, height=meta.height, timestamp_ms=meta.timestamp_ms, stage=stage,
            trace_id=trace_id, instance_id=inst.instance_id, module_id=inst.module_id, version=inst.version,
            owner_agent_id=inst.owner_agent_id,
        )
        payload = encode(abi.ModuleCallInput(
            ctx=ctx, event=event, state=self.state.module_state.get(inst.instance_id) if reducer else None,
        ))
        try:
            compiled = self.sandbox.compile(self.state.artifact_bytes[inst.wasm_hash], inst.wasm_hash)
            result = self.sandbox.call(compiled, entry_point(manifest.kind), payload, limits)
        except Exception:  # the engine misbehaved, not the guest: record it, never crash the node
            log.exception("sandbox error", module_id=inst.module_id, instance_id=inst.instance_id, trace_id=trace_id)
            self.gas_left -= limits.max_gas
            return [self._failed(base, abi.TRAP, "the host could not run this call", limits.max_gas)]
        self.gas_left -= result.gas_used
        if not result.ok:
            return [self._failed(base, result.code or abi.TRAP, result.detail, result.gas_used)]
        try:
            output = abi.decode_module_output(result.output, limits, reducer=reducer)
        except abi.OutputRejected as exc:
            return [self._failed(base, exc.code, exc.detail, result.gas_used)]
        if output.new_state is not None:
            self.state.put_module_state(inst.instance_id, output.new_state)
        events: list[EventSpec] = [(ev.MODULE_CALLED, {**base, "gas_used": result.gas_used})]
        for emit in output.emits:
            events.append((ev.MODULE_EMITTED, {**base, "kind": emit.kind, "data": emit.data}))
        for effect in output.effects:
            events.append((ev.EFFECT_DENIED, {
                **base, "effect_kind": effect.kind, "cap_ref": effect.cap_ref,
                "reason": "no effect capabilities are granted in this world yet",
            }))
        return events

    @staticmethod
    def _failed(base: dict[str, Any], code: str, detail: str, gas_used: int) -> EventSpec:
        log.info("module call failed", module_id=base["module_id"], instance_id=base["instance_id"],
                 trace_id=base["trace_id"], code=code, detail=detail)
        return (ev.MODULE_CALL_FAILED, {**base, "code": code, "detail": detail, "gas_used": gas_used})
