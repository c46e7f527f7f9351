"""``awnode gov``: governance of the world's manifest (docs/staking-cli.md).

Commands::

    awnode gov propose --key KEY --title T (--set PATH=JSON ... | --patch FILE | --manifest FILE | --rollback N)
    awnode gov vote PROPOSAL_ID yes|no|abstain --validator VALIDATOR_ID --key OPERATOR.json
    awnode gov show PROPOSAL_ID [--json]
    awnode gov list [--status S] [--limit N] [--json]
    awnode gov manifest [--versions] [--json]

Actions are signed like ``awnode submit`` (agent key file, the agent's next nonce on the node's
chain). ``--set`` builds JSON Patch ``replace`` operations on the manifest's JSON form; a path is a
JSON Pointer (``/params/fee_base``) or its dotted form (``params.fee_base``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

import msgspec
import typer
from rich.markup import escape
from rich.table import Table

from agent_world_client.client import NotFound, SyncNodeClient
from agent_world_runtime.actions import Action, ProposeManifestPatch, ProposeManifestUpdate, ProposeRollback, VoteProposal
from agent_world_runtime.governance.manifest import Manifest
from agent_world_runtime.governance.records import PatchOp
from agent_world_runtime.governance.rules import MAX_TITLE_CHARS
from agent_world_runtime.governance.validate import check_section, check_world_params

from . import ui
from .signing import (
    agent_id_option,
    agent_key,
    agent_record,
    balance_of,
    check_validator_id,
    home_option,
    json_option,
    json_text,
    key_option,
    nonce_option,
    print_json,
    rpc_for,
    rpc_or_home_option,
    short,
    submit_action,
    timeout_option,
    wait_executed,
    wait_option,
)

gov_app = typer.Typer(rich_markup_mode=None, help="Governance: propose manifest changes, vote, list and show proposals, the manifest.",
                      no_args_is_help=True)

PATCH_OPS = ("add", "replace", "remove", "test")
VOTE_OPTIONS = ("yes", "no", "abstain")


# --- building proposals ----------------------------------------------------------------------------


def pointer(path: str) -> str:
    """``path`` as a JSON Pointer: kept when it starts with ``/``, else its dots become ``/``
    (``params.fee_base`` -> ``/params/fee_base``). CliError for an empty path."""
    path = path.strip()
    if not path or path in ("/", "."):
        raise ui.CliError("an empty --set path would replace the whole manifest; use --manifest FILE for that")
    return path if path.startswith("/") else "/" + path.replace(".", "/")


def resolve(doc: Any, path: str) -> Any:
    """The value at JSON Pointer ``path`` of ``doc``; KeyError when there is none."""
    value = doc
    for raw in path.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict) and token in value:
            value = value[token]
        elif isinstance(value, list) and token.isdigit() and int(token) < len(value):
            value = value[int(token)]
        else:
            raise KeyError(path)
    return value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else "a number"


def set_ops(assignments: list[str], manifest: dict[str, Any]) -> list[PatchOp]:
    """``replace`` operations of ``--set PATH=JSON_VALUE`` assignments, each checked against the
    manifest in force: the path must exist and the value keep its JSON type."""
    ops: list[PatchOp] = []
    for item in assignments:
        path, sep, raw = item.partition("=")
        if not sep:
            raise ui.CliError(f"--set {item!r}: use PATH=JSON_VALUE, e.g. --set params.fee_base=2")
        target = pointer(path)
        try:
            value = json.loads(raw)
        except ValueError:
            raise ui.CliError(f"--set {item!r}: the value is not JSON; write numbers as 5, booleans as true, and "
                              f"quote strings: --set '{path}=\"text\"'") from None
        try:
            current = resolve(manifest, target)
        except KeyError:
            raise ui.CliError(f"--set {item!r}: the manifest has no {target}; see the paths with `awnode gov manifest`"
                              ) from None
        if current is not None and _kind(current) != _kind(value):
            raise ui.CliError(f"--set {item!r}: {target} is {_kind(current)} ({json_text(current)}), not {_kind(value)}")
        ops.append(PatchOp(op="replace", path=target, value=value))
    return ops


def check_manifest(manifest: Manifest, what: str) -> None:
    """CliError when ``manifest``'s values are outside the runtime's bounds (the chain would
    reject the proposal and keep its fee)."""
    try:
        check_world_params(manifest.params)
        check_section(manifest.staking, "staking")
        check_section(manifest.governance, "governance")
    except ValueError as exc:
        raise ui.CliError(f"{what}: {exc}; the chain would reject the proposal (and keep its fee)") from None


def check_set_ops(ops: list[PatchOp], manifest: dict[str, Any]) -> None:
    """Apply the ``replace`` operations of ``--set`` to a copy of the manifest's JSON form and
    check the result (``check_manifest``)."""
    doc = copy.deepcopy(manifest)
    for op in ops:
        *parents, last = [t.replace("~1", "/").replace("~0", "~") for t in op.path.split("/")[1:]]
        target = doc
        for token in parents:
            target = target[int(token)] if isinstance(target, list) else target[token]
        if isinstance(target, list):
            target[int(last)] = op.value
        else:
            target[last] = op.value
    try:
        candidate = msgspec.convert(doc, Manifest)
    except msgspec.ValidationError as exc:
        raise ui.CliError(f"--set: the manifest would not be valid ({exc})") from None
    check_manifest(candidate, "--set")


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ui.CliError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ui.CliError(f"{path}: not JSON ({exc})") from None


def patch_ops(path: Path) -> list[PatchOp]:
    """The JSON Patch list of file ``path`` (``[{"op", "path", "value"?}, ...]``), checked."""
    doc = _read_json(path, "--patch file")
    if not isinstance(doc, list) or not doc:
        raise ui.CliError(f'{path}: expected a non-empty JSON list like [{{"op": "replace", "path": "/params/fee_base", '
                          f'"value": 2}}]')
    ops: list[PatchOp] = []
    for i, op in enumerate(doc):
        if not isinstance(op, dict) or op.get("op") not in PATCH_OPS or not isinstance(op.get("path"), str):
            raise ui.CliError(f"{path}: operation {i} must be an object with \"op\" ({', '.join(PATCH_OPS)}) and a "
                              "\"path\" (a JSON Pointer such as /params/fee_base)")
        if not op["path"].startswith("/"):
            raise ui.CliError(f"{path}: operation {i}: path {op['path']!r} is not a JSON Pointer (it starts with /)")
        extra = set(op) - {"op", "path", "value"}
        if extra:
            raise ui.CliError(f"{path}: operation {i}: unsupported field(s) {sorted(extra)}; use op, path and value")
        if op["op"] in ("add", "replace", "test") and "value" not in op:
            raise ui.CliError(f"{path}: operation {i} ({op['op']}) needs a \"value\"")
        ops.append(PatchOp(op=op["op"], path=op["path"], value=op.get("value")))
    return ops


def manifest_file(path: Path) -> Manifest:
    """The full manifest of file ``path``: a manifest's JSON form, or the output of
    ``awnode gov manifest --json`` (``GET /v1/manifest``), whose ``manifest`` is taken."""
    doc = _read_json(path, "--manifest file")
    if isinstance(doc, dict) and isinstance(doc.get("manifest"), dict) and "hash" in doc:
        doc = doc["manifest"]
    try:
        return msgspec.convert(doc, Manifest)
    except msgspec.ValidationError as exc:
        raise ui.CliError(f"{path}: not a valid manifest ({exc}); start from `awnode gov manifest --json`") from None


def _proposal(client: SyncNodeClient, rpc: str, proposal_id: int) -> dict[str, Any]:
    try:
        return client.proposal(proposal_id)
    except NotFound:
        raise ui.CliError(f"no proposal {proposal_id} on the node at {rpc}; list them with `awnode gov list --rpc {rpc}`"
                          ) from None


def _check_rollback(client: SyncNodeClient, version: int, current: int) -> None:
    if version < 1:
        raise ui.CliError(f"--rollback must be a manifest version (1 or more), got {version}")
    if version == current:
        raise ui.CliError(f"version {version} is the manifest in force; roll back to an earlier version")
    found = client.manifest_versions(limit=1, before=version + 1)["versions"]
    if not found or found[0]["version"] != version:
        raise ui.CliError(f"the chain has no manifest version {version}; list them with `awnode gov manifest --versions`")


@gov_app.command("propose")
def propose(
    key_file: Path = key_option("proposing agent"),
    title: str = typer.Option("", "--title", help="A one-line title of the proposal."),
    assignments: list[str] = typer.Option([], "--set", metavar="PATH=JSON_VALUE",
                                          help="Replace one manifest value (repeatable), e.g. --set params.fee_base=2."),
    patch: Optional[Path] = typer.Option(None, "--patch", help="A JSON Patch list file (add, replace, remove, test)."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="A full manifest JSON file (start from "
                                            "`awnode gov manifest --json`)."),
    rollback: Optional[int] = typer.Option(None, "--rollback", metavar="VERSION",
                                           help="Restore an earlier manifest version (as a new version)."),
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    agent_id: Optional[str] = agent_id_option(),
    nonce: Optional[int] = nonce_option(),
    wait: bool = wait_option(),
    timeout: float = timeout_option(),
) -> None:
    """Propose a change of the world's manifest (it pays params.proposal_fee); the validators vote
    during governance.voting_period_heights."""
    ui.quiet_logs()
    with ui.friendly_errors():
        rpc = rpc_for(rpc_given, home)
        key, agent = agent_key(key_file, agent_id)
        modes = [m for m, given in (("--set", bool(assignments)), ("--patch", patch is not None),
                                    ("--manifest", manifest is not None), ("--rollback", rollback is not None)) if given]
        if len(modes) != 1:
            raise ui.CliError("give exactly one of --set PATH=JSON_VALUE (repeatable), --patch FILE, --manifest FILE or "
                              f"--rollback VERSION{'; got ' + ' and '.join(modes) if modes else ''}")
        if len(title) > MAX_TITLE_CHARS:
            raise ui.CliError(f"--title is {len(title)} characters; use at most {MAX_TITLE_CHARS}")
        client = ui.make_client(rpc)
        current = client.manifest()
        limit = current["manifest"].get("governance", {}).get("max_pending")
        voting = client.proposals(status="voting", limit=200)["proposals"]
        if isinstance(limit, int) and len(voting) >= limit:
            ids = ", ".join(str(p["proposal_id"]) for p in voting)
            raise ui.CliError(f"{len(voting)} proposals are voting ({ids}); at most {limit} may be open at once "
                              "(governance.max_pending): wait until one is decided")
        action: Action
        if assignments:
            ops = set_ops(assignments, current["manifest"])
            check_set_ops(ops, current["manifest"])
            action = ProposeManifestPatch(ops=ops, title=title)
        elif patch is not None:
            action = ProposeManifestPatch(ops=patch_ops(patch), title=title)
        elif manifest is not None:
            full = manifest_file(manifest)
            check_manifest(full, str(manifest))
            action = ProposeManifestUpdate(manifest=full, title=title)
        else:
            assert rollback is not None
            _check_rollback(client, rollback, current["version"])
            action = ProposeRollback(version=rollback, title=title)
        record = agent_record(client, rpc, agent)
        fee = current["manifest"].get("params", {}).get("proposal_fee")
        if isinstance(fee, int) and balance_of(record) < fee:
            raise ui.CliError(f"agent {agent!r} has {balance_of(record)} electricity; a proposal pays {fee} "
                              "(params.proposal_fee)")
        sub = submit_action(client, rpc, key, agent, action, nonce=nonce, record=record, key_file=key_file)
        if not wait:
            return
        wait_executed(client, rpc, sub, timeout)
        mine = [p for p in client.proposals(limit=20)["proposals"] if p["proposer"] == agent]
        if not mine:
            ui.console.print(f"executed; list the proposals with `awnode gov list --rpc {rpc}`", highlight=False)
            return
        p = mine[0]
        ui.console.print(f"[green]proposal {p['proposal_id']}[/green] {escape(json_text(p['title']))} is {p['status']} "
                         f"until height {p['voting_end']}; validators vote with: awnode gov vote {p['proposal_id']} "
                         "yes|no|abstain --validator VALIDATOR_ID --key OPERATOR.json", highlight=False)


@gov_app.command("vote")
def vote(
    proposal_id: int = typer.Argument(..., metavar="PROPOSAL_ID"),
    option: str = typer.Argument(..., metavar="yes|no|abstain"),
    validator_id: str = typer.Option(..., "--validator", help="The validator whose power votes (64 hex)."),
    key_file: Path = key_option("validator operator"),
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    agent_id: Optional[str] = agent_id_option(),
    nonce: Optional[int] = nonce_option(),
    wait: bool = wait_option(),
    timeout: float = timeout_option(),
) -> None:
    """Vote on a proposal with a validator's power, signed by the validator's operator (once)."""
    ui.quiet_logs()
    with ui.friendly_errors():
        rpc = rpc_for(rpc_given, home)
        key, agent = agent_key(key_file, agent_id)
        option = option.strip().lower()
        if option not in VOTE_OPTIONS:
            raise ui.CliError(f"the vote must be one of {', '.join(VOTE_OPTIONS)}, got {option!r}")
        vid = check_validator_id(validator_id)
        client = ui.make_client(rpc)
        p = _proposal(client, rpc, proposal_id)
        if p["status"] != "voting":
            raise ui.CliError(f"proposal {proposal_id} is {p['status']}, not voting; votes are taken only while voting")
        try:
            v = client.validator(vid)
        except NotFound:
            raise ui.CliError(f"no validator {vid} on the node at {rpc}; list them with `awnode staking show`") from None
        if v["operator"] != agent:
            raise ui.CliError(f"validator {short(vid)} is operated by {v['operator']!r}, not {agent!r}; sign with the "
                              "operator's key")
        if not v["in_current_set"]:
            raise ui.CliError(f"validator {short(vid)} is not in the validator set in force; only its members vote")
        if vid in p["votes"]:
            raise ui.CliError(f"validator {short(vid)} already voted {p['votes'][vid]} on proposal {proposal_id}; a vote "
                              "is final")
        sub = submit_action(client, rpc, key, agent, VoteProposal(proposal_id=proposal_id, validator_id=vid,
                                                                   option=option), nonce=nonce, key_file=key_file)
        if not wait:
            return
        wait_executed(client, rpc, sub, timeout)
        ui.console.print(f"[green]voted[/green] {option} on proposal {proposal_id} with validator {short(vid)} "
                         f"(power {v['power']})", highlight=False)


# --- reading ---------------------------------------------------------------------------------------


def _fields_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold", overflow="fold")
    table.add_column("value", overflow="fold")
    for name, value in rows:
        table.add_row(name, escape(value if isinstance(value, str) else json_text(value)))
    return table


def _tally_text(tally: dict[str, Any]) -> str:
    """``yes 5, no 1, abstain 0 of total 10`` (options first, then any other counts)."""
    known = [f"{k} {tally[k]}" for k in ("yes", "no", "abstain") if k in tally]
    text = ", ".join(known + [f"{k} {v}" for k, v in sorted(tally.items()) if k not in ("yes", "no", "abstain", "total")])
    return text + (f" of total {tally['total']}" if "total" in tally else "")


@gov_app.command("show")
def show(
    proposal_id: int = typer.Argument(..., metavar="PROPOSAL_ID"),
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    as_json: bool = json_option(),
) -> None:
    """Show a proposal: status, votes, tally, the shadow report and what it changes."""
    ui.quiet_logs()
    with ui.friendly_errors():
        rpc = rpc_for(rpc_given, home)
        client = ui.make_client(rpc)
        p = _proposal(client, rpc, proposal_id)
        if as_json:
            print_json(p)
            return
        rows: list[tuple[str, Any]] = [
            ("title", p["title"] or "-"), ("status", p["status"]), ("kind", p["kind"]), ("proposer", p["proposer"]),
            ("base version", p["base_version"]), ("submitted at height", p["submitted_at"]),
            ("voting ends at height", p["voting_end"])]
        if p["decided_at"]:
            rows.append(("decided at height", p["decided_at"]))
        if p["rollback_to"]:
            rows.append(("rolls back to version", p["rollback_to"]))
        rows.append(("candidate manifest hash", p["candidate_manifest_hash"]))
        if p["tally"]:
            rows.append(("final tally", _tally_text(p["tally"])))
        now = p.get("tally_now")
        if now:
            rows.append(("tally now", f"yes {now['yes']}, no {now['no']}, abstain {now['abstain']}; voted "
                                      f"{now['voted_power']} of {now['total_power']} (powers of the set in force now)"))
            gov = client.manifest()["manifest"].get("governance", {})
            if "quorum_percent" in gov and "threshold_percent" in gov:
                rows.append(("rules", f"at the voting end, at least {gov['quorum_percent']}% of the set's power must "
                                      f"have voted (abstain counts) and yes must be more than "
                                      f"{gov['threshold_percent']}% of yes + no"))
        ui.console.print(_fields_table(f"proposal {p['proposal_id']} at {rpc}", rows))
        votes = Table(title=f"votes ({len(p['votes'])})")
        votes.add_column("validator", no_wrap=True)
        votes.add_column("vote", overflow="fold")
        for vid, choice in sorted(p["votes"].items()):
            votes.add_row(short(vid), escape(choice))
        ui.console.print(votes)
        diff = Table(title=f"changes against manifest version {p['diff_base_version']}")
        for col in ("path", "change", "old", "new"):
            diff.add_column(col, overflow="fold")
        for d in p["diff"]:
            diff.add_row(escape(d["path"]), d["change"], escape(json_text(d["old"])), escape(json_text(d["new"])))
        ui.console.print(diff)
        errors = p["shadow"]["errors"]
        if errors:
            ui.console.print("[red]shadow run errors:[/red]", highlight=False)
            for e in errors:
                ui.console.print(f"  {escape(e)}", highlight=False)


@gov_app.command("list")
def list_proposals(
    status: Optional[str] = typer.Option(None, "--status", help="Only proposals with this status (e.g. voting)."),
    limit: int = typer.Option(20, "--limit", help="At most this many, newest first (1-200)."),
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    as_json: bool = json_option(),
) -> None:
    """List proposals, newest first."""
    ui.quiet_logs()
    with ui.friendly_errors():
        rpc = rpc_for(rpc_given, home)
        if not 1 <= limit <= 200:
            raise ui.CliError(f"--limit must be between 1 and 200, got {limit}")
        doc = ui.make_client(rpc).proposals(status=status, limit=limit)
        if as_json:
            print_json(doc)
            return
        if not doc["proposals"]:
            which = f" with status {status}" if status else ""
            ui.console.print(f"no proposals{escape(which)} at {rpc}", highlight=False)
            return
        table = Table(title=f"proposals at {rpc}" + (f" ({escape(status)})" if status else ""))
        for col in ("id", "status", "kind", "title", "proposer", "votes", "voting ends", "decided"):
            table.add_column(col, overflow="fold")
        for p in doc["proposals"]:
            table.add_row(str(p["proposal_id"]), escape(p["status"]), escape(p["kind"]), escape(p["title"] or "-"),
                          escape(p["proposer"]), str(p["vote_count"]), str(p["voting_end"]),
                          str(p["decided_at"]) if p["decided_at"] else "-")
        ui.console.print(table)
        if doc["next_before"] is not None:
            ui.console.print(f"more: older proposals with GET {rpc}/v1/governance/proposals?before={doc['next_before']}",
                             highlight=False)


def _flatten(value: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        out: list[tuple[str, Any]] = []
        for k in value:
            out.extend(_flatten(value[k], f"{path}/{k}"))
        return out
    return [(path, value)]


@gov_app.command("manifest")
def show_manifest(
    versions: bool = typer.Option(False, "--versions", help="List the manifest versions instead."),
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    as_json: bool = json_option(),
) -> None:
    """Show the manifest in force (every value by its --set path), or its version history."""
    ui.quiet_logs()
    with ui.friendly_errors():
        rpc = rpc_for(rpc_given, home)
        client = ui.make_client(rpc)
        if versions:
            doc = client.manifest_versions(limit=1000)
            if as_json:
                print_json(doc)
                return
            table = Table(title=f"manifest versions at {rpc} (in force: {doc['current_version']})")
            for col in ("version", "applied at", "proposal", "hash"):
                table.add_column(col, overflow="fold")
            for v in doc["versions"]:
                table.add_row(str(v["version"]), str(v["applied_at"]), str(v["proposal_id"] or "genesis"), v["hash"])
            ui.console.print(table)
            return
        doc = client.manifest()
        if as_json:
            print_json(doc)
            return
        ui.console.print(f"manifest version {doc['version']} at {rpc}, hash {doc['hash']}, applied at height "
                         f"{doc['applied_at']} by {'proposal ' + str(doc['proposal_id']) if doc['proposal_id'] else 'genesis'}",
                         highlight=False)
        table = Table()
        table.add_column("path", overflow="fold")
        table.add_column("value", overflow="fold")
        for path, value in _flatten({k: v for k, v in doc["manifest"].items() if k != "version"}):
            table.add_row(escape(path), escape(json_text(value)))
        ui.console.print(table)


__all__ = ["gov_app", "pointer", "set_ops", "patch_ops", "manifest_file"]
