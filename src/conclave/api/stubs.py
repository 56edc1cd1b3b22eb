"""Client-side callables for the etcd v3 RPCs, built from the private descriptor pool.

``rpc(channel, "etcdserverpb.KV", "Range")`` returns the channel's multi-callable for that method
with (de)serializers from :mod:`conclave.api.pb`; it works for ``grpc.Channel`` and
``grpc.aio.Channel`` alike. Used by ``conclave bench`` and the tests; importing no generated code
keeps a process free to load another copy of the etcd protos.
"""

from __future__ import annotations

from typing import Any

from conclave.api import pb


def rpc(channel: Any, service: str, method: str) -> Any:
    """The multi-callable for ``/service/method`` on ``channel`` (streaming kind taken from the proto)."""
    try:
        desc = pb.SERVICES[service].methods_by_name[method]
    except KeyError:
        raise ValueError(f"no RPC {service}.{method} in the etcd protos") from None
    req_cls = pb.message_class(desc.input_type.name)
    resp_cls = pb.message_class(desc.output_type.name)
    if desc.client_streaming and desc.server_streaming:
        kind = "stream_stream"
    elif desc.server_streaming:
        kind = "unary_stream"
    elif desc.client_streaming:
        kind = "stream_unary"
    else:
        kind = "unary_unary"
    return getattr(channel, kind)(
        f"/{service}/{method}", request_serializer=req_cls.SerializeToString, response_deserializer=resp_cls.FromString
    )


class EtcdStub:
    """Attribute access to every RPC of one service: ``EtcdStub(ch, "etcdserverpb.KV").Range(req)``."""

    def __init__(self, channel: Any, service: str) -> None:
        if service not in pb.SERVICES:
            raise ValueError(f"no service {service} in the etcd protos")
        self._channel = channel
        self._service = service
        self._calls: dict[str, Any] = {}

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        call = self._calls.get(method)
        if call is None:
            call = self._calls[method] = rpc(self._channel, self._service, method)
        return call
