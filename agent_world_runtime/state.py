"""World state records and the state root (docs/architecture.md, "Execution and state roots").

All records are frozen msgspec Structs: a change replaces the record through a ``WorldState.put_*``
method, which marks it dirty; ``WorldState.state_root()`` folds the dirty records into the
``StateTree`` (see ``state_tree`` for the tree layout). Nothing else writes these dicts.

Records and their keys in the state tree (value = canonical msgpack of the record unless noted):

* ``world`` → ``WorldMeta``: chain id, params, block height, block timestamp
* ``journal`` → ``JournalMeta``: journal length and hash-chain head (commits to every event)
* ``agent/<agent_id>`` → ``AgentRecord``
* ``artifact/<wasm_hash>`` → ``ArtifactRecord`` (binds ``wasm_hash``, hence the bytes)
* ``instance/<instance_id>`` → ``InstanceRecord``
* ``mstate/<instance_id>`` → the reducer instance's raw state bytes
* ``build/<build_id>`` → ``BuildRecord`` (a build from source: request, attestations, outcome)
* ``manifest`` → ``Manifest``: the rules in force (params, staking, governance; ``governance``)
* ``<table>/<key>`` for each table of ``TABLES``: staking and governance records
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from .actions import ModuleSourcePackage
from .codec import encode
from .events import EventJournal
from .governance.manifest import Manifest
from .governance.records import TABLES as GOVERNANCE_TABLES
from .modules.manifest import ModuleManifest
from .staking.records import UnbondingQueue, ValidatorRecord, ValidatorSetRecord
from .state_tree import StateTree

#: The generic record tables: name -> record type. Keys are strings; each record is the leaf
#: ``<name>/<key>`` (canonical msgpack). Written only through ``WorldState.put_record`` and
#: ``delete_record``.
TABLES: dict[str, type[msgspec.Struct]] = {
    "validator": ValidatorRecord,
    "unbonding": UnbondingQueue,
    "valset": ValidatorSetRecord,
    **GOVERNANCE_TABLES,
}


class WorldMeta(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The world's identity and clock: ``height`` is the block being built or last built,
    ``timestamp_ms`` that block's timestamp (Unix ms, from the block header); ``epoch_length``
    the chain's epoch in heights (validator sets change at epoch boundaries)."""

    chain_id: str
    height: int
    timestamp_ms: int
    epoch_length: int = 1000


class JournalMeta(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The journal as the state root sees it: its length and hash-chain head."""

    length: int
    head: bytes


class AgentRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An agent: Ed25519 ``public_key`` (32 bytes), grid ``position`` (x, y, z), resource balances
    (``electricity``, ``data``, resource units), ``last_nonce`` (highest nonce used), the height
    it was created at (0: genesis) and the height of its last harvest (0: never)."""

    agent_id: str
    public_key: bytes
    position: tuple[int, int, int]
    electricity: int
    data: int
    last_nonce: int
    registered_at: int
    last_harvest_height: int = 0


class ArtifactRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A module artifact, identified by ``wasm_hash = sha256(bytes).hex()``; ``origin`` is
    ``"compiled"`` or ``"deployed"``; ``size`` in bytes; ``published_at`` is a height."""

    wasm_hash: str
    module_id: str
    version: str
    publisher: str
    manifest: ModuleManifest
    size: int
    published_at: int
    origin: str


class InstanceRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """An installed module instance; routing and module state are per instance.

    ``install_target`` is ``self_agent``, ``agent:<agent_id>`` or ``location:<x>,<y>,<z>``;
    ``granted_caps`` are the capabilities its owner granted at install (omitted when empty, so
    records written before capabilities existed encode, and hash, as before)."""

    instance_id: str
    module_id: str
    version: str
    wasm_hash: str
    owner_agent_id: str
    install_target: str
    active: bool
    installed_at: int
    granted_caps: list[str] = []


class BuildRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """A build from source (``modules.builds``). ``build_id`` is the hex action id of the compile
    action; ``publisher`` its signer; ``toolchain`` the toolchain name; ``requested_at`` and
    ``deadline`` heights; ``status`` ``pending``, ``registered`` or ``failed`` with ``code`` and
    the registered ``wasm_hash``. While pending it holds the ``package`` (the validators build it)
    and the attestations: ``attestations`` maps validator id to the outcome it attested (a
    wasm_hash, or ``"code:<CODE>"``), ``candidates`` maps an attested wasm_hash to its bytes (the
    first copy received). Settling drops the package and the candidates."""

    build_id: str
    publisher: str
    module_id: str
    manifest: ModuleManifest
    toolchain: str
    requested_at: int
    deadline: int
    status: str = "pending"
    code: str = ""
    wasm_hash: str = ""
    package: ModuleSourcePackage | None = None
    attestations: dict[str, str] = {}
    candidates: dict[str, bytes] = {}


_AGENT, _ARTIFACT, _INSTANCE, _MSTATE, _BUILD = "agent/", "artifact/", "instance/", "mstate/", "build/"


class WorldState:
    """The world's records, their derived indexes and the incrementally maintained state tree."""

    def __init__(self, meta: WorldMeta, manifest: Manifest) -> None:
        self.meta = meta
        self.manifest = manifest
        self.tables: dict[str, dict[str, msgspec.Struct]] = {name: {} for name in TABLES}
        self.agents: dict[str, AgentRecord] = {}
        self.artifacts: dict[str, ArtifactRecord] = {}
        self.artifact_bytes: dict[str, bytes] = {}
        self.instances: dict[str, InstanceRecord] = {}
        self.module_state: dict[str, bytes] = {}
        self.builds: dict[str, BuildRecord] = {}
        self.journal = EventJournal()
        # Derived indexes (rebuilt on load, not part of the root): module_id -> publisher,
        # (module_id, version) -> wasm_hash.
        self.module_publishers: dict[str, str] = {}
        self.module_versions: dict[tuple[str, str], str] = {}
        self.instances_version = 0  # bumped on every instance change (routing caches key on it)
        self._tree = StateTree()
        self._dirty: set[str] = {"world", "journal", "manifest"}

    # -- mutation (the only writers) ------------------------------------------------------------
    def set_meta(self, meta: WorldMeta) -> None:
        """Replace the world meta record."""
        self.meta = meta
        self._dirty.add("world")

    def set_manifest(self, manifest: Manifest) -> None:
        """Replace the manifest in force."""
        self.manifest = manifest
        self._dirty.add("manifest")

    def put_record(self, table: str, key: str, record: msgspec.Struct) -> None:
        """Insert or replace ``record`` (of type ``TABLES[table]``) under ``key``. Raises
        KeyError for an unknown table, TypeError for a record of another type."""
        if not isinstance(record, TABLES[table]):
            raise TypeError(f"table {table} holds {TABLES[table].__name__}, not {type(record).__name__}")
        self.tables[table][key] = record
        self._dirty.add(f"{table}/{key}")

    def delete_record(self, table: str, key: str) -> None:
        """Remove the record ``key`` of ``table`` (no-op when absent)."""
        if self.tables[table].pop(key, None) is not None:
            self._dirty.add(f"{table}/{key}")

    def put_agent(self, record: AgentRecord) -> None:
        """Insert or replace an agent."""
        self.agents[record.agent_id] = record
        self._dirty.add(_AGENT + record.agent_id)

    def put_artifact(self, record: ArtifactRecord, wasm: bytes) -> None:
        """Insert an artifact and its bytes (artifacts are never replaced: keyed by hash)."""
        self.artifacts[record.wasm_hash] = record
        self.artifact_bytes[record.wasm_hash] = wasm
        self.module_publishers.setdefault(record.module_id, record.publisher)
        self.module_versions[(record.module_id, record.version)] = record.wasm_hash
        self._dirty.add(_ARTIFACT + record.wasm_hash)

    def put_instance(self, record: InstanceRecord) -> None:
        """Insert or replace a module instance."""
        self.instances[record.instance_id] = record
        self.instances_version += 1
        self._dirty.add(_INSTANCE + record.instance_id)

    def put_module_state(self, instance_id: str, state: bytes) -> None:
        """Replace a reducer instance's state bytes."""
        self.module_state[instance_id] = state
        self._dirty.add(_MSTATE + instance_id)

    def put_build(self, record: BuildRecord) -> None:
        """Insert or replace a build record."""
        self.builds[record.build_id] = record
        self._dirty.add(_BUILD + record.build_id)

    def journal_changed(self) -> None:
        """Mark the journal leaf dirty (call after appending events)."""
        self._dirty.add("journal")

    # -- roots ----------------------------------------------------------------------------------
    def state_root(self) -> bytes:
        """Fold the dirty records into the tree and return the 32-byte state root."""
        for name in self._dirty:
            self._update_leaf(name)
        self._dirty.clear()
        return self._tree.root()

    def rebuild_tree(self) -> bytes:
        """Recompute every leaf from scratch (used after loading) and return the root."""
        self._tree = StateTree()
        self._dirty = {"world", "journal", "manifest"}
        for table, records in self.tables.items():
            self._dirty.update(f"{table}/{k}" for k in records)
        self._dirty.update(_AGENT + k for k in self.agents)
        self._dirty.update(_ARTIFACT + k for k in self.artifacts)
        self._dirty.update(_INSTANCE + k for k in self.instances)
        self._dirty.update(_MSTATE + k for k in self.module_state)
        self._dirty.update(_BUILD + k for k in self.builds)
        return self.state_root()

    def rebuild_indexes(self) -> None:
        """Recompute the derived module indexes from the artifact records (publication order)."""
        self.module_publishers.clear()
        self.module_versions.clear()
        for rec in sorted(self.artifacts.values(), key=lambda r: (r.published_at, r.wasm_hash)):
            self.module_publishers.setdefault(rec.module_id, rec.publisher)
            self.module_versions[(rec.module_id, rec.version)] = rec.wasm_hash

    def _update_leaf(self, name: str) -> None:
        value: bytes | None
        if name == "world":
            value = encode(self.meta)
        elif name == "journal":
            value = encode(JournalMeta(length=len(self.journal), head=self.journal.head))
        elif name == "manifest":
            value = encode(self.manifest)
        else:
            prefix, _, ident = name.partition("/")
            if prefix in self.tables:
                rec_t = self.tables[prefix].get(ident)
                value = None if rec_t is None else encode(rec_t)
            elif prefix == "mstate":
                value = self.module_state.get(ident)
            else:
                tables: dict[str, Mapping[str, msgspec.Struct]] = {
                    "agent": self.agents, "artifact": self.artifacts, "instance": self.instances, "build": self.builds,
                }
                rec = tables[prefix].get(ident)
                value = None if rec is None else encode(rec)
        if value is None:
            self._tree.delete(name.encode())
        else:
            self._tree.set(name.encode(), value)
