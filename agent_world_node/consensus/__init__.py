"""Sans-IO Tendermint consensus (docs/architecture.md, "Layers"): validators and stake thresholds,
proposer selection, vote tallies, commit certificates and the state machine ``ConsensusCore``.

Nothing in this package does I/O, reads a clock or imports trio: the daemon and the simulated
network both drive the same ``ConsensusCore`` through ``messages.Input`` and ``messages.Effect``.
"""

from .certificate import InvalidCertificate, build_commit_certificate, verify_commit_certificate
from .core import ConsensusCore, RejectReason, Step
from .evidence import DuplicateProposalEvidence, DuplicateVoteEvidence, Evidence, InvalidEvidence, verify_evidence
from .messages import (
    BlockValidity,
    Broadcast,
    Decide,
    Effect,
    EvidenceFound,
    GetValue,
    Input,
    PersistWAL,
    ProposalReceived,
    ScheduleTimeout,
    TimeoutFired,
    ValidateBlock,
    ValueToPropose,
    VoteReceived,
)
from .proposer import proposer_for, proposer_order
from .synchrony import timely, untimely_reason
from .timeouts import TimeoutConfig, TimeoutKind
from .validators import Validator, ValidatorSet, ValidatorSetError
from .votekeeper import AddVoteResult, AddVoteStatus, ThresholdEvent, ThresholdKind, VoteKeeper

__all__ = [
    "AddVoteResult",
    "AddVoteStatus",
    "BlockValidity",
    "Broadcast",
    "ConsensusCore",
    "Decide",
    "DuplicateProposalEvidence",
    "DuplicateVoteEvidence",
    "Effect",
    "Evidence",
    "EvidenceFound",
    "GetValue",
    "Input",
    "InvalidCertificate",
    "InvalidEvidence",
    "PersistWAL",
    "ProposalReceived",
    "RejectReason",
    "ScheduleTimeout",
    "Step",
    "ThresholdEvent",
    "ThresholdKind",
    "TimeoutConfig",
    "TimeoutFired",
    "TimeoutKind",
    "Validator",
    "ValidatorSet",
    "ValidatorSetError",
    "ValidateBlock",
    "ValueToPropose",
    "VoteKeeper",
    "VoteReceived",
    "build_commit_certificate",
    "proposer_for",
    "proposer_order",
    "timely",
    "untimely_reason",
    "verify_commit_certificate",
    "verify_evidence",
]
