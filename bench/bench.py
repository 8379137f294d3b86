#!/usr/bin/env python3
"""peerup benchmark: our data path against raw TCP, `ssh -D` and dante, in one run on loopback.

Run through `make bench` (bench/run.sh installs the tools and builds the release binary). This
script only measures: it asserts no timings. Everything binds port 0 (or a port just found free),
every process it starts runs in its own session and is killed at the end, and every home and
file lives in one temporary directory.

Environment:
  BENCH_QUICK=1          a ~2 minute smoke run (smaller files, fewer iterations)
  BENCH_SOAK=SECONDS     instead of the benchmark, a soak: continuous traffic (256 MiB downloads
                         and uploads, 1 KiB exchanges) through the gateways on their default
                         limits for SECONDS, sampling their RSS every BENCH_SOAK_SAMPLE seconds (60)
  BENCH_SIZE_MB, BENCH_RUNS, BENCH_LAT_N, BENCH_COLD_N, BENCH_STREAMS, BENCH_DNS_SECS
                         override the sizes the mode picks
  BENCH_KEEP=1           keep the temporary directory (homes, logs) for a look afterwards
"""

import getpass
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import probes  # noqa: E402

ROOT = os.path.dirname(HERE)
BIN = os.path.join(ROOT, "target", "release", "peerup")
OUT = os.path.join(ROOT, "target", "bench")
HZ = os.sysconf("SC_CLK_TCK")
MB = 1e6
MIB = 1 << 20
GIB = 1 << 30

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
SOAK = int(os.environ.get("BENCH_SOAK", "0") or 0)


def env_int(name, default):
    value = os.environ.get(name, "")
    return int(value) if value else default


CFG = {
    "size_mb": env_int("BENCH_SIZE_MB", 512 if QUICK else 1024),
    "runs": env_int("BENCH_RUNS", 1 if QUICK else 5),
    "lat_n": env_int("BENCH_LAT_N", 200 if QUICK else 1000),
    "cold_n": env_int("BENCH_COLD_N", 3 if QUICK else 10),
    "streams": env_int("BENCH_STREAMS", 1000 if QUICK else 4000),
    "dns_secs": env_int("BENCH_DNS_SECS", 3 if QUICK else 10),
    "lookups": 2 if QUICK else 5,
    "parallel": 8,
}


def log(msg):
    try:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
    except OSError:
        pass  # a full disk under the log must not end an hour's soak: the results keep the rows


# --- processes we started (and only those) ----------------------------------------------------

class Procs:
    def __init__(self, logdir):
        self.logdir = logdir
        self.all = []

    def start(self, name, argv, stdout=None, env=None, stdin=subprocess.DEVNULL):
        err = open(os.path.join(self.logdir, f"{name}.log"), "ab")
        p = subprocess.Popen(argv, stdin=stdin, stdout=stdout if stdout is not None else err,
                             stderr=err, start_new_session=True, env=env)
        p.bench_name = name
        self.all.append(p)
        return p

    def kill(self, p, sig=signal.SIGKILL):
        for s in ([signal.SIGCONT, sig] if sig == signal.SIGKILL else [sig]):
            try:
                os.killpg(p.pid, s)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        if p in self.all:
            self.all.remove(p)

    def stop_all(self):
        for p in list(self.all):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + 3
        for p in list(self.all):
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # its children too (sshd, danted fork)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.all.clear()


def free_port(udp_too=False):
    while True:
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            if not udp_too:
                return port
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def wait_for(check, timeout, step=0.01):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    return None


class Firewall:
    """Keeps loopback peers from punching a direct path past the relay (root and nft only).

    On loopback every gateway can reach every other one, so hole punching (DCUtR) succeeds at
    once and new tunnels leave the circuit. The ports of the relay path's gateways go into two
    sets: a new connection to them, or from them to anything but the relay, is refused."""

    def __init__(self, relay_port):
        self.table = f"peerup_bench_{os.getpid()}"
        self.ok = False
        if os.geteuid() != 0 or not shutil.which("nft"):
            self.why = "not root or nft missing"
            return
        self.sweep()
        rules = (f"table inet {self.table} {{\n"
                 "  set tcp_ports { type inet_service; }\n  set udp_ports { type inet_service; }\n"
                 "  chain output { type filter hook output priority 0; policy accept;\n"
                 "    oif \"lo\" ct state new tcp dport @tcp_ports reject with tcp reset\n"
                 f"    oif \"lo\" ct state new tcp sport @tcp_ports tcp dport != {relay_port} reject with tcp reset\n"
                 "    oif \"lo\" ct state new udp dport @udp_ports drop\n"
                 f"    oif \"lo\" ct state new udp sport @udp_ports udp dport != {relay_port} drop\n"
                 "  }\n}\n")
        out = subprocess.run(["nft", "-f", "-"], input=rules, capture_output=True, text=True)
        self.ok = out.returncode == 0
        self.why = out.stderr.strip()

    @staticmethod
    def sweep():
        """Delete the tables of runs whose process is gone (killed before it could): a stale
        table would refuse connections to ports this run may be given, and every packet on
        loopback would pass through its chain."""
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
        for pid in re.findall(r"^table inet peerup_bench_(\d+)$", out.stdout, re.M):
            if not os.path.exists(f"/proc/{pid}"):
                subprocess.run(["nft", "delete", "table", "inet", f"peerup_bench_{pid}"], capture_output=True)

    def block(self, tcp=(), udp=()):
        if not self.ok:
            return
        for kind, ports in (("tcp_ports", tcp), ("udp_ports", udp)):
            if ports:
                elements = "{ " + ", ".join(str(p) for p in ports) + " }"
                subprocess.run(["nft", "add", "element", "inet", self.table, kind, elements], check=True)

    def block_node(self, state):
        """Block the libp2p listen ports a daemon's state.json names."""
        tcp, udp = [], []
        for addr in state.get("libp2p", []):
            if "p2p-circuit" in addr:
                continue
            m = re.match(r"/ip4/[^/]+/(tcp|udp)/(\d+)", addr)
            if m:
                (tcp if m.group(1) == "tcp" else udp).append(int(m.group(2)))
        self.block(tcp, udp)

    def close(self):
        if self.ok:
            subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True)
            self.ok = False


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_s(pid):
    """utime + stime of a process (all its threads), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        fields = s[s.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / HZ
    except OSError:
        return None


def machine_busy_s():
    """CPU seconds the whole machine spent busy (all cores) since boot."""
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:]))
    return (sum(v) - v[3] - v[4]) / HZ


def run(argv, timeout=60, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


# --- peerup homes and daemons -----------------------------------------------------------------

class Home:
    def __init__(self, base, name):
        self.name = name
        self.dir = os.path.join(base, "homes", name)
        os.makedirs(os.path.dirname(self.dir), exist_ok=True)
        out = self.peerup("init")
        if out.returncode != 0:
            raise RuntimeError(f"peerup init {name}: {out.stderr}")
        self.peer_id = self.peerup("id").stdout.splitlines()[0].strip()

    def peerup(self, *args, timeout=60):
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        return run([BIN, "--home", self.dir, *args], timeout=timeout, env=env)

    def write(self, name, text, mode=0o600):
        path = os.path.join(self.dir, name)
        with open(path + ".new", "w") as f:
            f.write(text)
        os.chmod(path + ".new", mode)
        os.replace(path + ".new", path)

    def allow(self, peer, relay=False):
        args = ["auth", "add", peer] + (["--relay"] if relay else [])
        out = self.peerup(*args)
        if out.returncode != 0:
            raise RuntimeError(f"auth add on {self.name}: {out.stderr}")

    def status(self):
        out = self.peerup("status", "--json", timeout=10)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def state(self, pid=None):
        try:
            with open(os.path.join(self.dir, "state.json")) as f:
                state = json.load(f)
        except (OSError, ValueError):
            return None
        return state if pid is None or state.get("pid") == pid else None

    def clear_state(self):
        """Remove state.json, so the next daemon's readiness is its own."""
        try:
            os.unlink(os.path.join(self.dir, "state.json"))
        except FileNotFoundError:
            pass


# The 4,000-stream row needs more streams per peer than the defaults; a soak (which does not
# run that row) keeps the defaults, as users run them.
LIMITS = "" if SOAK else "limits: { streams_per_peer: 5000, streams_total: 5000 }\n"


def gateway_config(socks_port=0, extra="", tcp=0, udp=0, only=None):
    """A gateway's config.yaml. `only` ("tcp" or "quic") listens on that transport alone: two
    gateways that both listen on a transport may end up connected over it even when their names
    say otherwise (each dials the other back to check its addresses), and a pair measured as
    "TCP" must not carry its tunnels over QUIC."""
    listen = {"tcp": [f"/ip4/127.0.0.1/tcp/{tcp}"], "quic": [f"/ip4/127.0.0.1/udp/{udp}/quic-v1"]}
    addrs = listen[only] if only else listen["tcp"] + listen["quic"]
    return (f"listen: [{', '.join(addrs)}]\n"
            f"socks: {{ listen: 127.0.0.1:{socks_port}, max_clients: 8192 }}\n"
            f"dns: {{ listen: 127.0.0.1:0 }}\n{LIMITS}{extra}")


class Daemon:
    def __init__(self, procs, home, sub="run", timeout=30):
        self.home = home
        self.t_spawn = time.perf_counter()
        self.proc = procs.start(f"{home.name}-{sub}", [BIN, "--home", home.dir, sub])
        self.state = wait_for(lambda: self._ready(), timeout, step=0.005)
        self.t_ready = time.perf_counter()
        if not self.state:
            raise RuntimeError(f"{home.name}: peerup {sub} did not become ready; see its log")

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.home.name} exited with {self.proc.returncode}")
        return self.home.state(self.proc.pid)

    @property
    def pid(self):
        return self.proc.pid

    def socks(self):
        host, port = self.state["socks"].rsplit(":", 1)
        return (host, int(port))

    def dns(self):
        host, port = self.state["dns"].rsplit(":", 1)
        return (host, int(port))

    def multiaddr(self, kind):
        addr = next(a for a in self.state["libp2p"] if kind in a)
        return f"{addr}/p2p/{self.state['peer_id']}"


# --- measurements -----------------------------------------------------------------------------

CURL_W = "%{http_code} %{size_download} %{size_upload} %{time_total}"


class Path:
    def __init__(self, key, label, proxy=None, host="127.0.0.1", http=None, echo=None, pids=(),
                 todo=None, group="baseline"):
        self.key, self.label, self.proxy, self.host = key, label, proxy, host
        self.http, self.echo, self.pids, self.todo, self.group = http, echo, list(pids), todo, group

    def curl_proxy(self):
        return ["--socks5-hostname", f"{self.proxy[0]}:{self.proxy[1]}"] if self.proxy else []

    def url(self, path):
        return f"http://{self.host}:{self.http}{path}"


def curl(argv, max_time):
    out = run(["curl", "-sS", "-o", "/dev/null", "--max-time", str(max_time), "-w", CURL_W, *argv],
              timeout=max_time + 30)
    parts = out.stdout.split()
    if len(parts) != 4:
        return {"error": (out.stderr or out.stdout).strip()[:200]}
    code, down, up, total = parts
    return {"http": code, "down": float(down), "up": float(up), "secs": float(total),
            "curl_rc": out.returncode, "error": None if out.returncode == 0 else out.stderr.strip()[:200]}


def transfer(path, direction, size, max_time, bigfile):
    busy0, own0 = machine_busy_s(), sum(cpu_s(p) or 0 for p in path.pids)
    if direction == "down":
        r = curl([*path.curl_proxy(), path.url(f"/big.bin?bytes={size}")], max_time)
        nbytes = r.get("down", 0)
    else:
        r = curl([*path.curl_proxy(), "-H", "Expect:", "-T", bigfile, path.url("/sink")], max_time)
        nbytes = r.get("up", 0)
    busy, own = machine_busy_s() - busy0, sum(cpu_s(p) or 0 for p in path.pids) - own0
    if not nbytes or not r.get("secs"):
        return {"error": r.get("error") or "nothing moved"}
    return {"mbps": nbytes / r["secs"] / MB, "bytes": nbytes, "secs": r["secs"],
            "complete": nbytes >= size, "error": r.get("error"),
            "cpu_per_gib": busy / (nbytes / GIB), "own_cpu_per_gib": own / (nbytes / GIB) if path.pids else None}


def parallel(path, k, size, max_time):
    each = size // k
    busy0 = machine_busy_s()
    t0 = time.perf_counter()
    ps = [subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "--max-time", str(max_time), "-w", CURL_W,
                            *path.curl_proxy(), path.url(f"/big.bin?bytes={each}")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(k)]
    outs = [p.communicate(timeout=max_time + 30) for p in ps]
    wall = time.perf_counter() - t0
    busy = machine_busy_s() - busy0
    total = 0.0
    errors = []
    for (o, e), p in zip(outs, ps):
        parts = o.split()
        if len(parts) == 4:
            total += float(parts[1])
        if p.returncode != 0:
            errors.append(e.strip()[:120])
    if not total:
        return {"error": "; ".join(errors) or "nothing moved"}
    return {"mbps": total / wall / MB, "bytes": total, "secs": wall, "complete": total >= each * k,
            "error": errors[0] if errors else None, "cpu_per_gib": busy / (total / GIB)}


def dnsperf(server, queryfile, secs):
    out = run(["dnsperf", "-s", server[0], "-p", str(server[1]), "-d", queryfile, "-l", str(secs)],
              timeout=secs + 30)
    text = out.stdout + out.stderr

    def grab(pattern):
        m = re.search(pattern, text)
        return m.group(1) if m else None

    return {"qps": float(grab(r"Queries per second:\s+([\d.]+)") or 0),
            "completed": grab(r"Queries completed:\s+(\d+)"), "lost": grab(r"Queries lost:\s+(\d+)"),
            "avg_latency_ms": round(float(grab(r"Average Latency \(s\):\s+([\d.]+)") or 0) * 1000, 3),
            "rcodes": grab(r"Response codes:\s+(.*)")}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# --- the benchmark ----------------------------------------------------------------------------

class Bench:
    def __init__(self):
        self.root = os.geteuid() == 0
        self.tmp = tempfile.mkdtemp(prefix="peerup-bench-")
        self.logs = os.path.join(self.tmp, "logs")
        os.makedirs(self.logs)
        self.procs = Procs(self.logs)
        self.results = {"config": dict(CFG), "quick": QUICK, "notes": [], "skipped": []}
        self.t_start = time.time()

    def note(self, text):
        log(text)
        self.results["notes"].append(text)

    def skip(self, what, why):
        log(f"SKIPPED {what}: {why}")
        self.results["skipped"].append((what, why))

    def phase(self, name, fn, *args):
        log(f"--- {name}")
        t0 = time.time()
        try:
            value = fn(*args)
        except Exception as e:  # one broken phase must not lose the others' figures
            import traceback
            traceback.print_exc(file=sys.stderr)
            value = {"error": f"{type(e).__name__}: {e}"}
            self.note(f"{name}: failed: {value['error']}")
        self.results.setdefault("phase_secs", {})[name] = round(time.time() - t0, 1)
        return value

    # -- facts

    def machine(self):
        cpu = "?"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break

        def first_line(argv):
            try:
                out = run(argv, timeout=10)
                return (out.stdout or out.stderr).strip().splitlines()[0]
            except (OSError, IndexError, subprocess.TimeoutExpired):
                return "not installed"

        size = os.path.getsize(BIN)
        stripped = os.path.join(self.tmp, "peerup.stripped")
        strip = run(["strip", "-o", stripped, BIN]) if shutil.which("strip") else None
        mem = "?"
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) // 1024} MiB"
        self.results["machine"] = {
            "nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
            "os": first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
            "peerup": first_line([BIN, "--version"]), "rustc": first_line(["rustc", "--version"]),
            "openssh": first_line(["ssh", "-V"]), "dante": first_line(["sh", "-c", "danted -v 2>&1"]),
            "dnsmasq": first_line(["dnsmasq", "--version"]), "dnsperf": first_line(["sh", "-c", "dnsperf -h 2>&1 | grep -i version || dpkg-query -W dnsperf"]),
            "curl": first_line(["curl", "--version"]), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": os.environ.get("BENCH_COMMAND") or " ".join(sys.argv),
            "binary_bytes": size,
            "stripped_bytes": os.path.getsize(stripped) if strip and strip.returncode == 0 else None,
        }

    # -- set-up

    def data(self):
        self.www = os.path.join(self.tmp, "www")
        os.makedirs(self.www)
        self.size = CFG["size_mb"] * MIB
        self.bigfile = os.path.join(self.www, "big.bin")
        with open(self.bigfile, "wb") as f:
            block = os.urandom(4 * MIB)
            for _ in range(self.size // len(block)):
                f.write(block)  # repeated random blocks: nothing on the path compresses them
            f.write(block[: self.size % len(block)])
        with open(os.path.join(self.www, "small.bin"), "wb") as f:
            f.write(os.urandom(1024))
        with open(self.bigfile, "rb") as f:  # into the page cache
            while f.read(16 * MIB):
                pass

    def servers(self):
        def port_of(p):
            line = p.stdout.readline()
            if not line.strip().isdigit():
                raise RuntimeError(f"{p.bench_name} did not start")
            return int(line)

        http = self.procs.start("http", [sys.executable, os.path.join(HERE, "servers.py"), "http", self.www],
                                stdout=subprocess.PIPE)
        echo = self.procs.start("echo", [sys.executable, os.path.join(HERE, "servers.py"), "echo"],
                                stdout=subprocess.PIPE)
        self.http_port, self.echo_port = port_of(http), port_of(echo)

    def peerup_nodes(self):
        b = self.tmp
        self.r_home = Home(b, "R")
        self.a_home = Home(b, "A")
        self.aq_home = Home(b, "A_q")
        self.ar_home = Home(b, "A_r")
        names = ["B_tcp", "B_noise", "B_quic", "B_relay", "B_reg", "B_cold"]
        self.b_homes = {n: Home(b, n) for n in names}
        # R: the relay and the network `lab`'s registrar.
        self.r_port = free_port(udp_too=True)
        rp = self.r_port
        self.r_home.write("config.yaml", (
            f"relay:\n  listen: [/ip4/127.0.0.1/tcp/{rp}, /ip4/127.0.0.1/udp/{rp}/quic-v1]\n"
            f"  external_addresses: [/ip4/127.0.0.1/tcp/{rp}, /ip4/127.0.0.1/udp/{rp}/quic-v1]\n"
            f"  registry: {{ registrar: self, network: lab }}\n"))
        members = [self.ar_home.peer_id] + [self.b_homes[n].peer_id for n in ("B_relay", "B_reg", "B_cold")]
        self.r_home.write("relay_authorized_keys", "".join(f"{m}\n" for m in members))
        self.r_addr = f"/ip4/127.0.0.1/tcp/{rp}/p2p/{self.r_home.peer_id}"
        self.firewall = Firewall(rp)
        if self.firewall.ok:
            self.note("relay path: an nft table of this run refuses new loopback connections to and from the "
                      "relay path's gateways (A_r, B_relay, B_reg, fresh B) except to the relay, so no hole is "
                      "punched and every tunnel stays on the circuit; removed at the end")
        else:
            self.note(f"relay path: cannot keep the peers from punching a direct path ({self.firewall.why}); "
                      "on loopback the punch succeeds, so the relay rows may have moved to a direct connection "
                      "(see the connections listed under the throughput table)")
        self.r = Daemon(self.procs, self.r_home, "relay")
        services = (f"services:\n  web: {{ local_address: 127.0.0.1:{self.http_port}, port: 80 }}\n"
                    f"  echo: {{ local_address: 127.0.0.1:{self.echo_port}, port: 7 }}\n")
        # A serves the file and echo servers over TCP, A_q over QUIC; A_r serves them through R and
        # registers home.lab with R's registry.
        self.a_home.write("config.yaml", gateway_config(extra=services, only="tcp"))
        self.aq_home.write("config.yaml", gateway_config(extra=services, only="quic"))
        self.ar_home.write("config.yaml", gateway_config(extra=services + (
            f"networks:\n  lab: {{ relays: [{self.r_addr}], registrar: {self.r_home.peer_id}, register_as: home }}\n")))
        for n in ("B_tcp", "B_noise", "B_cold"):
            self.a_home.allow(self.b_homes[n].peer_id)
        for n in ("B_quic", "B_cold"):
            self.aq_home.allow(self.b_homes[n].peer_id)
        for n in ("B_relay", "B_reg", "B_cold"):
            self.ar_home.allow(self.b_homes[n].peer_id)
        self.a = Daemon(self.procs, self.a_home)
        time.sleep(0.5)
        self.results["idle_rss_a_kib"] = rss_kib(self.a.pid)
        self.aq = Daemon(self.procs, self.aq_home)
        self.ar = Daemon(self.procs, self.ar_home)
        self.firewall.block_node(self.ar.state)
        if not wait_for(lambda: self._settled(self.ar_home), 30, step=0.1):
            self.note(f"A_r: reservation/registration not done after 30 s: {self.ar_home.status()}")
        time.sleep(0.5)
        self.results["idle_rss_ar_kib"] = rss_kib(self.ar.pid)
        self.a_tcp, self.a_quic = self.a.multiaddr("/tcp/"), self.aq.multiaddr("/quic-v1")
        # B_tcp: names A by its TCP address (TLS upgrade, the default); also the DNS bench's names.
        dns_names = "".join(f"  n{i}.alice: {self.a_tcp}\n" for i in range(1, 9))
        self.b_homes["B_tcp"].write("config.yaml", gateway_config(
            extra=f"names:\n  home.alice: {self.a_tcp}\n{dns_names}", only="tcp"))
        # B_noise: the same, with `security: [noise]`, so its connection to A is Noise, not TLS.
        self.b_homes["B_noise"].write("config.yaml", gateway_config(
            extra=f"security: [noise]\nnames:\n  home.alice: {self.a_tcp}\n", only="tcp"))
        self.b_homes["B_quic"].write("config.yaml", gateway_config(
            extra=f"names:\n  home.alice: {self.a_quic}\n", only="quic"))
        # B_relay: names A_r by its peer ID only, in network lab: dialled through the relay.
        self.b_homes["B_relay"].write("config.yaml", gateway_config(extra=(
            f"names:\n  home.lab: {self.ar_home.peer_id}\n"
            f"networks:\n  lab: {{ relays: [{self.r_addr}] }}\n")))
        # B_reg: asks R's registry (answers cached 1 s, so each lookup after a pause is fresh).
        self.b_homes["B_reg"].write("config.yaml", gateway_config(extra=(
            f"networks:\n  lab: {{ relays: [{self.r_addr}], registrar: {self.r_home.peer_id} }}\n")).replace(
            "dns: { listen: 127.0.0.1:0 }", "dns: { listen: 127.0.0.1:0, ttl: 1s }"))
        self.b = {}
        for n in ("B_tcp", "B_noise", "B_quic", "B_relay", "B_reg"):
            self.b[n] = Daemon(self.procs, self.b_homes[n])
            if n in ("B_relay", "B_reg"):
                self.firewall.block_node(self.b[n].state)
        for n in ("B_relay", "B_reg"):
            if not wait_for(lambda: self._settled(self.b_homes[n], register=False), 30, step=0.1):
                self.note(f"{n}: no reservation on R after 30 s")

    def _settled(self, home, register=True):
        st = home.status()
        if not st:
            return False
        reserved = any(r.get("state") == "reserved" for r in st.get("reservations", []))
        registered = any(n.get("state") == "registered" for n in st.get("names", []))
        return reserved and (registered or not register)

    def ssh_setup(self):
        if not (shutil.which("ssh") and os.path.exists("/usr/sbin/sshd") and shutil.which("ssh-keygen")):
            self.skip("ssh -D rows", "OpenSSH (ssh, /usr/sbin/sshd) is not installed")
            return {}
        d = os.path.join(self.tmp, "ssh")
        os.makedirs(d)
        for k in ("hostkey", "clientkey"):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(d, k)])
        shutil.copy(os.path.join(d, "clientkey.pub"), os.path.join(d, "authorized_keys"))
        os.chmod(os.path.join(d, "authorized_keys"), 0o600)
        port = free_port()
        with open(os.path.join(d, "sshd_config"), "w") as f:
            f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\n"
                    f"AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n"
                    f"KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
                    f"AllowTcpForwarding yes\nUsePAM no\nStrictModes no\nMaxSessions 100\nMaxStartups 100\n")
        if self.root:
            os.makedirs("/run/sshd", exist_ok=True)
        self.procs.start("sshd", ["/usr/sbin/sshd", "-D", "-f", os.path.join(d, "sshd_config"),
                                  "-E", os.path.join(self.logs, "sshd-own.log")])
        if not wait_for(lambda: _connects(port), 10):
            self.skip("ssh -D rows", "our sshd did not start (see its log)")
            return {}
        base = ["ssh", "-F", "none", "-i", os.path.join(d, "clientkey"), "-o", "UserKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes", "-o", "LogLevel=DEBUG1",
                "-p", str(port)]
        target = f"{getpass.getuser()}@127.0.0.1"
        proxies = {}
        for key, cipher, tty in (("ssh_def_n", None, False), ("ssh_aes_n", "aes128-gcm@openssh.com", False),
                                 ("ssh_def_tt", None, True), ("ssh_aes_tt", "aes128-gcm@openssh.com", True)):
            p = free_port()
            argv = base + (["-c", cipher] if cipher else []) + ["-D", f"127.0.0.1:{p}"]
            # With a tty session OpenSSH sets TCP_NODELAY on its transport; with -N it does not
            # (~40 ms per new connection through -N -D): -tt is the fair latency baseline.
            argv += ["-tt", target, "sleep 86400"] if tty else ["-N", target]
            self.procs.start(key, argv)
            proxies[key] = ("127.0.0.1", p)
        for key, addr in proxies.items():
            if not wait_for(lambda: probes.socks_greets(addr), 15, step=0.05):
                self.skip(f"{key}", "ssh -D did not come up (see its log)")
        ciphers = {}
        for key in proxies:
            with open(os.path.join(self.logs, f"{key}.log"), errors="replace") as f:
                m = re.search(r"kex: server->client cipher: (\S+)", f.read())
            ciphers[key] = m.group(1) if m else "?"
        self.results["ssh_ciphers"] = ciphers
        return proxies

    def dante_setup(self):
        if not shutil.which("danted"):
            self.skip("dante row", "danted is not installed (apt-get install dante-server)")
            return None
        port = free_port()
        conf = os.path.join(self.tmp, "danted.conf")
        users = "user.privileged: root\nuser.unprivileged: nobody\n" if self.root else ""
        with open(conf, "w") as f:
            f.write(f"logoutput: {self.logs}/danted-own.log\ninternal: 127.0.0.1 port = {port}\n"
                    f"external: 127.0.0.1\nclientmethod: none\nsocksmethod: none\n{users}"
                    "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
                    "socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 command: connect }\n")
        self.procs.start("danted", ["danted", "-f", conf, "-p", os.path.join(self.tmp, "danted.pid")])
        addr = ("127.0.0.1", port)
        if not wait_for(lambda: probes.socks_greets(addr), 10, step=0.05):
            self.skip("dante row", "danted did not come up (see its log)")
            return None
        return addr

    def paths(self, ssh, dante):
        a = self.a.pid
        ours = dict(host="home.alice.p2p", http=80, echo=7, group="peerup")
        ps = [
            Path("raw", "raw TCP (no proxy)", http=self.http_port, echo=self.echo_port),
            Path("tls", "peerup TCP+TLS (default)", proxy=self.b["B_tcp"].socks(), pids=[a, self.b["B_tcp"].pid], **ours),
            Path("noise", "peerup TCP+Noise (security: [noise])", proxy=self.b["B_noise"].socks(),
                 pids=[a, self.b["B_noise"].pid], **ours),
            Path("quic", "peerup QUIC", proxy=self.b["B_quic"].socks(), pids=[self.aq.pid, self.b["B_quic"].pid], **ours),
            Path("relay", "peerup via relay R (circuit)", proxy=self.b["B_relay"].socks(), host="home.lab.p2p",
                 http=80, echo=7, pids=[self.ar.pid, self.b["B_relay"].pid, self.r.pid], group="peerup"),
        ]
        c = self.results.get("ssh_ciphers", {})
        for key, label in (("ssh_def_n", f"ssh -N -D, default cipher ({c.get('ssh_def_n', '?')})"),
                           ("ssh_aes_n", f"ssh -N -D -c aes128-gcm ({c.get('ssh_aes_n', '?')})")):
            if key in ssh:
                ps.append(Path(key, label, proxy=ssh[key], http=self.http_port, echo=self.echo_port))
        if dante:
            ps.append(Path("dante", "dante (plain SOCKS5)", proxy=dante, http=self.http_port, echo=self.echo_port))
        return ps

    # -- phases

    def throughput(self, paths):
        runs, size = CFG["runs"], self.size
        max_time = max(60, int(size / MB / 15))  # a bound, not an assertion: ≥ 15 MB/s finishes
        res = {p.key: {"down": [], "up": [], "par": []} for p in paths if not p.todo}
        for kind in ("down", "up", "par"):
            for r in range(runs):
                for p in paths:
                    if p.todo:
                        continue
                    if kind == "par":
                        m = parallel(p, CFG["parallel"], size, max_time)
                    else:
                        m = transfer(p, kind, size, max_time, self.bigfile)
                    res[p.key][kind].append(m)
                    log(f"{kind:4} run {r + 1} {p.label}: " +
                        (f"{m['mbps']:.0f} MB/s in {m['secs']:.2f} s, {m['cpu_per_gib']:.2f} CPU s/GiB"
                         if "mbps" in m else f"error {m['error']}"))
        return res

    def latency(self, paths, ssh):
        n = CFG["lat_n"]
        res = {}
        lat_paths = [p for p in paths if not p.todo and not p.key.startswith("ssh_")]
        for key, label in (("ssh_def_tt", "ssh -tt -D, default cipher"), ("ssh_aes_tt", "ssh -tt -D -c aes128-gcm")):
            if key in ssh:
                lat_paths.append(Path(key, label, proxy=ssh[key], http=self.http_port, echo=self.echo_port))
        if "ssh_aes_n" in ssh:
            lat_paths.append(Path("ssh_aes_n", "ssh -N -D -c aes128-gcm (no TCP_NODELAY)", proxy=ssh["ssh_aes_n"],
                                  http=self.http_port, echo=self.echo_port))
        for p in lat_paths:
            one = (lambda p=p: probes.exchange(p.proxy, p.host, p.echo))
            probes.latency_loop(20, one)  # warm: the path's connection exists, caches are hot
            count = min(n, 200) if p.key == "ssh_aes_n" else n
            res[p.key] = dict(probes.latency_loop(count, one, budget_s=60), label=p.label)
            log(f"latency {p.label}: {res[p.key]}")
        return res

    def dns_then_connect(self):
        b = self.b["B_tcp"]
        n = CFG["lat_n"]
        proxy, dns = b.socks(), b.dns()
        name = lambda: probes.exchange(proxy, "home.alice.p2p", 7)

        def via_dns():
            status, answers, _ = probes.dns_query(dns, "home.alice.p2p", "A")
            if status != "NOERROR" or not answers:
                raise OSError(f"DNS {status}")
            probes.exchange(proxy, answers[0], 7)

        dns_only = lambda: probes.dns_query(dns, "home.alice.p2p", "A")
        probes.latency_loop(20, via_dns)
        res = {"by_name": probes.latency_loop(n, name, budget_s=60),
               "dns_then_ip": probes.latency_loop(n, via_dns, budget_s=60),
               "dns_only": probes.latency_loop(n, dns_only, budget_s=30)}
        log(f"dns then connect: {res}")
        return res

    def registry(self):
        b = self.b["B_reg"]
        dns = b.dns()
        res = {"fresh": [], "cached": [], "status": []}
        for i in range(CFG["lookups"]):
            time.sleep(1.3)  # past the 1 s TTL: the next answer comes from the registry again
            status, answers, took = probes.dns_query(dns, "home.lab.p2p", "A")
            res["status"].append(status)
            res["fresh"].append(took * 1000)
            status, answers, took = probes.dns_query(dns, "home.lab.p2p", "A")
            res["cached"].append(took * 1000)
        time.sleep(1.3)
        t0 = time.perf_counter()
        out = self.b_homes["B_reg"].peerup("resolve", "home.lab.p2p", "--json")
        res["resolve_cmd_ms"] = (time.perf_counter() - t0) * 1000
        res["resolve_cmd"] = out.stdout.strip() if out.returncode == 0 else f"exit {out.returncode}: {out.stderr.strip()}"
        # and a connect by the registered name, through the relay (the name has no address)
        t0 = time.perf_counter()
        try:
            probes.exchange(b.socks(), "home.lab.p2p", 7)
            res["first_connect_ms"] = (time.perf_counter() - t0) * 1000
        except (OSError, probes.SocksError) as e:
            res["first_connect_ms"] = None
            res["first_connect_error"] = str(e)
        log(f"registry: {res}")
        return res

    def dns_qps(self):
        if not shutil.which("dnsperf"):
            self.skip("DNS queries per second", "dnsperf is not installed (apt-get install dnsperf)")
            return None
        b = self.b["B_tcp"]
        names = [f"n{i}.alice.p2p" for i in range(1, 9)]
        addrs = {}
        for n in names:
            status, answers, _ = probes.dns_query(b.dns(), n, "A")
            if status != "NOERROR" or not answers:
                raise RuntimeError(f"our DNS: {n} {status}")
            addrs[n] = answers[0]
        qfile = os.path.join(self.tmp, "queries.txt")
        with open(qfile, "w") as f:
            f.write("".join(f"{n} A\n" for n in names))
        res = {"ours": dnsperf(b.dns(), qfile, CFG["dns_secs"])}
        log(f"dnsperf ours: {res['ours']}")
        if not shutil.which("dnsmasq"):
            self.skip("dnsmasq row", "dnsmasq is not installed (apt-get install dnsmasq)")
            return res
        port = free_port(udp_too=True)
        argv = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll",
                "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}", "--cache-size=10000",
                "--local=/p2p/", f"--pid-file={self.tmp}/dnsmasq.pid", f"--user={getpass.getuser()}"]
        argv += [f"--host-record={n},{ip}" for n, ip in addrs.items()]
        p = self.procs.start("dnsmasq", argv)
        server = ("127.0.0.1", port)
        if not wait_for(lambda: _answers(server, names[0]), 10, step=0.05):
            self.skip("dnsmasq row", "dnsmasq did not come up (see its log)")
            return res
        res["dnsmasq"] = dnsperf(server, qfile, CFG["dns_secs"])
        log(f"dnsperf dnsmasq: {res['dnsmasq']}")
        self.procs.kill(p)
        return res

    def streams(self):
        res = {}
        # TCP: below yamux's 1024 streams per connection (the gateway's MAX_STREAMS_PER_CONNECTION),
        # then the count asked; QUIC: 1000 (its stream limit is the QUIC transport's own).
        for count in sorted({min(1000, CFG["streams"]), CFG["streams"]}):
            res[f"TCP+TLS, N = {count}"] = self.streams_once("B_tcp", self.a, self.a_home, count)
            time.sleep(2)
        count = min(1000, CFG["streams"])
        res[f"QUIC, N = {count}"] = self.streams_once("B_quic", self.aq, self.aq_home, count)
        return res

    def streams_once(self, b_name, a, a_home, count):
        b = self.b[b_name]
        blog = os.path.join(self.logs, f"{b_name}-run.log")
        lines0 = _count_lines(blog)
        pids = {"A": a.pid, "B": b.pid}
        before = {k: {"rss_kib": rss_kib(p), "cpu_s": cpu_s(p)} for k, p in pids.items()}
        during = {}

        def hold(opened):
            time.sleep(1)
            for k, p in pids.items():
                during[k] = {"rss_kib": rss_kib(p), "cpu_s": cpu_s(p)}
            st = self.b_homes[b_name].status() or {}
            during["tunnels_b"] = st.get("tunnels")
            during["connections_b_to_a"] = [f"{c['path']} {c['transport']} {c['direction']} {c['age_secs']}s"
                                            for x in st.get("peers", []) if x.get("peer") == a_home.peer_id
                                            for c in x.get("connections", [])]
            return opened

        res = probes.concurrent_streams(b.socks(), "home.alice.p2p", 7, count, in_flight=256, timeout=60, hold=hold)
        time.sleep(2)
        after = {k: {"rss_kib": rss_kib(p), "cpu_s": cpu_s(p)} for k, p in pids.items()}
        res.update(before=before, during=during, after=after)
        # What B logged meanwhile that explains failures (a connection closed by its muxer).
        errors = {}
        with open(blog, errors="replace") as f:
            for line in f.readlines()[lines0:]:
                if " ERROR " in line or " WARN " in line:
                    key = re.sub(r"^\S+\s+", "", line.strip())
                    key = re.sub(r"client=\S+ ", "", re.sub(r"[0-9a-f]{8}: ", "", key))[:160]
                    errors[key] = errors.get(key, 0) + 1
        res["b_log"] = errors
        log(f"streams: {res}")
        return res

    def cold(self):
        home = self.b_homes["B_cold"]
        n = CFG["cold_n"]
        res = {}
        for kind in ("tcp", "quic", "relay"):
            rows = []
            for i in range(n):
                port = free_port()
                listen = {}
                if kind == "relay":
                    extra = (f"names:\n  home.lab: {self.ar_home.peer_id}\n"
                             f"networks:\n  lab: {{ relays: [{self.r_addr}] }}\n")
                    name = "home.lab.p2p"
                    listen = {"tcp": free_port(), "udp": free_port(udp_too=True)}
                    self.firewall.block([listen["tcp"]], [listen["udp"]])
                else:
                    extra = f"names:\n  home.alice: {self.a_tcp if kind == 'tcp' else self.a_quic}\n"
                    name = "home.alice.p2p"
                    listen = {"only": kind}
                home.write("config.yaml", gateway_config(socks_port=port, extra=extra, **listen))
                home.clear_state()
                t0 = time.perf_counter()
                p = self.procs.start(f"B_cold-{kind}", [BIN, "--home", home.dir, "run"])
                row = {}
                try:
                    if not wait_for(lambda: probes.socks_greets(("127.0.0.1", port), timeout=0.05), 10, step=0.0005):
                        raise RuntimeError("SOCKS never answered")
                    row["socks_ms"] = (time.perf_counter() - t0) * 1000
                    if not wait_for(lambda: home.state(p.pid), 10, step=0.001):
                        raise RuntimeError("never ready")
                    row["ready_ms"] = (time.perf_counter() - t0) * 1000
                    t1 = time.perf_counter()
                    probes.exchange(("127.0.0.1", port), name, 7)
                    row["first_ms"] = (time.perf_counter() - t1) * 1000
                    t1 = time.perf_counter()
                    probes.exchange(("127.0.0.1", port), name, 7)
                    row["second_ms"] = (time.perf_counter() - t1) * 1000
                except (OSError, RuntimeError, probes.SocksError) as e:
                    row["error"] = str(e)
                finally:
                    self.procs.kill(p)
                rows.append(row)
                log(f"cold {kind} {i + 1}: {row}")
            res[kind] = rows
        res["idle_rss_kib"] = self.idle_rss(home)
        return res

    def idle_rss(self, home):
        """RSS of a fresh gateway B (TCP, nothing connected) 0.5 s after it is ready, 3 times."""
        extra = f"names:\n  home.alice: {self.a_tcp}\n"
        home.write("config.yaml", gateway_config(socks_port=free_port(), extra=extra, only="tcp"))
        rss = []
        for _ in range(3):
            home.clear_state()
            p = self.procs.start("B_cold-idle", [BIN, "--home", home.dir, "run"])
            try:
                if wait_for(lambda: home.state(p.pid), 10, step=0.001):
                    time.sleep(0.5)
                    rss.append(rss_kib(p.pid))
            finally:
                self.procs.kill(p)
        return rss

    def connections(self, b_name, to_home):
        st = self.b_homes[b_name].status() or {}
        return [f"{c['path']} {c['transport']} {c['direction']} {c['age_secs']}s" for x in st.get("peers", [])
                if x.get("peer") == to_home.peer_id for c in x.get("connections", [])]

    def relay_path_check(self):
        """Which connections B_relay holds to A: a direct one (a punched hole) would carry new
        tunnels instead of the circuit."""
        st = self.b_homes["B_relay"].status() or {}
        for peer in st.get("peers", []):
            if peer.get("peer") == self.ar_home.peer_id:
                return [f"{c['path']} {c['transport']} {c['direction']}" for c in peer.get("connections", [])]
        return []

    # -- soak

    def soak(self, secs):
        sample = env_int("BENCH_SOAK_SAMPLE", 60)
        stop = threading.Event()
        counts = {"downloads": 0, "download_bytes": 0, "uploads": 0, "upload_bytes": 0, "exchanges": 0,
                  "errors": 0}
        b_tcp, b_quic, b_relay = self.b["B_tcp"], self.b["B_quic"], self.b["B_relay"]
        targets = [(b_tcp.socks(), "home.alice.p2p"), (b_quic.socks(), "home.alice.p2p"),
                   (b_relay.socks(), "home.lab.p2p")]

        # 256 MiB each way: downloads, and uploads (the serving gateway receives: QUIC keeps
        # receive state per stream slot, so uploads are what would show that growing).
        upfile = os.path.join(self.www, "up.bin")
        with open(self.bigfile, "rb") as src, open(upfile, "wb") as dst:
            dst.write(src.read(256 * MIB))

        def transfers():
            i = 0
            while not stop.is_set():
                proxy, host = targets[i % len(targets)]
                up = (i // len(targets)) % 2 == 1
                i += 1
                proxy_args = ["--socks5-hostname", f"{proxy[0]}:{proxy[1]}"]
                if up:
                    r = curl([*proxy_args, "-H", "Expect:", "-T", upfile, f"http://{host}:80/sink"], 120)
                    counts["uploads"] += 1
                    counts["upload_bytes"] += r.get("up", 0)
                else:
                    r = curl([*proxy_args, f"http://{host}:80/big.bin?bytes={256 * MIB}"], 120)
                    counts["downloads"] += 1
                    counts["download_bytes"] += r.get("down", 0)
                if r.get("error"):
                    counts["errors"] += 1

        def churn():
            i = 0
            while not stop.is_set():
                proxy, host = targets[i % len(targets)]
                i += 1
                try:
                    probes.exchange(proxy, host, 7)
                    counts["exchanges"] += 1
                except (OSError, probes.SocksError):
                    counts["errors"] += 1
                time.sleep(0.002)

        threads = [threading.Thread(target=transfers, daemon=True), threading.Thread(target=churn, daemon=True)]
        for t in threads:
            t.start()
        pids = {"A": self.a.pid, "A_q": self.aq.pid, "A_r": self.ar.pid, "B_tcp": b_tcp.pid, "B_quic": b_quic.pid,
                "B_relay": b_relay.pid, "R": self.r.pid}
        samples = []
        t0 = time.time()
        while True:
            row = {"t_s": round(time.time() - t0), **{k: rss_kib(p) for k, p in pids.items()},
                   **{f"cpu_{k}": cpu_s(p) for k, p in pids.items()}, **dict(counts)}
            samples.append(row)
            log(f"soak: {row}")
            if time.time() - t0 >= secs:
                break
            time.sleep(min(sample, max(0.0, secs - (time.time() - t0))))
        stop.set()
        for t in threads:
            t.join(timeout=150)
        return samples

    # -- main

    def main(self):
        try:
            self.machine()
            log(f"temporary directory {self.tmp}; mode: {'soak' if SOAK else 'quick' if QUICK else 'default'}; {CFG}")
            self.phase("data", self.data)
            self.phase("servers", self.servers)
            setup = self.phase("peerup nodes", self.peerup_nodes)
            if isinstance(setup, dict) and "error" in setup:
                raise SystemExit("cannot measure anything without the peerup nodes")
            if SOAK:
                self.results["soak"] = self.phase("soak", self.soak, SOAK)
            else:
                ssh = self.phase("ssh set-up", self.ssh_setup) or {}
                if "error" in ssh:
                    ssh = {}
                dante = self.phase("dante set-up", self.dante_setup)
                if isinstance(dante, dict):
                    dante = None
                paths = self.paths(ssh, dante)
                self.results["paths"] = [(p.key, p.label, p.group, p.todo) for p in paths]
                self.results["throughput"] = self.phase("throughput", self.throughput, paths)
                self.results["relay_connections_after_throughput"] = self.relay_path_check()
                self.results["tcp_connections_after_throughput"] = self.connections("B_tcp", self.a_home)
                self.results["latency"] = self.phase("warm latency", self.latency, paths, ssh)
                self.results["dns_connect"] = self.phase("DNS then connect", self.dns_then_connect)
                self.results["registry"] = self.phase("registry lookup", self.registry)
                self.results["dns_qps"] = self.phase("DNS queries per second", self.dns_qps)
                self.results["streams"] = self.phase("concurrent streams", self.streams)
                self.results["cold"] = self.phase("cold start", self.cold)
                self.results["relay_connections_at_end"] = self.relay_path_check()
                self.results["quic_connections_at_end"] = self.connections("B_quic", self.aq_home)
                self.results["rss_end_kib"] = {"A": rss_kib(self.a.pid), "A_q": rss_kib(self.aq.pid), "A_r": rss_kib(self.ar.pid),
                                               "B_tcp": rss_kib(self.b["B_tcp"].pid), "R": rss_kib(self.r.pid)}
        finally:
            self.procs.stop_all()
            if getattr(self, "firewall", None):
                self.firewall.close()
            self.results["wall_s"] = round(time.time() - self.t_start, 1)
            os.makedirs(OUT, exist_ok=True)
            with open(os.path.join(OUT, "results.json"), "w") as f:
                json.dump(self.results, f, indent=1, default=str)
            if os.environ.get("BENCH_KEEP"):
                log(f"kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        import report  # noqa: E402 (the report is rendered from results.json alone)
        text = report.render(self.results)
        with open(os.path.join(OUT, "report.md"), "w") as f:
            f.write(text)
        sys.stdout.write(text)
        log(f"done in {self.results['wall_s']} s; report in {os.path.relpath(os.path.join(OUT, 'report.md'), ROOT)}")


def _count_lines(path):
    try:
        with open(path, errors="replace") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def _connects(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _answers(server, name):
    try:
        return probes.dns_query(server, name, "A", timeout=0.3)[0] == "NOERROR"
    except OSError:
        return False


def main():
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: run `cargo build --release -p peerup` (make bench does)")
    bench = Bench()

    def on_signal(signum, _frame):
        raise SystemExit(f"stopped by signal {signum}")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        import resource
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the daemons inherit it
        if hard < 2 * CFG["streams"] + 512:
            bench.note(f"open files limited to {hard}: {CFG['streams']} streams need about {2 * CFG['streams'] + 512}")
    except (ValueError, OSError):
        pass
    bench.main()


if __name__ == "__main__":
    main()
