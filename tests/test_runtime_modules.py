"""World runtime: module lifecycle (compile, deploy, install), routing, the example modules, hostile
modules and the checks on module output."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import (
    CompileModuleArtifactFromSource,
    DeployModuleArtifact,
    HarvestRadiation,
    InstallModuleFromArtifact,
    ModuleSourcePackage,
    MoveAgent,
)
from agent_world_runtime.crypto import sha256
from agent_world_runtime.modules.manifest import ModuleLimits, ModuleManifest, Subscription
from agent_world_runtime.modules.sandbox import wat_to_wasm
from agent_world_runtime.modules.source import package_from_files
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner
from tests.worlds import create, genesis_world

CHAIN = "module-chain"
#: Harvests are the tests' trigger event, several per block: no harvest interval here.
PARAMS = WorldParams(grid_size=100, harvest_interval=0)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "modules"


def example_package(name: str) -> ModuleSourcePackage:
    return package_from_files(
        [EXAMPLES / f"{name}.wat", EXAMPLES / f"{name}.manifest.json"], EXAMPLES / f"{name}.manifest.json"
    )


def const_module(output: bytes, *, entry: str = "reduce", packed: int | None = None) -> bytes:
    """A module whose entry point returns ``output`` (from a data segment) whatever the input."""
    base = (16 + len(output) + 7) // 8 * 8
    pages = (base + 65535) // 65536
    data = "".join(f"\\{b:02x}" for b in output)
    result = packed if packed is not None else (16 << 32) | len(output)
    wat = f"""(module
      (memory (export "memory") {pages})
      (data (i32.const 16) "{data}")
      (func (export "alloc") (param $n i32) (result i32) (local $need i32)
        (local.set $need (i32.sub (i32.shr_u (i32.add (i32.add (i32.const {base}) (local.get $n)) (i32.const 65535))
                                             (i32.const 16)) (memory.size)))
        (if (i32.gt_s (local.get $need) (i32.const 0)) (then (drop (memory.grow (local.get $need)))))
        (i32.const {base}))
      (func (export "{entry}") (param i32 i32) (result i64) (i64.const {result})))"""
    return wat_to_wasm(wat)


def manifest(module_id: str, *, kind: str = "reducer", subs=None, **limits) -> ModuleManifest:
    return ModuleManifest(
        module_id=module_id,
        version="1.0.0",
        kind=kind,
        exports=["reduce" if kind == "reducer" else "call"],
        subscriptions=subs if subs is not None else [Subscription(kind="domain.radiation_harvested")],
        limits=ModuleLimits(**limits),
    )


def apply(world: World, signed) -> list:
    """Apply ``signed``; returns its events without ``module.runtime_charged`` (billing has its own
    tests in test_modules_billing.py)."""
    return [e for e in world.apply_action(signed, compute_action_id(signed)) if e.kind != "module.runtime_charged"]


def deploy(world: World, who: AgentSigner, wasm: bytes, m: ModuleManifest) -> list:
    return apply(world, who.sign(DeployModuleArtifact(wasm_hash=sha256(wasm).hex(), wasm_bytes=wasm, manifest=m)))


def deploy_and_install(world: World, who: AgentSigner, wasm: bytes, m: ModuleManifest, instance_id: str = "") -> str:
    [published] = deploy(world, who, wasm, m)
    assert published.kind == "module.artifact_deployed", published.data
    [installed] = apply(world, who.sign(InstallModuleFromArtifact(wasm_hash=sha256(wasm).hex(), instance_id=instance_id)))
    assert installed.kind == "module.installed", installed.data
    return installed.data["instance_id"]


def tick(world: World) -> list:
    """Run the block's tick step; returns its events without ``module.runtime_charged``."""
    return [e for e in world.step_with_modules() if e.kind != "module.runtime_charged"]


def rejection(events) -> str:
    assert [e.kind for e in events] == ["domain.action_rejected"], events
    return events[0].data["reason"]


def kinds(events) -> list[str]:
    return [e.kind for e in events]


def funded(world: World, name: str, seed: bytes) -> AgentSigner:
    """Create ``name`` in the open block with 1000 electricity and 1000 data (the bank pays)."""
    a = AgentSigner.from_seed(name, seed, CHAIN)
    [created] = create(world, a, electricity=1000, data=1000)
    assert created.kind == "domain.agent_created", created.data
    return a


@pytest.fixture
def world() -> World:
    w = genesis_world(CHAIN, PARAMS)
    w.begin_block(1, 1_000)
    return w


@pytest.fixture
def alice(world) -> AgentSigner:
    return funded(world, "alice", b"\x01" * 32)


@pytest.fixture
def bob(world) -> AgentSigner:
    return funded(world, "bob", b"\x02" * 32)


# -- the example move counter, end to end ---------------------------------------------------------

def run_move_counter_world() -> tuple[World, list[bytes], list]:
    w = genesis_world(CHAIN, PARAMS)
    roots, milestones = [], []
    w.begin_block(1, 1_000)
    a = funded(w, "alice", b"\x01" * 32)
    b = funded(w, "bob", b"\x02" * 32)
    [compiled] = apply(w, a.sign(CompileModuleArtifactFromSource(module_id="move_counter",
                                                                 source_package=example_package("move_counter"))))
    assert compiled.kind == "module.artifact_compiled", compiled.data
    [installed] = apply(w, a.sign(InstallModuleFromArtifact(wasm_hash=compiled.data["wasm_hash"])))
    assert installed.data["instance_id"] == "move_counter@alice"
    roots.append(w.end_block().state_root)
    for height in range(2, 5):
        w.begin_block(height, height * 1_000)
        for step in range(5):
            x = (height - 2) * 5 + step + 1
            for who in (a, b):
                for event in apply(w, who.sign(MoveAgent(to=(x, 0, 0)))):
                    if event.kind == "module.emitted":
                        milestones.append((height, event.data["kind"], event.data["data"]))
        roots.append(w.end_block().state_root)
    return w, roots, milestones


def test_move_counter_counts_and_emits_milestones_identically_on_fresh_worlds():
    runs = [run_move_counter_world() for _ in range(3)]
    w, roots, milestones = runs[0]
    assert milestones == [
        (3, "counter.milestone", {"agent_id": "alice", "moves": 10}),
        (3, "counter.milestone", {"agent_id": "bob", "moves": 10}),
    ]
    # State: per-agent records [len][id][u32 LE count], first-seen order.
    assert w.module_state("move_counter@alice") == b"\x05alice" + (15).to_bytes(4, "little") + b"\x03bob" + (15).to_bytes(4, "little")
    stats = w.stats()
    assert stats["module_calls"] == 30 and stats["module_call_failures"] == 0 and stats["module_emits"] == 2
    for other_world, other_roots, other_milestones in runs[1:]:
        assert other_roots == roots and other_milestones == milestones
        assert other_world.journal_raw() == w.journal_raw()
    status = w.module_status()
    assert [a["module_id"] for a in status["artifacts"]] == ["move_counter"]
    assert status["instances"][0]["owner_agent_id"] == "alice" and status["instances"][0]["state_bytes"] == 18


def test_module_call_events_carry_trace_and_gas(world, alice):
    [compiled] = apply(world, alice.sign(CompileModuleArtifactFromSource(
        module_id="move_counter", source_package=example_package("move_counter"))))
    apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=compiled.data["wasm_hash"])))
    moved, called = apply(world, alice.sign(MoveAgent(to=(1, 0, 0))))
    assert moved.kind == "domain.agent_moved" and called.kind == "module.called"
    assert called.data["trace_id"] == f"1/{moved.seq}/move_counter@alice"
    assert called.data["gas_used"] > 0 and called.data["module_id"] == "move_counter"


# -- compile from source ---------------------------------------------------------------------------

def compile_reason(world, who, module_id: str, files: dict[str, str], manifest_path: str = "m.json") -> str:
    pkg = ModuleSourcePackage(manifest_path=manifest_path, files=files)
    return rejection(apply(world, who.sign(CompileModuleArtifactFromSource(module_id=module_id, source_package=pkg))))


def test_compile_rejections(world, alice):
    good = example_package("move_counter").files
    wat, man = good["move_counter.wat"], good["move_counter.manifest.json"]
    assert "'..'" in compile_reason(world, alice, "move_counter", {"../x.wat": wat, "m.json": man})
    assert "must be relative" in compile_reason(world, alice, "move_counter", {"/etc/x.wat": wat, "m.json": man})
    assert "must be relative" in compile_reason(world, alice, "move_counter", {"a\\b.wat": wat, "m.json": man})
    assert "is not one of the package files" in compile_reason(world, alice, "move_counter", {"x.wat": wat}, "m.json")
    assert "does not match the action's module_id 'other'" in compile_reason(world, alice, "other", {"x.wat": wat, "m.json": man})
    assert "not a valid ModuleManifest" in compile_reason(world, alice, "move_counter", {"x.wat": wat, "m.json": "{"})
    assert "WAT does not compile" in compile_reason(world, alice, "move_counter", {"x.wat": "(module (func", "m.json": man})
    assert "include exactly one" in compile_reason(world, alice, "move_counter", {"a.wat": wat, "b.wat": wat, "m.json": man})
    big = "a" * (200 * 1024)
    assert "the limit is" in compile_reason(world, alice, "move_counter", {"x.wat": big, "m.json": man})
    assert world.module_status()["artifacts"] == []


# -- deploy and install rules ------------------------------------------------------------------

def test_deploy_rejections(world, alice):
    wasm = const_module(b"\x80")
    m = manifest("constant")
    bad_hash = DeployModuleArtifact(wasm_hash="00" * 32, wasm_bytes=wasm, manifest=m)
    assert "does not match sha256" in rejection(apply(world, alice.sign(bad_hash)))
    assert "not a valid WebAssembly module" in rejection(deploy(world, alice, b"\x00asm\x01\x00\x00\x00junk", m))
    importing = wat_to_wasm('(module (import "env" "f" (func)) (memory (export "memory") 1))')
    assert "imports env.f" in rejection(deploy(world, alice, importing, m))
    no_alloc = wat_to_wasm('(module (memory (export "memory") 1) (func (export "reduce") (param i32 i32) (result i64) i64.const 0))')
    assert "'alloc'" in rejection(deploy(world, alice, no_alloc, m))
    wrong_type = wat_to_wasm('(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) i32.const 0)'
                             ' (func (export "reduce") (param i32) (result i64) i64.const 0))')
    assert "the ABI needs (i32, i32) -> (i64)" in rejection(deploy(world, alice, wrong_type, m))
    assert "does not export 'call'" in rejection(deploy(world, alice, wasm, manifest("constant", kind="pure")))
    bad_stage = manifest("constant", subs=[Subscription(kind="move_agent", stage="pre_commit")])
    assert "stage 'pre_commit' is not supported" in rejection(deploy(world, alice, wasm, bad_stage))
    caps = msgspec.structs.replace(m, required_caps=["net.http"])
    assert "capability 'net.http' is not available" in rejection(deploy(world, alice, wasm, caps))
    assert "limits.max_gas must be positive" in rejection(deploy(world, alice, wasm, manifest("constant", max_gas=0)))
    assert "interface_version 2" in rejection(deploy(world, alice, wasm, msgspec.structs.replace(m, interface_version=2)))
    assert world.module_status()["artifacts"] == []


def test_artifacts_are_by_hash_and_never_replaced(world, alice, bob):
    v1, v2 = const_module(b"\x80"), const_module(b"\x81\xa5emits\x90")
    m1 = manifest("constant")
    iid = deploy_and_install(world, alice, v1, m1)
    assert "already exists" in rejection(deploy(world, alice, v1, manifest("constant", max_gas=7)))
    assert "version '1.0.0' is already published" in rejection(deploy(world, alice, v2, m1))
    assert "belongs to agent 'alice'" in rejection(deploy(world, bob, v2, msgspec.structs.replace(m1, version="2.0.0")))
    [second] = deploy(world, alice, v2, msgspec.structs.replace(m1, version="2.0.0"))
    assert second.kind == "module.artifact_deployed"
    hashes = {a["wasm_hash"] for a in world.module_status()["artifacts"]}
    assert hashes == {sha256(v1).hex(), sha256(v2).hex()}
    assert world.get_instance(iid).wasm_hash == sha256(v1).hex()  # the instance stays on its artifact


def test_install_rules(world, alice, bob):
    wasm = const_module(b"\x80")
    h = sha256(wasm).hex()
    assert "unknown artifact" in rejection(apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=h))))
    deploy(world, alice, wasm, manifest("constant"))
    assert "only the publisher 'alice'" in rejection(apply(world, bob.sign(InstallModuleFromArtifact(wasm_hash=h))))
    [ok] = apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=h, instance_id="mine")))
    assert ok.data["instance_id"] == "mine"
    assert "already exists" in rejection(apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=h, instance_id="mine"))))
    assert "invalid instance_id" in rejection(apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=h, instance_id="No Spaces"))))
    rec = world.get_instance("mine")
    assert (rec.owner_agent_id, rec.installed_at, rec.active, rec.install_target) == ("alice", 1, True, "self_agent")


# -- routing --------------------------------------------------------------------------------------

def test_routing_order_filters_inactive_and_no_recursion(world, alice, bob):
    emit_all = msgspec.msgpack.encode({"emits": [{"kind": "echo", "data": {"n": 1}}]})
    wasm = const_module(emit_all)
    subs = [Subscription(kind="domain.*", filters={"agent_id": "bob"})]
    deploy_and_install(world, alice, wasm, manifest("echo", subs=subs), instance_id="b-echo")
    apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=sha256(wasm).hex(), instance_id="a-echo")))
    apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=sha256(wasm).hex(), instance_id="c-off", activate=False)))
    assert kinds(apply(world, alice.sign(HarvestRadiation()))) == ["domain.radiation_harvested"]  # filtered out
    events = apply(world, bob.sign(HarvestRadiation()))
    assert kinds(events) == ["domain.radiation_harvested", "module.called", "module.emitted", "module.called", "module.emitted"]
    assert [e.data["instance_id"] for e in events[1:]] == ["a-echo", "a-echo", "b-echo", "b-echo"]
    assert events[2].data["data"] == {"n": 1} and events[2].data["kind"] == "echo"


def test_effects_without_capability_are_denied_by_policy(world, alice):
    out = msgspec.msgpack.encode({"effects": [{"kind": "http.get", "params": {"url": "x"}, "cap_ref": "net"}]})
    deploy_and_install(world, alice, const_module(out), manifest("fx", max_effects=1))
    events = apply(world, alice.sign(HarvestRadiation()))
    assert kinds(events) == ["domain.radiation_harvested", "module.called", "governance.policy_decision_recorded"]
    assert events[2].data["effect_kind"] == "http.get" and events[2].data["cap_ref"] == "net"
    assert events[2].data["allowed"] is False and "required_caps" in events[2].data["reason"]


def test_tick_runs_once_per_block(world, alice):
    deploy_and_install(world, alice, const_module(b"\x80"), manifest("ticker", subs=[Subscription(kind="tick", stage="tick")]))
    assert kinds(tick(world)) == ["module.called"]
    assert world.step_with_modules() == []
    world.end_block()
    world.begin_block(2, 2_000)
    [called] = tick(world)
    assert called.data["trace_id"] == "2/tick/ticker@alice"


def test_call_rate_is_per_block(world, alice):
    deploy_and_install(world, alice, const_module(b"\x80"), manifest("limited", max_call_rate=2))
    results = [apply(world, alice.sign(HarvestRadiation()))[1] for _ in range(3)]
    assert kinds(results) == ["module.called", "module.called", "module.call_failed"]
    assert results[2].data["code"] == "CALL_RATE_EXCEEDED" and results[2].data["gas_used"] == 0
    world.end_block()
    world.begin_block(2, 2_000)
    assert apply(world, alice.sign(HarvestRadiation()))[1].kind == "module.called"


# -- hostile and broken modules -------------------------------------------------------------------

def test_hostile_loop_runs_out_of_gas_and_the_world_continues(world, alice):
    [compiled] = apply(world, alice.sign(CompileModuleArtifactFromSource(
        module_id="hostile_loop", source_package=example_package("hostile_loop"))))
    apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=compiled.data["wasm_hash"])))
    start = world.get_agent("alice").electricity
    # each harvest pays its fee and adds 5; the failed call before the second harvest was billed 1 electricity
    first, second = alice.sign(HarvestRadiation()), alice.sign(HarvestRadiation())
    fee1, fee2 = world.action_fee(first), world.action_fee(second)
    for signed, expected_electricity in ((first, start - fee1 + 5), (second, start - fee1 + 5 - 1 - fee2 + 5)):
        harvested, failed = apply(world, signed)
        assert harvested.data["electricity"] == expected_electricity and harvested.data["fee"] > 0
        assert failed.kind == "module.call_failed" and failed.data["code"] == "OUT_OF_GAS"
        assert failed.data["gas_used"] == 1_000_000
    assert kinds(apply(world, alice.sign(MoveAgent(to=(1, 0, 0))))) == ["domain.agent_moved"]
    assert world.stats()["module_call_failures"] == 2
    assert len(world.end_block().state_root) == 32


def test_hostile_memory_hits_the_memory_limit(world, alice):
    [compiled] = apply(world, alice.sign(CompileModuleArtifactFromSource(
        module_id="hostile_memory", source_package=example_package("hostile_memory"))))
    apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=compiled.data["wasm_hash"])))
    [failed] = tick(world)
    assert failed.data["code"] == "MEMORY_LIMIT", failed.data
    assert "1048576" in failed.data["detail"]
    assert world.module_state("hostile_memory@alice") is None


@pytest.mark.parametrize(
    ("output", "limits", "code", "detail"),
    [
        (b"\xc1", {}, "INVALID_OUTPUT", "not a valid ModuleOutput"),
        (msgspec.msgpack.encode({"bogus": 1}), {}, "INVALID_OUTPUT", "not a valid ModuleOutput"),
        (msgspec.msgpack.encode({"emits": [{"kind": "k"}] * 3}), {"max_emits": 2}, "EMIT_LIMIT_EXCEEDED", "3 emits"),
        (msgspec.msgpack.encode({"effects": [{"kind": "k"}] * 2}), {"max_effects": 1}, "EFFECT_LIMIT_EXCEEDED", "2 effects"),
        (msgspec.msgpack.encode({"emits": [{"kind": "k", "data": {"x": 1.5}}]}), {}, "INVALID_OUTPUT", "float"),
        (msgspec.msgpack.encode({"emits": [{"kind": "k", "data": {"x": None}}]}), {}, "INVALID_OUTPUT", "NoneType"),
        (msgspec.msgpack.encode({"emits": [{"kind": "Bad Kind"}]}), {}, "INVALID_OUTPUT", "invalid kind"),
        (b"\x81\xa5emits\x91\x82\xa4kind\xa1k\xa4data\x81\xa1x" + b"\x91" * 200 + b"\x01", {}, "INVALID_OUTPUT", "nested deeper"),
        (msgspec.msgpack.encode({"new_state": b"x" * 100}), {"max_output_bytes": 64}, "OUTPUT_TOO_LARGE", "the limit is 64"),
    ],
)
def test_bad_outputs_fail_and_are_discarded(world, alice, output, limits, code, detail):
    iid = deploy_and_install(world, alice, const_module(output), manifest("broken", **limits))
    harvested, failed = apply(world, alice.sign(HarvestRadiation()))
    assert failed.kind == "module.call_failed"
    assert failed.data["code"] == code and detail in failed.data["detail"], failed.data
    assert world.module_state(iid) is None


def test_new_state_is_stored_only_for_valid_output(world, alice):
    ok = const_module(msgspec.msgpack.encode({"new_state": b"S1"}))
    iid = deploy_and_install(world, alice, ok, manifest("stateful"))
    apply(world, alice.sign(HarvestRadiation()))
    assert world.module_state(iid) == b"S1"


def test_pure_module_cannot_keep_state(world, alice):
    pure = const_module(msgspec.msgpack.encode({"new_state": b"S"}), entry="call")
    deploy_and_install(world, alice, pure, manifest("pure1", kind="pure"))
    _, failed = apply(world, alice.sign(HarvestRadiation()))
    assert failed.data["code"] == "INVALID_OUTPUT" and "pure module" in failed.data["detail"]


def test_output_pointer_outside_memory(world, alice):
    wasm = const_module(b"\x80", packed=(0xFFFF0000 << 32) | 10)
    deploy_and_install(world, alice, wasm, manifest("wild"))
    _, failed = apply(world, alice.sign(HarvestRadiation()))
    assert failed.data["code"] == "INVALID_OUTPUT" and "outside" in failed.data["detail"]


def test_trap_is_billed_max_gas(world, alice):
    wasm = wat_to_wasm('(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) i32.const 64)'
                       ' (func (export "reduce") (param i32 i32) (result i64) unreachable))')
    deploy_and_install(world, alice, wasm, manifest("trapper", max_gas=123_456))
    _, failed = apply(world, alice.sign(HarvestRadiation()))
    assert failed.data["code"] == "TRAP" and failed.data["gas_used"] == 123_456
    assert failed.data["detail"] == "reduce trapped: UNREACHABLE"


def test_block_gas_budget_bounds_module_work(world, alice, monkeypatch):
    from agent_world_runtime.modules import abi

    [compiled] = apply(world, alice.sign(CompileModuleArtifactFromSource(
        module_id="hostile_loop", source_package=example_package("hostile_loop"))))
    apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=compiled.data["wasm_hash"])))
    world.end_block()
    monkeypatch.setattr(abi, "BLOCK_MODULE_GAS_BUDGET", 2_500_000)  # room for two 1M-fuel calls
    for height in (2, 3):
        world.begin_block(height, height * 1_000)
        failures = [apply(world, alice.sign(HarvestRadiation()))[1].data for _ in range(3)]
        assert [f["gas_used"] for f in failures] == [1_000_000, 1_000_000, 0]
        assert all(f["code"] == "OUT_OF_GAS" for f in failures)
        assert "module gas budget is used up (500000 of 2500000 left" in failures[2]["detail"]
        world.end_block()


def test_instances_per_agent_are_capped(world, alice, monkeypatch):
    from agent_world_runtime.modules import lifecycle

    monkeypatch.setattr(lifecycle, "MAX_INSTANCES_PER_AGENT", 2)
    wasm = const_module(b"\x80")
    deploy(world, alice, wasm, manifest("constant"))
    for name in ("one", "two"):
        assert apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=sha256(wasm).hex(), instance_id=name)))[0].kind == "module.installed"
    reason = rejection(apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=sha256(wasm).hex(), instance_id="three"))))
    assert reason == "agent 'alice' already owns 2 module instances; the limit is 2"
