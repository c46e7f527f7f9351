"""Creating a local testnet on loopback: N node homes ``dir/node0..N-1`` that share one genesis (every
node a validator with equal stake), with random keys, free loopback ports and a full-mesh peer list;
adding a non-validating late joiner to an existing testnet; and reading a testnet directory back as
``TestnetNode`` descriptions (name, home, RPC URL, chain id) that the other testnet modules use.

The genesis of a testnet has the faucet (``FAUCET_AGENT_ID``, with ``FAUCET_BALANCE`` electricity
and data), whose key is ``dir/faucet.json``: agents are never free, so the workload and people
trying the testnet create their agents with it (``awnode agent run --sponsor-key``). Each
validator ``node<i>`` has an operator, the genesis agent ``operator<i>`` (key
``dir/operator<i>.json``), which holds its bond and may unbond it, vote in governance and unjail it.
Epochs are ``TESTNET_EPOCH_LENGTH`` heights and governance votes last
``TESTNET_VOTING_PERIOD`` heights, so set changes and proposals happen within minutes.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import msgspec
import structlog

from agent_world_client.client import AgentKey
from agent_world_node.builds import local_toolchain
from agent_world_node.config import (
    ConfigError,
    Genesis,
    GenesisValidator,
    Home,
    NodeConfig,
    P2PConfig,
    RPCConfig,
    init_home,
    read_config,
    read_genesis,
    read_key,
    rpc_url_for,
)
from agent_world_node.network import peer_id_for_seed
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.params import TOOLCHAIN_NAMES, GenesisAgent, GovernanceParams, Toolchain, WorldParams

log = structlog.get_logger(__name__)

DEFAULT_TESTNET_CHAIN_ID = "agent-world-testnet"
DEFAULT_STAKE = 100
NODE_LOG = "node.log"
FAUCET_AGENT_ID = "faucet"
FAUCET_BALANCE = 10**15
OPERATOR_BALANCE = 10**9
#: Heights per epoch of a local testnet (about a minute at the default block interval).
TESTNET_EPOCH_LENGTH = 100
#: Heights a governance proposal of a local testnet is voted.
TESTNET_VOTING_PERIOD = 60


# --- creating a testnet -------------------------------------------------------------------------


def pick_free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct TCP ports that were free on ``host`` a moment ago.

    Binds ``count`` sockets to port 0 at once (so the kernel gives distinct ports), reads the ports,
    then closes them. Another process may take a port before the node binds it; the node then fails
    to start and says so in its log.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a TCP socket can bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def node_dir(directory: Path, index: int) -> Path:
    """Return the home of node ``index`` in a testnet directory: ``directory/node{index}``."""
    return Path(directory) / f"node{index}"


def faucet_key_file(directory: Path) -> Path:
    """Return the path of a testnet's faucet key: ``directory/faucet.json``."""
    return Path(directory) / "faucet.json"


def operator_key_file(directory: Path, index: int) -> Path:
    """Return the path of the key of validator ``index``'s operator: ``directory/operator{index}.json``."""
    return Path(directory) / f"operator{index}.json"


def genesis_operator(path: Path, index: int) -> GenesisAgent:
    """Create the key of agent ``operator<index>`` at ``path`` (mode 0600; never overwritten) and
    return the genesis agent it controls (``OPERATOR_BALANCE`` electricity and data)."""
    key = SigningKey.generate()
    AgentKey(key=key, agent_id=f"operator{index}").save(path)
    return GenesisAgent(agent_id=f"operator{index}", public_key=key.public_key.hex(), electricity=OPERATOR_BALANCE,
                        data=OPERATOR_BALANCE)


def genesis_faucet(path: Path) -> GenesisAgent:
    """Create a new faucet key at ``path`` (mode 0600; never overwritten: AgentKeyError) and return
    the genesis agent it controls (``FAUCET_AGENT_ID`` with ``FAUCET_BALANCE`` of each resource)."""
    key = SigningKey.generate()
    AgentKey(key=key, agent_id=FAUCET_AGENT_ID).save(path)
    return GenesisAgent(agent_id=FAUCET_AGENT_ID, public_key=key.public_key.hex(), electricity=FAUCET_BALANCE,
                        data=FAUCET_BALANCE)


def is_testnet(directory: Path) -> bool:
    """Return True iff ``directory`` holds a testnet (``node0/config/genesis.json`` exists)."""
    return Home(node_dir(directory, 0)).genesis_file.exists()


# The local testnet's world rules: a harvest yields 20 electricity (default 5), so that the
# scripted economy can pay for a module billed on every move of every agent (each call of the
# example reducer costs its owner 2 electricity and about 2 data).
TESTNET_WORLD = WorldParams(harvest_amount=20)


def local_toolchains() -> list[Toolchain]:
    """The module toolchains installed on this machine (C through ziglang, Rust through Debian's
    rustc), as a genesis names them: every node of a local testnet runs here, so all of them can
    build what the chain accepts. Empty when none is installed (then only WAT compiles in-world)."""
    return [t for t in (local_toolchain(name) for name in TOOLCHAIN_NAMES) if t is not None]


def init_testnet(
    directory: Path,
    nodes: int,
    *,
    chain_id: str = DEFAULT_TESTNET_CHAIN_ID,
    stake: int = DEFAULT_STAKE,
    config: Callable[[int], NodeConfig] | None = None,
    epoch_length: int = TESTNET_EPOCH_LENGTH,
    voting_period_heights: int = TESTNET_VOTING_PERIOD,
    base_port: int | None = None,
) -> list[Home]:
    """Create ``nodes`` homes ``directory/node0..`` for one chain and return them.

    Every node gets new random keys (``SigningKey.generate``), every node is a validator with
    ``stake`` bonded by its operator ``operator<i>`` (key in ``operator_key_file(directory, i)``),
    and all homes hold the identical ``genesis.json``, whose agents are the faucet (key in
    ``faucet_key_file(directory)``) and the operators; epochs of ``epoch_length`` heights, proposals
    voted for ``voting_period_heights``. Ports: a free loopback port for
    libp2p and one for HTTP per node (``pick_free_ports``), or with ``base_port`` node i's libp2p
    on ``base_port + 10 i`` and its HTTP API on ``base_port + 10 i + 1`` (each checked free). ``p2p.peers`` of each node lists every
    other node as ``/ip4/127.0.0.1/tcp/PORT/p2p/<peer id>``. ``config(i)`` may supply a base
    NodeConfig for node i (listen addresses, peers and moniker are overwritten).

    Raises ConfigError if ``nodes`` < 1, or if a home already exists at one of the paths.
    """
    if nodes < 1:
        raise ConfigError(f"--nodes must be at least 1, got {nodes}")
    directory = Path(directory)
    for i in range(nodes):
        if Home(node_dir(directory, i)).validator_key_file.exists():
            raise ConfigError(f"{node_dir(directory, i)}: a node home already exists; choose an empty --dir")
    validator_keys = [SigningKey.generate() for _ in range(nodes)]
    node_seeds = [SigningKey.generate().seed for _ in range(nodes)]
    peer_ids = [peer_id_for_seed(seed) for seed in node_seeds]
    if base_port is None:
        ports = pick_free_ports(2 * nodes)
        p2p_ports, rpc_ports = ports[:nodes], ports[nodes:]
    else:
        p2p_ports = [base_port + 10 * i for i in range(nodes)]
        rpc_ports = [p + 1 for p in p2p_ports]
        if base_port < 1024 or rpc_ports[-1] > 65535:
            raise ConfigError(f"--base-port {base_port}: the ports {base_port}..{rpc_ports[-1]} must lie in 1024..65535")
        for port in p2p_ports + rpc_ports:
            if not port_is_free(port):
                raise ConfigError(f"port {port} on 127.0.0.1 is in use (another node or program); choose another "
                                  "--base-port, or leave it out to use free ports")
    genesis = Genesis(
        chain_id=chain_id,
        genesis_time_ms=int(time.time() * 1000),
        validators=[
            GenesisValidator(name=f"node{i}", public_key=key.public_key.hex(), stake=stake, operator=f"operator{i}")
            for i, key in enumerate(validator_keys)
        ],
        epoch_length=epoch_length,
        world=msgspec.structs.replace(TESTNET_WORLD, toolchains=local_toolchains()),
        agents=[genesis_faucet(faucet_key_file(directory))]
        + [genesis_operator(operator_key_file(directory, i), i) for i in range(nodes)],
        governance=GovernanceParams(voting_period_heights=voting_period_heights),
    )
    homes = []
    for i in range(nodes):
        cfg = config(i) if config is not None else NodeConfig()
        cfg.p2p = P2PConfig(
            listen=f"/ip4/127.0.0.1/tcp/{p2p_ports[i]}",
            peers=[f"/ip4/127.0.0.1/tcp/{p2p_ports[j]}/p2p/{peer_ids[j]}" for j in range(nodes) if j != i],
        )
        cfg.rpc = RPCConfig(listen=f"127.0.0.1:{rpc_ports[i]}", unsafe=cfg.rpc.unsafe)
        homes.append(
            init_home(
                node_dir(directory, i),
                moniker=f"node{i}",
                config=cfg,
                node_seed=node_seeds[i],
                validator_seed=validator_keys[i].seed,
                genesis=genesis,
            )
        )
    log.info("testnet_created", dir=str(directory), nodes=nodes, chain_id=chain_id)
    return homes


def add_testnet_node(directory: Path, *, config: NodeConfig | None = None) -> Home:
    """Add a full node (not a validator: it follows and executes the chain but does not vote
    until its validator key is bonded, ``awnode staking create-validator``) to the testnet in
    ``directory`` as the next ``nodeN``, with an empty data directory, the testnet's genesis, new
    keys, free loopback ports, and every existing node as a peer. It syncs from genesis when
    started (a late joiner). Existing nodes do not list it as a peer; it dials them.

    Raises ConfigError if there is no testnet in ``directory``.
    """
    directory = Path(directory)
    existing = load_testnet(directory)
    genesis = read_genesis(existing[0].home.genesis_file)
    peers = []
    for node in existing:
        c = read_config(node.home.config_file)
        peers.append(f"{c.p2p.listen}/p2p/{peer_id_for_seed(read_key(node.home.node_key_file).seed)}")
    index = len(existing)
    node_seed = SigningKey.generate().seed
    p2p_port, rpc_port = pick_free_ports(2)
    cfg = config or NodeConfig()
    cfg.p2p = P2PConfig(listen=f"/ip4/127.0.0.1/tcp/{p2p_port}", peers=peers)
    cfg.rpc = RPCConfig(listen=f"127.0.0.1:{rpc_port}", unsafe=cfg.rpc.unsafe)
    # The validator key file is written (every home has one) but is not in the genesis validator
    # set: this node signs nothing unless the key is bonded and elected into a later set.
    home = init_home(node_dir(directory, index), moniker=f"node{index}", config=cfg, node_seed=node_seed, genesis=genesis)
    log.info("testnet_node_added", dir=str(directory), node=f"node{index}", peers=len(peers))
    return home


@dataclass(frozen=True)
class TestnetNode:
    """One node of a testnet: ``name`` (moniker), ``home``, ``rpc_url`` (``http://host:port``)."""

    __test__ = False

    name: str
    home: Home
    rpc_url: str
    chain_id: str

    @property
    def log_path(self) -> Path:
        """Where the node's stdout and stderr go: ``HOME/node.log``."""
        return self.home.root / NODE_LOG


def load_testnet(directory: Path) -> list[TestnetNode]:
    """Return the nodes of the testnet in ``directory`` (node0, node1, ... until the first gap).

    Raises ConfigError if there is no testnet there, a config or genesis is invalid, or the nodes'
    genesis files differ.
    """
    directory = Path(directory)
    if not is_testnet(directory):
        raise ConfigError(f"{directory}: no testnet here; create one with `awnode testnet init --dir {directory}`")
    nodes: list[TestnetNode] = []
    first_genesis: bytes | None = None
    i = 0
    while Home(node_dir(directory, i)).config_file.exists():
        home = Home(node_dir(directory, i))
        cfg = read_config(home.config_file)
        genesis = read_genesis(home.genesis_file)
        raw = home.genesis_file.read_bytes()
        if first_genesis is None:
            first_genesis = raw
        elif raw != first_genesis:
            raise ConfigError(f"{home.genesis_file}: differs from node0's genesis; every node of a chain needs the same file")
        nodes.append(TestnetNode(name=cfg.moniker, home=home, rpc_url=rpc_url_for(cfg.rpc.listen), chain_id=genesis.chain_id))
        i += 1
    return nodes
