"""Billing of module calls and lifecycle fees (docs/module-abi.md, "Billing"): every call is billed to the
artifact owner as module.runtime_charged, including a gas fee for the fuel it used; a payer who
cannot pay makes the call fail with INSUFFICIENT_FUNDS and nothing of its output is applied; deploy,
compile and install cost electricity."""

from __future__ import annotations

import math

import msgspec

from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import (
    CompileModuleArtifactFromSource,
    DeployModuleArtifact,
    HarvestRadiation,
    InstallModuleFromArtifact,
    SetModuleInstanceActive,
    encode_signed_action,
)
from agent_world_runtime.crypto import sha256
from agent_world_runtime.modules.router import compute_fee, electricity_fee, gas_fee
from agent_world_runtime.modules.sandbox import wat_to_wasm
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner
from tests.test_runtime_modules import CHAIN, const_module, deploy, example_package, manifest

PRICE = WorldParams().gas_price_per_mfuel  # data per million fuel
STATEFUL_EMIT = msgspec.msgpack.encode({"new_state": b"S" * 10, "emits": [{"kind": "tick.seen", "data": {"n": 1}}]})


def setup(electricity: int = 1000, data: int = 1000, **params: int) -> tuple[World, AgentSigner, AgentSigner]:
    """Alice and Bob exist from genesis with these balances; harvests are not rate-limited
    (``harvest_interval=0``) unless ``params`` says otherwise, so tests can route many in a block."""
    alice = AgentSigner.from_seed("alice", b"\x01" * 32, CHAIN)
    bob = AgentSigner.from_seed("bob", b"\x02" * 32, CHAIN)
    w = World.from_genesis(CHAIN, WorldParams(**{"harvest_interval": 0, **params}),
                           agents=[alice.genesis_agent(electricity, data), bob.genesis_agent(electricity, data)])
    w.begin_block(1, 1_000)
    return w, alice, bob


def deploy_signed(who: AgentSigner, wasm: bytes, m):
    return who.sign(DeployModuleArtifact(wasm_hash=sha256(wasm).hex(), wasm_bytes=wasm, manifest=m))


def act(w: World, signed) -> list:
    return w.apply_action(signed, compute_action_id(signed))


def install(w: World, who: AgentSigner, wasm: bytes, m) -> str:
    [deployed] = deploy(w, who, wasm, m)
    assert deployed.kind == "module.artifact_deployed", deployed.data
    [installed] = act(w, who.sign(InstallModuleFromArtifact(wasm_hash=sha256(wasm).hex())))
    assert installed.kind == "module.installed", installed.data
    return installed.data["instance_id"]


def test_fee_formulas():
    assert compute_fee(0, 0, 0, 0) == 0
    assert compute_fee(1, 1024, 0, 0) == 2
    assert compute_fee(1025, 2049, 3, 4) == 2 + 3 + 6 + 4
    assert electricity_fee(0, 0, False) == 1
    assert electricity_fee(2, 3, True) == 7
    assert gas_fee(0, 1) == 0
    assert gas_fee(1, 1) == 1  # rounded up
    assert gas_fee(1_000_000, 1) == 1
    assert gas_fee(1_000_001, 1) == 2
    assert gas_fee(2_500_000, 3) == 8  # 7.5 -> 8
    assert gas_fee(50_000_000, 0) == 0
    assert gas_fee(3, 1_000_000) == 3


def expected_gas_fee(gas_used: int, price: int) -> int:
    """ceil(gas_used * price / 1_000_000), computed exactly without the implementation's trick."""
    whole, rest = divmod(gas_used * price, 1_000_000)
    return whole + (1 if rest else 0)


def test_every_call_is_billed_to_the_artifact_owner():
    w, alice, bob = setup()
    iid = install(w, alice, const_module(STATEFUL_EMIT), manifest("biller"))
    before_alice, before_bob = w.get_agent("alice"), w.get_agent("bob")
    harvested, called, charged, emitted = act(w, bob.sign(HarvestRadiation()))
    assert [harvested.kind, called.kind, charged.kind, emitted.kind] == [
        "domain.radiation_harvested", "module.called", "module.runtime_charged", "module.emitted"]
    d = charged.data
    assert d["payer_agent_id"] == "alice" and d["module_id"] == "biller" and d["trace_id"] == called.data["trace_id"]
    assert (d["output_bytes"], d["effect_count"], d["emit_count"]) == (len(STATEFUL_EMIT), 0, 1)
    assert d["compute_fee_kind"] == "data" and d["electricity_fee_kind"] == "electricity"
    assert d["compute_fee_amount"] == math.ceil(d["input_bytes"] / 1024) + math.ceil(len(STATEFUL_EMIT) / 1024) + 1
    assert d["electricity_fee_amount"] == 1 + 0 + 1 + 1  # base + one emit + new state
    assert d["gas_used"] == called.data["gas_used"] > 0
    assert d["gas_fee_kind"] == "data"
    assert d["gas_fee_amount"] == expected_gas_fee(d["gas_used"], PRICE) >= 1
    after_alice = w.get_agent("alice")
    assert after_alice.data == before_alice.data - d["compute_fee_amount"] - d["gas_fee_amount"]
    assert after_alice.electricity == before_alice.electricity - d["electricity_fee_amount"]
    assert w.get_agent("bob").electricity == before_bob.electricity + 5 - harvested.data["fee"]  # the actor pays its action fee only
    assert w.module_state(iid) == b"S" * 10


def test_payer_who_cannot_pay_fails_the_call_and_nothing_is_applied():
    params = WorldParams()
    w, alice, bob = setup()
    iid = install(w, alice, const_module(STATEFUL_EMIT), manifest("biller"))
    set_balance(w, "alice", electricity=1)  # the base fee, not the full fee (3)
    harvested, failed, charged = act(w, bob.sign(HarvestRadiation()))
    assert failed.kind == "module.call_failed" and failed.data["code"] == "INSUFFICIENT_FUNDS"
    assert "electricity fee is 3, the payer has 1" in failed.data["detail"]
    assert charged.kind == "module.runtime_charged" and charged.data["electricity_fee_amount"] == 1  # base fee
    assert (charged.data["output_bytes"], charged.data["emit_count"]) == (0, 0)
    assert w.module_state(iid) is None and w.events(kind_prefix="module.emitted") == []
    assert charged.data["gas_fee_amount"] == expected_gas_fee(charged.data["gas_used"], params.gas_price_per_mfuel)
    # Now alice cannot even pay the base fee: the call is not started, nothing is charged and the
    # instance is turned off.
    data_before = w.get_agent("alice").data
    harvested, failed, deactivated = act(w, bob.sign(HarvestRadiation()))
    assert failed.data["code"] == "INSUFFICIENT_FUNDS" and failed.data["gas_used"] == 0
    assert "cannot pay the pre-call fees" in failed.data["detail"]
    assert deactivated.kind == "module.deactivated" and deactivated.data["instance_id"] == iid
    assert w.get_agent("alice").electricity == 0 and w.get_agent("alice").data == data_before


def test_failed_calls_are_billed_the_base_fee():
    w, alice, bob = setup()
    trapper = const_module(b"\xc1")  # invalid output
    install(w, alice, trapper, manifest("bad"))
    before = w.get_agent("alice")
    _, failed, charged = act(w, bob.sign(HarvestRadiation()))
    assert failed.data["code"] == "INVALID_OUTPUT"
    assert charged.data["electricity_fee_amount"] == 1
    assert charged.data["compute_fee_amount"] == math.ceil(charged.data["input_bytes"] / 1024)
    gas = expected_gas_fee(charged.data["gas_used"], PRICE)
    assert charged.data["gas_fee_amount"] == gas >= 1
    assert w.get_agent("alice").electricity == before.electricity - 1
    assert w.get_agent("alice").data == before.data - charged.data["compute_fee_amount"] - gas


def test_deploy_install_and_compile_pay_their_action_fee_with_the_kind_surcharge():
    p = WorldParams()
    w, alice, bob = setup()
    wasm = const_module(b"\x80")
    start = w.get_agent("alice").electricity

    def fee(signed) -> int:
        return w.action_fee(signed)

    deploy_action = deploy_signed(alice, wasm, manifest("feed"))
    [deployed] = act(w, deploy_action)
    assert deployed.data["fee"] == fee(deploy_action) == p.fee_base + math.ceil(
        len(encode_signed_action(deploy_action)) * p.fee_per_kib / 1024) + p.module_deploy_fee
    assert w.get_agent("alice").electricity == start - deployed.data["fee"]
    install_action = alice.sign(InstallModuleFromArtifact(wasm_hash=sha256(wasm).hex()))
    [installed] = act(w, install_action)
    assert installed.data["fee"] == fee(install_action) and installed.data["fee"] > p.module_install_fee
    assert w.get_agent("alice").electricity == start - deployed.data["fee"] - installed.data["fee"]
    compile_action = bob.sign(CompileModuleArtifactFromSource(module_id="move_counter",
                                                              source_package=example_package("move_counter")))
    [compiled] = act(w, compile_action)
    assert compiled.kind == "module.artifact_compiled" and compiled.data["fee"] == fee(compile_action)
    assert compiled.data["fee"] > p.module_compile_fee
    assert w.get_agent("bob").electricity == start - compiled.data["fee"]


def test_a_lifecycle_action_that_cannot_pay_its_fee_is_refused_and_writes_nothing():
    w, alice, bob = setup(electricity=3)
    wasm = const_module(b"\x80")
    signed = deploy_signed(alice, wasm, manifest("poor"))
    refusal = w.check_action(signed)
    assert refusal is not None and refusal.code == "insufficient_fee"
    [rejected] = act(w, signed)
    assert rejected.kind == "domain.action_rejected" and rejected.data["fee"] == 0
    assert rejected.data["reason"] == refusal.message
    assert w.module_status()["artifacts"] == [] and w.get_agent("alice").electricity == 3
    assert w.get_agent("alice").last_nonce == 0  # an unpaid action does not use its nonce


def test_a_rejected_deploy_still_pays_for_its_bytes():
    w, alice, bob = setup()
    junk = b"\x00asm" + b"\xff" * 20_000  # not a module; 20 KB of work for every validator
    signed = deploy_signed(alice, junk, manifest("junk"))
    [rejected] = act(w, signed)
    assert rejected.kind == "domain.action_rejected"
    assert rejected.data["fee"] == w.action_fee(signed) >= 20 + WorldParams().module_deploy_fee
    assert w.get_agent("alice").electricity == 1000 - rejected.data["fee"]


def test_replay_applies_the_same_charges():
    def run() -> tuple[bytes, list[bytes]]:
        w, alice, bob = setup(electricity=40)
        install(w, alice, const_module(STATEFUL_EMIT), manifest("biller"))
        for _ in range(12):  # runs alice out of electricity part way
            act(w, bob.sign(HarvestRadiation()))
        return w.end_block().state_root, w.journal_raw()

    (root1, journal1), (root2, journal2) = run(), run()
    assert root1 == root2 and journal1 == journal2
    assert any(b"INSUFFICIENT_FUNDS" in raw for raw in journal1)


def burn_module(iterations: int, output: bytes = b"\x80") -> bytes:
    """A module whose entry point loops ``iterations`` times, then returns ``output``."""
    data = "".join(f"\\{b:02x}" for b in output)
    wat = f"""(module
      (memory (export "memory") 1)
      (data (i32.const 16) "{data}")
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "reduce") (param i32 i32) (result i64) (local $i i32)
        (block $done (loop $again
          (br_if $done (i32.ge_u (local.get $i) (i32.const {iterations})))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $again)))
        (i64.const {(16 << 32) | len(output)})))"""
    return wat_to_wasm(wat)


def set_balance(w: World, agent_id: str, **balances: int) -> None:
    """Test setup: give ``agent_id`` exactly these balances (electricity=, data=)."""
    state = w._state
    state.put_agent(msgspec.structs.replace(state.agents[agent_id], **balances))


def test_gas_fee_follows_the_fuel_used():
    price = 7_000  # data per million fuel: 0.007 data per fuel, so the rounding shows
    w, alice, bob = setup(1000, 100_000, gas_price_per_mfuel=price)
    seen = []
    for n, iterations in enumerate((0, 10, 1_000, 20_000, 150_000)):
        iid = install(w, alice, burn_module(iterations), manifest(f"burn{n}", max_gas=10_000_000))
        before = w.get_agent("alice")
        events = act(w, bob.sign(HarvestRadiation()))
        [charged] = [e.data for e in events if e.kind == "module.runtime_charged"]
        assert charged["instance_id"] == iid and charged["gas_fee_kind"] == "data"
        assert charged["gas_fee_amount"] == expected_gas_fee(charged["gas_used"], price)
        assert w.get_agent("alice").data == before.data - charged["compute_fee_amount"] - charged["gas_fee_amount"]
        seen.append((charged["gas_used"], charged["gas_fee_amount"]))
        # later instances are routed too; take each out of routing once it was measured
        act(w, alice.sign(SetModuleInstanceActive(instance_id=iid, active=False)))
    gas = [g for g, _ in seen]
    assert gas == sorted(gas) and len(set(gas)) == len(gas)  # more iterations, more fuel
    assert seen[-1][1] > seen[0][1] >= 1  # a bigger loop pays more; any fuel pays at least 1


def test_a_call_starts_only_if_the_payer_can_pay_its_worst_case_gas():
    price = 1_000_000  # one data per fuel
    max_gas = 50_000  # above the fixed per-call charge (abi.CALL_BASE_GAS)
    w, alice, bob = setup(1000, 1_000_000, gas_price_per_mfuel=price)
    install(w, alice, burn_module(0), manifest("cheap", max_gas=max_gas))
    events = act(w, bob.sign(HarvestRadiation()))
    [charged] = [e.data for e in events if e.kind == "module.runtime_charged"]
    base_data = charged["compute_fee_amount"] - 1  # the output (b"\x80") adds one KiB block
    assert charged["gas_used"] < max_gas  # the call itself is far cheaper than its limit
    # Enough for this call's real fee, one short of base + gas fee of max_gas: not started.
    set_balance(w, "alice", data=base_data + max_gas - 1)
    _, failed, deactivated = act(w, bob.sign(HarvestRadiation()))
    assert failed.data["code"] == "INSUFFICIENT_FUNDS" and failed.data["gas_used"] == 0
    assert f"data fee (compute + gas) is {base_data + max_gas}" in failed.data["detail"]
    assert deactivated.kind == "module.deactivated"
    assert w.get_agent("alice").data == base_data + max_gas - 1  # nothing charged


def test_a_trap_is_billed_the_gas_fee_of_max_gas():
    w, alice, bob = setup()
    max_gas = 2_500_000
    install(w, alice, burn_module(10**9), manifest("spin", max_gas=max_gas))
    before = w.get_agent("alice")
    _, failed, charged = act(w, bob.sign(HarvestRadiation()))
    assert failed.data["code"] == "OUT_OF_GAS" and charged.data["gas_used"] == max_gas
    assert charged.data["gas_fee_amount"] == expected_gas_fee(max_gas, PRICE) == 25  # 2.5 M fuel at 10 per M
    assert charged.data["output_bytes"] == 0 and charged.data["electricity_fee_amount"] == 1
    assert w.get_agent("alice").data == before.data - charged.data["compute_fee_amount"] - 25


def test_unpayable_successful_call_is_billed_base_plus_gas_and_stays_active():
    w, alice, bob = setup()
    iid = install(w, alice, const_module(STATEFUL_EMIT), manifest("biller"))
    set_balance(w, "alice", electricity=1)  # the base electricity fee, not the full fee (3)
    before = w.get_agent("alice")
    _, failed, charged = act(w, bob.sign(HarvestRadiation()))
    assert failed.data["code"] == "INSUFFICIENT_FUNDS" and failed.data["gas_used"] == charged.data["gas_used"] > 0
    assert charged.data["gas_fee_amount"] == expected_gas_fee(charged.data["gas_used"], PRICE)
    assert charged.data["compute_fee_amount"] == math.ceil(charged.data["input_bytes"] / 1024)
    after = w.get_agent("alice")
    assert (after.electricity, after.data) == (0, before.data - charged.data["compute_fee_amount"]
                                               - charged.data["gas_fee_amount"])
    assert w.get_instance(iid).active  # the call was paid for: no deactivation
