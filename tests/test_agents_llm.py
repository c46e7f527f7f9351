"""The LLM policy (agent_world_agents/llm.py) against a real local HTTP server that speaks enough
of the OpenAI chat-completions API for the ``openai`` client (a ThreadingHTTPServer on
127.0.0.1, port 0), serving scripted responses.

Unit level: a valid decision; malformed JSON arguments, a wrong wasm hash and a location as
publisher each end in a repair round (the error is in the next request the server receives) or,
repeated, in a refusal (Wait, reason in memory); a timeout, an HTTP error and malformed
completions end in Wait; query tools are answered from the observation, within their budget;
LLMConfig.from_env names exactly the missing variables.

End to end (``multiprocess``): a 4-node testnet, the agent runtime driving one agent with the
LLM policy and a scripted "builder" model: it tries a location as publisher (repaired), compiles
examples/modules/move_counter.wat, waits for the artifact via module_lifecycle_status, installs
it and moves; the instance appears in GET /v1/modules and module_calls > 0 on every node.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest
import structlog
import trio

from agent_world_agents.decision import CompileModule, DeployModule, InstallModule, Move, Wait
from agent_world_agents.llm import ENV_VARS, LLMConfig, LLMConfigError, LLMPolicy
from agent_world_agents.runtime import Memory, Observation
from agent_world_runtime.modules.sandbox import wat_to_wasm

MODULES = Path(__file__).resolve().parent.parent / "examples" / "modules"
WAT = (MODULES / "move_counter.wat").read_text()
MANIFEST = (MODULES / "move_counter.manifest.json").read_text()
WASM = wat_to_wasm(WAT)
WASM_HASH = hashlib.sha256(WASM).hexdigest()
FILES = {"move_counter.wat": WAT, "move_counter.manifest.json": MANIFEST}

COMPILE = {
    "decision": "compile_module_artifact_from_source",
    "publisher": "self",
    "module_id": "move_counter",
    "module_version": "1.0.0",
    "manifest_path": "move_counter.manifest.json",
    "source_files": FILES,
}
DEPLOY = {**COMPILE, "decision": "deploy_module_artifact", "wasm_hash": WASM_HASH, "wasm_bytes_hex": WASM.hex()}


@pytest.fixture(autouse=True)
def _quiet_structlog():
    import logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    yield
    structlog.reset_defaults()


# -- the fake OpenAI-compatible server ----------------------------------------------------------


def completion(message: dict[str, Any], model: str = "fake") -> dict[str, Any]:
    """A chat.completion body whose first choice is ``message``."""
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", **message}}],
    }


def tool_calls(*calls: tuple[str, Any]) -> dict[str, Any]:
    """Reply with tool calls ``(name, arguments)``; arguments not already a string are JSON-encoded."""
    return completion({
        "content": None,
        "tool_calls": [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
            for i, (name, args) in enumerate(calls)
        ],
    })


def decide(args: Any) -> dict[str, Any]:
    return tool_calls(("agent_submit_decision", args))


class Reply:
    """A raw answer: HTTP ``status``, ``body`` (bytes or JSON-able), after ``delay_s`` seconds."""

    def __init__(self, body: Any, status: int = 200, delay_s: float = 0.0) -> None:
        self.body = body
        self.status = status
        self.delay_s = delay_s


class FakeLLM:
    """POST /v1/chat/completions answered by ``script(request_body) -> dict | Reply``; every request
    body and its headers are recorded in ``requests`` / ``headers``."""

    def __init__(self, script: Callable[[dict[str, Any]], Any]) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(Reply({"error": {"message": f"no route {self.path}"}}, status=404))
                    return
                fake.requests.append(body)
                fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                answer = fake.script(body)
                self._send(answer if isinstance(answer, Reply) else Reply(answer))

            def _send(self, reply: Reply) -> None:
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FakeLLM":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def scripted(*replies: Any) -> Callable[[dict[str, Any]], Any]:
    """Answer the n-th request with ``replies[n]`` (the last one repeats)."""
    count = iter(range(10**6))
    return lambda body: replies[min(next(count), len(replies) - 1)]


def observation(agent_id: str = "alice", modules: dict | None = None) -> Observation:
    return Observation(
        agent_id=agent_id,
        height=7,
        agent={"agent_id": agent_id, "position": [0, 0, 0], "electricity": 100, "data": 1000, "last_nonce": 1},
        controlled=[agent_id],
        modules=modules,
        recent_events=[],
    )


def run_policy(fake: FakeLLM, obs: Observation | None = None, memory: Memory | None = None, *, timeout_ms: int = 5000,
               **kwargs: Any) -> tuple[Any, LLMPolicy, Memory]:
    """Run one decide() under trio against ``fake``; return (decision, policy, memory)."""
    config = LLMConfig(base_url=fake.base_url, model="fake-model", api_key="test-key", timeout_ms=timeout_ms)
    policy = LLMPolicy(config, **kwargs)
    memory = memory if memory is not None else Memory()

    async def main() -> Any:
        try:
            return await policy.decide(obs or observation(), memory)
        finally:
            await policy.aclose()

    return trio.run(main), policy, memory


def last_message(body: dict[str, Any]) -> dict[str, Any]:
    return body["messages"][-1]


# -- unit level ---------------------------------------------------------------------------------


def test_valid_decision_on_the_first_call():
    with FakeLLM(scripted(decide(COMPILE))) as fake:
        decision, policy, _ = run_policy(fake)
    assert isinstance(decision, CompileModule) and decision.source_files == FILES
    assert policy.stats.as_dict() == {"calls": 1, "decisions": 1, "queries": 0, "repairs": 0, "refusals": 0,
                                      "timeouts": 0, "errors": 0}
    body = fake.requests[0]
    assert body["model"] == "fake-model"
    assert fake.headers[0].get("authorization") == "Bearer test-key"
    assert [t["function"]["name"] for t in body["tools"]][0] == "agent_submit_decision"
    assert body["messages"][0]["role"] == "system" and "electricity" in body["messages"][0]["content"]
    assert body["messages"][1]["role"] == "user" and '"agent_id": "alice"' in body["messages"][1]["content"]


def test_malformed_json_arguments_cost_a_repair_round():
    with FakeLLM(scripted(decide('{"decision": "move_agent", "to": [1, 2'), decide({"decision": "move_agent", "to": [1, 2, 3]}))) as fake:
        decision, policy, _ = run_policy(fake)
    assert decision == Move(to=(1, 2, 3))
    assert len(fake.requests) == 2 and policy.stats.repairs == 1
    reply = last_message(fake.requests[1])
    assert reply["role"] == "tool" and reply["tool_call_id"] == "call_0"
    assert "not valid JSON" in reply["content"]
    # the assistant's bad call is echoed back before the tool result, as the API requires
    assert fake.requests[1]["messages"][-2]["tool_calls"][0]["id"] == "call_0"


def test_wrong_hash_costs_a_repair_round_and_the_fix_is_taken():
    with FakeLLM(scripted(decide({**DEPLOY, "wasm_hash": "0" * 64}), decide(DEPLOY))) as fake:
        decision, policy, _ = run_policy(fake)
    assert isinstance(decision, DeployModule) and decision.wasm_hash == WASM_HASH
    content = last_message(fake.requests[1])["content"]
    assert "is not the sha256" in content and WASM_HASH in content and "field: wasm_hash" in content
    assert policy.stats.repairs == 1 and policy.stats.decisions == 1


def test_location_as_publisher_is_refused_after_max_repairs():
    bad = {**COMPILE, "publisher": "location:1,2,3"}
    with FakeLLM(scripted(decide(bad))) as fake:
        decision, policy, memory = run_policy(fake, max_repairs=2)
    assert decision == Wait()
    assert len(fake.requests) == 3  # the first try and two repairs, no more
    for body in fake.requests[1:]:
        assert "location" in last_message(body)["content"] and "cannot own" in last_message(body)["content"]
    assert policy.stats.repairs == 2 and policy.stats.refusals == 1 and policy.stats.decisions == 0
    entry = memory.recent(1)[0]
    assert entry["outcome"] == "refused" and "location" in entry["reason"]
    assert "location" in policy.last_wait_reason["alice"]


def test_timeout_gives_wait_with_the_reason():
    with FakeLLM(scripted(Reply(decide({"decision": "wait"}), delay_s=1.5))) as fake:
        decision, policy, memory = run_policy(fake, timeout_ms=300)
    assert decision == Wait()
    assert policy.stats.timeouts == 1 and policy.stats.calls == 1 and policy.stats.errors == 0
    assert memory.recent(1)[0]["outcome"] == "timeout" and "300 ms" in memory.recent(1)[0]["reason"]


@pytest.mark.parametrize(
    "reply,needle",
    [
        (Reply({"error": {"message": "overloaded"}}, status=500), "HTTP 500"),
        (Reply({"error": {"message": "bad key"}}, status=401), "HTTP 401"),
        (Reply(b"this is not json"), ""),
        (Reply({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}), "no choices"),
    ],
)
def test_http_errors_and_malformed_completions_give_wait(reply, needle):
    with FakeLLM(scripted(reply)) as fake:
        decision, policy, memory = run_policy(fake)
    assert decision == Wait()
    assert policy.stats.errors == 1 and policy.stats.decisions == 0
    assert len(fake.requests) == 1  # max_retries=0: a failed request is not repeated
    assert needle in memory.recent(1)[0]["reason"]


def test_an_answer_without_a_tool_call_is_repaired():
    with FakeLLM(scripted(completion({"content": "I think I will wait."}), decide({"decision": "wait_ticks", "ticks": 3}))) as fake:
        decision, policy, _ = run_policy(fake)
    assert decision.ticks == 3 and policy.stats.repairs == 1
    assert last_message(fake.requests[1]) == {"role": "user", "content": "you answered without calling a tool; call agent_submit_decision exactly once"}


def test_query_tools_are_answered_from_the_observation():
    modules = {"artifacts": [{"wasm_hash": WASM_HASH, "module_id": "move_counter", "version": "1.0.0", "publisher": "alice"}],
               "instances": []}

    def model(body):
        last = last_message(body)
        if last["role"] == "user":
            return tool_calls(("module_lifecycle_status", {"module_id": "move_counter"}), ("observe", {}))
        status = json.loads(body["messages"][-2]["content"])
        wasm_hash = status["yours"]["published_wasm_hashes"][0]
        return decide({"decision": "install_module_from_artifact", "installer": "self", "module_id": "move_counter",
                       "module_version": "1.0.0", "wasm_hash": wasm_hash})

    with FakeLLM(model) as fake:
        decision, policy, _ = run_policy(fake, observation(modules=modules))
    assert decision == InstallModule(installer="self", module_id="move_counter", module_version="1.0.0", wasm_hash=WASM_HASH)
    assert policy.stats.queries == 2 and policy.stats.calls == 2 and policy.stats.repairs == 0
    observed = json.loads(last_message(fake.requests[1])["content"])
    assert observed["agent"]["electricity"] == 100


def test_query_rounds_are_bounded():
    with FakeLLM(scripted(tool_calls(("observe", {})))) as fake:
        decision, policy, _ = run_policy(fake, max_tool_rounds=1, max_repairs=1)
    assert decision == Wait()
    # one query round, then only the decision tool is offered; two more answers are refused
    assert len(fake.requests) == 3
    assert [t["function"]["name"] for t in fake.requests[1]["tools"]] == ["agent_submit_decision"]
    assert "no more queries" in last_message(fake.requests[1 + 1])["content"]
    assert policy.stats.queries == 1 and policy.stats.refusals == 1


def test_config_from_env_names_exactly_what_is_missing():
    full = {"AGENT_WORLD_LLM_BASE_URL": "http://127.0.0.1:9/v1", "AGENT_WORLD_LLM_MODEL": "m",
            "AGENT_WORLD_LLM_API_KEY": "k", "AGENT_WORLD_LLM_TIMEOUT_MS": "2500"}
    assert LLMConfig.from_env(full) == LLMConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key="k", timeout_ms=2500)
    with pytest.raises(LLMConfigError) as err:
        LLMConfig.from_env({})
    assert err.value.args[0].startswith("the LLM policy needs " + ", ".join(ENV_VARS) + " set")
    partial = {k: v for k, v in full.items() if k not in ("AGENT_WORLD_LLM_MODEL", "AGENT_WORLD_LLM_TIMEOUT_MS")}
    with pytest.raises(LLMConfigError) as err:
        LLMConfig.from_env(partial)
    message = err.value.args[0]
    assert message.startswith("the LLM policy needs AGENT_WORLD_LLM_MODEL, AGENT_WORLD_LLM_TIMEOUT_MS set")
    assert "AGENT_WORLD_LLM_BASE_URL," not in message and "AGENT_WORLD_LLM_API_KEY," not in message
    with pytest.raises(LLMConfigError, match="AGENT_WORLD_LLM_BASE_URL='ftp://x' is not an http"):
        LLMConfig.from_env({**full, "AGENT_WORLD_LLM_BASE_URL": "ftp://x"})
    with pytest.raises(LLMConfigError, match="AGENT_WORLD_LLM_TIMEOUT_MS='soon' must be an integer"):
        LLMConfig.from_env({**full, "AGENT_WORLD_LLM_TIMEOUT_MS": "soon"})
    with pytest.raises(LLMConfigError, match="AGENT_WORLD_LLM_TIMEOUT_MS='0'"):
        LLMConfig.from_env({**full, "AGENT_WORLD_LLM_TIMEOUT_MS": "0"})


# -- end to end against a 4-node testnet ------------------------------------------------------------


class BuilderModel:
    """A scripted model for one agent: each turn it first asks module_lifecycle_status, then
    compiles move_counter (after one try with a location as publisher, which must be repaired),
    installs the artifact once it is listed, then alternates moves and harvests. A compile or
    install that has not shown up after ``RESEND_TURNS`` turns is sent again."""

    RESEND_TURNS = 30

    def __init__(self) -> None:
        self.tried_location = False
        self.compile_turn: int | None = None
        self.install_turn: int | None = None
        self.turn = 0
        self.moves = 0
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return self._answer(body)

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body["messages"]
        last = messages[-1]
        if last["role"] == "user":
            self.turn += 1
            return tool_calls(("module_lifecycle_status", {"module_id": "move_counter"}))
        if last["content"].startswith("invalid decision"):
            assert "location" in last["content"], last["content"]
            self.compile_turn = self.turn
            return decide(COMPILE)
        status = json.loads(last["content"])
        agent_id = json.loads(messages[1]["content"].split("\n")[1])["observation"]["agent_id"]
        artifacts = [a for a in status["artifacts"] if a["publisher"] == agent_id]
        instances = [i for i in status["instances"] if i["owner_agent_id"] == agent_id]
        if not artifacts:
            if not self.tried_location:
                self.tried_location = True
                return decide({**COMPILE, "publisher": "location:1,2,3"})
            if self.compile_turn is None or self.turn - self.compile_turn > self.RESEND_TURNS:
                self.compile_turn = self.turn
                return decide(COMPILE)
            return decide({"decision": "wait"})
        if not instances:
            if self.install_turn is None or self.turn - self.install_turn > self.RESEND_TURNS:
                self.install_turn = self.turn
                return decide({"decision": "install_module_from_artifact", "installer": "self",
                               "module_id": "move_counter", "module_version": "1.0.0",
                               "wasm_hash": artifacts[0]["wasm_hash"]})
            return decide({"decision": "wait"})
        self.moves += 1
        if self.moves % 3 == 0:
            return decide({"decision": "harvest_radiation"})
        return decide({"decision": "move_agent", "to": [self.moves % 2, 1, 0]})


@pytest.mark.multiprocess
@pytest.mark.timeout(240)
def test_llm_agent_builds_installs_and_uses_a_module_on_a_testnet(tmp_path):
    from agent_world_agents.runtime import AgentRuntime
    from agent_world_client.client import AgentKey, NodeClient
    from agent_world_tools.testnet import (
        NodeProcess,
        faucet_key_file,
        init_testnet,
        load_testnet,
        stop_all,
        wait_until_ready,
    )

    init_testnet(tmp_path / "tn", 4)
    nodes = load_testnet(tmp_path / "tn")
    procs = [NodeProcess(n) for n in nodes]
    model = BuilderModel()
    result: dict[str, Any] = {}

    async def scenario(fake: FakeLLM) -> None:
        await wait_until_ready(nodes, procs, timeout_s=90)
        config = LLMConfig(base_url=fake.base_url, model="builder", api_key="k", timeout_ms=5000)
        policy = LLMPolicy(config)
        runtime = AgentRuntime([n.rpc_url for n in nodes], agents=1, policy_factory=lambda i, a: policy,
                               key_dir=tmp_path / "keys", chain_id=nodes[0].chain_id, seed=3, agent_prefix="llm",
                               turn_s=0.3, poll_interval_s=0.25,
                               sponsor=AgentKey.load(faucet_key_file(tmp_path / "tn")))
        agent_id = next(iter(runtime.agents))
        clients = [NodeClient(n.rpc_url, timeout_s=5.0) for n in nodes]
        stop = trio.Event()

        async def everywhere() -> bool:
            for client in clients:
                modules = await client.modules()
                if not any(i["owner_agent_id"] == agent_id and i["module_id"] == "move_counter"
                           for i in modules["instances"]):
                    return False
                if (await client.status()).get("module_calls", 0) < 1:
                    return False
            return True

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runtime.run, stop)
                with trio.move_on_after(150) as deadline:
                    while not await everywhere():
                        await trio.sleep(0.5)
                stop.set()
            result["done"] = not deadline.cancelled_caught
            result["stats"] = runtime.stats.as_dict()
            result["llm"] = policy.stats.as_dict()
            result["memory"] = runtime.memory_of(agent_id).recent(50)
            result["modules"] = [await c.modules() for c in clients]
        finally:
            with trio.CancelScope(shield=True):
                await policy.aclose()
                for client in clients:
                    await client.aclose()

    try:
        for p in procs:
            p.start()
        with FakeLLM(model) as fake:
            trio.run(scenario, fake)
    finally:
        stop_all(procs, grace_s=15)
    assert result["done"], (result.get("stats"), result.get("llm"), result.get("memory"), [p.log_tail(20) for p in procs])
    llm = result["llm"]
    print(f"\nLLM policy: {llm}\nruntime: {result['stats']}")
    assert llm["repairs"] >= 1 and llm["refusals"] == 0, llm  # the location publisher was repaired
    assert llm["queries"] >= 3 and llm["decisions"] >= 3, llm
    kinds = result["stats"]["by_kind"]
    assert kinds.get("compile_module_artifact_from_source", 0) >= 1 and kinds.get("install_module_from_artifact", 0) >= 1
    assert kinds.get("move_agent", 0) >= 1, kinds
    hashes = {i["wasm_hash"] for m in result["modules"] for i in m["instances"] if i["module_id"] == "move_counter"}
    assert hashes == {WASM_HASH}  # compiled in the world to the same bytes as here, on every node
