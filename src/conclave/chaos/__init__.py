"""`conclave chaos`: real faults on real ``conclave serve`` processes, Jepsen-style.

Theory of operation. A run (``conclave.chaos.run``) starts a cluster (``cluster``) whose members
are ``conclave serve`` subprocesses, each in its own network namespace (``netns``) or, where
namespaces cannot be made, on 127.0.0.1 behind a peer proxy the harness controls (``proxy``).
Clients (``workload``) run operations against it and record every call and answer as a history
(docs/history-format.md) while a nemesis (``nemesis``) injects the faults of a seeded schedule
(``schedule``: pure, deterministic from the seed). At the end every fault is healed, a quiet period
measures recovery, and ``analysis`` checks each key's history with ``conclave.verify`` and measures
availability; ``report`` writes report.html. This package imports no server code: members are
processes, reached only through their ports.
"""
