"""The consistency lab: classic anomalies of consistency and consensus, reproduced and judged.

Each scenario (``conclave.lab.scenarios``) is a small distributed system on virtual time
(``conclave.lab.core``), with simulated replicas (``replication``) or Conclave's real Raft core
(``raftlab``); its client history is judged by ``conclave.verify`` and drawn by ``render``.
"""
