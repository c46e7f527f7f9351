"""Compiling from source (docs/module-abi.md, "Compiling from source"): WAT compiles in the world;
C and Rust sources become a build request that the validators settle with signed attestations in
later blocks (``modules.builds``). Nothing in the world runs a compiler."""

from __future__ import annotations

import msgspec
import pytest

from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import AttestBuild, CompileModuleArtifactFromSource, ModuleSourcePackage, sign_action
from agent_world_runtime.crypto import SigningKey, sha256
from agent_world_runtime.modules.builds import BuildCode
from agent_world_runtime.params import Toolchain, WorldParams
from agent_world_runtime.signer import AgentSigner
from tests.test_runtime_modules import alice, apply, const_module, rejection, world  # noqa: F401  (fixtures)

CHAIN = "build-chain"
MANIFEST = '{"module_id": "cmod", "version": "1.0.0", "kind": "reducer", "exports": ["reduce"]}'
C_SOURCE = "int reduce(int p, int n) { return 0; }\n"
C_TOOLCHAIN = Toolchain(name="c", version="zig 0.13.0", compiler_sha256="ab" * 32)
VALIDATORS = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]  # equal stakes: 3 of 4 are more than 2/3
BUILT = const_module(b"\x80")  # stands for what the validators' builders produce


def package(**extra: str) -> ModuleSourcePackage:
    return ModuleSourcePackage(manifest_path="m.json", files={"m.json": MANIFEST, "sub/mod.c": C_SOURCE, **extra})


def compile_action(pkg: ModuleSourcePackage) -> CompileModuleArtifactFromSource:
    return CompileModuleArtifactFromSource(module_id="cmod", source_package=pkg)


def build_world(deadline: int = 100) -> tuple[World, AgentSigner]:
    """A world whose genesis names the C toolchain and four validators; bob exists; block 1 is open."""
    bob = AgentSigner.from_seed("bob", b"\x07" * 32, CHAIN)
    params = WorldParams(toolchains=[C_TOOLCHAIN], build_deadline_heights=deadline)
    w = World.from_genesis(CHAIN, params, agents=[bob.genesis_agent(10_000, 10_000)],
                           validators={k.public_key.hex(): 1 for k in VALIDATORS})
    w.begin_block(1, 1_000)
    return w, bob


def request(w: World, bob: AgentSigner) -> str:
    [requested] = apply(w, bob.sign(compile_action(package())))
    assert requested.kind == "module.build_requested", requested.data
    return requested.data["build_id"]


def attest(w: World, i: int, build_id: str, code: str = "OK", wasm: bytes | None = BUILT, bytes_too: bool = True):
    wasm_hash = sha256(wasm).hex() if code == "OK" and wasm is not None else ""
    action = AttestBuild(build_id=build_id, code=code, wasm_hash=wasm_hash,
                         wasm_bytes=wasm if code == "OK" and bytes_too and wasm is not None else b"")
    key = VALIDATORS[i]
    signed = sign_action(key, CHAIN, key.public_key.hex(), 0, action)
    return w.apply_action(signed, compute_action_id(signed))


def test_a_chain_without_the_toolchain_rejects_the_request_and_keeps_the_fee(world, alice):
    signed = alice.sign(compile_action(package()))
    [rejected] = apply(world, signed)
    assert rejected.kind == "domain.action_rejected" and "this chain builds no c sources" in rejected.data["reason"]
    assert rejected.data["fee"] == world.action_fee(signed) > 0


def test_a_request_is_pending_until_more_than_two_thirds_of_the_stake_attest_the_same_bytes():
    w, bob = build_world()
    build_id = request(w, bob)
    record = w.get_build(build_id)
    assert record is not None and record.status == "pending" and record.package is not None
    assert [b.build_id for b in w.pending_builds()] == [build_id]
    assert w.module_status()["artifacts"] == []
    for i in range(2):  # 2 of 4: not more than 2/3
        [attested] = attest(w, i, build_id, bytes_too=(i == 0))
        assert attested.kind == "module.build_attested" and attested.data["fee"] == 0
    assert w.get_build(build_id).status == "pending"
    events = attest(w, 2, build_id, bytes_too=False)
    kinds = [e.kind for e in events]
    assert kinds[:3] == ["module.build_attested", "module.artifact_compiled", "module.build_settled"], kinds
    assert events[1].data["wasm_hash"] == sha256(BUILT).hex() and events[1].data["build_id"] == build_id
    settled = w.get_build(build_id)
    assert (settled.status, settled.code, settled.wasm_hash) == ("registered", "OK", sha256(BUILT).hex())
    assert settled.package is None and settled.candidates == {}
    [artifact] = w.module_status()["artifacts"]
    assert artifact["publisher"] == "bob" and artifact["origin"] == "compiled"
    assert "already registered" in rejection(attest(w, 3, build_id))


def test_agreed_failure_codes_fail_the_build_and_disagreement_fails_it_too():
    w, bob = build_world()
    build_id = request(w, bob)
    for i in range(3):
        events = attest(w, i, build_id, code="COMPILE_ERROR")
    assert events[-1].kind == "module.build_settled" and events[-1].data["code"] == "COMPILE_ERROR"
    assert w.get_build(build_id).status == "failed"

    w2, bob2 = build_world()
    build_id = request(w2, bob2)
    attest(w2, 0, build_id)
    attest(w2, 1, build_id, wasm=const_module(b"\x81"))  # a different hash
    events = attest(w2, 2, build_id, code="TIMEOUT")  # no outcome can reach 3 of 4 any more
    assert events[-1].kind == "module.build_settled" and events[-1].data["code"] == BuildCode.DISAGREEMENT
    assert w2.module_status()["artifacts"] == []


def test_a_build_not_settled_by_its_deadline_fails_when_that_height_ends():
    w, bob = build_world(deadline=1)  # requested at height 1: pending through height 2
    build_id = request(w, bob)
    attest(w, 0, build_id)
    w.end_block()
    w.begin_block(2, 2_000)
    outcome = w.end_block()
    [expired] = [e for e in outcome.events if e.kind == "module.build_settled"]
    assert expired.data["code"] == BuildCode.DEADLINE and w.get_build(build_id).status == "failed"
    assert w.pending_builds() == []


def test_bad_attestations_are_refused_and_cost_nothing():
    w, bob = build_world()
    build_id = request(w, bob)
    assert "no bytes for this wasm_hash" in rejection(attest(w, 0, build_id, bytes_too=False))
    key = VALIDATORS[1]
    lying = AttestBuild(build_id=build_id, code="OK", wasm_hash=sha256(BUILT).hex(), wasm_bytes=BUILT + b"x")
    signed = sign_action(key, CHAIN, key.public_key.hex(), 0, lying)
    assert "do not hash" in rejection(w.apply_action(signed, compute_action_id(signed)))
    stranger = SigningKey(b"\x55" * 32)
    signed = sign_action(stranger, CHAIN, stranger.public_key.hex(), 0, AttestBuild(build_id=build_id, code="TIMEOUT"))
    assert "not a genesis validator" in rejection(w.apply_action(signed, compute_action_id(signed)))
    forged = sign_action(stranger, CHAIN, VALIDATORS[2].public_key.hex(), 0, AttestBuild(build_id=build_id, code="TIMEOUT"))
    assert "bad signature" in rejection(w.apply_action(forged, compute_action_id(forged)))
    assert "unknown build code" in rejection(attest(w, 3, build_id, code="SOMETHING"))
    attest(w, 3, build_id, code="TIMEOUT")
    assert "already attested" in rejection(attest(w, 3, build_id, code="TIMEOUT"))
    assert w.get_agent("bob").electricity == 10_000 - w.action_fee(bob.sign(compile_action(package()), nonce=1))


def test_the_block_plan_admits_one_attestation_per_validator_and_build():
    w, bob = build_world()
    build_id = request(w, bob)
    w.end_block()
    key = VALIDATORS[0]
    a = sign_action(key, CHAIN, key.public_key.hex(), 0, AttestBuild(build_id=build_id, code="TIMEOUT"))
    plan = w.block_plan()
    payload = len(msgspec.msgpack.encode(a))
    assert plan.admit(a, payload) is None
    refusal = plan.admit(a, payload)
    assert refusal is not None and refusal.code == "attestation_refused"


def test_replaying_the_blocks_gives_the_same_roots_without_building():
    def run() -> list[bytes]:
        w, bob = build_world()
        build_id = request(w, bob)
        roots = [w.end_block().state_root]
        w.begin_block(2, 2_000)
        for i in range(3):
            attest(w, i, build_id, bytes_too=(i == 0))
        roots.append(w.end_block().state_root)
        return roots

    assert run() == run()


def test_unsafe_paths_are_rejected_before_any_request(world, alice):
    for bad in ("../escape.c", "/abs.c", "a/../../b.c"):
        reason = rejection(apply(world, alice.sign(compile_action(package(**{bad: C_SOURCE})))))
        assert "source path" in reason


@pytest.mark.parametrize("files", [{"m.json": MANIFEST}, {"m.json": MANIFEST, "notes.txt": "hi"}])
def test_a_package_without_buildable_sources_is_rejected(world, alice, files):
    pkg = ModuleSourcePackage(manifest_path="m.json", files=files)
    assert "no .wat, .c or .rs source" in rejection(apply(world, alice.sign(compile_action(pkg))))


def test_no_agent_may_take_a_validators_id():
    """Attestations are signed under the validator's id; an agent by that name would mix its nonces and
    fees with them, so neither genesis nor create_agent may use one."""
    w, bob = build_world()
    validator = SigningKey(b"\x33" * 32)
    [rejected] = apply(w, bob.create_agent(AgentSigner(VALIDATORS[0].public_key.hex(), validator, CHAIN)))
    assert rejected.kind == "domain.action_rejected" and "is a validator's id" in rejected.data["reason"]
    with pytest.raises(ValueError, match="is a validator's id"):
        World.from_genesis(CHAIN, WorldParams(), agents=[AgentSigner(VALIDATORS[0].public_key.hex(), validator,
                                                                     CHAIN).genesis_agent(1, 1)],
                           validators={VALIDATORS[0].public_key.hex(): 1})
