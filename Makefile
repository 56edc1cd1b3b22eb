# Conclave: the two commands a new user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PURE   := src/conclave/lab src/conclave/machine src/conclave/raft src/conclave/sim src/conclave/kv src/conclave/storage src/conclave/verify src/conclave/wire

.PHONY: run test lint bench proto system-deps venv clean help chaos

help:
	@echo "make run    - set up, then start a local 3-node cluster on 127.0.0.1 (Ctrl-C stops it)"
	@echo "make test   - set up, then lint and run the whole test suite"
	@echo "make lint   - ruff on everything, mypy --strict on the pure cores"
	@echo "make bench  - benchmarks (bench/), side by side with etcd where a target names it"
	@echo "make edge   - build the compiled client edge (Rust) where cargo exists; make test and make run do it"
	@echo "make edge-check - clippy -D warnings and the edge's Rust unit tests (make test runs it)"
	@echo "make chaos  - the chaos matrix (every workload x nemesis, 5 nodes, 2 min, 2 seeds) into chaos-results/"
	@echo "make proto  - regenerate the committed gRPC/protobuf modules from src/conclave/api/proto"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests and benchmarks use: etcdctl 3.4 (compatibility tests) and
# etcd 3.4 (the peer the benchmarks compare against). The package would start an etcd service
# on 2379/2380; a policy-rc.d that answers 101 ("action forbidden", Debian's invoke-rc.d
# convention) keeps any service from starting during this install, so nothing has to be
# stopped afterwards (and no other etcd on the machine is touched). An existing policy-rc.d
# is left as it is. chromium is for the lab's headless screenshot test, postgresql for the Patroni
# tests (same guard).
POLICY_RC_D ?= /usr/sbin/policy-rc.d
APT_GET     ?= apt-get
PG_LIB      ?= /usr/lib/postgresql
# $(call apt_install,PRESENT,PACKAGES,WHAT,MISSING): nothing when the shell test PRESENT holds;
# else, as root where apt-get is, say "installing WHAT" and install PACKAGES under the policy-rc.d
# guard (once more after an apt-get update if the first try fails); else print "warning: MISSING".
define apt_install
if $(1); then :; \
elif [ "$$(id -u)" = 0 ] && command -v $(APT_GET) >/dev/null 2>&1; then \
  echo "installing $(3)"; \
  if [ ! -e "$(POLICY_RC_D)" ]; then \
    trap 'rm -f "$(POLICY_RC_D)"' EXIT; \
    printf '#!/bin/sh\n# written by `make system-deps` for the length of its apt-get install\nexit 101\n' \
      > "$(POLICY_RC_D)" && chmod 755 "$(POLICY_RC_D)"; \
  fi; \
  DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq $(2) >/dev/null 2>&1 || \
   ($(APT_GET) update -qq >/dev/null && \
    DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq $(2) >/dev/null); \
else echo "warning: $(4)"; fi
endef

system-deps:
	@$(call apt_install,command -v etcdctl >/dev/null 2>&1 && command -v etcd >/dev/null 2>&1,etcd-client etcd-server,etcd-client and etcd-server (apt-get; their service is not started),etcdctl/etcd missing and cannot apt-get install them; their tests will skip (fail under CI=true))
	@$(call apt_install,command -v chromium >/dev/null 2>&1,--no-install-recommends chromium,chromium (apt-get; the lab's page test takes a headless screenshot),chromium missing and cannot apt-get install it; the lab's screenshot test will skip (fail under CI=true))
	@# PostgreSQL's server for the Patroni tests (tests/patroni): Debian's postgresql; the guard also keeps
	@# the package's own cluster (15/main on 5432) from starting
	@$(call apt_install,set -- $(PG_LIB)/*/bin/postgres; [ -x "$$1" ],postgresql,postgresql (apt-get; its service is not started) for the Patroni tests,PostgreSQL missing and cannot apt-get install it; the Patroni tests will skip (fail under CI=true))
	@# conclave chaos: ip netns / veth / bridge (iproute2) and nft for the namespace mode's faults
	@$(call apt_install,command -v ip >/dev/null 2>&1 && command -v nft >/dev/null 2>&1,iproute2 nftables,iproute2 and nftables (apt-get) for conclave chaos,ip/nft missing: conclave chaos runs its members behind the proxy instead of namespaces)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy --strict $(PURE)

# Two lanes: the Patroni failover scenarios (tests/patroni, ~130 s) spend most of their time waiting
# out Patroni's ttl and loop_wait, so they run beside the rest of the suite (a light second load on
# the machine); their output is printed after the main lane's, and either lane failing fails the run.
PATRONI_LOG := .patroni-lane.log
test: $(STAMP) edge edge-check system-deps lint
	@$(PY) -m pytest -p no:cacheprovider tests/patroni > $(PATRONI_LOG) 2>&1 & lane=$$!; \
	trap 'kill $$lane 2>/dev/null' INT TERM; \
	$(PY) -m pytest --ignore=tests/patroni; main=$$?; \
	wait $$lane; patroni=$$?; \
	echo "----- tests/patroni (run beside the rest; exit $$patroni) -----"; cat $(PATRONI_LOG); \
	[ $$main -eq 0 ] && [ $$patroni -eq 0 ]

run: $(STAMP) edge
	@echo "conclave and python in the README's examples are the virtualenv's: in another terminal run"
	@echo "    . .venv/bin/activate"
	@echo "(or call .venv/bin/conclave and .venv/bin/python)"
	$(VENV)/bin/conclave up --nodes 3

bench: $(STAMP) system-deps
	$(PY) bench/run_all.py

# conclave chaos against every nemesis; results (history, logs, report.html per run) in chaos-results/
chaos: $(STAMP) system-deps
	$(PY) -m conclave.chaos.matrix --out chaos-results

proto: $(STAMP)
	$(PY) -m conclave.api.protogen

clean:
	rm -rf $(VENV) conclave-data .pytest_cache .mypy_cache .ruff_cache

# The compiled client edge (src/conclave/edge, Rust + PyO3): built only where cargo exists, into
# target/ (kept, so a second build is incremental), and placed beside the package as
# conclave/_edge.abi3.so. Without cargo the python gRPC engine runs (`conclave serve` says so).
EDGE_SO := src/conclave/_edge.abi3.so
EDGE_SRC := $(wildcard src/conclave/edge/src/*.rs) src/conclave/edge/Cargo.toml
$(EDGE_SO): $(EDGE_SRC) $(STAMP)
	@if command -v cargo >/dev/null 2>&1; then \
	  CARGO_TARGET_DIR=$(CURDIR)/target PYO3_PYTHON=$(CURDIR)/$(PY) cargo build --release --quiet \
	    --manifest-path src/conclave/edge/Cargo.toml && cp target/release/lib_edge.so $(EDGE_SO).tmp && mv -f $(EDGE_SO).tmp $(EDGE_SO); \
	else echo "cargo not found: skipping the compiled edge; the python gRPC engine will run"; fi

.PHONY: edge edge-check
edge: $(EDGE_SO)

# The edge's own checks where cargo exists: clippy with warnings as errors, and its Rust unit tests.
EDGE_CARGO := CARGO_TARGET_DIR=$(CURDIR)/target PYO3_PYTHON=$(CURDIR)/$(PY) cargo
edge-check: $(STAMP)
	@if command -v cargo >/dev/null 2>&1; then \
	  if cargo clippy --version >/dev/null 2>&1; then \
	    $(EDGE_CARGO) clippy --quiet --release --manifest-path src/conclave/edge/Cargo.toml -- -D warnings; \
	  else echo "cargo clippy not installed: skipping it"; fi && \
	  $(EDGE_CARGO) test --quiet --release --manifest-path src/conclave/edge/Cargo.toml; \
	else echo "cargo not found: skipping the edge's Rust checks"; fi
