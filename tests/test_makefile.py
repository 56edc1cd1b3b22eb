"""`make system-deps` installs etcd's Debian packages without starting (or killing) any etcd."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_system_deps_keeps_the_service_from_starting_and_kills_nothing(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "log"
    policy = tmp_path / "policy-rc.d"
    for tool in ("chmod", "rm", "cat"):
        found = shutil.which(tool)
        assert found is not None
        os.symlink(found, bin_dir / tool)
    _script(bin_dir / "id", "echo 0\n")  # pretend to be root, as the install branch requires
    # A fake apt-get that does what the package's maintainer script would: ask policy-rc.d
    # whether it may start etcd (invoke-rc.d does exactly this), and start it only on "yes".
    _script(bin_dir / "apt-get", f"""echo "apt-get $*" >> {log}
if [ "$1" = install ]; then
  if [ -x {policy} ]; then {policy} etcd start; rc=$?; else rc=0; fi
  echo "policy-rc.d answered $rc" >> {log}
  [ "$rc" = 101 ] || echo "etcd service started" >> {log}
fi
""")
    for killer in ("pkill", "killall", "kill"):
        _script(bin_dir / killer, f'echo "{killer} $*" >> {log}\n')
    done = subprocess.run(
        [shutil.which("make") or "make", "-s", "-C", str(REPO), "system-deps", f"POLICY_RC_D={policy}"],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    calls = log.read_text()
    assert "apt-get install" in calls and "policy-rc.d answered 101" in calls, calls
    assert "etcd service started" not in calls, calls
    # every package set goes through the same guarded install (postgresql only where it is missing)
    sets = ["etcd-client etcd-server", "--no-install-recommends chromium", "iproute2 nftables"]
    if not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
        sets.append("postgresql")
    for packages in sets:
        assert f"apt-get install -y -qq {packages}" in calls, calls
    assert calls.count("policy-rc.d answered") == calls.count("apt-get install"), calls
    assert "policy-rc.d answered 0" not in calls, calls
    assert "pkill" not in calls and "killall" not in calls and "kill " not in calls, calls
    assert not policy.exists(), "the temporary policy-rc.d must be removed after the install"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_prints_the_activation_line() -> None:
    done = subprocess.run([shutil.which("make") or "make", "-n", "-C", str(REPO), "run"], capture_output=True,
                          text=True, timeout=60)
    assert ". .venv/bin/activate" in done.stdout, done.stdout
