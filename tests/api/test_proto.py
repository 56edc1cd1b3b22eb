"""The project's etcd protos: complete, wire-compatible with the etcd 3.4 etcdctl binary's own descriptors."""

from __future__ import annotations

import re
import shutil
import zlib
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from conclave.api import pb

ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCD_PACKAGES = {"etcdserverpb", "mvccpb", "authpb", "v3lockpb", "v3electionpb"}
CLIENT_FILES = ("rpc.proto", "kv.proto", "auth.proto")
SERVER_FILES = (*CLIENT_FILES, "v3lock.proto", "v3election.proto")


def _binary_descriptors(binary: str, wanted: tuple[str, ...]) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """Go binaries embed each registered .proto as a gzipped FileDescriptorProto: extract etcd's."""
    path = Path(binary)
    if not path.exists():
        pytest.skip(f"{binary} is not installed")
    data = path.read_bytes()
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for match in re.finditer(b"\x1f\x8b\x08\x00\x00\x00\x00\x00", data):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(data[match.start() : match.start() + 400_000])
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        except Exception:
            continue
        if fd.package in ETCD_PACKAGES and fd.name in wanted:
            files[fd.name] = fd
    if len(files) != len(wanted):
        pytest.skip(f"could not find etcd's descriptors in {binary} (found {sorted(files)})")
    return files


def _walk(prefix: str, messages: Any) -> dict[str, descriptor_pb2.DescriptorProto]:
    out: dict[str, descriptor_pb2.DescriptorProto] = {}
    for msg in messages:
        name = f"{prefix}.{msg.name}"
        out[name] = msg
        out.update(_walk(name, msg.nested_type))
    return out


def _ours() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    fds = descriptor_pb2.FileDescriptorSet.FromString(pb.DESCRIPTOR_SET_PATH.read_bytes())
    return {f.package: f for f in fds.file}


def test_every_rpc_of_etcd_36_is_defined() -> None:
    counts = {name: len(svc.methods) for name, svc in pb.SERVICES.items()}
    assert counts == {
        "etcdserverpb.KV": 5,
        "etcdserverpb.Watch": 1,
        "etcdserverpb.Lease": 5,
        "etcdserverpb.Cluster": 5,
        "etcdserverpb.Maintenance": 8,
        "etcdserverpb.Auth": 17,
        "v3lockpb.Lock": 2,
        "v3electionpb.Election": 5,
    }
    assert sum(counts[n] for n in counts if n.startswith("etcdserverpb.")) == 41
    watch = pb.SERVICES["etcdserverpb.Watch"].methods_by_name["Watch"]
    assert watch.client_streaming and watch.server_streaming
    observe = pb.SERVICES["v3electionpb.Election"].methods_by_name["Observe"]
    assert not observe.client_streaming and observe.server_streaming


@pytest.mark.parametrize(("binary", "wanted"), [(ETCDCTL, CLIENT_FILES), (ETCD, SERVER_FILES)])
def test_fields_match_etcd_34_binaries_descriptors(binary: str, wanted: tuple[str, ...]) -> None:
    theirs_files = _binary_descriptors(binary, wanted)
    ours_files = _ours()
    checked = 0
    for theirs_file in theirs_files.values():
        ours_file = ours_files[theirs_file.package]
        theirs = _walk(theirs_file.package, theirs_file.message_type)
        ours = _walk(ours_file.package, ours_file.message_type)
        for full_name, their_msg in theirs.items():
            assert full_name in ours, f"{full_name} missing"
            our_fields = {f.number: f for f in ours[full_name].field}
            for field in their_msg.field:
                mine = our_fields.get(field.number)
                assert mine is not None, f"{full_name}.{field.name} (#{field.number}) missing"
                assert (mine.name, mine.type, mine.label) == (field.name, field.type, field.label), full_name
                assert mine.type_name.rsplit(".", 1)[-1] == field.type_name.rsplit(".", 1)[-1], full_name
                assert mine.HasField("oneof_index") == field.HasField("oneof_index"), full_name
                checked += 1
            our_enums = {e.name: e for e in ours[full_name].enum_type}
            for enum in their_msg.enum_type:
                assert {v.name: v.number for v in enum.value}.items() <= {
                    v.name: v.number for v in our_enums[enum.name].value
                }.items(), f"{full_name}.{enum.name}"
        for service in theirs_file.service:
            our_methods = {m.name: m for m in pb.SERVICES[f"{theirs_file.package}.{service.name}"].methods}
            for method in service.method:
                mine_m = our_methods[method.name]
                assert mine_m.input_type.name == method.input_type.rsplit(".", 1)[-1]
                assert mine_m.output_type.name == method.output_type.rsplit(".", 1)[-1]
                assert (mine_m.client_streaming, mine_m.server_streaming) == (
                    method.client_streaming,
                    method.server_streaming,
                )
    assert checked > 200


def test_private_pool_and_generated_modules_interoperate() -> None:
    from conclave.api.gen import rpc_pb2  # the default-pool copy coexists with the private one

    req = pb.TxnRequest(
        compare=[pb.Compare(key=b"k", target=pb.Compare.MOD, mod_revision=7, range_end=b"z")],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=b"k", value=b"v", lease=5))],
    )
    decoded = rpc_pb2.TxnRequest.FromString(req.SerializeToString())
    assert decoded.compare[0].mod_revision == 7
    assert decoded.compare[0].range_end == b"z"
    assert decoded.success[0].request_put.lease == 5
    assert pb.message_class("etcdserverpb.TxnRequest") is pb.TxnRequest
    assert pb.FULL_NAMES["KeyValue"] == "mvccpb.KeyValue"
    assert pb.FULL_NAMES["LeaderKey"] == "v3electionpb.LeaderKey"
