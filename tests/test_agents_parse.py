"""The decision parser (agent_world_agents/parse.py): one table test per rule, the query tools, and
hypothesis properties: arbitrary JSON / text / near-valid decisions never raise, and every valid
decision round-trips (wire form -> parse -> the same decision, and it maps to an action)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_world_agents.decision import (
    DECISION_KINDS,
    CompileModule,
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
from agent_world_agents.parse import (
    ALL_FIELDS,
    DECISION_TOOL,
    KIND_FIELDS,
    QUERY_TOOL_NAMES,
    QUERY_TOOLS,
    DecisionError,
    answer_query_tool,
    parse_decision,
)
from agent_world_runtime.modules.sandbox import wat_to_wasm

MODULES = Path(__file__).resolve().parent.parent / "examples" / "modules"
WAT = (MODULES / "move_counter.wat").read_text()
MANIFEST = (MODULES / "move_counter.manifest.json").read_text()
WASM = wat_to_wasm(WAT)
WASM_HASH = hashlib.sha256(WASM).hexdigest()
SELF = "alice"
CONTROLLED = {"alice", "bob"}
FILES = {"move_counter.wat": WAT, "move_counter.manifest.json": MANIFEST}


def parse(raw):
    return parse_decision(raw, self_id=SELF, controlled=CONTROLLED)


def compile_args(**over):
    args = {
        "decision": "compile_module_artifact_from_source",
        "publisher": "self",
        "module_id": "move_counter",
        "module_version": "1.0.0",
        "manifest_path": "move_counter.manifest.json",
        "source_files": dict(FILES),
    }
    args.update(over)
    return args


def deploy_args(**over):
    args = compile_args(decision="deploy_module_artifact", wasm_hash=WASM_HASH, wasm_bytes_hex=WASM.hex())
    args.update(over)
    return args


def install_args(**over):
    args = {
        "decision": "install_module_from_artifact",
        "installer": "self",
        "module_id": "move_counter",
        "module_version": "1.0.0",
        "wasm_hash": WASM_HASH,
    }
    args.update(over)
    return args


VALID = [
    ({"decision": "wait"}, Wait()),
    ({"decision": "harvest_radiation"}, Harvest()),
    ({"decision": "wait_ticks", "ticks": 1}, WaitTicks(ticks=1)),
    ({"decision": "wait_ticks", "ticks": 100}, WaitTicks(ticks=100)),
    ({"decision": "move_agent", "to": [1, -2, 3]}, Move(to=(1, -2, 3))),
    ({"decision": "move_agent", "to": [1.0, 2, 3]}, Move(to=(1, 2, 3))),
    (
        {"decision": "transfer_resource", "to": "bob", "kind": "data", "amount": 7},
        Transfer(to="bob", kind="data", amount=7),
    ),
    ({"decision": "wait", "to": None, "ticks": None}, Wait()),
    (compile_args(), CompileModule(publisher="self", module_id="move_counter", module_version="1.0.0",
                                   manifest_path="move_counter.manifest.json", source_files=FILES)),
    (compile_args(publisher="agent:bob"),
     CompileModule(publisher="agent:bob", module_id="move_counter", module_version="1.0.0",
                   manifest_path="move_counter.manifest.json", source_files=FILES)),
    (deploy_args(), DeployModule(publisher="self", module_id="move_counter", module_version="1.0.0",
                                 manifest_path="move_counter.manifest.json", source_files=FILES,
                                 wasm_hash=WASM_HASH, wasm_bytes_hex=WASM.hex())),
    (install_args(), InstallModule(installer="self", module_id="move_counter", module_version="1.0.0",
                                   wasm_hash=WASM_HASH, activate=True)),
    (install_args(activate=False, installer="agent:alice"),
     InstallModule(installer="agent:alice", module_id="move_counter", module_version="1.0.0",
                   wasm_hash=WASM_HASH, activate=False)),
    (install_args(decision="upgrade_module"), UpgradeModule(installer="self", module_id="move_counter",
                                                            module_version="1.0.0", wasm_hash=WASM_HASH)),
]


@pytest.mark.parametrize("args,expected", VALID)
def test_valid_decisions_parse_from_json_text_and_objects(args, expected):
    assert parse(json.dumps(args)) == expected
    assert parse(args) == expected
    assert parse(json.dumps(args).encode()) == expected


def E(field, *needles):
    return field, needles


INVALID = [
    # the call as a whole
    ("not json {", E(None, "not valid JSON")),
    ("", E(None, "empty")),
    ("[1, 2]", E(None, "JSON object")),
    ("42", E(None, "JSON object")),
    (b"\xff\xfe", E(None, "UTF-8")),
    ({}, E("decision", "missing 'decision'")),
    ({"decision": "fly"}, E("decision", "unknown decision", "move_agent")),
    ({"decision": 3}, E("decision", "unknown decision")),
    ({"decision": "wait", "colour": "red"}, E("colour", "unknown field")),
    ({"decision": "wait", "ticks": 3}, E("ticks", "does not apply to 'wait'")),
    ({"decision": "move_agent"}, E("to", "needs 'to'")),
    # wait_ticks
    ({"decision": "wait_ticks", "ticks": 0}, E("ticks", "between 1 and 100")),
    ({"decision": "wait_ticks", "ticks": 101}, E("ticks", "between 1 and 100")),
    ({"decision": "wait_ticks", "ticks": "5"}, E("ticks", "integer", "string")),
    ({"decision": "wait_ticks", "ticks": True}, E("ticks", "integer", "boolean")),
    ({"decision": "wait_ticks", "ticks": 2.5}, E("ticks", "integer")),
    # move
    ({"decision": "move_agent", "to": [1, 2]}, E("to", "3 integers")),
    ({"decision": "move_agent", "to": "1,2,3"}, E("to", "3 integers")),
    ({"decision": "move_agent", "to": [1, "2", 3]}, E("to[1]", "integer")),
    ({"decision": "move_agent", "to": [1, 2, 2**70]}, E("to[2]", "between")),
    # transfer
    ({"decision": "transfer_resource", "to": "bob", "kind": "gold", "amount": 1}, E("kind", "electricity")),
    ({"decision": "transfer_resource", "to": "bob", "kind": "data", "amount": 0}, E("amount", "between 1")),
    ({"decision": "transfer_resource", "to": "bob", "kind": "data", "amount": -5}, E("amount", "between 1")),
    ({"decision": "transfer_resource", "to": "agent:bob", "kind": "data", "amount": 1}, E("to", "bare agent id")),
    ({"decision": "transfer_resource", "to": SELF, "kind": "data", "amount": 1}, E("to", "yourself")),
    ({"decision": "transfer_resource", "to": [1, 2, 3], "kind": "data", "amount": 1}, E("to", "string")),
    # publisher / installer
    (compile_args(publisher="location:1,2,3"), E("publisher", "location", "cannot own")),
    (install_args(installer="location:0,0,0"), E("installer", "location")),
    (compile_args(publisher="agent:mallory"), E("publisher", "do not control")),
    (compile_args(publisher="bob"), E("publisher", "'self' or 'agent:<id>'")),
    (compile_args(publisher="agent:"), E("publisher", "'self' or 'agent:<id>'")),
    (compile_args(publisher=""), E("publisher", "must not be empty")),
    (install_args(installer=7), E("installer", "string")),
    # module id / version / manifest path
    (compile_args(module_id=""), E("module_id", "must not be empty")),
    (compile_args(module_id="Move Counter"), E("module_id", "a-z")),
    (compile_args(module_version=" "), E("module_version", "must not be empty")),
    (compile_args(module_id="other"), E("module_id", "differs from the manifest")),
    (compile_args(module_version="2.0.0"), E("module_version", "differs from the manifest")),
    (compile_args(manifest_path=""), E("manifest_path", "must not be empty")),
    (compile_args(manifest_path="missing.json"), E("manifest_path", "not one of source_files")),
    # source files
    (compile_args(source_files={}), E("source_files", "must not be empty")),
    (compile_args(source_files=["a.wat"]), E("source_files", "object")),
    (compile_args(source_files={**FILES, "": "x"}), E("source_files", "empty path")),
    (compile_args(source_files={**FILES, "../etc/passwd": "x"}), E("source_files", "'..'")),
    (compile_args(source_files={**FILES, "/abs.wat": "x"}), E("source_files", "relative")),
    (compile_args(source_files={**FILES, "empty.wat": ""}), E("source_files", "is empty")),
    (compile_args(source_files={**FILES, "n.wat": 5}), E("source_files", "must be text")),
    (compile_args(source_files={**FILES, "move_counter.manifest.json": "{not json"}), E("source_files", "not a valid ModuleManifest")),
    (compile_args(source_files={**FILES, "move_counter.manifest.json": json.dumps(
        {**json.loads(MANIFEST), "kind": "daemon"})}), E("source_files", "unknown module kind")),
    # wasm hash and bytes
    (install_args(wasm_hash=""), E("wasm_hash", "must not be empty")),
    (install_args(wasm_hash=WASM_HASH.upper()), E("wasm_hash", "64 lowercase hex")),
    (install_args(wasm_hash=WASM_HASH[:-1]), E("wasm_hash", "64 lowercase hex")),
    (deploy_args(wasm_hash="0" * 64), E("wasm_hash", "is not the sha256", WASM_HASH)),
    (deploy_args(wasm_bytes_hex=""), E("wasm_bytes_hex", "must not be empty")),
    (deploy_args(wasm_bytes_hex="0x" + WASM.hex()), E("wasm_bytes_hex", "hex digits")),
    (deploy_args(wasm_bytes_hex=WASM.hex()[:-1]), E("wasm_bytes_hex", "even number")),
    (deploy_args(wasm_bytes_hex="zz"), E("wasm_bytes_hex", "hex digits")),
    (install_args(activate="yes"), E("activate", "true or false")),
    (deploy_args(wasm_hash=None), E("wasm_hash", "needs 'wasm_hash'")),
]


@pytest.mark.parametrize("raw,expected", INVALID)
def test_invalid_decisions_give_a_clear_error(raw, expected):
    field, needles = expected
    result = parse(raw)
    assert isinstance(result, DecisionError), result
    assert result.field == field, result
    for needle in needles:
        assert needle in result.message, (needle, result.message)


def test_oversized_arguments_are_refused():
    huge = json.dumps(deploy_args(wasm_bytes_hex="00" * 400_000))
    result = parse(huge)
    assert isinstance(result, DecisionError) and "limit" in result.message


def test_decision_tool_schema_covers_every_kind_and_field():
    params = DECISION_TOOL["function"]["parameters"]
    assert DECISION_TOOL["function"]["name"] == "agent_submit_decision"
    assert params["additionalProperties"] is False
    assert params["properties"]["decision"]["enum"] == list(DECISION_KINDS)
    assert set(params["properties"]) == {"decision", *ALL_FIELDS}
    for kind, (required, optional) in KIND_FIELDS.items():
        assert set(required) | set(optional) <= set(ALL_FIELDS), kind
    assert set(QUERY_TOOL_NAMES) == {"module_lifecycle_status", "observe", "recent_events"}
    for tool in QUERY_TOOLS:
        assert tool["function"]["parameters"]["additionalProperties"] is False


class _Memory:
    def __init__(self, entries):
        self.entries = entries

    def recent(self, n=10):
        return self.entries[-n:]


OBS = SimpleNamespace(
    agent_id=SELF,
    height=12,
    agent={"agent_id": SELF, "position": [1, 2, 0], "electricity": 90, "data": 1000, "last_nonce": 3},
    controlled=["alice", "bob"],
    modules={
        "artifacts": [
            {"wasm_hash": WASM_HASH, "module_id": "move_counter", "version": "1.0.0", "publisher": "bob", "kind": "reducer"},
            {"wasm_hash": "ab" * 32, "module_id": "other", "version": "2", "publisher": "carol", "kind": "pure"},
        ],
        "instances": [
            {"instance_id": "move_counter@bob", "module_id": "move_counter", "version": "1.0.0",
             "wasm_hash": WASM_HASH, "owner_agent_id": "bob", "active": True},
        ],
    },
    recent_events=[{"seq": 4, "height": 11, "kind": "domain.agent_moved", "data": {"agent_id": SELF}}],
)


def test_query_tools_answer_from_the_observation():
    status = json.loads(answer_query_tool("module_lifecycle_status", "{}", OBS, None))
    assert [a["wasm_hash"] for a in status["artifacts"]] == [WASM_HASH, "ab" * 32]
    assert status["instances"][0]["owner_agent_id"] == "bob"
    assert status["yours"] == {"published_wasm_hashes": [WASM_HASH], "instances": ["move_counter@bob"]}
    only = json.loads(answer_query_tool("module_lifecycle_status", {"module_id": "other"}, OBS, None))
    assert [a["module_id"] for a in only["artifacts"]] == ["other"] and only["instances"] == []
    observed = json.loads(answer_query_tool("observe", "", OBS, None))
    assert observed["agent"]["electricity"] == 90 and observed["controlled"] == ["alice", "bob"]
    events = json.loads(answer_query_tool("recent_events", {"limit": 1}, OBS, _Memory([{"a": 1}, {"b": 2}])))
    assert events["events"][0]["kind"] == "domain.agent_moved" and events["memory"] == [{"b": 2}]
    assert "error" in json.loads(answer_query_tool("recent_events", {"limit": 0}, OBS, None))
    assert "error" in json.loads(answer_query_tool("observe", "{bad", OBS, None))
    assert "unknown tool" in json.loads(answer_query_tool("launch", "{}", OBS, None))["error"]


# -- properties -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)

# Near-valid decisions: a real kind, fields drawn from the schema, values either plausible or arbitrary.
plausible = {
    "to": st.one_of(st.lists(st.integers(), min_size=0, max_size=4), st.sampled_from(["bob", SELF, "agent:bob", ""])),
    "ticks": st.integers(-5, 200),
    "kind": st.sampled_from(["electricity", "data", "gold"]),
    "amount": st.integers(-3, 2**64),
    "publisher": st.sampled_from(["self", "agent:bob", "agent:eve", "location:1,2,3", "", "agent:"]),
    "installer": st.sampled_from(["self", "agent:alice", "location:0,0,0", "x"]),
    "module_id": st.sampled_from(["move_counter", "", "Bad Id", "other"]),
    "module_version": st.sampled_from(["1.0.0", "", "2.0.0"]),
    "manifest_path": st.sampled_from(["move_counter.manifest.json", "", "nope.json", "../x"]),
    "source_files": st.one_of(
        st.just(FILES),
        st.dictionaries(st.sampled_from(["move_counter.manifest.json", "a.wat", "", "../b", "/c"]),
                        st.one_of(st.text(max_size=30), st.just(MANIFEST), st.integers()), max_size=3),
    ),
    "wasm_hash": st.sampled_from([WASM_HASH, "0" * 64, WASM_HASH.upper(), "", "xyz"]),
    "wasm_bytes_hex": st.sampled_from([WASM.hex(), "", "0x00", "abc", "zz", "00"]),
    "activate": st.one_of(st.booleans(), st.none(), st.integers(0, 1)),
}


BASE_ARGS = {
    "wait": {"decision": "wait"},
    "wait_ticks": {"decision": "wait_ticks", "ticks": 3},
    "move_agent": {"decision": "move_agent", "to": [1, 2, 3]},
    "harvest_radiation": {"decision": "harvest_radiation"},
    "transfer_resource": {"decision": "transfer_resource", "to": "bob", "kind": "data", "amount": 2},
    "compile_module_artifact_from_source": compile_args(),
    "deploy_module_artifact": deploy_args(),
    "install_module_from_artifact": install_args(),
    "upgrade_module": install_args(decision="upgrade_module"),
}


@st.composite
def near_valid(draw):
    """A valid decision of a random kind with 0-3 fields replaced (plausible or arbitrary values,
    nested source files included), removed or added: reaches every check of the parser."""
    kind = draw(st.sampled_from(list(DECISION_KINDS)))
    args = json.loads(json.dumps(BASE_ARGS[kind]))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["replace", "replace", "drop", "file"]))
        name = draw(st.sampled_from(list(ALL_FIELDS) + ["decision", "extra"]))
        if op == "drop":
            args.pop(name, None)
        elif op == "file" and isinstance(args.get("source_files"), dict):
            path = draw(st.sampled_from(["move_counter.manifest.json", "move_counter.wat", "", "../b", "x.wat"]))
            args["source_files"] = {**args["source_files"], path: draw(st.one_of(json_values, st.just(MANIFEST)))}
        elif name in plausible and draw(st.booleans()):
            args[name] = draw(plausible[name])
        else:
            args[name] = draw(json_values)
    return args


def _check_result(result):
    assert isinstance(result, (DecisionError, Wait, WaitTicks, Move, Harvest, Transfer, CompileModule,
                               DeployModule, InstallModule, UpgradeModule)), result
    if isinstance(result, DecisionError):
        assert isinstance(result.message, str) and result.message
    else:
        decision_to_action(result, SELF)  # a parsed decision always maps to an action (or none)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_values_never_raise(value):
    _check_result(parse(value))
    try:
        text = json.dumps(value)
    except ValueError:
        return
    _check_result(parse(text))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_arbitrary_text_never_raises(raw):
    _check_result(parse(raw))


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid())
def test_near_valid_decisions_never_raise(args):
    _check_result(parse(args))
    _check_result(parse(json.dumps(args, default=str)))


valid_decisions = st.one_of(
    st.just(Wait()),
    st.just(Harvest()),
    st.builds(WaitTicks, ticks=st.integers(1, 100)),
    st.builds(Move, to=st.tuples(*[st.integers(-(2**63) + 1, 2**63 - 1)] * 3)),
    st.builds(Transfer, to=st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,20}\Z").filter(lambda s: s != SELF),
              kind=st.sampled_from(["electricity", "data"]), amount=st.integers(1, 2**63 - 1)),
    st.builds(InstallModule, installer=st.sampled_from(["self", "agent:bob", "agent:alice"]),
              module_id=st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,20}\Z"),
              module_version=st.from_regex(r"\A[0-9A-Za-z][0-9A-Za-z.+-]{0,10}\Z"),
              wasm_hash=st.binary(min_size=32, max_size=32).map(bytes.hex), activate=st.booleans()),
    st.builds(UpgradeModule, installer=st.sampled_from(["self", "agent:bob"]), module_id=st.just("m"),
              module_version=st.just("1"), wasm_hash=st.binary(min_size=32, max_size=32).map(bytes.hex),
              activate=st.booleans()),
    st.builds(
        lambda publisher, deploy: (
            DeployModule(publisher=publisher, module_id="move_counter", module_version="1.0.0",
                         manifest_path="move_counter.manifest.json", source_files=FILES, wasm_hash=WASM_HASH,
                         wasm_bytes_hex=WASM.hex())
            if deploy else
            CompileModule(publisher=publisher, module_id="move_counter", module_version="1.0.0",
                          manifest_path="move_counter.manifest.json", source_files=FILES)
        ),
        st.sampled_from(["self", "agent:bob", "agent:alice"]), st.booleans(),
    ),
)


@settings(max_examples=300, deadline=None)
@given(valid_decisions)
def test_valid_decisions_round_trip(decision):
    wire = msgspec.json.encode(decision)  # the tool-call arguments a model would send
    assert parse(wire.decode()) == decision
    assert parse(msgspec.json.decode(wire)) == decision
