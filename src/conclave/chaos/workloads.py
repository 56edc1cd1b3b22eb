"""The workloads ``conclave chaos --workload`` knows, by name (chaos/workload.py and chaos/bank.py)."""

from __future__ import annotations

from conclave.chaos.bank import BankWorkload
from conclave.chaos.workload import (
    AppendWorkload,
    LeaseWorkload,
    LockWorkload,
    RegisterWorkload,
    WatchWorkload,
    Workload,
)

WORKLOADS: dict[str, type[Workload]] = {
    w.name: w
    for w in (RegisterWorkload, AppendWorkload, LockWorkload, WatchWorkload, LeaseWorkload, BankWorkload)
}
