"""Deterministic simulation of a Conclave cluster: the real Raft core under virtual time,
a lossy reordering network, crashing disks and membership changes, with every safety
property checked at every step. One seed is one exact replay.
"""
