"""Node home directory: keys, ``config.toml`` and ``genesis.json``.

Layout of a home (CometBFT-like)::

    HOME/config/config.toml              listen addresses, peers, timeouts, storage settings
    HOME/config/genesis.json             chain id, validators with stake, world parameters
    HOME/config/node_key.json            Ed25519 seed of the libp2p identity (peer id)
    HOME/config/priv_validator_key.json  Ed25519 seed of the consensus signing key
    HOME/data/                           SQLite stores, world snapshots, state-sync snapshots,
                                         priv_validator_state.json (last signed height/round/step)

Errors: ``ConfigError`` with the file and what is wrong in it.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import msgspec

from agent_world_runtime import World
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.modules.sandbox import Sandbox
from agent_world_runtime.params import GenesisAgent, GovernanceParams, StakingParams, WorldParams


class ConfigError(RuntimeError):
    """A home directory file is missing or invalid; the message names the file and the fix."""


class GenesisValidator(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A validator at genesis: ``public_key`` is hex Ed25519 (also its validator id); ``stake`` > 0
    (its genesis bond); ``operator`` the genesis agent that holds the bond and may unbond it, vote
    in governance and unjail the validator ("": nobody, the bond is permanent)."""

    name: str
    public_key: str
    stake: int
    operator: str = ""


#: Upper bound of either synchrony parameter (one day): a larger bound accepts any clock at all.
MAX_SYNCHRONY_MS = 86_400_000


class SynchronyParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The synchrony parameters of proposer-based timestamps (CometBFT PBTS,
    spec/consensus/proposer-based-timestamp/pbts-sysmodel.md, [PBTS-CLOCK-PRECISION.0] and
    [PBTS-MSG-DELAY.0]); consensus parameters, so part of genesis and the same on every node.

    - ``precision_ms``: how far apart the clocks of two correct validators may read at one instant;
    - ``message_delay_ms``: the longest time a proposal takes to reach every correct validator.

    A proposal for a new block is prevoted only if it is *timely*
    (``consensus.synchrony.timely``). Both are integers in 1..``MAX_SYNCHRONY_MS``; decoding a
    genesis with another value fails with a ``msgspec.ValidationError`` naming the field."""

    precision_ms: int = 500
    message_delay_ms: int = 15_000

    def __post_init__(self) -> None:
        for name in ("precision_ms", "message_delay_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SYNCHRONY_MS:
                raise ValueError(
                    f"synchrony.{name} must be an integer number of milliseconds in 1..{MAX_SYNCHRONY_MS}, "
                    f"got {value!r}; the defaults are precision_ms=500, message_delay_ms=15000"
                )


class Genesis(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The shared starting point of a chain: every node of a chain has the identical file.
    ``agents`` are the agents that exist from genesis (every other agent is created, and paid
    for, by an existing one). ``synchrony`` holds the consensus parameters of block time
    (``SynchronyParams``); a genesis written before they existed gets the defaults."""

    chain_id: str
    genesis_time_ms: int
    validators: list[GenesisValidator]
    epoch_length: int = 1000
    world: WorldParams = msgspec.field(default_factory=WorldParams)
    agents: list[GenesisAgent] = []
    synchrony: SynchronyParams = msgspec.field(default_factory=SynchronyParams)
    staking: StakingParams = msgspec.field(default_factory=StakingParams)
    governance: GovernanceParams = msgspec.field(default_factory=GovernanceParams)

    def new_world(self, sandbox: Sandbox | None = None) -> World:
        """Return the world at height 0 of this genesis (``World.from_genesis``); raises
        ValueError for invalid world, staking or governance parameters, genesis agents or
        validator operators."""
        return World.from_genesis(
            self.chain_id, self.world, agents=self.agents,
            validators={v.public_key: v.stake for v in self.validators}, sandbox=sandbox,
            validator_operators={v.public_key: v.operator for v in self.validators if v.operator},
            validator_names={v.public_key: v.name for v in self.validators}, epoch_length=self.epoch_length,
            staking_params=self.staking, governance_params=self.governance)


#: Default per-origin limits by logical topic: ``(messages per second, burst)``. Set from what an
#: honest node sends, with room to spare (a message above the limit costs its origin 1 point of
#: the 100 that ban it, so an honest node must never reach it):
#:
#: - ``proposal``: one per height from its proposer. A single validator commits empty blocks at
#:   ~14 heights/s (measured in-process with a ``timeout_commit_ms`` of 50 ms, which caps it near
#:   20/s; the default 500 ms caps it near 2/s), and a stalled height re-gossips the proposals of
#:   its current, locked and valid rounds: 50/s, bursts of 100.
#: - ``vote``: two per round from each validator's own node; re-gossip republishes every vote of
#:   the height that node holds under its own origin (2 x validators x rounds at once: 160 for 4
#:   validators after 20 rounds), at most every 1.5 s and backing off to every 6 s while stalled:
#:   50/s, bursts of 200. A flood of valid-looking votes (stale ones, say) costs every node a
#:   signature check per copy until the limit trips, so the burst is kept near what re-gossip
#:   needs; a chain of many validators should raise it to about 2 x validators x 10.
#: - ``commit``: one per committed height from each node (at most ~20/s, see ``proposal``) plus the
#:   last one in each re-gossip: 50/s, bursts of 100.
#: - ``actions``: the batches of client actions admitted at each 100 ms tick (``tick_interval_ms``),
#:   each up to ~1 MB, a few per tick under heavy load: 50/s, bursts of 100.
#: - ``status``: one heartbeat per ``status_interval_ms`` (1 s): 5/s, bursts of 20. Status is cheap
#:   to queue (one per peer is kept) but a flood of it is pure waste; it is the topic a flooder
#:   picks, and at 500 msg/s it is banned within about a quarter of a second.
DEFAULT_TOPIC_RATE_LIMITS: dict[str, tuple[float, float]] = {
    "proposal": (50.0, 100.0),
    "vote": (50.0, 200.0),
    "commit": (50.0, 100.0),
    "actions": (50.0, 100.0),
    "status": (5.0, 20.0),
}


class P2PConfig(msgspec.Struct, forbid_unknown_fields=True):
    """libp2p listen address and the peers to keep connected to (full /p2p/ multiaddrs).

    Misbehaviour policy (``network/peer_filter.py``): gossip above ``<topic>_rate_limit`` messages
    per second (bursts of ``<topic>_rate_burst``) from one origin on that topic is dropped before
    decoding and scored (1 point a message); a peer reaching ``ban_threshold`` points is banned
    for ``ban_seconds``. The defaults, and why, are in ``DEFAULT_TOPIC_RATE_LIMITS`` above: each
    is well above what an honest node sends with the default ``[policy]`` and ``[consensus]``
    (a chain that sends status more often than every 200 ms must raise ``status_rate_limit``).

    ``peer_rate_limit`` / ``peer_rate_burst``: the single per-origin limit of earlier versions,
    replaced by the per-topic limits; still accepted so that existing ``config.toml`` files load,
    and ignored (the node logs ``config_setting_ignored``)."""

    listen: str = "/ip4/127.0.0.1/tcp/26656"
    peers: list[str] = []
    proposal_rate_limit: float = DEFAULT_TOPIC_RATE_LIMITS["proposal"][0]
    proposal_rate_burst: float = DEFAULT_TOPIC_RATE_LIMITS["proposal"][1]
    vote_rate_limit: float = DEFAULT_TOPIC_RATE_LIMITS["vote"][0]
    vote_rate_burst: float = DEFAULT_TOPIC_RATE_LIMITS["vote"][1]
    commit_rate_limit: float = DEFAULT_TOPIC_RATE_LIMITS["commit"][0]
    commit_rate_burst: float = DEFAULT_TOPIC_RATE_LIMITS["commit"][1]
    actions_rate_limit: float = DEFAULT_TOPIC_RATE_LIMITS["actions"][0]
    actions_rate_burst: float = DEFAULT_TOPIC_RATE_LIMITS["actions"][1]
    status_rate_limit: float = DEFAULT_TOPIC_RATE_LIMITS["status"][0]
    status_rate_burst: float = DEFAULT_TOPIC_RATE_LIMITS["status"][1]
    ban_threshold: float = 100.0
    ban_seconds: float = 60.0
    peer_rate_limit: float | None = None
    peer_rate_burst: float | None = None

    def topic_rate_limits(self) -> dict[str, tuple[float, float]]:
        """``{topic: (messages per second, burst)}`` for ``NetworkConfig.topic_rate_limits``."""
        return {topic: (getattr(self, f"{topic}_rate_limit"), getattr(self, f"{topic}_rate_burst"))
                for topic in DEFAULT_TOPIC_RATE_LIMITS}


class RPCConfig(msgspec.Struct, forbid_unknown_fields=True):
    """HTTP API listen address, ``host:port``. ``unsafe`` enables the operator routes under
    ``/v1/unsafe/`` (the peer filter), as CometBFT's ``rpc.unsafe``: only for local testnets and
    fault tests, never on a node reachable by others."""

    listen: str = "127.0.0.1:26657"
    unsafe: bool = False


#: Largest ``consensus.max_block_bytes``: a proposal (the block's actions, its header, the
#: proposal's round, POL round and signature, some 1 KB with the message envelope) must fit in
#: one gossip message (``replica.MAX_GOSSIP_BYTES``, 1,000,000 bytes).
MAX_BLOCK_BYTES_LIMIT = 960_000


class ConsensusConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Timeouts in milliseconds; each grows by its ``*_delta_ms`` per round (Tendermint paper, timeouts).

    ``timeout_commit_ms`` is the pause between a commit and the next height (CometBFT's
    ``timeout_commit``, 1 s there): every height costs each node about 100 ms of CPU in messages
    whatever it holds, so it bounds what an idle chain burns. Measured on 4 local processes on 2
    cores: 50 ms gave 5.5 empty blocks/s using 1.9 cores; 500 ms gives 1.45 blocks/s using 0.7.
    ``max_block_actions`` / ``max_block_bytes`` bound one block: its actions' encodings total at
    most ``max_block_bytes`` (at most ``MAX_BLOCK_BYTES_LIMIT``, so that a proposal fits in one
    gossip message). ``create_empty_blocks`` (CometBFT's option of that name): when false, a
    validator that has committed a height waits for an action in its mempool (or a peer's proposal
    or vote of the next height) before it starts the next one, so an idle chain makes no blocks
    and writes nothing; after a block with actions one more block is still made, whose header
    carries that block's execution root (CometBFT's proof block). ``create_empty_blocks_interval_ms``
    (0: never) makes an empty block after that long without one when ``create_empty_blocks`` is
    false. Raises ValueError (naming the field) for a value out of range."""

    timeout_propose_ms: int = 1500
    timeout_propose_delta_ms: int = 500
    timeout_prevote_ms: int = 500
    timeout_prevote_delta_ms: int = 250
    timeout_precommit_ms: int = 500
    timeout_precommit_delta_ms: int = 250
    timeout_commit_ms: int = 500
    max_block_actions: int = 2000
    max_block_bytes: int = 900_000
    create_empty_blocks: bool = True
    create_empty_blocks_interval_ms: int = 0

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            if (name.startswith("timeout_") or name.endswith("_interval_ms")) and getattr(self, name) < 0:
                raise ValueError(f"consensus.{name} must be >= 0")
        if self.max_block_actions < 1:
            raise ValueError("consensus.max_block_actions must be >= 1")
        if not 1 <= self.max_block_bytes <= MAX_BLOCK_BYTES_LIMIT:
            raise ValueError(f"consensus.max_block_bytes={self.max_block_bytes} must be in 1..{MAX_BLOCK_BYTES_LIMIT}: "
                             "a proposal carries the whole block in one gossip message of at most 1,000,000 bytes")


class PolicyConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The node-run policy (``Replica.tick``): when a node gossips, heartbeats, re-gossips and syncs.
    Liveness only: none of these decides what is committed. The daemon and the simulator both run
    these values, so the simulator's properties cover what production runs. All times in ms.

    - ``tick_interval_ms``: how often the driver calls ``Replica.tick``; client actions admitted
      since the last tick are gossiped in batches at each tick.
    - ``status_interval_ms``: the status heartbeat (height, execution root) to peers.
    - ``regossip_after_ms``: a height without progress for this long re-gossips its message log
      (and the last commit), and again every such interval while it stays stuck.
    - ``sync_batch_heights``: most heights fetched from one peer in one sync request.
    - ``sync_timeout_ms``: a sync request unanswered for this long has failed.
    - ``action_regossip_ms``: a client action accepted here and still pending this long after its
      last gossip is gossiped again (one batch per tick at most)."""

    tick_interval_ms: int = 100
    status_interval_ms: int = 1000
    regossip_after_ms: int = 1500
    sync_batch_heights: int = 200
    sync_timeout_ms: int = 10_000
    action_regossip_ms: int = 5000

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            if getattr(self, name) <= 0:
                raise ValueError(f"policy.{name} must be > 0")


class StorageConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``snapshot_interval``: how often (in heights) the world snapshot is written with
    ``save_to_dir``. ``retain_blocks`` (CometBFT's option of that name; 0 keeps every block): the
    node keeps the blocks and execution records of its last ``retain_blocks`` heights, and never
    fewer than a restart needs (every height from its world snapshot's on); older ones are
    deleted every 10 heights (``execution.PRUNE_EVERY_HEIGHTS``), so the store stops growing. Pruned heights are
    answered with 410 ``pruned`` by the API and cannot be served to syncing peers.
    ``min_free_mb``: ``/ready`` answers 503 while the filesystem of the data directory has less
    free space than this (MiB), before writes start failing. Raises ValueError for a value out of
    range."""

    snapshot_interval: int = 50
    retain_blocks: int = 0
    min_free_mb: int = 64

    def __post_init__(self) -> None:
        if self.snapshot_interval < 1:
            raise ValueError("storage.snapshot_interval must be >= 1")
        if self.retain_blocks < 0:
            raise ValueError("storage.retain_blocks must be >= 0 (0 keeps every block)")
        if self.min_free_mb < 0:
            raise ValueError("storage.min_free_mb must be >= 0")


class StateSyncConfig(msgspec.Struct, forbid_unknown_fields=True):
    """State-sync snapshots this node makes and serves, and joining by state sync (CometBFT's
    ``[statesync]`` with the Cosmos SDK's ``snapshot-interval`` / ``snapshot-keep-recent``).

    ``snapshot_interval``: every this many heights the node writes a state-sync snapshot of its
    world (0: none) into ``data/state-snapshots`` and serves it to joining peers over
    ``/agent-world/snapshot/1.0.0``; ``snapshot_keep_recent``: how many it keeps (the newest;
    blocks from the oldest one's height on are never pruned, since a joiner needs them).
    ``enable``: a node started with an empty home joins by state sync: it restores the newest
    snapshot its peers offer, verified against a certified block header, instead of replaying
    every block from genesis. ``trust_height`` / ``trust_hash`` (optional, both or neither): the
    block of that height must have that hash (hex), and the snapshot must be at or above it.
    ``discovery_ms``: how long to collect peers' offers before choosing; ``chunk_timeout_ms``:
    how long one chunk request may take. Raises ValueError for a value out of range."""

    enable: bool = False
    snapshot_interval: int = 1000
    snapshot_keep_recent: int = 2
    trust_height: int = 0
    trust_hash: str = ""
    discovery_ms: int = 3000
    chunk_timeout_ms: int = 30_000

    def __post_init__(self) -> None:
        if self.snapshot_interval < 0:
            raise ValueError("statesync.snapshot_interval must be >= 0 (0: make no snapshots)")
        if self.snapshot_keep_recent < 1:
            raise ValueError("statesync.snapshot_keep_recent must be >= 1")
        if self.trust_height < 0 or bool(self.trust_height) != bool(self.trust_hash):
            raise ValueError("statesync.trust_height and statesync.trust_hash go together (or neither is set)")
        if self.trust_hash:
            try:
                if len(bytes.fromhex(self.trust_hash)) != 32:
                    raise ValueError
            except ValueError:
                raise ValueError("statesync.trust_hash must be a block hash: 64 hex digits") from None
        if self.discovery_ms <= 0 or self.chunk_timeout_ms <= 0:
            raise ValueError("statesync.discovery_ms and statesync.chunk_timeout_ms must be > 0")


class MempoolConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``max_actions``: the mempool's hard bound (actions); when full, submissions get 503
    ``mempool_full`` with a retry hint. ``target_queue_ms``: clients' actions are refused with 503
    ``over_capacity`` while the pending actions exceed what the chain committed in this many ms at
    its recent rate (at least a tenth of a full block; ``replica.intake``)."""

    max_actions: int = 20_000
    target_queue_ms: int = 1000

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            if getattr(self, name) <= 0:
                raise ValueError(f"mempool.{name} must be > 0")


class NodeConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The contents of ``config.toml``."""

    moniker: str = "node"
    log_format: str = "auto"
    p2p: P2PConfig = msgspec.field(default_factory=P2PConfig)
    rpc: RPCConfig = msgspec.field(default_factory=RPCConfig)
    consensus: ConsensusConfig = msgspec.field(default_factory=ConsensusConfig)
    policy: PolicyConfig = msgspec.field(default_factory=PolicyConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    mempool: MempoolConfig = msgspec.field(default_factory=MempoolConfig)
    statesync: StateSyncConfig = msgspec.field(default_factory=StateSyncConfig)


class Home:
    """Paths inside a node home directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.config_dir = self.root / "config"
        self.data_dir = self.root / "data"
        self.config_file = self.config_dir / "config.toml"
        self.genesis_file = self.config_dir / "genesis.json"
        self.node_key_file = self.config_dir / "node_key.json"
        self.validator_key_file = self.config_dir / "priv_validator_key.json"
        self.snapshot_dir = self.data_dir / "snapshots"
        self.state_snapshot_dir = self.data_dir / "state-snapshots"
        self.db_file = self.data_dir / "node.sqlite3"
        #: the validator's last signed height, round and step (``consensus.privval``)
        self.sign_state_file = self.data_dir / "priv_validator_state.json"


def _write_private(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.replace(tmp, path)


def write_key(path: Path, key: SigningKey) -> None:
    """Write ``key`` as JSON ``{"seed": hex, "public_key": hex}`` with mode 0600."""
    _write_private(path, json.dumps({"seed": key.seed.hex(), "public_key": key.public_key.hex()}, indent=2) + "\n")


def read_key(path: Path) -> SigningKey:
    """Read a key file written by ``write_key``; raises ConfigError if missing or malformed."""
    try:
        data = json.loads(path.read_text())
        return SigningKey(bytes.fromhex(data["seed"]))
    except FileNotFoundError:
        raise ConfigError(f"{path}: key file not found; run `awnode init --home DIR` first") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a valid key file ({exc}); restore it from a backup") from None


def write_genesis(path: Path, genesis: Genesis) -> None:
    """Write ``genesis`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(genesis), indent=2) + b"\n")


def read_genesis(path: Path) -> Genesis:
    """Read and validate ``genesis.json``; raises ConfigError naming the problem."""
    try:
        genesis = msgspec.json.decode(path.read_bytes(), type=Genesis)
    except FileNotFoundError:
        raise ConfigError(f"{path}: genesis file not found; copy the chain's genesis.json here") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: invalid genesis ({exc})") from None
    if not genesis.validators:
        raise ConfigError(f"{path}: genesis has no validators")
    seen = set()
    for v in genesis.validators:
        if v.stake <= 0:
            raise ConfigError(f"{path}: validator {v.name} has stake {v.stake}; stake must be positive")
        try:
            if len(bytes.fromhex(v.public_key)) != 32:
                raise ValueError
        except ValueError:
            raise ConfigError(f"{path}: validator {v.name} public_key is not 32 bytes of hex") from None
        if v.public_key in seen:
            raise ConfigError(f"{path}: validator {v.name} appears twice")
        seen.add(v.public_key)
    if genesis.epoch_length <= 0:
        raise ConfigError(f"{path}: epoch_length must be positive")
    try:
        genesis.new_world()
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return genesis


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def write_config(path: Path, config: NodeConfig) -> None:
    """Write ``config`` as TOML (top-level scalars, then one table per section)."""
    data = msgspec.to_builtins(config)
    lines = []
    tables = []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines.append("")
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def read_config(path: Path) -> NodeConfig:
    """Read ``config.toml``; unknown keys are an error (a typo must not be silently ignored)."""
    try:
        raw = tomllib.loads(path.read_text())
        return msgspec.convert(raw, type=NodeConfig)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; run `awnode init --home DIR` first") from None
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{path}: invalid config ({exc})") from None


def init_home(
    root: str | os.PathLike[str],
    *,
    moniker: str,
    config: NodeConfig | None = None,
    node_seed: bytes | None = None,
    validator_seed: bytes | None = None,
    genesis: Genesis | None = None,
    overwrite: bool = False,
) -> Home:
    """Create a node home: keys (new random ones unless seeds are given), ``config.toml`` and,
    when ``genesis`` is given, ``genesis.json``. Raises ConfigError if a home already exists there
    and ``overwrite`` is False (keys are never silently replaced)."""
    home = Home(root)
    if home.validator_key_file.exists() and not overwrite:
        raise ConfigError(f"{home.root}: a node home already exists here; choose another --home or remove it")
    home.config_dir.mkdir(parents=True, exist_ok=True)
    home.data_dir.mkdir(parents=True, exist_ok=True)
    write_key(home.node_key_file, SigningKey(node_seed) if node_seed else SigningKey.generate())
    write_key(home.validator_key_file, SigningKey(validator_seed) if validator_seed else SigningKey.generate())
    cfg = config or NodeConfig()
    cfg.moniker = moniker
    write_config(home.config_file, cfg)
    if genesis is not None:
        write_genesis(home.genesis_file, genesis)
    return home


def rpc_url_for(listen: str) -> str:
    """Return the URL a local client uses for an ``rpc.listen`` address (``0.0.0.0`` -> ``127.0.0.1``)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"rpc.listen {listen!r} is not host:port")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"
