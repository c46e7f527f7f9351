"""`awnode submit` and `awnode status`: argument handling, nonce and agent-id defaults, signing, and
how node answers become output and exit codes (fake node through httpx.MockTransport)."""

from __future__ import annotations

import base64
import json
import socket

import httpx
import pytest
from typer.testing import CliRunner

from agent_world_client.client import AgentKey, SyncNodeClient
from agent_world_runtime.actions import (
    CreateAgent,
    MoveAgent,
    decode_signed_action_json,
    verify_action_signature,
)
from agent_world_runtime.codec import DecodeError
from agent_world_runtime.crypto import SigningKey
from agent_world_tools import cli

runner = CliRunner()


class FakeNode:
    """Answers /v1/status, /v1/agents/{id} and /v1/actions; records what was posted."""

    def __init__(self, chain_id: str = "fake-chain") -> None:
        self.chain_id = chain_id
        self.agents: dict[str, dict] = {}
        self.posted = []
        self.reject: tuple[str, str] | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/status":
            return httpx.Response(200, json={"chain_id": self.chain_id, "moniker": "fake", "height": 7, "peers": ["p1", "p2"]})
        if path.startswith("/v1/agents/"):
            agent = self.agents.get(path.rsplit("/", 1)[1])
            if agent is None:
                return httpx.Response(404, json={"error": "no agent", "code": "unknown_agent"})
            return httpx.Response(200, json=agent)
        if path == "/v1/actions" and request.method == "POST":
            try:  # the real node's decoding and static checks
                signed = decode_signed_action_json(request.content)
            except DecodeError as exc:
                return httpx.Response(400, json={"error": str(exc), "code": "malformed"})
            self.posted.append(signed)
            if self.reject is not None:
                code, reason = self.reject
                return httpx.Response(400, json={"error": reason, "code": code})
            return httpx.Response(202, json={"status": "accepted", "action_id": "aa" * 32})
        return httpx.Response(404, json={"error": "no route"})


@pytest.fixture
def node(monkeypatch):
    fake = FakeNode()
    monkeypatch.setattr(cli, "make_client", lambda rpc: SyncNodeClient(rpc, transport=httpx.MockTransport(fake.handler)))
    return fake


@pytest.fixture
def key_file(tmp_path):
    key = SigningKey.generate()
    path = tmp_path / "alice.json"
    AgentKey(key=key, agent_id="alice").save(path)
    return key, path


def action_file(tmp_path, obj, name="action.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


def submit(*args):
    return runner.invoke(cli.app, ["submit", "--rpc", "http://fake:1", *args])


@pytest.fixture
def faucet_file(node, tmp_path):
    """The faucet's key file; the faucet exists on the fake node and has used 3 nonces."""
    key = SigningKey(b"\xfa" * 32)
    path = tmp_path / "faucet.json"
    AgentKey(key=key, agent_id="faucet").save(path)
    node.agents["faucet"] = {"agent_id": "faucet", "public_key": key.public_key.hex(), "last_nonce": 3}
    return key, path


@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_the_faucet_creates_an_agent_with_its_next_nonce_on_the_nodes_chain(node, faucet_file, key_file, tmp_path,
                                                                              encoding):
    faucet, path = faucet_file
    alice, _ = key_file
    public_key = alice.public_key.hex() if encoding == "hex" else base64.b64encode(alice.public_key).decode()
    create = {"type": "create_agent", "agent_id": "alice", "public_key": public_key, "position": [3, 4, 0],
              "electricity": 1000, "data": 50}
    result = submit("--key", str(path), action_file(tmp_path, create))
    assert result.exit_code == 0, result.output + result.stderr
    (signed,) = node.posted
    body = signed.body
    # signed by the sponsor, with its next nonce; the new agent's key is in the action
    assert (body.chain_id, body.agent_id, body.nonce) == ("fake-chain", "faucet", 4)
    assert body.action == CreateAgent(agent_id="alice", public_key=alice.public_key, position=(3, 4, 0),
                                      electricity=1000, data=50)
    assert verify_action_signature(signed, faucet.public_key)
    assert "accepted" in result.output and "create_agent" in result.output and "nonce=4" in result.output


@pytest.mark.parametrize("public_key, message", [
    ("not a key", "not a valid action"),  # neither hex nor base64: refused before anything is sent
    ("ab" * 31, "not a valid action"),  # 62 characters: not read as hex, and not base64 either
    # 64 characters that are not hex are read as base64 (48 bytes): the node refuses the length
    ("zz" * 32, "public_key must be 32 bytes"),
    (base64.b64encode(b"k" * 31).decode(), "public_key must be 32 bytes"),
])
def test_create_agent_with_a_public_key_that_is_not_a_key_is_refused(node, faucet_file, tmp_path, public_key,
                                                                       message):
    _, path = faucet_file
    result = submit("--key", str(path), action_file(tmp_path, {"type": "create_agent", "agent_id": "alice",
                                                               "public_key": public_key}))
    assert result.exit_code == 1 and message in " ".join(result.stderr.split()), result.stderr
    assert node.posted == []
    assert "Traceback" not in result.stderr


def test_nonce_defaults_to_last_nonce_plus_one(node, key_file, tmp_path):
    key, path = key_file
    node.agents["alice"] = {"agent_id": "alice", "public_key": key.public_key.hex(), "last_nonce": 41}
    result = submit("--key", str(path), action_file(tmp_path, {"type": "move_agent", "to": [1, 2, 0]}))
    assert result.exit_code == 0, result.stderr
    (signed,) = node.posted
    assert signed.body.nonce == 42 and signed.body.action == MoveAgent(to=(1, 2, 0))


def test_explicit_nonce_agent_id_and_chain_id_win(node, key_file, tmp_path):
    key, path = key_file
    result = submit(
        "--key", str(path), "--agent-id", "bob", "--nonce", "9", "--chain-id", "other",
        action_file(tmp_path, {"type": "harvest_radiation"}),
    )
    assert result.exit_code == 0, result.stderr
    (signed,) = node.posted
    assert (signed.body.agent_id, signed.body.nonce, signed.body.chain_id) == ("bob", 9, "other")


def test_action_from_stdin(node, key_file):
    _, path = key_file
    node.agents["alice"] = {"agent_id": "alice", "last_nonce": 0}
    result = runner.invoke(
        cli.app, ["submit", "--rpc", "http://fake:1", "--key", str(path), "-"], input='{"type": "harvest_radiation"}'
    )
    assert result.exit_code == 0, result.stderr
    assert node.posted[0].body.nonce == 1


def test_an_agent_that_does_not_exist_is_told_to_have_an_existing_agent_create_it(node, key_file, tmp_path):
    _, path = key_file
    for action in ({"type": "move_agent", "to": [1, 0, 0]}, {"type": "harvest_radiation"}):
        result = submit("--key", str(path), action_file(tmp_path, action))
        assert result.exit_code == 1
        message = " ".join(result.stderr.split())  # (the console wraps long lines)
        assert "'alice' does not exist" in message and "faucet" in message, message
        assert '"type": "create_agent", "agent_id": "alice"' in message, message
    assert node.posted == []


def test_key_without_agent_id_needs_the_option(node, tmp_path):
    path = tmp_path / "anon.json"
    AgentKey(key=SigningKey.generate()).save(path)
    result = submit("--key", str(path), action_file(tmp_path, {"type": "harvest_radiation"}))
    assert result.exit_code == 1 and "--agent-id" in result.stderr
    assert node.posted == []


def test_rejection_exits_1_with_code_and_reason(node, key_file, tmp_path):
    _, path = key_file
    node.agents["alice"] = {"agent_id": "alice", "last_nonce": 0}
    node.reject = ("nonce_replayed", "nonce 1 already used by alice; use 2")
    result = submit("--key", str(path), action_file(tmp_path, {"type": "harvest_radiation"}))
    assert result.exit_code == 1
    assert "nonce_replayed" in result.stderr and "use 2" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", 'JSON object with a "type"'),
        ('{"type": "fly_away"}', "not a valid action"),
        ('{"type": "move_agent"}', "not a valid action"),
        ('{"type": "move_agent", "to": [1, 2, 0], "speed": 3}', "not a valid action"),
    ],
)
def test_bad_action_files_are_clear_errors(node, key_file, tmp_path, content, message):
    _, path = key_file
    f = tmp_path / "a.json"
    f.write_text(content)
    result = submit("--key", str(path), str(f))
    assert result.exit_code == 1 and message in result.stderr
    assert node.posted == []


def test_the_nodes_refusal_of_an_unpaid_fee_is_shown(node, key_file, tmp_path):
    _, path = key_file
    node.agents["alice"] = {"agent_id": "alice", "last_nonce": 0}
    node.reject = ("insufficient_fee", "the fee of this action is 2 electricity but agent 'alice' has 1; "
                                       "receive a transfer first (a harvest pays this fee too)")
    result = submit("--key", str(path), action_file(tmp_path, {"type": "move_agent", "to": [1, 0, 0]}))
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert "insufficient_fee" in message and "receive a transfer first" in message
    assert "Traceback" not in result.stderr


def test_missing_files_and_bad_options(node, key_file, tmp_path):
    _, path = key_file
    r1 = submit("--key", str(tmp_path / "nokey.json"), action_file(tmp_path, {"type": "harvest_radiation"}))
    assert r1.exit_code == 1 and "key file not found" in r1.stderr
    r2 = submit("--key", str(path), str(tmp_path / "missing.json"))
    assert r2.exit_code == 1 and "cannot read action file" in r2.stderr
    r3 = submit("--key", str(path), "--nonce", "0", action_file(tmp_path, {"type": "harvest_radiation"}))
    assert r3.exit_code == 1 and "--nonce must be at least 1" in r3.stderr
    r4 = submit("--key", str(path), "--agent-id", "UPPER", action_file(tmp_path, {"type": "harvest_radiation"}))
    assert r4.exit_code == 1 and "invalid agent id" in r4.stderr
    r5 = runner.invoke(cli.app, ["submit", "--rpc", "http://fake:1"])
    assert r5.exit_code != 0 and r5.exit_code != 1
    assert node.posted == []


def test_unreachable_node_is_one_red_line(key_file, tmp_path):
    _, path = key_file
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    result = runner.invoke(
        cli.app, ["submit", "--rpc", f"127.0.0.1:{port}", "--key", str(path), action_file(tmp_path, {"type": "harvest_radiation"})]
    )
    assert result.exit_code == 1
    assert f"cannot reach node at http://127.0.0.1:{port}" in result.stderr and "is it running?" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_status_json_and_table(node):
    r = runner.invoke(cli.app, ["status", "--rpc", "http://fake:1", "--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout)["chain_id"] == "fake-chain"
    t = runner.invoke(cli.app, ["status", "--rpc", "http://fake:1"])
    assert t.exit_code == 0 and "fake-chain" in t.stdout and "height" in t.stdout and "p2" in t.stdout


def test_status_values_are_for_people_not_python():
    assert cli.human_value(False) == "no" and cli.human_value(True) == "yes" and cli.human_value(None) == "-"
    assert cli.human_value(1234567) == "1,234,567" and cli.human_value([]) == "-"
    assert cli.human_value({"a": 1, "b": None, "c": {"d": [1]}}) == 'a: 1\nb: -\nc: {"d": [1]}'
    for value in (False, None, {"x": False}, [None]):
        assert "False" not in cli.human_value(value) and "None" not in cli.human_value(value)


def test_amounts_beyond_what_can_be_signed_are_one_line_errors(tmp_path):
    path = tmp_path / "k.json"
    AgentKey(SigningKey(b"\x09" * 32), "alice").save(path)
    for amount, says in ((10**23, "can never be signed"), (10**19, "must be a positive integer up to")):
        action = tmp_path / f"a{amount}.json"
        action.write_text(json.dumps({"type": "transfer_resource", "to": "bob", "kind": "data", "amount": amount}))
        r = runner.invoke(cli.app, ["submit", "--rpc", "http://fake:1", "--key", str(path), "--nonce", "1",
                                    "--chain-id", "c", str(action)])
        assert r.exit_code == 1 and says in r.output and "Traceback" not in r.output, r.output


def test_status_table_folds_long_values_instead_of_cutting_them(monkeypatch):
    root = "ab" * 32

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"chain_id": "c", "moniker": "m", "height": 7, "execution_state_root": root})

    monkeypatch.setattr(cli, "make_client", lambda rpc: SyncNodeClient(rpc, transport=httpx.MockTransport(handler)))
    monkeypatch.setattr(cli.console, "width", 60)  # a narrow terminal
    r = runner.invoke(cli.app, ["status", "--rpc", "http://fake:1"])
    assert r.exit_code == 0 and "…" not in r.output
    cells = [line.split("│")[2].strip() for line in r.output.splitlines() if line.count("│") >= 3]
    start = next(i for i, line in enumerate(r.output.splitlines()) if "execution_state_root" in line)
    rows = [line for line in r.output.splitlines()[start:] if line.count("│") >= 3]
    value = "".join(line.split("│")[2].strip() for line in rows[:4])
    assert root in value, (value, cells)
