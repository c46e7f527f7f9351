"""Property: random action sequences applied to two worlds, one of them saved and reloaded midway
(and again at the end), give identical block outcomes, state roots and journals.

The reload rebuilds the state tree from the records, so a state change that skipped its leaf update
(a missed dirty mark) makes the two worlds' roots differ and fails this test.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import (
    CompileModuleArtifactFromSource,
    CreateAgent,
    HarvestRadiation,
    InstallModuleFromArtifact,
    MoveAgent,
    TransferResource,
    sign_action,
)
from agent_world_runtime.admission import payload_size
from agent_world_runtime.crypto import SigningKey, sha256
from agent_world_runtime.modules.source import package_from_files
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner
from tests.worlds import BANK_ID, BANK_SEED, genesis_world

CHAIN = "prop-chain"
PARAMS = WorldParams(move_cost_per_step=1, harvest_amount=3, harvest_interval=2, grid_size=4, create_agent_fee=3)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "modules"
PACKAGE = package_from_files([EXAMPLES / "move_counter.wat", EXAMPLES / "move_counter.manifest.json"],
                             EXAMPLES / "move_counter.manifest.json")
#: ann, ben and cat are created by the bank at the start; dan only exists once a create op makes it.
NAMES = ["ann", "ben", "cat", "dan"]
SETUP_AGENTS = 3
#: Ids a create op may ask for: the four agents (dan is new, the others already exist) and an invalid one.
NEW_IDS = [*NAMES, "dan\n"]

agent = st.integers(0, len(NAMES) - 1)
op = st.one_of(
    st.tuples(st.just("create"), agent, st.one_of(st.just("dan"), st.sampled_from(NEW_IDS)), st.integers(0, 25),
              st.integers(0, 6)),
    st.tuples(st.just("move"), agent, st.integers(-4, 4), st.integers(-4, 4)),
    st.tuples(st.just("harvest"), agent),
    st.tuples(st.just("transfer"), agent, agent, st.sampled_from(["electricity", "data", "gold"]), st.integers(-1, 12)),
    st.tuples(st.just("module"), agent),
    st.tuples(st.just("replay"), st.integers(0, 10_000)),
    st.tuples(st.just("forged"), agent),
    st.tuples(st.just("nonce_back"), agent, st.integers(1, 3)),
    st.tuples(st.just("block")),
)


def to_steps(ops: list[tuple]) -> list:
    """Sign the operations once so both worlds see byte-identical actions."""
    signers = [AgentSigner.from_seed(n, bytes([i + 1]) * 32, CHAIN) for i, n in enumerate(NAMES)]
    bank = AgentSigner.from_seed(BANK_ID, BANK_SEED, CHAIN)
    # Every run starts with ann, ben and cat created by the bank and ann's move counter installed,
    # so the random part exercises moves, transfers, module calls and module state, not only rejections.
    steps: list = [bank.create_agent(s, electricity=60 if s.agent_id == "ann" else 30, data=5)
                   for s in signers[:SETUP_AGENTS]]
    steps.append(signers[0].sign(CompileModuleArtifactFromSource(module_id="move_counter", source_package=PACKAGE)))
    steps.append(signers[0].sign(InstallModuleFromArtifact(wasm_hash=COUNTER_HASH)))
    signed_so_far: list = list(steps)
    for o in ops:
        kind = o[0]
        s = None
        if kind == "block":
            steps.append("block")
            continue
        if kind == "create":
            new_id = o[2]
            key = signers[NAMES.index(new_id)].public_key if new_id in NAMES else bytes(32)
            s = signers[o[1]].sign(CreateAgent(agent_id=new_id, public_key=key, electricity=o[3], data=o[4]))
        elif kind == "move":
            s = signers[o[1]].sign(MoveAgent(to=(o[2], o[3], 0)))
        elif kind == "harvest":
            s = signers[o[1]].sign(HarvestRadiation())
        elif kind == "transfer":
            s = signers[o[1]].sign(TransferResource(to=NAMES[o[2]], kind=o[3], amount=o[4]))
        elif kind == "module":  # another instance (only ann, the publisher, may install it)
            s = signers[o[1]].sign(InstallModuleFromArtifact(wasm_hash=COUNTER_HASH, instance_id=f"c{len(steps)}"))
        elif kind == "replay" and signed_so_far:
            s = signed_so_far[o[1] % len(signed_so_far)]
        elif kind == "forged":
            s = sign_action(SigningKey(b"\xee" * 32), CHAIN, NAMES[o[1]], signers[o[1]].next_nonce, HarvestRadiation())
        elif kind == "nonce_back":
            signers[o[1]].next_nonce = max(0, signers[o[1]].next_nonce - o[2])
        if s is not None:
            signed_so_far.append(s)
            steps.append(s)
    return steps


def _counter_hash() -> str:
    from agent_world_runtime.modules.source import prepare_source_package

    wasm = prepare_source_package("move_counter", PACKAGE)[1]
    assert wasm is not None
    return sha256(wasm).hex()


COUNTER_HASH = _counter_hash()


def blocks_of(steps: list) -> list[list]:
    blocks: list[list] = [[]]
    for step in steps:
        if step == "block":
            blocks.append([])
        else:
            blocks[-1].append(step)
    return blocks


def run(steps: list, save_at: int | None, workdir: Path | None, collect: bool) -> tuple[World, list]:
    """Apply ``steps`` block by block; with ``collect``, each block's fees are collected first (as
    the node does), otherwise each action pays its fee when it runs."""
    world = genesis_world(CHAIN, PARAMS)
    outcomes = []
    blocks_done = 0

    def close_block():
        nonlocal world, blocks_done
        world.step_with_modules()
        out = world.end_block()
        outcomes.append((out.height, out.state_root, out.events_root, len(out.events)))
        blocks_done += 1
        if save_at is not None and blocks_done == save_at:
            world.save_to_dir(workdir)
            world = World.load_from_dir(workdir)

    for block in blocks_of(steps):
        world.begin_block(world.height + 1, (world.height + 1) * 1_000)
        ids = [compute_action_id(s) for s in block]
        if collect:
            world.collect_fees([(s, a, payload_size(s)) for s, a in zip(block, ids, strict=True)])
        for s, action_id in zip(block, ids, strict=True):
            world.apply_action(s, action_id)
        close_block()
    if save_at is not None:
        world.save_to_dir(workdir)  # a second save into the same directory (appends a segment)
        world = World.load_from_dir(workdir)
    return world, outcomes


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=8, max_size=50), save_fraction=st.integers(0, 99), collect=st.booleans())
def test_save_load_midway_gives_identical_roots(ops, save_fraction, collect):
    steps = to_steps(ops)
    save_at = 1 + save_fraction * steps.count("block") // 100  # a block that exists, 1-based
    plain, plain_outcomes = run(steps, None, None, collect)
    with tempfile.TemporaryDirectory() as tmp:
        reloaded, reloaded_outcomes = run(steps, save_at, Path(tmp) / "world", collect)
    assert reloaded_outcomes == plain_outcomes
    assert reloaded.state_root() == plain.state_root()
    assert reloaded.journal_raw() == plain.journal_raw()
    assert reloaded.stats() == plain.stats()
    reasons = [e.data["reason"] for e in plain.events(limit=10_000, kind_prefix="domain.action_rejected")]
    assert not [r for r in reasons if r.startswith("internal error")], reasons
    stats = plain.stats()
    accepted = len(plain.events(limit=10_000, kind_prefix="domain.")) - len(reasons) - SETUP_AGENTS
    created = len(plain.events(limit=10_000, kind_prefix="domain.agent_created")) - SETUP_AGENTS
    event(f"blocks: {'1' if len(plain_outcomes) == 1 else '2-4' if len(plain_outcomes) <= 4 else '5+'}")
    event(f"move_counter calls: {'0' if stats['module_calls'] == 0 else '1-4' if stats['module_calls'] < 5 else '5+'}")
    event(f"accepted actions beyond setup: {'0' if accepted == 0 else '1-9' if accepted < 10 else '10+'}")
    event(f"agents created beyond setup: {created}")
    event(f"fees collected per block: {collect}")
