"""Hostile modules, each through a World (docs/module-abi.md, "Limits and failures"): every one fails with a
deterministic code, nothing of its output is applied, the world keeps running, and two worlds fed
the same actions end with the same state root."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_world_runtime import World
from agent_world_runtime.actions import HarvestRadiation, MoveAgent
from agent_world_runtime.crypto import sha256
from agent_world_runtime.modules.manifest import Subscription
from agent_world_runtime.modules.sandbox import wat_to_wasm
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner
from tests.test_runtime_modules import CHAIN, apply, deploy, deploy_and_install, kinds, manifest, rejection, tick

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "modules"
TICK = [Subscription(kind="tick", stage="tick")]


def hostile(name: str) -> bytes:
    return wat_to_wasm((EXAMPLES / f"hostile_{name}.wat").read_text())


ALICE_SEED = b"\x01" * 32


def alice_world(params: WorldParams | None = None, **kwargs) -> tuple[World, AgentSigner]:
    """A world (block 1 open) whose genesis agent alice holds 1000 electricity and 1000 data."""
    alice = AgentSigner.from_seed("alice", ALICE_SEED, CHAIN)
    w = World.from_genesis(CHAIN, params or WorldParams(grid_size=100), agents=[alice.genesis_agent(1000, 1000)],
                           **kwargs)
    w.begin_block(1, 1_000)
    return w, alice


def new_world() -> tuple[World, AgentSigner]:
    return alice_world()


def run_tick_module(name: str, **limits) -> tuple[World, AgentSigner, str, dict]:
    """Install hostile module ``name`` on the tick stage, run one tick, return its failure event data."""
    w, alice = new_world()
    iid = deploy_and_install(w, alice, hostile(name), manifest(f"hostile_{name}", subs=TICK, **limits))
    [failed] = tick(w)
    assert failed.kind == "module.call_failed", failed.data
    return w, alice, iid, failed.data


def assert_world_carries_on(w: World, alice: AgentSigner) -> None:
    assert kinds(apply(w, alice.sign(MoveAgent(to=(1, 0, 0))))) == ["domain.agent_moved"]
    assert len(w.end_block().state_root) == 32


def test_infinite_loop_runs_out_of_gas():
    w, alice, iid, failed = run_tick_module("loop", max_gas=300_000)
    assert failed["code"] == "OUT_OF_GAS" and failed["gas_used"] == 300_000
    assert_world_carries_on(w, alice)


def test_memory_bomb_hits_the_memory_limit():
    w, alice, iid, failed = run_tick_module("memory", max_mem_bytes=2 << 20)
    assert failed["code"] == "MEMORY_LIMIT" and str(2 << 20) in failed["detail"]
    assert w.module_state(iid) is None
    assert_world_carries_on(w, alice)


def test_stack_overflow_traps():
    w, alice, iid, failed = run_tick_module("stack", max_gas=5_000_000)
    assert failed["code"] == "TRAP" and failed["detail"] == "reduce trapped: STACK_OVERFLOW"
    assert failed["gas_used"] == 5_000_000  # every trap is billed max_gas
    assert_world_carries_on(w, alice)


def test_huge_output_is_rejected_before_reading():
    w, alice, iid, failed = run_tick_module("output", max_output_bytes=4096)
    assert failed["code"] == "OUTPUT_TOO_LARGE" and "16777216 bytes; the limit is 4096" in failed["detail"]
    assert_world_carries_on(w, alice)


def test_too_many_effects():
    w, alice, iid, failed = run_tick_module("effects", max_effects=4)
    assert failed["code"] == "EFFECT_LIMIT_EXCEEDED" and "1000 effects; the limit is 4" == failed["detail"]
    assert w.events(kind_prefix="governance.") == [] and w.events(kind_prefix="effect.") == []
    assert_world_carries_on(w, alice)


def test_too_many_emits():
    w, alice, iid, failed = run_tick_module("emits", max_emits=4)
    assert failed["code"] == "EMIT_LIMIT_EXCEEDED" and "1000 emits; the limit is 4" == failed["detail"]
    assert w.events(kind_prefix="module.emitted") == []
    assert_world_carries_on(w, alice)


def test_trap_mid_call_discards_the_half_built_output():
    w, alice, iid, failed = run_tick_module("trap", max_gas=100_000)
    assert failed["code"] == "TRAP" and failed["detail"] == "reduce trapped: INTEGER_DIVISION_BY_ZERO"
    assert failed["gas_used"] == 100_000
    assert w.module_state(iid) is None
    assert_world_carries_on(w, alice)


def test_host_function_import_is_rejected_at_deploy():
    w, alice = new_world()
    reason = rejection(deploy(w, alice, hostile("import"), manifest("hostile_import", subs=TICK)))
    assert reason == "module imports env.host_log; modules must import nothing (the ABI has no host functions)"
    assert w.module_status()["artifacts"] == []
    assert_world_carries_on(w, alice)


@pytest.mark.parametrize("blob", [b"", b"\x00asm", b"\x00asm\x01\x00\x00\x00\xff\xff", b"MZ\x90\x00" * 64, b"\x00asm\x02\x00\x00\x00"])
def test_malformed_bytes_are_rejected_at_deploy(blob):
    w, alice = new_world()
    [rejected] = deploy(w, alice, blob, manifest("junk", subs=TICK))
    reason = rejection([rejected])
    assert reason.startswith("not a valid WebAssembly module:"), reason
    fee = rejected.data["fee"]  # paid before validation: the bytes cost every validator work
    assert fee >= 1 + WorldParams().module_deploy_fee
    assert w.module_status()["artifacts"] == [] and w.get_agent("alice").electricity == 1000 - fee
    assert_world_carries_on(w, alice)


def test_nan_results_are_canonical_and_identical_across_worlds():
    roots, states = [], []
    for _ in range(2):
        w, alice = new_world()
        iid = deploy_and_install(w, alice, hostile("nan"), manifest("hostile_nan", subs=TICK))
        assert kinds(tick(w)) == ["module.called"]
        states.append(w.module_state(iid))
        roots.append(w.end_block().state_root)
    # Without canonicalization the signalling NaN's payload would survive (0x7fe000xx); with it,
    # every node stores the canonical quiet NaN 0x7fc00000.
    assert states[0] == states[1] == (0x7FC00000).to_bytes(4, "little")
    assert roots[0] == roots[1]


def test_exceeding_the_call_rate():
    w, alice = new_world()
    deploy_and_install(w, alice, hostile("rate"), manifest("hostile_rate", subs=[Subscription(kind="domain.*")],
                                                           max_call_rate=2))
    results = [apply(w, alice.sign(HarvestRadiation()))[1].data for _ in range(3)]
    assert [r.get("code") for r in results] == [None, None, "CALL_RATE_EXCEEDED"]
    assert results[2]["gas_used"] == 0 and "the limit is 2" in results[2]["detail"]
    w.end_block()
    w.begin_block(2, 2_000)
    assert apply(w, alice.sign(HarvestRadiation()))[1].kind == "module.called"  # per block, not forever


def test_load_failure_is_recorded_and_the_world_continues():
    from agent_world_runtime.modules.sandbox import ModuleValidationError, Sandbox

    class RefusingSandbox(Sandbox):
        refuse: set[str] = set()

        def compile(self, wasm, wasm_hash=None):
            if (wasm_hash or sha256(wasm).hex()) in self.refuse:
                raise ModuleValidationError("engine refused the artifact")
            return super().compile(wasm, wasm_hash)

    sandbox = RefusingSandbox()
    w, alice = alice_world(WorldParams(), sandbox=sandbox)
    wasm = hostile("rate")
    deploy_and_install(w, alice, wasm, manifest("loadfail", subs=TICK))
    sandbox.refuse.add(sha256(wasm).hex())
    load_failed, call_failed, charged = w.step_with_modules()
    assert charged.kind == "module.runtime_charged" and charged.data["electricity_fee_amount"] == 1  # not free
    assert load_failed.kind == "module.load_failed"
    assert load_failed.data["wasm_hash"] == sha256(wasm).hex() and "engine refused" in load_failed.data["reason"]
    assert call_failed.kind == "module.call_failed" and call_failed.data["code"] == "LOAD_FAILED"
    assert_world_carries_on(w, alice)


def test_the_worlds_module_limits_max_caps_a_generous_manifest():
    """A manifest asking for 10 M fuel runs under the world's genesis cap of 200 k fuel."""
    from agent_world_runtime.modules.manifest import ModuleLimitsMax

    w, alice = alice_world(WorldParams(grid_size=100, module_limits_max=ModuleLimitsMax(max_gas=200_000)))
    deploy_and_install(w, alice, hostile("loop"), manifest("hostile_loop", subs=TICK, max_gas=10_000_000))
    [failed] = tick(w)
    assert failed.kind == "module.call_failed"
    assert failed.data["code"] == "OUT_OF_GAS" and failed.data["gas_used"] == 200_000
    assert_world_carries_on(w, alice)


def test_compile_time_bomb_is_rejected_at_deploy_with_the_limit_named():
    from benchmarks.wasm_gen import bomb

    w, alice = new_world()
    wasm = bomb("nest_loop", 20_000)
    [rejected] = deploy(w, alice, wasm, manifest("bomb", subs=TICK))
    assert rejection([rejected]) == (
        "module exceeds MAX_NESTING_DEPTH: control nesting depth in function 2 is 257, the limit is 256; "
        "flatten the control flow or split the function")
    # the sender paid for every byte before the check ran: resending costs the fee again
    fee = rejected.data["fee"]
    assert fee >= len(wasm) // 1024 + WorldParams().module_deploy_fee
    assert w.module_status()["artifacts"] == [] and w.get_agent("alice").electricity == 1000 - fee
    assert_world_carries_on(w, alice)


def test_simd_module_is_rejected_at_deploy():
    w, alice = new_world()
    wasm = wat_to_wasm('(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) i32.const 0)'
                       ' (func (export "reduce") (param i32 i32) (result i64) (drop (f64x2.sqrt (v128.const f64x2 1 2)))'
                       ' i64.const 0))')
    reason = rejection(deploy(w, alice, wasm, manifest("simd", subs=TICK)))
    assert reason == "function 1 uses a SIMD instruction: SIMD is disabled"
    assert_world_carries_on(w, alice)
