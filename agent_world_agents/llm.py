"""The LLM policy: decisions from any OpenAI-compatible chat-completions endpoint.

Configured from the environment (``LLMConfig.from_env``): ``AGENT_WORLD_LLM_BASE_URL`` (e.g.
``https://api.openai.com/v1`` or ``http://127.0.0.1:11434/v1``), ``AGENT_WORLD_LLM_MODEL``,
``AGENT_WORLD_LLM_API_KEY`` (any non-empty text for a server without authentication) and
``AGENT_WORLD_LLM_TIMEOUT_MS`` (per request).

One ``decide()`` is a bounded conversation (``LLMPolicy``): a system prompt with the world's
rules, the decision kinds and their costs; one user message with the agent's observation and
its memory window; then up to ``max_tool_rounds`` rounds of free query tools
(``parse.QUERY_TOOLS``, answered from the observation) and exactly one
``agent_submit_decision`` call, checked by ``parse.parse_decision``. An invalid decision (or an
answer without a decision) is sent back as the tool result / a user message: a repair round, at
most ``max_repairs``; after that the turn is a ``Wait`` and the reason goes into the agent's
memory. A timeout, an HTTP error or a malformed completion is a ``Wait`` too. ``decide`` never
raises (cancellation excepted); everything is counted in ``LLMPolicy.stats`` and logged.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

import openai
import structlog

from agent_world_runtime.params import WorldParams

from .decision import DECISION_KINDS, Decision, Wait, decision_kind
from .parse import (
    DECISION_TOOL,
    DECISION_TOOL_NAME,
    QUERY_TOOL_NAMES,
    QUERY_TOOLS,
    DecisionError,
    answer_query_tool,
    module_lifecycle_status,
    observation_summary,
    parse_decision,
)

log = structlog.get_logger(__name__)

ENV_BASE_URL = "AGENT_WORLD_LLM_BASE_URL"
ENV_MODEL = "AGENT_WORLD_LLM_MODEL"
ENV_API_KEY = "AGENT_WORLD_LLM_API_KEY"
ENV_TIMEOUT_MS = "AGENT_WORLD_LLM_TIMEOUT_MS"
ENV_VARS: tuple[str, ...] = (ENV_BASE_URL, ENV_MODEL, ENV_API_KEY, ENV_TIMEOUT_MS)
MAX_TIMEOUT_MS = 600_000
#: Strings longer than this in the memory shown to the model are cut (source files, wasm hex).
MEMORY_STRING_CHARS = 200
#: Longest reason kept for a Wait (characters).
MAX_REASON_CHARS = 500


class LLMConfigError(ValueError):
    """The LLM environment is incomplete or invalid; the message names the variables to set and how."""


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to ask for decisions. ``base_url``: the OpenAI-compatible API root (http or
    https, usually ending in ``/v1``); ``model``: the model name sent with each request;
    ``api_key``: sent as the bearer token; ``timeout_ms``: per-request timeout in milliseconds
    (1..MAX_TIMEOUT_MS)."""

    base_url: str
    model: str
    api_key: str
    timeout_ms: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "LLMConfig":
        """Read the four ``AGENT_WORLD_LLM_*`` variables from ``environ`` (default ``os.environ``).

        Raises LLMConfigError naming exactly the variables that are missing or empty, or the one
        that is invalid (a base URL that is not http(s)://host..., a timeout that is not an
        integer in 1..MAX_TIMEOUT_MS) and what to set instead."""
        env = os.environ if environ is None else environ
        values = {name: (env.get(name) or "").strip() for name in ENV_VARS}
        missing = [name for name in ENV_VARS if not values[name]]
        if missing:
            raise LLMConfigError(
                f"the LLM policy needs {', '.join(missing)} set "
                f"({ENV_BASE_URL}: the OpenAI-compatible API root such as https://api.openai.com/v1; "
                f"{ENV_MODEL}: the model name; {ENV_API_KEY}: the API key, any non-empty text if the server "
                f"needs none; {ENV_TIMEOUT_MS}: per-request timeout in milliseconds such as 30000)"
            )
        url = values[ENV_BASE_URL]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise LLMConfigError(f"{ENV_BASE_URL}={url[:100]!r} is not an http(s) URL; set it like https://api.openai.com/v1")
        try:
            timeout_ms = int(values[ENV_TIMEOUT_MS])
        except ValueError:
            timeout_ms = 0
        if not 1 <= timeout_ms <= MAX_TIMEOUT_MS:
            raise LLMConfigError(
                f"{ENV_TIMEOUT_MS}={values[ENV_TIMEOUT_MS][:40]!r} must be an integer number of milliseconds "
                f"in 1..{MAX_TIMEOUT_MS}, such as 30000"
            )
        return cls(base_url=url.rstrip("/"), model=values[ENV_MODEL], api_key=values[ENV_API_KEY], timeout_ms=timeout_ms)


@dataclass
class LLMStats:
    """Counters of an LLMPolicy (all agents it serves). ``calls``: chat-completion requests sent;
    ``decisions``: valid decisions returned; ``queries``: query tool calls answered; ``repairs``:
    repair rounds granted after an invalid decision or an answer without one; ``refusals``: turns
    ended as Wait after ``max_repairs`` repairs; ``timeouts``: requests over the timeout;
    ``errors``: HTTP errors, unreachable endpoints, malformed completions and internal errors."""

    calls: int = 0
    decisions: int = 0
    queries: int = 0
    repairs: int = 0
    refusals: int = 0
    timeouts: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        """A JSON-ready copy."""
        return asdict(self)


class _Malformed(Exception):
    """The completion is not what the chat-completions API promises."""


def system_prompt(params: WorldParams) -> str:
    """The rules of the world in brief, the decision kinds and their costs (from ``params``)."""
    return (
        "You are an autonomous agent living in Agent World, a persistent shared world kept by a cluster "
        "of nodes. You act only through signed actions; each turn you make exactly one decision by calling "
        f"the tool {DECISION_TOOL_NAME} once.\n"
        "Rules:\n"
        f"- Positions are integer [x, y, z] in [-{params.grid_size}, {params.grid_size}]. Moving costs "
        f"{params.move_cost_per_step} electricity per step of Manhattan distance.\n"
        f"- harvest_radiation gives you {params.harvest_amount} electricity, at most once every "
        f"{params.harvest_interval} heights. Every action pays a fee of {params.fee_base} electricity plus "
        f"{params.fee_per_kib} per KiB of the signed action, even if the world then rejects it; an action "
        "whose fee you cannot pay is refused, so harvest when you run low.\n"
        "- transfer_resource gives electricity or data to another agent (by its bare id).\n"
        "- WebAssembly modules: compile_module_artifact_from_source (fee "
        f"{params.module_compile_fee}) builds an artifact from source_files (a .wat file, or C or Rust "
        "sources when the chain has that toolchain, and its JSON manifest at manifest_path; C and Rust are "
        "built by the validators over several blocks: your memory shows build_pending, then built with the "
        "wasm_hash or build_failed with a code); deploy_module_artifact (fee {params.module_deploy_fee}) publishes "
        "already compiled bytes (wasm_bytes_hex, whose sha256 is wasm_hash); install_module_from_artifact "
        f"(fee {params.module_install_fee}) installs an artifact you published, by its wasm_hash, as an "
        "instance you own; upgrade_module moves your instance to a newer artifact of the same module. "
        "Every call of an installed module is billed to its owner.\n"
        "- publisher / installer are 'self' or 'agent:<id>' of an agent you control; never a location.\n"
        "- A compile or deploy takes a block or more to appear: check module_lifecycle_status for the "
        "artifact's wasm_hash before installing, and wait (wait or wait_ticks) while it is pending.\n"
        f"Decision kinds: {', '.join(DECISION_KINDS)}.\n"
        f"Free query tools (they do not use your turn): {', '.join(QUERY_TOOL_NAMES)}. "
        "If your decision is invalid you get the reason back; fix it and call the tool again."
    )


def _compact(value: Any, depth: int = 0) -> Any:
    """``value`` with long strings cut to MEMORY_STRING_CHARS and nesting cut at depth 6."""
    if isinstance(value, str):
        return value if len(value) <= MEMORY_STRING_CHARS else value[:MEMORY_STRING_CHARS] + f"...({len(value)} chars)"
    if depth >= 6:
        return "..."
    if isinstance(value, dict):
        return {str(k): _compact(v, depth + 1) for k, v in list(value.items())[:40]}
    if isinstance(value, (list, tuple)):
        return [_compact(v, depth + 1) for v in list(value)[:40]]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _compact(repr(value), depth + 1)


def observation_message(obs: Any, memory: Any, window: int) -> str:
    """The user message of a turn: the observation, the agent's modules and its memory window
    (``memory.recent(window)``, long strings cut), as JSON inside a short instruction."""
    try:
        recent = list(memory.recent(window)) if memory is not None else []
    except Exception as exc:  # a foreign Memory implementation must not end the turn
        recent = [{"error": f"memory unavailable: {exc}"}]
    status = module_lifecycle_status(obs)
    payload = {
        "observation": observation_summary(obs),
        "your_modules": status["yours"],
        "recent_memory": _compact(recent),
    }
    return (
        "Your turn. Current state (JSON):\n"
        + json.dumps(payload, sort_keys=True, default=str)
        + f"\nDecide by calling {DECISION_TOOL_NAME} exactly once."
    )


def _tool_message(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


class LLMPolicy:
    """A Policy (``runtime.Policy``) asking an OpenAI-compatible chat-completions endpoint.

    ``config``: the endpoint (``LLMConfig``). ``max_repairs``: repair rounds per turn after an
    invalid decision (>= 0). ``max_tool_rounds``: rounds of query tool calls per turn (>= 0).
    ``params``: the world rules quoted in the system prompt (defaults: ``WorldParams()``).
    ``memory_window``: memory entries shown each turn. ``client``: an ``openai.AsyncOpenAI`` to
    use instead of one built from ``config`` (tests). One policy may serve many agents at once.
    Works under trio and asyncio (the openai client uses anyio). Raises ValueError for negative
    bounds.
    """

    def __init__(
        self,
        config: LLMConfig,
        *,
        max_repairs: int = 2,
        max_tool_rounds: int = 4,
        params: WorldParams | None = None,
        memory_window: int = 10,
        client: openai.AsyncOpenAI | None = None,
    ) -> None:
        if max_repairs < 0 or max_tool_rounds < 0 or memory_window < 0:
            raise ValueError("max_repairs, max_tool_rounds and memory_window must be >= 0")
        self.config = config
        self.max_repairs = max_repairs
        self.max_tool_rounds = max_tool_rounds
        self.memory_window = memory_window
        self.params = params if params is not None else WorldParams()
        self.stats = LLMStats()
        #: The reason of each agent's last Wait forced by the policy (refusal, timeout, error).
        self.last_wait_reason: dict[str, str] = {}
        self._client = client
        self._system = system_prompt(self.params)

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The openai client (built on first use, no retries: a failed request is a Wait)."""
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                base_url=self.config.base_url,
                api_key=self.config.api_key,
                timeout=self.config.timeout_ms / 1000.0,
                max_retries=0,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client (if one was built)."""
        if self._client is not None:
            await self._client.close()

    async def decide(self, obs: Any, memory: Any) -> Decision:
        """Return the agent's decision for this turn (see the module docstring). ``obs``: a
        ``runtime.Observation``; ``memory``: its ``runtime.Memory``. Never raises except for
        cancellation; failures give ``Wait()`` with the reason in ``last_wait_reason`` and memory."""
        agent_id = str(getattr(obs, "agent_id", "?"))
        try:
            return await self._converse(obs, memory, agent_id)
        except openai.APITimeoutError:
            self.stats.timeouts += 1
            return self._wait(agent_id, memory, "timeout", f"the LLM did not answer within {self.config.timeout_ms} ms")
        except openai.APIStatusError as exc:
            self.stats.errors += 1
            return self._wait(agent_id, memory, "llm_error", f"the LLM endpoint answered HTTP {exc.status_code}: {exc.message}")
        except openai.APIError as exc:  # connection errors, undecodable responses
            self.stats.errors += 1
            return self._wait(agent_id, memory, "llm_error", f"LLM request failed: {type(exc).__name__}: {exc}")
        except _Malformed as exc:
            self.stats.errors += 1
            return self._wait(agent_id, memory, "llm_error", f"malformed completion: {exc}")
        except Exception as exc:  # never an exception out of decide: a bug here must not stop an agent
            self.stats.errors += 1
            log.exception("llm_policy_internal_error", agent=agent_id)
            return self._wait(agent_id, memory, "internal_error", f"{type(exc).__name__}: {exc}")

    def _wait(self, agent_id: str, memory: Any, outcome: str, reason: str) -> Wait:
        reason = reason[:MAX_REASON_CHARS]
        self.last_wait_reason[agent_id] = reason
        log.warning("llm_decision_wait", agent=agent_id, outcome=outcome, reason=reason)
        try:
            if memory is not None:
                memory.add({"kind": "llm", "outcome": outcome, "reason": reason})
        except Exception:  # a foreign Memory implementation must not end the turn
            log.warning("llm_memory_add_failed", agent=agent_id)
        return Wait()

    async def _complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Any:
        """One chat-completions request; return the first choice's message. Raises openai errors
        and _Malformed."""
        self.stats.calls += 1
        completion = await self.client.chat.completions.create(
            model=self.config.model, messages=messages, tools=tools, tool_choice="auto"
        )
        choices = getattr(completion, "choices", None)
        if not choices:
            raise _Malformed("no choices in the completion")
        message = getattr(choices[0], "message", None)
        if message is None:
            raise _Malformed("the first choice has no message")
        return message

    async def _converse(self, obs: Any, memory: Any, agent_id: str) -> Decision:
        controlled = {str(a) for a in (getattr(obs, "controlled", None) or [])} | {agent_id}
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": self._system},
            {"role": "user", "content": observation_message(obs, memory, self.memory_window)},
        ]
        repairs = 0
        tool_rounds = 0
        while True:
            queries_open = tool_rounds < self.max_tool_rounds
            tools = [DECISION_TOOL, *QUERY_TOOLS] if queries_open else [DECISION_TOOL]
            message = await self._complete(messages, tools)
            content = message.content if isinstance(getattr(message, "content", None), str) else None
            tool_calls = list(getattr(message, "tool_calls", None) or [])
            calls: list[tuple[str, str, Any]] = []
            for call in tool_calls:
                function = getattr(call, "function", None)
                call_id = getattr(call, "id", None)
                if function is None or not isinstance(call_id, str) or not isinstance(getattr(function, "name", None), str):
                    raise _Malformed("a tool call without an id or a function name")
                calls.append((call_id, function.name, getattr(function, "arguments", None)))
            if not calls:
                problem = f"you answered without calling a tool; call {DECISION_TOOL_NAME} exactly once"
                messages.append({"role": "assistant", "content": content or ""})
                messages.append({"role": "user", "content": problem})
            else:
                messages.append({
                    "role": "assistant",
                    "content": content,
                    "tool_calls": [
                        {"id": cid, "type": "function", "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
                        for cid, name, args in calls
                    ],
                })
                problem = None
                decisions = [c for c in calls if c[1] == DECISION_TOOL_NAME]
                results: list[dict[str, Any]] = []
                if len(decisions) > 1:
                    problem = f"you called {DECISION_TOOL_NAME} {len(decisions)} times; call it exactly once per turn"
                elif decisions:
                    parsed = parse_decision(decisions[0][2], self_id=agent_id, controlled=controlled)
                    if not isinstance(parsed, DecisionError):
                        self.stats.decisions += 1
                        log.info("llm_decision", agent=agent_id, kind=decision_kind(parsed), repairs=repairs,
                                 tool_rounds=tool_rounds)
                        return parsed
                    problem = f"invalid decision: {parsed.message}" + (f" (field: {parsed.field})" if parsed.field else "")
                for cid, name, args in calls:
                    if name == DECISION_TOOL_NAME:
                        results.append(_tool_message(cid, f"{problem}. Fix it and call {DECISION_TOOL_NAME} again."))
                    elif name in QUERY_TOOL_NAMES and queries_open:
                        self.stats.queries += 1
                        results.append(_tool_message(cid, answer_query_tool(name, args, obs, memory)))
                    elif name in QUERY_TOOL_NAMES:
                        problem = problem or f"no more queries this turn; call {DECISION_TOOL_NAME} now"
                        results.append(_tool_message(cid, json.dumps({"error": problem})))
                    else:
                        problem = problem or f"unknown tool {name[:60]!r}; call {DECISION_TOOL_NAME}"
                        results.append(_tool_message(cid, json.dumps({"error": problem})))
                messages.extend(results)
                if problem is None:
                    tool_rounds += 1
                    continue
            if repairs >= self.max_repairs:
                self.stats.refusals += 1
                return self._wait(agent_id, memory, "refused", f"no valid decision after {repairs} repairs: {problem}")
            repairs += 1
            self.stats.repairs += 1
            log.info("llm_repair_round", agent=agent_id, repair=repairs, problem=problem[:200])
