"""A hostile HTTP client against a real in-process node: every bad request gets a 4xx
with a JSON body ``{"error", "code"}`` naming the problem (and, where it reasonably can, what to
send instead), nothing answers 500, and the node keeps committing valid actions afterwards.

The friendly-path admission errors (unknown agent, wrong chain, forged signature, replay after
commit) are in ``test_node_api.py``; this file is about input built to break the API."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter

import httpx
import trio

from agent_world_runtime.actions import CreateAgent, MoveAgent, TransferResource, sign_action
from agent_world_runtime.codec import encode_json
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.signer import AgentSigner

from .node_harness import bank_signer, running_node, single_validator_home

CHAIN = "hostile-api"
RUN_LIMIT_S = 30
JSON = {"content-type": "application/json"}
#: Error answers seen by ``_assert_error``, by (path, code).
ANSWERED: Counter[tuple[str, str]] = Counter()


def _doc(signed) -> dict:
    """The JSON form of ``signed`` as a dict, to tamper with."""
    return json.loads(encode_json(signed))


def _body(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def _assert_error(r: httpx.Response, status: int, code: str, *needles: str) -> str:
    """Assert a JSON error answer with ``status`` and ``code`` whose message contains every needle."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    doc = r.json()
    assert doc["code"] == code, doc
    for needle in needles:
        assert needle in doc["error"], (needle, doc["error"])
    ANSWERED[(r.request.url.path, code)] += 1
    return doc["error"]


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + (f"{{{label}}}" if label else "")) + r" ([0-9.e+]+)"
    m = re.search(pattern, text)
    return float(m.group(1)) if m else 0.0


async def _wait_for(predicate, timeout_s: float = 15.0):
    with trio.fail_after(timeout_s):
        while not (value := await predicate()):
            await trio.sleep(0.05)
        return value


def test_hostile_http_client_gets_clear_4xx_and_the_node_keeps_committing(tmp_path):
    pauper = AgentSigner("pauper", SigningKey(b"p" * 32), CHAIN)
    # a genesis agent whose electricity (1) is below the cheapest fee (2)
    home = single_validator_home(tmp_path / "solo", chain_id=CHAIN, agents=[pauper.genesis_agent(electricity=1)])
    ANSWERED.clear()
    alice = SigningKey(b"a" * 32)
    bob = SigningKey(b"b" * 32)
    mallory = SigningKey(b"m" * 32)
    bank = bank_signer(CHAIN)

    async def main():
        with trio.fail_after(RUN_LIMIT_S):
            async with running_node(home) as node:
                async with httpx.AsyncClient(base_url=f"http://{node.config.rpc.listen}", timeout=10) as c:
                    await _scenario(node, c)

    async def _scenario(node, c: httpx.AsyncClient):
        post = lambda content, headers=JSON: c.post("/v1/actions", content=content, headers=headers)  # noqa: E731

        # Two agents created by the genesis bank and committed first, so the later actions reach the
        # world checks.
        for name, key in (("alice", alice), ("bob", bob)):
            r = await post(encode_json(bank.create_agent(AgentSigner(name, key, CHAIN), electricity=1000, data=100)))
            assert r.status_code == 202, r.text

        async def both_created():
            return [(await c.get(f"/v1/agents/{n}")).status_code for n in ("alice", "bob")] == [200, 200]

        await _wait_for(both_created)
        # alice moves once (nonce 1), so nonce 1 is committed and can be replayed below
        r = await post(encode_json(sign_action(alice, CHAIN, "alice", 1, MoveAgent(to=(0, 1, 0)))))
        assert r.status_code == 202, r.text

        async def alice_moved():
            return (await c.get("/v1/agents/alice")).json()["last_nonce"] == 1

        await _wait_for(alice_moved)
        metrics_before = (await c.get("/metrics")).text
        bob_electricity = (await c.get("/v1/agents/bob")).json()["electricity"]
        height_before = node.height
        good_transfer = sign_action(alice, CHAIN, "alice", 5, TransferResource(to="bob", kind="electricity", amount=1))

        # -- bodies that are not a SignedAction -----------------------------------------------------
        _assert_error(await post(b"{not json"), 400, "malformed", "JSON is malformed", "send a JSON SignedAction")
        _assert_error(await post(encode_json(good_transfer)[:-7]), 400, "malformed", "truncated")
        for not_object in (b"[1, 2, 3]", b'"alice"', b"42", b"null", b""):
            _assert_error(await post(not_object), 400, "malformed", "send a JSON SignedAction")
        deep = b"[" * 200_000 + b"]" * 200_000  # 400 kB, under the body limit
        _assert_error(await post(deep), 400, "malformed", "Expected `object`")
        deep_inside = b'{"body": {"chain_id": "x", "agent_id": "a", "nonce": 1, "action": ' + deep + b"}}"
        _assert_error(await post(deep_inside), 400, "malformed", "$.body.action")
        _assert_error(await post(b"\xff\xfe\x00garbage"), 400, "malformed")

        # -- size limits: declared, and streamed without a content-length ---------------------------
        _assert_error(await post(b"x" * (512 * 1024 + 1)), 413, "too_large", "524288", "shrink")

        async def chunks():
            for _ in range(600):
                yield b"y" * 1024

        r = await c.post("/v1/actions", content=chunks(), headers=JSON)
        assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
        _assert_error(r, 413, "too_large", "524288")
        # 9 MiB streamed: past the drain limit the node stops reading; the client still gets an answer
        # or a closed connection, never a hung request or a dead node.

        async def huge_chunks():
            for _ in range(9 * 1024):
                yield b"z" * 1024

        try:
            r = await c.post("/v1/actions", content=huge_chunks(), headers=JSON)
        except httpx.TransportError:
            pass  # the node may cut the upload once it has answered
        else:
            _assert_error(r, 413, "too_large")

        # -- content type ---------------------------------------------------------------------------
        msg = _assert_error(
            await post(encode_json(good_transfer), {"content-type": "text/plain"}), 415, "unsupported_media_type"
        )
        assert "application/json" in msg
        _assert_error(await c.post("/v1/actions", data={"body": "x"}), 415, "unsupported_media_type")

        # -- unknown fields anywhere ------------------------------------------------------------------
        for where in ((), ("body",), ("body", "action")):
            doc = _doc(good_transfer)
            target = doc
            for key in where:
                target = target[key]
            target["is_admin"] = True
            path = "$" + "".join(f".{k}" for k in where)
            error = _assert_error(await post(_body(doc)), 400, "malformed", "unknown field `is_admin`")
            if where:
                assert path in error, error
        doc = _doc(good_transfer)
        doc["body"]["action"]["type"] = "mint_money"
        _assert_error(await post(_body(doc)), 400, "malformed", "mint_money")

        # -- amounts and other integers -------------------------------------------------------------
        for amount in (-5, 0, 2**63, 2**64 + 1, 10**40):
            doc = _doc(good_transfer)
            doc["body"]["action"]["amount"] = amount
            _assert_error(await post(_body(doc)), 400, "malformed", "body.action.amount must be a positive integer",
                          str(amount))
        signed = sign_action(alice, CHAIN, "alice", 5, TransferResource(to="bob", kind="gold", amount=1))
        _assert_error(await post(encode_json(signed)), 400, "malformed", "body.action.kind", "electricity")
        for nonce in (-1, 2**64, 10**30):
            doc = _doc(good_transfer)
            doc["body"]["nonce"] = nonce
            _assert_error(await post(_body(doc)), 400, "malformed", "body.nonce", "last nonce + 1")
        doc = _doc(sign_action(alice, CHAIN, "alice", 5, MoveAgent(to=(1, 0, 0))))
        doc["body"]["action"]["to"] = [2**70, 0, 0]
        _assert_error(await post(_body(doc)), 400, "malformed", "cannot be encoded")
        doc["body"]["action"]["to"] = [1.5, 0, 0]
        _assert_error(await post(_body(doc)), 400, "malformed", "Expected `int`")

        # -- chain, signatures, identities ----------------------------------------------------------
        wrong_chain = sign_action(alice, "another-chain", "alice", 5, MoveAgent(to=(1, 0, 0)))
        _assert_error(await post(encode_json(wrong_chain)), 400, "wrong_chain", "sign for this chain", CHAIN)
        forged = sign_action(mallory, CHAIN, "alice", 5, TransferResource(to="mallory", kind="electricity", amount=1))
        _assert_error(await post(encode_json(forged)), 400, "bad_signature", "alice")
        doc = _doc(good_transfer)
        doc["signature"] = base64.b64encode(b"\x01" * 63).decode()
        _assert_error(await post(_body(doc)), 400, "malformed", "signature must be 64 bytes", "got 63")
        doc["signature"] = base64.b64encode(b"\x01" * 65).decode()
        _assert_error(await post(_body(doc)), 400, "malformed", "signature must be 64 bytes", "got 65")
        doc["signature"] = "%%% not base64 %%%"
        _assert_error(await post(_body(doc)), 400, "malformed", "base64", "$.signature")
        # a signature moved from another (valid) action does not verify for this body
        doc = _doc(good_transfer)
        doc["body"]["action"]["amount"] = 1000
        _assert_error(await post(_body(doc)), 400, "bad_signature")
        bank_key = bank.key
        next_bank = (await c.get("/v1/agents/bank")).json()["last_nonce"] + 1
        short_key = sign_action(bank_key, CHAIN, "bank", next_bank, CreateAgent("mallory", b"\x02" * 31))
        _assert_error(await post(encode_json(short_key)), 400, "malformed", "public_key must be 32 bytes")
        for electricity, data in ((-1, 0), (0, -5), (2**63, 0)):
            endowment = sign_action(bank_key, CHAIN, "bank", next_bank,
                                    CreateAgent("mallory", mallory.public_key, electricity=electricity, data=data))
            _assert_error(await post(encode_json(endowment)), 400, "malformed", "electricity and data must be integers")
        # an agent that does not exist cannot sign anything, not even its own creation
        self_made = sign_action(mallory, CHAIN, "mallory", 1, CreateAgent("mallory", mallory.public_key))
        _assert_error(await post(encode_json(self_made)), 400, "unknown_agent", "create_agent")
        # replay of alice's committed nonce
        replay = sign_action(alice, CHAIN, "alice", 1, MoveAgent(to=(1, 0, 0)))
        _assert_error(await post(encode_json(replay)), 400, "nonce_replayed", "use a nonce above")
        for garbage in ("\x00\xff\u202e", "Z" * 5000, "../../etc/passwd", "", "alice\n", "Alice"):
            signed = sign_action(bank_key, CHAIN, "bank", next_bank, CreateAgent(garbage, mallory.public_key))
            error = _assert_error(await post(encode_json(signed)), 400, "malformed", "body.action.agent_id",
                                  "is not a valid agent id", "use 1-64 characters")
            assert len(error) < 400, "the error echoes a huge agent id back"
            signed = sign_action(mallory, CHAIN, garbage, 1, MoveAgent(to=(1, 0, 0)))
            error = _assert_error(await post(encode_json(signed)), 400, "malformed", "body.agent_id",
                                  "is not a valid agent id")
            assert len(error) < 400, "the error echoes a huge agent id back"
        # "alice\n" is not alice: not even alice's own key may sign as it
        newline = sign_action(alice, CHAIN, "alice\n", 2, MoveAgent(to=(1, 0, 0)))
        _assert_error(await post(encode_json(newline)), 400, "malformed", "'alice\\n' is not a valid agent id")

        # -- routes, methods, path and query parameters ---------------------------------------------
        _assert_error(await c.get("/v1/nothing"), 404, "not_found", "/v1/nothing", "/v1/status")
        _assert_error(await c.get("/admin/../../etc/passwd"), 404, "not_found")
        _assert_error(await c.get("/v1/actions"), 405, "method_not_allowed", "use POST")
        _assert_error(await c.delete("/v1/status"), 405, "method_not_allowed", "DELETE", "GET")
        _assert_error(await c.put("/v1/blocks/1", content=b"{}"), 405, "method_not_allowed")
        for bad in ("abc", "-1", "1.5", "99999999999999999999999", "9223372036854775808", "%20%201", "\u0661"):
            _assert_error(await c.get(f"/v1/blocks/{bad}"), 400, "bad_height", "0..9223372036854775807")
            _assert_error(await c.get(f"/v1/execution/{bad}"), 400, "bad_height")
        _assert_error(await c.get("/v1/blocks/9223372036854775807"), 404, "not_found")
        _assert_error(await c.get("/v1/agents/" + "q" * 5000), 404, "unknown_agent", "create_agent")
        assert len((await c.get("/v1/agents/" + "q" * 5000)).text) < 400
        for params in ({"limit": "abc"}, {"limit": "0"}, {"limit": "100000"}, {"from_seq": "-1"},
                       {"from_seq": "1e9"}, {"from_seq": str(10**30)}):
            _assert_error(await c.get("/v1/events", params=params), 400, "bad_query", next(iter(params)))
        _assert_error(await c.get("/v1/events", params={"kind": "\x00" * 2000}), 400, "bad_query", "kind")
        r = await c.get("/v1/events", params={"kind": "\x00" * 20, "unknown": "x"})
        assert r.status_code == 200 and r.json() == {"events": [], "next_cursor": None}

        # -- the unsafe route: off by default, and hostile bodies when on ---------------------------
        _assert_error(await c.post("/v1/unsafe/peer_filter", json={"blocked": []}), 403, "unsafe_disabled", "rpc.unsafe")
        node.config.rpc.unsafe = True
        try:
            pf = "/v1/unsafe/peer_filter"
            _assert_error(await c.post(pf, content=b"[" * 200_000, headers=JSON), 400, "malformed", '{"blocked"')
            _assert_error(await c.post(pf, content=b"[" * 100 + b"]" * 100, headers=JSON), 400, "malformed")
            _assert_error(await c.post(pf, json={"blocked": ["not-a-peer-id"]}), 400, "bad_peer_id", "base58")
            _assert_error(await c.post(pf, json={"blocked": [], "also": 1}), 400, "malformed")
            _assert_error(await c.post(pf, content=b"{}", headers={"content-type": "text/xml"}), 415,
                          "unsupported_media_type")
            assert (await c.get(pf)).json() == {"blocked": []}
        finally:
            node.config.rpc.unsafe = False

        # -- the node is still up, counted the refusals, and commits a valid action -----------------
        metrics_after = (await c.get("/metrics")).text
        refused = _metric(metrics_after, "awnode_actions_refused_total", code="malformed") - _metric(
            metrics_before, "awnode_actions_refused_total", code="malformed"
        )
        # every malformed action this test sent was counted by the node, and only those
        assert refused == ANSWERED[("/v1/actions", "malformed")] > 20, (refused, ANSWERED)
        assert (await c.get("/health")).json() == {"status": "ok"}
        r = await post(encode_json(good_transfer))
        assert r.status_code == 202, r.text

        async def transferred():
            bob_now = (await c.get("/v1/agents/bob")).json()
            return bob_now["electricity"] == bob_electricity + 1

        await _wait_for(transferred)
        assert node.height > height_before
        status = (await c.get("/v1/status")).json()
        assert status["execution_height"] == status["height"] >= height_before + 1

        # -- fees: a signer that cannot pay is refused before anything is pooled, told what to do ----
        broke = sign_action(pauper.key, CHAIN, "pauper", 1, MoveAgent(to=(1, 0, 0)))
        _assert_error(await post(encode_json(broke)), 400, "insufficient_fee", "the fee of this action is 2",
                      "'pauper' has 1", "receive a transfer first")
        # ... and doing what the message says works: once alice gives it electricity, the same action
        # is accepted
        gift = sign_action(alice, CHAIN, "alice", 6, TransferResource(to="pauper", kind="electricity", amount=10))
        assert (await post(encode_json(gift))).status_code == 202

        async def pauper_paid():
            return (await c.get("/v1/agents/pauper")).json()["electricity"] == 11

        await _wait_for(pauper_paid)
        assert (await post(encode_json(broke))).status_code == 202
        # the fees of a signer's pending actions count: bob has about 1000 electricity, and a flood of
        # 600 transfers of 1 would owe 1200 in fees alone. Whatever commits meanwhile (3 electricity
        # per transfer), the node admits at most 500 of them and refuses the rest, then anything else
        # from bob.
        codes: Counter[str] = Counter()
        for nonce in range(1, 601):
            flood = sign_action(bob, CHAIN, "bob", nonce, TransferResource(to="alice", kind="electricity", amount=1))
            r = await post(encode_json(flood))
            codes["accepted" if r.status_code == 202 else r.json()["code"]] += 1
        assert codes["insufficient_fee"] > 0 and codes["accepted"] <= 500, codes
        assert set(codes) == {"accepted", "insufficient_fee"}, codes
        last = await post(encode_json(sign_action(bob, CHAIN, "bob", 900, MoveAgent(to=(1, 0, 0)))))
        _assert_error(last, 400, "insufficient_fee", "'bob'")

    trio.run(main)
