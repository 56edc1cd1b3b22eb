"""The key-value state machine: etcd v3's MVCC semantics as a pure, deterministic core.

Modules (each opens with its own theory of operation):

* ``types``      - frozen values mirroring etcd's rpc.proto / kv.proto messages and enums;
* ``errors``     - every client-visible error, with its gRPC code name and etcd's exact text;
* ``command``    - the replicated command set and its msgpack codec (log entry bytes);
* ``auth``       - ``AuthStore``: users, roles, key permissions, etcd's auth rules and checks;
* ``validation`` - static request checks the server runs before proposing, request size and
  quota cost;
* ``index``      - the key index (per key, every kept revision) behind ranges;
* ``mvcc``       - ``Store``: apply committed commands, serve reads, hash, snapshot/restore;
* ``lease``      - ``Lessor``: per-member lease deadlines driven by explicit ``now_ms`` values;
* ``watch``      - ``WatchHub``: streams events to watchers, slow ones catch up from history.

Driver contract (the server): ``conclave.machine.rules.validate`` + ``check_size`` before proposing;
for each committed entry ``resp = store.apply(decode_command(data)[1], index)`` then
``hub.publish(store.last_events)`` and, on a LeaseGrant/LeaseRevoke, ``lessor.grant``/``revoke``;
call ``hub.catch_up()`` when idle or after ``take()`` freed buffer room; propose a LeaseRevoke
for each id of ``lessor.expired(now_ms)`` on the leader.

Nothing in this package does I/O, reads a clock or draws random numbers.
"""
