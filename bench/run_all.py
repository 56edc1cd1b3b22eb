"""`make bench`: every benchmark, one after the other, on this machine.

Each benchmark is also runnable on its own (see bench/README.md for the commands and the
figures measured so far). Benchmarks never run as part of `make test`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHES = [
    ("write-ahead log: appends/s vs raw fsync, 1M-entry recovery", ["wal_bench.py"]),
    ("linearizability checker vs Porcupine's published times", ["check_bench.py"]),
    ("3-member Conclave vs 3-member etcd 3.4 over the etcd gRPC API", ["cluster_bench.py"]),
    ("native protocol vs gRPC vs etcd", ["native_bench.py"]),
    ("single-shard puts with K = 1, 3, 6 Raft groups on 3 members, vs etcd 3.4 (issue 16)", ["shards_bench.py"]),
    ("the server's own cost: three members in one process, no client protocol", ["inproc_cluster.py"]),
    ("member CPU per put: Conclave over gRPC, rust engine",
     ["cpu_per_op.py", "--protocol", "grpc", "--grpc-engine", "rust"]),
    ("member CPU per put: Conclave over gRPC, python engine",
     ["cpu_per_op.py", "--protocol", "grpc", "--grpc-engine", "python"]),
    ("member CPU per put: Conclave over the native protocol", ["cpu_per_op.py", "--protocol", "native"]),
    ("member CPU per put: etcd 3.4", ["cpu_per_op.py", "--system", "etcd"]),
    ("the compiled edge: Conclave rust vs Conclave python vs etcd 3.4 (issue 11's table)", ["edge_bench.py"]),
    ("the compiled edge's Python loop side alone: CPU per request", ["edge_loop_bench.py"]),
    ("cross-shard transactions vs single-group ones, and etcd 3.4", ["xshard_bench.py"]),
    ("member RSS under churn (gc policy)", ["soak.py", "--duration", "300", "--warmup", "60"]),
]


def main() -> int:
    failed = []
    for title, argv in BENCHES:
        script = HERE / argv[0]
        if not script.exists():
            print(f"\n##### {title}: {argv[0]} not present, skipped", flush=True)
            continue
        print(f"\n##### {title}\n$ python bench/{' '.join(argv)}", flush=True)
        rc = subprocess.call([sys.executable, str(script), *argv[1:]])
        if rc != 0:
            failed.append(argv[0])
    if failed:
        print(f"\nbenchmarks that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
