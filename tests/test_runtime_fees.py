"""Action fees (docs/fees.md): the formula and its rounding, the fee taken before the world rules run
(a rejected action pays), refusals that charge nothing, INSUFFICIENT_FEE with what is owed, the
per-block rules (``BlockPlan``), ``collect_fees`` with ``apply_action``, the harvest interval,
genesis agent validation, and identifiers with a trailing newline."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import msgspec
import pytest

from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import (
    CompileModuleArtifactFromSource,
    CreateAgent,
    DeployModuleArtifact,
    HarvestRadiation,
    InstallModuleFromArtifact,
    ModuleSourcePackage,
    MoveAgent,
    SignedAction,
    TransferResource,
    UpgradeModuleFromArtifact,
    encode_signed_action,
    sign_action,
    static_action_problem,
)
from agent_world_runtime.admission import RefusalCode, payload_size
from agent_world_runtime.crypto import SigningKey, sha256
from agent_world_runtime.fees import action_fee, surcharge
from agent_world_runtime.params import GenesisAgent, WorldParams
from agent_world_runtime.rules import MAX_BALANCE
from agent_world_runtime.signer import AgentSigner
from tests.test_runtime_modules import const_module, manifest
from tests.worlds import BANK_ID, bank_signer, create, create_signed, genesis_world

CHAIN = "fee-chain"
#: Distinct surcharges, so a fee computed with the wrong kind's surcharge shows.
PARAMS = WorldParams(fee_base=2, fee_per_kib=3, create_agent_fee=20, module_deploy_fee=5, module_compile_fee=7,
                     module_install_fee=11, harvest_amount=5, harvest_interval=3, grid_size=10)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "modules"
NOT_COVERED = "the action's fee was not covered at the start of the block; nothing was charged"


def signer(name: str, seed: int) -> AgentSigner:
    return AgentSigner.from_seed(name, bytes([seed]) * 32, CHAIN)


def apply(world: World, signed: SignedAction) -> list:
    return world.apply_action(signed, compute_action_id(signed))


def entry(signed: SignedAction) -> tuple[SignedAction, bytes, int]:
    """The (signed, action_id, payload_bytes) triple collect_fees takes."""
    return signed, compute_action_id(signed), payload_size(signed)


def admit(plan, signed: SignedAction):
    """``plan.admit`` with the action's real payload length."""
    return plan.admit(signed, payload_size(signed))


def electricity(world: World, agent_id: str) -> int:
    return world.get_agent(agent_id).electricity


@pytest.fixture
def world() -> World:
    w = genesis_world(CHAIN, PARAMS)
    w.begin_block(1, 1_000)
    return w


@pytest.fixture
def alice(world) -> AgentSigner:
    a = signer("alice", 1)
    create(world, a, (1, 1, 1), electricity=100, data=100)
    return a


@pytest.fixture
def bob(world) -> AgentSigner:
    b = signer("bob", 2)
    create(world, b, electricity=100, data=100)
    return b


# -- the formula -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("fee_per_kib", "payload_bytes", "bytes_part"),
    [
        (1, 0, 0), (1, 1, 1), (1, 1023, 1), (1, 1024, 1), (1, 1025, 2), (1, 2048, 2), (1, 2049, 3),
        (3, 341, 1), (3, 342, 2), (3, 1024, 3), (3, 1025, 4),
        (1024, 1, 1), (1024, 777, 777),
        (0, 10**6, 0),
        (5, 256 * 1024, 5 * 256),
    ],
)
def test_bytes_part_rounds_up_per_kib(fee_per_kib, payload_bytes, bytes_part):
    params = WorldParams(fee_base=4, fee_per_kib=fee_per_kib)
    assert action_fee(params, HarvestRadiation(), payload_bytes) == 4 + bytes_part


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (CreateAgent(agent_id="x", public_key=bytes(32)), 20),
        (DeployModuleArtifact(wasm_hash="", wasm_bytes=b"", manifest=manifest("m")), 5),
        (CompileModuleArtifactFromSource(module_id="m", source_package=ModuleSourcePackage(manifest_path="m", files={})), 7),
        (InstallModuleFromArtifact(wasm_hash=""), 11),
        (UpgradeModuleFromArtifact(instance_id="i", wasm_hash=""), 0),
        (MoveAgent(to=(1, 0, 0)), 0),
        (HarvestRadiation(), 0),
        (TransferResource(to="x", kind="data", amount=1), 0),
    ],
)
def test_surcharge_by_kind(action, expected):
    assert surcharge(PARAMS, action) == expected
    assert action_fee(PARAMS, action, 1024) == PARAMS.fee_base + 3 + expected


def test_negative_payload_length_is_an_error():
    with pytest.raises(ValueError, match="payload_bytes must be >= 0"):
        action_fee(PARAMS, HarvestRadiation(), -1)


def test_world_fee_is_the_formula_over_the_canonical_payload(world, alice):
    for signed in (alice.sign(HarvestRadiation()), create_signed(world, signer("carol", 3)),
                   alice.sign(TransferResource(to="bob", kind="data", amount=(1 << 63) - 1))):
        n = len(encode_signed_action(signed))
        assert payload_size(signed) == n
        assert world.action_fee(signed) == action_fee(PARAMS, signed.body.action, n)
        assert world.action_fee(signed, payload_bytes=5000) == action_fee(PARAMS, signed.body.action, 5000)


def test_every_payload_byte_counts_when_a_byte_costs_one():
    w = genesis_world(CHAIN, WorldParams(fee_base=1, fee_per_kib=1024, create_agent_fee=0))
    w.begin_block(1, 1)
    bank = bank_signer(w)
    fees = []
    for new_id in ("c", "c" * 30):  # 29 more characters, 29 more payload bytes (both msgpack fixstr)
        signed = bank.create_agent(signer(new_id, 3), electricity=1)
        [event] = apply(w, signed)
        assert event.kind == "domain.agent_created"
        assert event.data["fee"] == 1 + len(encode_signed_action(signed))
        fees.append(event.data["fee"])
    assert fees[1] - fees[0] == 29


# -- taken before validation -----------------------------------------------------------------------

def test_a_move_the_rules_reject_still_pays(world, alice):
    before = electricity(world, "alice")
    signed = alice.sign(MoveAgent(to=(11, 0, 0)))  # outside the grid
    [event] = apply(world, signed)
    assert event.kind == "domain.action_rejected" and "outside the grid" in event.data["reason"]
    assert event.data["fee"] == world.action_fee(signed) > 0
    agent = world.get_agent("alice")
    assert (agent.electricity, agent.last_nonce, agent.position) == (before - event.data["fee"], 1, (1, 1, 1))


def test_a_failed_deploy_of_big_bad_bytes_pays_the_surcharge_and_the_bytes(world):
    rich = signer("rich", 4)
    create(world, rich, electricity=10_000)
    wasm = b"\x00asm\x01\x00\x00\x00" + b"\xff" * 100_000  # a valid header, then garbage
    signed = rich.sign(DeployModuleArtifact(wasm_hash=sha256(wasm).hex(), wasm_bytes=wasm, manifest=manifest("big")))
    n = payload_size(signed)
    assert n > 100_000
    [event] = apply(world, signed)
    assert event.kind == "domain.action_rejected" and "not a valid WebAssembly module" in event.data["reason"]
    assert event.data["fee"] == 2 + -(-n * 3 // 1024) + 5 >= 2 + 5 + 3 * 100_000 // 1024
    assert electricity(world, "rich") == 10_000 - event.data["fee"]
    assert world.module_status()["artifacts"] == []


def test_rejected_lifecycle_actions_pay_their_surcharges(world, alice):
    cases = [
        (alice.sign(InstallModuleFromArtifact(wasm_hash="ab" * 32)), "unknown artifact", 11),
        (alice.sign(CompileModuleArtifactFromSource(
            module_id="m", source_package=ModuleSourcePackage(manifest_path="m.json", files={}))), "has no files", 7),
        (alice.sign(DeployModuleArtifact(wasm_hash="00" * 32, wasm_bytes=b"x", manifest=manifest("m"))),
         "does not match sha256", 5),
        (alice.sign(UpgradeModuleFromArtifact(instance_id="nope", wasm_hash="ab" * 32)), "unknown instance", 0),
        (alice.sign(CreateAgent(agent_id="alice", public_key=bytes(32))), "already exists", 20),
    ]
    for signed, reason, extra in cases:
        before = electricity(world, "alice")
        [event] = apply(world, signed)
        assert reason in event.data["reason"], event.data
        assert event.data["fee"] == 2 + -(-payload_size(signed) * 3 // 1024) + extra
        assert electricity(world, "alice") == before - event.data["fee"]


def test_lifecycle_events_carry_the_total_fee_once(world, alice):
    wasm = const_module(b"\x80")
    deploy = alice.sign(DeployModuleArtifact(wasm_hash=sha256(wasm).hex(), wasm_bytes=wasm, manifest=manifest("c")))
    install = alice.sign(InstallModuleFromArtifact(wasm_hash=sha256(wasm).hex()))
    before = electricity(world, "alice")
    [deployed] = apply(world, deploy)
    [installed] = apply(world, install)
    assert (deployed.kind, installed.kind) == ("module.artifact_deployed", "module.installed")
    assert deployed.data["fee"] == world.action_fee(deploy) and installed.data["fee"] == world.action_fee(install)
    assert electricity(world, "alice") == before - deployed.data["fee"] - installed.data["fee"]


# -- refusals charge nothing -----------------------------------------------------------------------

def test_refusals_charge_nothing_and_keep_the_nonce(world, alice):
    refused = [
        AgentSigner("alice", alice.key, "other-chain").sign(HarvestRadiation()),
        signer("nobody", 9).sign(HarvestRadiation()),
        sign_action(SigningKey(b"\x09" * 32), CHAIN, "alice", 1, HarvestRadiation()),
    ]
    before = world.get_agent("alice")
    for signed in refused:
        [event] = apply(world, signed)
        assert event.kind == "domain.action_rejected" and event.data["fee"] == 0
    assert world.get_agent("alice") == before
    assert apply(world, alice.sign(HarvestRadiation(), nonce=1))[0].kind == "domain.radiation_harvested"
    [replayed] = apply(world, alice.sign(HarvestRadiation(), nonce=1))
    assert replayed.data["reason"].startswith("nonce 1 already used") and replayed.data["fee"] == 0


def test_an_unpayable_fee_charges_nothing_and_leaves_the_nonce_unused(world, alice):
    poor = signer("poor", 5)
    create(world, poor, electricity=2, data=50)
    harvest = poor.sign(HarvestRadiation(), nonce=1)
    fee = world.action_fee(harvest)
    assert fee > 2
    refusal = world.check_action(harvest)
    assert refusal is not None and refusal.code is RefusalCode.INSUFFICIENT_FEE
    [event] = apply(world, harvest)
    assert (event.data["reason"], event.data["fee"]) == (refusal.message, 0)
    assert (electricity(world, "poor"), world.get_agent("poor").last_nonce) == (2, 0)
    # Given enough for the fee, the same signed action now goes through.
    apply(world, alice.sign(TransferResource(to="poor", kind="electricity", amount=fee - 2)))
    [event] = apply(world, harvest)
    assert event.kind == "domain.radiation_harvested" and event.data["fee"] == fee
    assert (electricity(world, "poor"), world.get_agent("poor").last_nonce) == (5, 1)


def test_an_agent_may_spend_its_last_unit_on_a_fee(world, alice):
    move = alice.sign(MoveAgent(to=(2, 1, 1)), nonce=2)
    fee = world.action_fee(move)
    transfer_fee = world.action_fee(alice.sign(TransferResource(to=BANK_ID, kind="electricity", amount=1), nonce=1))
    give = alice.sign(TransferResource(to=BANK_ID, kind="electricity", amount=100 - transfer_fee - fee), nonce=1)
    assert apply(world, give)[0].data["fee"] == transfer_fee
    assert electricity(world, "alice") == fee
    [event] = apply(world, move)  # the fee takes everything; the step then costs 1 it does not have
    assert event.kind == "domain.action_rejected" and event.data["fee"] == fee
    assert "costs 1 electricity but agent 'alice' has 0" in event.data["reason"]
    assert electricity(world, "alice") == 0


def test_insufficient_fee_counts_what_is_owed(world, alice):
    harvest = alice.sign(HarvestRadiation())
    fee = world.action_fee(harvest)
    assert world.check_action(harvest, owed=100 - fee) is None
    refusal = world.check_action(harvest, owed=100 - fee + 1)
    assert refusal is not None and refusal.code is RefusalCode.INSUFFICIENT_FEE
    assert refusal.message == (
        f"the fee of this action is {fee} electricity on top of {100 - fee + 1} owed for its earlier actions but "
        "agent 'alice' has 100; receive a transfer first (a harvest pays this fee too), or wait for its pending actions to commit"
    )
    big = world.check_action(harvest, payload_bytes=100_000)
    assert big is not None and big.code is RefusalCode.INSUFFICIENT_FEE
    # Earlier rules win over the fee rule.
    replay = world.check_action(alice.sign(HarvestRadiation(), nonce=0), owed=10**6)
    assert replay is not None and replay.code is RefusalCode.NONCE_REPLAYED


# -- BlockPlan -------------------------------------------------------------------------------------

def test_plan_nonces_must_increase_within_the_block(world, alice):
    world.end_block()
    plan = world.block_plan()
    assert admit(plan, alice.sign(HarvestRadiation(), nonce=2)) is None
    for nonce in (2, 1):
        refusal = admit(plan, alice.sign(HarvestRadiation(), nonce=nonce))
        assert refusal is not None and refusal.code is RefusalCode.NONCE_REPLAYED
        assert refusal.message == f"nonce {nonce} of agent 'alice' does not follow its nonce 2 earlier in the block"
    assert admit(plan, alice.sign(HarvestRadiation(), nonce=9)) is None  # gaps are fine
    refusal = admit(plan, alice.sign(HarvestRadiation(), nonce=0))  # at or below the state's nonce
    assert refusal is not None and refusal.code is RefusalCode.NONCE_REPLAYED


def test_plan_sums_fees_per_signer_against_the_balance_before_the_block(world, alice, bob):
    poor = signer("poor", 5)
    create(world, poor, electricity=10)
    world.end_block()
    plan = world.block_plan()
    actions = [poor.sign(HarvestRadiation()) for _ in range(4)]
    fee = world.action_fee(actions[0])
    assert [world.action_fee(s) for s in actions] == [fee] * 4 and 3 * fee <= 10 < 4 * fee
    assert admit(plan, actions[0]) is None
    # A payload length alone can make an action unaffordable; refused, it adds nothing to what
    # poor owes and leaves its nonce free for the next action.
    refusal = plan.admit(actions[1], 1_000_000)
    assert refusal is not None and refusal.code is RefusalCode.INSUFFICIENT_FEE
    assert f"on top of {fee} owed" in refusal.message
    assert admit(plan, actions[1]) is None
    assert admit(plan, actions[2]) is None
    refusal = admit(plan, actions[3])
    assert refusal is not None and refusal.code is RefusalCode.INSUFFICIENT_FEE
    assert refusal.message.startswith(f"the fee of this action is {fee} electricity on top of {3 * fee} owed")
    # Other signers owe nothing for poor's actions.
    assert admit(plan, bob.sign(HarvestRadiation())) is None
    assert admit(plan, alice.sign(TransferResource(to="bob", kind="data", amount=1))) is None


def test_plan_refuses_unknown_signers_and_other_chains_but_not_signatures(world, alice):
    world.end_block()
    plan = world.block_plan()
    unknown = plan.admit(signer("nobody", 9).sign(HarvestRadiation()), 100)
    assert unknown is not None and unknown.code is RefusalCode.UNKNOWN_AGENT
    other = plan.admit(AgentSigner("alice", alice.key, "other-chain").sign(HarvestRadiation()), 100)
    assert other is not None and other.code is RefusalCode.WRONG_CHAIN
    # Signatures are valid(v)'s and admission's business; the plan does not verify them.
    assert plan.admit(sign_action(SigningKey(b"\x09" * 32), CHAIN, "alice", 1, HarvestRadiation()), 100) is None


def test_plan_reads_state_only(world, alice):
    world.end_block()
    root = world.state_root()
    plan = world.block_plan()
    for _ in range(3):
        plan.admit(alice.sign(HarvestRadiation()), 200)
    assert world.state_root() == root and world.get_agent("alice").last_nonce == 0


def test_an_agent_created_in_a_block_cannot_act_in_that_block(world):
    world.end_block()
    carol = signer("carol", 3)
    create_carol = bank_signer(world).create_agent(carol, electricity=50)
    carol_harvest = carol.sign(HarvestRadiation(), nonce=1)
    plan = world.block_plan()
    assert admit(plan, create_carol) is None
    refusal = admit(plan, carol_harvest)
    assert refusal is not None and refusal.code is RefusalCode.UNKNOWN_AGENT
    # Executed as a node does: carol's action is rejected unpaid, her nonce 1 stays unused.
    world.begin_block(2, 2_000)
    block = [entry(create_carol), entry(carol_harvest)]
    world.collect_fees(block)
    [created] = world.apply_action(*block[0][:2])
    [rejected] = world.apply_action(*block[1][:2])
    assert created.kind == "domain.agent_created"
    assert (rejected.kind, rejected.data["reason"], rejected.data["fee"]) == ("domain.action_rejected", NOT_COVERED, 0)
    assert (electricity(world, "carol"), world.get_agent("carol").last_nonce) == (50, 0)
    world.end_block()
    # In the next block the same action is admitted and paid.
    world.begin_block(3, 3_000)
    assert admit(world.block_plan(), carol_harvest) is None
    world.collect_fees([entry(carol_harvest)])
    [harvested] = world.apply_action(*entry(carol_harvest)[:2])
    assert harvested.kind == "domain.radiation_harvested" and harvested.data["fee"] == world.action_fee(carol_harvest)


# -- collect_fees and apply_action -------------------------------------------------------------------

def test_collect_fees_takes_every_fee_before_the_first_action_runs(world, alice, bob):
    world.end_block()
    transfer_fee = world.action_fee(alice.sign(TransferResource(to="bob", kind="electricity", amount=1), nonce=1))
    # Alice gives away all but the transfer's own fee: possible if the fees are taken one by one,
    # not once both were collected up front.
    transfer = alice.sign(TransferResource(to="bob", kind="electricity", amount=100 - transfer_fee), nonce=1)
    harvest = alice.sign(HarvestRadiation(), nonce=2)
    assert world.action_fee(transfer) == transfer_fee
    fees = transfer_fee + world.action_fee(harvest)
    block = [entry(transfer), entry(harvest)]

    collected = _fresh_copy(world)
    collected.begin_block(2, 2_000)
    collected.collect_fees(block)
    assert electricity(collected, "alice") == 100 - fees
    [t] = collected.apply_action(*block[0][:2])
    [h] = collected.apply_action(*block[1][:2])
    assert t.kind == "domain.action_rejected" and "not enough to transfer" in t.data["reason"]
    assert t.data["fee"] + h.data["fee"] == fees and h.kind == "domain.radiation_harvested"
    assert electricity(collected, "alice") == 100 - fees + 5

    one_by_one = _fresh_copy(world)
    one_by_one.begin_block(2, 2_000)
    [t] = one_by_one.apply_action(*block[0][:2])
    [h] = one_by_one.apply_action(*block[1][:2])
    assert t.kind == "domain.resource_transferred"
    assert h.kind == "domain.action_rejected" and h.data["fee"] == 0 and "the fee of this action" in h.data["reason"]
    assert electricity(one_by_one, "alice") == 0


def _fresh_copy(world: World) -> World:
    """An independent world at the same state (via save and load)."""
    with tempfile.TemporaryDirectory() as tmp:
        world.save_to_dir(tmp)
        return World.load_from_dir(tmp)


def test_a_plan_refused_action_is_rejected_unpaid_with_its_nonce_unused(world, alice):
    poor = signer("poor", 5)
    create(world, poor, electricity=5)
    world.end_block()
    first, second = poor.sign(HarvestRadiation()), poor.sign(MoveAgent(to=(0, 0, 1)))
    assert world.action_fee(first) + world.action_fee(second) > 5 >= world.action_fee(first)
    world.begin_block(2, 2_000)
    world.collect_fees([entry(first), entry(second)])
    paid = electricity(world, "poor")
    assert paid == 5 - world.action_fee(first)
    [harvested] = world.apply_action(*entry(first)[:2])
    [rejected] = world.apply_action(*entry(second)[:2])
    assert harvested.data["fee"] == world.action_fee(first)
    assert (rejected.kind, rejected.data["reason"], rejected.data["fee"]) == ("domain.action_rejected", NOT_COVERED, 0)
    assert world.get_agent("poor").last_nonce == 1
    # An action that was not handed to collect_fees at all is refused the same way.
    stray = alice.sign(HarvestRadiation())
    [event] = world.apply_action(*entry(stray)[:2])
    assert (event.data["reason"], event.data["fee"]) == (NOT_COVERED, 0)
    assert world.get_agent("alice").last_nonce == 0
    world.end_block()
    # Nonce 2 is still poor's to use; without collect_fees the fee is taken when the action runs.
    world.begin_block(3, 3_000)
    before = electricity(world, "poor")
    [event] = world.apply_action(*entry(second)[:2])
    assert event.data["fee"] == world.action_fee(second) and world.get_agent("poor").last_nonce == 2
    assert electricity(world, "poor") == before - event.data["fee"] - 1


def test_collect_fees_charges_every_action_the_plan_admitted(world):
    """The plan judges every action against the balances before the block, then the fees are taken
    (judging each against a balance already reduced by the earlier fees would count them twice)."""
    poor = signer("poor", 5)
    harvest, move = poor.sign(HarvestRadiation()), poor.sign(MoveAgent(to=(0, 0, 1)))
    fees = world.action_fee(harvest) + world.action_fee(move)
    create(world, poor, electricity=fees)  # exactly enough for both fees, counted once
    world.end_block()
    plan = world.block_plan()
    assert admit(plan, harvest) is None and admit(plan, move) is None  # a valid block
    world.begin_block(2, 2_000)
    world.collect_fees([entry(harvest), entry(move)])
    assert electricity(world, "poor") == 0
    [harvested] = world.apply_action(*entry(harvest)[:2])
    [moved] = world.apply_action(*entry(move)[:2])
    assert harvested.data["fee"] + moved.data["fee"] == fees
    assert moved.kind == "domain.agent_moved"  # the harvest paid for the step


def test_a_repeated_action_in_a_block_pays_once(world, alice):
    world.end_block()
    harvest = alice.sign(HarvestRadiation())
    world.begin_block(2, 2_000)
    world.collect_fees([entry(harvest), entry(harvest)])
    assert electricity(world, "alice") == 100 - world.action_fee(harvest)
    [first] = world.apply_action(*entry(harvest)[:2])
    [second] = world.apply_action(*entry(harvest)[:2])
    assert first.kind == "domain.radiation_harvested"
    assert second.data["reason"].startswith("nonce 1 already used") and second.data["fee"] == 0
    assert electricity(world, "alice") == 100 - world.action_fee(harvest) + 5


def test_collect_fees_once_per_open_block(world):
    world.collect_fees([])
    with pytest.raises(RuntimeError, match="already collected"):
        world.collect_fees([])
    world.end_block()
    with pytest.raises(RuntimeError, match="no block is open"):
        world.collect_fees([])


# -- harvest interval ------------------------------------------------------------------------------

def test_harvest_at_most_once_per_interval(world, alice):
    kinds, reasons = [], []
    for height in range(1, 8):
        if height > 1:
            world.begin_block(height, height * 1_000)
        signed = alice.sign(HarvestRadiation())
        before = electricity(world, "alice")
        [event] = apply(world, signed)
        kinds.append(event.kind == "domain.radiation_harvested")
        assert event.data["fee"] == world.action_fee(signed)  # paid either way
        gained = 5 if kinds[-1] else 0
        assert electricity(world, "alice") == before - event.data["fee"] + gained
        if not kinds[-1]:
            reasons.append(event.data["reason"])
        world.end_block()
    assert kinds == [True, False, False, True, False, False, True]
    assert reasons[0] == (
        "agent 'alice' harvested at height 1; it may harvest again from height 4 (one harvest per 3 heights)"
    )
    assert world.get_agent("alice").last_harvest_height == 7


def test_harvest_interval_one_allows_one_per_block_and_zero_any():
    for interval, expected in ((1, [True, False]), (0, [True, True])):
        a = signer("alice", 1)
        w = World.from_genesis(CHAIN, WorldParams(harvest_interval=interval), agents=[a.genesis_agent(100)])
        for height in (1, 2):
            w.begin_block(height, height)
            got = [apply(w, a.sign(HarvestRadiation()))[0].kind == "domain.radiation_harvested" for _ in range(2)]
            assert got == expected, (interval, height)
            w.end_block()


def test_harvest_interval_is_per_agent(world, alice, bob):
    assert apply(world, alice.sign(HarvestRadiation()))[0].kind == "domain.radiation_harvested"
    assert apply(world, bob.sign(HarvestRadiation()))[0].kind == "domain.radiation_harvested"
    assert apply(world, alice.sign(HarvestRadiation()))[0].kind == "domain.action_rejected"
    assert world.get_agent("bob").last_harvest_height == 1


# -- genesis agents ----------------------------------------------------------------------------------

KEY_HEX = SigningKey(b"\x01" * 32).public_key.hex()


@pytest.mark.parametrize(
    ("agents", "message"),
    [
        ([GenesisAgent("Alice", KEY_HEX)], "genesis agent 'Alice': invalid agent id"),
        ([GenesisAgent("alice\n", KEY_HEX)], "genesis agent 'alice\\n': invalid agent id"),
        ([GenesisAgent("", KEY_HEX)], "invalid agent id"),
        ([GenesisAgent("a" * 65, KEY_HEX)], "invalid agent id"),
        ([GenesisAgent("alice", KEY_HEX), GenesisAgent("alice", KEY_HEX)], "genesis agent 'alice': listed twice"),
        ([GenesisAgent("alice", "zz" * 32)], "genesis agent 'alice': public_key must be 64 hex characters"),
        ([GenesisAgent("alice", KEY_HEX[:-2])], "public_key must be 64 hex characters"),
        ([GenesisAgent("alice", KEY_HEX + "00")], "public_key must be 64 hex characters"),
        ([GenesisAgent("alice", "")], "public_key must be 64 hex characters"),
        ([GenesisAgent("alice", KEY_HEX, electricity=-1)], "genesis agent 'alice': electricity must be an integer in 0.."),
        ([GenesisAgent("alice", KEY_HEX, data=-1)], "data must be an integer in 0.."),
        ([GenesisAgent("alice", KEY_HEX, electricity=MAX_BALANCE + 1)], "electricity must be an integer in 0.."),
        ([GenesisAgent("alice", KEY_HEX, electricity=True)], "electricity must be an integer"),
        ([GenesisAgent("alice", KEY_HEX, position=(1001, 0, 0))], "genesis agent 'alice': position (1001, 0, 0) is outside"),
        ([GenesisAgent("alice", KEY_HEX, position=(0, 0, -1001))], "is outside the grid"),
    ],
)
def test_genesis_agents_are_validated(agents, message):
    with pytest.raises(ValueError) as info:
        World.from_genesis(CHAIN, WorldParams(), agents=agents)
    assert message in str(info.value), str(info.value)


def test_genesis_agents_at_the_limits_are_accepted():
    agents = [GenesisAgent("a" * 64, KEY_HEX, electricity=MAX_BALANCE, data=0, position=(1000, -1000, 1000)),
              GenesisAgent("b", KEY_HEX)]  # two agents may share a key
    w = World.from_genesis(CHAIN, WorldParams(), agents=agents)
    assert w.get_agent("a" * 64).electricity == MAX_BALANCE
    assert w.get_agent("b").public_key == bytes.fromhex(KEY_HEX)


def test_genesis_agents_are_part_of_the_genesis_root():
    a = signer("alice", 1)
    roots = {World.from_genesis(CHAIN, WorldParams(), agents=agents).state_root() for agents in (
        [], [a.genesis_agent(1)], [a.genesis_agent(2)], [a.genesis_agent(1, position=(0, 0, 1))],
    )}
    assert len(roots) == 4


# -- identifiers with a trailing newline ---------------------------------------------------------------

def test_create_agent_with_a_trailing_newline_id_is_rejected(world, alice):
    signed = alice.sign(CreateAgent(agent_id="carol\n", public_key=signer("carol", 3).public_key))
    assert "is not a valid agent id" in static_action_problem(signed)
    [event] = apply(world, signed)
    assert event.data["reason"].startswith("invalid agent id 'carol\\n'") and event.data["fee"] > 0
    assert world.get_agent("carol\n") is None and world.get_agent("carol") is None


def test_envelope_agent_id_with_a_trailing_newline_is_unknown(world, alice):
    signed = AgentSigner("alice\n", alice.key, CHAIN).sign(HarvestRadiation())
    assert "body.agent_id 'alice\\n' is not a valid agent id" in static_action_problem(signed)
    refusal = world.check_action(signed)
    assert refusal is not None and refusal.code is RefusalCode.UNKNOWN_AGENT


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"module_id": "m\n"}, "invalid module_id 'm\\n'"),
        ({"version": "1.0.0\n"}, "invalid version '1.0.0\\n'"),
    ],
)
def test_deploy_with_a_trailing_newline_in_the_manifest_is_rejected(world, alice, changes, reason):
    wasm = const_module(b"\x80")
    m = msgspec.structs.replace(manifest("m"), **changes)
    [event] = apply(world, alice.sign(DeployModuleArtifact(wasm_hash=sha256(wasm).hex(), wasm_bytes=wasm, manifest=m)))
    assert event.kind == "domain.action_rejected" and event.data["reason"].startswith(reason)
    assert world.module_status()["artifacts"] == []


def test_deploy_with_a_trailing_newline_in_the_hash_is_rejected(world, alice):
    wasm = const_module(b"\x80")
    signed = alice.sign(DeployModuleArtifact(wasm_hash=sha256(wasm).hex() + "\n", wasm_bytes=wasm, manifest=manifest("m")))
    [event] = apply(world, signed)
    assert "wasm_hash must be 64 lowercase hex characters" in event.data["reason"]


def test_compile_with_a_trailing_newline_module_id_is_rejected(world, alice):
    files = {"m.wat": (EXAMPLES / "move_counter.wat").read_text(encoding="utf-8"),
             "m.json": json.dumps({"module_id": "m\n", "version": "1.0.0", "exports": ["reduce"]})}
    signed = alice.sign(CompileModuleArtifactFromSource(
        module_id="m\n", source_package=ModuleSourcePackage(manifest_path="m.json", files=files)))
    [event] = apply(world, signed)
    assert event.kind == "domain.action_rejected" and event.data["reason"].startswith("invalid module_id 'm\\n'")
    assert world.module_status()["artifacts"] == []


@pytest.mark.parametrize(
    ("instance_id", "target", "reason"),
    [
        ("inst\n", "", "invalid instance_id 'inst\\n'"),
        ("i1", "self_agent\n", "invalid install_target 'self_agent\\n'"),
        ("i2", "agent:alice\n", "install_target 'agent:alice\\n' names no registered agent"),
        ("i3", "location:1,2,3\n", "invalid install_target 'location:1,2,3\\n'"),
    ],
)
def test_install_with_a_trailing_newline_is_rejected(world, alice, instance_id, target, reason):
    wasm = const_module(b"\x80")
    [deployed] = apply(world, alice.sign(DeployModuleArtifact(wasm_hash=sha256(wasm).hex(), wasm_bytes=wasm,
                                                              manifest=manifest("m"))))
    assert deployed.kind == "module.artifact_deployed", deployed.data
    [event] = apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=sha256(wasm).hex(), instance_id=instance_id,
                                                               install_target=target)))
    assert event.kind == "domain.action_rejected" and event.data["reason"].startswith(reason), event.data
    assert world.module_status()["instances"] == []


def test_module_emit_kind_with_a_trailing_newline_fails_the_call(world, alice):
    wasm = const_module(msgspec.msgpack.encode({"emits": [{"kind": "seen\n"}]}))
    apply(world, alice.sign(DeployModuleArtifact(wasm_hash=sha256(wasm).hex(), wasm_bytes=wasm, manifest=manifest("m"))))
    apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=sha256(wasm).hex())))
    events = apply(world, alice.sign(HarvestRadiation()))
    failed = [e.data for e in events if e.kind == "module.call_failed"]
    assert len(failed) == 1 and failed[0]["code"] == "INVALID_OUTPUT"
    assert "emit 0 has invalid kind 'seen\\n'" in failed[0]["detail"]
    assert not [e for e in events if e.kind == "module.emitted"]


def test_a_collected_fee_of_an_action_whose_signature_is_bad_is_refunded(world, alice):
    """collect_fees does not verify signatures (the node did before); apply_action does when asked,
    and gives back what was collected for a forged action."""
    world.end_block()
    forged = msgspec.structs.replace(alice.sign(HarvestRadiation()), signature=bytes(64))
    world.begin_block(2, 2_000)
    world.collect_fees([entry(forged)])
    assert electricity(world, "alice") == 100 - world.action_fee(forged)
    [rejected] = world.apply_action(forged, compute_action_id(forged))
    assert rejected.kind == "domain.action_rejected" and "bad signature" in rejected.data["reason"]
    assert rejected.data["fee"] == 0 and electricity(world, "alice") == 100
    assert world.get_agent("alice").last_nonce == 0


def test_a_genesis_agent_with_a_short_position_is_named_in_the_error():
    from agent_world_runtime.params import GenesisAgent

    bad = GenesisAgent(agent_id="short", public_key="00" * 32, position=(1, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="genesis agent 'short': position must be three integers"):
        World.from_genesis(CHAIN, PARAMS, agents=[bad])
