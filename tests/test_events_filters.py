"""Finding events: the runtime's ``audit_events`` (kind patterns, agent, heights, action id,
oldest or newest first, cursor paging, the scan bound), ``GET /v1/events`` with those filters, and
``awnode audit export`` writing JSON Lines."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from agent_world_client.client import SyncNodeClient
from agent_world_runtime import audit, compute_action_id
from agent_world_runtime.actions import MoveAgent, TransferResource
from agent_world_runtime.audit import EventFilter
from agent_world_runtime.signer import AgentSigner
from agent_world_tools import cli

from .staking_worlds import app_for, run_block
from .worlds import bank_signer, genesis_world

CHAIN = "events-test"
ALICE = AgentSigner.from_seed("alice", b"\x0a" * 32, CHAIN)
BOB = AgentSigner.from_seed("bob", b"\x0b" * 32, CHAIN)


def make_world():
    """Heights 1..6: alice and bob created, then moves, a transfer to alice and a rejected move."""
    w = genesis_world(CHAIN)
    bank = bank_signer(w)
    run_block(w, [bank.create_agent(ALICE, (0, 0, 0), 500, 0), bank.create_agent(BOB, (0, 0, 0), 500, 0)])
    for x in range(1, 4):
        run_block(w, [ALICE.sign(MoveAgent(to=(x, 0, 0))), BOB.sign(MoveAgent(to=(0, x, 0)))])
    give = BOB.sign(TransferResource(to="alice", kind="electricity", amount=7))
    far = ALICE.sign(MoveAgent(to=(99_999, 0, 0)))
    run_block(w, [give, far])
    return w, give, far


def all_pages(w, flt, newest_first=False, limit=2):
    out, cursor = [], None
    while True:
        page = w.audit_events(flt, limit=limit, cursor=cursor, newest_first=newest_first)
        out.extend(page.events)
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


def test_filters_select_by_kind_agent_height_and_action():
    w, give, far = make_world()
    everything = w.events(0, 10_000)
    about_alice = all_pages(w, EventFilter(agent="alice"))
    assert about_alice and all("alice" in (e.data.get("agent_id"), e.data.get("created_agent_id"), e.data.get("to"))
                               for e in about_alice)
    assert any(e.kind == "domain.resource_transferred" for e in about_alice)  # received from bob
    domain = all_pages(w, EventFilter(kinds=("domain.*",)))
    assert domain == [e for e in everything if e.kind.startswith("domain.")]
    assert all_pages(w, EventFilter(kinds=("domain.agent_moved",), from_height=2, to_height=3)) == [
        e for e in everything if e.kind == "domain.agent_moved" and 2 <= e.height <= 3]
    [rejected] = all_pages(w, EventFilter(action_id=compute_action_id(far).hex()))
    assert rejected.kind == "domain.action_rejected"
    assert [e.kind for e in all_pages(w, EventFilter(action_id=compute_action_id(give).hex()))] == [
        "domain.resource_transferred"]


def test_pages_in_both_directions_cover_the_same_events_and_respect_the_scan_bound(monkeypatch):
    w, _, _ = make_world()
    flt = EventFilter(kinds=("domain.agent_moved",))
    oldest_first = all_pages(w, flt)
    assert all_pages(w, flt, newest_first=True) == list(reversed(oldest_first))
    assert len(oldest_first) == 6
    monkeypatch.setattr(audit, "MAX_SCAN", 3)  # a page looks at 3 events at most
    page = w.audit_events(EventFilter(agent="nobody"), limit=10)
    assert page.events == [] and page.next_cursor is not None  # nothing found yet: continue
    assert all_pages(w, flt, limit=10) == oldest_first
    with pytest.raises(ValueError):
        w.audit_events(flt, limit=0)


def test_the_events_route_and_the_audit_export(tmp_path, monkeypatch):
    w, give, _ = make_world()
    _, app = app_for(w)
    with TestClient(app) as http:
        r = http.get("/v1/events", params={"agent": "alice", "kind": "domain.*", "order": "desc", "limit": 2})
        assert r.status_code == 200
        body = r.json()
        assert len(body["events"]) == 2 and body["events"][0]["seq"] > body["events"][1]["seq"]
        assert isinstance(body["next_cursor"], int)
        older = http.get("/v1/events", params={"agent": "alice", "kind": "domain.*", "order": "desc",
                                                "cursor": body["next_cursor"]}).json()["events"]
        assert older and older[0]["seq"] < body["events"][-1]["seq"]
        r = http.get("/v1/events", params={"action_id": compute_action_id(give).hex()})
        assert [e["kind"] for e in r.json()["events"]] == ["domain.resource_transferred"]
        for bad in ({"order": "sideways"}, {"from_height": "-1"}, {"action_id": "zz"}, {"limit": "0"}):
            r = http.get("/v1/events", params=bad)
            assert r.status_code == 400 and r.json()["code"] == "bad_query", (bad, r.text)
        legacy = http.get("/v1/events", params={"from_seq": 3, "kind": "domain."}).json()["events"]
        assert legacy[0]["seq"] >= 3 and all(e["kind"].startswith("domain.") for e in legacy)

    monkeypatch.setattr(cli, "make_client", lambda rpc: SyncNodeClient(rpc, transport=httpx.ASGITransport(app=app)))
    out = tmp_path / "audit.jsonl"
    result = CliRunner().invoke(cli.app, ["audit", "export", str(out), "--rpc", "http://node.test", "--from", "2",
                                          "--to", "5", "--agent", "alice"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    expected = all_pages(w, EventFilter(agent="alice", from_height=2, to_height=5))
    assert [e["seq"] for e in lines] == [e.seq for e in expected] and lines
    assert f"wrote {len(lines)} events" in result.output
    assert w.save_audit_log(tmp_path / "direct.jsonl", EventFilter(agent="alice", from_height=2, to_height=5)) == len(lines)
