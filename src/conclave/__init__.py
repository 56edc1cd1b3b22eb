"""Conclave: a fault-tolerant coordination service (Raft + MVCC key-value store, etcd v3 API)."""

__version__ = "0.1.0"
