#!/usr/bin/env bash
# make bench: install what the benchmark needs (Debian, as root), build the release binary, then
# run bench/bench.py, which prints a Markdown report and writes it to target/bench/report.md.
#   BENCH_QUICK=1     a ~2 minute smoke run
#   BENCH_SOAK=3600   a 1 h soak of continuous traffic, RSS sampled every minute (instead of the run)
# Other knobs: see the top of bench/bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."

# tool -> Debian package. curl and python3 are required; the rest only feed some rows.
required=(curl:curl python3:python3)
optional=(ssh:openssh-client /usr/sbin/sshd:openssh-server ssh-keygen:openssh-client
  danted:dante-server dnsmasq:dnsmasq dnsperf:dnsperf strip:binutils nft:nftables)
have() { if [[ $1 == /* ]]; then [ -x "$1" ]; else command -v "$1" >/dev/null; fi; }

missing=()
for pair in "${required[@]}" "${optional[@]}"; do
  have "${pair%%:*}" || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  # shellcheck disable=SC2207
  packages=($(printf '%s\n' "${missing[@]}" | sort -u))
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bench: installing ${packages[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${packages[@]}" >&2 ||
      { apt-get update >&2 && apt-get install -y --no-install-recommends "${packages[@]}" >&2; } ||
      echo "bench: could not install ${packages[*]}; the rows that need them are skipped" >&2
  else
    echo "bench: missing ${packages[*]} and not root (or no apt-get): the rows that need them are" \
      "skipped (as root: apt-get install -y ${packages[*]})" >&2
  fi
fi
for pair in "${required[@]}"; do
  have "${pair%%:*}" || { echo "bench: ${pair%%:*} is required (apt-get install ${pair#*:})" >&2; exit 1; }
done
command -v "${CARGO:-cargo}" >/dev/null || { echo "bench: cargo is required (https://rustup.rs)" >&2; exit 1; }

"${CARGO:-cargo}" build --release --locked -p peerup >&2

# 4,000 streams hold about 8,000 sockets across the gateways and the client.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The exact command, for the report.
command=""
for var in BENCH_QUICK BENCH_SOAK BENCH_SOAK_SAMPLE BENCH_SIZE_MB BENCH_RUNS BENCH_LAT_N BENCH_COLD_N \
  BENCH_STREAMS BENCH_DNS_SECS; do
  [ -n "${!var:-}" ] && command+="$var=${!var} "
done
if [ -n "${MAKELEVEL:-}" ]; then command+="make bench"; else command+="bench/run.sh"; fi
export BENCH_COMMAND="$command"

exec python3 bench/bench.py "$@"
