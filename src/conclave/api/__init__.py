"""``conclave.api``: the etcd v3 gRPC protocol edge.

Modules:

* ``proto/*.proto``: the project's own etcd-compatible protos (packages etcdserverpb, mvccpb, authpb,
  v3lockpb, v3electionpb; etcd v3.6 field numbers); ``proto/etcd.pb`` is their compiled descriptor set.
* ``protogen``: ``make proto`` - regenerates ``proto/etcd.pb`` and the conventional ``gen/*_pb2.py``.
* ``pb``: message classes and service descriptors from a PRIVATE descriptor pool (no generated code
  imported, so other copies of the etcd protos may share the process).
* ``convert``: protobuf <-> ``conclave.kv.types`` mapping, field by field.
* ``grpc_server``: the services as grpc.aio generic handlers (KV, Watch, Lease, Cluster, Maintenance,
  Auth-disabled) and ``start_etcd_server``; ``lock`` / ``election`` / ``recipes``: the v3lock and
  v3election services built on the backend.
* ``stubs``: client-side multi-callables from the private pool.
* ``native``: the native protocol's server (its codec is ``conclave.wire.native``).

``pb``, ``convert``, ``stubs`` and ``gen`` are the gRPC codec: the client imports them and nothing else
of this package. The contract with the node (``EtcdBackend``, ``StatusInfo``, ...) is
``conclave.wire.contract``.

The api maps wire messages to domain calls and back; it holds no business rules.
"""
