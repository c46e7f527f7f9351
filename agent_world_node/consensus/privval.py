"""The validator's signer and its double-sign guard (CometBFT's ``privval.FilePV``).

Every proposal and vote a validator signs goes through ``PrivValidator.sign``, which checks the
request against the last signed height, round and step (``SignState``) and records the new one
durably before it hands the signature out, as CometBFT's ``FilePV.signVote`` / ``CheckHRS`` do:

- a request for a lower (height, round, step) than the last signed is refused;
- the same (height, round, step) with the same sign bytes returns the signature made before (a
  restarted validator re-sending what it signed); with other sign bytes it is refused;
- anything higher is signed, and the new state is written (``SignStateFile``: a small file in the
  node's data directory, replaced atomically and fsynced) before the signature is returned. If
  that write fails (a full disk), no signature exists.

Steps are ordered proposal < prevote < precommit. The record lives apart from the node's database
on purpose: a database that lost its last transactions (a deleted ``-wal`` file after a crash, a
restored backup) also lost the consensus WAL, and the guard must survive that. ``pause_until``
lets the replica refuse every signature up to a height whose messages it can no longer re-send
(see ``Replica.start``).

A refusal raises ``DoubleSignRefused`` with a ``DoubleSignCode``; the core then signs nothing.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Protocol

import msgspec

from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.persistence import fsync_dir, write_atomic


class SignStep(enum.IntEnum):
    """The step of a signed message, in protocol order (CometBFT's stepPropose/Prevote/Precommit)."""

    PROPOSAL = 1
    PREVOTE = 2
    PRECOMMIT = 3


class SignState(msgspec.Struct, frozen=True):
    """The last message this validator signed: ``height``, ``round``, ``step``, its sign bytes and
    the signature it got."""

    height: int
    round: int
    step: SignStep
    sign_bytes: bytes
    signature: bytes


class DoubleSignCode(enum.StrEnum):
    """Why ``PrivValidator.sign`` refused."""

    REGRESSION = "regression"  # lower (height, round, step) than the last signed
    CONFLICT = "conflict"  # same (height, round, step), other sign bytes
    PAUSED = "paused"  # at or below the height signing is paused until


class DoubleSignRefused(Exception):
    """A signature was refused; ``code`` says why, the message gives the heights."""

    def __init__(self, code: DoubleSignCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class SignStateError(RuntimeError):
    """The sign-state file cannot be read; the message names it and what to do."""


class SignStateStore(Protocol):
    """Where a ``PrivValidator`` keeps its ``SignState``."""

    def load(self) -> SignState | None:
        """The saved state, or None if nothing was ever signed."""

    def save(self, state: SignState) -> None:
        """Persist ``state`` durably before returning. Raises OSError on failure."""


class MemorySignState:
    """A ``SignStateStore`` in memory (the simulator, tests, observers)."""

    def __init__(self) -> None:
        self.state: SignState | None = None

    def load(self) -> SignState | None:
        return self.state

    def save(self, state: SignState) -> None:
        self.state = state


class SignStateFile:
    """A ``SignStateStore`` in one JSON file (hex fields, readable by an operator), replaced
    atomically: temp file, fsync, rename, fsync of the directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> SignState | None:
        """Raises ``SignStateError`` for a file that exists but does not parse: refusing to start
        is safer than forgetting what was signed."""
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            obj = json.loads(raw)
            return SignState(int(obj["height"]), int(obj["round"]), SignStep(int(obj["step"])),
                             bytes.fromhex(obj["sign_bytes"]), bytes.fromhex(obj["signature"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise SignStateError(
                f"{self.path} is corrupt ({exc}); it records the last height this validator signed. Restore it "
                "from a backup, or, only if you are sure this key signed nothing at the chain's current height, "
                "delete it"
            ) from None

    def save(self, state: SignState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"height": state.height, "round": state.round, "step": int(state.step),
                           "sign_bytes": state.sign_bytes.hex(), "signature": state.signature.hex()})
        write_atomic(self.path, data.encode())
        fsync_dir(self.path.parent)


class PrivValidator:
    """A validator key with its double-sign guard (module docstring). ``store`` keeps the state."""

    def __init__(self, key: SigningKey, store: SignStateStore) -> None:
        self.key = key
        self.public_key = key.public_key
        self._store = store
        self.last: SignState | None = store.load()
        #: no signature at or below this height (0: none); see ``pause_until``
        self.paused_until = 0

    def pause_until(self, height: int) -> None:
        """Refuse every signature at heights up to ``height`` (``DoubleSignCode.PAUSED``)."""
        self.paused_until = max(self.paused_until, height)

    def sign(self, height: int, round: int, step: SignStep, domain: bytes, sign_bytes: bytes) -> bytes:
        """Return the Ed25519 signature of ``domain || sign_bytes`` for the message of
        (``height``, ``round``, ``step``), after recording it. Raises ``DoubleSignRefused``
        (module docstring); OSError when the record cannot be written (then nothing is signed)."""
        if height <= self.paused_until:
            raise DoubleSignRefused(DoubleSignCode.PAUSED,
                                    f"signing is paused up to height {self.paused_until} (asked for {height})")
        last = self.last
        if last is not None:
            hrs, last_hrs = (height, round, step), (last.height, last.round, last.step)
            if hrs < last_hrs:
                raise DoubleSignRefused(DoubleSignCode.REGRESSION,
                                        f"asked to sign {step.name.lower()} of height {height} round {round}, "
                                        f"after {last.step.name.lower()} of height {last.height} round {last.round}")
            if hrs == last_hrs:
                if sign_bytes == last.sign_bytes:
                    return last.signature
                raise DoubleSignRefused(DoubleSignCode.CONFLICT,
                                        f"already signed another {step.name.lower()} for height {height} round {round}")
        signature = self.key.sign(domain, sign_bytes)
        state = SignState(height, round, step, sign_bytes, signature)
        self._store.save(state)
        self.last = state
        return signature
