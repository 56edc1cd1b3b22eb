"""The replicated state machine of the simulation: an append-only list of client values.

Theory of operation: every committed NORMAL entry with non-empty data appends its data
to the list, unless the list already holds it; empty entries (a new leader's no-op) and
conf changes append nothing. Values are unique request ids, and a proposal can reach
the log twice (a forwarded proposal duplicated on the wire, a client retry), so the
apply step is idempotent per value, as a real service deduplicates by request id. The
list is small enough to snapshot whole, which lets the simulation exercise compaction
and InstallSnapshot. ``applied_index`` must advance one entry at a time; a gap or a
step backwards is a bug in whoever fed the entries, so it raises.
"""

from __future__ import annotations

from conclave.raft.types import Entry, EntryType
from conclave.sim.errors import InvariantBroken

_SEPARATOR = b","


def encode_values(values: list[bytes]) -> bytes:
    return _SEPARATOR.join(values)


def decode_values(data: bytes) -> list[bytes]:
    return data.split(_SEPARATOR) if data else []


def carries_value(entry: Entry) -> bool:
    return entry.type == EntryType.NORMAL and bool(entry.data)


class AppendOnlyList:
    def __init__(self) -> None:
        self.values: list[bytes] = []
        # value -> its 1-based position in the list; lookups only, never iterated (bytes hash per process)
        self.position: dict[bytes, int] = {}
        self.applied_index = 0

    def apply(self, entry: Entry) -> None:
        if entry.index != self.applied_index + 1:
            raise InvariantBroken(
                "apply order", f"entry {entry.index} applied after {self.applied_index} (entries must apply in order)"
            )
        self.applied_index = entry.index
        if carries_value(entry) and entry.data not in self.position:
            self.values.append(entry.data)
            self.position[entry.data] = len(self.values)

    def restore(self, index: int, data: bytes) -> None:
        self.values = decode_values(data)
        self.position = {v: i for i, v in enumerate(self.values, 1)}
        self.applied_index = index

    def image(self) -> bytes:
        return encode_values(self.values)
