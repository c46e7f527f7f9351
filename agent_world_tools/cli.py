"""``awnode``: the command line of an Agent World node: create homes, run a node or a local testnet,
query a node, submit signed actions and run agents.

Commands::

    awnode init --home DIR [--moniker M] [--chain-id C]         a single-validator home
    awnode testnet init --nodes N --dir DIR [--chain-id C]      N homes sharing one genesis
    awnode testnet [--nodes 4] [--duration S] [--dir DIR] ...   run a local testnet with a workload
    awnode start --home DIR [--peers MULTIADDR,...]             run a node until SIGINT/SIGTERM
    awnode status --rpc URL [--json]                            a node's status
    awnode snapshots --rpc URL [--json]                         the state-sync snapshots it serves
    awnode submit --rpc URL --key FILE [--agent-id ID] [--nonce N] ACTION.json
    awnode keygen --out FILE [--agent-id ID]                    a new agent key file
    awnode agent run --rpc URL --agents N --policy scripted|llm  run agents against a node
    awnode staking create-validator|bond|unbond|unjail|show     validators and stake (staking_cli)
    awnode gov propose|vote|show|list|manifest                  governance of the manifest (gov_cli)

Errors a user can fix (bad config, unreachable node, rejected action) are printed as one red line
and exit with status 1, without a traceback.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import msgspec
import structlog
import typer
from rich.markup import escape
from rich.table import Table

from agent_world_client.client import AgentKey, NotFound
from agent_world_node.config import (
    Genesis,
    GenesisValidator,
    Home,
    NodeConfig,
    init_home,
    read_config,
    read_genesis,
)
from agent_world_node.network import peer_id_for_seed
from agent_world_runtime.actions import (
    AGENT_ID_RE,
    MAX_TRANSFER_AMOUNT,
    Action,
    action_kind,
    sign_action,
    static_action_problem,
)
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.params import WorldParams

from .gov_cli import gov_app
from .modules_cli import module_app
from .signing import home_option, reserve_nonce, rpc_for, rpc_or_home_option
from .staking_cli import staking_app
from .testnet import (
    DEFAULT_STAKE,
    DEFAULT_TESTNET_CHAIN_ID,
    TestnetOptions,
    add_testnet_node,
    genesis_faucet,
    init_testnet,
    local_toolchains,
    prepare_testnet,
    render_summary,
    run_testnet,
)
from .ui import CliError, console, err_console, friendly_errors, make_client, quiet_logs, read_agent_key

DEFAULT_CHAIN_ID = "agent-world-local"

app = typer.Typer(rich_markup_mode=None, 
    name="awnode",
    help="Agent World node: init, start, status, submit actions, run a local testnet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

#: The packages whose versions decide consensus (pinned exactly in pyproject.toml) or the node's
#: behaviour, shown by ``awnode version``.
VERSIONED_PACKAGES = ("agent-world", "libp2p", "wasmtime", "msgspec", "PyNaCl", "trio")


def version_table() -> list[tuple[str, str]]:
    """``(package, version)`` of each of ``VERSIONED_PACKAGES`` installed here ("not installed"
    when missing), then Python's."""
    import importlib.metadata
    import platform

    rows = []
    for name in VERSIONED_PACKAGES:
        try:
            rows.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    rows.append(("python", platform.python_version()))
    return rows


def _print_version(value: bool) -> None:
    if value:
        console.print(f"awnode {dict(version_table())['agent-world']}", highlight=False)
        raise typer.Exit()


@app.callback()
def awnode_options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit (`awnode version` lists the pinned libraries too)."),
) -> None:
    """Agent World node: init, start, status, submit actions, run a local testnet."""


@app.command("version")
def version_command() -> None:
    """Print awnode's version and those of the libraries that decide consensus (libp2p, wasmtime,
    msgspec, PyNaCl) and of trio and Python: every node of a chain must run the same."""
    for name, ver in version_table():
        console.print(f"{name:<12} {ver}", highlight=False)
testnet_app = typer.Typer(rich_markup_mode=None, 
    help="Run a local multi-node testnet on loopback (or create one with `testnet init`).",
    invoke_without_command=True,
)
app.add_typer(testnet_app, name="testnet")
agent_app = typer.Typer(rich_markup_mode=None, help="Run agents that live in the world through a node's API.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
app.add_typer(module_app, name="module")
app.add_typer(staking_app, name="staking")
app.add_typer(gov_app, name="gov")


# --- init ---------------------------------------------------------------------------------------


@app.command()
def init(
    home: Path = typer.Option(..., "--home", help="Directory of the new node home."),
    moniker: str = typer.Option("node", "--moniker", help="Human-readable node name."),
    chain_id: str = typer.Option(DEFAULT_CHAIN_ID, "--chain-id", help="Chain id of the new genesis."),
    genesis: Optional[Path] = typer.Option(
        None, "--genesis", help="Join an existing chain: copy this genesis.json instead of creating one."
    ),
    peers: Optional[str] = typer.Option(
        None, "--peers", help="Comma-separated peer multiaddrs (/ip4/HOST/tcp/PORT/p2p/PEER_ID) to dial."
    ),
    p2p_listen: Optional[str] = typer.Option(None, "--p2p-listen", help="P2P listen multiaddr, e.g. "
                                             "/ip4/0.0.0.0/tcp/26656 (default /ip4/127.0.0.1/tcp/26656)."),
    rpc_listen: Optional[str] = typer.Option(None, "--rpc-listen", help="HTTP API listen host:port "
                                             "(default 127.0.0.1:26657)."),
) -> None:
    """Create a node home with new random keys. Without --genesis it starts its own chain (this node
    the sole validator; its one genesis agent, the faucet, has its key in HOME/config/faucet.json);
    with --genesis it joins that chain as a full node that syncs from --peers (its validator key is
    not in the genesis, so it never votes)."""
    quiet_logs()
    with friendly_errors():
        peer_list = parse_peers(peers) or []
        validator_key = SigningKey.generate()
        node_key = SigningKey.generate()
        if genesis is not None:
            try:
                chain = read_genesis(genesis)
            except OSError as exc:
                raise CliError(f"cannot read --genesis {genesis}: {exc.strerror or exc}") from None
            if not peer_list:
                raise CliError("--genesis joins an existing chain: also give --peers so the node can sync it")
        else:
            if not chain_id.strip():
                raise CliError("--chain-id must not be empty")
            if Home(home).validator_key_file.exists():
                raise CliError(f"{home}: a node home already exists; choose another --home")
            faucet = genesis_faucet(Home(home).config_dir / "faucet.json")
            chain = Genesis(
                chain_id=chain_id,
                genesis_time_ms=int(time.time() * 1000),
                validators=[GenesisValidator(name=moniker, public_key=validator_key.public_key.hex(), stake=DEFAULT_STAKE)],
                agents=[faucet],
                world=WorldParams(toolchains=local_toolchains()),
            )
        config = NodeConfig()
        config.p2p.peers = peer_list
        apply_listen_flags(config, p2p_listen, rpc_listen)
        h = init_home(home, moniker=moniker, config=config, node_seed=node_key.seed,
                      validator_seed=validator_key.seed, genesis=chain)
        joined = genesis is not None
        console.print(f"initialized node home {h.root}", highlight=False)
        console.print(f"  chain id     {chain.chain_id}", highlight=False)
        role = "full node (not in the validator set)" if joined else validator_key.public_key.hex()
        console.print(f"  validator    {role}", highlight=False)
        console.print(f"  peer id      {peer_id_for_seed(node_key.seed)}", highlight=False)
        if not joined:
            console.print(f"  faucet key   {h.config_dir / 'faucet.json'} (agent 'faucet': creates and funds agents)",
                          highlight=False)
        console.print(f"  P2P          {config.p2p.listen}", highlight=False)
        console.print(f"  API          http://{config.rpc.listen}", highlight=False)
        console.print(f"start it with: awnode start --home {h.root}", highlight=False)


def apply_listen_flags(config: NodeConfig, p2p_listen: str | None, rpc_listen: str | None) -> None:
    """Set ``config``'s listen addresses from ``--p2p-listen`` / ``--rpc-listen`` (when given),
    checked: CliError for a P2P address that is not ``/ip4|ip6/HOST/tcp/PORT`` or an API address
    that is not ``host:port``."""
    if p2p_listen is not None:
        parts = p2p_listen.split("/")
        if len(parts) != 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp" or not parts[4].isdigit():
            raise CliError(f"--p2p-listen {p2p_listen!r} is not /ip4/HOST/tcp/PORT (or /ip6/...)")
        config.p2p.listen = p2p_listen
    if rpc_listen is not None:
        host, sep, port = rpc_listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise CliError(f"--rpc-listen {rpc_listen!r} is not host:port (e.g. 127.0.0.1:26667)")
        config.rpc.listen = rpc_listen


# --- testnet ------------------------------------------------------------------------------------


def _log_to_file(path: Path) -> None:
    """Send this process's structlog output to ``path`` as JSON lines (INFO and above), so the live
    view owns the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=open(path, "a", buffering=1)),
        cache_logger_on_first_use=False,
    )


@testnet_app.callback()
def testnet(
    ctx: typer.Context,
    nodes: Optional[int] = typer.Option(None, "--nodes", help="Number of nodes (default 4; a reused testnet keeps its own)."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Seconds to run; default until Ctrl-C."),
    directory: Optional[Path] = typer.Option(None, "--dir", help="Testnet directory; default a new temporary one."),
    agents: int = typer.Option(20, "--agents", help="Scripted agents in the workload."),
    seed: int = typer.Option(0, "--seed", help="Seed of the workload's choices."),
    rate: float = typer.Option(20.0, "--rate", help="Workload submissions per second, all agents together."),
    chain_id: str = typer.Option(DEFAULT_TESTNET_CHAIN_ID, "--chain-id", help="Chain id of a new testnet."),
    json_summary: Optional[Path] = typer.Option(None, "--json-summary", help="Also write the summary here as JSON."),
    base_port: Optional[int] = typer.Option(None, "--base-port", help="A new testnet's ports: node i's P2P on "
                                            "BASE+10i, its API on BASE+10i+1; default: free ports."),
) -> None:
    """Run a local testnet: start every node, drive it with scripted agents, show a live table, and
    on Ctrl-C or after --duration check that all nodes agree on every execution state root."""
    if ctx.invoked_subcommand is not None:
        return
    quiet_logs()
    with friendly_errors():
        if nodes is not None and nodes < 1:
            raise CliError(f"--nodes must be at least 1, got {nodes}")
        if duration is not None and duration <= 0:
            raise CliError(f"--duration must be positive, got {duration}")
        if agents < 1:
            raise CliError(f"--agents must be at least 1, got {agents}")
        if rate <= 0:
            raise CliError(f"--rate must be positive, got {rate}")
        opts = TestnetOptions(
            nodes=nodes,
            duration_s=duration,
            directory=directory,
            agents=agents,
            seed=seed,
            chain_id=chain_id,
            actions_per_s=rate,
            base_port=base_port,
        )
        path, testnet_nodes = prepare_testnet(opts, console)
        _log_to_file(path / "testnet.log")
        console.print(f"node logs: {path}/node*/node.log; launcher log: {path}/testnet.log", highlight=False)
        summary = run_testnet(path, testnet_nodes, opts, console)
        console.print(render_summary(summary))
        if json_summary is not None:
            json_summary.parent.mkdir(parents=True, exist_ok=True)
            json_summary.write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
            console.print(f"summary written to {json_summary}", highlight=False)
        if summary.interrupted:
            raise typer.Exit(130)
        if not summary.ok:
            raise typer.Exit(1)


@testnet_app.command("init")
def testnet_init(
    nodes: int = typer.Option(4, "--nodes", help="Number of nodes, all validators with equal stake."),
    directory: Path = typer.Option(..., "--dir", help="Directory for the homes node0..N-1."),
    chain_id: str = typer.Option(DEFAULT_TESTNET_CHAIN_ID, "--chain-id", help="Chain id of the shared genesis."),
    base_port: Optional[int] = typer.Option(None, "--base-port", help="Node i's P2P on BASE+10i, its API on "
                                            "BASE+10i+1; default: free ports."),
) -> None:
    """Create N node homes DIR/node0..N-1 sharing one genesis, on loopback ports, each listing
    every other node as a peer."""
    quiet_logs()
    with friendly_errors():
        if not chain_id.strip():
            raise CliError("--chain-id must not be empty")
        homes = init_testnet(directory, nodes, chain_id=chain_id, base_port=base_port)
        console.print(f"created a {nodes}-node testnet for chain {chain_id} in {Path(directory).resolve()}", highlight=False)
        for i, h in enumerate(homes):
            c = read_config(h.config_file)
            console.print(f"  node{i}: awnode start --home {h.root}   (API http://{c.rpc.listen}, P2P {c.p2p.listen})",
                          highlight=False)
        console.print(f"or run them all with: awnode testnet --dir {Path(directory).resolve()}", highlight=False)
        console.print(f"validator operators' agent keys: {Path(directory).resolve()}/operator0..{nodes - 1}.json",
                      highlight=False)


@testnet_app.command("add-node")
def testnet_add_node(
    directory: Path = typer.Option(..., "--dir", help="The testnet directory (from `awnode testnet init`)."),
) -> None:
    """Add a full node to the testnet in DIR as the next nodeN: new keys, free loopback ports, every
    existing node as a peer. Start it with `awnode start --home DIR/nodeN`; it syncs from genesis.
    It becomes a validator once its consensus key is bonded (`awnode staking create-validator`)."""
    quiet_logs()
    with friendly_errors():
        home = add_testnet_node(directory)
        rpc = read_config(home.config_file).rpc.listen
        console.print(f"added {home.root.name} (a full node) to the testnet in {Path(directory).resolve()}",
                      highlight=False)
        console.print(f"  start it:  awnode start --home {home.root}", highlight=False)
        console.print(f"  its API:   http://{rpc}", highlight=False)
        console.print(f"  bond it:   awnode staking create-validator --home {home.root} --key AGENT_KEY --bond 100 "
                      "--rpc http://...", highlight=False)


# --- start --------------------------------------------------------------------------------------


def parse_peers(peers: str | None) -> list[str] | None:
    """Split a comma-separated ``--peers`` value; None when not given. Raises CliError for an entry
    that is not a full ``/ip4|ip6|dns.../tcp/PORT/p2p/PEER_ID`` multiaddr."""
    if peers is None:
        return None
    out = [p.strip() for p in peers.split(",") if p.strip()]
    for p in out:
        if not p.startswith("/") or "/p2p/" not in p:
            raise CliError(f"--peers entry {p!r} is not a multiaddr like /ip4/127.0.0.1/tcp/26656/p2p/<peer id>")
    return out


@app.command()
def start(
    home: Path = typer.Option(..., "--home", help="Node home created by `awnode init` or `awnode testnet init`."),
    peers: Optional[str] = typer.Option(
        None, "--peers", help="Comma-separated peer multiaddrs; default: p2p.peers of config.toml."
    ),
    p2p_listen: Optional[str] = typer.Option(None, "--p2p-listen", help="P2P listen multiaddr for this run; "
                                             "default: p2p.listen of config.toml."),
    rpc_listen: Optional[str] = typer.Option(None, "--rpc-listen", help="HTTP API host:port for this run; "
                                             "default: rpc.listen of config.toml."),
) -> None:
    """Run the node daemon until SIGINT or SIGTERM."""
    with friendly_errors():
        peer_list = parse_peers(peers)
        if not Home(home).config_file.exists():
            raise CliError(f"{home}: no node home here (no config/config.toml); run `awnode init --home {home}` first")
        probe = NodeConfig()
        apply_listen_flags(probe, p2p_listen, rpc_listen)  # checked before anything starts
        from agent_world_node.daemon import run_node

        run_node(Path(home), peer_list, p2p_listen=p2p_listen, rpc_listen=rpc_listen)


# --- status -------------------------------------------------------------------------------------

_STATUS_ORDER = (
    "moniker",
    "node_id",
    "chain_id",
    "validator",
    "height",
    "round",
    "execution_height",
    "execution_block_hash",
    "execution_state_root",
    "peer_count",
    "peers",
    "mempool_size",
    "actions_committed",
    "module_calls",
    "syncing",
)


@app.command()
def status(
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
) -> None:
    """Show a node's status (height, execution height and state root, peers, mempool, ...)."""
    quiet_logs()
    with friendly_errors():
        rpc = rpc_for(rpc_given, home)
        data = make_client(rpc).status()
        if as_json:
            typer.echo(json.dumps(data, indent=2, sort_keys=True))
            return
        table = Table(title=f"node {data.get('moniker', '')} at {rpc}", show_header=False)
        table.add_column("field", style="bold", overflow="fold")
        table.add_column("value", overflow="fold")
        keys = [k for k in _STATUS_ORDER if k in data] + sorted(k for k in data if k not in _STATUS_ORDER)
        for key in keys:
            table.add_row(key, escape(human_value(data[key])))
        console.print(table)


def human_value(value: Any) -> str:
    """A status value for people: yes/no for booleans, "-" for none, lists one item per line,
    objects as ``key: value`` lines (nested values as compact JSON), numbers with thousands
    separators; never a Python repr."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return "\n".join(human_value(v) for v in value) or "-"
    if isinstance(value, dict):
        lines = [f"{k}: {human_value(v) if not isinstance(v, (dict, list)) else json.dumps(v, sort_keys=True)}"
                 for k, v in value.items()]
        return "\n".join(lines) or "-"
    return str(value)


@app.command()
def snapshots(
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
) -> None:
    """List the state-sync snapshots a node keeps and serves to joining nodes (newest first)."""
    quiet_logs()
    with friendly_errors():
        rpc = rpc_for(rpc_given, home)
        items = make_client(rpc).snapshots()
        if as_json:
            typer.echo(json.dumps(items, indent=2, sort_keys=True))
            return
        if not items:
            console.print(f"no state-sync snapshots at {rpc} (statesync.snapshot_interval sets how often they are made)",
                          highlight=False)
            return
        table = Table(title=f"state-sync snapshots at {rpc}")
        for name in ("height", "size", "chunks", "state_root", "hash"):
            table.add_column(name, overflow="fold")
        for m in items:
            table.add_row(str(m["height"]), f"{m['size']:,}", str(m["chunks"]), m["state_root"][:16], m["hash"][:16])
        console.print(table)


# --- submit -------------------------------------------------------------------------------------


def load_action(source: str) -> Action:
    """Read an unsigned action (msgspec JSON of ``actions.Action``, e.g. ``{"type": "move_agent",
    "to": [1, 2, 0]}``) from the file ``source`` (``-`` for stdin).

    Raises CliError when the file is missing, not JSON or not a known action.
    """
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read action file {source}: {exc.strerror or exc}") from None
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CliError(f"{source}: not JSON ({exc})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise CliError(f'{source}: expected a JSON object with a "type", like {{"type": "move_agent", "to": [1, 2, 0]}}')
    if obj["type"] == "create_agent" and isinstance(obj.get("public_key"), str) and len(obj["public_key"]) == 64:
        try:  # hex, as `awnode keygen` prints it; the JSON form of bytes is base64
            obj["public_key"] = base64.b64encode(bytes.fromhex(obj["public_key"])).decode()
        except ValueError:
            pass
    try:
        action = msgspec.json.decode(json.dumps(obj), type=Action)
    except msgspec.DecodeError as exc:
        raise CliError(f"{source}: not a valid action ({exc})") from None
    try:
        msgspec.msgpack.encode(action)
    except OverflowError:
        raise CliError(f"{source}: an integer in the action is outside -2**63..2**64-1 and can never be signed "
                       f"(amounts are at most {MAX_TRANSFER_AMOUNT}); use a smaller value") from None
    return action


@app.command()
def submit(
    action_file: str = typer.Argument(..., metavar="ACTION.json", help="Unsigned action as JSON ('-' for stdin)."),
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    key_file: Path = typer.Option(..., "--key", help="Agent key file (from `awnode keygen`)."),
    agent_id: Optional[str] = typer.Option(None, "--agent-id", help="Agent id; default: the key file's agent_id."),
    nonce: Optional[int] = typer.Option(None, "--nonce", help="Nonce; default: the next after the node's last_nonce and every nonce this key file already reserved (KEY.nonces)."),
    chain_id: Optional[str] = typer.Option(None, "--chain-id", help="Chain to sign for; default: the node's."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the chain executed the action and print its "
                              "outcome; exit 1 when the world rules rejected it."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait with --wait."),
) -> None:
    """Sign an action with an agent key and submit it to a node. "accepted" means the node took it
    into its mempool; the outcome (applied or rejected by the world rules) comes when a block holds
    it: --wait waits for it, `awnode action ID` looks it up later."""
    quiet_logs()
    with friendly_errors():
        rpc = rpc_for(rpc_given, home)
        key, file_agent_id = read_agent_key(key_file)
        agent = agent_id or file_agent_id
        if not agent:
            raise CliError(f"no agent id: pass --agent-id, or create the key with `awnode keygen --agent-id ID --out {key_file}`")
        if not AGENT_ID_RE.fullmatch(agent):
            raise CliError(f"invalid agent id {agent!r}: use 1-64 of a-z, 0-9, '_', '.', '-', starting with a letter or digit")
        if nonce is not None and nonce < 1:
            raise CliError(f"--nonce must be at least 1, got {nonce}")
        action = load_action(action_file)
        client = make_client(rpc)
        if chain_id is None:
            chain_id = client.status().get("chain_id")
            if not isinstance(chain_id, str):
                raise CliError(f"the node at {rpc} did not report a chain_id; pass --chain-id")
        if nonce is None:
            try:
                record: dict[str, Any] | None = client.agent(agent)
            except NotFound:
                record = None
            if record is None:
                raise CliError(
                    f"agent {agent!r} does not exist on the node at {rpc}; an existing agent (on a testnet, the "
                    f"faucet) must create it: awnode submit --key FAUCET.json create.json with "
                    f'{{"type": "create_agent", "agent_id": "{agent}", "public_key": "<hex>", "electricity": 1000}}'
                )
            else:
                last = record.get("last_nonce")
                if not isinstance(last, int):
                    raise CliError(f"the node at {rpc} reported no last_nonce for {agent!r}; pass --nonce")
                nonce = reserve_nonce(key_file, chain_id, agent, last)  # concurrent submits never share one
        signed = sign_action(key, chain_id, agent, nonce, action)
        problem = static_action_problem(signed)
        if problem is not None:
            raise CliError(f"{action_file}: {problem}")
        result = client.submit(signed)
        colour = "green" if result.status == "accepted" else "yellow"
        console.print(
            f"[{colour}]{result.status}[/{colour}] {action_kind(action)} agent={agent} nonce={nonce} "
            f"action_id={result.action_id}",
            highlight=False,
        )
        if not wait:
            return
        print_outcome(client.wait_action(result.action_id, timeout_s=timeout))


def print_outcome(doc: dict[str, Any]) -> None:
    """Print an ``GET /v1/actions/{id}`` document in one line; raise ``typer.Exit(1)`` when the
    world rules rejected the action."""
    where = f" at height {doc['height']}" if doc.get("height") is not None else ""
    fee = f" (fee {doc['fee']})" if doc.get("fee") is not None else ""
    outcome = doc.get("outcome") or doc.get("status")
    if outcome == "rejected":
        err_console.print(f"[red]rejected[/red]{where}{fee}: {doc.get('reason')}", highlight=False)
        raise typer.Exit(1)
    kinds = ", ".join(e["kind"] for e in doc.get("events", []))
    console.print(f"[green]{outcome}[/green]{where}{fee}" + (f": {kinds}" if kinds else ""), highlight=False)


audit_app = typer.Typer(rich_markup_mode=None, help="Export the world's events (the audit log) from a node.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("export")
def audit_export(
    out: Path = typer.Argument(..., metavar="FILE", help="Where to write the events, one JSON object per line."),
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    from_height: Optional[int] = typer.Option(None, "--from", min=0, help="First height (inclusive)."),
    to_height: Optional[int] = typer.Option(None, "--to", min=0, help="Last height (inclusive)."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Kinds, comma-separated: exact, or prefix* (domain.*)."),
    agent: Optional[str] = typer.Option(None, "--agent", help="Only events about this agent."),
) -> None:
    """Write the node's journal events that match the filters to FILE as JSON Lines
    ({"seq", "height", "kind", "data"}, bytes as hex), oldest first. The node holds events from
    genesis, or from its state-sync snapshot on."""
    quiet_logs()
    with friendly_errors():
        rpc = rpc_for(rpc_given, home)
        if from_height is not None and to_height is not None and from_height > to_height:
            raise CliError(f"--from {from_height} is above --to {to_height}")
        client = make_client(rpc)
        count, cursor = 0, None
        with open(out, "w", encoding="utf-8") as handle:
            while True:
                events, cursor = client.event_page(kind=kind, agent=agent, from_height=from_height,
                                                   to_height=to_height, cursor=cursor, limit=1000)
                for event in events:
                    handle.write(json.dumps(event, sort_keys=True) + "\n")
                count += len(events)
                if cursor is None:
                    break
        console.print(f"wrote {count} events to {out}", highlight=False)


@app.command("action")
def action_lookup(
    action_id: str = typer.Argument(..., metavar="ACTION_ID", help="The action id `awnode submit` printed (64 hex)."),
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    json_out: bool = typer.Option(False, "--json", help="Print the whole document as JSON."),
) -> None:
    """Look up what became of an action: pending, or committed with its outcome (applied with its
    events, or rejected with the reason); exit 1 when rejected."""
    quiet_logs()
    with friendly_errors():
        rpc = rpc_for(rpc_given, home)
        doc = make_client(rpc).action(action_id.strip().lower())
        if json_out:
            typer.echo(json.dumps(doc, indent=2, sort_keys=True))
            if doc.get("outcome") == "rejected":
                raise typer.Exit(1)
            return
        print_outcome(doc)


# --- keygen -------------------------------------------------------------------------------------


@app.command()
def keygen(
    out: Path = typer.Option(..., "--out", help="Where to write the key file (mode 0600; never overwritten)."),
    agent_id: Optional[str] = typer.Option(None, "--agent-id", help="Agent id to store with the key."),
) -> None:
    """Create a new random agent key file."""
    quiet_logs()
    with friendly_errors():
        key = SigningKey.generate()
        AgentKey(key=key, agent_id=agent_id).save(out)
        console.print(f"wrote {out}", highlight=False)
        console.print(f"  public key  {key.public_key.hex()}", highlight=False)
        if agent_id:
            console.print(f"  agent id    {agent_id}", highlight=False)
            console.print(
                "create it with an existing agent's key (on a testnet, DIR/faucet.json): echo "
                f"'{{\"type\": \"create_agent\", \"agent_id\": \"{agent_id}\", "
                f"\"public_key\": \"{key.public_key.hex()}\", \"electricity\": 1000, \"data\": 1000}}' | "
                "awnode submit --key FAUCET.json --rpc URL -",
                highlight=False,
            )


# --- agent -------------------------------------------------------------------------------------


def _agent_summary(stats: Any, agents: int) -> str:
    """One line of live agent-runtime counters."""
    rejected = ", ".join(f"{k}={v}" for k, v in sorted(stats.rejected.items())) or "0"
    return (
        f"agents {stats.agents_registered}/{agents}  decisions {stats.decisions} "
        f"({stats.decisions_per_s():.1f}/s)  submitted {stats.submitted}  accepted {stats.accepted}  "
        f"committed {stats.committed}  failed {stats.failed}  rejected {rejected}  "
        f"retried 503 {stats.retried_503}  unreachable {stats.unreachable}  decision errors {stats.decision_errors}"
    )


@agent_app.command("run")
def agent_run(
    rpc: str = typer.Option("http://127.0.0.1:26657", "--rpc", help="Node API URL(s), comma-separated; agent i uses URL i mod n."),
    agents: int = typer.Option(1, "--agents", help="Number of agents to run."),
    policy: str = typer.Option("scripted", "--policy", help="scripted (deterministic from --seed) or llm (AGENT_WORLD_LLM_* env)."),
    key_dir: Path = typer.Option(Path("agent-keys"), "--key-dir", help="Where each agent's key file is created and reused."),
    seed: int = typer.Option(0, "--seed", help="Names the agents (agent-s<seed>-<i>) and seeds scripted choices."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Seconds to run; default until Ctrl-C."),
    turn: float = typer.Option(1.0, "--turn", help="Seconds each agent waits between turns."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Cap on submissions per second, all agents together."),
    prefix: str = typer.Option("agent", "--prefix", help="Agent id prefix."),
    chain_id: Optional[str] = typer.Option(None, "--chain-id", help="Chain to sign for; default: the node's."),
    json_summary: Optional[Path] = typer.Option(None, "--json-summary", help="Also write the final stats here as JSON."),
    sponsor_key: Optional[Path] = typer.Option(
        None, "--sponsor-key",
        help="Key file of an existing agent that creates and funds the agents that do not exist yet "
        "(a testnet's DIR/faucet.json).",
    ),
) -> None:
    """Run N agents, each with its own key, observing, deciding and acting until Ctrl-C or --duration;
    print a live summary and the final stats (decisions per second)."""
    import trio

    from agent_world_agents.runtime import AgentRuntime, Policy, RuntimeStats

    quiet_logs()
    with friendly_errors():
        if agents < 1:
            raise CliError(f"--agents must be at least 1, got {agents}")
        if duration is not None and duration <= 0:
            raise CliError(f"--duration must be positive, got {duration}")
        if turn < 0:
            raise CliError(f"--turn must be >= 0, got {turn}")
        if rate is not None and rate <= 0:
            raise CliError(f"--rate must be positive, got {rate}")
        urls = [u.strip() for u in rpc.split(",") if u.strip()]
        if not urls:
            raise CliError("--rpc is empty; pass a node API URL such as http://127.0.0.1:26657")
        if policy == "scripted":
            from agent_world_agents.scripted import ScriptedPopulation

            factory: Any = ScriptedPopulation(seed)
        elif policy == "llm":
            from agent_world_agents.llm import LLMConfig, LLMConfigError, LLMPolicy

            try:
                shared: Policy = LLMPolicy(LLMConfig.from_env())
            except LLMConfigError as exc:
                err_console.print(f"[bold red]error:[/bold red] [red]{escape(str(exc))}[/red]", highlight=False)
                raise typer.Exit(2) from None
            factory = lambda index, agent_id: shared  # noqa: E731 - one policy serves every agent
        else:
            raise CliError(f"--policy must be 'scripted' or 'llm', got {policy!r}")
        sponsor = AgentKey.load(sponsor_key) if sponsor_key is not None else None
        stats = RuntimeStats()
        runtime = AgentRuntime(
            urls, agents=agents, policy_factory=factory, key_dir=key_dir, chain_id=chain_id, seed=seed,
            agent_prefix=prefix, turn_s=turn, actions_per_s=rate, stats=stats, sponsor=sponsor,
        )
        interrupted = False
        closers: list[Any] = [shared] if policy == "llm" else []

        async def main() -> None:
            stop = trio.Event()
            await runtime.resolve_chain_id()
            async with trio.open_nursery() as nursery:

                async def report() -> None:
                    while True:
                        await trio.sleep(2.0)
                        console.print(_agent_summary(stats, agents), highlight=False)

                async def deadline() -> None:
                    if duration is not None:
                        await trio.sleep(duration)
                        stop.set()

                async def signals() -> None:
                    nonlocal interrupted
                    import signal

                    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                        async for _ in received:
                            interrupted = True
                            stop.set()
                            return

                nursery.start_soon(report)
                nursery.start_soon(deadline)
                nursery.start_soon(signals)
                try:
                    await runtime.run(stop)
                finally:
                    with trio.CancelScope(shield=True):
                        for policy_object in closers:  # the LLM client's HTTP connections
                            await policy_object.aclose()
                nursery.cancel_scope.cancel()

        console.print(
            f"running {agents} {policy} agent(s) against {', '.join(urls)}; keys in {key_dir}; Ctrl-C to stop",
            highlight=False,
        )
        trio.run(main)
        console.print(f"final: {_agent_summary(stats, agents)}", highlight=False)
        console.print(
            f"decisions/s {stats.decisions_per_s():.2f} over {stats.elapsed_s():.1f} s", highlight=False
        )
        if json_summary is not None:
            json_summary.parent.mkdir(parents=True, exist_ok=True)
            json_summary.write_text(json.dumps(stats.as_dict(), indent=2) + "\n")
        if interrupted:
            raise typer.Exit(130)


def main() -> None:
    """Console entry point (``awnode``)."""
    app(prog_name="awnode")


if __name__ == "__main__":
    main()
