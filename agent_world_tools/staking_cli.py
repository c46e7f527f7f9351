"""``awnode staking``: validators and stake (docs/staking-cli.md).

Commands::

    awnode staking create-validator --home HOME --key OPERATOR.json --bond N [--name NAME]
    awnode staking bond VALIDATOR_ID AMOUNT --key KEY
    awnode staking unbond VALIDATOR_ID AMOUNT --key KEY
    awnode staking unjail VALIDATOR_ID --key OPERATOR.json
    awnode staking show [VALIDATOR_ID] [--json]

Each action is signed by an agent key with the agent's next nonce on the node's chain (as ``awnode
submit``), checked first against what the node reports (so an action the rules would refuse does
not pay its fee for nothing), then submitted; by default the command waits until the chain executed
it and reports the rules' verdict. ``create-validator`` proves the node's consensus key
(``HOME/config/priv_validator_key.json``) for the operator agent that signs the action.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from agent_world_client.client import NotFound, SyncNodeClient
from agent_world_node.config import Home, read_config, read_genesis, read_key
from agent_world_runtime.actions import Bond, CreateValidator, Unbond, Unjail, validator_key_proof

from . import ui
from .signing import (
    agent_id_option,
    agent_key,
    agent_record,
    balance_of,
    chain_id_of,
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

staking_app = typer.Typer(rich_markup_mode=None, help="Validators and stake: create a validator, bond, unbond, unjail, show.",
                          no_args_is_help=True)

MAX_NAME_CHARS = 64


def _validator(client: SyncNodeClient, rpc: str, validator_id: str) -> dict[str, Any]:
    try:
        return client.validator(validator_id)
    except NotFound:
        raise ui.CliError(f"no validator {validator_id} on the node at {rpc}; list them with "
                          f"`awnode staking show --rpc {rpc}`") from None


def _staking_params(client: SyncNodeClient) -> dict[str, Any]:
    staking = client.manifest().get("manifest", {}).get("staking", {})
    return staking if isinstance(staking, dict) else {}


def _positive(value: int, name: str) -> None:
    if value < 1:
        raise ui.CliError(f"{name} must be a positive integer (electricity), got {value}")


@staking_app.command("create-validator")
def create_validator(
    home: Path = typer.Option(..., "--home", help="The home of the node that will validate: its consensus key "
                              "(config/priv_validator_key.json) becomes the validator's key."),
    key_file: Path = key_option("operator"),
    bond: int = typer.Option(..., "--bond", help="Electricity the operator bonds (at least staking.min_bond)."),
    name: Optional[str] = typer.Option(None, "--name", help="Validator name (at most 64 characters); default: the "
                                       "node's moniker."),
    rpc_given: Optional[str] = rpc_or_home_option(),
    agent_id: Optional[str] = agent_id_option(),
    nonce: Optional[int] = nonce_option(),
    wait: bool = wait_option(),
    timeout: float = timeout_option(),
) -> None:
    """Make the node of --home a validator candidate operated by the agent of --key, bonding --bond.
    It joins the validator set two epochs after the one it is created in, if its bond ranks."""
    ui.quiet_logs()
    with ui.friendly_errors():
        key, agent = agent_key(key_file, agent_id)
        _positive(bond, "--bond")
        rpc = rpc_for(rpc_given, home)
        h = Home(home)
        if not h.validator_key_file.exists():
            raise ui.CliError(f"{home}: no consensus key (config/priv_validator_key.json); pass the --home of the node "
                              "that will validate (made with `awnode init`)")
        consensus = read_key(h.validator_key_file)
        if name is None:
            name = read_config(h.config_file).moniker if h.config_file.exists() else ""
        if len(name) > MAX_NAME_CHARS:
            raise ui.CliError(f"--name is {len(name)} characters; use at most {MAX_NAME_CHARS}")
        vid = consensus.public_key.hex()
        client = ui.make_client(rpc)
        chain_id = chain_id_of(client, rpc)
        if h.genesis_file.exists():
            home_chain = read_genesis(h.genesis_file).chain_id
            if home_chain != chain_id:
                raise ui.CliError(f"{home} belongs to chain {home_chain!r} but the node at {rpc} runs {chain_id!r}; "
                                  "point --rpc at a node of the home's chain")
        try:
            existing: dict[str, Any] | None = client.validator(vid)
        except NotFound:
            existing = None
        if existing is not None:
            raise ui.CliError(f"validator {vid} already exists (operator {existing.get('operator')!r}); add stake "
                              f"with `awnode staking bond {vid} AMOUNT --key KEY`")
        min_bond = _staking_params(client).get("min_bond", 1)
        if isinstance(min_bond, int) and bond < min_bond:
            raise ui.CliError(f"--bond {bond} is below the chain's minimum bond {min_bond} (staking.min_bond)")
        record = agent_record(client, rpc, agent)
        if bond > balance_of(record):
            raise ui.CliError(f"agent {agent!r} has {balance_of(record)} electricity, cannot bond {bond} (and pay the "
                              "fee); bond less or get electricity first")
        proof = validator_key_proof(consensus, chain_id, agent)
        action = CreateValidator(validator_key=consensus.public_key, bond=bond, proof=proof, name=name)
        sub = submit_action(client, rpc, key, agent, action, chain_id=chain_id, nonce=nonce, record=record, key_file=key_file)
        ui.console.print(f"  validator id {vid}", highlight=False)
        if not wait:
            return
        wait_executed(client, rpc, sub, timeout)
        doc = _validator(client, rpc, vid)
        length = client.validators().get("epoch_length", 0)
        earliest = doc["created_at"] // length + 2 if isinstance(length, int) and length > 0 else None
        when = f" (epoch {earliest}, from height {earliest * length})" if earliest is not None else ""
        ui.console.print(f"[green]created[/green] validator {vid} name={escape(json_text(doc.get('name', '')))} "
                         f"operator={escape(agent)} bonded={doc.get('bonded')} at height {doc.get('created_at')}; it "
                         f"joins the validator set two epochs later at the earliest{when}", highlight=False)


@staking_app.command("bond")
def bond(
    validator_id: str = typer.Argument(..., metavar="VALIDATOR_ID", help="The validator to bond to (64 hex)."),
    amount: int = typer.Argument(..., metavar="AMOUNT", help="Electricity to bond."),
    key_file: Path = key_option("bonding agent"),
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    agent_id: Optional[str] = agent_id_option(),
    nonce: Optional[int] = nonce_option(),
    wait: bool = wait_option(),
    timeout: float = timeout_option(),
) -> None:
    """Bond AMOUNT of your electricity to a validator (your own, or another's: a delegation)."""
    ui.quiet_logs()
    with ui.friendly_errors():
        rpc = rpc_for(rpc_given, home)
        key, agent = agent_key(key_file, agent_id)
        vid = check_validator_id(validator_id)
        _positive(amount, "AMOUNT")
        client = ui.make_client(rpc)
        before = _validator(client, rpc, vid)
        record = agent_record(client, rpc, agent)
        if amount > balance_of(record):
            raise ui.CliError(f"agent {agent!r} has {balance_of(record)} electricity, cannot bond {amount}; bond less")
        sub = submit_action(client, rpc, key, agent, Bond(validator_id=vid, amount=amount), nonce=nonce, record=record, key_file=key_file)
        if not wait:
            return
        wait_executed(client, rpc, sub, timeout)
        after = _validator(client, rpc, vid)
        ui.console.print(f"[green]bonded[/green] {amount} to {vid}: your bond {after['bonds'].get(agent, 0)}, the "
                         f"validator's {after['bonded']} (was {before['bonded']})", highlight=False)


@staking_app.command("unbond")
def unbond(
    validator_id: str = typer.Argument(..., metavar="VALIDATOR_ID", help="The validator to unbond from (64 hex)."),
    amount: int = typer.Argument(..., metavar="AMOUNT", help="Electricity to take back from your bond."),
    key_file: Path = key_option("bonding agent"),
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    agent_id: Optional[str] = agent_id_option(),
    nonce: Optional[int] = nonce_option(),
    wait: bool = wait_option(),
    timeout: float = timeout_option(),
) -> None:
    """Start returning AMOUNT of your bond to a validator: it comes back at the end of the epoch
    staking.unbonding_epochs after the current one, unless slashed first."""
    ui.quiet_logs()
    with ui.friendly_errors():
        rpc = rpc_for(rpc_given, home)
        key, agent = agent_key(key_file, agent_id)
        vid = check_validator_id(validator_id)
        _positive(amount, "AMOUNT")
        client = ui.make_client(rpc)
        held = _validator(client, rpc, vid)["bonds"].get(agent, 0)
        if amount > held:
            raise ui.CliError(f"agent {agent!r} has {held} bonded to {vid}; unbond at most {held}")
        sub = submit_action(client, rpc, key, agent, Unbond(validator_id=vid, amount=amount), nonce=nonce, key_file=key_file)
        if not wait:
            return
        wait_executed(client, rpc, sub, timeout)
        mine = [(q["release_epoch"], e) for q in client.unbonding()["queues"] for e in q["entries"]
                if e["agent_id"] == agent and e["validator_id"] == vid]
        release = f"; it returns at the end of epoch {mine[-1][0]}" if mine else ""
        ui.console.print(f"[green]unbonding[/green] {amount} from {vid}{release}", highlight=False)


@staking_app.command("unjail")
def unjail(
    validator_id: str = typer.Argument(..., metavar="VALIDATOR_ID", help="Your jailed validator (64 hex)."),
    key_file: Path = key_option("operator"),
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    agent_id: Optional[str] = agent_id_option(),
    nonce: Optional[int] = nonce_option(),
    wait: bool = wait_option(),
    timeout: float = timeout_option(),
) -> None:
    """Ask for your jailed validator back once its jail ended; it can then join the next set computed."""
    ui.quiet_logs()
    with ui.friendly_errors():
        rpc = rpc_for(rpc_given, home)
        key, agent = agent_key(key_file, agent_id)
        vid = check_validator_id(validator_id)
        client = ui.make_client(rpc)
        doc = _validator(client, rpc, vid)
        if doc["operator"] != agent:
            raise ui.CliError(f"only validator {short(vid)}'s operator {doc['operator']!r} may unjail it; sign with "
                              "that agent's key")
        if not doc["jailed"]:
            raise ui.CliError(f"validator {vid} is not jailed")
        height = client.validators().get("height", 0)
        if isinstance(height, int) and height + 1 < doc["jailed_until"]:
            raise ui.CliError(f"validator {vid} is jailed until height {doc['jailed_until']} (the chain is at height "
                              f"{height}); unjail at or after it")
        sub = submit_action(client, rpc, key, agent, Unjail(validator_id=vid), nonce=nonce, key_file=key_file)
        if not wait:
            return
        wait_executed(client, rpc, sub, timeout)
        ui.console.print(f"[green]unjailed[/green] {vid}; it is a candidate for the next validator set computed",
                         highlight=False)


def _in_set(v: dict[str, Any]) -> str:
    if v["in_current_set"]:
        return "yes"
    return "next epoch" if v["next_power"] else "no"


def _jail(v: dict[str, Any]) -> str:
    if not v["jailed"]:
        return "no"
    reason = v.get("jail_reason")
    return f"until {v['jailed_until']}" + (f" ({reason})" if reason else "")


def _show_one(client: SyncNodeClient, rpc: str, vid: str, as_json: bool) -> None:
    doc = _validator(client, rpc, vid)
    queues = client.unbonding()["queues"]
    pending = [{"release_epoch": q["release_epoch"], **e} for q in queues for e in q["entries"] if e["validator_id"] == vid]
    if as_json:
        print_json({**doc, "unbonding": pending})
        return
    table = Table(title=f"validator {doc.get('name') or vid[:16]} at {rpc}", show_header=False)
    table.add_column("field", style="bold", overflow="fold")
    table.add_column("value", overflow="fold")
    for field, value in (("validator_id", doc["validator_id"]), ("name", doc["name"] or "-"),
                         ("operator", doc["operator"] or "- (genesis bond, permanent)"), ("bonded", doc["bonded"]),
                         ("in current set", _in_set(doc)), ("power", doc["power"]), ("next epoch power", doc["next_power"]),
                         ("jailed", _jail(doc)), ("slashed", doc["slashed"]), ("created at height", doc["created_at"])):
        table.add_row(field, escape(str(value)))
    ui.console.print(table)
    bonds = Table(title="bonds")
    bonds.add_column("bonder", overflow="fold")
    bonds.add_column("amount", justify="right", overflow="fold")
    for bonder, amount in sorted(doc["bonds"].items(), key=lambda kv: (-kv[1], kv[0])):
        bonds.add_row(escape(bonder), str(amount))
    ui.console.print(bonds)
    if pending:
        unb = Table(title="unbonding")
        for col in ("agent", "amount", "unbonded at", "returns end of epoch"):
            unb.add_column(col, overflow="fold")
        for e in pending:
            unb.add_row(escape(e["agent_id"]), str(e["amount"]), str(e["created_at"]), str(e["release_epoch"]))
        ui.console.print(unb)


@staking_app.command("show")
def show(
    validator_id: Optional[str] = typer.Argument(None, metavar="[VALIDATOR_ID]", help="One validator (64 hex); "
                                                 "default: list them all."),
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    as_json: bool = json_option(),
) -> None:
    """List the validator candidates (bond, power, set membership, jail), or show one with its
    bonds and pending unbondings."""
    ui.quiet_logs()
    with ui.friendly_errors():
        rpc = rpc_for(rpc_given, home)
        client = ui.make_client(rpc)
        if validator_id is not None:
            _show_one(client, rpc, check_validator_id(validator_id), as_json)
            return
        doc = client.validators()
        queues = client.unbonding()
        if as_json:
            print_json({**doc, "unbonding": queues["queues"]})
            return
        if not doc["validators"]:
            ui.console.print(f"no validators at {rpc}", highlight=False)
            return
        table = Table(title=f"validators at {rpc}: height {doc['height']}, epoch {doc['epoch']} "
                            f"({doc['epoch_length']} heights), total power {doc['total_power']} (full ids: --json)")
        for col in ("validator", "name", "operator", "bonded", "power", "in set", "jailed", "slashed"):
            table.add_column(col, justify="right" if col in ("bonded", "power", "slashed") else "left",
                             no_wrap=col not in ("name", "operator"), overflow="fold",
                             min_width=8 if col in ("name", "operator") else None)
        for v in sorted(doc["validators"], key=lambda v: (-v["power"], -v["bonded"], v["validator_id"])):
            table.add_row(short(v["validator_id"]), escape(v["name"] or "-"), escape(v["operator"] or "-"),
                          str(v["bonded"]), str(v["power"]), _in_set(v), _jail(v), str(v["slashed"]))
        ui.console.print(table)
        entries = [(q["release_epoch"], e) for q in queues["queues"] for e in q["entries"]]
        if entries:
            unb = Table(title=f"unbonding (current epoch {queues['current_epoch']})")
            for col in ("agent", "validator", "amount", "returns end of epoch"):
                unb.add_column(col, overflow="fold", no_wrap=col == "validator")
            for release, e in entries:
                unb.add_row(escape(e["agent_id"]), short(e["validator_id"]), str(e["amount"]), str(release))
            ui.console.print(unb)


__all__ = ["staking_app"]
