"""Consensus timeouts, growing linearly with the round (Tendermint paper, section "Termination").

``timeoutPropose(r) = propose_ms + propose_delta_ms * r``, and likewise for prevote and precommit,
so that after the network stabilises some round has timeouts long enough for correct validators to
hear each other. ``commit_ms`` is the pause the driver takes between a decision and the next height
(it is not scheduled by the core). All values are milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from agent_world_node.config import ConsensusConfig

TimeoutKind = Literal["propose", "prevote", "precommit"]
TIMEOUT_KINDS: tuple[TimeoutKind, ...] = ("propose", "prevote", "precommit")


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    """Base and per-round increment of each consensus timeout, in milliseconds.

    Bases and ``commit_ms`` are >= 0; every ``*_delta_ms`` is >= 1 (timeouts must grow with the
    round). Raises ValueError naming the field otherwise.
    """

    propose_ms: int = 1500
    propose_delta_ms: int = 500
    prevote_ms: int = 500
    prevote_delta_ms: int = 250
    precommit_ms: int = 500
    precommit_delta_ms: int = 250
    commit_ms: int = 200

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"timeout {name} must be a non-negative integer of milliseconds, got {value!r}")
            if name.endswith("_delta_ms") and value == 0:
                # Liveness (paper, "Termination"): after the network stabilises with an unknown
                # delay bound, some round must have timeouts longer than it; a zero delta never gets there.
                raise ValueError(
                    f"timeout {name} must be at least 1 ms: timeouts must grow with the round so that "
                    "consensus makes progress once the network is stable; set timeout_*_delta_ms > 0"
                )

    @classmethod
    def from_config(cls, config: "ConsensusConfig") -> "TimeoutConfig":
        """Take the timeouts from the ``[consensus]`` table of ``config.toml``."""
        return cls(
            propose_ms=config.timeout_propose_ms,
            propose_delta_ms=config.timeout_propose_delta_ms,
            prevote_ms=config.timeout_prevote_ms,
            prevote_delta_ms=config.timeout_prevote_delta_ms,
            precommit_ms=config.timeout_precommit_ms,
            precommit_delta_ms=config.timeout_precommit_delta_ms,
            commit_ms=config.timeout_commit_ms,
        )

    def duration_ms(self, kind: TimeoutKind, round: int) -> int:
        """Return the ``kind`` timeout of ``round`` in ms: base + delta * round.

        Raises ValueError for an unknown kind or a negative round.
        """
        if round < 0:
            raise ValueError(f"round must be non-negative, got {round}")
        if kind == "propose":
            return self.propose_ms + self.propose_delta_ms * round
        if kind == "prevote":
            return self.prevote_ms + self.prevote_delta_ms * round
        if kind == "precommit":
            return self.precommit_ms + self.precommit_delta_ms * round
        raise ValueError(f"unknown timeout kind {kind!r}; expected one of {TIMEOUT_KINDS}")
