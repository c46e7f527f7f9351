"""Nothing grows without payment (docs/module-abi.md, "Billing"): an instance whose payer cannot pay
a call's pre-call fees fails that call once, is turned off (module.deactivated) and is routed no
more; its owner, and only its owner, turns it back on with set_module_instance_active once the
payer can pay. Call failures are logged at most MAX_FAILURE_LOGS_PER_BLOCK times per block, the
rest summarised when the next block begins."""

from __future__ import annotations

import logging

import msgspec
import pytest
import structlog

from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import (
    HarvestRadiation,
    InstallModuleFromArtifact,
    SetModuleInstanceActive,
    TransferResource,
)
from agent_world_runtime.crypto import sha256
from agent_world_runtime.modules import router
from agent_world_runtime.modules.billing import gas_fee
from agent_world_runtime.modules.manifest import Subscription
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner
from tests.test_runtime_modules import CHAIN, const_module, deploy, manifest, rejection

EMIT = const_module(msgspec.msgpack.encode({"emits": [{"kind": "seen"}]}))
TICK = [Subscription(kind="tick", stage="tick")]


def act(w: World, signed) -> list:
    return w.apply_action(signed, compute_action_id(signed))


def set_balance(w: World, agent_id: str, **balances: int) -> None:
    """Test setup: give ``agent_id`` exactly these balances (electricity=, data=)."""
    state = w._state
    state.put_agent(msgspec.structs.replace(state.agents[agent_id], **balances))


def make_world() -> tuple[World, AgentSigner, AgentSigner]:
    alice, bob = AgentSigner.from_seed("alice", b"\x01" * 32, CHAIN), AgentSigner.from_seed("bob", b"\x02" * 32, CHAIN)
    w = World.from_genesis(CHAIN, WorldParams(harvest_interval=0),
                           agents=[alice.genesis_agent(1000, 1000), bob.genesis_agent(1000, 1000)])
    w.begin_block(1, 1_000)
    return w, alice, bob


def install_many(w: World, who: AgentSigner, wasm: bytes, m, ids: list[str]) -> None:
    [deployed] = deploy(w, who, wasm, m)
    assert deployed.kind == "module.artifact_deployed", deployed.data
    for iid in ids:
        [installed] = act(w, who.sign(InstallModuleFromArtifact(wasm_hash=sha256(wasm).hex(), instance_id=iid)))
        assert installed.kind == "module.installed", installed.data


def run_block(w: World, height: int) -> list:
    w.begin_block(height, height * 1_000)
    events = w.step_with_modules()
    w.end_block()
    return events


def test_a_broke_payers_tick_instances_fail_once_then_stop():
    w, alice, bob = make_world()
    ids = [f"t{i}" for i in range(10)]
    install_many(w, alice, EMIT, manifest("ticker", subs=TICK), ids)
    w.end_block()
    set_balance(w, "alice", electricity=0)
    events = run_block(w, 2)
    assert [e.kind for e in events] == ["module.call_failed", "module.deactivated"] * 10
    for failed, off in zip(events[::2], events[1::2], strict=True):
        assert failed.data["code"] == "INSUFFICIENT_FUNDS" and failed.data["gas_used"] == 0
        assert off.data == {"module_id": "ticker", "instance_id": failed.data["instance_id"], "owner_agent_id": "alice",
                            "payer_agent_id": "alice", "reason": off.data["reason"], "height": 2}
        assert "set_module_instance_active" in off.data["reason"]
        assert w.get_instance(off.data["instance_id"]).active is False
    journal_length = w.stats()["events"]
    for height in range(3, 23):
        assert run_block(w, height) == []
    assert w.stats()["events"] == journal_length
    assert w.get_agent("alice").electricity == 0  # nothing was charged either


def test_deactivation_takes_effect_within_the_same_action():
    w, alice, bob = make_world()
    subs = [Subscription(kind="harvest_radiation", stage="pre_action"),
            Subscription(kind="domain.radiation_harvested", stage="post_event"),
            Subscription(kind="harvest_radiation", stage="post_action")]
    install_many(w, alice, EMIT, manifest("watch", subs=subs), ["watch"])
    set_balance(w, "alice", data=0)
    events = act(w, bob.sign(HarvestRadiation()))
    assert [e.kind for e in events] == ["module.call_failed", "module.deactivated", "domain.radiation_harvested"]
    assert [e.kind for e in act(w, bob.sign(HarvestRadiation()))] == ["domain.radiation_harvested"]


def test_only_the_owner_turns_an_instance_back_on_and_only_when_the_payer_can_pay():
    w, alice, bob = make_world()
    install_many(w, alice, EMIT, manifest("ticker", subs=TICK, max_gas=3_000_000), ["t"])
    set_balance(w, "alice", electricity=0)
    assert [e.kind for e in w.step_with_modules()] == ["module.call_failed", "module.deactivated"]
    w.end_block()
    w.begin_block(2, 2_000)
    set_balance(w, "alice", electricity=20, data=0)  # enough for action fees, not for the instance's calls
    reason = rejection(act(w, bob.sign(SetModuleInstanceActive(instance_id="t", active=True))))
    assert reason == "only the owner 'alice' may turn instance 't' on or off"
    reason = rejection(act(w, alice.sign(SetModuleInstanceActive(instance_id="t", active=True))))
    need_data = 1 + gas_fee(3_000_000, WorldParams().gas_price_per_mfuel)
    assert reason.startswith(f"cannot activate instance 't': its payer 'alice' must hold at least {need_data} data "
                             "and 1 electricity")
    assert "transfer resources to it or harvest first" in reason
    assert "unknown instance" in rejection(act(w, alice.sign(SetModuleInstanceActive(instance_id="nope", active=True))))
    assert "already inactive" in rejection(act(w, alice.sign(SetModuleInstanceActive(instance_id="t", active=False))))
    assert w.step_with_modules() == []  # still off
    w.end_block()
    w.begin_block(3, 3_000)
    act(w, bob.sign(TransferResource(to="alice", kind="data", amount=500)))
    [changed] = act(w, alice.sign(SetModuleInstanceActive(instance_id="t", active=True)))
    assert changed.kind == "module.activation_changed"
    assert changed.data == {"action_id": changed.data["action_id"], "agent_id": "alice", "instance_id": "t",
                            "active": True, "fee": w.action_fee(alice.sign(
                                SetModuleInstanceActive(instance_id="t", active=True), nonce=1))}
    assert w.get_instance("t").active is True
    assert [e.kind for e in w.step_with_modules()] == ["module.called", "module.runtime_charged", "module.emitted"]
    # the owner may also turn it off, which needs only the action fee
    [off] = act(w, alice.sign(SetModuleInstanceActive(instance_id="t", active=False)))
    assert off.data["active"] is False and w.get_instance("t").active is False


def test_deactivation_is_deterministic():
    def run() -> tuple[bytes, list[bytes]]:
        w, alice, bob = make_world()
        subs = [*TICK, Subscription(kind="domain.radiation_harvested")]
        install_many(w, alice, EMIT, manifest("ticker", subs=subs), ["a", "b"])
        set_balance(w, "alice", electricity=3)  # pays a few calls, then runs dry
        w.step_with_modules()
        for _ in range(4):
            act(w, bob.sign(HarvestRadiation()))
        return w.end_block().state_root, w.journal_raw()

    (root1, journal1), (root2, journal2) = run(), run()
    assert root1 == root2 and journal1 == journal2
    assert any(b"module.deactivated" in raw for raw in journal1)


@pytest.fixture
def captured(monkeypatch):
    """Capture structlog output at every level, whatever other tests configured."""
    old = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
                        cache_logger_on_first_use=False)
    monkeypatch.setattr(router, "log", structlog.get_logger(router.__name__))
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**old)


def test_failure_logs_are_limited_per_block_and_summarised(captured):
    w, alice, bob = make_world()
    n = router.MAX_FAILURE_LOGS_PER_BLOCK + 5
    bad = const_module(b"\xc1")  # invalid output: billed, never deactivated
    install_many(w, alice, bad, manifest("bad", subs=TICK), [f"b{i:02d}" for i in range(n)])
    w.end_block()
    captured.clear()
    for height in (2, 3, 4):
        w.begin_block(height, height * 1_000)
        failures = [e for e in w.step_with_modules() if e.kind == "module.call_failed"]
        assert len(failures) == n  # the journal keeps every failure
        w.end_block()
    w.begin_block(5, 5_000)  # reports height 4's suppressed failures
    lines = [e for e in captured if e["event"] == "module_call_failed"]
    summaries = [e for e in captured if e["event"] == "module_call_failures_suppressed"]
    assert len(lines) + len(summaries) == len(captured)  # nothing else was logged
    for height in (2, 3, 4):
        mine = [e for e in lines if e["height"] == height]
        assert len(mine) == router.MAX_FAILURE_LOGS_PER_BLOCK
        assert [e["instance_id"] for e in mine] == [f"b{i:02d}" for i in range(router.MAX_FAILURE_LOGS_PER_BLOCK)]
        assert {e["code"] for e in mine} == {"INVALID_OUTPUT"} and mine[0]["module_id"] == "bad"
    assert summaries == [{"event": "module_call_failures_suppressed", "log_level": "info", "height": h, "count": 5,
                          "by_code": {"INVALID_OUTPUT": 5}} for h in (2, 3, 4)]
    # the summary comes when the next block begins, before that block's own failure lines
    first_line_of_3 = next(i for i, e in enumerate(captured) if e["event"] == "module_call_failed" and e["height"] == 3)
    assert captured.index(summaries[0]) < first_line_of_3


def test_a_quiet_block_logs_no_summary(captured):
    w, alice, bob = make_world()
    install_many(w, alice, EMIT, manifest("ok", subs=TICK), ["fine"])
    w.end_block()
    captured.clear()
    for height in (2, 3):
        w.begin_block(height, height * 1_000)
        w.step_with_modules()
        w.end_block()
    assert captured == []
