"""`conclave bench`: a ~1 s run against the gRPC edge (fake backend) and its input checking."""

from __future__ import annotations

import json

import pytest

from conclave.cli.main import main
from conclave.loadgen import LoadConfig, LoadError, key_bytes, parse_endpoints, run_load

from .conftest import ServedBackend


def test_bench_put_reports_plausible_numbers(served: ServedBackend, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "bench",
            "put",
            "--endpoints",
            f"http://{served.endpoint}",
            "--duration",
            "1",
            "--clients",
            "8",
            "--conns",
            "2",
            "--processes",
            "2",
            "--key-size",
            "16",
            "--val-size",
            "32",
            "--json",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["op"] == "put" and report["processes"] == 2 and report["errors"] == {}
    assert report["ops"] > 0 and report["ops_per_s"] > 0
    assert (
        0 < report["latency_ms_p50"] <= report["latency_ms_p90"] <= report["latency_ms_p99"] <= report["latency_ms_max"]
    )
    assert len(report["generator_cpu_per_process"]) == 2
    assert sum(p["ops"] for p in report["generator_cpu_per_process"]) == report["ops"]
    assert report["generator_cpu_us_per_op"] > 0
    # The server saw at least the puts the generator counted, with keys of the requested size.
    keys = served.call_in_loop(served.backend.keys)
    assert keys and all(len(k) == 16 for k in keys)
    assert served.call_in_loop(lambda: served.backend.calls.count("put")) >= report["ops"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"op": "scan"}, "unknown operation"),
        ({"endpoints": ()}, "no endpoints"),
        ({"endpoints": ("nohost",)}, "not host:port"),
        ({"clients": 0}, "at least 1"),
        ({"processes": 4, "clients": 2}, "cannot exceed"),
        ({"duration_s": 0}, "positive"),
        ({"consistency": "x"}, "consistency"),
    ],
)
def test_bad_input_is_a_clear_error(changes: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"op": "put", "endpoints": ("127.0.0.1:2379",)}
    cfg = LoadConfig(**{**base, **changes})  # type: ignore[arg-type]
    with pytest.raises(LoadError, match=message):
        run_load(cfg)


def test_keys_and_endpoints() -> None:
    assert key_bytes(255, 8) == b"kkkkkkff" and len(key_bytes(2**40, 4)) == 4
    assert parse_endpoints("http://a:1, b:2/,") == ("a:1", "b:2")


def test_spread_keys_reach_every_shard() -> None:
    """--spread-keys: keys keep their size, stay distinct and fall evenly over --shards K's ranges
    (the default keys all start with 'k': one shard)."""
    from conclave.loadgen import SPREAD_ALPHABET
    from conclave.machine.xshard import ShardMap
    from conclave.server.config import SPLIT_ALPHABET, derive_split_keys

    assert SPREAD_ALPHABET == SPLIT_ALPHABET
    spread = LoadConfig(op="put", endpoints=("h:1",), key_size=8, spread_keys=True)
    plain = LoadConfig(op="put", endpoints=("h:1",), key_size=8)
    keys = [spread.key(i) for i in range(6200)]
    assert len(set(keys)) == len(keys) and all(len(k) == 8 for k in keys)
    assert spread.key(0) == b"0kkkkkk0" and spread.key(5) == b"5kkkkkk5"
    for shards in (3, 6):
        smap = ShardMap(tuple(derive_split_keys(shards)), tuple(range(1, shards + 1)))
        counts = [0] * shards
        for k in keys:
            counts[smap.group_of(k) - 1] += 1
        assert min(counts) > 0.8 * len(keys) / shards, counts
        assert len({smap.group_of(plain.key(i)) for i in range(6200)}) == 1  # why the option exists
