"""The Raft consensus core: pure, sans-I/O, driven by its caller (see ``node.RaftNode``).

Modules: ``types`` (values exchanged with drivers), ``codec`` (their wire form),
``log`` (the in-memory log and its durability cursors), ``progress`` (what a leader
knows of each follower), ``quorum`` (majority and joint arithmetic), ``confchange``
(membership changes), ``node`` (the state machine itself) and ``errors``.
Nothing here performs I/O, reads a clock or draws randomness of its own.
"""
