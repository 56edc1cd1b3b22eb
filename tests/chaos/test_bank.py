"""The bank workload: its pure parts (split keys, outcomes, the judge), `conclave chaos --shards`
plumbing, and one run on real processes (3 members, 3 shards, 100 accounts, 8 clients; kill -9 and
restart of a member, SIGSTOP/SIGCONT of the leader) that must come out valid: every validated read
sums to the total, transfers committed (cross-shard ones too), every member agrees at the end, no
account still locked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conclave.chaos.bank import BankWorkload, account_key, bank_split_keys, outcome_of_error
from conclave.chaos.run import ChaosConfig, shard_args, usable_nemeses
from conclave.chaos.workload import Recorder
from conclave.chaos.workloads import WORKLOADS
from conclave.client import OutcomeUnknown, ServerError, ServerTimeout

REPO = Path(__file__).resolve().parents[2]


def test_split_keys_spread_the_accounts_evenly() -> None:
    assert bank_split_keys(100, 3) == ["bank/acct/033", "bank/acct/066"]
    assert bank_split_keys(100, 1) == []
    keys = [account_key(i, 1000) for i in range(1000)]
    assert keys == sorted(keys) and keys[7] == "bank/acct/007"
    w = BankWorkload([], [], Recorder(0.0), splits=bank_split_keys(100, 3))
    counts = [sum(1 for k in w.account_keys() if w.group_of(k) == g) for g in range(3)]
    assert counts == [33, 33, 34]
    with pytest.raises(ValueError, match="cannot spread 2 accounts over 3 shards"):
        bank_split_keys(2, 3)


def test_only_a_definite_refusal_is_a_failed_transfer() -> None:
    assert outcome_of_error(ServerError("conclave: cross-shard transaction aborted")) == "fail"
    assert outcome_of_error(ServerError("conclave: this transaction touches keys of several shards "
                                        "(cross-shard transactions are not enabled)")) == "fail"
    assert outcome_of_error(OutcomeUnknown("txn: conclave: cross-shard transaction aborted")) == "info"
    assert outcome_of_error(ServerTimeout("etcdserver: request timed out")) == "info"
    assert outcome_of_error(ServerError("conclave: cross-shard transaction outcome unknown")) == "info"
    assert outcome_of_error(ConnectionError()) == "info"


def test_the_judge_flags_a_wrong_sum_and_a_member_that_disagrees() -> None:
    w = BankWorkload([], [], Recorder(0.0), accounts=3, balance=10)
    w.validated = [(30, 3), (29, 3)]
    w.final_errors, w.final_validated = [], (30, 3)
    w.linearizable = {"a": 10, "b": 10, "c": 10}
    w.member_reads = {"m1": dict(w.linearizable), "m2": {"a": 10, "b": 9, "c": 10}, "m3": "<unreadable: x>"}
    f = w.judge([])
    text = " | ".join(f.violations)
    assert "summing to 29" in text and "m2 disagrees on 1 accounts (b)" in text and "m3: <unreadable" in text
    assert f.facts["validated_reads"] == 2 and f.facts["members_agreeing"] == 1
    w.validated = [(30, 3)]
    w.member_reads = {"m1": dict(w.linearizable)}
    assert w.judge([]).violations == []


def test_shards_plumbing_and_refused_nemeses() -> None:
    assert "bank" in WORKLOADS
    cfg = ChaosConfig(workload="bank", shards=3, nemesis=("kill", "member", "pause"))
    assert shard_args(cfg) == ["--shard-split-keys", "bank/acct/033,bank/acct/066"]
    said: list[str] = []
    assert usable_nemeses(cfg, said.append) == ("kill", "pause")
    assert said and "member skipped with --shards 3" in said[0]
    assert "--shards 3" in cfg.rerun()
    assert shard_args(ChaosConfig(workload="register", shards=2)) == ["--shards", "2"]
    assert shard_args(ChaosConfig(workload="bank")) == []


@pytest.mark.parametrize("args", [["--shards", "0"], ["--shards", "3", "--accounts", "2"]])
def test_bad_shard_arguments_are_refused_clearly(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "conclave", "chaos", "--workload", "bank", *args],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert done.returncode == 2 and "conclave chaos:" in done.stderr and "Traceback" not in done.stderr


def test_bank_across_three_shards_under_kill_and_pause(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # seed 18: kill -9 of a member at 3 s (restarted 2.7 s later), SIGSTOP of the leader at 10 s for 3 s
    done = subprocess.run(
        [sys.executable, "-m", "conclave", "chaos", "--out", str(out), "--workload", "bank", "--shards", "3",
         "--accounts", "100", "--nodes", "3", "--clients", "8", "--time", "20", "--interval", "6",
         "--nemesis", "kill,pause", "--seed", "18", "--quiet", "5"],
        capture_output=True, text=True, timeout=240, cwd=REPO)
    assert out.joinpath("summary.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    facts = {k[5:]: v for k, v in s.items() if k.startswith("bank_")}
    detail = json.dumps({"verdict": s["verdict"], "violations": s["violations"], **facts})
    assert done.returncode == 0 and s["verdict"] == "valid", detail + done.stdout[-2000:]
    kinds = {f["kind"] for f in s["faults"] if not f["skipped"]}
    assert {"kill-one", "pause-leader"} <= kinds, s["faults"]
    assert facts["shards"] == 3 and facts["accounts"] == 100
    assert facts["validated_reads"] > 0 and facts["validated_sums"] == [10000], detail
    assert facts["transfers_ok"] > 0 and facts["cross_shard_transfers_ok"] > 0, detail
    assert facts["final_validated_sum"] == 10000, detail
    assert facts["members_agreeing"] == 3 == facts["members_read"], detail
    assert facts["intents_clear_after_s"] is not None and facts["intents_clear_after_s"] <= facts["intent_bound_s"]
    print(detail)
