"""The staking and governance read routes of the HTTP API, in process: the real app
(``api.create_app``) over a real World with validators, bonds, an unbonding, a jailed candidate,
proposals and two manifest versions (``staking_worlds``)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from agent_world_node.api import manifest_diff
from agent_world_runtime.actions import ProposeManifestPatch, VoteProposal
from agent_world_runtime.governance.manifest import manifest_hash
from agent_world_runtime.governance.records import PatchOp
from agent_world_runtime.params import GovernanceParams
from agent_world_runtime.staking.records import validator_set_hash

from .staking_worlds import EPOCH, V1, V2, V3, app_for, full_world, op_signer, run_block, staking_world
from .worlds import bank_signer


@pytest.fixture(scope="module")
def world():
    return full_world()


@pytest.fixture(scope="module")
def client(world):
    _, app = app_for(world)
    with TestClient(app) as c:
        yield c


def _error(r, status: int, code: str, *needles: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "code"} and body["code"] == code, body
    for needle in needles:
        assert needle in body["error"], body["error"]
    return body["error"]


def test_validators_list_every_candidate_with_bonds_jail_and_power(client, world):
    doc = client.get("/v1/staking/validators").json()
    assert doc["height"] == 8 and doc["epoch"] == 2 and doc["epoch_length"] == EPOCH
    by_id = {v["validator_id"]: v for v in doc["validators"]}
    assert list(by_id) == sorted([V1, V2, V3])
    one, two, three = by_id[V1], by_id[V2], by_id[V3]
    # V2 was created in epoch 0: in the set of epoch 2 (now) with its bond less the unbonding
    assert two["operator"] == "op" and two["name"] == "second"
    assert two["bonds"] == {"bank": 200, "op": 4900} and two["bonded"] == 5100
    assert two["in_current_set"] is True and two["power"] == 5100 and two["created_at"] == 2
    assert one["bonds"] == {"bank": 1000} and one["power"] == 1000 and one["in_current_set"]
    assert doc["total_power"] == 6100 == sum(world.validators().values())
    assert three["jailed"] is True and three["jailed_until"] == 100 and three["slashed"] == 50
    assert three["jail_reason"] == "double_sign" and two["jail_reason"] == ""
    assert three["in_current_set"] is False and three["power"] == 0
    assert set(two) == {"validator_id", "operator", "name", "bonded", "bonds", "jailed", "jailed_until", "jail_reason", "slashed",
                        "created_at", "in_current_set", "power", "next_power"}


def test_one_validator_and_its_errors(client):
    doc = client.get(f"/v1/staking/validators/{V2}").json()
    assert doc["validator_id"] == V2 and doc["bonded"] == 5100 and doc["next_power"] == 5100
    _error(client.get(f"/v1/staking/validators/{'ab' * 32}"), 404, "unknown_validator", "ab" * 32, "create_validator")
    _error(client.get("/v1/staking/validators/XYZ"), 400, "bad_validator_id", "64 lowercase hex")
    _error(client.get(f"/v1/staking/validators/{V2.upper()}"), 400, "bad_validator_id")


def test_a_new_validator_waits_for_its_epoch():
    """Created at height 2 (epoch 0): not in the set at height 3 (epoch 0) nor known to be in the
    next (epoch 1, the genesis set)."""
    _, app = app_for(staking_world(height=3))
    with TestClient(app) as c:
        two = c.get(f"/v1/staking/validators/{V2}").json()
        assert two["in_current_set"] is False and two["power"] == 0 and two["next_power"] == 0
        sets = c.get("/v1/staking/sets").json()
        assert [s["epoch"] for s in sets["sets"]] == [0, 1, 2]  # epoch 2 computed at the end of height 3
        assert dict(map(tuple, sets["sets"][2]["validators"])) == {V1: 1000, V2: 5100}


def test_sets_are_listed_with_hash_and_bounded(client, world):
    doc = client.get("/v1/staking/sets").json()
    assert doc["current_epoch"] == 2 and doc["epoch_length"] == EPOCH
    epochs = [s["epoch"] for s in doc["sets"]]
    assert epochs == sorted(epochs) and {0, 1, 2, 3} <= set(epochs) and doc["next_from_epoch"] is None
    current = next(s for s in doc["sets"] if s["epoch"] == 2)
    record = world.validator_set(2)
    assert current["hash"] == record.hash().hex() == validator_set_hash([(V1, 1000), (V2, 5100)]).hex()
    assert current["validators"] == sorted([[V1, 1000], [V2, 5100]]) and current["total_power"] == 6100
    assert current["computed_at"] == 3
    page = client.get("/v1/staking/sets", params={"from_epoch": 1, "limit": 2}).json()
    assert [s["epoch"] for s in page["sets"]] == [1, 2] and page["next_from_epoch"] == 3
    assert client.get("/v1/staking/sets", params={"from_epoch": 99}).json()["sets"] == []
    _error(client.get("/v1/staking/sets", params={"limit": 0}), 400, "bad_query", "limit", "between 1 and 100")
    _error(client.get("/v1/staking/sets", params={"limit": 101}), 400, "bad_query", "limit")
    _error(client.get("/v1/staking/sets", params={"from_epoch": "-1"}), 400, "bad_query", "from_epoch")
    _error(client.get("/v1/staking/sets", params={"from_epoch": "two"}), 400, "bad_query", "integer")


def test_unbonding_queues(client):
    doc = client.get("/v1/staking/unbonding").json()
    assert doc == {"current_epoch": 2, "queues": [{"release_epoch": 2, "entries": [
        {"agent_id": "op", "validator_id": V2, "amount": 100, "created_at": 2}]}]}


def test_unbonding_is_empty_once_paid_back():
    _, app = app_for(staking_world(height=12))  # released at the end of epoch 2 (height 11)
    with TestClient(app) as c:
        assert c.get("/v1/staking/unbonding").json() == {"current_epoch": 3, "queues": []}


def test_proposals_newest_first_filtered_and_paged(client):
    doc = client.get("/v1/governance/proposals").json()
    assert [p["proposal_id"] for p in doc["proposals"]] == [2, 1] and doc["next_before"] is None
    two, one = doc["proposals"]
    assert two["status"] == "voting" and two["title"] == "fees and pending" and two["vote_count"] == 2
    assert two["tally"] == {} and two["kind"] == "update" and len(two["candidate_manifest_hash"]) == 64
    assert one["status"] == "applied" and one["tally"] == {"yes": 1000, "no": 0, "abstain": 0, "total": 1000}
    voting = client.get("/v1/governance/proposals", params={"status": "voting"}).json()["proposals"]
    assert [p["proposal_id"] for p in voting] == [2]
    assert client.get("/v1/governance/proposals", params={"status": "expired"}).json()["proposals"] == []
    page = client.get("/v1/governance/proposals", params={"limit": 1}).json()
    assert [p["proposal_id"] for p in page["proposals"]] == [2] and page["next_before"] == 2
    rest = client.get("/v1/governance/proposals", params={"limit": 1, "before": 2}).json()
    assert [p["proposal_id"] for p in rest["proposals"]] == [1] and rest["next_before"] is None
    _error(client.get("/v1/governance/proposals", params={"status": "Voting!"}), 400, "bad_query", "status")
    _error(client.get("/v1/governance/proposals", params={"limit": 201}), 400, "bad_query", "limit")
    _error(client.get("/v1/governance/proposals", params={"before": 0}), 400, "bad_query", "before")


def test_one_proposal_with_votes_tally_shadow_and_diff(client, world):
    doc = client.get("/v1/governance/proposals/2").json()
    assert doc["votes"] == {V1: "yes", V2: "no"} and doc["tally"] == {}
    assert doc["tally_now"] == {"yes": 1000, "no": 5100, "abstain": 0, "voted_power": 6100, "total_power": 6100}
    assert doc["shadow"]["changes"] == ["/governance/max_pending", "/params/fee_base"] and doc["shadow"]["errors"] == []
    record = world.records("proposal")["2"]
    assert doc["candidate_manifest_hash"] == manifest_hash(record.candidate).hex() == doc["shadow"]["candidate_manifest_hash"]
    assert doc["candidate_manifest"]["params"]["fee_base"] == 7
    assert doc["diff_base_version"] == 2
    assert doc["diff"] == [
        {"path": "/governance/max_pending", "change": "changed", "old": 16, "new": 20},
        {"path": "/params/fee_base", "change": "changed", "old": 2, "new": 7},
        {"path": "/version", "change": "changed", "old": 2, "new": 3},
    ]
    passed = client.get("/v1/governance/proposals/1").json()
    assert passed["tally_now"] is None and passed["decided_at"] == 5
    assert passed["ops"] == [{"op": "replace", "path": "/params/fee_base", "value": 2}]
    assert [d["path"] for d in passed["diff"]] == ["/params/fee_base", "/version"] and passed["diff_base_version"] == 1
    _error(client.get("/v1/governance/proposals/3"), 404, "unknown_proposal", "no proposal 3")
    _error(client.get("/v1/governance/proposals/abc"), 400, "bad_proposal_id", "decimal")
    _error(client.get("/v1/governance/proposals/-1"), 400, "bad_proposal_id")
    _error(client.get(f"/v1/governance/proposals/{'9' * 25}"), 400, "bad_proposal_id")


def test_manifest_and_versions(client, world):
    doc = client.get("/v1/manifest").json()
    assert doc["version"] == 2 and doc["applied_at"] == 5 and doc["proposal_id"] == 1
    assert doc["hash"] == manifest_hash(world.manifest).hex()
    assert doc["manifest"]["params"]["fee_base"] == 2 and doc["manifest"]["staking"]["unbonding_epochs"] == 2
    assert set(doc["manifest"]) == {"version", "params", "staking", "governance", "module_changes"}
    versions = client.get("/v1/manifest/versions").json()
    assert versions["current_version"] == 2 and versions["next_before"] is None
    assert [(v["version"], v["applied_at"], v["proposal_id"]) for v in versions["versions"]] == [(2, 5, 1), (1, 0, 0)]
    assert versions["versions"][0]["hash"] == doc["hash"]
    page = client.get("/v1/manifest/versions", params={"limit": 1}).json()
    assert [v["version"] for v in page["versions"]] == [2] and page["next_before"] == 2
    _error(client.get("/v1/manifest/versions", params={"limit": "x"}), 400, "bad_query", "limit")
    _error(client.get("/v1/manifest/versions", params={"limit": 1001}), 400, "bad_query", "limit")


def test_unknown_routes_name_the_new_ones(client):
    err = _error(client.get("/v1/staking"), 404, "not_found")
    assert "/v1/staking/validators" in err and "/v1/governance/proposals" in err and "/v1/manifest" in err
    _error(client.post("/v1/manifest"), 405, "method_not_allowed")


def test_manifest_diff_reports_added_removed_changed_with_escaped_pointers():
    old = {"a": 1, "b": {"c": [1, 2], "x/y": 1}, "gone": True}
    new = {"a": 1, "b": {"c": [1, 3], "x/y": 2}, "new": None}
    assert [(d.path, d.change, d.old, d.new) for d in manifest_diff(old, new)] == [
        ("/b/c", "changed", [1, 2], [1, 3]),
        ("/b/x~1y", "changed", 1, 2),
        ("/gone", "removed", True, None),
        ("/new", "added", None, None),
    ]
    assert [(d.path, d.change) for d in manifest_diff({"a": 1}, {"a": True})] == [("/a", "changed")]  # 1 == True in Python
    assert manifest_diff({"a": 1}, {"a": 1}) == []


def test_a_proposal_through_the_real_governance_rules():
    """Proposed, voted by both validators' operators and applied by the world's rules: the routes
    show it voting, then applied as manifest version 2."""
    world = staking_world(governance=GovernanceParams(voting_period_heights=4))
    op = op_signer()
    events = run_block(world, [op.sign(ProposeManifestPatch(ops=[PatchOp("replace", "/params/fee_base", 3)],
                                                            title="fee 3"), nonce=3)])
    assert not [e for e in events if e.kind == "domain.action_rejected"], events
    _, app = app_for(world)
    with TestClient(app) as c:
        (summary,) = c.get("/v1/governance/proposals", params={"status": "voting"}).json()["proposals"]
        assert summary["proposal_id"] == 1 and summary["proposer"] == "op" and summary["voting_end"] == 13
        run_block(world, [bank_signer(world).sign(VoteProposal(proposal_id=1, validator_id=V1, option="yes")),
                          op.sign(VoteProposal(proposal_id=1, validator_id=V2, option="no"), nonce=4)])
        doc = c.get("/v1/governance/proposals/1").json()
        assert doc["status"] == "voting" and doc["votes"] == {V1: "yes", V2: "no"}
        assert doc["tally_now"] == {"yes": 1000, "no": 5100, "abstain": 0, "voted_power": 6100, "total_power": 6100}
        assert doc["diff"][0] == {"path": "/params/fee_base", "change": "changed", "old": 1, "new": 3}
        assert doc["shadow"]["errors"] == [] and "/params/fee_base" in doc["shadow"]["changes"]
        while world.height < 13:
            run_block(world, [])
        doc = c.get("/v1/governance/proposals/1").json()
        # 1000 yes against 5100 no: rejected at the voting end with the tally of that height
        assert doc["status"] == "rejected" and doc["decided_at"] == 13 and doc["tally_now"] is None
        assert doc["tally"]["yes"] == 1000 and doc["tally"]["no"] == 5100
        assert c.get("/v1/manifest").json()["version"] == 1
        assert c.get("/v1/governance/proposals", params={"status": "rejected"}).json()["proposals"][0]["proposal_id"] == 1
        # a second proposal both validators accept is applied as manifest version 2
        run_block(world, [op.sign(ProposeManifestPatch(ops=[PatchOp("replace", "/params/fee_base", 3)]), nonce=5)])
        run_block(world, [bank_signer(world).sign(VoteProposal(proposal_id=2, validator_id=V1, option="yes")),
                          op.sign(VoteProposal(proposal_id=2, validator_id=V2, option="yes"), nonce=6)])
        end = c.get("/v1/governance/proposals/2").json()["voting_end"]
        while world.height < end:
            run_block(world, [])
        assert c.get("/v1/governance/proposals/2").json()["status"] == "applied"
        manifest = c.get("/v1/manifest").json()
        assert (manifest["version"], manifest["applied_at"], manifest["proposal_id"]) == (2, end, 2)
        assert manifest["manifest"]["params"]["fee_base"] == 3
        versions = c.get("/v1/manifest/versions").json()["versions"]
        assert [(v["version"], v["proposal_id"]) for v in versions] == [(2, 2), (1, 0)]
        assert versions[0]["hash"] == manifest["hash"]
