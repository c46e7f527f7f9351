"""`awnode staking` and `awnode gov` against the real API app over a real World, in process
(``staking_worlds.WorldNode``: each accepted action runs at once in a block of its own, so the
world rules judge what the CLI signed: the consensus key proof, nonces, bonds)."""

from __future__ import annotations

import json

import httpx
import msgspec
import pytest
from typer.testing import CliRunner

from agent_world_client.client import AgentKey, SyncNodeClient
from agent_world_node.config import Genesis, GenesisValidator, Home, write_genesis, write_key
from agent_world_runtime.actions import (
    Bond,
    CreateValidator,
    ProposeManifestPatch,
    ProposeManifestUpdate,
    ProposeRollback,
    Unbond,
    VoteProposal,
    verify_action_signature,
    verify_validator_key_proof,
)
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.governance.records import PatchOp
from agent_world_tools import cli, ui

from .staking_worlds import CHAIN, OP_SEED, V1, V2, V3, app_for, full_world, run_block
from .worlds import BANK_SEED

runner = CliRunner()
V4_KEY = SigningKey(b"\x04" * 32)


@pytest.fixture
def node(monkeypatch):
    world = full_world()
    node, app = app_for(world)
    monkeypatch.setattr(ui, "make_client", lambda rpc: SyncNodeClient(rpc, transport=httpx.ASGITransport(app=app)))
    monkeypatch.setattr(ui.console, "width", 220)  # a wide terminal: whole cells, one per line
    return node


@pytest.fixture
def keys(tmp_path):
    op, bank = tmp_path / "op.json", tmp_path / "bank.json"
    AgentKey(SigningKey(OP_SEED), "op").save(op)
    AgentKey(SigningKey(BANK_SEED), "bank").save(bank)
    return {"op": str(op), "bank": str(bank)}


def run(*args: str):
    return runner.invoke(cli.app, [*args, "--rpc", "http://node.test"])


def ok(result) -> str:
    assert result.exit_code == 0, result.output + result.stderr
    return result.output


def fails(result, *needles: str) -> str:
    """The command failed with one red line saying ``needles``, without a traceback."""
    assert result.exit_code == 1, result.output + result.stderr
    err = " ".join(result.stderr.split())
    assert err.startswith("error:") and "Traceback" not in result.stderr and result.stderr.strip().count("error:") == 1
    for needle in needles:
        assert needle in err, err
    return err


def no_reprs(text: str) -> None:
    for repr_token in ("None", "True", "False", "{'", "ValidatorRecord("):
        assert repr_token not in text, text


def home_with_key(tmp_path, key: SigningKey, chain_id: str | None = None) -> str:
    h = Home(tmp_path / "home")
    write_key(h.validator_key_file, key)
    if chain_id is not None:
        write_genesis(h.genesis_file, Genesis(chain_id=chain_id, genesis_time_ms=0, validators=[
            GenesisValidator(name="x", public_key=key.public_key.hex(), stake=1)]))
    return str(h.root)


# --- staking -----------------------------------------------------------------------------------


def test_create_validator_proves_the_homes_consensus_key_for_the_operator(node, keys, tmp_path):
    home = home_with_key(tmp_path, V4_KEY, CHAIN)
    out = ok(run("staking", "create-validator", "--home", home, "--key", keys["op"], "--bond", "700", "--name", "fourth"))
    (signed,) = node.posted
    action = signed.body.action
    assert isinstance(action, CreateValidator) and signed.body.agent_id == "op" and signed.body.nonce == 3
    assert action.validator_key == V4_KEY.public_key and action.bond == 700 and action.name == "fourth"
    assert verify_validator_key_proof(V4_KEY.public_key, CHAIN, "op", action.proof)
    assert verify_action_signature(signed, SigningKey(OP_SEED).public_key)
    assert node.rejections() == []
    vid = V4_KEY.public_key.hex()
    rec = node.world.validator_record(vid)
    assert rec.operator == "op" and rec.bonded == 700 and rec.name == "fourth"
    assert f"created validator {vid}" in out and "epoch 4" in out  # created at height 9 (epoch 2): epoch 4


@pytest.mark.parametrize("setup, args, needles", [
    ("existing", ["--bond", "10"], ["already exists", "awnode staking bond"]),
    ("new", ["--bond", "0"], ["--bond must be a positive integer"]),
    ("new", ["--bond", str(10**9)], ["has", "cannot bond 1000000000"]),
    ("new", ["--bond", "10", "--name", "n" * 65], ["at most 64"]),
    ("other-chain", ["--bond", "10"], ["chain 'other'", CHAIN]),
    ("no-key", ["--bond", "10"], ["no consensus key", "awnode init"]),
])
def test_create_validator_refuses_before_signing(node, keys, tmp_path, setup, args, needles):
    if setup == "no-key":
        home = str(tmp_path / "empty")
    else:
        key = {"existing": SigningKey(b"\x02" * 32)}.get(setup, V4_KEY)
        home = home_with_key(tmp_path, key, "other" if setup == "other-chain" else CHAIN)
    fails(run("staking", "create-validator", "--home", home, "--key", keys["op"], *args), *needles)
    assert node.posted == []


def test_bond_and_unbond_change_the_bonds(node, keys):
    out = ok(run("staking", "bond", V1, "300", "--key", keys["bank"]))
    assert node.world.validator_record(V1).bonds == {"bank": 1300}
    assert "bonded 300" in out and "your bond 1300" in out and "(was 1000)" in out
    assert isinstance(node.posted[-1].body.action, Bond)
    out = ok(run("staking", "unbond", V2, "900", "--key", keys["op"]))
    assert isinstance(node.posted[-1].body.action, Unbond)
    assert node.world.validator_record(V2).bonds["op"] == 4000
    assert "unbonding 900" in out and "end of epoch 4" in out  # unbonded at height 10 (epoch 2) + 2 epochs


@pytest.mark.parametrize("args, needles", [
    (["bond", "ab" * 32, "5", "--key", "bank"], ["no validator " + "ab" * 32]),
    (["bond", "xyz", "5", "--key", "bank"], ["not a validator id", "64 lowercase hex"]),
    (["bond", V1, "0", "--key", "bank"], ["AMOUNT must be a positive integer"]),
    (["bond", V1, str(10**9), "--key", "op"], ["cannot bond"]),
    (["unbond", V2, "4901", "--key", "op"], ["has 4900 bonded", "at most 4900"]),
    (["unbond", V1, "1", "--key", "op"], ["has 0 bonded"]),
    (["unjail", V1, "--key", "bank"], ["is not jailed"]),
    (["unjail", V3, "--key", "bank"], ["operator 'op'", "sign with"]),
    (["unjail", V3, "--key", "op"], ["jailed until height 100", "at height 8"]),
])
def test_staking_actions_refused_before_signing(node, keys, args, needles):
    args = [keys.get(a, a) for a in args]
    fails(run("staking", *args), *needles)
    assert node.posted == []


def test_unjail_after_the_jail(node, keys):
    while node.world.height < 99:
        run_block(node.world, [])
    out = ok(run("staking", "unjail", V3, "--key", keys["op"]))
    assert node.world.validator_record(V3).jailed is False and "unjailed" in out


def test_a_rejection_by_the_world_rules_is_one_line_with_the_reason(node, keys, monkeypatch):
    """The agent spends its electricity between the CLI's check and the block: the rules reject
    the bond and the command says so (the fee was paid)."""
    admit = node.admit

    def spend_then_admit(signed):
        agent = node.world._state.agents["op"]
        node.world._state.put_agent(msgspec.structs.replace(agent, electricity=500))
        return admit(signed)

    monkeypatch.setattr(node, "admit", spend_then_admit)
    fails(run("staking", "bond", V2, "1000", "--key", keys["op"]), "the chain rejected the bond", "cannot bond 1000")


def test_show_lists_validators_and_unbonding_as_tables(node):
    out = ok(run("staking", "show"))
    for text in ("genesis-one", "second", "jailed", "until 100 (double_sign)", "5100", "6100", "returns end of epoch"):
        assert text in out, out
    no_reprs(out)
    one = ok(run("staking", "show", V2))
    for text in ("bank", "200", "4900", "next epoch power", "unbonding", V2):
        assert text in one, one
    no_reprs(one)
    doc = json.loads(ok(run("staking", "show", V2, "--json")))
    assert doc["bonds"] == {"bank": 200, "op": 4900} and doc["unbonding"][0]["amount"] == 100
    assert [v["validator_id"] for v in json.loads(ok(run("staking", "show", "--json")))["validators"]] == sorted([V1, V2, V3])
    fails(run("staking", "show", "cd" * 32), "no validator")


def test_an_unreachable_node_is_one_line(monkeypatch):
    monkeypatch.setattr(ui, "make_client", lambda rpc: SyncNodeClient(rpc, timeout_s=2))
    result = runner.invoke(cli.app, ["staking", "show", "--rpc", "http://127.0.0.1:9"])
    fails(result, "cannot reach node", "is it running")


# --- governance --------------------------------------------------------------------------------


def test_propose_set_builds_checked_replace_ops(node, keys):
    ok(run("gov", "propose", "--key", keys["op"], "--title", "cheaper", "--set", "params.fee_base=3",
           "--set", "/governance/quorum_percent=40", "--no-wait"))
    (signed,) = node.posted
    assert signed.body.action == ProposeManifestPatch(
        ops=[PatchOp("replace", "/params/fee_base", 3), PatchOp("replace", "/governance/quorum_percent", 40)],
        title="cheaper")


@pytest.mark.parametrize("args, needles", [
    ([], ["exactly one of --set"]),
    (["--set", "params.fee_base=3", "--rollback", "1"], ["exactly one", "--set and --rollback"]),
    (["--set", "params.fee_bse=3"], ["no /params/fee_bse", "awnode gov manifest"]),
    (["--set", "params.fee_base=cheap"], ["not JSON", "quote strings"]),
    (["--set", "params.fee_base=\"3\""], ["is an integer (2), not a string"]),
    (["--set", "params.fee_base"], ["PATH=JSON_VALUE"]),
    (["--set", "staking.max_power_percent=1000"], ["staking.max_power_percent must be an integer in [1, 100]",
                                                    "keep its fee"]),
    (["--set", "params.fee_base=-1"], ["fee_base must be an integer"]),
    (["--rollback", "2"], ["is the manifest in force"]),
    (["--rollback", "1", "--title", "t" * 201], ["--title is 201 characters", "at most 200"]),
    (["--rollback", "7"], ["no manifest version 7"]),
])
def test_propose_refuses_bad_input_before_signing(node, keys, args, needles):
    fails(run("gov", "propose", "--key", keys["op"], *args), *needles)
    assert node.posted == []


def test_propose_waits_while_max_pending_proposals_are_voting(node, keys):
    state = node.world._state
    state.set_manifest(msgspec.structs.replace(node.world.manifest, governance=msgspec.structs.replace(
        node.world.manifest.governance, max_pending=1)))
    fails(run("gov", "propose", "--key", keys["op"], "--rollback", "1"), "1 proposals are voting (2)", "max_pending")
    assert node.posted == []


def test_propose_patch_manifest_and_rollback(node, keys, tmp_path):
    patch = tmp_path / "patch.json"
    patch.write_text(json.dumps([{"op": "replace", "path": "/params/fee_base", "value": 4},
                                 {"op": "remove", "path": "/module_changes"}]))
    ok(run("gov", "propose", "--key", keys["op"], "--patch", str(patch), "--no-wait"))
    assert node.posted[-1].body.action == ProposeManifestPatch(
        ops=[PatchOp("replace", "/params/fee_base", 4), PatchOp("remove", "/module_changes")])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"op": "move", "path": "/a"}]))
    fails(run("gov", "propose", "--key", keys["op"], "--patch", str(bad)), "operation 0", "replace")
    # the output of `gov manifest --json`, edited, is a full update
    doc = json.loads(ok(run("gov", "manifest", "--json")))
    doc["manifest"]["staking"]["min_bond"] = 10
    full = tmp_path / "manifest.json"
    full.write_text(json.dumps(doc))
    ok(run("gov", "propose", "--key", keys["op"], "--manifest", str(full), "--title", "min bond", "--no-wait"))
    update = node.posted[-1].body.action
    assert isinstance(update, ProposeManifestUpdate) and update.manifest.staking.min_bond == 10
    assert update.manifest.params == node.world.manifest.params and update.title == "min bond"
    full.write_text(json.dumps({"version": 1, "params": {"fee_base": "x"}}))
    fails(run("gov", "propose", "--key", keys["op"], "--manifest", str(full)), "not a valid manifest")
    doc["manifest"]["governance"]["quorum_percent"] = 101
    full.write_text(json.dumps(doc))
    fails(run("gov", "propose", "--key", keys["op"], "--manifest", str(full)), "governance.quorum_percent", "keep its fee")
    ok(run("gov", "propose", "--key", keys["op"], "--rollback", "1", "--no-wait"))
    assert node.posted[-1].body.action == ProposeRollback(version=1)


def test_vote_is_signed_by_the_validators_operator(node, keys):
    state = node.world._state
    state.put_record("proposal", "3", msgspec.structs.replace(node.world.records("proposal")["2"], proposal_id=3,
                                                              votes={}))
    ok(run("gov", "vote", "3", "YES", "--validator", V1, "--key", keys["bank"], "--no-wait"))
    (signed,) = node.posted
    assert signed.body.agent_id == "bank" and signed.body.action == VoteProposal(proposal_id=3, validator_id=V1,
                                                                                 option="yes")


@pytest.mark.parametrize("args, needles", [
    (["3", "maybe", "--validator", V1, "--key", "bank"], ["one of yes, no, abstain"]),
    (["2", "yes", "--validator", V1, "--key", "bank"], ["already voted yes", "final"]),
    (["1", "yes", "--validator", V1, "--key", "bank"], ["proposal 1 is applied, not voting"]),
    (["9", "yes", "--validator", V1, "--key", "bank"], ["no proposal 9", "awnode gov list"]),
    (["2", "no", "--validator", V1, "--key", "op"], ["operated by 'bank', not 'op'"]),
    (["2", "no", "--validator", "ef" * 32, "--key", "op"], ["no validator"]),
    (["2", "no", "--validator", V3, "--key", "op"], ["not in the validator set in force"]),
])
def test_vote_refuses_before_signing(node, keys, args, needles):
    args = [keys.get(a, a) for a in args]
    fails(run("gov", "vote", *args), *needles)
    assert node.posted == []


def test_show_list_and_manifest_are_readable_tables(node):
    out = ok(run("gov", "show", "2"))
    for text in ("fees and pending", "voting", "/params/fee_base", "/governance/max_pending", "tally now",
                 "yes 1000, no 5100", "changes against manifest version 2", "at least 34%", "more than 50%"):
        assert text in out, out
    no_reprs(out)
    applied = ok(run("gov", "show", "1"))
    assert "final tally" in applied and "yes 1000, no 0, abstain 0 of total 1000" in applied, applied
    no_reprs(applied)
    assert json.loads(ok(run("gov", "show", "2", "--json")))["proposal_id"] == 2
    fails(run("gov", "show", "12"), "no proposal 12")
    listing = ok(run("gov", "list"))
    assert "raise the base fee" in listing and "fees and pending" in listing
    no_reprs(listing)
    voting = ok(run("gov", "list", "--status", "voting"))
    assert "fees and pending" in voting and "raise the base fee" not in voting
    assert "no proposals with status expired" in ok(run("gov", "list", "--status", "expired"))
    fails(run("gov", "list", "--status", "Bad!"), "status")
    manifest = ok(run("gov", "manifest"))
    assert "manifest version 2" in manifest and "/params/fee_base" in manifest and "proposal 1" in manifest
    no_reprs(manifest)
    versions = ok(run("gov", "manifest", "--versions"))
    assert "genesis" in versions and "in force: 2" in versions
