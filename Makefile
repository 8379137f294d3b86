# One source of truth for tooling: CI runs `make test` exactly as written here.
CARGO ?= cargo
PEERUP = target/debug/peerup

.PHONY: run test build fmt lint unit netlab-notice check-tools bench clean

## run: build, create an identity and config if missing, and run the gateway (proxy on
## 127.0.0.1:1080). The home is ~/.config/peerup, or PEERUP_HOME if set.
run: build
	$(PEERUP) init
	$(PEERUP) run

build:
	$(CARGO) build -p peerup

## test: formatting, lints, and every unit and integration test (the NAT lab needs root)
test: check-tools netlab-notice fmt lint unit

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	@rm -f target/tmp/measured.txt
	$(CARGO) test --workspace --locked
	@# The tests record what they measured (cargo hides the output of passing tests).
	@if [ -f target/tmp/measured.txt ]; then echo "--- measured"; cat target/tmp/measured.txt; fi

# The NAT lab (tests/netlab.rs) builds network namespaces and needs root. Say so when it cannot
# run; under CI a skipped lab fails the run (the tests themselves fail too).
netlab-notice:
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "NOTE: not root: the NAT lab (tests/netlab.rs) is SKIPPED in this run (it needs network namespaces)"; \
	  if [ "$$CI" = true ]; then echo "CI=true: a skipped NAT lab fails the run"; exit 1; fi; \
	fi

# The integration tests drive real clients; say what is missing instead of failing obscurely.
check-tools:
	@for tool in curl python3; do command -v $$tool >/dev/null || { echo "make test needs $$tool (apt-get install $$tool)"; exit 1; }; done
	@command -v dig >/dev/null || { echo "make test needs dig (apt-get install dnsutils)"; exit 1; }
	@# tests/clients.rs: OpenSSH, scp, netcat and headless Chromium through the gateway.
	@for tool in ssh scp ssh-keygen nc chromium; do command -v $$tool >/dev/null || { echo "make test needs $$tool (apt-get install openssh-server openssh-client netcat-openbsd chromium)"; exit 1; }; done
	@test -x /usr/sbin/sshd || { echo "make test needs sshd at /usr/sbin/sshd (apt-get install openssh-server openssh-client netcat-openbsd chromium)"; exit 1; }
	@nc -h 2>&1 | grep -q -- '-X proxy_protocol' || { echo "make test needs OpenBSD netcat for nc -X 5 (apt-get install netcat-openbsd)"; exit 1; }
	@if [ "$$(id -u)" = 0 ]; then for tool in ip nft sysctl; do command -v $$tool >/dev/null || \
	  { echo "the NAT lab needs $$tool (apt-get install iproute2 nftables procps)"; exit 1; }; done; fi

## bench: loopback benchmark of the release build against raw TCP, ssh -D and dante; a Markdown
## report on stdout and in target/bench/report.md (docs/benchmarks.md). Installs its tools (root,
## Debian). BENCH_QUICK=1: ~2 min smoke run; BENCH_SOAK=3600: 1 h soak instead. See bench/bench.py.
bench:
	@CARGO="$(CARGO)" bench/run.sh

clean:
	$(CARGO) clean
