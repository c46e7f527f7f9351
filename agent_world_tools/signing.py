"""What the ``awnode staking`` and ``awnode gov`` commands share: the signing agent from a key
file, submitting an action with the agent's next nonce on the node's chain (as ``awnode submit``
does), waiting until the chain executed it and reporting the world rules' verdict, and printing
values as JSON (never Python reprs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from agent_world_client.client import ClientError, NotFound, SyncNodeClient
from agent_world_node.config import Home, read_config, rpc_url_for
from agent_world_runtime.actions import AGENT_ID_RE, Action, action_kind, sign_action, static_action_problem
from agent_world_runtime.crypto import SigningKey

from . import ui

DEFAULT_RPC = "http://127.0.0.1:26657"
VALIDATOR_ID_RULE = "64 lowercase hex characters (the validator's consensus public key)"


def rpc_or_home_option() -> Any:
    """``--rpc`` for commands that also take ``--home`` (resolved by ``rpc_for``)."""
    return typer.Option(None, "--rpc", help=f"The node's HTTP API; default: that of the node in --home, else {DEFAULT_RPC}.")


def home_option() -> Any:
    """``--home``: a node home whose API a command talks to (see ``rpc_for``)."""
    return typer.Option(None, "--home", help="A node home: talk to that node's API (its config.toml rpc.listen).")


def rpc_for(rpc: str | None, home: Path | None) -> str:
    """The API to talk to: ``--rpc`` when given, else that of the node in ``--home`` (its
    ``rpc.listen``), else the default. Raises ConfigError for an unreadable config."""
    if rpc:
        return rpc
    if home is not None and Home(home).config_file.exists():
        return rpc_url_for(read_config(Home(home).config_file).rpc.listen)
    return DEFAULT_RPC


def key_option(who: str = "signing agent") -> Any:
    return typer.Option(..., "--key", help=f"The {who}'s agent key file (from `awnode keygen`).")


def agent_id_option() -> Any:
    return typer.Option(None, "--agent-id", help="Agent id; default: the key file's agent_id.")


def nonce_option() -> Any:
    return typer.Option(None, "--nonce", help="Nonce; default: the next after the node's last_nonce and every nonce this key file already reserved (KEY.nonces).")


def wait_option() -> Any:
    return typer.Option(True, "--wait/--no-wait", help="Wait until the chain executed the action and report "
                        "whether the world rules applied or rejected it.")


def timeout_option() -> Any:
    return typer.Option(60.0, "--timeout", help="Seconds to wait for the action to execute (with --wait).")


def json_option() -> Any:
    return typer.Option(False, "--json", help="Print the raw JSON.")


def agent_key(key_file: Path, agent_id: Optional[str]) -> tuple[SigningKey, str]:
    """The signing key and agent id (``--agent-id`` or the key file's); CliError when neither names
    a valid agent id."""
    key, file_agent = ui.read_agent_key(key_file)
    agent = agent_id or file_agent
    if not agent:
        raise ui.CliError(f"no agent id: pass --agent-id, or use a key file made with "
                          f"`awnode keygen --agent-id ID --out {key_file}`")
    if not AGENT_ID_RE.fullmatch(agent):
        raise ui.CliError(f"invalid agent id {agent!r}: use 1-64 of a-z, 0-9, '_', '.', '-', starting with a letter or digit")
    return key, agent


def check_validator_id(validator_id: str) -> str:
    """``validator_id`` lowercased; CliError unless it is 64 hex characters."""
    vid = validator_id.strip().lower()
    if len(vid) != 64 or any(c not in "0123456789abcdef" for c in vid):
        raise ui.CliError(f"{validator_id[:80]!r} is not a validator id: use {VALIDATOR_ID_RULE}; list them with "
                          "`awnode staking show`")
    return vid


def chain_id_of(client: SyncNodeClient, rpc: str) -> str:
    chain_id = client.status().get("chain_id")
    if not isinstance(chain_id, str):
        raise ui.CliError(f"the node at {rpc} did not report a chain_id; is it an Agent World node?")
    return chain_id


def agent_record(client: SyncNodeClient, rpc: str, agent: str) -> dict[str, Any]:
    """The agent's record on the node; CliError when it does not exist there."""
    try:
        return client.agent(agent)
    except NotFound:
        raise ui.CliError(f"agent {agent!r} does not exist on the node at {rpc}; an existing agent (on a testnet, "
                          "the faucet) must create it first (see `awnode keygen --agent-id`)") from None


def balance_of(record: dict[str, Any]) -> int:
    value = record.get("electricity")
    return value if isinstance(value, int) else 0


class Submitted:
    """An action the node accepted: its id, signer and nonce."""

    def __init__(self, action_id: str, agent: str, nonce: int, kind: str) -> None:
        self.action_id = action_id
        self.agent = agent
        self.nonce = nonce
        self.kind = kind


def reserve_nonce(key_file: Path, chain_id: str, agent: str, node_last: int) -> int:
    """Return the next nonce for ``agent`` on ``chain_id`` and remember it beside the key file
    (``KEY.nonces``, JSON ``{"<chain>/<agent>": last reserved}``), under an exclusive lock: two
    commands signing with one key at once get different nonces. The nonce is above both the node's
    ``node_last`` (its executed state) and every nonce reserved here before (pending actions the
    node has not executed yet); a reserved nonce that was never used leaves a gap, which the chain
    allows. Raises OSError when the file cannot be written."""
    import fcntl

    path = key_file.with_name(key_file.name + ".nonces")
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        handle.seek(0)
        try:
            reserved = json.loads(handle.read() or "{}")
        except json.JSONDecodeError:
            reserved = {}
        if not isinstance(reserved, dict):
            reserved = {}
        slot = f"{chain_id}/{agent}"
        previous = reserved.get(slot)
        nonce = max(node_last, previous if isinstance(previous, int) else 0) + 1
        reserved[slot] = nonce
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(reserved, sort_keys=True) + "\n")
        handle.flush()
    return nonce


def submit_action(client: SyncNodeClient, rpc: str, key: SigningKey, agent: str, action: Action, *,
                  chain_id: str | None = None, nonce: Optional[int] = None,
                  record: dict[str, Any] | None = None, key_file: Path | None = None) -> Submitted:
    """Sign ``action`` for the node's chain with ``nonce`` (default: the agent's last nonce + 1
    there, or with ``key_file`` the next nonce reserved beside it, ``reserve_nonce``; ``record``
    is the agent's record when already read), submit it and print the acceptance. Raises
    CliError, or the client's errors (a refusal says the node's reason)."""
    if nonce is not None and nonce < 1:
        raise ui.CliError(f"--nonce must be at least 1, got {nonce}")
    chain_id = chain_id or chain_id_of(client, rpc)
    if nonce is None:
        record = record if record is not None else agent_record(client, rpc, agent)
        last = record.get("last_nonce")
        if not isinstance(last, int):
            raise ui.CliError(f"the node at {rpc} reported no last_nonce for {agent!r}; pass --nonce")
        nonce = reserve_nonce(key_file, chain_id, agent, last) if key_file is not None else last + 1
    signed = sign_action(key, chain_id, agent, nonce, action)
    problem = static_action_problem(signed)
    if problem is not None:
        raise ui.CliError(problem)
    result = client.submit(signed)
    kind = action_kind(action)
    colour = "green" if result.status == "accepted" else "yellow"
    ui.console.print(f"[{colour}]{result.status}[/{colour}] {kind} agent={escape(agent)} nonce={nonce} "
                     f"action_id={result.action_id}", highlight=False)
    return Submitted(result.action_id, agent, nonce, kind)


def wait_executed(client: SyncNodeClient, rpc: str, sub: Submitted, timeout: float) -> None:
    """Wait until the chain executed ``sub`` (``GET /v1/actions/{id}``); CliError with the rules'
    reason when they rejected it, or when it is not executed within ``timeout`` seconds."""
    try:
        doc = client.wait_action(sub.action_id, timeout_s=timeout)
    except ClientError as exc:
        raise ui.CliError(f"the {sub.kind} (action {sub.action_id}): {exc}") from None
    if doc.get("outcome") == "rejected":
        raise ui.CliError(f"the chain rejected the {sub.kind} (its fee was paid): {doc.get('reason')}")


def json_text(value: Any) -> str:
    """``value`` as compact JSON (``true``, ``null``, quoted strings), for tables."""
    return json.dumps(value, separators=(", ", ": "), sort_keys=True)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


def short(validator_id: str) -> str:
    """A validator id shortened for tables (full ids: --json)."""
    return validator_id[:16] + "..." if len(validator_id) > 19 else validator_id
