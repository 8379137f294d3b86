"""Render bench.py's results as Markdown. `python3 bench/report.py target/bench/results.json`
renders a saved run again."""

import json
import statistics
import sys

MB = 1e6
REF_TP = "ssh_aes_n"     # throughput reference: ssh -N -D -c aes128-gcm
REF_LAT = "ssh_aes_tt"   # latency reference: ssh -tt -D -c aes128-gcm (TCP_NODELAY on)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def f0(v):
    return "—" if v is None else f"{v:,.0f}"


def f2(v):
    return "—" if v is None else f"{v:.2f}"


def f3(v):
    return "—" if v is None else f"{v:.3f}"


def ratio(v, ref):
    return "—" if v is None or not ref else f"{v / ref:.2f}×"


def mib(kib):
    return "—" if kib is None else f"{kib / 1024:.1f} MiB"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def tp_summary(runs):
    ok = [r for r in runs if "mbps" in r]
    if not ok:
        return None, "error: " + (runs[0].get("error", "?") if runs else "not run")
    values = [r["mbps"] for r in ok]
    m = med(values)
    text = f0(m)
    if len(values) > 1:
        text += f" ({f0(min(values))}–{f0(max(values))})"
    if any(not r.get("complete", True) for r in ok):
        text += " (timed out: partial)"
    return m, text


def render(res):
    cfg = res.get("config", {})
    m = res.get("machine", {})
    out = ["# peerup benchmarks\n"]
    out.append(f"Command: `{m.get('command', '?')}` — {m.get('date', '?')}, "
               f"run time {res.get('wall_s', '?')} s{' (BENCH_QUICK: smoke run, smaller sizes)' if res.get('quick') else ''}.\n")
    out.append("Everything runs on one machine over loopback: both gateways, the relay, the servers and the "
               "clients share its cores, so absolute figures are this machine's; the ratios, measured back "
               "to back in the same run, are what carries over.\n")
    out.append("## Machine\n")
    rows = [("CPUs (nproc)", m.get("nproc")), ("CPU", m.get("cpu")), ("memory", m.get("memory")),
            ("kernel", m.get("kernel")), ("OS", m.get("os")), ("peerup", m.get("peerup")),
            ("rustc", m.get("rustc")), ("OpenSSH", m.get("openssh")), ("dante", m.get("dante")),
            ("dnsmasq", m.get("dnsmasq")), ("dnsperf", m.get("dnsperf")), ("curl", m.get("curl")),
            ("Python", m.get("python"))]
    out.append(table(["", ""], rows))

    paths = res.get("paths", [])
    labels = {k: label for k, label, _, _ in paths}
    tp = res.get("throughput")
    if isinstance(tp, dict) and "error" not in tp:
        size = cfg.get("size_mb")
        out.append("## Throughput\n")
        out.append(f"One TCP stream through each path: curl downloads {size} MiB from a sendfile file server "
                   f"(download) or PUTs {size} MiB to a sink (upload); **8 streams**: 8 curls at once, "
                   f"{size} MiB in all. MB/s = 10^6 bytes/s, median of {cfg.get('runs')} run(s) (range), "
                   f"paths interleaved. Ratios: to `ssh -N -D -c aes128-gcm@openssh.com` and to raw TCP. "
                   f"CPU s/GiB: busy CPU time of the whole machine (every process, both cores) per GiB "
                   f"downloaded.\n")
        summary = {}
        for key in tp:
            summary[key] = {kind: tp_summary(tp[key][kind]) for kind in ("down", "up", "par")}
        ref = summary.get(REF_TP, {})
        raw = summary.get("raw", {})
        rows = []
        for key, label, group, todo in paths:
            if todo:
                rows.append([label, "TODO: needs a knob (see below)"] + [""] * 9)
                continue
            s = summary.get(key)
            if not s:
                continue
            row = [label]
            for kind in ("down", "up", "par"):
                v, text = s[kind]
                row += [text, ratio(v, (ref.get(kind) or (None,))[0]), ratio(v, (raw.get(kind) or (None,))[0])]
            cpu = med([r.get("cpu_per_gib") for r in tp[key]["down"] if "mbps" in r])
            row.append(f2(cpu))
            rows.append(row)
        out.append(table(["path", "download MB/s", "× ssh aes", "× raw", "upload MB/s", "× ssh aes", "× raw",
                          "8 streams MB/s", "× ssh aes", "× raw", "CPU s/GiB"], rows))
        own = []
        for key, label, group, todo in paths:
            if group == "peerup" and not todo and key in tp:
                c = med([r.get("own_cpu_per_gib") for r in tp[key]["down"] if "mbps" in r])
                own.append(f"{label}: {f2(c)}")
        if own:
            out.append("CPU s/GiB of the peerup daemons alone (A and B, and R on the relay path), download: "
                       + "; ".join(own) + ".\n")
        out.append("On the relay path the hops B_relay→R and A_r→R are TCP connections to a peerup relay, secured "
                   "with TLS like the direct path; the circuit through R carries its own end-to-end TLS session between "
                   "B_relay and A_r, so every byte is encrypted twice and R forwards it once.\n")
        tc = res.get("tcp_connections_after_throughput")
        if tc is not None:
            out.append(f"B_tcp's connections to A after the transfers (path, transport, who dialled, age): "
                       f"{', '.join(tc) or 'none'}. A and B_tcp listen on TCP only, A_q and B_quic on QUIC only, so "
                       f"each pair's tunnels stay on the transport of its row.\n")
        rc = res.get("relay_connections_after_throughput")
        if rc is not None:
            out.append(f"The relay path: B_relay held these connections to A_r (the gateway it reaches through R) after the transfers: "
                       f"{', '.join(rc) or 'none'}" + (" — a direct one means a hole was punched and new "
                       "tunnels left the circuit." if any(c.startswith('direct') for c in rc) else ".") + "\n")
    elif tp:
        out.append(f"## Throughput\n\nfailed: {tp.get('error')}\n")

    lat = res.get("latency")
    if isinstance(lat, dict) and "error" not in lat:
        out.append("## Connect latency (warm)\n")
        out.append(f"Each iteration: a new TCP connection to the proxy, SOCKS5 greeting and CONNECT (by name for "
                   f"peerup), 1 KiB sent to an echo service and 1 KiB read back, close; {cfg.get('lat_n')} in "
                   f"sequence after 20 warm-up ones (the peer connection exists). Ratios of p50: to "
                   f"`ssh -tt -D -c aes128-gcm` (OpenSSH turns TCP_NODELAY on for tty sessions only, so "
                   f"`-tt` is the fair baseline; `-N` is shown for reference, up to 200 iterations) and to raw TCP.\n")
        ref = (lat.get(REF_LAT) or {}).get("p50_ms")
        raw = (lat.get("raw") or {}).get("p50_ms")
        rows = []
        for key, r in lat.items():
            rows.append([r.get("label", key), r.get("n"), f3(r.get("p50_ms")), f3(r.get("p99_ms")),
                         f0(r.get("ops_per_s")), ratio(r.get("p50_ms"), ref), ratio(r.get("p50_ms"), raw),
                         r.get("errors")])
        out.append(table(["path", "n", "p50 ms", "p99 ms", "connections/s", "× ssh -tt aes", "× raw", "errors"], rows))

    dc = res.get("dns_connect")
    if isinstance(dc, dict) and "error" not in dc:
        out.append("## Connect after a DNS query\n")
        out.append("Gateway B over TCP, warm: a SOCKS5 CONNECT to `home.alice.p2p` by name, against an A query "
                   "to B's DNS server followed by a SOCKS5 CONNECT to the pool address it returned (what an app "
                   "that resolves names itself does), each with the 1 KiB exchange.\n")
        rows = [[label, (dc.get(k) or {}).get("n"), f3((dc.get(k) or {}).get("p50_ms")),
                 f3((dc.get(k) or {}).get("p99_ms"))]
                for k, label in (("by_name", "CONNECT by name"), ("dns_then_ip", "DNS query, then CONNECT by address"),
                                 ("dns_only", "the DNS query alone (cached name)"))]
        out.append(table(["", "n", "p50 ms", "p99 ms"], rows))

    reg = res.get("registry")
    if isinstance(reg, dict) and "error" not in reg:
        out.append("## A name through the relay's registry\n")
        out.append("Gateway B_reg is a member of network `lab` whose registrar is relay R; A_r registered `home`. "
                   "B_reg's DNS TTL is 1 s, so each query made after a 1.3 s pause is answered by asking R. "
                   "The first connect by the registered name goes through R's circuit (the name has no address).\n")
        fresh, cached = reg.get("fresh", []), reg.get("cached", [])
        rows = [["A query, answered from R's registry", len(fresh), f3(med(fresh)), f3(max(fresh) if fresh else None)],
                ["the same query again (cached)", len(cached), f3(med(cached)), f3(max(cached) if cached else None)],
                ["`peerup resolve home.lab.p2p` (wall, with process start)", 1, f3(reg.get("resolve_cmd_ms")), ""],
                ["first SOCKS5 connect + 1 KiB by that name (via the relay)", 1, f3(reg.get("first_connect_ms")), ""]]
        out.append(table(["", "n", "median ms", "max ms"], rows))
        out.append(f"Answers: {', '.join(sorted(set(reg.get('status', []))))}; `peerup resolve`: `{reg.get('resolve_cmd', '')[:160]}`"
                   + (f"; connect error: {reg['first_connect_error']}" if reg.get("first_connect_error") else "") + "\n")

    dq = res.get("dns_qps")
    if isinstance(dq, dict) and "error" not in dq:
        out.append("## DNS queries per second\n")
        out.append(f"dnsperf (defaults: 1 client, up to 100 queries outstanding) for {cfg.get('dns_secs')} s each, "
                   "a query file of 8 names (`nN.alice.p2p A`), against gateway B's DNS server (local names) and "
                   "against dnsmasq serving the same 8 names with the same addresses.\n")
        ref = (dq.get("dnsmasq") or {}).get("qps")
        rows = []
        for key, label in (("ours", "peerup DNS"), ("dnsmasq", "dnsmasq")):
            r = dq.get(key)
            if r:
                rows.append([label, f0(r.get("qps")), f3(r.get("avg_latency_ms")), r.get("completed"), r.get("lost"),
                             ratio(r.get("qps"), ref), r.get("rcodes")])
        out.append(table(["server", "queries/s", "avg latency ms", "completed", "lost", "× dnsmasq", "response codes"], rows))
    elif isinstance(dq, dict):
        out.append(f"## DNS queries per second\n\nfailed: {dq.get('error')}\n")

    sts = res.get("streams")
    if isinstance(sts, dict) and "error" not in sts:
        out.append("## Concurrent streams on one peer pair\n")
        out.append("N SOCKS5 connections through gateway B_tcp to A's echo service (TCP+TLS), or through B_quic "
                   "to A_q's (QUIC), at most 256 handshakes at "
                   "once, each with a 1 KiB echo; all held open together for a second, then one more echo on each, "
                   "then all closed. The gateways run with `limits: { streams_per_peer: 5000, streams_total: 5000 }` "
                   "and `socks.max_clients: 8192`. RSS from /proc/PID/status (VmRSS), CPU from /proc/PID/stat.\n")
        counts = list(sts)
        header = [""] + counts

        def cell(st, fn):
            if not isinstance(st, dict) or "error" in st:
                return (st or {}).get("error", "—") if fn is None else "failed"
            try:
                return fn(st)
            except (KeyError, TypeError, ZeroDivisionError):
                return "—"

        def rss3(k):
            return lambda st: " / ".join(mib(st[x].get(k, {}).get("rss_kib")) for x in ("before", "during", "after"))

        def cpu2(st):
            return " / ".join(f2(st["after"][k]["cpu_s"] - st["before"][k]["cpu_s"]) + " s" for k in ("A", "B"))

        def per_stream(st):
            d = [(st["during"][k]["rss_kib"] - st["before"][k]["rss_kib"]) / st["opened"] for k in ("A", "B")]
            return " / ".join(f"{x:.1f} KiB" for x in d)

        rows_def = [
            ("SOCKS5 replies 0x00 and first echo back", lambda st: f"{st['opened']} of {st['asked']}"),
            ("failures", lambda st: ", ".join(f"{k}: {v}" for k, v in st["failures"].items()) or "none"),
            ("still carrying data after the hold", lambda st: st["alive_after_hold"]),
            ("B's tunnels while held / B's connections to A (path, transport, who dialled, age)", lambda st: f"{st['during'].get('tunnels_b')} / {', '.join(st['during'].get('connections_b_to_a') or []) or 'none'}"),
            ("time to open them", lambda st: f"{f2(st['open_s'])} s"),
            ("new streams per second (256 handshakes at once)", lambda st: f0(st["streams_per_s"])),
            ("RSS of A: before / all open / 2 s after closing", rss3("A")),
            ("RSS of B: before / all open / 2 s after closing", rss3("B")),
            ("RSS growth per open stream, A / B", per_stream),
            ("CPU time of A / B for the phase", cpu2),
            ("what B logged (WARN/ERROR)", lambda st: "; ".join(f"{v}× {k}" for k, v in st["b_log"].items())[:400] or "nothing"),
        ]
        rows = [[label] + [cell(sts[c], fn) for c in counts] for label, fn in rows_def]
        out.append(table(header, rows))
        seq = (res.get("latency") or {}).get("tls", {}).get("ops_per_s") if isinstance(res.get("latency"), dict) else None
        if seq:
            out.append(f"One at a time (the warm latency loop over TCP+TLS): {f0(seq)} new streams per second.\n")
    elif isinstance(sts, dict):
        out.append(f"## Concurrent streams on one peer pair\n\nfailed: {sts.get('error')}\n")

    cold = res.get("cold")
    if isinstance(cold, dict) and "error" not in cold:
        out.append("## Cold start and first connection\n")
        out.append(f"{cfg.get('cold_n')} times per transport: a fresh gateway process B (same home, nothing "
                   "connected) is spawned; its SOCKS port is polled with a SOCKS5 greeting in a tight loop from "
                   "the spawn (**SOCKS answers**), state.json marks it **ready**, then the first SOCKS5 CONNECT + "
                   "1 KiB exchange (dial, handshake, stream: **first connect**) and a second one on the connection "
                   "it made. Medians, max in brackets.\n")
        rows = []
        for kind, label in (("tcp", "TCP+TLS"), ("quic", "QUIC"), ("relay", "via relay R")):
            rs = cold.get(kind) or []
            ok = [r for r in rs if "error" not in r]

            def col(k):
                vals = [r.get(k) for r in ok if r.get(k) is not None]
                return f"{f2(med(vals))} ({f2(max(vals))})" if vals else "—"

            errors = [r["error"] for r in rs if "error" in r]
            rows.append([label, f"{len(ok)}/{len(rs)}", col("socks_ms"), col("ready_ms"), col("first_ms"),
                         col("second_ms"), "; ".join(sorted(set(errors)))[:120] or ""])
        out.append(table(["transport", "ok", "spawn → SOCKS answers ms", "spawn → ready ms",
                          "first connect + 1 KiB ms", "second ms", "errors"], rows))

    out.append("## Footprint\n")
    m2 = res.get("machine", {})
    idle_b = (res.get("cold") or {}).get("idle_rss_kib") or []
    rows = [["idle RSS of gateway A after start (TCP only, two services, no tunnel yet)", mib(res.get("idle_rss_a_kib"))],
            ["idle RSS of gateway A_r after start (two services, a reservation on R, its name registered)",
             mib(res.get("idle_rss_ar_kib"))],
            ["idle RSS of a fresh gateway B 0.5 s after ready (median of 3)", mib(med(idle_b))],
            ["RSS at the end of the run: A / A_q / A_r / B_tcp / relay R",
             " / ".join(mib((res.get("rss_end_kib") or {}).get(k)) for k in ("A", "A_q", "A_r", "B_tcp", "R"))],
            ["release binary (`target/release/peerup`, as built: symbols kept, debug info stripped)", f"{m2.get('binary_bytes', 0) / 1e6:.1f} MB"],
            ["stripped", f"{(m2.get('stripped_bytes') or 0) / 1e6:.1f} MB" if m2.get("stripped_bytes") else "—"]]
    out.append(table(["", ""], rows))

    soak = res.get("soak")
    if isinstance(soak, list) and soak:
        out.append("## Soak\n")
        out.append("Continuous traffic through the TCP, QUIC and relay gateways (256 MiB downloads and uploads in "
                   "turn, and new connections with a 1 KiB echo in a loop), the gateways on their default limits, "
                   "RSS sampled:\n")
        keys = ["A", "A_q", "A_r", "B_tcp", "B_quic", "B_relay", "R"]
        rows = [[r["t_s"]] + [mib(r.get(k)) for k in keys] + [r.get("downloads"), r.get("uploads"), r.get("exchanges"),
                                                                       r.get("errors")]
                for r in soak]
        out.append(table(["t s"] + keys + ["downloads", "uploads", "exchanges", "errors"], rows))
    elif isinstance(soak, dict):
        out.append(f"## Soak\n\nfailed: {soak.get('error')}\n")

    out.append("## Not measured, and notes\n")
    lines = []
    for key, label, group, todo in paths:
        if todo:
            lines.append(f"- **{label}**: {todo}.")
    for what, why in res.get("skipped", []):
        lines.append(f"- **{what}**: skipped: {why}.")
    for note in res.get("notes", []):
        lines.append(f"- {note}")
    ciphers = res.get("ssh_ciphers")
    if ciphers:
        lines.append("- ssh ciphers negotiated: " + ", ".join(f"{k}: {v}" for k, v in ciphers.items()) + ".")
    secs = res.get("phase_secs")
    if secs:
        lines.append("- phase times (s): " + ", ".join(f"{k} {v}" for k, v in secs.items()) + ".")
    out.append("\n".join(lines or ["- nothing"]) + "\n")
    return "\n".join(out)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        sys.stdout.write(render(json.load(f)))
