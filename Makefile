# One source of truth for tooling: CI runs `make test` exactly as written here.
CARGO ?= cargo
PEERUP = target/debug/peerup

.PHONY: run test build fmt lint unit check-tools clean

## run: build, create an identity and config if missing, and run the gateway (SOCKS5 on
## 127.0.0.1:1080). The home is ~/.config/peerup, or PEERUP_HOME if set.
run: build
	$(PEERUP) init
	$(PEERUP) run

build:
	$(CARGO) build -p peerup

## test: formatting, lints, and every unit and integration test
test: check-tools fmt lint unit

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

# The integration tests drive real clients; say what is missing instead of failing obscurely.
check-tools:
	@command -v curl >/dev/null || { echo "make test needs curl (apt-get install curl)"; exit 1; }

clean:
	$(CARGO) clean
