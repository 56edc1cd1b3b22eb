"""Safety checkers that watch every node of a simulated cluster at every step.

Theory of operation: the simulator reports each observable change to the
``SafetyMonitor`` as it happens (a role seen, entries written to a node's log, a
commit index advanced, an entry applied, a snapshot installed, a message sent) and
the monitor keeps just enough global history to check, incrementally:

- election safety: at most one leader per term, and no node grants its vote to two
  candidates in one term;
- log matching: two logs holding an entry with the same index and term hold the same
  entry and agree on the term of the entry before it (so, by induction, on the whole
  prefix); terms never decrease along a log; a log has no gaps;
- leader completeness: a leader holds every entry committed in an earlier term, checked
  when it is elected and again whenever such an entry becomes known as committed (the
  term of commitment is the term of the node that reports it, an upper bound); no node
  rewrites an entry it holds that is known committed;
- state machine safety: no two nodes apply different entries at one index, every
  replica at one applied index has the same store hash, and an installed snapshot
  restores the store hash of the applied prefix it claims to cover;
- the persistence rule (DESIGN.md): a vote is granted and an append acknowledged only
  when what it promises is already on the node's disk (synced).

A broken rule raises ``InvariantBroken`` at the point where it is detected. The
monitor never changes the cluster; it only reads what it is shown.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from conclave.raft.types import Entry, EntryType, Message, MessageType
from conclave.sim.errors import InvariantBroken
from conclave.sim.mirror import LogMirror
from conclave.storage.memory import MemoryStorage


@dataclass(frozen=True, slots=True)
class _LogFact:
    prev_term: int
    type: EntryType
    data: bytes


class SafetyMonitor:
    def __init__(self, check_persistence_rule: bool = True) -> None:
        self.check_persistence_rule = check_persistence_rule
        self.leader_of_term: dict[int, int] = {}
        self._votes: dict[tuple[int, int], int] = {}  # (voter, term) -> candidate
        self._facts: dict[tuple[int, int], _LogFact] = {}  # (index, term) -> fact
        self.committed_terms: dict[int, int] = {}  # index -> term of the committed entry
        self.commit_max = 0
        self._last_committed_in_term: dict[int, int] = {}  # term -> highest index first seen committed in it
        self._node_commit: dict[int, int] = {}  # node -> commit index already checked
        self._leaders: dict[int, tuple[int, LogMirror]] = {}  # node -> (term, log) of live leaders
        self.applied: list[Entry] = []  # canonical applied log, index i at position i-1
        self.hash_at: dict[int, int] = {}  # applied index -> store hash first seen there

    # -- election safety ------------------------------------------------------------

    def observe_role(self, node: int, term: int, is_leader: bool) -> None:
        if not is_leader:
            return
        other = self.leader_of_term.setdefault(term, node)
        if other != node:
            raise InvariantBroken("election safety", f"nodes {other} and {node} are both leader in term {term}")

    def observe_leader_log(self, node: int, term: int, log: LogMirror) -> None:
        """``node`` leads ``term`` and ``log`` is its whole log: it must hold every committed entry."""
        self._leaders[node] = (term, log)
        # By log matching, holding the highest entry committed before ``term`` means holding all of them.
        c = max((i for t, i in self._last_committed_in_term.items() if t < term), default=0)
        if c:
            self._check_holds(node, term, log, c, self.committed_terms[c], "is elected")

    def observe_not_leader(self, node: int) -> None:
        self._leaders.pop(node, None)

    def _check_holds(self, node: int, term: int, log: LogMirror, index: int, entry_term: int, when: str) -> None:
        if entry_term >= term or index < log.base_index:
            return
        have = log.term_at(index)
        if have != entry_term:
            found = "nothing" if have is None else f"term {have}"
            raise InvariantBroken(
                "leader completeness",
                f"node {node} {when} leader of term {term} but holds {found} at index {index}, "
                f"where an entry of term {entry_term} is committed (its log ends at {log.last_index})",
            )

    # -- logs -------------------------------------------------------------------------

    def observe_write(self, node: int, log: LogMirror, entries: tuple[Entry, ...]) -> None:
        """Apply ``entries`` to ``log`` (the node's mirror) and check the result."""
        if not entries:
            return
        for a, b in itertools.pairwise(entries):
            if b.index != a.index + 1:
                raise InvariantBroken("log matching", f"node {node} was handed entries {a.index} then {b.index}")
        if entries[0].index > log.last_index + 1:
            raise InvariantBroken(
                "log matching", f"node {node} appends at {entries[0].index} but its log ends at {log.last_index}"
            )
        # Committed entries this node holds before the write must still be there after it.
        lo, hi = max(entries[0].index, log.base_index + 1), min(log.last_index, self.commit_max)
        held = [(i, t) for i in range(lo, hi + 1) if (t := log.term_at(i)) == self.committed_terms.get(i)]
        if log.write(entries):
            for i, t in held:
                have = log.term_at(i)
                if have != t:
                    found = "nothing" if have is None else f"an entry of term {have}"
                    raise InvariantBroken(
                        "committed entry lost", f"node {node} replaced the committed entry {i} (term {t}) with {found}"
                    )
        prev = log.term_at(entries[0].index - 1)
        for e in entries:
            if e.index <= log.base_index:
                continue
            if prev is not None and e.term < prev:
                raise InvariantBroken(
                    "log matching", f"node {node}: entry {e.index} has term {e.term} after an entry of term {prev}"
                )
            fact = _LogFact(prev if prev is not None else -1, e.type, e.data)
            seen = self._facts.setdefault((e.index, e.term), fact)
            if seen != fact and fact.prev_term != -1:
                what = "a different predecessor term" if seen.prev_term != fact.prev_term else "different data"
                raise InvariantBroken(
                    "log matching",
                    f"node {node} holds entry {e.index} of term {e.term} with {what} than another node "
                    f"(prev term {fact.prev_term} vs {seen.prev_term})",
                )
            prev = e.term

    def observe_commit(self, node: int, log: LogMirror, commit: int, term: int) -> None:
        """``node``, in ``term``, reports ``commit``. Every index up to it is committed, and
        was so no later than in ``term`` (the leader that told the node led ``term``), so
        every leader of a later term must hold it (leader completeness)."""
        done = self._node_commit.get(node, 0)
        if commit <= done:
            return
        if commit > log.last_index:
            raise InvariantBroken(
                "log matching", f"node {node} commits up to {commit} but its log ends at {log.last_index}"
            )
        for i in range(max(done + 1, log.base_index), commit + 1):
            t = log.term_at(i)
            if t is None or i == 0:
                continue
            known = self.committed_terms.get(i)
            if known is None:
                self.committed_terms[i] = t
                self.commit_max = max(self.commit_max, i)
                self._last_committed_in_term[term] = max(self._last_committed_in_term.get(term, 0), i)
                for leader, (leader_term, llog) in self._leaders.items():
                    if leader_term > term:
                        self._check_holds(leader, leader_term, llog, i, t, "is")
            elif known != t:
                raise InvariantBroken(
                    "state machine safety",
                    f"node {node} commits index {i} with term {t}, but term {known} was committed there",
                )
        self._node_commit[node] = commit

    def reset_node(self, node: int, commit: int) -> None:
        """A node restarted (or stopped): forget what was checked of its volatile state."""
        self._node_commit[node] = commit
        self._leaders.pop(node, None)

    # -- state machines -----------------------------------------------------------------

    def observe_apply(self, node: int, entry: Entry) -> None:
        i = entry.index
        if i <= len(self.applied):
            first = self.applied[i - 1]
            if first.term != entry.term or first.data != entry.data or first.type != entry.type:
                raise InvariantBroken(
                    "state machine safety",
                    f"node {node} applied entry {i} of term {entry.term} ({entry.data!r}), "
                    f"another node applied term {first.term} ({first.data!r}) there",
                )
            return
        if i != len(self.applied) + 1:
            raise InvariantBroken("state machine safety", f"node {node} applied {i} before anyone applied {i - 1}")
        known = self.committed_terms.get(i)
        if known is not None and known != entry.term:
            raise InvariantBroken(
                "state machine safety", f"node {node} applied entry {i} of term {entry.term}; term {known} committed"
            )
        self.applied.append(entry)

    def observe_hash(self, node: int, index: int, digest: int) -> None:
        """``node`` has applied up to ``index`` and its store hashes to ``digest``."""
        first = self.hash_at.setdefault(index, digest)
        if first != digest:
            raise InvariantBroken(
                "state machine safety",
                f"node {node} at applied index {index} has store hash {digest:08x}, another replica had {first:08x}",
            )

    def observe_restore(self, node: int, index: int, digest: int) -> None:
        if index > len(self.applied):
            raise InvariantBroken(
                "state machine safety", f"node {node} installed a snapshot at {index}, beyond any applied entry"
            )
        want = self.hash_at.get(index)
        if want is not None and want != digest:
            raise InvariantBroken(
                "state machine safety",
                f"node {node} installed a snapshot at {index} whose store hash {digest:08x} differs from the "
                f"{want:08x} of the entries applied up to there",
            )

    # -- the persistence rule -------------------------------------------------------------

    def observe_send(self, node: int, msg: Message, disk: MemoryStorage, log: LogMirror) -> None:
        if msg.type == MessageType.VOTE_RESP and not msg.reject:
            prior = self._votes.setdefault((node, msg.term), msg.to)
            if prior != msg.to:
                raise InvariantBroken(
                    "election safety",
                    f"node {node} granted its vote in term {msg.term} to {prior} and then to {msg.to}",
                )
            if self.check_persistence_rule:
                hs = disk.durable.hard_state
                if hs.term < msg.term or (hs.term == msg.term and hs.vote != msg.to):
                    raise InvariantBroken(
                        "persistence rule",
                        f"node {node} granted its vote to {msg.to} in term {msg.term} before it was on disk "
                        f"(disk has term {hs.term}, vote {hs.vote})",
                    )
        elif msg.type == MessageType.APP_RESP and not msg.reject and self.check_persistence_rule:
            want = log.term_at(msg.index)
            have = _durable_term_at(disk, msg.index)
            if want is not None and have is not None and have != want:
                found = "nothing" if have < 0 else f"term {have}"
                raise InvariantBroken(
                    "persistence rule",
                    f"node {node} acknowledged entries up to {msg.index} (term {want}) "
                    f"but its disk holds {found} there",
                )


def _durable_term_at(disk: MemoryStorage, index: int) -> int | None:
    """Term of the synced entry at ``index``: None if a synced snapshot covers it, -1 if absent."""
    d = disk.durable
    if d.snapshot is not None and index <= d.snapshot.meta.index:
        return d.snapshot.meta.term if index == d.snapshot.meta.index else None
    if index == 0:
        return None
    if not d.entries or index < d.entries[0].index or index > d.entries[-1].index:
        return -1
    return d.entries[index - d.entries[0].index].term
