"""The LLM's side of a decision: the ``agent_submit_decision`` tool, its strict parser, and the
query tools a model may call before deciding.

Schema choice: one flat JSON object, ``decision`` (an enum of ``DECISION_KINDS``) plus every
field any kind uses, all optional, ``additionalProperties: false``. Not ``oneOf`` per kind:
OpenAI's function ``parameters`` must be a top-level ``type: object`` without ``oneOf``/``anyOf``
at the root, and several OpenAI-compatible servers (llama.cpp grammars, vLLM guided decoding)
handle a flat object best. Which fields belong to which kind is enforced by ``parse_decision``
(and said in each field's description), so the model gets a precise message instead of a
schema mismatch. The one field shared by two shapes, ``to`` (a position for ``move_agent``, an
agent id for ``transfer_resource``), uses a property-level ``anyOf``, which those servers accept.

``parse_decision`` never raises: every problem is a ``DecisionError`` whose ``message`` is
written for the model (what was wrong, what to send instead) and whose ``field`` names the
field. Fields of *other* kinds sent as ``null`` are ignored (models often fill unused optional
fields with null); any other value for a field the kind does not take is an error.

Query tools (``QUERY_TOOLS``) are answered from the agent's observation by
``answer_query_tool``: ``module_lifecycle_status`` (known artifacts, installed instances, their
owners and versions), ``observe`` (the observation) and ``recent_events`` (events about the agent
and its short-term memory).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import msgspec

from agent_world_runtime.actions import (
    AGENT_ID_RE,
    MAX_ACTION_PAYLOAD_BYTES,
    MAX_TRANSFER_AMOUNT,
    RESOURCE_KINDS,
)
from agent_world_runtime.codec import encode
from agent_world_runtime.modules.lifecycle import MODULE_ID_RE, VERSION_RE, WASM_HASH_RE, check_manifest
from agent_world_runtime.modules.manifest import ModuleManifest
from agent_world_runtime.modules.source import (
    MAX_SOURCE_FILES,
    MAX_SOURCE_TOTAL_BYTES,
    SourceRejected,
    check_source_path,
)
from agent_world_runtime.rules import Rejected

from .decision import (
    DECISION_KINDS,
    CompileModule,
    Decision,
    DeployModule,
    Harvest,
    InstallModule,
    Move,
    Transfer,
    UpgradeModule,
    Wait,
    WaitTicks,
    decision_to_action,
)

DECISION_TOOL_NAME = "agent_submit_decision"
#: Largest accepted ``arguments`` string (characters). A deploy carries its wasm as hex (two
#: characters a byte) and a signed action is at most MAX_ACTION_PAYLOAD_BYTES, so anything longer
#: can never become an action.
MAX_ARGUMENT_CHARS = 2 * MAX_ACTION_PAYLOAD_BYTES + 64 * 1024
#: Room left in a signed action's payload for the envelope (chain id, agent id, nonce, signature).
ENVELOPE_RESERVE_BYTES = 1024
MIN_WAIT_TICKS = 1
MAX_WAIT_TICKS = 100
#: Coordinates must fit a signed 64-bit integer (canonical msgpack); the world's grid is smaller.
MAX_COORDINATE = (1 << 63) - 1

_HEX_RE = re.compile(r"[0-9a-fA-F]*")

#: Fields each kind takes: (required, optional).
KIND_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "wait": ((), ()),
    "wait_ticks": (("ticks",), ()),
    "move_agent": (("to",), ()),
    "harvest_radiation": ((), ()),
    "transfer_resource": (("to", "kind", "amount"), ()),
    "compile_module_artifact_from_source": (
        ("publisher", "module_id", "module_version", "manifest_path", "source_files"),
        (),
    ),
    "deploy_module_artifact": (
        ("publisher", "module_id", "module_version", "manifest_path", "source_files", "wasm_hash", "wasm_bytes_hex"),
        (),
    ),
    "install_module_from_artifact": (("installer", "module_id", "module_version", "wasm_hash"), ("activate",)),
    "upgrade_module": (("installer", "module_id", "module_version", "wasm_hash"), ("activate",)),
}
assert set(KIND_FIELDS) == set(DECISION_KINDS), "KIND_FIELDS must cover decision.DECISION_KINDS"

ALL_FIELDS: tuple[str, ...] = (
    "to", "ticks", "kind", "amount", "publisher", "installer", "module_id", "module_version",
    "manifest_path", "source_files", "wasm_hash", "wasm_bytes_hex", "activate",
)  # fmt: skip


def _function_tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


DECISION_TOOL: dict[str, Any] = _function_tool(
    DECISION_TOOL_NAME,
    "Submit this turn's single decision for your agent. Call it exactly once per turn, with "
    "'decision' set to one kind and only that kind's fields. Fields by kind: "
    "wait: none; wait_ticks: ticks; move_agent: to=[x,y,z]; harvest_radiation: none; "
    "transfer_resource: to (agent id), kind, amount; "
    "compile_module_artifact_from_source: publisher, module_id, module_version, manifest_path, source_files; "
    "deploy_module_artifact: publisher, module_id, module_version, manifest_path, source_files, wasm_hash, "
    "wasm_bytes_hex; install_module_from_artifact and upgrade_module: installer, module_id, module_version, "
    "wasm_hash, optional activate.",
    {
        "decision": {"type": "string", "enum": list(DECISION_KINDS), "description": "The kind of decision."},
        "to": {
            "description": "move_agent: target position [x, y, z] (integers; costs electricity per step of "
            "Manhattan distance). transfer_resource: the receiving agent's id (a bare id such as 'agent-7').",
            "anyOf": [
                {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 3},
                {"type": "string"},
            ],
        },
        "ticks": {
            "type": "integer",
            "minimum": MIN_WAIT_TICKS,
            "maximum": MAX_WAIT_TICKS,
            "description": "wait_ticks: how many turns to sit out.",
        },
        "kind": {"type": "string", "enum": list(RESOURCE_KINDS), "description": "transfer_resource: the resource."},
        "amount": {"type": "integer", "minimum": 1, "description": "transfer_resource: how much (> 0)."},
        "publisher": {
            "type": "string",
            "description": "compile/deploy: who publishes the artifact: 'self' or 'agent:<id>' of an agent you "
            "control. Never a location.",
        },
        "installer": {
            "type": "string",
            "description": "install/upgrade: who owns the instance (must be the artifact's publisher): 'self' or "
            "'agent:<id>' of an agent you control. Never a location.",
        },
        "module_id": {"type": "string", "description": "Module id (a-z, 0-9, '_', '.', '-'); must match the manifest."},
        "module_version": {"type": "string", "description": "Module version; must match the manifest's version."},
        "manifest_path": {
            "type": "string",
            "description": "compile/deploy: the path, among source_files, of the JSON ModuleManifest.",
        },
        "source_files": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "compile/deploy: relative path -> UTF-8 file text; holds the .wat source (compile) "
            "and the manifest JSON at manifest_path.",
        },
        "wasm_hash": {
            "type": "string",
            "description": "deploy/install/upgrade: sha256 of the wasm bytes, 64 lowercase hex characters "
            "(for install/upgrade take it from module_lifecycle_status).",
        },
        "wasm_bytes_hex": {"type": "string", "description": "deploy: the compiled wasm bytes as hex."},
        "activate": {"type": "boolean", "description": "install/upgrade: whether the instance is active (default true)."},
    },
    ["decision"],
)

QUERY_TOOLS: list[dict[str, Any]] = [
    _function_tool(
        "module_lifecycle_status",
        "Known module artifacts (wasm_hash, module_id, version, publisher) and installed instances "
        "(instance_id, module_id, version, wasm_hash, owner_agent_id, active), as of your observation. "
        "Free; does not use your turn.",
        {"module_id": {"type": "string", "description": "Only this module id (optional)."}},
        [],
    ),
    _function_tool(
        "observe",
        "Your agent's observation: id, position, electricity, data, last nonce, the world height and "
        "the agents you control. Free; does not use your turn.",
        {},
        [],
    ),
    _function_tool(
        "recent_events",
        "Recent world events about your agent and your recent decisions and their outcomes, newest last. "
        "Free; does not use your turn.",
        {"limit": {"type": "integer", "minimum": 1, "maximum": 50, "description": "How many (default 10)."}},
        [],
    ),
]
QUERY_TOOL_NAMES: tuple[str, ...] = tuple(t["function"]["name"] for t in QUERY_TOOLS)
#: Largest answer of a query tool (characters); longer lists are cut and say so.
MAX_QUERY_ANSWER_CHARS = 16_000


class DecisionError(msgspec.Struct, frozen=True):
    """Why a tool call's arguments are not a valid decision. ``message``: for the model, saying what
    was wrong and what to send instead; ``field``: the offending field (``None`` for the whole
    call)."""

    message: str
    field: str | None = None


class _Invalid(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _string(args: dict[str, Any], name: str) -> str:
    value = args[name]
    if not isinstance(value, str):
        raise _Invalid(name, f"'{name}' must be a string, got {_type_name(value)}")
    if not value.strip():
        raise _Invalid(name, f"'{name}' must not be empty")
    if not _is_utf8(value):
        raise _Invalid(name, f"'{name}' is not valid Unicode text (lone surrogates)")
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _integer(args: dict[str, Any], name: str, low: int, high: int) -> int:
    value = args[name]
    if isinstance(value, float) and value.is_integer() and low <= value <= high:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(name, f"'{name}' must be an integer, got {_type_name(value)}")
    if not low <= value <= high:
        raise _Invalid(name, f"'{name}' must be between {low} and {high}, got {value}")
    return value


def _actor(args: dict[str, Any], name: str, self_id: str, controlled: set[str]) -> str:
    ref = _string(args, name)
    if ref == "self":
        return ref
    if ref.startswith("location:"):
        raise _Invalid(
            name,
            f"'{name}' is a location ({_short(ref)}); a location cannot own modules. "
            f"Use 'self' or 'agent:<id>' of an agent you control",
        )
    if not ref.startswith("agent:") or len(ref) == len("agent:"):
        raise _Invalid(name, f"'{name}' must be 'self' or 'agent:<id>', got {_short(ref)}")
    agent_id = ref[len("agent:") :]
    allowed = set(controlled) | {self_id}
    if agent_id not in allowed:
        raise _Invalid(
            name,
            f"'{name}' names agent {_short(agent_id)}, which you do not control; "
            f"use 'self' or one of {['agent:' + a for a in sorted(allowed)][:8]}",
        )
    return ref


def _module_id(args: dict[str, Any]) -> str:
    value = _string(args, "module_id")
    if not MODULE_ID_RE.fullmatch(value):
        raise _Invalid("module_id", f"'module_id' {_short(value)} must be 1-64 characters of a-z, 0-9, '_', '.', '-'")
    return value


def _module_version(args: dict[str, Any]) -> str:
    value = _string(args, "module_version")
    if not VERSION_RE.fullmatch(value):
        raise _Invalid(
            "module_version",
            f"'module_version' {_short(value)} must be 1-32 characters of letters, digits, '.', '+', '-' (e.g. '1.0.0')",
        )
    return value


def _wasm_hash(args: dict[str, Any]) -> str:
    value = _string(args, "wasm_hash")
    if not WASM_HASH_RE.fullmatch(value):
        raise _Invalid(
            "wasm_hash",
            f"'wasm_hash' must be the sha256 of the wasm bytes as 64 lowercase hex characters, got {_short(value)}",
        )
    return value


def _source_files(args: dict[str, Any]) -> dict[str, str]:
    files = args["source_files"]
    if not isinstance(files, dict):
        raise _Invalid("source_files", f"'source_files' must be an object (path -> text), got {_type_name(files)}")
    if not files:
        raise _Invalid("source_files", "'source_files' must not be empty; include the module source and its manifest")
    if len(files) > MAX_SOURCE_FILES:
        raise _Invalid("source_files", f"'source_files' has {len(files)} files; the limit is {MAX_SOURCE_FILES}")
    total = 0
    for path, text in files.items():
        if not isinstance(path, str) or not path.strip():
            raise _Invalid("source_files", "'source_files' has an empty path; every file needs a relative path")
        try:
            check_source_path(path)
        except SourceRejected as exc:
            raise _Invalid("source_files", f"'source_files': {exc}") from None
        if not isinstance(text, str):
            raise _Invalid("source_files", f"'source_files'[{_short(path)}] must be text, got {_type_name(text)}")
        if not text.strip():
            raise _Invalid("source_files", f"'source_files'[{_short(path)}] is empty; give the file's content")
        if not _is_utf8(text):
            raise _Invalid("source_files", f"'source_files'[{_short(path)}] is not valid UTF-8 text (lone surrogates)")
        total += len(text.encode("utf-8"))
    if total > MAX_SOURCE_TOTAL_BYTES:
        raise _Invalid("source_files", f"'source_files' total {total} bytes; the limit is {MAX_SOURCE_TOTAL_BYTES}")
    return dict(files)


def _manifest(files: dict[str, str], manifest_path: str, module_id: str, module_version: str) -> ModuleManifest:
    if manifest_path not in files:
        raise _Invalid(
            "manifest_path",
            f"'manifest_path' {_short(manifest_path)} is not one of source_files {sorted(files)[:8]}; "
            "add the manifest JSON under that path",
        )
    try:
        manifest = msgspec.json.decode(files[manifest_path], type=ModuleManifest)
    except (msgspec.DecodeError, UnicodeError) as exc:
        raise _Invalid("source_files", f"manifest {_short(manifest_path)} is not a valid ModuleManifest JSON: {exc}") from None
    if manifest.module_id != module_id:
        raise _Invalid(
            "module_id", f"'module_id' {module_id!r} differs from the manifest's module_id {_short(manifest.module_id)}"
        )
    if manifest.version != module_version:
        raise _Invalid(
            "module_version",
            f"'module_version' {module_version!r} differs from the manifest's version {_short(manifest.version)}",
        )
    try:
        check_manifest(manifest)
    except Rejected as exc:
        raise _Invalid("source_files", f"manifest {_short(manifest_path)}: {exc}") from None
    return manifest


def _decode_arguments(raw: object) -> dict[str, Any]:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        if len(raw) > MAX_ARGUMENT_CHARS:
            raise _Invalid(None, f"the arguments are {len(raw)} bytes; the limit is {MAX_ARGUMENT_CHARS}")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Invalid(None, "the arguments are not UTF-8 text; send a JSON object") from None
    if isinstance(raw, str):
        if len(raw) > MAX_ARGUMENT_CHARS:
            raise _Invalid(None, f"the arguments are {len(raw)} characters; the limit is {MAX_ARGUMENT_CHARS}")
        if not raw.strip():
            raise _Invalid(None, 'the arguments are empty; send a JSON object such as {"decision": "wait"}')
        try:
            raw = msgspec.json.decode(raw)
        except (msgspec.DecodeError, UnicodeError) as exc:
            raise _Invalid(None, f"the arguments are not valid JSON ({exc}); send one JSON object") from None
    if not isinstance(raw, dict):
        raise _Invalid(None, f'the arguments must be a JSON object such as {{"decision": "wait"}}, got {_type_name(raw)}')
    for key in raw:
        if not isinstance(key, str):
            raise _Invalid(None, f"field names must be strings, got {_type_name(key)}")
    return raw


def _check_fields(args: dict[str, Any]) -> str:
    if "decision" not in args:
        raise _Invalid("decision", f"missing 'decision'; set it to one of {list(DECISION_KINDS)}")
    kind = args["decision"]
    if not isinstance(kind, str) or kind not in KIND_FIELDS:
        raise _Invalid("decision", f"unknown decision {_short(kind)}; use one of {list(DECISION_KINDS)}")
    required, optional = KIND_FIELDS[kind]
    allowed = set(required) | set(optional)
    for name, value in args.items():
        if name == "decision" or name in allowed:
            continue
        if name not in ALL_FIELDS:
            raise _Invalid(name, f"unknown field {_short(name)}; '{kind}' takes only {sorted(allowed) or 'no fields'}")
        if value is not None:
            raise _Invalid(name, f"field '{name}' does not apply to '{kind}'; '{kind}' takes only {sorted(allowed) or 'no fields'}")
    for name in required:
        if args.get(name) is None:
            raise _Invalid(name, f"'{kind}' needs '{name}'; it takes {sorted(allowed)}")
    return kind


def _build(kind: str, args: dict[str, Any], self_id: str, controlled: set[str]) -> Decision:
    if kind == "wait":
        return Wait()
    if kind == "harvest_radiation":
        return Harvest()
    if kind == "wait_ticks":
        return WaitTicks(ticks=_integer(args, "ticks", MIN_WAIT_TICKS, MAX_WAIT_TICKS))
    if kind == "move_agent":
        to = args["to"]
        if not isinstance(to, (list, tuple)) or len(to) != 3:
            raise _Invalid("to", f"'to' for move_agent must be a position [x, y, z] of 3 integers, got {_short(to)}")
        coords = {f"to[{i}]": v for i, v in enumerate(to)}
        x, y, z = (_integer(coords, f"to[{i}]", -MAX_COORDINATE, MAX_COORDINATE) for i in range(3))
        return Move(to=(x, y, z))
    if kind == "transfer_resource":
        to = _string(args, "to")
        if not AGENT_ID_RE.fullmatch(to):
            raise _Invalid(
                "to", f"'to' for transfer_resource must be a bare agent id (a-z, 0-9, '_', '.', '-'), got {_short(to)}"
            )
        if to == self_id:
            raise _Invalid("to", "'to' is yourself; transfer to another agent")
        resource = args["kind"]
        if resource not in RESOURCE_KINDS:
            raise _Invalid("kind", f"'kind' must be one of {list(RESOURCE_KINDS)}, got {_short(resource)}")
        amount = _integer(args, "amount", 1, MAX_TRANSFER_AMOUNT)
        return Transfer(to=to, kind=resource, amount=amount)
    if kind in ("install_module_from_artifact", "upgrade_module"):
        installer = _actor(args, "installer", self_id, controlled)
        module_id = _module_id(args)
        module_version = _module_version(args)
        wasm_hash = _wasm_hash(args)
        activate = args.get("activate", True)
        if activate is None:
            activate = True
        if not isinstance(activate, bool):
            raise _Invalid("activate", f"'activate' must be true or false, got {_type_name(activate)}")
        cls = InstallModule if kind == "install_module_from_artifact" else UpgradeModule
        return cls(
            installer=installer, module_id=module_id, module_version=module_version, wasm_hash=wasm_hash, activate=activate
        )
    # compile / deploy
    publisher = _actor(args, "publisher", self_id, controlled)
    module_id = _module_id(args)
    module_version = _module_version(args)
    manifest_path = _string(args, "manifest_path")
    files = _source_files(args)
    _manifest(files, manifest_path, module_id, module_version)
    if kind == "compile_module_artifact_from_source":
        return CompileModule(
            publisher=publisher,
            module_id=module_id,
            module_version=module_version,
            manifest_path=manifest_path,
            source_files=files,
        )
    wasm_hash = _wasm_hash(args)
    wasm_hex = _string(args, "wasm_bytes_hex")
    if not _HEX_RE.fullmatch(wasm_hex) or len(wasm_hex) % 2:
        raise _Invalid(
            "wasm_bytes_hex",
            "'wasm_bytes_hex' must be an even number of hex digits (0-9, a-f), no '0x' prefix and no spaces",
        )
    actual = hashlib.sha256(bytes.fromhex(wasm_hex)).hexdigest()
    if actual != wasm_hash:
        raise _Invalid(
            "wasm_hash",
            f"'wasm_hash' {wasm_hash} is not the sha256 of wasm_bytes_hex (that is {actual}); "
            "send the hash of exactly these bytes",
        )
    return DeployModule(
        publisher=publisher,
        module_id=module_id,
        module_version=module_version,
        manifest_path=manifest_path,
        source_files=files,
        wasm_hash=wasm_hash,
        wasm_bytes_hex=wasm_hex.lower(),
    )


def parse_decision(raw: object, *, self_id: str, controlled: set[str]) -> Decision | DecisionError:
    """Validate one ``agent_submit_decision`` call and return its Decision, or a DecisionError.

    ``raw``: the tool call's ``arguments`` (a JSON string or bytes) or an already decoded value.
    ``self_id``: the deciding agent; ``controlled``: the agent ids whose keys the runtime holds
    (``publisher`` / ``installer`` = ``agent:<id>`` must name one of them or ``self_id``).

    Rules: a known ``decision`` kind and only its fields; correct
    JSON types; publisher/installer ``self`` or ``agent:<controlled id>``, a ``location:...``
    refused explicitly; ``module_id`` / ``module_version`` / ``manifest_path`` / ``wasm_hash``
    non-empty (and in the world's formats, ``lifecycle.MODULE_ID_RE`` / ``VERSION_RE``);
    ``wasm_hash`` 64 lowercase hex; ``wasm_bytes_hex`` non-empty valid hex whose sha256 is
    ``wasm_hash``; ``source_files`` non-empty, safe relative non-empty paths with non-empty text,
    containing ``manifest_path``, whose manifest is a valid ModuleManifest with the decision's
    module_id and version (compile and deploy); ``amount`` 1..MAX_TRANSFER_AMOUNT of ``kind``
    electricity|data to another agent's bare id; ``ticks`` 1..100; ``to`` 3 integers for a move.
    Finally the action is built (``decision_to_action``) and must fit one signed action's payload.

    Never raises, whatever ``raw`` is (property-tested in tests/test_agents_parse.py).
    """
    try:
        args = _decode_arguments(raw)
        kind = _check_fields(args)
        decision = _build(kind, args, self_id, controlled)
        built = decision_to_action(decision, self_id)
        if built is not None:
            size = len(encode(built[1]))
            if size > MAX_ACTION_PAYLOAD_BYTES - ENVELOPE_RESERVE_BYTES:
                raise _Invalid(
                    None,
                    f"the resulting action is {size} bytes; the limit is "
                    f"{MAX_ACTION_PAYLOAD_BYTES - ENVELOPE_RESERVE_BYTES}; send smaller sources or module",
                )
        return decision
    except _Invalid as exc:
        return DecisionError(message=exc.message, field=exc.field)


# -- query tools ------------------------------------------------------------------------------


def _cap_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    if len(text) <= MAX_QUERY_ANSWER_CHARS:
        return text
    return json.dumps({"truncated": True, "text": text[: MAX_QUERY_ANSWER_CHARS - 100]})


def _records(value: Any) -> list[dict[str, Any]]:
    return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []


def module_lifecycle_status(obs: Any, module_id: str | None = None) -> dict[str, Any]:
    """Return ``{"height", "artifacts": [...], "instances": [...], "yours": {...}}`` from
    ``obs.modules`` (a GET /v1/modules answer or None): artifacts with wasm_hash, module_id,
    version, publisher, kind; instances with instance_id, module_id, version, wasm_hash,
    owner_agent_id, active; ``yours`` lists the hashes published and the instances owned by the
    agents in ``obs.controlled``. Only ``module_id`` if given. At most 50 of each, newest kept."""
    modules = obs.modules if isinstance(getattr(obs, "modules", None), dict) else {}
    mine = set(getattr(obs, "controlled", None) or []) | {obs.agent_id}
    artifacts = [
        {k: a.get(k) for k in ("wasm_hash", "module_id", "version", "publisher", "kind", "published_at")}
        for a in _records(modules.get("artifacts"))
        if module_id is None or a.get("module_id") == module_id
    ]
    instances = [
        {k: i.get(k) for k in ("instance_id", "module_id", "version", "wasm_hash", "owner_agent_id", "active")}
        for i in _records(modules.get("instances"))
        if module_id is None or i.get("module_id") == module_id
    ]
    return {
        "height": getattr(obs, "height", None),
        "known": modules != {},
        "artifacts": artifacts[-50:],
        "instances": instances[-50:],
        "artifact_count": len(artifacts),
        "instance_count": len(instances),
        "yours": {
            "published_wasm_hashes": [a["wasm_hash"] for a in artifacts if a.get("publisher") in mine][-20:],
            "instances": [i["instance_id"] for i in instances if i.get("owner_agent_id") in mine][-20:],
        },
    }


def observation_summary(obs: Any) -> dict[str, Any]:
    """Return the agent's observation as JSON-ready data: agent_id, height, agent (its record or
    None when not registered yet), controlled, and counts of known artifacts and instances."""
    modules = obs.modules if isinstance(getattr(obs, "modules", None), dict) else {}
    return {
        "agent_id": obs.agent_id,
        "height": getattr(obs, "height", None),
        "agent": getattr(obs, "agent", None),
        "controlled": list(getattr(obs, "controlled", None) or [])[:32],
        "artifact_count": len(_records(modules.get("artifacts"))),
        "instance_count": len(_records(modules.get("instances"))),
    }


def answer_query_tool(name: str, arguments: object, obs: Any, memory: Any) -> str:
    """Answer query tool ``name`` (one of QUERY_TOOL_NAMES) called with ``arguments`` (JSON text
    or decoded) from the observation ``obs`` and the agent's ``memory``; return the tool result
    as JSON text (at most MAX_QUERY_ANSWER_CHARS). Bad arguments or an unknown tool give an
    ``{"error": ...}`` answer for the model, never an exception."""
    args: Any = arguments
    if isinstance(arguments, (str, bytes)):
        try:
            args = msgspec.json.decode(arguments) if arguments.strip() else {}
        except (msgspec.DecodeError, UnicodeError) as exc:
            return _cap_json({"error": f"arguments are not valid JSON ({exc}); send a JSON object"})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return _cap_json({"error": f"arguments must be a JSON object, got {_type_name(args)}"})
    if name == "module_lifecycle_status":
        module_id = args.get("module_id")
        if module_id is not None and not isinstance(module_id, str):
            return _cap_json({"error": "'module_id' must be a string"})
        return _cap_json(module_lifecycle_status(obs, module_id or None))
    if name == "observe":
        return _cap_json(observation_summary(obs))
    if name == "recent_events":
        limit = args.get("limit", 10)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 50:
            return _cap_json({"error": "'limit' must be an integer 1..50"})
        events = list(getattr(obs, "recent_events", None) or [])[-limit:]
        try:
            memory_entries = list(memory.recent(limit)) if memory is not None else []
        except Exception as exc:  # a foreign Memory implementation must not end the turn
            memory_entries = [{"error": f"memory unavailable: {exc}"}]
        return _cap_json({"events": events, "memory": memory_entries})
    return _cap_json(
        {"error": f"unknown tool {_short(name)}; use {list(QUERY_TOOL_NAMES)} or {DECISION_TOOL_NAME}"}
    )
