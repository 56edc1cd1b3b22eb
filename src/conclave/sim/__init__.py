"""Deterministic simulation of a Conclave cluster: the real Raft core and the real MVCC
state machine under virtual time, a lossy reordering network, crashing disks and
membership changes, driven by simulated etcd clients, with every safety property
checked at every step. One seed is one exact replay.
"""
