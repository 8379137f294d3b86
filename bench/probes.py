"""Clients the benchmark drives by hand: SOCKS5 (no auth), a 1 KiB echo exchange, a DNS query
over UDP, sequential latency loops and thousands of concurrent streams. Python stdlib only."""

import asyncio
import os
import random
import socket
import statistics
import struct
import time

PAYLOAD = os.urandom(1024)


class SocksError(Exception):
    def __init__(self, code, what=""):
        super().__init__(f"SOCKS5 reply {code:#04x} {what}".strip())
        self.code = code


def recvn(s, n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise ConnectionError("closed early")
        b += d
    return b


def socks_request(host, port):
    """A SOCKS5 CONNECT request: ATYP IPv4 for a dotted quad, else a domain name."""
    try:
        return b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack(">H", port)
    except OSError:
        h = host.encode()
        return b"\x05\x01\x00\x03" + bytes([len(h)]) + h + struct.pack(">H", port)


def socks_connect(proxy, host, port, timeout=30.0):
    """A connected socket through the SOCKS5 proxy `proxy` (host, port) to host:port."""
    s = socket.create_connection(proxy, timeout=timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"\x05\x01\x00")
        if recvn(s, 2) != b"\x05\x00":
            raise SocksError(0xFF, "no acceptable method")
        s.sendall(socks_request(host, port))
        rep = recvn(s, 4)
        if rep[1] != 0:
            raise SocksError(rep[1])
        atyp = rep[3]
        recvn(s, {1: 4, 4: 16}.get(atyp) or recvn(s, 1)[0])
        recvn(s, 2)
        return s
    except BaseException:
        s.close()
        raise


def socks_greets(proxy, timeout=0.2):
    """Whether a SOCKS5 proxy answers a greeting now."""
    try:
        with socket.create_connection(proxy, timeout=timeout) as s:
            s.sendall(b"\x05\x01\x00")
            return recvn(s, 2) == b"\x05\x00"
    except OSError:
        return False


def echo_1k(s):
    """Send 1 KiB, read the 1 KiB echoed back, close."""
    s.sendall(PAYLOAD)
    got = 0
    while got < len(PAYLOAD):
        d = s.recv(65536)
        if not d:
            raise ConnectionError("echo closed early")
        got += len(d)
    s.close()


def exchange(proxy, host, port, timeout=30.0):
    """New TCP connection (+ SOCKS5 CONNECT when proxy is set) + 1 KiB request/response."""
    if proxy:
        s = socks_connect(proxy, host, port, timeout)
    else:
        s = socket.create_connection((host, port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    echo_1k(s)


def stats(lat_ms, total_s=None):
    if not lat_ms:
        return {"n": 0}
    lat = sorted(lat_ms)

    def q(p):
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3)

    out = {"n": len(lat), "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99),
           "max_ms": round(lat[-1], 3), "min_ms": round(lat[0], 3),
           "mean_ms": round(statistics.mean(lat), 3)}
    if total_s:
        out["ops_per_s"] = round(len(lat) / total_s, 1)
    return out


def latency_loop(n, one, budget_s=None):
    """Run `one()` n times in sequence (stopping early past budget_s); latency stats in ms."""
    lat, errors, t0 = [], 0, time.perf_counter()
    for _ in range(n):
        a = time.perf_counter()
        try:
            one()
        except (OSError, SocksError):
            errors += 1
            continue
        lat.append((time.perf_counter() - a) * 1000)
        if budget_s and time.perf_counter() - t0 > budget_s:
            break
    out = stats(lat, time.perf_counter() - t0)
    out["errors"] = errors
    return out


# --- DNS over UDP, by hand

def dns_query(server, name, qtype="A", timeout=15.0):
    """(rcode, [answers], seconds). A answers as dotted quads, TXT as text, others raw."""
    types = {"A": 1, "TXT": 16, "AAAA": 28}
    qid = random.randrange(65536)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", types[qtype], 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        t0 = time.perf_counter()
        s.sendto(packet, server)
        while True:
            r = s.recv(4096)
            if struct.unpack(">H", r[:2])[0] == qid:
                break
        took = time.perf_counter() - t0
    finally:
        s.close()
    rcode = r[3] & 15
    qd, an = struct.unpack(">HH", r[4:8])
    off = 12

    def skip_name(o):
        while True:
            ln = r[o]
            if ln == 0:
                return o + 1
            if ln & 0xC0 == 0xC0:
                return o + 2
            o += 1 + ln

    for _ in range(qd):
        off = skip_name(off) + 4
    answers = []
    for _ in range(an):
        off = skip_name(off)
        rtype, _, _, rdlen = struct.unpack(">HHIH", r[off:off + 10])
        off += 10
        rdata = r[off:off + rdlen]
        off += rdlen
        if rtype == 1:
            answers.append(socket.inet_ntoa(rdata))
        elif rtype == 16:
            answers.append(rdata[1:1 + rdata[0]].decode(errors="replace"))
        else:
            answers.append(rdata.hex())
    return ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"][rcode] if rcode < 6 else str(rcode), answers, took


# --- many concurrent streams

async def _open_one(proxy, host, port, sem, timeout):
    async with sem:
        r, w = await asyncio.wait_for(asyncio.open_connection(*proxy), timeout)
        try:
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            w.write(b"\x05\x01\x00")
            if await asyncio.wait_for(r.readexactly(2), timeout) != b"\x05\x00":
                raise SocksError(0xFF, "no acceptable method")
            w.write(socks_request(host, port))
            rep = await asyncio.wait_for(r.readexactly(4), timeout)
            if rep[1] != 0:
                raise SocksError(rep[1])
            atyp = rep[3]
            n = {1: 4, 4: 16}.get(atyp) or (await r.readexactly(1))[0]
            await r.readexactly(n + 2)
            w.write(PAYLOAD)
            await asyncio.wait_for(r.readexactly(len(PAYLOAD)), timeout)
            return r, w
        except BaseException:
            w.close()
            raise


async def _streams(proxy, host, port, count, in_flight, timeout, hold):
    sem = asyncio.Semaphore(in_flight)
    t0 = time.perf_counter()
    results = await asyncio.gather(*[_open_one(proxy, host, port, sem, timeout) for _ in range(count)],
                                   return_exceptions=True)
    took = time.perf_counter() - t0
    streams = [x for x in results if isinstance(x, tuple)]
    failures = {}
    for e in results:
        if isinstance(e, BaseException):
            key = f"SOCKS {e.code:#04x}" if isinstance(e, SocksError) else type(e).__name__
            failures[key] = failures.get(key, 0) + 1
    held = await asyncio.get_running_loop().run_in_executor(None, hold, len(streams))
    # Every held stream still carries data: one more echo on each.
    alive = 0

    async def still(r, w):
        nonlocal alive
        try:
            w.write(PAYLOAD)
            await asyncio.wait_for(r.readexactly(len(PAYLOAD)), timeout)
            alive += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass

    await asyncio.gather(*[still(r, w) for r, w in streams])
    t1 = time.perf_counter()
    for _, w in streams:
        w.close()
    await asyncio.gather(*[w.wait_closed() for _, w in streams], return_exceptions=True)
    return {"asked": count, "opened": len(streams), "open_s": round(took, 3),
            "streams_per_s": round(len(streams) / took, 1) if took else None,
            "failures": failures, "alive_after_hold": alive, "close_s": round(time.perf_counter() - t1, 3),
            "held": held}


def concurrent_streams(proxy, host, port, count, in_flight=256, timeout=60.0, hold=lambda n: None):
    """Open `count` SOCKS5 streams (at most `in_flight` handshakes at once), each with one 1 KiB
    echo; call hold(opened) while all are open; echo once more on each; close them."""
    return asyncio.run(_streams(proxy, host, port, count, in_flight, timeout, hold))
