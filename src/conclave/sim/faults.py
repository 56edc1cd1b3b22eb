"""Which faults a simulation injects, and how often.

Theory of operation: a run names a set of fault kinds. Each kind is a family of
events the simulation's nemesis may schedule while the run is in its faulty phase;
all of them stop (partitions heal, crashed nodes restart, the wire becomes reliable)
when the quiet phase begins, so liveness can be checked. ``FaultRates`` holds the
probabilities, in one place so they can be tuned and reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from conclave.sim.errors import SetupError

FAULT_KINDS: tuple[str, ...] = ("partition", "crash", "pause", "drop", "dup", "reorder", "membership")
# Broken rules of the Raft core (switched on in the core's Config.faults) ...
RAFT_RULES: tuple[str, ...] = ("commit_previous_term", "vote_without_log_check", "forget_vote", "ack_before_persist")
# ... and of the state machine or the driver, switched on in the simulated driver (sim/ only):
# - expire_on_follower_clock: every member tracks lease deadlines and proposes expiries from
#   its own clock, though keep-alives only reach the leader;
# - read_before_term_commit: a new leader serves linearizable reads from its state at once,
#   before it has committed an entry of its term (and without a heartbeat round);
# - apply_batch_twice: the state machine applies a batch again when it reaches the log a
#   second time (the driver re-proposes after a leader change; the wire duplicates).
# - restore_forgets_leases: a member that starts from its data or installs a snapshot does
#   not rebuild its lease table from the image, so as leader it never expires those leases.
DRIVER_RULES: tuple[str, ...] = (
    "expire_on_follower_clock", "read_before_term_commit", "apply_batch_twice", "restore_forgets_leases",
)
FAULT_RULES: tuple[str, ...] = RAFT_RULES + DRIVER_RULES


def parse_faults(text: str) -> frozenset[str]:
    """``"all"``, ``"none"`` or a comma-separated list of kinds from ``FAULT_KINDS``."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if words == ["all"]:
        return frozenset(FAULT_KINDS)
    if words == ["none"] or not words:
        return frozenset()
    unknown = [w for w in words if w not in FAULT_KINDS]
    if unknown:
        raise SetupError(
            f"unknown fault kind {', '.join(repr(u) for u in unknown)}; "
            f"choose from {', '.join(FAULT_KINDS)}, or 'all' / 'none'"
        )
    return frozenset(words)


def describe_faults(kinds: frozenset[str]) -> str:
    if kinds == frozenset(FAULT_KINDS):
        return "all"
    return ",".join(k for k in FAULT_KINDS if k in kinds) or "none"


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Per nemesis round (every ``round_ms``) unless noted."""

    round_ms: int = 20
    partition_start: float = 0.08
    partition_ms: tuple[int, int] = (20, 300)
    leader_moment_seeds: float = 0.5  # share of seeds in which the four isolate_on_* apply
    isolate_on_first_append: float = 0.5  # as a leader first appends in its term
    isolate_on_append: float = 0.1  # as a leader appends again
    isolate_on_first_commit: float = 0.6  # as a leader first commits in its term
    isolate_on_commit: float = 0.02  # as a leader commits again
    crash: float = 0.05
    crash_down_ms: tuple[int, int] = (1, 200)
    crash_majority_allowed: float = 0.25  # chance a crash may take down a majority
    crash_leader_bias: float = 0.4  # chance the crash picks the leader rather than any node
    crash_before_sync: float = 0.02  # per Ready that needs an fsync
    pause: float = 0.04  # a process stops (GC pause, SIGSTOP) and later resumes with its state
    pause_ms: tuple[int, int] = (5, 300)
    pause_leader_bias: float = 0.5
    wire_change: float = 0.08  # chance to pick new drop/dup/latency conditions
    drop_rates: tuple[float, ...] = (0.0, 0.05, 0.2, 0.5)
    dup_rates: tuple[float, ...] = (0.0, 0.1, 0.3)
    latency_max_ms: tuple[int, ...] = (4, 15, 40)
    membership: float = 0.06
    membership_gap_ms: int = 150
